//! Real `redis-server` processes on free loopback ports: one shared by the whole run (each
//! test uses its own key prefix) and ones owned by a single test (killed on drop).

use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

pub use swarmstate::testkit::{free_port, spawn_redis, spawn_redis_no_wait, spawn_with_deathsig, wait_ping};

/// A redis-server owned by one test (killed on drop).
pub struct RedisServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start(extra: &[&str]) -> RedisServer {
        Self::start_on(free_port(), extra)
    }

    pub fn start_on(port: u16, extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let child = spawn_redis(dir.path(), port, extra);
        RedisServer {
            port,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: Some(child),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no shutdown, no final AOF rewrite.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port and directory (AOF reloaded when enabled).
    pub fn restart(&mut self) {
        self.restart_without_waiting();
        wait_ping(self.port);
    }

    /// Start again without waiting until it answers (it may still be loading its data).
    pub fn restart_without_waiting(&mut self) {
        self.kill();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        self.child = Some(spawn_redis_no_wait(self.dir.path(), self.port, &extra));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The Redis shared by the whole test run (each test uses its own key prefix): one
/// redis-server, or a cluster or Sentinel set when `SWARMSTATE_TEST_REDIS` says so (see
/// [`super::topology`]). Never torn down: its servers die with the test process
/// ([`spawn_with_deathsig`](swarmstate::testkit::spawn_with_deathsig)).
pub fn shared_redis_url() -> String {
    use super::topology::{topology, Cluster, SentinelSet, Topology};
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match topology() {
        Topology::Standalone => {
            let dir: PathBuf = std::env::temp_dir().join(format!("swarmstate-it-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let port = free_port();
            std::mem::forget(spawn_redis(&dir, port, &[]));
            format!("redis://127.0.0.1:{port}")
        }
        Topology::Cluster => {
            let c = Cluster::start();
            let url = c.url();
            std::mem::forget(c);
            url
        }
        Topology::Sentinel => {
            let s = SentinelSet::start();
            let url = s.url();
            std::mem::forget(s);
            url
        }
    })
    .clone()
}

pub fn unique_prefix() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("t{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A raw client for any URL the service takes (standalone, cluster, Sentinel), to check what
/// is stored.
pub async fn redis_client(url: &str) -> fred::clients::Client {
    use fred::prelude::*;
    let target = swarmstate::config::RedisTarget::parse(url).unwrap();
    let c = Builder::from_config(fred::prelude::Config::from_url(&target.fred_url).unwrap())
        .build()
        .unwrap();
    c.init().await.unwrap();
    c
}
