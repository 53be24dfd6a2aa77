//! Lock routes (DESIGN.md "Coordination primitives"). Transport only: parse, call `ops`, map.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{header_str, JsonBody, Who, Q};
use super::problem::json_response;
use crate::domain::lock::{AcquireBody, Granted, LockInfo, LockList, RenewBody};
use crate::domain::page::{Page, PageQuery};
use crate::error::ApiResult;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(acquire, get_lock, release))
        .routes(routes!(renew))
        .routes(routes!(list_locks))
}

/// The locks of a namespace held now, by name, with holder, fencing token and expiry.
#[utoipa::path(
    get, path = "/v1/ns/{ns}/locks", tag = "locks", operation_id = "locks_list",
    params(("ns" = String, Path, description = "Namespace"), PageQuery),
    responses(
        (status = 200, description = "Held locks, by name", body = LockList),
        (status = 400, description = "Bad namespace, limit or cursor", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_locks(
    State(st): State<AppState>,
    Who(who): Who,
    Path(ns): Path<String>,
    Q(q): Q<PageQuery>,
) -> ApiResult<Response> {
    let page = Page::parse(&q)?;
    let (items, next_cursor) = st.ops.locks(&who, &ns, &page).await?;
    Ok(json_response(StatusCode::OK, &LockList { items, next_cursor }))
}

/// Acquire a lock, optionally waiting for it.
#[utoipa::path(
    post, path = "/v1/ns/{ns}/locks/{name}", tag = "locks", operation_id = "lock_acquire",
    params(("ns" = String, Path, description = "Namespace"), ("name" = String, Path, description = "Lock name ([a-z0-9][a-z0-9._-]{0,62})")),
    request_body = AcquireBody,
    responses(
        (status = 200, description = "Granted", body = Granted),
        (status = 409, description = "`lock_held` (after wait_ms)", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn acquire(
    State(st): State<AppState>,
    Who(who): Who,
    Path((ns, name)): Path<(String, String)>,
    JsonBody(b): JsonBody<AcquireBody>,
) -> ApiResult<Response> {
    Ok(json_response(
        StatusCode::OK,
        &st.ops.lock_acquire(&who, &ns, &name, b).await?,
    ))
}

/// Extend the lock's TTL (holder only).
#[utoipa::path(
    post, path = "/v1/ns/{ns}/locks/{name}/renew", tag = "locks", operation_id = "lock_renew",
    params(("ns" = String, Path, description = "Namespace"), ("name" = String, Path, description = "Lock name")),
    request_body = RenewBody,
    responses(
        (status = 200, description = "Renewed: expires ttl_ms from now", body = Granted),
        (status = 404, description = "Not held (released or expired)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`lock_held`: the token is not the holder's", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn renew(
    State(st): State<AppState>,
    Who(who): Who,
    Path((ns, name)): Path<(String, String)>,
    JsonBody(b): JsonBody<RenewBody>,
) -> ApiResult<Response> {
    Ok(json_response(
        StatusCode::OK,
        &st.ops.lock_renew(&who, &ns, &name, b).await?,
    ))
}

/// Release the lock (holder only: `x-lock-token`).
#[utoipa::path(
    delete, path = "/v1/ns/{ns}/locks/{name}", tag = "locks", operation_id = "lock_release",
    params(("ns" = String, Path, description = "Namespace"), ("name" = String, Path, description = "Lock name"),
           ("x-lock-token" = String, Header, description = "The token acquire returned")),
    responses(
        (status = 204, description = "Released; waiters are woken"),
        (status = 404, description = "Not held", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`lock_held`: the token is not the holder's", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn release(
    State(st): State<AppState>,
    Who(who): Who,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    st.ops
        .lock_release(&who, &ns, &name, header_str(&headers, "x-lock-token"))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Holder, fencing token and expiry.
#[utoipa::path(
    get, path = "/v1/ns/{ns}/locks/{name}", tag = "locks", operation_id = "lock_get",
    params(("ns" = String, Path, description = "Namespace"), ("name" = String, Path, description = "Lock name")),
    responses(
        (status = 200, description = "Held", body = LockInfo),
        (status = 404, description = "Not held", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_lock(
    State(st): State<AppState>,
    Who(who): Who,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    Ok(json_response(
        StatusCode::OK,
        &st.ops.lock_get(&who, &ns, &name).await?,
    ))
}
