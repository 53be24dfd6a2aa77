//! Task queues: one wrapper per queue function of `migrations/swarmstate.lua` and the task as
//! the API shows it.

use std::collections::HashMap;

use fred::prelude::*;
use fred::types::Value;
use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::{v_str, Store};
use crate::error::{ApiError, ApiResult, ErrorCode};

/// A task as returned by the API.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Task {
    pub id: String,
    pub queue: String,
    /// The JSON payload given at enqueue.
    #[schema(value_type = Object)]
    pub payload: Box<RawValue>,
    /// 0 (highest) ..= 9.
    pub priority: u8,
    /// `delayed` (run_at in the future), `ready`, `leased`, `failed` (last attempt failed, waiting
    /// for its backoff), `completed` or `dead` (attempts exhausted; in the dead-letter list).
    pub state: String,
    /// Leases so far (an expired lease counts).
    pub attempts: u32,
    pub max_attempts: u32,
    /// When the task is (or was) due, RFC 3339.
    pub run_at: String,
    pub enqueued_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leased_until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_owner: Option<String>,
    /// Only in lease responses: the token that ack/nack/extend must carry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub result: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// When it completed or died, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

impl Task {
    fn from_fields(queue: &str, f: &HashMap<String, String>, with_token: bool) -> Option<Task> {
        let ms = |k: &str| f.get(k).and_then(|v| v.parse::<i64>().ok());
        let time = |k: &str| ms(k).map(super::kv::rfc3339);
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
}

/// Enqueue parameters, validated by the handler.
pub struct NewTask<'a> {
    pub payload: &'a str,
    pub priority: u8,
    pub delay_ms: Option<u64>,
    pub run_at_ms: Option<i64>,
    pub max_attempts: u32,
    pub backoff_ms: u64,
    pub idempotency_key: Option<&'a str>,
    pub retention_ms: u64,
}

/// Counts and totals of one queue.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QueueStats {
    pub queue: String,
    pub paused: bool,
    pub ready: u64,
    pub delayed: u64,
    /// Failed, waiting for their retry.
    pub failed: u64,
    pub leased: u64,
    pub completed: u64,
    pub dead: u64,
    /// Age of the task that has been ready longest, ms (null when none is ready).
    pub oldest_ready_age_ms: Option<u64>,
    /// Totals since the queue was created (all service replicas).
    pub enqueued_total: u64,
    pub completed_total: u64,
    /// Failed attempts (nacks).
    pub failed_total: u64,
    pub dead_total: u64,
    pub lease_expired_total: u64,
}

/// Outcome of a lease call.
pub struct Leased {
    pub tasks: Vec<Task>,
    /// Milliseconds (Redis' clock) until the next delayed/retry task or lease expiry, if any.
    pub next_due_in_ms: Option<u64>,
    pub paused: bool,
}

fn task_of(queue: &str, v: &Value, with_token: bool) -> ApiResult<Task> {
    Task::from_fields(queue, &super::hash_fields(v), with_token)
        .ok_or_else(|| ApiError::internal(format!("unreadable task in queue {queue}: {v:?}")))
}

fn lease_lost(state: Option<String>) -> ApiError {
    let why = match state.as_deref() {
        Some("expired") => "the lease expired; the task went back to the queue".to_string(),
        Some(s) => format!("not the task's current lease (task is {s})"),
        None => "not the task's current lease".to_string(),
    };
    ApiError::new(ErrorCode::LeaseLost, why)
}

impl Store {
    async fn qcall(&self, name: &'static str, q: &str, extra: Vec<Value>) -> ApiResult<Value> {
        self.qcall_fenced(name, q, extra, None).await
    }

