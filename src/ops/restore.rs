//! Restore of a backup file (format: [`crate::domain::backup`]; capture: [`super::backup`]).
//!
//! Two passes over the file. The first reads it whole — every chunk's tag, the zstd checksum,
//! the SHA-256 trailer — and checks its structure (a manifest first, namespace sections, valid
//! names, entries in key order): a tampered, truncated, wrong-key or malformed file is refused
//! before anything is written. The second restores each namespace chosen: `ns_restore_begin`
//! (a new epoch, so watchers are told `reset`; fencing counters raised to the higher of the
//! current and the backup's value plus [`FENCING_MARGIN`]), then batches of `ns_restore_put`,
//! and in `replace` mode `ns_restore_delete` of the keys the backup does not hold (found by
//! walking the namespace's index beside the backup's sorted entries: memory stays flat).

use std::collections::HashSet;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::backup::{PartitionLine, Selection};
use super::backup_queue::{QueueManifest, QueueRestore, QueueSection, TaskLine};
use super::Ops;
use crate::domain::auth::Caller;
use crate::domain::backup::{BackupKey, Reader};
use crate::domain::names::{validate_key, validate_name, validate_text};
use crate::domain::partition::CreateBody;
use crate::error::{ApiError, ApiResult, ErrorCode};
use crate::store::backup::{RestoreCounts, RestoreEntry, RestoreFrame, RestoreMode, RestoreVersion};
use crate::store::queue_backup::TASK_SETS;

/// Added to the higher of a lock's current and backed-up fencing counter on restore: tokens
/// the lost deployment granted after the capture are below it (unless it granted more than
/// this many for one lock after the capture).
pub const FENCING_MARGIN: u64 = 1_000_000;
/// Entries per `ns_restore_put` call (fewer when their values are large).
const BATCH: usize = 200;
const BATCH_BYTES: usize = 1 << 20;

/// What a restore did (or, with `dry_run`, would do), per namespace and in all.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct RestoreSummary {
    pub restored: u64,
    pub deleted: u64,
    pub skipped: u64,
    /// The highest namespace revision after the restore (of the one namespace when one).
    pub revision: u64,
    pub dry_run: bool,
    pub namespaces: Vec<NamespaceRestore>,
    pub queues: Vec<QueueRestore>,
}

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct NamespaceRestore {
    pub namespace: String,
    pub restored: u64,
    pub deleted: u64,
    pub skipped: u64,
    pub revision: u64,
    /// Whether the restore created the namespace's partition (it had none of that name).
    pub partition_created: bool,
}

#[derive(Deserialize)]
struct TypeOf<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct NamespaceIn {
    namespace: String,
    epoch: String,
    #[serde(default)]
    fencing: std::collections::HashMap<String, u64>,
    #[serde(default)]
    partition: Option<PartitionLine>,
}

/// An entry line, or one version of its history (which has no namespace, key or history).
/// One struct for both: `flatten` cannot carry the raw JSON values.
#[derive(Deserialize)]
struct VersionIn {
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    history: Vec<VersionIn>,
    version: u64,
    create_revision: u64,
    #[serde(default)]
    mod_revision: u64,
    created_at_ms: i64,
    updated_at_ms: i64,
    expires_at_ms: Option<i64>,
    agent_id: Option<String>,
    change_reason: Option<String>,
    metadata: Option<Box<RawValue>>,
    value: Box<RawValue>,
}

fn invalid(line: u64, what: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::BackupInvalid, format!("content line {line}: {what}"))
}

/// Provenance as the API accepts it (`x-agent-id` up to 128 bytes, `x-change-reason` up to 1024).
fn text_ok(line: u64, what: &str, v: &Option<String>, max: usize) -> ApiResult<()> {
    match v {
        Some(t) => validate_text(what, t, max).map_err(|e| invalid(line, e.detail)),
        None => Ok(()),
    }
}

