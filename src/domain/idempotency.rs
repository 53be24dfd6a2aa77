//! `Idempotency-Key` on mutating POSTs (DESIGN.md "What no peer does"): which routes honour
//! it and where their record lives, the request fingerprint (route, query and canonical JSON
//! body), and the stored first answer that a repeat replays.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::json::canonical;
use super::names::validate_name;
use crate::error::{ApiError, ApiResult};

pub const HEADER: &str = "idempotency-key";
/// Set on a replayed answer.
pub const REPLAYED: &str = "idempotent-replayed";
/// How long a finished request's answer is kept for repeats.
pub const RETAIN_MS: u64 = 24 * 3600 * 1000;
pub const MAX_KEY_LEN: usize = 255;
/// Response headers kept with the answer and replayed.
pub const KEPT_HEADERS: &[&str] = &["content-type", "etag", "location", "retry-after"];

/// The record of a route's key lives beside the keys of what the route changes (same hash
/// tag, so the same Redis Cluster slot): a namespace, a queue, an agent, or the global keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Home {
    Namespace(String),
    Queue(String),
    Agent(String),
    Global,
}

/// Where the record of a POST to `path` lives; `None` for routes that do not honour the key:
/// reads sent as POST (`batch/get`) and long-polls (queue `lease`, lock acquire, which may
/// wait). A malformed name also answers `None`: the handler then refuses the request itself.
pub fn home_of(path: &str) -> Option<Home> {
    let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let named = |n: &str| validate_name("name", n).is_ok();
    match seg.as_slice() {
        ["v1", "ns", ns, rest @ ..] if named(ns) => match rest {
            ["batch", "get"] | ["locks", _] => None,
            _ => Some(Home::Namespace(ns.to_string())),
        },
        ["v1", "queues", _, "lease"] => None,
        ["v1", "queues", q, ..] if named(q) => Some(Home::Queue(q.to_string())),
        ["v1", "agents", id, ..] if named(id) => Some(Home::Agent(id.to_string())),
        ["v1", "partitions"] | ["v1", "channels", ..] => Some(Home::Global),
        _ => None,
    }
}

/// 1 ..= 255 visible ASCII characters.
pub fn validate_key(k: &str) -> ApiResult<()> {
    if k.is_empty() || k.len() > MAX_KEY_LEN || !k.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::bad_request(
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        ));
    }
    Ok(())
}

fn hex_sha256(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The record's id: the caller's scope (token; one anonymous scope until auth exists), the
/// route (method and path) and the key.
pub fn record_id(scope: &str, method: &str, path: &str, key: &str) -> String {
    hex_sha256(&[
        scope.as_bytes(),
        method.as_bytes(),
        path.as_bytes(),
        key.as_bytes(),
    ])
}

/// What makes two requests "the same": the query and the body, as canonical JSON when it is
/// JSON (key order and whitespace do not matter), else its bytes.
pub fn fingerprint(query: &str, body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => hex_sha256(&[query.as_bytes(), b"json", canonical(&v).as_bytes()]),
        Err(_) => hex_sha256(&[query.as_bytes(), b"raw", body]),
    }
}

/// The first answer, as kept for repeats.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Base64 of the body bytes.
    pub body: String,
}

impl Answer {
    pub fn new(status: u16, headers: Vec<(String, String)>, body: &[u8]) -> Self {
        Answer {
            status,
            headers,
            body: STANDARD.encode(body),
        }
    }

    pub fn body_bytes(&self) -> Vec<u8> {
        STANDARD.decode(&self.body).unwrap_or_default()
    }
}

/// The record kept under a key: the request's fingerprint, and its answer once it finished
/// (none while it runs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub fingerprint: String,
    pub answer: Option<Answer>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_that_honour_the_key() {
        let ns = |n: &str| Some(Home::Namespace(n.into()));
        assert_eq!(home_of("/v1/ns/app/batch/put"), ns("app"));
        assert_eq!(home_of("/v1/ns/app/kv/a/b/rollback"), ns("app"));
        assert_eq!(home_of("/v1/ns/app/locks/l/renew"), ns("app"));
        assert_eq!(home_of("/v1/ns/app/batch/get"), None);
        assert_eq!(home_of("/v1/ns/app/locks/l"), None);
        assert_eq!(home_of("/v1/queues/jobs/lease"), None);
        assert_eq!(home_of("/v1/queues/jobs/tasks"), Some(Home::Queue("jobs".into())));
        assert_eq!(home_of("/v1/agents/a1/heartbeat"), Some(Home::Agent("a1".into())));
        assert_eq!(home_of("/v1/partitions"), Some(Home::Global));
        assert_eq!(home_of("/v1/ns/Bad*/batch/put"), None);
        assert_eq!(home_of("/healthz"), None);
    }

    #[test]
    fn the_fingerprint_ignores_json_layout_only() {
        let a = fingerprint("", br#"{"a": 1, "b": [2]}"#);
        assert_eq!(a, fingerprint("", br#"{"b":[2],"a":1}"#));
        assert_ne!(a, fingerprint("", br#"{"a": 2, "b": [2]}"#));
        assert_ne!(a, fingerprint("on_conflict=merge", br#"{"a": 1, "b": [2]}"#));
        assert_ne!(fingerprint("", b"x"), fingerprint("", b"y"));
    }

    #[test]
    fn keys_are_visible_ascii() {
        assert!(validate_key("retry-7f3a").is_ok());
        for bad in ["", "a b", "é", &"k".repeat(256)] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
    }
}
