//! Task queues: one wrapper per queue function of `migrations/functions/queues.lua`.

use std::collections::HashMap;

use fred::prelude::*;
use fred::types::Value;
use serde_json::value::RawValue;

use super::fcall::{hash_fields, Arity, Function, Refusal, Reply};
use super::Store;
use crate::domain::queue::{Leased, NewTask, QueueStats, Task};
use crate::domain::time::rfc3339;
use crate::error::{ApiError, ApiResult, ErrorCode};

const Q: Arity = Arity::Exactly(10);

pub const Q_ENQUEUE: Function = Function::new("q_enqueue", Q, Arity::Exactly(10));
pub const Q_LEASE: Function = Function::new("q_lease", Q, Arity::AtLeast(4));
pub const Q_ACK: Function =
    Function::new("q_ack", Arity::AtLeast(10), Arity::AtLeast(5)).refusing(&[Refusal::StaleFence]);
pub const Q_NACK: Function =
    Function::new("q_nack", Arity::AtLeast(10), Arity::AtLeast(6)).refusing(&[Refusal::StaleFence]);
pub const Q_EXTEND: Function = Function::new("q_extend", Q, Arity::Exactly(5));
pub const Q_REAP: Function = Function::new("q_reap", Q, Arity::Exactly(2));
pub const Q_RETRY_DEAD: Function = Function::new("q_retry_dead", Q, Arity::Exactly(3));
pub const Q_PURGE_DEAD: Function = Function::new("q_purge_dead", Q, Arity::Exactly(2));
pub const Q_PAUSE: Function = Function::new("q_pause", Q, Arity::Exactly(3));
pub const Q_STATS: Function = Function::new("q_stats", Q, Arity::Exactly(2)).reading();
pub const Q_DEAD_LIST: Function = Function::new("q_dead_list", Q, Arity::Exactly(5)).reading();
pub const Q_TASK_LIST: Function = Function::new("q_task_list", Q, Arity::Exactly(6)).reading();
pub const Q_REQUEUE: Function = Function::new("q_requeue", Q, Arity::Exactly(5));

pub const FUNCTIONS: &[&Function] = &[
    &Q_ENQUEUE,
    &Q_LEASE,
    &Q_ACK,
    &Q_NACK,
    &Q_EXTEND,
    &Q_REAP,
    &Q_RETRY_DEAD,
    &Q_PURGE_DEAD,
    &Q_PAUSE,
    &Q_STATS,
    &Q_DEAD_LIST,
    &Q_TASK_LIST,
    &Q_REQUEUE,
];

/// A task from its hash fields (`with_token`: lease answers show the lease token).
fn task_from_fields(queue: &str, f: &HashMap<String, String>, with_token: bool) -> Option<Task> {
    let ms = |k: &str| f.get(k).and_then(|v| v.parse::<i64>().ok());
    let time = |k: &str| ms(k).map(rfc3339);
    let text = |k: &str| f.get(k).filter(|v| !v.is_empty()).cloned();
    Some(Task {
        id: f.get("id")?.clone(),
        queue: queue.to_string(),
        payload: RawValue::from_string(f.get("payload")?.clone()).ok()?,
        priority: f.get("priority")?.parse().ok()?,
        state: f.get("state")?.clone(),
        attempts: f.get("attempts")?.parse().ok()?,
        max_attempts: f.get("max_attempts")?.parse().ok()?,
        run_at: time("run_at")?,
        enqueued_at: time("enqueued_at")?,
        leased_until: time("leased_until"),
        lease_owner: text("lease_owner"),
        lease_token: if with_token { text("lease_token") } else { None },
        result: text("result").and_then(|r| RawValue::from_string(r).ok()),
        last_error: text("last_error"),
        idempotency_key: text("idem"),
        finished_at: time("finished_at"),
    })
}

fn task_of(queue: &str, v: &Value, with_token: bool) -> ApiResult<Task> {
    task_from_fields(queue, &hash_fields(v), with_token)
        .ok_or_else(|| ApiError::internal(format!("unreadable task in queue {queue}: {v:?}")))
}

fn tasks_of(queue: &str, list: Vec<Value>, with_token: bool) -> ApiResult<Vec<Task>> {
    list.iter().map(|t| task_of(queue, t, with_token)).collect()
}

/// `{tasks, total, cursor}` of `q_dead_list` / `q_task_list`.
fn task_page(q: &str, mut r: Reply) -> ApiResult<(Vec<Task>, u64, Option<String>)> {
    let tasks = match r.value() {
        Value::Array(list) => tasks_of(q, list, false)?,
        _ => return Err(ApiError::bad_request("unknown task state")),
    };
    let total = r.u64_or_0();
    let last = Some(r.str()).filter(|l| !l.is_empty());
    Ok((tasks, total, last))
}

fn lease_lost(state: Option<String>) -> ApiError {
    let why = match state.as_deref() {
        Some("expired") => "the lease expired; the task went back to the queue".to_string(),
        Some(s) => format!("not the task's current lease (task is {s})"),
        None => "not the task's current lease".to_string(),
    };
    ApiError::new(ErrorCode::LeaseLost, why)
}

