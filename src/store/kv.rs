//! Versioned key/value: typed wrappers around the `kv_*` functions of
//! `migrations/swarmstate.lua`, plus the plain reads (entry, history, listing, namespaces).
//! Owns the namespace keys described in [`super::keys`].

use std::time::{Duration, UNIX_EPOCH};

use fred::prelude::*;
use fred::types::Value;
use serde::ser::{Error as _, SerializeStruct};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use super::{v_i64, v_str, v_u64, Store};
use crate::error::{ApiError, ApiResult, ErrorCode};

/// Most value bytes one listing page or batch read may carry (a page ends early, with a
/// cursor, when the next value would pass it; a batch asking for more is refused).
pub const MAX_VALUE_BYTES_PER_RESPONSE: u64 = 8 * 1024 * 1024;

/// Who made a change and why (`x-agent-id`, `x-change-reason`), stored with the version.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    pub agent: Option<String>,
    pub reason: Option<String>,
    /// `x-fencing-token: <lock>:<n>`: the write is refused unless `n` is still the newest
    /// token the namespace's lock `<lock>` has granted.
    pub fence: Option<(String, u64)>,
}

/// One key's state as clients see it. `value` and `metadata` hold JSON text as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub namespace: String,
    pub key: String,
    /// `None` in listings without `?values=true`.
    pub value: Option<String>,
    pub version: u64,
    pub create_revision: u64,
    pub mod_revision: u64,
    /// Unix milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
    pub expires_at: Option<i64>,
    pub metadata: Option<String>,
    pub agent_id: Option<String>,
    pub change_reason: Option<String>,
}

/// RFC 3339 with milliseconds, UTC.
/// This host's clock, unix ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn rfc3339(ms: i64) -> String {
    // humantime formats years up to 9999; clamp rather than fail on absurd stored times.
    const MAX_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    let t = UNIX_EPOCH + Duration::from_millis(ms.clamp(0, MAX_MS) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

impl Serialize for Entry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Entry", 12)?;
        st.serialize_field("namespace", &self.namespace)?;
        st.serialize_field("key", &self.key)?;
        if let Some(v) = &self.value {
            let raw: &RawValue = serde_json::from_str(v).map_err(S::Error::custom)?;
            st.serialize_field("value", raw)?;
        }
        st.serialize_field("version", &self.version)?;
        st.serialize_field("create_revision", &self.create_revision)?;
        st.serialize_field("mod_revision", &self.mod_revision)?;
        st.serialize_field("created_at", &rfc3339(self.created_at))?;
        st.serialize_field("updated_at", &rfc3339(self.updated_at))?;
        st.serialize_field("expires_at", &self.expires_at.map(rfc3339))?;
        match &self.metadata {
            Some(m) => {
                let raw: &RawValue = serde_json::from_str(m).map_err(S::Error::custom)?;
                st.serialize_field("metadata", raw)?;
            }
            None => st.serialize_field("metadata", &Option::<()>::None)?,
        }
        st.serialize_field("agent_id", &self.agent_id)?;
        st.serialize_field("change_reason", &self.change_reason)?;
        st.end()
    }
}

impl Entry {
    /// Parse a stored record: `ver\tcrev\tmrev\tct\tut\texp\tsz\tagent\treason`, newline,
    /// metadata, newline, value (see migrations/swarmstate.lua). Entries and history share it.
    pub fn from_record(ns: &str, key: &str, rec: &str, with_value: bool) -> Option<Entry> {
        let (header, rest) = rec.split_once('\n')?;
        let (meta, value) = rest.split_once('\n')?;
        let mut h = header.split('\t');
        let mut num = || h.next().and_then(|s| s.parse::<i64>().ok());
        let version = num()? as u64;
        let (crev, mrev, ct, ut, exp) = (num(), num(), num(), num(), num());
        let _size = num();
        let mut text = || h.next().filter(|s| !s.is_empty()).map(str::to_string);
        let (agent_id, change_reason) = (text(), text());
        Some(Entry {
            namespace: ns.to_string(),
            key: key.to_string(),
            value: with_value.then(|| value.to_string()),
            version,
            create_revision: crev.unwrap_or(0) as u64,
            mod_revision: mrev.unwrap_or(0) as u64,
            created_at: ct.unwrap_or(0),
            updated_at: ut.unwrap_or(0),
            expires_at: exp,
            metadata: (!meta.is_empty()).then(|| meta.to_string()),
            agent_id,
            change_reason,
        })
    }
}

