//! Typed calls of the functions library (`migrations/functions/*.lua`).
//!
//! Every function is declared once, beside its wrapper, as a [`Function`]: its name, how many
//! KEYS and ARGV it takes (a unit test checks these against the header of the Lua function,
//! and debug builds check every call against them) and the refusals it may answer. A refusal
//! (`{'quota_exceeded', …}`, `{'stale_fencing_token', …}`) is turned into its error here, in
//! one place, for the functions that declare it and no others. Replies are read with
//! [`Reply`], field by field in the order the function's `Returns` line gives.

use std::future::Future;
use std::time::{Duration, Instant};

use fred::error::{Error as RedisError, ErrorKind};
use fred::prelude::*;
use fred::types::Value;
use futures::future::BoxFuture;

use super::{map_redis_error, migrate, Store};
use crate::config::Durability;
use crate::error::{ApiError, ApiResult, ErrorCode};

/// How many KEYS or ARGV a function takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    Exactly(usize),
    /// A fixed part then repeated groups (`5+2n`).
    AtLeast(usize),
}

impl Arity {
    pub fn admits(self, n: usize) -> bool {
        match self {
            Arity::Exactly(k) => n == k,
            Arity::AtLeast(k) => n >= k,
        }
    }
}

/// A refusal a function may answer instead of doing its work (nothing written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `{'quota_exceeded', 'bytes'|'keys', used, limit}`: the partition would pass its quota.
    Quota,
    /// `{'stale_fencing_token', current}`: `x-fencing-token` is not the lock's newest token.
    StaleFence,
}

impl Refusal {
    /// The status word the function answers.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Quota => "quota_exceeded",
            Refusal::StaleFence => "stale_fencing_token",
        }
    }

    fn error(self, r: &mut Reply) -> ApiError {
        match self {
            Refusal::Quota => {
                let what = r.opt_str().unwrap_or_default();
                let (used, limit) = (r.u64_or_0(), r.u64_or_0());
                ApiError::new(
                    ErrorCode::QuotaExceeded,
                    if what == "keys" {
                        format!("the partition holds {used} of at most {limit} keys; nothing was written")
                    } else {
                        format!("the partition uses {used} of {limit} quota bytes and this write would pass it; nothing was written")
                    },
                )
            }
            Refusal::StaleFence => ApiError::new(
                ErrorCode::StaleFencingToken,
                format!(
                    "the lock has granted fencing token {} since (or never granted this one); nothing was written",
                    r.u64_or_0()
                ),
            ),
        }
    }
}

/// One function of the library as the service calls it.
#[derive(Debug)]
pub struct Function {
    pub name: &'static str,
    pub keys: Arity,
    pub args: Arity,
    pub refusals: &'static [Refusal],
    /// Registered with `no-writes`: never waits for durability.
    pub read_only: bool,
}

impl Function {
    pub const fn new(name: &'static str, keys: Arity, args: Arity) -> Function {
        Function {
            name,
            keys,
            args,
            refusals: &[],
            read_only: false,
        }
    }

    pub const fn refusing(self, refusals: &'static [Refusal]) -> Function {
        Function { refusals, ..self }
    }

    /// A function registered with `no-writes` (a unit test checks the flag in the Lua).
    pub const fn reading(self) -> Function {
        Function {
            read_only: true,
            ..self
        }
    }
}

/// A function's reply, read field by field.
pub struct Reply {
    name: &'static str,
    items: std::vec::IntoIter<Value>,
}

impl Reply {
    pub fn new(name: &'static str, v: Value) -> Reply {
        let items = match v {
            Value::Array(a) => a,
            Value::Null => Vec::new(),
            other => vec![other],
        };
        Reply {
            name,
            items: items.into_iter(),
        }
    }

    fn bad(&self, what: &str) -> ApiError {
        ApiError::internal(format!("unexpected reply from {}: {what}", self.name))
    }

    /// The next field as a Redis value (Null when the reply has ended).
    pub fn value(&mut self) -> Value {
        self.items.next().unwrap_or(Value::Null)
    }

    /// The status word that opens most replies (`ok`, `not_found`, …).
    pub fn status(&mut self) -> ApiResult<String> {
        self.opt_str().ok_or_else(|| self.bad("no status"))
    }

    /// The next field as text; `None` for nil or a missing field.
    pub fn opt_str(&mut self) -> Option<String> {
        v_str(&self.value())
    }

    /// The next field as text, '' for nil.
    pub fn str(&mut self) -> String {
        self.opt_str().unwrap_or_default()
    }

