//! The `Idempotency-Key` layer on mutating POSTs (rules in `domain::idempotency`, storage and
//! outcome in `ops::idempotency`): reserve, run the route, keep its answer; or replay a kept
//! answer with `Idempotent-Replayed: true`.

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use serde_json::Value;

use super::problem::X_REQUEST_ID;
use crate::domain::auth::Caller;
use crate::domain::idempotency::{
    fingerprint, home_of, record_id, validate_key, Answer, HEADER, KEPT_HEADERS, REPLAYED,
};
use crate::error::{ApiError, ErrorCode, PROBLEM_JSON};
use crate::ops::idempotency::Begin;
use crate::state::AppState;

/// Until tokens exist every caller shares one scope.
const ANONYMOUS: &str = "anonymous";
/// Request headers that change what an operation does: part of the fingerprint.
const FINGERPRINT_HEADERS: &[&str] = &[
    "content-type",
    "if-match",
    "if-none-match",
    "x-agent-id",
    "x-change-reason",
    "x-fencing-token",
    "x-lock-token",
];

pub async fn layer(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let Some(key) = req.headers().get(HEADER).cloned() else {
        return next.run(req).await;
    };
    // As the router sees it: `/v1/queues/%6Aobs/tasks` is the queue `jobs`.
    let path = percent_decode_str(req.uri().path())
        .decode_utf8_lossy()
        .into_owned();
    let Some(home) = home_of(&path) else {
        return next.run(req).await;
    };
    let Some(key) = key
        .to_str()
        .ok()
        .filter(|k| validate_key(k).is_ok())
        .map(str::to_string)
    else {
        return ApiError::bad_request("Idempotency-Key must be 1 to 255 visible ASCII characters")
            .into_response();
    };
    let mut context = req.uri().query().unwrap_or("").to_string();
    for h in FINGERPRINT_HEADERS {
        for v in req.headers().get_all(*h) {
            context.push_str(&format!("\n{h}: {}", String::from_utf8_lossy(v.as_bytes())));
        }
    }
    let rid = req.headers().get(&X_REQUEST_ID).cloned();
    let (parts, body) = req.into_parts();
    let bytes = match Bytes::from_request(Request::from_parts(parts.clone(), body), &()).await {
        Ok(b) => b,
        Err(rej) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return ApiError::new(
                ErrorCode::PayloadTooLarge,
                "the request body is larger than the configured limit",
            )
            .into_response()
        }
        Err(rej) => return ApiError::bad_request(format!("reading the body failed: {rej}")).into_response(),
    };
    // Keys are the token's own: another token's request with the same key and body runs
    // (and is authorised) by itself instead of replaying someone else's answer.
    let owner = parts.extensions.get::<Caller>().map_or(ANONYMOUS, |c| c.name());
    let id = record_id(owner, parts.method.as_str(), &path, &key);
    let fp = fingerprint(&context, &bytes);
    // The reservation, the operation and the keeping of its answer run to the end on their
    // own task: a client that goes away, or the request timeout, must not leave a reservation
    // without its operation, or an applied write without its answer (a repeat then waits with
    // 409 and replays it once it is kept).
    let req = Request::from_parts(parts, Body::from(bytes));
    let ops = st.ops.clone();
    let run = tokio::spawn(async move {
        let ticket = match ops.idem_begin(home, id, fp).await {
            Ok(Begin::Run(t)) => t,
            Ok(Begin::Replay(a)) => return replay(&a, &path, rid),
            Err(mut e) => {
                // The operation never started, whatever the reservation did.
                if e.extra.contains_key("outcome") {
                    e.extra.insert("outcome".into(), "not_applied".into());
                }
                return e.into_response();
            }
        };
        let res = next.run(req).await;
        let (parts, body) = res.into_parts();
        let body = to_bytes(body, usize::MAX).await.unwrap_or_default();
        let status = parts.status;
        let refused_up_front = status.is_server_error()
            && parts
                .extensions
                .get::<ApiError>()
                .is_some_and(|e| e.extra.get("outcome").and_then(|o| o.as_str()) == Some("not_applied"));
        // Nothing ran: refused before Redis (bad input, a Redis refusal) — a corrected or later
        // repeat runs again. Everything else, 5xx with an unknown outcome included, is kept.
        let nothing_ran = refused_up_front
            || matches!(
                status,
                StatusCode::BAD_REQUEST
                    | StatusCode::PAYLOAD_TOO_LARGE
                    | StatusCode::UNSUPPORTED_MEDIA_TYPE
                    | StatusCode::UNPROCESSABLE_ENTITY
                    | StatusCode::METHOD_NOT_ALLOWED
            );
        let kept = if nothing_ran {
            ops.idem_abandon(ticket).await
        } else {
            let headers = KEPT_HEADERS
                .iter()
                .filter_map(|h| {
                    let v = parts.headers.get(*h)?.to_str().ok()?;
                    Some((h.to_string(), v.to_string()))
                })
                .collect();
            ops.idem_finish(ticket, Answer::new(status.as_u16(), headers, &body))
                .await
        };
        if let Err(e) = kept {
            // The client still gets the answer; repeats see 409 until the reservation expires.
            tracing::warn!(error = %e, "keeping an idempotent answer");
        }
        Response::from_parts(parts, Body::from(body))
    });
    match run.await {
        Ok(res) => res,
        Err(e) => ApiError::internal(format!("idempotent request task: {e}")).into_response(),
    }
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
