//! Lock operations: acquire (optionally waiting, woken by a release on any replica), renew,
//! release, read. A lock whose owner is a registered agent is recorded against it, and every
//! grant and release is announced on `locks.<ns>.<name>`.

use std::time::Duration;

use super::Ops;
use crate::domain::agent::Held;
use crate::domain::auth::{Caller, Permission, Scope};
use crate::domain::lock::{
    check_lock, check_token, Acquire, AcquireBody, Granted, LockInfo, RenewBody, MAX_WAIT_MS,
};
use crate::domain::names::{validate_name, validate_text};
use crate::domain::page::{encode_cursor, Page};
use crate::domain::time::rfc3339;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::live::pubsub::event;

impl Ops {
    pub async fn lock_acquire(
        &self,
        who: &Caller,
        ns: &str,
        name: &str,
        b: AcquireBody,
    ) -> ApiResult<Granted> {
        who.check(Permission::Write, Scope::Namespace(ns))?;
        who.check(Permission::Write, Scope::ActAs(&b.owner))?;
        check_lock(ns, name, b.ttl_ms)?;
        validate_text("owner", &b.owner, 128)?;
        let wait = b.wait_ms.unwrap_or(0);
        if wait > MAX_WAIT_MS {
            return Err(ApiError::bad_request(format!(
                "wait_ms must be at most {MAX_WAIT_MS}"
            )));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait);
        let wake = if wait > 0 {
            Some(self.wakeups.lock(&self.store, ns, name).await?)
        } else {
            None
        };
        let token = uuid::Uuid::new_v4().simple().to_string();
        let stop = self.stopping();
        tokio::pin!(stop);
        loop {
            let notified = wake.as_ref().map(|w| w.notified());
            tokio::pin!(notified);
            if let Some(n) = notified.as_mut().as_pin_mut() {
                n.enable();
            }
            match self
                .store
                .lock_acquire(ns, name, &b.owner, &token, b.ttl_ms)
                .await?
            {
                Acquire::Granted(fencing_token, exp) => {
                    let held = Held::Lock {
                        ns: ns.to_string(),
                        name: name.to_string(),
                        token: token.clone(),
                    };
                    self.presence.hold(&self.store, &b.owner, vec![held]).await;
                    metrics::counter!("locks_acquired_total").increment(1);
                    event(
                        &self.store,
                        self.store.keys().lock_events(ns, name),
                        serde_json::json!({"event": "acquired", "namespace": ns, "lock": name, "owner": b.owner, "fencing_token": fencing_token}),
                    )
                    .await;
                    return Ok(Granted {
                        namespace: ns.to_string(),
                        name: name.to_string(),
                        owner: b.owner,
                        token,
                        fencing_token,
                        expires_at: rfc3339(exp),
                    });
                }
                Acquire::Held(owner, exp, left_ms) => {
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        metrics::counter!("locks_contended_total").increment(1);
                        return Err(ApiError::new(
                            ErrorCode::LockHeld,
                            format!("held by `{owner}` until {}", rfc3339(exp)),
                        ));
                    }
                    // Until released (any replica), expired, or the deadline.
                    let until = deadline.min(now + Duration::from_millis(left_ms.saturating_add(1)));
                    tokio::select! {
                        _ = async { if let Some(n) = notified.as_mut().as_pin_mut() { n.await } } => {}
                        _ = tokio::time::sleep_until(until) => {}
                        _ = &mut stop => {
                            metrics::counter!("locks_contended_total").increment(1);
                            return Err(ApiError::new(
                                ErrorCode::LockHeld,
                                format!("held by `{owner}` until {} (the service is shutting down)", rfc3339(exp)),
                            ));
                        }
                    }
                }
            }
        }
    }

    pub async fn lock_renew(&self, who: &Caller, ns: &str, name: &str, b: RenewBody) -> ApiResult<Granted> {
        who.check(Permission::Write, Scope::Namespace(ns))?;
        check_lock(ns, name, b.ttl_ms)?;
        check_token("token", &b.token)?;
        let (fencing_token, exp) = self.store.lock_renew(ns, name, &b.token, b.ttl_ms).await?;
        let info = self.store.lock_get(ns, name).await?;
        Ok(Granted {
            namespace: ns.to_string(),
            name: name.to_string(),
            owner: info.map(|i| i.owner).unwrap_or_default(),
            token: b.token,
            fencing_token,
            expires_at: rfc3339(exp),
        })
    }

    /// Release with the holder's token; waiters are woken.
    pub async fn lock_release(
        &self,
        who: &Caller,
        ns: &str,
        name: &str,
        token: Option<&str>,
    ) -> ApiResult<()> {
        who.check(Permission::Write, Scope::Namespace(ns))?;
        check_lock(ns, name, 1)?;
        let token = token.ok_or_else(|| ApiError::bad_request("the x-lock-token header is required"))?;
        check_token("x-lock-token", token)?;
        let owner = self.store.lock_release(ns, name, token).await?;
        event(
            &self.store,
            self.store.keys().lock_events(ns, name),
            serde_json::json!({"event": "released", "namespace": ns, "lock": name, "owner": owner}),
        )
        .await;
        let held = Held::Lock {
            ns: ns.to_string(),
            name: name.to_string(),
            token: token.to_string(),
        };
        self.presence.unhold(&self.store, &owner, held).await;
        Ok(())
    }

    pub async fn lock_get(&self, who: &Caller, ns: &str, name: &str) -> ApiResult<LockInfo> {
        who.check(Permission::Read, Scope::Namespace(ns))?;
        check_lock(ns, name, 1)?;
        self.store
            .lock_get(ns, name)
            .await?
            .ok_or_else(|| ApiError::not_found("the lock is not held"))
    }

    /// A page of the locks of `ns` held now, by name (from the namespace's index of locks
    /// granted and not released, read past the ones already expired).
    pub async fn locks(
        &self,
        who: &Caller,
        ns: &str,
        page: &Page,
    ) -> ApiResult<(Vec<LockInfo>, Option<String>)> {
        who.check(Permission::Read, Scope::Namespace(ns))?;
        validate_name("namespace", ns)?;
        // Two seconds of slack for the service's clock against Redis' (which expires the
        // locks): a lock that already expired is then skipped by its own read.
        let mut names = self
            .store
            .lock_names(ns, crate::domain::time::now_ms() - 2000)
            .await?;
        names.retain(|n| page.wants(n));
        names.sort();
        let mut items = Vec::new();
        let mut more = false;
        for name in names {
            if let Some(l) = self.store.lock_get(ns, &name).await? {
                if items.len() == page.limit {
                    more = true;
                    break;
                }
                items.push(l);
            }
        }
        let next = more
            .then(|| items.last().map(|l| encode_cursor(&l.name)))
            .flatten();
        Ok((items, next))
    }
}
