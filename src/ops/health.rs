//! Readiness and status (DESIGN.md "Operations").

use serde::Serialize;
use utoipa::ToSchema;

use super::Ops;
use crate::domain::auth::{Caller, Permission, Scope};
use crate::error::{ApiError, ApiResult};
use crate::live::relay::RelayStatus;
use crate::store::admin::Topology;
use crate::store::migrate::LIBRARY_VERSION;

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` / `ready`.
    pub status: String,
    /// Whether the other routes need a bearer token (a tokens file is set): pages ask for one
    /// before their first call instead of after a 401.
    pub auth_required: bool,
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
    keyspace_relay: RelayStatus,
    /// The Redis deployment now: primaries (with slots on a cluster), replicas, failing nodes.
    /// Null when it could not be read.
    topology: Option<Topology>,
}

impl Ops {
    /// Redis answers and holds the functions library this binary expects.
    pub async fn ready(&self) -> ApiResult<Health> {
        match self.store.library_version().await?.as_deref() {
            Some(v) if v == LIBRARY_VERSION => Ok(Health {
                status: "ready".into(),
                auth_required: self.auth.enabled(),
            }),
            other => Err(ApiError::unavailable(format!(
                "functions library version {other:?} loaded, {LIBRARY_VERSION} expected"
            ))),
        }
    }

    pub async fn status(&self, who: &Caller) -> ApiResult<Status> {
        who.check(Permission::Read, Scope::Service)?;
        let info = self.store.server_info().await?;
        Ok(Status {
            service_version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: self.started.elapsed().as_secs(),
            key_prefix: self.store.keys().prefix().into(),
            redis_source: if self.embedded { "embedded" } else { "external" }.into(),
            redis_mode: format!("{:?}", self.store.mode()).to_lowercase(),
            redis_version: info.version,
            redis_role: info.role,
            used_memory_bytes: info.used_memory,
            maxmemory_bytes: info.maxmemory,
            connected_clients: info.connected_clients,
            redis_latency_ms: (info.latency_ms * 1000.0).round() / 1000.0,
            functions_library_version: info.library_version,
            schema_version: info.schema_version,
            notify_keyspace_events: info.notify_keyspace_events,
            keyspace_relay: self.relay.status(),
            topology: self.store.topology().await.ok(),
        })
    }
}
