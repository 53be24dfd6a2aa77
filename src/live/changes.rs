//! Change-log fan-out for watchers.
//!
//! Each namespace's change log is tailed by at most one reader task per process, on its own
//! connection (`store::log::LogReader`). The reader broadcasts every entry to all watchers of
//! the namespace in this process; it stops when the last watcher leaves.
//!
//! A watcher gets a gap-free stream by subscribing to the live broadcast *before* replaying the
//! retained log, then dropping live events it already replayed (revision ≤ the last one sent).
//! If it falls behind the broadcast buffer it replays from its last revision again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::domain::time::now_ms;
use crate::domain::watch::Event;
use crate::error::{ApiError, ApiResult};
use crate::store::log::{LogReader, Read};
use crate::store::Store;

/// Live events buffered per namespace before a slow watcher must re-read from Redis.
const BROADCAST_CAPACITY: usize = 4096;
/// Namespaces tailed at once by one process (each reader holds a Redis connection).
pub const MAX_READERS: usize = 512;

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
            return Err(ApiError::bad_request(format!(
                "this service process already watches {MAX_READERS} namespaces (one Redis connection each); \
                 watch fewer or spread watchers over replicas"
            )));
        }
        // New reader: it starts after the log's current last entry, and the first receiver
        // exists before it runs, so nothing written after this call can be missed.
        let reader = store.log_reader(ns).await?;
        let (tx, rx) = broadcast::channel(BROADCAST_CAPACITY);
        // Another watcher may have started this namespace's reader meanwhile: use that one.
        let existing = {
            let Ok(mut feeds) = self.feeds.lock() else {
                return Err(ApiError::internal("watch registry poisoned"));
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
            reader.close().await;
            return Ok(rx);
        }
        let hub = self.clone();
        let ns = ns.to_string();
        let store = store.clone();
        tokio::spawn(async move {
            let reader = read_loop(reader, &ns, &tx, &store).await;
            reader.close().await;
            if let Ok(mut feeds) = hub.feeds.lock() {
                if feeds.get(&ns).map(|t| t.same_channel(&tx)).unwrap_or(false) {
                    feeds.remove(&ns);
                }
            }
        });
        Ok(rx)
    }
}

fn read_counter() -> &'static metrics::Counter {
    static C: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    C.get_or_init(|| metrics::counter!("watch_log_entries_read_total"))
}

/// Tail the log until no receiver is left; hands the reader back.
async fn read_loop(
    mut reader: LogReader,
    ns: &str,
    tx: &broadcast::Sender<Arc<Event>>,
    store: &Store,
) -> LogReader {
    loop {
        if tx.receiver_count() == 0 {
            return reader;
        }
        match reader.next().await {
            Ok(Read::Reset) => {
                tracing::warn!(ns, "the namespace's history was lost and started again (Redis restarted without its data, FLUSHALL, failover to a stale replica); watchers are told to resync");
                metrics::counter!("watch_resets_total").increment(1);
                // The registry may be gone too: the next write registers the namespace again.
                store.forget_namespace(ns);
                let _ = tx.send(Arc::new(Event::reset(ns)));
                return reader;
            }
            Ok(Read::Events(events)) => {
                for e in events {
                    read_counter().increment(1);
                    // Lag: change committed in Redis → read by this process's reader (both
                    // clocks are this host's when Redis is local; skewed otherwise).
                    let lag_ms = (now_ms() - e.ts_ms).max(0);
                    metrics::histogram!("watch_event_lag_seconds").record(lag_ms as f64 / 1000.0);
                    let _ = tx.send(Arc::new(e));
                }
            }
            Err(e) => {
                tracing::warn!(ns, error = %e, "change-log reader: XREAD failed; reconnecting");
                // A new connection, not the failed one: on a cluster a connection to a node
                // that died stays stuck after its replica has taken over. Until one is made
                // (a new cluster client needs every slot served), nothing is read.
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if tx.receiver_count() == 0 {
                        return reader;
                    }
                    match reader.reconnect(store).await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::debug!(ns, error = %e, "change-log reader: reconnect failed; will retry")
                        }
                    }
                }
            }
        }
    }
}
