//! Task-queue plumbing shared by all requests of a process: one pattern subscription to every
//! queue's state-change channel (`<p>:q:*`, published by the queue functions), which wakes
//! long-polling leases at once and feeds `queue` watches and the queue SSE stream; and the
//! light background reaper that keeps idle queues moving (due delayed tasks, expired leases,
//! retention) and refreshes the queue metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::*;
use tokio::sync::{broadcast, watch, Notify, OnceCell};

use crate::error::{ApiError, ApiResult};
use crate::store::Store;

/// Task events buffered per queue for slow `queue` watchers.
const EVENTS_CAPACITY: usize = 1024;

/// Per-queue wakeup and event fan-out.
pub struct QueueChan {
    /// One long-polling lease of this process is woken per task that becomes ready (any
    /// replica); a woken lease that took a full batch wakes the next one (see the handler).
    pub ready: Notify,
    /// Task state changes as JSON (`{"id","queue","state",...}`).
    pub events: broadcast::Sender<Arc<str>>,
}

impl QueueChan {
    pub fn new() -> QueueChan {
        QueueChan {
            ready: Notify::new(),
            events: broadcast::channel(EVENTS_CAPACITY).0,
        }
    }
}

impl Default for QueueChan {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Default)]
pub struct QueueHub {
    client: OnceCell<SubscriberClient>,
    chans: Arc<Mutex<HashMap<String, Arc<QueueChan>>>>,
}

impl QueueHub {
    /// The queue's channel object (created on first use).
    pub fn chan(&self, q: &str) -> Arc<QueueChan> {
        let mut m = match self.chans.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if m.len() >= 256 && !m.contains_key(q) {
            // Drop queues nobody in this process waits on or listens to any more.
            m.retain(|_, c| Arc::strong_count(c) > 1 || c.events.receiver_count() > 0);
        }
        m.entry(q.to_string()).or_default().clone()
    }

    /// Subscribe to the queue channels (once per process).
    pub async fn ensure(&self, store: &Store) -> ApiResult<()> {
        self.client
            .get_or_try_init(|| async {
                let sub = store.subscriber_client_with_capacity(16_384).await?;
                let mut rx = sub.message_rx();
                let prefix = format!("{}:q:", store.keys().prefix());
                let chans = self.chans.clone();
                tokio::spawn(async move {
                    loop {
                        let msg = match rx.recv().await {
                            Ok(m) => m,
                            Err(broadcast::error::RecvError::Lagged(n)) => {
                                tracing::warn!(n, "queue event dispatcher lagged");
                                // Wake every waiter: a missed `ready` must not leave a lease
                                // sleeping until its deadline.
                                if let Ok(m) = chans.lock() {
                                    for c in m.values() {
                                        c.ready.notify_waiters();
                                    }
                                }
                                continue;
                            }
                            Err(broadcast::error::RecvError::Closed) => return,
                        };
                        let Some(q) = msg.channel.strip_prefix(prefix.as_str()) else {
                            continue;
                        };
                        let Some(chan) = chans.lock().ok().and_then(|m| m.get(q).cloned()) else {
                            continue;
                        };
                        let Some(text) = msg.value.as_str() else { continue };
                        if text.contains("\"state\":\"ready\"") {
                            chan.ready.notify_one();
                        } else if text.contains("\"state\":\"delayed\"")
                            || text.contains("\"state\":\"failed\"")
                        {
                            // A task due sooner than what the waiting leases sleep for: let
                            // them look again.
                            chan.ready.notify_waiters();
                        }
                        if chan.events.receiver_count() > 0 {
                            if let Some(ev) = event_json(q, &text) {
                                let _ = chan.events.send(ev);
                            }
                        }
                    }
                });
                let pattern = format!("{}:q:*", store.keys().prefix());
                store.timed("psubscribe", sub.psubscribe(pattern)).await?;
                Ok::<_, ApiError>(sub)
            })
            .await
            .map(|_| ())
    }

    /// Task state changes of `q` from now on.
    pub async fn events(&self, store: &Store, q: &str) -> ApiResult<broadcast::Receiver<Arc<str>>> {
        self.ensure(store).await?;
        Ok(self.chan(q).events.subscribe())
    }
}

/// The function's event with the queue name and RFC 3339 times.
fn event_json(q: &str, text: &str) -> Option<Arc<str>> {
    let mut v: serde_json::Value = serde_json::from_str(text).ok()?;
    let o = v.as_object_mut()?;
    o.get("id")?;
    o.insert("queue".into(), q.into());
    for k in ["run_at", "time"] {
        if let Some(ms) = o.get(k).and_then(|t| t.as_i64()) {
            o.insert(k.into(), crate::store::kv::rfc3339(ms).into());
        }
    }
    Some(Arc::from(v.to_string()))
}

/// Every second: upkeep of each queue (promotions, expired leases, retention) and its metrics.
/// Idempotent across replicas (each step is one atomic function that acts only on what is due).
pub async fn reaper(store: Store, stopped: watch::Receiver<bool>) {
    let mut every = crate::app::Every::new(Duration::from_millis(1000), stopped);
    while every.tick().await {
        let Ok(names) = store.queue_names().await else {
            continue;
        };
        for q in names {
            if store.q_reap(&q).await.is_err() {
                continue;
            }
            if let Ok(s) = store.q_stats(&q).await {
                for (state, n) in [
                    ("ready", s.ready),
                    ("delayed", s.delayed),
                    ("failed", s.failed),
                    ("leased", s.leased),
                    ("completed", s.completed),
                    ("dead", s.dead),
                ] {
                    metrics::gauge!("queue_tasks", "queue" => q.clone(), "state" => state).set(n as f64);
                }
                for (name, n) in [
                    ("queue_tasks_enqueued_total", s.enqueued_total),
                    ("queue_tasks_completed_total", s.completed_total),
                    ("queue_tasks_failed_total", s.failed_total),
                    ("queue_tasks_dead_total", s.dead_total),
                    ("queue_lease_expired_total", s.lease_expired_total),
                ] {
                    metrics::counter!(name, "queue" => q.clone()).absolute(n);
                }
            }
        }
    }
}

/// Every 10 s: partition usage metrics, and an exact recount of each partition's bytes
/// (the drift it corrects is exported; it should stay 0).
pub async fn partition_upkeep(store: Store, capacity: u64, stopped: watch::Receiver<bool>) {
    let mut every = crate::app::Every::new(Duration::from_secs(10), stopped);
    while every.tick().await {
        match store.pool_reconcile(capacity).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(n, "pool ledger corrected"),
            Err(e) => tracing::debug!(error = %e.detail, "pool reconcile failed"),
        }
        let Ok(names) = store.part_names().await else {
            continue;
        };
        for p in names {
            if let Ok(drift) = store.part_recount(&p).await {
                metrics::counter!("partition_recount_drift_bytes_total", "partition" => p.clone())
                    .increment(drift.unsigned_abs());
                if drift != 0 {
                    tracing::warn!(partition = p, drift, "partition byte count drifted; corrected");
                }
            }
            if let Ok(Some(info)) = store.part_get(&p).await {
                metrics::gauge!("partition_used_bytes", "partition" => p.clone()).set(info.used_bytes as f64);
                metrics::gauge!("partition_quota_bytes", "partition" => p.clone())
                    .set(info.quota_bytes as f64);
                metrics::gauge!("partition_keys", "partition" => p.clone()).set(info.key_count as f64);
            }
        }
    }
}
