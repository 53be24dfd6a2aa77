//! Server-Sent Events for curl and browsers: a namespace's changes (the watch session's
//! `watch`, replayed and resumed with `Last-Event-ID`) and a queue's task events.

use std::sync::atomic::Ordering;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use tokio::task::JoinHandle;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Who, Q};
use crate::domain::names::MAX_KEY_BYTES;
use crate::error::{ApiError, ApiResult};
use crate::ops::watch::{outbox, run_watch, watch_scope, WatchSpec};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(events_sse))
        .routes(routes!(queue_events_sse))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Replay every retained change after this revision first (a `Last-Event-ID` header wins).
    from_revision: Option<u64>,
    /// Only keys starting with this string.
    prefix: Option<String>,
    /// Include values in put events (default true).
    values: Option<bool>,
    /// The `epoch` of an earlier `progress` event: resuming into another history of the
    /// namespace (Redis lost its data since) answers `compacted` with reason `reset`.
    #[param(max_length = 64)]
    epoch: Option<String>,
}

/// Aborts the watch task when the SSE stream is dropped (client gone).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The namespace's changes as Server-Sent Events, for curl and browsers.
///
/// Each change is an SSE event named after its kind (`put`, `delete`, `expire`, `evict`) whose
/// `id` is its revision and whose data is the event JSON; browsers resume with `Last-Event-ID`.
/// `progress` and `compacted` arrive as events of those names. A client too slow to keep up has
/// its stream ended and resumes the same way.
#[utoipa::path(
    get, path = "/v1/ns/{ns}/events", tag = "watch", operation_id = "ns_events_stream",
    params(("ns" = String, Path, description = "Namespace"), EventsQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this revision")),
    responses(
        (status = 200, description = "text/event-stream of changes", content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad name or argument", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn events_sse(
    State(st): State<AppState>,
    Who(who): Who,
    Path(ns): Path<String>,
    Q(q): Q<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    watch_scope(&who, &ns)?;
    let last_event_id = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be a revision number"))?,
        ),
        None => None,
    };
    let prefix = q.prefix.unwrap_or_default();
    if prefix.len() > MAX_KEY_BYTES {
        return Err(ApiError::bad_request("prefix too long"));
    }
    let spec = WatchSpec::new(
        "sse",
        ns,
        prefix,
        last_event_id.or(q.from_revision),
        q.values.unwrap_or(true),
    )
    .in_epoch(q.epoch);
    // SSE: the stream below takes frames one by one; the byte budget is released as it does.
    let (out, inbox) = outbox();
    let sent = inbox.counter();
    let task = AbortOnDrop(tokio::spawn(run_watch(st.ops.clone(), spec, out)));
    let stream = futures::stream::unfold((inbox, task, sent), |(mut inbox, task, sent)| async move {
        let Some(text) = inbox.frames.recv().await else {
            // The watch ended. If it ended because this consumer fell behind its budget, say so
            // in a last event (the frames queued before it have been written by now).
            if inbox.slow.try_recv().is_ok() {
                metrics::counter!("watch_clients_dropped_total").increment(1);
                inbox.slow.close();
                let e = SseEvent::default().event("error").data(
                    serde_json::json!({"code": "slow_consumer", "message": "this stream fell too far behind; reconnect with Last-Event-ID"})
                        .to_string(),
                );
                return Some((Ok(e), (inbox, task, sent)));
            }
            return None;
        };
        sent.fetch_sub(text.len(), Ordering::Relaxed);
        let msg: serde_json::Value = serde_json::from_str(&text).ok()?;
        let kind = msg["type"].as_str().unwrap_or("message").to_string();
        let event = if kind == "event" {
            let e = &msg["event"];
            SseEvent::default()
                .id(e["revision"].to_string())
                .event(e["kind"].as_str().unwrap_or("change"))
                .data(e.to_string())
        } else {
            let mut body = msg.clone();
            if let Some(o) = body.as_object_mut() {
                o.remove("type");
                o.remove("id");
            }
            SseEvent::default().event(kind).data(body.to_string())
        };
        Some((Ok::<_, std::convert::Infallible>(event), (inbox, task, sent)))
    });
    // Ends when the service stops (clients reconnect with Last-Event-ID).
    // Also ends when the token is removed or changed in the tokens file (the reconnect is
    // checked again).
    let stream = stream
        .take_until(st.ops.stopping())
        .take_until(st.ops.auth().revoked(who));
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

/// Task state changes as Server-Sent Events (live; fire-and-forget like pub/sub).
#[utoipa::path(
    get, path = "/v1/queues/{queue}/events", tag = "queues", operation_id = "queue_events_stream",
    params(("queue" = String, Path, description = "Queue name")),
    responses((status = 200, description = "text/event-stream: one `task` event per state change", content_type = "text/event-stream"))
)]
pub async fn queue_events_sse(
    State(st): State<AppState>,
    Who(who): Who,
    Path(q): Path<String>,
) -> ApiResult<Response> {
    let rx = st.ops.queue_events(&who, &q).await?;
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
    // Also ends when the token is removed or changed in the tokens file (the reconnect is
    // checked again).
    let stream = stream
        .take_until(st.ops.stopping())
        .take_until(st.ops.auth().revoked(who));
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}
