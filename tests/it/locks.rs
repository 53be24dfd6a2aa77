//! Locks with fencing tokens against real Redis.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_contending_clients_never_hold_the_lock_together() {
    let app = Arc::new(TestApp::start().await);
    let inside = Arc::new(AtomicBool::new(false));
    let overlaps = Arc::new(AtomicU64::new(0));
    let last_fence = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..20 {
        let (a, inside, overlaps, last_fence) =
            (app.clone(), inside.clone(), overlaps.clone(), last_fence.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                let r = a
                    .post(
                        "/v1/ns/lk/locks/m",
                        json!({"owner": format!("c{c}"), "ttl_ms": 10000, "wait_ms": 30000}),
                    )
                    .await;
                assert_eq!(r.status, 200, "{}", r.text());
                let g = r.json();
                // Fencing tokens only go up, in grant order.
                let f = g["fencing_token"].as_u64().unwrap();
                assert!(f > last_fence.swap(f, Ordering::SeqCst));
                if inside.swap(true, Ordering::SeqCst) {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                // A read-modify-write that only the lock makes safe.
                let cur = a.get("/v1/ns/lk/kv/n").await;
                let n = if cur.status == 200 {
                    cur.json()["value"].as_u64().unwrap()
                } else {
                    0
                };
                a.put("/v1/ns/lk/kv/n", json!({"value": n + 1})).await;
                inside.store(false, Ordering::SeqCst);
                let token = g["token"].as_str().unwrap().to_string();
                let r = a
                    .req("DELETE", "/v1/ns/lk/locks/m", &[("x-lock-token", &token)], None)
                    .await;
                assert_eq!(r.status, 204, "{}", r.text());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(overlaps.load(Ordering::SeqCst), 0);
    assert_eq!(app.get("/v1/ns/lk/kv/n").await.json()["value"], 100);
    assert_eq!(last_fence.load(Ordering::SeqCst), 100);
    app.get("/v1/ns/lk/locks/m").await.problem(404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_holder_renews_or_releases_and_tokens_survive_expiry() {
    let app = TestApp::start().await;
    let g = app
        .post("/v1/ns/lk2/locks/a", json!({"owner": "one", "ttl_ms": 400}))
        .await
        .json();
    let token = g["token"].as_str().unwrap().to_string();
    assert_eq!(g["fencing_token"], 1);
    let info = app.get("/v1/ns/lk2/locks/a").await.json();
    assert_eq!(
        (info["owner"].as_str(), info["fencing_token"].as_u64()),
        (Some("one"), Some(1))
    );
    assert!(
        info.get("token").is_none(),
        "GET must not reveal the token: {info}"
    );
    // Held: others get 409 at once, or after their wait.
    let t0 = Instant::now();
    app.post("/v1/ns/lk2/locks/a", json!({"owner": "two", "ttl_ms": 400}))
        .await
        .problem(409, "lock_held");
    // Not the holder: renew and release refused.
    app.post(
        "/v1/ns/lk2/locks/a/renew",
        json!({"token": "nope", "ttl_ms": 1000}),
    )
    .await
    .problem(409, "lock_held");
    app.req("DELETE", "/v1/ns/lk2/locks/a", &[("x-lock-token", "nope")], None)
        .await
        .problem(409, "lock_held");
    app.req("DELETE", "/v1/ns/lk2/locks/a", &[], None)
        .await
        .problem(400, "invalid_argument");
    // The holder renews.
    let r = app
        .post("/v1/ns/lk2/locks/a/renew", json!({"token": token, "ttl_ms": 400}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["fencing_token"], 1);
    // It expires; a waiter gets it when it does, with a higher fencing token.
    let r = app
        .post(
            "/v1/ns/lk2/locks/a",
            json!({"owner": "two", "ttl_ms": 5000, "wait_ms": 5000}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(t0.elapsed() >= Duration::from_millis(400));
    assert_eq!(r.json()["fencing_token"], 2);
    // The old holder can no longer renew or release.
    app.post(
        "/v1/ns/lk2/locks/a/renew",
        json!({"token": token, "ttl_ms": 1000}),
    )
    .await
    .problem(409, "lock_held");
    // Released by its holder → a waiter is woken at once, not at the TTL.
    let token2 = r.json()["token"].as_str().unwrap().to_string();
    let a = Arc::new(app);
    let a2 = a.clone();
    let waiter = tokio::spawn(async move {
        let t = Instant::now();
        let r = a2
            .post(
                "/v1/ns/lk2/locks/a",
                json!({"owner": "three", "ttl_ms": 5000, "wait_ms": 20000}),
            )
            .await;
        (r.status, r.json()["fencing_token"].clone(), t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let released = Instant::now();
    assert_eq!(
        a.req("DELETE", "/v1/ns/lk2/locks/a", &[("x-lock-token", &token2)], None)
            .await
            .status,
        204
    );
    let (status, fence, waited) = waiter.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(fence, 3);
    assert!(
        waited < Duration::from_millis(3000),
        "woken by the TTL, not the release: {waited:?}"
    );
    assert!(released.elapsed() < Duration::from_millis(1000));
    // Bad input.
    a.post("/v1/ns/lk2/locks/a", json!({"owner": "x", "ttl_ms": 0}))
        .await
        .problem(400, "invalid_argument");
    a.post("/v1/ns/lk2/locks/B*d", json!({"owner": "x", "ttl_ms": 10}))
        .await
        .problem(400, "invalid_name");
    a.post("/v1/ns/lk2/locks/a", json!({"owner": "x"}))
        .await
        .problem(422, "invalid_body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_with_an_old_fencing_token_cannot_write_after_a_new_holder_took_over() {
    let app = TestApp::start().await;
    let old = app
        .post("/v1/ns/fz/locks/leader", json!({"owner": "a", "ttl_ms": 300}))
        .await
        .json();
    let old_fence = format!("leader:{}", old["fencing_token"]);
    let r = app
        .put_h(
            "/v1/ns/fz/kv/config",
            &[("x-fencing-token", &old_fence)],
            json!({"value": "from a"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    // `a` pauses past its TTL; `b` takes the lock.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let new = app
        .post("/v1/ns/fz/locks/leader", json!({"owner": "b", "ttl_ms": 30000}))
        .await
        .json();
    let new_fence = format!("leader:{}", new["fencing_token"]);
    assert_eq!(new["fencing_token"], 2);
    // a's late writes are refused inside the write's own function: nothing changes.
    let before = app.get("/v1/ns/fz/kv/config").await.json();
    app.put_h(
        "/v1/ns/fz/kv/config",
        &[("x-fencing-token", &old_fence)],
        json!({"value": "late a"}),
    )
    .await
    .problem(409, "stale_fencing_token");
    app.req(
        "DELETE",
        "/v1/ns/fz/kv/config",
        &[("x-fencing-token", &old_fence)],
        None,
    )
    .await
    .problem(409, "stale_fencing_token");
    let txn = json!({"success": [{"op": "put", "key": "other", "value": 1}]});
    app.req(
        "POST",
        "/v1/ns/fz/txn",
        &[
            ("x-fencing-token", &old_fence),
            ("content-type", "application/json"),
        ],
        Some(txn.to_string().as_bytes()),
    )
    .await
    .problem(409, "stale_fencing_token");
    app.req(
        "POST",
        "/v1/ns/fz/counters/c/incr",
        &[
            ("x-fencing-token", &old_fence),
            ("content-type", "application/json"),
        ],
        Some(br#"{"by": 1}"#),
    )
    .await
    .problem(409, "stale_fencing_token");
    assert_eq!(app.get("/v1/ns/fz/kv/config").await.json(), before);
    app.get("/v1/ns/fz/kv/other").await.problem(404, "not_found");
    // b's write with the new token succeeds; a token never granted is refused too.
    let r = app
        .put_h(
            "/v1/ns/fz/kv/config",
            &[("x-fencing-token", &new_fence)],
            json!({"value": "from b"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    app.put_h(
        "/v1/ns/fz/kv/config",
        &[("x-fencing-token", "leader:99")],
        json!({"value": "x"}),
    )
    .await
    .problem(409, "stale_fencing_token");
    app.put_h(
        "/v1/ns/fz/kv/config",
        &[("x-fencing-token", "nonsense")],
        json!({"value": "x"}),
    )
    .await
    .problem(400, "invalid_argument");
    assert_eq!(app.get("/v1/ns/fz/kv/config").await.json()["value"], "from b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_acks_check_fencing_tokens_too() {
    let app = TestApp::start().await;
    // The lock lives in the namespace named like the queue ("fq"), or is named with ns/lock.
    let old = app
        .post("/v1/ns/fq/locks/owner", json!({"owner": "a", "ttl_ms": 200}))
        .await
        .json();
    app.post("/v1/queues/fq/tasks", json!({"payload": 1})).await;
    let t = app
        .post("/v1/queues/fq/lease", json!({"worker": "a", "lease_ms": 60000}))
        .await
        .json()["tasks"][0]
        .clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new = app
        .post("/v1/ns/fq/locks/owner", json!({"owner": "b", "ttl_ms": 60000}))
        .await
        .json();
    assert_eq!(new["fencing_token"], 2);
    let id = t["id"].as_str().unwrap();
    let body = json!({"lease_token": t["lease_token"]}).to_string();
    let stale = format!("owner:{}", old["fencing_token"]);
    if crate::common::topology::topology() == crate::common::topology::Topology::Cluster {
        // The lock and the queue live in different slots: refused up front, documented.
        let p = app
            .req(
                "POST",
                &format!("/v1/queues/fq/tasks/{id}/ack"),
                &[
                    ("x-fencing-token", "owner:2"),
                    ("content-type", "application/json"),
                ],
                Some(body.as_bytes()),
            )
            .await
            .problem(400, "invalid_argument");
        assert!(p["detail"].as_str().unwrap().contains("Redis Cluster"), "{p}");
        return;
    }
    for fence in [stale.as_str(), "fq/owner:1"] {
        app.req(
            "POST",
            &format!("/v1/queues/fq/tasks/{id}/ack"),
            &[("x-fencing-token", fence), ("content-type", "application/json")],
            Some(body.as_bytes()),
        )
        .await
        .problem(409, "stale_fencing_token");
    }
    // Refused inside the function: the task is still leased.
    assert_eq!(
        app.get(&format!("/v1/queues/fq/tasks/{id}")).await.json()["state"],
        "leased"
    );
    let r = app
        .req(
            "POST",
            &format!("/v1/queues/fq/tasks/{id}/ack"),
            &[
                ("x-fencing-token", "fq/owner:2"),
                ("content-type", "application/json"),
            ],
            Some(body.as_bytes()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_partition_events_reach_the_watch_socket() {
    let app = TestApp::start().await;
    let mut ws = crate::common::ws::connect(&app).await;
    crate::common::ws::send(
        &mut ws,
        json!({"op": "subscribe", "id": "l", "channel": "locks.*"}),
    )
    .await;
    crate::common::ws::send(
        &mut ws,
        json!({"op": "subscribe", "id": "p", "channel": "partitions.*"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let g = app
        .post("/v1/ns/ev/locks/door", json!({"owner": "a", "ttl_ms": 5000}))
        .await
        .json();
    let token = g["token"].as_str().unwrap().to_string();
    app.req(
        "DELETE",
        "/v1/ns/ev/locks/door",
        &[("x-lock-token", &token)],
        None,
    )
    .await;
    app.post(
        "/v1/partitions",
        json!({"name": "evp", "owner_agent": "a", "quota_bytes": 100, "tier": "shared"}),
    )
    .await;
    let mut got = Vec::new();
    while let Some(m) = crate::common::ws::next(&mut ws, Duration::from_millis(700)).await {
        if m["type"] == "message" {
            got.push((
                m["channel"].as_str().unwrap().to_string(),
                m["payload"]["event"].as_str().unwrap().to_string(),
            ));
        }
    }
    // Order holds per channel; across channels it does not on Redis Cluster (each message
    // reaches the subscriber's node over the cluster bus from the node that published it).
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            ("locks.ev.door".to_string(), "acquired".to_string()),
            ("locks.ev.door".to_string(), "released".to_string()),
            ("partitions.evp".to_string(), "created".to_string())
        ]
    );
}
