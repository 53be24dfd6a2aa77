//! The scenarios that need more than one Redis process or service:
//!
//! - `failover`: 16 clients doing CAS increments while a primary (Sentinel) or a shard primary
//!   (Cluster) is killed -9 every 10 s and a replica takes over; per topology and durability:
//!   acknowledged writes lost, 503s, ambiguous outcomes and how long writes stopped.
//! - `agents`: 1,000 simulated agents on one service, on two services behind one Redis, and on
//!   one service in front of a 3+3 cluster: throughput, p50/p99 per operation, service CPU
//!   and RSS.
//!
//! Redis sets come from `swarmstate::testkit` (the integration tests' own harness).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use swarmstate::testkit::{wait_until, Cluster, SentinelSet};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{cpu_ticks, find, ms, read_response, request_with as req, rss_kib, spawn_service_on, Args};

/// How long one request may take before it counts as unanswered.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// What a response said.
struct Answer {
    status: u16,
    body: Value,
    etag: Option<String>,
}

/// A keep-alive connection that reconnects after a failure; `None` answers are requests that
/// got no answer (connection lost or [`ANSWER_WITHIN`] passed).
struct Conn {
    addr: SocketAddr,
    s: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            s: None,
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    async fn call(&mut self, request: &[u8]) -> Option<Answer> {
        if self.s.is_none() {
            let s = tokio::time::timeout(ANSWER_WITHIN, TcpStream::connect(self.addr))
                .await
                .ok()?
                .ok()?;
            s.set_nodelay(true).ok();
            self.s = Some(s);
        }
        let s = self.s.as_mut()?;
        let res = tokio::time::timeout(ANSWER_WITHIN, async {
            s.write_all(request).await?;
            read_response(s, &mut self.buf).await
        })
        .await;
        let status = match res {
            Ok(Ok(st)) => st,
            _ => {
                self.s = None;
                return None;
            }
        };
        let head_end = find(&self.buf, b"\r\n\r\n")
            .map(|p| p + 4)
            .unwrap_or(self.buf.len());
        let head = std::str::from_utf8(&self.buf[..head_end]).unwrap_or("");
        let etag = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("etag").then(|| v.trim().to_string())
        });
        let body = serde_json::from_slice(&self.buf[head_end..]).unwrap_or(Value::Null);
        Some(Answer { status, body, etag })
    }
}

enum Topo {
    Sentinel(SentinelSet),
    Cluster(Cluster),
}

impl Topo {
    fn start(name: &str) -> Topo {
        match name {
            "sentinel" => Topo::Sentinel(SentinelSet::start()),
            "cluster" => Topo::Cluster(Cluster::start()),
            other => panic!("unknown topology {other}: sentinel or cluster"),
        }
    }

    fn url(&self) -> String {
        match self {
            Topo::Sentinel(s) => s.url(),
            Topo::Cluster(c) => c.url(),
        }
    }

    /// Kill -9 a primary (the `k`-th failover), wait until a replica has taken over, start
    /// the killed node again (it rejoins as a replica) and wait until it is in sync. Returns
    /// when the primary was killed.
    fn fail_over(&mut self, k: usize) -> Instant {
        match self {
            Topo::Sentinel(set) => {
                let old = set.primary_port();
                let idx = set.primary_index();
                set.redis[idx].kill();
                let killed = Instant::now();
                wait_until("the sentinels promote a replica", Duration::from_secs(60), || {
                    set.primary_port() != old
                });
                set.redis[idx].restart();
                set.wait_replicas_synced(Duration::from_secs(60));
                killed
            }
            Topo::Cluster(c) => {
                let primaries = c.primaries();
                let victim = primaries[k % primaries.len()];
                c.nodes[victim].kill();
                let killed = Instant::now();
                c.wait_healthy(Duration::from_secs(60));
                c.nodes[victim].restart();
                c.wait_healthy(Duration::from_secs(60));
                killed
            }
        }
    }
}

/// One CAS client's record.
#[derive(Default)]
struct CasClient {
    /// Acknowledged increments whose value was later found missing.
    lost: i64,
    acked_writes: u64,
    /// Highest value acknowledged.
    acked: i64,
    /// 503 with outcome not_applied.
    refused: u64,
    /// 503 unknown / applied_unconfirmed, or no answer: the client cannot know.
    ambiguous: u64,
    /// When each acknowledged write came back, since the start.
    successes: Vec<Duration>,
}

