//! Redis Cluster and Sentinel sets of real `redis-server` processes on free loopback ports,
//! torn down on drop, and the topology the whole run's shared Redis has
//! (`SWARMSTATE_TEST_REDIS=standalone|cluster|sentinel`, default standalone).
//!
//! - [`Cluster`]: 3 primaries + 3 replicas made by `redis-cli --cluster create
//!   --cluster-replicas 1`, node timeout 2 s, so a killed primary's replica is promoted within
//!   a few seconds.
//! - [`SentinelSet`]: 1 primary, 2 replicas and 3 sentinels (`redis-server --sentinel`,
//!   quorum 2, down-after 1 s) watching it under the name `mymaster`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::{free_port, spawn_redis, wait_ping};

/// The topology of the run's shared Redis, from `SWARMSTATE_TEST_REDIS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    Standalone,
    Cluster,
    Sentinel,
}

pub fn topology() -> Topology {
    match std::env::var("SWARMSTATE_TEST_REDIS").as_deref() {
        Ok("cluster") => Topology::Cluster,
        Ok("sentinel") => Topology::Sentinel,
        Ok("standalone") | Ok("") | Err(_) => Topology::Standalone,
        Ok(other) => panic!("SWARMSTATE_TEST_REDIS={other}: expected standalone, cluster or sentinel"),
    }
}

/// `redis-cli` with arguments; its stdout, or a panic with its stderr.
pub fn redis_cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli must be installed (apt-get install -y redis-tools)");
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One command to the server on `port`; its reply as text (errors included).
pub fn cli(port: u16, args: &[&str]) -> String {
    let p = port.to_string();
    let mut a = vec!["-h", "127.0.0.1", "-p", &p];
    a.extend_from_slice(args);
    redis_cli(&a)
}

/// Poll `f` every 50 ms until it holds or `within` passes (then panic with `what`).
pub fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A node of a cluster or Sentinel set.
pub struct Node {
    pub port: u16,
    /// Its working directory, removed on drop.
    _dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Node {
    fn start(extra: &[String]) -> Node {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let args: Vec<&str> = extra.iter().map(String::as_str).collect();
        let child = spawn_redis(dir.path(), port, &args);
        Node {
            port,
            _dir: dir,
            child: Some(child),
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `INFO replication`'s `role:` (master or slave).
    pub fn role(&self) -> String {
        info_field(&cli(self.port, &["info", "replication"]), "role").unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|l| {
        l.trim_end()
            .strip_prefix(&format!("{field}:"))
            .map(str::to_string)
    })
}

/// A Redis Cluster of 3 primaries and 3 replicas.
pub struct Cluster {
    pub nodes: Vec<Node>,
}

impl Cluster {
    pub fn start() -> Cluster {
        let conf = |_: usize| {
            vec![
                "--cluster-enabled".to_string(),
                "yes".into(),
                "--cluster-config-file".into(),
                "nodes.conf".into(),
                "--cluster-node-timeout".into(),
                "2000".into(),
                "--appendonly".into(),
                "no".into(),
            ]
        };
        let nodes: Vec<Node> = (0..6).map(|i| Node::start(&conf(i))).collect();
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(nodes.iter().map(Node::addr));
        args.extend(["--cluster-replicas".into(), "1".into(), "--cluster-yes".into()]);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        redis_cli(&a);
        let c = Cluster { nodes };
        c.wait_healthy(Duration::from_secs(30));
        c
    }

    /// Every running node says `cluster_state:ok`, three primaries hold every slot and every
    /// running replica is in sync with its primary.
    pub fn wait_healthy(&self, within: Duration) {
        wait_until("the cluster is healthy", within, || {
            self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                let info = cli(n.port, &["cluster", "info"]);
                let repl = cli(n.port, &["info", "replication"]);
                info_field(&info, "cluster_state").as_deref() == Some("ok")
                    && info_field(&info, "cluster_slots_ok").as_deref() == Some("16384")
                    && (info_field(&repl, "role").as_deref() == Some("master")
                        || info_field(&repl, "master_link_status").as_deref() == Some("up"))
            })
        });
    }

    /// `redis-cluster://h1:p1,h2:p2,…` naming every node.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(Node::addr).collect();
        format!("redis-cluster://{}", hosts.join(","))
    }

    /// Indices of the running primaries.
    pub fn primaries(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running() && self.nodes[i].role() == "master")
            .collect()
    }

    /// The index of the running primary serving `slot`, from `CLUSTER NODES` as a running
    /// primary sees it.
    pub fn primary_of_slot(&self, slot: u16) -> usize {
        let any = self.primaries()[0];
        let nodes = cli(self.nodes[any].port, &["cluster", "nodes"]);
        for line in nodes.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let serves = f[8..].iter().any(|r| match r.split_once('-') {
                Some((a, b)) => {
                    a.parse::<u16>().is_ok_and(|a| a <= slot) && b.parse::<u16>().is_ok_and(|b| slot <= b)
                }
                None => r.parse::<u16>() == Ok(slot),
            });
            if serves {
                let port: u16 = f[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
                return self
                    .nodes
                    .iter()
                    .position(|n| n.port == port)
                    .expect("a node of this cluster");
            }
        }
        panic!("no primary serves slot {slot}: {nodes}");
    }
}

/// A primary, two replicas and three sentinels watching it as `mymaster`.
pub struct SentinelSet {
    pub redis: Vec<Node>,
    pub sentinels: Vec<Node>,
}

pub const MASTER_NAME: &str = "mymaster";

