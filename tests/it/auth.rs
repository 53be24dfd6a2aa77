//! Bearer tokens as users meet them: 401 on every protected route (walked from the router's
//! own OpenAPI document), public routes open, scopes and permissions (403 naming what is
//! missing), agent binding, WebSocket and SSE with the header or `?access_token=`, filtered
//! listings, rate budgets (429 and the RateLimit headers), tokens file reloads, the
//! non-loopback refusal and `swarmstate token new`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use swarmstate::domain::auth::sha256_hex;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::common::ws::{next, send, Ws};
use crate::common::{shared_redis_url, test_config, TestApp};

const READ: &str = "tok-read-all";
const APP: &str = "tok-write-app";
const AGENT: &str = "tok-agent-a";
const ADMIN: &str = "tok-admin";
const LIMITED: &str = "tok-limited";

/// A tokens file: `(secret, entry body without sha256)`.
fn tokens_toml(entries: &[(&str, &str)]) -> String {
    entries
        .iter()
        .map(|(secret, body)| format!("[[token]]\nsha256 = \"{}\"\n{body}\n", sha256_hex(secret)))
        .collect()
}

fn standard_tokens() -> String {
    tokens_toml(&[
        (READ, "name = \"reader\"\nnamespaces = [\"*\"]\nqueues = [\"*\"]\nchannels = [\"*\"]\npermission = \"read\""),
        (
            APP,
            "name = \"app\"\nnamespaces = [\"app*\"]\nqueues = [\"jobs\", \"crawl-*\"]\nchannels = [\"build.*\"]\npermission = \"write\"",
        ),
        (
            AGENT,
            "name = \"agent-a\"\nnamespaces = [\"app*\"]\nqueues = [\"jobs\"]\npermission = \"write\"\nagents = [\"a-*\"]",
        ),
        (ADMIN, "name = \"admin\"\nnamespaces = [\"*\"]\nqueues = [\"*\"]\nchannels = [\"*\"]\npermission = \"admin\""),
        (LIMITED, "name = \"limited\"\nnamespaces = [\"*\"]\npermission = \"read\"\nrate_per_sec = 5"),
    ])
}

struct Secured {
    app: TestApp,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

async fn secured_with(toml: &str, edit: impl FnOnce(&mut swarmstate::config::Config)) -> Secured {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.toml");
    std::fs::write(&file, toml).unwrap();
    let mut cfg = test_config(&shared_redis_url());
    cfg.tokens_file = Some(file.clone());
    edit(&mut cfg);
    Secured {
        app: TestApp::with_config(cfg).await,
        file,
        _dir: dir,
    }
}

async fn secured() -> Secured {
    secured_with(&standard_tokens(), |_| {}).await
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

impl Secured {
    async fn call(
        &self,
        token: &str,
        method: &str,
        path: impl AsRef<str>,
        body: Option<Value>,
    ) -> crate::common::Resp {
        let path = path.as_ref();
        let auth = bearer(token);
        let body = body.map(|b| b.to_string());
        self.app
            .req(
                method,
                path,
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                ],
                body.as_deref().map(str::as_bytes),
            )
            .await
    }
}

/// A concrete path for a route template, with valid names in every parameter.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|s| match s {
            "{ns}" | "{queue}" | "{channel}" | "{name}" => "app",
            "{key}" => "k",
            "{id}" if template.starts_with("/v1/queues/") => "1",
            "{id}" => "a-1",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn every_protected_route_answers_401_without_a_token_and_the_public_ones_stay_open() {
    let s = secured_with(&standard_tokens(), |c| c.metrics_public = true).await;
    let doc = swarmstate::http::openapi();
    let public = ["/healthz", "/readyz", "/metrics"];
    let mut protected = 0;
    for (template, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let path = concrete(template);
            let m = method.to_uppercase();
            let none = s
                .app
                .req(&m, &path, &[("content-type", "application/json")], Some(b"{}"))
                .await;
            if public.contains(&template.as_str()) {
                assert_ne!(none.status, 401, "{m} {template} is public");
                continue;
            }
            protected += 1;
            let p = none.problem(401, "unauthorized");
            assert!(
                none.header("www-authenticate")
                    .unwrap_or_default()
                    .starts_with("Bearer"),
                "{m} {template}: {p}"
            );
            let wrong = s
                .app
                .req(
                    &m,
                    &path,
                    &[
                        ("authorization", "Bearer nope"),
                        ("content-type", "application/json"),
                    ],
                    Some(b"{}"),
                )
                .await;
            wrong.problem(401, "unauthorized");
            let basic = s
                .app
                .req(&m, &path, &[("authorization", "Basic YTpi")], None)
                .await;
            basic.problem(401, "unauthorized");
            // The spec says so too.
            assert!(
                doc["paths"][template][method]["responses"]["401"].is_object(),
                "{m} {template}"
            );
            assert!(doc["paths"][template][method]["security"]
                .as_array()
                .is_some_and(|a| !a.is_empty()));
        }
    }
    assert!(protected > 40, "walked only {protected} protected operations");
    for path in ["/healthz", "/readyz", "/openapi.json", "/docs/", "/metrics"] {
        assert_eq!(s.app.get(path).await.status, 200, "{path}");
    }
}

