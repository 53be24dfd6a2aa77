//! Redis access (DESIGN.md "Security", Redis side): `rediss://` with a private CA and a client
//! certificate against a real TLS redis-server, the README's minimal ACL user, and the embedded
//! redis-server's password.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fred::prelude::*;
use serde_json::{json, Value};
use swarmstate::app::Server;
use swarmstate::config::Config;

use crate::common::ws::{connect, next, send, sse_events};
use crate::common::{free_port, redis_client, test_config, RedisServer, TestApp};

/// What `Server::start` answered when it refused to start, and how long it took.
async fn start_error(cfg: Config) -> (String, Duration) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let t = Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(30), Server::start(cfg, listener, false))
        .await
        .expect("start-up neither succeeded nor gave up within 30 s");
    match res {
        Ok(s) => {
            s.shutdown().await;
            panic!("the service started")
        }
        Err(e) => (e, t.elapsed()),
    }
}

// --- TLS -----------------------------------------------------------------------------------

/// A CA, a server certificate for 127.0.0.1 / localhost and a client certificate signed by it,
/// and an unrelated CA, as PEM files in a temporary directory.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
            KeyPair, KeyUsagePurpose,
        };
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, pem).unwrap();
            p
        };
        let ca = |name: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.distinguished_name.push(DnType::CommonName, name);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
        };
        let leaf = |issuer: &CertifiedIssuer<'static, KeyPair>, sans: &[&str], cn: &str, usage| {
            let mut p =
                CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let authority = ca("swarmstate test CA");
        let (server_cert, server_key) = leaf(
            &authority,
            &["127.0.0.1", "localhost"],
            "redis",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client_cert, client_key) =
            leaf(&authority, &[], "swarmstate", ExtendedKeyUsagePurpose::ClientAuth);
        Pki {
            ca: write("ca.pem", authority.pem()),
            other_ca: write("other-ca.pem", ca("somebody else's CA").pem()),
            server_cert: write("server.pem", server_cert),
            server_key: write("server.key", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client.key", client_key),
            _dir: dir,
        }
    }
}

