//! Real `redis-server` processes on free loopback ports, for the integration tests and
//! `swarmstate-bench`: single servers, a Redis Cluster of 3 primaries + 3 replicas and a
//! Sentinel set, each torn down on drop (and killed when the process that started it dies).
//!
//! - [`Cluster`]: 3 primaries + 3 replicas made by `redis-cli --cluster create
//!   --cluster-replicas 1`, node timeout 2 s, so a killed primary's replica is promoted within
//!   a few seconds.
//! - [`SentinelSet`]: 1 primary, 2 replicas and 3 sentinels (`redis-server --sentinel`,
//!   quorum 2, down-after 1 s) watching it under the name `mymaster`.
//!
//! Needs `redis-server` and `redis-cli` on PATH (Debian: redis-server, redis-tools).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free port for a cluster node: at most 55535 (its cluster bus listens on the port +
/// 10000, and redis-server refuses a higher one) with that bus port free too.
pub fn free_cluster_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port <= 55535 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

pub fn spawn_redis(dir: &Path, port: u16, extra: &[&str]) -> Child {
    let child = spawn_redis_no_wait(dir, port, extra);
    wait_ping(port);
    child
}

pub fn spawn_redis_no_wait(dir: &Path, port: u16, extra: &[&str]) -> Child {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    spawn_with_deathsig(cmd)
}

/// Spawn a server that is killed when this process dies, however it dies.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not the process:
/// a server started from a Tokio blocking-pool thread was killed when that idle thread
/// retired 10 s later (in `swarmstate-bench` a whole Redis Cluster vanished 10 s into a run).
/// So every server is forked by one spawner thread that lives as long as the process.
pub fn spawn_with_deathsig(mut cmd: Command) -> Child {
    use std::sync::mpsc;
    use std::sync::{Mutex, OnceLock};
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    // SAFETY: prctl in the child before exec; the server gets SIGKILL when its parent thread
    // (the spawner, which never exits before the process) is gone.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawner thread");
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply))
        .expect("spawner thread alive");
    answer
        .recv()
        .expect("spawner answered")
        .expect("redis-server must be installed (apt-get install -y redis-server)")
}

pub fn wait_ping(port: u16) {
    use std::io::{Read, Write};
    for _ in 0..200 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
            let mut buf = [0u8; 16];
            if s.write_all(b"PING\r\n").is_ok()
                && s.read(&mut buf)
                    .map(|n| buf[..n].starts_with(b"+PONG"))
                    .unwrap_or(false)
            {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("redis-server on {port} did not answer PING");
}

/// `redis-cli` with arguments; its stdout, or a panic with its stderr.
/// Killed after 60 s (a command to a server that stopped answering must not hang a test).
pub fn redis_cli(args: &[&str]) -> String {
    redis_cli_within(args, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"))
}

/// `redis-cli` with arguments, killed after `within` (coreutils `timeout`); its stdout, or
/// why not.
pub fn redis_cli_within(args: &[&str], within: Duration) -> Result<String, String> {
    let out = Command::new("timeout")
        .args(["-s", "KILL", &format!("{}", within.as_secs().max(1)), "redis-cli"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("coreutils timeout and redis-cli must be installed (apt-get install -y redis-tools)");
    match out.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
        Some(127) => panic!("redis-cli must be installed (apt-get install -y redis-tools)"),
        None | Some(124) | Some(137) => Err(format!(
            "redis-cli {args:?} did not finish within {within:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        )),
        Some(_) => Err(format!(
            "redis-cli {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )),
    }
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
    /// Its redis-server arguments (empty for a sentinel, which cannot be restarted).
    args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    pub fn start(extra: &[String]) -> Node {
        Self::start_on(free_port(), extra)
    }

    /// A cluster node: on a port whose cluster bus port is usable.
    pub fn start_cluster_node(extra: &[String]) -> Node {
        Self::start_on(free_cluster_port(), extra)
    }

    fn start_on(port: u16, extra: &[String]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let args: Vec<&str> = extra.iter().map(String::as_str).collect();
        let child = spawn_redis(dir.path(), port, &args);
        Node {
            port,
            _dir: dir,
            args: extra.to_vec(),
            child: Some(child),
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Start again on the same port and directory, with the arguments it started with
    /// (a cluster node keeps its nodes.conf and rejoins as a replica).
    pub fn restart(&mut self) {
        self.kill();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.child = Some(spawn_redis(self._dir.path(), self.port, &args));
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
        // `redis-cli --cluster create` waits for ever for a node that never joins: bounded,
        // and tried again on fresh nodes.
        for attempt in 1.. {
            let nodes: Vec<Node> = (0..6).map(|i| Node::start_cluster_node(&conf(i))).collect();
            let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
            args.extend(nodes.iter().map(Node::addr));
            args.extend(["--cluster-replicas".into(), "1".into(), "--cluster-yes".into()]);
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            match redis_cli_within(&a, Duration::from_secs(60)) {
                Ok(_) => {
                    let c = Cluster { nodes };
                    c.wait_healthy(Duration::from_secs(30));
                    return c;
                }
                Err(e) if attempt < 3 => eprintln!("cluster create failed (attempt {attempt}); again: {e}"),
                Err(e) => panic!("cluster create failed {attempt} times: {e}"),
            }
        }
        unreachable!()
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
                let child = spawn_with_deathsig(cmd);
                wait_ping(port);
                Node {
                    port,
                    _dir: dir,
                    args: Vec::new(),
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
