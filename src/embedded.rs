//! The embedded default: with no `redis_url`, the service runs its own `redis-server` child
//! on loopback with the append-only file under `<data_dir>/redis`, restarts it when it dies,
//! and stops it (SIGTERM, so the AOF is flushed) on shutdown. The child also gets
//! PR_SET_PDEATHSIG so it never outlives a killed service.
//!
//! Loopback is open to every local user, so the server requires a password: 32 random bytes
//! from the OS, hex-encoded, kept in `<data_dir>/redis/password` (mode 0600, created once and
//! reused, so a restart keeps it). It reaches redis-server through `<data_dir>/redis/redis.conf`
//! (mode 0600, rewritten at every start), never through argv, which `ps` shows to everyone.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;

/// The password file under `<data_dir>/redis`.
pub const PASSWORD_FILE: &str = "password";
/// The generated redis-server configuration file (holds `requirepass`) under `<data_dir>/redis`.
pub const CONFIG_FILE: &str = "redis.conf";

/// A running, supervised redis-server.
pub struct EmbeddedRedis {
    /// `redis://:<password>@127.0.0.1:<port>`: a secret, log it only through `config::redact`.
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

/// The password of the embedded server: the one in `<dir>/password`, or a new one written there
/// (mode 0600 from the start: the file is never readable by others, not even briefly).
pub fn password(dir: &Path) -> Result<String, EmbeddedError> {
    let path = dir.join(PASSWORD_FILE);
    let failed =
        |what: &str, e: std::io::Error| EmbeddedError::Failed(format!("{what} {}: {e}", path.display()));
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let pw = text.trim().to_string();
            if pw.is_empty() || !pw.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(EmbeddedError::Failed(format!(
                    "{} is empty or not one line of printable characters; delete it to have a new password made",
                    path.display()
                )));
            }
            let mode = std::fs::metadata(&path)
                .map_err(|e| failed("reading", e))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| failed("restricting", e))?;
                tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "the embedded Redis password file was readable by others; now 0600");
            }
            Ok(pw)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| {
                EmbeddedError::Failed(format!("no random bytes from the OS for the password: {e}"))
            })?;
            let pw: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| failed("creating", e))?;
            f.write_all(format!("{pw}\n").as_bytes())
                .and_then(|_| f.sync_all())
                .map_err(|e| failed("writing", e))?;
            tracing::info!(path = %path.display(), "embedded Redis password created");
            Ok(pw)
        }
        Err(e) => Err(failed("reading", e)),
    }
}

/// Write `<dir>/redis.conf` with the password, mode 0600 (replaced, never rewritten in place,
/// so a file someone made readable does not keep its mode).
fn write_config(dir: &Path, password: &str) -> Result<PathBuf, EmbeddedError> {
    let path = dir.join(CONFIG_FILE);
    let failed = |e: std::io::Error| EmbeddedError::Failed(format!("writing {}: {e}", path.display()));
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed(e)),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(failed)?;
    f.write_all(
        format!(
            "# Written by swarmstate at every start of its embedded redis-server; edits are lost.\n\
             # The password is the one in {PASSWORD_FILE}. The other settings come on the command line.\n\
             requirepass {password}\n"
        )
        .as_bytes(),
    )
    .map_err(failed)?;
    Ok(path)
}

fn spawn(bin: &Path, conf: &Path, dir: &Path, port: u16, appendfsync: &str) -> std::io::Result<Child> {
    let mut cmd = Command::new(bin);
    // The config file first: the options after it add to it (redis-server's own rule).
    cmd.arg(conf)
        .arg("--port")
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

/// Wait until the server accepts the password and answers PING (not `-LOADING`).
pub async fn wait_ready(port: u16, password: &str, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let request = format!(
        "*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\n*1\r\n$4\r\nPING\r\n",
        password.len()
    );
    while tokio::time::Instant::now() < deadline {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            if s.write_all(request.as_bytes()).await.is_ok() {
                let replies = tokio::time::timeout(Duration::from_millis(500), async {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 256];
                    // Two one-line replies: AUTH's, then PING's.
                    while got.iter().filter(|&&b| b == b'\n').count() < 2 {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    got
                })
                .await;
                if let Ok(got) = replies {
                    if got.starts_with(b"+OK\r\n+PONG") {
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
        // Only the service's user may look inside (the AOF holds every value).
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| EmbeddedError::Failed(format!("creating {}: {e}", dir.display())))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| EmbeddedError::Failed(format!("{}: {e}", dir.display())))?;
        let port = free_port().map_err(|e| EmbeddedError::Failed(format!("finding a free port: {e}")))?;
        let appendfsync = cfg.embedded_appendfsync.clone();
        let password = password(&dir)?;
        let conf = write_config(&dir, &password)?;
        let mut child = spawn(&bin, &conf, &dir, port, &appendfsync)
            .map_err(|e| EmbeddedError::Failed(format!("starting {}: {e}", bin.display())))?;
        let url = format!("redis://:{password}@127.0.0.1:{port}");
        if !wait_ready(port, &password, Duration::from_secs(30)).await {
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
                        match spawn(&bin, &conf, &dir, port, &appendfsync) {
                            Ok(c) => {
                                child = c;
                                if wait_ready(port, &password, Duration::from_secs(30)).await {
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
            url,
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