/// redis-server with TLS only (`--port 0`), client certificates required; killed on drop.
struct TlsRedis {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    fn start(pki: &Pki) -> TlsRedis {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--tls-auth-clients", "yes"])
            .arg("--tls-cert-file")
            .arg(&pki.server_cert)
            .arg("--tls-key-file")
            .arg(&pki.server_key)
            .arg("--tls-ca-cert-file")
            .arg(&pki.ca)
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = swarmstate::testkit::spawn_with_deathsig(cmd);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "TLS redis-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        TlsRedis {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// rediss:// with the CA and client certificate: KV round-trips and a change reaches an SSE
/// stream (the namespace's log reader runs on a dedicated connection, also TLS). Without the
/// client certificate, or trusting another CA, start-up stops at once with the TLS error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_and_a_client_certificate() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki);
    let cfg = Config {
        redis_tls_ca_file: Some(pki.ca.clone()),
        redis_tls_cert_file: Some(pki.client_cert.clone()),
        redis_tls_key_file: Some(pki.client_key.clone()),
        startup_timeout_ms: 5_000,
        ..test_config(&format!("rediss://127.0.0.1:{}", redis.port))
    };
    cfg.validate().expect("the PEM files are accepted");
    let app = TestApp::with_config(cfg.clone()).await;
    let (status, mut events) = app.stream("/v1/ns/tls/events?from_revision=0", &[]).await;
    assert_eq!(status, 200);
    let r = app.put("/v1/ns/tls/kv/k", json!({"value": "over TLS"})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = app.get("/v1/ns/tls/kv/k").await;
    assert_eq!(r.json()["value"], "over TLS");
    let got = sse_events(&mut events, 1, Duration::from_secs(5)).await;
    let put: Vec<_> = got.iter().filter(|e| e.1 == "put").collect();
    assert_eq!(put.len(), 1, "{got:?}");
    assert_eq!(put[0].2["key"], "k");
    let s = app.get("/v1/status").await.json();
    assert_eq!(s["redis_mode"], "standalone", "{s}");
    drop(events);
    app.stop().await;

    // The server requires a client certificate.
    let (err, took) = start_error(Config {
        redis_tls_cert_file: None,
        redis_tls_key_file: None,
        ..cfg.clone()
    })
    .await;
    assert!(err.starts_with("TLS with Redis at rediss://127.0.0.1:"), "{err}");
    assert!(err.contains("CertificateRequired"), "{err}");
    assert!(
        took < Duration::from_secs(3),
        "gave up only after {took:?}: {err}"
    );

    // The server's certificate does not chain to the CA we trust.
    let (err, took) = start_error(Config {
        redis_tls_ca_file: Some(pki.other_ca.clone()),
        ..cfg.clone()
    })
    .await;
    assert!(
        err.contains("UnknownIssuer") && err.contains("redis_tls_ca_file"),
        "{err}"
    );
    assert!(
        took < Duration::from_secs(3),
        "gave up only after {took:?}: {err}"
    );

    // A key that is not the certificate's is refused before any connection.
    let (err, _) = start_error(Config {
        redis_tls_key_file: Some(pki.server_key.clone()),
        ..cfg.clone()
    })
    .await;
    assert!(err.contains("redis_tls_cert_file / redis_tls_key_file"), "{err}");
}

// --- ACL -------------------------------------------------------------------------------------

/// The README's `ACL SETUSER` line, split into its arguments after the user name.
fn readme_acl_rules() -> Vec<String> {
    let readme = include_str!("../../README.md");
    let line = readme
        .lines()
        .find(|l| l.starts_with("ACL SETUSER swarmstate "))
        .expect("README.md has the `ACL SETUSER swarmstate …` line");
    line.split_whitespace().skip(3).map(String::from).collect()
}

/// The README's rules with `>CHANGE-ME` replaced by `password`.
fn with_password(rules: &[String], password: &str) -> Vec<String> {
    assert_eq!(
        rules.iter().filter(|r| *r == ">CHANGE-ME").count(),
        1,
        "the README line sets the password placeholder once: {rules:?}"
    );
    rules
        .iter()
        .map(|r| match r.as_str() {
            ">CHANGE-ME" => format!(">{password}"),
            _ => r.clone(),
        })
        .collect()
}

/// `ACL LOG` entries as (reason, object) pairs.
async fn acl_log(admin: &Client) -> Vec<(String, String)> {
    let entries: Value = admin.acl_log_count(Some(100)).await.unwrap();
    entries
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let field = |name: &str| {
                // RESP2 gives a flat [field, value, …] list, RESP3 a map.
                e.get(name)
                    .or_else(|| {
                        let a = e.as_array()?;
                        let i = a.iter().position(|v| v == name)?;
                        a.get(i + 1)
                    })
                    .and_then(|v| v.as_str())
                    .unwrap_or("?")
                    .to_string()
            };
            (field("reason"), field("object"))
        })
        .collect()
}