    /// The next field as a number (integer or numeric text), required.
    pub fn u64(&mut self, what: &str) -> ApiResult<u64> {
        let v = self.value();
        v_num(&v)
            .filter(|n| *n >= 0)
            .map(|n| n as u64)
            .ok_or_else(|| self.bad(what))
    }

    pub fn i64(&mut self, what: &str) -> ApiResult<i64> {
        let v = self.value();
        v_num(&v).ok_or_else(|| self.bad(what))
    }

    /// The next field as a number; 0 when absent or not a number.
    pub fn u64_or_0(&mut self) -> u64 {
        v_num(&self.value()).unwrap_or(0).max(0) as u64
    }

    /// The next field as a number; `None` for '' / nil.
    pub fn opt_i64(&mut self) -> Option<i64> {
        v_num(&self.value())
    }

    /// The next field as a flag (1 / '1').
    pub fn flag(&mut self) -> bool {
        v_num(&self.value()) == Some(1)
    }

    /// The next field as a nested array.
    pub fn array(&mut self) -> Vec<Value> {
        match self.value() {
            Value::Array(a) => a,
            _ => Vec::new(),
        }
    }

    /// The rest of the reply.
    pub fn rest(self) -> Vec<Value> {
        self.items.collect()
    }

    /// For a status nobody expected.
    pub fn unexpected(&self, status: &str) -> ApiError {
        self.bad(&format!("status {status}"))
    }
}

impl Store {
    /// Time a Redis call and map its error.
    ///
    /// Returns a boxed future on purpose: fred's command futures are ~6.8 KB, and every async
    /// fn awaiting one inline grows by that much — which axum then copies when it boxes each
    /// handler future. Measured with callgrind on PUT: 97k → 80k instructions per request,
    /// memcpy 26k → 10k. Boxing here keeps callers small.
    pub fn timed<'a, T, F>(&'a self, command: &'static str, fut: F) -> BoxFuture<'a, ApiResult<T>>
    where
        T: Send + 'a,
        F: Future<Output = Result<T, RedisError>> + Send + 'a,
    {
        Box::pin(async move {
            let start = Instant::now();
            let res = fut.await;
            crate::metrics::redis_command(command).record(start.elapsed().as_secs_f64());
            res.map_err(|e| map_redis_error(command, e))
        })
    }

    /// Call function `f`. When Redis answers that the function does not exist (a Redis
    /// restarted without persistence, or FUNCTION FLUSH), the library is loaded again and the
    /// call retried once. A refusal `f` declares comes back as its error. Boxed for the
    /// reason given at [`Store::timed`].
    pub fn fcall<'a>(
        &'a self,
        f: &'static Function,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> BoxFuture<'a, ApiResult<Reply>> {
        debug_assert!(
            f.keys.admits(keys.len()) && f.args.admits(args.len()),
            "{} called with {} KEYS and {} ARGV, declared {:?} / {:?}",
            f.name,
            keys.len(),
            args.len(),
            f.keys,
            f.args
        );
        Box::pin(async move {
            let start = Instant::now();
            // Keys as fred's refcounted `Key`, so keeping a copy for the retry costs no allocation.
            let keys: Vec<fred::types::Key> = keys.into_iter().map(Into::into).collect();
            let confirm = !f.read_only && self.inner.durability != Durability::None;
            let mut res = self.call_once(f, &keys, &args, confirm).await;
            // Nothing ran when fred answers a redirection it was told not to follow (MOVED:
            // its slot map is refreshed first; ASK: the slot is migrating) or Redis answers
            // TRYAGAIN (a multi-key call while some of its keys have moved): call again until
            // the slot has settled, within command_timeout_ms.
            let deadline = start + self.inner.command_timeout;
            while matches!(&res, Err(e) if is_redirect_refusal(e) || e.details().starts_with("TRYAGAIN"))
                && Instant::now() + Duration::from_millis(25) < deadline
            {
                tokio::time::sleep(Duration::from_millis(25)).await;
                res = self.call_once(f, &keys, &args, confirm).await;
            }
            if let Err(e) = &res {
                if e.details().contains("Function not found") {
                    tracing::warn!("functions library missing on Redis; loading it again");
                    if let Err(e) = migrate::load_library(self).await {
                        return Err(map_redis_error(f.name, e));
                    }
                    res = self.call_once(f, &keys, &args, confirm).await;
                }
            }
            crate::metrics::redis_command(f.name).record(start.elapsed().as_secs_f64());
            let (v, confirmed) = res.map_err(|e| map_redis_error(f.name, e))?;
            if !f.refusals.is_empty() {
                if let Value::Array(a) = &v {
                    let word = a.first().and_then(v_str);
                    if let Some(r) = f.refusals.iter().find(|r| word.as_deref() == Some(r.code())) {
                        let mut reply = Reply::new(f.name, v);
                        reply.value();
                        return Err(r.error(&mut reply));
                    }
                }
            }
            if let Some(Err(why)) = confirmed {
                return Err(self.unconfirmed(f.name, why));
            }
            Ok(Reply::new(f.name, v))
        })
    }

