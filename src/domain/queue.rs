//! Task queues (DESIGN.md "Task queues"): the task, enqueue and lease requests with their
//! limits, queue figures, and the task events the queue functions publish.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use utoipa::ToSchema;

use super::json::{canonical, present};
use super::names::{check_range, validate_name, validate_text, MAX_TTL_MS};
use super::time::{now_ms, parse_instant_ms};
use crate::error::{ApiError, ApiResult};

/// Longest long-poll.
pub const MAX_WAIT_MS: u64 = 30_000;
/// Longest lease and longest retry delay / backoff: one day.
pub const MAX_LEASE_MS: u64 = 86_400_000;
/// Longest retention: 30 days.
pub const MAX_RETENTION_MS: u64 = 30 * 86_400_000;
/// Default retention of completed and dead tasks: one day.
pub const DEFAULT_RETENTION_MS: u64 = 86_400_000;
/// Longest `error` of a nack.
pub const MAX_ERROR_BYTES: usize = 8192;

/// A task as returned by the API.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Task {
    pub id: String,
    pub queue: String,
    /// The JSON payload given at enqueue (any JSON value).
    #[schema(value_type = Value)]
    pub payload: Box<RawValue>,
    /// 0 (highest) ..= 9.
    pub priority: u8,
    /// `delayed` (run_at in the future), `ready`, `leased`, `failed` (last attempt failed, waiting
    /// for its backoff), `completed` or `dead` (attempts exhausted; in the dead-letter list).
    #[schema(value_type = TaskStateDoc)]
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
    /// The `result` given at ack (any JSON value).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Value>)]
    pub result: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// When it completed or died, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
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

/// Outcome of one lease call.
pub struct Leased {
    pub tasks: Vec<Task>,
    /// Milliseconds (Redis' clock) until the next delayed/retry task or lease expiry, if any.
    pub next_due_in_ms: Option<u64>,
    pub paused: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueBody {
    /// Any JSON value (default null).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Value)]
    payload: Option<Value>,
    /// 0 (highest) ..= 9, default 5. FIFO within a priority.
    #[schema(minimum = 0, maximum = 9)]
    #[serde(default, deserialize_with = "crate::domain::json::int::opt")]
    priority: Option<u8>,
    /// Not before this many ms from now.
    #[schema(minimum = 0, maximum = 315360000000_u64)]
    #[serde(default, deserialize_with = "crate::domain::json::int::opt")]
    delay_ms: Option<u64>,
    /// Not before this time: RFC 3339 text or unix ms.
    #[schema(value_type = Option<String>)]
    run_at: Option<Value>,
    /// Leases allowed before the task is dead-lettered (1..=100, default 3).
    #[schema(minimum = 1, maximum = 100)]
    #[serde(default, deserialize_with = "crate::domain::json::int::opt")]
    max_attempts: Option<u32>,
    /// Retry delay after the first failure, doubled per attempt (default 1000).
    #[schema(minimum = 0, maximum = 86400000)]
    #[serde(default, deserialize_with = "crate::domain::json::int::opt")]
    backoff_ms: Option<u64>,
    /// A repeated key returns the existing task (200) while that task is retained.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]+$"
    )]
    idempotency_key: Option<String>,
    /// How long a completed or dead task is kept (default one day, at most 30 days).
    #[schema(minimum = 0, maximum = 2592000000_u64)]
    #[serde(default, deserialize_with = "crate::domain::json::int::opt")]
    retention_ms: Option<u64>,
}

/// A validated enqueue.
pub struct NewTask {
    /// Canonical JSON.
    pub payload: String,
    pub priority: u8,
    pub delay_ms: Option<u64>,
    pub run_at_ms: Option<i64>,
    pub max_attempts: u32,
    pub backoff_ms: u64,
    pub idempotency_key: Option<String>,
    pub retention_ms: u64,
}

