//! Queue backups: wrappers of the queue half of `migrations/functions/backup.lua` (a capture
//! in windows of task ids with a change list, then one atomic fix-up; a restore that clears,
//! puts and ends).

use std::collections::BTreeMap;

use fred::types::Value;

use super::fcall::{hash_fields, v_str, Arity, Function};
use super::Store;
use crate::error::{ApiError, ApiResult};

const Q: Arity = Arity::Exactly(10);
pub const Q_DUMP_BEGIN: Function = Function::new("q_dump_begin", Q, Arity::Exactly(2));
pub const Q_DUMP_PAGE: Function = Function::new("q_dump_page", Q, Arity::Exactly(4)).reading();
pub const Q_DUMP_FIX: Function = Function::new("q_dump_fix", Q, Arity::Exactly(3));
pub const Q_RESTORE_CLEAR: Function = Function::new("q_restore_clear", Q, Arity::Exactly(2));
pub const Q_RESTORE_PUT: Function = Function::new("q_restore_put", Q, Arity::AtLeast(2));
pub const Q_RESTORE_END: Function = Function::new("q_restore_end", Q, Arity::AtLeast(2));

pub const FUNCTIONS: &[&Function] = &[
    &Q_DUMP_BEGIN,
    &Q_DUMP_PAGE,
    &Q_DUMP_FIX,
    &Q_RESTORE_CLEAR,
    &Q_RESTORE_PUT,
    &Q_RESTORE_END,
];

/// The sets a task can be in, in the order of the functions' scores.
pub const TASK_SETS: [&str; 7] = ["ready", "age", "delayed", "retry", "leased", "completed", "dead"];

/// A task as a backup holds it: every field of its hash and its score in each set it is in.
#[derive(Debug, Clone, PartialEq)]
pub struct DumpedTask {
    pub id: u64,
    pub fields: BTreeMap<String, String>,
    /// Set name ([`TASK_SETS`]) → score, as Redis writes it.
    pub sets: BTreeMap<String, String>,
}

fn task_of(v: &Value) -> ApiResult<(u64, Option<DumpedTask>)> {
    let bad = || ApiError::internal(format!("unreadable captured task: {v:?}"));
    let Value::Array(a) = v else { return Err(bad()) };
    let id: u64 = a
        .first()
        .and_then(v_str)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let Some(fields) = a.get(1) else {
        return Ok((id, None));
    };
    let fields: BTreeMap<String, String> = hash_fields(fields).into_iter().collect();
    let mut sets = BTreeMap::new();
    if let Some(Value::Array(scores)) = a.get(2) {
        for (name, score) in TASK_SETS.iter().zip(scores) {
            if let Some(s) = v_str(score) {
                sets.insert(name.to_string(), s);
            }
        }
    }
    Ok((id, Some(DumpedTask { id, fields, sets })))
}

/// What `q_dump_fix` answered.
pub enum QueueFix {
    Ok {
        meta: BTreeMap<String, String>,
        /// The tasks changed during the capture, as they are now (`None`: gone).
        tasks: Vec<(u64, Option<DumpedTask>)>,
    },
    /// The change list expired or grew past the limit: capture again.
    Restart,
}

impl Store {
    async fn qb_call(
        &self,
        f: &'static Function,
        q: &str,
        extra: Vec<Value>,
    ) -> ApiResult<super::fcall::Reply> {
        let qk = self.keys().queue(q);
        let mut args: Vec<Value> = vec![qk.task_prefix.into(), qk.channel.into()];
        args.extend(extra);
        self.fcall(f, qk.keys, args).await
    }

    /// Start capturing `q`; answers its sequence.
    pub async fn q_dump_begin(&self, q: &str) -> ApiResult<u64> {
        self.qb_call(&Q_DUMP_BEGIN, q, vec![]).await?.u64("sequence")
    }

    /// The tasks of `q` with ids `from..=to`.
    pub async fn q_dump_page(&self, q: &str, from: u64, to: u64) -> ApiResult<Vec<DumpedTask>> {
        let r = self
            .qb_call(
                &Q_DUMP_PAGE,
                q,
                vec![from.to_string().into(), to.to_string().into()],
            )
            .await?;
        let mut out = Vec::new();
        for v in r.rest() {
            if let (_, Some(t)) = task_of(&v)? {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// The figures of `q` and the tasks changed since [`Store::q_dump_begin`], at once.
    pub async fn q_dump_fix(&self, q: &str, most: usize) -> ApiResult<QueueFix> {
        let mut r = self
            .qb_call(&Q_DUMP_FIX, q, vec![most.to_string().into()])
            .await?;
        if r.status()? != "ok" {
            return Ok(QueueFix::Restart);
        }
        let meta = hash_fields(&r.value()).into_iter().collect();
        let mut tasks = Vec::new();
        if let Value::Array(a) = r.value() {
            for v in &a {
                tasks.push(task_of(v)?);
            }
        }
        Ok(QueueFix::Ok { meta, tasks })
    }

    /// Remove up to 500 tasks of `q`; 0 once it holds none.
    pub async fn q_restore_clear(&self, q: &str) -> ApiResult<u64> {
        self.qb_call(&Q_RESTORE_CLEAR, q, vec![]).await?.u64("removed")
    }

    /// Write `tasks` into `q` as they are.
    pub async fn q_restore_put(&self, q: &str, tasks: &[DumpedTask]) -> ApiResult<u64> {
        let mut extra: Vec<Value> = Vec::new();
        for t in tasks {
            extra.push(t.id.to_string().into());
            extra.push(t.fields.len().to_string().into());
            for (k, v) in &t.fields {
                extra.push(k.as_str().into());
                extra.push(v.as_str().into());
            }
            for set in TASK_SETS {
                extra.push(t.sets.get(set).cloned().unwrap_or_default().into());
            }
        }
        self.qb_call(&Q_RESTORE_PUT, q, extra).await?.u64("written")
    }

    /// Set `q`'s figures from a backup (its sequence only ever grows); answers the sequence.
    pub async fn q_restore_end(&self, q: &str, meta: &BTreeMap<String, String>) -> ApiResult<u64> {
        let mut extra: Vec<Value> = Vec::new();
        for (k, v) in meta {
            extra.push(k.as_str().into());
            extra.push(v.as_str().into());
        }
        self.qb_call(&Q_RESTORE_END, q, extra).await?.u64("sequence")
    }
}
