//! Operations endpoints: liveness, readiness, status and Prometheus metrics.

use std::collections::HashMap;
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use fred::prelude::*;
use serde::Serialize;
use utoipa::ToSchema;

use super::json_response;
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::store::migrate;

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` / `ready`.
    status: String,
}

/// Liveness: the process is up (does not touch Redis).
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> Response {
    json_response(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

/// Readiness: Redis answers and holds the functions library this binary expects.
#[utoipa::path(
    get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Redis unreachable or functions missing", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn readyz(State(st): State<AppState>) -> ApiResult<Response> {
    let v = st
        .store
        .timed("fcall_ro", migrate::loaded_library_version(&st.store))
        .await?;
    match v.as_deref() {
        Some(v) if v == migrate::LIBRARY_VERSION => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({ "status": "ready" }),
        )),
        other => Err(ApiError::unavailable(format!(
            "functions library version {other:?} loaded, {} expected",
            migrate::LIBRARY_VERSION
        ))),
    }
}

#[derive(Serialize, ToSchema)]
pub struct Status {
    service_version: String,
    uptime_seconds: u64,
    /// Key prefix in Redis.
    key_prefix: String,
    /// `embedded` (own redis-server) or `external`.
    redis_source: String,
    /// `standalone`, `sentinel` or `cluster` as configured.
    redis_mode: String,
    redis_version: Option<String>,
    /// Role of the node answering: master / slave.
    redis_role: Option<String>,
    used_memory_bytes: Option<u64>,
    /// 0 = no limit.
    maxmemory_bytes: Option<u64>,
    connected_clients: Option<u64>,
    /// Round trip of a PING, milliseconds.
    redis_latency_ms: f64,
    functions_library_version: Option<String>,
    schema_version: Option<u32>,
    /// The server's notify-keyspace-events setting; null when CONFIG is not allowed.
    notify_keyspace_events: Option<String>,
    /// Keyspace-notification relay (expire / evict / external events).
    keyspace_relay: crate::relay::RelayStatus,
}

/// Service and Redis status.
#[utoipa::path(
    get, path = "/v1/status", tag = "ops",
    responses(
        (status = 200, description = "Status", body = Status),
        (status = 503, description = "Redis unavailable", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn status(State(st): State<AppState>) -> ApiResult<Response> {
    let pool = st.store.pool();
    let t = Instant::now();
    let _: String = st.store.timed("ping", pool.ping(None)).await?;
    let latency = t.elapsed().as_secs_f64() * 1000.0;
    let info: String = st.store.timed("info", pool.info(None)).await?;
    let fields: HashMap<&str, &str> = info
        .lines()
        .filter_map(|l| l.trim_end().split_once(':'))
        .collect();
    let num = |k: &str| fields.get(k).and_then(|v| v.parse::<u64>().ok());
    let lib = migrate::loaded_library_version(&st.store).await.ok().flatten();
    let schema: Option<String> = pool.get(st.store.keys().schema()).await.ok().flatten();
    let nke: Option<String> = pool
        .config_get::<HashMap<String, String>, _>("notify-keyspace-events")
        .await
        .ok()
        .and_then(|m| m.get("notify-keyspace-events").cloned());
    let body = Status {
        service_version: env!("CARGO_PKG_VERSION").into(),
        uptime_seconds: st.started.elapsed().as_secs(),
        key_prefix: st.store.keys().prefix().into(),
        redis_source: if st.embedded { "embedded" } else { "external" }.into(),
        redis_mode: format!("{:?}", st.store.mode()).to_lowercase(),
        redis_version: fields.get("redis_version").map(|s| s.to_string()),
        redis_role: fields.get("role").map(|s| s.to_string()),
        used_memory_bytes: num("used_memory"),
        maxmemory_bytes: num("maxmemory"),
        connected_clients: num("connected_clients"),
        redis_latency_ms: (latency * 1000.0).round() / 1000.0,
        functions_library_version: lib,
        schema_version: schema.and_then(|s| s.parse().ok()),
        notify_keyspace_events: nke,
        keyspace_relay: st.relay.status(),
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// Prometheus text exposition.
#[utoipa::path(
    get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"))
)]
pub async fn metrics(State(st): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        st.metrics.render(),
    )
        .into_response()
}
