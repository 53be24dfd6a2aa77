//! `Idempotency-Key` on mutating POSTs (DESIGN.md "What no peer does"): a repeat replays the
//! first answer with `Idempotent-Replayed: true`, a different body is 422, a repeat while the
//! first still runs is 409, long-polls ignore the key, records live 24 h beside their keys.

use fred::prelude::*;
use serde_json::{json, Value};
use swarmstate::domain::idempotency::{fingerprint, record_id, Home};

use crate::common::http::TestApp;
use crate::common::Resp;

async fn post_key(app: &TestApp, path: &str, key: &str, body: &str) -> Resp {
    app.req(
        "POST",
        path,
        &[("content-type", "application/json"), ("idempotency-key", key)],
        Some(body.as_bytes()),
    )
    .await
}

async fn ready(app: &TestApp, q: &str) -> u64 {
    app.get(&format!("/v1/queues/{q}")).await.json()["ready"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_enqueue_replays_the_first_answer() {
    let app = TestApp::start().await;
    let first = post_key(
        &app,
        "/v1/queues/jobs/tasks",
        "k-1",
        r#"{"payload": {"a": 1, "b": 2}}"#,
    )
    .await;
    assert_eq!(first.status, 201, "{}", first.text());
    assert_eq!(first.header("idempotent-replayed"), None);
    // The same JSON in another layout is the same request.
    let again = post_key(
        &app,
        "/v1/queues/jobs/tasks",
        "k-1",
        r#"{ "payload":{"b":2,"a":1} }"#,
    )
    .await;
    assert_eq!(again.status, 201, "{}", again.text());
    assert_eq!(again.header("idempotent-replayed").as_deref(), Some("true"));
    assert_eq!(again.header("content-type").as_deref(), Some("application/json"));
    assert_eq!(again.json(), first.json());
    assert_eq!(ready(&app, "jobs").await, 1, "one task, not two");

    // A different body under the same key: 422, nothing enqueued.
    post_key(&app, "/v1/queues/jobs/tasks", "k-1", r#"{"payload": 3}"#)
        .await
        .problem(422, "idempotency_key_reused");
    // The same key on another route is another request.
    let other = post_key(
        &app,
        "/v1/queues/other/tasks",
        "k-1",
        r#"{"payload": {"a": 1, "b": 2}}"#,
    )
    .await;
    assert_eq!(other.status, 201, "{}", other.text());
    assert_eq!(other.header("idempotent-replayed"), None);
    // Without the key, every POST runs.
    app.post("/v1/queues/jobs/tasks", json!({"payload": 4})).await;
    assert_eq!(ready(&app, "jobs").await, 2);

    // The record lives 24 h in the queue's slot.
    let id = record_id("anonymous", "POST", "/v1/queues/jobs/tasks", "k-1");
    let key = app.keys().idempotency(&Home::Queue("jobs".into()), &id);
    assert!(key.contains("{q:jobs}"), "{key}");
    let ttl: i64 = app.redis().await.pttl(&key).await.unwrap();
    assert!(ttl > 23 * 3600 * 1000 && ttl <= 24 * 3600 * 1000, "pttl {ttl}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_repeats_apply_once() {
    let app = TestApp::start().await;
    app.put("/v1/ns/c/kv/n", json!({"value": 0})).await;
    let body = r#"{"by": 5}"#;
    let answers =
        futures::future::join_all((0..16).map(|_| post_key(&app, "/v1/ns/c/counters/n/incr", "add-5", body)))
            .await;
    let mut ran = 0;
    for r in &answers {
        match r.status {
            200 if r.header("idempotent-replayed").is_none() => ran += 1,
            200 => assert_eq!(r.json()["value"], 5, "{}", r.text()),
            409 => {
                r.problem(409, "idempotency_key_in_flight");
                assert_eq!(r.header("retry-after").as_deref(), Some("1"));
            }
            s => panic!("{s}: {}", r.text()),
        }
    }
    assert_eq!(ran, 1, "exactly one of 16 ran");
    assert_eq!(app.get("/v1/ns/c/kv/n").await.json()["value"], 5);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_still_running_is_409_and_refusals_are_kept_too() {
    let app = TestApp::start().await;
    // A first request that is still running elsewhere: its reservation, as the service writes it.
    let body = r#"{"items": [{"key": "a", "value": 1}]}"#;
    let id = record_id("anonymous", "POST", "/v1/ns/r/batch/put", "slow");
    let key = app.keys().idempotency(&Home::Namespace("r".into()), &id);
    // The fingerprint covers the query and the headers that change a write (here content-type).
    let context = "\ncontent-type: application/json";
    let running = json!({"fingerprint": fingerprint(context, body.as_bytes()), "answer": null});
    let _: () = app
        .redis()
        .await
        .set(
            &key,
            running.to_string(),
            Some(Expiration::PX(60_000)),
            None,
            false,
        )
        .await
        .unwrap();
    let r = post_key(&app, "/v1/ns/r/batch/put", "slow", body).await;
    r.problem(409, "idempotency_key_in_flight");
    app.get("/v1/ns/r/kv/a").await.problem(404, "not_found");

    // A refusal is an answer too: the repeat gets the same 404, with its own path and id.
    app.put("/v1/ns/r/kv/doc", json!({"value": 1})).await;
    let no = post_key(&app, "/v1/ns/r/kv/doc/rollback", "rb", r#"{"version": 7}"#).await;
    no.problem(404, "not_found");
    let again = post_key(&app, "/v1/ns/r/kv/doc/rollback", "rb", r#"{"version": 7}"#).await;
    let p = again.problem(404, "not_found");
    assert_eq!(again.header("idempotent-replayed").as_deref(), Some("true"));
    assert_eq!(p["instance"], "/v1/ns/r/kv/doc/rollback");
    assert_eq!(p["request_id"].as_str(), again.header("x-request-id").as_deref());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_ignore_the_key_and_bad_keys_are_refused() {
    let app = TestApp::start().await;
    for i in 0..2 {
        app.post("/v1/queues/lp/tasks", json!({"payload": i})).await;
    }
    let lease = r#"{"worker": "w", "lease_ms": 30000}"#;
    let a = post_key(&app, "/v1/queues/lp/lease", "same", lease).await;
    let b = post_key(&app, "/v1/queues/lp/lease", "same", lease).await;
    let ids: Vec<Value> = [&a, &b]
        .iter()
        .map(|r| r.json()["tasks"][0]["id"].clone())
        .collect();
    assert_ne!(ids[0], ids[1], "each lease ran");
    assert_eq!(b.header("idempotent-replayed"), None);

    let long = "k".repeat(256);
    for bad in ["a b", long.as_str()] {
        post_key(&app, "/v1/queues/lp/tasks", bad, r#"{"payload": 1}"#)
            .await
            .problem(400, "invalid_argument");
    }
    assert_eq!(ready(&app, "lp").await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_not_kept_and_headers_are_part_of_the_request() {
    let app = TestApp::start().await;
    app.put("/v1/ns/h/kv/n", json!({"value": 0})).await;
    let incr = |fence: &'static str| {
        let app = &app;
        async move {
            app.req(
                "POST",
                "/v1/ns/h/counters/n/incr",
                &[
                    ("content-type", "application/json"),
                    ("idempotency-key", "fix-me"),
                    ("x-change-reason", fence),
                ],
                Some(br#"{"by": 1}"#),
            )
            .await
        }
    };
    // A malformed header is a 400 that ran nothing: the corrected request runs.
    let bad = app
        .req(
            "POST",
            "/v1/ns/h/counters/n/incr",
            &[
                ("content-type", "application/json"),
                ("idempotency-key", "fix-me"),
                ("x-fencing-token", "garbage"),
            ],
            Some(br#"{"by": 1}"#),
        )
        .await;
    bad.problem(400, "invalid_argument");
    let ok = incr("first").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.header("idempotent-replayed"), None);
    // The same body with another header that changes the write is another request.
    incr("second").await.problem(422, "idempotency_key_reused");
    assert_eq!(
        incr("first").await.header("idempotent-replayed").as_deref(),
        Some("true")
    );
    assert_eq!(app.get("/v1/ns/h/kv/n").await.json()["value"], 1);

    // The path as the router reads it: `%6Aobs` is the queue `jobs`.
    for path in ["/v1/queues/jobs/tasks", "/v1/queues/%6Aobs/tasks"] {
        post_key(&app, path, "enc", r#"{"payload": 1}"#).await;
    }
    assert_eq!(ready(&app, "jobs").await, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answers_and_clients_that_leave_do_not_apply_twice() {
    let app = TestApp::start().await;
    // A 1.2 MB answer (1000 entries of 900 bytes) is kept like any other.
    let big = "x".repeat(900);
    let items: Vec<Value> = (0..1000)
        .map(|i| json!({"key": format!("k{i}"), "value": big}))
        .collect();
    let body = json!({ "items": items }).to_string();
    let first = post_key(&app, "/v1/ns/big/batch/put", "big", &body).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert!(first.body.len() > 1_100_000, "{}", first.body.len());
    let again = post_key(&app, "/v1/ns/big/batch/put", "big", &body).await;
    assert_eq!(again.header("idempotent-replayed").as_deref(), Some("true"));
    assert_eq!(app.get("/v1/ns/big/kv/k999").await.json()["version"], 1);

    // A client that sends a large batch and goes away at once: the batch finishes and its answer
    // is kept, so the repeat replays it (409 while it still runs) instead of writing twice.
    let small: Vec<Value> = (0..1000)
        .map(|i| json!({"key": format!("g{i}"), "value": i}))
        .collect();
    let body = json!({ "items": small }).to_string();
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/ns/big/batch/put HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nidempotency-key: gone\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    use tokio::io::AsyncWriteExt;
    sock.write_all(head.as_bytes()).await.unwrap();
    sock.write_all(body.as_bytes()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    drop(sock);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = post_key(&app, "/v1/ns/big/batch/put", "gone", &body).await;
        match r.status {
            409 => {
                r.problem(409, "idempotency_key_in_flight");
                assert!(std::time::Instant::now() < deadline, "still in flight");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            200 => break,
            s => panic!("{s}: {}", r.text()),
        }
    }
    for k in ["g0", "g500", "g999"] {
        assert_eq!(
            app.get(&format!("/v1/ns/big/kv/{k}")).await.json()["version"],
            1,
            "{k}"
        );
    }
    app.stop().await;
}
