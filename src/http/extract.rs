//! Extractors every handler shares: JSON bodies and query strings whose rejections are our
//! problem documents, provenance headers, key paths (keys may contain `/`), and the HTTP
//! forms of preconditions (ETag, If-Match, If-None-Match).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::domain::auth::Caller;
use crate::domain::kv::{Expect, Provenance};
use crate::domain::names::{parse_fence, validate_key, validate_name};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::state::AppState;

/// A JSON request body. Parsed whatever the Content-Type says (curl's `-d` sends a form type),
/// with syntax errors answered 400 `malformed_json` and shape errors 422 `invalid_body`.
pub struct JsonBody<T>(pub T);

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> ApiResult<Bytes> {
    Bytes::from_request(req, state).await.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                "the request body is larger than the configured limit",
            )
        } else {
            ApiError::bad_request(format!("reading the body failed: {rej}"))
        }
    })
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        parse_json(&body_bytes(req, state).await?).map(JsonBody)
    }
}

/// A body of any JSON value (a merge patch), with the error classification of [`JsonBody`].
pub struct AnyJson(pub serde_json::Value);

impl<S: Send + Sync> FromRequest<S> for AnyJson {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        parse_any(&body_bytes(req, state).await?).map(AnyJson)
    }
}

/// Parse a JSON object body into `T` (every request document is an object: serde would
/// otherwise also take a struct from an array such as `[null, null]`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') {
        return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Ok(_) => ApiError::new(ErrorCode::InvalidBody, "invalid body: a JSON object is expected"),
            Err(e) => ApiError::new(ErrorCode::MalformedJson, format!("malformed JSON: {e}")),
        });
    }
    parse_any(bytes)
}

fn parse_any<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    if bytes.is_empty() {
        return Err(ApiError::new(
            ErrorCode::MalformedJson,
            "the request body is empty; JSON expected",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::new(ErrorCode::InvalidBody, format!("invalid body: {e}")),
            _ => ApiError::new(ErrorCode::MalformedJson, format!("malformed JSON: {e}")),
        }
    })
}

/// Query string with rejections as 400 `invalid_argument`.
pub struct Q<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(t)| Q(t))
            .map_err(|e| ApiError::bad_request(format!("query: {}", e.body_text())))
    }
}

/// The caller the auth layer ([`super::auth`]) found for this request. Fails closed: a route
/// the layer did not authenticate gets 401 while a tokens file is in use.
pub struct Who(pub Caller);

impl FromRequestParts<AppState> for Who {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Caller>() {
            Some(c) => Ok(Who(c.clone())),
            None if !st.ops.auth().enabled() => Ok(Who(Caller::Open)),
            None => Err(ApiError::unauthorized(
                "this route needs `Authorization: Bearer <token>`",
            )),
        }
    }
}

/// `x-agent-id` / `x-change-reason` / `x-fencing-token`, validated.
impl<S: Send + Sync> FromRequestParts<S> for Provenance {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let fence = match header_text(&parts.headers, "x-fencing-token", 128)? {
            None => None,
            Some(v) => {
                let (lock, n) = parse_fence(&v).ok_or_else(|| {
                    ApiError::bad_request(
                        "x-fencing-token must be <lock>:<n> (a lock of this namespace and the fencing_token it granted)",
                    )
                })?;
                Some((lock.to_string(), n))
            }
        };
        Ok(Provenance {
            agent: header_text(&parts.headers, "x-agent-id", 128)?,
            reason: header_text(&parts.headers, "x-change-reason", 1024)?,
            fence,
        })
    }
}

/// A header's text, trimmed; `None` when absent or empty; 400 when not UTF-8, longer than
/// `max` or holding control characters.
pub fn header_text(h: &HeaderMap, name: &str, max: usize) -> ApiResult<Option<String>> {
    let Some(v) = h.get(name) else { return Ok(None) };
    let s = std::str::from_utf8(v.as_bytes())
        .map_err(|_| ApiError::bad_request(format!("{name} must be UTF-8")))?
        .trim();
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() > max || s.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{name} must be at most {max} bytes without control characters"
        )));
    }
    Ok(Some(s.to_string()))
}

