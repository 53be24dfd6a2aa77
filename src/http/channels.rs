//! Pub/sub publishing (`POST /v1/channels/{channel}/publish`); subscribing is the watch
//! socket's `subscribe` op. Transport only.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{JsonBody, Who};
use super::problem::json_response;
use crate::domain::watch::{PublishBody, PublishResult};
use crate::error::ApiResult;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(publish))
}

/// Publish a message to a channel.
#[utoipa::path(
    post, path = "/v1/channels/{channel}/publish", tag = "watch", operation_id = "channel_publish",
    params(("channel" = String, Path, description = "Channel name ([a-z0-9][a-z0-9._-]{0,62})")),
    request_body = PublishBody,
    responses(
        (status = 200, description = "Published", body = PublishResult),
        (status = 400, description = "Bad channel name", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn publish(
    State(st): State<AppState>,
    Who(who): Who,
    Path(channel): Path<String>,
    JsonBody(body): JsonBody<PublishBody>,
) -> ApiResult<Response> {
    Ok(json_response(
        StatusCode::OK,
        &st.ops.publish(&who, &channel, body).await?,
    ))
}
