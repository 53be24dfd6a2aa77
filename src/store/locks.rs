//! Locks with fencing tokens: wrappers of the `lock_*` functions.

use fred::prelude::*;
use fred::types::Value;
use serde::Serialize;
use utoipa::ToSchema;

use super::{v_str, v_u64, Store};
use crate::error::{ApiError, ApiResult, ErrorCode};

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

/// What acquire answered.
pub enum Acquire {
    /// fencing token, expires_at (unix ms)
    Granted(u64, i64),
    /// holder, expires_at (unix ms), ms it has left (Redis' clock)
    Held(String, i64, u64),
}

fn held(owner: Option<String>) -> ApiError {
    ApiError::new(
        ErrorCode::LockHeld,
        format!(
            "the lock is held by `{}` and this token is not its",
            owner.unwrap_or_default()
        ),
    )
}

impl Store {
    pub async fn lock_acquire(
        &self,
        ns: &str,
        name: &str,
        owner: &str,
        token: &str,
        ttl_ms: u64,
    ) -> ApiResult<Acquire> {
        let nk = self.keys().ns(ns);
        let keys = vec![nk.lock(name), nk.fence()];
        let args: Vec<Value> = vec![name.into(), owner.into(), token.into(), (ttl_ms as i64).into()];
        let a = self.fcall("lock_acquire", keys, args).await?.into_array();
        let ms = |i: usize| {
            a.get(i)
                .and_then(v_str)
                .and_then(|s| s.parse::<i64>().ok())
                .unwrap_or(0)
        };
        match a.first().and_then(v_str).as_deref() {
            Some("ok") => Ok(Acquire::Granted(a.get(1).map(v_u64).unwrap_or(0), ms(2))),
            Some("held") => Ok(Acquire::Held(
                a.get(1).and_then(v_str).unwrap_or_default(),
                ms(2),
                ms(3).max(0) as u64,
            )),
            _ => Err(ApiError::internal(format!(
                "unexpected reply from lock_acquire: {a:?}"
            ))),
        }
    }

    /// Returns (fencing token, expires_at ms).
    pub async fn lock_renew(&self, ns: &str, name: &str, token: &str, ttl_ms: u64) -> ApiResult<(u64, i64)> {
        let keys = vec![self.keys().ns(ns).lock(name)];
        let a = self
            .fcall("lock_renew", keys, vec![token.into(), (ttl_ms as i64).into()])
            .await?
            .into_array();
        match a.first().and_then(v_str).as_deref() {
            Some("ok") => Ok((
                a.get(1).map(v_u64).unwrap_or(0),
                a.get(2).and_then(v_str).and_then(|s| s.parse().ok()).unwrap_or(0),
            )),
            Some("none") => Err(ApiError::not_found("the lock is not held (released or expired)")),
            _ => Err(held(a.get(1).and_then(v_str))),
        }
    }

    /// Returns the owner it had.
    pub async fn lock_release(&self, ns: &str, name: &str, token: &str) -> ApiResult<String> {
        let keys = vec![self.keys().ns(ns).lock(name)];
        let channel = self.keys().lock_channel(ns, name);
        let a = self
            .fcall("lock_release", keys, vec![token.into(), channel.into()])
            .await?
            .into_array();
        match a.first().and_then(v_str).as_deref() {
            Some("ok") => Ok(a.get(1).and_then(v_str).unwrap_or_default()),
            Some("none") => Err(ApiError::not_found("the lock is not held (released or expired)")),
            _ => Err(held(a.get(1).and_then(v_str))),
        }
    }

    pub async fn lock_get(&self, ns: &str, name: &str) -> ApiResult<Option<LockInfo>> {
        let key = self.keys().ns(ns).lock(name);
        let m: std::collections::HashMap<String, String> =
            self.timed("hgetall", self.client().hgetall(key)).await?;
        if m.is_empty() {
            return Ok(None);
        }
        let ms = |k: &str| m.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        Ok(Some(LockInfo {
            namespace: ns.to_string(),
            name: name.to_string(),
            owner: m.get("owner").cloned().unwrap_or_default(),
            fencing_token: m.get("fencing").and_then(|v| v.parse().ok()).unwrap_or(0),
            acquired_at: super::kv::rfc3339(ms("acquired_at")),
            expires_at: super::kv::rfc3339(ms("expires_at")),
        }))
    }
}
