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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_oversized_body_is_refused_before_it_is_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::start().await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"PUT /v1/ns/b/kv/a HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 100000000\r\n\r\n")
        .await
        .unwrap();
    let start = std::time::Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("413 not sent before the body")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(
        head.contains("application/problem+json") && head.contains("payload_too_large"),
        "{head}"
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(2));

    // A request id a client sends is kept when sane, replaced when not.
    let r = app
        .req("GET", "/healthz", &[("x-request-id", "trace-123")], None)
        .await;
    assert_eq!(r.header("x-request-id").as_deref(), Some("trace-123"));
    let long = "r".repeat(65_536);
    let r = app
        .req("GET", "/v1/ns/b/kv/none", &[("x-request-id", &long)], None)
        .await;
    let id = r.header("x-request-id").unwrap();
    assert!(id.len() <= 128 && id != long, "{}", id.len());
    assert_eq!(r.problem(404, "not_found")["request_id"], id.as_str());
    app.stop().await;
}
