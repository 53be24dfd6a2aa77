//! Every JSON answer the test client reads is checked against the committed OpenAPI document
//! (openapi/openapi.json), so the spec and the answers cannot drift apart unnoticed.
//!
//! The request's method and path pick the operation (path templates as in the document; the
//! `{key}` of the key routes spans `/`, as the server's wildcard route does, and the most
//! literal template wins), the status picks the response (falling back to `default`), and the
//! body must match the schema declared for its content type. Bodies that are not JSON (metrics
//! text, event streams) and empty bodies (204, 304, HEAD) are not checked. Answers of routes or
//! methods the document does not have (the 404 and 405 fallbacks) must be problem documents;
//! `/openapi.json` and `/docs` (the document and its viewer) are not checked.
//!
//! The document is registered once as a `jsonschema` resource under [`DOC_URI`]; a response
//! schema is compiled with its local `#/...` references pointed at that resource, so
//! `#/components/schemas/...` resolves against the whole document. Validators are compiled on
//! first use and cached per (operation, status, content type). Object schemas are closed
//! (`additionalProperties: false`) for the check unless `OPENAPI_STRICT=0`, so an undocumented
//! response field fails as well. The process prints how many bodies it checked when it exits
//! (`OPENAPI_REPORT=1`: and which responses).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use jsonschema::{Draft, Registry, Validator};
use serde_json::{json, Value};

/// Where the document lives for reference resolution (never fetched).
const DOC_URI: &str = "https://swarmstate.invalid/openapi.json";

struct Route {
    template: String,
    /// Literal segments, `None` for a parameter; `wild[i]` for `{key}` (spans `/`).
    segments: Vec<Option<String>>,
    wild: Vec<bool>,
    literal_chars: usize,
}

struct Spec {
    doc: Value,
    registry: Registry<'static>,
    routes: Vec<Route>,
    cache: Mutex<HashMap<String, Arc<Validator>>>,
}

static SPEC: OnceLock<Spec> = OnceLock::new();
static VALIDATED: AtomicUsize = AtomicUsize::new(0);
static SEEN: OnceLock<Mutex<std::collections::BTreeSet<String>>> = OnceLock::new();

/// How many response bodies were checked so far in this test process.
pub fn validated() -> usize {
    VALIDATED.load(Ordering::Relaxed)
}

/// At exit: how many bodies were checked; with `OPENAPI_REPORT=1` also which responses.
extern "C" fn report_at_exit() {
    let seen = SEEN
        .get()
        .and_then(|s| s.lock().ok().map(|s| s.clone()))
        .unwrap_or_default();
    eprintln!(
        "openapi: {} JSON response bodies validated against openapi/openapi.json ({} distinct operation/status/content-type responses{})",
        validated(),
        seen.len(),
        if strict() { ", undocumented properties refused" } else { "" }
    );
    if std::env::var("OPENAPI_REPORT").is_ok_and(|v| v == "1") {
        for k in &seen {
            eprintln!("openapi: seen {k}");
        }
    }
}

fn spec() -> &'static Spec {
    SPEC.get_or_init(|| {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
        let text = std::fs::read_to_string(path).expect("openapi/openapi.json is committed");
        let doc: Value = serde_json::from_str(&text).expect("openapi/openapi.json is JSON");
        let mut registered = doc.clone();
        if strict() {
            close_objects(&mut registered["components"]);
            close_objects(&mut registered["paths"]);
        }
        let registry = Registry::new()
            .draft(Draft::Draft202012)
            .add(DOC_URI, registered)
            .and_then(|b| b.prepare())
            .expect("the OpenAPI document registers as a schema resource");
        let routes = doc["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .map(|t| {
                let segments: Vec<Option<String>> = t
                    .split('/')
                    .map(|s| match s.starts_with('{') && s.ends_with('}') {
                        true => None,
                        false => Some(s.to_string()),
                    })
                    .collect();
                let wild = t.split('/').map(|s| s == "{key}").collect();
                let literal_chars = segments.iter().flatten().map(String::len).sum();
                Route {
                    template: t.clone(),
                    segments,
                    wild,
                    literal_chars,
                }
            })
            .collect();
        // SAFETY: registering a plain `extern "C"` function with no arguments.
        unsafe { libc::atexit(report_at_exit) };
        Spec {
            doc,
            registry,
            routes,
            cache: Mutex::new(HashMap::new()),
        }
    })
}