#[tokio::test]
async fn metrics_need_a_token_when_not_public() {
    let s = secured_with(&standard_tokens(), |c| c.metrics_public = false).await;
    s.app.get("/metrics").await.problem(401, "unauthorized");
    assert_eq!(s.call(READ, "GET", "/metrics", None).await.status, 200);
    assert_eq!(s.app.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn permissions_and_namespace_globs() {
    let s = secured().await;
    let put = |t: &'static str, ns: &'static str| {
        s.call(t, "PUT", format!("/v1/ns/{ns}/kv/k"), Some(json!({"value": 1})))
    };
    assert_eq!(put(APP, "app").await.status, 201);
    assert_eq!(put(APP, "app2").await.status, 201);
    let p = put(APP, "other").await.problem(403, "forbidden");
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains("namespace `other`"), "{detail}");
    assert!(
        !detail.contains(APP) && !detail.contains(&sha256_hex(APP)),
        "{detail}"
    );
    // A read token reads everything, writes nothing.
    assert_eq!(s.call(READ, "GET", "/v1/ns/app/kv/k", None).await.status, 200);
    let p = put(READ, "app").await.problem(403, "forbidden");
    assert!(p["detail"].as_str().unwrap().contains("write"), "{p}");
    s.call(READ, "DELETE", "/v1/ns/app/kv/k", None)
        .await
        .problem(403, "forbidden");
    s.call(
        READ,
        "POST",
        "/v1/ns/app/txn",
        Some(json!({"compare": [], "success": [{"op": "put", "key": "x", "value": 1}]})),
    )
    .await
    .problem(403, "forbidden");
    // Reads outside the scope are 403 too (not 404: the caller learns nothing of the data).
    s.call(APP, "GET", "/v1/ns/other/kv/k", None)
        .await
        .problem(403, "forbidden");
    // Partitions and the pool are admin's; a write token may not create one.
    let part = json!({"name": "app-mem", "owner_agent": "a-1", "quota_bytes": 65536, "tier": "working"});
    s.call(APP, "POST", "/v1/partitions", Some(part.clone()))
        .await
        .problem(403, "forbidden");
    s.call(APP, "GET", "/v1/pool", None)
        .await
        .problem(403, "forbidden");
    let created = s.call(ADMIN, "POST", "/v1/partitions", Some(part)).await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(
        s.call(APP, "GET", "/v1/partitions/app-mem", None).await.status,
        200
    );
    s.call(APP, "DELETE", "/v1/partitions/app-mem", None)
        .await
        .problem(403, "forbidden");
    assert_eq!(
        s.call(ADMIN, "DELETE", "/v1/partitions/app-mem", None)
            .await
            .status,
        204
    );
}

#[tokio::test]
async fn queue_and_channel_globs() {
    let s = secured().await;
    let task = json!({"payload": {"n": 1}});
    assert_eq!(
        s.call(APP, "POST", "/v1/queues/jobs/tasks", Some(task.clone()))
            .await
            .status,
        201
    );
    assert_eq!(
        s.call(APP, "POST", "/v1/queues/crawl-eu/tasks", Some(task.clone()))
            .await
            .status,
        201
    );
    s.call(APP, "POST", "/v1/queues/other/tasks", Some(task.clone()))
        .await
        .problem(403, "forbidden");
    s.call(READ, "POST", "/v1/queues/jobs/tasks", Some(task))
        .await
        .problem(403, "forbidden");
    assert_eq!(s.call(READ, "GET", "/v1/queues/jobs", None).await.status, 200);
    let msg = json!({"message": {"hi": 1}});
    assert_eq!(
        s.call(APP, "POST", "/v1/channels/build.1/publish", Some(msg.clone()))
            .await
            .status,
        200
    );
    s.call(APP, "POST", "/v1/channels/deploy.1/publish", Some(msg.clone()))
        .await
        .problem(403, "forbidden");
    // The service's own channels follow what they describe: lock events of `other` are not
    // this token's to publish (nor to read).
    s.call(APP, "POST", "/v1/channels/locks.other.x/publish", Some(msg))
        .await
        .problem(403, "forbidden");
}

#[tokio::test]
async fn a_token_bound_to_agents_cannot_act_as_another() {
    let s = secured().await;
    let reg = |id: &str| {
        s.call(
            AGENT,
            "PUT",
            format!("/v1/agents/{id}"),
            Some(json!({"capabilities": []})),
        )
    };
    assert!([200, 201].contains(&reg("a-1").await.status));
    reg("b-1").await.problem(403, "forbidden");
    assert_eq!(
        s.call(AGENT, "POST", "/v1/agents/a-1/heartbeat", None)
            .await
            .status,
        200
    );
    // b-1 exists (registered by an unbound token) but a-* may not heartbeat for it.
    assert!([200, 201].contains(
        &s.call(ADMIN, "PUT", "/v1/agents/b-1", Some(json!({})))
            .await
            .status
    ));
    // A write token without `agents` has no agents of its own: it may not re-register b-1 or
    // change its state (terminating it would free its locks and leases anywhere).
    s.call(APP, "PUT", "/v1/agents/b-1", Some(json!({})))
        .await
        .problem(403, "forbidden");
    s.call(
        APP,
        "POST",
        "/v1/agents/b-1/state",
        Some(json!({"state": "ready"})),
    )
    .await
    .problem(403, "forbidden");
    s.call(AGENT, "POST", "/v1/agents/b-1/heartbeat", None)
        .await
        .problem(403, "forbidden");
    s.call(
        AGENT,
        "POST",
        "/v1/agents/b-1/state",
        Some(json!({"state": "ready"})),
    )
    .await
    .problem(403, "forbidden");
    // Admin may change another agent's state.
    assert_eq!(
        s.call(
            ADMIN,
            "POST",
            "/v1/agents/b-1/state",
            Some(json!({"state": "ready"}))
        )
        .await
        .status,
        200
    );
    // Reading presence is a read.
    assert_eq!(s.call(AGENT, "GET", "/v1/agents/b-1", None).await.status, 200);
    // Leases, locks and x-agent-id.
    s.call(APP, "POST", "/v1/queues/jobs/tasks", Some(json!({"payload": 1})))
        .await;
    let lease = |w: &str| {
        s.call(
            AGENT,
            "POST",
            "/v1/queues/jobs/lease",
            Some(json!({"worker": w, "lease_ms": 30000})),
        )
    };
    lease("b-1").await.problem(403, "forbidden");
    assert_eq!(lease("a-1").await.status, 200);
    let lock = |o: &str| {
        s.call(
            AGENT,
            "POST",
            "/v1/ns/app/locks/l1",
            Some(json!({"owner": o, "ttl_ms": 10000})),
        )
    };
    lock("b-1").await.problem(403, "forbidden");
    assert_eq!(lock("a-1").await.status, 200);
    let auth = bearer(AGENT);
    let as_b = s
        .app
        .req(
            "PUT",
            "/v1/ns/app/kv/who",
            &[("authorization", &auth), ("x-agent-id", "b-1")],
            Some(br#"{"value":1}"#),
        )
        .await;
    as_b.problem(403, "forbidden");
    let as_a = s
        .app
        .req(
            "PUT",
            "/v1/ns/app/kv/who",
            &[("authorization", &auth), ("x-agent-id", "a-7")],
            Some(br#"{"value":1}"#),
        )
        .await;
    assert_eq!(as_a.status, 201);
    assert_eq!(as_a.json()["agent_id"], "a-7");
}

#[tokio::test]
async fn listings_show_only_what_the_token_may_read() {
    let s = secured().await;
    for ns in ["app", "app2", "other"] {
        assert_eq!(
            s.call(
                ADMIN,
                "PUT",
                &format!("/v1/ns/{ns}/kv/k"),
                Some(json!({"value": 1}))
            )
            .await
            .status,
            201
        );
    }
    for q in ["jobs", "other"] {
        s.call(
            ADMIN,
            "POST",
            &format!("/v1/queues/{q}/tasks"),
            Some(json!({"payload": 1})),
        )
        .await;
    }
    let names = |r: crate::common::Resp, field: &str| -> Vec<String> {
        r.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i[field].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(s.call(APP, "GET", "/v1/namespaces", None).await, "namespace"),
        ["app", "app2"]
    );
    assert_eq!(
        names(s.call(READ, "GET", "/v1/namespaces", None).await, "namespace"),
        ["app", "app2", "other"]
    );
    // Pages stay full: filtering happens before paging.
    let page = s.call(APP, "GET", "/v1/namespaces?limit=1", None).await.json();
    assert_eq!(page["items"][0]["namespace"], "app");
    assert!(page["next_cursor"].is_string());
    assert_eq!(
        names(s.call(APP, "GET", "/v1/queues", None).await, "queue"),
        ["jobs"]
    );
}

fn ws_request(
    app: &TestApp,
    query: &str,
    header: Option<&str>,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let url = format!("{}/v1/watch{query}", app.base.replace("http://", "ws://"));
    let mut req = url.into_client_request().unwrap();
    if let Some(t) = header {
        req.headers_mut()
            .insert("authorization", bearer(t).parse().unwrap());
    }
    req
}

async fn ws(app: &TestApp, query: &str, header: Option<&str>) -> Result<Ws, u16> {
    match tokio_tungstenite::connect_async(ws_request(app, query, header)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

/// The next frame that is not `progress`.
async fn next_frame(ws: &mut Ws) -> Value {
    loop {
        let f = next(ws, Duration::from_secs(5))
            .await
            .expect("a frame within 5 s");
        if f["type"] != "progress" {
            return f;
        }
    }
}

#[tokio::test]
async fn websocket_with_header_or_access_token_and_forbidden_frames() {
    let s = secured().await;
    assert_eq!(ws(&s.app, "", None).await.err(), Some(401));
    assert_eq!(ws(&s.app, "?access_token=nope", None).await.err(), Some(401));
    for (i, (query, header)) in [(String::new(), Some(APP)), (format!("?access_token={APP}"), None)]
        .into_iter()
        .enumerate()
    {
        let mut w = ws(&s.app, &query, header).await.expect("upgrade");
        send(&mut w, json!({"op": "watch", "id": "x", "namespace": "other"})).await;
        let f = next_frame(&mut w).await;
        assert_eq!(
            (f["type"].as_str(), f["id"].as_str(), f["code"].as_str()),
            (Some("error"), Some("x"), Some("forbidden")),
            "{f}"
        );
        // The socket stays open and an allowed watch works (replaying from the start, so the
        // write cannot slip in before the watch is live).
        send(
            &mut w,
            json!({"op": "watch", "id": "w", "namespace": "app", "from_revision": 0}),
        )
        .await;
        let key = format!("seen-{i}");
        s.call(
            APP,
            "PUT",
            format!("/v1/ns/app/kv/{key}"),
            Some(json!({"value": 1})),
        )
        .await;
        loop {
            let f = next_frame(&mut w).await;
            assert_eq!(f["type"], "event", "{f}");
            if f["event"]["key"] == key.as_str() {
                break;
            }
        }
        send(&mut w, json!({"op": "subscribe", "id": "s1", "channel": "*"})).await;
        assert_eq!(next_frame(&mut w).await["code"], "forbidden");
        send(&mut w, json!({"op": "queue", "id": "q1", "queue": "other"})).await;
        assert_eq!(next_frame(&mut w).await["code"], "forbidden");
        send(
            &mut w,
            json!({"op": "subscribe", "id": "s2", "channel": "build.*"}),
        )
        .await;
        assert_eq!(next_frame(&mut w).await["type"], "subscribed");
        send(&mut w, json!({"op": "ping"})).await;
        assert_eq!(next_frame(&mut w).await["type"], "pong");
    }
}

#[tokio::test]
async fn service_channels_reach_only_the_namespaces_in_scope() {
    let s = secured().await;
    let mut w = ws(&s.app, "", Some(APP)).await.unwrap();
    send(
        &mut w,
        json!({"op": "subscribe", "id": "l", "channel": "locks.*"}),
    )
    .await;
    assert_eq!(next_frame(&mut w).await["type"], "subscribed");
    for ns in ["other", "app"] {
        let r = s
            .call(
                ADMIN,
                "POST",
                &format!("/v1/ns/{ns}/locks/l1"),
                Some(json!({"owner": "x", "ttl_ms": 5000})),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    let f = next_frame(&mut w).await;
    assert_eq!(f["channel"], "locks.app.l1", "{f}");
    assert!(next(&mut w, Duration::from_millis(500))
        .await
        .is_none_or(|f| f["type"] == "progress"));
}

#[tokio::test]
async fn sse_takes_the_header_or_access_token() {
    let s = secured().await;
    assert_eq!(s.app.stream("/v1/ns/app/events", &[]).await.0, 401);
    assert_eq!(
        s.app
            .stream(&format!("/v1/ns/other/events?access_token={APP}"), &[])
            .await
            .0,
        403
    );
    let (status, mut body) = s
        .app
        .stream(
            &format!("/v1/ns/app/events?access_token={APP}&from_revision=0"),
            &[],
        )
        .await;
    assert_eq!(status, 200);
    s.call(APP, "PUT", "/v1/ns/app/kv/sse", Some(json!({"value": 1})))
        .await;
    let evs = crate::common::ws::sse_events(&mut body, 1, Duration::from_secs(5)).await;
    assert!(evs.iter().any(|e| e.1 == "put" && e.2["key"] == "sse"), "{evs:?}");
    let auth = bearer(READ);
    assert_eq!(
        s.app
            .stream("/v1/queues/jobs/events", &[("authorization", &auth)])
            .await
            .0,
        200
    );
    // access_token is for the stream routes only.
    s.app
        .get(&format!("/v1/ns/app/kv/sse?access_token={APP}"))
        .await
        .problem(401, "unauthorized");
}

#[tokio::test]
async fn a_token_over_its_rate_gets_429_with_headers_then_recovers() {
    let s = secured().await;
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..30 {
        let r = s.call(LIMITED, "GET", "/v1/namespaces", None).await;
        assert_eq!(
            r.header("ratelimit-limit").as_deref(),
            Some("5"),
            "status {}",
            r.status
        );
        assert!(r.header("ratelimit-remaining").is_some() && r.header("ratelimit-reset").is_some());
        statuses.push(r.status);
        if r.status == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.unwrap_or_else(|| panic!("never limited: {statuses:?}"));
    // The burst is twice the rate.
    assert!(
        statuses.iter().filter(|s| **s == 200).count() >= 10,
        "{statuses:?}"
    );
    r.problem(429, "rate_limited");
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait));
    assert_eq!(r.header("ratelimit-remaining").as_deref(), Some("0"));
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(s.call(LIMITED, "GET", "/v1/namespaces", None).await.status, 200);
    // Another token is not affected; a token without a budget gets no RateLimit headers.
    let other = s.call(READ, "GET", "/v1/namespaces", None).await;
    assert_eq!(other.status, 200);
    assert!(other.header("ratelimit-limit").is_none());
}

#[tokio::test]
async fn a_per_agent_budget_limits_one_agent_id() {
    let s = secured_with(&standard_tokens(), |c| c.agent_rate_per_sec = Some(2)).await;
    let auth = bearer(APP);
    let mut codes = Vec::new();
    for _ in 0..10 {
        let r = s
            .app
            .req(
                "GET",
                "/v1/ns/app/kv/k",
                &[("authorization", &auth), ("x-agent-id", "busy")],
                None,
            )
            .await;
        codes.push(r.status);
    }
    assert!(codes.contains(&429), "{codes:?}");
    // Another agent id has its own budget.
    let r = s
        .app
        .req(
            "GET",
            "/v1/ns/app/kv/k",
            &[("authorization", &auth), ("x-agent-id", "calm")],
            None,
        )
        .await;
    assert_ne!(r.status, 429);
}

#[tokio::test]
async fn the_tokens_file_is_reloaded_without_a_restart_or_dropped_sockets() {
    let s = secured().await;
    let mut reader = ws(&s.app, "", Some(READ)).await.unwrap();
    let mut removed = ws(&s.app, "", Some(APP)).await.unwrap();
    send(
        &mut removed,
        json!({"op": "watch", "id": "live", "namespace": "app"}),
    )
    .await;
    assert_eq!(
        next(&mut removed, Duration::from_secs(5)).await.unwrap()["type"],
        "progress"
    );
    const NEW: &str = "tok-new";
    s.call(NEW, "GET", "/v1/namespaces", None)
        .await
        .problem(401, "unauthorized");
    // READ stays as it was, APP is removed, NEW added.
    let toml = tokens_toml(&[
        (READ, "name = \"reader\"\nnamespaces = [\"*\"]\nqueues = [\"*\"]\nchannels = [\"*\"]\npermission = \"read\""),
        (NEW, "name = \"new\"\nnamespaces = [\"*\"]\npermission = \"write\""),
    ]);
    std::fs::write(&s.file, toml).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.call(NEW, "GET", "/v1/namespaces", None).await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "the new token was not picked up within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.call(APP, "GET", "/v1/namespaces", None)
        .await
        .problem(401, "unauthorized");
    // The removed token's running watch ends with `unauthorized`; it may start nothing new;
    // the socket itself stays open.
    let f = next_frame(&mut removed).await;
    assert_eq!(
        (f["id"].as_str(), f["code"].as_str()),
        (Some("live"), Some("unauthorized")),
        "{f}"
    );
    send(
        &mut removed,
        json!({"op": "watch", "id": "w", "namespace": "app"}),
    )
    .await;
    assert_eq!(next_frame(&mut removed).await["code"], "unauthorized");
    send(&mut removed, json!({"op": "ping"})).await;
    assert_eq!(next_frame(&mut removed).await["type"], "pong");
    // A token the reload left as it was keeps working on its open socket.
    send(
        &mut reader,
        json!({"op": "watch", "id": "r", "namespace": "app", "from_revision": 0}),
    )
    .await;
    s.call(NEW, "PUT", "/v1/ns/app/kv/after", Some(json!({"value": 1})))
        .await;
    let f = next_frame(&mut reader).await;
    assert_eq!(
        (f["type"].as_str(), f["event"]["key"].as_str()),
        (Some("event"), Some("after")),
        "{f}"
    );
    // A broken file is refused; the tokens in force stay.
    std::fs::write(&s.file, "[[token]]\nname = 1\n").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(s.call(NEW, "GET", "/v1/namespaces", None).await.status, 200);
}

#[tokio::test]
async fn review_fixes_fences_service_channels_socket_budgets_and_dotted_locks() {
    let s = secured().await;
    // An ack fenced by another namespace's lock: the caller must be able to read that lock.
    s.call(APP, "POST", "/v1/queues/jobs/tasks", Some(json!({"payload": 1})))
        .await;
    let leased = s
        .call(
            APP,
            "POST",
            "/v1/queues/jobs/lease",
            Some(json!({"worker": "w", "lease_ms": 30000})),
        )
        .await
        .json();
    let t = &leased["tasks"][0];
    let auth = bearer(APP);
    let body = json!({"lease_token": t["lease_token"]}).to_string();
    let r = s
        .app
        .req(
            "POST",
            &format!("/v1/queues/jobs/tasks/{}/ack", t["id"].as_str().unwrap()),
            &[("authorization", &auth), ("x-fencing-token", "secret/l:1")],
            Some(body.as_bytes()),
        )
        .await;
    let p = r.problem(403, "forbidden");
    assert!(
        p["detail"].as_str().unwrap().contains("namespace `secret`"),
        "{p}"
    );
    // Only the service (and admins) publish on its own channels.
    for c in ["agents.b-1", "locks.app.leader", "partitions.app"] {
        s.call(
            APP,
            "POST",
            format!("/v1/channels/{c}/publish"),
            Some(json!({"message": {"forged": true}})),
        )
        .await
        .problem(403, "forbidden");
    }
    // A lock with a dotted name reaches its own namespace's subscribers.
    let mut w = ws(&s.app, "", Some(APP)).await.unwrap();
    send(
        &mut w,
        json!({"op": "subscribe", "id": "l", "channel": "locks.*"}),
    )
    .await;
    assert_eq!(next_frame(&mut w).await["type"], "subscribed");
    let r = s
        .call(
            ADMIN,
            "POST",
            "/v1/ns/app/locks/db.primary",
            Some(json!({"owner": "x", "ttl_ms": 5000})),
        )
        .await;
    assert_eq!(r.status, 200);
    let f = next_frame(&mut w).await;
    assert_eq!(f["channel"], "locks.app.db.primary", "{f}");
    // Socket ops spend the token's budget like requests do.
    let mut lim = ws(&s.app, "", Some(LIMITED)).await.unwrap();
    let mut codes = Vec::new();
    for i in 0..20 {
        send(
            &mut lim,
            json!({"op": "watch", "id": format!("w{i}"), "namespace": "app"}),
        )
        .await;
    }
    for _ in 0..20 {
        let f = next(&mut lim, Duration::from_secs(5)).await.unwrap();
        codes.push(
            f["code"]
                .as_str()
                .unwrap_or(f["type"].as_str().unwrap())
                .to_string(),
        );
    }
    assert!(codes.iter().any(|c| c == "rate_limited"), "{codes:?}");
    assert!(codes.iter().any(|c| c == "progress"), "{codes:?}");
}

#[tokio::test]
async fn an_idempotency_key_is_the_tokens_own() {
    let toml = standard_tokens()
        + &tokens_toml(&[(
            "tok-app-2",
            "name = \"app2\"\nnamespaces = [\"app*\"]\npermission = \"write\"",
        )]);
    let s = secured_with(&toml, |_| {}).await;
    async fn incr(app: &TestApp, t: &str) -> crate::common::Resp {
        let auth = bearer(t);
        app.req(
            "POST",
            "/v1/ns/app/counters/c/incr",
            &[("authorization", &auth), ("idempotency-key", "k1")],
            Some(b"{}"),
        )
        .await
    }
    assert_eq!(incr(&s.app, APP).await.json()["value"], 1);
    let again = incr(&s.app, APP).await;
    assert_eq!(again.header("idempotent-replayed").as_deref(), Some("true"));
    // The same key from another token is a request of its own.
    let other = incr(&s.app, "tok-app-2").await;
    assert!(other.header("idempotent-replayed").is_none());
    assert_eq!(other.json()["value"], 2);
}

fn bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_swarmstate"))
}

#[test]
fn a_non_loopback_listen_without_tokens_exits_2() {
    let port = crate::common::free_port();
    let out = bin()
        .args(["serve"])
        .env("SWARMSTATE_LISTEN", format!("0.0.0.0:{port}"))
        .env("SWARMSTATE_REDIS_URL", shared_redis_url())
        .env_remove("SWARMSTATE_TOKENS_FILE")
        .env_remove("SWARMSTATE_INSECURE_NO_AUTH")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SWARMSTATE_TOKENS_FILE") && err.contains("SWARMSTATE_INSECURE_NO_AUTH"),
        "{err}"
    );
    // With the explicit opt-out it starts.
    let mut child = bin()
        .args(["serve"])
        .env("SWARMSTATE_LISTEN", format!("0.0.0.0:{port}"))
        .env("SWARMSTATE_REDIS_URL", shared_redis_url())
        .env("SWARMSTATE_KEY_PREFIX", crate::common::redis::unique_prefix())
        .env("SWARMSTATE_INSECURE_NO_AUTH", "true")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let up = loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break true;
        }
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(up, "did not start with SWARMSTATE_INSECURE_NO_AUTH=true");
}

#[tokio::test]
async fn token_new_prints_a_token_and_an_entry_that_works() {
    let out = bin()
        .args([
            "token",
            "new",
            "--name",
            "planner",
            "--namespaces",
            "app,planner-*",
            "--permission",
            "write",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let (secret, entry) = text.split_once("\n\n").unwrap();
    assert!(secret.len() >= 40 && !entry.contains(secret), "{text}");
    assert!(entry.contains(&sha256_hex(secret)));
    let s = secured_with(entry, |_| {}).await;
    assert_eq!(
        s.call(secret, "PUT", "/v1/ns/planner-1/kv/k", Some(json!({"value": 1})))
            .await
            .status,
        201
    );
    s.call(secret, "PUT", "/v1/ns/other/kv/k", Some(json!({"value": 1})))
        .await
        .problem(403, "forbidden");
    let bad = bin()
        .args(["token", "new", "--name", "x", "--permission", "root"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn the_readme_permission_table_names_every_operation() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let doc = swarmstate::http::openapi();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap();
            let row = format!("| `{id}` | `{} {path}` |", method.to_uppercase());
            assert!(readme.contains(&row), "README's permission table lacks {row}");
        }
    }
}

/// `/` and every file the page loads (its `<script>`/`<link>` references and every module
/// import, followed transitively) are public and served from the binary with their types and
/// caching headers; the API behind them still needs the token.
#[tokio::test]
async fn the_dashboard_and_its_assets_are_public_and_complete_and_the_api_is_not() {
    let s = secured().await;
    let page = s.app.get("/").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(page.header("x-content-type-options").as_deref(), Some("nosniff"));
    assert_eq!(page.header("cache-control").as_deref(), Some("no-cache"));
    let etag = page.header("etag").expect("an ETag");
    let again = s
        .app
        .req("GET", "/", &[("if-none-match", etag.as_str())], None)
        .await;
    assert_eq!(again.status, 304);
    // Walk the references: src/href attributes of the page, then imports of every module.
    let html = page.text();
    let attr = |text: &str, name: &str| -> Vec<String> {
        text.split(&format!("{name}=\""))
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .filter(|r| r.starts_with("/ui/"))
            .map(str::to_string)
            .collect()
    };
    let mut todo: Vec<String> = attr(&html, "src")
        .into_iter()
        .chain(attr(&html, "href"))
        .collect();
    let mut seen = std::collections::BTreeMap::new();
    while let Some(path) = todo.pop() {
        if seen.contains_key(&path) {
            continue;
        }
        let r = s.app.get(&path).await;
        assert_eq!(r.status, 200, "{path} (referenced by the dashboard)");
        let ctype = r.header("content-type").unwrap_or_default();
        let want = match path.rsplit('.').next() {
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("svg") => "image/svg+xml",
            other => panic!("unexpected asset type {other:?}"),
        };
        assert_eq!(ctype, want, "{path}");
        if path.ends_with(".js") {
            let text = r.text();
            let dir = &path[..path.rfind('/').unwrap() + 1];
            for spec in text
                .split(" from '")
                .skip(1)
                .filter_map(|rest| rest.split('\'').next())
            {
                let resolved = if let Some(rel) = spec.strip_prefix("./") {
                    format!("{dir}{rel}")
                } else if let Some(rel) = spec.strip_prefix("../") {
                    let parent = &dir[..dir[..dir.len() - 1].rfind('/').unwrap() + 1];
                    format!("{parent}{rel}")
                } else {
                    panic!("{path}: import of {spec} (only relative modules are embedded)")
                };
                todo.push(resolved);
            }
        }
        seen.insert(path, (r.body.len(), r.raw.len()));
    }
    // Every embedded file is reached from the page (nothing shipped that nothing loads).
    let embedded: std::collections::BTreeSet<String> = swarmstate::http::dashboard::files()
        .into_iter()
        .filter(|f| f != "index.html")
        .map(|f| format!("/ui/{f}"))
        .collect();
    assert_eq!(
        seen.keys().cloned().collect::<std::collections::BTreeSet<_>>(),
        embedded
    );
    assert!(seen.len() >= 10, "{seen:?}");
    let (plain, wire): (usize, usize) = seen
        .values()
        .fold((html.len(), page.raw.len()), |(p, w), (b, r)| (p + b, w + r));
    eprintln!(
        "dashboard: {} files, {plain} bytes, {wire} bytes on the wire (compressed as the client asked)",
        seen.len() + 1
    );
    // Unknown files are problem documents; the API the page calls still needs the token.
    s.app.get("/ui/nope.js").await.problem(404, "not_found");
    let outside = s.app.get("/ui/..%2FCargo.toml").await;
    assert_eq!(outside.status, 404, "only embedded files are served");
    s.app.get("/v1/status").await.problem(401, "unauthorized");
    assert_eq!(s.call(READ, "GET", "/v1/status", None).await.status, 200);
    // /healthz tells the page to ask for a token first.
    assert_eq!(s.app.get("/healthz").await.json()["auth_required"], true);
}

/// `held` in `GET /v1/agents/{id}` shows only the locks and tasks in namespaces and queues the
/// caller may read (agents themselves are readable by any token).
#[tokio::test]
async fn an_agents_held_resources_follow_the_callers_scope() {
    let s = secured().await;
    let ok = |r: crate::common::Resp| assert!(r.status < 300, "{} {}", r.status, r.text());
    ok(s.call(ADMIN, "PUT", "/v1/agents/a-9", Some(json!({}))).await);
    for ns in ["app1", "secret"] {
        ok(s.call(
            ADMIN,
            "POST",
            format!("/v1/ns/{ns}/locks/l"),
            Some(json!({"owner": "a-9", "ttl_ms": 60000})),
        )
        .await);
    }
    for q in ["jobs", "secretq"] {
        ok(s.call(
            ADMIN,
            "POST",
            format!("/v1/queues/{q}/tasks"),
            Some(json!({"payload": 1})),
        )
        .await);
        ok(s.call(
            ADMIN,
            "POST",
            format!("/v1/queues/{q}/lease"),
            Some(json!({"worker": "a-9", "lease_ms": 60000})),
        )
        .await);
    }
    let all = s.call(ADMIN, "GET", "/v1/agents/a-9", None).await.json();
    assert_eq!(all["held"]["locks"].as_array().map(Vec::len), Some(2), "{all}");
    assert_eq!(all["held"]["tasks"].as_array().map(Vec::len), Some(2), "{all}");
    // APP: namespaces app*, queues jobs and crawl-*.
    let app = s.call(APP, "GET", "/v1/agents/a-9", None).await.json();
    let locks: Vec<&str> = app["held"]["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["namespace"].as_str().unwrap())
        .collect();
    let tasks: Vec<&str> = app["held"]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["queue"].as_str().unwrap())
        .collect();
    assert_eq!((locks, tasks), (vec!["app1"], vec!["jobs"]), "{app}");
}

/// Backups are admin's: a write or read token gets 403 on every backup route (and nothing is
/// taken); an admin token takes one.
#[tokio::test]
async fn backups_need_an_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let backups = dir.path().join("b");
    let s = secured_with(&standard_tokens(), |c| c.backup_dir = Some(backups.clone())).await;
    for token in [READ, APP] {
        s.call(token, "POST", "/v1/backups", Some(json!({"namespaces": ["app"]})))
            .await
            .problem(403, "forbidden");
        s.call(token, "GET", "/v1/backups", None)
            .await
            .problem(403, "forbidden");
        s.call(token, "POST", "/v1/backups/upload", None)
            .await
            .problem(403, "forbidden");
        s.call(
            token,
            "POST",
            "/v1/backups/x/restore",
            Some(json!({"mode": "merge"})),
        )
        .await
        .problem(403, "forbidden");
    }
    assert!(!backups.exists(), "nothing was taken or uploaded");
    s.call(ADMIN, "PUT", "/v1/ns/app/kv/k", Some(json!({"value": 1})))
        .await;
    let r = s
        .call(ADMIN, "POST", "/v1/backups", Some(json!({"namespaces": ["app"]})))
        .await;
    assert_eq!(r.status, 202, "{}", r.text());

    // An admin over `app*` only: its namespaces, but not "everything" while `other` exists.
    let scoped = "tok-admin-app";
    let toml = standard_tokens()
        + &tokens_toml(&[(
            scoped,
            "name = \"app-admin\"\nnamespaces = [\"app*\"]\npermission = \"admin\"",
        )]);
    std::fs::write(&s.file, toml).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.call(scoped, "GET", "/v1/backups", None).await.status == 401 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new token was not picked up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    s.call(ADMIN, "PUT", "/v1/ns/other/kv/k", Some(json!({"value": 1})))
        .await;
    s.call(scoped, "POST", "/v1/backups", Some(json!({})))
        .await
        .problem(403, "forbidden");
    s.call(
        scoped,
        "POST",
        "/v1/backups",
        Some(json!({"namespaces": ["other"]})),
    )
    .await
    .problem(403, "forbidden");
    let r = s
        .call(
            scoped,
            "POST",
            "/v1/backups",
            Some(json!({"namespaces": ["app"]})),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
}
