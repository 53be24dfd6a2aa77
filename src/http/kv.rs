//! Key/value endpoints (DESIGN.md "Key/value with versions"). Handlers validate, call one
//! store operation, and map its outcome; the atomic work happens in the Redis functions.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::{
    json_response, validate_key, validate_name, JsonBody, KvPath, KvSub, MAX_SAFE_INT, MAX_TTL_MS, Q,
};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::store::kv::{
    DeleteOutcome, Entry, Expect, NamespaceInfo, Provenance, PutOutcome, Ttl, TxnCompare, TxnOp, TxnPlan,
    TxnResult, MAX_VALUE_BYTES_PER_RESPONSE,
};

/// Most items in one batch request.
pub const MAX_BATCH: usize = 1000;
/// Most operations in one transaction (success and failure branches together).
pub const MAX_TXN_OPS: usize = 128;
/// Batch items processed concurrently (pipelined) at a time.
const BATCH_CHUNK: usize = 128;
/// Optimistic retries of a merge before answering 409 `conflict`.
const MERGE_ATTEMPTS: usize = 64;

/// Deserialize a field that must be present but may be `null` (`Some(Value::Null)`).
pub(crate) fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// `{"items": [...]}` without going through `serde_json::Value`.
#[derive(Serialize)]
struct Items<'a, T: Serialize> {
    items: &'a [T],
}

#[derive(Serialize)]
struct Page<'a, T: Serialize> {
    items: &'a [T],
    next_cursor: Option<String>,
}

