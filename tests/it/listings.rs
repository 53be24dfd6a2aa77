//! The one listing contract (DESIGN.md "Listings") on every list endpoint: `{items,
//! next_cursor}`, `limit` and an opaque `cursor`, every item exactly once over the pages,
//! `next_cursor` null on the last page, a cursor the service did not issue refused with 400.

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
