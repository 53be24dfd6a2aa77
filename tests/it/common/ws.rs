//! Clients of the streams: a WebSocket client for `/v1/watch` (tokio-tungstenite) and a
//! Server-Sent Events reader.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use super::http::TestApp;

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn connect(app: &TestApp) -> Ws {
    let url = format!("{}/v1/watch", app.base.replace("http://", "ws://"));
    tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket upgrade")
        .0
}

pub async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next JSON text frame, or None after `wait` without one.
pub async fn next(ws: &mut Ws, wait: Duration) -> Option<Value> {
    // One deadline for the whole wait: pings do not extend it.
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(t.as_str()).unwrap()),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            _ => return None,
        }
    }
}

/// Read past whatever is buffered to the server's close frame (within 30 s); its code.
pub async fn close_code(ws: &mut Ws) -> Option<u16> {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(f)))) => return Some(u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("closed within 30 s")
}

/// Event messages of watch `id` until `until_rev` has been seen.
pub async fn events_until(ws: &mut Ws, id: &str, until_rev: u64) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(m) = next(ws, Duration::from_secs(5)).await {
        if m["type"] == "event" && m["id"] == id {
            let rev = m["event"]["revision"].as_u64().unwrap();
            out.push(m["event"].clone());
            if rev >= until_rev {
                break;
            }
        }
    }
    out
}

/// Read SSE events (id, event, data) from a body until `want` events named like a change
/// kind have arrived or `wait` passes without data.
pub async fn sse_events(
    body: &mut super::http::StreamBody,
    want: usize,
    wait: Duration,
) -> Vec<(Option<String>, String, Value)> {
    use http_body_util::BodyExt;
    let mut text = String::new();
    let mut out = Vec::new();
    loop {
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().to_string());
                } else if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if !data.is_empty() {
                out.push((id, event, serde_json::from_str(&data).unwrap()));
            }
        }
        if out
            .iter()
            .filter(|e| ["put", "delete", "expire", "evict", "external", "task"].contains(&e.1.as_str()))
            .count()
            >= want
        {
            return out;
        }
        match tokio::time::timeout(wait, body.frame()).await {
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data() {
                    text.push_str(&String::from_utf8_lossy(&d));
                }
            }
            _ => return out,
        }
    }
}
