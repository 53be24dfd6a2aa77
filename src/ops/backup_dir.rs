//! The backup directory (`backup_dir`): files `<id>.swsbak`, each with its record
//! `<id>.json` ([`BackupInfo`]), the keys that open them, and the captures and restores
//! running in this process. The operations on them are in [`super::backups`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::config::{Config, Retention};
use crate::domain::backup::BackupKey;
use crate::domain::backups::{
    new_id, validate_id, BackupFailure, BackupInfo, BackupNamespace, BackupProgress, BackupQueue,
    BackupStatus,
};
use crate::domain::time::{now_ms, parse_instant_ms, rfc3339};
use crate::error::{ApiError, ApiResult, ErrorCode};

/// A capture's progress, read while it runs (`GET /v1/backups/{id}`).
#[derive(Debug, Default)]
pub struct Progress {
    pub total: AtomicU64,
    pub done: AtomicU64,
    pub entries: AtomicU64,
}

/// Captures running at once in one process; one more is 409.
pub(super) const MOST_RUNNING: usize = 2;

/// The backup directory, the keys, and what runs now.
pub struct Backups {
    pub(super) dir: PathBuf,
    /// The backup key (first, when set) and the old ones.
    pub(super) keys: Vec<BackupKey>,
    pub(super) has_key: bool,
    pub(super) retention: Option<Retention>,
    pub(super) upload_limit: u64,
    pub(super) running: Mutex<HashMap<String, Arc<Progress>>>,
    /// One restore at a time in this process.
    pub(super) restoring: Arc<tokio::sync::Mutex<()>>,
}

impl Backups {
    /// From the configuration (a bad key stops start-up). Records a stopped process left
    /// `running` become `failed`; their partial files are removed.
    pub fn open(cfg: &Config) -> Result<Backups, String> {
        let mut keys = Vec::new();
        if let Some(k) = &cfg.backup_key {
            keys.push(BackupKey::parse(k).map_err(|e| format!("backup_key: {e}"))?);
        }
        for k in &cfg.backup_keys_old {
            keys.push(BackupKey::parse(k).map_err(|e| format!("backup_keys_old: {e}"))?);
        }
        let retention = match &cfg.backup_retention {
            Some(r) => Some(Retention::parse(r).map_err(|e| format!("backup_retention: {e}"))?),
            None => None,
        };
        let b = Backups {
            dir: cfg
                .backup_dir
                .clone()
                .unwrap_or_else(|| cfg.data_dir.join("backups")),
            keys,
            has_key: cfg.backup_key.is_some(),
            retention,
            upload_limit: cfg.backup_upload_limit_bytes,
            running: Mutex::default(),
            restoring: Arc::new(tokio::sync::Mutex::new(())),
        };
        // The recorder first: recover() sets the last-success gauge.
        let _ = crate::metrics::handle();
        b.recover();
        Ok(b)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn keys(&self) -> &[BackupKey] {
        &self.keys
    }

    pub(super) fn file(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.swsbak"))
    }

    pub(super) fn record(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Mark what a stopped process left running as failed; remove partial files.
    fn recover(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut newest: Option<i64> = None;
        for e in entries.flatten() {
            let p = e.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".tmp") || name.contains(".swsbak.part") {
                let _ = std::fs::remove_file(&p);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            if let Some(mut info) = read_record(&p) {
                if info.status == BackupStatus::Succeeded {
                    let at = info.finished_at.as_ref().unwrap_or(&info.created_at);
                    if let Ok(t) = parse_instant_ms(&serde_json::Value::String(at.clone()), "finished_at") {
                        newest = newest.max(Some(t));
                    }
                }
                if info.status == BackupStatus::Running {
                    info.status = BackupStatus::Failed;
                    info.finished_at = Some(rfc3339(now_ms()));
                    info.error = Some(BackupFailure {
                        code: "interrupted".into(),
                        detail: "the service stopped during the capture".into(),
                    });
                    let _ = std::fs::remove_file(self.file(&info.id));
                    if let Err(e) = self.write_record(&info) {
                        tracing::warn!(id = info.id, error = %e, "backup record not updated");
                    }
                }
            }
        }
        // The alert on "no successful backup for N hours" survives a restart.
        if let Some(t) = newest {
            metrics::gauge!("backups_last_success_timestamp_seconds").set(t as f64 / 1000.0);
        }
    }

    /// Write a record atomically (a temporary file renamed over it).
    pub(super) fn write_record(&self, info: &BackupInfo) -> std::io::Result<()> {
        let tmp = self.dir.join(format!("{}.json.tmp", info.id));
        std::fs::write(&tmp, serde_json::to_vec_pretty(info)?)?;
        std::fs::rename(&tmp, self.record(&info.id))
    }

    /// A record, with the live progress of a running capture.
    pub(super) fn info(&self, id: &str) -> ApiResult<BackupInfo> {
        validate_id(id)?;
        let mut info =
            read_record(&self.record(id)).ok_or_else(|| ApiError::not_found(format!("no backup {id}")))?;
        if let Some(p) = self.running.lock().unwrap().get(id) {
            info.progress = progress_of(p);
        }
        Ok(info)
    }

    /// A backup whose file is complete (409 while it runs, or when it failed).
    pub(super) fn complete(&self, id: &str) -> ApiResult<BackupInfo> {
        let info = self.info(id)?;
        match info.status {
            BackupStatus::Succeeded => Ok(info),
            BackupStatus::Running => Err(ApiError::new(
                ErrorCode::Conflict,
                format!("backup {id} is still running; poll GET /v1/backups/{id}"),
            )),
            BackupStatus::Failed => Err(ApiError::new(
                ErrorCode::Conflict,
                format!("backup {id} failed and has no file"),
            )),
        }
    }

    pub(super) fn ensure_dir(&self) -> ApiResult<()> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| ApiError::internal(format!("backup_dir {}: {e}", self.dir.display())))
    }

    pub(super) fn all(&self) -> Vec<BackupInfo> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let running = self.running.lock().unwrap();
        let mut out: Vec<BackupInfo> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter_map(|p| read_record(&p))
            .map(|mut i| {
                if let Some(p) = running.get(&i.id) {
                    i.progress = progress_of(p);
                }
                i
            })
            .collect();
        out.sort_by(|a, b| b.id.cmp(&a.id));
        out
    }
}

fn read_record(p: &Path) -> Option<BackupInfo> {
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

pub(super) fn progress_of(p: &Progress) -> BackupProgress {
    BackupProgress {
        namespaces_total: p.total.load(Relaxed),
        namespaces_done: p.done.load(Relaxed),
        entries_read: p.entries.load(Relaxed),
    }
}

pub(super) fn fresh_id() -> String {
    new_id(now_ms(), getrandom::u32().unwrap_or(0))
}

/// What the manifest line says of each queue.
pub(super) fn queues_of(manifest: &serde_json::Value) -> Vec<BackupQueue> {
    manifest["queues"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|q| BackupQueue {
                    queue: q["queue"].as_str().unwrap_or("").to_string(),
                    tasks: q["tasks"].as_u64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What the manifest line says of each namespace.
pub(super) fn namespaces_of(manifest: &serde_json::Value) -> Vec<BackupNamespace> {
    manifest["namespaces"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| BackupNamespace {
                    namespace: n["namespace"].as_str().unwrap_or("").to_string(),
                    revision: n["revision"].as_u64().unwrap_or(0),
                    epoch: n["epoch"].as_str().unwrap_or("").to_string(),
                    entries: n["entries"].as_u64().unwrap_or(0),
                    partition: n["partition"].is_object(),
                })
                .collect()
        })
        .unwrap_or_default()
}