/// Lock `(namespace, lock, token)` an ack or nack's `x-fencing-token` names.
pub type AckFence = (String, String, u64);

impl Store {
    /// Call a queue function: KEYS are the queue's ten keys (plus, with `fence`, the lock
    /// namespace's fence hash), ARGV the task key prefix, the channel, then `extra` (then the
    /// fence's lock and token).
    async fn qcall(
        &self,
        f: &'static Function,
        q: &str,
        extra: Vec<Value>,
        fence: Option<&AckFence>,
    ) -> ApiResult<Reply> {
        let qk = self.keys().queue(q);
        let mut keys = qk.keys;
        let mut args: Vec<Value> = vec![qk.task_prefix.into(), qk.channel.into()];
        args.extend(extra);
        if let Some((ns, lock, n)) = fence {
            keys.push(self.keys().ns(ns).fence());
            args.push(lock.as_str().into());
            args.push(n.to_string().into());
        }
        self.fcall(f, keys, args).await
    }

    /// Record a queue in the registry (once per process per queue).
    pub async fn register_queue(&self, q: &str) -> ApiResult<()> {
        self.register_once(&format!("q:{q}"), self.keys().queues(), q)
            .await
    }

    pub async fn queue_names(&self) -> ApiResult<Vec<String>> {
        self.timed("smembers", self.client().smembers(self.keys().queues()))
            .await
    }

    /// Returns the task and whether it was created (false: idempotency key seen before).
    pub async fn q_enqueue(&self, q: &str, t: &NewTask) -> ApiResult<(Task, bool)> {
        let opt = |v: Option<String>| Value::from(v.unwrap_or_default());
        let mut r = self
            .qcall(
                &Q_ENQUEUE,
                q,
                vec![
                    t.payload.as_str().into(),
                    (t.priority as i64).into(),
                    opt(t.delay_ms.map(|d| d.to_string())),
                    opt(t.run_at_ms.map(|d| d.to_string())),
                    (t.max_attempts as i64).into(),
                    (t.backoff_ms as i64).into(),
                    t.idempotency_key.as_deref().unwrap_or("").into(),
                    (t.retention_ms as i64).into(),
                ],
                None,
            )
            .await?;
        let created = r.status()? == "created";
        Ok((task_of(q, &r.value(), false)?, created))
    }

    pub async fn q_lease(
        &self,
        q: &str,
        worker: &str,
        tokens: &[String],
        lease_ms: u64,
    ) -> ApiResult<Leased> {
        let mut extra: Vec<Value> = vec![worker.into(), (lease_ms as i64).into()];
        extra.extend(tokens.iter().map(|t| Value::from(t.as_str())));
        let mut r = self.qcall(&Q_LEASE, q, extra, None).await?;
        let tasks = tasks_of(q, r.array(), true)?;
        let next_due_in_ms = r.opt_i64().map(|n| n.max(0) as u64);
        Ok(Leased {
            tasks,
            next_due_in_ms,
            paused: r.flag(),
        })
    }

    /// The task after the change, and who held the lease (for nack, whose answer has none).
    async fn q_leased_op(
        &self,
        f: &'static Function,
        q: &str,
        extra: Vec<Value>,
        fence: Option<&AckFence>,
    ) -> ApiResult<(Task, Option<String>)> {
        let mut r = self.qcall(f, q, extra, fence).await?;
        match r.status()?.as_str() {
            "ok" => {
                let t = task_of(q, &r.value(), false)?;
                let owner = r
                    .opt_str()
                    .filter(|o| !o.is_empty())
                    .or_else(|| t.lease_owner.clone());
                Ok((t, owner))
            }
            "not_found" => Err(ApiError::not_found("no such task")),
            "lease_lost" => Err(lease_lost(r.opt_str())),
            other => Err(r.unexpected(other)),
        }
    }

    pub async fn q_ack(
        &self,
        q: &str,
        id: &str,
        token: &str,
        result: Option<&str>,
        fence: Option<&AckFence>,
    ) -> ApiResult<(Task, Option<String>)> {
        let extra = vec![id.into(), token.into(), result.unwrap_or("").into()];
        self.q_leased_op(&Q_ACK, q, extra, fence).await
    }

    pub async fn q_nack(
        &self,
        q: &str,
        id: &str,
        token: &str,
        error: &str,
        retry_delay_ms: Option<u64>,
        fence: Option<&AckFence>,
    ) -> ApiResult<(Task, Option<String>)> {
        let delay = retry_delay_ms.map(|d| d.to_string()).unwrap_or_default();
        let extra = vec![id.into(), token.into(), error.into(), delay.into()];
        self.q_leased_op(&Q_NACK, q, extra, fence).await
    }

    pub async fn q_extend(&self, q: &str, id: &str, token: &str, lease_ms: u64) -> ApiResult<Task> {
        let extra = vec![id.into(), token.into(), (lease_ms as i64).into()];
        self.q_leased_op(&Q_EXTEND, q, extra, None).await.map(|(t, _)| t)
    }