impl EnqueueBody {
    pub fn task(self) -> ApiResult<NewTask> {
        let priority = self.priority.unwrap_or(5);
        check_range("priority", priority as u64, 0, 9)?;
        if self.delay_ms.is_some() && self.run_at.is_some() {
            return Err(ApiError::bad_request("give delay_ms or run_at, not both"));
        }
        if let Some(d) = self.delay_ms {
            check_range("delay_ms", d, 0, MAX_TTL_MS)?;
        }
        let run_at = self
            .run_at
            .as_ref()
            .map(|v| parse_instant_ms(v, "run_at"))
            .transpose()?;
        if let Some(t) = run_at {
            if t > now_ms() + MAX_TTL_MS as i64 {
                return Err(ApiError::bad_request("run_at is more than ten years away"));
            }
        }
        let max_attempts = self.max_attempts.unwrap_or(3);
        check_range("max_attempts", max_attempts as u64, 1, 100)?;
        let backoff_ms = self.backoff_ms.unwrap_or(1000);
        check_range("backoff_ms", backoff_ms, 0, MAX_LEASE_MS)?;
        let retention_ms = self.retention_ms.unwrap_or(DEFAULT_RETENTION_MS);
        check_range("retention_ms", retention_ms, 0, MAX_RETENTION_MS)?;
        if let Some(k) = &self.idempotency_key {
            validate_text("idempotency_key", k, 256)?;
        }
        Ok(NewTask {
            payload: canonical(&self.payload.unwrap_or(Value::Null)),
            priority,
            delay_ms: self.delay_ms,
            run_at_ms: run_at,
            max_attempts,
            backoff_ms,
            idempotency_key: self.idempotency_key,
            retention_ms,
        })
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseBody {
    /// Who leases (an agent id); shown as the task's lease_owner.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]+$"
    )]
    pub worker: String,
    /// 1..=100, default 1.
    #[schema(minimum = 1, maximum = 100)]
    #[serde(default, deserialize_with = "crate::domain::json::int::opt")]
    pub max_tasks: Option<u32>,
    /// How long the lease lasts unless extended (1..=86400000).
    #[schema(minimum = 1, maximum = 86400000)]
    #[serde(deserialize_with = "crate::domain::json::int::req")]
    pub lease_ms: u64,
    /// Long-poll this long (≤ 30000) when nothing is ready; woken at once by an enqueue.
    #[schema(minimum = 0, maximum = 30000)]
    #[serde(default, deserialize_with = "crate::domain::json::int::opt")]
    pub wait_ms: Option<u64>,
}

impl LeaseBody {
    /// Checked: (max tasks, wait ms).
    pub fn check(&self) -> ApiResult<(u32, u64)> {
        validate_text("worker", &self.worker, 128)?;
        let max = self.max_tasks.unwrap_or(1);
        check_range("max_tasks", max as u64, 1, 100)?;
        check_range("lease_ms", self.lease_ms, 1, MAX_LEASE_MS)?;
        let wait = self.wait_ms.unwrap_or(0);
        check_range("wait_ms", wait, 0, MAX_WAIT_MS)?;
        Ok((max, wait))
    }
}

#[derive(Serialize, ToSchema)]
pub struct LeaseResult {
    /// Leased tasks, each with its `lease_token` (possibly empty after the wait).
    pub tasks: Vec<Task>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]+$"
    )]
    pub lease_token: String,
    /// Any JSON value, kept with the task for its retention.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Value)]
    pub result: Option<Value>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NackBody {
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]+$"
    )]
    pub lease_token: String,
    #[schema(max_length = 8192)]
    pub error: String,
    /// Overrides the backoff for this retry.
    #[schema(minimum = 0, maximum = 86400000)]
    #[serde(default, deserialize_with = "crate::domain::json::int::opt")]
    pub retry_delay_ms: Option<u64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendBody {
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]+$"
    )]
    pub lease_token: String,
    #[schema(minimum = 1, maximum = 86400000)]
    #[serde(deserialize_with = "crate::domain::json::int::req")]
    pub lease_ms: u64,
}

