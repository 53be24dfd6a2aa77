//! Background tasks, each on its own [`Every`] clock and ended by the stop signal: the expiry
//! reconciler, the keyspace relay, the queue reaper (and queue metrics), partition upkeep
//! (pool ledger, exact recount, partition metrics), the presence watcher and the metrics
//! upkeep. Every step is idempotent across service replicas.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinHandle;

use crate::domain::time::now_ms;
use crate::ops::Ops;
use crate::shutdown::{Every, Stopped};
use crate::store::Store;

/// Start every background task.
pub fn spawn(ops: &Arc<Ops>, metrics: PrometheusHandle, stopped: Stopped) -> Vec<JoinHandle<()>> {
    let store = ops.store().clone();
    let cfg = ops.config();
    vec![
        tokio::spawn(expiry_reconciler(store.clone(), stopped.clone())),
        crate::live::relay::spawn(
            ops.relay().clone(),
            store.clone(),
            cfg.keyspace_relay,
            cfg.body_limit_bytes as u64,
            stopped.clone(),
        ),
        tokio::spawn(queue_reaper(store.clone(), stopped.clone())),
        tokio::spawn(partition_upkeep(
            store.clone(),
            cfg.pool_capacity_bytes,
            stopped.clone(),
        )),
        tokio::spawn(presence_watcher(ops.clone(), stopped.clone())),
        tokio::spawn(ops.auth().clone().watch(stopped.clone())),
        tokio::spawn(replica_watch(store.clone(), cfg.durability, stopped.clone())),
        tokio::spawn(backup_schedule(ops.clone(), stopped.clone())),
        tokio::spawn(metrics_upkeep(metrics, store.clone(), stopped)),
    ]
}

/// `backup_schedule`: a backup of everything at each occurrence (origin `schedule`), then
/// `backup_retention` applied to the scheduled ones. Not shared between replicas: set it on
/// one (each replica keeps its own backup directory).
async fn backup_schedule(ops: Arc<Ops>, stopped: Stopped) {
    let Some(text) = ops.config().backup_schedule.clone() else {
        return;
    };
    let Ok(schedule) = crate::config::BackupSchedule::parse(&text) else {
        return;
    };
    tracing::info!(schedule = text, "scheduled backups on");
    loop {
        let Some(wait) = schedule.next_in_ms(now_ms()) else {
            tracing::warn!(
                schedule = text,
                "backup_schedule has no next occurrence; no more scheduled backups"
            );
            return;
        };
        tokio::select! {
            _ = crate::shutdown::wait(stopped.clone()) => return,
            _ = tokio::time::sleep(Duration::from_millis(wait.max(1))) => {}
        }
        let req = crate::domain::backups::CreateBackup::default();
        let origin = crate::domain::backups::BackupOrigin::Schedule;
        match ops
            .backup_start(&crate::domain::auth::Caller::Open, req, origin)
            .await
        {
            Ok(info) => tracing::debug!(id = info.id, "scheduled backup started"),
            Err(e) => {
                metrics::counter!("backups_total", "result" => "failed", "origin" => "schedule").increment(1);
                tracing::warn!(error = %e, "scheduled backup not started");
            }
        }
        // A cron occurrence is a whole second: do not start twice within it.
        tokio::time::sleep(Duration::from_millis(1000 - (now_ms() % 1000) as u64)).await;
    }
}

/// Under `durability = replica`: the replicas attached to each primary, read every
/// [`crate::store::durability::POLL`], so that a write waits for all of them.
async fn replica_watch(store: Store, durability: crate::config::Durability, stopped: Stopped) {
    if durability != crate::config::Durability::Replica {
        return;
    }
    let mut every = Every::new(crate::store::durability::POLL, stopped);
    while every.tick().await {
        if let Err(e) = store.observe_replicas().await {
            tracing::debug!(error = %e, "reading the replicas failed; will retry");
        }
    }
}

