//! Locks with fencing tokens (DESIGN.md "Coordination primitives").

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::names::{validate_name, validate_text};
use crate::error::{ApiError, ApiResult};

/// Longest lock TTL: one day.
pub const MAX_TTL_MS: u64 = 86_400_000;
/// Longest wait for a held lock.
pub const MAX_WAIT_MS: u64 = 30_000;

/// A lock as `GET` shows it (without its token).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LockInfo {
    pub namespace: String,
    pub name: String,
    pub owner: String,
    /// Strictly increasing per lock, across expiries and restarts.
    pub fencing_token: u64,
    pub acquired_at: String,
    pub expires_at: String,
}

/// `GET /v1/ns/{ns}/locks`: held locks by name.
#[derive(Serialize, ToSchema)]
pub struct LockList {
    pub items: Vec<LockInfo>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// What one acquire attempt answered.
pub enum Acquire {
    /// fencing token, expires_at (unix ms)
    Granted(u64, i64),
    /// holder, expires_at (unix ms), ms it has left (Redis' clock)
    Held(String, i64, u64),
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcquireBody {
    /// Who holds it (an agent id, a host name).
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]+$"
    )]
    pub owner: String,
    /// The lock expires this long after acquire / renew (1..=86400000).
    #[schema(minimum = 1, maximum = 86400000)]
    #[serde(deserialize_with = "crate::domain::json::int::req")]
    pub ttl_ms: u64,
    /// Wait up to this long (≤ 30000) for a held lock; woken at once by its release.
    #[schema(minimum = 0, maximum = 30000)]
    #[serde(default, deserialize_with = "crate::domain::json::int::opt")]
    pub wait_ms: Option<u64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewBody {
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]+$"
    )]
    pub token: String,
    #[schema(minimum = 1, maximum = 86400000)]
    #[serde(deserialize_with = "crate::domain::json::int::req")]
    pub ttl_ms: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Granted {
    pub namespace: String,
    pub name: String,
    pub owner: String,
    /// Renew and release with this (`x-lock-token` header to release).
    pub token: String,
    /// Strictly increasing per lock, across expiries and restarts.
    pub fencing_token: u64,
    pub expires_at: String,
}

/// Namespace, lock name and TTL of a lock request.
pub fn check_lock(ns: &str, name: &str, ttl_ms: u64) -> ApiResult<()> {
    validate_name("namespace", ns)?;
    validate_name("lock", name)?;
    if !(1..=MAX_TTL_MS).contains(&ttl_ms) {
        return Err(ApiError::bad_request(format!(
            "ttl_ms must be between 1 and {MAX_TTL_MS}"
        )));
    }
    Ok(())
}

/// A lock token as sent with renew / release.
pub fn check_token(name: &str, token: &str) -> ApiResult<()> {
    validate_text(name, token, 64)
}
