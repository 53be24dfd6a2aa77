//! The service under test, in-process on 127.0.0.1:0 with a unique key prefix, and a small
//! HTTP client that sees what users see (status, headers, raw body).

use std::time::Duration;

use bytes::Bytes;
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

/// An HTTP response as a test sees it.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
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
        let b = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path))
            .header("content-type", "application/json");
        let body = Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default()));
        let res = tokio::time::timeout(Duration::from_secs(10), self.client.request(b.body(body).ok()?))
            .await
            .ok()?
            .ok()?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = tokio::time::timeout(Duration::from_secs(10), res.into_body().collect())
            .await
            .ok()?
            .ok()?
            .to_bytes();
        Some(Resp {
            status,
            headers,
            body,
        })
    }

    pub async fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        for (k, v) in headers {
            b = b.header(*k, *v);
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
        let body = tokio::time::timeout(Duration::from_secs(30), res.into_body().collect())
            .await
            .expect("response body did not end within 30 s")
            .unwrap()
            .to_bytes();
        Resp {
            status,
            headers,
            body,
        }
    }

    /// Start a GET and return its status and body stream (for Server-Sent Events).
    pub async fn stream(&self, path: &str, headers: &[(&str, &str)]) -> (u16, hyper::body::Incoming) {
        let mut b = hyper::Request::builder()
            .method("GET")
            .uri(format!("{}{}", self.base, path));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let res = self
            .client
            .request(b.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        (res.status().as_u16(), res.into_body())
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
