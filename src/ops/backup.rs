//! Backups (issue 16, in progress): the consistent capture of namespaces into one backup file
//! (format: [`crate::domain::backup`]). API, restore, schedule and queues follow.
//!
//! Each namespace is captured exactly at one revision without stopping writers: its revision
//! R0 is read, then its keys in pages (lines to a temporary file), then the keys the change
//! log names after R0, then one atomic call reads those keys with the namespace's revision,
//! epoch and fencing counters (and refuses, naming them, if the log holds later changes to
//! keys it was not given). Written out, the fixed keys replace their page lines: the result is
//! the namespace at that revision.
//! Namespaces are captured one after the other: there is no consistency across namespaces
//! (each lives in its own hash tag, possibly on another cluster node).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

use serde::Serialize;
use serde_json::value::RawValue;

pub use super::backup_dir::Progress;
use super::backup_queue::{write_queue, QueueManifest};
use super::Ops;
use crate::domain::backup::{BackupKey, Writer};
use crate::domain::kv::Entry;
use crate::domain::time::{now_ms, rfc3339};
use crate::error::{ApiError, ApiResult};
use crate::store::backup::{DumpedKey, Fix};

/// Keys read per page.
const PAGE: usize = 500;
/// Most changed keys the atomic fix-up reads in one call; more and the capture starts again.
const FIX_MOST: usize = 20_000;
/// Capture attempts per namespace (a fix-up over the limit, or a log trimmed under the capture).
const ATTEMPTS: usize = 5;

/// One version of an entry in a backup line.
#[derive(Serialize)]
struct VersionLine {
    version: u64,
    create_revision: u64,
    mod_revision: u64,
    created_at_ms: i64,
    updated_at_ms: i64,
    expires_at_ms: Option<i64>,
    agent_id: Option<String>,
    change_reason: Option<String>,
    metadata: Option<Box<RawValue>>,
    value: Option<Box<RawValue>>,
}

fn version_line(ns: &str, key: &str, record: &str) -> Option<VersionLine> {
    let e = Entry::from_record(ns, key, record, true)?;
    Some(VersionLine {
        version: e.version,
        create_revision: e.create_revision,
        mod_revision: e.mod_revision,
        created_at_ms: e.created_at,
        updated_at_ms: e.updated_at,
        expires_at_ms: e.expires_at,
        agent_id: e.agent_id,
        change_reason: e.change_reason,
        metadata: e.metadata.and_then(|m| RawValue::from_string(m).ok()),
        value: e.value.and_then(|v| RawValue::from_string(v).ok()),
    })
}

/// A key's line: its current version and its history (oldest first).
#[derive(Serialize)]
struct EntryLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    namespace: &'a str,
    key: &'a str,
    #[serde(flatten)]
    current: VersionLine,
    history: Vec<VersionLine>,
}

fn entry_line(ns: &str, k: &DumpedKey) -> Option<Vec<u8>> {
    let line = EntryLine {
        kind: "entry",
        namespace: ns,
        key: &k.key,
        current: version_line(ns, &k.key, &k.record)?,
        history: k
            .history
            .iter()
            .filter_map(|(_, r)| version_line(ns, &k.key, r))
            .collect(),
    };
    let mut text = serde_json::to_vec(&line).ok()?;
    text.push(b'\n');
    Some(text)
}

/// What the manifest says of one namespace.
#[derive(Debug, Clone, Serialize)]
pub struct NamespaceManifest {
    pub namespace: String,
    /// The revision the namespace was captured at, and the epoch of its history.
    pub revision: u64,
    pub epoch: String,
    pub entries: u64,
    /// Lock name → last fencing token granted.
    pub fencing: HashMap<String, u64>,
    /// The partition's settings; null for a plain namespace.
    pub partition: Option<PartitionLine>,
    /// Capture attempts it took (a log trimmed under it, or too many changes, start again).
    pub attempts: usize,
}

/// A partition's settings as a backup holds them (restore creates the partition with them
/// when the target has none of that name).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct PartitionLine {
    pub owner_agent: String,
    pub tier: String,
    pub quota_bytes: u64,
    pub max_keys: Option<u64>,
    pub default_ttl_ms: Option<u64>,
}

impl PartitionLine {
    /// From the fields of a `part` hash (None when it is not a partition).
    fn from_fields(f: &[(String, String)]) -> Option<PartitionLine> {
        let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let num = |k: &str| get(k).and_then(|v| v.parse::<u64>().ok());
        Some(PartitionLine {
            owner_agent: get("owner_agent")?.to_string(),
            tier: get("tier").unwrap_or("shared").to_string(),
            quota_bytes: num("quota_bytes")?,
            max_keys: num("max_keys"),
            default_ttl_ms: num("default_ttl_ms"),
        })
    }
}

/// The first line of a backup file.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub format: u8,
    pub created_at: String,
    pub service_version: &'static str,
    pub namespaces: Vec<NamespaceManifest>,
    pub queues: Vec<QueueManifest>,
}

