//! Keyspace-notification relay: expirations, evictions and writes made by other Redis clients
//! to a namespace's entry keys become `expire`, `evict` and `external` events in the change log.
//!
//! - Redis publishes keyspace notifications only when `notify-keyspace-events` asks for them.
//!   The relay makes sure every primary has at least `Kg$xe` (keyspace channel; generic, string,
//!   expired, evicted events), adding to whatever flags are already set, and checks again every
//!   few seconds (a failed-over primary does not inherit a CONFIG SET). When CONFIG is refused
//!   (managed Redis, ACL) `/v1/status` says so and expiries are still recorded by the service's
//!   once-a-second TTL reconciler.
//! - One pattern subscription (`__keyspace@*__:<prefix>:{*}:e:*`) per primary per process.
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

use fred::clients::SubscriberClient;
use fred::prelude::*;
use serde::Serialize;
use sha1::{Digest, Sha1};
use tokio::sync::{broadcast, watch, Notify};
use tokio::task::JoinHandle;
use utoipa::ToSchema;

use crate::error::ApiResult;
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

/// `(namespace, key)` of an entry key `<prefix>:{<ns>}:e:<key>`.
pub fn parse_key<'a>(prefix: &str, name: &'a str) -> Option<(&'a str, &'a str)> {
    let name = name.strip_prefix(prefix)?.strip_prefix(":{")?;
    let (ns, rest) = name.split_once('}')?;
    let key = rest.strip_prefix(":e:")?;
    crate::http::validate_name("namespace", ns).ok()?;
    crate::http::validate_key(key).ok()?;
    Some((ns, key))
}

/// Start the relay's background task (a no-op task when disabled).
pub fn spawn(
    relay: Arc<Relay>,
    store: Store,
    enabled: bool,
    value_limit: u64,
    stopped: watch::Receiver<bool>,
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

async fn run(relay: Arc<Relay>, store: Store, limit: u64, stopped: watch::Receiver<bool>) {
    let worker = tokio::spawn(worker(relay.clone(), store.clone(), limit));
    let mut subs: Vec<(String, SubscriberClient, JoinHandle<()>)> = Vec::new();
    let mut every = crate::app::Every::new(CHECK_EVERY, stopped);
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
                let _ = sub.quit().await;
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
        let _ = sub.quit().await;
    }
}

/// Make sure every primary publishes the notifications the relay needs; returns the flags
/// read back per primary, or why that is not possible.
async fn ensure_flags(store: &Store) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for node in store.primaries() {
        let get = || async {
            let m: HashMap<String, String> = match &node {
                Some(s) => {
                    store
                        .client()
                        .with_cluster_node(s.clone())
                        .config_get("notify-keyspace-events")
                        .await?
                }
                None => store.client().config_get("notify-keyspace-events").await?,
            };
            Ok::<_, fred::error::Error>(m.get("notify-keyspace-events").cloned().unwrap_or_default())
        };
        let refused = |e: fred::error::Error| {
            format!(
                "cannot read or set notify-keyspace-events, so the relay cannot verify it gets notifications \
                 (if the server's setting includes `{NEEDED_FLAGS}` it works; else set it there): {}",
                e.details()
            )
        };
        let current = get().await.map_err(refused)?;
        let Some(new) = merged_flags(&current) else {
            out.push(current);
            continue;
        };
        let set: Result<(), fred::error::Error> = match &node {
            Some(s) => {
                store
                    .client()
                    .with_cluster_node(s.clone())
                    .config_set("notify-keyspace-events", new.as_str())
                    .await
            }
            None => {
                store
                    .client()
                    .config_set("notify-keyspace-events", new.as_str())
                    .await
            }
        };
        set.map_err(refused)?;
        tracing::info!(node = ?node, flags = %new, "enabled keyspace notifications");
        out.push(get().await.map_err(refused)?);
    }
    Ok(out)
}

/// Glob-escape a literal for a Redis pattern.
fn glob_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

async fn subscribe(
    relay: &Arc<Relay>,
    store: &Store,
) -> ApiResult<Vec<(String, SubscriberClient, JoinHandle<()>)>> {
    let prefix = store.keys().prefix().to_string();
    let pattern = format!("__keyspace@*__:{}:{{*}}:e:*", glob_escape(&prefix));
    let mut out = Vec::new();
    for (name, sub) in store.node_subscribers(SUBSCRIBER_BUFFER).await? {
        let mut rx = sub.keyspace_event_rx();
        store.timed("psubscribe", sub.psubscribe(pattern.clone())).await?;
        let relay = relay.clone();
        let prefix = prefix.clone();
        let task = tokio::spawn(async move {
            loop {
                let msg = match rx.recv().await {
                    Ok(m) => m,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(n, "keyspace relay fell behind; notifications lost");
                        metrics::counter!("keyspace_notifications_lost_total").increment(n);
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let Some(hint) = hint_of(&msg.operation) else {
                    continue;
                };
                if let Some((ns, key)) = msg.key.as_str().and_then(|k| parse_key(&prefix, k)) {
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
                    Ok::<_, crate::error::ApiError>(())
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
                    .map(|m| crate::http::kv::canonical(&m))
                    .unwrap_or_default();
                return (crate::http::kv::canonical(&v), meta);
            }
        }
    }
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) => (crate::http::kv::canonical(&v), String::new()),
        Err(_) => (
            crate::http::kv::canonical(&serde_json::Value::String(text.into_owned())),
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
    fn entry_keys_name_namespace_and_key() {
        assert_eq!(parse_key("ss", "ss:{app}:e:a/b:{c}"), Some(("app", "a/b:{c}")));
        assert_eq!(parse_key("ss", "ss:{app}:h:a"), None);
        assert_eq!(parse_key("ss", "sx:{app}:e:a"), None);
        assert_eq!(parse_key("ss", "ss:{A p}:e:a"), None);
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