    /// With `fence` = (lock namespace, lock, token): the function also checks the token
    /// against that namespace's fence hash (passed as KEYS[10]).
    async fn qcall_fenced(
        &self,
        name: &'static str,
        q: &str,
        extra: Vec<Value>,
        fence: Option<&(String, String, u64)>,
    ) -> ApiResult<Value> {
        let qk = self.keys().queue(q);
        let mut keys = qk.keys;
        let mut args: Vec<Value> = vec![qk.task_prefix.into(), qk.channel.into()];
        args.extend(extra);
        if let Some((ns, lock, n)) = fence {
            keys.push(self.keys().ns(ns).fence());
            args.push(lock.as_str().into());
            args.push(n.to_string().into());
        }
        self.fcall(name, keys, args).await
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
    pub async fn q_enqueue(&self, q: &str, t: &NewTask<'_>) -> ApiResult<(Task, bool)> {
        let opt = |v: Option<String>| Value::from(v.unwrap_or_default());
        let reply = self
            .qcall(
                "q_enqueue",
                q,
                vec![
                    t.payload.into(),
                    (t.priority as i64).into(),
                    opt(t.delay_ms.map(|d| d.to_string())),
                    opt(t.run_at_ms.map(|d| d.to_string())),
                    (t.max_attempts as i64).into(),
                    (t.backoff_ms as i64).into(),
                    t.idempotency_key.unwrap_or("").into(),
                    (t.retention_ms as i64).into(),
                ],
            )
            .await?;
        let a = reply.into_array();
        let created = a.first().and_then(v_str).as_deref() == Some("created");
        Ok((task_of(q, a.get(1).unwrap_or(&Value::Null), false)?, created))
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
        let a = self.qcall("q_lease", q, extra).await?.into_array();
        let tasks = match a.first() {
            Some(Value::Array(ts)) => ts
                .iter()
                .map(|t| task_of(q, t, true))
                .collect::<ApiResult<Vec<_>>>()?,
            _ => Vec::new(),
        };
        Ok(Leased {
            tasks,
            next_due_in_ms: a.get(1).and_then(v_str).and_then(|s| s.parse().ok()),
            paused: a.get(2).and_then(v_str).as_deref() == Some("1"),
        })
    }

    /// The task after the change, and who held the lease (for nack, whose answer has none).
    async fn q_leased_op(
        &self,
        name: &'static str,
        q: &str,
        extra: Vec<Value>,
        fence: Option<&(String, String, u64)>,
    ) -> ApiResult<(Task, Option<String>)> {
        let a = self.qcall_fenced(name, q, extra, fence).await?.into_array();
        match a.first().and_then(v_str).as_deref() {
            Some("ok") => {
                let t = task_of(q, a.get(1).unwrap_or(&Value::Null), false)?;
                let owner = a
                    .get(2)
                    .and_then(v_str)
                    .filter(|o| !o.is_empty())
                    .or_else(|| t.lease_owner.clone());
                Ok((t, owner))
            }
            Some("not_found") => Err(ApiError::not_found("no such task")),
            Some("lease_lost") => Err(lease_lost(a.get(1).and_then(v_str))),
            _ => Err(ApiError::internal(format!("unexpected reply from {name}: {a:?}"))),
        }
    }

    pub async fn q_ack(
        &self,
        q: &str,
        id: &str,
        token: &str,
        result: Option<&str>,
        fence: Option<&(String, String, u64)>,
    ) -> ApiResult<(Task, Option<String>)> {
        self.q_leased_op(
            "q_ack",
            q,
            vec![id.into(), token.into(), result.unwrap_or("").into()],
            fence,
        )
        .await
    }

    pub async fn q_nack(
        &self,
        q: &str,
        id: &str,
        token: &str,
        error: &str,
        retry_delay_ms: Option<u64>,
        fence: Option<&(String, String, u64)>,
    ) -> ApiResult<(Task, Option<String>)> {
        let delay = retry_delay_ms.map(|d| d.to_string()).unwrap_or_default();
        self.q_leased_op(
            "q_nack",
            q,
            vec![id.into(), token.into(), error.into(), delay.into()],
            fence,
        )
        .await
    }

    pub async fn q_extend(&self, q: &str, id: &str, token: &str, lease_ms: u64) -> ApiResult<Task> {
        self.q_leased_op(
            "q_extend",
            q,
            vec![id.into(), token.into(), (lease_ms as i64).into()],
            None,
        )
        .await
        .map(|(t, _)| t)
    }

    pub async fn q_retry_dead(&self, q: &str, id: &str) -> ApiResult<Task> {
        let a = self.qcall("q_retry_dead", q, vec![id.into()]).await?.into_array();
        match a.first().and_then(v_str).as_deref() {
            Some("ok") => task_of(q, a.get(1).unwrap_or(&Value::Null), false),
            _ => Err(ApiError::not_found("no such task in the dead-letter list")),
        }
    }

    /// Remove every dead task; returns how many.
    pub async fn q_purge_dead(&self, q: &str) -> ApiResult<u64> {
        let mut total = 0;
        loop {
            let n = super::v_u64(&self.qcall("q_purge_dead", q, vec![]).await?);
            total += n;
            if n < 1000 {
                return Ok(total);
            }
        }
    }

    pub async fn q_pause(&self, q: &str, paused: bool) -> ApiResult<()> {
        self.qcall("q_pause", q, vec![if paused { "1" } else { "0" }.into()])
            .await
            .map(|_| ())
    }

    /// Background upkeep: promote due tasks, reclaim expired leases, apply retention, in
    /// calls of up to 1000 each until nothing more is due (at most 100 calls).
    pub async fn q_reap(&self, q: &str) -> ApiResult<u64> {
        let mut total = 0;
        for _ in 0..100 {
            let a = self.qcall("q_reap", q, vec![]).await?.into_array();
            let (n, cleaned) = (
                a.first().map(super::v_u64).unwrap_or(0),
                a.get(1).map(super::v_u64).unwrap_or(0),
            );
            total += n;
            if n < 1000 && cleaned < 1000 {
                break;
            }
        }
        Ok(total)
    }

    pub async fn q_stats(&self, q: &str) -> ApiResult<QueueStats> {
        let a: Vec<u64> = self
            .qcall("q_stats", q, vec![])
            .await?
            .into_array()
            .iter()
            .map(|v| v_str(v).and_then(|s| s.parse().ok()).unwrap_or(0))
            .collect();
        let g = |i: usize| a.get(i).copied().unwrap_or(0);
        let oldest = g(12);
        Ok(QueueStats {
            queue: q.to_string(),
            ready: g(0),
            delayed: g(1),
            failed: g(2),
            leased: g(3),
            completed: g(4),
            dead: g(5),
            paused: g(6) == 1,
            enqueued_total: g(7),
            completed_total: g(8),
            failed_total: g(9),
            dead_total: g(10),
            lease_expired_total: g(11),
            oldest_ready_age_ms: (oldest > 0).then(|| g(13).saturating_sub(oldest)),
        })
    }

    /// Dead tasks from `offset`, oldest first, and how many there are.
    pub async fn q_dead_list(&self, q: &str, offset: u64, limit: u64) -> ApiResult<(Vec<Task>, u64)> {
        let a = self
            .qcall(
                "q_dead_list",
                q,
                vec![(offset as i64).into(), (limit as i64).into()],
            )
            .await?
            .into_array();
        let tasks = match a.first() {
            Some(Value::Array(ts)) => ts
                .iter()
                .map(|t| task_of(q, t, false))
                .collect::<ApiResult<Vec<_>>>()?,
            _ => Vec::new(),
        };
        Ok((tasks, a.get(1).map(super::v_u64).unwrap_or(0)))
    }

    pub async fn q_task(&self, q: &str, id: &str) -> ApiResult<Option<Task>> {
        let key = format!("{}{id}", self.keys().queue(q).task_prefix);
        let m: HashMap<String, String> = self.timed("hgetall", self.client().hgetall(key)).await?;
        if m.is_empty() {
            return Ok(None);
        }
        Task::from_fields(q, &m, false)
            .map(Some)
            .ok_or_else(|| ApiError::internal("unreadable task"))
    }
}