/// Increment `fo<c>/n` by CAS (GET, then PUT with If-Match) until `stop`.
async fn cas_client(
    addr: SocketAddr,
    c: usize,
    start: Instant,
    stop: Arc<AtomicBool>,
) -> (String, CasClient) {
    let path = format!("/v1/ns/fo{c}/kv/n");
    let mut conn = Conn::new(addr);
    let mut r = CasClient::default();
    // The value and ETag last read or written; None: read first.
    let mut known: Option<(i64, Option<String>)> = None;
    while !stop.load(Ordering::Relaxed) {
        let (value, etag) = match &known {
            Some(k) => k.clone(),
            None => match conn.call(&req("GET", &path, None, &[])).await {
                Some(a) if a.status == 200 => {
                    let v = a.body["value"].as_i64().unwrap_or(0);
                    if v < r.acked {
                        // The key went back below what was acknowledged: lost in a failover.
                        r.lost += r.acked - v;
                        r.acked = v;
                    }
                    known = Some((v, a.etag));
                    continue;
                }
                Some(a) if a.status == 404 => {
                    if r.acked > 0 {
                        r.lost += r.acked;
                        r.acked = 0;
                    }
                    known = Some((0, None));
                    continue;
                }
                _ => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let body = format!(r#"{{"value":{}}}"#, value + 1);
        let cond = match &etag {
            Some(e) => ("if-match", e.as_str()),
            None => ("if-none-match", "*"),
        };
        match conn.call(&req("PUT", &path, Some(&body), &[cond])).await {
            Some(a) if a.status == 200 || a.status == 201 => {
                r.acked = value + 1;
                r.acked_writes += 1;
                r.successes.push(start.elapsed());
                known = Some((value + 1, a.etag));
            }
            Some(a) if a.status == 412 => known = None,
            Some(a) if a.status == 503 => {
                if a.body["outcome"] == "not_applied" {
                    r.refused += 1;
                } else {
                    r.ambiguous += 1;
                }
                known = None;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Some(a) => panic!("PUT {path} answered {}: {}", a.status, a.body),
            None => {
                r.ambiguous += 1;
                known = None;
            }
        }
    }
    (path, r)
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i]
}

/// Primaries killed under CAS load, per topology and durability (see the module docs).
pub async fn failover_scenario(args: &Args) {
    println!(
        "failover: {} CAS clients, a primary killed -9 every {} s, {} failovers per run",
        args.cas_clients, args.kill_every, args.failovers
    );
    let mut rows = Vec::new();
    for topo in args.topologies.split(',').map(str::trim) {
        for durability in args.durabilities.split(',').map(str::trim) {
            rows.push(failover_run(args, topo, durability).await);
        }
    }
    println!(
        "| topology | durability | acknowledged writes | acknowledged writes lost | 503 not_applied | ambiguous (503 unknown / applied_unconfirmed, no answer) | writes stopped per failover p50 / p99 / max |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
}

async fn failover_run(args: &Args, topo: &str, durability: &str) -> String {
    let name = topo.to_string();
    let mut set = tokio::task::spawn_blocking(move || Topo::start(&name))
        .await
        .expect("topology");
    let url = set.url();
    let (addr, mut service) = spawn_service_on(&url, None, &[("SWARMSTATE_DURABILITY", durability)]).await;
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..args.cas_clients)
        .map(|c| tokio::spawn(cas_client(addr, c, start, stop.clone())))
        .collect();
    let (failovers, every) = (args.failovers, Duration::from_secs(args.kill_every));
    let (set_back, kills) = tokio::task::spawn_blocking(move || {
        let mut kills = Vec::new();
        let mut next = Instant::now() + every;
        for k in 0..failovers {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            kills.push(set.fail_over(k));
            next += every;
        }
        std::thread::sleep(Duration::from_secs(3));
        (set, kills)
    })
    .await
    .expect("failovers");
    stop.store(true, Ordering::Relaxed);
    let mut records = Vec::new();
    for c in clients {
        records.push(c.await.expect("client"));
    }
    // What survived: each counter must hold at least the last acknowledged value.
    let mut conn = Conn::new(addr);
    let (mut lost, mut acked, mut refused, mut ambiguous) = (0i64, 0u64, 0u64, 0u64);
    for (path, r) in &records {
        let mut now = None;
        for _ in 0..100 {
            match conn.call(&req("GET", path, None, &[])).await {
                Some(a) if a.status == 200 => {
                    now = a.body["value"].as_i64();
                    break;
                }
                Some(a) if a.status == 404 => {
                    now = Some(0);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let now = now.expect("the counter readable after the failovers");
        lost += r.lost + (r.acked - now).max(0);
        acked += r.acked_writes;
        refused += r.refused;
        ambiguous += r.ambiguous;
    }
    // Writes stopped: per failover, the longest gap between two acknowledged writes of one
    // client around the kill.
    let mut stopped: Vec<Duration> = kills
        .iter()
        .map(|k| {
            let k = k.duration_since(start);
            records
                .iter()
                .filter_map(|(_, r)| {
                    let before = r.successes.iter().rev().find(|t| **t <= k)?;
                    let after = r.successes.iter().find(|t| **t > k)?;
                    Some(*after - *before)
                })
                .max()
                .unwrap_or(Duration::ZERO)
        })
        .collect();
    stopped.sort();
    let _ = service.kill();
    let _ = service.wait();
    drop(set_back);
    let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let row = format!(
        "| {topo} | {durability} | {acked} | {lost} | {refused} | {ambiguous} | {} / {} / {} |",
        s(quantile(&stopped, 0.5)),
        s(quantile(&stopped, 0.99)),
        s(stopped.last().copied().unwrap_or_default())
    );
    println!("{row}");
    row
}

/// Per-operation latency histograms of the agents.
type Hists = BTreeMap<&'static str, Histogram<u64>>;

fn record(h: &mut Hists, op: &'static str, t0: Instant) {
    let _ = h
        .entry(op)
        .or_insert_with(|| Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"))
        .record(t0.elapsed().as_micros().max(1) as u64);
}

/// What one agent did.
#[derive(Default)]
struct AgentRecord {
    hists: Hists,
    errors: u64,
    conflicts: u64,
}

/// One simulated agent: registers, then every second heartbeats, reads and CAS-writes its own
/// key, reads a shared key, every 5 s CAS-writes a shared key and every 2 s leases a task
/// (acking what it gets).
async fn agent(addr: SocketAddr, i: usize, n: usize, until: Instant) -> AgentRecord {
    let mut r = AgentRecord::default();
    let mut conn = Conn::new(addr);
    let id = format!("agent-{i}");
    let own = format!("/v1/ns/team{}/kv/{id}", i % 20);
    let ok = |a: &Option<Answer>| a.as_ref().is_some_and(|a| (200..300).contains(&a.status));
    let t0 = Instant::now();
    let a = conn
        .call(&req(
            "PUT",
            &format!("/v1/agents/{id}"),
            Some(r#"{"capabilities":["bench"],"metadata":{},"heartbeat_ttl_ms":30000}"#),
            &[],
        ))
        .await;
    if !ok(&a) {
        r.errors += 1;
    }
    record(&mut r.hists, "register", t0);
    // Spread the agents over the second.
    tokio::time::sleep(Duration::from_micros((i as u64 * 1_000_000) / n.max(1) as u64)).await;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut etag: Option<String> = None;
    let mut value = 0u64;
    let mut t = 0usize;
    while Instant::now() < until {
        tick.tick().await;
        t += 1;
        let t0 = Instant::now();
        let a = conn
            .call(&req(
                "POST",
                &format!("/v1/agents/{id}/heartbeat"),
                Some("{}"),
                &[],
            ))
            .await;
        r.errors += u64::from(!ok(&a));
        record(&mut r.hists, "heartbeat", t0);

        let t0 = Instant::now();
        match conn.call(&req("GET", &own, None, &[])).await {
            Some(a) if a.status == 200 => {
                etag = a.etag;
                value = a.body["value"].as_u64().unwrap_or(0);
            }
            Some(a) if a.status == 404 => etag = None,
            _ => r.errors += 1,
        }
        record(&mut r.hists, "get own", t0);

        let t0 = Instant::now();
        let body = format!(r#"{{"value":{}}}"#, value + 1);
        let cond = match &etag {
            Some(e) => ("if-match", e.as_str()),
            None => ("if-none-match", "*"),
        };
        match conn.call(&req("PUT", &own, Some(&body), &[cond])).await {
            Some(a) if a.status == 200 || a.status == 201 => {}
            Some(a) if a.status == 412 => r.conflicts += 1,
            _ => r.errors += 1,
        }
        record(&mut r.hists, "cas own", t0);

        let shared = format!("/v1/ns/swarm/kv/s{}", (i + t) % 10);
        let t0 = Instant::now();
        let got = conn.call(&req("GET", &shared, None, &[])).await;
        record(&mut r.hists, "get shared", t0);
        let shared_etag = match got {
            Some(a) if a.status == 200 => a.etag.map(|e| (e, a.body["value"].as_u64().unwrap_or(0))),
            _ => {
                r.errors += 1;
                None
            }
        };
        if t % 5 == i % 5 {
            if let Some((e, v)) = shared_etag {
                let t0 = Instant::now();
                let body = format!(r#"{{"value":{}}}"#, v + 1);
                match conn
                    .call(&req("PUT", &shared, Some(&body), &[("if-match", &e)]))
                    .await
                {
                    Some(a) if a.status == 200 => {}
                    Some(a) if a.status == 412 => r.conflicts += 1,
                    _ => r.errors += 1,
                }
                record(&mut r.hists, "cas shared", t0);
            }
        }
        if t % 2 == i % 2 {
            let t0 = Instant::now();
            let body = format!(r#"{{"worker":"{id}","max_tasks":1,"lease_ms":30000}}"#);
            let a = conn
                .call(&req("POST", "/v1/queues/work/lease", Some(&body), &[]))
                .await;
            record(&mut r.hists, "lease", t0);
            let tasks = match &a {
                Some(a) if a.status == 200 => a.body["tasks"].as_array().cloned().unwrap_or_default(),
                _ => {
                    r.errors += 1;
                    Vec::new()
                }
            };
            for task in tasks {
                let t0 = Instant::now();
                let (tid, token) = (
                    task["id"].as_str().unwrap_or(""),
                    task["lease_token"].as_str().unwrap_or(""),
                );
                let body = json!({"lease_token": token, "result": {"by": id}}).to_string();
                let a = conn
                    .call(&req(
                        "POST",
                        &format!("/v1/queues/work/tasks/{tid}/ack"),
                        Some(&body),
                        &[],
                    ))
                    .await;
                r.errors += u64::from(!ok(&a));
                record(&mut r.hists, "ack", t0);
            }
        }
    }
    r
}

/// Enqueue `per_sec` tasks a second into `work` until `until`.
async fn producer(addr: SocketAddr, per_sec: u64, until: Instant) -> AgentRecord {
    let mut r = AgentRecord::default();
    let mut conn = Conn::new(addr);
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_sec.max(1)));
    while Instant::now() < until {
        tick.tick().await;
        let t0 = Instant::now();
        let a = conn
            .call(&req(
                "POST",
                "/v1/queues/work/tasks",
                Some(r#"{"payload":{"job":1}}"#),
                &[],
            ))
            .await;
        if a.is_none_or(|a| a.status != 201) {
            r.errors += 1;
        }
        record(&mut r.hists, "enqueue", t0);
    }
    r
}

/// A live watch on the shared namespace until `until`; counts events.
async fn watcher(addr: SocketAddr, events: Arc<AtomicU64>, until: Instant) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/watch")).await else {
        return;
    };
    let op = json!({"op": "watch", "id": "w", "namespace": "swarm"}).to_string();
    if ws.send(Message::Text(op.into())).await.is_err() {
        return;
    }
    while let Ok(Some(Ok(m))) =
        tokio::time::timeout(until.saturating_duration_since(Instant::now()), ws.next()).await
    {
        if let Message::Text(t) = m {
            if t.as_str().contains(r#""type":"event""#) {
                events.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// `--agents` agents spread over `addrs` for `duration`; prints one block of figures.
async fn agents_run(label: &str, addrs: &[SocketAddr], pids: &[u32], n: usize, duration: Duration) -> String {
    // The shared keys exist before the agents start.
    let mut conn = Conn::new(addrs[0]);
    for k in 0..10 {
        let a = conn
            .call(&req(
                "PUT",
                &format!("/v1/ns/swarm/kv/s{k}"),
                Some(r#"{"value":0}"#),
                &[],
            ))
            .await;
        assert!(
            a.is_some_and(|a| a.status < 300),
            "creating the shared keys failed"
        );
    }
    let until = Instant::now() + duration;
    let cpu_before: Vec<Option<u64>> = pids.iter().map(|p| cpu_ticks(*p)).collect();
    let started = Instant::now();
    let events = Arc::new(AtomicU64::new(0));
    let watchers: Vec<_> = (0..n / 10)
        .map(|i| tokio::spawn(watcher(addrs[i % addrs.len()], events.clone(), until)))
        .collect();
    // Producers together enqueue about what the agents lease (a quarter of them a second).
    let producers: Vec<_> = (0..addrs.len())
        .map(|i| {
            tokio::spawn(producer(
                addrs[i],
                (n as u64 / 4 / addrs.len() as u64).max(1),
                until,
            ))
        })
        .collect();
    let agents: Vec<_> = (0..n)
        .map(|i| tokio::spawn(agent(addrs[i % addrs.len()], i, n, until)))
        .collect();
    let mut all = AgentRecord::default();
    for h in agents.into_iter().chain(producers) {
        let r = h.await.expect("agent");
        all.errors += r.errors;
        all.conflicts += r.conflicts;
        for (op, h) in r.hists {
            all.hists
                .entry(op)
                .or_insert_with(|| Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"))
                .add(h)
                .expect("merge");
        }
    }
    let elapsed = started.elapsed();
    for w in watchers {
        let _ = w.await;
    }
    let cpu: f64 = pids
        .iter()
        .zip(cpu_before)
        .filter_map(|(p, b)| Some(cpu_ticks(*p)? - b?))
        .sum::<u64>() as f64
        * 10.0
        / elapsed.as_millis() as f64
        * 100.0;
    let rss: u64 = pids.iter().filter_map(|p| rss_kib(*p)).sum();
    let total: u64 = all.hists.values().map(|h| h.len()).sum();
    let mut out = format!(
        "agents {label}: {n} agents, {} watching, {:.0} req/s over {:.0} s, errors {}, 412 conflicts {}, watch events {}, service CPU {cpu:.0} % of one core, RSS {} MiB\n",
        n / 10,
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        all.errors,
        all.conflicts,
        events.load(Ordering::Relaxed),
        rss / 1024
    );
    for (op, h) in &all.hists {
        out.push_str(&format!(
            "  {op:<11} {:>8} requests  p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>8.3} ms\n",
            h.len(),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max())
        ));
    }
    print!("{out}");
    out
}

/// The agents scenario on each of `--agent-targets`.
pub async fn agents_scenario(
    args: &Args,
    addr: SocketAddr,
    pid: Option<u32>,
    mut second: Option<(SocketAddr, Child)>,
) {
    let duration = Duration::from_secs(args.duration);
    let mut blocks = Vec::new();
    for target in args.agent_targets.split(',').map(str::trim) {
        match target {
            "single" => {
                let pids: Vec<u32> = pid.into_iter().collect();
                blocks.push(agents_run("on one service", &[addr], &pids, args.agents, duration).await);
            }
            "two" => {
                let Some((addr2, child)) = &second else {
                    println!("agents two: needs the spawned stack (no --url); skipped");
                    continue;
                };
                let pids: Vec<u32> = pid.into_iter().chain([child.id()]).collect();
                blocks.push(
                    agents_run(
                        "on two services, one Redis",
                        &[addr, *addr2],
                        &pids,
                        args.agents,
                        duration,
                    )
                    .await,
                );
            }
            "cluster" => {
                let cluster = tokio::task::spawn_blocking(Cluster::start)
                    .await
                    .expect("cluster");
                let (caddr, mut child) = spawn_service_on(&cluster.url(), None, &[]).await;
                blocks.push(
                    agents_run(
                        "on one service, 3+3 Redis Cluster",
                        &[caddr],
                        &[child.id()],
                        args.agents,
                        duration,
                    )
                    .await,
                );
                let _ = child.kill();
                let _ = child.wait();
                drop(cluster);
            }
            other => panic!("unknown agent target {other}: single, two or cluster"),
        }
    }
    if let Some((_, mut c)) = second.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    println!("\n{}", blocks.join("\n"));
}
