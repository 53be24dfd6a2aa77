//! Key/value entry routes (DESIGN.md "Key/value with versions"): read, write, merge-patch,
//! delete, history, rollback and listing. Transport only: parse, call `ops`, map.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{etag, parse_etag, precondition, AnyJson, JsonBody, KvPath, KvSub, Who, Q};
use super::problem::json_response;
use crate::domain::auth::Caller;
use crate::domain::kv::{Entry, EntryDoc, EntryPage, Expect, OnConflict, Provenance, PutBody, RollbackBody};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::state::AppState;

/// The listing route; the entry routes share one wildcard route (keys may contain `/`),
/// documented as `/v1/ns/{ns}/kv/{key}…` with the key percent-encoded.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_entries)).route(
        "/v1/ns/{ns}/kv/{*key}",
        get(get_dispatch)
            .put(put_entry)
            .patch(patch_entry)
            .delete(delete_entry)
            .post(post_dispatch),
    )
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PutQuery {
    /// What to do when the precondition fails (default `reject`). Without a precondition,
    /// `reject` makes the PUT create-only and `merge` merges into the existing value.
    on_conflict: Option<OnConflict>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GetQuery {
    /// Read this retained version instead of the current one.
    #[param(minimum = 1)]
    version: Option<u64>,
    /// History page size (history route only; default 10, at most 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// `next_cursor` of the previous history page (history route only).
    cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only keys starting with this string (matched literally, byte-wise).
    prefix: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1 ..= 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Include values (default false).
    values: Option<bool>,
}

fn entry_response(status: StatusCode, e: &Entry) -> Response {
    let mut res = json_response(status, e);
    res.headers_mut().insert(header::ETAG, etag(e.version));
    res
}

fn created_or_ok(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

/// GET dispatcher for the wildcard key route: the entry or its history.
async fn get_dispatch(
    State(st): State<AppState>,
    Who(who): Who,
    kp: KvPath,
    Q(q): Q<GetQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    match kp.sub {
        KvSub::History => {
            if q.version.is_some() {
                return Err(ApiError::bad_request("`version` does not apply to history"));
            }
            get_history(st, &who, kp, q.limit, q.cursor).await
        }
        _ => {
            if q.limit.is_some() || q.cursor.is_some() {
                return Err(ApiError::bad_request(
                    "`limit` and `cursor` only apply to .../history",
                ));
            }
            get_entry(st, &who, kp, q.version, headers).await
        }
    }
}

/// POST dispatcher for the wildcard key route: rollback.
async fn post_dispatch(
    State(st): State<AppState>,
    Who(who): Who,
    kp: KvPath,
    prov: Provenance,
    body: JsonBody<RollbackBody>,
) -> ApiResult<Response> {
    rollback_entry(st, &who, kp, prov, body).await
}

/// Read an entry (or a retained version of it).
#[utoipa::path(
    get, path = "/v1/ns/{ns}/kv/{key}", tag = "kv", operation_id = "kv_get",
    params(
        ("ns" = String, Path, description = "Namespace"),
        ("key" = String, Path, description = "Key, percent-encoded (`/` may also be sent raw)"),
        ("version" = Option<u64>, Query, description = "Read this retained version", minimum = 1),
        ("If-None-Match" = Option<String>, Header, description = "ETag; 304 when it is still current"),
    ),
    responses(
        (status = 200, description = "The entry; ETag is its version", body = EntryDoc),
        (status = 304, description = "Not modified"),
        (status = 404, description = "No such key or version", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_entry(
    st: AppState,
    who: &Caller,
    kp: KvPath,
    version: Option<u64>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let e = st.ops.kv_get(who, &kp.ns, &kp.key, version).await?;
    if version.is_none() {
        if let Some(inm) = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
            if inm.trim() == "*" || parse_etag(inm.trim()) == Some(e.version) {
                let mut res = StatusCode::NOT_MODIFIED.into_response();
                res.headers_mut().insert(header::ETAG, etag(e.version));
                return Ok(res);
            }
        }
    }
    Ok(entry_response(StatusCode::OK, &e))
}

/// Create or replace an entry, optionally conditional.
#[utoipa::path(
    put, path = "/v1/ns/{ns}/kv/{key}", tag = "kv", operation_id = "kv_put",
    params(
        ("ns" = String, Path, description = "Namespace"),
        ("key" = String, Path, description = "Key, percent-encoded (`/` may also be sent raw)"),
        PutQuery,
        ("If-Match" = Option<String>, Header, description = "`\"<version>\"` compare-and-swap, `*` must exist, `\"0\"` must not exist"),
        ("If-None-Match" = Option<String>, Header, description = "`*`: create only"),
        ("x-agent-id" = Option<String>, Header, description = "Who writes (stored with the version)"),
        ("x-change-reason" = Option<String>, Header, description = "Why (stored with the version)"),
        ("x-fencing-token" = Option<String>, Header, description = "`<lock>:<n>` (a lock of this namespace): refused with 409 stale_fencing_token unless n is the lock's newest token"),
    ),
    request_body = PutBody,
    responses(
        (status = 200, description = "Updated", body = EntryDoc),
        (status = 201, description = "Created", body = EntryDoc),
        (status = 412, description = "Precondition failed; `current_version` in the body", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 400, description = "Bad name, header or argument", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis unavailable", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn put_entry(
    State(st): State<AppState>,
    Who(who): Who,
    kp: KvPath,
    Q(q): Q<PutQuery>,
    headers: HeaderMap,
    prov: Provenance,
    JsonBody(body): JsonBody<PutBody>,
) -> ApiResult<Response> {
    let pre = precondition(&headers, true)?;
    let w = st
        .ops
        .kv_put(&who, &kp.ns, &kp.key, body, pre, q.on_conflict, &prov)
        .await?;
    Ok(entry_response(created_or_ok(w.created), &w.entry))
}

/// Merge-patch an existing entry (RFC 7396); the TTL and metadata are kept.
#[utoipa::path(
    patch, path = "/v1/ns/{ns}/kv/{key}", tag = "kv", operation_id = "kv_patch",
    params(
        ("ns" = String, Path, description = "Namespace"),
        ("key" = String, Path, description = "Key, percent-encoded"),
        ("If-Match" = Option<String>, Header, description = "`\"<version>\"`: patch only that version"),
    ),
    request_body(content = Value, content_type = "application/merge-patch+json", description = "RFC 7396 merge patch"),
    responses(
        (status = 200, description = "Patched", body = EntryDoc),
        (status = 404, description = "No such key", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 412, description = "Version mismatch", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Content-Type is not merge-patch+json or json", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn patch_entry(
    State(st): State<AppState>,
    Who(who): Who,
    kp: KvPath,
    headers: HeaderMap,
    prov: Provenance,
    AnyJson(patch): AnyJson,
) -> ApiResult<Response> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if ct != "application/merge-patch+json" && ct != "application/json" {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "PATCH takes application/merge-patch+json (or application/json)",
            ));
        }
    }
    let if_match = match precondition(&headers, false)? {
        None | Some(Expect::Exists) => None,
        Some(Expect::Version(v)) => Some(v),
        Some(_) => return Err(ApiError::bad_request("If-Match must name a version")),
    };
    let e = st
        .ops
        .kv_patch(&who, &kp.ns, &kp.key, &patch, if_match, &prov)
        .await?;
    Ok(entry_response(StatusCode::OK, &e))
}

/// Delete an entry.
#[utoipa::path(
    delete, path = "/v1/ns/{ns}/kv/{key}", tag = "kv", operation_id = "kv_delete",
    params(
        ("ns" = String, Path, description = "Namespace"),
        ("key" = String, Path, description = "Key, percent-encoded"),
        ("If-Match" = Option<String>, Header, description = "`\"<version>\"`: delete only that version"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such key", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 412, description = "Version mismatch", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete_entry(
    State(st): State<AppState>,
    Who(who): Who,
    kp: KvPath,
    headers: HeaderMap,
    prov: Provenance,
) -> ApiResult<Response> {
    let expect = precondition(&headers, false)?.unwrap_or(Expect::Any);
    st.ops.kv_delete(&who, &kp.ns, &kp.key, expect, &prov).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Retained versions, newest first (the current version included).
#[utoipa::path(
    get, path = "/v1/ns/{ns}/kv/{key}/history", tag = "kv", operation_id = "kv_history",
    params(
        ("ns" = String, Path, description = "Namespace"),
        ("key" = String, Path, description = "Key, percent-encoded"),
        ("limit" = Option<usize>, Query, description = "At most this many versions (default 10, ≤ 1000)", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page (opaque)", max_length = 2048),
    ),
    responses(
        (status = 200, description = "Versions, newest first", body = EntryPage),
        (status = 404, description = "No such key", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_history(
    st: AppState,
    who: &Caller,
    kp: KvPath,
    limit: Option<usize>,
    cursor: Option<String>,
) -> ApiResult<Response> {
    let (items, next_cursor) = st
        .ops
        .kv_history(who, &kp.ns, &kp.key, limit, cursor.as_deref())
        .await?;
    Ok(json_response(StatusCode::OK, &EntryPage { items, next_cursor }))
}

/// Write a retained version's value and metadata as a new version (TTL kept).
#[utoipa::path(
    post, path = "/v1/ns/{ns}/kv/{key}/rollback", tag = "kv", operation_id = "kv_rollback",
    params(
        ("ns" = String, Path, description = "Namespace"),
        ("key" = String, Path, description = "Key, percent-encoded"),
    ),
    request_body = RollbackBody,
    responses(
        (status = 200, description = "The new version", body = EntryDoc),
        (status = 404, description = "No such key or version not retained", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn rollback_entry(
    st: AppState,
    who: &Caller,
    kp: KvPath,
    prov: Provenance,
    JsonBody(body): JsonBody<RollbackBody>,
) -> ApiResult<Response> {
    if kp.sub != KvSub::Rollback {
        return Err(ApiError::new(
            ErrorCode::MethodNotAllowed,
            "POST is only for .../rollback",
        ));
    }
    let e = st
        .ops
        .kv_rollback(who, &kp.ns, &kp.key, body.version, &prov)
        .await?;
    Ok(entry_response(StatusCode::OK, &e))
}

/// List keys by prefix, in byte order, with a stable cursor.
#[utoipa::path(
    get, path = "/v1/ns/{ns}/kv", tag = "kv", operation_id = "kv_list",
    params(("ns" = String, Path, description = "Namespace"), ListQuery),
    responses(
        (status = 200, description = "A page of entries", body = EntryPage),
        (status = 400, description = "Bad name, cursor or limit", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_entries(
    State(st): State<AppState>,
    Who(who): Who,
    Path(ns): Path<String>,
    Q(q): Q<ListQuery>,
) -> ApiResult<Response> {
    let (items, next_cursor) = st
        .ops
        .kv_list(
            &who,
            &ns,
            q.prefix,
            q.cursor.as_deref(),
            q.limit,
            q.values.unwrap_or(false),
        )
        .await?;
    Ok(json_response(StatusCode::OK, &EntryPage { items, next_cursor }))
}
