//! Memory partitions and the pool (DESIGN.md "Memory partitions").

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::names::{validate_name, validate_text, MAX_TTL_MS};
use crate::error::{ApiError, ApiResult};

/// Largest quota of one partition.
pub const MAX_QUOTA: u64 = 1 << 50;

/// A partition with its usage.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Partition {
    pub name: String,
    pub owner_agent: String,
    /// short_term, working, long_term or shared.
    pub tier: String,
    pub quota_bytes: u64,
    pub max_keys: Option<u64>,
    /// Applied to writes without ttl_ms (null = none).
    pub default_ttl_ms: Option<u64>,
    /// Bytes of live keys, values and metadata (as accounted by every write).
    pub used_bytes: u64,
    pub key_count: u64,
    /// used_bytes / quota_bytes.
    pub utilization: f64,
    pub created_at: String,
    pub updated_at: String,
}

/// `GET /v1/pool`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Pool {
    pub capacity_bytes: u64,
    /// Sum of the partitions' quotas.
    pub allocated_bytes: u64,
    /// Sum of the partitions' used bytes.
    pub used_bytes: u64,
    /// allocated_bytes / capacity_bytes.
    pub utilization: f64,
    pub partitions: u64,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// The partition's namespace name.
    #[schema(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$")]
    pub name: String,
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]+$"
    )]
    pub owner_agent: String,
    /// Bytes of keys + values + metadata it may hold (≥ 1).
    #[schema(minimum = 1, maximum = 1125899906842624_u64)]
    #[serde(deserialize_with = "crate::domain::json::int::req")]
    pub quota_bytes: u64,
    #[schema(minimum = 1, maximum = 1099511627776_u64)]
    #[serde(default, deserialize_with = "crate::domain::json::int::opt")]
    pub max_keys: Option<u64>,
    /// short_term (default TTL 30 min), working (2 h), long_term (24 h) or shared (none).
    #[schema(value_type = Tier)]
    pub tier: String,
    /// Overrides the tier's default TTL (0 = none).
    #[schema(minimum = 0, maximum = 315360000000_u64)]
    #[serde(default, deserialize_with = "crate::domain::json::int::opt")]
    pub default_ttl_ms: Option<u64>,
}

impl CreateBody {
    /// Validated; returns the default TTL the partition's writes get (None = none).
    pub fn check(&self) -> ApiResult<Option<u64>> {
        validate_name("partition", &self.name)?;
        validate_text("owner_agent", &self.owner_agent, 128)?;
        check_quota(self.quota_bytes)?;
        if matches!(self.max_keys, Some(0)) || self.max_keys.is_some_and(|k| k > 1 << 40) {
            return Err(ApiError::bad_request("max_keys must be at least 1"));
        }
        let mut ttl = tier_ttl(&self.tier)?;
        if let Some(t) = self.default_ttl_ms {
            if t > MAX_TTL_MS {
                return Err(ApiError::bad_request("default_ttl_ms is too large"));
            }
            ttl = (t > 0).then_some(t);
        }
        Ok(ttl)
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    #[schema(minimum = 1, maximum = 1125899906842624_u64)]
    #[serde(default, deserialize_with = "crate::domain::json::int::opt")]
    pub quota_bytes: Option<u64>,
    /// 0 removes the limit.
    #[schema(minimum = 0, maximum = 1099511627776_u64)]
    #[serde(default, deserialize_with = "crate::domain::json::int::opt")]
    pub max_keys: Option<u64>,
}

impl PatchBody {
    pub fn check(&self) -> ApiResult<()> {
        if let Some(q) = self.quota_bytes {
            check_quota(q)?;
        }
        if self.max_keys.is_some_and(|k| k > 1 << 40) {
            return Err(ApiError::bad_request(
                "max_keys must be at most 2^40 (0 removes the limit)",
            ));
        }
        Ok(())
    }
}

/// The tiers a partition can have.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "snake_case")]
pub enum Tier {
    ShortTerm,
    Working,
    LongTerm,
    Shared,
}

#[derive(Serialize, ToSchema)]
pub struct PartitionList {
    pub items: Vec<Partition>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

fn check_quota(q: u64) -> ApiResult<()> {
    if !(1..=MAX_QUOTA).contains(&q) {
        return Err(ApiError::bad_request(format!(
            "quota_bytes must be between 1 and {MAX_QUOTA}"
        )));
    }
    Ok(())
}

/// The default TTL of a tier.
pub fn tier_ttl(tier: &str) -> ApiResult<Option<u64>> {
    Ok(match tier {
        "short_term" => Some(30 * 60_000),
        "working" => Some(2 * 3_600_000),
        "long_term" => Some(24 * 3_600_000),
        "shared" => None,
        _ => {
            return Err(ApiError::bad_request(
                "tier must be short_term, working, long_term or shared",
            ))
        }
    })
}
