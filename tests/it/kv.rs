//! Key/value behaviour as a client sees it, against real Redis.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::*;
use serde_json::{json, Value};

use crate::common::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_versions_etag_and_provenance() {
    let app = TestApp::start().await;
    let r = app
        .put_h(
            "/v1/ns/app/kv/users/1",
            &[("x-agent-id", "planner-7"), ("x-change-reason", "first draft")],
            json!({"value": {"name": "ann", "tags": []}, "metadata": {"source": "test"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("etag").as_deref(), Some("\"1\""));
    assert!(r.header("x-request-id").is_some());
    let e = r.json();
    assert_eq!(e["namespace"], "app");
    assert_eq!(e["key"], "users/1");
    assert_eq!(e["value"], json!({"name": "ann", "tags": []}));
    assert_eq!(e["version"], 1);
    assert_eq!(e["create_revision"], 1);
    assert_eq!(e["mod_revision"], 1);
    assert_eq!(e["metadata"], json!({"source": "test"}));
    assert_eq!(e["agent_id"], "planner-7");
    assert_eq!(e["change_reason"], "first draft");
    assert!(e["expires_at"].is_null());
    assert!(e["created_at"].as_str().unwrap().ends_with('Z'));

    let r = app.put("/v1/ns/app/kv/users/1", json!({"value": 2})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["version"], 2);
    assert_eq!(r.json()["mod_revision"], 2);
    assert_eq!(r.json()["create_revision"], 1);
    assert!(r.json()["metadata"].is_null(), "PUT replaces metadata");

    // The same entry read back, and through a percent-encoded slash.
    let g = app.get("/v1/ns/app/kv/users%2F1").await;
    assert_eq!(g.status, 200);
    assert_eq!(g.json()["value"], 2);
    assert_eq!(g.header("etag").as_deref(), Some("\"2\""));
    // Conditional GET.
    let nm = app
        .req(
            "GET",
            "/v1/ns/app/kv/users/1",
            &[("if-none-match", "\"2\"")],
            None,
        )
        .await;
    assert_eq!(nm.status, 304);
    // Historical version, with its provenance.
    let v1 = app.get("/v1/ns/app/kv/users/1?version=1").await;
    assert_eq!(v1.status, 200);
    assert_eq!(v1.json()["value"], json!({"name": "ann", "tags": []}));
    assert_eq!(v1.json()["agent_id"], "planner-7");
    assert_eq!(v1.json()["metadata"], json!({"source": "test"}));
    app.get("/v1/ns/app/kv/users/1?version=3")
        .await
        .problem(404, "not_found");
    app.get("/v1/ns/app/kv/nobody").await.problem(404, "not_found");

    // Values keep full precision and the empty array stays an array.
    let r = app
        .put(
            "/v1/ns/app/kv/n",
            json!({"value": {"big": 9007199254740993u64, "f": 0.1, "e": [], "o": {}}}),
        )
        .await;
    assert_eq!(r.status, 201);
    let g = app.get("/v1/ns/app/kv/n").await.json();
    assert_eq!(
        g["value"],
        json!({"big": 9007199254740993u64, "f": 0.1, "e": [], "o": {}})
    );

    // The change log holds one entry per revision with id 0-<revision>.
    let redis = app.redis().await;
    let log: Vec<(String, Vec<(String, String)>)> = redis
        .xrange(app.keys().ns("app").log, "-", "+", None)
        .await
        .unwrap();
    let ids: Vec<&str> = log.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["0-1", "0-2", "0-3"]);
    let first: std::collections::HashMap<_, _> = log[0].1.iter().cloned().collect();
    assert_eq!(first["k"], "put");
    assert_eq!(first["key"], "users/1");
    assert_eq!(first["a"], "planner-7");
    assert_eq!(first["r"], "first draft");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preconditions_and_on_conflict() {
    let app = TestApp::start().await;
    let p = "/v1/ns/cfg/kv/k";
    // Create-only.
    assert_eq!(
        app.put_h(p, &[("if-none-match", "*")], json!({"value": {"a": 1}}))
            .await
            .status,
        201
    );
    let r = app.put_h(p, &[("if-none-match", "*")], json!({"value": 0})).await;
    assert_eq!(r.problem(412, "version_mismatch")["current_version"], 1);
    // CAS.
    let r = app.put_h(p, &[("if-match", "\"7\"")], json!({"value": 0})).await;
    assert_eq!(r.problem(412, "version_mismatch")["current_version"], 1);
    assert_eq!(
        app.put_h(
            p,
            &[("if-match", "\"1\"")],
            json!({"value": {"a": 1, "b": {"c": 1}}})
        )
        .await
        .status,
        200
    );
    // If-Match: * needs existence.
    app.put_h("/v1/ns/cfg/kv/none", &[("if-match", "*")], json!({"value": 1}))
        .await
        .problem(412, "version_mismatch");
    // on_conflict=merge: precondition fails → body merged into the current value.
    let r = app
        .put_h(
            &format!("{p}?on_conflict=merge"),
            &[("if-match", "\"1\"")],
            json!({"value": {"b": {"d": 2}, "a": null}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["value"], json!({"b": {"c": 1, "d": 2}}));
    assert_eq!(r.json()["version"], 3);
    // on_conflict=overwrite: precondition ignored.
    let r = app
        .put_h(
            &format!("{p}?on_conflict=overwrite"),
            &[("if-match", "\"1\"")],
            json!({"value": 5}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["value"], 5);
    // No precondition + reject = create-only.
    app.put(&format!("{p}?on_conflict=reject"), json!({"value": 6}))
        .await
        .problem(412, "version_mismatch");
    // No precondition + merge on a missing key creates it.
    let r = app
        .put("/v1/ns/cfg/kv/m?on_conflict=merge", json!({"value": {"x": 1}}))
        .await;
    assert_eq!(r.status, 201);
    // PATCH (RFC 7396), honours If-Match, keeps TTL and metadata.
    app.put(
        "/v1/ns/cfg/kv/pt",
        json!({"value": {"a": 1, "b": 2}, "metadata": {"m": 1}, "ttl_ms": 60000}),
    )
    .await;
    let patch = br#"{"b": null, "c": [1]}"#;
    let r = app
        .req(
            "PATCH",
            "/v1/ns/cfg/kv/pt",
            &[("content-type", "application/merge-patch+json")],
            Some(patch),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e = r.json();
    assert_eq!(e["value"], json!({"a": 1, "c": [1]}));
    assert_eq!(e["metadata"], json!({"m": 1}));
    assert!(e["expires_at"].is_string(), "PATCH keeps the TTL");
    app.req(
        "PATCH",
        "/v1/ns/cfg/kv/pt",
        &[
            ("content-type", "application/merge-patch+json"),
            ("if-match", "\"1\""),
        ],
        Some(patch),
    )
    .await
    .problem(412, "version_mismatch");
    app.req(
        "PATCH",
        "/v1/ns/cfg/kv/absent",
        &[("content-type", "application/json")],
        Some(patch),
    )
    .await
    .problem(404, "not_found");
    app.req(
        "PATCH",
        "/v1/ns/cfg/kv/pt",
        &[("content-type", "text/plain")],
        Some(patch),
    )
    .await
    .problem(415, "unsupported_media_type");
    // DELETE honours If-Match ("0" = must not exist); 404 when absent; version restarts after delete.
    app.req("DELETE", p, &[("if-match", "\"1\"")], None)
        .await
        .problem(412, "version_mismatch");
    app.req("DELETE", p, &[("if-match", "\"0\"")], None)
        .await
        .problem(412, "version_mismatch");
    assert_eq!(
        app.get(p).await.json()["version"],
        4,
        "a refused DELETE leaves the key"
    );
    assert_eq!(
        app.req("DELETE", p, &[("if-match", "\"4\"")], None).await.status,
        204
    );
    app.delete(p).await.problem(404, "not_found");
    let r = app.put(p, json!({"value": 1})).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["version"], 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cas_increments_lose_no_update() {
    let app = Arc::new(TestApp::start().await);
    let p = "/v1/ns/race/kv/counter";
    assert_eq!(app.put(p, json!({"value": 0})).await.status, 201);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            let mut conflicts = 0;
            while done < 25 {
                let g = app.get(p).await;
                assert_eq!(g.status, 200);
                let etag = g.header("etag").unwrap();
                let n = g.json()["value"].as_i64().unwrap();
                let r = app
                    .put_h(p, &[("if-match", &etag)], json!({"value": n + 1}))
                    .await;
                match r.status {
                    200 => done += 1,
                    412 => conflicts += 1,
                    s => panic!("unexpected {s}: {}", r.text()),
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let g = app.get(p).await.json();
    assert_eq!(
        g["value"], 200,
        "every acknowledged CAS increment is in the value"
    );
    assert_eq!(g["version"], 201);
    println!("200 CAS increments with {conflicts} conflicts retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_create_only_has_one_winner() {
    let app = Arc::new(TestApp::start().await);
    let mut tasks = Vec::new();
    for i in 0..32 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            app.put_h(
                "/v1/ns/race/kv/leader",
                &[("if-none-match", "*")],
                json!({"value": i}),
            )
            .await
            .status
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 412).count(), 31, "{statuses:?}");
    assert_eq!(app.get("/v1/ns/race/kv/leader").await.json()["version"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_merges_apply_every_patch() {
    let app = Arc::new(TestApp::start().await);
    app.put("/v1/ns/mg/kv/doc", json!({"value": {}})).await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let body = format!("{{\"f{i}\": {i}}}");
            app.req(
                "PATCH",
                "/v1/ns/mg/kv/doc",
                &[("content-type", "application/merge-patch+json")],
                Some(body.as_bytes()),
            )
            .await
            .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let v = app.get("/v1/ns/mg/kv/doc").await.json();
    for i in 0..10 {
        assert_eq!(v["value"][format!("f{i}")], i, "{v}");
    }
    assert_eq!(v["version"], 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_is_all_or_nothing() {
    let app = TestApp::start().await;
    app.put("/v1/ns/tx/kv/a", json!({"value": 1})).await;
    // Compares fail → only the failure branch runs.
    let r = app
        .post(
            "/v1/ns/tx/txn",
            json!({
                "compare": [{"key": "a", "version": 1}, {"key": "b", "exists": true}],
                "success": [{"op": "put", "key": "a", "value": 100}, {"op": "put", "key": "c", "value": 1}],
                "failure": [{"op": "get", "key": "a"}, {"op": "put", "key": "why", "value": "b missing"}]
            }),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let t = r.json();
    assert_eq!(t["succeeded"], false);
    assert_eq!(t["results"][0]["op"], "get");
    assert_eq!(t["results"][0]["entry"]["value"], 1);
    assert_eq!(t["results"][1]["op"], "put");
    assert_eq!(
        app.get("/v1/ns/tx/kv/a").await.json()["value"],
        1,
        "success branch did not run"
    );
    app.get("/v1/ns/tx/kv/c").await.problem(404, "not_found");
    assert_eq!(app.get("/v1/ns/tx/kv/why").await.json()["value"], "b missing");
    // Compares hold → every success op applies, with consecutive revisions.
    let r = app
        .post(
            "/v1/ns/tx/txn",
            json!({
                "compare": [{"key": "a", "value": 1}, {"key": "b", "version": 0}, {"key": "why", "exists": true}],
                "success": [
                    {"op": "put", "key": "a", "value": {"n": 2}},
                    {"op": "put", "key": "b", "value": [1, 2], "ttl_ms": 60000},
                    {"op": "delete", "key": "why"},
                    {"op": "get", "key": "a"}
                ]
            }),
        )
        .await;
    let t = r.json();
    assert_eq!(t["succeeded"], true, "{t}");
    assert_eq!(t["results"][0]["version"], 2);
    assert_eq!(t["results"][1]["created"], true);
    assert_eq!(t["results"][2]["deleted"], true);
    assert_eq!(t["results"][3]["entry"]["value"], json!({"n": 2}));
    assert_eq!(t["revision"], 5);
    assert_eq!(app.get("/v1/ns/tx/kv/b").await.json()["value"], json!([1, 2]));
    app.get("/v1/ns/tx/kv/why").await.problem(404, "not_found");
    // An invalid op anywhere → 4xx and nothing written.
    let before = app.get("/v1/namespaces").await.json();
    let r = app
        .post(
            "/v1/ns/tx/txn",
            json!({"success": [{"op": "put", "key": "ok", "value": 1}, {"op": "put", "key": "", "value": 2}]}),
        )
        .await;
    r.problem(400, "invalid_name");
    let r = app
        .post(
            "/v1/ns/tx/txn",
            json!({"success": [{"op": "put", "key": "ok", "value": 1}, {"op": "put", "key": "x"}]}),
        )
        .await;
    r.problem(422, "invalid_body");
    let too_many: Vec<Value> = (0..129)
        .map(|i| json!({"op": "get", "key": format!("k{i}")}))
        .collect();
    app.post("/v1/ns/tx/txn", json!({"success": too_many}))
        .await
        .problem(400, "invalid_argument");
    app.get("/v1/ns/tx/kv/ok").await.problem(404, "not_found");
    assert_eq!(app.get("/v1/namespaces").await.json(), before);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expiry_removes_key_everywhere() {
    let app = TestApp::start().await;
    let r = app
        .put("/v1/ns/tmp/kv/session", json!({"value": "s", "ttl_ms": 300}))
        .await;
    assert_eq!(r.status, 201);
    assert!(r.json()["expires_at"].is_string());
    app.put("/v1/ns/tmp/kv/stays", json!({"value": 1})).await;
    assert_eq!(app.get("/v1/ns/tmp/kv/session").await.status, 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    app.get("/v1/ns/tmp/kv/session").await.problem(404, "not_found");
    let keys: Vec<String> = app.get("/v1/ns/tmp/kv").await.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, ["stays"]);
    // The reconciler records the expiry: counts and bytes drop, an `expire` event is logged.
    let mut ns = Value::Null;
    for _ in 0..40 {
        ns = app.get("/v1/namespaces").await.json()["items"][0].clone();
        if ns["keys"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ns["keys"], 1, "{ns}");
    assert_eq!(ns["bytes"], "stays".len() + 1, "{ns}");
    assert_eq!(ns["revision"], 3, "{ns}");
    let redis = app.redis().await;
    let log: Vec<(String, Vec<(String, String)>)> = redis
        .xrange(app.keys().ns("tmp").log, "0-3", "0-3", None)
        .await
        .unwrap();
    let ev: std::collections::HashMap<_, _> = log[0].1.iter().cloned().collect();
    assert_eq!(ev["k"], "expire");
    assert_eq!(ev["key"], "session");
    // A key created with a TTL and then patched: its history expires with it.
    app.put("/v1/ns/tmp/kv/p", json!({"value": {"a": 1}, "ttl_ms": 60000}))
        .await;
    app.req(
        "PATCH",
        "/v1/ns/tmp/kv/p",
        &[("content-type", "application/json")],
        Some(br#"{"b": 2}"#),
    )
    .await;
    let hist_ttl: i64 = redis.pttl(app.keys().ns("tmp").hist("p")).await.unwrap();
    assert!(
        hist_ttl > 0 && hist_ttl <= 60000,
        "history hash expires with the entry: {hist_ttl}"
    );
    // Writing again creates a fresh key at version 1; PUT without ttl_ms clears a TTL.
    let r = app
        .put(
            "/v1/ns/tmp/kv/session",
            json!({"value": "again", "ttl_ms": 60000}),
        )
        .await;
    assert_eq!(r.json()["version"], 1);
    let r = app
        .put("/v1/ns/tmp/kv/session", json!({"value": "forever"}))
        .await;
    assert!(r.json()["expires_at"].is_null());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let ttl: i64 = redis.pttl(app.keys().ns("tmp").entry("session")).await.unwrap();
    assert_eq!(ttl, -1, "the entry no longer expires");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_newest_first_and_rollback_makes_a_new_version() {
    let app = TestApp::start().await;
    let p = "/v1/ns/h/kv/doc";
    for i in 1..=12 {
        let reason = format!("edit {i}");
        app.put_h(p, &[("x-change-reason", &reason)], json!({"value": {"n": i}}))
            .await;
    }
    let h = app.get(&format!("{p}/history")).await.json();
    let versions: Vec<i64> = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_i64().unwrap())
        .collect();
    assert_eq!(
        versions,
        (3..=12).rev().collect::<Vec<_>>(),
        "10 versions retained, newest first"
    );
    assert_eq!(h["items"][0]["change_reason"], "edit 12");
    assert_eq!(h["items"][9]["value"], json!({"n": 3}));
    let h = app.get(&format!("{p}/history?limit=3")).await.json();
    assert_eq!(h["items"].as_array().unwrap().len(), 3);
    // Rollback to v5 writes its value as v13.
    let r = app.post(&format!("{p}/rollback"), json!({"version": 5})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["version"], 13);
    assert_eq!(r.json()["value"], json!({"n": 5}));
    assert_eq!(app.get(p).await.json()["value"], json!({"n": 5}));
    assert_eq!(
        app.get(&format!("{p}?version=12")).await.json()["value"],
        json!({"n": 12})
    );
    app.post(&format!("{p}/rollback"), json!({"version": 1}))
        .await
        .problem(404, "not_found");
    app.post("/v1/ns/h/kv/nothing/rollback", json!({"version": 1}))
        .await
        .problem(404, "not_found");
    app.get("/v1/ns/h/kv/nothing/history")
        .await
        .problem(404, "not_found");
    // A key whose last segment is "history" is reached with an encoded slash.
    app.put("/v1/ns/h/kv/a%2Fhistory", json!({"value": "literal"}))
        .await;
    assert_eq!(
        app.get("/v1/ns/h/kv/a%2Fhistory").await.json()["key"],
        "a/history"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_listing_treats_glob_characters_literally() {
    let app = TestApp::start().await;
    let keys = [
        "a*", "a*b", "a?c", "a[1]", "a[2]", "ab", "a{x}", "b*", "a\\", "añ",
    ];
    for k in keys {
        let enc: String = url_encode(k);
        let r = app
            .put(&format!("/v1/ns/glob/kv/{enc}"), json!({"value": k}))
            .await;
        assert_eq!(r.status, 201, "{k}: {}", r.text());
    }
    let list = |prefix: &'static str| {
        let app = &app;
        async move {
            let r = app
                .get(&format!("/v1/ns/glob/kv?prefix={}", url_encode(prefix)))
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["key"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list("a*").await, ["a*", "a*b"]);
    assert_eq!(list("a?").await, ["a?c"]);
    assert_eq!(list("a[").await, ["a[1]", "a[2]"]);
    assert_eq!(list("a[1").await, ["a[1]"]);
    assert_eq!(list("a{").await, ["a{x}"]);
    assert_eq!(list("a\\").await, ["a\\"]);
    assert_eq!(list("añ").await, ["añ"]);
    assert_eq!(list("*").await, Vec::<String>::new());
    assert_eq!(list("").await.len(), keys.len());
    // Values only on request.
    let r = app.get("/v1/ns/glob/kv?prefix=ab").await.json();
    assert!(r["items"][0].get("value").is_none());
    let r = app.get("/v1/ns/glob/kv?prefix=ab&values=true").await.json();
    assert_eq!(r["items"][0]["value"], "ab");
    app.stop().await;
}

fn url_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pagination_neither_repeats_nor_skips_under_concurrent_inserts() {
    let app = Arc::new(TestApp::start().await);
    let originals: Vec<String> = (0..300).map(|i| format!("item/{:04}", i * 2)).collect();
    let items: Vec<Value> = originals.iter().map(|k| json!({"key": k, "value": 1})).collect();
    assert_eq!(
        app.post("/v1/ns/pg/batch/put", json!({"items": items}))
            .await
            .status,
        200
    );
    // A writer inserts keys in between the originals while we page.
    let writer = {
        let app = app.clone();
        tokio::spawn(async move {
            for i in 0..300 {
                let k = format!("item/{:04}", i * 2 + 1);
                app.put(&format!("/v1/ns/pg/kv/{}", url_encode(&k)), json!({"value": 2}))
                    .await;
            }
        })
    };
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &cursor {
            Some(c) => format!("/v1/ns/pg/kv?prefix=item/&limit=17&cursor={c}"),
            None => "/v1/ns/pg/kv?prefix=item/&limit=17".to_string(),
        };
        let r = app.get(&q).await.json();
        pages += 1;
        for e in r["items"].as_array().unwrap() {
            seen.push(e["key"].as_str().unwrap().to_string());
        }
        match r["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    writer.await.unwrap();
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a key was returned twice");
    for k in &originals {
        assert!(unique.contains(k), "{k} was skipped");
    }
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, seen, "pages come in key order");
    assert!(pages > 17);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_counters_and_namespaces() {
    let app = TestApp::start().await;
    let r = app
        .post(
            "/v1/ns/bt/batch/put",
            json!({"items": [
                {"key": "a", "value": 1},
                {"key": "b", "value": {"x": true}, "metadata": {"m": 1}, "ttl_ms": 60000},
                {"key": "a", "value": 3, "if_version": 7}
            ]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let items = r.json()["items"].clone();
    assert_eq!(items[0]["status"], 201);
    assert_eq!(items[1]["status"], 201);
    assert_eq!(items[2]["status"], 412);
    assert_eq!(items[2]["current_version"], 1);
    let g = app
        .post("/v1/ns/bt/batch/get", json!({"keys": ["b", "zz", "a"]}))
        .await
        .json();
    assert_eq!(g["items"][0]["value"], json!({"x": true}));
    assert!(g["items"][1].is_null());
    assert_eq!(g["items"][2]["value"], 1);
    let d = app
        .post("/v1/ns/bt/batch/delete", json!({"keys": ["a", "zz"]}))
        .await
        .json();
    assert_eq!(
        d["items"],
        json!([{"key": "a", "deleted": true}, {"key": "zz", "deleted": false}])
    );
    // A batch with one bad item writes nothing.
    app.post(
        "/v1/ns/bt/batch/put",
        json!({"items": [{"key": "new", "value": 1}, {"key": "x".repeat(513), "value": 1}]}),
    )
    .await
    .problem(400, "invalid_name");
    app.get("/v1/ns/bt/kv/new").await.problem(404, "not_found");
    // Counters.
    let c = app.post("/v1/ns/bt/counters/hits/incr", json!({})).await;
    assert_eq!(c.status, 200, "{}", c.text());
    assert_eq!(c.json()["value"], 1);
    let c = app
        .post("/v1/ns/bt/counters/hits/incr", json!({"by": -5}))
        .await
        .json();
    assert_eq!(c["value"], -4);
    assert_eq!(c["version"], 2);
    assert_eq!(app.get("/v1/ns/bt/kv/hits").await.json()["value"], -4);
    app.post("/v1/ns/bt/counters/b/incr", json!({}))
        .await
        .problem(409, "not_a_counter");
    app.post("/v1/ns/bt/counters/big/incr", json!({"by": 9007199254740991i64}))
        .await;
    app.post("/v1/ns/bt/counters/big/incr", json!({"by": 1}))
        .await
        .problem(422, "counter_overflow");
    // A stored integer beyond 2^53 cannot be incremented exactly: refused, value untouched.
    app.put("/v1/ns/bt/kv/huge", json!({"value": 9007199254740993u64}))
        .await;
    app.post("/v1/ns/bt/counters/huge/incr", json!({"by": -10}))
        .await
        .problem(422, "counter_overflow");
    assert_eq!(
        app.get("/v1/ns/bt/kv/huge").await.json()["value"],
        9007199254740993u64
    );
    let w = app
        .post("/v1/ns/bt/counters/win/incr", json!({"by": 2, "ttl_ms": 60000}))
        .await
        .json();
    assert_eq!(w["value"], 2);
    assert!(app.get("/v1/ns/bt/kv/win").await.json()["expires_at"].is_string());
    // Namespaces.
    app.put("/v1/ns/bt2/kv/one", json!({"value": "1"})).await;
    let n = app.get("/v1/namespaces").await.json();
    let names: Vec<&str> = n["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bt", "bt2"]);
    let bt2 = &n["items"][1];
    assert_eq!(bt2["keys"], 1);
    assert_eq!(bt2["revision"], 1);
    assert_eq!(bt2["bytes"], "one".len() + "\"1\"".len());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_is_cluster_safe() {
    let app = TestApp::start().await;
    app.put(
        "/v1/ns/cs/kv/we%7Bird%7D*key",
        json!({"value": 1, "ttl_ms": 60000}),
    )
    .await;
    app.put(
        "/v1/ns/cs/kv/we%7Bird%7D*key",
        json!({"value": 2, "ttl_ms": 60000}),
    )
    .await;
    app.post("/v1/ns/cs/counters/c/incr", json!({})).await;
    let keys = crate::common::topology::all_keys(&app.redis_url, &format!("{}:*", app.prefix));
    assert!(keys.len() >= 8, "{keys:?}");
    for k in keys {
        let ns_key = k.starts_with(&format!("{}:{{cs}}:", app.prefix));
        let global = [":namespaces", ":schema"]
            .iter()
            .any(|g| k == format!("{}{g}", app.prefix));
        assert!(ns_key || global, "key {k} lacks the namespace hash tag");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_carrying_values_stay_within_a_byte_budget() {
    let app = TestApp::start().await;
    // 20 values of ~600 KB: 12 MB in all, more than one response may carry (8 MiB).
    let big = "x".repeat(600 * 1024);
    for i in 0..20 {
        let r = app
            .put(&format!("/v1/ns/big/kv/v{i:02}"), json!({"value": big}))
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let mut cursor: Option<String> = None;
    let mut seen = Vec::new();
    loop {
        let q = match &cursor {
            Some(c) => format!("/v1/ns/big/kv?values=true&limit=100&cursor={c}"),
            None => "/v1/ns/big/kv?values=true&limit=100".to_string(),
        };
        let r = app.get(&q).await;
        assert!(r.body.len() < 9 * 1024 * 1024, "page of {} bytes", r.body.len());
        let page = r.json();
        let items = page["items"].as_array().unwrap();
        assert!(
            !items.is_empty() && items.len() < 20,
            "a page holds what fits: {}",
            items.len()
        );
        seen.extend(items.iter().map(|e| e["key"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let want: Vec<String> = (0..20).map(|i| format!("v{i:02}")).collect();
    assert_eq!(seen, want, "every key once, in order");
    // Without values the whole listing fits in one page.
    let r = app.get("/v1/ns/big/kv?limit=100").await.json();
    assert_eq!(r["items"].as_array().unwrap().len(), 20);
    // A batch read asking for more than the budget is refused, naming the size.
    let r = app.post("/v1/ns/big/batch/get", json!({"keys": want})).await;
    r.problem(400, "invalid_argument");
    let r = app
        .post("/v1/ns/big/batch/get", json!({"keys": &want[..5]}))
        .await;
    assert_eq!(r.status, 200);
    app.stop().await;
}

/// The namespace's revision as `GET /v1/namespaces` shows it.
async fn revision(app: &TestApp, ns: &str) -> u64 {
    let list = app.get("/v1/namespaces").await.json();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["namespace"] == ns)
        .unwrap_or_else(|| panic!("{ns} not listed: {list}"))["revision"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_writes_change_nothing_not_even_the_revision() {
    // Relay off, so the entries removed or replaced below behind the service's back stay
    // unrecorded until a write of the service finds them.
    let mut cfg = crate::common::test_config(&crate::common::shared_redis_url());
    cfg.keyspace_relay = false;
    let app = TestApp::with_config(cfg).await;
    let r = app.redis().await;
    let nk = app.keys().ns("rf");
    app.put("/v1/ns/rf/kv/gone", json!({"value": 1})).await;
    app.put("/v1/ns/rf/kv/foreign", json!({"value": 1})).await;
    let _: i64 = r.del(nk.entry("gone")).await.unwrap();
    let _: i64 = r.del(nk.entry("foreign")).await.unwrap();
    let _: i64 = r.hset(nk.entry("foreign"), ("f", "v")).await.unwrap();
    let rev = revision(&app, "rf").await;
    assert_eq!(rev, 2);

    // A failed precondition on a key whose entry vanished, and on one holding another type.
    let p = app
        .put_h("/v1/ns/rf/kv/gone", &[("if-match", "\"1\"")], json!({"value": 2}))
        .await
        .problem(412, "version_mismatch");
    assert_eq!(p["current_version"], 0);
    app.put_h(
        "/v1/ns/rf/kv/foreign",
        &[("if-match", "\"1\"")],
        json!({"value": 2}),
    )
    .await
    .problem(412, "version_mismatch");
    assert_eq!(
        revision(&app, "rf").await,
        rev,
        "a refused write moved the revision"
    );
    let kind: String = r.r#type(nk.entry("foreign")).await.unwrap();
    assert_eq!(kind, "hash", "a refused write removed what it found");
    let indexed: Option<f64> = r.zscore(nk.idx.clone(), "gone").await.unwrap();
    assert!(indexed.is_some(), "a refused write recorded the vanished entry");

    // A write that goes on records what it found first, then writes.
    assert_eq!(
        app.put("/v1/ns/rf/kv/gone", json!({"value": 3})).await.status,
        201
    );
    let log: Vec<(String, std::collections::HashMap<String, String>)> =
        r.xrange(nk.log.clone(), "0-3", "+", None).await.unwrap();
    let kinds: Vec<String> = log
        .iter()
        .map(|(_, f)| format!("{} {}", f["k"], f["key"]))
        .collect();
    assert_eq!(kinds, ["evict gone", "put gone"]);

    // A transaction that goes ahead records what it found, even at a key it only compares.
    let t = app
        .post(
            "/v1/ns/rf/txn",
            json!({"compare": [{"key": "foreign", "exists": false}]}),
        )
        .await;
    assert_eq!(t.json()["succeeded"], true, "{}", t.text());
    let kind: String = r.r#type(nk.entry("foreign")).await.unwrap();
    assert_eq!(kind, "none");
    let last: Vec<(String, std::collections::HashMap<String, String>)> =
        r.xrevrange(nk.log.clone(), "+", "-", Some(1)).await.unwrap();
    assert_eq!(
        (last[0].1["k"].as_str(), last[0].1["key"].as_str()),
        ("external", "foreign")
    );

    // A DELETE that finds another client's string in the entry's place removes it and logs
    // that as `external` (and answers 404: the entry was already not ours).
    app.put("/v1/ns/rf/kv/str", json!({"value": 1})).await;
    let _: () = r.set(nk.entry("str"), "raw", None, None, false).await.unwrap();
    app.delete("/v1/ns/rf/kv/str").await.problem(404, "not_found");
    let kind: String = r.r#type(nk.entry("str")).await.unwrap();
    assert_eq!(kind, "none");
    let last: Vec<(String, std::collections::HashMap<String, String>)> =
        r.xrevrange(nk.log.clone(), "+", "-", Some(1)).await.unwrap();
    assert_eq!(
        (last[0].1["k"].as_str(), last[0].1["key"].as_str()),
        ("external", "str")
    );

    // Partition quota refusals, single write and transaction, with a vanished entry present.
    let c = app
        .post(
            "/v1/partitions",
            json!({"name": "rq", "owner_agent": "a", "quota_bytes": 64, "tier": "shared"}),
        )
        .await;
    assert_eq!(c.status, 201, "{}", c.text());
    app.put("/v1/ns/rq/kv/a", json!({"value": "x"})).await;
    let qk = app.keys().ns("rq");
    let _: i64 = r.del(qk.entry("a")).await.unwrap();
    let rev = revision(&app, "rq").await;
    let big = "x".repeat(100);
    app.put("/v1/ns/rq/kv/b", json!({"value": big}))
        .await
        .problem(507, "quota_exceeded");
    app.post(
        "/v1/ns/rq/txn",
        json!({"success": [{"op": "put", "key": "a", "value": big}, {"op": "put", "key": "c", "value": 1}]}),
    )
    .await
    .problem(507, "quota_exceeded");
    assert_eq!(
        revision(&app, "rq").await,
        rev,
        "a refused write moved the revision"
    );
    let indexed: Option<f64> = r.zscore(qk.idx.clone(), "a").await.unwrap();
    assert!(indexed.is_some(), "a refused write recorded the vanished entry");
    app.get("/v1/ns/rq/kv/b").await.problem(404, "not_found");
    app.get("/v1/ns/rq/kv/c").await.problem(404, "not_found");
    app.stop().await;
}