/// As the README's ACL user (key prefix `ss`, the README line's): KV, a watch, a queued task
/// leased and acked, a lock, an agent, a partition, a pub/sub message and `/v1/status` all work;
/// the keyspace relay reports itself inactive because CONFIG is denied, yet with the server's
/// own `notify-keyspace-events` it still relays another client's write; `ACL LOG` shows nothing
/// denied but CONFIG. A wrong password stops start-up at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_acl_user_is_enough() {
    let redis = RedisServer::start(&["--notify-keyspace-events", "Kg$xe"]);
    let admin = redis_client(&redis.url()).await;
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    admin
        .acl_setuser("swarmstate", with_password(&readme_acl_rules(), &password))
        .await
        .expect("the README's ACL SETUSER line is accepted");
    admin.acl_log_reset().await.unwrap();
    let url = format!("redis://swarmstate:{password}@127.0.0.1:{}", redis.port);
    let backups = tempfile::tempdir().unwrap();
    let cfg = Config {
        key_prefix: "ss".into(),
        backup_dir: Some(backups.path().to_path_buf()),
        ..test_config(&url)
    };
    let app = TestApp::with_config(cfg.clone()).await;

    // The relay: inactive, and it says why.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let r = app.get("/v1/status").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let s = r.json();
        if s["keyspace_relay"]["problem"].is_string() || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let relay = &status["keyspace_relay"];
    assert_eq!(relay["enabled"], true, "{status}");
    assert_eq!(relay["active"], false, "{status}");
    let problem = relay["problem"].as_str().unwrap_or_default();
    assert!(
        problem.contains("NOPERM") && problem.contains("config"),
        "{status}"
    );
    assert!(status["notify_keyspace_events"].is_null(), "{status}");
    assert_eq!(
        status["schema_version"],
        swarmstate::store::migrate::SCHEMA_VERSION,
        "{status}"
    );

    // KV and a watch (XREAD on a dedicated connection).
    let mut ws = connect(&app).await;
    send(&mut ws, json!({"op": "watch", "id": "w", "namespace": "acl"})).await;
    assert_eq!(
        next(&mut ws, Duration::from_secs(5)).await.unwrap()["type"],
        "progress"
    );
    let r = app
        .put("/v1/ns/acl/kv/k", json!({"value": {"n": 1}, "ttl_ms": 60_000}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(app.get("/v1/ns/acl/kv/k").await.json()["value"], json!({"n": 1}));
    let r = app.get("/v1/ns/acl/kv?prefix=k").await;
    assert_eq!(r.json()["items"][0]["key"], "k", "{}", r.text());
    let event = loop {
        let m = next(&mut ws, Duration::from_secs(5))
            .await
            .expect("a watch event");
        if m["type"] == "event" {
            break m["event"].clone();
        }
    };
    assert_eq!(
        (event["kind"].as_str(), event["key"].as_str()),
        (Some("put"), Some("k"))
    );

    // Another client's write to an entry key: the server's own notify-keyspace-events feed
    // the relay's subscription (allowed by the `&__keyspace@*__:…` pattern).
    let _: () = admin
        .set(
            app.keys().ns("acl").entry("foreign"),
            "\"from redis-cli\"",
            None,
            None,
            false,
        )
        .await
        .unwrap();
    let event = loop {
        let m = next(&mut ws, Duration::from_secs(10))
            .await
            .expect("the external event");
        if m["type"] == "event" {
            break m["event"].clone();
        }
    };
    assert_eq!(
        (event["kind"].as_str(), event["key"].as_str()),
        (Some("external"), Some("foreign")),
        "{event}"
    );

    // A queued task, leased and acked.
    let r = app
        .post("/v1/queues/jobs/tasks", json!({"payload": {"url": "x"}}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = app
        .post(
            "/v1/queues/jobs/lease",
            json!({"worker": "w1", "lease_ms": 30_000}),
        )
        .await;
    let lease = r.json();
    assert_eq!(lease["tasks"][0]["payload"], json!({"url": "x"}), "{lease}");
    let token = lease["tasks"][0]["lease_token"].as_str().unwrap();
    let id = lease["tasks"][0]["id"].as_str().unwrap();
    let r = app
        .post(
            &format!("/v1/queues/jobs/tasks/{id}/ack"),
            json!({"lease_token": token}),
        )
        .await;
    assert_eq!(r.json()["state"], "completed", "{}", r.text());

    // Pub/sub: a subscriber, then a message (and the lock events, on the same channels).
    send(
        &mut ws,
        json!({"op": "subscribe", "id": "s", "channel": "*.door"}),
    )
    .await;
    loop {
        let m = next(&mut ws, Duration::from_secs(5)).await.expect("subscribed");
        if m["type"] == "subscribed" {
            break;
        }
    }
    let r = app
        .post(
            "/v1/channels/front.door/publish",
            json!({"message": {"knock": 1}}),
        )
        .await;
    assert_eq!(r.json()["receivers"], 1, "{}", r.text());

    // A lock, acquired and released (the release is published to wake waiters).
    let r = app
        .post("/v1/ns/acl/locks/door", json!({"owner": "a", "ttl_ms": 5_000}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let lock_token = r.json()["token"].as_str().unwrap().to_string();
    let r = app
        .req(
            "DELETE",
            "/v1/ns/acl/locks/door",
            &[("x-lock-token", &lock_token)],
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let mut messages = Vec::new();
    while let Some(m) = next(&mut ws, Duration::from_millis(700)).await {
        if m["type"] == "message" {
            messages.push((m["channel"].clone(), m["payload"]["event"].clone()));
        }
    }
    assert_eq!(
        messages,
        [
            (json!("front.door"), Value::Null),
            (json!("locks.acl.door"), json!("acquired")),
            (json!("locks.acl.door"), json!("released"))
        ]
    );

    // An agent and a partition.
    let r = app
        .put(
            "/v1/agents/a1",
            json!({"capabilities": ["plan"], "heartbeat_ttl_ms": 60_000}),
        )
        .await;
    assert!(r.status == 200 || r.status == 201, "{}", r.text());
    let r = app
        .post(
            "/v1/partitions",
            json!({"name": "p1", "owner_agent": "a1", "quota_bytes": 1000, "tier": "shared"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());

    // A backup of everything (namespaces, the partition, the queue), restored over itself.
    let r = app.post("/v1/backups", json!({})).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let b = loop {
        let b = app.get(&format!("/v1/backups/{id}")).await.json();
        if b["status"] != "running" || Instant::now() > deadline {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(b["status"], "succeeded", "{b}");
    assert!(
        b["queues"]
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["queue"] == "jobs"),
        "{b}"
    );
    let r = app
        .post(&format!("/v1/backups/{id}/restore"), json!({"mode": "replace"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // Background tasks ran meanwhile (relay checks, reconcilers): nothing but CONFIG denied.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = acl_log(&admin).await;
    assert!(log.iter().any(|(_, object)| object == "config|get"), "{log:?}");
    assert!(
        log.iter()
            .all(|(reason, object)| reason == "command" && object.starts_with("config|")),
        "denied besides CONFIG: {log:?}"
    );
    assert_eq!(app.get("/healthz").await.status, 200);
    assert_eq!(app.get("/readyz").await.status, 200);

    // The rules bite: the user cannot reach keys outside the prefix.
    let _: () = admin.set("other:secret", "x", None, None, false).await.unwrap();
    let as_user = app.redis().await;
    let denied = as_user
        .get::<Option<String>, _>("other:secret")
        .await
        .unwrap_err();
    assert!(denied.details().contains("NOPERM"), "{denied:?}");
    as_user.quit().await.unwrap();
    app.stop().await;

    // A wrong password: refused at once, with a message about the password / ACL user.
    let (err, took) = start_error(Config {
        redis_url: Some(url.replace(&password, "not-the-password")),
        ..cfg
    })
    .await;
    assert!(
        err.contains("password") && err.contains("swarmstate:***@"),
        "{err}"
    );
    assert!(
        !err.contains("not-the-password"),
        "the password is in the message: {err}"
    );
    assert!(
        took < Duration::from_secs(2),
        "gave up only after {took:?}: {err}"
    );
}

// --- Embedded redis-server -----------------------------------------------------------------

/// A raw RESP exchange: send `commands` (inline), read until one reply line per command.
fn resp(port: u16, commands: &[&str]) -> Vec<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for c in commands {
        write!(s, "{c}\r\n").unwrap();
    }
    let mut got = String::new();
    let mut buf = [0u8; 512];
    while got.matches("\r\n").count() < commands.len() {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "connection closed after {got:?}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    got.lines().map(String::from).collect()
}

fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string()))
}

/// `swarmstate serve` on the embedded redis-server, logging to `log`; killed on drop.
struct Service(Child);

impl Service {
    fn start(data: &Path, port: u16, log: &Path) -> Service {
        let child = Command::new(env!("CARGO_BIN_EXE_swarmstate"))
            .arg("serve")
            .env("SWARMSTATE_LISTEN", format!("127.0.0.1:{port}"))
            .env("SWARMSTATE_DATA_DIR", data)
            .env("SWARMSTATE_LOG", "info")
            .env_remove("SWARMSTATE_REDIS_URL")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let service = Service(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while http(port, "GET", "/readyz", "").map(|r| r.0) != Some(200) {
            assert!(
                Instant::now() < deadline,
                "service not ready: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        service
    }

    /// SIGTERM and wait for a clean exit.
    fn stop(mut self) {
        // SAFETY: a signal to our own child.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                assert!(status.success(), "{status:?}");
                return;
            }
            assert!(Instant::now() < deadline, "did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The port of the embedded redis-server, from the service's start-up log line.
fn embedded_port(log: &Path) -> u16 {
    let text = std::fs::read_to_string(log).unwrap();
    let line = text
        .lines()
        .rfind(|l| l.contains("embedded redis-server started"))
        .unwrap_or_else(|| panic!("no start-up line in the log:\n{text}"));
    let after = line.split("port=").nth(1).expect("port= in the line");
    after
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// The embedded redis-server requires the random password kept in `<data_dir>/redis/password`
/// (0600): a client without it gets NOAUTH, one with it gets in; the service works; the
/// password is on no command line and in no log line; a restart keeps it (and the data).
#[test]
fn the_embedded_redis_server_requires_the_password_from_its_file() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = data.path().join("service.log");
    let service = Service::start(data.path(), port, &log);

    let dir = data.path().join("redis");
    let file = dir.join("password");
    assert_eq!(mode(&file), 0o600, "password file mode");
    assert_eq!(mode(&dir.join("redis.conf")), 0o600, "redis.conf mode");
    assert_eq!(mode(&dir), 0o700, "<data_dir>/redis mode");
    let password = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert_eq!(password.len(), 64, "{password}");
    assert!(password.bytes().all(|b| b.is_ascii_hexdigit()), "{password}");

    let redis_port = embedded_port(&log);
    let anonymous = resp(redis_port, &["PING", "GET ss:schema"]);
    assert!(
        anonymous.iter().all(|l| l.starts_with("-NOAUTH")),
        "without the password: {anonymous:?}"
    );
    let wrong = resp(redis_port, &["AUTH 00", "PING"]);
    assert!(wrong[0].starts_with("-WRONGPASS"), "{wrong:?}");
    let authed = resp(redis_port, &[&format!("AUTH {password}"), "PING"]);
    assert_eq!(authed, ["+OK", "+PONG"]);

    assert_eq!(
        http(port, "PUT", "/v1/ns/emb/kv/a", r#"{"value": "kept"}"#).map(|r| r.0),
        Some(201)
    );
    let (status, body) = http(port, "GET", "/v1/ns/emb/kv/a", "").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"kept\""), "{body}");

    // Not on any command line (`ps` shows those to every local user).
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            assert!(
                !String::from_utf8_lossy(&cmdline).contains(&password),
                "the password is on the command line of {:?}",
                entry.path()
            );
        }
    }
    service.stop();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(&password), "the password is in the log:\n{text}");
    assert!(text.contains("redis://:***@127.0.0.1:"), "{text}");

    // A restart reuses the password file, so the data (and the same password) are still there.
    let port = free_port();
    let service = Service::start(data.path(), port, &log);
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), password);
    let (status, body) = http(port, "GET", "/v1/ns/emb/kv/a", "").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"kept\""), "{body}");
    let authed = resp(embedded_port(&log), &[&format!("AUTH {password}"), "PING"]);
    assert_eq!(authed, ["+OK", "+PONG"]);
    service.stop();
}

/// A deployment that kept the ACL of a release before backups (no list commands): queue
/// operations go on working (the change list a capture reads is skipped), and a backup that
/// needs the list fails with its reason in the record instead of breaking anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_work_under_the_acl_of_a_release_before_backups() {
    let redis = RedisServer::start(&[]);
    let admin = redis_client(&redis.url()).await;
    let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
    let before: Vec<String> = readme_acl_rules()
        .into_iter()
        .filter(|r| !["+rpush", "+rpushx", "+llen", "+lrange", "+pexpire"].contains(&r.as_str()))
        .collect();
    admin
        .acl_setuser("swarmstate", with_password(&before, &password))
        .await
        .unwrap();
    let url = format!("redis://swarmstate:{password}@127.0.0.1:{}", redis.port);
    let backups = tempfile::tempdir().unwrap();
    let cfg = Config {
        key_prefix: "ss".into(),
        backup_dir: Some(backups.path().to_path_buf()),
        ..test_config(&url)
    };
    let app = TestApp::with_config(cfg).await;
    let r = app.post("/v1/queues/old/tasks", json!({"payload": 1})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = app
        .post("/v1/queues/old/lease", json!({"worker": "w", "lease_ms": 30_000}))
        .await;
    let t = r.json()["tasks"][0].clone();
    let r = app
        .post(
            &format!("/v1/queues/old/tasks/{}/ack", t["id"].as_str().unwrap()),
            json!({"lease_token": t["lease_token"]}),
        )
        .await;
    assert_eq!(r.json()["state"], "completed", "{}", r.text());
    let r = app.post("/v1/backups", json!({"queues": ["old"]})).await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let b = loop {
        let b = app.get(&format!("/v1/backups/{id}")).await.json();
        if b["status"] != "running" || Instant::now() > deadline {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(b["status"], "failed", "{b}");
    // The reason (NOPERM on RPUSH) is in the service's log; the record says it failed.
    assert!(b["error"]["code"].is_string(), "{b}");
    // And the queue still works after the failed capture.
    let r = app.post("/v1/queues/old/tasks", json!({"payload": 2})).await;
    assert_eq!(r.status, 201, "{}", r.text());
}
