//! Task queues against real Redis: ordering, delays, retries with backoff, dead letters,
//! idempotency, long-poll wakeups, lease tokens, concurrent workers and a killed service.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{free_port, RedisServer, TestApp};

async fn enqueue(app: &TestApp, q: &str, body: Value) -> Value {
    let r = app.post(&format!("/v1/queues/{q}/tasks"), body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

async fn lease(app: &TestApp, q: &str, body: Value) -> Vec<Value> {
    let r = app.post(&format!("/v1/queues/{q}/lease"), body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["tasks"].as_array().unwrap().clone()
}

async fn lease_one(app: &TestApp, q: &str) -> Option<Value> {
    lease(app, q, json!({"worker": "w", "lease_ms": 30000}))
        .await
        .into_iter()
        .next()
}

async fn ack(app: &TestApp, q: &str, t: &Value, result: Value) -> crate::common::Resp {
    app.post(
        &format!("/v1/queues/{q}/tasks/{}/ack", t["id"].as_str().unwrap()),
        json!({"lease_token": t["lease_token"], "result": result}),
    )
    .await
}

async fn nack(app: &TestApp, q: &str, t: &Value, error: &str) -> Value {
    let r = app
        .post(
            &format!("/v1/queues/{q}/tasks/{}/nack", t["id"].as_str().unwrap()),
            json!({"lease_token": t["lease_token"], "error": error}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_order_then_fifo_within_a_priority() {
    let app = TestApp::start().await;
    let plan = [
        (5, "a"),
        (1, "b"),
        (5, "c"),
        (0, "d"),
        (9, "e"),
        (1, "f"),
        (5, "g"),
    ];
    for (p, name) in plan {
        enqueue(&app, "prio", json!({"payload": {"n": name}, "priority": p})).await;
    }
    let mut order = Vec::new();
    while let Some(t) = lease_one(&app, "prio").await {
        assert_eq!(t["state"], "leased");
        assert_eq!(t["attempts"], 1);
        assert!(t["lease_token"].is_string());
        order.push(t["payload"]["n"].as_str().unwrap().to_string());
    }
    assert_eq!(order, ["d", "b", "f", "a", "c", "g", "e"]);
    // max_tasks takes several at once, in the same order.
    for i in 0..5 {
        enqueue(&app, "batch", json!({"payload": i})).await;
    }
    let got = lease(
        &app,
        "batch",
        json!({"worker": "w", "lease_ms": 1000, "max_tasks": 3}),
    )
    .await;
    let payloads: Vec<&Value> = got.iter().map(|t| &t["payload"]).collect();
    assert_eq!(payloads, [&json!(0), &json!(1), &json!(2)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_tasks_start_no_earlier_than_run_at() {
    let app = TestApp::start().await;
    let t0 = Instant::now();
    let t = enqueue(&app, "later", json!({"payload": 1, "delay_ms": 600})).await;
    assert_eq!(t["state"], "delayed");
    let run_at = humantime::parse_rfc3339_weak(t["run_at"].as_str().unwrap()).unwrap();
    assert!(lease_one(&app, "later").await.is_none(), "leased before run_at");
    // A long-poll sleeps until the task is due and returns it then, not before.
    let got = lease(
        &app,
        "later",
        json!({"worker": "w", "lease_ms": 1000, "wait_ms": 5000}),
    )
    .await;
    assert_eq!(got.len(), 1);
    assert!(std::time::SystemTime::now() >= run_at);
    assert!(t0.elapsed() >= Duration::from_millis(600));
    assert!(t0.elapsed() < Duration::from_millis(3000), "{:?}", t0.elapsed());
    // run_at as RFC 3339 and as unix ms; both with delay_ms is refused.
    let soon = std::time::SystemTime::now() + Duration::from_millis(300);
    let t = enqueue(
        &app,
        "later",
        json!({"run_at": humantime::format_rfc3339_millis(soon).to_string()}),
    )
    .await;
    assert_eq!(t["state"], "delayed");
    let ms = soon.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let t = enqueue(&app, "later", json!({"run_at": ms})).await;
    assert_eq!(t["state"], "delayed");
    app.post("/v1/queues/later/tasks", json!({"run_at": ms, "delay_ms": 5}))
        .await
        .problem(400, "invalid_argument");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_back_off_doubling_then_dead_letter_and_retry_from_it() {
    let app = TestApp::start().await;
    let id = enqueue(
        &app,
        "flaky",
        json!({"payload": "x", "max_attempts": 3, "backoff_ms": 200}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut gaps = Vec::new();
    let mut failed_at = Instant::now();
    for attempt in 1..=3 {
        let t = lease(
            &app,
            "flaky",
            json!({"worker": "w", "lease_ms": 5000, "wait_ms": 5000}),
        )
        .await;
        assert_eq!(t.len(), 1, "attempt {attempt}");
        if attempt > 1 {
            gaps.push(failed_at.elapsed());
        }
        assert_eq!(t[0]["attempts"], attempt);
        // The backoff starts when the server records the nack, after the request leaves:
        // timing from before it keeps the lower bounds below exact.
        failed_at = Instant::now();
        let after = nack(&app, "flaky", &t[0], &format!("boom {attempt}")).await;
        if attempt < 3 {
            assert_eq!(after["state"], "failed", "{after}");
        } else {
            assert_eq!(after["state"], "dead", "{after}");
        }
    }
    // Backoff 200 ms then 400 ms: each retry waits at least its delay, the second about twice
    // the first.
    assert!(gaps[0] >= Duration::from_millis(200), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(400), "{gaps:?}");
    assert!(gaps[1] > gaps[0] + Duration::from_millis(100), "{gaps:?}");
    // Dead: listed with its last error, never leased again.
    assert!(lease_one(&app, "flaky").await.is_none());
    let dead = app.get("/v1/queues/flaky/dead").await.json();
    assert_eq!(dead["total"], 1);
    assert_eq!(dead["items"][0]["id"], id.as_str());
    assert_eq!(dead["items"][0]["last_error"], "boom 3");
    assert_eq!(dead["items"][0]["attempts"], 3);
    let stats = app.get("/v1/queues/flaky").await.json();
    assert_eq!(
        (stats["dead"].as_u64(), stats["failed_total"].as_u64()),
        (Some(1), Some(3))
    );
    // Retry from the dead-letter list: ready again with fresh attempts; then it succeeds.
    let r = app
        .post(&format!("/v1/queues/flaky/dead/{id}/retry"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "ready");
    app.post(&format!("/v1/queues/flaky/dead/{id}/retry"), json!({}))
        .await
        .problem(404, "not_found");
    let t = lease_one(&app, "flaky").await.expect("retried task");
    assert_eq!(t["attempts"], 1);
    assert_eq!(ack(&app, "flaky", &t, json!({"ok": true})).await.status, 200);
    let done = app.get(&format!("/v1/queues/flaky/tasks/{id}")).await.json();
    assert_eq!(done["state"], "completed");
    assert_eq!(done["result"], json!({"ok": true}));
    // Purge.
    let t = enqueue(&app, "flaky", json!({"max_attempts": 1})).await;
    let l = lease_one(&app, "flaky").await.unwrap();
    assert_eq!(l["id"], t["id"]);
    nack(&app, "flaky", &l, "x").await;
    let r = app.delete("/v1/queues/flaky/dead").await;
    assert_eq!(r.json()["purged"], 1);
    assert_eq!(app.get("/v1/queues/flaky/dead").await.json()["total"], 0);
    app.get(&format!("/v1/queues/flaky/tasks/{}", t["id"].as_str().unwrap()))
        .await
        .problem(404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_returns_the_same_task() {
    let app = TestApp::start().await;
    let first = enqueue(
        &app,
        "idem",
        json!({"payload": {"v": 1}, "idempotency_key": "order-42"}),
    )
    .await;
    let again = app
        .post(
            "/v1/queues/idem/tasks",
            json!({"payload": {"v": 2}, "idempotency_key": "order-42"}),
        )
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["id"], first["id"]);
    assert_eq!(again.json()["payload"], json!({"v": 1}));
    let other = enqueue(&app, "idem", json!({"payload": 3, "idempotency_key": "order-43"})).await;
    assert_ne!(other["id"], first["id"]);
    let stats = app.get("/v1/queues/idem").await.json();
    assert_eq!(stats["ready"], 2);
    assert_eq!(stats["enqueued_total"], 2);
    // Retention: a completed task (and its result) is readable until retention_ms has passed,
    // then removed, and its idempotency key can be used again.
    let t = enqueue(
        &app,
        "ret",
        json!({"payload": 1, "retention_ms": 300, "idempotency_key": "k"}),
    )
    .await;
    let id = t["id"].as_str().unwrap().to_string();
    let l = lease_one(&app, "ret").await.unwrap();
    assert_eq!(ack(&app, "ret", &l, json!({"answer": 42})).await.status, 200);
    let got = app.get(&format!("/v1/queues/ret/tasks/{id}")).await.json();
    assert_eq!(got["result"], json!({"answer": 42}));
    assert!(got["finished_at"].is_string());
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.get(&format!("/v1/queues/ret/tasks/{id}")).await.status != 404 {
        assert!(Instant::now() < deadline, "completed task outlived its retention");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = enqueue(&app, "ret", json!({"payload": 2, "idempotency_key": "k"})).await;
    assert_ne!(again["id"], id.as_str());
    assert_eq!(app.get("/v1/queues/ret").await.json()["completed"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_returns_as_soon_as_a_task_is_enqueued() {
    let app = Arc::new(TestApp::start().await);
    let mut delays = Vec::new();
    for i in 0..5 {
        let a = app.clone();
        let poll = tokio::spawn(async move {
            let t0 = Instant::now();
            let got = lease(
                &a,
                "wake",
                json!({"worker": "w", "lease_ms": 60000, "wait_ms": 20000}),
            )
            .await;
            (got, Instant::now(), t0)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        enqueue(&app, "wake", json!({"payload": i})).await;
        let enqueued = Instant::now();
        let (got, returned, started) = poll.await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["payload"], i);
        assert!(
            returned - started >= Duration::from_millis(250),
            "returned before the enqueue"
        );
        delays.push(returned.saturating_duration_since(enqueued));
    }
    delays.sort();
    // The median wake-up (enqueue answered → lease answered) is well under 50 ms: woken by
    // the enqueue's notification, not by polling.
    assert!(delays[2] < Duration::from_millis(50), "{delays:?}");
    // An empty long-poll ends after wait_ms with no tasks.
    let t0 = Instant::now();
    let got = lease(
        &app,
        "empty",
        json!({"worker": "w", "lease_ms": 1000, "wait_ms": 300}),
    )
    .await;
    assert!(got.is_empty());
    assert!(t0.elapsed() >= Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_lease_tokens_are_refused_and_change_nothing() {
    let app = TestApp::start().await;
    let t = enqueue(&app, "tok", json!({"payload": 1, "max_attempts": 5})).await;
    let id = t["id"].as_str().unwrap().to_string();
    let first = lease(&app, "tok", json!({"worker": "a", "lease_ms": 300}))
        .await
        .remove(0);
    // Wrong token: 409, task untouched.
    let r = app
        .post(
            &format!("/v1/queues/tok/tasks/{id}/ack"),
            json!({"lease_token": "nope"}),
        )
        .await;
    r.problem(409, "lease_lost");
    assert_eq!(
        app.get(&format!("/v1/queues/tok/tasks/{id}")).await.json()["state"],
        "leased"
    );
    // The lease expires; the task is leased again (the expired attempt counts).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = lease(&app, "tok", json!({"worker": "b", "lease_ms": 30000}))
        .await
        .remove(0);
    assert_eq!(second["id"], id.as_str());
    assert_eq!(second["attempts"], 2);
    assert_eq!(second["lease_owner"], "b");
    // The first worker's ack, nack and extend are all refused; the second's lease stands.
    ack(&app, "tok", &first, json!(1))
        .await
        .problem(409, "lease_lost");
    let r = app
        .post(
            &format!("/v1/queues/tok/tasks/{id}/nack"),
            json!({"lease_token": first["lease_token"], "error": "late"}),
        )
        .await;
    r.problem(409, "lease_lost");
    let r = app
        .post(
            &format!("/v1/queues/tok/tasks/{id}/extend"),
            json!({"lease_token": first["lease_token"], "lease_ms": 1000}),
        )
        .await;
    r.problem(409, "lease_lost");
    let now = app.get(&format!("/v1/queues/tok/tasks/{id}")).await.json();
    assert_eq!(
        (now["state"].as_str(), now["lease_owner"].as_str()),
        (Some("leased"), Some("b"))
    );
    assert!(
        now.get("last_error")
            .map(|e| e == "lease expired")
            .unwrap_or(false),
        "{now}"
    );
    // Extend by the holder, then ack once; a second ack with the same token is refused.
    let r = app
        .post(
            &format!("/v1/queues/tok/tasks/{id}/extend"),
            json!({"lease_token": second["lease_token"], "lease_ms": 60000}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(ack(&app, "tok", &second, json!("done")).await.status, 200);
    ack(&app, "tok", &second, json!("again"))
        .await
        .problem(409, "lease_lost");
    assert_eq!(
        app.get(&format!("/v1/queues/tok/tasks/{id}")).await.json()["result"],
        "done"
    );
    // Unknown task and malformed bodies.
    app.post("/v1/queues/tok/tasks/999/ack", json!({"lease_token": "x"}))
        .await
        .problem(404, "not_found");
    app.post("/v1/queues/tok/tasks/abc/ack", json!({"lease_token": "x"}))
        .await
        .problem(404, "not_found");
    app.post("/v1/queues/tok/lease", json!({"worker": "w"}))
        .await
        .problem(422, "invalid_body");
    app.post(
        "/v1/queues/tok/lease",
        json!({"worker": "w", "lease_ms": 10, "max_tasks": 0}),
    )
    .await
    .problem(400, "invalid_argument");
    app.post("/v1/queues/tok/tasks", json!({"priority": 10}))
        .await
        .problem(400, "invalid_argument");
    app.post("/v1/queues/B*d/tasks", json!({}))
        .await
        .problem(400, "invalid_name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_leases_count_as_attempts_and_dead_letter_the_task() {
    let app = TestApp::start().await;
    let t = enqueue(&app, "exp", json!({"payload": 1, "max_attempts": 2})).await;
    for _ in 0..2 {
        let got = lease(
            &app,
            "exp",
            json!({"worker": "w", "lease_ms": 100, "wait_ms": 3000}),
        )
        .await;
        assert_eq!(got.len(), 1);
    }
    // Nobody acks: the idle queue's reaper dead-letters it after the second expiry.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = app
            .get(&format!("/v1/queues/exp/tasks/{}", t["id"].as_str().unwrap()))
            .await
            .json();
        if now["state"] == "dead" {
            assert_eq!(now["last_error"], "lease expired");
            assert_eq!(now["attempts"], 2);
            break;
        }
        assert!(Instant::now() < deadline, "{now}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.get("/v1/queues/exp").await.json()["lease_expired_total"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_leasing_until_resumed_and_events_report_each_state_change() {
    let app = TestApp::start().await;
    let mut ws = crate::common::ws::connect(&app).await;
    crate::common::ws::send(&mut ws, json!({"op": "queue", "id": "q1", "queue": "pz"})).await;
    let ack_msg = crate::common::ws::next(&mut ws, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(ack_msg["type"], "progress", "{ack_msg}");
    assert_eq!(
        app.post("/v1/queues/pz/pause", json!({})).await.json()["paused"],
        true
    );
    let t = enqueue(&app, "pz", json!({"payload": 1})).await;
    assert!(lease_one(&app, "pz").await.is_none(), "leased while paused");
    let a = Arc::new(app);
    let a2 = a.clone();
    let poll = tokio::spawn(async move {
        lease(
            &a2,
            "pz",
            json!({"worker": "w", "lease_ms": 5000, "wait_ms": 10000}),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        a.post("/v1/queues/pz/resume", json!({})).await.json()["paused"],
        false
    );
    let got = poll.await.unwrap();
    assert_eq!(got.len(), 1, "resume wakes the long-poll");
    assert_eq!(ack(&a, "pz", &got[0], json!(null)).await.status, 200);
    // The socket saw ready → leased → completed for the task.
    let mut states = Vec::new();
    while let Some(m) = crate::common::ws::next(&mut ws, Duration::from_millis(500)).await {
        if m["type"] == "task" {
            assert_eq!(m["id"], "q1");
            assert_eq!(m["task"]["id"], t["id"]);
            assert_eq!(m["task"]["queue"], "pz");
            states.push(m["task"]["state"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(states, ["ready", "leased", "completed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_workers_two_thousand_tasks_some_leases_abandoned_none_lost() {
    use rand::{Rng, SeedableRng};
    let app = Arc::new(TestApp::start().await);
    const N: usize = 2000;
    for chunk in 0..(N / 100) {
        let mut handles = Vec::new();
        for i in 0..100 {
            let a = app.clone();
            handles.push(tokio::spawn(async move {
                enqueue(
                    &a,
                    "swarm",
                    json!({"payload": chunk * 100 + i, "max_attempts": 20}),
                )
                .await
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
    }
    // id -> deliveries, abandons, successful acks
    let deliveries = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let abandoned = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let acked = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let mut workers = Vec::new();
    for w in 0..20u64 {
        let (a, d, ab, ac) = (app.clone(), deliveries.clone(), abandoned.clone(), acked.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(w);
            let mut idle = 0;
            while idle < 3 {
                let got = lease(
                    &a,
                    "swarm",
                    json!({"worker": format!("w{w}"), "lease_ms": 2500, "max_tasks": 5, "wait_ms": 1500}),
                )
                .await;
                if got.is_empty() {
                    idle += 1;
                    continue;
                }
                idle = 0;
                for t in got {
                    let id = t["id"].as_str().unwrap().to_string();
                    *d.lock().unwrap().entry(id.clone()).or_default() += 1;
                    if rng.random_bool(0.05) {
                        // Walk away from the lease: it must come back to someone else.
                        *ab.lock().unwrap().entry(id).or_default() += 1;
                        continue;
                    }
                    let r = ack(&a, "swarm", &t, json!({"by": w})).await;
                    assert_eq!(r.status, 200, "ack of a live lease: {}", r.text());
                    *ac.lock().unwrap().entry(id).or_default() += 1;
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    let deliveries = deliveries.lock().unwrap().clone();
    let abandoned = abandoned.lock().unwrap().clone();
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), N, "every task completed");
    assert!(acked.values().all(|n| *n == 1), "each acked once");
    let total_abandoned: u32 = abandoned.values().sum();
    assert!(total_abandoned > 0, "the test abandoned no lease");
    let mut duplicates = 0;
    for (id, n) in &deliveries {
        let ab = abandoned.get(id).copied().unwrap_or(0);
        assert_eq!(*n, 1 + ab, "task {id}: delivered {n} times, abandoned {ab}");
        duplicates += n - 1;
    }
    assert_eq!(
        duplicates, total_abandoned,
        "duplicates only for abandoned leases"
    );
    let s = app.get("/v1/queues/swarm").await.json();
    assert_eq!(s["completed"], N as u64, "{s}");
    for k in ["ready", "delayed", "failed", "leased", "dead"] {
        assert_eq!(s[k], 0, "{k}: {s}");
    }
    assert_eq!(s["lease_expired_total"], total_abandoned as u64, "{s}");
    eprintln!("{N} tasks, {total_abandoned} abandoned leases, all redelivered and completed once");
}

/// The real binary, so it can be SIGKILLed.
fn spawn_service(port: u16, redis_url: &str, prefix: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_swarmstate"))
        .arg("serve")
        .env("SWARMSTATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SWARMSTATE_REDIS_URL", redis_url)
        .env("SWARMSTATE_KEY_PREFIX", prefix)
        .env("SWARMSTATE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("swarmstate binary")
}

async fn wait_ready(app: &TestApp) {
    for _ in 0..200 {
        if let Some(r) = app.try_req("GET", "/readyz", None).await {
            if r.status == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("service did not come up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_killed_mid_run_every_acknowledged_enqueue_still_completes() {
    let redis = RedisServer::start(&[]);
    let port = free_port();
    let prefix = format!("kill{}", std::process::id());
    let mut child = spawn_service(port, &redis.url(), &prefix);
    let app = Arc::new(TestApp::remote(
        &format!("http://127.0.0.1:{port}"),
        &prefix,
        &redis.url(),
    ));
    wait_ready(&app).await;

    let accepted = Arc::new(Mutex::new(HashSet::<String>::new()));
    let completed = Arc::new(Mutex::new(HashSet::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Producers: enqueue until told to stop; a 201 is an acknowledged enqueue.
    let mut tasks = Vec::new();
    for p in 0..3 {
        let (a, acc, stop) = (app.clone(), accepted.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let body = json!({"payload": {"p": p, "i": i}, "max_attempts": 50});
                if let Some(r) = a.try_req("POST", "/v1/queues/k/tasks", Some(body)).await {
                    if r.status == 201 {
                        acc.lock()
                            .unwrap()
                            .insert(r.json()["id"].as_str().unwrap().to_string());
                    }
                } else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    // Workers: lease and ack, riding out the outage.
    for w in 0..4 {
        let (a, done) = (app.clone(), completed.clone());
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                let body =
                    json!({"worker": format!("w{w}"), "lease_ms": 2000, "max_tasks": 10, "wait_ms": 500});
                let Some(r) = a.try_req("POST", "/v1/queues/k/lease", Some(body)).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                if r.status != 200 {
                    continue;
                }
                let got = r.json()["tasks"].as_array().cloned().unwrap_or_default();
                for t in got {
                    let id = t["id"].as_str().unwrap().to_string();
                    let body = json!({"lease_token": t["lease_token"]});
                    if let Some(r) = a
                        .try_req("POST", &format!("/v1/queues/k/tasks/{id}/ack"), Some(body))
                        .await
                    {
                        if r.status == 200 {
                            done.lock().unwrap().insert(id);
                        }
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_kill = accepted.lock().unwrap().len();
    assert!(before_kill > 50, "only {before_kill} enqueues before the kill");
    // SIGKILL mid-run, restart after a moment.
    child.kill().unwrap();
    child.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut child = spawn_service(port, &redis.url(), &prefix);
    wait_ready(&app).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // Wait until every acknowledged enqueue has been completed (leases held by acks lost in
    // the kill expire after 2 s and are handed out again).
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let missing: Vec<String> = {
            let acc = accepted.lock().unwrap();
            let done = completed.lock().unwrap();
            acc.iter().filter(|id| !done.contains(*id)).cloned().collect()
        };
        if missing.is_empty() {
            break;
        }
        // An ack may have landed in Redis although its response was lost in the kill.
        let mut really_missing = Vec::new();
        for id in &missing {
            if let Some(r) = app
                .try_req("GET", &format!("/v1/queues/k/tasks/{id}"), None)
                .await
            {
                if r.status == 200 && r.json()["state"] == "completed" {
                    completed.lock().unwrap().insert(id.clone());
                    continue;
                }
            }
            really_missing.push(id.clone());
        }
        if really_missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} acknowledged tasks never completed: {:?}",
            really_missing.len(),
            &really_missing[..really_missing.len().min(10)]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for t in tasks {
        t.abort();
    }
    let accepted = accepted.lock().unwrap().len();
    let stats = app.try_req("GET", "/v1/queues/k", None).await.unwrap().json();
    assert!(stats["completed"].as_u64().unwrap() >= accepted as u64, "{stats}");
    assert_eq!(stats["dead"], 0, "{stats}");
    eprintln!("{accepted} acknowledged enqueues ({before_kill} before the kill), all completed: {stats}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_events_as_sse_and_queue_metrics() {
    let app = TestApp::start().await;
    let (status, mut body) = app.stream("/v1/queues/sq/events", &[]).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = enqueue(&app, "sq", json!({"payload": "p"})).await;
    let l = lease_one(&app, "sq").await.unwrap();
    assert_eq!(ack(&app, "sq", &l, json!(1)).await.status, 200);
    let events = crate::common::ws::sse_events(&mut body, 3, Duration::from_secs(5)).await;
    let states: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e.1 == "task")
        .map(|e| (e.2["id"].as_str().unwrap(), e.2["state"].as_str().unwrap()))
        .collect();
    let id = t["id"].as_str().unwrap();
    assert_eq!(states, [(id, "ready"), (id, "leased"), (id, "completed")]);
    // The reaper refreshes the queue gauges and totals within a second or so.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = app.get("/metrics").await.text();
        let has = |needle: &str| m.lines().any(|l| l.starts_with(needle));
        if has(r#"queue_tasks{queue="sq",state="completed"} 1"#)
            && has(r#"queue_tasks_completed_total{queue="sq"} 1"#)
            && has(r#"queue_tasks_enqueued_total{queue="sq"} 1"#)
            && has(r#"queue_lease_wait_seconds_count{queue="sq"}"#)
        {
            break;
        }
        assert!(Instant::now() < deadline, "queue metrics missing:\n{m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_doubling_is_capped_at_one_day() {
    let app = TestApp::start().await;
    let t = enqueue(&app, "cap", json!({"max_attempts": 50, "backoff_ms": 86_400_000})).await;
    let id = t["id"].as_str().unwrap().to_string();
    for _ in 0..3 {
        let l = lease_one(&app, "cap").await.expect("leasable");
        let r = app
            .post(
                &format!("/v1/queues/cap/tasks/{id}/nack"),
                json!({"lease_token": l["lease_token"], "error": "x", "retry_delay_ms": 0}),
            )
            .await;
        assert_eq!(r.json()["state"], "ready");
    }
    let l = lease_one(&app, "cap").await.unwrap();
    let after = nack(&app, "cap", &l, "slow").await;
    assert_eq!(after["state"], "failed");
    let run_at = humantime::parse_rfc3339_weak(after["run_at"].as_str().unwrap()).unwrap();
    let wait = run_at.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(wait <= Duration::from_secs(86_400), "{wait:?} (8 days uncapped)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_at_beyond_ten_years_is_refused_before_anything_is_stored() {
    let app = TestApp::start().await;
    app.post("/v1/queues/far/tasks", json!({"run_at": 253_402_300_800_000u64}))
        .await
        .problem(400, "invalid_argument");
    app.post("/v1/queues/far/tasks", json!({"run_at": i64::MAX}))
        .await
        .problem(400, "invalid_argument");
    let q = app.get("/v1/queues/far").await.json();
    assert_eq!(
        (q["enqueued_total"].as_u64(), q["delayed"].as_u64()),
        (Some(0), Some(0)),
        "{q}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_task_enqueued_during_a_long_poll_is_handed_out_when_due() {
    // Handed out when due, not at the next reaper tick.
    let app = Arc::new(TestApp::start().await);
    let a = app.clone();
    let poll = tokio::spawn(async move {
        lease(
            &a,
            "soon",
            json!({"worker": "w", "lease_ms": 1000, "wait_ms": 10000}),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    enqueue(&app, "soon", json!({"payload": 1, "delay_ms": 200})).await;
    let got = poll.await.unwrap();
    assert_eq!(got.len(), 1);
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_millis(900), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_a_queue_nobody_enqueued_to_yet_lists_it() {
    let app = TestApp::start().await;
    app.post("/v1/queues/ghost/pause", json!({})).await;
    let listed = app.get("/v1/queues").await.json();
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["queue"] == "ghost" && q["paused"] == true),
        "{listed}"
    );
}
