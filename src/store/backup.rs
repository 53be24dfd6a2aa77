//! Backups: wrappers of `migrations/functions/backup.lua` (the consistent capture of a
//! namespace: pages, then one atomic fix-up of what changed meanwhile).

use fred::types::Value;

use super::fcall::{hash_fields, v_str, Arity, Function};
use super::Store;
use crate::error::{ApiError, ApiResult};

pub const NS_DUMP: Function = Function::new("ns_dump", Arity::Exactly(5), Arity::Exactly(3)).reading();
pub const NS_DUMP_FIX: Function =
    Function::new("ns_dump_fix", Arity::Exactly(6), Arity::Exactly(3)).reading();

pub const FUNCTIONS: &[&Function] = &[&NS_DUMP, &NS_DUMP_FIX];

/// One key as captured: its stored record and its history (version, record), oldest first.
#[derive(Debug, Clone)]
pub struct DumpedKey {
    pub key: String,
    pub record: String,
    pub history: Vec<(u64, String)>,
}

/// A page of `ns_dump`.
pub struct DumpPage {
    pub revision: u64,
    pub epoch: String,
    /// The page's last key when more follow.
    pub last: Option<String>,
    pub keys: Vec<DumpedKey>,
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
        /// Every key changed since the first page, as it is now (`None`: absent).
        keys: Vec<(String, Option<DumpedKey>)>,
    },
    /// The log no longer holds the revisions after the first page (the oldest it holds).
    Compacted(u64),
    /// More keys changed than the fix-up reads at once.
    TooMany(u64),
}

fn num(v: &Value) -> u64 {
    v_str(v).and_then(|s| s.parse().ok()).unwrap_or(0)
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

impl Store {
    /// A page of `ns`'s live keys after `after` (atomic at the revision it answers).
    pub async fn ns_dump(&self, ns: &str, after: Option<&str>, count: usize) -> ApiResult<DumpPage> {
        let nk = self.keys().ns(ns);
        let args: Vec<Value> = vec![
            nk.base().into(),
            after.unwrap_or("").into(),
            (count as i64).into(),
        ];
        let r = self.fcall(&NS_DUMP, nk.common(), args).await?;
        let mut items = r.rest().into_iter();
        let revision = num(&items.next().unwrap_or(Value::Null));
        let epoch = v_str(&items.next().unwrap_or(Value::Null)).unwrap_or_default();
        let last = v_str(&items.next().unwrap_or(Value::Null)).filter(|l| !l.is_empty());
        let mut keys = Vec::new();
        if let Some(Value::Array(list)) = items.next() {
            for k in &list {
                keys.extend(dumped(k)?);
            }
        }
        Ok(DumpPage {
            revision,
            epoch,
            last,
            keys,
        })
    }

    /// The keys of `ns` changed after revision `from`, with the namespace's figures, in one
    /// atomic read (at most `most` keys).
    pub async fn ns_dump_fix(&self, ns: &str, from: u64, most: usize) -> ApiResult<Fix> {
        let nk = self.keys().ns(ns);
        let mut keys = nk.common();
        keys.push(nk.fence());
        let args: Vec<Value> = vec![nk.base().into(), (from as i64).into(), (most as i64).into()];
        let mut r = self.fcall(&NS_DUMP_FIX, keys, args).await?;
        match r.status()?.as_str() {
            "compacted" => return Ok(Fix::Compacted(r.u64_or_0())),
            "too_many" => return Ok(Fix::TooMany(r.u64_or_0())),
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
        let mut changed = Vec::new();
        for item in r.array() {
            if let Value::Array(pair) = &item {
                let key = pair.first().and_then(v_str).unwrap_or_default();
                changed.push((key, dumped(pair.get(1).unwrap_or(&Value::Null))?));
            }
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