impl VersionIn {
    fn into_restore(self, line: u64) -> ApiResult<RestoreVersion> {
        if !self.history.is_empty() {
            return Err(invalid(line, "a history version with a history"));
        }
        text_ok(line, "agent_id", &self.agent_id, 128)?;
        text_ok(line, "change_reason", &self.change_reason, 1024)?;
        if self.version == 0 {
            return Err(invalid(line, "version 0"));
        }
        Ok(RestoreVersion {
            version: self.version,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            expires_at_ms: self.expires_at_ms,
            agent_id: self.agent_id,
            change_reason: self.change_reason,
            metadata: self.metadata.map(|m| m.get().to_string()).unwrap_or_default(),
            value: self.value.get().to_string(),
        })
    }
}

fn parse_entry(line: u64, text: &[u8]) -> ApiResult<(String, RestoreEntry)> {
    let mut e: VersionIn = serde_json::from_slice(text).map_err(|err| invalid(line, err))?;
    validate_key(&e.key).map_err(|err| invalid(line, err.detail))?;
    let history = std::mem::take(&mut e.history)
        .into_iter()
        .map(|h| h.into_restore(line))
        .collect::<ApiResult<Vec<_>>>()?;
    let (ns, key) = (std::mem::take(&mut e.namespace), std::mem::take(&mut e.key));
    Ok((
        ns,
        RestoreEntry {
            key,
            current: e.into_restore(line)?,
            history,
        },
    ))
}

/// One line of the file, classified.
enum Line {
    Manifest,
    Namespace(NamespaceIn),
    Entry(String, RestoreEntry),
    Queue(QueueManifest),
    Task(TaskLine),
}

fn classify(n: u64, text: &[u8]) -> ApiResult<Line> {
    let t: TypeOf = serde_json::from_slice(text).map_err(|e| invalid(n, e))?;
    match t.kind.as_ref() {
        "manifest" => Ok(Line::Manifest),
        "namespace" => {
            let ns: NamespaceIn = serde_json::from_slice(text).map_err(|e| invalid(n, e))?;
            validate_name("namespace", &ns.namespace).map_err(|e| invalid(n, e.detail))?;
            Ok(Line::Namespace(ns))
        }
        "entry" => {
            let (ns, e) = parse_entry(n, text)?;
            Ok(Line::Entry(ns, e))
        }
        "queue" => {
            let q: QueueManifest = serde_json::from_slice(text).map_err(|e| invalid(n, e))?;
            validate_name("queue", &q.queue).map_err(|e| invalid(n, e.detail))?;
            Ok(Line::Queue(q))
        }
        "task" => {
            let t: TaskLine = serde_json::from_slice(text).map_err(|e| invalid(n, e))?;
            if t.id == 0 || t.sets.keys().any(|k| !TASK_SETS.contains(&k.as_str())) {
                return Err(invalid(n, "a task with id 0 or an unknown set"));
            }
            Ok(Line::Task(t))
        }
        other => Err(invalid(n, format!("unknown line type `{other}`"))),
    }
}

/// What reading a whole file found: every check passed.
#[derive(Debug)]
pub struct Checked {
    /// The namespace sections, in file order.
    pub sections: Vec<String>,
    /// The queue sections, in file order.
    pub queues: Vec<String>,
    pub lines: u64,
    pub sha256: String,
    pub header: crate::domain::backup::Header,
    /// The manifest line.
    pub manifest: serde_json::Value,
}

