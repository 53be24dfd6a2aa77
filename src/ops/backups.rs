//! The backups the service keeps (`/v1/backups`, the schedule), in the backup directory
//! ([`super::backup_dir`]). A capture runs in its own task ([`Ops::backup_start`] answers at
//! once with status `running`); verify and restore read the file with the backup key and
//! `backup_keys_old`.
//!
//! The directory is this process's: with several replicas each keeps its own (give them a
//! shared volume, or download what one took and upload it where it is needed). A record left
//! `running` by a process that stopped is marked `failed` (`interrupted`) on the next start.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use super::backup::{CaptureFile, Progress, Selection};
use super::backup_dir::{fresh_id, namespaces_of, progress_of, queues_of, Backups, MOST_RUNNING};
use super::restore::{check_file, RestoreSummary};
use super::Ops;
use crate::domain::auth::{Caller, Permission, Scope};
use crate::domain::backup::read_header;
use crate::domain::backups::{
    BackupFailure, BackupInfo, BackupNamespace, BackupOrigin, BackupProgress, BackupQueue, BackupStatus,
    CreateBackup, RestoreBody, RestoreModeIn, VerifyReport,
};
use crate::domain::names::validate_name;
use crate::domain::time::{now_ms, parse_instant_ms, rfc3339};
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::store::backup::RestoreMode;

fn admin(who: &Caller) -> ApiResult<()> {
    who.check(Permission::Admin, Scope::Service)
}

impl Ops {
    fn backups(&self) -> &Backups {
        &self.backups
    }