/// A header as text, if present and visible ASCII.
pub fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// What a `/v1/ns/{ns}/kv/{*key}` path addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvSub {
    Entry,
    History,
    Rollback,
}

/// Namespace and key of a key route, percent-decoded and validated. A raw (unencoded) path
/// ending in `/history` (GET) or `/rollback` (POST) addresses that sub-resource; a key whose
/// last segment really is `history` is reached by encoding its slash as `%2F`.
pub struct KvPath {
    pub ns: String,
    pub key: String,
    pub sub: KvSub,
}

impl<S: Send + Sync> FromRequestParts<S> for KvPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // The raw (still percent-encoded) path: an encoded `%2F` must stay part of the key.
        let path = parts.uri.path();
        let (ns_raw, key_raw) = path
            .strip_prefix("/v1/ns/")
            .and_then(|r| r.split_once('/'))
            .and_then(|(ns, r)| Some((ns, r.strip_prefix("kv/")?)))
            .ok_or_else(|| ApiError::not_found("no route here"))?;
        let (key_raw, sub) = match parts.method {
            Method::GET | Method::HEAD => match key_raw.strip_suffix("/history") {
                Some(k) if !k.is_empty() => (k, KvSub::History),
                _ => (key_raw, KvSub::Entry),
            },
            Method::POST => match key_raw.strip_suffix("/rollback") {
                Some(k) if !k.is_empty() => (k, KvSub::Rollback),
                _ => {
                    return Err(ApiError::new(
                        ErrorCode::MethodNotAllowed,
                        "POST is only for .../kv/{key}/rollback; write entries with PUT",
                    ))
                }
            },
            _ => (key_raw, KvSub::Entry),
        };
        let ns = decode(ns_raw, "namespace")?;
        validate_name("namespace", &ns)?;
        let key = decode(key_raw, "key")?;
        validate_key(&key)?;
        Ok(KvPath { ns, key, sub })
    }
}

fn decode(raw: &str, what: &str) -> ApiResult<String> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| ApiError::invalid_name(format!("the {what} is not valid UTF-8 once percent-decoded")))
}

/// Parse `If-Match` / `If-None-Match` into a write precondition.
pub fn precondition(h: &HeaderMap, allow_none_match: bool) -> ApiResult<Option<Expect>> {
    let im = h
        .get(header::IF_MATCH)
        .map(|v| v.to_str().unwrap_or("\u{0}").trim().to_string());
    let inm = h
        .get(header::IF_NONE_MATCH)
        .map(|v| v.to_str().unwrap_or("\u{0}").trim().to_string());
    match (im, inm) {
        (Some(_), Some(_)) => Err(ApiError::bad_request("send If-Match or If-None-Match, not both")),
        (Some(m), None) => {
            if m == "*" {
                return Ok(Some(Expect::Exists));
            }
            parse_etag(&m).map(|v| Some(Expect::Version(v))).ok_or_else(|| {
                ApiError::bad_request(format!("If-Match must be `*` or an ETag like \"3\" (got `{m}`)"))
            })
        }
        (None, Some(n)) => {
            if n == "*" && allow_none_match {
                Ok(Some(Expect::Absent))
            } else {
                Err(ApiError::bad_request(
                    "If-None-Match only accepts `*` here (create-only)",
                ))
            }
        }
        (None, None) => Ok(None),
    }
}

/// `"3"`, `W/"3"` or `3` → 3.
pub fn parse_etag(s: &str) -> Option<u64> {
    let s = s.strip_prefix("W/").unwrap_or(s);
    let s = s.strip_prefix('"').and_then(|x| x.strip_suffix('"')).unwrap_or(s);
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The ETag of a version.
pub fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_parse() {
        assert_eq!(parse_etag("\"3\""), Some(3));
        assert_eq!(parse_etag("W/\"12\""), Some(12));
        assert_eq!(parse_etag("7"), Some(7));
        assert_eq!(parse_etag("\"x\""), None);
        assert_eq!(parse_etag("\"99999999999999999999999\""), None);
    }
}