/// Whether `path`'s segments match the template's (a wild parameter takes one or more).
fn matches(r: &Route, path: &[&str]) -> bool {
    fn go(segs: &[Option<String>], wild: &[bool], path: &[&str]) -> bool {
        match (segs.first(), path.first()) {
            (None, None) => true,
            (None, _) | (_, None) => false,
            (Some(Some(lit)), Some(p)) => lit == p && go(&segs[1..], &wild[1..], &path[1..]),
            (Some(None), Some(p)) => {
                if p.is_empty() {
                    return false;
                }
                if wild[0] {
                    (1..=path.len()).any(|n| {
                        path[..n].iter().all(|s| !s.is_empty()) && go(&segs[1..], &wild[1..], &path[n..])
                    })
                } else {
                    go(&segs[1..], &wild[1..], &path[1..])
                }
            }
        }
    }
    go(&r.segments, &r.wild, path)
}

/// Whether answers may carry only documented properties (unless `OPENAPI_STRICT=0`): every
/// object schema with `properties` and no `additionalProperties` is closed before validation,
/// so a field the server sends but the document does not describe fails too.
fn strict() -> bool {
    std::env::var("OPENAPI_STRICT").map_or(true, |v| v != "0")
}

fn close_objects(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if m.get("properties").is_some_and(Value::is_object) && !m.contains_key("additionalProperties") {
                m.insert("additionalProperties".into(), Value::Bool(false));
            }
            m.values_mut().for_each(close_objects);
        }
        Value::Array(a) => a.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// Point local references (`#/...`) at the registered document.
fn anchor_refs(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match (k.as_str(), x) {
                    ("$ref", Value::String(s)) if s.starts_with('#') => *s = format!("{DOC_URI}{s}"),
                    (_, x) => anchor_refs(x),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(anchor_refs),
        _ => {}
    }
}

fn validator(spec: &'static Spec, key: &str, schema: &Value) -> Arc<Validator> {
    let mut cache = spec.cache.lock().unwrap();
    if let Some(v) = cache.get(key) {
        return v.clone();
    }
    let mut schema = schema.clone();
    anchor_refs(&mut schema);
    if strict() {
        close_objects(&mut schema);
    }
    let v = jsonschema::options()
        .with_draft(Draft::Draft202012)
        .with_registry(&spec.registry)
        .build(&schema)
        .unwrap_or_else(|e| panic!("openapi: the schema of {key} does not compile: {e}\n{schema:#}"));
    let v = Arc::new(v);
    cache.insert(key.to_string(), v.clone());
    v
}

fn is_json(content_type: &str) -> bool {
    content_type == "application/json" || content_type.ends_with("+json")
}

/// Check one answer against the document; panics on any disagreement.
pub fn check(method: &str, uri_path: &str, status: u16, content_type: Option<&str>, body: &[u8]) {
    let ct = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default();
    if body.is_empty() || !is_json(&ct) {
        return;
    }
    // The document itself and its viewer are served beside the API, not described by it.
    let path = uri_path.split(['?', '#']).next().unwrap_or("");
    if path == "/openapi.json" || path == "/docs" || path.starts_with("/docs/") {
        return;
    }
    let spec = spec();
    let method_lc = method.to_ascii_lowercase();
    let segs: Vec<&str> = path.split('/').collect();
    let what = format!("{method} {uri_path} -> {status} ({ct})");
    let text = String::from_utf8_lossy(body);
    let text = match text.char_indices().nth(4000) {
        Some((i, _)) => format!("{}… ({} bytes in all)", &text[..i], body.len()),
        None => text.into_owned(),
    };
    let instance: Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("openapi: {what}: labelled JSON but is not ({e}): {text}"));
    let candidates: Vec<&Route> = spec.routes.iter().filter(|r| matches(r, &segs)).collect();
    let op = candidates
        .iter()
        .filter(|r| spec.doc["paths"][&r.template][&method_lc].is_object())
        .max_by_key(|r| r.literal_chars)
        .map(|r| (r.template.as_str(), &spec.doc["paths"][&r.template][&method_lc]));
    let (key, schema) = match op {
        Some((template, op)) => {
            let responses = &op["responses"];
            let (code, response) = match responses.get(status.to_string()) {
                Some(r) => (status.to_string(), r),
                None => match responses.get("default") {
                    Some(r) => ("default".to_string(), r),
                    None => panic!(
                        "openapi: {what}: status {status} is not declared for {method_lc} {template} and there is no default; declared: {:?}\nbody: {text}",
                        responses.as_object().map(|m| m.keys().collect::<Vec<_>>())
                    ),
                },
            };
            let Some(media) = response["content"].get(&ct) else {
                panic!(
                    "openapi: {what}: {method_lc} {template} {code} declares no {ct} body (declared: {:?})\nbody: {text}",
                    response["content"].as_object().map(|m| m.keys().collect::<Vec<_>>())
                );
            };
            let op_id = op["operationId"].as_str().unwrap_or(template);
            (format!("{op_id} {code} {ct}"), media["schema"].clone())
        }
        None => {
            // No such route or no such method on it: the fallbacks answer problem documents.
            assert_eq!(
                ct,
                "application/problem+json",
                "openapi: {what}: a JSON answer of an undocumented operation (routes matching: {:?})\nbody: {text}",
                candidates.iter().map(|r| &r.template).collect::<Vec<_>>()
            );
            (
                "undocumented-route problem".to_string(),
                json!({"$ref": "#/components/schemas/Problem"}),
            )
        }
    };
    let v = validator(spec, &key, &schema);
    let errors: Vec<String> = v
        .iter_errors(&instance)
        .map(|e| format!("  at {} (schema {}): {e}", e.instance_path(), e.evaluation_path()))
        .collect();
    if !errors.is_empty() {
        panic!(
            "openapi: {what} does not match the documented schema [{key}]:\n{}\nbody: {text}",
            errors.join("\n")
        );
    }
    VALIDATED.fetch_add(1, Ordering::Relaxed);
    // `default` answers are listed with their status (in the `OPENAPI_REPORT=1` listing).
    let seen = match key.contains(" default ") {
        true => format!("{key} (status {status})"),
        false => key,
    };
    SEEN.get_or_init(Default::default).lock().unwrap().insert(seen);
}

