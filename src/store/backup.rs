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
    Function::new("ns_dump_fix", Arity::AtLeast(4), Arity::AtLeast(1)).reading();
pub const NS_RESTORE_BEGIN: Function =
    Function::new("ns_restore_begin", Arity::Exactly(2), Arity::AtLeast(1));
pub const NS_RESTORE_PUT: Function = Function::new("ns_restore_put", Arity::AtLeast(5), Arity::AtLeast(12));
pub const NS_RESTORE_DELETE: Function =
    Function::new("ns_restore_delete", Arity::AtLeast(5), Arity::AtLeast(8));

pub const FUNCTIONS: &[&Function] = &[
    &NS_READ,
    &NS_DUMP_FIX,
    &NS_RESTORE_BEGIN,
    &NS_RESTORE_PUT,
    &NS_RESTORE_DELETE,
];

/// One version of an entry as restored: the fields of a record (see kv.lua).
#[derive(Debug, Clone)]
pub struct RestoreVersion {
    pub version: u64,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub agent_id: Option<String>,
    pub change_reason: Option<String>,
    /// JSON text ('' = none).
    pub metadata: String,
    pub value: String,
}

/// One entry of a backup to restore: its current version and its history, oldest first.
#[derive(Debug, Clone)]
pub struct RestoreEntry {
    pub key: String,
    pub current: RestoreVersion,
    pub history: Vec<RestoreVersion>,
}

/// How a restore treats what the namespace holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreMode {
    Merge,
    Replace,
}

/// What a restore call did (or, dry, would do).
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreCounts {
    pub restored: u64,
    pub skipped: u64,
    pub deleted: u64,
    pub revision: u64,
}

/// A restore call's frame: the backup's epoch and the namespace's epoch and revision when the
/// restore began.
#[derive(Debug, Clone)]
pub struct RestoreFrame {
    pub mode: RestoreMode,
    pub dry: bool,
    pub backup_epoch: String,
    pub epoch_before: String,
    pub revision_before: u64,
}

fn version_args(v: &RestoreVersion, with_mrev: bool, out: &mut Vec<Value>) {
    out.push(v.version.to_string().into());
    out.push(v.create_revision.to_string().into());
    if with_mrev {
        out.push(v.mod_revision.to_string().into());
    }
    out.push(v.created_at_ms.to_string().into());
    out.push(v.updated_at_ms.to_string().into());
    out.push(v.expires_at_ms.map(|e| e.to_string()).unwrap_or_default().into());
    out.push(v.agent_id.clone().unwrap_or_default().into());
    out.push(v.change_reason.clone().unwrap_or_default().into());
    out.push(v.metadata.as_str().into());
    out.push(v.value.as_str().into());
}

fn restore_prov() -> crate::domain::kv::Provenance {
    crate::domain::kv::Provenance {
        reason: Some("restore".into()),
        ..Default::default()
    }
}

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
        /// The partition record (empty for a plain namespace).
        part: Vec<(String, String)>,
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
        let mut keys = vec![nk.meta.clone(), nk.log.clone(), nk.fence(), nk.part()];
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
        let part = hash_fields(&r.value()).into_iter().collect();
        let entries = r.array();
        let mut changed = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            changed.push((name.clone(), dumped(entries.get(i).unwrap_or(&Value::Null))?));
        }
        Ok(Fix::Ok {
            revision,
            epoch,
            fence,
            part,
            keys: changed,
        })
    }

    /// Start restoring `ns`: a new epoch, each lock's fencing counter set to the higher of its
    /// current value and the backup's, plus `margin`. Answers the revision and epoch before.
    pub async fn ns_restore_begin(
        &self,
        ns: &str,
        fencing: &[(String, u64)],
        margin: u64,
    ) -> ApiResult<(u64, String)> {
        let nk = self.keys().ns(ns);
        let mut args: Vec<Value> = vec![margin.to_string().into()];
        for (name, token) in fencing {
            args.push(name.as_str().into());
            args.push(token.to_string().into());
        }
        let mut r = self
            .fcall(&NS_RESTORE_BEGIN, vec![nk.meta.clone(), nk.fence()], args)
            .await?;
        let rev = r.u64_or_0();
        self.forget_namespace(ns);
        self.register_namespace(ns).await?;
        Ok((rev, r.str()))
    }

    /// Restore a batch of entries of `ns` (in key order).
    pub async fn ns_restore_put(
        &self,
        ns: &str,
        frame: &RestoreFrame,
        entries: &[RestoreEntry],
    ) -> ApiResult<RestoreCounts> {
        let nk = self.keys().ns(ns);
        let mut keys = nk.common();
        let mut args = self.ctx_args(&restore_prov());
        args.push(
            if frame.mode == RestoreMode::Replace {
                "replace"
            } else {
                "merge"
            }
            .into(),
        );
        args.push(if frame.dry { "1" } else { "" }.into());
        args.push(frame.backup_epoch.as_str().into());
        args.push(frame.epoch_before.as_str().into());
        args.push(frame.revision_before.to_string().into());
        args.push(entries.len().to_string().into());
        for e in entries {
            keys.push(nk.entry(&e.key));
            keys.push(nk.hist(&e.key));
            args.push(e.key.as_str().into());
            version_args(&e.current, false, &mut args);
            args.push(e.history.len().to_string().into());
            for h in &e.history {
                version_args(h, true, &mut args);
            }
        }
        let mut r = self.fcall(&NS_RESTORE_PUT, keys, args).await?;
        Ok(RestoreCounts {
            restored: r.u64_or_0(),
            skipped: r.u64_or_0(),
            deleted: r.u64_or_0(),
            revision: r.u64_or_0(),
        })
    }

    /// Delete `names` of `ns` (replace restore: keys the backup does not hold).
    pub async fn ns_restore_delete(&self, ns: &str, dry: bool, names: &[String]) -> ApiResult<RestoreCounts> {
        let nk = self.keys().ns(ns);
        let mut keys = nk.common();
        let mut args = self.ctx_args(&restore_prov());
        args.push(if dry { "1" } else { "" }.into());
        args.push(names.len().to_string().into());
        for n in names {
            keys.push(nk.entry(n));
            keys.push(nk.hist(n));
            args.push(n.as_str().into());
        }
        let mut r = self.fcall(&NS_RESTORE_DELETE, keys, args).await?;
        Ok(RestoreCounts {
            deleted: r.u64_or_0(),
            revision: r.u64_or_0(),
            ..Default::default()
        })
    }
}
