//! swarmstate-bench: throughput and latency of the key/value API, compared in the same run
//! with `redis-benchmark` against the same Redis.
//!
//! By default it starts its own redis-server (AOF on, appendfsync everysec, like the embedded
//! default) and the release `swarmstate serve` next to this executable, so one command gives
//! comparable figures:
//!
//! ```text
//! cargo build --release --bins
//! target/release/swarmstate-bench --concurrency 50 --duration 10
//! ```
//!
//! `--url` and `--redis-url` point it at an already running service and its Redis instead.
//! The load generator is a minimal keep-alive HTTP/1.1 client (one connection per concurrent
//! client, no pipelining), as close as practical to redis-benchmark's one request in flight
//! per connection.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod backups;
mod topologies;

#[derive(Parser, Debug)]
#[command(
    name = "swarmstate-bench",
    about = "KV GET/PUT load against swarmstate vs redis-benchmark"
)]
struct Args {
    /// A running service (default: start redis-server and swarmstate here).
    #[arg(long)]
    url: Option<String>,
    /// The Redis behind --url, for the redis-benchmark comparison (redis://host:port).
    #[arg(long)]
    redis_url: Option<String>,
    /// Concurrent connections.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Seconds per scenario.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Value size in bytes (a JSON string of this length).
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Scenarios to run, comma-separated: get, put, putq (PUT into a partition), getauth and
    /// putauth (GET / PUT with a bearer token, against a second service on the same Redis
    /// that has a tokens file), watch, queue, lock, backup (--backup-keys keys of
    /// --value-size bytes: capture, upload and restore MB/s and peak RSS), failover (primaries killed under CAS
    /// load, per topology and durability), agents (--agents simulated agents).
    #[arg(long, default_value = "get,put")]
    scenarios: String,
    /// watch scenario: WebSocket watchers on one namespace.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// watch scenario: writes per second into the watched namespace.
    #[arg(long, default_value_t = 1000)]
    writes_per_sec: u64,
    /// queue scenario: worker connections (each leases, then acks what it got).
    #[arg(long, default_value_t = 10)]
    workers: usize,
    /// queue scenario: tasks to push through.
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// queue scenario: producer connections (enqueue one at a time each).
    #[arg(long, default_value_t = 16)]
    producers: usize,
    /// queue scenario: max_tasks per lease.
    #[arg(long, default_value_t = 10)]
    lease_batch: usize,
    /// The service's process id when --url is given (for its RSS in the watch scenario).
    #[arg(long)]
    service_pid: Option<u32>,
    /// Skip the redis-benchmark comparison.
    #[arg(long)]
    no_redis_benchmark: bool,
    /// failover scenario: topologies to fail over (sentinel, cluster).
    #[arg(long, default_value = "sentinel,cluster")]
    topologies: String,
    /// failover scenario: durability settings to compare (none, replica; aof needs a Redis
    /// with WAITAOF as `redis-server` on PATH).
    #[arg(long, default_value = "none,replica")]
    durabilities: String,
    /// failover scenario: primaries killed (one every --kill-every seconds).
    #[arg(long, default_value_t = 3)]
    failovers: usize,
    /// failover scenario: seconds between kills.
    #[arg(long, default_value_t = 10)]
    kill_every: u64,
    /// failover scenario: clients doing CAS increments.
    #[arg(long, default_value_t = 16)]
    cas_clients: usize,
    /// backup scenario: keys written, then backed up and restored into a fresh deployment.
    #[arg(long, default_value_t = 100_000)]
    backup_keys: usize,
    /// agents scenario: simulated agents.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// agents scenario: where they run: single (one service), two (two services on one
    /// Redis), cluster (one service on a 3+3 Redis Cluster).
    #[arg(long, default_value = "single,two,cluster")]
    agent_targets: String,
}

