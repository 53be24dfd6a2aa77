//! `GET /v1/watch`: the WebSocket watch stream (DESIGN.md "Watch over WebSocket").
//!
//! One socket carries many watches, each with the client's id. Outgoing frames go through one
//! bounded queue per connection: a consumer that lets it fill up is closed with code 4008 and
//! resumes with `from_revision`, so a slow or dead client never grows the server's memory.
//! Bad frames are answered with an `error` message and the socket stays open.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use utoipa::IntoParams;

use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::watch::{self, Event, Replay};

/// Frames queued per connection before the consumer counts as too slow (closed with 4008).
pub const SEND_QUEUE: usize = 1024;
/// Bytes queued per connection before the consumer counts as too slow (values can be large,
/// so the frame count alone would not bound memory).
pub const SEND_QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// Largest client frame accepted.
const MAX_FRAME: usize = 64 * 1024;
/// Idle watches get a `progress` message this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Watches per connection.
const MAX_WATCHES: usize = 256;
/// Frames written per flush at most.
const WRITE_BATCH: usize = 256;

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum ClientOp {
    Watch {
        id: String,
        namespace: String,
        #[serde(default)]
        prefix: Option<String>,
        #[serde(default)]
        from_revision: Option<u64>,
        /// Include values in put events (default true).
        #[serde(default)]
        values: Option<bool>,
    },
    Subscribe {
        id: String,
        /// A channel name or glob pattern (`*`, `?`).
        channel: String,
    },
    Queue {
        id: String,
        queue: String,
    },
    Cancel {
        id: String,
    },
    Ping,
}

/// Open a watch socket.
#[utoipa::path(
    get, path = "/v1/watch", tag = "watch",
    responses((status = 101, description = "WebSocket: JSON text frames, see DESIGN.md \"Watch over WebSocket\""))
)]
pub async fn watch_socket(State(st): State<AppState>, ws: WebSocketUpgrade) -> Response {
    // Small eager read buffer (it is allocated per socket up front; client frames are small
    // and it grows for larger ones); frames are batched up to 64 KiB before a write. The
    // write buffer itself is not capped here: what can be queued is (SEND_QUEUE_BYTES), and a
    // cap below the largest frame (a value up to body_limit_bytes) would kill the socket.
    ws.max_frame_size(MAX_FRAME)
        .max_message_size(MAX_FRAME)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(64 * 1024)
        .on_upgrade(move |socket| run(st, socket))
}

