//! Authentication at the door, for every route at once: the bearer token (header, or
//! `?access_token=` on the stream routes browsers open with WebSocket / EventSource), the
//! `x-agent-id` it claims, and the request budgets. What the caller may then do is decided
//! per operation ([`crate::domain::auth::Caller::check`], called in `ops`).
//!
//! Public routes need no token: `/healthz`, `/readyz`, `/`, `/ui/…` (the dashboard), `/docs`, `/openapi.json`, and
//! `/metrics` unless `metrics_public = false`.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::domain::auth::{Permission, Scope};
use crate::error::{ApiError, ErrorCode};
use crate::ops::auth::RateInfo;
use crate::state::AppState;

/// Routes that take `?access_token=` besides the header (browsers cannot set headers on a
/// WebSocket or an EventSource).
pub const QUERY_TOKEN_ROUTES: &[&str] = &["/v1/watch", "/v1/ns/{ns}/events", "/v1/queues/{queue}/events"];

/// Whether a route template is served without a token.
pub fn is_public(route: &str, metrics_public: bool) -> bool {
    matches!(route, "/healthz" | "/readyz" | "/" | "/openapi.json")
        || route == "/docs"
        || route == "/ui/{*path}"
        || route.starts_with("/docs/")
        || (route == "/metrics" && metrics_public)
}

pub async fn layer(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let auth = st.ops.auth();
    if auth.enabled() && is_public(&route, st.cfg.metrics_public) {
        return next.run(req).await;
    }
    let from_query = if QUERY_TOKEN_ROUTES.contains(&route.as_str()) {
        take_query_token(&mut req)
    } else {
        None
    };
    let bearer = match bearer(&req) {
        Ok(b) => b.or(from_query),
        Err(e) if auth.enabled() => return challenge(e),
        Err(_) => None,
    };
    let caller = match auth.authenticate(bearer.as_deref()) {
        Ok(c) => c,
        Err(e) => return challenge(e),
    };
    // The same reading of `x-agent-id` as the one stored with writes (trimmed UTF-8).
    let agent = match super::extract::header_text(req.headers(), "x-agent-id", 128) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let info = match auth.admit(&caller, agent.as_deref()) {
        Ok(i) => i,
        Err(limited) => {
            metrics::counter!("http_rate_limited_total", "token" => caller.name().to_string()).increment(1);
            let mut res = limited.error.into_response();
            rate_headers(&mut res, &limited.info);
            return res;
        }
    };
    if let Some(a) = &agent {
        // The agent a request claims to be must be one the token may act as.
        if let Err(e) = caller.check(Permission::Read, Scope::ActAs(a)) {
            let mut res = e.into_response();
            if let Some(i) = info {
                rate_headers(&mut res, &i);
            }
            return res;
        }
    }
    req.extensions_mut().insert(caller);
    let mut res = next.run(req).await;
    if let Some(i) = info {
        rate_headers(&mut res, &i);
    }
    res
}

/// 401 with the `WWW-Authenticate: Bearer` challenge (RFC 6750).
fn challenge(e: ApiError) -> Response {
    let invalid = e.detail.starts_with("unknown");
    let mut res = e.into_response();
    let value = if invalid {
        r#"Bearer realm="swarmstate", error="invalid_token""#
    } else {
        r#"Bearer realm="swarmstate""#
    };
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(value));
    res
}

/// The token of `Authorization: Bearer <token>`; 401 for another scheme or a malformed one.
fn bearer(req: &Request) -> Result<Option<String>, ApiError> {
    let Some(v) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?
        .trim();
    let (scheme, token) = s.split_once(' ').unwrap_or((s, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "the Authorization header must be `Bearer <token>`",
        ));
    }
    Ok(Some(token.trim().to_string()))
}

/// Remove `access_token` from the query (so no later layer, log line or query parser sees
/// it) and return its value.
fn take_query_token(req: &mut Request) -> Option<String> {
    let query = req.uri().query()?;
    let mut token = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if k == "access_token" {
                token = Some(
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8_lossy()
                        .into_owned(),
                );
                false
            } else {
                true
            }
        })
        .collect();
    token.as_ref()?;
    let path = req.uri().path();
    let pq = if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = pq.parse().ok();
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    token.filter(|t| !t.is_empty())
}

/// The URI as logged: the value of any parameter whose (percent-decoded) name is
/// `access_token` replaced by `REDACTED`.
pub fn redacted_uri(uri: &Uri) -> String {
    let Some(q) = uri.query() else {
        return uri.to_string();
    };
    let is_token =
        |k: &str| percent_encoding::percent_decode_str(k).decode_utf8_lossy().trim() == "access_token";
    let mut out = String::with_capacity(q.len());
    let mut redacted = false;
    for (i, pair) in q.split(['&', ';']).enumerate() {
        if i > 0 {
            out.push('&');
        }
        let (k, _) = pair.split_once('=').unwrap_or((pair, ""));
        if is_token(k) {
            out.push_str("access_token=REDACTED");
            redacted = true;
        } else {
            out.push_str(pair);
        }
    }
    if !redacted {
        return uri.to_string();
    }
    format!("{}?{out}", uri.path())
}

static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

fn rate_headers(res: &mut Response, i: &RateInfo) {
    let h = res.headers_mut();
    h.insert(RATELIMIT_LIMIT.clone(), HeaderValue::from(i.limit));
    h.insert(RATELIMIT_REMAINING.clone(), HeaderValue::from(i.remaining));
    h.insert(RATELIMIT_RESET.clone(), HeaderValue::from(i.reset));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_in_queries_are_redacted() {
        let u: Uri = "/v1/watch?access_token=s3cret&x=1".parse().unwrap();
        assert_eq!(redacted_uri(&u), "/v1/watch?access_token=REDACTED&x=1");
        let u: Uri = "/v1/watch?access%5Ftoken=s3cret".parse().unwrap();
        assert_eq!(redacted_uri(&u), "/v1/watch?access_token=REDACTED");
        let u: Uri = "/v1/watch?x=1;access_token=s3cret".parse().unwrap();
        assert!(!redacted_uri(&u).contains("s3cret"));
        let u: Uri = "/v1/ns/a/events".parse().unwrap();
        assert_eq!(redacted_uri(&u), "/v1/ns/a/events");
    }
}
