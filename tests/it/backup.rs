//! Backups (issue 16, first part): a capture under concurrent writers is exactly the
//! namespace at the revision its manifest records — checked against a replay of the change
//! log up to that revision — and the file refuses tampering and the wrong key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fred::prelude::*;
use serde_json::{json, Value};
use swarmstate::domain::backup::{verify, BackupError, BackupKey, Reader};

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
    let (manifest, size) = ops
        .backup_capture(&["bk".to_string(), "bk-other".to_string()], &path, Some(&key))
        .await
        .expect("the capture succeeds under load");
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
