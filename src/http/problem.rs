//! Problem documents (RFC 9457) and metrics for every answer: the `observe` middleware turns
//! every error response — ours, or axum's own rejections (bad JSON, 404, 405, 413, 408) — into
//! a problem document carrying the request path and id, and records the request metrics
//! labelled by route template.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ErrorCode, PROBLEM_JSON};

/// Set on every request (generated unless the client sent one) and echoed on every answer.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

impl IntoResponse for ApiError {
    /// The body is rendered without `instance`; [`observe`] re-renders it with the request
    /// path and id, finding the error in the extensions.
    fn into_response(self) -> Response {
        let mut res = (self.status(), self.to_body("", None)).into_response();
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(s) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        res.extensions_mut().insert(self);
        res
    }
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

/// Drop a client's `x-request-id` unless it is 1..=128 visible ASCII characters, so a fresh
/// one is made instead of echoing (and logging) whatever arrived.
pub fn sanitize_request_id<B>(mut req: axum::http::Request<B>) -> axum::http::Request<B> {
    let ok = req.headers().get(&X_REQUEST_ID).is_none_or(|v| {
        let b = v.as_bytes();
        !b.is_empty() && b.len() <= 128 && b.iter().all(u8::is_ascii_graphic)
    });
    if !ok {
        req.headers_mut().remove(&X_REQUEST_ID);
    }
    req
}

/// 404 for any route that does not exist.
pub async fn fallback(method: Method) -> ApiError {
    ApiError::not_found(format!("no route for {method} here"))
}

/// The matched route template, carried on the response for the metrics layer.
#[derive(Clone)]
struct RouteLabel(MatchedPath);

pub async fn capture_route(req: Request, next: Next) -> Response {
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
pub async fn observe(req: Request, next: Next) -> Response {
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
    crate::metrics::live::request(res.status().as_u16());
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
    parts.status = err.status();
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
