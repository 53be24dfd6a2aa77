//! Finishing the generated OpenAPI document so generators take it as it is: a `servers`
//! entry, a `default` problem-document response on every operation, the provenance and
//! fencing headers on every write that honours them, `ETag` on entry answers, and the naming
//! rule as a `pattern` on name parameters; `Idempotency-Key` (with its 409/422 answers and the
//! `Idempotent-Replayed` header) on every POST that honours it; the bearer security scheme
//! with 401/403/429 on every protected operation. Applied to the document utoipa derives from the
//! handlers' attributes, in one place, so no operation can miss them.

use serde_json::{json, Map, Value};

use crate::domain::idempotency::home_of;

/// `[a-z0-9][a-z0-9._-]{0,62}`: namespaces, queues, channels, locks, partitions, agents.
const NAME_PATTERN: &str = "^[a-z0-9][a-z0-9._-]{0,62}$";
/// Task ids.
const TASK_ID_PATTERN: &str = "^[0-9]{1,20}$";
/// Backup ids (they name files).
const BACKUP_ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";
/// Text without control characters (keys, tokens, owners).
const TEXT_PATTERN: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]+$";
/// Like [`TEXT_PATTERN`], empty allowed (a key prefix).
const PREFIX_PATTERN: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$";
/// Keys are 1..=512 bytes of UTF-8. JSON Schema counts characters: 512 is exact for ASCII keys
/// (the common case, so generated clients do not refuse keys the service takes); a key of wider
/// characters can pass this and still be refused (400 invalid_name) above 512 bytes.
const KEY_MAX_CHARS: u64 = 512;

/// Patterns of the request headers the service parses, by name.
fn header_pattern(name: &str, path: &str, operation: &str) -> Option<Value> {
    // Token numbers are u64: at most 19 digits here (all of them fit).
    let fence_kv = "^[a-z0-9][a-z0-9._-]{0,62}:[1-9][0-9]{0,18}$";
    let fence_ack = "^([a-z0-9][a-z0-9._-]{0,62}/)?[a-z0-9][a-z0-9._-]{0,62}:[1-9][0-9]{0,18}$";
    Some(match name {
        "If-Match" => json!({"type": "string", "pattern": "^(\\*|(W/)?\"[0-9]{1,19}\"|[0-9]{1,19})$"}),
        // A PUT takes only `*` (create-only); a GET an ETag too.
        "If-None-Match" if operation == "kv_put" => json!({"type": "string", "pattern": "^\\*$"}),
        "If-None-Match" => json!({"type": "string", "pattern": "^(\\*|(W/)?\"[0-9]{1,19}\"|[0-9]{1,19})$"}),
        "x-lock-token" => json!({"type": "string", "minLength": 1, "maxLength": 64, "pattern": TEXT_PATTERN}),
        // Empty is the same as absent.
        "x-agent-id" => json!({"type": "string", "maxLength": 128, "pattern": PREFIX_PATTERN}),
        "x-change-reason" => json!({"type": "string", "maxLength": 1024, "pattern": PREFIX_PATTERN}),
        "x-fencing-token" if path.starts_with("/v1/queues/") => {
            json!({"type": "string", "pattern": fence_ack})
        }
        "x-fencing-token" => json!({"type": "string", "pattern": fence_kv}),
        _ => return None,
    })
}

/// A key as request bodies and paths carry it.
fn key_schema() -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": KEY_MAX_CHARS, "pattern": TEXT_PATTERN})
}

/// Operations that take `x-agent-id`, `x-change-reason` and `x-fencing-token`.
const PROVENANCE: &[&str] = &[
    "kv_put",
    "kv_patch",
    "kv_delete",
    "kv_rollback",
    "kv_batch_put",
    "kv_batch_delete",
    "kv_txn",
    "counter_incr",
];

/// Operations whose successful answers carry the entry's `ETag`.
const ETAGGED: &[&str] = &["kv_get", "kv_put", "kv_patch", "kv_rollback", "counter_incr"];

const REPLAYED_HEADER: &str = "Idempotent-Replayed";

fn header(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "header", "required": false, "description": description, "schema": {"type": "string"}})
}

/// The document as JSON with the finishing touches. (utoipa's own types do not read back
/// every document they write, so the touches are applied to the JSON.)
pub fn finish(doc: &utoipa::openapi::OpenApi) -> Value {
    let mut v = serde_json::to_value(doc).unwrap_or_default();
    edit(&mut v);
    v
}

