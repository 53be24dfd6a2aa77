//! The `Idempotency-Key` layer on mutating POSTs (rules in `domain::idempotency`, storage and
//! outcome in `ops::idempotency`): reserve, run the route, keep its answer; or replay a kept
//! answer with `Idempotent-Replayed: true`.

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::problem::X_REQUEST_ID;
use crate::domain::idempotency::{
    fingerprint, home_of, record_id, validate_key, Answer, HEADER, KEPT_HEADERS, REPLAYED,
};
use crate::error::{ApiError, ErrorCode, PROBLEM_JSON};
use crate::ops::idempotency::Begin;
use crate::state::AppState;

/// Until tokens exist every caller shares one scope.
const ANONYMOUS: &str = "anonymous";
/// Answers larger than this are not kept (the key is released instead).
const MAX_KEPT_BYTES: usize = 1 << 20;

pub async fn layer(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let Some(key) = req.headers().get(HEADER).cloned() else {
        return next.run(req).await;
    };
    let path = req.uri().path().to_string();
    let Some(home) = home_of(&path) else {
        return next.run(req).await;
    };
    let key = match key
        .to_str()
        .map_err(|_| ())
        .and_then(|k| validate_key(k).map_err(|_| ()))
    {
        Ok(()) => key.to_str().unwrap_or_default().to_string(),
        Err(()) => {
            return ApiError::bad_request("Idempotency-Key must be 1 to 255 visible ASCII characters")
                .into_response()
        }
    };
    let query = req.uri().query().unwrap_or("").to_string();
    let rid = req.headers().get(&X_REQUEST_ID).cloned();
    let (parts, body) = req.into_parts();
    let bytes = match to_bytes(body, st.cfg.body_limit_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                ErrorCode::PayloadTooLarge,
                "the body is larger than body_limit_bytes",
            )
            .into_response()
        }
    };
    let id = record_id(ANONYMOUS, parts.method.as_str(), &path, &key);
    let fp = fingerprint(&query, &bytes);
    let ticket = match st.ops.idem_begin(home, id, fp).await {
        Ok(Begin::Run(t)) => t,
        Ok(Begin::Replay(a)) => return replay(&a, &path, rid),
        Err(e) => return e.into_response(),
    };
    let res = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    if res.status().is_server_error() {
        if let Err(e) = st.ops.idem_abandon(ticket).await {
            tracing::warn!(error = %e, "releasing an idempotency key");
        }
        return res;
    }
    let (parts, body) = res.into_parts();
    let body = match to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            // Cannot happen for this service's buffered JSON answers.
            let _ = st.ops.idem_abandon(ticket).await;
            return ApiError::internal(format!("reading an answer to keep: {e}")).into_response();
        }
    };
    if body.len() > MAX_KEPT_BYTES {
        let _ = st.ops.idem_abandon(ticket).await;
        return Response::from_parts(parts, Body::from(body));
    }
    let headers = KEPT_HEADERS
        .iter()
        .filter_map(|h| {
            let v = parts.headers.get(*h)?.to_str().ok()?;
            Some((h.to_string(), v.to_string()))
        })
        .collect();
    let answer = Answer::new(parts.status.as_u16(), headers, &body);
    if let Err(e) = st.ops.idem_finish(ticket, answer).await {
        // The operation happened; its answer is not lost to this client, only to repeats
        // (which see 409 in flight until the reservation expires).
        tracing::warn!(error = %e, "keeping an idempotent answer");
    }
    Response::from_parts(parts, Body::from(body))
}

/// The kept answer again. Problem documents get this request's path and id.
fn replay(a: &Answer, path: &str, rid: Option<HeaderValue>) -> Response {
    let mut body = a.body_bytes();
    let is_problem = a
        .headers
        .iter()
        .any(|(k, v)| k == "content-type" && v.starts_with(PROBLEM_JSON));
    if is_problem {
        if let Ok(Value::Object(mut doc)) = serde_json::from_slice::<Value>(&body) {
            doc.insert("instance".into(), path.into());
            if let Some(r) = rid.as_ref().and_then(|r| r.to_str().ok()) {
                doc.insert("request_id".into(), r.into());
            }
            body = serde_json::to_vec(&Value::Object(doc)).unwrap_or(body);
        }
    }
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = StatusCode::from_u16(a.status).unwrap_or(StatusCode::OK);
    for (k, v) in &a.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::try_from(k.as_str()),
            HeaderValue::try_from(v.as_str()),
        ) {
            res.headers_mut().insert(k, v);
        }
    }
    res.headers_mut().insert(
        HeaderName::from_static(REPLAYED),
        HeaderValue::from_static("true"),
    );
    res
}