    /// One FCALL; with `confirm`, pipelined with `WAIT` / `WAITAOF`. The second part is
    /// `None` without `confirm`, else whether the write was confirmed (`Err`: why not).
    async fn call_once(
        &self,
        f: &'static Function,
        keys: &[fred::types::Key],
        args: &[Value],
        confirm: bool,
    ) -> Result<(Value, Option<Result<(), String>>), RedisError> {
        // One attempt, no redirection followed (the client's defaults, spelled out): a
        // function call in flight when a connection drops may already have run. With
        // redirections refused, fred refreshes its slot map on MOVED and answers "Too many
        // redirections"; [`Store::fcall`] calls again.
        let once = fred::types::config::Options {
            max_attempts: Some(1),
            max_redirections: Some(0),
            ..Default::default()
        };
        if !confirm {
            let v = self
                .raw_client()
                .with_options(&once)
                .fcall(f.name, keys.to_vec(), args.to_vec())
                .await?;
            return Ok((v, None));
        }
        let wait_ms = self.inner.durability_timeout_ms;
        // The FCALL and its WAIT are pipelined on one connection to the node of the first
        // key's slot, so the wait covers this write and nothing can come between them.
        let slot = keys.first().map(|k| fred::util::redis_keyslot(k.as_bytes()));
        let opts = fred::types::config::Options {
            cluster_hash: slot.map(fred::types::ClusterHash::Custom),
            timeout: Some(self.inner.command_timeout + Duration::from_millis(wait_ms)),
            ..once
        };
        let client = self.raw_client();
        let (required, attached) = if self.inner.durability == Durability::Replica {
            // On a cluster, the count of the primary serving the slot. Outside one, the most
            // any primary has had in the grace: counting per primary address (a promoted
            // primary starting from its own replicas) lost acknowledged writes in the
            // Sentinel failover bench, so a Sentinel write waits for the high-water mark.
            if self.inner.fred_cfg.server.is_clustered() {
                self.inner.replicas.need(slot, None)
            } else {
                self.inner.replicas.need(None, None)
            }
        } else {
            (1, None)
        };
        // Known to be short (a cluster primary with fewer replicas attached than it had):
        // answered without the WAIT. An unknown primary still waits.
        let short = attached.filter(|a| *a < required).map(|a| {
            format!(
                "only {a} of the {required} replicas its primary had in the last {} s are attached \
                 (a replica detached: a failover may be under way)",
                super::durability::GRACE.as_secs()
            )
        });
        if let Some(why) = short {
            // The WAIT cannot be met: apply the write and say so now. A WAIT that cannot be
            // met blocks its connection for durability_timeout_ms, and Redis runs nothing
            // queued behind it on that connection meanwhile: with 16 writes pipelined, 16
            // timeouts in a row.
            let v = client
                .with_options(&opts)
                .fcall(f.name, keys.to_vec(), args.to_vec())
                .await?;
            return Ok((v, Some(Err(why))));
        }
        // Redis runs nothing a client sends after a WAIT until the WAIT returns: writes
        // pipelined behind a WAIT that cannot be met (a replica detached in a failover) each
        // took a whole durability_timeout_ms in turn, and every read queued on the connection
        // timed out — a 17 s stall after each Sentinel failover. So one wait is in flight per
        // connection, and a write that does not get its turn within durability_timeout_ms is
        // refused before anything is sent (503, outcome not_applied).
        let _turn = match &self.inner.wait_turns {
            Some(turns) => {
                match tokio::time::timeout(Duration::from_millis(wait_ms), turns.acquire()).await {
                    Ok(Ok(permit)) => Some(permit),
                    _ => {
                        return Err(RedisError::new(
                            ErrorKind::Unknown,
                            "BUSY the durability waits queued on this connection did not finish in time",
                        ))
                    }
                }
            }
            None => None,
        };
        let p = client.pipeline();
        let routed = p.with_options(&opts);
        let _: () = routed.fcall(f.name, keys.to_vec(), args.to_vec()).await?;
        match self.inner.durability {
            Durability::Aof => {
                let cmd = fred::types::CustomCommand::new_static(
                    "WAITAOF",
                    fred::types::ClusterHash::FirstKey,
                    true,
                );
                let _: () = routed.custom(cmd, vec![1i64, 0, wait_ms as i64]).await?;
            }
            _ => routed.wait::<()>(required as i64, wait_ms as i64).await?,
        }
        // Bounded here too: a pipeline queued on a connection that is reconnecting (its
        // primary died) does not always honour the per-command timeout.
        let bound = self.inner.command_timeout + Duration::from_millis(wait_ms);
        let Ok(answers) = tokio::time::timeout(bound, p.try_all::<Value>()).await else {
            return Err(RedisError::new(ErrorKind::Timeout, "Request timed out."));
        };
        let mut out = answers.into_iter();
        let v = out
            .next()
            .unwrap_or_else(|| Err(RedisError::new(ErrorKind::Unknown, "empty pipeline reply")))?;
        let confirmed = match out.next() {
            Some(Ok(w)) => confirmation(self.inner.durability, required, &w),
            Some(Err(e)) => Err(format!("{} failed: {e}", self.inner.durability.wait_command())),
            None => Err("no answer to the durability wait".to_string()),
        };
        Ok((v, Some(confirmed)))
    }

