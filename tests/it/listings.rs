//! The one listing contract (DESIGN.md "Listings") on every list endpoint: `{items,
//! next_cursor}`, `limit` and an opaque `cursor`, every item exactly once over the pages,
//! `next_cursor` null on the last page, a cursor the service did not issue refused with 400.

use fred::prelude::*;
use serde_json::{json, Value};

use crate::common::http::TestApp;

/// Walk `path` (which may carry other query parameters) two items a page; the items' `field`s
/// in the order seen, and how many pages it took.
async fn walk(app: &TestApp, path: &str, field: &str) -> (Vec<String>, usize) {
    let sep = if path.contains('?') { '&' } else { '?' };
    let (mut seen, mut pages, mut cursor) = (Vec::new(), 0, None::<String>);
    loop {
        let url = match &cursor {
            None => format!("{path}{sep}limit=2"),
            Some(c) => format!("{path}{sep}limit=2&cursor={c}"),
        };
        let r = app.get(&url).await;
        assert_eq!(r.status, 200, "{url}: {}", r.text());
        let page = r.json();
        let items = page["items"]
            .as_array()
            .unwrap_or_else(|| panic!("{url}: {page}"));
        assert!(items.len() <= 2, "{url}: {page}");
        pages += 1;
        seen.extend(items.iter().map(|i| match &i[field] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }));
        match &page["next_cursor"] {
            Value::Null => break,
            Value::String(c) => {
                assert!(!items.is_empty(), "{url}: a cursor after an empty page: {page}");
                cursor = Some(c.clone());
            }
            other => panic!("{url}: next_cursor {other}"),
        }
        assert!(pages < 50, "{url}: no end");
    }
    // A cursor the service did not issue.
    app.get(&format!("{path}{sep}cursor=%2A%2A%2A"))
        .await
        .problem(400, "invalid_argument");
    (seen, pages)
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_list_pages_with_limit_and_cursor() {
    let app = TestApp::start().await;
    // Five namespaces, five queues, five partitions (a partition is a namespace too).
    for n in names("ns", 5) {
        app.put(&format!("/v1/ns/{n}/kv/k"), json!({"value": 1})).await;
    }
    assert_eq!(
        walk(&app, "/v1/namespaces", "namespace").await,
        (names("ns", 5), 3)
    );
    for q in names("q", 5) {
        let r = app
            .post(&format!("/v1/queues/{q}/tasks"), json!({"payload": 1}))
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    for p in names("p", 5) {
        let r = app
            .post(
                "/v1/partitions",
                json!({"name": p, "owner_agent": "a", "tier": "working", "quota_bytes": 1000}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let mut both = names("ns", 5);
    both.extend(names("p", 5));
    assert_eq!(walk(&app, "/v1/namespaces", "namespace").await, (both, 5));
    assert_eq!(walk(&app, "/v1/queues", "queue").await, (names("q", 5), 3));
    assert_eq!(walk(&app, "/v1/partitions", "name").await, (names("p", 5), 3));

    // Agents: the filter applies before paging; a last page that fills exactly has no cursor.
    for (i, a) in names("a", 7).into_iter().enumerate() {
        let caps = if i % 2 == 0 {
            json!(["even"])
        } else {
            json!(["odd"])
        };
        let r = app
            .put(&format!("/v1/agents/{a}"), json!({"capabilities": caps}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let (even, pages) = walk(&app, "/v1/agents?capability=even", "id").await;
    assert_eq!(
        (even, pages),
        (vec!["a0".into(), "a2".into(), "a4".into(), "a6".into()], 2)
    );
    assert_eq!(walk(&app, "/v1/agents", "id").await.0, names("a", 7));

    // Keys by prefix: four keys are exactly two pages (no empty third page).
    for k in ["k/a", "k/b", "k/c", "k/d", "other"] {
        app.put(&format!("/v1/ns/keys/kv/{k}"), json!({"value": 1})).await;
    }
    let (keys, pages) = walk(&app, "/v1/ns/keys/kv?prefix=k/", "key").await;
    assert_eq!(
        (keys, pages),
        (vec!["k/a".into(), "k/b".into(), "k/c".into(), "k/d".into()], 2)
    );

    // History, newest first, over pages of two.
    for i in 1..=5 {
        app.put("/v1/ns/h/kv/doc", json!({"value": i})).await;
    }
    let (versions, _) = walk(&app, "/v1/ns/h/kv/doc/history", "version").await;
    assert_eq!(versions, ["5", "4", "3", "2", "1"]);
    // Retention (10 versions) trimmed the oldest: the last page still ends with a null cursor.
    for i in 1..=12 {
        app.put("/v1/ns/h/kv/long", json!({"value": i})).await;
    }
    let (versions, pages) = walk(&app, "/v1/ns/h/kv/long/history", "version").await;
    assert_eq!(versions.len(), 10, "{versions:?}");
    assert_eq!(
        (versions[0].as_str(), versions[9].as_str(), pages),
        ("12", "3", 5)
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_page_by_cursor_even_when_deaths_share_a_millisecond() {
    let app = TestApp::start().await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let t = app
            .post("/v1/queues/d/tasks", json!({"payload": i, "max_attempts": 1}))
            .await
            .json();
        ids.push(t["id"].as_str().unwrap().to_string());
    }
    // Lease all seven at once and fail them back to back: several die in the same millisecond.
    let leased = app
        .post(
            "/v1/queues/d/lease",
            json!({"worker": "w", "max_tasks": 7, "lease_ms": 60000}),
        )
        .await
        .json();
    let leased = leased["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("{leased}"))
        .clone();
    assert_eq!(leased.len(), 7);
    for t in &leased {
        let r = app
            .post(
                &format!("/v1/queues/d/tasks/{}/nack", t["id"].as_str().unwrap()),
                json!({"lease_token": t["lease_token"], "error": "boom"}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let first = app.get("/v1/queues/d/dead?limit=2").await.json();
    assert_eq!(first["total"], 7, "{first}");
    let (mut seen, pages) = walk(&app, "/v1/queues/d/dead", "id").await;
    assert_eq!(pages, 4);
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids, "every dead task exactly once");

    // A retried task leaves the list; a cursor issued before still continues after its position.
    let page = app.get("/v1/queues/d/dead?limit=2").await.json();
    let gone = page["items"][1]["id"].as_str().unwrap().to_string();
    let r = app
        .post(&format!("/v1/queues/d/dead/{gone}/retry"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = app
        .get(&format!("/v1/queues/d/dead?limit=10&cursor={cursor}"))
        .await
        .json();
    assert_eq!(rest["items"].as_array().unwrap().len(), 5, "{rest}");
    assert_eq!(rest["next_cursor"], Value::Null);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_list_by_state_in_that_states_order() {
    let app = TestApp::start().await;
    // Five ready tasks (priority 1 before 5, FIFO within one), two delayed, one leased.
    let mut ready = Vec::new();
    for (i, prio) in [5, 1, 5, 1, 5].into_iter().enumerate() {
        let t = app
            .post("/v1/queues/tl/tasks", json!({"payload": i, "priority": prio}))
            .await
            .json();
        ready.push((prio, t["id"].as_str().unwrap().to_string()));
    }
    for delay in [90_000, 60_000] {
        let r = app
            .post(
                "/v1/queues/tl/tasks",
                json!({"payload": "later", "delay_ms": delay}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    // Leasing takes the first in ready order: the first priority-1 task.
    let leased = app
        .post("/v1/queues/tl/lease", json!({"worker": "w1", "lease_ms": 60000}))
        .await
        .json();
    let leased_id = leased["tasks"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(leased_id, ready[1].1, "{leased}");
    let mut expect: Vec<(i32, String)> = ready.iter().filter(|(_, id)| *id != leased_id).cloned().collect();
    expect.sort_by_key(|(p, _)| *p); // stable: FIFO within a priority
    let expect: Vec<String> = expect.into_iter().map(|(_, id)| id).collect();

    let (seen, pages) = walk(&app, "/v1/queues/tl/tasks?state=ready", "id").await;
    assert_eq!((seen, pages), (expect, 2), "ready tasks in lease order");
    let first = app.get("/v1/queues/tl/tasks?state=ready&limit=2").await.json();
    assert_eq!(first["total"], 4, "{first}");
    assert_eq!(first["items"][0]["state"], "ready", "{first}");

    // Delayed: by due time (the 60 s one first), with their payload.
    let delayed = app.get("/v1/queues/tl/tasks?state=delayed").await.json();
    let items = delayed["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{delayed}");
    assert!(
        items[0]["run_at"].as_str() < items[1]["run_at"].as_str(),
        "{delayed}"
    );
    assert_eq!(items[0]["payload"], "later");

    // Leased: with its owner and expiry, never its lease token.
    let l = app.get("/v1/queues/tl/tasks?state=leased").await.json();
    assert_eq!(l["items"][0]["id"], leased_id.as_str(), "{l}");
    assert_eq!(l["items"][0]["lease_owner"], "w1", "{l}");
    assert!(l["items"][0]["leased_until"].is_string(), "{l}");
    assert!(l["items"][0].get("lease_token").is_none(), "{l}");

    // Completed after an ack; empty states answer an empty page; dead goes through the same list.
    let r = app
        .post(
            &format!("/v1/queues/tl/tasks/{leased_id}/ack"),
            json!({"lease_token": leased["tasks"][0]["lease_token"], "result": {"ok": true}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let c = app.get("/v1/queues/tl/tasks?state=completed").await.json();
    assert_eq!(c["items"][0]["result"], json!({"ok": true}), "{c}");
    let f = app.get("/v1/queues/tl/tasks?state=failed").await.json();
    assert_eq!(
        (f["total"].clone(), f["items"].clone()),
        (json!(0), json!([])),
        "{f}"
    );
    assert_eq!(app.get("/v1/queues/tl/tasks?state=dead").await.json()["total"], 0);
    assert_eq!(
        app.get("/v1/queues/never/tasks?state=ready").await.json()["items"],
        json!([])
    );

    // Bad input: an unknown or missing state, a bad queue name.
    app.get("/v1/queues/tl/tasks?state=running")
        .await
        .problem(400, "invalid_argument");
    app.get("/v1/queues/tl/tasks")
        .await
        .problem(400, "invalid_argument");
    app.get("/v1/queues/BAD*/tasks?state=ready")
        .await
        .problem(400, "invalid_name");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_locks_list_by_name_and_agents_show_what_they_hold() {
    let app = TestApp::start().await;
    let r = app
        .put("/v1/agents/worker-1", json!({"capabilities": ["x"]}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut grants = Vec::new();
    for name in ["c", "a", "e", "b", "d"] {
        let g = app
            .post(
                &format!("/v1/ns/lk/locks/{name}"),
                json!({"owner": "worker-1", "ttl_ms": 60000}),
            )
            .await;
        assert_eq!(g.status, 200, "{}", g.text());
        grants.push((name, g.json()));
    }
    // One released, one with a short lease that runs out: neither is listed.
    let (_, b) = grants.iter().find(|(n, _)| *n == "b").unwrap();
    let r = app
        .req(
            "DELETE",
            "/v1/ns/lk/locks/b",
            &[("x-lock-token", b["token"].as_str().unwrap())],
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = app
        .post("/v1/ns/lk/locks/short", json!({"owner": "other", "ttl_ms": 100}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let (names, pages) = walk(&app, "/v1/ns/lk/locks", "name").await;
    assert_eq!(
        (names, pages),
        (vec!["a".into(), "c".into(), "d".into(), "e".into()], 2)
    );
    // The listing reads an index of granted locks: the released one left it at once, the
    // expired one at the next acquire in the namespace, so it holds only live locks.
    let r = app
        .post("/v1/ns/lk/locks/f", json!({"owner": "other", "ttl_ms": 60000}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut index: Vec<String> = app
        .redis()
        .await
        .zrange(app.keys().ns("lk").locks(), 0, -1, None, false, None, false)
        .await
        .unwrap();
    index.sort();
    assert_eq!(
        index,
        ["a", "c", "d", "e", "f"],
        "the index keeps live locks only"
    );
    let f_token = r.json()["token"].as_str().unwrap().to_string();
    let r = app
        .req(
            "DELETE",
            "/v1/ns/lk/locks/f",
            &[("x-lock-token", f_token.as_str())],
            None,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let page = app.get("/v1/ns/lk/locks").await.json();
    let a = &page["items"][0];
    assert_eq!(a["owner"], "worker-1", "{page}");
    assert_eq!(
        a["fencing_token"],
        grants.iter().find(|(n, _)| *n == "a").unwrap().1["fencing_token"]
    );
    assert!(a["expires_at"].is_string() && a.get("token").is_none(), "{page}");
    assert_eq!(app.get("/v1/ns/none/locks").await.json()["items"], json!([]));
    app.get("/v1/ns/BAD*/locks").await.problem(400, "invalid_name");

    // The agent shows its locks and the task it leased, not those of others or ended ones.
    let r = app.post("/v1/queues/aq/tasks", json!({"payload": 1})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = app.post("/v1/queues/aq/tasks", json!({"payload": 2})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let leased = app
        .post(
            "/v1/queues/aq/lease",
            json!({"worker": "worker-1", "lease_ms": 60000, "max_tasks": 2}),
        )
        .await
        .json();
    let tasks = leased["tasks"].as_array().unwrap().clone();
    assert_eq!(tasks.len(), 2, "{leased}");
    let r = app
        .post(
            &format!("/v1/queues/aq/tasks/{}/ack", tasks[1]["id"].as_str().unwrap()),
            json!({"lease_token": tasks[1]["lease_token"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let agent = app.get("/v1/agents/worker-1").await.json();
    let held_locks: Vec<&str> = agent["held"]["locks"]
        .as_array()
        .unwrap_or_else(|| panic!("{agent}"))
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(held_locks, ["a", "c", "d", "e"], "{agent}");
    assert_eq!(agent["held"]["locks"][0]["namespace"], "lk");
    let held_tasks = agent["held"]["tasks"].as_array().unwrap();
    assert_eq!(held_tasks.len(), 1, "{agent}");
    assert_eq!(held_tasks[0]["id"], tasks[0]["id"], "{agent}");
    assert_eq!(held_tasks[0]["queue"], "aq");
    assert!(held_tasks[0]["leased_until"].is_string(), "{agent}");
    // Listings do not carry it (one read per agent stays one read).
    let list = app.get("/v1/agents").await.json();
    assert!(list["items"][0].get("held").is_none(), "{list}");

    // Terminated: everything it held is freed, and the agent shows nothing held.
    for state in ["ready", "terminating", "terminated"] {
        let r = app
            .post("/v1/agents/worker-1/state", json!({"state": state}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let agent = app.get("/v1/agents/worker-1").await.json();
    assert_eq!(agent["held"], json!({"locks": [], "tasks": []}), "{agent}");
    assert_eq!(app.get("/v1/ns/lk/locks").await.json()["items"], json!([]));
    app.stop().await;
}
