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
    /// Scenarios to run, comma-separated: get, put.
    #[arg(long, default_value = "get,put")]
    scenarios: String,
    /// Skip the redis-benchmark comparison.
    #[arg(long)]
    no_redis_benchmark: bool,
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

/// Start redis-server and swarmstate; returns (service addr, redis port, guard).
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
    let exe = std::env::current_exe().expect("current exe");
    let service_bin = exe.with_file_name("swarmstate");
    assert!(
        service_bin.exists(),
        "{} not found: build it with `cargo build --release --bins`",
        service_bin.display()
    );
    let sport = free_port();
    let service = Command::new(&service_bin)
        .arg("serve")
        .env("SWARMSTATE_LISTEN", format!("127.0.0.1:{sport}"))
        .env("SWARMSTATE_REDIS_URL", format!("redis://127.0.0.1:{rport}"))
        .env("SWARMSTATE_LOG", "warn")
        .env("SWARMSTATE_KEY_PREFIX", "bench")
        .stdout(Stdio::null())
        .spawn()
        .expect("swarmstate serve");
    let addr: SocketAddr = format!("127.0.0.1:{sport}").parse().expect("addr");
    let guard = Spawned {
        children: vec![redis, service],
        _dir: dir,
    };
    wait_http(addr).await;
    (addr, rport, guard)
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
    match body {
        Some(b) => format!(
            "{method} {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{b}",
            b.len()
        ),
        None => format!("{method} {path} HTTP/1.1\r\nhost: bench\r\n\r\n"),
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
    let (addr, redis_port, _guard) = match &args.url {
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
    let mut results = Vec::new();
    for sc in args.scenarios.split(',').map(str::trim) {
        let reqs = match sc {
            "get" => gets.clone(),
            "put" => puts.clone(),
            other => panic!("unknown scenario {other}"),
        };
        // Short warm-up, then the measured run.
        run_load(
            addr,
            Arc::new(reqs.clone()),
            args.concurrency,
            Duration::from_secs(1),
        )
        .await;
        let o = run_load(addr, Arc::new(reqs), args.concurrency, duration).await;
        let rps = o.requests as f64 / o.elapsed.as_secs_f64();
        println!(
            "{:<4} {:>10.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  p999 {:>7.3} ms  max {:>8.3} ms  errors {}",
            sc.to_uppercase(),
            rps,
            ms(o.hist.value_at_quantile(0.5)),
            ms(o.hist.value_at_quantile(0.99)),
            ms(o.hist.value_at_quantile(0.999)),
            ms(o.hist.max()),
            o.errors
        );
        results.push((sc.to_string(), rps));
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
                let (base, target) = if sc == "get" { (get, 0.5) } else { (set, 0.35) };
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
