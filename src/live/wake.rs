//! Cross-replica wake-ups for long-polls that are not task queues (today: lock releases).
//! One pattern subscription per process on the lock channels; a message wakes the in-process
//! waiters of that lock. Entries nobody waits on are pruned as new ones are made.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, OnceCell};

use super::{dispatch, message_in, Delivery};
use crate::error::{ApiError, ApiResult};
use crate::store::channels::Subscriber;
use crate::store::Store;

/// Messages buffered by the subscriber connection.
const SUBSCRIBER_BUFFER: usize = 1024;

#[derive(Default)]
pub struct Wakeups {
    sub: OnceCell<Subscriber>,
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
        self.sub
            .get_or_try_init(|| async {
                let sub = store.subscriber(SUBSCRIBER_BUFFER).await?;
                let prefix = store.keys().lock_channel_prefix();
                let waiters = self.waiters.clone();
                dispatch(sub.messages(), move |d| match d {
                    Delivery::Item(msg) => {
                        let Some((lock, _)) = message_in(&msg, &prefix) else {
                            return;
                        };
                        if let Some(n) = waiters.lock().ok().and_then(|m| m.get(lock).cloned()) {
                            n.notify_waiters();
                        }
                    }
                    // Some releases were missed: every waiter looks again.
                    Delivery::Lagged(_) => {
                        if let Ok(m) = waiters.lock() {
                            for n in m.values() {
                                n.notify_waiters();
                            }
                        }
                    }
                });
                sub.psubscribe(store.keys().lock_channel_pattern()).await?;
                Ok::<_, ApiError>(sub)
            })
            .await
            .map(|_| ())
    }
}
