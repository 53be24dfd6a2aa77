//! Publishing on pub/sub channels (subscribing is the watch session's `subscribe`).

use super::Ops;
use crate::domain::auth::{Caller, Permission, Scope};
use crate::domain::json::canonical;
use crate::domain::names::validate_name;
use crate::domain::watch::{PublishBody, PublishResult};
use crate::error::{ApiError, ApiResult, ErrorCode};

impl Ops {
    /// Publish the body's message; answers how many Redis subscriptions received it.
    pub async fn publish(&self, who: &Caller, channel: &str, body: PublishBody) -> ApiResult<PublishResult> {
        who.check(Permission::Write, Scope::Channel(channel))?;
        validate_name("channel", channel)?;
        let message = body
            .message
            .ok_or_else(|| ApiError::new(ErrorCode::InvalidBody, "missing field `message`"))?;
        let receivers = self
            .store
            .publish(self.store.keys().pubsub_channel(channel), &canonical(&message))
            .await?;
        Ok(PublishResult { receivers })
    }
}
