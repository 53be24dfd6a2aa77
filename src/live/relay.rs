//! Keyspace-notification relay: expirations, evictions and writes made by other Redis clients
//! to a namespace's entry keys become `expire`, `evict` and `external` events in the change log.
//!
//! - Redis publishes keyspace notifications only when `notify-keyspace-events` asks for them.
//!   The relay makes sure every primary has at least `Kg$xe` (keyspace channel; generic, string,
//!   expired, evicted events), adding to whatever flags are already set, and checks again every
//!   few seconds (a failed-over primary does not inherit a CONFIG SET). When CONFIG is refused
//!   (managed Redis, ACL) `/v1/status` says so and expiries are still recorded by the service's
//!   once-a-second TTL reconciler.
//! - One pattern subscription (`__keyspace@*__:<prefix>:{*}:e:*`, from `store::keys`) per
//!   primary per process.
//!   Notifications only name a key; they are coalesced per key and checked in batches by the
//!   `kv_observe` function, which records removals and reports entries holding something the
//!   service did not write; those are adopted by `kv_adopt` (a new life of the key, logged as
//!   `external`). Both functions are idempotent, so several replicas relaying the same
//!   notification record it once.
//! - Ordering: a relayed event gets the next revision when the relay records it (usually
//!   within milliseconds of the Redis event), so it has one place in the namespace's total order
//!   like every other change. Changes made through the API between the Redis event and its
//!   recording come before it.
//! - Notifications are fire-and-forget: ones published while the relay is disconnected are
//!   lost. Expiries are still recorded by the reconciler; a foreign write noticed no other way
//!   is adopted the next time the key is written through the API.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use sha1::{Digest, Sha1};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use utoipa::ToSchema;

use super::{dispatch, Delivery};
use crate::domain::json::canonical;
use crate::error::{ApiError, ApiResult};
use crate::shutdown::{Every, Stopped};
use crate::store::channels::Subscriber;
use crate::store::Store;

/// Flags the relay needs in `notify-keyspace-events`.
pub const NEEDED_FLAGS: &str = "Kg$xe";
/// Keys per `kv_observe` call.
const BATCH: usize = 256;
/// Notifications buffered per subscriber connection before some are lost.
const SUBSCRIBER_BUFFER: usize = 16_384;
/// How often flags and subscriptions are checked.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// What `/v1/status` reports about the relay.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct RelayStatus {
    /// `keyspace_relay` setting.
    pub enabled: bool,
    /// Subscribed on every primary and every primary has the flags the relay needs.
    pub active: bool,
    /// `notify-keyspace-events` as read back from the primaries (one entry per primary).
    pub notify_keyspace_events: Vec<String>,
    /// Why the relay is not active (e.g. CONFIG refused); expiries are then recorded by the
    /// once-a-second reconciler only, evictions and external writes when the key is next touched.
    pub problem: Option<String>,
}

/// The per-process relay state.
#[derive(Default)]
pub struct Relay {
    status: Mutex<RelayStatus>,
    /// Keys notified and not yet checked: namespace → key → hint.
    pending: Mutex<HashMap<String, HashMap<String, &'static str>>>,
    wake: Notify,
}

impl Relay {
    pub fn status(&self) -> RelayStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn set_status(&self, s: RelayStatus) {
        if let Ok(mut g) = self.status.lock() {
            *g = s;
        }
    }

    fn note(&self, ns: String, key: String, hint: &'static str) {
        if let Ok(mut p) = self.pending.lock() {
            p.entry(ns).or_default().insert(key, hint);
        }
        self.wake.notify_one();
    }

    fn take(&self) -> HashMap<String, HashMap<String, &'static str>> {
        self.pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }
}

/// `notify-keyspace-events` with the relay's flags added, or `None` when nothing is missing.
pub fn merged_flags(current: &str) -> Option<String> {
    let expanded = current.replace('A', "g$lshzxetd");
    let missing: String = NEEDED_FLAGS.chars().filter(|c| !expanded.contains(*c)).collect();
    (!missing.is_empty()).then(|| format!("{current}{missing}"))
}