struct Spawned {
    children: Vec<Child>,
    /// Redis' data directory, removed when the guard drops.
    _dir: tempfile::TempDir,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn wait_http(addr: SocketAddr) {
    for _ in 0..300 {
        if let Ok(mut s) = TcpStream::connect(addr).await {
            let mut buf = Vec::new();
            if s.write_all(b"GET /readyz HTTP/1.1\r\nhost: b\r\n\r\n")
                .await
                .is_ok()
                && read_response(&mut s, &mut buf)
                    .await
                    .map(|st| st == 200)
                    .unwrap_or(false)
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("service at {addr} did not become ready");
}

/// Start redis-server and swarmstate; returns (service addr, redis port, guard); the
/// service is the guard's last child.
async fn spawn_stack() -> (SocketAddr, u16, Spawned) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rport = free_port();
    let redis = Command::new("redis-server")
        .args(["--port", &rport.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", "yes", "--appendfsync", "everysec"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install -y redis-server)");
    let service_bin = std::env::current_exe()
        .expect("current exe")
        .with_file_name("swarmstate");
    assert!(
        service_bin.exists(),
        "{} not found: build it with `cargo build --release --bins`",
        service_bin.display()
    );
    let (addr, service) = spawn_service(rport, None).await;
    let guard = Spawned {
        children: vec![redis, service],
        _dir: dir,
    };
    (addr, rport, guard)
}

/// The bearer token of the `getauth` / `putauth` scenarios.
const BENCH_TOKEN: &str = "sst_bench-token-not-secret";

/// A second service on the same Redis with a tokens file of 20 entries; the bench token (the
/// last one) has a budget far above any load, so every request pays the lookup, the scope
/// check and the rate limiter.
async fn spawn_auth_service(rport: u16, dir: &std::path::Path) -> (SocketAddr, Child) {
    let mut toml = String::new();
    for i in 0..19 {
        let secret = format!("sst_other-{i}");
        toml.push_str(&format!(
            "[[token]]\nname = \"other-{i}\"\nsha256 = \"{}\"\nnamespaces = [\"team-{i}-*\"]\npermission = \"write\"\n",
            swarmstate::domain::auth::sha256_hex(&secret)
        ));
    }
    toml.push_str(&format!(
        "[[token]]\nname = \"bench\"\nsha256 = \"{}\"\nnamespaces = [\"bench*\"]\npermission = \"write\"\nrate_per_sec = 100000000\n",
        swarmstate::domain::auth::sha256_hex(BENCH_TOKEN)
    ));
    let file = dir.join("tokens.toml");
    std::fs::write(&file, toml).expect("tokens file");
    spawn_service(rport, Some(&file)).await
}

/// `swarmstate serve` (next to this executable) on a free port against Redis at `rport`.
async fn spawn_service(rport: u16, tokens: Option<&std::path::Path>) -> (SocketAddr, Child) {
    spawn_service_on(&format!("redis://127.0.0.1:{rport}"), tokens, &[]).await
}

/// `swarmstate serve` on a free port against the Redis `redis_url` names, with extra
/// `SWARMSTATE_*` settings.
async fn spawn_service_on(
    redis_url: &str,
    tokens: Option<&std::path::Path>,
    env: &[(&str, &str)],
) -> (SocketAddr, Child) {
    let exe = std::env::current_exe().expect("current exe");
    let service_bin = exe.with_file_name("swarmstate");
    let sport = free_port();
    let mut cmd = Command::new(&service_bin);
    cmd.arg("serve")
        .env("SWARMSTATE_LISTEN", format!("127.0.0.1:{sport}"))
        .env("SWARMSTATE_REDIS_URL", redis_url)
        .env(
            "SWARMSTATE_LOG",
            std::env::var("SWARMSTATE_BENCH_SERVICE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .env("SWARMSTATE_KEY_PREFIX", "bench")
        .env_remove("SWARMSTATE_TOKENS_FILE")
        .stdout(Stdio::null());
    // After the defaults: a scenario may set its own key prefix.
    cmd.envs(env.iter().copied());
    if let Some(t) = tokens {
        cmd.env("SWARMSTATE_TOKENS_FILE", t);
    }
    let service = cmd.spawn().expect("swarmstate serve");
    let addr: SocketAddr = format!("127.0.0.1:{sport}").parse().expect("addr");
    wait_http(addr).await;
    (addr, service)
}

/// Read one HTTP/1.1 response (Content-Length framed) from `s`; returns its status.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    let header_end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..header_end]).unwrap_or("");
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < header_end + len {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(status)
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn request(method: &str, path: &str, body: Option<&str>) -> Vec<u8> {
    request_as(method, path, body, None)
}

/// A request, with `Authorization: Bearer <token>` when a token is given.
fn request_as(method: &str, path: &str, body: Option<&str>, token: Option<&str>) -> Vec<u8> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    request_with(method, path, body, &headers)
}

/// A request with extra headers.
fn request_with(method: &str, path: &str, body: Option<&str>, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut h = String::new();
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    match body {
        Some(b) => format!(
            "{method} {path} HTTP/1.1\r\nhost: bench\r\n{h}content-type: application/json\r\ncontent-length: {}\r\n\r\n{b}",
            b.len()
        ),
        None => format!("{method} {path} HTTP/1.1\r\nhost: bench\r\n{h}\r\n"),
    }
    .into_bytes()
}

struct Outcome {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
}

async fn run_load(
    addr: SocketAddr,
    reqs: Arc<Vec<Vec<u8>>>,
    concurrency: usize,
    duration: Duration,
) -> Outcome {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let reqs = reqs.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.set_nodelay(true).ok();
            let mut buf = Vec::with_capacity(64 * 1024);
            let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (w as u64 + 1);
            let (mut ok, mut err) = (0u64, 0u64);
            while Instant::now() < deadline {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let req = &reqs[(rng % reqs.len() as u64) as usize];
                let t0 = Instant::now();
                if s.write_all(req).await.is_err() {
                    err += 1;
                    break;
                }
                match read_response(&mut s, &mut buf).await {
                    Ok(st) if (200..300).contains(&st) => ok += 1,
                    Ok(_) => err += 1,
                    Err(_) => {
                        err += 1;
                        break;
                    }
                }
                let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
            }
            (ok, err, hist)
        }));
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let (mut ok, mut err) = (0, 0);
    for t in tasks {
        let (o, e, h) = t.await.expect("worker");
        ok += o;
        err += e;
        total.add(h).expect("merge");
    }
    Outcome {
        requests: ok,
        errors: err,
        elapsed: start.elapsed(),
        hist: total,
    }
}

/// requests/s of redis-benchmark for GET and SET (non-pipelined, same concurrency).
fn redis_benchmark(port: u16, concurrency: usize, value_size: usize, keys: usize) -> Option<(f64, f64)> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-c", &concurrency.to_string(), "-n", "300000", "-t", "get,set"])
        .args(["-d", &value_size.to_string(), "-r", &keys.to_string(), "--csv"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = |name: &str| {
        text.lines().find_map(|l| {
            let cols: Vec<&str> = l.split(',').map(|c| c.trim_matches('"')).collect();
            (cols.first() == Some(&name)).then(|| cols.get(1)?.parse::<f64>().ok())?
        })
    };
    Some((rps("GET")?, rps("SET")?))
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    raise_fd_limit();
    let (addr, redis_port, guard) = match &args.url {
        Some(u) => {
            let hostport = u.trim_start_matches("http://").trim_end_matches('/');
            let addr: SocketAddr = tokio::net::lookup_host(hostport)
                .await
                .expect("resolvable --url")
                .next()
                .expect("an address");
            let rport = args
                .redis_url
                .as_deref()
                .and_then(|r| r.rsplit(':').next())
                .and_then(|p| p.trim_end_matches('/').parse().ok());
            (addr, rport, None)
        }
        None => {
            let (a, p, g) = spawn_stack().await;
            (a, Some(p), Some(g))
        }
    };
    let value = format!("\"{}\"", "x".repeat(args.value_size.saturating_sub(2)));
    let body = format!("{{\"value\":{value}}}");
    let body_put = body.clone();
    let paths: Vec<String> = (0..args.keys)
        .map(|i| format!("/v1/ns/bench/kv/key:{i:06}"))
        .collect();
    // Preload every key so GETs hit.
    let puts: Vec<Vec<u8>> = paths.iter().map(|p| request("PUT", p, Some(&body))).collect();
    {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut buf = Vec::new();
        for r in &puts {
            s.write_all(r).await.expect("write");
            let st = read_response(&mut s, &mut buf).await.expect("read");
            assert!(st == 200 || st == 201, "preload PUT answered {st}");
        }
    }
    let gets: Vec<Vec<u8>> = paths.iter().map(|p| request("GET", p, None)).collect();
    let duration = Duration::from_secs(args.duration);
    println!(
        "swarmstate-bench: concurrency {}, {} s per scenario, {} keys, {}-byte values, service {}",
        args.concurrency, args.duration, args.keys, args.value_size, addr
    );
    let service_pid = args
        .service_pid
        .or_else(|| guard.as_ref().and_then(|g| g.children.last()).map(|c| c.id()));
    let mut results = Vec::new();
    let mut cpu_per_request: Vec<(String, f64)> = Vec::new();
    // The service with a tokens file, started on first use by getauth / putauth.
    let mut auth_service: Option<(SocketAddr, Child, tempfile::TempDir)> = None;
    for sc in args.scenarios.split(',').map(str::trim) {
        let mut target = addr;
        let mut target_pid = service_pid;
        let reqs = match sc {
            "get" => gets.clone(),
            "put" => puts.clone(),
            "getauth" | "putauth" => {
                let Some(rport) = redis_port.filter(|_| guard.is_some()) else {
                    println!("{sc}: needs the spawned stack (no --url); skipped");
                    continue;
                };
                if auth_service.is_none() {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let (a, child) = spawn_auth_service(rport, dir.path()).await;
                    auth_service = Some((a, child, dir));
                }
                target = auth_service.as_ref().map(|s| s.0).expect("auth service");
                target_pid = auth_service.as_ref().map(|s| s.1.id());
                let (method, body) = if sc == "getauth" {
                    ("GET", None)
                } else {
                    ("PUT", Some(body.as_str()))
                };
                paths
                    .iter()
                    .map(|p| request_as(method, p, body, Some(BENCH_TOKEN)))
                    .collect()
            }
            "putq" => {
                // The same PUTs into a partition (quota checked inside every write).
                let mut s = TcpStream::connect(addr).await.expect("connect");
                let mut buf = Vec::new();
                let body =
                    r#"{"name":"benchq","owner_agent":"bench","quota_bytes":1073741824,"tier":"shared"}"#;
                let (st, _) = call(&mut s, &mut buf, &request("POST", "/v1/partitions", Some(body))).await;
                assert!(st == 201 || st == 409, "partition create answered {st}");
                (0..args.keys)
                    .map(|i| request("PUT", &format!("/v1/ns/benchq/kv/key:{i:06}"), Some(&body_put)))
                    .collect()
            }
            "watch" => {
                watch_scenario(addr, &args, service_pid).await;
                continue;
            }
            "queue" => {
                queue_scenario(addr, &args).await;
                continue;
            }
            "lock" => {
                lock_scenario(addr, &args).await;
                continue;
            }
            "backup" => {
                match redis_port {
                    Some(rport) => backups::backup_scenario(rport, &args).await,
                    None => println!("backup: needs --redis-url with --url; skipped"),
                }
                continue;
            }
            "failover" => {
                topologies::failover_scenario(&args).await;
                continue;
            }
            "agents" => {
                let second = match redis_port.filter(|_| guard.is_some()) {
                    Some(rport) => Some(spawn_service(rport, None).await),
                    None => None,
                };
                topologies::agents_scenario(&args, addr, service_pid, second).await;
                continue;
            }
            other => panic!("unknown scenario {other}"),
        };
        // Short warm-up, then the measured run.
        run_load(
            target,
            Arc::new(reqs.clone()),
            args.concurrency,
            Duration::from_secs(1),
        )
        .await;
        let cpu_before = target_pid.and_then(cpu_ticks);
        let o = run_load(target, Arc::new(reqs), args.concurrency, duration).await;
        let cpu_after = target_pid.and_then(cpu_ticks);
        let rps = o.requests as f64 / o.elapsed.as_secs_f64();
        // The service's own CPU time per request (clock ticks of 10 ms).
        let cpu_us = match (cpu_before, cpu_after) {
            (Some(b), Some(a)) if o.requests > 0 => Some((a - b) as f64 * 10_000.0 / o.requests as f64),
            _ => None,
        };
        if let Some(us) = cpu_us {
            cpu_per_request.push((sc.to_string(), us));
        }
        println!(
            "{:<4} {:>10.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  p999 {:>7.3} ms  max {:>8.3} ms  errors {}  service CPU {} µs/req",
            sc.to_uppercase(),
            rps,
            ms(o.hist.value_at_quantile(0.5)),
            ms(o.hist.value_at_quantile(0.99)),
            ms(o.hist.value_at_quantile(0.999)),
            ms(o.hist.max()),
            o.errors,
            cpu_us.map(|u| format!("{u:.1}")).unwrap_or_else(|| "?".into())
        );
        results.push((sc.to_string(), rps));
    }
    if let Some((_, mut child, _)) = auth_service.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let rate = |n: &str| results.iter().find(|(s, _)| s == n).map(|(_, r)| *r);
    let cpu = |n: &str| cpu_per_request.iter().find(|(s, _)| s == n).map(|(_, r)| *r);
    for (plain, authed) in [("get", "getauth"), ("put", "putauth")] {
        if let (Some(p), Some(a)) = (rate(plain), rate(authed)) {
            println!(
                "{} with a bearer token / without = {:.3} req/s (cost {:.1} %), service CPU {} (target: cost < 5 %)",
                plain.to_uppercase(),
                a / p,
                (1.0 - a / p) * 100.0,
                match (cpu(plain), cpu(authed)) {
                    (Some(cp), Some(ca)) => format!("{cp:.1} → {ca:.1} µs/req ({:+.1} %)", (ca / cp - 1.0) * 100.0),
                    _ => "?".into(),
                }
            );
        }
    }
    if let (Some(put), Some(putq)) = (rate("put"), rate("putq")) {
        println!(
            "quota-checked PUT / plain PUT = {:.2}  (cost of quota checking {:.0} %, target < 15 %)",
            putq / put,
            (1.0 - putq / put) * 100.0
        );
    }
    if args.no_redis_benchmark {
        return;
    }
    let Some(port) = redis_port else {
        println!("(no --redis-url: skipping the redis-benchmark comparison)");
        return;
    };
    match redis_benchmark(port, args.concurrency, args.value_size, args.keys) {
        Some((get, set)) => {
            println!(
                "redis-benchmark -c {} (same Redis): GET {get:.0} req/s, SET {set:.0} req/s",
                args.concurrency
            );
            for (sc, rps) in results {
                let (base, target) = if sc.starts_with("get") {
                    (get, 0.5)
                } else {
                    (set, 0.35)
                };
                println!(
                    "ratio {:<4} swarmstate/redis = {:.2}  (target ≥ {target})",
                    sc.to_uppercase(),
                    rps / base
                );
            }
        }
        None => println!("redis-benchmark not found (apt-get install -y redis-tools): no comparison"),
    }
}

/// Let this process (and the service it spawns) hold thousands of sockets.
fn raise_fd_limit() {
    // SAFETY: plain getrlimit/setrlimit on this process.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// User + system CPU time of a process in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Resident set size of a process, KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The number after `"<field>":` in a JSON text, without parsing the rest.
fn json_u64(text: &str, field: &str) -> Option<u64> {
    let pat = format!("\"{field}\":");
    let i = text.find(&pat)? + pat.len();
    let digits: String = text[i..].chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// N watchers on one namespace while writers do K writes/s: end-to-end event latency (write
/// acknowledged → event received by a watcher), delivered events/s, missing events, and the
/// service's RSS before the sockets, with them idle, and after the run.
async fn watch_scenario(addr: SocketAddr, args: &Args, service_pid: Option<u32>) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let ns = format!("wbench{}", std::process::id());
    let n = args.watchers;
    let rss = || service_pid.and_then(rss_kib);
    let rss_before = rss();
    let t0 = Instant::now();
    let url = format!("ws://{addr}/v1/watch");
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(n.max(1));
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let url = url.clone();
        let ns = ns.clone();
        let ready = ready_tx.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            // A small read buffer: tungstenite zeroes the whole buffer on every read, which at
            // the default 128 KiB was a tenth of this process's CPU.
            let mut cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
            cfg.read_buffer_size = 16 * 1024;
            let (mut ws, _) = tokio_tungstenite::connect_async_with_config(&url, Some(cfg), true)
                .await
                .expect("ws connect");
            let op = format!(r#"{{"op":"watch","id":"w{i}","namespace":"{ns}"}}"#);
            ws.send(Message::Text(op.into())).await.expect("send watch");
            let mut got: Vec<(u32, u32)> = Vec::new();
            let mut acked = false;
            let stopped = stop.notified();
            tokio::pin!(stopped);
            loop {
                let m = tokio::select! {
                    m = ws.next() => m,
                    _ = &mut stopped => break,
                };
                let Some(Ok(m)) = m else { break };
                let Message::Text(t) = m else { continue };
                let t = t.as_str();
                if t.starts_with(r#"{"type":"event""#) {
                    if let Some(rev) = json_u64(t, "revision") {
                        got.push((rev as u32, t0.elapsed().as_micros() as u32));
                    }
                } else if !acked && t.contains(r#""type":"progress""#) {
                    acked = true;
                    let _ = ready.send(()).await;
                } else if t.contains(r#""type":"error""#) {
                    eprintln!("watcher {i}: {t}");
                }
            }
            let _ = ws.close(None).await;
            got
        }));
    }
    drop(ready_tx);
    for _ in 0..n {
        if ready_rx.recv().await.is_none() {
            break;
        }
    }
    let connect_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle = rss();

    // Writers: connections sharing the rate (one write in flight each, so enough of them to
    // hold the rate while the service is busy fanning out); each write's acknowledgement time
    // by revision.
    let writers = (args.writes_per_sec / 25).clamp(1, 64);
    let total_writes = args.writes_per_sec * args.duration;
    let acks = Arc::new(std::sync::Mutex::new(vec![0u32; total_writes as usize + 64]));
    let cpu_before = (service_pid.and_then(cpu_ticks), cpu_ticks(std::process::id()));
    let write_start = Instant::now();
    let mut wtasks = Vec::new();
    for w in 0..writers {
        let acks = acks.clone();
        let ns = ns.clone();
        let per_writer = total_writes / writers;
        let period = Duration::from_secs_f64(writers as f64 / args.writes_per_sec as f64);
        wtasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.set_nodelay(true).ok();
            let mut buf = Vec::new();
            let mut tick = tokio::time::interval(period);
            let mut late = 0u64;
            for i in 0..per_writer {
                tick.tick().await;
                let body = format!(r#"{{"value":{{"n":{i},"w":{w}}}}}"#);
                let req = request("PUT", &format!("/v1/ns/{ns}/kv/k{w}-{}", i % 50), Some(&body));
                s.write_all(&req).await.expect("write");
                let st = read_response(&mut s, &mut buf).await.expect("read");
                let at = t0.elapsed().as_micros() as u32;
                if !(200..300).contains(&st) {
                    late += 1;
                    continue;
                }
                let text = String::from_utf8_lossy(&buf);
                if let Some(rev) = json_u64(&text, "mod_revision") {
                    if let Ok(mut a) = acks.lock() {
                        if let Some(slot) = a.get_mut(rev as usize) {
                            *slot = at;
                        }
                    }
                }
            }
            late
        }));
    }
    let mut failed = 0;
    for t in wtasks {
        failed += t.await.expect("writer");
    }
    let write_secs = write_start.elapsed().as_secs_f64();
    let cpu_after = (service_pid.and_then(cpu_ticks), cpu_ticks(std::process::id()));
    // Let the last events arrive, then stop the watchers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.notify_waiters();
    let acks = acks.lock().map(|a| a.clone()).unwrap_or_default();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
    let (mut received, mut early) = (0u64, 0u64);
    for t in tasks {
        let got = t.await.expect("watcher");
        received += got.len() as u64;
        for (rev, at) in got {
            let Some(&ack) = acks.get(rev as usize) else {
                continue;
            };
            if ack == 0 {
                continue;
            }
            // An event can reach a watcher before the writer has read its response.
            if at < ack {
                early += 1;
            }
            let _ = hist.record((at.saturating_sub(ack) as u64).max(1));
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss();
    let expected = (total_writes - failed) * n as u64;
    println!(
        "WATCH {n} watchers connected in {connect_s:.2} s; {} writes at {} /s target ({:.0} /s achieved, {failed} failed)",
        total_writes - failed,
        args.writes_per_sec,
        (total_writes - failed) as f64 / write_secs
    );
    println!(
        "      event latency (write acknowledged -> event received) p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms  ({early} events arrived before the writer read its ack, counted as 0)",
        ms(hist.value_at_quantile(0.5)),
        ms(hist.value_at_quantile(0.99)),
        ms(hist.max())
    );
    println!(
        "      delivered {received} of {expected} events ({} missing), {:.0} events/s",
        expected.saturating_sub(received),
        received as f64 / write_secs
    );
    let cores = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.2}", (b - a) as f64 / 100.0 / write_secs),
        _ => "?".into(),
    };
    println!(
        "      CPU while writing (cores): service {}, this load generator {} (2-core machines share them)",
        cores(cpu_before.0, cpu_after.0),
        cores(cpu_before.1, cpu_after.1)
    );
    match (rss_before, rss_idle, rss_after) {
        (Some(b), Some(i), Some(a)) => println!(
            "      service RSS: before {:.1} MiB, {n} idle sockets {:.1} MiB ({:.1} KiB per socket), after the run {:.1} MiB",
            b as f64 / 1024.0,
            i as f64 / 1024.0,
            (i.saturating_sub(b)) as f64 / n.max(1) as f64,
            a as f64 / 1024.0
        ),
        _ => println!("      service RSS: unknown (pass --service-pid with --url)"),
    }
}

