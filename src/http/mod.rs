//! HTTP surface: the router, its middleware, and the extractors every handler shares.
//!
//! Handlers only extract, call the store, and map the result. Every failure, including axum's
//! own rejections (bad JSON, bad query, 404, 405, 413), leaves as a problem document.

pub mod agents;
pub mod channels;
pub mod kv;
pub mod locks;
pub mod ops;
pub mod partitions;
pub mod queues;
pub mod watch;

use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::de::DeserializeOwned;
use tower::ServiceBuilder;
use tower_http::compression::CompressionLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::app::AppState;
use crate::error::{ApiError, ErrorCode, PROBLEM_JSON};
use crate::store::kv::Provenance;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest key in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Longest TTL: ten years.
pub const MAX_TTL_MS: u64 = 10 * 365 * 24 * 3600 * 1000;
/// Largest safe integer for counters (2^53 - 1).
pub const MAX_SAFE_INT: i64 = 9_007_199_254_740_991;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "swarmstate",
        description = "Coordination state for multi-agent systems: versioned JSON key/value with compare-and-swap, history and transactions, stored in Redis. Errors are RFC 9457 problem documents with a stable `code`.",
        license(name = "Apache-2.0")
    ),
    paths(
        kv::get_entry,
        kv::put_entry,
        kv::patch_entry,
        kv::delete_entry,
        kv::get_history,
        kv::rollback_entry
    ),
    components(schemas(crate::error::Problem, crate::error::ErrorCode)),
    tags(
        (name = "kv", description = "Versioned key/value"),
        (name = "ops", description = "Health, status and metrics"),
        (name = "watch", description = "Change stream over WebSocket"),
        (name = "locks", description = "Locks with fencing tokens"),
        (name = "partitions", description = "Quota-bounded namespaces allocated from a pool"),
        (name = "agents", description = "Agent presence and lifecycle; a lost agent's locks and leased tasks are freed at once"),
        (name = "queues", description = "Task queues: at-least-once, priorities, delays, leases, retries, dead letters")
    )
)]
pub struct ApiDoc;

/// The documented API routes and the OpenAPI document describing them.
fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(kv::list_entries))
        .routes(routes!(kv::batch_get))
        .routes(routes!(kv::batch_put))
        .routes(routes!(kv::batch_delete))
        .routes(routes!(kv::txn))
        .routes(routes!(kv::incr_counter))
        .routes(routes!(kv::list_namespaces))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::status))
        .routes(routes!(ops::metrics))
        .routes(routes!(watch::watch_socket))
        .routes(routes!(watch::events_sse))
        .routes(routes!(channels::publish))
        .routes(routes!(agents::register, agents::get_agent))
        .routes(routes!(agents::heartbeat))
        .routes(routes!(agents::set_state))
        .routes(routes!(agents::list_agents))
        .routes(routes!(partitions::create, partitions::list))
        .routes(routes!(
            partitions::get_partition,
            partitions::patch,
            partitions::delete
        ))
        .routes(routes!(partitions::pool))
        .routes(routes!(locks::acquire, locks::get_lock, locks::release))
        .routes(routes!(locks::renew))
        .routes(routes!(queues::enqueue))
        .routes(routes!(queues::lease))
        .routes(routes!(queues::ack))
        .routes(routes!(queues::nack))
        .routes(routes!(queues::extend))
        .routes(routes!(queues::get_task))
        .routes(routes!(queues::list_queues))
        .routes(routes!(queues::queue_status))
        .routes(routes!(queues::list_dead, queues::purge_dead))
        .routes(routes!(queues::retry_dead))
        .routes(routes!(queues::pause))
        .routes(routes!(queues::resume))
        .routes(routes!(queues::events_sse))
        .split_for_parts();
    // Keys may contain `/`; one wildcard route serves the entry, its history and rollback
    // (documented above as `/v1/ns/{ns}/kv/{key}...` with the key percent-encoded).
    let router = router.route(
        "/v1/ns/{ns}/kv/{*key}",
        get(kv::get_dispatch)
            .put(kv::put_entry)
            .patch(kv::patch_entry)
            .delete(kv::delete_entry)
            .post(kv::post_dispatch),
    );
    (router, openapi)
}

