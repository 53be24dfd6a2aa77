//! The operations layer: each operation of the API as a function taking domain input and
//! returning domain output, shared by every transport (HTTP, the WebSocket, SSE, and later
//! MCP or the dashboard). Behaviour that spans several store calls lives here: the merge-CAS
//! loop, batch pipelining, the lease long-poll, lock waits, what agents hold, the watch
//! session. Uses `live`, `store` and `domain`; knows nothing of HTTP.

pub mod agents;
pub mod auth;
pub mod backup;
pub mod backup_dir;
pub mod backup_queue;
pub mod backups;
pub mod batch;
pub mod channels;
pub mod health;
pub mod idempotency;
pub mod kv;
pub mod locks;
pub mod partitions;
pub mod queues;
pub mod restore;
pub mod watch;

use std::sync::Arc;
use std::time::Instant;

use crate::config::Config;
use crate::domain::auth::{Caller, Permission, Scope};
use crate::domain::kv::Provenance;
use crate::error::ApiResult;
use crate::live::changes::Hub;
use crate::live::presence::Presence;
use crate::live::pubsub::PubSub;
use crate::live::queues::QueueHub;
use crate::live::relay::Relay;
use crate::live::wake::Wakeups;
use crate::shutdown::Stopped;
use crate::store::Store;
use auth::Auth;

/// Everything an operation needs: Redis and the process's live state. One per process,
/// shared (behind an `Arc`) by every request and socket.
pub struct Ops {
    store: Store,
    cfg: Arc<Config>,
    started: Instant,
    /// Whether Redis is the embedded child.
    embedded: bool,
    /// The service's stop signal: long-polls answer, streams end, sockets close on it.
    stopped: Stopped,
    /// Open WebSocket sessions (shutdown waits for their close handshakes).
    sockets: Arc<Sockets>,
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
    /// Tokens and request budgets.
    auth: Arc<Auth>,
    /// The backup directory and the captures and restores running.
    backups: Arc<backup_dir::Backups>,
}

/// The check of every key/value write: write on the namespace, and the `x-agent-id` it
/// claims must be one the token may act as.
pub fn writer(who: &Caller, ns: &str, prov: &Provenance) -> ApiResult<()> {
    who.check(Permission::Write, Scope::Namespace(ns))?;
    if let Some(agent) = &prov.agent {
        who.check(Permission::Write, Scope::ActAs(agent))?;
    }
    Ok(())
}

impl Ops {
    pub fn new(
        store: Store,
        cfg: Arc<Config>,
        embedded: bool,
        stopped: Stopped,
        auth: Arc<Auth>,
        backups: Arc<backup_dir::Backups>,
    ) -> Ops {
        Ops {
            store,
            cfg,
            started: Instant::now(),
            embedded,
            stopped,
            sockets: Arc::default(),
            hub: Arc::default(),
            pubsub: Arc::default(),
            presence: Arc::default(),
            wakeups: Arc::default(),
            queues: Arc::default(),
            relay: Arc::default(),
            auth,
            backups,
        }
    }

    /// Resolves once the service is stopping (SIGTERM): long-polls answer with what they have,
    /// event streams end, WebSockets close with 1001.
    pub fn stopping(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        crate::shutdown::wait(self.stopped.clone())
    }

    /// Held by a WebSocket session while it is open.
    pub fn socket_open(&self) -> SocketOpen {
        self.sockets
            .open
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        SocketOpen(self.sockets.clone())
    }

    /// Wait until every WebSocket session has ended, at most `within`.
    pub async fn sockets_closed(&self, within: std::time::Duration) {
        let _ = tokio::time::timeout(within, async {
            loop {
                let notified = self.sockets.closed.notified();
                if self.sockets.open.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        })
        .await;
    }

    /// For the composition root (`app`): background tasks and shutdown.
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn presence(&self) -> &Arc<Presence> {
        &self.presence
    }

    pub fn auth(&self) -> &Arc<Auth> {
        &self.auth
    }

    pub fn relay(&self) -> &Arc<Relay> {
        &self.relay
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }
}

/// Count of open WebSocket sessions.
#[derive(Default)]
pub struct Sockets {
    open: std::sync::atomic::AtomicUsize,
    closed: tokio::sync::Notify,
}

/// One open WebSocket session; dropping it counts the session closed.
pub struct SocketOpen(Arc<Sockets>);

impl Drop for SocketOpen {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.closed.notify_waiters();
    }
}