/// Keys inside request bodies (batch keys, batch items, transaction compares and ops).
fn constrain_body_keys(v: &mut Value) {
    let schemas = &mut v["components"]["schemas"];
    if schemas["RegisterBody"]["properties"]["capabilities"].is_object() {
        schemas["RegisterBody"]["properties"]["capabilities"] = json!({
            "type": "array", "maxItems": 64,
            "items": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": TEXT_PATTERN}
        });
    }
    schemas["KeysBody"]["properties"]["keys"]["items"] = key_schema();
    for (s, field) in [
        ("CreateBackup", "namespaces"),
        ("CreateBackup", "partitions"),
        ("CreateBackup", "queues"),
        ("RestoreBody", "namespaces"),
        ("RestoreBody", "queues"),
    ] {
        if let Some(items) = schemas[s]["properties"][field].get_mut("items") {
            *items = json!({"type": "string", "pattern": NAME_PATTERN});
        }
    }
    for s in ["BatchPutItem", "TxnCompareBody", "TxnOpBody"] {
        if schemas[s]["properties"]["key"].is_object() {
            schemas[s]["properties"]["key"] = key_schema();
        }
    }
}

/// The bearer scheme, the `access_token` query alternative of the stream routes, and the
/// 401/403/429 answers every protected operation can give.
fn security(v: &mut Value) {
    v["components"]["securitySchemes"] = json!({
        "bearer": {
            "type": "http", "scheme": "bearer",
            "description": "A token from the tokens file (`swarmstate token new`). Needed on every route but /healthz, /readyz, /docs, /openapi.json and (unless metrics_public = false) /metrics once a tokens file is set. The stream routes also take it as `?access_token=` (for browsers' WebSocket and EventSource). Answers to a token with a rate_per_sec carry RateLimit-Limit, RateLimit-Remaining and RateLimit-Reset."
        }
    });
    // A query parameter rather than a second security scheme: generators apply every scheme
    // of an operation at once, and would put the token into stream URLs as well.
    let access_token = json!({
        "name": "access_token", "in": "query", "required": false,
        "description": "The bearer token, for clients that cannot send headers (browsers' WebSocket and EventSource); removed from the request and redacted in logs. Prefer the Authorization header.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 512}
    });
    v["security"] = json!([{"bearer": []}]);
    let problem = |d: &str| json!({"description": d, "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}});
    let mut unauthorized = problem("`unauthorized`: no bearer token, or one the tokens file does not know");
    unauthorized["headers"] = json!({"WWW-Authenticate": {"description": "`Bearer realm=\"swarmstate\"`", "schema": {"type": "string"}}});
    let forbidden = problem(
        "`forbidden`: the token's permission or scope does not cover this (the detail names what is missing)",
    );
    let mut limited = problem("`rate_limited`: the token or the x-agent-id is over its budget");
    let int = json!({"schema": {"type": "integer"}});
    limited["headers"] = json!({
        "Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}},
        "RateLimit-Limit": int, "RateLimit-Remaining": int, "RateLimit-Reset": int
    });
    let Some(paths) = v.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let public = super::auth::is_public(path, true);
        let stream = super::auth::QUERY_TOKEN_ROUTES.contains(&path.as_str());
        for op in item.as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
            let Some(op) = op.as_object_mut() else {
                continue;
            };
            if public {
                // (/metrics takes a token when metrics_public = false; its description says so.)
                op.insert("security".into(), json!([]));
                continue;
            }
            op.insert("security".into(), json!([{"bearer": []}]));
            if stream {
                let params = op.entry("parameters").or_insert_with(|| json!([]));
                if let Some(p) = params.as_array_mut() {
                    p.push(access_token.clone());
                }
            }
            if let Some(r) = op.get_mut("responses").and_then(Value::as_object_mut) {
                r.entry("401").or_insert_with(|| unauthorized.clone());
                r.entry("403").or_insert_with(|| forbidden.clone());
                r.entry("429").or_insert_with(|| limited.clone());
            }
        }
    }
}

