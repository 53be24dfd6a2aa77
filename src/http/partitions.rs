//! Partition and pool routes (DESIGN.md "Memory partitions"). Transport only: parse, call
//! `ops`, map.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{JsonBody, Who, Q};
use super::problem::json_response;
use crate::domain::page::{Page, PageQuery};
use crate::domain::partition::{CreateBody, Partition, PartitionList, PatchBody, Pool};
use crate::error::ApiResult;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_partition, patch, delete))
        .routes(routes!(pool))
}

/// Create a partition (allocated from the pool).
#[utoipa::path(
    post, path = "/v1/partitions", tag = "partitions", operation_id = "partition_create",
    request_body = CreateBody,
    responses(
        (status = 201, description = "Created", body = Partition),
        (status = 409, description = "`already_exists`", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 507, description = "`pool_exhausted`", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(st): State<AppState>,
    Who(who): Who,
    JsonBody(b): JsonBody<CreateBody>,
) -> ApiResult<Response> {
    Ok(json_response(
        StatusCode::CREATED,
        &st.ops.partition_create(&who, b).await?,
    ))
}

/// Every partition with its usage.
#[utoipa::path(
    get, path = "/v1/partitions", tag = "partitions", operation_id = "partitions_list",
    params(PageQuery),
    responses(
        (status = 200, description = "Partitions, by name", body = PartitionList),
        (status = 400, description = "Bad limit or cursor", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list(State(st): State<AppState>, Who(who): Who, Q(q): Q<PageQuery>) -> ApiResult<Response> {
    let (items, next_cursor) = st.ops.partitions(&who, &Page::parse(&q)?).await?;
    Ok(json_response(
        StatusCode::OK,
        &PartitionList { items, next_cursor },
    ))
}

/// One partition with its usage.
#[utoipa::path(
    get, path = "/v1/partitions/{name}", tag = "partitions", operation_id = "partition_get",
    params(("name" = String, Path, description = "Partition name")),
    responses(
        (status = 200, description = "The partition", body = Partition),
        (status = 404, description = "No such partition", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_partition(
    State(st): State<AppState>,
    Who(who): Who,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    Ok(json_response(
        StatusCode::OK,
        &st.ops.partition(&who, &name).await?,
    ))
}

/// Change the quota or key limit (lowering below usage only stops growth).
#[utoipa::path(
    patch, path = "/v1/partitions/{name}", tag = "partitions", operation_id = "partition_patch",
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
    Who(who): Who,
    Path(name): Path<String>,
    JsonBody(b): JsonBody<PatchBody>,
) -> ApiResult<Response> {
    Ok(json_response(
        StatusCode::OK,
        &st.ops.partition_patch(&who, &name, &b).await?,
    ))
}

/// Delete the partition and all its data; its quota goes back to the pool.
#[utoipa::path(
    delete, path = "/v1/partitions/{name}", tag = "partitions", operation_id = "partition_delete",
    params(("name" = String, Path, description = "Partition name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such partition", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete(
    State(st): State<AppState>,
    Who(who): Who,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    st.ops.partition_delete(&who, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Pool capacity, allocation and use.
#[utoipa::path(
    get, path = "/v1/pool", tag = "partitions", operation_id = "pool_get",
    responses((status = 200, description = "The pool", body = Pool))
)]
pub async fn pool(State(st): State<AppState>, Who(who): Who) -> ApiResult<Response> {
    Ok(json_response(StatusCode::OK, &st.ops.pool(&who).await?))
}
