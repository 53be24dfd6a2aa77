//! Operations routes: liveness, readiness, status and Prometheus metrics.

use super::extract::Who;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::problem::json_response;
use crate::error::ApiResult;
use crate::ops::health::{Health, Status};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(status))
        .routes(routes!(metrics))
}

/// Liveness: the process is up (does not touch Redis).
#[utoipa::path(get, path = "/healthz", tag = "ops", operation_id = "healthz", responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz(State(st): State<AppState>) -> Response {
    json_response(
        StatusCode::OK,
        &Health {
            status: "ok".into(),
            auth_required: st.ops.auth().enabled(),
        },
    )
}

/// Readiness: Redis answers and holds the functions library this binary expects.
#[utoipa::path(
    get, path = "/readyz", tag = "ops", operation_id = "readyz",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Redis unreachable or functions missing", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn readyz(State(st): State<AppState>) -> ApiResult<Response> {
    Ok(json_response(StatusCode::OK, &st.ops.ready().await?))
}

/// Service and Redis status.
#[utoipa::path(
    get, path = "/v1/status", tag = "ops", operation_id = "status_get",
    responses(
        (status = 200, description = "Status", body = Status),
        (status = 503, description = "Redis unavailable", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn status(State(st): State<AppState>, Who(who): Who) -> ApiResult<Response> {
    Ok(json_response(StatusCode::OK, &st.ops.status(&who).await?))
}

/// Prometheus text exposition.
#[utoipa::path(
    get, path = "/metrics", tag = "ops", operation_id = "metrics_get",
    description = "Public unless `metrics_public = false`; then any bearer token of the tokens file.",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"))
)]
pub async fn metrics(State(st): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        st.metrics.render(),
    )
        .into_response()
}