/// What a capture or a restore covers: `None` is every namespace (every queue).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub namespaces: Option<Vec<String>>,
    pub queues: Option<Vec<String>>,
}

impl Selection {
    /// Everything.
    pub fn all() -> Selection {
        Selection::default()
    }

    /// These namespaces and no queue.
    pub fn namespaces(names: &[String]) -> Selection {
        Selection {
            namespaces: Some(names.to_vec()),
            queues: Some(Vec::new()),
        }
    }

    pub fn wants_namespace(&self, ns: &str) -> bool {
        self.namespaces.as_ref().is_none_or(|n| n.iter().any(|x| x == ns))
    }

    pub fn wants_queue(&self, q: &str) -> bool {
        self.queues.as_ref().is_none_or(|n| n.iter().any(|x| x == q))
    }
}

/// A backup file written: its manifest, size and content SHA-256 (hex).
#[derive(Debug, Clone)]
pub struct CaptureFile {
    pub manifest: Manifest,
    pub size_bytes: u64,
    pub sha256: String,
}

/// One namespace captured into a temporary file: its manifest part and the keys the fix-up
/// replaced (their page lines are skipped when the file is written, and they are merged in
/// key order: a namespace's entries are in byte order of their keys).
struct Captured {
    manifest: NamespaceManifest,
    fixed: BTreeMap<String, Option<Vec<u8>>>,
    pages: std::path::PathBuf,
}

impl Ops {
    /// Capture `namespaces` (every namespace when empty) into a backup file at `out`,
    /// encrypted with `key` when given. Temporary files go beside `out` and are removed.
    pub async fn backup_capture(
        &self,
        sel: &Selection,
        out: &Path,
        key: Option<&BackupKey>,
        progress: &Progress,
    ) -> ApiResult<CaptureFile> {
        let names = match &sel.namespaces {
            None => {
                let mut n = self.store.namespace_names().await?;
                n.sort();
                n
            }
            Some(n) => n.clone(),
        };
        let queues = match &sel.queues {
            None => {
                let mut q = self.store.queue_names().await?;
                q.sort();
                q
            }
            Some(q) => q.clone(),
        };
        progress.total.store((names.len() + queues.len()) as u64, Relaxed);
        let io = |e: std::io::Error| ApiError::internal(format!("backup file {}: {e}", out.display()));
        let mut captured = Vec::new();
        for (i, ns) in names.iter().enumerate() {
            let pages = out.with_extension(format!("part{i}"));
            captured.push(
                self.capture_namespace(ns, &pages, progress)
                    .await
                    .inspect_err(|_| {
                        let _ = std::fs::remove_file(&pages);
                    })?,
            );
            progress.done.fetch_add(1, Relaxed);
        }
        let mut captured_queues = Vec::new();
        for (i, q) in queues.iter().enumerate() {
            let pages = out.with_extension(format!("qpart{i}"));
            let c = self.capture_queue(q, &pages, progress).await;
            match c {
                Ok(c) => captured_queues.push(c),
                Err(e) => {
                    let _ = std::fs::remove_file(&pages);
                    for c in &captured {
                        let _ = std::fs::remove_file(&c.pages);
                    }
                    for c in &captured_queues {
                        let _ = std::fs::remove_file(&c.pages);
                    }
                    return Err(e);
                }
            }
            progress.done.fetch_add(1, Relaxed);
        }
        let manifest = Manifest {
            kind: "manifest",
            format: 1,
            created_at: rfc3339(now_ms()),
            service_version: env!("CARGO_PKG_VERSION"),
            namespaces: captured.iter().map(|c| c.manifest.clone()).collect(),
            queues: captured_queues.iter().map(|c| c.manifest.clone()).collect(),
        };
        let result = (|| -> std::io::Result<(u64, String)> {
            let mut w = Writer::new(BufWriter::new(File::create(out)?), key)?;
            w.line(&manifest)?;
            for c in &captured {
                w.line(&NamespaceLine {
                    kind: "namespace",
                    manifest: c.manifest.clone(),
                })?;
                // The page lines (in key order) and the fixed keys (in key order), merged.
                let mut fixed = c.fixed.iter().peekable();
                for line in BufReader::new(File::open(&c.pages)?).split(b'\n') {
                    let mut line = line?;
                    let Some(key) = key_of(&line) else { continue };
                    while let Some((_, l)) = fixed.next_if(|(k, _)| k.as_str() < key.as_ref()) {
                        if let Some(l) = l {
                            w.raw_line(l)?;
                        }
                    }
                    let skip = c.fixed.contains_key(key.as_ref());
                    if !skip {
                        line.push(b'\n');
                        w.raw_line(&line)?;
                    }
                }
                for l in fixed.filter_map(|(_, l)| l.as_ref()) {
                    w.raw_line(l)?;
                }
            }
            for c in &captured_queues {
                write_queue(&mut w, c)?;
            }
            let (_, size, sha) = w.finish()?;
            Ok((size, sha))
        })();
        for c in &captured {
            let _ = std::fs::remove_file(&c.pages);
        }
        for c in &captured_queues {
            let _ = std::fs::remove_file(&c.pages);
        }
        let (size_bytes, sha256) = result.map_err(io)?;
        Ok(CaptureFile {
            manifest,
            size_bytes,
            sha256,
        })
    }