    pub async fn q_retry_dead(&self, q: &str, id: &str) -> ApiResult<Task> {
        let mut r = self.qcall(&Q_RETRY_DEAD, q, vec![id.into()], None).await?;
        match r.status()?.as_str() {
            "ok" => task_of(q, &r.value(), false),
            _ => Err(ApiError::not_found("no such task in the dead-letter list")),
        }
    }

    /// Remove every dead task; returns how many.
    pub async fn q_purge_dead(&self, q: &str) -> ApiResult<u64> {
        let mut total = 0;
        loop {
            let n = self.qcall(&Q_PURGE_DEAD, q, vec![], None).await?.u64("purged")?;
            total += n;
            if n < 1000 {
                return Ok(total);
            }
        }
    }

    pub async fn q_pause(&self, q: &str, paused: bool) -> ApiResult<()> {
        let flag = if paused { "1" } else { "0" };
        self.qcall(&Q_PAUSE, q, vec![flag.into()], None).await.map(|_| ())
    }

    /// Background upkeep: promote due tasks, reclaim expired leases, apply retention, in
    /// calls of up to 1000 each until nothing more is due (at most 100 calls).
    pub async fn q_reap(&self, q: &str) -> ApiResult<u64> {
        let mut total = 0;
        for _ in 0..100 {
            let mut r = self.qcall(&Q_REAP, q, vec![], None).await?;
            let (n, cleaned) = (r.u64("made ready")?, r.u64("removed")?);
            total += n;
            if n < 1000 && cleaned < 1000 {
                break;
            }
        }
        Ok(total)
    }

    pub async fn q_stats(&self, q: &str) -> ApiResult<QueueStats> {
        let mut r = self.qcall(&Q_STATS, q, vec![], None).await?;
        let mut n = || r.u64_or_0();
        let (ready, delayed, failed, leased, completed, dead) = (n(), n(), n(), n(), n(), n());
        let paused = n() == 1;
        let (enqueued_total, completed_total, failed_total, dead_total, lease_expired_total) =
            (n(), n(), n(), n(), n());
        let (oldest, now) = (n(), n());
        Ok(QueueStats {
            queue: q.to_string(),
            ready,
            delayed,
            failed,
            leased,
            completed,
            dead,
            paused,
            enqueued_total,
            completed_total,
            failed_total,
            dead_total,
            lease_expired_total,
            oldest_ready_age_ms: (oldest > 0).then(|| now.saturating_sub(oldest)),
        })
    }

    /// Dead tasks after `after` (death time in ms as text and id; from the start when `None`), oldest
    /// first: at most `limit`, how many in all, and the page's last position (`<score>:<id>`) when more remain.
    pub async fn q_dead_list(
        &self,
        q: &str,
        after: Option<(String, String)>,
        limit: u64,
    ) -> ApiResult<(Vec<Task>, u64, Option<String>)> {
        let (score, id) = after.unwrap_or_default();
        let extra = vec![score.into(), id.into(), (limit as i64).into()];
        let r = self.qcall(&Q_DEAD_LIST, q, extra, None).await?;
        task_page(q, r)
    }

    /// Tasks in `state` after `after` (the score of the state's set as text, and id), in the
    /// set's order; as [`Store::q_dead_list`].
    pub async fn q_task_list(
        &self,
        q: &str,
        state: &str,
        after: Option<(String, String)>,
        limit: u64,
    ) -> ApiResult<(Vec<Task>, u64, Option<String>)> {
        let (score, id) = after.unwrap_or_default();
        let extra = vec![state.into(), score.into(), id.into(), (limit as i64).into()];
        let r = self.qcall(&Q_TASK_LIST, q, extra, None).await?;
        task_page(q, r)
    }

    /// Return a leased task to its queue at once if `token` is still its lease (the holder is
    /// gone). Returns whether it was.
    pub async fn q_requeue(&self, q: &str, id: &str, token: &str, why: &str) -> ApiResult<bool> {
        let extra = vec![id.into(), token.into(), why.into()];
        Ok(self.qcall(&Q_REQUEUE, q, extra, None).await?.flag())
    }

    pub async fn q_task(&self, q: &str, id: &str) -> ApiResult<Option<Task>> {
        let key = self.keys().queue(q).task(id);
        let m: HashMap<String, String> = self.timed("hgetall", self.client().hgetall(key)).await?;
        if m.is_empty() {
            return Ok(None);
        }
        task_from_fields(q, &m, false)
            .map(Some)
            .ok_or_else(|| ApiError::internal("unreadable task"))
    }

    /// Whether task `id` is still leased with `token` (an agent's held set is pruned of
    /// leases that ended).
    pub async fn q_still_leased(&self, q: &str, id: &str, token: &str) -> ApiResult<bool> {
        let key = self.keys().queue(q).task(id);
        let f: Vec<Option<String>> = self
            .timed("hmget", self.client().hmget(key, vec!["state", "lease_token"]))
            .await?;
        Ok(f.first().cloned().flatten().as_deref() == Some("leased")
            && f.get(1).cloned().flatten().as_deref() == Some(token))
    }
}
