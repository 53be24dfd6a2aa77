//! Request bodies as other languages' JSON encoders write them: whole floats (`5.0`, what
//! Python's `json.dumps` writes for a float) are integers, as JSON Schema counts them; a
//! fraction is not; a body must be a JSON object (serde alone takes a struct from an array).

use serde_json::json;

use crate::common::http::TestApp;

async fn post_raw(app: &TestApp, path: &str, body: &str) -> crate::common::Resp {
    app.req(
        "POST",
        path,
        &[("content-type", "application/json")],
        Some(body.as_bytes()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_floats_are_integers_and_fractions_are_refused() {
    let app = TestApp::start().await;
    let r = app
        .req(
            "PUT",
            "/v1/ns/f/kv/a",
            &[("content-type", "application/json")],
            Some(br#"{"value": 1, "ttl_ms": 60000.0}"#),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(r.json()["expires_at"].is_string(), "{}", r.text());
    let t = post_raw(
        &app,
        "/v1/queues/f/tasks",
        r#"{"payload": 2.5, "priority": 3.0, "max_attempts": 2.0}"#,
    )
    .await;
    assert_eq!(t.status, 201, "{}", t.text());
    assert_eq!(t.json()["priority"], 3);
    assert_eq!(t.json()["payload"], json!(2.5), "payloads are data, kept as sent");
    let l = post_raw(
        &app,
        "/v1/queues/f/lease",
        r#"{"worker": "w", "lease_ms": 1000.0, "max_tasks": 1.0}"#,
    )
    .await;
    assert_eq!(l.status, 200, "{}", l.text());
    assert_eq!(l.json()["tasks"].as_array().unwrap().len(), 1);

    for (path, body) in [
        ("/v1/queues/f/tasks", r#"{"payload": 1, "priority": 2.5}"#),
        ("/v1/queues/f/tasks", r#"{"payload": 1, "max_attempts": 1e30}"#),
        ("/v1/queues/f/lease", r#"{"worker": "w", "lease_ms": -1.0}"#),
        ("/v1/ns/f/kv/a/rollback", r#"[1]"#),
        ("/v1/ns/f/batch/get", r#"[["a"]]"#),
        ("/v1/partitions", r#"["p", "o", 1, null, "working", null]"#),
    ] {
        post_raw(&app, path, body).await.problem(422, "invalid_body");
    }
    let r = app
        .req(
            "PATCH",
            "/v1/partitions/nope",
            &[("content-type", "application/json")],
            Some(b"[null, null]"),
        )
        .await;
    r.problem(422, "invalid_body");
    post_raw(&app, "/v1/queues/f/tasks", "[1,")
        .await
        .problem(400, "malformed_json");
    app.stop().await;
}
