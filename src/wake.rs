//! Cross-replica wake-ups for long-polls that are not task queues (today: lock releases).
//! One pattern subscription per process on `<p>:lk:*`; a message wakes the in-process waiters
//! of that channel. Entries nobody waits on are pruned as new ones are made.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use fred::clients::SubscriberClient;
use fred::prelude::*;
use tokio::sync::{broadcast, Notify, OnceCell};

use crate::error::{ApiError, ApiResult};
use crate::store::Store;

#[derive(Default)]
pub struct Wakeups {
    client: OnceCell<SubscriberClient>,
    waiters: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
}

impl Wakeups {
    /// The Notify for lock `name` of `ns`, subscribing this process on first use.
    pub async fn lock(&self, store: &Store, ns: &str, name: &str) -> ApiResult<Arc<Notify>> {
        self.ensure(store).await?;
        let key = format!("{ns}:{name}");
        let mut m = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 1024 {
            m.retain(|_, n| Arc::strong_count(n) > 1);
        }
        Ok(m.entry(key).or_default().clone())
    }

    async fn ensure(&self, store: &Store) -> ApiResult<()> {
        self.client
            .get_or_try_init(|| async {
                let sub = store.subscriber_client().await?;
                let mut rx = sub.message_rx();
                let prefix = format!("{}:lk:", store.keys().prefix());
                let waiters = self.waiters.clone();
                tokio::spawn(async move {
                    loop {
                        match rx.recv().await {
                            Ok(msg) => {
                                let Some(k) = msg.channel.strip_prefix(prefix.as_str()) else {
                                    continue;
                                };
                                if let Some(n) = waiters.lock().ok().and_then(|m| m.get(k).cloned()) {
                                    n.notify_waiters();
                                }
                            }
                            Err(broadcast::error::RecvError::Lagged(_)) => {
                                if let Ok(m) = waiters.lock() {
                                    for n in m.values() {
                                        n.notify_waiters();
                                    }
                                }
                            }
                            Err(broadcast::error::RecvError::Closed) => return,
                        }
                    }
                });
                let pattern = format!("{}:lk:*", store.keys().prefix());
                store.timed("psubscribe", sub.psubscribe(pattern)).await?;
                Ok::<_, ApiError>(sub)
            })
            .await
            .map(|_| ())
    }
}
