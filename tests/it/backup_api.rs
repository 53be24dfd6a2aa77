//! `/v1/backups` as a client uses it (issue 16): take a backup and poll it, list, download
//! (as the file, not recompressed), verify, restore (dry run, replace, merge), upload a file
//! taken elsewhere (larger than the JSON body limit), refuse tampered and truncated uploads
//! with 422 before writing, delete; bad requests are 4xx problem documents.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use swarmstate::domain::backup::{BackupKey, Reader};

use crate::common::{shared_redis_url, test_config, TestApp};

const KEY_HEX: &str = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";

/// Poll a backup until it is no longer `running` (30 s at most).
async fn settled(app: &TestApp, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = app.get(&format!("/v1/backups/{id}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let b = r.json();
        if b["status"] != "running" {
            return b;
        }
        assert!(Instant::now() < deadline, "backup {id} still running: {b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Values that do not compress much, so the file is larger than the body limit.
fn noise(i: usize) -> String {
    use sha2::Digest;
    (0..4)
        .map(|j| format!("{:x}", sha2::Sha256::digest(format!("{i}-{j}").as_bytes())))
        .collect()
}

fn upload<'a>(
    app: &'a TestApp,
    bytes: &'a [u8],
) -> impl std::future::Future<Output = crate::common::Resp> + 'a {
    app.req(
        "POST",
        "/v1/backups/upload",
        &[("content-type", "application/octet-stream")],
        Some(bytes),
    )
}

/// An upload over a raw socket with these framing headers and body bytes: the answer's head.
async fn raw_exchange(app: &TestApp, framing: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!("POST /v1/backups/upload HTTP/1.1\r\nHost: x\r\ncontent-type: application/octet-stream\r\n{framing}\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer and stop reading before the whole body is sent.
    let _ = s.write_all(body).await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("no answer within 5 s")
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backups_api_takes_polls_downloads_verifies_uploads_restores_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&shared_redis_url());
    cfg.backup_dir = Some(dir.path().join("backups"));
    cfg.backup_key = Some(KEY_HEX.into());
    cfg.body_limit_bytes = 64 * 1024;
    cfg.backup_upload_limit_bytes = 4 * 1024 * 1024;
    let app = TestApp::with_config(cfg).await;
    for chunk in 0..12 {
        let items: Vec<Value> = (0..100)
            .map(|i| {
                let n = chunk * 100 + i;
                json!({"key": format!("k{n:04}"), "value": {"n": n, "noise": noise(n)}})
            })
            .collect();
        let r = app.post("/v1/ns/ba/batch/put", json!({"items": items})).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    app.put("/v1/ns/ba-other/kv/x", json!({"value": 1})).await;

    // Take: 202 at once, Location to poll, then succeeded with the namespace's revision.
    let r = app.post("/v1/backups", json!({"namespaces": ["ba"]})).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let started = r.json();
    let id = started["id"].as_str().unwrap().to_string();
    assert_eq!(started["status"], "running");
    assert_eq!(
        r.header("location").as_deref(),
        Some(format!("/v1/backups/{id}").as_str())
    );
    let b = settled(&app, &id).await;
    assert_eq!(b["status"], "succeeded", "{b}");
    assert_eq!(b["origin"], "api");
    assert_eq!(b["encrypted"], true);
    assert_eq!(b["key_id"], BackupKey::parse(KEY_HEX).unwrap().id_hex());
    assert_eq!(b["namespaces"].as_array().unwrap().len(), 1, "{b}");
    assert_eq!(b["namespaces"][0]["namespace"], "ba");
    assert_eq!(b["namespaces"][0]["entries"], 1200);
    let rev = app.get("/v1/ns/ba/kv/k0000").await.json()["mod_revision"]
        .as_u64()
        .unwrap();
    assert!(b["namespaces"][0]["revision"].as_u64().unwrap() >= rev, "{b}");
    assert_eq!(b["progress"]["namespaces_done"], 1);
    assert_eq!(b["progress"]["entries_read"], 1200);
    let size = b["size_bytes"].as_u64().unwrap();
    assert!(
        size > 64 * 1024,
        "the file ({size} bytes) is larger than the JSON body limit"
    );
    let list = app.get("/v1/backups").await.json();
    assert!(
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["id"] == id.as_str()),
        "{list}"
    );

    // Download: the file itself (no gzip on top, even though the client asks for it).
    let r = app.get(&format!("/v1/backups/{id}/download")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.body.len() as u64, size);
    let file = r.body.to_vec();
    let key = BackupKey::parse(KEY_HEX).unwrap();
    let mut reader = Reader::open(&file[..], &[key]).unwrap();
    while reader.next_line().unwrap().is_some() {}
    assert_eq!(Some(reader.sha256().unwrap()), b["sha256"].as_str());

    // Verify.
    let r = app.post(&format!("/v1/backups/{id}/verify"), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["sha256"], b["sha256"]);
    assert_eq!(v["namespaces"][0]["entries"], 1200);

    // Change the namespace, then restore: dry run (nothing written), replace, merge.
    app.delete("/v1/ns/ba/kv/k0001").await;
    app.put("/v1/ns/ba/kv/k0002", json!({"value": "edited"})).await;
    app.put("/v1/ns/ba/kv/zz-extra", json!({"value": "extra"})).await;
    let restore = |body: Value| {
        let (app, id) = (&app, id.clone());
        async move { app.post(&format!("/v1/backups/{id}/restore"), body).await }
    };
    let r = restore(json!({"mode": "replace", "dry_run": true})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let s = r.json();
    assert_eq!(
        (
            s["restored"].as_u64(),
            s["deleted"].as_u64(),
            s["dry_run"].as_bool()
        ),
        (Some(2), Some(1), Some(true)),
        "{s}"
    );
    assert_eq!(
        app.get("/v1/ns/ba/kv/k0001").await.status,
        404,
        "a dry run writes nothing"
    );
    let r = restore(json!({"mode": "merge"})).await;
    let s = r.json();
    assert_eq!(r.status, 200, "{s}");
    assert_eq!(
        (s["restored"].as_u64(), s["deleted"].as_u64()),
        (Some(1), Some(0)),
        "merge brings back only the deleted key: {s}"
    );
    assert_eq!(app.get("/v1/ns/ba/kv/k0002").await.json()["value"], "edited");
    let r = restore(json!({"mode": "replace", "namespaces": ["ba"]})).await;
    let s = r.json();
    assert_eq!(r.status, 200, "{s}");
    assert_eq!(
        (s["restored"].as_u64(), s["deleted"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    assert_eq!(app.get("/v1/ns/ba/kv/k0002").await.json()["value"]["n"], 2);
    assert_eq!(app.get("/v1/ns/ba/kv/zz-extra").await.status, 404);
    assert!(
        s["revision"].as_u64().unwrap() > rev,
        "revisions move forward: {s}"
    );
    let s = restore(json!({"mode": "replace"})).await.json();
    assert_eq!(
        (s["restored"].as_u64(), s["skipped"].as_u64()),
        (Some(0), Some(1200)),
        "idempotent: {s}"
    );
    restore(json!({"mode": "sideways"}))
        .await
        .problem(422, "invalid_body");
    restore(json!({})).await.problem(422, "invalid_body");
    restore(json!({"mode": "merge", "namespaces": ["not-in-it"]}))
        .await
        .problem(400, "invalid_argument");

    // Upload: the file back under a new id (larger than body_limit_bytes, which the upload
    // route does not apply), then damaged copies: registered, but verify and restore are 422
    // and nothing is written.
    let r = upload(&app, &file).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let up = r.json();
    let up_id = up["id"].as_str().unwrap().to_string();
    assert_ne!(up_id, id);
    assert_eq!(
        (up["origin"].as_str(), up["status"].as_str()),
        (Some("upload"), Some("succeeded"))
    );
    assert_eq!(up["size_bytes"].as_u64(), Some(size));
    assert_eq!(up["encrypted"], true);
    assert_eq!(up["namespaces"][0]["entries"], 1200, "{up}");
    let v = app
        .post(&format!("/v1/backups/{up_id}/verify"), json!({}))
        .await
        .json();
    assert_eq!(v["sha256"], b["sha256"], "{v}");
    app.delete("/v1/ns/ba/kv/k0003").await;
    let before = app.get("/v1/ns/ba/kv/k0000").await.json()["mod_revision"].clone();
    let mut tampered = file.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x01;
    let truncated = file[..file.len() - 100].to_vec();
    for (bytes, code) in [
        (&tampered, "backup_tampered"),
        (&truncated, "backup_truncated"),
        (&b"not a backup at all".to_vec(), "backup_invalid"),
    ] {
        let r = upload(&app, bytes).await;
        assert_eq!(r.status, 201, "{}", r.text());
        let bad = r.json()["id"].as_str().unwrap().to_string();
        app.post(&format!("/v1/backups/{bad}/verify"), json!({}))
            .await
            .problem(422, code);
        app.post(&format!("/v1/backups/{bad}/restore"), json!({"mode": "replace"}))
            .await
            .problem(422, code);
        assert_eq!(
            app.get("/v1/ns/ba/kv/k0003").await.status,
            404,
            "{code}: nothing was written"
        );
        assert_eq!(app.get("/v1/ns/ba/kv/k0000").await.json()["mod_revision"], before);
        assert_eq!(app.delete(&format!("/v1/backups/{bad}")).await.status, 204);
    }
    // Over backup_upload_limit_bytes: declared (refused before the body is sent), and chunked
    // (refused once the limit is passed; the partial file is removed).
    let head = raw_exchange(&app, "content-length: 4194305\r\n", &[]).await;
    assert!(
        head.starts_with("HTTP/1.1 413") && head.contains("payload_too_large"),
        "{head}"
    );
    let chunk = vec![7u8; 1 << 20];
    let mut chunked = Vec::new();
    for _ in 0..4 {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(&chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"1\r\nx\r\n0\r\n\r\n");
    let head = raw_exchange(&app, "transfer-encoding: chunked\r\n", &chunked).await;
    assert!(
        head.starts_with("HTTP/1.1 413") && head.contains("payload_too_large"),
        "{head}"
    );
    // A client that goes away mid-upload leaves nothing behind.
    {
        use tokio::io::AsyncWriteExt;
        let addr = app.base.trim_start_matches("http://").to_string();
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"POST /v1/backups/upload HTTP/1.1\r\nHost: x\r\ncontent-length: 1000000\r\n\r\n")
            .await
            .unwrap();
        s.write_all(&vec![1u8; 100_000]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("backups"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    upload(&app, b"").await.problem(400, "invalid_argument");

    // Bad requests.
    app.post("/v1/backups", json!({"namespaces": ["no-such-ns"]}))
        .await
        .problem(400, "invalid_argument");
    app.post("/v1/backups", json!({"partitions": ["ba"]}))
        .await
        .problem(400, "invalid_argument");
    app.post("/v1/backups", json!({"namespaces": ["Bad Name"]}))
        .await
        .problem(400, "invalid_name");
    app.post("/v1/backups", json!({"queues": ["jobs"]}))
        .await
        .problem(400, "invalid_argument");
    app.post("/v1/backups", json!({"everything": true}))
        .await
        .problem(422, "invalid_body");
    for bad in ["nope", "..%2F..%2Fetc", "a.b"] {
        app.get(&format!("/v1/backups/{bad}"))
            .await
            .problem(404, "not_found");
        app.get(&format!("/v1/backups/{bad}/download"))
            .await
            .problem(404, "not_found");
    }

    // Delete: gone from the list, its file removed.
    assert_eq!(app.delete(&format!("/v1/backups/{id}")).await.status, 204);
    app.get(&format!("/v1/backups/{id}"))
        .await
        .problem(404, "not_found");
    app.delete(&format!("/v1/backups/{id}"))
        .await
        .problem(404, "not_found");
    assert!(!dir.path().join("backups").join(format!("{id}.swsbak")).exists());
    let left: Vec<String> = app.get("/v1/backups").await.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, [up_id]);
}

#[tokio::test]
async fn without_a_key_backups_are_plain_and_encrypt_true_is_refused_and_a_stopped_capture_is_marked_failed()
{
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("b");
    std::fs::create_dir_all(&backups).unwrap();
    // What a process killed during a capture leaves behind.
    let stale = json!({
        "id": "20261201T000000Z-000001", "status": "running", "origin": "schedule",
        "created_at": "2026-12-01T00:00:00.000Z", "finished_at": null, "encrypted": false,
        "key_id": null, "size_bytes": null, "sha256": null, "namespaces": [],
        "progress": {"namespaces_total": 3, "namespaces_done": 1, "entries_read": 10}, "error": null
    });
    std::fs::write(backups.join("20261201T000000Z-000001.json"), stale.to_string()).unwrap();
    std::fs::write(backups.join("20261201T000000Z-000001.swsbak.tmp"), b"partial").unwrap();
    let mut cfg = test_config(&shared_redis_url());
    cfg.backup_dir = Some(backups.clone());
    let app = TestApp::with_config(cfg).await;
    let b = app.get("/v1/backups/20261201T000000Z-000001").await.json();
    assert_eq!(b["status"], "failed", "{b}");
    assert_eq!(b["error"]["code"], "interrupted");
    assert!(!backups.join("20261201T000000Z-000001.swsbak.tmp").exists());

    let p = app
        .post("/v1/backups", json!({"encrypt": true}))
        .await
        .problem(400, "backup_key_missing");
    assert!(
        p["detail"].as_str().unwrap().contains("SWARMSTATE_BACKUP_KEY"),
        "{p}"
    );
    app.put("/v1/ns/plain/kv/a", json!({"value": [1, 2]})).await;
    app.post("/v1/queues/plainq/tasks", json!({"payload": 1})).await;
    let r = app.post("/v1/backups", json!({})).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let b = settled(&app, r.json()["id"].as_str().unwrap()).await;
    assert_eq!(
        (b["status"].as_str(), b["encrypted"].as_bool()),
        (Some("succeeded"), Some(false)),
        "{b}"
    );
    assert!(
        b["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["namespace"] == "plain"),
        "every namespace: {b}"
    );
    assert_eq!(
        b["queues"],
        json!([{"queue": "plainq", "tasks": 1}]),
        "and every queue: {b}"
    );
    let r = app.post("/v1/backups", json!({"queues": ["plainq"]})).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let only_q = settled(&app, r.json()["id"].as_str().unwrap()).await;
    assert_eq!(only_q["namespaces"], json!([]), "only what is named: {only_q}");
    assert_eq!(
        only_q["queues"],
        json!([{"queue": "plainq", "tasks": 1}]),
        "{only_q}"
    );
    let file = app
        .get(&format!("/v1/backups/{}/download", b["id"].as_str().unwrap()))
        .await
        .body;
    assert_eq!(&file[..8], b"SWSBAK01");
    assert_eq!(file[9] & 1, 0, "plain");
}

/// `backup_schedule` (a 6-field cron: every second) takes backups of everything with origin
/// `schedule`; `backup_retention = 2` keeps the two newest of those and never touches one
/// taken through the API; the metrics count them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_run_and_retention_keeps_the_newest_scheduled_ones() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(&shared_redis_url());
    cfg.backup_dir = Some(dir.path().join("b"));
    cfg.backup_schedule = Some("* * * * * *".into());
    cfg.backup_retention = Some("2".into());
    let app = TestApp::with_config(cfg).await;
    app.put("/v1/ns/sched/kv/a", json!({"value": 1})).await;
    let manual = app
        .post("/v1/backups", json!({"namespaces": ["sched"]}))
        .await
        .json();
    let manual_id = manual["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let items = app.get("/v1/backups").await.json()["items"]
            .as_array()
            .unwrap()
            .clone();
        let scheduled: Vec<&Value> = items
            .iter()
            .filter(|i| i["origin"] == "schedule" && i["status"] == "succeeded")
            .collect();
        let metrics = app.get("/metrics").await.text();
        let taken = metric(
            &metrics,
            "backups_total{result=\"succeeded\",origin=\"schedule\"}",
        );
        let pruned = metric(&metrics, "backups_pruned_total");
        if taken >= 4.0 && pruned >= 2.0 && scheduled.len() == 2 {
            assert!(
                items.iter().any(|i| i["id"] == manual_id.as_str()),
                "the API backup is kept: {items:?}"
            );
            for s in &scheduled {
                assert!(
                    s["namespaces"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|n| n["namespace"] == "sched"),
                    "a scheduled backup holds every namespace: {s}"
                );
            }
            let last = metric(&metrics, "backups_last_success_timestamp_seconds");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            assert!((now - last).abs() < 10.0, "last success {last}, now {now}");
            let files = std::fs::read_dir(dir.path().join("b")).unwrap().count();
            // The manual one, the two scheduled ones (file + record each), maybe one running.
            assert!((6..=9).contains(&files), "{files} files in the backup directory");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "taken {taken}, pruned {pruned}, kept {}: {items:?}",
            scheduled.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A sample's value in Prometheus text (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Key rotation: a backup taken under key A verifies and restores on a service whose key is B
/// with A in `backup_keys_old`; without A it is 422 `backup_key_mismatch`.
#[tokio::test]
async fn backup_keys_old_open_files_of_an_earlier_key() {
    let dir = tempfile::tempdir().unwrap();
    let a = "a1".repeat(32);
    let b = "b2".repeat(32);
    let start = |key: String, old: Vec<String>| {
        let mut cfg = test_config(&shared_redis_url());
        cfg.backup_dir = Some(dir.path().to_path_buf());
        cfg.backup_key = Some(key);
        cfg.backup_keys_old = old;
        TestApp::with_config(cfg)
    };
    let first = start(a.clone(), vec![]).await;
    first.put("/v1/ns/rot/kv/k", json!({"value": "v"})).await;
    let id = first
        .post("/v1/backups", json!({"namespaces": ["rot"]}))
        .await
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(settled(&first, &id).await["status"], "succeeded");
    first.stop().await;

    let without = start(b.clone(), vec![]).await;
    without
        .post(&format!("/v1/backups/{id}/verify"), json!({}))
        .await
        .problem(422, "backup_key_mismatch");
    without.stop().await;

    let rotated = start(b, vec![a]).await;
    let r = rotated.post(&format!("/v1/backups/{id}/verify"), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let s = rotated
        .post(
            &format!("/v1/backups/{id}/restore"),
            json!({"mode": "replace", "dry_run": true}),
        )
        .await;
    assert_eq!(s.status, 200, "{}", s.text());
    // New backups use the new key.
    let id2 = rotated.post("/v1/backups", json!({})).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b2 = settled(&rotated, &id2).await;
    assert_eq!(b2["key_id"], BackupKey::parse(&"b2".repeat(32)).unwrap().id_hex());
}
