//! The `/v1/backups` resource (DESIGN.md "Backups"): what a client sends and sees of the
//! backups the service keeps in its backup directory. The file format is [`super::backup`].

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};

/// Longest backup id.
pub const MAX_ID: usize = 64;

/// A backup id is 1–64 of `A-Z a-z 0-9 _ -` (it names the files `<id>.swsbak` and `<id>.json`
/// in the backup directory, so nothing else is allowed).
pub fn validate_id(id: &str) -> ApiResult<()> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("no backup {id}")))
    }
}

/// A fresh id: the UTC time (so ids sort by age) and 6 random hex digits,
/// e.g. `20261203T130512Z-3fa9c1`.
pub fn new_id(now_ms: i64, random: u32) -> String {
    let t = super::time::rfc3339(now_ms);
    // 2026-12-03T13:05:12.345Z → 20261203T130512Z
    let digits: String = t
        .chars()
        .take(19)
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect();
    format!("{digits}Z-{:06x}", random & 0xff_ffff)
}

/// `POST /v1/backups`. Every field is optional: without `namespaces`, `partitions` and
/// `queues` every namespace (partitions included) and every queue is captured; with any of
/// them, just what they name.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBackup {
    /// Namespaces to capture (exact names; each must exist).
    #[schema(max_items = 10000)]
    pub namespaces: Option<Vec<String>>,
    /// Partitions to capture (exact names; each must be a partition). A partition is a
    /// namespace with a quota: its entries and its settings are captured.
    #[schema(max_items = 10000)]
    pub partitions: Option<Vec<String>>,
    /// Queues to capture (exact names; each must exist): every task in every state, with its
    /// attempts and idempotency key, and the queue's figures.
    #[schema(max_items = 10000)]
    pub queues: Option<Vec<String>>,
    /// Encrypt with the backup key. Default: encrypted when a key is configured;
    /// `true` without one is 400 `backup_key_missing`.
    pub encrypt: Option<bool>,
}

/// `POST /v1/backups/{id}/restore`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreBody {
    pub mode: RestoreModeIn,
    /// Only these namespaces of the backup (each must be in it). Default: all of them, unless
    /// `queues` is given.
    #[schema(max_items = 10000)]
    pub namespaces: Option<Vec<String>>,
    /// Only these queues of the backup (each must be in it). Default: all of them, unless
    /// `namespaces` is given.
    #[schema(max_items = 10000)]
    pub queues: Option<Vec<String>>,
    /// Report what would change and write nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// `replace` makes each namespace exactly the backup (keys it lacks are deleted); `merge`
/// writes the backup's entries that are absent or whose current life is older (README
/// "Backups").
#[derive(Debug, Clone, Copy, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RestoreModeIn {
    Merge,
    Replace,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BackupStatus {
    /// Being captured.
    Running,
    /// Complete: the file can be downloaded, verified and restored.
    Succeeded,
    /// The capture failed (`error` says why); no file is kept.
    Failed,
}

/// Where a backup came from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BackupOrigin {
    /// `POST /v1/backups`.
    Api,
    /// `backup_schedule`.
    Schedule,
    /// `POST /v1/backups/upload`.
    Upload,
}

/// What a backup holds of one namespace (from its manifest).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct BackupNamespace {
    pub namespace: String,
    /// The revision it was captured at.
    pub revision: u64,
    /// The epoch of its history at that revision.
    pub epoch: String,
    pub entries: u64,
    /// Whether it is a partition (its settings are in the backup).
    pub partition: bool,
}

/// What a backup holds of one queue (from its manifest).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct BackupQueue {
    pub queue: String,
    /// Tasks in every state, as of the capture.
    pub tasks: u64,
}

/// Progress of a running capture (final figures once it ended).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct BackupProgress {
    /// Namespaces and queues to capture, and captured so far.
    pub namespaces_total: u64,
    pub namespaces_done: u64,
    /// Entries and tasks read so far (one read again after a retried capture counts twice).
    pub entries_read: u64,
}

/// Why a backup failed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct BackupFailure {
    /// The problem code (e.g. `redis_unavailable`, `interrupted`).
    pub code: String,
    pub detail: String,
}

/// A backup the service keeps (`GET /v1/backups/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct BackupInfo {
    pub id: String,
    pub status: BackupStatus,
    pub origin: BackupOrigin,
    /// When the capture (or upload) started, RFC 3339.
    pub created_at: String,
    /// When it ended (null while running).
    pub finished_at: Option<String>,
    pub encrypted: bool,
    /// Hex id of the key that opens it (null when plain).
    pub key_id: Option<String>,
    /// Size of the file (null until it is complete).
    pub size_bytes: Option<u64>,
    /// Hex SHA-256 of the content (what the trailer holds; null for uploads until verified).
    pub sha256: Option<String>,
    /// The namespaces it holds (empty until the capture ends; for an upload, as its
    /// manifest says when it can be read).
    pub namespaces: Vec<BackupNamespace>,
    /// The queues it holds (as `namespaces`).
    #[serde(default)]
    pub queues: Vec<BackupQueue>,
    pub progress: BackupProgress,
    pub error: Option<BackupFailure>,
}

/// `GET /v1/backups`: newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackupList {
    pub items: Vec<BackupInfo>,
}

/// `POST /v1/backups/{id}/verify`: the whole file was read and every check passed.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyReport {
    pub id: String,
    pub ok: bool,
    /// Content lines before the trailer (the manifest, section headers, entries).
    pub lines: u64,
    pub sha256: String,
    pub encrypted: bool,
    pub key_id: Option<String>,
    pub namespaces: Vec<BackupNamespace>,
    pub queues: Vec<BackupQueue>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_time_sortable_and_file_safe() {
        let a = new_id(1_796_303_112_345, 0x3fa9c1);
        assert_eq!(a, "20261203T130512Z-3fa9c1");
        assert!(validate_id(&a).is_ok());
        assert!(new_id(1_796_303_112_345, 1) < new_id(1_796_303_113_000, 0));
        for bad in ["", "../x", "a/b", "a.b", &"x".repeat(65), "é"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }
}
