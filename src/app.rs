//! Application state, start-up, serving and shutdown.
//!
//! Start-up order: (embedded redis-server when no URL is configured) → connect → migrations →
//! serve. Shutdown (SIGTERM / Ctrl-C): stop accepting, finish in-flight requests, stop
//! background tasks, close Redis, then stop the embedded redis-server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{redact, Config};
use crate::embedded::EmbeddedRedis;
use crate::store::{migrate, Store};

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub cfg: Arc<Config>,
    pub metrics: PrometheusHandle,
    pub started: Instant,
    /// Whether Redis is the embedded child.
    pub embedded: bool,
    /// Change-log readers shared by all watch sockets of this process.
    pub hub: Arc<crate::watch::Hub>,
    /// Pub/sub subscriptions shared by all sockets of this process.
    pub pubsub: Arc<crate::pubsub::PubSub>,
    /// Known agents, and what they hold.
    pub presence: Arc<crate::agents::Presence>,
    /// Lock-release wake-ups shared by all requests of this process.
    pub wakeups: Arc<crate::wake::Wakeups>,
    /// Queue wakeups and task events shared by all requests of this process.
    pub queues: Arc<crate::queues::QueueHub>,
    /// Keyspace-notification relay (status for /v1/status).
    pub relay: Arc<crate::relay::Relay>,
}

/// A running service: HTTP server plus background tasks.
pub struct Server {
    pub addr: SocketAddr,
    pub state: AppState,
    stop: watch::Sender<bool>,
    http: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
}

impl Server {
    /// Connect to `cfg.redis_url`, run migrations and serve on `listener`.
    pub async fn start(cfg: Config, listener: TcpListener, embedded: bool) -> Result<Server, String> {
        let url = cfg
            .redis_url
            .clone()
            .ok_or_else(|| "no redis_url to connect to".to_string())?;
        let store = Store::connect(&cfg, &url).await?;
        // Redis may accept connections before it can serve (loading its dataset, failing
        // over): retry migrations until the start-up deadline, but stop at once on a refusal.
        let deadline = Instant::now() + Duration::from_millis(cfg.startup_timeout_ms);
        let report = loop {
            match migrate::run(&store).await {
                Ok(r) => break r,
                Err(migrate::MigrateError::Redis(e)) if Instant::now() < deadline => {
                    tracing::warn!(error = %e, "Redis not ready for migrations yet; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        tracing::info!(
            url = %redact(&url),
            library_loaded = report.library_loaded,
            schema_from = report.schema_from,
            schema_to = report.schema_to,
            "connected to Redis"
        );
        let state = AppState {
            store,
            cfg: Arc::new(cfg),
            metrics: crate::metrics::handle(),
            started: Instant::now(),
            embedded,
            hub: Arc::new(crate::watch::Hub::default()),
            pubsub: Arc::new(crate::pubsub::PubSub::default()),
            relay: Arc::new(crate::relay::Relay::default()),
            queues: Arc::new(crate::queues::QueueHub::default()),
            wakeups: Arc::new(crate::wake::Wakeups::default()),
            presence: Arc::new(crate::agents::Presence::default()),
        };
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (stop, stopped) = watch::channel(false);
        let app = crate::http::router(state.clone());
        let mut http_stop = stopped.clone();
        let http = tokio::spawn(async move {
            let shutdown = async move {
                let _ = http_stop.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        let background = vec![
            tokio::spawn(expiry_reconciler(state.store.clone(), stopped.clone())),
            crate::relay::spawn(
                state.relay.clone(),
                state.store.clone(),
                state.cfg.keyspace_relay,
                state.cfg.body_limit_bytes as u64,
                stopped.clone(),
            ),
            tokio::spawn(crate::queues::reaper(state.store.clone(), stopped.clone())),
            tokio::spawn(crate::queues::partition_upkeep(
                state.store.clone(),
                state.cfg.pool_capacity_bytes,
                stopped.clone(),
            )),
            tokio::spawn(crate::agents::watcher(
                state.presence.clone(),
                state.store.clone(),
                stopped.clone(),
            )),
            tokio::spawn(metrics_upkeep(state.metrics.clone(), stopped)),
        ];
        tracing::info!(%addr, "swarmstate listening");
        Ok(Server {
            addr,
            state,
            stop,
            http,
            background,
        })
    }

    /// Graceful stop: finish in-flight requests, stop background work, close Redis.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.http.await;
        for t in self.background {
            let _ = t.await;
        }
        self.state.store.close().await;
    }
}

use crate::store::kv::now_ms;

/// The clock of a background task: ticks every `period` (the first at once; late ticks are
/// delayed, not bunched) until the service stops.
pub struct Every {
    tick: tokio::time::Interval,
    stopped: watch::Receiver<bool>,
}

impl Every {
    pub fn new(period: Duration, stopped: watch::Receiver<bool>) -> Every {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Every { tick, stopped }
    }

    /// Waits for the next tick; false once the service is stopping.
    pub async fn tick(&mut self) -> bool {
        tokio::select! {
            _ = self.tick.tick() => true,
            _ = self.stopped.wait_for(|s| *s) => false,
        }
    }
}

/// Records expiries of keys with a TTL (removes them from the index and accounting and
/// appends an `expire` event with its own revision) about once a second. Idempotent across
/// replicas: the function records a key only while it is still indexed.
async fn expiry_reconciler(store: Store, stopped: watch::Receiver<bool>) {
    let mut every = Every::new(Duration::from_millis(1000), stopped);
    while every.tick().await {
        let Ok(names) = store.namespace_names().await else {
            continue;
        };
        for ns in names {
            let Ok(due) = store.due_expiries(&ns, now_ms(), 256).await else {
                continue;
            };
            for key in due {
                if let Err(e) = store.kv_forget(&ns, &key).await {
                    tracing::debug!(ns, key, error = %e, "expiry reconcile failed; will retry");
                }
            }
        }
    }
}

async fn metrics_upkeep(handle: PrometheusHandle, stopped: watch::Receiver<bool>) {
    let mut every = Every::new(Duration::from_secs(5), stopped);
    while every.tick().await {
        handle.run_upkeep();
    }
}

/// Wait for SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// `swarmstate serve`: everything from start-up to graceful exit. An `Err` is printed and
/// the process exits 1.
pub async fn run(mut cfg: Config) -> Result<(), String> {
    let listener = TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let embedded = match cfg.redis_url {
        Some(_) => None,
        None => {
            let e = EmbeddedRedis::start(&cfg).await.map_err(|e| e.to_string())?;
            cfg.redis_url = Some(e.url.clone());
            Some(e)
        }
    };
    let server = match Server::start(cfg, listener, embedded.is_some()).await {
        Ok(s) => s,
        Err(e) => {
            if let Some(r) = embedded {
                r.stop().await;
            }
            return Err(e);
        }
    };
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    if let Some(r) = embedded {
        r.stop().await;
    }
    Ok(())
}
