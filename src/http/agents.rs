//! Agent routes (DESIGN.md "Coordination primitives"): register, heartbeat, lifecycle, list.
//! Transport only: parse, call `ops`, map.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{JsonBody, Who, Q};
use super::problem::json_response;
use crate::domain::agent::{Agent, AgentFilter, AgentList, AgentState, RegisterBody, StateBody};
use crate::domain::page::{Page, PageQuery};
use crate::error::ApiResult;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register, get_agent))
        .routes(routes!(heartbeat))
        .routes(routes!(set_state))
        .routes(routes!(list_agents))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[param(value_type = Option<AgentState>)]
    state: Option<String>,
    capability: Option<String>,
    /// `next_cursor` of the previous page (opaque).
    #[param(max_length = 2048)]
    cursor: Option<String>,
    /// Page size, 1 ..= 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// Register (or re-register) an agent; it starts `initializing`.
#[utoipa::path(
    put, path = "/v1/agents/{id}", tag = "agents", operation_id = "agent_register",
    params(("id" = String, Path, description = "Agent id ([a-z0-9][a-z0-9._-]{0,62})")),
    request_body = RegisterBody,
    responses(
        (status = 200, description = "Registered", body = Agent),
        (status = 400, description = "Bad argument", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn register(
    State(st): State<AppState>,
    Who(who): Who,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<RegisterBody>,
) -> ApiResult<Response> {
    Ok(json_response(
        StatusCode::OK,
        &st.ops.agent_register(&who, &id, b).await?,
    ))
}

/// Heartbeat: the agent stays alive for another heartbeat_ttl_ms.
#[utoipa::path(
    post, path = "/v1/agents/{id}/heartbeat", tag = "agents", operation_id = "agent_heartbeat",
    params(("id" = String, Path, description = "Agent id")),
    responses(
        (status = 200, description = "Alive", body = Agent),
        (status = 404, description = "Not registered", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_transition`: the agent was marked lost or terminated; register again", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn heartbeat(
    State(st): State<AppState>,
    Who(who): Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(json_response(
        StatusCode::OK,
        &st.ops.agent_heartbeat(&who, &id).await?,
    ))
}

/// Lifecycle transition.
#[utoipa::path(
    post, path = "/v1/agents/{id}/state", tag = "agents", operation_id = "agent_set_state",
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
    Who(who): Who,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<StateBody>,
) -> ApiResult<Response> {
    Ok(json_response(
        StatusCode::OK,
        &st.ops.agent_set_state(&who, &id, &b).await?,
    ))
}

/// One agent.
#[utoipa::path(
    get, path = "/v1/agents/{id}", tag = "agents", operation_id = "agent_get",
    params(("id" = String, Path, description = "Agent id")),
    responses(
        (status = 200, description = "The agent", body = Agent),
        (status = 404, description = "Not registered", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_agent(
    State(st): State<AppState>,
    Who(who): Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(json_response(StatusCode::OK, &st.ops.agent(&who, &id).await?))
}

/// Registered agents, optionally filtered by state and capability.
#[utoipa::path(
    get, path = "/v1/agents", tag = "agents", operation_id = "agents_list",
    params(ListQuery),
    responses(
        (status = 200, description = "Agents, by id", body = AgentList),
        (status = 400, description = "Bad limit or cursor", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_agents(
    State(st): State<AppState>,
    Who(who): Who,
    Q(q): Q<ListQuery>,
) -> ApiResult<Response> {
    let filter = AgentFilter {
        state: q.state,
        capability: q.capability,
    };
    let page = Page::parse(&PageQuery {
        cursor: q.cursor,
        limit: q.limit,
    })?;
    let (items, next_cursor) = st.ops.agents(&who, &filter, &page).await?;
    Ok(json_response(StatusCode::OK, &AgentList { items, next_cursor }))
}