/// The OpenAPI document (served at /openapi.json, printed by `swarmstate openapi`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api().1;
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// The whole application: API routes, docs, and middleware.
pub fn router(state: AppState) -> Router {
    let (api_router, _) = api();
    let body_limit = state.cfg.body_limit_bytes;
    let request_timeout = std::time::Duration::from_millis(state.cfg.request_timeout_ms);
    api_router
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi()))
        .fallback(fallback)
        .route_layer(middleware::from_fn(capture_route))
        .with_state(state)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(X_REQUEST_ID.clone(), MakeRequestUuid))
                .layer(PropagateRequestIdLayer::new(X_REQUEST_ID.clone()))
                .layer(TraceLayer::new_for_http())
                // Outside `observe`: the problem documents it writes are compressed like every
                // other body (inside it, they kept the `content-encoding: gzip` of the body they
                // replaced and no client could decode them).
                .layer(CompressionLayer::new())
                .layer(middleware::from_fn(observe))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    request_timeout,
                ))
                .layer(DefaultBodyLimit::max(body_limit)),
        )
}

async fn fallback(method: Method) -> ApiError {
    ApiError::not_found(format!("no route for {method} here"))
}

/// The matched route template, carried on the response for the metrics layer.
#[derive(Clone)]
struct RouteLabel(MatchedPath);

async fn capture_route(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let mut res = next.run(req).await;
    if let Some(r) = route {
        res.extensions_mut().insert(RouteLabel(r));
    }
    res
}

/// Records `http_requests_total` / `http_request_duration_seconds` (labelled by route
/// template) and finishes problem documents: fills in the request path and id, and turns any
/// other error response, such as axum's 405, into a problem document. One layer for both keeps
/// the per-request middleware cost down.
async fn observe(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let rid = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut res = next.run(req).await;
    let status = res.status();
    if status.is_client_error() || status.is_server_error() {
        res = finish_problem(res, &path, rid.as_deref());
    }
    let route = res
        .extensions()
        .get::<RouteLabel>()
        .map(|r| r.0.as_str())
        .unwrap_or("unmatched");
    let (count, duration) = crate::metrics::http(method.as_str(), route, res.status().as_u16());
    count.increment(1);
    duration.record(start.elapsed().as_secs_f64());
    res
}

fn finish_problem(mut res: Response, path: &str, rid: Option<&str>) -> Response {
    let err = match res.extensions_mut().remove::<ApiError>() {
        Some(e) => e,
        None => {
            if is_problem(res.headers()) {
                return res;
            }
            let status = res.status();
            let code = match status {
                StatusCode::NOT_FOUND => ErrorCode::NotFound,
                StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
                StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
                StatusCode::REQUEST_TIMEOUT => ErrorCode::RequestTimeout,
                StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
                StatusCode::UNPROCESSABLE_ENTITY => ErrorCode::InvalidBody,
                s if s.is_client_error() => ErrorCode::InvalidArgument,
                _ => ErrorCode::Internal,
            };
            let mut e = ApiError::new(code, status.canonical_reason().unwrap_or("error").to_string());
            if code == ErrorCode::Internal {
                e.detail = "internal error; the log has the details".into();
            }
            e
        }
    };
    let (mut parts, _) = res.into_parts();
    parts.status = err.code.status();
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    parts.headers.remove(header::CONTENT_LENGTH);
    // The new body is plain JSON whatever encoding the one it replaces had.
    parts.headers.remove(header::CONTENT_ENCODING);
    Response::from_parts(parts, Body::from(err.to_body(path, rid)))
}

fn is_problem(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()))
        .unwrap_or(false)
}

/// A JSON request body. Parsed whatever the Content-Type says (curl's `-d` sends a form type),
/// with syntax errors answered 400 `malformed_json` and shape errors 422 `invalid_body`.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    "the request body is larger than the configured limit",
                )
            } else {
                ApiError::bad_request(format!("reading the body failed: {rej}"))
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parse JSON with the error classification of [`JsonBody`].
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::new(
            ErrorCode::MalformedJson,
            "the request body is empty; JSON expected",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::new(ErrorCode::InvalidBody, format!("invalid body: {e}")),
            _ => ApiError::new(ErrorCode::MalformedJson, format!("malformed JSON: {e}")),
        }
    })
}

/// Query string with rejections as 400 `invalid_argument`.
pub struct Q<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(t)| Q(t))
            .map_err(|e| ApiError::bad_request(format!("query: {}", e.body_text())))
    }
}