async fn run(st: AppState, socket: WebSocket) {
    metrics::gauge!("ws_connections").increment(1.0);
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<String>(SEND_QUEUE);
    let (slow_tx, mut slow_rx) = mpsc::channel::<()>(1);
    let (ctrl_tx, mut ctrl_rx) = mpsc::channel::<Ctrl>(4);
    let queued = Arc::new(AtomicUsize::new(0));
    let writer_queued = queued.clone();
    // Dropped when the writer ends (socket closed by us, or a write failed).
    let (writer_alive, mut writer_gone) = tokio::sync::oneshot::channel::<()>();
    let mut writer = tokio::spawn(async move {
        let _alive = writer_alive;
        loop {
            tokio::select! {
                biased;
                ctrl = ctrl_rx.recv() => match ctrl {
                    Some(Ctrl::Ping) => {
                        let sent = sink.send(Message::Ping(Default::default())).await;
                        if sent.is_err() {
                            return;
                        }
                    }
                    Some(Ctrl::Idle) => {
                        let _ = sink.send(Message::Close(Some(CloseFrame {
                            code: 4001,
                            reason: "no pong or message for three ping intervals".into(),
                        }))).await;
                        return;
                    }
                    None => {}
                },
                out = rx.recv() => match out {
                    Some(text) => {
                        // Everything already queued goes out in one write (one syscall, one
                        // TCP segment where it fits) instead of one per frame.
                        let mut bytes = text.len();
                        if sink.feed(Message::Text(Utf8Bytes::from(text))).await.is_err() {
                            return;
                        }
                        for _ in 0..WRITE_BATCH {
                            let Ok(more) = rx.try_recv() else { break };
                            bytes += more.len();
                            if sink.feed(Message::Text(Utf8Bytes::from(more))).await.is_err() {
                                return;
                            }
                        }
                        if sink.flush().await.is_err() {
                            return;
                        }
                        writer_queued.fetch_sub(bytes, Ordering::Relaxed);
                    }
                    None => {
                        let _ = sink.send(Message::Close(Some(CloseFrame { code: 1001, reason: "going away".into() }))).await;
                        return;
                    }
                },
                _ = slow_rx.recv() => {
                    metrics::counter!("watch_clients_dropped_total").increment(1);
                    let _ = sink.send(Message::Close(Some(CloseFrame {
                        code: 4008,
                        reason: "consumer too slow; reconnect and resume with from_revision".into(),
                    }))).await;
                    return;
                }
            }
        }
    });
    let sender = Sender {
        tx,
        slow: slow_tx,
        queued,
    };
    let mut watches: HashMap<String, JoinHandle<()>> = HashMap::new();
    // Keepalive: a ping every interval; a client silent for three intervals is closed.
    let ping_every = Duration::from_millis(st.cfg.ws_ping_interval_ms);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut last_heard = tokio::time::Instant::now();
    let mut server_closing = false;
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = &mut writer_gone => {
                // The writer ended: it closed the socket (4008, 4001) or a write failed.
                server_closing = true;
                break;
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() >= ping_every * 3 {
                    let _ = ctrl_tx.try_send(Ctrl::Idle);
                    server_closing = true;
                    break;
                }
                let _ = ctrl_tx.try_send(Ctrl::Ping);
                continue;
            }
        };
        let Some(msg) = msg else { break };
        last_heard = tokio::time::Instant::now();
        let text = match msg {
            Ok(Message::Text(t)) => t,
            Ok(Message::Binary(_)) => {
                sender.error(None, "invalid_argument", "frames must be JSON text");
                continue;
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        if writer.is_finished() {
            // The writer ended: it closed the socket (4008) or the peer is gone.
            server_closing = true;
            break;
        }
        let op: ClientOp = match serde_json::from_str(text.as_str()) {
            Ok(op) => op,
            Err(e) => {
                sender.error(None, "invalid_argument", &format!("unknown or malformed op: {e}"));
                continue;
            }
        };
        watches.retain(|_, h| !h.is_finished());
        match op {
            ClientOp::Ping => {
                sender.frame(json!({"type": "pong"}).to_string());
            }
            ClientOp::Cancel { id } => match watches.remove(&id) {
                Some(h) => h.abort(),
                None => sender.error(Some(&id), "not_found", "no such watch"),
            },
            ClientOp::Queue { id, queue } => {
                if let Err((code, msg)) = check_id(&id, &watches) {
                    sender.error(Some(&id), code, msg);
                    continue;
                }
                if let Err(e) = super::validate_name("queue", &queue) {
                    sender.error(Some(&id), e.code.as_str(), &e.detail);
                    continue;
                }
                let task = tokio::spawn(run_queue_watch(st.clone(), id.clone(), queue, sender.clone()));
                watches.insert(id, task);
            }
            ClientOp::Subscribe { id, channel } => {
                if let Err((code, msg)) = check_id(&id, &watches) {
                    sender.error(Some(&id), code, msg);
                    continue;
                }
                if let Err(e) = crate::pubsub::validate_pattern(&channel) {
                    sender.error(Some(&id), e.code.as_str(), &e.detail);
                    continue;
                }
                let task = tokio::spawn(run_subscription(st.clone(), id.clone(), channel, sender.clone()));
                watches.insert(id, task);
            }
            ClientOp::Watch {
                id,
                namespace,
                prefix,
                from_revision,
                values,
            } => {
                if let Err((code, msg)) = check_id(&id, &watches) {
                    sender.error(Some(&id), code, msg);
                    continue;
                }
                if let Err(e) = super::validate_name("namespace", &namespace) {
                    sender.error(Some(&id), e.code.as_str(), &e.detail);
                    continue;
                }
                let prefix = prefix.unwrap_or_default();
                if prefix.len() > super::MAX_KEY_BYTES {
                    sender.error(Some(&id), "invalid_argument", "prefix too long");
                    continue;
                }
                let spec = WatchSpec {
                    id_json: serde_json::to_string(&id).unwrap_or_default(),
                    id: id.clone(),
                    ns: namespace,
                    prefix,
                    from: from_revision,
                    values: values.unwrap_or(true),
                };
                let task = tokio::spawn(run_watch(st.clone(), spec, sender.clone()));
                watches.insert(id, task);
            }
        }
    }
    for (_, h) in watches {
        h.abort();
    }
    drop(sender);
    // A writer stuck on a dead peer's full socket must not keep this connection alive.
    if tokio::time::timeout(Duration::from_secs(5), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    if server_closing {
        // Close handshake: read until the client's Close (or 1 s), so the socket is not torn
        // down under the client's feet and our close frame (with its code) reaches it.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(Ok(m)) = stream.next().await {
                if matches!(m, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    metrics::gauge!("ws_connections").decrement(1.0);
}

/// An id for a new watch or subscription on this socket.
fn check_id(id: &str, active: &HashMap<String, JoinHandle<()>>) -> Result<(), (&'static str, &'static str)> {
    if id.is_empty() || id.len() > 128 {
        return Err(("invalid_argument", "id must be 1 to 128 characters"));
    }
    if active.contains_key(id) {
        return Err((
            "invalid_argument",
            "a watch or subscription with this id is active",
        ));
    }
    if active.len() >= MAX_WATCHES {
        return Err((
            "invalid_argument",
            "too many watches and subscriptions on this connection",
        ));
    }
    Ok(())
}

/// One pub/sub subscription: forward every matching message.
async fn run_subscription(st: AppState, id: String, pattern: String, out: Sender) {
    let mut rx = match st.pubsub.subscribe(&st.store, &pattern).await {
        Ok(rx) => rx,
        Err(e) => {
            out.error(Some(&id), e.code.as_str(), &e.detail);
            return;
        }
    };
    loop {
        match rx.recv().await {
            Ok(m) => {
                let frame =
                    json!({"type": "message", "id": id, "channel": m.channel, "payload": &*m.payload});
                if !out.frame(frame.to_string()) {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                out.error(
                    Some(&id),
                    "lagged",
                    &format!("{n} messages were dropped: this subscriber is too slow"),
                );
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Connection-level instructions for the writer task.
/// `queue` op: `{"type":"task","id":…,"task":{…}}` for every state change of the queue's
/// tasks from now on (fire-and-forget, like pub/sub: a socket that falls behind gets `lagged`).
async fn run_queue_watch(st: AppState, id: String, queue: String, out: Sender) {
    let mut rx = match st.queues.events(&st.store, &queue).await {
        Ok(rx) => rx,
        Err(e) => {
            out.error(Some(&id), e.code.as_str(), &e.detail);
            return;
        }
    };
    let id_json = serde_json::to_string(&id).unwrap_or_default();
    out.frame(format!(
        r#"{{"type":"progress","id":{id_json},"queue":{}}}"#,
        serde_json::to_string(&queue).unwrap_or_default()
    ));
    loop {
        match rx.recv().await {
            Ok(ev) => {
                if !out.frame(format!(r#"{{"type":"task","id":{id_json},"task":{ev}}}"#)) {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => out.error(
                Some(&id),
                "lagged",
                &format!("{n} task events were dropped: this subscriber is too slow"),
            ),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

enum Ctrl {
    Ping,
    Idle,
}

#[derive(Clone)]
struct Sender {
    tx: mpsc::Sender<String>,
    slow: mpsc::Sender<()>,
    /// Bytes queued and not yet written (bounded by [`SEND_QUEUE_BYTES`]).
    queued: Arc<AtomicUsize>,
}

impl Sender {
    /// Queue a frame; a full queue marks the consumer as too slow. Returns false once the
    /// connection is going away.
    fn frame(&self, text: String) -> bool {
        let len = text.len();
        // A frame larger than the whole budget still goes out when nothing else is queued, so
        // one big value cannot make a watch impossible to resume.
        let before = self.queued.fetch_add(len, Ordering::Relaxed);
        if before > 0 && before + len > SEND_QUEUE_BYTES {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            let _ = self.slow.try_send(());
            return false;
        }
        match self.tx.try_send(text) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.queued.fetch_sub(len, Ordering::Relaxed);
                let _ = self.slow.try_send(());
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.queued.fetch_sub(len, Ordering::Relaxed);
                false
            }
        }
    }

    fn error(&self, id: Option<&str>, code: &str, message: &str) {
        let mut e = json!({"type": "error", "code": code, "message": message});
        if let Some(id) = id {
            e["id"] = id.into();
        }
        self.frame(e.to_string());
    }
}

struct WatchSpec {
    id: String,
    /// `id` as a JSON string.
    id_json: String,
    ns: String,
    prefix: String,
    from: Option<u64>,
    values: bool,
}

/// `{"type":"event","id":…,"event":…}` around the event's JSON, which is serialised once per
/// event however many watchers send it.
fn event_frame(spec: &WatchSpec, e: &Event) -> String {
    let body = e.json(spec.values);
    let mut f = String::with_capacity(body.len() + spec.id_json.len() + 32);
    f.push_str(r#"{"type":"event","id":"#);
    f.push_str(&spec.id_json);
    f.push_str(r#","event":"#);
    f.push_str(body);
    f.push('}');
    f
}

fn sent_counter() -> &'static metrics::Counter {
    static C: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    C.get_or_init(|| metrics::counter!("watch_events_sent_total"))
}

/// One watch: subscribe to live changes, replay what the client missed, then stream live.
async fn run_watch(st: AppState, spec: WatchSpec, out: Sender) {
    let mut live = match st.hub.subscribe(&st.store, &spec.ns).await {
        Ok(rx) => rx,
        Err(e) => {
            out.error(Some(&spec.id), e.code.as_str(), &e.detail);
            return;
        }
    };
    let mut last = match spec.from {
        Some(f) => f,
        None => match watch::current_revision(&st.store, &spec.ns).await {
            Ok(r) => r,
            Err(e) => {
                out.error(Some(&spec.id), e.code.as_str(), &e.detail);
                return;
            }
        },
    };
    if spec.from.is_some() && !catch_up(&st, &spec, &out, &mut last).await {
        return;
    }
    // The first `progress` tells the client the watch is live from this revision on.
    out.frame(json!({"type": "progress", "id": spec.id, "revision": last}).to_string());
    // One timer per watch (not one per event): a tick with nothing sent since the last one
    // sends `progress`.
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    let mut active = false;
    loop {
        let next = tokio::select! {
            r = live.recv() => Ok(r),
            _ = progress.tick() => Err(()),
        };
        match next {
            Err(()) => {
                if !std::mem::take(&mut active)
                    && !out.frame(json!({"type": "progress", "id": spec.id, "revision": last}).to_string())
                {
                    return;
                }
            }
            Ok(Ok(e)) => {
                active = true;
                if e.revision <= last {
                    continue;
                }
                if e.revision > last.saturating_add(1) {
                    // A revision between the last sent and this one never reached the
                    // broadcast (reader restarted): read it from the log.
                    if !catch_up(&st, &spec, &out, &mut last).await {
                        return;
                    }
                    if e.revision <= last {
                        continue;
                    }
                }
                last = e.revision;
                if e.key.starts_with(&spec.prefix) {
                    sent_counter().increment(1);
                    if !out.frame(event_frame(&spec, &e)) {
                        return;
                    }
                }
            }
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                if !catch_up(&st, &spec, &out, &mut last).await {
                    return;
                }
            }
            Ok(Err(broadcast::error::RecvError::Closed)) => {
                match st.hub.subscribe(&st.store, &spec.ns).await {
                    Ok(rx) => live = rx,
                    Err(_) => return,
                }
                if !catch_up(&st, &spec, &out, &mut last).await {
                    return;
                }
            }
        }
    }
}

/// Send every retained change after `last`, page by page. False when the watch must end
/// (compacted, Redis error, or the connection is going away).
async fn catch_up(st: &AppState, spec: &WatchSpec, out: &Sender, last: &mut u64) -> bool {
    loop {
        match watch::replay_page(&st.store, &spec.ns, *last).await {
            Ok(Replay::Compacted(oldest)) => {
                out.frame(
                    json!({"type": "compacted", "id": spec.id, "compact_revision": oldest}).to_string(),
                );
                return false;
            }
            Ok(Replay::Events(events)) => {
                if events.is_empty() {
                    return true;
                }
                for e in events {
                    *last = e.revision;
                    if e.key.starts_with(&spec.prefix) {
                        sent_counter().increment(1);
                        if !out.frame(event_frame(spec, &e)) {
                            return false;
                        }
                    }
                }
            }
            Err(e) => {
                out.error(Some(&spec.id), e.code.as_str(), &e.detail);
                return false;
            }
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Replay every retained change after this revision first (a `Last-Event-ID` header wins).
    from_revision: Option<u64>,
    /// Only keys starting with this string.
    prefix: Option<String>,
    /// Include values in put events (default true).
    values: Option<bool>,
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
    get, path = "/v1/ns/{ns}/events", tag = "watch",
    params(("ns" = String, Path, description = "Namespace"), EventsQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this revision")),
    responses(
        (status = 200, description = "text/event-stream of changes", content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad name or argument", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn events_sse(
    State(st): State<AppState>,
    Path(ns): Path<String>,
    super::Q(q): super::Q<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    super::validate_name("namespace", &ns)?;
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
    if prefix.len() > super::MAX_KEY_BYTES {
        return Err(ApiError::bad_request("prefix too long"));
    }
    let spec = WatchSpec {
        id: "sse".into(),
        id_json: "\"sse\"".into(),
        ns,
        prefix,
        from: last_event_id.or(q.from_revision),
        values: q.values.unwrap_or(true),
    };
    let (tx, rx) = mpsc::channel::<String>(SEND_QUEUE);
    let (slow, _) = mpsc::channel::<()>(1);
    // SSE: the stream below takes frames one by one; the byte budget is released as it does.
    let queued = Arc::new(AtomicUsize::new(0));
    let sse_queued = queued.clone();
    let task = AbortOnDrop(tokio::spawn(run_watch(st, spec, Sender { tx, slow, queued })));
    let stream = futures::stream::unfold((rx, task, sse_queued), |(mut rx, task, queued)| async move {
        let text = rx.recv().await?;
        queued.fetch_sub(text.len(), Ordering::Relaxed);
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
        Some((Ok::<_, std::convert::Infallible>(event), (rx, task, queued)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}
