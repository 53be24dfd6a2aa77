//! Agent presence upkeep: a watcher that marks agents whose heartbeat deadline passed as
//! `lost`, frees the locks they held and returns their leased tasks to their queues at once,
//! and announces it on the pub/sub channel `agents.<id>`. It also keeps a per-process set of
//! registered agent ids, so lock grants and task leases are recorded against an agent only
//! when the owner/worker is one (no extra Redis call otherwise).

use std::collections::HashSet;
use std::sync::RwLock;
use std::time::Duration;

use tokio::sync::watch;

use crate::store::agents::Held;
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
        if self.is_agent(owner) {
            if let Err(e) = store.agent_hold(owner, &held).await {
                tracing::warn!(owner, error = %e.detail, "could not record what an agent holds");
            }
        }
    }

    pub async fn unhold(&self, store: &Store, owner: &str, held: Held) {
        if self.is_agent(owner) {
            let _ = store.agent_unhold(owner, &held).await;
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
    crate::pubsub::event(store, &format!("agents.{id}"), msg).await;
}

/// Free what an agent held and announce why.
pub async fn release(store: &Store, id: &str, state: &str, held: Vec<Held>) {
    let why = format!("agent {id} {state}");
    match store.agent_free(&held, &why).await {
        Ok((locks, tasks)) => {
            announce(
                store,
                id,
                state,
                serde_json::json!({"released_locks": locks, "requeued_tasks": tasks}),
            )
            .await;
        }
        Err(e) => tracing::warn!(id, error = %e.detail, "freeing a lost agent's resources failed"),
    }
}

/// Every 250 ms: agents past their heartbeat deadline become lost. Every 2 s: refresh the set of
/// known agent ids. Idempotent across replicas (the function marks an agent lost once).
pub async fn watcher(presence: std::sync::Arc<Presence>, store: Store, stopped: watch::Receiver<bool>) {
    let mut every = crate::app::Every::new(Duration::from_millis(250), stopped);
    let mut n = 0u64;
    while every.tick().await {
        n += 1;
        if n % 8 == 1 {
            if let Ok(ids) = store.agent_ids().await {
                // Merged, not replaced: an agent registered here while the read was in flight
                // must not drop out (agents are never removed from the index, so nothing is lost).
                if let Ok(mut k) = presence.known.write() {
                    k.extend(ids);
                }
            }
        }
        let Ok(overdue) = store.agents_overdue(crate::store::kv::now_ms()).await else {
            continue;
        };
        for id in overdue {
            match store.agent_mark_lost(&id).await {
                Ok(Some(held)) => {
                    let _ = store.agent_untrack_if_due(&id).await;
                    metrics::counter!("agents_lost_total").increment(1);
                    tracing::info!(id, held = held.len(), "agent missed its heartbeat: lost");
                    release(&store, &id, "lost", held).await;
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(id, error = %e.detail, "lost-agent check failed; will retry"),
            }
        }
    }
}