    /// `POST /v1/backups`: check the request, write a `running` record and capture in a task.
    pub async fn backup_start(
        self: &Arc<Self>,
        who: &Caller,
        req: CreateBackup,
        origin: BackupOrigin,
    ) -> ApiResult<BackupInfo> {
        admin(who)?;
        let b = self.backups();
        let encrypt = match req.encrypt {
            Some(true) if !b.has_key => {
                let mut e = ApiError::new(
                    ErrorCode::BackupKeyMissing,
                    "encrypt: true, but no backup key is configured (SWARMSTATE_BACKUP_KEY)",
                );
                e.status = Some(crate::error::StatusCode::BAD_REQUEST);
                return Err(e);
            }
            Some(e) => e,
            None => b.has_key,
        };
        let mut sel = Selection::all();
        let (ns, parts, queues) = (
            req.namespaces.unwrap_or_default(),
            req.partitions.unwrap_or_default(),
            req.queues.unwrap_or_default(),
        );
        if !ns.is_empty() || !parts.is_empty() || !queues.is_empty() {
            let known = self.store.namespace_names().await?;
            for n in &ns {
                validate_name("namespace", n)?;
                if !known.contains(n) {
                    return Err(ApiError::bad_request(format!("there is no namespace {n}")));
                }
            }
            for p in &parts {
                validate_name("partition", p)?;
                if self.store.part_get(p).await?.is_none() {
                    return Err(ApiError::bad_request(format!("there is no partition {p}")));
                }
            }
            let known_queues = if queues.is_empty() {
                Vec::new()
            } else {
                self.store.queue_names().await?
            };
            for q in &queues {
                validate_name("queue", q)?;
                if !known_queues.contains(q) {
                    return Err(ApiError::bad_request(format!("there is no queue {q}")));
                }
                who.check(Permission::Admin, Scope::Queue(q))?;
            }
            let mut names: Vec<String> = ns.into_iter().chain(parts).collect();
            names.sort();
            names.dedup();
            for n in &names {
                who.check(Permission::Admin, Scope::Namespace(n))?;
            }
            let mut queues = queues;
            queues.sort();
            queues.dedup();
            sel = Selection {
                namespaces: Some(names),
                queues: Some(queues),
            };
        } else if !matches!(who, Caller::Open) {
            // Everything: the token must be admin over every namespace and queue there is.
            for n in self.store.namespace_names().await? {
                who.check(Permission::Admin, Scope::Namespace(&n))?;
            }
            for q in self.store.queue_names().await? {
                who.check(Permission::Admin, Scope::Queue(&q))?;
            }
        }
        b.ensure_dir()?;
        let progress = Arc::new(Progress::default());
        let id = {
            let mut running = b.running.lock().unwrap();
            if running.len() >= MOST_RUNNING {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("{MOST_RUNNING} backups are running; wait for one to end"),
                ));
            }
            let id = fresh_id();
            running.insert(id.clone(), progress.clone());
            id
        };
        let info = BackupInfo {
            id: id.clone(),
            status: BackupStatus::Running,
            origin,
            created_at: rfc3339(now_ms()),
            finished_at: None,
            encrypted: encrypt,
            key_id: encrypt.then(|| b.keys[0].id_hex()),
            size_bytes: None,
            sha256: None,
            namespaces: Vec::new(),
            queues: Vec::new(),
            progress: BackupProgress::default(),
            error: None,
        };
        if let Err(e) = b.write_record(&info) {
            b.running.lock().unwrap().remove(&id);
            return Err(ApiError::internal(format!("backup record {id}: {e}")));
        }
        let ops = self.clone();
        let started = info.clone();
        tokio::spawn(async move { ops.run_capture(started, sel, progress).await });
        Ok(info)
    }

    async fn run_capture(self: Arc<Self>, mut info: BackupInfo, sel: Selection, progress: Arc<Progress>) {
        let b = self.backups();
        let t0 = Instant::now();
        let tmp = b.dir.join(format!("{}.swsbak.tmp", info.id));
        let key = info.encrypted.then(|| b.keys[0].clone());
        let out = self.backup_capture(&sel, &tmp, key.as_ref(), &progress).await;
        let out = out.and_then(|f: CaptureFile| {
            std::fs::rename(&tmp, b.file(&info.id))
                .map_err(|e| ApiError::internal(format!("backup file {}: {e}", info.id)))?;
            Ok(f)
        });
        info.finished_at = Some(rfc3339(now_ms()));
        info.progress = progress_of(&progress);
        let origin = match info.origin {
            BackupOrigin::Schedule => "schedule",
            _ => "api",
        };
        match out {
            Ok(f) => {
                info.status = BackupStatus::Succeeded;
                info.size_bytes = Some(f.size_bytes);
                info.sha256 = Some(f.sha256);
                info.namespaces = f
                    .manifest
                    .namespaces
                    .iter()
                    .map(|n| BackupNamespace {
                        namespace: n.namespace.clone(),
                        revision: n.revision,
                        epoch: n.epoch.clone(),
                        entries: n.entries,
                        partition: n.partition.is_some(),
                    })
                    .collect();
                info.queues = f
                    .manifest
                    .queues
                    .iter()
                    .map(|q| BackupQueue {
                        queue: q.queue.clone(),
                        tasks: q.tasks,
                    })
                    .collect();
                metrics::counter!("backups_total", "result" => "succeeded", "origin" => origin).increment(1);
                metrics::histogram!("backup_duration_seconds").record(t0.elapsed().as_secs_f64());
                metrics::counter!("backup_bytes_total").increment(f.size_bytes);
                metrics::gauge!("backups_last_success_timestamp_seconds").set(now_ms() as f64 / 1000.0);
                metrics::gauge!("backup_last_size_bytes").set(f.size_bytes as f64);
                tracing::info!(
                    id = info.id,
                    bytes = f.size_bytes,
                    secs = t0.elapsed().as_secs_f64(),
                    "backup taken"
                );
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                info.status = BackupStatus::Failed;
                info.error = Some(BackupFailure {
                    code: e.code.as_str().to_string(),
                    detail: e.detail.clone(),
                });
                metrics::counter!("backups_total", "result" => "failed", "origin" => origin).increment(1);
                tracing::warn!(id = info.id, error = %e, "backup failed");
            }
        }
        if let Err(e) = b.write_record(&info) {
            tracing::error!(id = info.id, error = %e, "backup record not written");
        }
        b.running.lock().unwrap().remove(&info.id);
        if info.origin == BackupOrigin::Schedule {
            self.backup_prune();
        }
    }

    /// Scheduled backups beyond `backup_retention` (count, age) are deleted, oldest first.
    pub fn backup_prune(&self) {
        let b = self.backups();
        let Some(r) = b.retention else { return };
        let scheduled: Vec<BackupInfo> = b
            .all()
            .into_iter()
            .filter(|i| i.origin == BackupOrigin::Schedule && i.status != BackupStatus::Running)
            .collect();
        let now = now_ms();
        let mut kept = 0usize;
        for i in scheduled {
            let created = parse_instant_ms(&serde_json::Value::String(i.created_at.clone()), "created_at");
            let too_old = r
                .max_age
                .zip(created.ok())
                .is_some_and(|(max, t)| now - t > max.as_millis() as i64);
            // Newest first: past `count` kept ones, the rest go (failed ones too).
            let over_count = r.count.is_some_and(|c| kept >= c);
            if too_old || over_count {
                let _ = std::fs::remove_file(b.file(&i.id));
                let _ = std::fs::remove_file(b.record(&i.id));
                metrics::counter!("backups_pruned_total").increment(1);
                tracing::info!(id = i.id, "scheduled backup removed by backup_retention");
            } else if i.status == BackupStatus::Succeeded {
                kept += 1;
            }
        }
    }

    pub fn backups_list(&self, who: &Caller) -> ApiResult<Vec<BackupInfo>> {
        admin(who)?;
        Ok(self.backups().all())
    }

    pub fn backup_get(&self, who: &Caller, id: &str) -> ApiResult<BackupInfo> {
        admin(who)?;
        self.backups().info(id)
    }

    /// The file of a complete backup, for download: its path and the record.
    pub fn backup_file(&self, who: &Caller, id: &str) -> ApiResult<(PathBuf, BackupInfo)> {
        admin(who)?;
        let info = self.backups().complete(id)?;
        Ok((self.backups().file(id), info))
    }

    /// Read the whole file and check it (422 with the problem's code when it fails).
    pub async fn backup_check(&self, who: &Caller, id: &str) -> ApiResult<VerifyReport> {
        admin(who)?;
        let b = self.backups();
        let info = b.complete(id)?;
        let (path, keys) = (b.file(id), b.keys.clone());
        let c = tokio::task::spawn_blocking(move || check_file(&path, &keys))
            .await
            .map_err(ApiError::internal)??;
        Ok(VerifyReport {
            id: info.id,
            ok: true,
            lines: c.lines,
            sha256: c.sha256,
            encrypted: c.header.encrypted,
            key_id: c.header.key_id,
            namespaces: namespaces_of(&c.manifest),
            queues: queues_of(&c.manifest),
        })
    }

    /// Restore a kept backup. Runs in its own task: a client that goes away does not cut it
    /// short. One restore at a time per process (409 otherwise).
    pub async fn backup_restore_id(
        self: &Arc<Self>,
        who: &Caller,
        id: &str,
        req: RestoreBody,
    ) -> ApiResult<RestoreSummary> {
        admin(who)?;
        let b = self.backups();
        b.complete(id)?;
        for n in req.namespaces.iter().flatten() {
            validate_name("namespace", n)?;
        }
        for q in req.queues.iter().flatten() {
            validate_name("queue", q)?;
        }
        let only = if req.namespaces.is_none() && req.queues.is_none() {
            Selection::all()
        } else {
            Selection {
                namespaces: Some(req.namespaces.unwrap_or_default()),
                queues: Some(req.queues.unwrap_or_default()),
            }
        };
        let mode = match req.mode {
            RestoreModeIn::Merge => RestoreMode::Merge,
            RestoreModeIn::Replace => RestoreMode::Replace,
        };
        let guard = b.restoring.clone().try_lock_owned().map_err(|_| {
            ApiError::new(
                ErrorCode::Conflict,
                "another restore is running in this process; retry when it ends",
            )
        })?;
        let (ops, who, path) = (self.clone(), who.clone(), b.file(id));
        let id = id.to_string();
        tokio::spawn(async move {
            let _guard = guard;
            let t0 = Instant::now();
            let keys = ops.backups().keys.clone();
            let out = ops
                .backup_restore(&who, &path, &keys, mode, &only, req.dry_run)
                .await;
            let result = if out.is_ok() { "succeeded" } else { "failed" };
            metrics::counter!("backup_restores_total", "result" => result).increment(1);
            match &out {
                Ok(s) => tracing::info!(
                    id,
                    restored = s.restored,
                    deleted = s.deleted,
                    skipped = s.skipped,
                    dry_run = s.dry_run,
                    secs = t0.elapsed().as_secs_f64(),
                    "backup restored"
                ),
                Err(e) => tracing::warn!(id, error = %e, "backup restore refused or failed"),
            }
            out
        })
        .await
        .map_err(ApiError::internal)?
    }

    pub fn backup_delete(&self, who: &Caller, id: &str) -> ApiResult<()> {
        admin(who)?;
        let b = self.backups();
        let info = b.info(id)?;
        if info.status == BackupStatus::Running {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("backup {id} is still running"),
            ));
        }
        let _ = std::fs::remove_file(b.file(id));
        std::fs::remove_file(b.record(id))
            .map_err(|e| ApiError::internal(format!("backup record {id}: {e}")))?;
        Ok(())
    }

    /// `POST /v1/backups/upload`: the body streamed to disk (at most
    /// `backup_upload_limit_bytes`), registered under a new id. Its header and manifest are
    /// read when they can be; `verify` checks it whole.
    pub async fn backup_upload<S, E>(
        &self,
        who: &Caller,
        declared: Option<u64>,
        mut body: S,
    ) -> ApiResult<BackupInfo>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        admin(who)?;
        let b = self.backups();
        let limit = b.upload_limit;
        let too_big = || {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("a backup upload is at most {limit} bytes (backup_upload_limit_bytes)"),
            )
        };
        if declared.is_some_and(|n| n > limit) {
            return Err(too_big());
        }
        b.ensure_dir()?;
        let id = fresh_id();
        let tmp = b.dir.join(format!("{id}.upload.tmp"));
        // A client that goes away mid-upload drops this future: nothing of it may stay.
        let mut leftover = RemoveOnDrop(vec![tmp.clone()]);
        let io = |e: std::io::Error| ApiError::internal(format!("backup upload {id}: {e}"));
        let written = async {
            let mut f = tokio::io::BufWriter::new(tokio::fs::File::create(&tmp).await.map_err(io)?);
            let mut n = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the upload: {e}")))?;
                n += chunk.len() as u64;
                if n > limit {
                    return Err(too_big());
                }
                f.write_all(&chunk).await.map_err(io)?;
            }
            f.flush().await.map_err(io)?;
            f.into_inner().sync_all().await.map_err(io)?;
            Ok(n)
        }
        .await;
        let size = match written {
            Ok(0) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(ApiError::bad_request(
                    "an upload needs the backup file as its body",
                ));
            }
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        std::fs::rename(&tmp, b.file(&id)).map_err(io)?;
        leftover.0 = vec![b.file(&id)];
        // What can be told without reading it all: encrypted, key id, the manifest.
        let (path, keys) = (b.file(&id), b.keys.clone());
        let (header, manifest) = tokio::task::spawn_blocking(move || {
            let mut f = std::io::BufReader::new(std::fs::File::open(&path).ok()?);
            let header = read_header(&mut f).ok().map(|(_, h)| h);
            let f = std::io::BufReader::new(std::fs::File::open(&path).ok()?);
            let manifest = crate::domain::backup::Reader::open(f, &keys)
                .ok()
                .and_then(|mut r| r.next_line().ok().flatten())
                .and_then(|l| serde_json::from_slice::<serde_json::Value>(&l).ok());
            Some((header, manifest))
        })
        .await
        .map_err(ApiError::internal)?
        .unwrap_or((None, None));
        let info = BackupInfo {
            id: id.clone(),
            status: BackupStatus::Succeeded,
            origin: BackupOrigin::Upload,
            created_at: rfc3339(now_ms()),
            finished_at: Some(rfc3339(now_ms())),
            encrypted: header.as_ref().is_some_and(|h| h.encrypted),
            key_id: header.and_then(|h| h.key_id),
            size_bytes: Some(size),
            sha256: None,
            namespaces: manifest.as_ref().map(namespaces_of).unwrap_or_default(),
            queues: manifest.as_ref().map(queues_of).unwrap_or_default(),
            progress: BackupProgress::default(),
            error: None,
        };
        if let Err(e) = b.write_record(&info) {
            return Err(ApiError::internal(format!("backup record {id}: {e}")));
        }
        leftover.0.clear();
        metrics::counter!("backup_uploads_total").increment(1);
        Ok(info)
    }
}

/// Files removed when dropped (unless emptied first).
struct RemoveOnDrop(Vec<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}
