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
    let running = json!({"fingerprint": fingerprint("", body.as_bytes()), "answer": null});
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
