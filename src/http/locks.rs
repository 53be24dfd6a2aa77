//! Locks with fencing tokens (DESIGN.md "Coordination primitives").

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{json_response, validate_name, validate_text, JsonBody};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::store::agents::Held;
use crate::store::locks::{Acquire, LockInfo};

/// Longest lock TTL: one day.
const MAX_TTL_MS: u64 = 86_400_000;
/// Longest wait for a held lock.
const MAX_WAIT_MS: u64 = 30_000;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcquireBody {
    /// Who holds it (an agent id, a host name).
    owner: String,
    /// The lock expires this long after acquire / renew (1..=86400000).
    ttl_ms: u64,
    /// Wait up to this long (≤ 30000) for a held lock; woken at once by its release.
    wait_ms: Option<u64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewBody {
    token: String,
    ttl_ms: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Granted {
    namespace: String,
    name: String,
    owner: String,
    /// Renew and release with this (`x-lock-token` header to release).
    token: String,
    /// Strictly increasing per lock, across expiries and restarts.
    fencing_token: u64,
    expires_at: String,
}

fn check(ns: &str, name: &str, ttl_ms: u64) -> ApiResult<()> {
    validate_name("namespace", ns)?;
    validate_name("lock", name)?;
    if !(1..=MAX_TTL_MS).contains(&ttl_ms) {
        return Err(ApiError::bad_request(format!(
            "ttl_ms must be between 1 and {MAX_TTL_MS}"
        )));
    }
    Ok(())
}

/// Acquire a lock, optionally waiting for it.
#[utoipa::path(
    post, path = "/v1/ns/{ns}/locks/{name}", tag = "locks",
    params(("ns" = String, Path, description = "Namespace"), ("name" = String, Path, description = "Lock name ([a-z0-9][a-z0-9._-]{0,62})")),
    request_body = AcquireBody,
    responses(
        (status = 200, description = "Granted", body = Granted),
        (status = 409, description = "`lock_held` (after wait_ms)", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn acquire(
    State(st): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    JsonBody(b): JsonBody<AcquireBody>,
) -> ApiResult<Response> {
    check(&ns, &name, b.ttl_ms)?;
    validate_text("owner", &b.owner, 128)?;
    let wait = b.wait_ms.unwrap_or(0);
    if wait > MAX_WAIT_MS {
        return Err(ApiError::bad_request(format!(
            "wait_ms must be at most {MAX_WAIT_MS}"
        )));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait);
    let wake = if wait > 0 {
        Some(st.wakeups.lock(&st.store, &ns, &name).await?)
    } else {
        None
    };
    let token = uuid::Uuid::new_v4().simple().to_string();
    loop {
        let notified = wake.as_ref().map(|w| w.notified());
        tokio::pin!(notified);
        if let Some(n) = notified.as_mut().as_pin_mut() {
            n.enable();
        }
        match st
            .store
            .lock_acquire(&ns, &name, &b.owner, &token, b.ttl_ms)
            .await?
        {
            Acquire::Granted(fencing_token, exp) => {
                let held = Held::Lock {
                    ns: ns.clone(),
                    name: name.clone(),
                    token: token.clone(),
                };
                st.presence.hold(&st.store, &b.owner, vec![held]).await;
                metrics::counter!("locks_acquired_total").increment(1);
                crate::pubsub::event(
                    &st.store,
                    &format!("locks.{ns}.{name}"),
                    serde_json::json!({"event": "acquired", "namespace": ns, "lock": name, "owner": b.owner, "fencing_token": fencing_token}),
                )
                .await;
                let body = Granted {
                    namespace: ns,
                    name,
                    owner: b.owner,
                    token,
                    fencing_token,
                    expires_at: crate::store::kv::rfc3339(exp),
                };
                return Ok(json_response(StatusCode::OK, &body));
            }
            Acquire::Held(owner, exp, left_ms) => {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    metrics::counter!("locks_contended_total").increment(1);
                    return Err(ApiError::new(
                        ErrorCode::LockHeld,
                        format!("held by `{owner}` until {}", crate::store::kv::rfc3339(exp)),
                    ));
                }
                // Until released (any replica), expired, or the deadline.
                let until = deadline.min(now + Duration::from_millis(left_ms.saturating_add(1)));
                tokio::select! {
                    _ = async { if let Some(n) = notified.as_mut().as_pin_mut() { n.await } } => {}
                    _ = tokio::time::sleep_until(until) => {}
                }
            }
        }
    }
}

/// Extend the lock's TTL (holder only).
#[utoipa::path(
    post, path = "/v1/ns/{ns}/locks/{name}/renew", tag = "locks",
    params(("ns" = String, Path, description = "Namespace"), ("name" = String, Path, description = "Lock name")),
    request_body = RenewBody,
    responses(
        (status = 200, description = "Renewed: expires ttl_ms from now", body = Granted),
        (status = 404, description = "Not held (released or expired)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`lock_held`: the token is not the holder's", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn renew(
    State(st): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    JsonBody(b): JsonBody<RenewBody>,
) -> ApiResult<Response> {
    check(&ns, &name, b.ttl_ms)?;
    validate_text("token", &b.token, 64)?;
    let (fencing_token, exp) = st.store.lock_renew(&ns, &name, &b.token, b.ttl_ms).await?;
    let info = st.store.lock_get(&ns, &name).await?;
    let body = Granted {
        namespace: ns,
        name,
        owner: info.map(|i| i.owner).unwrap_or_default(),
        token: b.token,
        fencing_token,
        expires_at: crate::store::kv::rfc3339(exp),
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// Release the lock (holder only: `x-lock-token`).
#[utoipa::path(
    delete, path = "/v1/ns/{ns}/locks/{name}", tag = "locks",
    params(("ns" = String, Path, description = "Namespace"), ("name" = String, Path, description = "Lock name"),
           ("x-lock-token" = String, Header, description = "The token acquire returned")),
    responses(
        (status = 204, description = "Released; waiters are woken"),
        (status = 404, description = "Not held", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`lock_held`: the token is not the holder's", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn release(
    State(st): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    check(&ns, &name, 1)?;
    let token = headers
        .get("x-lock-token")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::bad_request("the x-lock-token header is required"))?;
    validate_text("x-lock-token", token, 64)?;
    let owner = st.store.lock_release(&ns, &name, token).await?;
    crate::pubsub::event(
        &st.store,
        &format!("locks.{ns}.{name}"),
        serde_json::json!({"event": "released", "namespace": ns, "lock": name, "owner": owner}),
    )
    .await;
    let held = Held::Lock {
        ns,
        name,
        token: token.to_string(),
    };
    st.presence.unhold(&st.store, &owner, held).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Holder, fencing token and expiry.
#[utoipa::path(
    get, path = "/v1/ns/{ns}/locks/{name}", tag = "locks",
    params(("ns" = String, Path, description = "Namespace"), ("name" = String, Path, description = "Lock name")),
    responses(
        (status = 200, description = "Held", body = LockInfo),
        (status = 404, description = "Not held", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_lock(
    State(st): State<AppState>,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    check(&ns, &name, 1)?;
    let info = st
        .store
        .lock_get(&ns, &name)
        .await?
        .ok_or_else(|| ApiError::not_found("the lock is not held"))?;
    Ok(json_response(StatusCode::OK, &info))
}