/// Canonical JSON text of a value: compact, object keys sorted.
pub fn canonical(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// Schema of an entry as returned by the API.
#[derive(Serialize, ToSchema)]
#[schema(as = Entry)]
#[allow(dead_code)]
pub struct EntryDoc {
    namespace: String,
    key: String,
    /// Any JSON value. Left out of listings unless `values=true`.
    value: Value,
    /// Writes to this key since it was created (1 on create).
    version: u64,
    /// Namespace revision that created the key.
    create_revision: u64,
    /// Namespace revision of the last change.
    mod_revision: u64,
    /// RFC 3339.
    created_at: String,
    updated_at: String,
    expires_at: Option<String>,
    metadata: Option<Map<String, Value>>,
    /// `x-agent-id` of the write that made this version.
    agent_id: Option<String>,
    /// `x-change-reason` of the write that made this version.
    change_reason: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutBody {
    /// Any JSON value (required; may be null).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Value)]
    value: Option<Value>,
    /// Free-form object stored with the version.
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    /// Expire the key this many milliseconds after the write (1 ..= 315360000000).
    #[serde(default)]
    ttl_ms: Option<u64>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnConflict {
    Reject,
    Overwrite,
    Merge,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PutQuery {
    /// What to do when the precondition fails (default `reject`). Without a precondition,
    /// `reject` makes the PUT create-only and `merge` merges into the existing value.
    on_conflict: Option<OnConflict>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct GetQuery {
    /// Read this retained version instead of the current one.
    version: Option<u64>,
    /// History page size (history route only; default 10, at most 1000).
    limit: Option<usize>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only keys starting with this string (matched literally, byte-wise).
    prefix: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1 ..= 1000 (default 100).
    limit: Option<usize>,
    /// Include values (default false).
    values: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct EntryPage {
    items: Vec<EntryDoc>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EntryList {
    items: Vec<EntryDoc>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// A retained version whose value and metadata become the new version.
    version: u64,
}

/// Parse `If-Match` / `If-None-Match` into a write precondition.
fn precondition(h: &HeaderMap, allow_none_match: bool) -> ApiResult<Option<Expect>> {
    let im = h
        .get(header::IF_MATCH)
        .map(|v| v.to_str().unwrap_or("\u{0}").trim().to_string());
    let inm = h
        .get(header::IF_NONE_MATCH)
        .map(|v| v.to_str().unwrap_or("\u{0}").trim().to_string());
    match (im, inm) {
        (Some(_), Some(_)) => Err(ApiError::bad_request("send If-Match or If-None-Match, not both")),
        (Some(m), None) => {
            if m == "*" {
                return Ok(Some(Expect::Exists));
            }
            parse_etag(&m).map(|v| Some(Expect::Version(v))).ok_or_else(|| {
                ApiError::bad_request(format!("If-Match must be `*` or an ETag like \"3\" (got `{m}`)"))
            })
        }
        (None, Some(n)) => {
            if n == "*" && allow_none_match {
                Ok(Some(Expect::Absent))
            } else {
                Err(ApiError::bad_request(
                    "If-None-Match only accepts `*` here (create-only)",
                ))
            }
        }
        (None, None) => Ok(None),
    }
}

/// `"3"`, `W/"3"` or `3` → 3.
fn parse_etag(s: &str) -> Option<u64> {
    let s = s.strip_prefix("W/").unwrap_or(s);
    let s = s.strip_prefix('"').and_then(|x| x.strip_suffix('"')).unwrap_or(s);
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn check_ttl(ttl: Option<u64>) -> ApiResult<Ttl> {
    match ttl {
        None => Ok(Ttl::None),
        Some(t) if (1..=MAX_TTL_MS).contains(&t) => Ok(Ttl::Ms(t)),
        Some(t) => Err(ApiError::bad_request(format!(
            "ttl_ms must be between 1 and {MAX_TTL_MS} (got {t})"
        ))),
    }
}

fn metadata_text(m: &Option<Map<String, Value>>) -> Option<String> {
    m.as_ref().map(|m| canonical(&Value::Object(m.clone())))
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

fn entry_response(status: StatusCode, e: &Entry) -> Response {
    let mut res = json_response(status, e);
    res.headers_mut().insert(header::ETAG, etag(e.version));
    res
}

fn not_found(key: &str) -> ApiError {
    ApiError::not_found(format!("key `{key}` does not exist"))
}

/// GET dispatcher for the wildcard key route: the entry or its history.
pub async fn get_dispatch(
    State(st): State<AppState>,
    kp: KvPath,
    Q(q): Q<GetQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    match kp.sub {
        KvSub::History => {
            if q.version.is_some() {
                return Err(ApiError::bad_request("`version` does not apply to history"));
            }
            get_history(st, kp, q.limit).await
        }
        _ => {
            if q.limit.is_some() {
                return Err(ApiError::bad_request("`limit` only applies to .../history"));
            }
            get_entry(st, kp, q.version, headers).await
        }
    }
}

/// POST dispatcher for the wildcard key route: rollback.
pub async fn post_dispatch(
    State(st): State<AppState>,
    kp: KvPath,
    prov: Provenance,
    body: JsonBody<RollbackBody>,
) -> ApiResult<Response> {
    rollback_entry(st, kp, prov, body).await
}

/// Read an entry (or a retained version of it).
#[utoipa::path(
    get, path = "/v1/ns/{ns}/kv/{key}", tag = "kv",
    params(
        ("ns" = String, Path, description = "Namespace"),
        ("key" = String, Path, description = "Key, percent-encoded (`/` may also be sent raw)"),
        ("version" = Option<u64>, Query, description = "Read this retained version"),
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
    kp: KvPath,
    version: Option<u64>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let entry = match version {
        None => st.store.kv_get(&kp.ns, &kp.key).await?,
        Some(0) => return Err(ApiError::bad_request("versions start at 1")),
        Some(v) => st.store.kv_get_version(&kp.ns, &kp.key, v).await?,
    };
    let Some(e) = entry else {
        return Err(match version {
            Some(v) => ApiError::not_found(format!(
                "version {v} of `{}` does not exist or is not retained",
                kp.key
            )),
            None => not_found(&kp.key),
        });
    };
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
    put, path = "/v1/ns/{ns}/kv/{key}", tag = "kv",
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
    kp: KvPath,
    Q(q): Q<PutQuery>,
    headers: HeaderMap,
    prov: Provenance,
    JsonBody(body): JsonBody<PutBody>,
) -> ApiResult<Response> {
    let pre = precondition(&headers, true)?;
    let ttl = check_ttl(body.ttl_ms)?;
    let value = body
        .value
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidBody, "missing field `value`"))?;
    let meta = metadata_text(&body.metadata);
    let mode = q.on_conflict.unwrap_or(if pre.is_some() {
        OnConflict::Reject
    } else {
        OnConflict::Overwrite
    });
    let expect = match (pre, mode) {
        (None, OnConflict::Overwrite) | (Some(_), OnConflict::Overwrite) => Expect::Any,
        (None, OnConflict::Reject) => Expect::Absent,
        (None, OnConflict::Merge) => {
            let merge_ttl = if body.ttl_ms.is_some() { ttl } else { Ttl::Keep };
            let (e, created) = merge_into(&st, &kp, &value, meta, merge_ttl, &prov, None, false).await?;
            return Ok(entry_response(
                if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                &e,
            ));
        }
        (Some(p), _) => p,
    };
    let out = st
        .store
        .kv_put(
            &kp.ns,
            &kp.key,
            canonical(&value),
            meta.clone(),
            ttl,
            expect,
            &prov,
        )
        .await?;
    match out {
        PutOutcome::Written { entry, created } => Ok(entry_response(
            if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            &entry,
        )),
        PutOutcome::Mismatch(current) => {
            if mode == OnConflict::Merge {
                let merge_ttl = if body.ttl_ms.is_some() { ttl } else { Ttl::Keep };
                let (e, created) = merge_into(&st, &kp, &value, meta, merge_ttl, &prov, None, false).await?;
                Ok(entry_response(
                    if created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    },
                    &e,
                ))
            } else {
                Err(ApiError::version_mismatch(current))
            }
        }
    }
}

/// RFC 7396 merge of `patch` into the current value as one conditional write, retried on
/// concurrent change: the result is always the patch applied to exactly one version.
#[allow(clippy::too_many_arguments)]
async fn merge_into(
    st: &AppState,
    kp: &KvPath,
    patch: &Value,
    metadata: Option<String>,
    ttl: Ttl,
    prov: &Provenance,
    if_match: Option<u64>,
    must_exist: bool,
) -> ApiResult<(Entry, bool)> {
    for attempt in 0..MERGE_ATTEMPTS {
        let cur = st.store.kv_get(&kp.ns, &kp.key).await?;
        let (mut doc, expect, cur_meta) = match cur {
            Some(e) => {
                if let Some(v) = if_match {
                    if v != e.version {
                        return Err(ApiError::version_mismatch(e.version));
                    }
                }
                let doc: Value = serde_json::from_str(e.value.as_deref().unwrap_or("null"))
                    .map_err(|err| ApiError::internal(format!("stored value is not JSON: {err}")))?;
                (doc, Expect::Version(e.version), e.metadata)
            }
            None => {
                if must_exist {
                    return Err(not_found(&kp.key));
                }
                if if_match.is_some() {
                    return Err(ApiError::version_mismatch(0));
                }
                (Value::Null, Expect::Absent, None)
            }
        };
        json_patch::merge(&mut doc, patch);
        let meta = metadata.clone().or(cur_meta);
        match st
            .store
            .kv_put(&kp.ns, &kp.key, canonical(&doc), meta, ttl, expect, prov)
            .await?
        {
            PutOutcome::Written { entry, created } => return Ok((entry, created)),
            PutOutcome::Mismatch(current) => {
                if if_match.is_some() {
                    return Err(ApiError::version_mismatch(current));
                }
                if attempt > 4 {
                    tokio::time::sleep(std::time::Duration::from_millis(attempt as u64)).await;
                }
            }
        }
    }
    Err(ApiError::new(
        ErrorCode::Conflict,
        format!("`{}` changed too often to merge; retry", kp.key),
    ))
}

/// Merge-patch an existing entry (RFC 7396); the TTL and metadata are kept.
#[utoipa::path(
    patch, path = "/v1/ns/{ns}/kv/{key}", tag = "kv",
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
    kp: KvPath,
    headers: HeaderMap,
    prov: Provenance,
    JsonBody(patch): JsonBody<Value>,
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
    let (e, _) = merge_into(&st, &kp, &patch, None, Ttl::Keep, &prov, if_match, true).await?;
    Ok(entry_response(StatusCode::OK, &e))
}

/// Delete an entry.
#[utoipa::path(
    delete, path = "/v1/ns/{ns}/kv/{key}", tag = "kv",
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
    kp: KvPath,
    headers: HeaderMap,
    prov: Provenance,
) -> ApiResult<Response> {
    let expect = precondition(&headers, false)?.unwrap_or(Expect::Any);
    match st.store.kv_delete(&kp.ns, &kp.key, expect, &prov).await? {
        DeleteOutcome::Deleted { .. } => Ok(StatusCode::NO_CONTENT.into_response()),
        DeleteOutcome::NotFound => Err(not_found(&kp.key)),
        DeleteOutcome::Mismatch(cur) => Err(ApiError::version_mismatch(cur)),
    }
}

/// Retained versions, newest first (the current version included).
#[utoipa::path(
    get, path = "/v1/ns/{ns}/kv/{key}/history", tag = "kv",
    params(
        ("ns" = String, Path, description = "Namespace"),
        ("key" = String, Path, description = "Key, percent-encoded"),
        ("limit" = Option<usize>, Query, description = "At most this many versions (default 10, ≤ 1000)"),
    ),
    responses(
        (status = 200, description = "Versions, newest first", body = EntryList),
        (status = 404, description = "No such key", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_history(st: AppState, kp: KvPath, limit: Option<usize>) -> ApiResult<Response> {
    let limit = limit.unwrap_or(10);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let items = st
        .store
        .kv_history(&kp.ns, &kp.key, limit)
        .await?
        .ok_or_else(|| not_found(&kp.key))?;
    Ok(json_response(StatusCode::OK, &Items { items: &items }))
}

/// Write a retained version's value and metadata as a new version (TTL kept).
#[utoipa::path(
    post, path = "/v1/ns/{ns}/kv/{key}/rollback", tag = "kv",
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
    if body.version == 0 {
        return Err(ApiError::bad_request("versions start at 1"));
    }
    let e = st.store.kv_rollback(&kp.ns, &kp.key, body.version, &prov).await?;
    Ok(entry_response(StatusCode::OK, &e))
}

/// List keys by prefix, in byte order, with a stable cursor.
#[utoipa::path(
    get, path = "/v1/ns/{ns}/kv", tag = "kv",
    params(("ns" = String, Path, description = "Namespace"), ListQuery),
    responses(
        (status = 200, description = "A page of entries", body = EntryPage),
        (status = 400, description = "Bad name, cursor or limit", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_entries(
    State(st): State<AppState>,
    Path(ns): Path<String>,
    Q(q): Q<ListQuery>,
) -> ApiResult<Response> {
    validate_name("namespace", &ns)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 1000"));
    }
    let prefix = q.prefix.unwrap_or_default();
    if prefix.len() > super::MAX_KEY_BYTES || prefix.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "prefix must be at most 512 bytes without control characters",
        ));
    }
    let after = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(
            URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| ApiError::bad_request("cursor is not one this service issued"))?,
        ),
    };
    let (items, next) = st
        .store
        .kv_list(&ns, &prefix, after.as_deref(), limit, q.values.unwrap_or(false))
        .await?;
    let next_cursor = next.map(|k| URL_SAFE_NO_PAD.encode(k.as_bytes()));
    Ok(json_response(
        StatusCode::OK,
        &Page {
            items: &items,
            next_cursor,
        },
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeysBody {
    /// 1 ..= 1000 keys.
    keys: Vec<String>,
}

fn check_keys(keys: &[String]) -> ApiResult<()> {
    if keys.is_empty() || keys.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "send 1 to {MAX_BATCH} keys (got {})",
            keys.len()
        )));
    }
    keys.iter().try_for_each(|k| validate_key(k))
}

