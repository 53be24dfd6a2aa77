//! Backups: wrappers of `migrations/functions/backup.lua` (the consistent capture of a
//! namespace: pages of keys, then one atomic fix-up of what changed meanwhile).

use std::collections::HashMap;

use fred::prelude::*;
use fred::types::Value;

use super::fcall::{hash_fields, v_str, Arity, Function};
use super::Store;
use crate::error::{ApiError, ApiResult};

pub const NS_READ: Function = Function::new("ns_read", Arity::AtLeast(2), Arity::AtLeast(1)).reading();
pub const NS_DUMP_FIX: Function =
    Function::new("ns_dump_fix", Arity::AtLeast(3), Arity::AtLeast(1)).reading();

pub const FUNCTIONS: &[&Function] = &[&NS_READ, &NS_DUMP_FIX];

/// One key as captured: its stored record and its history (version, record), oldest first.
#[derive(Debug, Clone)]
pub struct DumpedKey {
    pub key: String,
    pub record: String,
    pub history: Vec<(u64, String)>,
}

/// What `ns_dump_fix` answered.
pub enum Fix {
    Ok {
        revision: u64,
        epoch: String,
        /// Lock name → last fencing token granted.
        fence: Vec<(String, u64)>,
        /// A partition's quota bytes, max keys and default TTL (`None` for a plain namespace).
        limits: [Option<u64>; 3],
        /// The keys given, as they are now (`None`: absent).
        keys: Vec<(String, Option<DumpedKey>)>,
    },
    /// Keys the log shows changed that were not given.
    More(Vec<String>),
    /// The log no longer holds the revisions needed (the oldest it holds).
    Compacted(u64),
}

fn dumped(v: &Value) -> ApiResult<Option<DumpedKey>> {
    let Value::Array(a) = v else { return Ok(None) };
    let bad = || ApiError::internal(format!("unreadable captured key: {v:?}"));
    let key = a.first().and_then(v_str).ok_or_else(bad)?;
    let record = a.get(1).and_then(v_str).ok_or_else(bad)?;
    let mut history: Vec<(u64, String)> = hash_fields(a.get(2).unwrap_or(&Value::Null))
        .into_iter()
        .filter_map(|(ver, rec)| ver.parse().ok().map(|v| (v, rec)))
        .collect();
    history.sort_by_key(|(v, _)| *v);
    Ok(Some(DumpedKey { key, record, history }))
}

/// `(revision, keys named)` of change-log entries: the revision from the id `0-<rev>`.
type LogKeys = Vec<(u64, String)>;

impl Store {
    /// Up to `count` live key names of `ns` after `after`, in index order.
    pub async fn ns_key_page(&self, ns: &str, after: Option<&str>, count: usize) -> ApiResult<Vec<String>> {
        let idx = self.keys().ns(ns).idx;
        let lo = match after {
            Some(a) => format!("({a}"),
            None => "-".to_string(),
        };
        self.timed(
            "zrangebylex",
            self.client().zrangebylex(idx, lo, "+", Some((0, count as i64))),
        )
        .await
    }

    /// The entries (with history) of `names` of `ns`; absent ones are left out.
    pub async fn ns_read(&self, ns: &str, names: &[String]) -> ApiResult<Vec<DumpedKey>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let nk = self.keys().ns(ns);
        let keys = names.iter().flat_map(|n| [nk.entry(n), nk.hist(n)]).collect();
        let args = names.iter().map(|n| Value::from(n.as_str())).collect();
        let r = self.fcall(&NS_READ, keys, args).await?;
        let mut out = Vec::new();
        for v in r.rest() {
            out.extend(dumped(&v)?);
        }
        Ok(out)
    }

    /// The keys named by `ns`'s change log after revision `from` (up to `count` entries), each
    /// with its revision, and whether the log still holds revision `from + 1` (None: trimmed).
    pub async fn ns_log_keys(&self, ns: &str, from: u64, count: u64) -> ApiResult<Option<LogKeys>> {
        let log = self.keys().ns(ns).log;
        let head: Vec<(String, HashMap<String, String>)> = self
            .timed("xrange", self.client().xrange(log.clone(), "-", "+", Some(1)))
            .await?;
        let rev_of = |id: &str| id.strip_prefix("0-").and_then(|r| r.parse::<u64>().ok());
        if head
            .first()
            .and_then(|(id, _)| rev_of(id))
            .is_some_and(|oldest| oldest > from + 1)
        {
            return Ok(None);
        }
        let entries: Vec<(String, HashMap<String, String>)> = self
            .timed(
                "xrange",
                self.client()
                    .xrange(log, format!("0-{}", from + 1), "+", Some(count)),
            )
            .await?;
        Ok(Some(
            entries
                .into_iter()
                .filter_map(|(id, mut f)| Some((rev_of(&id)?, f.remove("key")?)))
                .collect(),
        ))
    }

    /// `names` of `ns` read atomically with its figures, if the log shows no change after
    /// `covered` to a key not among them.
    pub async fn ns_dump_fix(&self, ns: &str, covered: u64, names: &[String]) -> ApiResult<Fix> {
        let nk = self.keys().ns(ns);
        let mut keys = vec![nk.meta.clone(), nk.log.clone(), nk.fence()];
        keys.extend(names.iter().flat_map(|n| [nk.entry(n), nk.hist(n)]));
        let mut args: Vec<Value> = vec![(covered as i64).into()];
        args.extend(names.iter().map(|n| Value::from(n.as_str())));
        let mut r = self.fcall(&NS_DUMP_FIX, keys, args).await?;
        match r.status()?.as_str() {
            "compacted" => return Ok(Fix::Compacted(r.u64_or_0())),
            "more" => return Ok(Fix::More(r.array().iter().filter_map(v_str).collect())),
            "ok" => {}
            other => return Err(r.unexpected(other)),
        }
        let revision = r.u64_or_0();
        let epoch = r.str();
        let fence = hash_fields(&r.value())
            .into_iter()
            .map(|(k, v)| (k, v.parse().unwrap_or(0)))
            .collect();
        let lim = r.array();
        let limit = |i: usize| lim.get(i).and_then(v_str).and_then(|s| s.parse().ok());
        let limits = [limit(0), limit(1), limit(2)];
        let entries = r.array();
        let mut changed = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            changed.push((name.clone(), dumped(entries.get(i).unwrap_or(&Value::Null))?));
        }
        Ok(Fix::Ok {
            revision,
            epoch,
            fence,
            limits,
            keys: changed,
        })
    }
}
