//! Operations endpoints, metrics, the OpenAPI document and its committed copy.

use serde_json::{json, Value};

use crate::common::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_status_and_metrics() {
    let app = TestApp::start().await;
    let h = app.get("/healthz").await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
    assert_eq!(app.get("/readyz").await.json()["status"], "ready");
    let s = app.get("/v1/status").await.json();
    assert_eq!(s["redis_mode"], "standalone");
    assert_eq!(s["redis_role"], "master");
    assert!(
        s["redis_version"].as_str().unwrap().starts_with('7')
            || s["redis_version"].as_str().unwrap().starts_with('8')
    );
    assert!(s["used_memory_bytes"].as_u64().unwrap() > 0);
    assert_eq!(s["key_prefix"], app.prefix.as_str());
    assert_eq!(s["redis_source"], "external");

    app.put("/v1/ns/m/kv/some/raw/path", json!({"value": 1})).await;
    app.get("/v1/ns/m/kv/some/raw/path").await;
    app.get("/v1/ns/m/kv/absent-key").await;
    let r = app.get("/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let m = r.text();
    for needle in [
        "http_requests_total{method=\"PUT\",route=\"/v1/ns/{ns}/kv/{*key}\",status=\"201\"}",
        "http_requests_total{method=\"GET\",route=\"/v1/ns/{ns}/kv/{*key}\",status=\"404\"}",
        "http_request_duration_seconds_bucket{",
        "redis_command_duration_seconds_bucket{command=\"kv_put\"",
        "swarmstate_build_info{version=",
    ] {
        assert!(m.contains(needle), "metrics lack {needle}:\n{m}");
    }
    assert!(!m.contains("some/raw/path"), "raw paths must never be labels");
    assert!(!m.contains("absent-key"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_matches_code_and_committed_file() {
    let app = TestApp::start().await;
    let served = app.get("/openapi.json").await;
    assert_eq!(served.status, 200);
    let served: Value = served.json();
    let generated: Value = serde_json::to_value(swarmstate::http::openapi()).unwrap();
    assert_eq!(served, generated);
    let committed_text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .expect("openapi/openapi.json is committed");
    let committed: Value = serde_json::from_str(&committed_text).unwrap();
    assert!(
        committed == generated,
        "openapi/openapi.json is stale: run `cargo run -q -- openapi > openapi/openapi.json`"
    );
    assert_eq!(generated["openapi"], "3.1.0");
    // Every documented operation is routed (no "no route" 404).
    for (path, ops) in generated["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{ns}", "docs")
            .replace("{key}", "k")
            .replace("{name}", "c");
        for method in ops.as_object().unwrap().keys() {
            if method == "get" {
                // Status first: some GET routes stream (SSE) and never end.
                let (status, body) = app.stream(&concrete, &[]).await;
                let text = if status == 404 {
                    use http_body_util::BodyExt;
                    let b = tokio::time::timeout(std::time::Duration::from_secs(5), body.collect())
                        .await
                        .unwrap()
                        .unwrap()
                        .to_bytes();
                    String::from_utf8_lossy(&b).into_owned()
                } else {
                    String::new()
                };
                assert!(
                    !text.contains("no route") && status != 405,
                    "GET {path} is documented but not routed: {status} {text}"
                );
                continue;
            }
            let r = app
                .req(
                    &method.to_uppercase(),
                    &concrete,
                    &[("content-type", "application/json")],
                    Some(b"{}"),
                )
                .await;
            assert!(
                !(r.status == 404 && r.text().contains("no route")) && r.status != 405,
                "{method} {path} is documented but not routed: {} {}",
                r.status,
                r.text()
            );
        }
    }
    // Every response body schema reference resolves.
    let text = generated.to_string();
    for name in [
        "Entry",
        "Problem",
        "ErrorCode",
        "PutBody",
        "TxnBody",
        "NamespaceInfo",
    ] {
        assert!(
            generated["components"]["schemas"].get(name).is_some(),
            "schema {name} missing: {text}"
        );
    }
    let docs = app.get("/docs/").await;
    assert_eq!(docs.status, 200);
    assert!(docs.text().contains("swagger"), "{}", docs.text());
    app.stop().await;
}
