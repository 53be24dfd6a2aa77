//! `Idempotency-Key` records: one string per key (JSON [`Record`]), written with SET beside the
//! keys of what the route changes. Reserved with `SET NX GET` before the operation runs,
//! replaced by the finished answer after it (not in the operation's own Redis function: see
//! `ops::idempotency`).

use fred::prelude::*;

use super::Store;
use crate::domain::idempotency::{Home, Record};
use crate::error::{ApiError, ApiResult};

impl Store {
    /// Reserve `id` with `record` for `ttl_ms` unless a record exists; the existing one if so.
    pub async fn idem_reserve(
        &self,
        home: &Home,
        id: &str,
        record: &Record,
        ttl_ms: u64,
    ) -> ApiResult<Option<Record>> {
        let key = self.keys().idempotency(home, id);
        let text = serde_json::to_string(record).map_err(|e| ApiError::internal(e.to_string()))?;
        let old: Option<String> = self
            .timed(
                "set",
                self.client().set(
                    key,
                    text,
                    Some(Expiration::PX(ttl_ms as i64)),
                    Some(SetOptions::NX),
                    true,
                ),
            )
            .await?;
        // A record this binary cannot read is treated as absent (and is overwritten when done).
        Ok(old.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Replace the record (the finished answer), kept for `ttl_ms`.
    pub async fn idem_store(&self, home: &Home, id: &str, record: &Record, ttl_ms: u64) -> ApiResult<()> {
        let key = self.keys().idempotency(home, id);
        let text = serde_json::to_string(record).map_err(|e| ApiError::internal(e.to_string()))?;
        let _: Option<String> = self
            .timed(
                "set",
                self.client()
                    .set(key, text, Some(Expiration::PX(ttl_ms as i64)), None, false),
            )
            .await?;
        Ok(())
    }

    /// Drop the record (the request ended without an answer worth replaying).
    pub async fn idem_drop(&self, home: &Home, id: &str) -> ApiResult<()> {
        let key = self.keys().idempotency(home, id);
        let _: i64 = self.timed("del", self.client().del(key)).await?;
        Ok(())
    }
}
