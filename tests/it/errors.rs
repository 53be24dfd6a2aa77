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

/// Every kind of answer, asked for with each encoding a client may accept, comes back in that
/// encoding (or plain for `identity`), decodes (the client panics when a body does not), and
/// has its content type: successes, the 404/405/413 fallbacks and rejections, malformed JSON,
/// and the metrics text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_is_encoded_as_the_client_accepts() {
    let mut cfg = crate::common::test_config(&crate::common::shared_redis_url());
    cfg.body_limit_bytes = 16 * 1024;
    let app = TestApp::with_config(cfg).await;
    let json_ct = ("content-type", "application/json");
    let value = json!({"value": "x".repeat(4000)}).to_string();
    let oversized = json!({"value": "x".repeat(20 * 1024)}).to_string();
    for enc in ["gzip", "br", "identity"] {
        let ae = ("accept-encoding", enc);
        let k = format!("/v1/ns/enc/kv/{enc}");
        // method, path, headers, body, status, content type, problem code
        type Case<'a> = (
            &'a str,
            String,
            Vec<(&'a str, &'a str)>,
            &'a [u8],
            u16,
            &'a str,
            Option<&'a str>,
        );
        let json = "application/json";
        let problem = "application/problem+json";
        let cases: Vec<Case> = vec![
            (
                "PUT",
                k.clone(),
                vec![ae, json_ct],
                value.as_bytes(),
                201,
                json,
                None,
            ),
            ("GET", k.clone(), vec![ae], b"", 200, json, None),
            (
                "GET",
                format!("{k}-absent"),
                vec![ae],
                b"",
                404,
                problem,
                Some("not_found"),
            ),
            (
                "GET",
                "/no/such/route".into(),
                vec![ae],
                b"",
                404,
                problem,
                Some("not_found"),
            ),
            (
                "DELETE",
                "/v1/namespaces".into(),
                vec![ae],
                b"",
                405,
                problem,
                Some("method_not_allowed"),
            ),
            (
                "POST",
                k.clone(),
                vec![ae, json_ct],
                br#"{"value": 1}"#,
                405,
                problem,
                Some("method_not_allowed"),
            ),
            (
                "PUT",
                k.clone(),
                vec![ae, json_ct],
                oversized.as_bytes(),
                413,
                problem,
                Some("payload_too_large"),
            ),
            (
                "PUT",
                k.clone(),
                vec![ae, json_ct],
                b"{bad",
                400,
                problem,
                Some("malformed_json"),
            ),
            (
                "PUT",
                k.clone(),
                vec![ae, json_ct, ("if-match", "\"9\"")],
                value.as_bytes(),
                412,
                problem,
                Some("version_mismatch"),
            ),
            (
                "GET",
                "/v1/ns/BAD/kv/k".into(),
                vec![ae],
                b"",
                400,
                problem,
                Some("invalid_name"),
            ),
            ("GET", "/metrics".into(), vec![ae], b"", 200, "text/plain", None),
        ];
        for (method, path, headers, body, status, ct, code) in cases {
            let what = format!("{enc}: {method} {path}");
            let r = app.req(method, &path, &headers, Some(body)).await;
            assert_eq!(r.status, status, "{what}: {}", r.text());
            let got_ct = r.header("content-type").unwrap_or_default();
            assert!(got_ct.starts_with(ct), "{what}: content-type {got_ct}");
            // Everything here is over the compressor's 32-byte floor: compressed when asked.
            let want_enc = (enc != "identity").then_some(enc);
            assert_eq!(r.header("content-encoding").as_deref(), want_enc, "{what}");
            if want_enc.is_some() {
                assert!(
                    r.raw.len() < r.body.len(),
                    "{what}: {} raw bytes for {}",
                    r.raw.len(),
                    r.body.len()
                );
                assert!(
                    r.header("vary")
                        .is_some_and(|v| v.to_ascii_lowercase().contains("accept-encoding")),
                    "{what}"
                );
            } else {
                assert_eq!(r.raw, r.body, "{what}");
            }
            match code {
                Some(code) => {
                    let p = r.problem(status, code);
                    assert_eq!(p["instance"], path.as_str(), "{what}: {p}");
                }
                None if ct == "text/plain" => assert!(r.text().contains("http_requests_total"), "{what}"),
                None => assert!(r.json().is_object(), "{what}"),
            }
        }
        // The large value round-trips whatever the encoding.
        assert_eq!(app.get(&k).await.json()["value"].as_str().unwrap().len(), 4000);
    }
    // A client that prefers br gets br; one that accepts nothing in particular gets identity.
    let r = app
        .req(
            "GET",
            "/v1/ns/enc/kv/br",
            &[("accept-encoding", "gzip;q=0.5, br;q=1")],
            None,
        )
        .await;
    assert_eq!(r.header("content-encoding").as_deref(), Some("br"));
    let r = app
        .req("GET", "/v1/ns/enc/kv/br", &[("accept-encoding", "")], None)
        .await;
    assert_eq!(r.header("content-encoding"), None);
    // Small answers stay plain (not worth compressing) and still decode.
    let r = app.get("/healthz").await;
    assert_eq!(r.status, 200);
    app.stop().await;
}