/// What a keyspace event on an entry key means for the relay; `None` = nothing to check
/// (e.g. `expire`, which the service's own TTL writes cause too).
pub fn hint_of(event: &str) -> Option<&'static str> {
    Some(match event {
        "expired" => "expired",
        "evicted" => "evicted",
        "del" | "rename_from" | "move_from" => "gone",
        "set" | "append" | "setrange" | "setbit" | "pfadd" | "incrby" | "decrby" | "incrbyfloat"
        | "rename_to" | "copy_to" | "restore" | "move_to" | "new" => "written",
        _ => return None,
    })
}

/// Start the relay's background task (a no-op task when disabled).
pub fn spawn(
    relay: Arc<Relay>,
    store: Store,
    enabled: bool,
    value_limit: u64,
    stopped: Stopped,
) -> JoinHandle<()> {
    relay.set_status(RelayStatus {
        enabled,
        problem: (!enabled).then(|| "disabled by the keyspace_relay setting".to_string()),
        ..Default::default()
    });
    tokio::spawn(async move {
        if enabled {
            run(relay, store, value_limit, stopped).await;
        }
    })
}

async fn run(relay: Arc<Relay>, store: Store, limit: u64, stopped: Stopped) {
    let worker = tokio::spawn(worker(relay.clone(), store.clone(), limit));
    let mut subs: Vec<(String, Subscriber, JoinHandle<()>)> = Vec::new();
    let mut every = Every::new(CHECK_EVERY, stopped);
    while every.tick().await {
        let flags = ensure_flags(&store).await;
        let want: Vec<String> = store
            .primaries()
            .iter()
            .map(|s| {
                s.as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "redis".into())
            })
            .collect();
        let have: Vec<String> = subs.iter().map(|(n, _, _)| n.clone()).collect();
        let mut problem = flags.as_ref().err().cloned();
        if want != have {
            for (_, sub, task) in subs.drain(..) {
                task.abort();
                sub.quit().await;
            }
            match subscribe(&relay, &store).await {
                Ok(s) => subs = s,
                Err(e) => problem = Some(format!("cannot subscribe to keyspace notifications: {e}")),
            }
        }
        relay.set_status(RelayStatus {
            enabled: true,
            active: problem.is_none() && !subs.is_empty(),
            notify_keyspace_events: flags.unwrap_or_default(),
            problem,
        });
    }
    worker.abort();
    for (_, sub, task) in subs {
        task.abort();
        sub.quit().await;
    }
}

/// Make sure every primary publishes the notifications the relay needs; returns the flags
/// read back per primary, or why that is not possible.
async fn ensure_flags(store: &Store) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for node in store.primaries() {
        let refused = |e: fred::error::Error| {
            format!(
                "cannot read or set notify-keyspace-events, so the relay cannot verify it gets notifications \
                 (if the server's setting includes `{NEEDED_FLAGS}` it works; else set it there): {}",
                e.details()
            )
        };
        let current = store.notify_flags(&node).await.map_err(refused)?;
        let Some(new) = merged_flags(&current) else {
            out.push(current);
            continue;
        };
        store.set_notify_flags(&node, &new).await.map_err(refused)?;
        tracing::info!(node = ?node, flags = %new, "enabled keyspace notifications");
        out.push(store.notify_flags(&node).await.map_err(refused)?);
    }
    Ok(out)
}

async fn subscribe(
    relay: &Arc<Relay>,
    store: &Store,
) -> ApiResult<Vec<(String, Subscriber, JoinHandle<()>)>> {
    let pattern = store.keys().entry_keyspace_pattern();
    let mut out = Vec::new();
    for (name, sub) in store.node_subscribers(SUBSCRIBER_BUFFER).await? {
        let rx = sub.keyspace_events();
        sub.psubscribe(pattern.clone()).await?;
        let (relay, keys) = (relay.clone(), store.keys().clone());
        let task = dispatch(rx, move |d| match d {
            Delivery::Lagged(n) => {
                tracing::warn!(n, "keyspace relay fell behind; notifications lost");
                metrics::counter!("keyspace_notifications_lost_total").increment(n);
            }
            Delivery::Item(msg) => {
                let Some(hint) = hint_of(&msg.operation) else {
                    return;
                };
                if let Some((ns, key)) = msg.key.as_str().and_then(|k| keys.parse_entry_key(k)) {
                    relay.note(ns.to_string(), key.to_string(), hint);
                }
            }
        });
        out.push((name, sub, task));
    }
    Ok(out)
}

