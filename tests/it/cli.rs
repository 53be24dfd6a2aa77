//! The real `swarmstate` binary: embedded redis-server supervision, config errors, SIGTERM.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::free_port;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_swarmstate"))
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string()))
}

fn http_put(port: u16, path: &str, body: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

fn wait_status(port: u16, path: &str, want: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some((s, _)) = http_get(port, path) {
            if s == want {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The redis-server working in `<dir>/redis` (redis-server chdirs to its --dir).
fn redis_pid_under(dir: &std::path::Path) -> Option<i32> {
    let want = dir.join("redis").canonicalize().ok()?;
    let out = Command::new("pgrep").args(["-x", "redis-server"]).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).ok().as_ref() == Some(&want))
        .and_then(|pid| pid.parse().ok())
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_runs_and_supervises_its_own_redis() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = bin()
        .arg("serve")
        .env("SWARMSTATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SWARMSTATE_DATA_DIR", data.path())
        .env_remove("SWARMSTATE_REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Kill(child);
    assert!(
        wait_status(port, "/readyz", 200, Duration::from_secs(30)),
        "service did not become ready"
    );
    // The container HEALTHCHECK: finds the port from SWARMSTATE_LISTEN (0.0.0.0 in the image).
    let health = bin()
        .arg("healthcheck")
        .env("SWARMSTATE_LISTEN", format!("0.0.0.0:{port}"))
        .output()
        .unwrap();
    assert!(health.status.success(), "{health:?}");
    let closed = free_port();
    let health = bin()
        .args([
            "healthcheck",
            "--addr",
            &format!("127.0.0.1:{closed}"),
            "--timeout-ms",
            "500",
        ])
        .output()
        .unwrap();
    assert_eq!(health.status.code(), Some(1), "{health:?}");
    assert!(
        String::from_utf8_lossy(&health.stderr).contains("unhealthy"),
        "{health:?}"
    );
    let (_, status) = http_get(port, "/v1/status").unwrap();
    assert!(status.contains("\"redis_source\":\"embedded\""), "{status}");
    assert_eq!(http_put(port, "/v1/ns/e/kv/a", r#"{"value": "kept"}"#), Some(201));
    assert!(
        data.path().join("redis/appendonlydir").exists(),
        "AOF lives under the data dir"
    );

    // Kill the child redis-server: the supervisor restarts it and the data is still there.
    let pid = redis_pid_under(data.path()).expect("embedded redis-server is running");
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = None;
    while Instant::now() < deadline {
        if let Some((200, body)) = http_get(port, "/v1/ns/e/kv/a") {
            got = Some(body);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let body = got.expect("service recovered after redis-server was killed");
    assert!(body.contains("\"kept\""), "{body}");
    let new_pid = redis_pid_under(data.path()).expect("restarted");
    assert_ne!(new_pid, pid);

    // SIGTERM: graceful exit 0, and the embedded redis-server is gone.
    unsafe {
        libc::kill(child.0.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        redis_pid_under(data.path()),
        None,
        "embedded redis-server stopped with the service"
    );
}

#[test]
fn missing_redis_server_exits_1_with_the_install_command() {
    let data = tempfile::tempdir().unwrap();
    let out = bin()
        .arg("serve")
        .env("SWARMSTATE_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("SWARMSTATE_DATA_DIR", data.path())
        .env(
            "SWARMSTATE_REDIS_SERVER_BIN",
            "redis-server-that-is-not-installed",
        )
        .env_remove("SWARMSTATE_REDIS_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("apt-get install -y redis-server"), "{err}");
}

#[test]
fn bad_configuration_is_refused_at_start_up() {
    for (var, value, needle) in [
        ("SWARMSTATE_REDIS_URL", "http://localhost", "redis_url"),
        ("SWARMSTATE_REDIS_URL", "redis+sentinel://s1:26379", "master name"),
        ("SWARMSTATE_LISTEN", "not-an-address", "listen"),
        ("SWARMSTATE_BODY_LIMIT_BYTES", "12", "body_limit_bytes"),
        ("SWARMSTATE_COMMAND_TIMEOUT_MS", "abc", "command_timeout_ms"),
        ("SWARMSTATE_KEY_PREFIX", "a{b}", "key_prefix"),
    ] {
        let out = bin().arg("serve").env(var, value).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{var}={value}");
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(err.contains(needle), "{var}={value}: {err}");
    }
    // Flags beat env; a TOML file is read; unknown TOML keys are refused.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "listne = \"127.0.0.1:1\"\n").unwrap();
    let out = bin().arg("serve").arg("--config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listne"));
    let out = bin()
        .args(["serve", "--listen", "bad-flag-value"])
        .env("SWARMSTATE_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad-flag-value"));
}

#[test]
fn openapi_subcommand_prints_the_spec() {
    let out = bin().arg("openapi").output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["openapi"], "3.1.0");
    assert!(v["paths"]["/v1/ns/{ns}/kv/{key}"].is_object());
}

/// SIGTERM with an open SSE stream, an open WebSocket and a waiting long-poll: each client sees
/// a clean end (the stream ends, the socket gets 1001, the lease answers with no tasks), the
/// process exits 0 well within shutdown_grace_ms, and nothing is logged at WARN on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_sockets_and_long_polls_cleanly() {
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = data.path().join("service.log");
    let child = bin()
        .arg("serve")
        .env("SWARMSTATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SWARMSTATE_DATA_DIR", data.path())
        .env("SWARMSTATE_LOG", "info")
        .env_remove("SWARMSTATE_REDIS_URL")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut child = Kill(child);
    let ready =
        tokio::task::spawn_blocking(move || wait_status(port, "/readyz", 200, Duration::from_secs(20)));
    assert!(ready.await.unwrap(), "service did not become ready");
    let addr = format!("127.0.0.1:{port}");
    let raw = |req: String| {
        let addr = addr.clone();
        async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            let r = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out)).await;
            (r.is_ok(), String::from_utf8_lossy(&out).to_string())
        }
    };
    let sse = tokio::spawn(raw(
        "GET /v1/ns/app/events?from_revision=0 HTTP/1.1\r\nhost: x\r\n\r\n".to_string(),
    ));
    let body = r#"{"worker": "w", "lease_ms": 1000, "wait_ms": 25000}"#;
    let lease = tokio::spawn(raw(format!(
        "POST /v1/queues/q/lease HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )));
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/v1/watch"))
        .await
        .unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        r#"{"op": "watch", "id": "w", "namespace": "app"}"#.into(),
    ))
    .await
    .unwrap();
    let _progress = ws.next().await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let start = Instant::now();
    unsafe {
        libc::kill(child.0.id() as i32, libc::SIGTERM);
    }
    let code = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f)))) => {
                    return Some(u16::from(f.code))
                }
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("the WebSocket was not closed");
    assert_eq!(code, Some(1001), "WebSocket close code");
    let (ended, text) = sse.await.unwrap();
    assert!(ended, "the SSE stream did not end: {text}");
    assert!(
        text.starts_with("HTTP/1.1 200") && text.contains("event: progress"),
        "{text}"
    );
    let (ended, text) = lease.await.unwrap();
    assert!(
        ended && text.starts_with("HTTP/1.1 200") && text.contains(r#"{"tasks":[]}"#),
        "{text}"
    );
    let status = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = child.0.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "exit took {:?}",
        start.elapsed()
    );
    let log = std::fs::read_to_string(&log).unwrap();
    let after = log.split("shutting down").nth(1).unwrap_or("");
    assert!(
        !after.contains("WARN") && !after.contains("ERROR"),
        "noise at shutdown:\n{after}"
    );
}

