//! Pub/sub publishing (`POST /v1/channels/{channel}/publish`); subscribing is the watch
//! socket's `subscribe` op.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::kv::{canonical, present};
use super::{json_response, validate_name, JsonBody};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult, ErrorCode};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    /// Any JSON value.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Value)]
    message: Option<Value>,
}

#[derive(Serialize, ToSchema)]
pub struct PublishResult {
    /// Redis subscriptions that received it: one per matching pattern per service process
    /// (not per socket). Pub/sub is fire-and-forget; use watches for guaranteed delivery.
    receivers: u64,
}

/// Publish a message to a channel.
#[utoipa::path(
    post, path = "/v1/channels/{channel}/publish", tag = "watch",
    params(("channel" = String, Path, description = "Channel name ([a-z0-9][a-z0-9._-]{0,62})")),
    request_body = PublishBody,
    responses(
        (status = 200, description = "Published", body = PublishResult),
        (status = 400, description = "Bad channel name", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn publish(
    State(st): State<AppState>,
    Path(channel): Path<String>,
    JsonBody(body): JsonBody<PublishBody>,
) -> ApiResult<Response> {
    validate_name("channel", &channel)?;
    let message = body
        .message
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidBody, "missing field `message`"))?;
    let receivers = crate::pubsub::publish(&st.store, &channel, &canonical(&message)).await?;
    Ok(json_response(StatusCode::OK, &PublishResult { receivers }))
}