/// Records expiries of keys with a TTL (removes them from the index and accounting and
/// appends an `expire` event with its own revision) about once a second. Idempotent across
/// replicas: the function records a key only while it is still indexed.
async fn expiry_reconciler(store: Store, stopped: Stopped) {
    let mut every = Every::new(Duration::from_millis(1000), stopped);
    while every.tick().await {
        let Ok(names) = store.namespace_names().await else {
            continue;
        };
        for ns in names {
            let Ok(due) = store.due_expiries(&ns, now_ms(), 256).await else {
                continue;
            };
            for key in due {
                if let Err(e) = store.kv_forget(&ns, &key).await {
                    tracing::debug!(ns, key, error = %e, "expiry reconcile failed; will retry");
                }
            }
        }
    }
}

/// Every second: upkeep of each queue (promotions, expired leases, retention) and its metrics.
/// Idempotent across replicas (each step is one atomic function that acts only on what is due).
async fn queue_reaper(store: Store, stopped: Stopped) {
    let mut every = Every::new(Duration::from_millis(1000), stopped);
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
                let age = s.oldest_ready_age_ms.unwrap_or(0) as f64 / 1000.0;
                metrics::gauge!("queue_oldest_ready_age_seconds", "queue" => q.clone()).set(age);
            }
        }
    }
}

/// Every 10 s: partition usage metrics, and an exact recount of each partition's bytes
/// (the drift it corrects is exported; it should stay 0).
async fn partition_upkeep(store: Store, capacity: u64, stopped: Stopped) {
    let mut every = Every::new(Duration::from_secs(10), stopped);
    // Partitions exported last round: a deleted one's series are zeroed (quota 0 leaves the
    // near-quota alert and the utilisation panel), since the exporter cannot drop one series.
    let mut exported = std::collections::BTreeSet::<String>::new();
    while every.tick().await {
        match store.pool_reconcile(capacity).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(n, "pool ledger corrected"),
            Err(e) => tracing::debug!(error = %e.detail, "pool reconcile failed"),
        }
        let Ok(names) = store.part_names().await else {
            continue;
        };
        let now: std::collections::BTreeSet<String> = names.iter().cloned().collect();
        for gone in exported.difference(&now) {
            for name in ["partition_used_bytes", "partition_quota_bytes", "partition_keys"] {
                metrics::gauge!(name, "partition" => gone.clone()).set(0.0);
            }
        }
        exported = now;
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

/// Every 250 ms: agents past their heartbeat deadline become lost (their locks freed, their
/// leased tasks requeued at once). Every 2 s: refresh the set of known agent ids.
async fn presence_watcher(ops: Arc<Ops>, stopped: Stopped) {
    let mut every = Every::new(Duration::from_millis(250), stopped);
    let mut n = 0u64;
    while every.tick().await {
        n += 1;
        if n % 8 == 1 {
            ops.presence().refresh(ops.store()).await;
        }
        if n % 40 == 1 {
            agents_by_state(ops.store()).await;
        }
        ops.presence().mark_overdue(ops.store()).await;
    }
}

/// Every 5 s: the exporter's upkeep, and `redis_up` from a PING.
/// `agents{state}`: registered agents counted by state (every 10 s).
async fn agents_by_state(store: &Store) {
    let Ok(ids) = store.agent_ids().await else { return };
    let mut counts: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for id in ids {
        if let Ok(Some(a)) = store.agent_get(&id).await {
            *counts.entry(a.state).or_default() += 1;
        }
    }
    for state in crate::domain::agent::STATES {
        let n = counts.get(*state).copied().unwrap_or(0);
        metrics::gauge!("agents", "state" => *state).set(n as f64);
    }
}

async fn metrics_upkeep(handle: PrometheusHandle, store: Store, stopped: Stopped) {
    let mut every = Every::new(Duration::from_secs(5), stopped);
    while every.tick().await {
        metrics::gauge!("redis_up").set(if store.ping().await { 1.0 } else { 0.0 });
        handle.run_upkeep();
    }
}
