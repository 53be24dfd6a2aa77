//! The service under test, in-process on 127.0.0.1:0 with a unique key prefix, and a small
//! HTTP client that sees what users see (status, headers, body).
//!
//! The client behaves like browsers and SDKs: it sends `Accept-Encoding: gzip, deflate, br`
//! unless the test sets its own `accept-encoding`, and decodes the body as its
//! `content-encoding` says (a body that does not decode fails the test: the bug class of
//! problem documents labelled gzip but sent plain). Every JSON body is then checked against
//! openapi/openapi.json ([`super::openapi`]).

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use swarmstate::app::Server;
use swarmstate::config::Config;
use swarmstate::store::keys::Keys;

use super::redis::{redis_client, shared_redis_url, unique_prefix};

pub fn test_config(url: &str) -> Config {
    Config {
        redis_url: Some(url.to_string()),
        key_prefix: unique_prefix(),
        listen: "127.0.0.1:0".into(),
        startup_timeout_ms: 10_000,
        ..Config::default()
    }
}

/// What the client asks for unless a test sets `accept-encoding` itself.
pub const ACCEPT_ENCODING: &str = "gzip, deflate, br";

/// An HTTP response as a test sees it. `headers` are as sent (`content-encoding` included);
/// `body` is decoded, `raw` is the body as it came over the wire.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub raw: Bytes,
}

/// A streamed body (Server-Sent Events), or a whole decoded one when the answer is not a
/// stream.
pub type StreamBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The body decoded as `content-encoding` says; panics (naming the request) when it does not
/// decode.
pub fn decode_body(what: &str, headers: &HeaderMap, raw: &Bytes) -> Bytes {
    let encoding = headers
        .get("content-encoding")
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    let mut out = Vec::new();
    let res = match encoding.as_deref() {
        None | Some("identity") => return raw.clone(),
        Some("gzip" | "x-gzip") => flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out),
        Some("deflate") => flate2::read::ZlibDecoder::new(&raw[..]).read_to_end(&mut out),
        Some("br") => brotli::Decompressor::new(&raw[..], 4096).read_to_end(&mut out),
        Some(other) => panic!("{what}: content-encoding {other:?}, which the client did not accept"),
    };
    if let Err(e) = res {
        panic!(
            "{what}: body labelled content-encoding {} does not decode ({e}); {} raw bytes: {:?}",
            encoding.unwrap_or_default(),
            raw.len(),
            String::from_utf8_lossy(&raw[..raw.len().min(300)])
        );
    }
    Bytes::from(out)
}

fn with_default_encoding(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if !h.iter().any(|(k, _)| k.eq_ignore_ascii_case("accept-encoding")) {
        h.push(("accept-encoding".into(), ACCEPT_ENCODING.into()));
    }
    h
}

/// Decode and check an answer: what every request of the client goes through.
fn finish(method: &str, path: &str, status: u16, headers: HeaderMap, raw: Bytes) -> Resp {
    let what = format!("{method} {path} -> {status}");
    let body = decode_body(&what, &headers, &raw);
    let ct = headers.get("content-type").and_then(|v| v.to_str().ok());
    super::openapi::check(method, path, status, ct, &body);
    Resp {
        status,
        headers,
        body,
        raw,
    }
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_string())
    }
    /// Assert a problem document with this status and code.
    pub fn problem(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/problem+json"),
            "body: {}",
            self.text()
        );
        let p = self.json();
        assert_eq!(p["code"], code, "{p}");
        assert_eq!(p["status"], status, "{p}");
        for f in ["type", "title", "detail", "instance"] {
            assert!(p[f].is_string(), "problem lacks {f}: {p}");
        }
        p
    }
}