/// A write's precondition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Any,
    /// `If-None-Match: *`
    Absent,
    /// `If-Match: *`
    Exists,
    /// `If-Match: "<n>"`; `Version(0)` is the same as `Absent`.
    Version(u64),
}

impl Expect {
    fn arg(self) -> String {
        match self {
            Expect::Any => String::new(),
            Expect::Absent | Expect::Version(0) => "0".into(),
            Expect::Exists => "-1".into(),
            Expect::Version(n) => n.to_string(),
        }
    }
}

/// A write's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    None,
    /// Keep the entry's current expiry (PATCH, merge, counters).
    Keep,
    Ms(u64),
}

impl Ttl {
    fn arg(self) -> String {
        match self {
            Ttl::None => String::new(),
            Ttl::Keep => "-1".into(),
            Ttl::Ms(n) => n.to_string(),
        }
    }
}

/// Result of a conditional write.
#[derive(Debug, Clone)]
pub enum PutOutcome {
    Written {
        entry: Entry,
        created: bool,
    },
    /// The precondition failed; the entry's current version (0 = absent).
    Mismatch(u64),
}

#[derive(Debug, Clone)]
pub enum DeleteOutcome {
    Deleted { revision: u64, version: u64 },
    NotFound,
    Mismatch(u64),
}

/// A transaction resolved to key indexes (0-based into `keys`).
#[derive(Debug, Clone, Default)]
pub struct TxnPlan {
    pub keys: Vec<String>,
    pub compares: Vec<TxnCompare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

#[derive(Debug, Clone)]
pub enum TxnCompare {
    Version(usize, u64),
    Exists(usize, bool),
    /// Canonical JSON text the stored value must equal.
    Value(usize, String),
}

#[derive(Debug, Clone)]
pub enum TxnOp {
    Put {
        key: usize,
        value: String,
        metadata: Option<String>,
        ttl_ms: Option<u64>,
    },
    Delete {
        key: usize,
    },
    Get {
        key: usize,
    },
}

#[derive(Debug, Clone)]
pub enum TxnResult {
    Put {
        key: String,
        version: u64,
        mod_revision: u64,
        created: bool,
    },
    Delete {
        key: String,
        deleted: bool,
    },
    Get {
        key: String,
        entry: Option<Entry>,
    },
}

#[derive(Debug, Clone)]
pub struct TxnOutcome {
    pub succeeded: bool,
    pub revision: u64,
    pub results: Vec<TxnResult>,
}

/// Per-namespace figures for `GET /v1/namespaces`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NamespaceInfo {
    pub namespace: String,
    /// Live keys.
    pub keys: u64,
    /// The namespace's current revision.
    pub revision: u64,
    /// Bytes of live keys, values and metadata.
    pub bytes: u64,
}

fn status_of(reply: &[Value]) -> String {
    reply.first().and_then(v_str).unwrap_or_default()
}

fn bad_reply(name: &str, reply: &[Value]) -> ApiError {
    ApiError::internal(format!("unexpected reply from {name}: {reply:?}"))
}

impl Store {
    /// The current entry, or `None`.
    pub async fn kv_get(&self, ns: &str, key: &str) -> ApiResult<Option<Entry>> {
        let ekey = self.keys().ns(ns).entry(key);
        // Something another client wrote there (another type, bytes that are not a record)
        // reads as absent until the relay or the next write deals with it.
        let rec: Option<Vec<u8>> = self
            .timed("get", async {
                match self.client().get::<Option<Vec<u8>>, _>(ekey).await {
                    Err(e) if e.details().starts_with("WRONGTYPE") => Ok(None),
                    r => r,
                }
            })
            .await?;
        Ok(rec
            .and_then(|r| String::from_utf8(r).ok())
            .and_then(|r| Entry::from_record(ns, key, &r, true)))
    }