/// One request on a keep-alive connection; returns status and body.
async fn call(s: &mut TcpStream, buf: &mut Vec<u8>, req: &[u8]) -> (u16, serde_json::Value) {
    s.write_all(req).await.expect("write");
    let st = read_response(s, buf).await.expect("read");
    let body = find(buf, b"\r\n\r\n").map(|p| &buf[p + 4..]).unwrap_or(&[]);
    (
        st,
        serde_json::from_slice(body).unwrap_or(serde_json::Value::Null),
    )
}

/// W workers × T tasks end to end: producers enqueue as fast as they can while workers lease
/// (max_tasks = --lease-batch, long-poll) and ack each task. Prints tasks/s from the first
/// enqueue to the last ack and the enqueue-to-start latency (enqueue sent → lease returned it).
async fn queue_scenario(addr: SocketAddr, args: &Args) {
    let q = format!("qbench{}", std::process::id());
    let t0 = Instant::now();
    let total = args.tasks;
    let producers = args.producers.max(1);
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut handles = Vec::new();
    let start = Instant::now();
    for p in 0..producers {
        let q = q.clone();
        let n = total / producers + usize::from(p < total % producers);
        handles.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.set_nodelay(true).ok();
            let mut buf = Vec::new();
            for _ in 0..n {
                let body = format!(r#"{{"payload":{{"t":{}}}}}"#, t0.elapsed().as_micros());
                let (st, _) = call(
                    &mut s,
                    &mut buf,
                    &request("POST", &format!("/v1/queues/{q}/tasks"), Some(&body)),
                )
                .await;
                assert_eq!(st, 201, "enqueue answered {st}");
            }
            Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram")
        }));
    }
    for w in 0..args.workers {
        let q = q.clone();
        let done = done.clone();
        let batch = args.lease_batch;
        handles.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.set_nodelay(true).ok();
            let mut buf = Vec::new();
            let lease = request(
                "POST",
                &format!("/v1/queues/{q}/lease"),
                Some(&format!(
                    r#"{{"worker":"w{w}","lease_ms":60000,"max_tasks":{batch},"wait_ms":200}}"#
                )),
            );
            while done.load(std::sync::atomic::Ordering::Relaxed) < total {
                let (st, body) = call(&mut s, &mut buf, &lease).await;
                assert_eq!(st, 200, "lease answered {st}");
                let now = t0.elapsed().as_micros() as u64;
                let tasks = body["tasks"].as_array().cloned().unwrap_or_default();
                for t in &tasks {
                    let sent = t["payload"]["t"].as_u64().unwrap_or(now);
                    let _ = hist.record(now.saturating_sub(sent).max(1));
                }
                for t in tasks {
                    let id = t["id"].as_str().unwrap_or("0");
                    let ack = format!(
                        r#"{{"lease_token":"{}"}}"#,
                        t["lease_token"].as_str().unwrap_or("")
                    );
                    let (st, _) = call(
                        &mut s,
                        &mut buf,
                        &request("POST", &format!("/v1/queues/{q}/tasks/{id}/ack"), Some(&ack)),
                    )
                    .await;
                    assert_eq!(st, 200, "ack answered {st}");
                    done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            hist
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
    for h in handles {
        hist.add(h.await.expect("task")).expect("merge");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "QUEUE {total} tasks, {} workers (lease batch {}), {producers} producers: {:.0} tasks/s end to end (enqueue -> lease -> ack), {:.2} s",
        args.workers,
        args.lease_batch,
        total as f64 / secs,
        secs
    );
    println!(
        "      enqueue-to-start latency p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        ms(hist.value_at_quantile(0.5)),
        ms(hist.value_at_quantile(0.99)),
        ms(hist.max())
    );
}

/// `--concurrency` clients, each acquiring and releasing its own lock in a loop (acquire →
/// 200 with token → DELETE with x-lock-token → 204): pairs per second and the pair's latency.
async fn lock_scenario(addr: SocketAddr, args: &Args) {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration);
    let mut handles = Vec::new();
    for c in 0..args.concurrency {
        handles.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.set_nodelay(true).ok();
            let mut buf = Vec::new();
            let path = format!("/v1/ns/lockbench/locks/l{c}");
            let acquire = request(
                "POST",
                &path,
                Some(&format!(r#"{{"owner":"c{c}","ttl_ms":10000}}"#)),
            );
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let (st, body) = call(&mut s, &mut buf, &acquire).await;
                assert_eq!(st, 200, "acquire answered {st}");
                let token = body["token"].as_str().unwrap_or("").to_string();
                let release =
                    format!("DELETE {path} HTTP/1.1\r\nhost: bench\r\nx-lock-token: {token}\r\n\r\n");
                let (st, _) = call(&mut s, &mut buf, release.as_bytes()).await;
                assert_eq!(st, 204, "release answered {st}");
                let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
                n += 1;
            }
            (n, hist)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut total = 0;
    for h in handles {
        let (n, h) = h.await.expect("client");
        total += n;
        hist.add(h).expect("merge");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "LOCK {} clients: {:.0} acquire+release pairs/s ({:.0} requests/s)  pair p50 {:.3} ms  p99 {:.3} ms",
        args.concurrency,
        total as f64 / secs,
        2.0 * total as f64 / secs,
        ms(hist.value_at_quantile(0.5)),
        ms(hist.value_at_quantile(0.99))
    );
}
