//! Queues in backups: the capture of one queue exactly at one moment without stopping its
//! producers and workers (`q_dump_begin` starts the queue's change list, windows of task ids
//! are read, `q_dump_fix` reads the changed tasks and the figures at once), the lines that
//! hold it, and its restore.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;

use serde::{Deserialize, Serialize};

use super::backup_dir::Progress;
use super::Ops;
use crate::domain::backup::Writer;
use crate::error::{ApiError, ApiResult};
use crate::store::queue_backup::{DumpedTask, QueueFix};

/// Task ids read per window.
const WINDOW: u64 = 500;
/// Most tasks changed during a capture that the fix-up reads; more and it starts again.
const FIX_MOST: usize = 20_000;
const ATTEMPTS: usize = 5;
/// Tasks per restore call.
pub const PUT_BATCH: usize = 200;

/// What the manifest says of one queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueManifest {
    pub queue: String,
    pub tasks: u64,
    /// The queue's figures at the capture: `seq` (highest task id), `paused`, the totals.
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub attempts: usize,
}

/// A task line: `{"type":"task","queue","id","fields":{…},"sets":{set: score}}`.
#[derive(Serialize, Deserialize)]
pub struct TaskLine {
    #[serde(rename = "type")]
    pub kind: String,
    pub queue: String,
    pub id: u64,
    pub fields: BTreeMap<String, String>,
    pub sets: BTreeMap<String, String>,
}

impl TaskLine {
    pub fn into_task(self) -> DumpedTask {
        DumpedTask {
            id: self.id,
            fields: self.fields,
            sets: self.sets,
        }
    }
}

fn task_line(q: &str, t: DumpedTask) -> Option<Vec<u8>> {
    let line = TaskLine {
        kind: "task".into(),
        queue: q.to_string(),
        id: t.id,
        fields: t.fields,
        sets: t.sets,
    };
    let mut text = serde_json::to_vec(&line).ok()?;
    text.push(b'\n');
    Some(text)
}

/// The id of a task line (only `id` is decoded).
fn id_of(line: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct IdOf {
        id: u64,
    }
    serde_json::from_slice::<IdOf>(line).ok().map(|i| i.id)
}

/// One queue captured: its manifest part, the windows' lines in a temporary file, and the
/// tasks the fix-up read (they replace their window lines; merged in id order).
pub struct CapturedQueue {
    pub manifest: QueueManifest,
    fixed: BTreeMap<u64, Option<Vec<u8>>>,
    pub pages: PathBuf,
}

/// A queue's section line.
#[derive(Serialize)]
struct QueueLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    manifest: &'a QueueManifest,
}

/// Write a captured queue's section: its line, then its tasks in id order.
pub fn write_queue<W: Write>(w: &mut Writer<W>, c: &CapturedQueue) -> std::io::Result<()> {
    w.line(&QueueLine {
        kind: "queue",
        manifest: &c.manifest,
    })?;
    let mut fixed = c.fixed.iter().peekable();
    for line in BufReader::new(File::open(&c.pages)?).split(b'\n') {
        let mut line = line?;
        let Some(id) = id_of(&line) else { continue };
        while let Some((_, l)) = fixed.next_if(|(k, _)| **k < id) {
            if let Some(l) = l {
                w.raw_line(l)?;
            }
        }
        if !c.fixed.contains_key(&id) {
            line.push(b'\n');
            w.raw_line(&line)?;
        }
    }
    for l in fixed.filter_map(|(_, l)| l.as_ref()) {
        w.raw_line(l)?;
    }
    Ok(())
}

