//! `GET /v1/watch`: the WebSocket transport of the watch session ([`crate::ops::watch`]).
//!
//! A reader loop hands client frames to the session; a writer task sends what the session
//! queues, batching frames per flush, pings every `ws_ping_interval_ms` and closes the socket
//! with 4001 (silent client), 4008 (consumer too slow) or 1001 (going away). Bad frames are
//! answered with an `error` message and the socket stays open.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::Who;
use crate::domain::auth::Caller;
use crate::ops::watch::{outbox, Session};
use crate::state::AppState;

/// Largest client frame accepted.
const MAX_FRAME: usize = 64 * 1024;
/// Frames written per flush at most.
const WRITE_BATCH: usize = 256;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(watch_socket))
}

/// Open a watch socket.
#[utoipa::path(
    get, path = "/v1/watch", tag = "watch", operation_id = "watch_socket",
    responses((status = 101, description = "WebSocket: JSON text frames, see DESIGN.md \"Watch over WebSocket\""))
)]
pub async fn watch_socket(State(st): State<AppState>, Who(who): Who, ws: WebSocketUpgrade) -> Response {
    // Small eager read buffer (it is allocated per socket up front; client frames are small
    // and it grows for larger ones); frames are batched up to 64 KiB before a write. The
    // write buffer itself is not capped here: what can be queued is (SEND_QUEUE_BYTES), and a
    // cap below the largest frame (a value up to body_limit_bytes) would kill the socket.
    ws.max_frame_size(MAX_FRAME)
        .max_message_size(MAX_FRAME)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(64 * 1024)
        .on_upgrade(move |socket| run(st, who, socket))
}

/// Connection-level instructions for the writer task.
enum Ctrl {
    Ping,
    Idle,
    /// A frame over the size limit arrived: close with 1009.
    TooBig,
}

async fn run(st: AppState, who: Caller, socket: WebSocket) {
    metrics::gauge!("ws_connections").increment(1.0);
    crate::metrics::live::ws(1);
    let _open = st.ops.socket_open();
    let (mut sink, mut stream) = socket.split();
    let (out, mut inbox) = outbox();
    let (ctrl_tx, mut ctrl_rx) = mpsc::channel::<Ctrl>(4);
    // Dropped when the writer ends (socket closed by us, or a write failed).
    let (writer_alive, mut writer_gone) = tokio::sync::oneshot::channel::<()>();
    let send_timeout = Duration::from_millis(st.cfg.ws_send_timeout_ms);
    let mut writer = tokio::spawn(async move {
        let _alive = writer_alive;
        loop {
            tokio::select! {
                biased;
                ctrl = ctrl_rx.recv() => match ctrl {
                    Some(Ctrl::Ping) if sink.send(Message::Ping(Default::default())).await.is_err() => return,
                    Some(Ctrl::Ping) => {}
                    Some(Ctrl::Idle) => {
                        let _ = sink.send(Message::Close(Some(CloseFrame {
                            code: 4001,
                            reason: "no pong or message for three ping intervals".into(),
                        }))).await;
                        return;
                    }
                    Some(Ctrl::TooBig) => {
                        let _ = sink.send(Message::Close(Some(CloseFrame {
                            code: 1009,
                            reason: "message too big".into(),
                        }))).await;
                        return;
                    }
                    None => {}
                },
                out = inbox.frames.recv() => match out {
                    Some(text) => {
                        // Everything already queued goes out in one write (one syscall, one
                        // TCP segment where it fits) instead of one per frame.
                        let mut batch = vec![text];
                        while batch.len() <= WRITE_BATCH {
                            let Ok(more) = inbox.frames.try_recv() else { break };
                            batch.push(more);
                        }
                        let bytes = batch.iter().map(String::len).sum();
                        let write = async {
                            for t in batch {
                                sink.feed(Message::Text(Utf8Bytes::from(t))).await?;
                            }
                            sink.flush().await
                        };
                        // A consumer whose socket buffers are full makes no progress at all:
                        // it is dropped when a write stalls past the send timeout, or when the
                        // queue behind the stalled write passes its budget meanwhile.
                        let stalled = tokio::select! {
                            r = tokio::time::timeout(send_timeout, write) => match r {
                                Ok(Ok(())) => false,
                                Ok(Err(_)) => return,
                                Err(_) => true,
                            },
                            _ = inbox.slow.recv() => true,
                        };
                        if !stalled {
                            inbox.sent(bytes);
                            continue;
                        }
                        // The close frame goes after what is still buffered; it gets one more
                        // send timeout to get out (a client that reads again sees 4008), then
                        // the socket is dropped either way.
                        metrics::counter!("watch_clients_dropped_total").increment(1);
                        tracing::debug!("WebSocket consumer stalled (full socket or queue); closing with 4008");
                        let close = sink.send(Message::Close(Some(CloseFrame {
                            code: 4008,
                            reason: "consumer too slow; reconnect and resume with from_revision".into(),
                        })));
                        let _ = tokio::time::timeout(send_timeout, close).await;
                        return;
                    }
                    None => {
                        let _ = sink.send(Message::Close(Some(CloseFrame { code: 1001, reason: "going away".into() }))).await;
                        return;
                    }
                },
                _ = inbox.slow.recv() => {
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
    let mut session = Session::new(st.ops.clone(), out, who);
    // Keepalive: a ping every interval; a client silent for three intervals is closed.
    let ping_every = Duration::from_millis(st.cfg.ws_ping_interval_ms);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut last_heard = tokio::time::Instant::now();
    let mut server_closing = false;
    let stopping = st.ops.stopping();
    tokio::pin!(stopping);
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = &mut stopping => {
                // Shutting down: the writer says 1001 once the session's watches end.
                server_closing = true;
                break;
            }
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
                session.binary();
                continue;
            }
            Err(e) if is_too_big(&e) => {
                let _ = ctrl_tx.try_send(Ctrl::TooBig);
                server_closing = true;
                break;
            }
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        if writer.is_finished() {
            // The writer ended: it closed the socket (4008) or the peer is gone.
            server_closing = true;
            break;
        }
        session.handle(text.as_str());
    }
    // Ends every watch; the outbox closes with the last of them, and the writer says 1001.
    drop(session);
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
    crate::metrics::live::ws(-1);
}

/// A frame or message over `MAX_FRAME` (tungstenite's capacity error; axum does not expose
/// its type, only its text).
fn is_too_big(e: &axum::Error) -> bool {
    let t = e.to_string();
    t.contains("Space limit exceeded") || t.contains("too long") || t.contains("too big")
}
