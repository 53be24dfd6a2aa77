//! Typed access to Redis: one connection pool, one wrapper per Redis function, and the
//! mapping of Redis failures to API errors (`redis_unavailable` for anything that is the
//! network's or the server's momentary fault, `internal` for everything else).
//!
//! - [`keys`] builds every key and channel name; [`fcall`] calls the functions library with
//!   declared arities and refusals; [`kv`], [`queue`], [`locks`], [`agents`], [`partitions`]
//!   wrap the functions of each area; [`log`] reads the change logs; [`channels`] publishes
//!   and subscribes; [`admin`] reads and sets server state (INFO, CONFIG); [`migrate`] loads
//!   the library and runs key-schema migrations.
//!
//! Every call is timed into `redis_command_duration_seconds{command}`; failures count into
//! `redis_errors_total{kind}`.

pub mod admin;
pub mod agents;
pub mod backup;
pub mod channels;
pub mod durability;
pub mod fcall;
pub mod functions;
pub mod idempotency;
pub mod keys;
pub mod kv;
pub mod locks;
pub mod log;
pub mod migrate;
pub mod partitions;
pub mod queue;
pub mod queue_backup;

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use fred::clients::SubscriberClient;
use fred::error::{Error as RedisError, ErrorKind};
use fred::prelude::*;
use fred::types::config::TlsConnector;
use fred::types::Value;

use crate::config::{Config, Durability, RedisMode, RedisTarget};
use crate::domain::kv::Provenance;
use crate::error::{ApiError, ApiResult};
use keys::Keys;

/// Handle to Redis shared by every request. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    /// When set, every command goes to this one connection, so a batch's pipelined calls
    /// reach Redis in the order they were issued (see [`Store::pinned`]).
    pin: Option<Client>,
}

struct Inner {
    pool: Pool,
    /// The client configuration, for dedicated connections (blocking reads).
    fred_cfg: fred::prelude::Config,
    keys: Keys,
    mode: RedisMode,
    durability: Durability,
    durability_timeout_ms: u64,
    /// Replicas a write waits for under `durability = replica`.
    replicas: durability::ReplicaQuorum,
    /// Outside a cluster, with a durability wait: one `WAIT` / `WAITAOF` in flight per pool
    /// connection (see `fcall::call_once`).
    wait_turns: Option<tokio::sync::Semaphore>,
    command_timeout: Duration,
    log_maxlen: String,
    history_versions: String,
    /// Namespaces this process has already added to the registry set.
    registered: RwLock<HashSet<String>>,
}

