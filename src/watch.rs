//! Change-log fan-out for watchers.
//!
//! Each namespace's change log (`<p>:{ns}:log`, one entry per revision with id `0-<revision>`,
//! written by the Redis functions) is tailed by at most one reader task per process, on its own
//! connection (XREAD BLOCK must not stall the pipelined pool). The reader broadcasts every entry
//! to all watchers of the namespace in this process; it stops when the last watcher leaves.
//!
//! A watcher gets a gap-free stream by subscribing to the live broadcast *before* replaying the
//! retained log with XRANGE, then dropping live events it already replayed (revision ≤ the last
//! one sent). If it falls behind the broadcast buffer it replays from its last revision again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::prelude::*;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::error::ApiResult;
use crate::store::Store;

/// Live events buffered per namespace before a slow watcher must re-read from Redis.
const BROADCAST_CAPACITY: usize = 4096;
/// Entries per XRANGE page when replaying (a page is held in memory before its frames are
/// queued against the socket's byte budget, so it is kept small).
const REPLAY_PAGE: u64 = 64;
/// Namespaces tailed at once by one process (each reader holds a Redis connection).
pub const MAX_READERS: usize = 512;

/// One change from the log, as sent to watchers.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// `put`, `delete`, `expire`, `evict` or `external`.
    pub kind: String,
    pub namespace: String,
    pub key: String,
    /// The entry's version after a put; the deleted version for a delete; 0 when unknown.
    pub version: u64,
    pub revision: u64,
    /// The written value (JSON) for puts, unless the watch asked for no values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Box<serde_json::value::RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_reason: Option<String>,
    /// RFC 3339 time of the change.
    pub time: String,
    /// The same, unix ms (for the lag metric).
    #[serde(skip)]
    pub ts_ms: i64,
    /// This event as JSON, with and without the value, built once for all watchers.
    #[serde(skip)]
    json: [std::sync::OnceLock<String>; 2],
}

impl Event {
    /// The event's JSON text (`with_value: false` leaves the value out).
    pub fn json(&self, with_value: bool) -> &str {
        let with_value = with_value || self.value.is_none();
        self.json[usize::from(with_value)].get_or_init(|| {
            let text = serde_json::to_string(self).unwrap_or_default();
            if with_value {
                return text;
            }
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.remove("value");
            }
            v.to_string()
        })
    }

    /// From a stream entry (`0-<rev>`, fields k, key, ver, ts, v?, a?, r?).
    fn from_entry(ns: &str, id: &str, mut f: HashMap<String, String>) -> Option<Event> {
        let revision = id.strip_prefix("0-")?.parse().ok()?;
        let ts = f.get("ts").and_then(|t| t.parse::<i64>().ok()).unwrap_or(0);
        Some(Event {
            kind: f.remove("k")?,
            namespace: ns.to_string(),
            key: f.remove("key")?,
            version: f.get("ver").and_then(|v| v.parse().ok()).unwrap_or(0),
            revision,
            value: f
                .remove("v")
                .and_then(|v| serde_json::value::RawValue::from_string(v).ok()),
            agent_id: f.remove("a"),
            change_reason: f.remove("r"),
            time: crate::store::kv::rfc3339(ts),
            ts_ms: ts,
            json: Default::default(),
        })
    }
}

/// The per-process registry of namespace readers.
#[derive(Default)]
pub struct Hub {
    feeds: Mutex<HashMap<String, broadcast::Sender<Arc<Event>>>>,
}

impl Hub {
    /// A receiver of every change to `ns` read from now on, starting the namespace's reader
    /// when it is the first.
    pub async fn subscribe(
        self: &Arc<Self>,
        store: &Store,
        ns: &str,
    ) -> ApiResult<broadcast::Receiver<Arc<Event>>> {
        if let Some(tx) = self.feeds.lock().ok().and_then(|f| f.get(ns).cloned()) {
            if tx.receiver_count() > 0 {
                return Ok(tx.subscribe());
            }
        }
        let readers = self
            .feeds
            .lock()
            .map(|f| f.values().filter(|t| t.receiver_count() > 0).count())
            .unwrap_or(0);
        if readers >= MAX_READERS {
            return Err(crate::error::ApiError::bad_request(format!(
                "this service process already watches {MAX_READERS} namespaces (one Redis connection each); \
                 watch fewer or spread watchers over replicas"
            )));
        }
        // New reader: it starts after the log's current last entry, and the first receiver
        // exists before it runs, so nothing written after this call can be missed.
        let start = last_id(store, ns).await?;
        let client = store.dedicated_client().await?;
        let (tx, rx) = broadcast::channel(BROADCAST_CAPACITY);
        // Another watcher may have started this namespace's reader meanwhile: use that one.
        let existing = {
            let Ok(mut feeds) = self.feeds.lock() else {
                return Err(crate::error::ApiError::internal("watch registry poisoned"));
            };
            match feeds.get(ns) {
                Some(t) if t.receiver_count() > 0 => Some(t.subscribe()),
                _ => {
                    feeds.insert(ns.to_string(), tx.clone());
                    None
                }
            }
        };
        if let Some(rx) = existing {
            let _ = client.quit().await;
            return Ok(rx);
        }
        let hub = self.clone();
        let log = store.keys().ns(ns).log;
        let ns = ns.to_string();
        tokio::spawn(async move {
            read_loop(&client, &ns, &log, start, &tx).await;
            let _ = client.quit().await;
            if let Ok(mut feeds) = hub.feeds.lock() {
                if feeds.get(&ns).map(|t| t.same_channel(&tx)).unwrap_or(false) {
                    feeds.remove(&ns);
                }
            }
        });
        Ok(rx)
    }
}