/// `x-agent-id` / `x-change-reason`, validated.
impl<S: Send + Sync> FromRequestParts<S> for Provenance {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let fence = match header_text(&parts.headers, "x-fencing-token", 128)? {
            None => None,
            Some(v) => {
                let bad = || {
                    ApiError::bad_request(
                        "x-fencing-token must be <lock>:<n> (a lock of this namespace and the fencing_token it granted)",
                    )
                };
                let (lock, n) = v.rsplit_once(':').ok_or_else(bad)?;
                validate_name("lock", lock).map_err(|_| bad())?;
                let n = n.parse::<u64>().ok().filter(|n| *n >= 1).ok_or_else(bad)?;
                Some((lock.to_string(), n))
            }
        };
        Ok(Provenance {
            agent: header_text(&parts.headers, "x-agent-id", 128)?,
            reason: header_text(&parts.headers, "x-change-reason", 1024)?,
            fence,
        })
    }
}

fn header_text(h: &HeaderMap, name: &str, max: usize) -> Result<Option<String>, ApiError> {
    let Some(v) = h.get(name) else { return Ok(None) };
    let s = std::str::from_utf8(v.as_bytes())
        .map_err(|_| ApiError::bad_request(format!("{name} must be UTF-8")))?
        .trim();
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() > max || s.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{name} must be at most {max} bytes without control characters"
        )));
    }
    Ok(Some(s.to_string()))
}

/// Free-text identifiers in bodies and headers (workers, owners, tokens, keys of idempotency):
/// 1 to `max` bytes without control characters.
pub fn validate_text(name: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.is_empty() || v.len() > max || v.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{name} must be 1 to {max} bytes without control characters"
        )));
    }
    Ok(())
}

/// Namespace (and queue, lock, channel, partition) names: `[a-z0-9][a-z0-9._-]{0,62}`.
pub fn validate_name(kind: &str, name: &str) -> Result<(), ApiError> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_name(format!(
            "{kind} name `{}` must match [a-z0-9][a-z0-9._-]{{0,62}}",
            name.chars().take(80).collect::<String>()
        )))
    }
}

/// Keys: 1..=512 bytes of UTF-8 without control characters.
pub fn validate_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(ApiError::invalid_name(format!(
            "keys must be 1 to {MAX_KEY_BYTES} bytes (got {})",
            key.len()
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(ApiError::invalid_name("keys may not contain control characters"));
    }
    Ok(())
}

/// What a `/v1/ns/{ns}/kv/{*key}` path addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvSub {
    Entry,
    History,
    Rollback,
}

/// Namespace and key of a key route, percent-decoded and validated. A raw (unencoded) path
/// ending in `/history` (GET) or `/rollback` (POST) addresses that sub-resource; a key whose
/// last segment really is `history` is reached by encoding its slash as `%2F`.
pub struct KvPath {
    pub ns: String,
    pub key: String,
    pub sub: KvSub,
}

impl<S: Send + Sync> FromRequestParts<S> for KvPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // The raw (still percent-encoded) path: an encoded `%2F` must stay part of the key.
        let path = parts.uri.path();
        let (ns_raw, key_raw) = path
            .strip_prefix("/v1/ns/")
            .and_then(|r| r.split_once('/'))
            .and_then(|(ns, r)| Some((ns, r.strip_prefix("kv/")?)))
            .ok_or_else(|| ApiError::not_found("no route here"))?;
        let (key_raw, sub) = match parts.method {
            Method::GET | Method::HEAD => match key_raw.strip_suffix("/history") {
                Some(k) if !k.is_empty() => (k, KvSub::History),
                _ => (key_raw, KvSub::Entry),
            },
            Method::POST => match key_raw.strip_suffix("/rollback") {
                Some(k) if !k.is_empty() => (k, KvSub::Rollback),
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::MethodNotAllowed,
                        "POST is only for .../kv/{key}/rollback; write entries with PUT",
                    ))
                }
            },
            _ => (key_raw, KvSub::Entry),
        };
        let ns = decode(ns_raw, "namespace")?;
        validate_name("namespace", &ns)?;
        let key = decode(key_raw, "key")?;
        validate_key(&key)?;
        Ok(KvPath { ns, key, sub })
    }
}

fn decode(raw: &str, what: &str) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| ApiError::invalid_name(format!("the {what} is not valid UTF-8 once percent-decoded")))
}

/// A JSON response with this status (serialization failures become a logged 500).
pub fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(b) => (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            b,
        )
            .into_response(),
        Err(e) => ApiError::internal(format!("serializing a response: {e}")).into_response(),
    }
}