#[test]
fn backup_verify_checks_a_file_and_names_what_is_wrong() {
    use swarmstate::domain::backup::{BackupKey, Writer};
    let dir = tempfile::tempdir().unwrap();
    let hex_key = "5a".repeat(32);
    let key = BackupKey::parse(&hex_key).unwrap();
    let mut w = Writer::new(Vec::new(), Some(&key)).unwrap();
    w.line(&serde_json::json!({"type": "manifest", "format": 1, "namespaces": []}))
        .unwrap();
    for i in 0..100 {
        w.line(&serde_json::json!({"type": "entry", "key": format!("k{i}")}))
            .unwrap();
    }
    let (bytes, _, _) = w.finish().unwrap();
    let good = dir.path().join("good.swsbak");
    std::fs::write(&good, &bytes).unwrap();
    let run = |file: &std::path::Path, key: Option<&str>, old: &[&str]| {
        let mut c = bin();
        c.args(["backup", "verify", "--file"])
            .arg(file)
            .env_remove("SWARMSTATE_BACKUP_KEY");
        if let Some(k) = key {
            c.env("SWARMSTATE_BACKUP_KEY", k);
        }
        for o in old {
            c.args(["--old-key", o]);
        }
        let out = c.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, out, _) = run(&good, Some(&hex_key), &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("101 content lines") && out.contains("\"manifest\""),
        "{out}"
    );
    // The key as an old one, with another current key.
    let (code, _, err) = run(&good, Some(&"11".repeat(32)), &[&hex_key]);
    assert_eq!(code, Some(0), "{err}");
    for (name, mutate, want) in [
        (
            "flipped",
            Box::new(|b: &mut Vec<u8>| {
                let m = b.len() / 2;
                b[m] ^= 4;
            }) as Box<dyn Fn(&mut Vec<u8>)>,
            "backup_tampered",
        ),
        (
            "cut",
            Box::new(|b: &mut Vec<u8>| b.truncate(b.len() - 7)),
            "backup_truncated",
        ),
        (
            "not one",
            Box::new(|b: &mut Vec<u8>| *b = b"hello".to_vec()),
            "backup_invalid",
        ),
    ] {
        let mut b = bytes.clone();
        mutate(&mut b);
        let f = dir.path().join("bad.swsbak");
        std::fs::write(&f, &b).unwrap();
        let (code, _, err) = run(&f, Some(&hex_key), &[]);
        assert_eq!(code, Some(1), "{name}: {err}");
        assert!(err.starts_with(want), "{name}: {err}");
    }
    let (code, _, err) = run(&good, Some(&"22".repeat(32)), &[]);
    assert_eq!(
        (code, err.starts_with("backup_key_mismatch")),
        (Some(1), true),
        "{err}"
    );
    let (code, _, err) = run(&good, None, &[]);
    assert_eq!(
        (code, err.starts_with("backup_key_missing")),
        (Some(1), true),
        "{err}"
    );
    let (code, _, err) = run(&good, Some("short"), &[]);
    assert_eq!(code, Some(2), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_create_and_restore_run_against_redis_and_print_json() {
    let src = crate::common::TestApp::start().await;
    for i in 0..20 {
        src.put(&format!("/v1/ns/cli-bk/kv/k{i}"), serde_json::json!({"value": i}))
            .await;
    }
    let url = crate::common::shared_redis_url();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cli.swsbak");
    let key = "3c".repeat(32);
    let run = |args: &[&str], prefix: &str| {
        let out = bin()
            .args(args)
            .args(["--redis-url", &url, "--key-prefix", prefix])
            .env("SWARMSTATE_BACKUP_KEY", &key)
            .env_remove("SWARMSTATE_CONFIG")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let f = file.to_str().unwrap();
    let (code, out, err) = run(
        &["backup", "create", "--file", f, "--namespaces", "cli-bk"],
        src.keys().prefix(),
    );
    assert_eq!(code, Some(0), "{err}");
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (m["namespaces"][0]["entries"].as_u64(), m["encrypted"].as_bool()),
        (Some(20), Some(true)),
        "{m}"
    );
    // Into another deployment (prefix): a dry run, then the restore.
    let other = crate::common::redis::unique_prefix();
    let (code, out, err) = run(
        &["backup", "restore", "--file", f, "--mode", "replace", "--dry-run"],
        &other,
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["restored"],
        20
    );
    let (code, out, err) = run(&["backup", "restore", "--file", f, "--mode", "replace"], &other);
    assert_eq!(code, Some(0), "{err}");
    let s: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (s["restored"].as_u64(), s["dry_run"].as_bool()),
        (Some(20), Some(false)),
        "{s}"
    );
    let client = crate::common::redis_client(&url).await;
    let rec: Option<String> = fred::interfaces::KeysInterface::get(
        &client,
        swarmstate::store::keys::Keys::new(&other)
            .ns("cli-bk")
            .entry("k7"),
    )
    .await
    .unwrap();
    assert!(rec.is_some_and(|r| r.ends_with("\n7")), "k7 restored");
    let (code, _, err) = run(&["backup", "restore", "--file", f, "--mode", "sideways"], &other);
    assert_eq!(code, Some(2), "{err}");
    std::fs::write(&file, b"nonsense").unwrap();
    let (code, _, err) = run(&["backup", "restore", "--file", f, "--mode", "merge"], &other);
    assert_eq!(
        (code, err.starts_with("backup_invalid")),
        (Some(1), true),
        "{err}"
    );
    src.stop().await;
}