impl Store {
    /// Connect to Redis, retrying until `startup_timeout_ms` has passed.
    pub async fn connect(cfg: &Config, url: &str) -> Result<Store, String> {
        let target = RedisTarget::parse(url).map_err(|e| e.to_string())?;
        let mut fred_cfg =
            fred::prelude::Config::from_url(&target.fred_url).map_err(|e| format!("redis_url: {e}"))?;
        // rediss://: our CA / client certificate instead of fred's default (system roots, no
        // client certificate). Every connection is built from this config — the pool, the
        // dedicated XREAD and subscriber connections, Sentinel and cluster nodes alike.
        if target.tls {
            if let Some(tls) = cfg.redis_tls().map_err(|e| e.to_string())? {
                fred_cfg.tls = Some(TlsConnector::from(tls).into());
            }
        }
        let timeout = Duration::from_millis(cfg.command_timeout_ms);
        let build = || {
            Builder::from_config(fred_cfg.clone())
                .with_performance_config(|p| {
                    p.default_command_timeout = timeout;
                })
                .with_connection_config(|c| {
                    c.connection_timeout = timeout;
                    c.internal_command_timeout = timeout;
                    // By default a command is written once and no cluster redirection is
                    // followed: a function call in flight when a connection drops may already
                    // have run, and running a write twice (a counter bumped twice, a CAS
                    // answered 412) is worse than a 503. `store::fcall` calls again itself
                    // after MOVED / ASK / TRYAGAIN (nothing ran). Plain commands (reads,
                    // idempotent writes) go through [`Store::client`], which allows a few
                    // attempts and redirections. (A redirection followed with no attempt
                    // left made fred drop every connection of the client.)
                    c.max_command_attempts = 1;
                    c.max_redirections = 0;
                })
                .set_policy(ReconnectPolicy::new_exponential(0, 50, 1000, 2))
                .build_pool(cfg.redis_pool_size)
                .map_err(|e| format!("redis client: {e}"))
        };
        let deadline = Instant::now() + Duration::from_millis(cfg.startup_timeout_ms);
        // A client whose first connection failed is not reused: each attempt builds a new pool.
        let pool = loop {
            let pool = build()?;
            match pool.init().await {
                Ok(_) => break pool,
                Err(e) if is_tls_refusal(&e) => {
                    return Err(format!(
                        "TLS with Redis at {} failed: {e} (check redis_tls_ca_file, redis_tls_cert_file / \
                         redis_tls_key_file and the server's TLS settings)",
                        crate::config::redact(url)
                    ))
                }
                Err(e) if is_permanent(&e) => {
                    return Err(format!(
                    "Redis at {} refused the connection: {e} (check the password / ACL user in redis_url)",
                    crate::config::redact(url)
                ))
                }
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!(error = %e, url = %crate::config::redact(url), "Redis not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    return Err(format!(
                        "could not reach Redis at {} within {} ms: {e}",
                        crate::config::redact(url),
                        cfg.startup_timeout_ms
                    ))
                }
            }
        };
        let wait_turns = (cfg.durability != Durability::None && target.mode != RedisMode::Cluster)
            .then(|| tokio::sync::Semaphore::new(cfg.redis_pool_size.max(1)));
        let store = Store {
            inner: Arc::new(Inner {
                pool,
                fred_cfg,
                keys: Keys::new(&cfg.key_prefix),
                mode: target.mode,
                durability: cfg.durability,
                durability_timeout_ms: cfg.durability_timeout_ms,
                replicas: Default::default(),
                wait_turns,
                command_timeout: timeout,
                log_maxlen: cfg.changelog_retention.to_string(),
                history_versions: cfg.history_versions.to_string(),
                registered: RwLock::new(HashSet::new()),
            }),
            pin: None,
        };
        store.forget_registrations_on_reconnect();
        Ok(store)
    }

    fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// A connection of its own for blocking reads such as XREAD BLOCK (which must not stall
    /// the shared, pipelined pool). Its commands may block for `block`, and time out
    /// `command_timeout_ms` after that: a command stuck on a node that died (a cluster
    /// primary killed, before its replica is promoted) fails instead of hanging its reader.
    async fn dedicated_client(&self, block: Duration) -> ApiResult<Client> {
        let timeout = self.inner.command_timeout;
        let client = Builder::from_config(self.inner.fred_cfg.clone())
            .with_performance_config(|p| p.default_command_timeout = block + timeout)
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
                c.internal_command_timeout = timeout;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 1000, 2))
            .build()
            .map_err(|e| map_redis_error("connect", e))?;
        // Bounded: with reconnects unlimited, `init` waits for every node, a dead one too.
        let init = tokio::time::timeout(timeout, client.init());
        let res = self
            .timed("connect", async {
                match init.await {
                    Ok(r) => r.map(|_| ()),
                    Err(_) => Err(RedisError::new(ErrorKind::Timeout, "connecting timed out")),
                }
            })
            .await;
        if let Err(e) = res {
            // QUIT on a client still connecting can wait for ever: bounded, in the background.
            tokio::spawn(async move { quit_within(&client, timeout).await });
            return Err(e);
        }
        Ok(client)
    }

    /// A subscriber connection that re-subscribes by itself after reconnecting, with
    /// `capacity` messages buffered before a slow dispatcher loses some.
    async fn subscriber_client(&self, capacity: usize) -> ApiResult<fred::clients::SubscriberClient> {
        self.subscriber_from(self.inner.fred_cfg.clone(), capacity).await
    }

    /// A connected subscriber for `cfg` that re-subscribes by itself after reconnecting.
    async fn subscriber_from(
        &self,
        cfg: fred::prelude::Config,
        capacity: usize,
    ) -> ApiResult<SubscriberClient> {
        let timeout = self.inner.command_timeout;
        let sub = Builder::from_config(cfg)
            .with_performance_config(|p| p.broadcast_channel_capacity = capacity)
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
                c.internal_command_timeout = timeout;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 1000, 2))
            .build_subscriber_client()
            .map_err(|e| map_redis_error("connect", e))?;
        // Bounded like [`Store::dedicated_client`]: a node that died (a cluster primary not
        // yet replaced in the cached routing table) would keep `init` waiting for ever.
        let res = self
            .timed("connect", async {
                match tokio::time::timeout(timeout, sub.init()).await {
                    Ok(r) => r.map(|_| ()),
                    Err(_) => Err(RedisError::new(ErrorKind::Timeout, "connecting timed out")),
                }
            })
            .await;
        if let Err(e) = res {
            let c = sub.clone();
            tokio::spawn(async move { quit_within(&c, timeout).await });
            return Err(e);
        }
        // The re-subscribe task runs for the client's life; its handle is not needed.
        drop(sub.manage_subscriptions());
        Ok(sub)
    }

    /// The connection for the next command: the pinned one, or the pool's next.
    fn raw_client(&self) -> &Client {
        match &self.pin {
            Some(c) => c,
            None => self.inner.pool.next(),
        }
    }

    /// [`Store::raw_client`] for plain commands (reads and idempotent writes): sent again
    /// after a reconnect, and following MOVED / ASK redirections (a slot moved or migrating).
    fn client(&self) -> fred::clients::WithOptions<Client> {
        self.raw_client().with_options(&fred::types::config::Options {
            // Following a redirection spends an attempt; a command out of attempts while
            // being redirected makes fred reset the client. (Two attempts made a cluster
            // primary's failure hang requests for minutes here; three did not.)
            max_attempts: Some(3),
            max_redirections: Some(5),
            ..Default::default()
        })
    }

    /// A view of this store whose commands all use one connection, so that calls issued in
    /// order are applied in order while still pipelined.
    pub fn pinned(&self) -> Store {
        Store {
            inner: self.inner.clone(),
            pin: Some(self.inner.pool.next().clone()),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    pub fn mode(&self) -> &RedisMode {
        &self.inner.mode
    }

    /// QUIT every connection, waiting at most `command_timeout_ms` (see [`quit_within`]).
    pub async fn close(&self) {
        quit_within(&self.inner.pool, self.inner.command_timeout).await;
    }

    /// [`quit_within`] with this store's command timeout.
    pub async fn quit_client<C: ClientLike>(&self, client: &C) {
        quit_within(client, self.inner.command_timeout).await;
    }

    /// Record a namespace in the registry set (once per process per namespace). Done before
    /// the first write so a namespace with data is always listed; in cluster mode the
    /// registry lives in another slot, so it cannot join the write's atomic call.
    pub async fn register_namespace(&self, ns: &str) -> ApiResult<()> {
        self.register_once(ns, self.inner.keys.namespaces(), ns).await
    }

    /// After a reconnect Redis may have come back without its data: forget every registration
    /// so the next writes make them again (one SADD each).
    fn forget_registrations_on_reconnect(&self) {
        for c in self.inner.pool.clients() {
            let inner = Arc::downgrade(&self.inner);
            // The task lives as long as the client; its handle is not needed.
            drop(c.on_reconnect(move |_server| {
                if let Some(i) = inner.upgrade() {
                    if let Ok(mut s) = i.registered.write() {
                        s.clear();
                    }
                }
                async { Ok(()) }
            }));
        }
    }

    /// A write answered with revision 1 began the namespace's history, maybe again after Redis
    /// lost it (and its registry): register it for sure, not from this process's memo.
    pub async fn history_began(&self, ns: &str, revision: u64) -> ApiResult<()> {
        if revision == 1 {
            self.forget_namespace(ns);
            self.register_namespace(ns).await?;
        }
        Ok(())
    }

    /// Forget that this process registered `ns` (its history was reset, or its reader ended):
    /// the next write registers it again.
    pub fn forget_namespace(&self, ns: &str) {
        if let Ok(mut s) = self.inner.registered.write() {
            s.remove(ns);
        }
    }

    /// SADD `member` to the registry set `set` unless this process already did (`tag` names
    /// the pair in the process-local memo).
    async fn register_once(&self, tag: &str, set: String, member: &str) -> ApiResult<()> {
        if self
            .inner
            .registered
            .read()
            .map(|s| s.contains(tag))
            .unwrap_or(false)
        {
            return Ok(());
        }
        self.timed("sadd", self.client().sadd::<i64, _, _>(set, member))
            .await?;
        if let Ok(mut s) = self.inner.registered.write() {
            s.insert(tag.to_string());
        }
        Ok(())
    }

    /// Common ARGV[1..4] of namespace functions.
    fn ctx_args(&self, prov: &Provenance) -> Vec<Value> {
        vec![
            self.inner.log_maxlen.as_str().into(),
            self.inner.history_versions.as_str().into(),
            prov.agent.as_deref().unwrap_or("").into(),
            prov.reason.as_deref().unwrap_or("").into(),
            prov.fence.as_ref().map(|f| f.0.as_str()).unwrap_or("").into(),
            prov.fence
                .as_ref()
                .map(|f| f.1.to_string())
                .unwrap_or_default()
                .into(),
        ]
    }
}

/// Errors retrying cannot heal: authentication and permission refusals, bad configuration,
/// TLS handshakes refused by either side.
pub fn is_permanent(e: &RedisError) -> bool {
    matches!(e.kind(), ErrorKind::Auth | ErrorKind::Config | ErrorKind::Url)
        || is_refusal_text(e.details())
        || is_tls_refusal(e)
}

/// A TLS handshake that failed on certificates or parameters, not on the network: our side
/// rejected the server's certificate (rustls `InvalidCertificate`: unknown issuer, wrong name,
/// expired), or the server sent a fatal alert (`AlertReceived`: no or unknown client
/// certificate, no common protocol). fred reports these as I/O errors carrying rustls' error.
pub fn is_tls_refusal(e: &RedisError) -> bool {
    *e.kind() == ErrorKind::Tls
        || (*e.kind() == ErrorKind::IO
            && ["InvalidCertificate", "AlertReceived", "invalid peer certificate"]
                .iter()
                .any(|w| e.details().contains(w)))
}

/// Reply texts of authentication and permission refusals.
pub fn is_refusal_text(s: &str) -> bool {
    [
        "NOAUTH",
        "WRONGPASS",
        "NOPERM",
        "ERR AUTH",
        "invalid username-password",
    ]
    .iter()
    .any(|w| s.contains(w))
}

/// Errors that mean "Redis is not answering right now" become 503 `redis_unavailable`, with
/// the `outcome` of a write (DESIGN.md "Names and limits"): `not_applied` when Redis refused
/// the command before running it (LOADING, BUSY, MASTERDOWN, READONLY, TRYAGAIN, CLUSTERDOWN,
/// NOREPLICAS), `unknown` when the answer never came (timeout, broken connection, topology
/// change): the write may have been applied.
pub fn map_redis_error(command: &str, e: RedisError) -> ApiError {
    let refused_reply = [
        "LOADING",
        "BUSY",
        "MASTERDOWN",
        "READONLY",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "NOREPLICAS",
    ]
    .iter()
    .any(|p| e.details().starts_with(p));
    let denied = e.details().starts_with("NOPERM");
    let kind = match e.kind() {
        _ if denied => "denied",
        ErrorKind::Timeout => "timeout",
        ErrorKind::IO => "io",
        ErrorKind::Canceled => "canceled",
        ErrorKind::Cluster | ErrorKind::Routing | ErrorKind::Sentinel => "topology",
        // A new cluster client while a primary is down and not yet replaced.
        ErrorKind::Protocol if e.details().contains("cluster state") => "topology",
        // fred's answer when a client's router dropped the command's response channel (its
        // connections were reset): no answer came, like a broken connection.
        ErrorKind::Unknown if e.details().contains("channel closed") => "io",
        // fred's answer when the client has no connection to route to (a Sentinel client
        // between losing its primary and reaching the new one).
        ErrorKind::Unknown if e.details().contains("Failed to route") => "topology",
        _ if refused_reply => "busy",
        _ => "other",
    };
    metrics::counter!("redis_errors_total", "kind" => kind).increment(1);
    if kind == "other" {
        return ApiError::internal(format!("redis {command}: {e}"));
    }
    if denied {
        // The ACL user lacks a rule: the operator's to fix, not a bug, and nothing ran.
        tracing::error!(command, error = %e, "Redis denied a command to the service's ACL user (see README, Redis access)");
        let mut err = ApiError::unavailable(format!(
            "Redis denied {command} to the service's ACL user (NOPERM); nothing was applied"
        ));
        err.extra.insert("outcome".into(), "not_applied".into());
        return err;
    }
    tracing::warn!(command, error = %e, "Redis unavailable");
    let (outcome, detail) = if kind == "busy" {
        (
            "not_applied",
            format!(
                "Redis refused {command} ({}); nothing was applied, retry shortly",
                first_word(e.details())
            ),
        )
    } else {
        let why = match kind {
            "timeout" => format!("Redis did not answer {command} within command_timeout_ms"),
            "topology" => format!("the Redis topology changed during {command}"),
            _ => format!("the connection to Redis failed during {command}"),
        };
        (
            "unknown",
            format!(
                "{why}; a write may or may not have been applied: read the current state before \
                 retrying, or retry with a precondition (If-Match); a repeat with the same \
                 Idempotency-Key replays this answer, it does not apply the write twice"
            ),
        )
    };
    let mut err = ApiError::unavailable(detail);
    err.extra.insert("outcome".into(), outcome.into());
    err
}

fn first_word(s: &str) -> &str {
    s.split_whitespace().next().unwrap_or(s)
}

/// QUIT, waited for at most `within`. fred's QUIT waits for a client that is reconnecting
/// (its node died, reconnects unlimited) to connect again, which may be never: a shutdown, a
/// relay re-subscribing after a failover or a closed watch must not hang on it.
pub async fn quit_within<C: ClientLike>(client: &C, within: Duration) {
    if tokio::time::timeout(within, client.quit()).await.is_err() {
        tracing::debug!(client = client.id(), "QUIT did not finish in time; left behind");
    }
}