fn edit(v: &mut Value) {
    constrain_body_keys(v);
    security(v);
    v["servers"] = json!([{"url": "http://127.0.0.1:8080", "description": "The default listen address"}]);
    let provenance = [
        header("x-agent-id", "Who writes (stored with the version, shown in history and watch events)"),
        header("x-change-reason", "Why (stored with the version)"),
        header(
            "x-fencing-token",
            "`<lock>:<n>` (a lock of this namespace): refused with 409 stale_fencing_token unless n is the lock's newest token",
        ),
    ];
    let problem = json!({
        "description": "A problem document (RFC 9457) with a stable `code`: any failure not listed above",
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    });
    let conflict = json!({
        "description": "Conflict: `stale_fencing_token` (x-fencing-token is not the lock's newest), `idempotency_key_in_flight` (the first request with this Idempotency-Key still runs; Retry-After), or the operation's own conflict",
        "headers": {"Retry-After": {"description": "Seconds to wait (idempotency_key_in_flight)", "schema": {"type": "integer"}}},
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    });
    let reused = json!({
        "description": "`idempotency_key_reused`: this Idempotency-Key was used on this route with a different query or body (or `invalid_body`: a body of the wrong shape)",
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    });
    let replayed = json!({"description": "`true` when this is the kept answer of an earlier request with the same Idempotency-Key", "schema": {"type": "string", "enum": ["true"]}});
    let idempotency_key = json!({
        "name": "Idempotency-Key", "in": "header", "required": false,
        "description": "Makes a retry safe: the first answer is kept for 24 h per route and replayed (with Idempotent-Replayed: true) to a repeat with the same query and JSON body",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"}
    });
    let etag = json!({"ETag": {"description": "`\"<version>\"` of the entry", "schema": {"type": "string"}}});
    let Some(paths) = v.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            let Some(op) = op.as_object_mut() else {
                continue;
            };
            let idempotent = method == "post" && home_of(&concrete(path)).is_some();
            let id = op
                .get("operationId")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) {
                responses.entry("default").or_insert_with(|| problem.clone());
                if PROVENANCE.contains(&id.as_str()) {
                    responses.entry("409").or_insert_with(|| conflict.clone());
                }
                if idempotent {
                    responses.entry("409").or_insert_with(|| conflict.clone());
                    responses.entry("422").or_insert_with(|| reused.clone());
                    for (status, r) in responses.iter_mut() {
                        if status.starts_with('2') {
                            if let Some(r) = r.as_object_mut() {
                                let h = r.entry("headers").or_insert_with(|| json!({}));
                                h[REPLAYED_HEADER] = replayed.clone();
                            }
                        }
                    }
                }
                if ETAGGED.contains(&id.as_str()) {
                    for (status, r) in responses.iter_mut() {
                        if matches!(status.as_str(), "200" | "201" | "304") {
                            if let Some(r) = r.as_object_mut() {
                                let h = r.entry("headers").or_insert_with(|| json!({}));
                                h["ETag"] = etag["ETag"].clone();
                            }
                        }
                    }
                }
            }
            let params = op.entry("parameters").or_insert_with(|| Value::Array(Vec::new()));
            let Some(params) = params.as_array_mut() else {
                continue;
            };
            if idempotent && !params.iter().any(|p| p["name"] == "Idempotency-Key") {
                params.push(idempotency_key.clone());
            }
            if PROVENANCE.contains(&id.as_str()) {
                for h in &provenance {
                    if !params.iter().any(|p| p["name"] == h["name"]) {
                        params.push(h.clone());
                    }
                }
            }
            for p in params.iter_mut().filter_map(Value::as_object_mut) {
                match p.get("in").and_then(Value::as_str) {
                    Some("path") => {
                        if let Some(pattern) = path_pattern(path, p) {
                            set_pattern(p, pattern);
                        } else if matches!(p.get("name").and_then(Value::as_str), Some("key" | "name")) {
                            p.insert("schema".into(), key_schema());
                        }
                    }
                    Some("query") if p.get("name").and_then(Value::as_str) == Some("prefix") => {
                        p.insert(
                            "schema".into(),
                            json!({"type": "string", "maxLength": KEY_MAX_CHARS, "pattern": PREFIX_PATTERN}),
                        );
                    }
                    Some("header") => {
                        let name = p.get("name").and_then(Value::as_str).unwrap_or("").to_string();
                        if let Some(schema) = header_pattern(&name, path, &id) {
                            p.insert("schema".into(), schema);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

/// A path template with a plausible value in each parameter (to ask route rules about it).
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|s| if s.starts_with('{') { "x" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// The pattern a path parameter's value must match, if it is a name or a task id.
fn path_pattern(path: &str, p: &Map<String, Value>) -> Option<&'static str> {
    let name = p.get("name").and_then(Value::as_str)?;
    match name {
        "ns" | "queue" | "channel" => Some(NAME_PATTERN),
        "name" if path.contains("/locks/") || path.starts_with("/v1/partitions/") => Some(NAME_PATTERN),
        "id" if path.starts_with("/v1/agents/") => Some(NAME_PATTERN),
        "id" if path.starts_with("/v1/queues/") => Some(TASK_ID_PATTERN),
        "id" if path.starts_with("/v1/backups/") => Some(BACKUP_ID_PATTERN),
        _ => None,
    }
}

fn set_pattern(p: &mut Map<String, Value>, pattern: &str) {
    if let Some(s) = p.get_mut("schema").and_then(Value::as_object_mut) {
        s.insert("pattern".into(), pattern.into());
    }
}