/// Tail the log until no receiver is left.
async fn read_loop(
    client: &Client,
    ns: &str,
    log: &str,
    mut last: String,
    tx: &broadcast::Sender<Arc<Event>>,
) {
    loop {
        if tx.receiver_count() == 0 {
            return;
        }
        // A BLOCK that times out answers nil: no entries.
        let res: Result<fred::types::streams::XReadResponse<String, String, String, String>, _> = client
            .xread::<fred::types::Value, _, _>(Some(512), Some(1000), log, last.as_str())
            .await
            .and_then(|v| {
                if v.is_null() {
                    Ok(HashMap::new())
                } else {
                    v.into_xread_response()
                }
            });
        match res {
            Ok(mut streams) => {
                for (id, fields) in streams.remove(log).unwrap_or_default() {
                    last = id.clone();
                    if let Some(e) = Event::from_entry(ns, &id, fields) {
                        metrics::counter!("watch_log_entries_read_total").increment(1);
                        // Lag: change committed in Redis → read by this process's reader (both
                        // clocks are this host's when Redis is local; skewed otherwise).
                        let lag_ms = (crate::store::kv::now_ms() - e.ts_ms).max(0);
                        metrics::histogram!("watch_event_lag_seconds").record(lag_ms as f64 / 1000.0);
                        let _ = tx.send(Arc::new(e));
                    }
                }
            }
            Err(e) => {
                tracing::warn!(ns, error = %e, "change-log reader: XREAD failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Id of the last entry of the namespace's log (`0-0` when empty).
async fn last_id(store: &Store, ns: &str) -> ApiResult<String> {
    let log = store.keys().ns(ns).log;
    let last: Vec<(String, HashMap<String, String>)> = store
        .timed(
            "xrevrange",
            store.client().xrevrange_values(log, "+", "-", Some(1)),
        )
        .await?;
    Ok(last
        .into_iter()
        .next()
        .map(|(id, _)| id)
        .unwrap_or_else(|| "0-0".into()))
}

/// What a replay found.
pub enum Replay {
    /// Events after the requested revision, in order (possibly empty).
    Events(Vec<Event>),
    /// The log no longer holds revision `from + 1`; the oldest it holds is given.
    Compacted(u64),
}

/// Retained changes after revision `from`, at most one page, and whether the log had been
/// trimmed past `from`.
pub async fn replay_page(store: &Store, ns: &str, from: u64) -> ApiResult<Replay> {
    let nk = store.keys().ns(ns);
    let read = || async {
        let page: Vec<(String, HashMap<String, String>)> = store
            .timed(
                "xrange",
                store.client().xrange_values(
                    nk.log.clone(),
                    format!("0-{}", from.saturating_add(1)),
                    "+",
                    Some(REPLAY_PAGE),
                ),
            )
            .await?;
        Ok::<_, crate::error::ApiError>(page)
    };
    let mut page = read().await?;
    if page.is_empty() {
        // Nothing retained after `from`: fine if nothing happened since. A revision's log entry
        // is written atomically with it and trimming always keeps the newest entry, so if the
        // revision has moved past `from` a second read must see the new entries, unless the
        // log itself was lost. (Reading the revision alone would race a concurrent write.)
        let rev: Option<u64> = store
            .timed("hget", store.client().hget(nk.meta.clone(), "rev"))
            .await?;
        let rev = rev.unwrap_or(0);
        if rev <= from {
            return Ok(Replay::Events(Vec::new()));
        }
        page = read().await?;
        if page.is_empty() {
            return Ok(Replay::Compacted(rev + 1));
        }
    }
    let first_rev = page
        .first()
        .and_then(|(id, _)| id.strip_prefix("0-")?.parse::<u64>().ok());
    if let Some(r) = first_rev {
        if r > from.saturating_add(1) {
            return Ok(Replay::Compacted(r));
        }
    }
    Ok(Replay::Events(
        page.into_iter()
            .filter_map(|(id, f)| Event::from_entry(ns, &id, f))
            .collect(),
    ))
}

/// The namespace's current revision.
pub async fn current_revision(store: &Store, ns: &str) -> ApiResult<u64> {
    let rev: Option<u64> = store
        .timed("hget", store.client().hget(store.keys().ns(ns).meta, "rev"))
        .await?;
    Ok(rev.unwrap_or(0))
}
