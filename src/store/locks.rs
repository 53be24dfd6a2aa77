//! Locks with fencing tokens: wrappers of the `lock_*` functions of
//! `migrations/functions/locks.lua`.

use fred::prelude::*;
use fred::types::Value;

use super::fcall::{Arity, Function, Reply};
use super::Store;
use crate::domain::lock::{Acquire, LockInfo};
use crate::domain::time::rfc3339;
use crate::error::{ApiError, ApiResult, ErrorCode};

pub const LOCK_ACQUIRE: Function = Function::new("lock_acquire", Arity::Exactly(3), Arity::Exactly(4));
pub const LOCK_RENEW: Function = Function::new("lock_renew", Arity::Exactly(2), Arity::Exactly(3));
pub const LOCK_RELEASE: Function = Function::new("lock_release", Arity::Exactly(2), Arity::Exactly(3));
pub const LOCK_FREE: Function = Function::new("lock_free", Arity::Exactly(2), Arity::Exactly(3));

pub const FUNCTIONS: &[&Function] = &[&LOCK_ACQUIRE, &LOCK_RENEW, &LOCK_RELEASE, &LOCK_FREE];

/// `{'none'}` / `{'held', owner}` of renew and release.
fn not_holder(r: &mut Reply, status: &str) -> ApiError {
    match status {
        "none" => ApiError::not_found("the lock is not held (released or expired)"),
        _ => ApiError::new(
            ErrorCode::LockHeld,
            format!("the lock is held by `{}` and this token is not its", r.str()),
        ),
    }
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
        let keys = vec![nk.lock(name), nk.fence(), nk.locks()];
        let args: Vec<Value> = vec![name.into(), owner.into(), token.into(), (ttl_ms as i64).into()];
        let mut r = self.fcall(&LOCK_ACQUIRE, keys, args).await?;
        match r.status()?.as_str() {
            "ok" => Ok(Acquire::Granted(r.u64("fencing")?, r.i64("expires_at")?)),
            "held" => {
                let holder = r.str();
                let exp = r.opt_i64().unwrap_or(0);
                Ok(Acquire::Held(holder, exp, r.u64_or_0()))
            }
            other => Err(r.unexpected(other)),
        }
    }

    /// Returns (fencing token, expires_at ms).
    pub async fn lock_renew(&self, ns: &str, name: &str, token: &str, ttl_ms: u64) -> ApiResult<(u64, i64)> {
        let nk = self.keys().ns(ns);
        let keys = vec![nk.lock(name), nk.locks()];
        let args = vec![token.into(), (ttl_ms as i64).into(), name.into()];
        let mut r = self.fcall(&LOCK_RENEW, keys, args).await?;
        match r.status()?.as_str() {
            "ok" => Ok((r.u64_or_0(), r.opt_i64().unwrap_or(0))),
            other => Err(not_holder(&mut r, other)),
        }
    }

    /// Returns the owner it had.
    pub async fn lock_release(&self, ns: &str, name: &str, token: &str) -> ApiResult<String> {
        let nk = self.keys().ns(ns);
        let keys = vec![nk.lock(name), nk.locks()];
        let channel = self.keys().lock_channel(ns, name);
        let args = vec![token.into(), channel.into(), name.into()];
        let mut r = self.fcall(&LOCK_RELEASE, keys, args).await?;
        match r.status()?.as_str() {
            "ok" => Ok(r.str()),
            other => Err(not_holder(&mut r, other)),
        }
    }

    /// Free the lock if `token` still holds it (its holder is gone). Returns whether it did.
    pub async fn lock_free(&self, ns: &str, name: &str, token: &str) -> ApiResult<bool> {
        let nk = self.keys().ns(ns);
        let keys = vec![nk.lock(name), nk.locks()];
        let channel = self.keys().lock_channel(ns, name);
        let args = vec![token.into(), channel.into(), name.into()];
        Ok(self.fcall(&LOCK_FREE, keys, args).await?.flag())
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
            acquired_at: rfc3339(ms("acquired_at")),
            expires_at: rfc3339(ms("expires_at")),
        }))
    }

    /// The names of the locks of `ns` granted, not released and not expired at `now_ms`
    /// (the namespace's `locks` index).
    pub async fn lock_names(&self, ns: &str, now_ms: i64) -> ApiResult<Vec<String>> {
        let key = self.keys().ns(ns).locks();
        self.timed(
            "zrangebyscore",
            self.client()
                .zrangebyscore(key, format!("({now_ms}"), "+inf", false, None),
        )
        .await
    }

    /// The token holding the lock, if any.
    pub async fn lock_token(&self, ns: &str, name: &str) -> ApiResult<Option<String>> {
        let key = self.keys().ns(ns).lock(name);
        self.timed("hget", self.client().hget(key, "token")).await
    }
}
