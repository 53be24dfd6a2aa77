//! Redis failures and start-up migrations, with real redis-server processes.

use std::time::{Duration, Instant};

use fred::prelude::*;
use serde_json::json;

use crate::common::{test_config, RedisServer, TestApp};

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
    assert_eq!(status["schema_version"], 1);
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
    let newer = swarmstate::store::migrate::LIBRARY
        .replace("local LIBRARY_VERSION = '1'", "local LIBRARY_VERSION = '99'");
    let _: String = raw.function_load(true, newer).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = swarmstate::app::Server::start(cfg, listener, false)
        .await
        .err()
        .expect("must fail");
    assert!(err.contains("refusing to downgrade"), "{err}");
}
