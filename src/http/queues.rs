//! Task queues (DESIGN.md "Task queues"): enqueue, long-poll lease, ack / nack / extend,
//! status, dead letters, pause / resume, and the queue's event stream.

use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::kv::{canonical, present};
use super::{json_response, validate_name, validate_text, JsonBody, Q};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::store::agents::Held;
use crate::store::queue::{NewTask, QueueStats, Task};

/// Longest long-poll.
const MAX_WAIT_MS: u64 = 30_000;
/// Longest lease and longest retry delay / backoff: one day.
const MAX_LEASE_MS: u64 = 86_400_000;
/// Longest retention: 30 days.
const MAX_RETENTION_MS: u64 = 30 * 86_400_000;
/// Default retention of completed and dead tasks: one day.
pub const DEFAULT_RETENTION_MS: u64 = 86_400_000;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnqueueBody {
    /// Any JSON value (default null).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Object)]
    payload: Option<Value>,
    /// 0 (highest) ..= 9, default 5. FIFO within a priority.
    priority: Option<u8>,
    /// Not before this many ms from now.
    delay_ms: Option<u64>,
    /// Not before this time: RFC 3339 text or unix ms.
    #[schema(value_type = Option<String>)]
    run_at: Option<Value>,
    /// Leases allowed before the task is dead-lettered (1..=100, default 3).
    max_attempts: Option<u32>,
    /// Retry delay after the first failure, doubled per attempt (default 1000).
    backoff_ms: Option<u64>,
    /// A repeated key returns the existing task (200) while that task is retained.
    idempotency_key: Option<String>,
    /// How long a completed or dead task is kept (default one day, at most 30 days).
    retention_ms: Option<u64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseBody {
    /// Who leases (an agent id); shown as the task's lease_owner.
    worker: String,
    /// 1..=100, default 1.
    max_tasks: Option<u32>,
    /// How long the lease lasts unless extended (1..=86400000).
    lease_ms: u64,
    /// Long-poll this long (≤ 30000) when nothing is ready; woken at once by an enqueue.
    wait_ms: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct LeaseResult {
    /// Leased tasks, each with its `lease_token` (possibly empty after the wait).
    tasks: Vec<Task>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    lease_token: String,
    /// Any JSON value, kept with the task for its retention.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Object)]
    result: Option<Value>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NackBody {
    lease_token: String,
    error: String,
    /// Overrides the backoff for this retry.
    retry_delay_ms: Option<u64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtendBody {
    lease_token: String,
    lease_ms: u64,
}

#[derive(Serialize, ToSchema)]
pub struct QueueList {
    items: Vec<QueueStats>,
}

#[derive(Serialize, ToSchema)]
pub struct DeadList {
    items: Vec<Task>,
    /// Dead tasks in all.
    total: u64,
    /// Offset of the next page, null at the end.
    next_offset: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct Purged {
    purged: u64,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    offset: Option<u64>,
    /// 1..=1000, default 100.
    limit: Option<u64>,
}

fn range(name: &str, v: u64, lo: u64, hi: u64) -> ApiResult<()> {
    if v < lo || v > hi {
        return Err(ApiError::bad_request(format!(
            "{name} must be between {lo} and {hi}"
        )));
    }
    Ok(())
}

fn task_id(id: &str) -> ApiResult<&str> {
    if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::not_found("no such task"));
    }
    Ok(id)
}

fn run_at_ms(v: &Value) -> ApiResult<i64> {
    let bad = || ApiError::bad_request("run_at must be an RFC 3339 time or unix milliseconds");
    match v {
        Value::Number(n) => n.as_i64().filter(|n| *n >= 0).ok_or_else(bad),
        Value::String(s) => {
            let t = humantime::parse_rfc3339_weak(s).map_err(|_| bad())?;
            let d = t.duration_since(std::time::UNIX_EPOCH).map_err(|_| bad())?;
            Ok(d.as_millis() as i64)
        }
        _ => Err(bad()),
    }
}

/// Enqueue a task.
#[utoipa::path(
    post, path = "/v1/queues/{queue}/tasks", tag = "queues",
    params(("queue" = String, Path, description = "Queue name ([a-z0-9][a-z0-9._-]{0,62})")),
    request_body = EnqueueBody,
    responses(
        (status = 201, description = "Enqueued", body = Task),
        (status = 200, description = "A task with this idempotency_key exists; returned unchanged", body = Task),
        (status = 400, description = "Bad argument", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Body of the wrong shape", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn enqueue(
    State(st): State<AppState>,
    Path(q): Path<String>,
    JsonBody(b): JsonBody<EnqueueBody>,
) -> ApiResult<Response> {
    validate_name("queue", &q)?;
    let priority = b.priority.unwrap_or(5);
    range("priority", priority as u64, 0, 9)?;
    if b.delay_ms.is_some() && b.run_at.is_some() {
        return Err(ApiError::bad_request("give delay_ms or run_at, not both"));
    }
    if let Some(d) = b.delay_ms {
        range("delay_ms", d, 0, super::MAX_TTL_MS)?;
    }
    let run_at = b.run_at.as_ref().map(run_at_ms).transpose()?;
    if let Some(t) = run_at {
        if t > crate::store::kv::now_ms() + super::MAX_TTL_MS as i64 {
            return Err(ApiError::bad_request("run_at is more than ten years away"));
        }
    }
    let max_attempts = b.max_attempts.unwrap_or(3);
    range("max_attempts", max_attempts as u64, 1, 100)?;
    let backoff_ms = b.backoff_ms.unwrap_or(1000);
    range("backoff_ms", backoff_ms, 0, MAX_LEASE_MS)?;
    let retention_ms = b.retention_ms.unwrap_or(DEFAULT_RETENTION_MS);
    range("retention_ms", retention_ms, 0, MAX_RETENTION_MS)?;
    if let Some(k) = &b.idempotency_key {
        validate_text("idempotency_key", k, 256)?;
    }
    let payload = canonical(&b.payload.unwrap_or(Value::Null));
    st.store.register_queue(&q).await?;
    let (task, created) = st
        .store
        .q_enqueue(
            &q,
            &NewTask {
                payload: &payload,
                priority,
                delay_ms: b.delay_ms,
                run_at_ms: run_at,
                max_attempts,
                backoff_ms,
                idempotency_key: b.idempotency_key.as_deref(),
                retention_ms,
            },
        )
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(status, &task))
}

/// Lease ready tasks, long-polling when there are none.
#[utoipa::path(
    post, path = "/v1/queues/{queue}/lease", tag = "queues",
    params(("queue" = String, Path, description = "Queue name")),
    request_body = LeaseBody,
    responses(
        (status = 200, description = "Leased tasks (empty when none became ready within wait_ms)", body = LeaseResult),
        (status = 400, description = "Bad argument", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Body of the wrong shape", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn lease(
    State(st): State<AppState>,
    Path(q): Path<String>,
    JsonBody(b): JsonBody<LeaseBody>,
) -> ApiResult<Response> {
    validate_name("queue", &q)?;
    validate_text("worker", &b.worker, 128)?;
    let max = b.max_tasks.unwrap_or(1);
    range("max_tasks", max as u64, 1, 100)?;
    range("lease_ms", b.lease_ms, 1, MAX_LEASE_MS)?;
    let wait = b.wait_ms.unwrap_or(0);
    range("wait_ms", wait, 0, MAX_WAIT_MS)?;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait);
    let tokens = || -> Vec<String> {
        (0..max)
            .map(|_| uuid::Uuid::new_v4().simple().to_string())
            .collect()
    };
    // Labelled only for leases that got tasks, so polling made-up queue names adds no series.
    let observe = |tasks: &[Task]| {
        if !tasks.is_empty() {
            metrics::histogram!("queue_lease_wait_seconds", "queue" => q.clone())
                .record(started.elapsed().as_secs_f64());
        }
    };
    if wait == 0 {
        let r = st.store.q_lease(&q, &b.worker, &tokens(), b.lease_ms).await?;
        observe(&r.tasks);
        hold_tasks(&st, &q, &b.worker, &r.tasks).await;
        return Ok(json_response(StatusCode::OK, &LeaseResult { tasks: r.tasks }));
    }
    // Only a lease that may wait needs the queue's wake-up channel.
    st.queues.ensure(&st.store).await?;
    let chan = st.queues.chan(&q);
    // A wake-up is handed on if this request goes away before using it.
    let mut wake = PassOn(&chan.ready, false);
    let tasks = loop {
        // Armed before the lease call, so an enqueue between the call and the wait wakes us.
        let notified = chan.ready.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let r = st.store.q_lease(&q, &b.worker, &tokens(), b.lease_ms).await?;
        wake.1 = false;
        if r.tasks.len() == max as usize {
            // One waiter is woken per ready task; a full batch may have left more behind.
            chan.ready.notify_one();
        }
        let now = tokio::time::Instant::now();
        if !r.tasks.is_empty() || now >= deadline {
            break r.tasks;
        }
        // Sleep until woken, the next delayed task or lease expiry is due, or the deadline.
        let mut until = deadline;
        if let Some(in_ms) = r.next_due_in_ms.filter(|_| !r.paused) {
            until = until.min(now + Duration::from_millis(in_ms.saturating_add(1).min(MAX_WAIT_MS)));
        }
        tokio::select! {
            _ = &mut notified => wake.1 = true,
            _ = tokio::time::sleep_until(until) => {}
        }
    };
    observe(&tasks);
    hold_tasks(&st, &q, &b.worker, &tasks).await;
    Ok(json_response(StatusCode::OK, &LeaseResult { tasks }))
}

/// Tasks leased by a registered agent are recorded against it, to be requeued at once if it
/// is lost.
async fn hold_tasks(st: &AppState, q: &str, worker: &str, tasks: &[Task]) {
    let held = tasks
        .iter()
        .filter_map(|t| {
            Some(Held::Task {
                queue: q.to_string(),
                id: t.id.clone(),
                token: t.lease_token.clone()?,
            })
        })
        .collect::<Vec<_>>();
    if !held.is_empty() {
        st.presence.hold(&st.store, worker, held).await;
    }
}

/// Its lease is over: no longer held by its worker.
async fn unhold_task(st: &AppState, q: &str, id: &str, owner: Option<String>, token: &str) {
    if let Some(owner) = owner {
        let held = Held::Task {
            queue: q.to_string(),
            id: id.to_string(),
            token: token.to_string(),
        };
        st.presence.unhold(&st.store, &owner, held).await;
    }
}

/// `x-fencing-token` on ack/nack: `<lock>:<n>` names a lock of the namespace called like the
/// queue, `<ns>/<lock>:<n>` one of any namespace. Checked inside the ack's function, which
/// then touches two slots: standalone and Sentinel only.
fn ack_fence(
    st: &AppState,
    q: &str,
    headers: &axum::http::HeaderMap,
) -> ApiResult<Option<(String, String, u64)>> {
    let Some(v) = headers.get("x-fencing-token") else {
        return Ok(None);
    };
    let bad = || ApiError::bad_request("x-fencing-token must be [<namespace>/]<lock>:<n>");
    let v = v.to_str().map_err(|_| bad())?.trim();
    let (target, n) = v.rsplit_once(':').ok_or_else(bad)?;
    let (ns, lock) = match target.split_once('/') {
        Some((ns, lock)) => (ns, lock),
        None => (q, target),
    };
    validate_name("namespace", ns).map_err(|_| bad())?;
    validate_name("lock", lock).map_err(|_| bad())?;
    let n = n.parse::<u64>().ok().filter(|n| *n >= 1).ok_or_else(bad)?;
    if matches!(st.store.mode(), crate::config::RedisMode::Cluster) {
        return Err(ApiError::bad_request(
            "x-fencing-token on task acks is not available with Redis Cluster (the lock and the queue live in different slots)",
        ));
    }
    Ok(Some((ns.to_string(), lock.to_string(), n)))
}

/// Hands a consumed wake-up on to the next waiter when dropped while still holding it.
struct PassOn<'a>(&'a tokio::sync::Notify, bool);

impl Drop for PassOn<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.notify_one();
        }
    }
}