/// Read `path` whole (blocking): every chunk, the SHA-256 trailer and the structure
/// (a manifest first, namespace sections once each, valid entries in key order).
pub fn check_file(path: &Path, keys: &[BackupKey]) -> ApiResult<Checked> {
    let mut r = Reader::open(BufReader::new(open(path)?), keys)?;
    let (mut n, mut sections, mut queues) = (0u64, Vec::new(), Vec::new());
    let mut manifest = serde_json::Value::Null;
    let mut cur: Option<(String, Option<String>)> = None;
    let mut cur_q: Option<(String, u64)> = None;
    while let Some(text) = r.next_line()? {
        n += 1;
        match classify(n, &text)? {
            Line::Manifest if n == 1 => {
                manifest = serde_json::from_slice(&text).map_err(|e| invalid(n, e))?;
            }
            Line::Manifest => return Err(invalid(n, "a second manifest")),
            _ if n == 1 => return Err(invalid(n, "the first line is not the manifest")),
            Line::Namespace(ns) => {
                if sections.contains(&ns.namespace) {
                    return Err(invalid(n, format!("namespace {} twice", ns.namespace)));
                }
                if cur_q.is_some() {
                    return Err(invalid(n, "a namespace after the queues"));
                }
                sections.push(ns.namespace.clone());
                cur = Some((ns.namespace, None));
            }
            Line::Queue(q) => {
                if queues.contains(&q.queue) {
                    return Err(invalid(n, format!("queue {} twice", q.queue)));
                }
                queues.push(q.queue.clone());
                cur = None;
                cur_q = Some((q.queue, 0));
            }
            Line::Task(t) => {
                let Some((q, last)) = cur_q.as_mut() else {
                    return Err(invalid(n, "a task before any queue"));
                };
                if *q != t.queue {
                    return Err(invalid(n, format!("a task of {} in the section of {q}", t.queue)));
                }
                if *last >= t.id {
                    return Err(invalid(n, "tasks are not in id order"));
                }
                *last = t.id;
            }
            Line::Entry(ns, e) => {
                let Some((sec, last)) = cur.as_mut() else {
                    return Err(invalid(n, "an entry before any namespace"));
                };
                if *sec != ns {
                    return Err(invalid(n, format!("an entry of {ns} in the section of {sec}")));
                }
                if last.as_ref().is_some_and(|l| l.as_str() >= e.key.as_str()) {
                    return Err(invalid(n, "entries are not in key order"));
                }
                *last = Some(e.key);
            }
        }
    }
    if n == 0 {
        return Err(invalid(0, "no manifest"));
    }
    Ok(Checked {
        sections,
        queues,
        lines: r.lines_read(),
        sha256: r.sha256().unwrap_or_default().to_string(),
        header: r.header.clone(),
        manifest,
    })
}

fn open(path: &Path) -> ApiResult<File> {
    File::open(path).map_err(|e| ApiError::internal(format!("backup file {}: {e}", path.display())))
}

/// A namespace being restored: its frame, the batch to write, the last key written (the
/// replace walk deletes what the index holds between written keys).
struct Section {
    ns: String,
    frame: RestoreFrame,
    batch: Vec<RestoreEntry>,
    bytes: usize,
    after: Option<String>,
    sum: NamespaceRestore,
}

