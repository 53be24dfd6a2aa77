//! Backup routes (DESIGN.md "Backups"): take, list, poll, download, verify, restore, delete,
//! upload. Transport only: parse, call `ops`, map. Upload and restore are [`long_router`]:
//! outside `body_limit_bytes` and `request_timeout_ms` (an upload streams a file of up to
//! `backup_upload_limit_bytes`; a restore runs as long as the file takes).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncReadExt;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{JsonBody, Who};
use super::problem::json_response;
use crate::domain::backups::{BackupInfo, BackupList, BackupOrigin, CreateBackup, RestoreBody, VerifyReport};
use crate::error::{ApiError, ApiResult};
use crate::ops::restore::RestoreSummary;
use crate::state::AppState;

/// Media type of a backup file.
pub const BACKUP_MEDIA_TYPE: &str = "application/octet-stream";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get_backup, delete))
        .routes(routes!(download))
        .routes(routes!(verify))
}

/// The routes without the body limit and the request timeout.
pub fn long_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload))
        .routes(routes!(restore))
}

/// A backup file's bytes (for the document only).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct BackupFile(Vec<u8>);

fn with_location(status: StatusCode, info: &BackupInfo) -> Response {
    let mut r = json_response(status, info);
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/backups/{}", info.id)) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Take a backup: answers at once with status `running`; poll `GET /v1/backups/{id}`.
#[utoipa::path(
    post, path = "/v1/backups", tag = "backups", operation_id = "backup_create",
    request_body = CreateBackup,
    responses(
        (status = 202, description = "Started (status `running`); `Location` names the backup to poll", body = BackupInfo),
        (status = 400, description = "An unknown namespace or partition, `queues` given, or `backup_key_missing` (`encrypt: true` with no key)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Too many backups are running", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create(
    State(st): State<AppState>,
    Who(who): Who,
    JsonBody(b): JsonBody<CreateBackup>,
) -> ApiResult<Response> {
    let info = st.ops.backup_start(&who, b, BackupOrigin::Api).await?;
    Ok(with_location(StatusCode::ACCEPTED, &info))
}

/// The backups this service keeps, newest first.
#[utoipa::path(
    get, path = "/v1/backups", tag = "backups", operation_id = "backups_list",
    responses((status = 200, description = "Backups, newest first", body = BackupList))
)]
pub async fn list(State(st): State<AppState>, Who(who): Who) -> ApiResult<Response> {
    let items = st.ops.backups_list(&who)?;
    Ok(json_response(StatusCode::OK, &BackupList { items }))
}

/// One backup: status, progress, and (once it succeeded) size, SHA-256 and namespaces.
#[utoipa::path(
    get, path = "/v1/backups/{id}", tag = "backups", operation_id = "backup_get",
    params(("id" = String, Path, description = "Backup id")),
    responses(
        (status = 200, description = "The backup", body = BackupInfo),
        (status = 404, description = "No such backup", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_backup(
    State(st): State<AppState>,
    Who(who): Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(json_response(StatusCode::OK, &st.ops.backup_get(&who, &id)?))
}

/// Delete a backup's file and record.
#[utoipa::path(
    delete, path = "/v1/backups/{id}", tag = "backups", operation_id = "backup_delete",
    params(("id" = String, Path, description = "Backup id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such backup", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Still running", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn delete(
    State(st): State<AppState>,
    Who(who): Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    st.ops.backup_delete(&who, &id)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The backup file, streamed (the format is in the README, "Backup file format").
#[utoipa::path(
    get, path = "/v1/backups/{id}/download", tag = "backups", operation_id = "backup_download",
    params(("id" = String, Path, description = "Backup id")),
    responses(
        (status = 200, description = "The file", body = BackupFile, content_type = "application/octet-stream"),
        (status = 404, description = "No such backup", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Still running, or failed", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn download(
    State(st): State<AppState>,
    Who(who): Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let (path, info) = st.ops.backup_file(&who, &id)?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::internal(format!("backup file {}: {e}", path.display())))?;
    let len = file.metadata().await.map(|m| m.len()).ok();
    // 64 KiB reads, one at a time: memory stays flat whatever the file's size.
    let stream = futures::stream::unfold(file, |mut f| async move {
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(BACKUP_MEDIA_TYPE));
    if let Some(len) = len {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}.swsbak\"", info.id)) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Some(sha) = info.sha256.as_deref().and_then(|s| HeaderValue::from_str(s).ok()) {
        h.insert("x-content-sha256", sha);
    }
    Ok(r)
}

/// Read the whole file and check it: every chunk (GCM tag or zstd checksum), the content's
/// SHA-256 and the structure. 422 with `backup_tampered`, `backup_truncated`,
/// `backup_key_mismatch`, `backup_key_missing` or `backup_invalid` when it fails.
#[utoipa::path(
    post, path = "/v1/backups/{id}/verify", tag = "backups", operation_id = "backup_verify",
    params(("id" = String, Path, description = "Backup id")),
    responses(
        (status = 200, description = "Every check passed", body = VerifyReport),
        (status = 404, description = "No such backup", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Still running, or failed", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The file is damaged, truncated, of another key or not a backup", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn verify(
    State(st): State<AppState>,
    Who(who): Who,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    Ok(json_response(
        StatusCode::OK,
        &st.ops.backup_check(&who, &id).await?,
    ))
}

/// Restore a backup (`merge` or `replace`, README "Backups"). The whole file is checked first:
/// a bad file is 422 and nothing is written. Answers when the restore has ended (a client that
/// disconnects does not stop it); one restore at a time per process.
#[utoipa::path(
    post, path = "/v1/backups/{id}/restore", tag = "backups", operation_id = "backup_restore",
    params(("id" = String, Path, description = "Backup id")),
    request_body = RestoreBody,
    responses(
        (status = 200, description = "What was restored, deleted and skipped (with `dry_run`: what would be)", body = RestoreSummary),
        (status = 400, description = "A namespace the backup does not hold", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such backup", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Still running, failed, or another restore is running", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The file is damaged, truncated, of another key or not a backup; or a body of the wrong shape", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn restore(
    State(st): State<AppState>,
    Who(who): Who,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<RestoreBody>,
) -> ApiResult<Response> {
    Ok(json_response(
        StatusCode::OK,
        &st.ops.backup_restore_id(&who, &id, b).await?,
    ))
}

/// Register a backup file taken elsewhere: the raw file as the body (any content type),
/// streamed to disk, at most `backup_upload_limit_bytes`. Answers 201 with a new id; the file
/// is checked by `verify` and `restore`, not here.
#[utoipa::path(
    post, path = "/v1/backups/upload", tag = "backups", operation_id = "backup_upload",
    request_body(content = BackupFile, content_type = "application/octet-stream", description = "A backup file"),
    responses(
        (status = 201, description = "Registered; `Location` names it", body = BackupInfo),
        (status = 400, description = "An empty body", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than backup_upload_limit_bytes", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
pub async fn upload(
    State(st): State<AppState>,
    Who(who): Who,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let info = st
        .ops
        .backup_upload(&who, declared, body.into_data_stream())
        .await?;
    Ok(with_location(StatusCode::CREATED, &info))
}
