//! Redis failures and start-up migrations, with real redis-server processes.

use std::time::{Duration, Instant};

use fred::prelude::*;
use serde_json::json;

use crate::common::{free_port, test_config, RedisServer, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_gives_503_then_recovers_without_losing_acknowledged_writes() {
    let mut redis = RedisServer::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let mut cfg = test_config(&redis.url());
    cfg.command_timeout_ms = 1000;
    let app = TestApp::with_config(cfg).await;
    let r = app
        .put("/v1/ns/dur/kv/ack", json!({"value": "acknowledged"}))
        .await;
    assert_eq!(r.status, 201);

    redis.kill();
    let start = Instant::now();
    let r = app.get("/v1/ns/dur/kv/ack").await;
    let took = start.elapsed();
    let p = r.problem(503, "redis_unavailable");
    assert!(took < Duration::from_secs(5), "503 took {took:?}");
    assert!(r.header("retry-after").is_some(), "{p}");
    let w = app.put("/v1/ns/dur/kv/other", json!({"value": 1})).await;
    w.problem(503, "redis_unavailable");
    app.get("/readyz").await.problem(503, "redis_unavailable");
    assert_eq!(
        app.get("/healthz").await.status,
        200,
        "liveness does not depend on Redis"
    );

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = 0;
    while Instant::now() < deadline {
        last = app.get("/v1/ns/dur/kv/ack").await.status;
        if last == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last, 200, "the service recovers by itself");
    let e = app.get("/v1/ns/dur/kv/ack").await.json();
    assert_eq!(e["value"], "acknowledged");
    assert_eq!(e["version"], 1);
    // Writes work again and continue the same revision sequence.
    let r = app.put("/v1/ns/dur/kv/after", json!({"value": 2})).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["mod_revision"], 2);
    assert_eq!(app.get("/readyz").await.status, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_are_reloaded_when_redis_loses_them() {
    let redis = RedisServer::start(&[]);
    let app = TestApp::with_config(test_config(&redis.url())).await;
    assert_eq!(app.put("/v1/ns/f/kv/a", json!({"value": 1})).await.status, 201);
    let raw = app.redis().await;
    let _: () = raw.function_flush(false).await.unwrap();
    let r = app.put("/v1/ns/f/kv/a", json!({"value": 2})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["version"], 2);
    assert_eq!(app.get("/readyz").await.status, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_record_the_schema_and_refuse_a_newer_one() {
    let redis = RedisServer::start(&[]);
    let cfg = test_config(&redis.url());
    let prefix = cfg.key_prefix.clone();
    let app = TestApp::with_config(cfg.clone()).await;
    let raw = app.redis().await;
    let schema: String = raw.get(format!("{prefix}:schema")).await.unwrap();
    assert_eq!(schema, swarmstate::store::migrate::SCHEMA_VERSION.to_string());
    let status = app.get("/v1/status").await.json();
    assert_eq!(
        status["schema_version"],
        swarmstate::store::migrate::SCHEMA_VERSION
    );
    assert_eq!(
        status["functions_library_version"],
        swarmstate::store::migrate::LIBRARY_VERSION
    );
    app.stop().await;

    // A second start on the same schema is a no-op.
    let app = TestApp::with_config(cfg.clone()).await;
    app.stop().await;

    // A newer schema (written by a newer swarmstate) stops start-up with a clear message.
    let _: () = raw
        .set(format!("{prefix}:schema"), "999", None, None, false)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = swarmstate::app::Server::start(cfg.clone(), listener, false)
        .await
        .err()
        .expect("start-up must fail");
    assert!(err.contains("newer than this binary"), "{err}");

    // A newer functions library is not downgraded either.
    let _: () = raw
        .set(format!("{prefix}:schema"), "1", None, None, false)
        .await
        .unwrap();
    let current = format!(
        "local LIBRARY_VERSION = '{}'",
        swarmstate::store::migrate::LIBRARY_VERSION
    );
    assert!(swarmstate::store::migrate::LIBRARY.contains(&current));
    let newer = swarmstate::store::migrate::LIBRARY.replace(&current, "local LIBRARY_VERSION = '99'");
    let _: String = raw.function_load(true, newer).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = swarmstate::app::Server::start(cfg, listener, false)
        .await
        .err()
        .expect("must fail");
    assert!(err.contains("refusing to downgrade"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_waits_for_a_redis_that_comes_up_later() {
    let port = free_port();
    let cfg = test_config(&format!("redis://127.0.0.1:{port}"));
    let starting = tokio::spawn(TestApp::with_config(cfg));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!starting.is_finished(), "start-up waits while Redis is down");
    let _redis = tokio::task::spawn_blocking(move || RedisServer::start_on(port, &[]))
        .await
        .unwrap();
    let app = tokio::time::timeout(Duration::from_secs(20), starting)
        .await
        .expect("started once Redis came up")
        .unwrap();
    assert_eq!(app.put("/v1/ns/late/kv/a", json!({"value": 1})).await.status, 201);
    assert_eq!(app.get("/readyz").await.status, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_waits_while_redis_loads_its_dataset() {
    // A dataset large enough that loading the AOF takes a moment after a restart.
    let mut redis = RedisServer::start(&["--appendonly", "yes", "--enable-debug-command", "yes"]);
    let raw = crate::common::redis_client(&redis.url()).await;
    command(&raw, &["DEBUG", "POPULATE", "3000000", "pad", "64"]).await;
    let _: () = raw
        .custom(fred::cmd!("BGREWRITEAOF"), Vec::<String>::new())
        .await
        .unwrap();
    loop {
        let info: String = raw.info(Some(fred::types::InfoKind::Persistence)).await.unwrap();
        if info.contains("aof_rewrite_in_progress:0") && !info.contains("aof_rewrite_scheduled:1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(raw);
    let url = redis.url();
    // The service meets Redis while it is still loading (answering -LOADING).
    redis.restart_without_waiting();
    let mut cfg = test_config(&url);
    cfg.command_timeout_ms = 300;
    cfg.startup_timeout_ms = 60_000;
    let app = TestApp::with_config(cfg).await;
    assert_eq!(
        app.put("/v1/ns/loaded/kv/a", json!({"value": 1})).await.status,
        201
    );
    let keys: u64 = app.redis().await.dbsize().await.unwrap();
    assert!(keys > 3_000_000, "the dataset loaded ({keys} keys)");
    app.stop().await;
    drop(redis);
}

/// A TCP proxy in front of Redis that, once armed, forwards the next request containing
/// `trigger` and then cuts the connection before the reply comes back.
async fn cutting_proxy(
    redis_port: u16,
    trigger: &'static [u8],
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let armed = std::sync::Arc::new(AtomicBool::new(false));
    let armed2 = armed.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let armed = armed2.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let cut = std::sync::Arc::new(AtomicBool::new(false));
                let cut2 = cut.clone();
                let down = tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if cut2.load(Ordering::SeqCst) || cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = match cr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let hit = buf[..n].windows(trigger.len()).any(|w| w == trigger);
                    let cutting = hit && armed.swap(false, Ordering::SeqCst);
                    if cutting {
                        // From here on no reply reaches the client.
                        cut.store(true, Ordering::SeqCst);
                    }
                    if sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    if cutting {
                        // Redis runs the command; then the client's connection closes.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        down.abort();
                        return;
                    }
                }
                down.abort();
            });
        }
    });
    (port, armed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_connection_drops_is_never_applied_twice() {
    let redis = RedisServer::start(&[]);
    let (proxy_port, armed) = cutting_proxy(redis.port, b"kv_incr").await;
    let app = TestApp::with_config(test_config(&format!("redis://127.0.0.1:{proxy_port}"))).await;
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let r = app.post("/v1/ns/once/counters/c/incr", json!({"by": 1})).await;
    let p = r.problem(503, "redis_unavailable");
    assert!(p["detail"].as_str().unwrap().contains("may or may not"), "{p}");
    // The service reconnects by itself; the increment ran exactly once.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = None;
    while Instant::now() < deadline {
        let g = app.get("/v1/ns/once/kv/c").await;
        if g.status == 200 {
            got = Some(g.json());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = got.expect("service recovered");
    assert_eq!(e["value"], 1, "{e}");
    assert_eq!(e["version"], 1, "{e}");
    let r = app.post("/v1/ns/once/counters/c/incr", json!({"by": 1})).await;
    assert_eq!(r.json()["value"], 2);
    app.stop().await;
}

async fn keyed_incr(app: &TestApp, key: &str) -> crate::common::Resp {
    app.req(
        "POST",
        "/v1/ns/o/counters/n/incr",
        &[("content-type", "application/json"), ("idempotency-key", key)],
        Some(br#"{"by": 10}"#),
    )
    .await
}

/// Run a Redis command whose answer does not matter (admin steps of a test).
async fn command(client: &fred::clients::Client, words: &[&str]) {
    let (name, args) = words.split_first().unwrap();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let cmd = fred::types::CustomCommand::new(name.to_string(), fred::types::ClusterHash::FirstKey, false);
    let _: fred::types::Value = client.custom(cmd, args).await.unwrap();
}

/// A write whose answer never came says so (`outcome: unknown`) and does not advise a blind
/// retry: with Redis paused past the command timeout the increment answers 503, and once Redis
/// resumes it turns out to have been applied. A write Redis refused up front (a read-only
/// replica) is `not_applied`, and indeed changed nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_on_a_write_states_its_outcome() {
    let redis = RedisServer::start(&[]);
    let mut cfg = test_config(&redis.url());
    cfg.command_timeout_ms = 300;
    let app = TestApp::with_config(cfg).await;
    let r = app.post("/v1/ns/o/counters/n/incr", json!({"by": 1})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let admin = crate::common::redis_client(&redis.url()).await;

    command(&admin, &["CLIENT", "PAUSE", "1500", "WRITE"]).await;
    let r = app.post("/v1/ns/o/counters/n/incr", json!({"by": 1})).await;
    let p = r.problem(503, "redis_unavailable");
    assert_eq!(p["outcome"], "unknown", "{p}");
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains("may or may not have been applied"), "{p}");
    assert!(
        detail.contains("Idempotency-Key") && !detail.contains("retry shortly"),
        "{p}"
    );
    // With an Idempotency-Key the reservation comes first; paused too, it times out before the
    // increment was sent: `not_applied`.
    let first = keyed_incr(&app, "once").await;
    assert_eq!(first.problem(503, "redis_unavailable")["outcome"], "not_applied");
    // When Redis resumes, the write it held is applied: a blind retry would count twice.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = app.get("/v1/ns/o/kv/n").await;
        if v.status == 200 && v.json()["value"] == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the paused increment was never applied: {}",
            v.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The reservation the paused Redis took late holds the key (409), so nothing runs twice.
    keyed_incr(&app, "once")
        .await
        .problem(409, "idempotency_key_in_flight");

    // Redis denying the command to the service's ACL user (NOPERM): nothing ran, the answer
    // says so (503 not_applied, not 500), and it is not kept: the repeat, once the ACL allows
    // the command again, runs the write exactly once.
    command(&admin, &["ACL", "SETUSER", "default", "-fcall"]).await;
    let denied = keyed_incr(&app, "perm").await;
    assert_eq!(denied.problem(503, "redis_unavailable")["outcome"], "not_applied");
    command(&admin, &["ACL", "SETUSER", "default", "+fcall"]).await;
    let again = keyed_incr(&app, "perm").await;
    assert!(again.header("idempotent-replayed").is_none(), "{}", again.text());
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(app.get("/v1/ns/o/kv/n").await.json()["value"], 12);
    let replayed = keyed_incr(&app, "perm").await;
    assert_eq!(replayed.header("idempotent-replayed").as_deref(), Some("true"));
    assert_eq!(app.get("/v1/ns/o/kv/n").await.json()["value"], 12);

    // A replica refuses writes before running them: nothing applied, and the answer says so.
    let dead = free_port();
    command(&admin, &["REPLICAOF", "127.0.0.1", &dead.to_string()]).await;
    let r = app.post("/v1/ns/o/counters/n/incr", json!({"by": 1})).await;
    let p = r.problem(503, "redis_unavailable");
    assert_eq!(p["outcome"], "not_applied", "{p}");
    command(&admin, &["REPLICAOF", "NO", "ONE"]).await;
    assert_eq!(
        app.get("/v1/ns/o/kv/n").await.json()["value"],
        12,
        "the refused write changed nothing"
    );
    app.stop().await;
}

/// Authentication refusals cannot heal by waiting: start-up fails at once with Redis' answer
/// instead of retrying for the whole start-up timeout (issue 11, item 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_fails_at_once_when_redis_refuses_the_password() {
    let redis = RedisServer::start(&[]);
    let admin = crate::common::redis_client(&redis.url()).await;
    command(&admin, &["CONFIG", "SET", "requirepass", "s3cret"]).await;
    let port = redis.url().rsplit(':').next().unwrap().to_string();
    for (url, word) in [
        (format!("redis://127.0.0.1:{port}"), "NOAUTH"),
        (format!("redis://:wrong@127.0.0.1:{port}"), "WRONGPASS"),
    ] {
        let mut cfg = test_config(&url);
        cfg.startup_timeout_ms = 20_000;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let start = Instant::now();
        let err = match swarmstate::app::Server::start(cfg, listener, false).await {
            Ok(_) => panic!("{url}: started without the password"),
            Err(e) => e,
        };
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{url}: took {:?}",
            start.elapsed()
        );
        assert!(err.contains(word), "{url}: {err}");
        assert!(!err.contains("wrong@"), "the password is redacted: {err}");
    }
    // With the password it starts.
    let app = TestApp::with_config(test_config(&format!("redis://:s3cret@127.0.0.1:{port}"))).await;
    assert_eq!(app.get("/readyz").await.status, 200);
    app.stop().await;
}

/// Redis restarted without its data under a live watcher, a resume across that loss, and a
/// FLUSHALL: each watcher is told `compacted` with reason `reset` instead of silently seeing
/// revisions start again, and the namespace is listed again once written (issue 11, item 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_are_told_when_redis_loses_the_history() {
    use crate::common::ws::{connect, next, send};
    let mut redis = RedisServer::start(&["--save", "", "--appendonly", "no"]);
    let app = TestApp::with_config(test_config(&redis.url())).await;
    for i in 0..5 {
        app.put(&format!("/v1/ns/ep/kv/k{i}"), json!({"value": i})).await;
    }
    let mut ws = connect(&app).await;
    send(&mut ws, json!({"op": "watch", "id": "live", "namespace": "ep"})).await;
    let p = next(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (p["type"].as_str(), p["revision"].as_u64()),
        (Some("progress"), Some(5)),
        "{p}"
    );
    let old_epoch = p["epoch"]
        .as_str()
        .expect("progress carries the epoch")
        .to_string();

    // Redis comes back empty; a new history of the namespace starts at revision 1.
    redis.restart();
    let lost = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = app.put("/v1/ns/ep/kv/new", json!({"value": "after"})).await;
        if r.status == 201 {
            assert_eq!(r.json()["mod_revision"], 1, "{}", r.text());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no write after the restart: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let frame = loop {
        let m = next(&mut ws, Duration::from_secs(10))
            .await
            .expect("the watcher was told nothing");
        if m["type"] != "progress" {
            break m;
        }
    };
    assert_eq!(
        frame["type"], "compacted",
        "a new history's event reached the watcher: {frame}"
    );
    assert_eq!(
        (frame["reason"].as_str(), frame["compact_revision"].as_u64()),
        (Some("reset"), Some(0)),
        "{frame}"
    );
    eprintln!("reset detected {:?} after Redis came back", lost.elapsed());

    // A resume from the old history's revision is told the same.
    let mut ws = connect(&app).await;
    send(
        &mut ws,
        json!({"op": "watch", "id": "resume", "namespace": "ep", "from_revision": 5}),
    )
    .await;
    let m = next(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (m["type"].as_str(), m["reason"].as_str()),
        (Some("compacted"), Some("reset")),
        "{m}"
    );
    // Once the new history has passed the old revision, only the epoch tells them apart.
    for i in 0..6 {
        app.put(&format!("/v1/ns/ep/kv/n{i}"), json!({"value": i})).await;
    }
    let mut ws = connect(&app).await;
    send(
        &mut ws,
        json!({"op": "watch", "id": "e", "namespace": "ep", "from_revision": 5, "epoch": old_epoch}),
    )
    .await;
    let m = next(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (m["type"].as_str(), m["reason"].as_str()),
        (Some("compacted"), Some("reset")),
        "{m}"
    );
    // With the epoch of the history it knows, a resume goes on as usual.
    let mut ws = connect(&app).await;
    send(&mut ws, json!({"op": "watch", "id": "n", "namespace": "ep"})).await;
    let p = next(&mut ws, Duration::from_secs(5)).await.unwrap();
    let new_epoch = p["epoch"].as_str().unwrap().to_string();
    assert_ne!(new_epoch, old_epoch);
    let mut ws = connect(&app).await;
    send(
        &mut ws,
        json!({"op": "watch", "id": "n2", "namespace": "ep", "from_revision": 6, "epoch": new_epoch}),
    )
    .await;
    let m = next(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (m["type"].as_str(), m["event"]["revision"].as_u64()),
        (Some("event"), Some(7)),
        "{m}"
    );
    // The namespace is listed again.
    let list = app.get("/v1/namespaces").await.json();
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["namespace"] == "ep"),
        "{list}"
    );

    // FLUSHALL under a live watcher of the new history.
    let mut ws = connect(&app).await;
    send(&mut ws, json!({"op": "watch", "id": "f", "namespace": "ep"})).await;
    assert_eq!(
        next(&mut ws, Duration::from_secs(5)).await.unwrap()["type"],
        "progress"
    );
    let admin = crate::common::redis_client(&redis.url()).await;
    let _: () = admin.flushall(false).await.unwrap();
    let frame = loop {
        let m = next(&mut ws, Duration::from_secs(10))
            .await
            .expect("FLUSHALL went unnoticed");
        if m["type"] != "progress" {
            break m;
        }
    };
    assert_eq!(
        (frame["type"].as_str(), frame["reason"].as_str()),
        (Some("compacted"), Some("reset")),
        "{frame}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.put("/v1/ns/ep/kv/again", json!({"value": 1})).await.status != 201 {
        assert!(Instant::now() < deadline, "no write after FLUSHALL");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list = app.get("/v1/namespaces").await.json();
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["namespace"] == "ep"),
        "re-registered after FLUSHALL: {list}"
    );
    // A transaction that begins a new history registers it as well.
    let _: () = admin.flushall(false).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = app
            .post(
                "/v1/ns/ep/txn",
                json!({"success": [{"op": "put", "key": "a", "value": 1}, {"op": "put", "key": "b", "value": 2}]}),
            )
            .await;
        if r.status == 200 {
            assert_eq!(r.json()["revision"], 2, "{}", r.text());
            break;
        }
        assert!(Instant::now() < deadline, "no txn after FLUSHALL: {}", r.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list = app.get("/v1/namespaces").await.json();
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["namespace"] == "ep"),
        "re-registered by a txn: {list}"
    );
    app.stop().await;
}