/// Complete a leased task.
#[utoipa::path(
    post, path = "/v1/queues/{queue}/tasks/{id}/ack", tag = "queues",
    params(("queue" = String, Path, description = "Queue name"), ("id" = String, Path, description = "Task id"),
           ("x-fencing-token" = Option<String>, Header, description = "[<namespace>/]<lock>:<n>: refused with 409 stale_fencing_token unless n is that lock's newest token (lock namespace defaults to the queue's name; not with Redis Cluster)")),
    request_body = AckBody,
    responses(
        (status = 200, description = "Completed", body = Task),
        (status = 404, description = "No such task", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`lease_lost`: the token is not the task's current lease", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Body of the wrong shape", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn ack(
    State(st): State<AppState>,
    Path((q, id)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    JsonBody(b): JsonBody<AckBody>,
) -> ApiResult<Response> {
    validate_name("queue", &q)?;
    let id = task_id(&id)?;
    validate_text("lease_token", &b.lease_token, 64)?;
    let result = b.result.as_ref().map(canonical);
    let fence = ack_fence(&st, &q, &headers)?;
    let (t, owner) = st
        .store
        .q_ack(&q, id, &b.lease_token, result.as_deref(), fence.as_ref())
        .await?;
    unhold_task(&st, &q, &t.id, owner, &b.lease_token).await;
    Ok(json_response(StatusCode::OK, &t))
}

/// Fail a leased task: retried after its backoff, or dead-lettered after max_attempts.
#[utoipa::path(
    post, path = "/v1/queues/{queue}/tasks/{id}/nack", tag = "queues",
    params(("queue" = String, Path, description = "Queue name"), ("id" = String, Path, description = "Task id"),
           ("x-fencing-token" = Option<String>, Header, description = "[<namespace>/]<lock>:<n>: refused with 409 stale_fencing_token unless n is that lock's newest token (lock namespace defaults to the queue's name; not with Redis Cluster)")),
    request_body = NackBody,
    responses(
        (status = 200, description = "Recorded; the task is `failed` (waiting to retry), `ready` or `dead`", body = Task),
        (status = 404, description = "No such task", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`lease_lost`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Body of the wrong shape", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn nack(
    State(st): State<AppState>,
    Path((q, id)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    JsonBody(b): JsonBody<NackBody>,
) -> ApiResult<Response> {
    validate_name("queue", &q)?;
    let id = task_id(&id)?;
    validate_text("lease_token", &b.lease_token, 64)?;
    if b.error.len() > 8192 {
        return Err(ApiError::bad_request("error must be at most 8192 bytes"));
    }
    if let Some(d) = b.retry_delay_ms {
        range("retry_delay_ms", d, 0, MAX_LEASE_MS)?;
    }
    let (t, owner) = st
        .store
        .q_nack(
            &q,
            id,
            &b.lease_token,
            &b.error,
            b.retry_delay_ms,
            ack_fence(&st, &q, &headers)?.as_ref(),
        )
        .await?;
    unhold_task(&st, &q, &t.id, owner, &b.lease_token).await;
    Ok(json_response(StatusCode::OK, &t))
}

/// Extend a lease.
#[utoipa::path(
    post, path = "/v1/queues/{queue}/tasks/{id}/extend", tag = "queues",
    params(("queue" = String, Path, description = "Queue name"), ("id" = String, Path, description = "Task id")),
    request_body = ExtendBody,
    responses(
        (status = 200, description = "Extended: leased_until is now + lease_ms", body = Task),
        (status = 404, description = "No such task", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`lease_lost`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Body of the wrong shape", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn extend(
    State(st): State<AppState>,
    Path((q, id)): Path<(String, String)>,
    JsonBody(b): JsonBody<ExtendBody>,
) -> ApiResult<Response> {
    validate_name("queue", &q)?;
    let id = task_id(&id)?;
    validate_text("lease_token", &b.lease_token, 64)?;
    range("lease_ms", b.lease_ms, 1, MAX_LEASE_MS)?;
    let t = st.store.q_extend(&q, id, &b.lease_token, b.lease_ms).await?;
    Ok(json_response(StatusCode::OK, &t))
}

/// A task (while it is retained).
#[utoipa::path(
    get, path = "/v1/queues/{queue}/tasks/{id}", tag = "queues",
    params(("queue" = String, Path, description = "Queue name"), ("id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "The task", body = Task),
        (status = 404, description = "No such task", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_task(
    State(st): State<AppState>,
    Path((q, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    validate_name("queue", &q)?;
    let id = task_id(&id)?;
    let t = st
        .store
        .q_task(&q, id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such task"))?;
    Ok(json_response(StatusCode::OK, &t))
}

/// Every queue with its counts.
#[utoipa::path(
    get, path = "/v1/queues", tag = "queues",
    responses((status = 200, description = "Queues", body = QueueList))
)]
pub async fn list_queues(State(st): State<AppState>) -> ApiResult<Response> {
    let mut names = st.store.queue_names().await?;
    names.sort();
    let mut items = Vec::with_capacity(names.len());
    for q in names {
        items.push(st.store.q_stats(&q).await?);
    }
    Ok(json_response(StatusCode::OK, &QueueList { items }))
}

/// Counts per state, totals and the oldest ready task's age.
#[utoipa::path(
    get, path = "/v1/queues/{queue}", tag = "queues",
    params(("queue" = String, Path, description = "Queue name")),
    responses((status = 200, description = "Queue status", body = QueueStats))
)]
pub async fn queue_status(State(st): State<AppState>, Path(q): Path<String>) -> ApiResult<Response> {
    validate_name("queue", &q)?;
    Ok(json_response(StatusCode::OK, &st.store.q_stats(&q).await?))
}

/// The dead-letter list, oldest first.
#[utoipa::path(
    get, path = "/v1/queues/{queue}/dead", tag = "queues",
    params(("queue" = String, Path, description = "Queue name"), PageQuery),
    responses((status = 200, description = "Dead tasks with their last_error", body = DeadList))
)]
pub async fn list_dead(
    State(st): State<AppState>,
    Path(q): Path<String>,
    Q(p): Q<PageQuery>,
) -> ApiResult<Response> {
    validate_name("queue", &q)?;
    let limit = p.limit.unwrap_or(100);
    range("limit", limit, 1, 1000)?;
    let offset = p.offset.unwrap_or(0);
    range("offset", offset, 0, 1 << 40)?;
    let (items, total) = st.store.q_dead_list(&q, offset, limit).await?;
    let next = offset + items.len() as u64;
    let body = DeadList {
        next_offset: (next < total && !items.is_empty()).then_some(next),
        items,
        total,
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// Put a dead task back in the queue with its attempts reset.
#[utoipa::path(
    post, path = "/v1/queues/{queue}/dead/{id}/retry", tag = "queues",
    params(("queue" = String, Path, description = "Queue name"), ("id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "Ready again", body = Task),
        (status = 404, description = "Not in the dead-letter list", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn retry_dead(
    State(st): State<AppState>,
    Path((q, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    validate_name("queue", &q)?;
    let id = task_id(&id)?;
    Ok(json_response(
        StatusCode::OK,
        &st.store.q_retry_dead(&q, id).await?,
    ))
}

/// Remove every dead task.
#[utoipa::path(
    delete, path = "/v1/queues/{queue}/dead", tag = "queues",
    params(("queue" = String, Path, description = "Queue name")),
    responses((status = 200, description = "Purged", body = Purged))
)]
pub async fn purge_dead(State(st): State<AppState>, Path(q): Path<String>) -> ApiResult<Response> {
    validate_name("queue", &q)?;
    let purged = st.store.q_purge_dead(&q).await?;
    Ok(json_response(StatusCode::OK, &Purged { purged }))
}

/// Stop handing out tasks (enqueue and ack keep working).
#[utoipa::path(
    post, path = "/v1/queues/{queue}/pause", tag = "queues",
    params(("queue" = String, Path, description = "Queue name")),
    responses((status = 200, description = "Paused", body = QueueStats))
)]
pub async fn pause(State(st): State<AppState>, Path(q): Path<String>) -> ApiResult<Response> {
    validate_name("queue", &q)?;
    st.store.register_queue(&q).await?;
    st.store.q_pause(&q, true).await?;
    Ok(json_response(StatusCode::OK, &st.store.q_stats(&q).await?))
}

/// Hand out tasks again.
#[utoipa::path(
    post, path = "/v1/queues/{queue}/resume", tag = "queues",
    params(("queue" = String, Path, description = "Queue name")),
    responses((status = 200, description = "Resumed", body = QueueStats))
)]
pub async fn resume(State(st): State<AppState>, Path(q): Path<String>) -> ApiResult<Response> {
    validate_name("queue", &q)?;
    st.store.register_queue(&q).await?;
    st.store.q_pause(&q, false).await?;
    Ok(json_response(StatusCode::OK, &st.store.q_stats(&q).await?))
}

/// Task state changes as Server-Sent Events (live; fire-and-forget like pub/sub).
#[utoipa::path(
    get, path = "/v1/queues/{queue}/events", tag = "queues",
    params(("queue" = String, Path, description = "Queue name")),
    responses((status = 200, description = "text/event-stream: one `task` event per state change", content_type = "text/event-stream"))
)]
pub async fn events_sse(State(st): State<AppState>, Path(q): Path<String>) -> ApiResult<Response> {
    validate_name("queue", &q)?;
    let rx = st.queues.events(&st.store, &q).await?;
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let e = match rx.recv().await {
            Ok(ev) => SseEvent::default().event("task").data(ev.as_ref()),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => SseEvent::default()
                .event("lagged")
                .data(format!("{{\"missed\":{n}}}")),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok::<_, std::convert::Infallible>(e), rx))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}