#[derive(Serialize, ToSchema)]
pub struct BatchGetResult {
    /// One per requested key, in order; null where the key does not exist.
    items: Vec<Option<EntryDoc>>,
}

/// Read many keys in one round trip.
#[utoipa::path(
    post, path = "/v1/ns/{ns}/batch/get", tag = "kv",
    params(("ns" = String, Path, description = "Namespace")),
    request_body = KeysBody,
    responses((status = 200, description = "Entries in request order", body = BatchGetResult))
)]
pub async fn batch_get(
    State(st): State<AppState>,
    Path(ns): Path<String>,
    JsonBody(body): JsonBody<KeysBody>,
) -> ApiResult<Response> {
    validate_name("namespace", &ns)?;
    check_keys(&body.keys)?;
    let total: u64 = st.store.sizes(&ns, &body.keys).await?.iter().sum();
    if total > MAX_VALUE_BYTES_PER_RESPONSE {
        return Err(ApiError::bad_request(format!(
            "these keys hold {total} bytes, more than the {MAX_VALUE_BYTES_PER_RESPONSE} one response may carry; ask for fewer keys"
        )));
    }
    let items = st.store.kv_get_many(&ns, &body.keys, true).await?;
    Ok(json_response(StatusCode::OK, &Items { items: &items }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchPutItem {
    key: String,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Value)]
    value: Option<Value>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    ttl_ms: Option<u64>,
    /// Write only if the key is at this version (0 = only if absent).
    #[serde(default)]
    if_version: Option<u64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchPutBody {
    /// 1 ..= 1000 items.
    items: Vec<BatchPutItem>,
}

#[derive(Serialize, ToSchema)]
pub struct BatchPutItemResult {
    key: String,
    /// 201 created, 200 updated, 412 version mismatch, 507 quota_exceeded (partition),
    /// 409 stale_fencing_token.
    status: u16,
    /// The new entry on success.
    entry: Option<EntryDoc>,
    /// The current version on 412.
    current_version: Option<u64>,
    /// The error code on 507 / 409.
    code: Option<String>,
    detail: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct BatchPutResult {
    items: Vec<BatchPutItemResult>,
}

/// Write many keys; each item is its own atomic write with its own result.
#[utoipa::path(
    post, path = "/v1/ns/{ns}/batch/put", tag = "kv",
    params(("ns" = String, Path, description = "Namespace")),
    request_body = BatchPutBody,
    responses(
        (status = 200, description = "Per-item results in request order", body = BatchPutResult),
        (status = 400, description = "An item is invalid; nothing was written", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn batch_put(
    State(st): State<AppState>,
    Path(ns): Path<String>,
    prov: Provenance,
    JsonBody(body): JsonBody<BatchPutBody>,
) -> ApiResult<Response> {
    validate_name("namespace", &ns)?;
    if body.items.is_empty() || body.items.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "send 1 to {MAX_BATCH} items (got {})",
            body.items.len()
        )));
    }
    // Validate everything before writing anything.
    let mut writes = Vec::with_capacity(body.items.len());
    for (i, it) in body.items.into_iter().enumerate() {
        validate_key(&it.key).map_err(|e| ApiError::new(e.code, format!("items[{i}]: {}", e.detail)))?;
        let ttl =
            check_ttl(it.ttl_ms).map_err(|e| ApiError::new(e.code, format!("items[{i}]: {}", e.detail)))?;
        let value = it.value.ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidBody,
                format!("items[{i}]: missing field `value`"),
            )
        })?;
        let expect = it.if_version.map(Expect::Version).unwrap_or(Expect::Any);
        writes.push((
            it.key,
            canonical(&value),
            metadata_text(&it.metadata),
            ttl,
            expect,
        ));
    }
    // One connection for the whole batch: items apply in request order.
    let store = st.store.pinned();
    store.register_namespace(&ns).await?;
    let mut results = Vec::with_capacity(writes.len());
    for chunk in writes.chunks(BATCH_CHUNK) {
        let calls = chunk.iter().map(|(k, v, m, ttl, ex)| {
            let (store, ns, prov) = (&store, &ns, &prov);
            async move {
                // Refusals that concern this item alone become its status; the rest still apply.
                let out = match store.kv_put(ns, k, v.clone(), m.clone(), *ttl, *ex, prov).await {
                    Err(e) if matches!(e.code, ErrorCode::QuotaExceeded | ErrorCode::StaleFencingToken) => {
                        return Ok(serde_json::json!({
                            "key": k, "status": e.code.status().as_u16(), "entry": null,
                            "current_version": null, "code": e.code.as_str(), "detail": e.detail
                        }));
                    }
                    r => r?,
                };
                Ok::<_, ApiError>(match out {
                    PutOutcome::Written { entry, created } => serde_json::json!({
                        "key": k, "status": if created { 201 } else { 200 }, "entry": entry, "current_version": null
                    }),
                    PutOutcome::Mismatch(cur) => serde_json::json!({
                        "key": k, "status": 412, "entry": null, "current_version": cur
                    }),
                })
            }
        });
        results.extend(futures::future::try_join_all(calls).await?);
    }
    Ok(json_response(StatusCode::OK, &Items { items: &results }))
}

