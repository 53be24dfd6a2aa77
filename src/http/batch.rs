//! Many keys at once, transactions, counters and the namespace list (DESIGN.md "Key/value
//! with versions"). Transport only: parse, call `ops`, map.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::Response;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{etag, parse_json, JsonBody, Who, Q};
use super::problem::json_response;
use crate::domain::kv::{
    BatchDeleteResult, BatchGetResult, BatchPutBody, BatchPutResult, IncrBody, IncrResponse, KeysBody,
    NamespaceList, Provenance,
};
use crate::domain::page::{Page, PageQuery};
use crate::domain::txn::{TxnBody, TxnResponse};
use crate::error::ApiResult;
use crate::ops::kv::check_key;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(batch_get))
        .routes(routes!(batch_put))
        .routes(routes!(batch_delete))
        .routes(routes!(txn))
        .routes(routes!(incr_counter))
        .routes(routes!(list_namespaces))
}

/// Read many keys in one round trip.
#[utoipa::path(
    post, path = "/v1/ns/{ns}/batch/get", tag = "kv", operation_id = "kv_batch_get",
    params(("ns" = String, Path, description = "Namespace")),
    request_body = KeysBody,
    responses((status = 200, description = "Entries in request order", body = BatchGetResult))
)]
pub async fn batch_get(
    State(st): State<AppState>,
    Who(who): Who,
    Path(ns): Path<String>,
    JsonBody(body): JsonBody<KeysBody>,
) -> ApiResult<Response> {
    let items = st.ops.batch_get(&who, &ns, &body).await?;
    Ok(json_response(StatusCode::OK, &BatchGetResult { items }))
}

/// Write many keys; each item is its own atomic write with its own result.
#[utoipa::path(
    post, path = "/v1/ns/{ns}/batch/put", tag = "kv", operation_id = "kv_batch_put",
    params(("ns" = String, Path, description = "Namespace")),
    request_body = BatchPutBody,
    responses(
        (status = 200, description = "Per-item results in request order", body = BatchPutResult),
        (status = 400, description = "An item is invalid; nothing was written", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn batch_put(
    State(st): State<AppState>,
    Who(who): Who,
    Path(ns): Path<String>,
    prov: Provenance,
    JsonBody(body): JsonBody<BatchPutBody>,
) -> ApiResult<Response> {
    let items = st.ops.batch_put(&who, &ns, body, &prov).await?;
    Ok(json_response(StatusCode::OK, &BatchPutResult { items }))
}

/// Delete many keys; absent keys report `deleted: false`.
#[utoipa::path(
    post, path = "/v1/ns/{ns}/batch/delete", tag = "kv", operation_id = "kv_batch_delete",
    params(("ns" = String, Path, description = "Namespace")),
    request_body = KeysBody,
    responses((status = 200, description = "Per-key results in request order", body = BatchDeleteResult))
)]
pub async fn batch_delete(
    State(st): State<AppState>,
    Who(who): Who,
    Path(ns): Path<String>,
    prov: Provenance,
    JsonBody(body): JsonBody<KeysBody>,
) -> ApiResult<Response> {
    let items = st.ops.batch_delete(&who, &ns, &body, &prov).await?;
    Ok(json_response(StatusCode::OK, &BatchDeleteResult { items }))
}

/// Compare-then-apply, all-or-nothing (etcd-style).
#[utoipa::path(
    post, path = "/v1/ns/{ns}/txn", tag = "kv", operation_id = "kv_txn",
    params(("ns" = String, Path, description = "Namespace")),
    request_body = TxnBody,
    responses(
        (status = 200, description = "Which branch ran and its results", body = TxnResponse),
        (status = 400, description = "Invalid transaction; nothing was written", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn txn(
    State(st): State<AppState>,
    Who(who): Who,
    Path(ns): Path<String>,
    prov: Provenance,
    JsonBody(body): JsonBody<TxnBody>,
) -> ApiResult<Response> {
    let out = st.ops.txn(&who, &ns, &body, &prov).await?;
    Ok(json_response(StatusCode::OK, &out))
}

/// Atomically add to an integer counter stored at key `{name}` of the namespace.
#[utoipa::path(
    post, path = "/v1/ns/{ns}/counters/{name}/incr", tag = "kv", operation_id = "counter_incr",
    params(("ns" = String, Path, description = "Namespace"), ("name" = String, Path, description = "Counter key")),
    request_body = IncrBody,
    responses(
        (status = 200, description = "The new value", body = IncrResponse),
        (status = 409, description = "The key holds a non-integer", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The result would overflow ±2^53-1", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn incr_counter(
    State(st): State<AppState>,
    Who(who): Who,
    Path((ns, name)): Path<(String, String)>,
    prov: Provenance,
    body: Bytes,
) -> ApiResult<Response> {
    check_key(&ns, &name)?;
    // An empty body increments by one.
    let body: IncrBody = if body.iter().all(u8::is_ascii_whitespace) {
        IncrBody {
            by: None,
            ttl_ms: None,
        }
    } else {
        parse_json(&body)?
    };
    let (value, entry) = st.ops.kv_incr(&who, &ns, &name, body, &prov).await?;
    let mut res = json_response(
        StatusCode::OK,
        &IncrResponse {
            value,
            version: entry.version,
            mod_revision: entry.mod_revision,
        },
    );
    res.headers_mut().insert(header::ETAG, etag(entry.version));
    Ok(res)
}

/// Every namespace with its key count, revision and bytes used.
#[utoipa::path(
    get, path = "/v1/namespaces", tag = "kv", operation_id = "namespaces_list",
    params(PageQuery),
    responses(
        (status = 200, description = "Namespaces, sorted by name", body = NamespaceList),
        (status = 400, description = "Bad limit or cursor", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_namespaces(
    State(st): State<AppState>,
    Who(who): Who,
    Q(q): Q<PageQuery>,
) -> ApiResult<Response> {
    let (items, next_cursor) = st.ops.namespaces(&who, &Page::parse(&q)?).await?;
    Ok(json_response(
        StatusCode::OK,
        &NamespaceList { items, next_cursor },
    ))
}
