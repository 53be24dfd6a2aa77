//! Pub/sub fan-out: one Redis subscriber connection per process with one PSUBSCRIBE covering
//! every channel of the prefix; each message arrives once per process and is matched here
//! against the patterns sockets subscribed with, so every socket subscription gets each
//! matching message exactly once (one Redis subscription per client pattern would deliver a
//! message once per matching pattern, and Redis' pmessage names no pattern to route by).
//! Redis channel names come from `store::keys`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;
use tokio::sync::{broadcast, OnceCell};

use super::{dispatch, message_in, Delivery};
use crate::domain::names::{glob_match, validate_pattern};
use crate::domain::time::{now_ms, rfc3339};
use crate::domain::watch::PubMessage;
use crate::error::{ApiError, ApiResult};
use crate::store::channels::Subscriber;
use crate::store::Store;

/// Messages buffered per pattern for slow sockets (pub/sub is fire-and-forget: a socket that
/// falls further behind is told how many it missed).
const CAPACITY: usize = 1024;
/// Messages buffered by the subscriber connection.
const SUBSCRIBER_BUFFER: usize = 1024;

type Patterns = Arc<Mutex<HashMap<String, broadcast::Sender<Arc<PubMessage>>>>>;

/// The per-process pub/sub registry.
#[derive(Default)]
pub struct PubSub {
    sub: OnceCell<Subscriber>,
    patterns: Patterns,
}

impl PubSub {
    async fn subscriber(&self, store: &Store) -> ApiResult<&Subscriber> {
        self.sub
            .get_or_try_init(|| async {
                let sub = store.subscriber(SUBSCRIBER_BUFFER).await?;
                let prefix = store.keys().pubsub_channel_prefix();
                let patterns = self.patterns.clone();
                dispatch(sub.messages(), move |d| match d {
                    Delivery::Lagged(n) => tracing::warn!(n, "pub/sub dispatcher lagged"),
                    Delivery::Item(msg) => {
                        let Some((channel, Some(text))) = message_in(&msg, &prefix) else {
                            return;
                        };
                        let Ok(payload) = RawValue::from_string(text) else {
                            return;
                        };
                        let m = Arc::new(PubMessage {
                            channel: channel.to_string(),
                            payload,
                        });
                        if let Ok(p) = patterns.lock() {
                            for (pat, tx) in p.iter() {
                                if glob_match(pat, channel) {
                                    let _ = tx.send(m.clone());
                                }
                            }
                        }
                    }
                });
                sub.psubscribe(store.keys().pubsub_channel_pattern()).await?;
                Ok::<_, ApiError>(sub)
            })
            .await
    }

    /// Receive every message published to a channel matching `pattern` from now on: the
    /// subscription is live in Redis when this returns.
    pub async fn subscribe(
        &self,
        store: &Store,
        pattern: &str,
    ) -> ApiResult<broadcast::Receiver<Arc<PubMessage>>> {
        validate_pattern(pattern)?;
        self.subscriber(store).await?;
        let Ok(mut p) = self.patterns.lock() else {
            return Err(ApiError::internal("pub/sub registry poisoned"));
        };
        // Patterns nobody listens to any more are dropped here.
        p.retain(|k, t| t.receiver_count() > 0 || k.as_str() == pattern);
        Ok(match p.get(pattern) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = broadcast::channel(CAPACITY);
                p.insert(pattern.to_string(), tx);
                rx
            }
        })
    }
}

/// Publish a service event (agents, locks, partitions) on the Redis channel `channel` (one of
/// `store::keys`' event channels): `msg` plus `time`. Fire-and-forget like all pub/sub; a
/// failure only loses the notification.
pub async fn event(store: &Store, channel: String, mut msg: serde_json::Value) {
    if let Some(m) = msg.as_object_mut() {
        m.insert("time".into(), rfc3339(now_ms()).into());
    }
    if let Err(e) = store.publish(channel, &msg.to_string()).await {
        tracing::debug!(error = %e.detail, "event not published");
    }
}