    /// Accounted sizes (key + value + metadata bytes) of `keys`; 0 for absent keys.
    pub async fn sizes(&self, ns: &str, keys: &[String]) -> ApiResult<Vec<u64>> {
        let sz = self.keys().ns(ns).sz;
        let v: Vec<Option<u64>> = if keys.len() == 1 {
            vec![
                self.timed("hget", self.client().hget(sz, keys[0].as_str()))
                    .await?,
            ]
        } else {
            self.timed("hmget", self.client().hmget(sz, keys.to_vec()))
                .await?
        };
        Ok(v.into_iter().map(|x| x.unwrap_or(0)).collect())
    }

    /// Many entries of one namespace in one MGET (they share a slot), in order.
    pub async fn kv_get_many(
        &self,
        ns: &str,
        keys: &[String],
        with_values: bool,
    ) -> ApiResult<Vec<Option<Entry>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let nk = self.keys().ns(ns);
        let ekeys: Vec<String> = keys.iter().map(|k| nk.entry(k)).collect();
        let recs: Vec<Option<String>> = if ekeys.len() == 1 {
            vec![self.timed("get", self.client().get(ekeys[0].clone())).await?]
        } else {
            self.timed("mget", self.client().mget(ekeys)).await?
        };
        Ok(keys
            .iter()
            .zip(recs)
            .map(|(k, r)| r.and_then(|r| Entry::from_record(ns, k, &r, with_values)))
            .collect())
    }

    /// A specific version: the current one, or one retained in history.
    pub async fn kv_get_version(&self, ns: &str, key: &str, version: u64) -> ApiResult<Option<Entry>> {
        let cur = self.kv_get(ns, key).await?;
        match cur {
            Some(e) if e.version == version => Ok(Some(e)),
            Some(e) if version < e.version => {
                let hkey = self.keys().ns(ns).hist(key);
                let rec: Option<String> = self
                    .timed("hget", self.client().hget(hkey, version.to_string()))
                    .await?;
                // Same life only: the key may have been deleted and re-created between reads.
                Ok(rec
                    .and_then(|r| Entry::from_record(ns, key, &r, true))
                    .filter(|h| h.create_revision == e.create_revision))
            }
            _ => Ok(None),
        }
    }

    /// Newest first, the current version included; `None` when the key does not exist.
    pub async fn kv_history(&self, ns: &str, key: &str, limit: usize) -> ApiResult<Option<Vec<Entry>>> {
        let Some(cur) = self.kv_get(ns, key).await? else {
            return Ok(None);
        };
        let past: Vec<String> = (1..limit as u64)
            .filter_map(|i| cur.version.checked_sub(i))
            .filter(|v| *v >= 1)
            .map(|v| v.to_string())
            .collect();
        let mut out = vec![cur];
        if !past.is_empty() {
            let hkey = self.keys().ns(ns).hist(key);
            let recs: Vec<Option<String>> = if past.len() == 1 {
                vec![
                    self.timed("hget", self.client().hget(hkey, past[0].clone()))
                        .await?,
                ]
            } else {
                self.timed("hmget", self.client().hmget(hkey, past)).await?
            };
            let crev = out[0].create_revision;
            out.extend(
                recs.into_iter()
                    .flatten()
                    .filter_map(|r| Entry::from_record(ns, key, &r, true))
                    // Same life only: the key may have been deleted and re-created between reads.
                    .filter(|h| h.create_revision == crev),
            );
        }
        Ok(Some(out))
    }

    /// Conditional write of canonical JSON `value`.
    #[allow(clippy::too_many_arguments)]
    pub async fn kv_put(
        &self,
        ns: &str,
        key: &str,
        value: String,
        metadata: Option<String>,
        ttl: Ttl,
        expect: Expect,
        prov: &Provenance,
    ) -> ApiResult<PutOutcome> {
        self.register_namespace(ns).await?;
        let keys = self.keys().ns(ns).for_entry(key);
        let mut args = self.ctx_args(prov);
        args.push(key.into());
        args.push(value.as_str().into());
        args.push(metadata.as_deref().unwrap_or("").into());
        args.push(ttl.arg().into());
        args.push(expect.arg().into());
        let reply = self.fcall("kv_put", keys, args).await?.into_array();
        match status_of(&reply).as_str() {
            "ok" => {
                let entry = written_entry(ns, key, Some(value), metadata, &reply[1..], prov);
                let created = reply.get(7).map(v_i64) == Some(1);
                Ok(PutOutcome::Written { entry, created })
            }
            "version_mismatch" => Ok(PutOutcome::Mismatch(reply.get(1).map(v_u64).unwrap_or(0))),
            _ => Err(bad_reply("kv_put", &reply)),
        }
    }

    pub async fn kv_delete(
        &self,
        ns: &str,
        key: &str,
        expect: Expect,
        prov: &Provenance,
    ) -> ApiResult<DeleteOutcome> {
        let keys = self.keys().ns(ns).for_entry(key);
        let mut args = self.ctx_args(prov);
        args.push(key.into());
        args.push(expect.arg().into());
        let reply = self.fcall("kv_delete", keys, args).await?.into_array();
        match status_of(&reply).as_str() {
            "ok" => Ok(DeleteOutcome::Deleted {
                revision: reply.get(1).map(v_u64).unwrap_or(0),
                version: reply.get(2).map(v_u64).unwrap_or(0),
            }),
            "not_found" => Ok(DeleteOutcome::NotFound),
            "version_mismatch" => Ok(DeleteOutcome::Mismatch(reply.get(1).map(v_u64).unwrap_or(0))),
            _ => Err(bad_reply("kv_delete", &reply)),
        }
    }

    /// Write retained `version`'s value and metadata as a new version.
    pub async fn kv_rollback(
        &self,
        ns: &str,
        key: &str,
        version: u64,
        prov: &Provenance,
    ) -> ApiResult<Entry> {
        let keys = self.keys().ns(ns).for_entry(key);
        let mut args = self.ctx_args(prov);
        args.push(key.into());
        args.push(version.to_string().into());
        let reply = self.fcall("kv_rollback", keys, args).await?.into_array();
        match status_of(&reply).as_str() {
            "ok" => {
                let value = reply.get(8).and_then(v_str);
                let meta = reply.get(9).and_then(v_str).filter(|m| !m.is_empty());
                Ok(written_entry(ns, key, value, meta, &reply[1..], prov))
            }
            "not_found" => Err(ApiError::not_found(format!("key `{key}` does not exist"))),
            "version_not_found" => Err(ApiError::not_found(format!(
                "version {version} of `{key}` is not retained"
            ))),
            _ => Err(bad_reply("kv_rollback", &reply)),
        }
    }

    pub async fn kv_incr(
        &self,
        ns: &str,
        key: &str,
        by: i64,
        ttl: Ttl,
        prov: &Provenance,
    ) -> ApiResult<(i64, Entry)> {
        self.register_namespace(ns).await?;
        let keys = self.keys().ns(ns).for_entry(key);
        let mut args = self.ctx_args(prov);
        args.push(key.into());
        args.push(by.to_string().into());
        args.push(ttl.arg().into());
        let reply = self.fcall("kv_incr", keys, args).await?.into_array();
        match status_of(&reply).as_str() {
            "ok" => {
                let text = reply.get(1).and_then(v_str).unwrap_or_default();
                let value: i64 = text.parse().map_err(|_| bad_reply("kv_incr", &reply))?;
                let entry = written_entry(ns, key, Some(text), None, &reply[2..], prov);
                Ok((value, entry))
            }
            "not_a_counter" => Err(ApiError::new(
                ErrorCode::NotACounter,
                format!("`{key}` holds a value that is not an integer"),
            )),
            "overflow" => Err(ApiError::new(
                ErrorCode::CounterOverflow,
                "the result would leave the safe integer range ±9007199254740991",
            )),
            _ => Err(bad_reply("kv_incr", &reply)),
        }
    }

    /// One page of keys in byte order, starting after `after` (exclusive) within `prefix`.
    /// Returns the entries still alive and the last key scanned when the page was full.
    pub async fn kv_list(
        &self,
        ns: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        with_values: bool,
    ) -> ApiResult<(Vec<Entry>, Option<String>)> {
        let nk = self.keys().ns(ns);
        let min = match after {
            Some(a) if a.as_bytes() >= prefix.as_bytes() => format!("({a}"),
            _ => format!("[{prefix}"),
        };
        // 0xFF never occurs in UTF-8, so it sorts after every key that starts with `prefix`.
        let max: Value = if prefix.is_empty() {
            "+".into()
        } else {
            let mut m = b"[".to_vec();
            m.extend_from_slice(prefix.as_bytes());
            m.push(0xFF);
            Value::Bytes(m.into())
        };
        let cmd =
            fred::types::CustomCommand::new_static("ZRANGEBYLEX", fred::types::ClusterHash::FirstKey, false);
        let args: Vec<Value> = vec![
            nk.idx.as_str().into(),
            min.into(),
            max,
            "LIMIT".into(),
            0i64.into(),
            (limit as i64).into(),
        ];
        let names: Vec<String> = self.timed("zrangebylex", self.client().custom(cmd, args)).await?;
        let mut names = names;
        let mut full = names.len() == limit;
        if with_values && !names.is_empty() {
            let sizes = self.sizes(ns, &names).await?;
            let mut total = 0u64;
            let fit = sizes
                .iter()
                .take_while(|sz| {
                    total += **sz;
                    total <= MAX_VALUE_BYTES_PER_RESPONSE
                })
                .count()
                .max(1);
            if fit < names.len() {
                names.truncate(fit);
                full = true;
            }
        }
        let next = full.then(|| names.last().cloned()).flatten();
        let items = self
            .kv_get_many(ns, &names, with_values)
            .await?
            .into_iter()
            .flatten()
            .collect();
        Ok((items, next))
    }

    pub async fn kv_txn(&self, ns: &str, plan: &TxnPlan, prov: &Provenance) -> ApiResult<TxnOutcome> {
        if !plan.success.is_empty() || !plan.failure.is_empty() {
            self.register_namespace(ns).await?;
        }
        let nk = self.keys().ns(ns);
        let mut keys = nk.common();
        for k in &plan.keys {
            keys.push(nk.entry(k));
            keys.push(nk.hist(k));
        }
        let mut args = self.ctx_args(prov);
        args.push(plan.keys.len().to_string().into());
        args.extend(plan.keys.iter().map(|k| Value::from(k.as_str())));
        args.push(plan.compares.len().to_string().into());
        for c in &plan.compares {
            let (i, kind, arg) = match c {
                TxnCompare::Version(i, v) => (i, "version", v.to_string()),
                TxnCompare::Exists(i, b) => (i, "exists", if *b { "1" } else { "0" }.to_string()),
                TxnCompare::Value(i, v) => (i, "value", v.clone()),
            };
            args.push((i + 1).to_string().into());
            args.push(kind.into());
            args.push(arg.into());
        }
        for ops in [&plan.success, &plan.failure] {
            args.push(ops.len().to_string().into());
            for op in ops {
                let (kind, i, value, meta, ttl) = match op {
                    TxnOp::Put {
                        key,
                        value,
                        metadata,
                        ttl_ms,
                    } => (
                        "put",
                        *key,
                        value.clone(),
                        metadata.clone().unwrap_or_default(),
                        ttl_ms.map(|t| t.to_string()).unwrap_or_default(),
                    ),
                    TxnOp::Delete { key } => ("delete", *key, String::new(), String::new(), String::new()),
                    TxnOp::Get { key } => ("get", *key, String::new(), String::new(), String::new()),
                };
                args.push(kind.into());
                args.push((i + 1).to_string().into());
                args.push(value.into());
                args.push(meta.into());
                args.push(ttl.into());
            }
        }
        let reply = self.fcall("kv_txn", keys, args).await?.into_array();
        if reply.len() < 2 {
            return Err(bad_reply("kv_txn", &reply));
        }
        let succeeded = v_i64(&reply[0]) == 1;
        let revision = v_u64(&reply[1]);
        let ops = if succeeded { &plan.success } else { &plan.failure };
        let mut results = Vec::with_capacity(ops.len());
        for (op, r) in ops.iter().zip(reply.into_iter().skip(2)) {
            let r = r.into_array();
            let res = match op {
                TxnOp::Put { key, .. } => TxnResult::Put {
                    key: plan.keys[*key].clone(),
                    version: r.get(1).map(v_u64).unwrap_or(0),
                    mod_revision: r.get(2).map(v_u64).unwrap_or(0),
                    created: r.get(3).map(v_i64) == Some(1),
                },
                TxnOp::Delete { key } => TxnResult::Delete {
                    key: plan.keys[*key].clone(),
                    deleted: r.get(1).map(v_i64) == Some(1),
                },
                TxnOp::Get { key } => {
                    let name = &plan.keys[*key];
                    let rec = r.get(1).and_then(v_str);
                    TxnResult::Get {
                        key: name.clone(),
                        entry: rec.and_then(|rec| Entry::from_record(ns, name, &rec, true)),
                    }
                }
            };
            results.push(res);
        }
        Ok(TxnOutcome {
            succeeded,
            revision,
            results,
        })
    }

    /// Every namespace in the registry with its figures, sorted by name.
    pub async fn namespaces(&self) -> ApiResult<Vec<NamespaceInfo>> {
        let mut names: Vec<String> = self
            .timed("smembers", self.client().smembers(self.keys().namespaces()))
            .await?;
        names.sort();
        let reads = names.iter().map(|ns| {
            let nk = self.keys().ns(ns);
            async move {
                let (meta, count): (Vec<Option<u64>>, u64) = futures::try_join!(
                    self.client()
                        .hmget::<Vec<Option<u64>>, _, _>(nk.meta.clone(), vec!["rev", "bytes"]),
                    self.client().zcard::<u64, _>(nk.idx.clone()),
                )?;
                Ok::<_, fred::error::Error>(NamespaceInfo {
                    namespace: ns.clone(),
                    keys: count,
                    revision: meta.first().copied().flatten().unwrap_or(0),
                    bytes: meta.get(1).copied().flatten().unwrap_or(0),
                })
            }
        });
        self.timed("namespace_info", futures::future::try_join_all(reads))
            .await
    }

    /// Every namespace name in the registry.
    pub async fn namespace_names(&self) -> ApiResult<Vec<String>> {
        self.timed("smembers", self.client().smembers(self.keys().namespaces()))
            .await
    }

    /// Keys of `ns` whose TTL has passed (up to `limit`), for the expiry reconciler.
    pub async fn due_expiries(&self, ns: &str, now_ms: i64, limit: i64) -> ApiResult<Vec<String>> {
        let nk = self.keys().ns(ns);
        self.timed(
            "zrangebyscore",
            self.client()
                .zrangebyscore(nk.ttl, "-inf", now_ms as f64, false, Some((0, limit))),
        )
        .await
    }

    /// Record the removal of `key` by Redis (expiry/eviction) if not yet recorded.
    pub async fn kv_forget(&self, ns: &str, key: &str) -> ApiResult<bool> {
        let keys = self.keys().ns(ns).for_entry(key);
        let mut args = self.ctx_args(&Provenance::default());
        args.push(key.into());
        let reply = self.fcall("kv_forget", keys, args).await?;
        Ok(v_i64(&reply) == 1)
    }

    /// Check keys named by keyspace notifications (`(key, hint)`, hint one of `expired`,
    /// `evicted`, `gone`, `written`): removals are recorded, and the keys whose entry holds
    /// something the service did not write are returned for [`Store::kv_adopt`].
    pub async fn kv_observe(&self, ns: &str, items: &[(String, &'static str)]) -> ApiResult<Vec<String>> {
        let nk = self.keys().ns(ns);
        let mut keys = nk.common();
        let mut args = self.ctx_args(&Provenance::default());
        args.push((items.len() as i64).into());
        for (key, hint) in items {
            keys.push(nk.entry(key));
            keys.push(nk.hist(key));
            args.push(key.as_str().into());
            args.push((*hint).into());
        }
        let reply = self.fcall("kv_observe", keys, args).await?;
        Ok(match reply {
            Value::Array(a) => a.iter().filter_map(v_str).collect(),
            _ => Vec::new(),
        })
    }

    /// The raw contents of an entry key another client wrote: `Ok(None)` when absent,
    /// `Err(len)` when it is not a string or longer than `limit` bytes.
    pub async fn raw_entry(
        &self,
        ns: &str,
        key: &str,
        limit: u64,
    ) -> ApiResult<Option<Result<Vec<u8>, u64>>> {
        let ekey = self.keys().ns(ns).entry(key);
        let kind: String = self.timed("type", self.client().r#type(ekey.clone())).await?;
        match kind.as_str() {
            "none" => return Ok(None),
            "string" => {}
            _ => return Ok(Some(Err(u64::MAX))),
        }
        let len: u64 = self.timed("strlen", self.client().strlen(ekey.clone())).await?;
        if len > limit {
            return Ok(Some(Err(len)));
        }
        let raw: Option<Vec<u8>> = self.timed("get", self.client().get(ekey)).await?;
        Ok(raw.map(Ok))
    }

    /// Adopt a foreign value (see `kv_adopt` in the functions library): `adopt` =
    /// `Some((sha1 of the contents read, canonical value, metadata))`, `None` = drop it.
    /// Returns the function's status (`ok`, `own`, `gone`, `changed`, `dropped`).
    pub async fn kv_adopt(
        &self,
        ns: &str,
        key: &str,
        adopt: Option<(&str, &str, &str)>,
        limit: u64,
    ) -> ApiResult<String> {
        let keys = self.keys().ns(ns).for_entry(key);
        let mut args = self.ctx_args(&Provenance::default());
        let (mode, sha, value, meta) = match adopt {
            Some((sha, value, meta)) => ("adopt", sha, value, meta),
            None => ("drop", "", "", ""),
        };
        for a in [key, mode, sha, value, meta] {
            args.push(a.into());
        }
        args.push((limit as i64).into());
        let reply = self.fcall("kv_adopt", keys, args).await?;
        match reply {
            Value::Array(a) => Ok(status_of(&a)),
            other => Err(bad_reply("kv_adopt", &[other])),
        }
    }
}

/// The entry just written, from the function's `ver crev mrev ct ut exp` reply fields.
fn written_entry(
    ns: &str,
    key: &str,
    value: Option<String>,
    metadata: Option<String>,
    r: &[Value],
    prov: &Provenance,
) -> Entry {
    let exp = r.get(5).and_then(v_str).and_then(|s| s.parse::<i64>().ok());
    Entry {
        namespace: ns.to_string(),
        key: key.to_string(),
        value,
        version: r.first().map(v_u64).unwrap_or(0),
        create_revision: r.get(1).map(v_u64).unwrap_or(0),
        mod_revision: r.get(2).map(v_u64).unwrap_or(0),
        created_at: r.get(3).map(v_i64).unwrap_or(0),
        updated_at: r.get(4).map(v_i64).unwrap_or(0),
        expires_at: exp,
        metadata,
        agent_id: prov.agent.clone(),
        change_reason: prov.reason.clone(),
    }
}