impl Ops {
    /// Restore `path` (opened with `keys`): every namespace it holds, or those of `only`.
    pub async fn backup_restore(
        &self,
        who: &Caller,
        path: &Path,
        keys: &[BackupKey],
        mode: RestoreMode,
        only: &Selection,
        dry: bool,
    ) -> ApiResult<RestoreSummary> {
        let checked = {
            let (path, keys) = (path.to_path_buf(), keys.to_vec());
            tokio::task::spawn_blocking(move || check_file(&path, &keys))
                .await
                .map_err(ApiError::internal)??
        };
        let (sections, queues) = (checked.sections, checked.queues);
        for ns in only.namespaces.iter().flatten() {
            if !sections.contains(ns) {
                return Err(ApiError::new(
                    ErrorCode::InvalidArgument,
                    format!("the backup holds no namespace {ns}"),
                ));
            }
        }
        for q in only.queues.iter().flatten() {
            if !queues.contains(q) {
                return Err(ApiError::new(
                    ErrorCode::InvalidArgument,
                    format!("the backup holds no queue {q}"),
                ));
            }
        }
        let chosen: Vec<&String> = sections.iter().filter(|n| only.wants_namespace(n)).collect();
        for ns in &chosen {
            who.check(
                crate::domain::auth::Permission::Admin,
                crate::domain::auth::Scope::Namespace(ns),
            )?;
        }
        for q in queues.iter().filter(|q| only.wants_queue(q)) {
            who.check(
                crate::domain::auth::Permission::Admin,
                crate::domain::auth::Scope::Queue(q),
            )?;
        }
        let mut qsec: Option<QueueSection> = None;
        // The second pass, read on a blocking thread and sent line by line.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<ApiResult<Vec<u8>>>(64);
        let (p, k) = (path.to_path_buf(), keys.to_vec());
        let reader = tokio::task::spawn_blocking(move || {
            let run = || -> ApiResult<()> {
                let mut r = Reader::open(BufReader::new(open(&p)?), &k)?;
                while let Some(line) = r.next_line()? {
                    if tx.blocking_send(Ok(line)).is_err() {
                        return Ok(());
                    }
                }
                Ok(())
            };
            if let Err(e) = run() {
                let _ = tx.blocking_send(Err(e));
            }
        });
        let mut summary = RestoreSummary {
            dry_run: dry,
            ..Default::default()
        };
        let mut sec: Option<Section> = None;
        let mut n = 0u64;
        while let Some(text) = rx.recv().await {
            n += 1;
            match classify(n, &text?)? {
                Line::Manifest => {}
                Line::Queue(q) => {
                    if let Some(s) = sec.take() {
                        summary.add(self.finish_section(s).await?);
                    }
                    if let Some(s) = qsec.take() {
                        summary.add_queue(self.queue_finish(s).await?);
                    }
                    if only.wants_queue(&q.queue) {
                        qsec = Some(self.queue_begin(q, mode == RestoreMode::Replace, dry).await?);
                    }
                }
                Line::Task(t) => {
                    if let Some(s) = qsec.as_mut() {
                        self.queue_push(s, t.into_task()).await?;
                    }
                }
                Line::Namespace(ns) => {
                    if let Some(s) = sec.take() {
                        summary.add(self.finish_section(s).await?);
                    }
                    if chosen.contains(&&ns.namespace) {
                        sec = Some(self.begin_section(who, ns, mode, dry).await?);
                    }
                }
                Line::Entry(_, e) => {
                    if let Some(s) = sec.as_mut() {
                        s.bytes +=
                            e.current.value.len() + e.history.iter().map(|h| h.value.len()).sum::<usize>();
                        s.batch.push(e);
                        if s.batch.len() >= BATCH || s.bytes >= BATCH_BYTES {
                            self.flush(s).await?;
                        }
                    }
                }
            }
        }
        let _ = reader.await;
        if let Some(s) = sec.take() {
            summary.add(self.finish_section(s).await?);
        }
        if let Some(s) = qsec.take() {
            summary.add_queue(self.queue_finish(s).await?);
        }
        Ok(summary)
    }

    async fn begin_section(
        &self,
        who: &Caller,
        ns: NamespaceIn,
        mode: RestoreMode,
        dry: bool,
    ) -> ApiResult<Section> {
        let mut sum = NamespaceRestore {
            namespace: ns.namespace.clone(),
            ..Default::default()
        };
        if let Some(p) = &ns.partition {
            if self.store.part_get(&ns.namespace).await?.is_none() {
                sum.partition_created = true;
                if !dry {
                    self.partition_create(
                        who,
                        CreateBody {
                            name: ns.namespace.clone(),
                            owner_agent: p.owner_agent.clone(),
                            quota_bytes: p.quota_bytes,
                            max_keys: p.max_keys,
                            tier: p.tier.clone(),
                            default_ttl_ms: Some(p.default_ttl_ms.unwrap_or(0)),
                        },
                    )
                    .await?;
                }
            }
        }
        let (revision_before, epoch_before) = if dry {
            let (rev, ep) = self.store.epoch(&ns.namespace).await?;
            (rev, ep.unwrap_or_default())
        } else {
            let fencing: Vec<(String, u64)> = ns.fencing.into_iter().collect();
            self.store
                .ns_restore_begin(&ns.namespace, &fencing, FENCING_MARGIN)
                .await?
        };
        sum.revision = revision_before;
        Ok(Section {
            ns: ns.namespace,
            frame: RestoreFrame {
                mode,
                dry,
                backup_epoch: ns.epoch,
                epoch_before,
                revision_before,
            },
            batch: Vec::new(),
            bytes: 0,
            after: None,
            sum,
        })
    }