#[derive(Serialize, ToSchema)]
pub struct BatchDeleteItemResult {
    key: String,
    deleted: bool,
}

#[derive(Serialize, ToSchema)]
pub struct BatchDeleteResult {
    items: Vec<BatchDeleteItemResult>,
}

/// Delete many keys; absent keys report `deleted: false`.
#[utoipa::path(
    post, path = "/v1/ns/{ns}/batch/delete", tag = "kv",
    params(("ns" = String, Path, description = "Namespace")),
    request_body = KeysBody,
    responses((status = 200, description = "Per-key results in request order", body = BatchDeleteResult))
)]
pub async fn batch_delete(
    State(st): State<AppState>,
    Path(ns): Path<String>,
    prov: Provenance,
    JsonBody(body): JsonBody<KeysBody>,
) -> ApiResult<Response> {
    validate_name("namespace", &ns)?;
    check_keys(&body.keys)?;
    let store = st.store.pinned();
    let mut results = Vec::with_capacity(body.keys.len());
    for chunk in body.keys.chunks(BATCH_CHUNK) {
        let calls = chunk.iter().map(|k| {
            let (store, ns, prov) = (&store, &ns, &prov);
            async move {
                let out = store.kv_delete(ns, k, Expect::Any, prov).await?;
                Ok::<_, ApiError>(serde_json::json!({
                    "key": k, "deleted": matches!(out, DeleteOutcome::Deleted { .. })
                }))
            }
        });
        results.extend(futures::future::try_join_all(calls).await?);
    }
    Ok(json_response(StatusCode::OK, &Items { items: &results }))
}