/// The service under test plus an HTTP client.
pub struct TestApp {
    pub base: String,
    pub server: Option<Server>,
    pub prefix: String,
    pub redis_url: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl TestApp {
    /// The service on the shared Redis with a fresh key prefix.
    pub async fn start() -> TestApp {
        Self::with_config(test_config(&shared_redis_url())).await
    }

    pub async fn with_config(cfg: Config) -> TestApp {
        let prefix = cfg.key_prefix.clone();
        let redis_url = cfg.redis_url.clone().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server::start(cfg, listener, false).await.expect("service starts");
        TestApp {
            base: format!("http://{}", server.addr),
            server: Some(server),
            prefix,
            redis_url,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// A client for a service running elsewhere (e.g. the real binary in a child process).
    pub fn remote(base: &str, prefix: &str, redis_url: &str) -> TestApp {
        TestApp {
            base: base.to_string(),
            server: None,
            prefix: prefix.to_string(),
            redis_url: redis_url.to_string(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Like [`TestApp::req`] but `None` when the service cannot be reached or does not answer
    /// within 10 s (for tests that kill it).
    pub async fn try_req(&self, method: &str, path: &str, body: Option<Value>) -> Option<Resp> {
        self.try_req_h(method, path, &[], body).await
    }

    /// [`TestApp::try_req`] with extra request headers.
    pub async fn try_req_h(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Option<Resp> {
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path))
            .header("content-type", "application/json")
            .header("accept-encoding", ACCEPT_ENCODING);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let body = Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default()));
        let res = tokio::time::timeout(Duration::from_secs(10), self.client.request(b.body(body).ok()?))
            .await
            .ok()?
            .ok()?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let raw = tokio::time::timeout(Duration::from_secs(10), res.into_body().collect())
            .await
            .ok()?
            .ok()?
            .to_bytes();
        Some(finish(method, path, status, headers, raw))
    }

    pub async fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        for (k, v) in with_default_encoding(headers) {
            b = b.header(k, v);
        }
        let body = Full::new(Bytes::copy_from_slice(body.unwrap_or(b"")));
        let res = tokio::time::timeout(
            Duration::from_secs(30),
            self.client.request(b.body(body).unwrap()),
        )
        .await
        .expect("request timed out")
        .expect("request failed");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let raw = tokio::time::timeout(Duration::from_secs(30), res.into_body().collect())
            .await
            .expect("response body did not end within 30 s")
            .unwrap()
            .to_bytes();
        finish(method, path, status, headers, raw)
    }

    /// Start a GET and return its status and body stream (for Server-Sent Events).
    pub async fn stream(&self, path: &str, headers: &[(&str, &str)]) -> (u16, StreamBody) {
        let (status, _, body) = self.stream_h(path, headers).await;
        (status, body)
    }

    /// [`TestApp::stream`] with the response headers. An event stream comes back as it
    /// arrives and must not be compressed (a compressor buffers events); any other answer is
    /// read whole, decoded and checked like [`TestApp::req`]'s.
    pub async fn stream_h(&self, path: &str, headers: &[(&str, &str)]) -> (u16, HeaderMap, StreamBody) {
        let mut b = hyper::Request::builder()
            .method("GET")
            .uri(format!("{}{}", self.base, path));
        for (k, v) in with_default_encoding(headers) {
            b = b.header(k, v);
        }
        let res = self
            .client
            .request(b.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let is_stream = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("text/event-stream"));
        if is_stream {
            assert!(
                headers.get("content-encoding").is_none(),
                "GET {path}: an event stream sent with content-encoding {:?} (events would wait in the compressor)",
                headers["content-encoding"]
            );
            return (status, headers, res.into_body().map_err(Into::into).boxed());
        }
        let raw = tokio::time::timeout(Duration::from_secs(30), res.into_body().collect())
            .await
            .expect("response body did not end within 30 s")
            .unwrap()
            .to_bytes();
        let r = finish("GET", path, status, headers, raw);
        let body = Full::new(r.body).map_err(|never| match never {}).boxed();
        (status, r.headers, body)
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.req("GET", path, &[], None).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Resp {
        self.put_h(path, &[], body).await
    }

    pub async fn put_h(&self, path: &str, headers: &[(&str, &str)], body: Value) -> Resp {
        let mut h = vec![("content-type", "application/json")];
        h.extend_from_slice(headers);
        self.req("PUT", path, &h, Some(body.to_string().as_bytes())).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.req(
            "POST",
            path,
            &[("content-type", "application/json")],
            Some(body.to_string().as_bytes()),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.req("DELETE", path, &[], None).await
    }

    /// The service's key names under this test's prefix (what is stored where).
    pub fn keys(&self) -> Keys {
        Keys::new(&self.prefix)
    }

    /// A raw Redis client on the same server, to check what is stored.
    pub async fn redis(&self) -> fred::clients::Client {
        redis_client(&self.redis_url).await
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

#[test]
fn bodies_are_decoded_as_labelled_and_mislabelled_ones_fail() {
    use std::io::Write;
    let doc = br#"{"code":"not_found"}"#;
    let mut h = HeaderMap::new();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(doc).unwrap();
    h.insert("content-encoding", "gzip".parse().unwrap());
    assert_eq!(&decode_body("t", &h, &Bytes::from(gz.finish().unwrap()))[..], doc);
    let mut br = Vec::new();
    brotli::CompressorWriter::new(&mut br, 4096, 5, 22)
        .write_all(doc)
        .unwrap();
    h.insert("content-encoding", "br".parse().unwrap());
    assert_eq!(&decode_body("t", &h, &Bytes::from(br))[..], doc);
    h.insert("content-encoding", "identity".parse().unwrap());
    assert_eq!(&decode_body("t", &h, &Bytes::from_static(doc))[..], doc);
    // Issue 10: a plain problem document labelled gzip.
    h.insert("content-encoding", "gzip".parse().unwrap());
    let err =
        std::panic::catch_unwind(|| decode_body("GET /x -> 404", &h, &Bytes::from_static(doc))).unwrap_err();
    let msg = err.downcast::<String>().unwrap();
    assert!(
        msg.contains("GET /x -> 404") && msg.contains("does not decode"),
        "{msg}"
    );
}