impl Ops {
    /// Capture queue `q` into `pages` (a temporary file).
    pub(super) async fn capture_queue(
        &self,
        q: &str,
        pages: &Path,
        progress: &Progress,
    ) -> ApiResult<CapturedQueue> {
        let io =
            |e: std::io::Error| ApiError::internal(format!("backup temporary file {}: {e}", pages.display()));
        for attempt in 1..=ATTEMPTS {
            let seq = self.store.q_dump_begin(q).await?;
            let mut file = BufWriter::new(File::create(pages).map_err(io)?);
            let mut ids = Vec::new();
            let mut from = 1;
            while from <= seq {
                let to = (from + WINDOW - 1).min(seq);
                for t in self.store.q_dump_page(q, from, to).await? {
                    ids.push(t.id);
                    if let Some(l) = task_line(q, t) {
                        file.write_all(&l).map_err(io)?;
                        progress.entries.fetch_add(1, Relaxed);
                    }
                }
                from = to + 1;
            }
            file.flush().map_err(io)?;
            let QueueFix::Ok { meta, tasks } = self.store.q_dump_fix(q, FIX_MOST).await? else {
                tracing::info!(
                    q,
                    attempt,
                    "backup: too many task changes during the capture; again"
                );
                continue;
            };
            let mut count = ids.len() as u64;
            let mut fixed = BTreeMap::new();
            for (id, t) in tasks {
                let was = ids.binary_search(&id).is_ok();
                let now = t.is_some();
                count = count + u64::from(now && !was) - u64::from(was && !now);
                fixed.insert(id, t.and_then(|t| task_line(q, t)));
            }
            return Ok(CapturedQueue {
                manifest: QueueManifest {
                    queue: q.to_string(),
                    tasks: count,
                    meta,
                    attempts: attempt,
                },
                fixed,
                pages: pages.to_path_buf(),
            });
        }
        Err(ApiError::unavailable(format!(
            "queue {q} changed too fast to capture in {ATTEMPTS} attempts (more than {FIX_MOST} task changes during one); retry"
        )))
    }

    /// Begin restoring a queue section. Replace clears the queue first; merge restores only
    /// into a queue that holds no task (else its tasks are skipped). Dry: counts only.
    pub(super) async fn queue_begin(
        &self,
        manifest: QueueManifest,
        replace: bool,
        dry: bool,
    ) -> ApiResult<QueueSection> {
        let q = manifest.queue.clone();
        let stats = self.store.q_stats(&q).await?;
        let held = stats.ready + stats.delayed + stats.failed + stats.leased + stats.completed + stats.dead;
        let mut sum = QueueRestore {
            queue: q.clone(),
            ..Default::default()
        };
        if replace {
            if dry {
                sum.deleted = held;
            } else {
                loop {
                    let n = self.store.q_restore_clear(&q).await?;
                    if n == 0 {
                        break;
                    }
                    sum.deleted += n;
                }
            }
        }
        Ok(QueueSection {
            manifest,
            write: replace || held == 0,
            dry,
            batch: Vec::new(),
            sum,
        })
    }

    pub(super) async fn queue_push(&self, s: &mut QueueSection, t: DumpedTask) -> ApiResult<()> {
        if !s.write {
            s.sum.skipped += 1;
            return Ok(());
        }
        s.sum.restored += 1;
        if !s.dry {
            s.batch.push(t);
            if s.batch.len() >= PUT_BATCH {
                self.store.q_restore_put(&s.manifest.queue, &s.batch).await?;
                s.batch.clear();
            }
        }
        Ok(())
    }

    pub(super) async fn queue_finish(&self, mut s: QueueSection) -> ApiResult<QueueRestore> {
        let q = s.manifest.queue.clone();
        if s.write && !s.dry {
            if !s.batch.is_empty() {
                self.store.q_restore_put(&q, &s.batch).await?;
            }
            s.sum.sequence = self.store.q_restore_end(&q, &s.manifest.meta).await?;
            self.store.register_queue(&q).await?;
        }
        Ok(s.sum)
    }
}

/// A queue being restored.
pub struct QueueSection {
    pub manifest: QueueManifest,
    write: bool,
    dry: bool,
    batch: Vec<DumpedTask>,
    sum: QueueRestore,
}

/// What a restore did to one queue.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct QueueRestore {
    pub queue: String,
    pub restored: u64,
    /// Tasks the queue held that a replace removed.
    pub deleted: u64,
    /// Tasks not written: a merge into a queue that holds tasks restores none of them.
    pub skipped: u64,
    /// The queue's sequence after the restore (0 for a dry run or a skipped queue).
    pub sequence: u64,
}
