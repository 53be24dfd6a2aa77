//! Task-queue plumbing shared by all requests of a process: one pattern subscription to every
//! queue's state-change channel (published by the queue functions), which wakes long-polling
//! leases at once and feeds `queue` watches and the queue SSE stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, Notify, OnceCell};

use super::{dispatch, message_in, Delivery};
use crate::domain::queue::{TaskEvent, Wake};
use crate::domain::time::rfc3339;
use crate::error::{ApiError, ApiResult};
use crate::store::channels::Subscriber;
use crate::store::Store;

/// Task events buffered per queue for slow `queue` watchers.
const EVENTS_CAPACITY: usize = 1024;
/// Messages buffered by the subscriber connection (every task state change of every queue).
const SUBSCRIBER_BUFFER: usize = 16_384;

/// Per-queue wakeup and event fan-out.
pub struct QueueChan {
    /// One long-polling lease of this process is woken per task that becomes ready (any
    /// replica); a woken lease that took a full batch wakes the next one.
    pub ready: Notify,
    /// Task state changes as JSON (`{"id","queue","state",...}`).
    pub events: broadcast::Sender<Arc<str>>,
}

impl Default for QueueChan {
    fn default() -> Self {
        QueueChan {
            ready: Notify::new(),
            events: broadcast::channel(EVENTS_CAPACITY).0,
        }
    }
}

type Chans = Arc<Mutex<HashMap<String, Arc<QueueChan>>>>;

#[derive(Default)]
pub struct QueueHub {
    sub: OnceCell<Subscriber>,
    chans: Chans,
}

impl QueueHub {
    /// The queue's channel object (created on first use).
    pub fn chan(&self, q: &str) -> Arc<QueueChan> {
        let mut m = self.chans.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= 256 && !m.contains_key(q) {
            // Drop queues nobody in this process waits on or listens to any more.
            m.retain(|_, c| Arc::strong_count(c) > 1 || c.events.receiver_count() > 0);
        }
        m.entry(q.to_string()).or_default().clone()
    }

    /// Subscribe to the queue channels (once per process).
    pub async fn ensure(&self, store: &Store) -> ApiResult<()> {
        self.sub
            .get_or_try_init(|| async {
                let sub = store.subscriber(SUBSCRIBER_BUFFER).await?;
                let prefix = store.keys().queue_channel_prefix();
                let chans = self.chans.clone();
                dispatch(sub.messages(), move |d| match d {
                    Delivery::Lagged(n) => {
                        tracing::warn!(n, "queue event dispatcher lagged");
                        // Wake every waiter: a missed `ready` must not leave a lease sleeping
                        // until its deadline.
                        if let Ok(m) = chans.lock() {
                            for c in m.values() {
                                c.ready.notify_waiters();
                            }
                        }
                    }
                    Delivery::Item(msg) => {
                        let Some((q, Some(text))) = message_in(&msg, &prefix) else {
                            return;
                        };
                        let Some(chan) = chans.lock().ok().and_then(|m| m.get(q).cloned()) else {
                            return;
                        };
                        let Some(ev) = TaskEvent::parse(&text) else {
                            return;
                        };
                        match ev.state.wakes() {
                            Wake::One => chan.ready.notify_one(),
                            // A task due sooner than what the waiting leases sleep for: let
                            // them look again.
                            Wake::All => chan.ready.notify_waiters(),
                            Wake::None => {}
                        }
                        if ev.id.is_some() && chan.events.receiver_count() > 0 {
                            if let Some(ev) = event_json(q, &text) {
                                let _ = chan.events.send(ev);
                            }
                        }
                    }
                });
                sub.psubscribe(store.keys().queue_channel_pattern()).await?;
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
            o.insert(k.into(), rfc3339(ms).into());
        }
    }
    Some(Arc::from(v.to_string()))
}
