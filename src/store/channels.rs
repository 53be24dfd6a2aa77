//! Pub/sub on Redis: PUBLISH, and subscriber connections (each re-subscribes by itself after a
//! reconnect). Channel names come from [`super::keys`].

use fred::clients::SubscriberClient;
use fred::prelude::*;
use fred::types::{KeyspaceEvent, Message};
use tokio::sync::broadcast;

use super::Store;
use crate::error::ApiResult;

/// One subscriber connection.
pub struct Subscriber {
    store: Store,
    client: SubscriberClient,
}

impl Subscriber {
    pub(super) fn new(store: Store, client: SubscriberClient) -> Subscriber {
        Subscriber { store, client }
    }

    /// Messages of every channel and pattern this connection subscribes to.
    pub fn messages(&self) -> broadcast::Receiver<Message> {
        self.client.message_rx()
    }

    /// Keyspace notifications (they never arrive on [`Subscriber::messages`]).
    pub fn keyspace_events(&self) -> broadcast::Receiver<KeyspaceEvent> {
        self.client.keyspace_event_rx()
    }

    pub async fn psubscribe(&self, pattern: String) -> ApiResult<()> {
        self.store
            .timed("psubscribe", self.client.psubscribe(pattern))
            .await
    }

    pub async fn punsubscribe(&self, pattern: String) -> ApiResult<()> {
        self.store
            .timed("punsubscribe", self.client.punsubscribe(pattern))
            .await
    }

    /// QUIT, bounded ([`super::quit_within`]).
    pub async fn quit(&self) {
        self.store.quit_client(&self.client).await;
    }
}

impl Store {
    /// A subscriber connection with `capacity` messages buffered before a slow reader
    /// loses some (it is told how many).
    pub async fn subscriber(&self, capacity: usize) -> ApiResult<Subscriber> {
        let client = self.subscriber_client(capacity).await?;
        Ok(Subscriber::new(self.clone(), client))
    }

    /// PUBLISH `message` on the Redis channel `channel` (a name from [`super::keys`]);
    /// returns how many Redis subscriptions received it.
    pub async fn publish(&self, channel: String, message: &str) -> ApiResult<u64> {
        // One attempt: a PUBLISH re-sent after a dropped connection could deliver twice.
        let once = fred::types::config::Options {
            max_attempts: Some(1),
            ..Default::default()
        };
        self.timed(
            "publish",
            self.raw_client()
                .with_options(&once)
                .publish::<u64, _, _>(channel, message),
        )
        .await
    }
}
