//! Bad input: every case answers a 4xx problem document and leaves the data as it was.

use serde_json::json;

use crate::common::TestApp;

struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
}

fn case(
    name: &'static str,
    method: &'static str,
    path: &str,
    body: &[u8],
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        name,
        method,
        path: path.to_string(),
        headers: vec![("content-type", "application/json")],
        body: body.to_vec(),
        status,
        code,
    }
}

fn with_header(mut c: Case, k: &'static str, v: &'static str) -> Case {
    c.headers.push((k, v));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_problem_documents_and_change_nothing() {
    let mut cfg = crate::common::test_config(&crate::common::shared_redis_url());
    cfg.body_limit_bytes = 64 * 1024;
    let app = TestApp::with_config(cfg).await;
    let k = "/v1/ns/app/kv/doc";
    assert_eq!(app.put(k, json!({"value": {"keep": true}})).await.status, 201);
    let long_key = format!("/v1/ns/app/kv/{}", "k".repeat(513));
    let long_ns = format!("/v1/ns/{}/kv/x", "n".repeat(64));
    let big_body = format!("{{\"value\":\"{}\"}}", "x".repeat(70 * 1024));
    let deep = format!("{{\"value\":{}{}}}", "[".repeat(200), "]".repeat(200));
    let cases = vec![
        case("truncated JSON", "PUT", k, br#"{"value": "#, 400, "malformed_json"),
        case("not JSON at all", "PUT", k, b"hello", 400, "malformed_json"),
        case("empty body", "PUT", k, b"", 400, "malformed_json"),
        case("trailing garbage", "PUT", k, br#"{"value": 1} x"#, 400, "malformed_json"),
        case("number out of range", "PUT", k, br#"{"value": 1e400}"#, 400, "malformed_json"),
        case("nesting too deep", "PUT", k, deep.as_bytes(), 400, "malformed_json"),
        case("invalid UTF-8", "PUT", k, b"{\"value\": \"\xff\xfe\"}", 400, "malformed_json"),
        case("missing value", "PUT", k, br#"{"ttl_ms": 5}"#, 422, "invalid_body"),
        case("body is an array", "PUT", k, br#"[1,2]"#, 422, "invalid_body"),
        case("unknown field", "PUT", k, br#"{"value": 1, "ttl": 5}"#, 422, "invalid_body"),
        case("ttl_ms is a string", "PUT", k, br#"{"value": 1, "ttl_ms": "5"}"#, 422, "invalid_body"),
        case("ttl_ms negative", "PUT", k, br#"{"value": 1, "ttl_ms": -1}"#, 422, "invalid_body"),
        case("ttl_ms huge", "PUT", k, br#"{"value": 1, "ttl_ms": 18446744073709551615}"#, 400, "invalid_argument"),
        case("ttl_ms beyond u64", "PUT", k, br#"{"value": 1, "ttl_ms": 98446744073709551615}"#, 422, "invalid_body"),
        case("ttl_ms zero", "PUT", k, br#"{"value": 1, "ttl_ms": 0}"#, 400, "invalid_argument"),
        case("metadata not an object", "PUT", k, br#"{"value": 1, "metadata": [1]}"#, 422, "invalid_body"),
        case("body over the limit", "PUT", k, big_body.as_bytes(), 413, "payload_too_large"),
        case("namespace with capitals", "PUT", "/v1/ns/App/kv/doc", br#"{"value": 1}"#, 400, "invalid_name"),
        case("namespace with a glob", "PUT", "/v1/ns/a*/kv/doc", br#"{"value": 1}"#, 400, "invalid_name"),
        case("namespace too long", "PUT", &long_ns, br#"{"value": 1}"#, 400, "invalid_name"),
        case("key too long", "PUT", &long_key, br#"{"value": 1}"#, 400, "invalid_name"),
        case("key with a control character", "PUT", "/v1/ns/app/kv/a%0Ab", br#"{"value": 1}"#, 400, "invalid_name"),
        case("key not UTF-8", "PUT", "/v1/ns/app/kv/%FF%FE", br#"{"value": 1}"#, 400, "invalid_name"),
        with_header(case("If-Match not an ETag", "PUT", k, br#"{"value": 1}"#, 400, "invalid_argument"), "if-match", "\"abc\""),
        with_header(
            case("If-Match version too big", "PUT", k, br#"{"value": 1}"#, 400, "invalid_argument"),
            "if-match",
            "\"999999999999999999999999\"",
        ),
        with_header(case("If-None-Match with a version", "PUT", k, br#"{"value": 1}"#, 400, "invalid_argument"), "if-none-match", "\"1\""),
        with_header(
            with_header(case("both preconditions", "PUT", k, br#"{"value": 1}"#, 400, "invalid_argument"), "if-match", "\"1\""),
            "if-none-match",
            "*",
        ),
        with_header(case("x-agent-id too long", "PUT", k, br#"{"value": 1}"#, 400, "invalid_argument"),
            "x-agent-id",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
        case("unknown on_conflict", "PUT", &format!("{k}?on_conflict=maybe"), br#"{"value": 1}"#, 400, "invalid_argument"),
        case("unknown query parameter", "PUT", &format!("{k}?force=1"), br#"{"value": 1}"#, 400, "invalid_argument"),
        case("version not a number", "GET", &format!("{k}?version=abc"), b"", 400, "invalid_argument"),
        case("version zero", "GET", &format!("{k}?version=0"), b"", 400, "invalid_argument"),
        case("list limit too big", "GET", "/v1/ns/app/kv?limit=5000", b"", 400, "invalid_argument"),
        case("list limit negative", "GET", "/v1/ns/app/kv?limit=-1", b"", 400, "invalid_argument"),
        case("forged cursor", "GET", "/v1/ns/app/kv?cursor=%%%", b"", 400, "invalid_argument"),
        case("history limit zero", "GET", &format!("{k}/history?limit=0"), b"", 400, "invalid_argument"),
        case("rollback version zero", "POST", &format!("{k}/rollback"), br#"{"version": 0}"#, 400, "invalid_argument"),
        case("rollback version negative", "POST", &format!("{k}/rollback"), br#"{"version": -3}"#, 422, "invalid_body"),
        case("POST to an entry", "POST", k, br#"{"value": 1}"#, 405, "method_not_allowed"),
        case("unknown route", "GET", "/v1/nope", b"", 404, "not_found"),
        case("wrong method on a route", "DELETE", "/v1/namespaces", b"", 405, "method_not_allowed"),
        case("batch with no keys", "POST", "/v1/ns/app/batch/get", br#"{"keys": []}"#, 400, "invalid_argument"),
        case("batch keys wrong type", "POST", "/v1/ns/app/batch/delete", br#"{"keys": "doc"}"#, 422, "invalid_body"),
        case("txn unknown op", "POST", "/v1/ns/app/txn", br#"{"success": [{"op": "rename", "key": "doc"}]}"#, 422, "invalid_body"),
        case(
            "txn compare with two conditions",
            "POST",
            "/v1/ns/app/txn",
            br#"{"compare": [{"key": "doc", "version": 1, "exists": true}], "success": [{"op": "delete", "key": "doc"}]}"#,
            422,
            "invalid_body",
        ),
        case("txn delete with a value", "POST", "/v1/ns/app/txn", br#"{"success": [{"op": "delete", "key": "doc", "value": 1}]}"#, 422, "invalid_body"),
        case("counter by too large", "POST", "/v1/ns/app/counters/c/incr", br#"{"by": 9007199254740992}"#, 400, "invalid_argument"),
        case("counter by a float", "POST", "/v1/ns/app/counters/c/incr", br#"{"by": 1.5}"#, 422, "invalid_body"),
        case("counter on a JSON document", "POST", "/v1/ns/app/counters/doc/incr", br#"{"by": 1}"#, 409, "not_a_counter"),
    ];
    assert!(cases.len() >= 25);
    let before_ns = app.get("/v1/namespaces").await.json();
    for c in &cases {
        let r = app.req(c.method, &c.path, &c.headers, Some(&c.body)).await;
        assert_eq!(r.status, c.status, "{}: {}", c.name, r.text());
        let p = r.problem(c.status, c.code);
        assert!(
            p["instance"].as_str().unwrap().starts_with("/"),
            "{}: {p}",
            c.name
        );
        assert!(p["request_id"].is_string(), "{}: {p}", c.name);
    }
    // Nothing changed: same entry version and value, same namespace revision and counts.
    let e = app.get(k).await.json();
    assert_eq!(e["version"], 1);
    assert_eq!(e["value"], json!({"keep": true}));
    assert_eq!(app.get("/v1/namespaces").await.json(), before_ns);
    // And nothing leaked out as a 5xx in the metrics.
    let m = app.get("/metrics").await.text();
    assert!(
        !m.lines()
            .any(|l| l.starts_with("http_requests_total") && l.contains("status=\"5")),
        "{m}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_vanishing_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut cfg = crate::common::test_config(&crate::common::shared_redis_url());
    cfg.request_timeout_ms = 500;
    let app = TestApp::with_config(cfg).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    // A client that announces a body and then stalls gets 408 within the deadline.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"PUT /v1/ns/slow/kv/k HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"value\":")
        .await
        .unwrap();
    let start = std::time::Instant::now();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("answered before the client finished")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"code\":\"request_timeout\""), "{text}");
    assert!(start.elapsed() < std::time::Duration::from_secs(3));
    // A client that vanishes mid-body leaves nothing behind, and the service keeps serving.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"PUT /v1/ns/slow/kv/k2 HTTP/1.1\r\nhost: x\r\ncontent-length: 50\r\n\r\n{\"val")
        .await
        .unwrap();
    drop(s);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    app.get("/v1/ns/slow/kv/k").await.problem(404, "not_found");
    app.get("/v1/ns/slow/kv/k2").await.problem(404, "not_found");
    assert_eq!(app.get("/healthz").await.status, 200);
    app.stop().await;
}

/// The body as a client that sent `Accept-Encoding: gzip` reads it (browsers, SDKs, curl
/// --compressed): gunzipped when the response says so, an error when it cannot be.
fn decoded(r: &crate::common::Resp) -> Result<serde_json::Value, String> {
    use std::io::Read;
    let raw = match r.header("content-encoding").as_deref() {
        Some("gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&r.body[..])
                .read_to_end(&mut out)
                .map_err(|e| format!("labelled gzip but does not gunzip: {e}"))?;
            out
        }
        None => r.body.to_vec(),
        Some(other) => return Err(format!("unexpected content-encoding {other}")),
    };
    serde_json::from_slice(&raw).map_err(|e| format!("not JSON once decoded: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_decodes_for_a_client_that_accepts_gzip() {
    let app = TestApp::start().await;
    let gz = ("accept-encoding", "gzip, deflate, br");
    let json_ct = ("content-type", "application/json");
    let value = json!({"value": "x".repeat(2000)}).to_string();
    // method, path, headers, body, status, problem code
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        &'a [u8],
        u16,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "PUT",
            "/v1/ns/gz/kv/k",
            vec![gz, json_ct],
            value.as_bytes(),
            201,
            None,
        ),
        ("GET", "/v1/ns/gz/kv/k", vec![gz], b"", 200, None),
        (
            "GET",
            "/v1/ns/gz/kv/absent",
            vec![gz],
            b"",
            404,
            Some("not_found"),
        ),
        (
            "PUT",
            "/v1/ns/gz/kv/k",
            vec![gz, json_ct],
            b"{bad",
            400,
            Some("malformed_json"),
        ),
        (
            "PUT",
            "/v1/ns/gz/kv/k",
            vec![gz, json_ct, ("if-match", "\"9\"")],
            value.as_bytes(),
            412,
            Some("version_mismatch"),
        ),
        (
            "DELETE",
            "/v1/queues/q",
            vec![gz],
            b"",
            405,
            Some("method_not_allowed"),
        ),
        ("GET", "/no/such/route", vec![gz], b"", 404, Some("not_found")),
        ("GET", "/v1/ns/BAD/kv/k", vec![gz], b"", 400, Some("invalid_name")),
    ];
    let mut compressed_problems = 0;
    for (method, path, headers, body, status, code) in cases {
        let r = app.req(method, path, &headers, Some(body)).await;
        assert_eq!(r.status, status, "{method} {path}");
        let doc = decoded(&r).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        if let Some(code) = code {
            assert_eq!(doc["code"], code, "{method} {path}: {doc}");
            assert_eq!(doc["instance"], path, "{method} {path}: {doc}");
            assert!(r
                .header("content-type")
                .unwrap()
                .starts_with("application/problem+json"));
            compressed_problems += usize::from(r.header("content-encoding").is_some());
        }
    }
    // Problem documents are large enough to be compressed: the check above saw gzip bodies.
    assert!(
        compressed_problems >= 5,
        "only {compressed_problems} problem documents were gzip-encoded"
    );
    app.stop().await;
}