#[derive(Serialize, ToSchema)]
pub struct QueueList {
    pub items: Vec<QueueStats>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DeadList {
    pub items: Vec<Task>,
    /// Dead tasks in all.
    pub total: u64,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TaskList {
    /// The tasks in the asked state, in that state's order (ready: the order leases take
    /// them; delayed and failed: due time; leased: lease expiry; completed and dead: when they
    /// finished).
    pub items: Vec<Task>,
    /// Tasks in that state in all.
    pub total: u64,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// The states tasks can be listed by (`GET /v1/queues/{queue}/tasks?state=`).
pub const LISTABLE_STATES: &[&str] = &["ready", "delayed", "leased", "failed", "completed", "dead"];

#[derive(Serialize, ToSchema)]
pub struct Purged {
    pub purged: u64,
}

/// A task id as given in a path: digits only, else the task cannot exist.
pub fn check_task_id(id: &str) -> ApiResult<&str> {
    if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::not_found("no such task"));
    }
    Ok(id)
}

/// A lease token as sent with ack / nack / extend.
pub fn check_lease_token(token: &str) -> ApiResult<()> {
    validate_text("lease_token", token, 64)
}

/// `x-fencing-token` on an ack or nack: `[<namespace>/]<lock>:<n>`; the namespace defaults to
/// the queue's name. Returns (namespace, lock, n).
pub fn parse_ack_fence(queue: &str, v: &str) -> ApiResult<(String, String, u64)> {
    let bad = || ApiError::bad_request("x-fencing-token must be [<namespace>/]<lock>:<n>");
    let (target, n) = v.trim().rsplit_once(':').ok_or_else(bad)?;
    let (ns, lock) = match target.split_once('/') {
        Some((ns, lock)) => (ns, lock),
        None => (queue, target),
    };
    validate_name("namespace", ns).map_err(|_| bad())?;
    validate_name("lock", lock).map_err(|_| bad())?;
    let n = n.parse::<u64>().ok().filter(|n| *n >= 1).ok_or_else(bad)?;
    Ok((ns.to_string(), lock.to_string(), n))
}

/// A task state change as the queue functions publish it (`{"id","state",...}`; a resume is
/// `{"state":"ready","resumed":true}` without an id).
#[derive(Debug)]
pub struct TaskEvent {
    pub id: Option<String>,
    pub state: TaskState,
}

impl TaskEvent {
    /// The id and state of a published event; `None` when it is not a JSON object. Fields of
    /// an unexpected shape read as absent (`Other` for the state), never as an error.
    pub fn parse(text: &str) -> Option<TaskEvent> {
        let v: Value = serde_json::from_str(text).ok()?;
        let o = v.as_object()?;
        let id = match o.get("id") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let state = match o.get("state").and_then(Value::as_str) {
            Some("ready") => TaskState::Ready,
            Some("delayed") => TaskState::Delayed,
            Some("failed") => TaskState::Failed,
            _ => TaskState::Other,
        };
        Some(TaskEvent { id, state })
    }
}

/// Every state a task can be in (for the OpenAPI document; the service compares text).
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(as = TaskState, rename_all = "snake_case")]
pub enum TaskStateDoc {
    Delayed,
    Ready,
    Leased,
    Failed,
    Completed,
    Dead,
}

/// The states a published task event names (the ones that matter for wake-ups; others are
/// `Other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Ready,
    Delayed,
    Failed,
    Other,
}

impl TaskState {
    /// A long-polling lease should look again: one waiter for a ready task, all of them for
    /// a task that became due at a new time (it may be sooner than what they sleep for).
    pub fn wakes(self) -> Wake {
        match self {
            TaskState::Ready => Wake::One,
            TaskState::Delayed | TaskState::Failed => Wake::All,
            TaskState::Other => Wake::None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    None,
    One,
    All,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_events_decode_and_route() {
        let e = TaskEvent::parse(r#"{"id":"3","state":"ready","attempts":0,"time":1}"#).unwrap();
        assert_eq!((e.id.as_deref(), e.state.wakes()), (Some("3"), Wake::One));
        let e = TaskEvent::parse(r#"{"state":"ready","resumed":true}"#).unwrap();
        assert_eq!((e.id, e.state), (None, TaskState::Ready));
        let e = TaskEvent::parse(r#"{"id":"1","state":"completed"}"#).unwrap();
        assert_eq!(e.state.wakes(), Wake::None);
        let e = TaskEvent::parse(r#"{"id":"1","state":"failed","last_error":"x"}"#).unwrap();
        assert_eq!(e.state.wakes(), Wake::All);
        // A vanished task's event (cjson writes nil fields as false) still reaches watchers.
        let e = TaskEvent::parse(r#"{"id":"9","state":false}"#).unwrap();
        assert_eq!((e.id.as_deref(), e.state), (Some("9"), TaskState::Other));
        assert!(TaskEvent::parse("released").is_none());
    }

    #[test]
    fn ack_fences_name_a_lock_of_a_namespace() {
        assert_eq!(
            parse_ack_fence("q", "db:3").unwrap(),
            ("q".into(), "db".into(), 3)
        );
        assert_eq!(
            parse_ack_fence("q", "app/db:3").unwrap(),
            ("app".into(), "db".into(), 3)
        );
        assert!(parse_ack_fence("q", "db:0").is_err());
        assert!(parse_ack_fence("q", "db").is_err());
    }
}
