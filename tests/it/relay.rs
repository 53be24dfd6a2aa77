//! The keyspace-notification relay: expirations, evictions and writes by other Redis clients
//! reach watchers as `expire`, `evict` and `external` events, recorded once.

use std::time::{Duration, Instant};

use fred::prelude::*;
use serde_json::{json, Value};

use crate::common::ws::{connect, next, send, Ws};
use crate::common::{test_config, RedisServer, TestApp};

/// Run the real `redis-cli` against the test's Redis, as another client would.
fn redis_cli(url: &str, args: &[&str]) -> String {
    crate::common::topology::url_cli(url, args)
}

/// Wait until /v1/status reports the relay subscribed with its flags set.
async fn relay_status(app: &TestApp, want_active: bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = app.get("/v1/status").await.json();
        if s["keyspace_relay"]["active"] == want_active || Instant::now() > deadline {
            return s["keyspace_relay"].clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn watch(app: &TestApp, ns: &str) -> Ws {
    let mut ws = connect(app).await;
    send(&mut ws, json!({"op": "watch", "id": "w", "namespace": ns})).await;
    let ack = next(&mut ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(ack["type"], "progress", "{ack}");
    ws
}

/// The next event of watch `w` (progress messages skipped), within 10 s.
async fn event(ws: &mut Ws) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = next(ws, left).await.expect("an event within 10 s");
        if m["type"] == "event" {
            return m["event"].clone();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_by_another_redis_client_arrive_as_external_events() {
    let app = TestApp::start().await;
    let status = relay_status(&app, true).await;
    assert_eq!(status["active"], true, "{status}");
    let flags = status["notify_keyspace_events"][0].as_str().unwrap().to_string();
    for f in ['K', 'g', '$', 'x', 'e'] {
        assert!(flags.contains(f) || (flags.contains('A') && f != 'K'), "{flags}");
    }
    let url = app.redis_url.clone();
    let ekey = |k: &str| app.keys().ns("ext").entry(k);
    let mut ws = watch(&app, "ext").await;

    let r = app.put("/v1/ns/ext/kv/greeting", json!({"value": "hi"})).await;
    assert_eq!(r.json()["mod_revision"], 1);
    let e = event(&mut ws).await;
    assert_eq!(
        (e["kind"].as_str(), e["revision"].as_u64()),
        (Some("put"), Some(1))
    );

    // Overwritten by redis-cli: a new life of the key, logged as `external`.
    redis_cli(&url, &["SET", &ekey("greeting"), "hello"]);
    let e = event(&mut ws).await;
    assert_eq!(e["kind"], "external", "{e}");
    assert_eq!(e["key"], "greeting");
    assert_eq!(e["value"], "hello");
    assert_eq!(e["revision"], 2);
    assert_eq!(e["version"], 2);
    let got = app.get("/v1/ns/ext/kv/greeting").await.json();
    assert_eq!(got["value"], "hello", "{got}");
    assert_eq!(got["version"], 2);
    assert_eq!(got["create_revision"], 2);
    // An If-Match taken before the foreign write no longer matches; the new version does.
    let stale = app
        .put_h(
            "/v1/ns/ext/kv/greeting",
            &[("if-match", "\"1\"")],
            json!({"value": "x"}),
        )
        .await;
    stale.problem(412, "version_mismatch");
    let ok = app
        .put_h(
            "/v1/ns/ext/kv/greeting",
            &[("if-match", "\"2\"")],
            json!({"value": "mine"}),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["version"], 3);
    // The service's own write is a put, not an external event.
    let e = event(&mut ws).await;
    assert_eq!(
        (e["kind"].as_str(), e["revision"].as_u64()),
        (Some("put"), Some(3))
    );

    // A new key written as JSON text: adopted as JSON, listed, accounted.
    redis_cli(&url, &["SET", &ekey("fresh"), r#"{"b": [1, 2], "a": null}"#]);
    let e = event(&mut ws).await;
    assert_eq!(e["kind"], "external", "{e}");
    assert_eq!(e["key"], "fresh");
    assert_eq!(e["value"], json!({"a": null, "b": [1, 2]}));
    assert_eq!(e["revision"], 4);
    let keys: Vec<Value> = app.get("/v1/ns/ext/kv").await.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].clone())
        .collect();
    assert_eq!(keys, vec![json!("fresh"), json!("greeting")]);

    // Deleted by redis-cli: an external delete, gone from reads and listing.
    redis_cli(&url, &["DEL", &ekey("greeting")]);
    let e = event(&mut ws).await;
    assert_eq!(e["kind"], "external", "{e}");
    assert_eq!(e["key"], "greeting");
    assert_eq!(e["revision"], 5);
    assert!(e.get("value").is_none(), "{e}");
    app.get("/v1/ns/ext/kv/greeting").await.problem(404, "not_found");

    // A foreign write with a Redis TTL keeps it: external, then expire.
    redis_cli(&url, &["SET", &ekey("brief"), "x", "PX", "300"]);
    let e = event(&mut ws).await;
    assert_eq!(
        (e["kind"].as_str(), e["key"].as_str()),
        (Some("external"), Some("brief"))
    );
    assert!(app.get("/v1/ns/ext/kv/brief").await.json()["expires_at"].is_string());
    let e = event(&mut ws).await;
    assert_eq!(
        (e["kind"].as_str(), e["key"].as_str()),
        (Some("expire"), Some("brief")),
        "{e}"
    );
    assert_eq!(e["revision"], 7);

    // Accounting matches what is left: one key, "fresh" + its canonical value.
    let ns = app.get("/v1/namespaces").await.json()["items"][0].clone();
    assert_eq!(ns["namespace"], "ext");
    assert_eq!(ns["keys"], 1, "{ns}");
    assert_eq!(ns["revision"], 7);
    assert_eq!(ns["bytes"], "fresh".len() + r#"{"a":null,"b":[1,2]}"#.len());

    // Many writes through the API: not one external event among them.
    for i in 0..100 {
        app.put(&format!("/v1/ns/ext/kv/k{}", i % 7), json!({"value": i}))
            .await;
    }
    app.delete("/v1/ns/ext/kv/k1").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for rev in 8..=108 {
        let e = event(&mut ws).await;
        assert_eq!(e["revision"], rev);
        assert_ne!(e["kind"], "external", "{e}");
    }
    assert!(next(&mut ws, Duration::from_millis(500))
        .await
        .map(|m| m["type"] != "event")
        .unwrap_or(true));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_record_each_expiry_and_external_write_once() {
    let first = TestApp::start().await;
    let mut cfg = test_config(&first.redis_url);
    cfg.key_prefix = first.prefix.clone();
    let second = TestApp::with_config(cfg).await;
    relay_status(&first, true).await;
    relay_status(&second, true).await;
    let mut ws = watch(&second, "dup").await;
    for i in 0..20 {
        first
            .put(
                &format!("/v1/ns/dup/kv/t{i}"),
                json!({"value": i, "ttl_ms": 100 + 10 * i}),
            )
            .await;
    }
    let ekey = first.keys().ns("dup").entry("outside");
    redis_cli(&first.redis_url, &["SET", &ekey, "1"]);
    // 20 puts, 20 expiries, 1 external write: exactly 41 events, each key's expiry once.
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for rev in 1..=41 {
        let e = event(&mut ws).await;
        assert_eq!(e["revision"], rev, "{e}");
        *kinds.entry(e["kind"].as_str().unwrap().to_string()).or_default() += 1;
    }
    assert_eq!(kinds.get("put"), Some(&20), "{kinds:?}");
    assert_eq!(kinds.get("expire"), Some(&20), "{kinds:?}");
    assert_eq!(kinds.get("external"), Some(&1), "{kinds:?}");
    // Nothing more: both replicas' relays and reconcilers have seen everything by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    while let Some(m) = next(&mut ws, Duration::from_millis(200)).await {
        assert_ne!(m["type"], "event", "duplicate: {m}");
    }
    let r = first.redis().await;
    let len: u64 = r.xlen(first.keys().ns("dup").log).await.unwrap();
    assert_eq!(len, 41);
    second.stop().await;
    first.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evictions_arrive_as_evict_events() {
    // Room for the namespace's own bookkeeping plus a few values; keys with a TTL are
    // evicted first (volatile-lru), so the service's index and log stay.
    let redis = RedisServer::start(&["--maxmemory", "4mb", "--maxmemory-policy", "volatile-lru"]);
    let app = TestApp::with_config(test_config(&redis.url())).await;
    relay_status(&app, true).await;
    let mut ws = watch(&app, "ev").await;
    let big = "x".repeat(100_000);
    let mut written = Vec::new();
    let mut evicted = Vec::new();
    for i in 0..200 {
        let r = app
            .put(
                &format!("/v1/ns/ev/kv/v{i}"),
                json!({"value": big, "ttl_ms": 600_000}),
            )
            .await;
        if r.status == 200 || r.status == 201 {
            written.push(format!("v{i}"));
        }
        while let Some(m) = next(&mut ws, Duration::from_millis(20)).await {
            if m["type"] == "event" && m["event"]["kind"] == "evict" {
                evicted.push(m["event"]["key"].as_str().unwrap().to_string());
            }
        }
        if evicted.len() >= 3 {
            break;
        }
    }
    assert!(
        evicted.len() >= 3,
        "no evict events after {} writes",
        written.len()
    );
    for k in &evicted {
        assert!(written.contains(k), "{k}");
        app.get(&format!("/v1/ns/ev/kv/{k}"))
            .await
            .problem(404, "not_found");
    }
    let listed = app.get("/v1/ns/ev/kv?limit=1000").await.json();
    let keys: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    for k in &evicted {
        assert!(!keys.contains(&k.as_str()), "{k} still listed");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_config_access_status_says_so_and_expiries_still_arrive() {
    let redis = RedisServer::start(&["--rename-command", "CONFIG", ""]);
    let app = TestApp::with_config(test_config(&redis.url())).await;
    let status = relay_status(&app, false).await;
    // Give the relay its first check.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = if status["problem"].is_null() {
        app.get("/v1/status").await.json()["keyspace_relay"].clone()
    } else {
        status
    };
    assert_eq!(status["active"], false, "{status}");
    assert!(
        status["problem"]
            .as_str()
            .unwrap_or("")
            .contains("notify-keyspace-events"),
        "{status}"
    );
    let mut ws = watch(&app, "nc").await;
    app.put("/v1/ns/nc/kv/t", json!({"value": 1, "ttl_ms": 100}))
        .await;
    assert_eq!(event(&mut ws).await["kind"], "put");
    let e = event(&mut ws).await;
    assert_eq!(
        (e["kind"].as_str(), e["key"].as_str()),
        (Some("expire"), Some("t"))
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_values_found_by_api_writes_are_external_never_a_500() {
    // Relay off: the API's own writes must still classify what they find.
    let mut cfg = test_config(&crate::common::shared_redis_url());
    cfg.keyspace_relay = false;
    let app = TestApp::with_config(cfg).await;
    let url = app.redis_url.clone();
    let ekey = |k: &str| app.keys().ns("fx").entry(k);
    app.put("/v1/ns/fx/kv/a", json!({"value": 1})).await;
    app.put("/v1/ns/fx/kv/h", json!({"value": 1})).await;
    // A plain string over a record, then a write through the API.
    redis_cli(&url, &["SET", &ekey("a"), "raw"]);
    assert_eq!(app.put("/v1/ns/fx/kv/a", json!({"value": 2})).await.status, 201);
    // Another Redis type at an entry key: reads as absent, writes replace it.
    redis_cli(&url, &["DEL", &ekey("h")]);
    redis_cli(&url, &["HSET", &ekey("h"), "f", "v"]);
    app.get("/v1/ns/fx/kv/h").await.problem(404, "not_found");
    let r = app.put("/v1/ns/fx/kv/h", json!({"value": 3})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(app.get("/v1/ns/fx/kv/h").await.json()["value"], 3);
    redis_cli(&url, &["DEL", &ekey("h")]);
    redis_cli(&url, &["RPUSH", &ekey("h"), "x"]);
    assert_eq!(app.delete("/v1/ns/fx/kv/h").await.status, 404);
    let r = app
        .post("/v1/ns/fx/txn", json!({"compare": [{"key": "h", "exists": false}], "success": [{"op": "put", "key": "h", "value": 4}]}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The log: put a, put h, external a (found by the PUT), put a, external h (the hash found
    // by the PUT), put h, external h (the list found by the DELETE), put h (txn).
    let r = app.redis().await;
    let log: Vec<(String, std::collections::HashMap<String, String>)> =
        r.xrange(app.keys().ns("fx").log, "-", "+", None).await.unwrap();
    let kinds: Vec<String> = log
        .iter()
        .map(|(_, f)| format!("{} {}", f["k"], f["key"]))
        .collect();
    assert_eq!(
        kinds,
        [
            "put a",
            "put h",
            "external a",
            "put a",
            "external h",
            "put h",
            "external h",
            "put h"
        ],
        "{kinds:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_near_the_body_limit_reaches_watchers_and_resumes() {
    let app = TestApp::start().await;
    let mut ws = watch(&app, "big").await;
    // A 1 MiB body with a string value just under it: the event frame is over 1 MiB.
    let value = "x".repeat(1024 * 1024 - 64);
    let r = app.put("/v1/ns/big/kv/k", json!({"value": value})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    app.put("/v1/ns/big/kv/after", json!({"value": 1})).await;
    let e = event(&mut ws).await;
    assert_eq!(
        (e["key"].as_str(), e["value"].as_str().map(str::len)),
        (Some("k"), Some(value.len()))
    );
    assert_eq!(event(&mut ws).await["key"], "after");
    // And from the start again on a new socket.
    let mut ws = connect(&app).await;
    send(
        &mut ws,
        json!({"op": "watch", "id": "w", "namespace": "big", "from_revision": 0}),
    )
    .await;
    assert_eq!(event(&mut ws).await["revision"], 1);
    assert_eq!(event(&mut ws).await["revision"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_removed_by_another_client_is_no_longer_reconciled() {
    let app = TestApp::start().await;
    // Another client (a connection of its own, fast even on a loaded machine) removes the
    // TTL well before it runs out.
    let other = app.redis().await;
    app.put("/v1/ns/pz/kv/k", json!({"value": 1, "ttl_ms": 1500}))
        .await;
    let ekey = app.keys().ns("pz").entry("k");
    let persisted: bool = fred::prelude::KeysInterface::persist(&other, &ekey)
        .await
        .unwrap();
    assert!(persisted, "the TTL was already gone");
    tokio::time::sleep(Duration::from_millis(2700)).await;
    // Still there, and no longer in the expiry index the reconciler scans every second.
    assert_eq!(app.get("/v1/ns/pz/kv/k").await.json()["value"], 1);
    let ttl_index = app.keys().ns("pz").ttl;
    assert_eq!(redis_cli(&app.redis_url, &["ZCARD", &ttl_index]), "0");
}
