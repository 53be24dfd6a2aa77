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

/// Every `$ref` in `v`.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                if k == "$ref" {
                    out.extend(x.as_str().map(str::to_string));
                }
                refs(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn the_openapi_document_is_ready_for_generators() {
    let doc = swarmstate::http::openapi();
    // Every reference resolves (a dangling one stops openapi-ts and openapi-spec-validator).
    let mut found = Vec::new();
    refs(&doc, &mut found);
    for r in &found {
        let path: Vec<&str> = r.trim_start_matches("#/").split('/').collect();
        let target = path.iter().fold(&doc, |v, p| &v[*p]);
        assert!(!target.is_null(), "dangling $ref {r}");
    }
    assert!(doc["servers"][0]["url"].is_string(), "no servers entry");
    let mut ids = std::collections::HashSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let template: std::collections::BTreeSet<String> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(str::to_string)
            .collect();
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}: no operationId"));
            assert!(ids.insert(id.to_string()), "operationId {id} is used twice");
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            // Path parameters are exactly the template's; everything else is a query or header.
            let in_path: std::collections::BTreeSet<String> = params
                .iter()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(in_path, template, "{method} {path}: path parameters");
            assert!(
                op["responses"]["default"]["content"]["application/problem+json"].is_object(),
                "{method} {path}: no default problem response"
            );
        }
    }
    // Names carry the naming rule; listings omit values, so `value` is not required.
    let ns = &doc["paths"]["/v1/ns/{ns}/kv"]["get"]["parameters"][0];
    assert_eq!(ns["schema"]["pattern"], "^[a-z0-9][a-z0-9._-]{0,62}$", "{ns}");
    let required = &doc["components"]["schemas"]["Entry"]["required"];
    assert!(
        !required.as_array().unwrap().iter().any(|f| f == "value"),
        "{required}"
    );
    // Any JSON is any JSON: a null payload or result is valid.
    for (schema, field) in [
        ("Task", "payload"),
        ("EnqueueBody", "payload"),
        ("AckBody", "result"),
    ] {
        let s = &doc["components"]["schemas"][schema]["properties"][field];
        assert!(s.get("type").is_none(), "{schema}.{field} is typed: {s}");
    }
    // Writes that honour provenance and fencing headers declare them.
    for (path, method) in [
        ("/v1/ns/{ns}/kv/{key}", "delete"),
        ("/v1/ns/{ns}/kv/{key}", "patch"),
        ("/v1/ns/{ns}/txn", "post"),
        ("/v1/ns/{ns}/batch/put", "post"),
    ] {
        let names: Vec<&str> = doc["paths"][path][method]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        for h in ["x-agent-id", "x-change-reason", "x-fencing-token"] {
            assert!(names.contains(&h), "{method} {path} lacks {h}: {names:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_with_help_text_and_series_from_start_up() {
    let app = TestApp::start().await;
    // Series present before any event of their kind. (Values are not checked: the recorder is
    // process-wide and other tests of this binary run beside this one.)
    let m = app.get("/metrics").await.text();
    for series in [
        "redis_up ",
        "redis_errors_total{kind=\"timeout\"} ",
        "agents{state=\"ready\"} ",
        "ws_connections ",
        "watch_clients_dropped_total ",
        "locks_acquired_total ",
        "keyspace_notifications_lost_total ",
    ] {
        assert!(
            m.lines().any(|l| l.starts_with(series)),
            "no `{series}` series at start-up:\n{m}"
        );
    }
    // Some traffic of every kind, and the upkeep's labelled series (queues, partitions).
    app.put("/v1/ns/pm/kv/a", json!({"value": 1})).await;
    app.get("/v1/ns/pm/kv/missing").await;
    app.post("/v1/queues/pmq/tasks", json!({"payload": 1})).await;
    app.post(
        "/v1/partitions",
        json!({"name": "pmp", "owner_agent": "a", "quota_bytes": 1000, "tier": "shared"}),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let m = app.get("/metrics").await.text();
    assert!(m.contains("queue_oldest_ready_age_seconds{queue=\"pmq\"}"), "{m}");
    let names: std::collections::BTreeSet<&str> = m
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for name in &names {
        assert!(m.contains(&format!("# HELP {name} ")), "{name} has no HELP text");
    }
    use std::io::Write;
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool must be installed (apt-get install -y prometheus; scripts/test.sh does)");
    promtool.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics:\n{report}"
    );
    app.stop().await;
}
