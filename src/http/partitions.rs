//! Memory partitions (DESIGN.md "Memory partitions"): quota-bounded namespaces owned by an
//! agent, allocated from a pool of `pool_capacity_bytes`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{json_response, validate_name, validate_text, JsonBody};
use crate::app::AppState;
use crate::error::{ApiError, ApiResult};
use crate::store::partitions::{Partition, Pool};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// The partition's namespace name.
    name: String,
    owner_agent: String,
    /// Bytes of keys + values + metadata it may hold (≥ 1).
    quota_bytes: u64,
    max_keys: Option<u64>,
    /// short_term (default TTL 30 min), working (2 h), long_term (24 h) or shared (none).
    tier: String,
    /// Overrides the tier's default TTL (0 = none).
    default_ttl_ms: Option<u64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchBody {
    quota_bytes: Option<u64>,
    /// 0 removes the limit.
    max_keys: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct PartitionList {
    items: Vec<Partition>,
}

fn tier_ttl(tier: &str) -> ApiResult<Option<u64>> {
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

const MAX_QUOTA: u64 = 1 << 50;

/// Create a partition (allocated from the pool).
#[utoipa::path(
    post, path = "/v1/partitions", tag = "partitions",
    request_body = CreateBody,
    responses(
        (status = 201, description = "Created", body = Partition),
        (status = 409, description = "`already_exists`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 507, description = "`pool_exhausted`", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(State(st): State<AppState>, JsonBody(b): JsonBody<CreateBody>) -> ApiResult<Response> {
    validate_name("partition", &b.name)?;
    validate_text("owner_agent", &b.owner_agent, 128)?;
    if !(1..=MAX_QUOTA).contains(&b.quota_bytes) {
        return Err(ApiError::bad_request(format!(
            "quota_bytes must be between 1 and {MAX_QUOTA}"
        )));
    }
    if matches!(b.max_keys, Some(0)) || b.max_keys.is_some_and(|k| k > 1 << 40) {
        return Err(ApiError::bad_request("max_keys must be at least 1"));
    }
    let mut ttl = tier_ttl(&b.tier)?;
    if let Some(t) = b.default_ttl_ms {
        if t > super::MAX_TTL_MS {
            return Err(ApiError::bad_request("default_ttl_ms is too large"));
        }
        ttl = (t > 0).then_some(t);
    }
    let p = st
        .store
        .part_create(
            &b.name,
            &b.owner_agent,
            &b.tier,
            b.quota_bytes,
            b.max_keys,
            ttl,
            st.cfg.pool_capacity_bytes,
        )
        .await?;
    crate::pubsub::event(
        &st.store,
        &format!("partitions.{}", p.name),
        serde_json::json!({"event": "created", "partition": p.name, "owner_agent": p.owner_agent, "quota_bytes": p.quota_bytes}),
    )
    .await;
    Ok(json_response(StatusCode::CREATED, &p))
}

/// Every partition with its usage.
#[utoipa::path(
    get, path = "/v1/partitions", tag = "partitions",
    responses((status = 200, description = "Partitions", body = PartitionList))
)]
pub async fn list(State(st): State<AppState>) -> ApiResult<Response> {
    let mut names = st.store.part_names().await?;
    names.sort();
    let mut items = Vec::new();
    for n in names {
        if let Some(p) = st.store.part_get(&n).await? {
            items.push(p);
        }
    }
    Ok(json_response(StatusCode::OK, &PartitionList { items }))
}

/// One partition with its usage.
#[utoipa::path(
    get, path = "/v1/partitions/{name}", tag = "partitions",
    params(("name" = String, Path, description = "Partition name")),
    responses(
        (status = 200, description = "The partition", body = Partition),
        (status = 404, description = "No such partition", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_partition(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    validate_name("partition", &name)?;
    let p = st
        .store
        .part_get(&name)
        .await?
        .ok_or_else(|| ApiError::not_found("no such partition"))?;
    Ok(json_response(StatusCode::OK, &p))
}

/// Change the quota or key limit (lowering below usage only stops growth).
#[utoipa::path(
    patch, path = "/v1/partitions/{name}", tag = "partitions",
    params(("name" = String, Path, description = "Partition name")),
    request_body = PatchBody,
    responses(
        (status = 200, description = "Changed", body = Partition),
        (status = 404, description = "No such partition", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 507, description = "`pool_exhausted`", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn patch(
    State(st): State<AppState>,
    Path(name): Path<String>,
    JsonBody(b): JsonBody<PatchBody>,
) -> ApiResult<Response> {
    validate_name("partition", &name)?;
    if let Some(q) = b.quota_bytes {
        if !(1..=MAX_QUOTA).contains(&q) {
            return Err(ApiError::bad_request(format!(
                "quota_bytes must be between 1 and {MAX_QUOTA}"
            )));
        }
    }
    let p = st
        .store
        .part_update(&name, b.quota_bytes, b.max_keys, st.cfg.pool_capacity_bytes)
        .await?;
    crate::pubsub::event(
        &st.store,
        &format!("partitions.{name}"),
        serde_json::json!({"event": "updated", "partition": name, "quota_bytes": p.quota_bytes, "max_keys": p.max_keys}),
    )
    .await;
    Ok(json_response(StatusCode::OK, &p))
}

/// Delete the partition and all its data; its quota goes back to the pool.
#[utoipa::path(
    delete, path = "/v1/partitions/{name}", tag = "partitions",
    params(("name" = String, Path, description = "Partition name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such partition", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete(State(st): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    validate_name("partition", &name)?;
    st.store.part_delete(&name, st.cfg.pool_capacity_bytes).await?;
    crate::pubsub::event(
        &st.store,
        &format!("partitions.{name}"),
        serde_json::json!({"event": "deleted", "partition": name}),
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Pool capacity, allocation and use.
#[utoipa::path(
    get, path = "/v1/pool", tag = "partitions",
    responses((status = 200, description = "The pool", body = Pool))
)]
pub async fn pool(State(st): State<AppState>) -> ApiResult<Response> {
    Ok(json_response(
        StatusCode::OK,
        &st.store.pool_status(st.cfg.pool_capacity_bytes).await?,
    ))
}