    /// The 503 `durability_timeout` of a write Redis applied but did not confirm.
    fn unconfirmed(&self, function: &str, why: String) -> ApiError {
        metrics::counter!("redis_durability_timeouts_total").increment(1);
        tracing::warn!(function, why, "write applied but durability not confirmed");
        let mut err = ApiError::new(
            ErrorCode::DurabilityTimeout,
            format!(
                "the write was applied on the Redis primary but {why} (durability = {}): it may be lost \
                 if the primary fails now. Read the current state before retrying, or retry with a \
                 precondition (If-Match); a repeat with the same Idempotency-Key replays this answer",
                self.inner.durability.as_str()
            ),
        );
        err.retry_after = Some(1);
        err.extra.insert("outcome".into(), "applied_unconfirmed".into());
        err
    }
}

/// fred's answer to a MOVED / ASK it was told not to follow: nothing was run.
fn is_redirect_refusal(e: &RedisError) -> bool {
    *e.kind() == ErrorKind::Routing && e.details().contains("Too many redirections")
}

/// Whether a `WAIT` (replicas reached, of `required`) or `WAITAOF` (`[local, replicas]`)
/// reply confirms.
fn confirmation(d: Durability, required: u32, reply: &Value) -> Result<(), String> {
    match d {
        Durability::Aof => {
            let local = match reply {
                Value::Array(a) => a.first().and_then(v_num),
                _ => None,
            };
            if local.unwrap_or(0) >= 1 {
                Ok(())
            } else {
                Err("the primary did not fsync it to its append-only file in time".into())
            }
        }
        _ => {
            let reached = v_num(reply).unwrap_or(0);
            if reached >= required as i64 {
                Ok(())
            } else if required == 1 {
                Err("no replica confirmed it in time".into())
            } else {
                Err(format!(
                    "{reached} of the primary's {required} replicas confirmed it in time (a replica detached: \
                     a failover may be under way)"
                ))
            }
        }
    }
}

/// A Redis value as text; `None` for nil.
pub(crate) fn v_str(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        other => other.as_string(),
    }
}

/// A Redis value as a number: integers, and text holding one ('' is none).
fn v_num(v: &Value) -> Option<i64> {
    match v {
        Value::Integer(i) => Some(*i),
        Value::Null => None,
        other => other.as_string().and_then(|s| s.parse().ok()),
    }
}

/// A flattened HGETALL reply (as returned from a function) as a map.
pub(crate) fn hash_fields(v: &Value) -> std::collections::HashMap<String, String> {
    let mut m = std::collections::HashMap::new();
    if let Value::Array(a) = v {
        for pair in a.chunks(2) {
            if let (Some(k), Some(v)) = (pair.first().and_then(v_str), pair.get(1).and_then(v_str)) {
                m.insert(k, v);
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_read_field_by_field() {
        let mut r = Reply::new(
            "t",
            Value::Array(vec!["ok".into(), 3i64.into(), "7".into(), "".into(), Value::Null]),
        );
        assert_eq!(r.status().unwrap(), "ok");
        assert_eq!(r.u64("a").unwrap(), 3);
        assert_eq!(r.i64("b").unwrap(), 7);
        assert_eq!(r.opt_i64(), None);
        assert_eq!(r.opt_str(), None);
        assert!(r.u64("gone").is_err());
    }
}
