//! Task-queue routes (DESIGN.md "Task queues"): enqueue, long-poll lease, ack / nack / extend,
//! status, dead letters, pause / resume. Transport only: parse, call `ops`, map. (The queue's
//! event stream is in [`super::sse`].)

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{header_str, JsonBody, Who, Q};
use super::problem::json_response;
use crate::domain::page::{Page, PageQuery};
use crate::domain::queue::{
    AckBody, DeadList, EnqueueBody, ExtendBody, LeaseBody, LeaseResult, NackBody, Purged, QueueList,
    QueueStats, Task, TaskList,
};
use crate::error::ApiResult;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(enqueue, list_tasks))
        .routes(routes!(lease))
        .routes(routes!(ack))
        .routes(routes!(nack))
        .routes(routes!(extend))
        .routes(routes!(get_task))
        .routes(routes!(list_queues))
        .routes(routes!(queue_status))
        .routes(routes!(list_dead, purge_dead))
        .routes(routes!(retry_dead))
        .routes(routes!(pause))
        .routes(routes!(resume))
}

/// Enqueue a task.
#[utoipa::path(
    post, path = "/v1/queues/{queue}/tasks", tag = "queues", operation_id = "task_enqueue",
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
    Who(who): Who,
    Path(q): Path<String>,
    JsonBody(b): JsonBody<EnqueueBody>,
) -> ApiResult<Response> {
    let (task, created) = st.ops.enqueue(&who, &q, b).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(status, &task))
}

/// Lease ready tasks, long-polling when there are none.
#[utoipa::path(
    post, path = "/v1/queues/{queue}/lease", tag = "queues", operation_id = "tasks_lease",
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
    Who(who): Who,
    Path(q): Path<String>,
    JsonBody(b): JsonBody<LeaseBody>,
) -> ApiResult<Response> {
    let tasks = st.ops.lease(&who, &q, &b).await?;
    Ok(json_response(StatusCode::OK, &LeaseResult { tasks }))
}

/// Complete a leased task.
#[utoipa::path(
    post, path = "/v1/queues/{queue}/tasks/{id}/ack", tag = "queues", operation_id = "task_ack",
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
    Who(who): Who,
    Path((q, id)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(b): JsonBody<AckBody>,
) -> ApiResult<Response> {
    let fence = fence_header(&headers);
    let t = st.ops.ack(&who, &q, &id, &b, fence).await?;
    Ok(json_response(StatusCode::OK, &t))
}

/// `x-fencing-token` as text; a header that is not visible ASCII is passed on as `""`, which
/// the operation refuses (after its other checks) like any malformed token.
fn fence_header(h: &HeaderMap) -> Option<&str> {
    h.get("x-fencing-token")
        .map(|_| header_str(h, "x-fencing-token").unwrap_or(""))
}

/// Fail a leased task: retried after its backoff, or dead-lettered after max_attempts.
#[utoipa::path(
    post, path = "/v1/queues/{queue}/tasks/{id}/nack", tag = "queues", operation_id = "task_nack",
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
    Who(who): Who,
    Path((q, id)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody(b): JsonBody<NackBody>,
) -> ApiResult<Response> {
    let fence = fence_header(&headers);
    let t = st.ops.nack(&who, &q, &id, &b, fence).await?;
    Ok(json_response(StatusCode::OK, &t))
}

/// Extend a lease.
#[utoipa::path(
    post, path = "/v1/queues/{queue}/tasks/{id}/extend", tag = "queues", operation_id = "task_extend",
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
    Who(who): Who,
    Path((q, id)): Path<(String, String)>,
    JsonBody(b): JsonBody<ExtendBody>,
) -> ApiResult<Response> {
    let t = st.ops.extend(&who, &q, &id, &b).await?;
    Ok(json_response(StatusCode::OK, &t))
}