/// Server-Sent Events are not compressed even for a client that accepts gzip or br (a
/// compressor would hold events back until its buffer fills): events arrive at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_not_buffered_by_compression() {
    use std::time::{Duration, Instant};
    let app = TestApp::start().await;
    for (path, enc) in [
        ("/v1/ns/sseenc/events", "gzip"),
        ("/v1/queues/sseenc/events", "gzip, deflate, br"),
    ] {
        // `stream_h` refuses an event stream with a content-encoding.
        let (status, headers, mut body) = app.stream_h(path, &[("accept-encoding", enc)]).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream"),
            "{path}: {headers:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let start = Instant::now();
        if path.contains("/queues/") {
            let r = app.post("/v1/queues/sseenc/tasks", json!({"payload": "p"})).await;
            assert!(r.status == 201 || r.status == 200, "{}", r.text());
        } else {
            assert_eq!(
                app.put("/v1/ns/sseenc/kv/k", json!({"value": 1})).await.status,
                201
            );
        }
        let got = crate::common::ws::sse_events(&mut body, 1, Duration::from_secs(3)).await;
        assert!(
            !got.is_empty(),
            "{path}: no event within 3 s with accept-encoding {enc}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{path}: event after {:?}",
            start.elapsed()
        );
    }
    // A stream refused before it starts is an ordinary (compressed, decodable) problem document.
    let (status, headers, body) = app
        .stream_h("/v1/ns/BAD/events", &[("accept-encoding", "gzip")])
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        headers.get("content-encoding").map(|v| v.to_str().unwrap()),
        Some("gzip")
    );
    use http_body_util::BodyExt;
    let doc: serde_json::Value = serde_json::from_slice(&body.collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(doc["code"], "invalid_name");
    app.stop().await;
}

/// The WebSocket upgrade of a client that sends `Accept-Encoding` (browsers do) is a plain
/// 101 with no content-encoding, and frames flow; a GET without the upgrade headers is a
/// decodable problem document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_with_accept_encoding() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let app = TestApp::start().await;
    let mut req = format!("{}/v1/watch", app.base.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("accept-encoding", "gzip, deflate, br".parse().unwrap());
    let (mut ws, res) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket upgrade");
    assert_eq!(res.status().as_u16(), 101);
    assert!(
        res.headers().get("content-encoding").is_none(),
        "{:?}",
        res.headers()
    );
    ws.send(Message::Text(
        json!({"op": "watch", "id": "w", "namespace": "wsenc"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
        .await
        .expect("an answer to the watch")
        .unwrap()
        .unwrap();
    assert!(matches!(first, Message::Text(_)), "{first:?}");
    let r = app.get("/v1/watch").await;
    assert!(r.status >= 400, "{}", r.status);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/problem+json")
    );
    app.stop().await;
}

/// The 408 the timeout layer answers a stalled upload with is a problem document encoded as
/// the client accepts, like every other answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_upload_gets_a_decodable_problem_in_every_encoding() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    let mut cfg = crate::common::test_config(&crate::common::shared_redis_url());
    cfg.request_timeout_ms = 300;
    let app = TestApp::with_config(cfg).await;
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    for enc in ["gzip", "br", "identity"] {
        // Half a body, then nothing: the upload never ends.
        let first = futures::stream::iter([Ok::<_, std::convert::Infallible>(Frame::data(
            Bytes::from_static(b"{\"value\":"),
        ))]);
        let body = StreamBody::new(futures::StreamExt::chain(first, futures::stream::pending()));
        let req = hyper::Request::builder()
            .method("PUT")
            .uri(format!("{}/v1/ns/slow/kv/{enc}", app.base))
            .header("content-type", "application/json")
            .header("accept-encoding", enc)
            .body(body)
            .unwrap();
        let res = tokio::time::timeout(std::time::Duration::from_secs(5), client.request(req))
            .await
            .expect("answered within the deadline")
            .unwrap();
        assert_eq!(res.status().as_u16(), 408, "{enc}");
        let headers = res.headers().clone();
        let want = (enc != "identity").then_some(enc);
        assert_eq!(
            headers.get("content-encoding").map(|v| v.to_str().unwrap()),
            want,
            "{enc}"
        );
        let raw = res.into_body().collect().await.unwrap().to_bytes();
        let body = crate::common::http::decode_body(enc, &headers, &raw);
        let ct = headers.get("content-type").map(|v| v.to_str().unwrap());
        assert_eq!(ct, Some("application/problem+json"), "{enc}");
        crate::common::openapi::check("PUT", &format!("/v1/ns/slow/kv/{enc}"), 408, ct, &body);
        let p: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(p["code"], "request_timeout", "{enc}: {p}");
    }
    app.get("/v1/ns/slow/kv/gzip").await.problem(404, "not_found");
    app.stop().await;
}