#[test]
fn templates_match_like_the_router() {
    let spec = spec();
    let pick = |method: &str, path: &str| -> Option<String> {
        let segs: Vec<&str> = path.split('/').collect();
        spec.routes
            .iter()
            .filter(|r| matches(r, &segs) && spec.doc["paths"][&r.template][method].is_object())
            .max_by_key(|r| r.literal_chars)
            .map(|r| r.template.clone())
    };
    assert_eq!(
        pick("get", "/v1/ns/a/kv/x").as_deref(),
        Some("/v1/ns/{ns}/kv/{key}")
    );
    assert_eq!(
        pick("get", "/v1/ns/a/kv/x/y/z").as_deref(),
        Some("/v1/ns/{ns}/kv/{key}")
    );
    assert_eq!(
        pick("get", "/v1/ns/a/kv/x/y/history").as_deref(),
        Some("/v1/ns/{ns}/kv/{key}/history")
    );
    assert_eq!(
        pick("post", "/v1/ns/a/kv/x/rollback").as_deref(),
        Some("/v1/ns/{ns}/kv/{key}/rollback")
    );
    assert_eq!(pick("get", "/v1/ns/a/kv").as_deref(), Some("/v1/ns/{ns}/kv"));
    assert_eq!(pick("post", "/v1/ns/a/kv/x"), None);
    assert_eq!(
        pick("get", "/v1/queues/q/tasks/12").as_deref(),
        Some("/v1/queues/{queue}/tasks/{id}")
    );
    assert_eq!(pick("get", "/v1/queues/q/tasks/12/x"), None);
    assert_eq!(pick("get", "/v1/agents/"), None);
}

fn panic_text(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
    let e = std::panic::catch_unwind(f).expect_err("the check fails");
    e.downcast_ref::<String>().cloned().unwrap_or_default()
}

#[test]
fn a_wrong_body_is_caught_with_its_path() {
    let problem = Some("application/problem+json");
    let msg = panic_text(|| {
        let body = br#"{"type":"t","title":"t","status":"404","detail":"d","instance":"/x"}"#;
        check("GET", "/v1/ns/a/kv/missing", 404, problem, body)
    });
    assert!(
        msg.contains("/status") && msg.contains("code") && msg.contains("kv_get 404"),
        "{msg}"
    );
    // An entry without its required fields; a 200 labelled as a problem document.
    let msg = panic_text(|| {
        check(
            "GET",
            "/v1/ns/a/kv/k",
            200,
            Some("application/json"),
            br#"{"key":"k"}"#,
        )
    });
    assert!(msg.contains("version") && msg.contains("kv_get 200"), "{msg}");
    let msg = panic_text(|| check("GET", "/v1/ns/a/kv/k", 200, problem, br#"{}"#));
    assert!(msg.contains("declares no application/problem+json body"), "{msg}");
    // Undocumented routes answer problem documents only.
    let msg = panic_text(|| check("GET", "/v1/nope", 200, Some("application/json"), b"{}"));
    assert!(msg.contains("undocumented operation"), "{msg}");
    // Valid bodies pass; text, empty bodies and the document itself are not checked.
    let good = br#"{"type":"t","title":"t","status":404,"detail":"d","instance":"/x","code":"not_found"}"#;
    check("GET", "/v1/ns/a/kv/missing", 404, problem, good);
    check("GET", "/v1/nope", 404, problem, good);
    check(
        "GET",
        "/metrics",
        200,
        Some("text/plain; version=0.0.4"),
        b"# HELP x\n",
    );
    check("DELETE", "/v1/ns/a/kv/k", 204, None, b"");
    check("GET", "/openapi.json", 200, Some("application/json"), b"{}");
}
