//! Agent presence: lifecycle, listing, and a lost agent's lock and leased task freed at once.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_transitions_and_listing() {
    let app = TestApp::start().await;
    let r = app
        .req(
            "PUT",
            "/v1/agents/planner",
            &[("content-type", "application/json")],
            Some(
                json!({"capabilities": ["plan", "search"], "metadata": {"v": 1}, "heartbeat_ttl_ms": 60000})
                    .to_string()
                    .as_bytes(),
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["state"], "initializing");
    app.req(
        "PUT",
        "/v1/agents/coder",
        &[("content-type", "application/json")],
        Some(br#"{"capabilities": ["code"]}"#),
    )
    .await;
    let go = |to: &'static str| {
        let app = &app;
        async move { app.post("/v1/agents/planner/state", json!({"state": to})).await }
    };
    // initializing cannot jump to running.
    go("running").await.problem(409, "invalid_transition");
    for to in [
        "ready",
        "running",
        "paused",
        "running",
        "ready",
        "running",
        "terminating",
    ] {
        let r = go(to).await;
        assert_eq!(r.status, 200, "{to}: {}", r.text());
        assert_eq!(r.json()["state"], to);
    }
    go("running").await.problem(409, "invalid_transition");
    assert_eq!(go("terminated").await.json()["state"], "terminated");
    go("ready").await.problem(409, "invalid_transition");
    go("error").await.problem(409, "invalid_transition");
    go("lost").await.problem(400, "invalid_argument");
    app.post("/v1/agents/coder/heartbeat", json!({})).await;
    assert_eq!(
        app.post("/v1/agents/coder/state", json!({"state": "error"}))
            .await
            .json()["state"],
        "error"
    );
    app.post("/v1/agents/nobody/state", json!({"state": "ready"}))
        .await
        .problem(404, "not_found");
    // Listing with filters.
    let all = app.get("/v1/agents").await.json();
    let ids: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["coder", "planner"]);
    let coders = app.get("/v1/agents?capability=code").await.json();
    assert_eq!(coders["items"].as_array().unwrap().len(), 1);
    assert_eq!(coders["items"][0]["id"], "coder");
    let done = app.get("/v1/agents?state=terminated").await.json();
    assert_eq!(done["items"][0]["id"], "planner");
    assert_eq!(done["items"][0]["capabilities"], json!(["plan", "search"]));
    app.get("/v1/agents?state=sleeping")
        .await
        .problem(400, "invalid_argument");
    app.req(
        "PUT",
        "/v1/agents/x",
        &[("content-type", "application/json")],
        Some(br#"{"heartbeat_ttl_ms": 5}"#),
    )
    .await
    .problem(400, "invalid_argument");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_is_marked_lost_and_its_lock_and_leased_task_are_freed_at_once() {
    let app = TestApp::start().await;
    let mut ws = crate::common::ws::connect(&app).await;
    crate::common::ws::send(
        &mut ws,
        json!({"op": "subscribe", "id": "ag", "channel": "agents.*"}),
    )
    .await;
    app.req(
        "PUT",
        "/v1/agents/w1",
        &[("content-type", "application/json")],
        Some(br#"{"heartbeat_ttl_ms": 1000}"#),
    )
    .await;
    // Wait until this process knows w1 as an agent (its id set refreshes every 2 s, and
    // registering through this process adds it at once).
    let lock = app
        .post("/v1/ns/ag/locks/job", json!({"owner": "w1", "ttl_ms": 60000}))
        .await
        .json();
    assert_eq!(lock["owner"], "w1");
    app.post("/v1/queues/agq/tasks", json!({"payload": 1})).await;
    let leased = app
        .post("/v1/queues/agq/lease", json!({"worker": "w1", "lease_ms": 60000}))
        .await
        .json();
    let task_id = leased["tasks"][0]["id"].as_str().unwrap().to_string();
    // Heartbeats keep it alive past its TTL...
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(app.post("/v1/agents/w1/heartbeat", json!({})).await.status, 200);
    }
    let silent = Instant::now();
    // ...then it goes silent: lost within heartbeat_ttl + 1 s.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = app.get("/v1/agents/w1").await.json();
        if a["state"] == "lost" {
            break;
        }
        assert!(Instant::now() < deadline, "{a}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        silent.elapsed() < Duration::from_millis(2000),
        "{:?}",
        silent.elapsed()
    );
    // Its lock (TTL 60 s) is free now, with a higher fencing token for the next holder.
    let next = app
        .post("/v1/ns/ag/locks/job", json!({"owner": "w2", "ttl_ms": 60000}))
        .await;
    assert_eq!(next.status, 200, "{}", next.text());
    assert_eq!(next.json()["fencing_token"], 2);
    // Its leased task (lease 60 s) is back in the queue; the attempt counted.
    let again = app
        .post("/v1/queues/agq/lease", json!({"worker": "w2", "lease_ms": 60000}))
        .await
        .json();
    assert_eq!(again["tasks"][0]["id"], task_id.as_str(), "{again}");
    assert_eq!(again["tasks"][0]["attempts"], 2);
    // The old lease token is refused.
    let r = app
        .post(
            &format!("/v1/queues/agq/tasks/{task_id}/ack"),
            json!({"lease_token": leased["tasks"][0]["lease_token"]}),
        )
        .await;
    r.problem(409, "lease_lost");
    // A lost agent's heartbeat is refused until it registers again.
    app.post("/v1/agents/w1/heartbeat", json!({}))
        .await
        .problem(409, "invalid_transition");
    // The loss was announced on agents.w1.
    let mut states = Vec::new();
    while let Some(m) = crate::common::ws::next(&mut ws, Duration::from_millis(500)).await {
        if m["type"] == "message" && m["channel"] == "agents.w1" {
            states.push(m["payload"].clone());
        }
    }
    let lost = states.iter().find(|p| p["state"] == "lost").expect("lost event");
    assert_eq!(lost["released_locks"], 1, "{lost}");
    assert_eq!(lost["requeued_tasks"], 1, "{lost}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_agent_holds_stays_bounded() {
    use fred::prelude::*;
    let app = TestApp::start().await;
    app.req(
        "PUT",
        "/v1/agents/busy",
        &[("content-type", "application/json")],
        Some(br#"{"heartbeat_ttl_ms": 60000}"#),
    )
    .await;
    for i in 0..300 {
        let r = app
            .post(
                &format!("/v1/ns/hb/locks/l{i}"),
                json!({"owner": "busy", "ttl_ms": 50}),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    let keep = app
        .post("/v1/ns/hb/locks/kept", json!({"owner": "busy", "ttl_ms": 60000}))
        .await;
    assert_eq!(keep.status, 200);
    let held = app.keys().agent("busy").1;
    let r = app.redis().await;
    assert_eq!(r.scard::<u64, _>(&held).await.unwrap(), 301);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(app.post("/v1/agents/busy/heartbeat", json!({})).await.status, 200);
    // Only the lock it still holds is left.
    let left: Vec<String> = r.smembers(&held).await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].contains("kept"), "{left:?}");
}
