//! The watch WebSocket, with a real WebSocket client against real Redis.

use std::time::Duration;

use fred::prelude::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::common::ws::{close_code, connect, events_until, next, send, sse_events};
use crate::common::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_disconnect_yields_exactly_the_missed_events() {
    use rand::{Rng, SeedableRng};
    let app = TestApp::start().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // (revision, kind, key) of every change we make, in order.
    let mut expected: Vec<(u64, String, String)> = Vec::new();
    let mut rev = 0u64;
    let mut last_seen = 0u64;
    for round in 0..4 {
        // While disconnected: random puts and deletes.
        for _ in 0..rng.random_range(5..40) {
            let key = format!("k{}", rng.random_range(0..8));
            if rng.random_bool(0.7) {
                let r = app
                    .put(&format!("/v1/ns/w/kv/{key}"), json!({"value": {"round": round}}))
                    .await;
                rev += 1;
                assert_eq!(r.json()["mod_revision"], rev);
                expected.push((rev, "put".into(), key));
            } else if app.delete(&format!("/v1/ns/w/kv/{key}")).await.status == 204 {
                rev += 1;
                expected.push((rev, "delete".into(), key));
            }
        }
        // Reconnect and resume from the last revision seen.
        let mut ws = connect(&app).await;
        send(
            &mut ws,
            json!({"op": "watch", "id": "w1", "namespace": "w", "from_revision": last_seen}),
        )
        .await;
        let got = events_until(&mut ws, "w1", rev).await;
        let want: Vec<&(u64, String, String)> = expected.iter().filter(|e| e.0 > last_seen).collect();
        assert_eq!(got.len(), want.len(), "round {round}: {got:?}");
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g["revision"], w.0, "round {round}");
            assert_eq!(g["kind"], w.1.as_str(), "round {round}");
            assert_eq!(g["key"], w.2.as_str(), "round {round}");
            assert_eq!(g["namespace"], "w");
        }
        // Live after the replay, with no gap at the hand-over.
        let r = app.put("/v1/ns/w/kv/live", json!({"value": round})).await;
        rev += 1;
        expected.push((rev, "put".into(), "live".into()));
        assert_eq!(r.json()["mod_revision"], rev);
        let got = events_until(&mut ws, "w1", rev).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["revision"], rev);
        assert_eq!(got[0]["value"], round);
        last_seen = rev;
        ws.close(None).await.ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_filter_values_option_and_several_watches_on_one_socket() {
    let app = TestApp::start().await;
    let mut ws = connect(&app).await;
    send(
        &mut ws,
        json!({"op": "watch", "id": "a", "namespace": "pf", "prefix": "a/", "values": false}),
    )
    .await;
    send(&mut ws, json!({"op": "watch", "id": "all", "namespace": "pf"})).await;
    // Both watches acknowledge with their starting revision.
    let mut acks = 0;
    while acks < 2 {
        let m = next(&mut ws, Duration::from_secs(5)).await.expect("progress ack");
        assert_eq!(m["type"], "progress", "{m}");
        assert_eq!(m["revision"], 0);
        acks += 1;
    }
    for k in ["a/1", "b/1", "a/2"] {
        app.put(&format!("/v1/ns/pf/kv/{k}"), json!({"value": k})).await;
    }
    let mut by_watch: std::collections::HashMap<String, Vec<Value>> = Default::default();
    while let Some(m) = next(&mut ws, Duration::from_millis(1500)).await {
        if m["type"] == "event" {
            by_watch
                .entry(m["id"].as_str().unwrap().to_string())
                .or_default()
                .push(m["event"].clone());
        }
    }
    let a: Vec<&str> = by_watch["a"].iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(a, ["a/1", "a/2"]);
    assert!(
        by_watch["a"].iter().all(|e| e.get("value").is_none()),
        "values omitted"
    );
    let all: Vec<&str> = by_watch["all"]
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(all, ["a/1", "b/1", "a/2"]);
    assert_eq!(by_watch["all"][1]["value"], "b/1");
    // Cancel one; the other keeps going.
    send(&mut ws, json!({"op": "cancel", "id": "a"})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    app.put("/v1/ns/pf/kv/a/3", json!({"value": 3})).await;
    let m = next(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(m["id"], "all", "{m}");
    assert_eq!(m["event"]["key"], "a/3");
    assert!(
        next(&mut ws, Duration::from_millis(500)).await.is_none(),
        "cancelled watch is silent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_error_messages_and_the_socket_stays_open() {
    let app = TestApp::start().await;
    let mut ws = connect(&app).await;
    let bad: Vec<Message> = vec![
        Message::Text("not json".into()),
        Message::Text(json!({"op": "dance"}).to_string().into()),
        Message::Text(json!({"op": "watch", "id": "x"}).to_string().into()),
        Message::Text(
            json!({"op": "watch", "id": "x", "namespace": "Bad*Name"})
                .to_string()
                .into(),
        ),
        Message::Text(
            json!({"op": "watch", "id": "x", "namespace": "ok", "from_revision": -1})
                .to_string()
                .into(),
        ),
        Message::Text(json!({"op": "cancel", "id": "nope"}).to_string().into()),
        Message::Binary(vec![0u8, 1, 2].into()),
        // The HTTP listing's prefix rule: no control characters.
        Message::Text(
            json!({"op": "watch", "id": "p0", "namespace": "app", "prefix": "a\u{0}b"})
                .to_string()
                .into(),
        ),
    ];
    for frame in bad {
        ws.send(frame.clone()).await.unwrap();
        let m = next(&mut ws, Duration::from_secs(5))
            .await
            .expect("an error frame");
        assert_eq!(m["type"], "error", "{frame:?} → {m}");
        assert!(m["code"].is_string() && m["message"].is_string(), "{m}");
    }
    send(&mut ws, json!({"op": "ping"})).await;
    assert_eq!(
        next(&mut ws, Duration::from_secs(5)).await.unwrap()["type"],
        "pong"
    );
    // Oversized frames are refused by closing, not by buffering them.
    let huge = "x".repeat(200 * 1024);
    let _ = ws.send(Message::Text(huge.into())).await;
    assert_eq!(
        close_code(&mut ws).await,
        Some(1009),
        "oversized frame: 1009 message too big"
    );
    assert_eq!(app.get("/healthz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_old_revision_gets_compacted() {
    let mut cfg = crate::common::test_config(&crate::common::shared_redis_url());
    cfg.changelog_retention = 100;
    let app = TestApp::with_config(cfg).await;
    for chunk in 0..4 {
        let items: Vec<Value> = (0..100)
            .map(|i| json!({"key": format!("k{chunk}-{i}"), "value": i}))
            .collect();
        assert_eq!(
            app.post("/v1/ns/cp/batch/put", json!({"items": items}))
                .await
                .status,
            200
        );
    }
    let mut ws = connect(&app).await;
    send(
        &mut ws,
        json!({"op": "watch", "id": "old", "namespace": "cp", "from_revision": 1}),
    )
    .await;
    let m = next(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(m["type"], "compacted", "{m}");
    assert_eq!(m["id"], "old");
    let oldest = m["compact_revision"].as_u64().unwrap();
    assert!(oldest > 2 && oldest <= 301, "{m}");
    // Resuming from just before the oldest retained revision works.
    send(
        &mut ws,
        json!({"op": "watch", "id": "ok", "namespace": "cp", "from_revision": oldest - 1}),
    )
    .await;
    let got = events_until(&mut ws, "ok", 400).await;
    assert_eq!(got.len() as u64, 400 - oldest + 1);
    assert_eq!(got[0]["revision"], oldest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expiry_arrives_as_an_expire_event() {
    let app = TestApp::start().await;
    let mut ws = connect(&app).await;
    send(&mut ws, json!({"op": "watch", "id": "t", "namespace": "ex"})).await;
    assert_eq!(
        next(&mut ws, Duration::from_secs(5)).await.unwrap()["type"],
        "progress"
    );
    app.put("/v1/ns/ex/kv/lease", json!({"value": 1, "ttl_ms": 200}))
        .await;
    let put = next(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(put["event"]["kind"], "put");
    let exp = next(&mut ws, Duration::from_secs(5)).await.expect("expire event");
    assert_eq!(exp["event"]["kind"], "expire", "{exp}");
    assert_eq!(exp["event"]["key"], "lease");
    assert_eq!(exp["event"]["revision"], 2);
}

/// Write `batches` × `per_batch` entries of `value_bytes` each into `ns` (for consumers that
/// stop reading).
async fn flood(app: &TestApp, ns: &str, batches: usize, per_batch: usize, value_bytes: usize) {
    let value = "v".repeat(value_bytes);
    for chunk in 0..batches {
        let items: Vec<Value> = (0..per_batch)
            .map(|i| json!({"key": format!("k{chunk}-{i}"), "value": value}))
            .collect();
        let r = app
            .post(&format!("/v1/ns/{ns}/batch/put"), json!({"items": items}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_never_reads_is_closed_with_4008() {
    let app = TestApp::start().await;
    let mut ws = connect(&app).await;
    send(&mut ws, json!({"op": "watch", "id": "slow", "namespace": "fl"})).await;
    assert_eq!(
        next(&mut ws, Duration::from_secs(5)).await.unwrap()["type"],
        "progress"
    );
    // ~20 MB of events while the client reads nothing: socket buffers fill, then the bounded
    // per-connection queue, and the server gives up on the consumer.
    flood(&app, "fl", 20, 1000, 1000).await;
    // Now read: buffered frames, then the end — the 4008 close frame when it still got out
    // within ws_send_timeout_ms, else the dropped socket itself.
    let code = close_code(&mut ws).await;
    assert!(matches!(code, Some(4008) | None), "{code:?}");
    let m = app.get("/metrics").await.text();
    assert!(
        m.lines()
            .any(|l| l.starts_with("watch_clients_dropped_total") && !l.ends_with(" 0")),
        "{m}"
    );
    assert_eq!(app.get("/healthz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_replay_stream_and_resume_with_last_event_id() {
    let app = TestApp::start().await;
    for i in 1..=3 {
        app.put(&format!("/v1/ns/sse/kv/k{i}"), json!({"value": i})).await;
    }
    let (status, mut body) = app.stream("/v1/ns/sse/events?from_revision=1", &[]).await;
    assert_eq!(status, 200);
    let got = sse_events(&mut body, 2, Duration::from_secs(5)).await;
    let changes: Vec<_> = got.iter().filter(|e| e.1 == "put").collect();
    assert_eq!(changes.len(), 2, "{got:?}");
    assert_eq!(changes[0].0.as_deref(), Some("2"));
    assert_eq!(changes[0].2["key"], "k2");
    assert_eq!(changes[1].2["value"], 3);
    // Live.
    app.put("/v1/ns/sse/kv/k4", json!({"value": 4})).await;
    let got = sse_events(&mut body, 1, Duration::from_secs(5)).await;
    let live: Vec<_> = got.iter().filter(|e| e.1 == "put").collect();
    assert_eq!(live[0].0.as_deref(), Some("4"), "{got:?}");
    drop(body);
    // Disconnected: two more changes; a browser resumes with Last-Event-ID.
    app.put("/v1/ns/sse/kv/k5", json!({"value": 5})).await;
    app.delete("/v1/ns/sse/kv/k1").await;
    let (_, mut body) = app.stream("/v1/ns/sse/events", &[("last-event-id", "4")]).await;
    let got = sse_events(&mut body, 2, Duration::from_secs(5)).await;
    let missed: Vec<(String, String)> = got
        .iter()
        .filter(|e| e.0.is_some())
        .map(|e| (e.0.clone().unwrap(), e.1.clone()))
        .collect();
    assert_eq!(
        missed,
        [
            ("5".to_string(), "put".to_string()),
            ("6".to_string(), "delete".to_string())
        ]
    );
    // Bad input is a problem document, not a stream.
    let r = app
        .req("GET", "/v1/ns/sse/events", &[("last-event-id", "abc")], None)
        .await;
    r.problem(400, "invalid_argument");
    app.get("/v1/ns/Bad/events").await.problem(400, "invalid_name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_sub_patterns_reach_every_socket_through_one_redis_subscription() {
    // Own Redis and no keyspace relay (its pattern subscription would count too): PUBSUB
    // NUMPAT must count only this test's subscriptions.
    let redis_server = crate::common::RedisServer::start(&[]);
    let mut cfg = crate::common::test_config(&redis_server.url());
    cfg.keyspace_relay = false;
    let app = TestApp::with_config(cfg).await;
    let redis = app.redis().await;
    let mut ws1 = connect(&app).await;
    let mut ws2 = connect(&app).await;
    send(
        &mut ws1,
        json!({"op": "subscribe", "id": "s1", "channel": "build.*"}),
    )
    .await;
    send(
        &mut ws2,
        json!({"op": "subscribe", "id": "s2", "channel": "build.*"}),
    )
    .await;
    send(
        &mut ws2,
        json!({"op": "subscribe", "id": "x", "channel": "deploy.?"}),
    )
    .await;
    // Each subscription says when it is live; nothing published after that is missed.
    let live = |m: Option<Value>| m.filter(|m| m["type"] == "subscribed").map(|m| m["id"].clone());
    assert_eq!(
        live(next(&mut ws1, Duration::from_secs(5)).await),
        Some(json!("s1"))
    );
    let mut ids = vec![
        live(next(&mut ws2, Duration::from_secs(5)).await),
        live(next(&mut ws2, Duration::from_secs(5)).await),
    ];
    ids.sort_by_key(|v| v.as_ref().map(|v| v.to_string()));
    assert_eq!(ids, [Some(json!("s2")), Some(json!("x"))]);
    let numpat: i64 = redis.custom(fred::cmd!("PUBSUB"), vec!["NUMPAT"]).await.unwrap();
    assert_eq!(
        numpat, 1,
        "one Redis pattern subscription per process, not per pattern or socket"
    );
    // `receivers` counts service processes with a subscriber: every message reaches this one.
    for (ch, msg, receivers) in [
        ("build.1", json!({"n": 1}), 1),
        ("deploy.1", json!("go"), 1),
        ("build.2", json!([2]), 1),
        ("other", json!(null), 1),
    ] {
        let r = app
            .post(&format!("/v1/channels/{ch}/publish"), json!({"message": msg}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["receivers"], receivers, "{ch}");
    }
    let mut got1 = Vec::new();
    while let Some(m) = next(&mut ws1, Duration::from_millis(700)).await {
        got1.push(m);
    }
    let mut got2 = Vec::new();
    while let Some(m) = next(&mut ws2, Duration::from_millis(700)).await {
        got2.push(m);
    }
    let brief = |v: &Vec<Value>| -> Vec<(String, String, Value)> {
        v.iter()
            .map(|m| {
                assert_eq!(m["type"], "message", "{m}");
                (
                    m["id"].as_str().unwrap().into(),
                    m["channel"].as_str().unwrap().into(),
                    m["payload"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(
        brief(&got1),
        [
            ("s1".into(), "build.1".into(), json!({"n": 1})),
            ("s1".into(), "build.2".into(), json!([2]))
        ]
    );
    // Order holds within a subscription; two subscriptions of one socket interleave freely.
    let got2 = brief(&got2);
    let of =
        |id: &str| -> Vec<(String, String, Value)> { got2.iter().filter(|m| m.0 == id).cloned().collect() };
    assert_eq!(got2.len(), 3, "{got2:?}");
    assert_eq!(
        of("s2"),
        [
            ("s2".into(), "build.1".into(), json!({"n": 1})),
            ("s2".into(), "build.2".into(), json!([2]))
        ]
    );
    assert_eq!(of("x"), [("x".into(), "deploy.1".into(), json!("go"))]);
    // Patterns are checked before they reach Redis; channel names when publishing.
    for bad in ["a[b]", "UP", "a*b*c*d*e*f", ""] {
        send(&mut ws1, json!({"op": "subscribe", "id": "bad", "channel": bad})).await;
        let m = next(&mut ws1, Duration::from_secs(5)).await.unwrap();
        assert_eq!(m["type"], "error", "{bad}: {m}");
        assert_eq!(m["code"], "invalid_name", "{bad}: {m}");
    }
    app.post("/v1/channels/bad*name/publish", json!({"message": 1}))
        .await
        .problem(400, "invalid_name");
    app.post("/v1/channels/ok/publish", json!({}))
        .await
        .problem(422, "invalid_body");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_patterns_on_different_sockets_deliver_one_copy_each() {
    let app = TestApp::start().await;
    let mut sockets = Vec::new();
    for (i, pattern) in ["build.*", "*", "build.4?"].into_iter().enumerate() {
        let mut ws = connect(&app).await;
        send(
            &mut ws,
            json!({"op": "subscribe", "id": format!("s{i}"), "channel": pattern}),
        )
        .await;
        let m = next(&mut ws, Duration::from_secs(5)).await.unwrap();
        assert_eq!(m["type"], "subscribed", "{m}");
        sockets.push(ws);
    }
    // One socket with two overlapping patterns gets one copy per subscription of its own.
    let mut both = connect(&app).await;
    for (id, pattern) in [("a", "build.*"), ("b", "build.42")] {
        send(
            &mut both,
            json!({"op": "subscribe", "id": id, "channel": pattern}),
        )
        .await;
        assert_eq!(
            next(&mut both, Duration::from_secs(5)).await.unwrap()["type"],
            "subscribed"
        );
    }
    let r = app
        .post("/v1/channels/build.42/publish", json!({"message": {"n": 42}}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for (i, ws) in sockets.iter_mut().enumerate() {
        let mut got = Vec::new();
        while let Some(m) = next(ws, Duration::from_millis(700)).await {
            got.push(m);
        }
        assert_eq!(got.len(), 1, "socket {i}: {got:?}");
        assert_eq!(
            (&got[0]["id"], &got[0]["channel"]),
            (&json!(format!("s{i}")), &json!("build.42"))
        );
    }
    let mut got = Vec::new();
    while let Some(m) = next(&mut both, Duration::from_millis(700)).await {
        got.push(m["id"].as_str().unwrap().to_string());
    }
    got.sort();
    assert_eq!(got, ["a", "b"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_answering_pings_is_closed() {
    let mut cfg = crate::common::test_config(&crate::common::shared_redis_url());
    cfg.ws_ping_interval_ms = 200;
    let app = TestApp::with_config(cfg).await;
    // A client that keeps reading answers the server's pings and stays connected.
    let mut alive = connect(&app).await;
    send(&mut alive, json!({"op": "watch", "id": "w", "namespace": "ka"})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(100), alive.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => panic!("a live client was closed: {f:?}"),
            Ok(None) | Ok(Some(Err(_))) => panic!("a live client lost its socket"),
            _ => {}
        }
    }
    // One that reads nothing (so never answers) is closed with 4001 after ~3 intervals.
    let mut silent = connect(&app).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut pings = 0;
    let code = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match silent.next().await {
                Some(Ok(Message::Ping(_))) => pings += 1,
                Some(Ok(Message::Close(Some(f)))) => return Some(u16::from(f.code)),
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    })
    .await
    .expect("closed");
    assert_eq!(code, Some(4001), "after {pings} pings");
    assert!(pings >= 2, "{pings}");
}

fn rss_mib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_consumers_that_never_read_are_closed_and_memory_stays_bounded() {
    let app = TestApp::start().await;
    let mut sockets = Vec::new();
    for i in 0..40 {
        let mut ws = connect(&app).await;
        send(
            &mut ws,
            json!({"op": "watch", "id": format!("m{i}"), "namespace": "mem"}),
        )
        .await;
        assert_eq!(
            next(&mut ws, Duration::from_secs(5)).await.unwrap()["type"],
            "progress"
        );
        sockets.push(ws);
    }
    let before = rss_mib();
    // 48 MB of events for each of 40 sockets that read nothing: ~1.9 GB if the server queued
    // them all. Per connection it queues at most 4 MiB (and 1024 frames), then gives up.
    flood(&app, "mem", 60, 25, 32 * 1024).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = rss_mib().saturating_sub(before);
    assert!(grown < 600, "server memory grew by {grown} MiB");
    for (i, mut ws) in sockets.into_iter().enumerate() {
        // 4008 when the close frame still got out, else the socket was dropped.
        let code = close_code(&mut ws).await;
        assert!(matches!(code, Some(4008) | None), "socket {i}: {code:?}");
    }
    assert_eq!(app.get("/healthz").await.status, 200);
}

/// A client that stops reading entirely: once its socket buffers are full the server's write
/// makes no progress, and the consumer is dropped within the send timeout (or as soon as its
/// queue passes the budget meanwhile) — before the client reads again, not after the ping
/// timeout while holding its queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_socket_is_full_is_dropped_within_the_send_timeout() {
    let mut cfg = crate::common::test_config(&crate::common::shared_redis_url());
    cfg.ws_send_timeout_ms = 1000;
    cfg.ws_ping_interval_ms = 60_000;
    let app = TestApp::with_config(cfg).await;
    // Process-wide counter (other tests may add to it; it never goes down).
    let dropped = |m: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix("watch_clients_dropped_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let mut socks = Vec::new();
    for _ in 0..3 {
        let mut ws = connect(&app).await;
        send(&mut ws, json!({"op": "watch", "id": "w", "namespace": "full"})).await;
        assert_eq!(
            next(&mut ws, Duration::from_secs(5)).await.unwrap()["type"],
            "progress"
        );
        socks.push(ws); // not read again until the end
    }
    let before = dropped(&app.get("/metrics").await.text());
    flood(&app, "full", 24, 60, 16 * 1024).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while dropped(&app.get("/metrics").await.text()) < before + 3.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "three non-reading consumers not dropped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Their sockets are closed: what the kernel buffered, then the end.
    for mut ws in socks {
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(_)) => continue,
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "a dropped consumer's socket is still open");
    }
    assert_eq!(app.get("/healthz").await.status, 200);
}

/// An SSE consumer that falls too far behind gets a last `event: error` with code
/// `slow_consumer`, then the stream ends (it reconnects with Last-Event-ID).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sse_consumer_is_told_and_the_stream_ends() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::start().await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /v1/ns/ssef/events HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0u8; 4096];
    let n = s.read(&mut head).await.unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ~24 MB of events while the client reads nothing.
    flood(&app, "ssef", 24, 60, 16 * 1024).await;
    let mut all = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            all.extend_from_slice(&buf[..n]);
            // The chunked body's end.
            if all.ends_with(b"0\r\n\r\n") {
                return;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the stream did not end");
    let text = String::from_utf8_lossy(&all);
    let tail = &text[text.len().saturating_sub(400)..];
    assert!(
        tail.contains("event: error") && tail.contains("slow_consumer"),
        "{tail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_frames_report_running_totals_that_move_with_traffic() {
    let app = TestApp::start().await;
    let mut ws = connect(&app).await;
    send(&mut ws, json!({"op": "stats", "id": "st", "interval_ms": 500})).await;
    let first = next(&mut ws, Duration::from_secs(5))
        .await
        .expect("a stats frame");
    assert_eq!(
        (first["type"].as_str(), first["id"].as_str()),
        (Some("stats"), Some("st")),
        "{first}"
    );
    let totals = |f: &Value, k: &str| f["stats"][k].as_u64().unwrap_or_else(|| panic!("{k} in {f}"));
    assert!(totals(&first, "ws_connections") >= 1, "{first}");
    assert!(first["time"].is_string(), "{first}");
    // Ten requests, one of them a 404; then the next frame's totals have moved by at least that.
    for i in 0..9 {
        app.put(&format!("/v1/ns/st/kv/k{i}"), json!({"value": i})).await;
    }
    app.get("/v1/ns/st/kv/missing").await.problem(404, "not_found");
    let later = loop {
        let f = next(&mut ws, Duration::from_secs(5))
            .await
            .expect("another stats frame");
        assert_eq!(f["type"], "stats", "{f}");
        if totals(&f, "requests_total") >= totals(&first, "requests_total") + 10 {
            break f;
        }
    };
    assert!(
        totals(&later, "client_errors_total") > totals(&first, "client_errors_total"),
        "{later}"
    );
    // Out-of-range intervals and reused ids are refused; cancel stops the frames.
    send(&mut ws, json!({"op": "stats", "id": "fast", "interval_ms": 10})).await;
    let e = next(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (e["type"].as_str(), e["id"].as_str()),
        (Some("error"), Some("fast")),
        "{e}"
    );
    send(&mut ws, json!({"op": "cancel", "id": "st"})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    while next(&mut ws, Duration::from_millis(50)).await.is_some() {}
    assert!(
        next(&mut ws, Duration::from_millis(1200)).await.is_none(),
        "no frames after cancel"
    );
}
