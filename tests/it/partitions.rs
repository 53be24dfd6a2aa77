//! Memory partitions: atomic quotas under concurrency, TTL freeing quota, the pool.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{shared_redis_url, test_config, TestApp};

async fn create(app: &TestApp, body: Value) -> crate::common::Resp {
    app.post("/v1/partitions", body).await
}

/// What the partition's keys really take: key + canonical value (+ metadata) bytes, listed.
async fn recount(app: &TestApp, ns: &str) -> (u64, u64) {
    let mut cursor: Option<String> = None;
    let (mut bytes, mut keys) = (0u64, 0u64);
    loop {
        let mut path = format!("/v1/ns/{ns}/kv?values=true&limit=1000");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = app.get(&path).await.json();
        for e in page["items"].as_array().unwrap() {
            keys += 1;
            bytes += e["key"].as_str().unwrap().len() as u64 + e["value"].to_string().len() as u64;
            if !e["metadata"].is_null() {
                bytes += e["metadata"].to_string().len() as u64;
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return (bytes, keys),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_racing_writers_never_pass_the_quota_by_one_byte() {
    use rand::{Rng, SeedableRng};
    let app = Arc::new(TestApp::start().await);
    let r = create(
        &app,
        json!({"name": "fill", "owner_agent": "a1", "quota_bytes": 12000, "tier": "shared"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let a = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(w);
            let (mut ok, mut refused) = (0, 0);
            for _ in 0..60 {
                let key = format!("k{}", rng.random_range(0..40));
                if rng.random_bool(0.15) {
                    a.delete(&format!("/v1/ns/fill/kv/{key}")).await;
                    continue;
                }
                let value = "v".repeat(rng.random_range(10..900));
                let r = a
                    .put(&format!("/v1/ns/fill/kv/{key}"), json!({"value": value}))
                    .await;
                match r.status {
                    200 | 201 => ok += 1,
                    507 => {
                        r.problem(507, "quota_exceeded");
                        refused += 1
                    }
                    s => panic!("unexpected {s}: {}", r.text()),
                }
                let p = a.get("/v1/partitions/fill").await.json();
                assert!(p["used_bytes"].as_u64().unwrap() <= 12000, "{p}");
            }
            (ok, refused)
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let (o, r) = t.await.unwrap();
        ok += o;
        refused += r;
    }
    assert!(refused > 0, "the quota was never reached ({ok} writes)");
    let p = app.get("/v1/partitions/fill").await.json();
    let (bytes, keys) = recount(&app, "fill").await;
    assert_eq!(p["used_bytes"], bytes, "{p}");
    assert_eq!(p["key_count"], keys, "{p}");
    assert!(bytes <= 12000);
    eprintln!("{ok} writes accepted, {refused} refused, {bytes} of 12000 bytes used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_writes_change_nothing_and_expiry_frees_quota() {
    let app = TestApp::start().await;
    create(
        &app,
        json!({"name": "tight", "owner_agent": "a", "quota_bytes": 100, "max_keys": 3, "tier": "shared"}),
    )
    .await;
    app.put("/v1/ns/tight/kv/a", json!({"value": "x".repeat(40)}))
        .await;
    let before = app.get("/v1/ns/tight/kv/a").await.json();
    let ns_before = app.get("/v1/namespaces").await.json();
    // Growing a past the quota: refused, nothing changes (not even the revision).
    app.put("/v1/ns/tight/kv/a", json!({"value": "x".repeat(120)}))
        .await
        .problem(507, "quota_exceeded");
    let txn = json!({"success": [{"op": "put", "key": "b", "value": "y".repeat(30)}, {"op": "put", "key": "c", "value": "z".repeat(30)}]});
    app.post("/v1/ns/tight/txn", txn)
        .await
        .problem(507, "quota_exceeded");
    assert_eq!(app.get("/v1/ns/tight/kv/a").await.json(), before);
    assert_eq!(app.get("/v1/namespaces").await.json(), ns_before);
    app.get("/v1/ns/tight/kv/b").await.problem(404, "not_found");
    // A txn that frees room as it writes fits.
    let txn = json!({"success": [{"op": "delete", "key": "a"}, {"op": "put", "key": "b", "value": "y".repeat(60)}]});
    assert_eq!(app.post("/v1/ns/tight/txn", txn).await.status, 200);
    // max_keys.
    app.put("/v1/ns/tight/kv/c", json!({"value": 1})).await;
    app.put("/v1/ns/tight/kv/d", json!({"value": 1})).await;
    app.put("/v1/ns/tight/kv/e", json!({"value": 1}))
        .await
        .problem(507, "quota_exceeded");
    // Expiry frees quota: a TTL'd key fills it, and once expired the space is usable again.
    app.delete("/v1/ns/tight/kv/b").await;
    app.delete("/v1/ns/tight/kv/c").await;
    let r = app
        .put(
            "/v1/ns/tight/kv/t",
            json!({"value": "t".repeat(80), "ttl_ms": 300}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    app.put("/v1/ns/tight/kv/u", json!({"value": "u".repeat(40)}))
        .await
        .problem(507, "quota_exceeded");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = app
            .put("/v1/ns/tight/kv/u", json!({"value": "u".repeat(40)}))
            .await;
        if r.status == 201 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expiry never freed the quota: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = app.get("/v1/partitions/tight").await.json();
    assert_eq!(p["used_bytes"], recount(&app, "tight").await.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_bounds_allocations_and_tiers_give_default_ttls() {
    let mut cfg = test_config(&shared_redis_url());
    cfg.pool_capacity_bytes = 10_000;
    let app = TestApp::with_config(cfg).await;
    let r = create(
        &app,
        json!({"name": "p1", "owner_agent": "a", "quota_bytes": 6000, "tier": "short_term"}),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["default_ttl_ms"], 1_800_000);
    create(
        &app,
        json!({"name": "p2", "owner_agent": "a", "quota_bytes": 5000, "tier": "working"}),
    )
    .await
    .problem(507, "pool_exhausted");
    create(
        &app,
        json!({"name": "p1", "owner_agent": "b", "quota_bytes": 10, "tier": "working"}),
    )
    .await
    .problem(409, "already_exists");
    app.get("/v1/partitions/p2").await.problem(404, "not_found");
    let pool = app.get("/v1/pool").await.json();
    assert_eq!(
        (pool["capacity_bytes"].as_u64(), pool["allocated_bytes"].as_u64()),
        (Some(10_000), Some(6000))
    );
    // Growing p1 past the pool is refused; shrinking gives room.
    app.req(
        "PATCH",
        "/v1/partitions/p1",
        &[("content-type", "application/json")],
        Some(br#"{"quota_bytes": 11000}"#),
    )
    .await
    .problem(507, "pool_exhausted");
    let r = app
        .req(
            "PATCH",
            "/v1/partitions/p1",
            &[("content-type", "application/json")],
            Some(br#"{"quota_bytes": 4000}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = create(&app, json!({"name": "p2", "owner_agent": "a", "quota_bytes": 5000, "tier": "long_term", "default_ttl_ms": 0})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    // A write without ttl_ms into a short_term partition gets the tier's TTL.
    let e = app.put("/v1/ns/p1/kv/note", json!({"value": 1})).await.json();
    assert!(e["expires_at"].is_string(), "{e}");
    let e = app.put("/v1/ns/p2/kv/note", json!({"value": 1})).await.json();
    assert!(e["expires_at"].is_null(), "{e}");
    // Deleting a partition frees its data and its allocation.
    assert_eq!(app.delete("/v1/partitions/p1").await.status, 204);
    app.get("/v1/ns/p1/kv/note").await.problem(404, "not_found");
    let pool = app.get("/v1/pool").await.json();
    assert_eq!(pool["allocated_bytes"], 5000, "{pool}");
    assert_eq!(pool["partitions"], 1);
    let list = app.get("/v1/partitions").await.json();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recount_corrects_drift_and_reports_it() {
    use fred::prelude::*;
    let app = TestApp::start().await;
    create(
        &app,
        json!({"name": "rc", "owner_agent": "a", "quota_bytes": 1000, "tier": "shared"}),
    )
    .await;
    app.put("/v1/ns/rc/kv/a", json!({"value": "x".repeat(50)})).await;
    let exact = app.get("/v1/partitions/rc").await.json()["used_bytes"]
        .as_u64()
        .unwrap();
    // Something outside the functions corrupts the running total.
    let r = app.redis().await;
    let _: () = r.hset(app.keys().ns("rc").meta, ("bytes", 7)).await.unwrap();
    let store = app.server.as_ref().unwrap().state.ops.store();
    assert_eq!(store.part_recount("rc").await.unwrap(), 7 - exact as i64);
    assert_eq!(app.get("/v1/partitions/rc").await.json()["used_bytes"], exact);
    assert_eq!(store.part_recount("rc").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_reports_quota_refusals_per_item_and_keeps_the_earlier_items() {
    let app = TestApp::start().await;
    create(
        &app,
        json!({"name": "bq", "owner_agent": "a", "quota_bytes": 100, "tier": "short_term"}),
    )
    .await;
    let items: Vec<Value> = (0..5)
        .map(|i| json!({"key": format!("k{i}"), "value": "x".repeat(28)}))
        .collect();
    let r = app.post("/v1/ns/bq/batch/put", json!({"items": items})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let st: Vec<u64> = r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_u64().unwrap())
        .collect();
    assert_eq!(st, [201, 201, 201, 507, 507]);
    assert_eq!(r.json()["items"][3]["code"], "quota_exceeded");
    for k in ["k0", "k1", "k2"] {
        assert_eq!(app.get(&format!("/v1/ns/bq/kv/{k}")).await.status, 200);
    }
    app.get("/v1/ns/bq/kv/k3").await.problem(404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_that_creates_a_key_gets_the_tier_default_ttl() {
    let app = TestApp::start().await;
    create(
        &app,
        json!({"name": "mt", "owner_agent": "a", "quota_bytes": 1000, "tier": "short_term"}),
    )
    .await;
    let e = app
        .put("/v1/ns/mt/kv/m?on_conflict=merge", json!({"value": {"a": 1}}))
        .await
        .json();
    assert!(e["expires_at"].is_string(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_partition_logs_each_key_and_keeps_its_fencing_tokens() {
    let app = TestApp::start().await;
    create(
        &app,
        json!({"name": "bq", "owner_agent": "a", "quota_bytes": 1000, "tier": "shared"}),
    )
    .await;
    for k in ["a", "b", "c"] {
        app.put(&format!("/v1/ns/bq/kv/{k}"), json!({"value": 1})).await;
    }
    let g = app
        .post("/v1/ns/bq/locks/l", json!({"owner": "a", "ttl_ms": 60000}))
        .await
        .json();
    assert_eq!(g["fencing_token"], 1);
    app.req(
        "DELETE",
        "/v1/ns/bq/locks/l",
        &[("x-lock-token", g["token"].as_str().unwrap())],
        None,
    )
    .await;
    let rev_before = app.get("/v1/namespaces").await.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["namespace"] == "bq")
        .unwrap()["revision"]
        .as_u64()
        .unwrap();
    assert_eq!(app.delete("/v1/partitions/bq").await.status, 204);
    // Watchers see the dropped keys as deletes.
    let r = app.redis().await;
    let log: Vec<(String, std::collections::HashMap<String, String>)> =
        fred::prelude::StreamsInterface::xrange(
            &r,
            app.keys().ns("bq").log,
            format!("0-{}", rev_before + 1),
            "+",
            None,
        )
        .await
        .unwrap();
    assert_eq!(log.len(), 3, "one delete per dropped key: {log:?}");
    assert!(log.iter().all(|(_, f)| f["k"] == "delete"));
    for k in ["a", "b", "c"] {
        app.get(&format!("/v1/ns/bq/kv/{k}"))
            .await
            .problem(404, "not_found");
    }
    // A new partition of the same name: its lock's tokens keep increasing.
    create(
        &app,
        json!({"name": "bq", "owner_agent": "a", "quota_bytes": 100, "tier": "shared"}),
    )
    .await;
    assert_eq!(
        app.post("/v1/ns/bq/locks/l", json!({"owner": "b", "ttl_ms": 1000}))
            .await
            .json()["fencing_token"],
        2
    );
    app.put_h(
        "/v1/ns/bq/kv/z",
        &[("x-fencing-token", "never:0")],
        json!({"value": 1}),
    )
    .await
    .problem(400, "invalid_argument");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_deletes_and_quota_changes_leave_the_pool_ledger_exact() {
    let app = Arc::new(TestApp::start().await);
    for name in ["pa", "pb", "pc"] {
        create(
            &app,
            json!({"name": name, "owner_agent": "a", "quota_bytes": 1000, "tier": "shared"}),
        )
        .await;
    }
    let mut tasks = Vec::new();
    for q in [2000u64, 3000, 4000, 5000, 6000, 7000] {
        let a = app.clone();
        tasks.push(tokio::spawn(async move {
            a.req(
                "PATCH",
                "/v1/partitions/pa",
                &[("content-type", "application/json")],
                Some(json!({"quota_bytes": q}).to_string().as_bytes()),
            )
            .await
            .status
        }));
    }
    for _ in 0..4 {
        let a = app.clone();
        tasks.push(tokio::spawn(
            async move { a.delete("/v1/partitions/pb").await.status },
        ));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Racing PATCHes may leave the ledger a step behind the record; the upkeep's reconcile
    // (run here directly) settles it, and deletes never free twice.
    let store = app.server.as_ref().unwrap().state.ops.store();
    store.pool_reconcile(10 * 1024 * 1024 * 1024).await.unwrap();
    let pa = app.get("/v1/partitions/pa").await.json()["quota_bytes"]
        .as_u64()
        .unwrap();
    let pool = app.get("/v1/pool").await.json();
    assert_eq!(pool["allocated_bytes"].as_u64().unwrap(), pa + 1000, "{pool}");
    assert_eq!(pool["partitions"], 2, "{pool}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_counts_vanished_entries_as_gone_in_the_quota() {
    use fred::prelude::*;
    // Relay off: entries removed behind the service's back stay indexed until a write finds
    // them. A transaction must count them as gone, like a single write does.
    let mut cfg = test_config(&shared_redis_url());
    cfg.keyspace_relay = false;
    let app = TestApp::with_config(cfg).await;
    let r = app.redis().await;
    let created = create(
        &app,
        json!({"name": "tq", "owner_agent": "a", "quota_bytes": 100000, "max_keys": 2, "tier": "shared"}),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    app.put("/v1/ns/tq/kv/a", json!({"value": 1})).await;
    app.put("/v1/ns/tq/kv/o", json!({"value": 1})).await;
    let _: i64 = r.del(app.keys().ns("tq").entry("a")).await.unwrap();
    // Two keys indexed, one of them gone: room for one more.
    let t = app
        .post(
            "/v1/ns/tq/txn",
            json!({"compare": [{"key": "a", "exists": false}], "success": [{"op": "put", "key": "b", "value": 2}]}),
        )
        .await;
    assert_eq!(t.status, 200, "{}", t.text());
    assert_eq!(t.json()["succeeded"], true);
    assert_eq!(app.get("/v1/partitions/tq").await.json()["key_count"], 2);

    // Bytes: 96 used of which 43 are a vanished entry; the quota is lowered to 80. Writing 33
    // bytes at that key ends at 86 > 80: refused by a PUT and by a transaction alike.
    create(
        &app,
        json!({"name": "tb", "owner_agent": "a", "quota_bytes": 1000, "tier": "shared"}),
    )
    .await;
    app.put("/v1/ns/tb/kv/a", json!({"value": "x".repeat(40)})).await;
    app.put("/v1/ns/tb/kv/o", json!({"value": "x".repeat(50)})).await;
    assert_eq!(app.get("/v1/partitions/tb").await.json()["used_bytes"], 96);
    let _: i64 = r.del(app.keys().ns("tb").entry("a")).await.unwrap();
    let p = app
        .req(
            "PATCH",
            "/v1/partitions/tb",
            &[("content-type", "application/json")],
            Some(br#"{"quota_bytes": 80}"#),
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.text());
    let small = json!({"value": "x".repeat(30)});
    app.put("/v1/ns/tb/kv/a", small.clone())
        .await
        .problem(507, "quota_exceeded");
    app.post(
        "/v1/ns/tb/txn",
        json!({"success": [{"op": "put", "key": "a", "value": "x".repeat(30)}]}),
    )
    .await
    .problem(507, "quota_exceeded");
    let part = app.get("/v1/partitions/tb").await.json();
    assert!(part["used_bytes"].as_u64().unwrap() <= 96, "{part}");
    app.get("/v1/ns/tb/kv/a").await.problem(404, "not_found");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_2_moves_the_schema_1_pool_and_fixes_its_sum() {
    // A store written by a schema-1 binary: the pool hash with its sum in a field, which a
    // partition named "allocated" clobbered, and the partitions set (two slots apart).
    if crate::common::topology::topology() == crate::common::topology::Topology::Cluster {
        return; // schema-1 pool keys could never be written on a cluster (CROSSSLOT)
    }
    use fred::prelude::*;
    let cfg = test_config(&shared_redis_url());
    let p = cfg.key_prefix.clone();
    let app = TestApp::with_config(cfg.clone()).await;
    let r = create(
        &app,
        json!({"name": "alpha", "owner_agent": "a", "quota_bytes": 3000, "tier": "shared"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    app.stop().await;
    // Put the pool back the way schema 1 kept it.
    let redis = crate::common::redis_client(&shared_redis_url()).await;
    let _: i64 = redis
        .del(vec![
            format!("{p}:{{g:pool}}:ledger"),
            format!("{p}:{{g:pool}}:total"),
        ])
        .await
        .unwrap();
    let _: () = redis
        .set(format!("{p}:schema"), "1", None, None, false)
        .await
        .unwrap();
    let _: () = redis
        .hset(format!("{p}:pool"), [("alpha", 3000i64), ("allocated", 500)])
        .await
        .unwrap();
    let _: () = redis
        .sadd(format!("{p}:partitions"), ["alpha", "allocated"])
        .await
        .unwrap();
    let app = TestApp::with_config(cfg).await;
    let status = app.get("/v1/status").await.json();
    assert_eq!(status["schema_version"], 2, "{status}");
    let pool = app.get("/v1/pool").await.json();
    // The sum is recomputed from the entries; the clobbered `allocated` entry is dropped.
    assert_eq!(pool["allocated_bytes"], 3000, "{pool}");
    assert_eq!(pool["partitions"], 1, "{pool}");
    let old: i64 = redis
        .exists(vec![format!("{p}:pool"), format!("{p}:partitions")])
        .await
        .unwrap();
    assert_eq!(old, 0, "the schema-1 keys are gone");
    // And a partition named "allocated" is now just a partition.
    let r = create(
        &app,
        json!({"name": "allocated", "owner_agent": "a", "quota_bytes": 700, "tier": "shared"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let pool = app.get("/v1/pool").await.json();
    assert_eq!(pool["allocated_bytes"], 3700, "{pool}");
    assert_eq!(pool["partitions"], 2, "{pool}");
}

/// The upkeep (every 10 s) exports each partition's quota and usage; once the partition is
/// deleted its series drop to 0, so the near-quota alert (which divides by quota > 0) stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_partitions_gauges_drop_to_zero() {
    let app = TestApp::start().await;
    let name = format!("gauge-{}", std::process::id());
    let r = app
        .post(
            "/v1/partitions",
            json!({"name": name, "owner_agent": "a", "quota_bytes": 1000, "tier": "shared"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    app.put(&format!("/v1/ns/{name}/kv/k"), json!({"value": "x".repeat(300)}))
        .await;
    let series = |m: &str, metric: &str| -> Option<f64> {
        let prefix = format!("{metric}{{partition=\"{name}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse().ok())
    };
    let wait_for = |metric: &'static str, want: fn(f64) -> bool| {
        let app = &app;
        async move {
            for _ in 0..120 {
                let m = app.get("/metrics").await.text();
                if series(&m, metric).is_some_and(want) {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            panic!("{metric} of the partition never got there");
        }
    };
    wait_for("partition_quota_bytes", |v| v == 1000.0).await;
    wait_for("partition_used_bytes", |v| v > 300.0).await;
    let r = app.delete(&format!("/v1/partitions/{name}")).await;
    assert_eq!(r.status, 204, "{}", r.text());
    wait_for("partition_quota_bytes", |v| v == 0.0).await;
    wait_for("partition_used_bytes", |v| v == 0.0).await;
    app.stop().await;
}
