//! Backups (issue 16, first part): a capture under concurrent writers is exactly the
//! namespace at the revision its manifest records — checked against a replay of the change
//! log up to that revision — and the file refuses tampering and the wrong key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fred::prelude::*;
use serde_json::{json, Value};
use swarmstate::domain::backup::{verify, BackupError, BackupKey, Reader};
use swarmstate::ops::backup::Selection;
use swarmstate::store::backup::RestoreMode;

use crate::common::{shared_redis_url, test_config, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_capture_under_writers_is_the_namespace_exactly_at_its_revision() {
    let mut cfg = test_config(&shared_redis_url());
    cfg.changelog_retention = 1_000_000;
    let app = Arc::new(TestApp::with_config(cfg).await);
    for chunk in 0..15 {
        let items: Vec<Value> = (0..100)
            .map(|i| json!({"key": format!("k{}", chunk * 100 + i), "value": {"n": i, "pad": "x".repeat(200)}}))
            .collect();
        let r = app.post("/v1/ns/bk/batch/put", json!({"items": items})).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for i in 0..10 {
        app.put(&format!("/v1/ns/bk-other/kv/s{i}"), json!({"value": i}))
            .await;
    }
    let before: u64 = app.get("/v1/namespaces").await.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["namespace"] == "bk")
        .unwrap()["revision"]
        .as_u64()
        .unwrap();

    // Writers: puts (some with a TTL and metadata, with provenance), deletes, over 2,000 keys.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3u64 {
        let (app, stop) = (app.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = w;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i = (i * 7919 + 104_729) % 2000;
                let path = format!("/v1/ns/bk/kv/k{i}");
                let r = if i % 5 == 0 {
                    app.delete(&path).await
                } else if i % 7 == 0 {
                    app.put(
                        &path,
                        json!({"value": {"w": w, "n": n}, "ttl_ms": 600000, "metadata": {"by": w}}),
                    )
                    .await
                } else {
                    app.put_h(
                        &path,
                        &[("x-agent-id", "writer"), ("x-change-reason", "load")],
                        json!({"value": [w, n]}),
                    )
                    .await
                };
                assert!(r.status < 300 || r.status == 404, "{} {}", r.status, r.text());
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one.swsbak");
    let key = BackupKey::parse(&"ab".repeat(32)).unwrap();
    let ops = app.server.as_ref().unwrap().state.ops.clone();
    let progress = Default::default();
    let file = ops
        .backup_capture(
            &Selection::namespaces(&["bk".to_string(), "bk-other".to_string()]),
            &path,
            Some(&key),
            &progress,
        )
        .await
        .expect("the capture succeeds under load");
    let (manifest, size) = (file.manifest, file.size_bytes);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut writes = 0;
    for w in writers {
        writes += w.await.unwrap();
    }
    let bk = &manifest.namespaces[0];
    assert!(writes > 100, "the writers wrote during the capture ({writes})");
    assert!(
        bk.revision > before,
        "the captured revision {} is past the writers' start {before}",
        bk.revision
    );
    assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
    // No temporary file left beside it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // The namespace at that revision, from the change log.
    let client = app.redis().await;
    let log: Vec<(String, HashMap<String, String>)> = client
        .xrange(app.keys().ns("bk").log, "-", format!("0-{}", bk.revision), None)
        .await
        .unwrap();
    assert!(
        log.first().is_some_and(|(id, _)| id == "0-1"),
        "the whole log is retained"
    );
    let mut want: HashMap<String, (u64, Value)> = HashMap::new();
    for (_, f) in &log {
        match f["k"].as_str() {
            "put" => {
                want.insert(
                    f["key"].clone(),
                    (f["ver"].parse().unwrap(), serde_json::from_str(&f["v"]).unwrap()),
                );
            }
            _ => {
                want.remove(&f["key"]);
            }
        }
    }

    // The backup's lines.
    let mut r = Reader::open(std::fs::File::open(&path).unwrap(), std::slice::from_ref(&key)).unwrap();
    let first: Value = serde_json::from_slice(&r.next_line().unwrap().unwrap()).unwrap();
    assert_eq!(first["type"], "manifest");
    assert_eq!(first["namespaces"][0]["revision"], bk.revision);
    let mut got: HashMap<String, (u64, Value)> = HashMap::new();
    let mut other = 0;
    let mut with_history = 0;
    while let Some(line) = r.next_line().unwrap() {
        let v: Value = serde_json::from_slice(&line).unwrap();
        if v["type"] != "entry" {
            continue;
        }
        if v["namespace"] == "bk-other" {
            other += 1;
            continue;
        }
        let k = v["key"].as_str().unwrap().to_string();
        assert!(!got.contains_key(&k), "{k} twice in the backup");
        if !v["history"].as_array().unwrap().is_empty() {
            with_history += 1;
        }
        got.insert(k, (v["version"].as_u64().unwrap(), v["value"].clone()));
    }
    assert_eq!(other, 10);
    assert_eq!(got.len() as u64, bk.entries, "the manifest's count");
    assert!(with_history > 0, "history is captured");
    let mut diff: Vec<String> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: want {v:?}, got {:?}", got.get(k)))
        .chain(
            got.keys()
                .filter(|k| !want.contains_key(*k))
                .map(|k| format!("{k}: not at that revision")),
        )
        .collect();
    diff.sort();
    assert!(
        diff.is_empty(),
        "{} differences at revision {}: {:?}",
        diff.len(),
        bk.revision,
        &diff[..diff.len().min(10)]
    );

    // One flipped byte, a cut, the wrong key: refused.
    let bytes = std::fs::read(&path).unwrap();
    assert!(verify(&bytes[..], std::slice::from_ref(&key)).is_ok());
    let mut bad = bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    assert!(matches!(
        verify(&bad[..], std::slice::from_ref(&key)),
        Err(BackupError::Tampered(_))
    ));
    assert!(matches!(
        verify(&bytes[..bytes.len() - 10], std::slice::from_ref(&key)),
        Err(BackupError::Truncated(_))
    ));
    let wrong = BackupKey::parse(&"cd".repeat(32)).unwrap();
    assert!(matches!(
        verify(&bytes[..], &[wrong]),
        Err(BackupError::WrongKey(_))
    ));
    drop(client);
    Arc::try_unwrap(app).ok().expect("writers ended").stop().await;
}

/// What a user sees of a key: value, version, metadata, provenance, and its history.
async fn key_view(app: &TestApp, ns: &str, key: &str) -> Option<Value> {
    let r = app.get(&format!("/v1/ns/{ns}/kv/{key}")).await;
    if r.status == 404 {
        return None;
    }
    let e = r.json();
    let h = app.get(&format!("/v1/ns/{ns}/kv/{key}/history")).await.json();
    let hist: Vec<Value> = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| json!([v["version"], v["value"], v["change_reason"]]))
        .collect();
    Some(
        json!({"value": e["value"], "version": e["version"], "metadata": e["metadata"],
        "agent_id": e["agent_id"], "change_reason": e["change_reason"], "history": hist,
        "ttl": e["expires_at"].is_string()}),
    )
}

async fn restore(
    app: &TestApp,
    path: &std::path::Path,
    key: &BackupKey,
    mode: RestoreMode,
    dry: bool,
) -> Result<swarmstate::ops::restore::RestoreSummary, swarmstate::error::ApiError> {
    let ops = app.server.as_ref().unwrap().state.ops.clone();
    ops.backup_restore(
        &swarmstate::domain::auth::Caller::Open,
        path,
        std::slice::from_ref(key),
        mode,
        &Selection::all(),
        dry,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_into_a_fresh_deployment_gives_back_every_entry_history_ttl_lock_counter_and_partition() {
    let src = TestApp::start().await;
    for i in 0..300 {
        let p = format!("/v1/ns/rs/kv/k{i:03}");
        src.put_h(
            &p,
            &[("x-agent-id", "alice"), ("x-change-reason", "first")],
            json!({"value": {"n": i}, "metadata": {"tag": i % 3}}),
        )
        .await;
        if i % 10 == 0 {
            src.put_h(
                &p,
                &[("x-change-reason", "second")],
                json!({"value": {"n": i, "again": true}}),
            )
            .await;
        }
    }
    src.put("/v1/ns/rs/kv/short", json!({"value": "soon", "ttl_ms": 600000}))
        .await;
    for _ in 0..3 {
        let g = src
            .post("/v1/ns/rs/locks/door", json!({"owner": "a", "ttl_ms": 60000}))
            .await
            .json();
        let t = g["token"].as_str().unwrap().to_string();
        src.req("DELETE", "/v1/ns/rs/locks/door", &[("x-lock-token", &t)], None)
            .await;
    }
    let r = src
        .post(
            "/v1/partitions",
            json!({"name": "rs-part", "owner_agent": "bob", "quota_bytes": 100000, "tier": "shared"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    src.put("/v1/ns/rs-part/kv/note", json!({"value": "kept"})).await;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rs.swsbak");
    let key = BackupKey::parse(&"5a".repeat(32)).unwrap();
    let ops = src.server.as_ref().unwrap().state.ops.clone();
    let manifest = ops
        .backup_capture(
            &Selection::namespaces(&["rs".into(), "rs-part".into()]),
            &path,
            Some(&key),
            &Default::default(),
        )
        .await
        .unwrap()
        .manifest;
    assert_eq!(manifest.namespaces[0].entries, 301);
    assert_eq!(manifest.namespaces[0].fencing.get("door"), Some(&3));

    // A fresh deployment (its own key prefix): dry run first, which writes nothing.
    let dst = TestApp::start().await;
    let dry = restore(&dst, &path, &key, RestoreMode::Replace, true)
        .await
        .unwrap();
    assert_eq!((dry.restored, dry.deleted, dry.skipped), (302, 0, 0), "{dry:?}");
    assert!(
        key_view(&dst, "rs", "k000").await.is_none(),
        "a dry run writes nothing"
    );
    assert_eq!(dst.get("/v1/partitions/rs-part").await.status, 404);

    let s = restore(&dst, &path, &key, RestoreMode::Replace, false)
        .await
        .unwrap();
    assert_eq!((s.restored, s.deleted, s.skipped), (302, 0, 0), "{s:?}");
    assert!(s.namespaces[1].partition_created);
    let mut names: Vec<String> = (0..300).map(|i| format!("k{i:03}")).collect();
    names.push("short".into());
    for k in &names {
        let want = key_view(&src, "rs", k).await;
        assert!(want.is_some());
        assert_eq!(key_view(&dst, "rs", k).await, want, "{k}");
    }
    let list = dst.get("/v1/ns/rs/kv?limit=1000").await.json();
    assert_eq!(list["items"].as_array().unwrap().len(), 301);
    let part = dst.get("/v1/partitions/rs-part").await.json();
    assert_eq!(
        (part["quota_bytes"].as_u64(), part["owner_agent"].as_str()),
        (Some(100000), Some("bob"))
    );
    assert_eq!(dst.get("/v1/ns/rs-part/kv/note").await.json()["value"], "kept");
    // A restored lock never hands out a token already used.
    let g = dst
        .post("/v1/ns/rs/locks/door", json!({"owner": "b", "ttl_ms": 1000}))
        .await
        .json();
    assert!(g["fencing_token"].as_u64().unwrap() > 3 + 999_999, "{g}");

    // Idempotent: a second restore changes nothing.
    let again = restore(&dst, &path, &key, RestoreMode::Replace, false)
        .await
        .unwrap();
    assert_eq!(
        (again.restored, again.deleted, again.skipped),
        (0, 0, 302),
        "{again:?}"
    );

    // Replace removes what the backup does not hold and puts back what changed; merge keeps
    // newer lives and adds what is missing. Both on the source (same epoch as the backup).
    src.put("/v1/ns/rs/kv/extra", json!({"value": 1})).await;
    src.put("/v1/ns/rs/kv/k001", json!({"value": "changed after"}))
        .await;
    src.delete("/v1/ns/rs/kv/k002").await;
    let m = restore(&src, &path, &key, RestoreMode::Merge, false)
        .await
        .unwrap();
    assert_eq!(m.restored, 1, "only the deleted key comes back in a merge: {m:?}");
    assert_eq!(
        src.get("/v1/ns/rs/kv/k001").await.json()["value"],
        "changed after"
    );
    assert_eq!(
        src.get("/v1/ns/rs/kv/k002").await.json()["value"],
        json!({"n": 2})
    );
    assert_eq!(src.get("/v1/ns/rs/kv/extra").await.status, 200);
    let r = restore(&src, &path, &key, RestoreMode::Replace, false)
        .await
        .unwrap();
    assert_eq!((r.restored, r.deleted), (1, 1), "{r:?}");
    assert_eq!(
        src.get("/v1/ns/rs/kv/k001").await.json()["value"],
        json!({"n": 1})
    );
    assert_eq!(src.get("/v1/ns/rs/kv/extra").await.status, 404);
    let v = src.get("/v1/ns/rs/kv/k001").await.json()["version"]
        .as_u64()
        .unwrap();
    assert!(v > 2, "the restored version is above the one it replaced ({v})");

    // A damaged, truncated or wrong-key file is refused before anything is written.
    dst.put("/v1/ns/rs/kv/extra", json!({"value": "mine"})).await;
    let bytes = std::fs::read(&path).unwrap();
    let bad = dir.path().join("bad.swsbak");
    let mut b = bytes.clone();
    let last = b.len() - 40;
    b[last] ^= 0x20;
    std::fs::write(&bad, &b).unwrap();
    let e = restore(&dst, &bad, &key, RestoreMode::Replace, false)
        .await
        .unwrap_err();
    assert_eq!((e.code.as_str(), e.status().as_u16()), ("backup_tampered", 422));
    std::fs::write(&bad, &bytes[..bytes.len() - 100]).unwrap();
    let e = restore(&dst, &bad, &key, RestoreMode::Replace, false)
        .await
        .unwrap_err();
    assert_eq!(e.code.as_str(), "backup_truncated");
    let wrong = BackupKey::parse(&"77".repeat(32)).unwrap();
    let e = restore(&dst, &path, &wrong, RestoreMode::Replace, false)
        .await
        .unwrap_err();
    assert_eq!(e.code.as_str(), "backup_key_mismatch");
    assert_eq!(
        dst.get("/v1/ns/rs/kv/extra").await.json()["value"],
        "mine",
        "nothing was written"
    );
    src.stop().await;
    dst.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_resumed_across_a_restore_is_told_reset() {
    let app = TestApp::start().await;
    app.put("/v1/ns/rw/kv/a", json!({"value": 1})).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rw.swsbak");
    let key = BackupKey::parse(&"11".repeat(32)).unwrap();
    let ops = app.server.as_ref().unwrap().state.ops.clone();
    ops.backup_capture(
        &Selection::namespaces(&["rw".into()]),
        &path,
        Some(&key),
        &Default::default(),
    )
    .await
    .unwrap();
    let mut ws = crate::common::ws::connect(&app).await;
    crate::common::ws::send(
        &mut ws,
        json!({"op": "watch", "id": "w", "namespace": "rw", "from_revision": 0}),
    )
    .await;
    let first = crate::common::ws::next(&mut ws, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(first["type"], "event", "{first}");
    let progress = crate::common::ws::next(&mut ws, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let epoch = progress["epoch"].as_str().unwrap().to_string();
    app.put("/v1/ns/rw/kv/a", json!({"value": 2})).await;
    restore(&app, &path, &key, RestoreMode::Replace, false)
        .await
        .unwrap();
    // The live watcher is told its history changed: `compacted` with reason `reset`.
    let mut told = None;
    for _ in 0..20 {
        match crate::common::ws::next(&mut ws, std::time::Duration::from_secs(3)).await {
            Some(f) if f["type"] == "compacted" => {
                told = Some(f);
                break;
            }
            Some(_) => continue,
            None => break,
        }
    }
    assert_eq!(told.expect("a compacted frame")["reason"], "reset");
    // A resume with the old epoch is told the same.
    let mut ws2 = crate::common::ws::connect(&app).await;
    crate::common::ws::send(
        &mut ws2,
        json!({"op": "watch", "id": "r", "namespace": "rw", "from_revision": 1, "epoch": epoch}),
    )
    .await;
    let f = crate::common::ws::next(&mut ws2, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        (f["type"].as_str(), f["reason"].as_str()),
        (Some("compacted"), Some("reset")),
        "{f}"
    );
    assert_eq!(app.get("/v1/ns/rw/kv/a").await.json()["value"], 1);
    app.stop().await;
}

/// Read a backup file's lines (all of them, as JSON).
fn lines_of(path: &std::path::Path, key: &BackupKey) -> Vec<Value> {
    let f = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut r = Reader::open(f, std::slice::from_ref(key)).unwrap();
    let mut out = Vec::new();
    while let Some(l) = r.next_line().unwrap() {
        out.push(serde_json::from_slice(&l).unwrap());
    }
    out
}

/// A queue captured while producers enqueue and workers lease, ack and nack is the queue at
/// one moment: every id up to its sequence once, each task in exactly the sets its state puts
/// it in, and as many completed, dead and enqueued as the queue's own counters (read in the
/// same atomic call) say — a change the fix-up missed would break the count. Restored into a
/// fresh deployment the queue is the backup: tasks, states, attempts, idempotency keys (an
/// enqueue with one answers the restored task), and new ids after the sequence.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_captured_under_producers_and_workers_is_one_moment_and_restores_exactly() {
    let app = Arc::new(TestApp::start().await);
    for i in 0..600 {
        let mut body = json!({"payload": {"n": i}, "priority": i % 3, "max_attempts": 1 + i % 2});
        if i % 4 == 0 {
            body["idempotency_key"] = json!(format!("idem-{i}"));
        }
        if i % 10 == 0 {
            body["delay_ms"] = json!(3_600_000);
        }
        let r = app.post("/v1/queues/bq/tasks", body).await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for p in 0..2u64 {
        let (app, stop) = (app.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                app.post(
                    "/v1/queues/bq/tasks",
                    json!({"payload": {"p": p, "n": n}, "max_attempts": 1}),
                )
                .await;
                n += 1;
            }
        }));
    }
    for w in 0..2u64 {
        let (app, stop) = (app.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let r = app
                    .post("/v1/queues/bq/lease", json!({"worker": format!("w{w}"), "lease_ms": 60000, "max_tasks": 5}))
                    .await;
                for t in r.json()["tasks"].as_array().cloned().unwrap_or_default() {
                    k += 1;
                    let id = t["id"].as_str().unwrap();
                    // Some stay leased, some complete, some fail (dead: one attempt, or retry).
                    match k % 4 {
                        0 => {}
                        1 | 2 => {
                            app.post(&format!("/v1/queues/bq/tasks/{id}/ack"), json!({"lease_token": t["lease_token"]}))
                                .await;
                        }
                        _ => {
                            app.post(
                                &format!("/v1/queues/bq/tasks/{id}/nack"),
                                json!({"lease_token": t["lease_token"], "error": "boom", "retry_delay_ms": 3600000}),
                            )
                            .await;
                        }
                    }
                }
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.swsbak");
    let key = BackupKey::parse(&"7e".repeat(32)).unwrap();
    let ops = app.server.as_ref().unwrap().state.ops.clone();
    let sel = Selection {
        namespaces: Some(vec![]),
        queues: Some(vec!["bq".into()]),
    };
    let file = ops
        .backup_capture(&sel, &path, Some(&key), &Default::default())
        .await
        .expect("the capture succeeds under load");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert!(file.manifest.namespaces.is_empty());
    let qm = &file.manifest.queues[0];
    let lines = lines_of(&path, &key);
    let tasks: Vec<&Value> = lines.iter().filter(|l| l["type"] == "task").collect();
    assert_eq!(tasks.len() as u64, qm.tasks);
    let meta = |f: &str| qm.meta.get(f).map(|v| v.parse::<u64>().unwrap()).unwrap_or(0);
    let seq = meta("seq");
    assert!(seq > 600, "producers enqueued during the capture ({seq})");
    let ids: Vec<u64> = tasks.iter().map(|t| t["id"].as_u64().unwrap()).collect();
    assert_eq!(
        ids,
        (1..=seq).collect::<Vec<_>>(),
        "every id up to the sequence, once, in order"
    );
    let mut count: HashMap<String, u64> = HashMap::new();
    for t in &tasks {
        let state = t["fields"]["state"].as_str().unwrap().to_string();
        let sets: Vec<&str> = t["sets"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let want: &[&str] = match state.as_str() {
            "ready" => &["age", "ready"],
            "delayed" => &["delayed"],
            "failed" => &["retry"],
            "leased" => &["leased"],
            "completed" => &["completed"],
            "dead" => &["dead"],
            other => panic!("state {other}"),
        };
        assert_eq!(sets, want, "task {}: {t}", t["id"]);
        *count.entry(state).or_default() += 1;
    }
    let c = |s: &str| count.get(s).copied().unwrap_or(0);
    assert_eq!(c("completed"), meta("completed"), "{count:?} vs {:?}", qm.meta);
    assert_eq!(c("dead"), meta("dead"), "{count:?} vs {:?}", qm.meta);
    assert_eq!(meta("enqueued"), seq);
    assert!(
        c("completed") > 10 && c("leased") > 0 && c("ready") > 0 && c("failed") > 0,
        "{count:?}"
    );

    // Into a fresh deployment: a dry run, then replace.
    let fresh = TestApp::start().await;
    let fops = fresh.server.as_ref().unwrap().state.ops.clone();
    let caller = swarmstate::domain::auth::Caller::Open;
    let dry = fops
        .backup_restore(
            &caller,
            &path,
            std::slice::from_ref(&key),
            RestoreMode::Replace,
            &Selection::all(),
            true,
        )
        .await
        .unwrap();
    assert_eq!((dry.restored, dry.deleted), (qm.tasks, 0));
    assert_eq!(
        fresh.get("/v1/queues/bq").await.json()["ready"],
        0,
        "a dry run writes nothing"
    );
    let s = fops
        .backup_restore(
            &caller,
            &path,
            std::slice::from_ref(&key),
            RestoreMode::Replace,
            &Selection::all(),
            false,
        )
        .await
        .unwrap();
    assert_eq!(s.queues[0].restored, qm.tasks);
    assert_eq!(s.queues[0].sequence, seq);
    let st = fresh.get("/v1/queues/bq").await.json();
    for (state, field) in [
        ("ready", "ready"),
        ("delayed", "delayed"),
        ("failed", "failed"),
        ("leased", "leased"),
        ("completed", "completed"),
        ("dead", "dead"),
    ] {
        assert_eq!(st[field].as_u64(), Some(c(state)), "{field}: {st}");
    }
    assert_eq!(st["completed_total"].as_u64(), Some(meta("completed")), "{st}");
    let t = fresh.get("/v1/queues/bq/tasks/8").await.json();
    let orig = tasks[7];
    assert_eq!(t["state"], orig["fields"]["state"], "{t}");
    assert_eq!(t["payload"], json!({"n": 7}));
    assert_eq!(
        t["attempts"].as_u64().unwrap().to_string(),
        orig["fields"]["attempts"].as_str().unwrap()
    );
    let r = fresh
        .post(
            "/v1/queues/bq/tasks",
            json!({"payload": "again", "idempotency_key": "idem-4"}),
        )
        .await;
    assert_eq!(
        r.status,
        200,
        "the restored idempotency key answers the restored task: {}",
        r.text()
    );
    assert_eq!(r.json()["id"], "5");
    let r = fresh.post("/v1/queues/bq/tasks", json!({"payload": "new"})).await;
    assert_eq!(
        r.json()["id"],
        (seq + 1).to_string(),
        "new ids come after the sequence"
    );
    assert_eq!(fresh.get("/v1/queues").await.json()["items"][0]["queue"], "bq");
    // Merge into a queue that holds tasks restores none; a second replace is exact again.
    let m = fops
        .backup_restore(
            &caller,
            &path,
            std::slice::from_ref(&key),
            RestoreMode::Merge,
            &Selection::all(),
            false,
        )
        .await
        .unwrap();
    assert_eq!((m.queues[0].restored, m.queues[0].skipped), (0, qm.tasks));
    let again = fops
        .backup_restore(
            &caller,
            &path,
            std::slice::from_ref(&key),
            RestoreMode::Replace,
            &Selection::all(),
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        (again.queues[0].deleted, again.queues[0].restored),
        (qm.tasks + 1, qm.tasks)
    );
    assert_eq!(
        fresh
            .get(&format!("/v1/queues/bq/tasks/{}", seq + 1))
            .await
            .status,
        404
    );
}