/// A task (while it is retained).
#[utoipa::path(
    get, path = "/v1/queues/{queue}/tasks/{id}", tag = "queues", operation_id = "task_get",
    params(("queue" = String, Path, description = "Queue name"), ("id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "The task", body = Task),
        (status = 404, description = "No such task", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_task(
    State(st): State<AppState>,
    Who(who): Who,
    Path((q, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    Ok(json_response(StatusCode::OK, &st.ops.task(&who, &q, &id).await?))
}

/// Every queue with its counts.
#[utoipa::path(
    get, path = "/v1/queues", tag = "queues", operation_id = "queues_list",
    params(PageQuery),
    responses(
        (status = 200, description = "Queues, by name", body = QueueList),
        (status = 400, description = "Bad limit or cursor", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_queues(
    State(st): State<AppState>,
    Who(who): Who,
    Q(q): Q<PageQuery>,
) -> ApiResult<Response> {
    let (items, next_cursor) = st.ops.queues(&who, &Page::parse(&q)?).await?;
    Ok(json_response(StatusCode::OK, &QueueList { items, next_cursor }))
}

/// Counts per state, totals and the oldest ready task's age.
#[utoipa::path(
    get, path = "/v1/queues/{queue}", tag = "queues", operation_id = "queue_get",
    params(("queue" = String, Path, description = "Queue name")),
    responses((status = 200, description = "Queue status", body = QueueStats))
)]
pub async fn queue_status(
    State(st): State<AppState>,
    Who(who): Who,
    Path(q): Path<String>,
) -> ApiResult<Response> {
    Ok(json_response(
        StatusCode::OK,
        &st.ops.queue_stats(&who, &q).await?,
    ))
}

/// Query of `GET /v1/queues/{queue}/tasks`.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TasksQuery {
    /// ready, delayed, leased, failed (waiting for a retry), completed (kept for their
    /// retention) or dead.
    #[param(value_type = crate::domain::queue::TaskStateDoc)]
    state: String,
    /// `next_cursor` of the previous page (opaque).
    #[param(max_length = 2048)]
    cursor: Option<String>,
    /// Page size, 1 ..= 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// Tasks in one state, in that state's order (ready: the order leases take them; delayed and
/// failed: due time; leased: lease expiry; completed and dead: when they finished).
#[utoipa::path(
    get, path = "/v1/queues/{queue}/tasks", tag = "queues", operation_id = "tasks_list",
    params(("queue" = String, Path, description = "Queue name"), TasksQuery),
    responses(
        (status = 200, description = "A page of the tasks in that state", body = TaskList),
        (status = 400, description = "Bad state, limit or cursor", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_tasks(
    State(st): State<AppState>,
    Who(who): Who,
    Path(q): Path<String>,
    Q(tq): Q<TasksQuery>,
) -> ApiResult<Response> {
    let page = PageQuery {
        cursor: tq.cursor,
        limit: tq.limit,
    };
    let (items, total, next_cursor) = st.ops.tasks_in(&who, &q, &tq.state, &page).await?;
    Ok(json_response(
        StatusCode::OK,
        &TaskList {
            items,
            total,
            next_cursor,
        },
    ))
}

/// The dead-letter list, oldest first.
#[utoipa::path(
    get, path = "/v1/queues/{queue}/dead", tag = "queues", operation_id = "dead_list",
    params(("queue" = String, Path, description = "Queue name"), PageQuery),
    responses((status = 200, description = "Dead tasks with their last_error", body = DeadList))
)]
pub async fn list_dead(
    State(st): State<AppState>,
    Who(who): Who,
    Path(q): Path<String>,
    Q(p): Q<PageQuery>,
) -> ApiResult<Response> {
    let (items, total, next_cursor) = st.ops.dead(&who, &q, &p).await?;
    Ok(json_response(
        StatusCode::OK,
        &DeadList {
            items,
            total,
            next_cursor,
        },
    ))
}

/// Put a dead task back in the queue with its attempts reset.
#[utoipa::path(
    post, path = "/v1/queues/{queue}/dead/{id}/retry", tag = "queues", operation_id = "dead_retry",
    params(("queue" = String, Path, description = "Queue name"), ("id" = String, Path, description = "Task id")),
    responses(
        (status = 200, description = "Ready again", body = Task),
        (status = 404, description = "Not in the dead-letter list", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn retry_dead(
    State(st): State<AppState>,
    Who(who): Who,
    Path((q, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    Ok(json_response(
        StatusCode::OK,
        &st.ops.retry_dead(&who, &q, &id).await?,
    ))
}

/// Remove every dead task.
#[utoipa::path(
    delete, path = "/v1/queues/{queue}/dead", tag = "queues", operation_id = "dead_purge",
    params(("queue" = String, Path, description = "Queue name")),
    responses((status = 200, description = "Purged", body = Purged))
)]
pub async fn purge_dead(
    State(st): State<AppState>,
    Who(who): Who,
    Path(q): Path<String>,
) -> ApiResult<Response> {
    let purged = st.ops.purge_dead(&who, &q).await?;
    Ok(json_response(StatusCode::OK, &Purged { purged }))
}

/// Stop handing out tasks (enqueue and ack keep working).
#[utoipa::path(
    post, path = "/v1/queues/{queue}/pause", tag = "queues", operation_id = "queue_pause",
    params(("queue" = String, Path, description = "Queue name")),
    responses((status = 200, description = "Paused", body = QueueStats))
)]
pub async fn pause(State(st): State<AppState>, Who(who): Who, Path(q): Path<String>) -> ApiResult<Response> {
    Ok(json_response(
        StatusCode::OK,
        &st.ops.pause(&who, &q, true).await?,
    ))
}

/// Hand out tasks again.
#[utoipa::path(
    post, path = "/v1/queues/{queue}/resume", tag = "queues", operation_id = "queue_resume",
    params(("queue" = String, Path, description = "Queue name")),
    responses((status = 200, description = "Resumed", body = QueueStats))
)]
pub async fn resume(State(st): State<AppState>, Who(who): Who, Path(q): Path<String>) -> ApiResult<Response> {
    Ok(json_response(
        StatusCode::OK,
        &st.ops.pause(&who, &q, false).await?,
    ))
}
