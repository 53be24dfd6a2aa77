//! Agents (DESIGN.md "Coordination primitives"): register, heartbeat, lifecycle, list.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::kv::canonical;
use super::{json_response, validate_name, JsonBody, Q};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::store::agents::Agent;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// What the agent can do (strings), used by `GET /v1/agents?capability=`.
    #[serde(default)]
    capabilities: Vec<String>,
    /// Any JSON object.
    #[schema(value_type = Object)]
    metadata: Option<Value>,
    /// Marked `lost` when no heartbeat arrives for this long (1000..=3600000, default 30000).
    heartbeat_ttl_ms: Option<u64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateBody {
    /// ready, running, paused, terminating, terminated or error.
    state: String,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    capability: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AgentList {
    items: Vec<Agent>,
}

const STATES: &[&str] = &[
    "initializing",
    "ready",
    "running",
    "paused",
    "terminating",
    "terminated",
    "error",
    "lost",
];

/// Register (or re-register) an agent; it starts `initializing`.
#[utoipa::path(
    put, path = "/v1/agents/{id}", tag = "agents",
    params(("id" = String, Path, description = "Agent id ([a-z0-9][a-z0-9._-]{0,62})")),
    request_body = RegisterBody,
    responses(
        (status = 200, description = "Registered", body = Agent),
        (status = 400, description = "Bad argument", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn register(
    State(st): State<AppState>,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<RegisterBody>,
) -> ApiResult<Response> {
    validate_name("agent", &id)?;
    let ttl = b.heartbeat_ttl_ms.unwrap_or(30_000);
    if !(1000..=3_600_000).contains(&ttl) {
        return Err(ApiError::bad_request(
            "heartbeat_ttl_ms must be between 1000 and 3600000",
        ));
    }
    if b.capabilities.len() > 64
        || b.capabilities
            .iter()
            .any(|c| c.is_empty() || c.len() > 64 || c.chars().any(char::is_control))
    {
        return Err(ApiError::bad_request(
            "at most 64 capabilities of 1 to 64 characters",
        ));
    }
    let metadata = match b.metadata {
        None => "{}".to_string(),
        Some(v @ Value::Object(_)) => canonical(&v),
        Some(_) => return Err(ApiError::bad_request("metadata must be a JSON object")),
    };
    let caps = serde_json::to_string(&b.capabilities).unwrap_or_else(|_| "[]".into());
    let agent = st.store.agent_register(&id, &caps, &metadata, ttl).await?;
    st.presence.add(&id);
    crate::agents::announce(&st.store, &id, "initializing", serde_json::json!({})).await;
    Ok(json_response(StatusCode::OK, &agent))
}

/// Heartbeat: the agent stays alive for another heartbeat_ttl_ms.
#[utoipa::path(
    post, path = "/v1/agents/{id}/heartbeat", tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    responses(
        (status = 200, description = "Alive", body = Agent),
        (status = 404, description = "Not registered", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_transition`: the agent was marked lost or terminated; register again", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn heartbeat(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    validate_name("agent", &id)?;
    let agent = st.store.agent_heartbeat(&id).await?;
    // Keep what the agent is recorded as holding bounded (expired locks and leases drop out).
    if let Err(e) = st.store.agent_prune_held(&id, 256).await {
        tracing::debug!(id, error = %e.detail, "pruning an agent's held set failed");
    }
    Ok(json_response(StatusCode::OK, &agent))
}

/// Lifecycle transition.
#[utoipa::path(
    post, path = "/v1/agents/{id}/state", tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    request_body = StateBody,
    responses(
        (status = 200, description = "Changed", body = Agent),
        (status = 404, description = "Not registered", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_transition`", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn set_state(
    State(st): State<AppState>,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<StateBody>,
) -> ApiResult<Response> {
    validate_name("agent", &id)?;
    if !STATES.contains(&b.state.as_str()) || b.state == "lost" || b.state == "initializing" {
        return Err(ApiError::bad_request(
            "state must be one of ready, running, paused, terminating, terminated, error",
        ));
    }
    let agent = st.store.agent_set_state(&id, &b.state).await?;
    if agent.state == "terminated" {
        // Gone for good: no more heartbeat checks, and what it still holds is freed.
        st.store.agent_untrack(&id).await?;
        let held = st.store.agent_take_held(&id).await?;
        crate::agents::release(&st.store, &id, "terminated", held).await;
    } else {
        crate::agents::announce(&st.store, &id, &agent.state, serde_json::json!({})).await;
    }
    Ok(json_response(StatusCode::OK, &agent))
}

/// One agent.
#[utoipa::path(
    get, path = "/v1/agents/{id}", tag = "agents",
    params(("id" = String, Path, description = "Agent id")),
    responses(
        (status = 200, description = "The agent", body = Agent),
        (status = 404, description = "Not registered", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_agent(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    validate_name("agent", &id)?;
    let a = st
        .store
        .agent_get(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such agent"))?;
    Ok(json_response(StatusCode::OK, &a))
}

/// Registered agents, optionally filtered by state and capability.
#[utoipa::path(
    get, path = "/v1/agents", tag = "agents",
    params(ListQuery),
    responses((status = 200, description = "Agents, by id", body = AgentList))
)]
pub async fn list_agents(State(st): State<AppState>, Q(q): Q<ListQuery>) -> ApiResult<Response> {
    if let Some(s) = &q.state {
        if !STATES.contains(&s.as_str()) {
            return Err(ApiError::bad_request(format!("unknown state `{s}`")));
        }
    }
    let mut ids = st.store.agent_ids().await?;
    ids.sort();
    let mut items = Vec::new();
    for id in ids {
        if let Some(a) = st.store.agent_get(&id).await? {
            if q.state.as_deref().is_none_or(|s| a.state == s)
                && q.capability.as_deref().is_none_or(|c| a.can(c))
            {
                items.push(a);
            }
        }
    }
    Ok(json_response(StatusCode::OK, &AgentList { items }))
}
