//! Typed access to Redis: one connection pool, one wrapper per Redis function, and the
//! mapping of Redis failures to API errors (`redis_unavailable` for anything that is the
//! network's or the server's momentary fault, `internal` for everything else).
//!
//! Every call is timed into `redis_command_duration_seconds{command}`; failures count into
//! `redis_errors_total{kind}`.

pub mod agents;
pub mod keys;
pub mod kv;
pub mod locks;
pub mod migrate;
pub mod partitions;
pub mod queue;

use std::collections::HashSet;
use std::future::Future;

use futures::future::BoxFuture;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use fred::clients::SubscriberClient;
use fred::error::{Error as RedisError, ErrorKind};
use fred::prelude::*;
use fred::types::Value;

use crate::config::{Config, RedisMode, RedisTarget};
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
    log_maxlen: String,
    history_versions: String,
    /// Namespaces this process has already added to the registry set.
    registered: RwLock<HashSet<String>>,
}

impl Store {
    /// Connect to Redis, retrying until `startup_timeout_ms` has passed.
    pub async fn connect(cfg: &Config, url: &str) -> Result<Store, String> {
        let target = RedisTarget::parse(url).map_err(|e| e.to_string())?;
        let fred_cfg =
            fred::prelude::Config::from_url(&target.fred_url).map_err(|e| format!("redis_url: {e}"))?;
        let timeout = Duration::from_millis(cfg.command_timeout_ms);
        let build = || {
            Builder::from_config(fred_cfg.clone())
                .with_performance_config(|p| {
                    p.default_command_timeout = timeout;
                })
                .with_connection_config(|c| {
                    c.connection_timeout = timeout;
                    c.internal_command_timeout = timeout;
                    // Never re-send a command on our behalf: a function call in flight when a
                    // connection drops may already have run, and running a write twice (a
                    // counter bumped twice, a CAS answered 412) is worse than a 503.
                    c.max_command_attempts = 1;
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
        Ok(Store {
            inner: Arc::new(Inner {
                pool,
                fred_cfg,
                keys: Keys::new(&cfg.key_prefix),
                mode: target.mode,
                log_maxlen: cfg.changelog_retention.to_string(),
                history_versions: cfg.history_versions.to_string(),
                registered: RwLock::new(HashSet::new()),
            }),
            pin: None,
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// A connection of its own, without a command deadline, for blocking reads such as
    /// XREAD BLOCK (which must not stall the shared, pipelined pool).
    pub async fn dedicated_client(&self) -> ApiResult<Client> {
        let client = Builder::from_config(self.inner.fred_cfg.clone())
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 1000, 2))
            .build()
            .map_err(|e| map_redis_error("connect", e))?;
        self.timed("connect", async { client.init().await.map(|_| ()) })
            .await?;
        Ok(client)
    }

    /// A subscriber connection that re-subscribes by itself after reconnecting.
    pub async fn subscriber_client(&self) -> ApiResult<fred::clients::SubscriberClient> {
        self.subscriber_client_with_capacity(1024).await
    }

    /// The same with `capacity` messages buffered before a slow dispatcher loses some.
    pub async fn subscriber_client_with_capacity(
        &self,
        capacity: usize,
    ) -> ApiResult<fred::clients::SubscriberClient> {
        self.subscriber_from(self.inner.fred_cfg.clone(), capacity).await
    }

    /// A connected subscriber for `cfg` that re-subscribes by itself after reconnecting.
    async fn subscriber_from(
        &self,
        cfg: fred::prelude::Config,
        capacity: usize,
    ) -> ApiResult<SubscriberClient> {
        let sub = Builder::from_config(cfg)
            .with_performance_config(|p| p.broadcast_channel_capacity = capacity)
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 1000, 2))
            .build_subscriber_client()
            .map_err(|e| map_redis_error("connect", e))?;
        self.timed("connect", async { sub.init().await.map(|_| ()) })
            .await?;
        // The re-subscribe task runs for the client's life; its handle is not needed.
        drop(sub.manage_subscriptions());
        Ok(sub)
    }

    /// Subscriber connections for keyspace notifications, which Redis Cluster publishes only on
    /// the node holding the key: one per primary in cluster mode, else one (which follows a
    /// Sentinel failover by itself). `capacity` is the client's message buffer.
    pub async fn node_subscribers(&self, capacity: usize) -> ApiResult<Vec<(String, SubscriberClient)>> {
        let mut configs = Vec::new();
        if self.inner.fred_cfg.server.is_clustered() {
            let state = self
                .client()
                .cached_cluster_state()
                .ok_or_else(|| ApiError::unavailable("cluster state not known yet"))?;
            for server in state.unique_primary_nodes() {
                let mut c = self.inner.fred_cfg.clone();
                c.server = fred::types::config::ServerConfig::Centralized {
                    server: server.clone(),
                };
                configs.push((server.to_string(), c));
            }
        } else {
            configs.push(("redis".to_string(), self.inner.fred_cfg.clone()));
        }
        let mut out = Vec::new();
        for (name, c) in configs {
            out.push((name, self.subscriber_from(c, capacity).await?));
        }
        Ok(out)
    }

    /// Run CONFIG GET/SET style commands on every primary (one entry per node).
    pub fn primaries(&self) -> Vec<Option<fred::types::config::Server>> {
        if self.inner.fred_cfg.server.is_clustered() {
            if let Some(state) = self.client().cached_cluster_state() {
                return state.unique_primary_nodes().into_iter().map(Some).collect();
            }
        }
        vec![None]
    }

    /// The connection for the next command: the pinned one, or the pool's next.
    pub fn client(&self) -> &Client {
        match &self.pin {
            Some(c) => c,
            None => self.inner.pool.next(),
        }
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

    pub async fn close(&self) {
        let _ = self.inner.pool.quit().await;
    }

    /// Time a Redis call and map its error.
    ///
    /// Returns a boxed future on purpose: fred's command futures are ~6.8 KB, and every async
    /// fn awaiting one inline grows by that much — which axum then copies when it boxes each
    /// handler future. Measured with callgrind on PUT: 97k → 80k instructions per request,
    /// memcpy 26k → 10k. Boxing here keeps callers small.
    pub fn timed<'a, T, F>(&'a self, command: &'static str, fut: F) -> BoxFuture<'a, ApiResult<T>>
    where
        T: Send + 'a,
        F: Future<Output = Result<T, RedisError>> + Send + 'a,
    {
        Box::pin(async move {
            let start = Instant::now();
            let res = fut.await;
            crate::metrics::redis_command(command).record(start.elapsed().as_secs_f64());
            res.map_err(|e| map_redis_error(command, e))
        })
    }

    /// Call a function of the swarmstate library. When Redis answers that the function does not
    /// exist (a Redis restarted without persistence, or FUNCTION FLUSH), the library is loaded
    /// again and the call retried once. Boxed for the reason given at [`Store::timed`].
    pub fn fcall<'a>(
        &'a self,
        name: &'static str,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> BoxFuture<'a, ApiResult<Value>> {
        Box::pin(async move {
            let start = Instant::now();
            // Keys as fred's refcounted `Key`, so keeping a copy for the retry costs no allocation.
            let keys: Vec<fred::types::Key> = keys.into_iter().map(Into::into).collect();
            let mut res: Result<Value, RedisError> =
                self.client().fcall(name, keys.clone(), args.clone()).await;
            if let Err(e) = &res {
                if e.details().contains("Function not found") {
                    tracing::warn!("functions library missing on Redis; loading it again");
                    if let Err(e) = migrate::load_library(self).await {
                        return Err(map_redis_error(name, e));
                    }
                    res = self.client().fcall(name, keys, args).await;
                }
            }
            crate::metrics::redis_command(name).record(start.elapsed().as_secs_f64());
            let v = res.map_err(|e| map_redis_error(name, e))?;
            // KV writes and task acks check x-fencing-token and partition quotas first; a
            // refusal has one shape for all of them (and only their replies are read so).
            const CHECKED: &[&str] = &[
                "kv_put",
                "kv_delete",
                "kv_rollback",
                "kv_incr",
                "kv_txn",
                "q_ack",
                "q_nack",
            ];
            if let (true, Value::Array(a)) = (CHECKED.contains(&name), &v) {
                if a.first().and_then(v_str).as_deref() == Some("quota_exceeded") {
                    let what = a.get(1).and_then(v_str).unwrap_or_default();
                    let (used, limit) = (a.get(2).map(v_u64).unwrap_or(0), a.get(3).map(v_u64).unwrap_or(0));
                    return Err(ApiError::new(
                        crate::error::ErrorCode::QuotaExceeded,
                        if what == "keys" {
                            format!("the partition holds {used} of at most {limit} keys; nothing was written")
                        } else {
                            format!("the partition uses {used} of {limit} quota bytes and this write would pass it; nothing was written")
                        },
                    ));
                }
                if a.first().and_then(v_str).as_deref() == Some("stale_fencing_token") {
                    let cur = a.get(1).map(v_u64).unwrap_or(0);
                    return Err(ApiError::new(
                        crate::error::ErrorCode::StaleFencingToken,
                        format!("the lock has granted fencing token {cur} since (or never granted this one); nothing was written"),
                    ));
                }
            }
            Ok(v)
        })
    }

    /// Record a namespace in the registry set (once per process per namespace). Done before
    /// the first write so a namespace with data is always listed; in cluster mode the
    /// registry lives in another slot, so it cannot join the write's atomic call.
    pub async fn register_namespace(&self, ns: &str) -> ApiResult<()> {
        self.register_once(ns, self.inner.keys.namespaces(), ns).await
    }

    /// SADD `member` to the registry set `set` unless this process already did (`tag` names
    /// the pair in the process-local memo).
    pub(crate) async fn register_once(&self, tag: &str, set: String, member: &str) -> ApiResult<()> {
        if self
            .inner
            .registered
            .read()
            .map(|s| s.contains(tag))
            .unwrap_or(false)
        {
            return Ok(());
        }
        self.timed("sadd", self.inner.pool.sadd::<i64, _, _>(set, member))
            .await?;
        if let Ok(mut s) = self.inner.registered.write() {
            s.insert(tag.to_string());
        }
        Ok(())
    }

    /// Common ARGV[1..4] of namespace functions.
    fn ctx_args(&self, prov: &kv::Provenance) -> Vec<Value> {
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

/// Errors that mean "Redis is not answering right now" become 503 `redis_unavailable`.
pub fn map_redis_error(command: &str, e: RedisError) -> ApiError {
    let transient_reply = [
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
    let kind = match e.kind() {
        ErrorKind::Timeout => "timeout",
        ErrorKind::IO => "io",
        ErrorKind::Canceled => "canceled",
        ErrorKind::Cluster | ErrorKind::Routing | ErrorKind::Sentinel => "topology",
        _ if transient_reply => "busy",
        _ => "other",
    };
    metrics::counter!("redis_errors_total", "kind" => kind).increment(1);
    if kind == "other" {
        ApiError::internal(format!("redis {command}: {e}"))
    } else {
        tracing::warn!(command, error = %e, "Redis unavailable");
        let detail = if kind == "io" || kind == "canceled" {
            format!(
                "the connection to Redis failed during {command}; a write may or may not have been applied, \
                 read the current state before retrying"
            )
        } else {
            format!("Redis did not answer {command} in time ({kind}); retry shortly")
        };
        ApiError::unavailable(detail)
    }
}

/// Read helpers for function replies.
pub(crate) fn v_str(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        other => other.as_string(),
    }
}

pub(crate) fn v_u64(v: &Value) -> u64 {
    v.as_i64().unwrap_or(0).max(0) as u64
}

/// A flattened HGETALL reply (as returned from a function) as a map.
pub(crate) fn hash_fields(v: &Value) -> std::collections::HashMap<String, String> {
    let mut m = std::collections::HashMap::new();
    if let Value::Array(a) = v {
        for pair in a.chunks(2) {
            if let (Some(k), Some(v)) = (pair.first().and_then(v_str), pair.get(1).and_then(v_str)) {
                m.insert(k, v);
            }
        }
    }
    m
}

pub(crate) fn v_i64(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}
