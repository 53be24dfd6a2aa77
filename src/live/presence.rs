//! Agent presence: a per-process set of registered agent ids (so lock grants and task leases
//! are recorded against an agent only when the owner/worker is one, with no extra Redis call
//! otherwise), the record of what agents hold, and the freeing of it when an agent is lost or
//! terminated, announced on the pub/sub channel `agents.<id>`.

use std::collections::HashSet;
use std::sync::RwLock;

use crate::domain::agent::Held;
use crate::domain::time::now_ms;
use crate::store::Store;

#[derive(Default)]
pub struct Presence {
    known: RwLock<HashSet<String>>,
}

impl Presence {
    pub fn is_agent(&self, id: &str) -> bool {
        self.known.read().map(|k| k.contains(id)).unwrap_or(false)
    }

    pub fn add(&self, id: &str) {
        if let Ok(mut k) = self.known.write() {
            k.insert(id.to_string());
        }
    }

    /// Record resources held by `owner` if it is a registered agent. Best effort: the
    /// resource itself is already granted; failing to record it only means it is freed by its
    /// own TTL instead of at once if the agent is lost.
    pub async fn hold(&self, store: &Store, owner: &str, held: Vec<Held>) {
        if !held.is_empty() && self.is_agent(owner) {
            if let Err(e) = store.agent_hold(owner, &held).await {
                tracing::warn!(owner, error = %e.detail, "could not record what an agent holds");
            }
        }
    }

    /// The resource is no longer held by `owner`.
    pub async fn unhold(&self, store: &Store, owner: &str, held: Held) {
        if self.is_agent(owner) {
            let _ = store.agent_unhold(owner, &[held]).await;
        }
    }

    /// Every 2 s: merge the registered agent ids into the known set. Merged, not replaced:
    /// an agent registered here while the read was in flight must not drop out (agents are
    /// never removed from the index, so nothing is lost).
    pub async fn refresh(&self, store: &Store) {
        if let Ok(ids) = store.agent_ids().await {
            if let Ok(mut k) = self.known.write() {
                k.extend(ids);
            }
        }
    }

    /// Agents past their heartbeat deadline become lost and what they held is freed.
    /// Idempotent across replicas (the function marks an agent lost once).
    pub async fn mark_overdue(&self, store: &Store) {
        let Ok(overdue) = store.agents_overdue(now_ms()).await else {
            return;
        };
        for id in overdue {
            match store.agent_mark_lost(&id).await {
                Ok(Some(held)) => {
                    let _ = store.agent_untrack_if_due(&id).await;
                    metrics::counter!("agents_lost_total").increment(1);
                    tracing::info!(id, held = held.len(), "agent missed its heartbeat: lost");
                    release(store, &id, "lost", held).await;
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(id, error = %e.detail, "lost-agent check failed; will retry"),
            }
        }
    }
}

/// Announce an agent's state change on `agents.<id>`.
pub async fn announce(store: &Store, id: &str, state: &str, extra: serde_json::Value) {
    let mut msg = serde_json::json!({"agent": id, "state": state});
    if let (Some(m), Some(x)) = (msg.as_object_mut(), extra.as_object()) {
        for (k, v) in x {
            m.insert(k.clone(), v.clone());
        }
    }
    super::pubsub::event(store, store.keys().agent_events(id), msg).await;
}

/// Free what an agent held (its locks released, its leased tasks requeued at once) and
/// announce why. One failure does not leave the rest to their TTLs.
pub async fn release(store: &Store, id: &str, state: &str, held: Vec<Held>) {
    let why = format!("agent {id} {state}");
    let (mut locks, mut tasks) = (0u64, 0u64);
    for h in &held {
        match h {
            Held::Lock { ns, name, token } => match store.lock_free(ns, name, token).await {
                Ok(freed) => locks += u64::from(freed),
                Err(e) => tracing::warn!(ns, name, error = %e.detail, "could not free a lost agent's lock"),
            },
            Held::Task { queue, id, token } => match store.q_requeue(queue, id, token, &why).await {
                Ok(back) => tasks += u64::from(back),
                Err(e) => {
                    tracing::warn!(queue, id, error = %e.detail, "could not requeue a lost agent's task")
                }
            },
        }
    }
    announce(
        store,
        id,
        state,
        serde_json::json!({"released_locks": locks, "requeued_tasks": tasks}),
    )
    .await;
}

/// Drop entries of the agent's held set whose resource it no longer holds (lock released
/// or expired, lease acked, expired or re-leased) once the set has grown past `keep`, so the
/// set stays bounded for long-lived agents. Returns how many were dropped.
pub async fn prune_held(store: &Store, id: &str, keep: u64) -> crate::error::ApiResult<u64> {
    if store.agent_held_count(id).await? <= keep {
        return Ok(0);
    }
    let mut stale = Vec::new();
    for m in store.agent_held_members(id).await? {
        let live = match Held::parse_member(&m) {
            Some(h) => store.held_is_live(&h).await?,
            None => false,
        };
        if !live {
            stale.push(m);
        }
    }
    let n = stale.len() as u64;
    store.agent_forget_members(id, stale).await?;
    Ok(n)
}