impl SentinelSet {
    pub fn start() -> SentinelSet {
        let primary = Node::start(&[]);
        let replica_of = vec![
            "--replicaof".to_string(),
            "127.0.0.1".into(),
            primary.port.to_string(),
        ];
        let mut redis = vec![primary];
        for _ in 0..2 {
            redis.push(Node::start(&replica_of));
        }
        let p0 = redis[0].port;
        let sentinels: Vec<Node> = (0..3)
            .map(|_| {
                let dir = tempfile::tempdir().unwrap();
                let port = free_port();
                let conf = dir.path().join("sentinel.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "port {port}\nbind 127.0.0.1\ndir {}\n\
                         sentinel monitor {MASTER_NAME} 127.0.0.1 {p0} 2\n\
                         sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                         sentinel failover-timeout {MASTER_NAME} 4000\n\
                         sentinel parallel-syncs {MASTER_NAME} 2\n",
                        dir.path().display()
                    ),
                )
                .unwrap();
                let extra = vec![conf.display().to_string(), "--sentinel".to_string()];
                let mut cmd = Command::new("redis-server");
                cmd.args(&extra).stdout(Stdio::null()).stderr(Stdio::null());
                let child = super::redis::spawn_with_deathsig(cmd);
                wait_ping(port);
                Node {
                    port,
                    _dir: dir,
                    child: Some(child),
                }
            })
            .collect();
        let s = SentinelSet { redis, sentinels };
        wait_until(
            "the sentinels know each other and both replicas",
            Duration::from_secs(30),
            || {
                s.sentinels.iter().all(|n| {
                    let info = cli(n.port, &["sentinel", "master", MASTER_NAME]);
                    let field = |f: &str| {
                        let lines: Vec<&str> = info.lines().collect();
                        lines
                            .iter()
                            .position(|l| *l == f)
                            .and_then(|i| lines.get(i + 1).map(|v| v.to_string()))
                    };
                    field("num-slaves").as_deref() == Some("2")
                        && field("num-other-sentinels").as_deref() == Some("2")
                })
            },
        );
        s.wait_replicas_synced(Duration::from_secs(30));
        s
    }

    /// `redis+sentinel://s1:p1,s2:p2,s3:p3/mymaster`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.sentinels.iter().map(Node::addr).collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// The port the sentinels name as primary.
    pub fn primary_port(&self) -> u16 {
        let sentinel = self.sentinels.iter().find(|s| s.is_running()).unwrap();
        let out = cli(
            sentinel.port,
            &["sentinel", "get-master-addr-by-name", MASTER_NAME],
        );
        out.lines().nth(1).unwrap().trim().parse().unwrap()
    }

    pub fn primary_index(&self) -> usize {
        let port = self.primary_port();
        self.redis.iter().position(|n| n.port == port).unwrap()
    }

    /// Every running replica's link to the primary is up.
    pub fn wait_replicas_synced(&self, within: Duration) {
        wait_until("every replica is in sync", within, || {
            self.redis.iter().filter(|n| n.is_running()).all(|n| {
                let repl = cli(n.port, &["info", "replication"]);
                info_field(&repl, "role").as_deref() == Some("master")
                    || info_field(&repl, "master_link_status").as_deref() == Some("up")
            })
        });
    }
}

/// The `host:port` list of a URL the service takes (`redis://h:p`, `redis-cluster://a,b`,
/// `redis+sentinel://s1,s2/name`).
fn hosts_of(url: &str) -> (String, Vec<u16>) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    let hosts = rest.split('/').next().unwrap();
    let ports = hosts
        .split(',')
        .map(|h| h.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    (scheme.to_string(), ports)
}

/// The port of the primary a URL names now: the server itself, a cluster's first node (use
/// `redis-cli -c` to follow redirections), or the primary the first reachable sentinel names.
pub fn primary_port(url: &str) -> u16 {
    let (scheme, ports) = hosts_of(url);
    if scheme.contains("sentinel") {
        let name = url.rsplit('/').next().unwrap();
        for p in ports {
            let out = Command::new("redis-cli")
                .args(["-p", &p.to_string(), "sentinel", "get-master-addr-by-name", name])
                .output()
                .unwrap();
            if let Some(port) = String::from_utf8_lossy(&out.stdout).lines().nth(1) {
                return port.trim().parse().unwrap();
            }
        }
        panic!("no sentinel of {url} names a primary");
    }
    ports[0]
}

/// Run the real `redis-cli` against the Redis a URL names, as another client would (in
/// cluster mode with `-c`, following redirections to the key's node).
pub fn url_cli(url: &str, args: &[&str]) -> String {
    let port = primary_port(url).to_string();
    let mut a = vec!["-p", port.as_str()];
    if url.starts_with("redis-cluster") {
        a.insert(0, "-c");
    }
    a.extend_from_slice(args);
    redis_cli(&a).trim().to_string()
}

/// Every key matching `pattern` on every primary (KEYS on a cluster node sees only its own).
pub fn all_keys(url: &str, pattern: &str) -> Vec<String> {
    let (scheme, ports) = hosts_of(url);
    let ports = if scheme.contains("cluster") {
        ports
            .into_iter()
            .filter(|p| info_field(&cli(*p, &["info", "replication"]), "role").as_deref() == Some("master"))
            .collect()
    } else {
        vec![primary_port(url)]
    };
    let mut keys: Vec<String> = ports
        .iter()
        .flat_map(|p| {
            cli(*p, &["keys", pattern])
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    keys.sort();
    keys
}