    async fn capture_namespace(&self, ns: &str, pages: &Path, progress: &Progress) -> ApiResult<Captured> {
        let io =
            |e: std::io::Error| ApiError::internal(format!("backup temporary file {}: {e}", pages.display()));
        'attempt: for attempt in 1..=ATTEMPTS {
            // R0 first: every change after it is in the log, so every key it does not name
            // afterwards is read by the pages as it is at the end.
            let from = self.store.revision(ns).await?;
            let mut file = BufWriter::new(File::create(pages).map_err(io)?);
            let (mut after, mut lines) = (None::<String>, 0u64);
            loop {
                let names = self.store.ns_key_page(ns, after.as_deref(), PAGE).await?;
                for k in self.store.ns_read(ns, &names).await? {
                    if let Some(l) = entry_line(ns, &k) {
                        file.write_all(&l).map_err(io)?;
                        lines += 1;
                        progress.entries.fetch_add(1, Relaxed);
                    }
                }
                if names.len() < PAGE {
                    break;
                }
                after = names.last().cloned();
            }
            file.flush().map_err(io)?;
            // The keys changed since R0, from the log, then one atomic read of them (again
            // with the ones the log names after what was read, until none is missing).
            let mut changed: Vec<String> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            let mut covered = from;
            loop {
                let Some(batch) = self.store.ns_log_keys(ns, covered, 10_000).await? else {
                    tracing::info!(
                        ns,
                        attempt,
                        "backup: the change log was trimmed under the capture; again"
                    );
                    continue 'attempt;
                };
                let Some((last, _)) = batch.last() else { break };
                covered = *last;
                for (_, k) in batch {
                    if seen.insert(k.clone()) {
                        changed.push(k);
                    }
                }
                if changed.len() > FIX_MOST {
                    tracing::info!(
                        ns,
                        attempt,
                        n = changed.len(),
                        "backup: too many keys changed during the capture; again"
                    );
                    continue 'attempt;
                }
            }
            for _ in 0..10 {
                match self.store.ns_dump_fix(ns, covered, &changed).await? {
                    Fix::Compacted(oldest) => {
                        tracing::info!(
                            ns,
                            attempt,
                            covered,
                            oldest,
                            "backup: the change log was trimmed under the capture; again"
                        );
                        continue 'attempt;
                    }
                    Fix::More(more) => {
                        for k in more {
                            if seen.insert(k.clone()) {
                                changed.push(k);
                            }
                        }
                        if changed.len() > FIX_MOST {
                            continue 'attempt;
                        }
                    }
                    Fix::Ok {
                        revision,
                        epoch,
                        fence,
                        part,
                        keys,
                    } => {
                        let fixed: BTreeMap<String, Option<Vec<u8>>> = keys
                            .into_iter()
                            .map(|(key, k)| (key, k.and_then(|k| entry_line(ns, &k))))
                            .collect();
                        // Entries: the page lines not replaced, plus the fixed ones present.
                        let replaced = count_replaced(pages, &fixed).map_err(io)?;
                        let entries =
                            lines - replaced + fixed.values().filter(|l| l.is_some()).count() as u64;
                        return Ok(Captured {
                            manifest: NamespaceManifest {
                                namespace: ns.to_string(),
                                revision,
                                epoch,
                                entries,
                                fencing: fence.into_iter().collect(),
                                partition: PartitionLine::from_fields(&part),
                                attempts: attempt,
                            },
                            fixed,
                            pages: pages.to_path_buf(),
                        });
                    }
                }
            }
        }
        Err(ApiError::unavailable(format!(
            "namespace {ns} changed too fast to capture in {ATTEMPTS} attempts (its change log is trimmed before a capture ends, or more than {FIX_MOST} keys change during one); raise changelog_retention or retry"
        )))
    }
}

/// How many page lines of the temporary file a fixed key replaces.
fn count_replaced(pages: &Path, fixed: &BTreeMap<String, Option<Vec<u8>>>) -> std::io::Result<u64> {
    let mut n = 0;
    for line in BufReader::new(File::open(pages)?).split(b'\n') {
        n += u64::from(key_of(&line?).is_some_and(|k| fixed.contains_key(k.as_ref())));
    }
    Ok(n)
}

/// The key of an entry line (only its `key` is decoded).
fn key_of(line: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    #[derive(serde::Deserialize)]
    struct KeyOf<'a> {
        #[serde(borrow)]
        key: std::borrow::Cow<'a, str>,
    }
    serde_json::from_slice::<KeyOf>(line).ok().map(|k| k.key)
}

/// A namespace's section header in the file: what the manifest says of it.
#[derive(Serialize)]
struct NamespaceLine {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    manifest: NamespaceManifest,
}
