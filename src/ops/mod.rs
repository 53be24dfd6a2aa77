//! The operations layer: each operation of the API as a function taking domain input and
//! returning domain output, shared by every transport (HTTP, the WebSocket, SSE, and later
//! MCP or the dashboard). Behaviour that spans several store calls lives here: the merge-CAS
//! loop, batch pipelining, the lease long-poll, lock waits, what agents hold, the watch
//! session. Uses `live`, `store` and `domain`; knows nothing of HTTP.

pub mod agents;
pub mod batch;
pub mod channels;
pub mod health;
pub mod idempotency;
pub mod kv;
pub mod locks;
pub mod partitions;
pub mod queues;
pub mod watch;

use std::sync::Arc;
use std::time::Instant;

use crate::config::Config;
use crate::live::changes::Hub;
use crate::live::presence::Presence;
use crate::live::pubsub::PubSub;
use crate::live::queues::QueueHub;
use crate::live::relay::Relay;
use crate::live::wake::Wakeups;
use crate::store::Store;

/// Everything an operation needs: Redis and the process's live state. One per process,
/// shared (behind an `Arc`) by every request and socket.
pub struct Ops {
    store: Store,
    cfg: Arc<Config>,
    started: Instant,
    /// Whether Redis is the embedded child.
    embedded: bool,
    /// Change-log readers shared by all watchers of this process.
    hub: Arc<Hub>,
    /// Pub/sub subscriptions shared by all sockets of this process.
    pubsub: Arc<PubSub>,
    /// Known agents, and what they hold.
    presence: Arc<Presence>,
    /// Lock-release wake-ups shared by all requests of this process.
    wakeups: Arc<Wakeups>,
    /// Queue wakeups and task events shared by all requests of this process.
    queues: Arc<QueueHub>,
    /// Keyspace-notification relay (its status is part of `/v1/status`).
    relay: Arc<Relay>,
}

impl Ops {
    pub fn new(store: Store, cfg: Arc<Config>, embedded: bool) -> Ops {
        Ops {
            store,
            cfg,
            started: Instant::now(),
            embedded,
            hub: Arc::default(),
            pubsub: Arc::default(),
            presence: Arc::default(),
            wakeups: Arc::default(),
            queues: Arc::default(),
            relay: Arc::default(),
        }
    }

    /// For the composition root (`app`): background tasks and shutdown.
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn presence(&self) -> &Arc<Presence> {
        &self.presence
    }

    pub fn relay(&self) -> &Arc<Relay> {
        &self.relay
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }
}