/// Check notified keys in batches; on failure they are kept and retried.
async fn worker(relay: Arc<Relay>, store: Store, limit: u64) {
    loop {
        relay.wake.notified().await;
        for (ns, keys) in relay.take() {
            let items: Vec<(String, &'static str)> = keys.into_iter().collect();
            for chunk in items.chunks(BATCH) {
                let res = async {
                    for key in store.kv_observe(&ns, chunk).await? {
                        adopt(&store, &ns, &key, limit).await?;
                    }
                    Ok::<_, ApiError>(())
                }
                .await;
                if let Err(e) = res {
                    tracing::warn!(ns, error = %e.detail, "keyspace relay: check failed; retrying");
                    for (k, h) in chunk {
                        relay.note(ns.clone(), k.clone(), h);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// Adopt (or drop) what another client wrote at `key`.
async fn adopt(store: &Store, ns: &str, key: &str, limit: u64) -> ApiResult<()> {
    let outcome = match store.raw_entry(ns, key, limit).await? {
        Some(Ok(raw)) => {
            let sha: String = Sha1::digest(&raw).iter().map(|b| format!("{b:02x}")).collect();
            let (value, meta) = foreign_value(&raw);
            store
                .kv_adopt(ns, key, Some((&sha, &value, &meta)), limit)
                .await?
        }
        _ => store.kv_adopt(ns, key, None, limit).await?,
    };
    if outcome == "ok" {
        store.register_namespace(ns).await?;
    }
    if outcome == "ok" || outcome == "dropped" {
        metrics::counter!("keyspace_external_writes_total").increment(1);
        tracing::info!(ns, key, outcome, "external write to an entry key relayed");
    }
    Ok(())
}

/// The JSON value (and metadata) a foreign write stands for: a record copied from elsewhere
/// keeps its value and metadata; JSON text is kept as JSON; anything else becomes a JSON
/// string (bytes that are not UTF-8 replaced by U+FFFD).
pub fn foreign_value(raw: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(raw);
    let mut parts = text.splitn(3, '\n');
    if let (Some(head), Some(meta), Some(value)) = (parts.next(), parts.next(), parts.next()) {
        if head.split('\t').count() == 9 {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(value) {
                let meta = serde_json::from_str::<serde_json::Value>(meta)
                    .ok()
                    .filter(|m| m.is_object())
                    .map(|m| canonical(&m))
                    .unwrap_or_default();
                return (canonical(&v), meta);
            }
        }
    }
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) => (canonical(&v), String::new()),
        Err(_) => (
            canonical(&serde_json::Value::String(text.into_owned())),
            String::new(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_added_not_replaced() {
        assert_eq!(merged_flags(""), Some("Kg$xe".into()));
        assert_eq!(merged_flags("Ex"), Some("ExKg$e".into()));
        assert_eq!(merged_flags("AK"), None);
        assert_eq!(merged_flags("gxeK$"), None);
    }

    #[test]
    fn foreign_values_become_json() {
        assert_eq!(foreign_value(b"hello").0, "\"hello\"");
        assert_eq!(foreign_value(br#"{"b":1, "a":2}"#).0, r#"{"a":2,"b":1}"#);
        assert_eq!(foreign_value(b"\xff").0, "\"\u{fffd}\"");
        let rec = b"3\t1\t5\t0\t0\t\t10\t\t\n{\"m\":1}\n[1,2]";
        assert_eq!(foreign_value(rec), ("[1,2]".into(), "{\"m\":1}".into()));
    }
}
