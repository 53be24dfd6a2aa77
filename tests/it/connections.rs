//! Connection hygiene (DESIGN.md "Names and limits", connections): slow, idle and excess
//! clients cannot pin the service — half-sent headers and silent sockets are closed after
//! `header_timeout_ms`, at most `max_connections` are served at once (the rest wait in the
//! backlog), and other clients are answered meanwhile.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::http::{test_config, TestApp};
use crate::common::shared_redis_url;

/// Wait until the server closes `s` (EOF or reset); how long it took from `since`.
async fn closed_after(s: &mut TcpStream, since: Instant, limit: Duration) -> Option<Duration> {
    let mut buf = [0u8; 512];
    let deadline = since + limit;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(since.elapsed()),
            Ok(Ok(_)) => continue, // e.g. a 408 written before the close
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_clients_are_closed_after_the_header_timeout() {
    let mut cfg = test_config(&shared_redis_url());
    cfg.header_timeout_ms = 600;
    cfg.idle_timeout_ms = 3_000;
    let app = TestApp::with_config(cfg).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let start = Instant::now();
    // 300 slowloris clients (half a request), 300 that never send a byte.
    let mut socks = Vec::new();
    for i in 0..600 {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        if i % 2 == 0 {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        socks.push(s);
    }
    // Meanwhile the service answers others.
    assert_eq!(app.get("/healthz").await.status, 200);
    let mut worst = Duration::ZERO;
    for s in socks.iter_mut() {
        let took = closed_after(s, start, Duration::from_secs(10))
            .await
            .expect("a slow or silent connection was never closed");
        worst = worst.max(took);
    }
    assert!(worst >= Duration::from_millis(500), "closed too early: {worst:?}");
    // A keep-alive connection idle after its request is closed the same way.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idle = Instant::now();
    let took = closed_after(&mut s, idle, Duration::from_secs(5))
        .await
        .expect("idle keep-alive stays open");
    assert!(took < Duration::from_secs(2), "{took:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_wait_until_one_closes() {
    let mut cfg = test_config(&shared_redis_url());
    cfg.max_connections = 4;
    cfg.header_timeout_ms = 30_000;
    let app = TestApp::with_config(cfg).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A fifth client connects (the backlog takes it) but is not served while four are open.
    let mut fifth = TcpStream::connect(&addr).await.unwrap();
    fifth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), fifth.read(&mut buf))
            .await
            .is_err(),
        "served past max_connections"
    );
    drop(held.pop());
    let n = tokio::time::timeout(Duration::from_secs(5), fifth.read(&mut buf))
        .await
        .expect("not served after a slot freed")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(held);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_with_nothing_moving_is_closed_after_the_idle_timeout() {
    // The header timer is long here: the idle watchdog closes a connection left open after its
    // answer, but not one whose request is still running (a long-poll writes nothing meanwhile).
    let mut cfg = test_config(&shared_redis_url());
    cfg.header_timeout_ms = 30_000;
    cfg.idle_timeout_ms = 800;
    let app = TestApp::with_config(cfg).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let body = r#"{"worker": "w", "lease_ms": 1000, "wait_ms": 2000}"#;
    let req = format!(
        "POST /v1/queues/lp/lease HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let sent = Instant::now();
    let mut buf = [0u8; 2048];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(
        sent.elapsed() >= Duration::from_millis(1900),
        "the 2 s long-poll was cut short"
    );
    let idle = Instant::now();
    let took = closed_after(&mut s, idle, Duration::from_secs(10))
        .await
        .expect("never closed");
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(3),
        "{took:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_websocket_keeps_its_connection_slot() {
    let mut cfg = test_config(&shared_redis_url());
    cfg.max_connections = 2;
    let app = TestApp::with_config(cfg).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let ws1 = crate::common::ws::connect(&app).await;
    let ws2 = crate::common::ws::connect(&app).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Two WebSockets hold both slots: a third client waits in the backlog.
    let mut third = TcpStream::connect(&addr).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf))
            .await
            .is_err(),
        "served past max_connections while two WebSockets are open"
    );
    drop(ws1);
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("not served after a WebSocket closed")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(ws2);
    app.stop().await;
}
