//! The embedded default: with no `redis_url`, the service runs its own `redis-server` child
//! on loopback with the append-only file under `<data_dir>/redis`, restarts it when it dies,
//! and stops it (SIGTERM, so the AOF is flushed) on shutdown. The child also gets
//! PR_SET_PDEATHSIG so it never outlives a killed service.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;

/// A running, supervised redis-server.
pub struct EmbeddedRedis {
    pub url: String,
    pub port: u16,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Start-up failures, with messages meant for the operator.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "`{0}` was not found on PATH. swarmstate runs its own Redis when SWARMSTATE_REDIS_URL is not set; \
         install it with `sudo apt-get install -y redis-server` (Debian/Ubuntu), or point SWARMSTATE_REDIS_URL at a Redis"
    )]
    NotInstalled(String),
    #[error("embedded redis-server: {0}")]
    Failed(String),
}

/// Find an executable on PATH (or accept a path).
pub fn find_executable(name: &str) -> Option<PathBuf> {
    let p = Path::new(name);
    if p.components().count() > 1 {
        return p.is_file().then(|| p.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|c| c.is_file())
    })
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn spawn(bin: &Path, dir: &Path, port: u16, appendfsync: &str) -> std::io::Result<Child> {
    let mut cmd = Command::new(bin);
    cmd.arg("--port")
        .arg(port.to_string())
        .args([
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
        ])
        .args(["--appendonly", "yes", "--appendfsync", appendfsync])
        .args(["--save", ""])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    // SAFETY: prctl only sets a flag on the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd.spawn()
}

/// Wait until the server answers PING.
pub async fn wait_ready(port: u16, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let mut buf = [0u8; 64];
            if s.write_all(b"PING\r\n").await.is_ok() {
                if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
                    if buf[..n].starts_with(b"+PONG") {
                        return true;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        // SAFETY: sending a signal to our own child process.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
}

impl EmbeddedRedis {
    pub async fn start(cfg: &Config) -> Result<EmbeddedRedis, EmbeddedError> {
        let bin = find_executable(&cfg.redis_server_bin)
            .ok_or_else(|| EmbeddedError::NotInstalled(cfg.redis_server_bin.clone()))?;
        let dir = cfg.data_dir.join("redis");
        std::fs::create_dir_all(&dir)
            .map_err(|e| EmbeddedError::Failed(format!("creating {}: {e}", dir.display())))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| EmbeddedError::Failed(format!("{}: {e}", dir.display())))?;
        let port = free_port().map_err(|e| EmbeddedError::Failed(format!("finding a free port: {e}")))?;
        let appendfsync = cfg.embedded_appendfsync.clone();
        let mut child = spawn(&bin, &dir, port, &appendfsync)
            .map_err(|e| EmbeddedError::Failed(format!("starting {}: {e}", bin.display())))?;
        if !wait_ready(port, Duration::from_secs(30)).await {
            terminate(&child);
            let _ = child.wait().await;
            return Err(EmbeddedError::Failed(format!(
                "did not answer PING within 30 s; see {}",
                dir.join("redis.log").display()
            )));
        }
        tracing::info!(port, dir = %dir.display(), "embedded redis-server started");
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                tokio::select! {
                    status = child.wait() => {
                        tracing::error!(?status, "embedded redis-server exited; restarting it");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        match spawn(&bin, &dir, port, &appendfsync) {
                            Ok(c) => {
                                child = c;
                                if wait_ready(port, Duration::from_secs(30)).await {
                                    tracing::info!(port, "embedded redis-server restarted");
                                    backoff = Duration::from_millis(100);
                                }
                            }
                            Err(e) => tracing::error!(error = %e, "restarting redis-server failed"),
                        }
                    }
                    _ = stopped.changed() => {
                        terminate(&child);
                        match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
                            Ok(_) => tracing::info!("embedded redis-server stopped"),
                            Err(_) => {
                                let _ = child.kill().await;
                                tracing::warn!("embedded redis-server killed after 10 s");
                            }
                        }
                        return;
                    }
                }
            }
        });
        Ok(EmbeddedRedis {
            url: format!("redis://127.0.0.1:{port}"),
            port,
            stop,
            task,
        })
    }

    /// Stop the child gracefully and wait for it.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}
