//! Start-up, serving and shutdown: the composition root, the one module that wires every
//! layer together (it alone may use `http`).
//!
//! Start-up order: (embedded redis-server when no URL is configured) → connect → migrations →
//! serve. Shutdown (SIGTERM / Ctrl-C): stop accepting, finish in-flight requests, stop
//! background tasks, close Redis, then stop the embedded redis-server.

pub mod serve;
pub mod tasks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::{redact, Config};
use crate::embedded::EmbeddedRedis;
use crate::ops::Ops;
use crate::shutdown::{self, StopSender};
use crate::state::AppState;
use crate::store::{migrate, Store};

/// A running service: HTTP server plus background tasks.
pub struct Server {
    pub addr: SocketAddr,
    pub state: AppState,
    stop: StopSender,
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
        let auth = Arc::new(crate::ops::auth::Auth::load(&cfg).map_err(|e| format!("tokens_file: {e}"))?);
        let backups = Arc::new(crate::ops::backup_dir::Backups::open(&cfg)?);
        let store = Store::connect(&cfg, &url).await?;
        // Redis may accept connections before it can serve (loading its dataset, failing
        // over): retry migrations until the start-up deadline, but stop at once on a refusal.
        let deadline = Instant::now() + Duration::from_millis(cfg.startup_timeout_ms);
        let report = loop {
            match migrate::run(&store).await {
                Ok(r) => break r,
                Err(migrate::MigrateError::Redis(e)) if crate::store::is_refusal_text(&e) => {
                    return Err(format!(
                        "Redis refused the service: {e} (check the ACL user's permissions)"
                    ))
                }
                Err(migrate::MigrateError::Redis(e)) if Instant::now() < deadline => {
                    tracing::warn!(error = %e, "Redis not ready for migrations yet; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        store.check_durability().await?;
        tracing::info!(
            url = %redact(&url),
            durability = cfg.durability.as_str(),
            library_loaded = report.library_loaded,
            schema_from = report.schema_from,
            schema_to = report.schema_to,
            "connected to Redis"
        );
        let cfg = Arc::new(cfg);
        let (stop, stopped) = shutdown::channel();
        let ops = Arc::new(Ops::new(
            store,
            cfg.clone(),
            embedded,
            stopped.clone(),
            auth,
            backups,
        ));
        let state = AppState {
            ops: ops.clone(),
            cfg,
            metrics: crate::metrics::handle(),
        };
        // Connected and migrated: Redis answers (the metrics upkeep checks it from now on).
        metrics::gauge!("redis_up").set(1.0);
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let app = crate::http::router(state.clone());
        let http_stop = shutdown::wait(stopped.clone());
        let limits = serve::Limits::of(&state.cfg);
        let http = tokio::spawn(serve::serve(listener, app, limits, http_stop));
        let background = tasks::spawn(&ops, state.metrics.clone(), stopped);
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
        // WebSockets left the HTTP loop when they upgraded: wait for their 1001 handshakes.
        self.state
            .ops
            .sockets_closed(std::time::Duration::from_millis(self.state.cfg.shutdown_grace_ms))
            .await;
        // Each background task ends at the stop signal; one stuck on a Redis node that died
        // is aborted after the grace period instead of holding the exit for ever.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.state.cfg.shutdown_grace_ms);
        for mut t in self.background {
            if tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                tracing::warn!("a background task did not stop within the grace period; aborted");
                t.abort();
            }
        }
        self.state.ops.store().close().await;
    }
}

/// `swarmstate serve`: everything from start-up to graceful exit. An `Err` is printed and
/// the process exits 1.
pub async fn run(mut cfg: Config) -> Result<(), String> {
    let stop = shutdown::signal();
    let listener = serve::listen(&cfg.listen).map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
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
    stop.await;
    tracing::info!("shutting down");
    server.shutdown().await;
    if let Some(r) = embedded {
        r.stop().await;
    }
    Ok(())
}

/// A one-off command's connection (`swarmstate backup create|restore`): connected to
/// `cfg.redis_url`, migrated, with every operation allowed (the operator runs it). Keep the
/// sender: dropping it does not stop anything, it only ends what waits for a stop.
pub async fn connect_ops(cfg: Config) -> Result<(Arc<Ops>, StopSender), String> {
    let url = cfg.redis_url.clone().ok_or_else(|| {
        "no Redis to connect to: set SWARMSTATE_REDIS_URL or --redis-url (the embedded Redis runs only under `swarmstate serve`)"
            .to_string()
    })?;
    let auth = Arc::new(crate::ops::auth::Auth::load(&cfg).map_err(|e| format!("tokens_file: {e}"))?);
    let backups = Arc::new(crate::ops::backup_dir::Backups::open(&cfg)?);
    let store = Store::connect(&cfg, &url).await?;
    migrate::run(&store).await.map_err(|e| e.to_string())?;
    let (stop, stopped) = shutdown::channel();
    Ok((
        Arc::new(Ops::new(store, Arc::new(cfg), false, stopped, auth, backups)),
        stop,
    ))
}