    /// Write the section's batch; in replace mode first delete what the index holds between
    /// the last key written and the batch's last key that the batch does not hold.
    async fn flush(&self, s: &mut Section) -> ApiResult<()> {
        let Some(last) = s.batch.last().map(|e| e.key.clone()) else {
            return Ok(());
        };
        if s.frame.mode == RestoreMode::Replace {
            let held: HashSet<&str> = s.batch.iter().map(|e| e.key.as_str()).collect();
            let gone = self
                .index_between(&s.ns, s.after.as_deref(), Some(&last), &held)
                .await?;
            s.sum.add(self.delete_keys(&s.ns, s.frame.dry, &gone).await?);
        }
        let c = self.store.ns_restore_put(&s.ns, &s.frame, &s.batch).await?;
        s.sum.add(c);
        s.after = Some(last);
        s.batch.clear();
        s.bytes = 0;
        Ok(())
    }

    async fn finish_section(&self, mut s: Section) -> ApiResult<NamespaceRestore> {
        self.flush(&mut s).await?;
        if s.frame.mode == RestoreMode::Replace {
            let gone = self
                .index_between(&s.ns, s.after.as_deref(), None, &HashSet::new())
                .await?;
            s.sum.add(self.delete_keys(&s.ns, s.frame.dry, &gone).await?);
        }
        Ok(s.sum)
    }

    /// The live keys of `ns` after `after` up to `upto` (inclusive; None: to the end) that
    /// `held` does not name.
    async fn index_between(
        &self,
        ns: &str,
        after: Option<&str>,
        upto: Option<&str>,
        held: &HashSet<&str>,
    ) -> ApiResult<Vec<String>> {
        let mut out = Vec::new();
        let mut from = after.map(str::to_string);
        loop {
            let page = self.store.ns_key_page(ns, from.as_deref(), 500).await?;
            let full = page.len() == 500;
            for k in page {
                if upto.is_some_and(|u| k.as_str() > u) {
                    return Ok(out);
                }
                if !held.contains(k.as_str()) {
                    out.push(k.clone());
                }
                from = Some(k);
            }
            if !full {
                return Ok(out);
            }
        }
    }

    async fn delete_keys(&self, ns: &str, dry: bool, names: &[String]) -> ApiResult<RestoreCounts> {
        let mut total = RestoreCounts::default();
        for chunk in names.chunks(BATCH) {
            let c = self.store.ns_restore_delete(ns, dry, chunk).await?;
            total.deleted += c.deleted;
            total.revision = c.revision;
        }
        Ok(total)
    }
}

impl NamespaceRestore {
    fn add(&mut self, c: RestoreCounts) {
        self.restored += c.restored;
        self.skipped += c.skipped;
        self.deleted += c.deleted;
        self.revision = self.revision.max(c.revision);
    }
}

impl RestoreSummary {
    fn add_queue(&mut self, q: QueueRestore) {
        self.restored += q.restored;
        self.deleted += q.deleted;
        self.skipped += q.skipped;
        self.queues.push(q);
    }

    fn add(&mut self, n: NamespaceRestore) {
        self.restored += n.restored;
        self.deleted += n.deleted;
        self.skipped += n.skipped;
        self.revision = self.revision.max(n.revision);
        self.namespaces.push(n);
    }
}