/// One compare of a transaction: `key` plus exactly one of `version`, `exists`, `value`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TxnCompareBody {
    key: String,
    /// The key's version must equal this (0 = absent).
    #[serde(default)]
    version: Option<u64>,
    /// The key must (true) or must not (false) exist.
    #[serde(default)]
    exists: Option<bool>,
    /// The key must exist with exactly this JSON value.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Value>)]
    value: Option<Value>,
}

#[derive(Deserialize, Clone, Copy, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TxnOpKind {
    Put,
    Delete,
    Get,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TxnOpBody {
    op: TxnOpKind,
    key: String,
    /// Required for `put`.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Value>)]
    value: Option<Value>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    ttl_ms: Option<u64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TxnBody {
    #[serde(default)]
    compare: Vec<TxnCompareBody>,
    #[serde(default)]
    success: Vec<TxnOpBody>,
    #[serde(default)]
    failure: Vec<TxnOpBody>,
}

#[derive(Serialize, ToSchema)]
pub struct TxnResultDoc {
    /// `put`, `delete` or `get`.
    op: String,
    key: String,
    /// put: the new version.
    version: Option<u64>,
    /// put: the revision of the change.
    mod_revision: Option<u64>,
    /// put: whether the key was created.
    created: Option<bool>,
    /// delete: whether the key existed.
    deleted: Option<bool>,
    /// get: the entry or null.
    entry: Option<EntryDoc>,
}

#[derive(Serialize, ToSchema)]
pub struct TxnResponse {
    /// Whether every compare held (and `success` ran) or not (`failure` ran).
    succeeded: bool,
    /// The namespace revision after the transaction.
    revision: u64,
    results: Vec<TxnResultDoc>,
}

/// Compare-then-apply, all-or-nothing (etcd-style).
#[utoipa::path(
    post, path = "/v1/ns/{ns}/txn", tag = "kv",
    params(("ns" = String, Path, description = "Namespace")),
    request_body = TxnBody,
    responses(
        (status = 200, description = "Which branch ran and its results", body = TxnResponse),
        (status = 400, description = "Invalid transaction; nothing was written", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn txn(
    State(st): State<AppState>,
    Path(ns): Path<String>,
    prov: Provenance,
    JsonBody(body): JsonBody<TxnBody>,
) -> ApiResult<Response> {
    validate_name("namespace", &ns)?;
    if body.compare.len() > MAX_TXN_OPS {
        return Err(ApiError::bad_request(format!("at most {MAX_TXN_OPS} compares")));
    }
    if body.success.len() + body.failure.len() > MAX_TXN_OPS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_TXN_OPS} operations in success and failure together"
        )));
    }
    let mut plan = TxnPlan::default();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut slot = |k: &str, plan: &mut TxnPlan| -> ApiResult<usize> {
        validate_key(k)?;
        Ok(*index.entry(k.to_string()).or_insert_with(|| {
            plan.keys.push(k.to_string());
            plan.keys.len() - 1
        }))
    };
    for (i, c) in body.compare.iter().enumerate() {
        let k = slot(&c.key, &mut plan)?;
        let given = c.version.is_some() as u8 + c.exists.is_some() as u8 + c.value.is_some() as u8;
        if given != 1 {
            return Err(ApiError::new(
                ErrorCode::InvalidBody,
                format!("compare[{i}] needs exactly one of version, exists, value"),
            ));
        }
        plan.compares.push(if let Some(v) = c.version {
            TxnCompare::Version(k, v)
        } else if let Some(b) = c.exists {
            TxnCompare::Exists(k, b)
        } else {
            TxnCompare::Value(k, canonical(c.value.as_ref().unwrap_or(&Value::Null)))
        });
    }
    let mut ops_of = |list: &[TxnOpBody], branch: &str, plan: &mut TxnPlan| -> ApiResult<Vec<TxnOp>> {
        let mut out = Vec::with_capacity(list.len());
        for (i, o) in list.iter().enumerate() {
            let k = slot(&o.key, plan)
                .map_err(|e| ApiError::new(e.code, format!("{branch}[{i}]: {}", e.detail)))?;
            out.push(match o.op {
                TxnOpKind::Put => {
                    let v = o.value.as_ref().ok_or_else(|| {
                        ApiError::new(
                            ErrorCode::InvalidBody,
                            format!("{branch}[{i}]: put needs `value`"),
                        )
                    })?;
                    let ttl = match check_ttl(o.ttl_ms)? {
                        Ttl::Ms(t) => Some(t),
                        _ => None,
                    };
                    TxnOp::Put {
                        key: k,
                        value: canonical(v),
                        metadata: metadata_text(&o.metadata),
                        ttl_ms: ttl,
                    }
                }
                TxnOpKind::Delete | TxnOpKind::Get
                    if o.value.is_some() || o.ttl_ms.is_some() || o.metadata.is_some() =>
                {
                    return Err(ApiError::new(
                        ErrorCode::InvalidBody,
                        format!("{branch}[{i}]: only put takes value, metadata or ttl_ms"),
                    ))
                }
                TxnOpKind::Delete => TxnOp::Delete { key: k },
                TxnOpKind::Get => TxnOp::Get { key: k },
            });
        }
        Ok(out)
    };
    plan.success = ops_of(&body.success, "success", &mut plan)?;
    plan.failure = ops_of(&body.failure, "failure", &mut plan)?;
    let out = st.store.kv_txn(&ns, &plan, &prov).await?;
    let results: Vec<Value> = out
        .results
        .iter()
        .map(|r| match r {
            TxnResult::Put {
                key,
                version,
                mod_revision,
                created,
            } => serde_json::json!({
                "op": "put", "key": key, "version": version, "mod_revision": mod_revision, "created": created
            }),
            TxnResult::Delete { key, deleted } => {
                serde_json::json!({ "op": "delete", "key": key, "deleted": deleted })
            }
            TxnResult::Get { key, entry } => serde_json::json!({ "op": "get", "key": key, "entry": entry }),
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "succeeded": out.succeeded, "revision": out.revision, "results": results }),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IncrBody {
    /// Amount to add (default 1; may be negative), |by| ≤ 2^53-1.
    #[serde(default)]
    by: Option<i64>,
    /// Expiry set when this increment creates the counter (fixed window).
    #[serde(default)]
    ttl_ms: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct IncrResponse {
    value: i64,
    version: u64,
    mod_revision: u64,
}

/// Atomically add to an integer counter stored at key `{name}` of the namespace.
#[utoipa::path(
    post, path = "/v1/ns/{ns}/counters/{name}/incr", tag = "kv",
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
    Path((ns, name)): Path<(String, String)>,
    prov: Provenance,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    validate_name("namespace", &ns)?;
    validate_key(&name)?;
    let body: IncrBody = if body.iter().all(u8::is_ascii_whitespace) {
        IncrBody {
            by: None,
            ttl_ms: None,
        }
    } else {
        super::parse_json(&body)?
    };
    let by = body.by.unwrap_or(1);
    if !(-MAX_SAFE_INT..=MAX_SAFE_INT).contains(&by) {
        return Err(ApiError::bad_request("by must be within ±9007199254740991"));
    }
    let ttl = check_ttl(body.ttl_ms)?;
    let (value, entry) = st.store.kv_incr(&ns, &name, by, ttl, &prov).await?;
    let mut res = json_response(
        StatusCode::OK,
        &serde_json::json!({ "value": value, "version": entry.version, "mod_revision": entry.mod_revision }),
    );
    res.headers_mut().insert(header::ETAG, etag(entry.version));
    Ok(res)
}

#[derive(Serialize, ToSchema)]
pub struct NamespaceList {
    items: Vec<NamespaceInfo>,
}

/// Every namespace with its key count, revision and bytes used.
#[utoipa::path(
    get, path = "/v1/namespaces", tag = "kv",
    responses((status = 200, description = "Namespaces, sorted by name", body = NamespaceList))
)]
pub async fn list_namespaces(State(st): State<AppState>) -> ApiResult<Response> {
    let items = st.store.namespaces().await?;
    Ok(json_response(StatusCode::OK, &Items { items: &items }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_parse() {
        assert_eq!(parse_etag("\"3\""), Some(3));
        assert_eq!(parse_etag("W/\"12\""), Some(12));
        assert_eq!(parse_etag("7"), Some(7));
        assert_eq!(parse_etag("\"x\""), None);
        assert_eq!(parse_etag("\"99999999999999999999999\""), None);
    }

    #[test]
    fn canonical_sorts_keys() {
        let v: Value = serde_json::from_str(r#"{"b":1,"a":[true,null]}"#).unwrap();
        assert_eq!(canonical(&v), r#"{"a":[true,null],"b":1}"#);
    }
}
