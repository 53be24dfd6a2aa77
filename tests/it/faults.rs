//! Faults under load (issue 11): the real binary and a redis-server with `appendfsync always`,
//! 8 compare-and-swap writers, Redis killed with SIGKILL and restarted, then the service killed
//! with SIGKILL and restarted — and not one acknowledged write lost: every write the service
//! answered 200/201 is in the final state's lineage and in the namespace change log, with its
//! value, and no write was applied twice.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::prelude::*;
use serde_json::{json, Value};

use crate::common::http::TestApp;
use crate::common::redis::unique_prefix;
use crate::common::{free_port, redis_client, RedisServer};

struct Service(Child);

impl Service {
    fn start(port: u16, redis: &str, prefix: &str) -> Service {
        let child = Command::new(env!("CARGO_BIN_EXE_swarmstate"))
            .arg("serve")
            .env("SWARMSTATE_LISTEN", format!("127.0.0.1:{port}"))
            .env("SWARMSTATE_REDIS_URL", redis)
            .env("SWARMSTATE_KEY_PREFIX", prefix)
            .env("SWARMSTATE_COMMAND_TIMEOUT_MS", "500")
            .env("SWARMSTATE_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the binary starts");
        Service(child)
    }

    fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn wait_ready(app: &TestApp) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if app
            .try_req("GET", "/readyz", None)
            .await
            .is_some_and(|r| r.status == 200)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("service not ready");
}

/// One writer: read the key, then PUT value+1 with If-Match; record what was acknowledged.
async fn writer(app: Arc<TestApp>, key: String, until: Instant, acked: Arc<Mutex<Vec<(String, u64, i64)>>>) {
    let path = format!("/v1/ns/faults/kv/{key}");
    while Instant::now() < until {
        let Some(cur) = app.try_req("GET", &path, None).await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if cur.status != 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let e = cur.json();
        let (ver, n) = (e["version"].as_u64().unwrap(), e["value"].as_i64().unwrap());
        let tag = format!("\"{ver}\"");
        let put = app
            .try_req_h("PUT", &path, &[("if-match", &tag)], Some(json!({"value": n + 1})))
            .await;
        if let Some(r) = put {
            if r.status == 200 {
                let e = r.json();
                acked
                    .lock()
                    .unwrap()
                    .push((key.clone(), e["version"].as_u64().unwrap(), n + 1));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_write_is_lost_when_redis_and_the_service_are_killed() {
    let mut redis = RedisServer::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    let prefix = unique_prefix();
    let port = free_port();
    let mut service = Service::start(port, &redis.url(), &prefix);
    let app = Arc::new(TestApp::remote(
        &format!("http://127.0.0.1:{port}"),
        &prefix,
        &redis.url(),
    ));
    wait_ready(&app).await;
    let keys: Vec<String> = (0..8).map(|i| format!("k{i}")).collect();
    for k in &keys {
        let r = app
            .try_req("PUT", &format!("/v1/ns/faults/kv/{k}"), Some(json!({"value": 0})))
            .await
            .unwrap();
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let acked = Arc::new(Mutex::new(Vec::new()));
    let until = Instant::now() + Duration::from_secs(6);
    let writers: Vec<_> = keys
        .iter()
        .map(|k| tokio::spawn(writer(app.clone(), k.clone(), until, acked.clone())))
        .collect();

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before_redis_kill = acked.lock().unwrap().len();
    redis.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis = tokio::task::spawn_blocking(move || {
        redis.restart();
        redis
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before_service_kill = acked.lock().unwrap().len();
    service.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    service = Service::start(port, &redis.url(), &prefix);
    wait_ready(&app).await;
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        before_redis_kill > 50,
        "writers made little progress: {before_redis_kill}"
    );
    assert!(
        acked.len() > before_service_kill,
        "no writes after the service restart"
    );

    // The final state: each key's value is its version - 1 (every write applied exactly once)
    // and at least its newest acknowledged version.
    let mut newest: HashMap<&str, u64> = HashMap::new();
    for (k, v, _) in &acked {
        let e = newest.entry(k.as_str()).or_default();
        *e = (*e).max(*v);
    }
    for k in &keys {
        let e = app
            .try_req("GET", &format!("/v1/ns/faults/kv/{k}"), None)
            .await
            .unwrap()
            .json();
        let ver = e["version"].as_u64().unwrap();
        assert_eq!(e["value"].as_i64().unwrap(), ver as i64 - 1, "{k}: {e}");
        assert!(
            ver >= newest.get(k.as_str()).copied().unwrap_or(1),
            "{k}: version {ver} behind an acknowledged write"
        );
    }
    // Every acknowledged write is in the change log with its version and value.
    let client = redis_client(&redis.url()).await;
    let log: Vec<(String, HashMap<String, String>)> = client
        .xrange(app.keys().ns("faults").log.clone(), "-", "+", None)
        .await
        .unwrap();
    let logged: std::collections::HashSet<(String, u64, String)> = log
        .into_iter()
        .filter(|(_, f)| f.get("k").map(String::as_str) == Some("put"))
        .map(|(_, f)| {
            (
                f["key"].clone(),
                f["ver"].parse().unwrap(),
                f.get("v").cloned().unwrap_or_default(),
            )
        })
        .collect();
    let lost: Vec<_> = acked
        .iter()
        .filter(|(k, v, n)| !logged.contains(&(k.clone(), *v, Value::from(*n).to_string())))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    eprintln!(
        "faults: {} acknowledged CAS writes by 8 writers over Redis SIGKILL + restart and service SIGKILL + restart, 0 lost",
        acked.len()
    );
    drop(service);
}
