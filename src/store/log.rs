//! Reading a namespace's change log (`<p>:{ns}:log`, one stream entry per revision with id
//! `0-<revision>`, written by the functions in the same call as the change): replay pages
//! for watchers resuming from a revision, and a tailing reader on a connection of its own
//! (XREAD BLOCK must not stall the pipelined pool).

use std::collections::HashMap;
use std::time::Duration;

use fred::prelude::*;
use fred::types::streams::XReadResponse;

use super::Store;
use crate::domain::watch::{Event, Replay};
use crate::error::ApiResult;

/// Entries per XRANGE page when replaying (a page is held in memory before its frames are
/// queued against the socket's byte budget, so it is kept small).
const REPLAY_PAGE: u64 = 64;
/// Entries per XREAD of a tailing reader.
const READ_BATCH: u64 = 512;
/// How long one XREAD blocks before the reader looks whether anyone still listens.
const READ_BLOCK_MS: u64 = 1000;

type Fields = HashMap<String, String>;

/// Tails one namespace's change log on its own connection.
pub struct LogReader {
    client: Client,
    ns: String,
    log: String,
    meta: String,
    last: String,
    /// The epoch of the history being read (`None`: none yet, or written before epochs).
    epoch: Option<String>,
    /// The newest revision this reader has seen the namespace at.
    rev: u64,
}

/// What a read of the log found.
pub enum Read {
    /// Entries after the last one read (empty when the block timed out).
    Events(Vec<Event>),
    /// The namespace's history was lost and started again (its epoch changed, or its revision
    /// went backwards): what this reader read before no longer exists.
    Reset,
}

impl LogReader {
    /// The next entries after the last one read, or the news that the history was reset.
    pub async fn next(&mut self) -> Result<Read, fred::error::Error> {
        let events = self.read().await?;
        // After every read (at least once a second), before anything read is handed on.
        let (rev, epoch): (Option<u64>, Option<String>) =
            self.client.hmget(self.meta.as_str(), vec!["rev", "ep"]).await?;
        let rev = rev.unwrap_or(0);
        let reset = rev < self.rev
            || match (&self.epoch, &epoch) {
                (Some(known), now) => now.as_ref() != Some(known),
                (None, _) => false,
            };
        if reset {
            return Ok(Read::Reset);
        }
        self.rev = rev;
        if self.epoch.is_none() {
            // The first write of a new namespace sets its epoch.
            self.epoch = epoch;
        }
        Ok(Read::Events(events))
    }

    async fn read(&mut self) -> Result<Vec<Event>, fred::error::Error> {
        // A BLOCK that times out answers nil: no entries.
        let v: fred::types::Value = self
            .client
            .xread(
                Some(READ_BATCH),
                Some(READ_BLOCK_MS),
                self.log.as_str(),
                self.last.as_str(),
            )
            .await?;
        let mut streams: XReadResponse<String, String, String, String> = if v.is_null() {
            HashMap::new()
        } else {
            v.into_xread_response()?
        };
        let mut out = Vec::new();
        for (id, fields) in streams.remove(&self.log).unwrap_or_default() {
            self.last = id.clone();
            if let Some(e) = Event::from_log(&self.ns, &id, fields) {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// A new connection after a failed read, from where this reader left off (the old one
    /// may be stuck on a node that died). On failure the old connection is kept and the
    /// error returned; call again later.
    pub async fn reconnect(&mut self, store: &Store) -> ApiResult<()> {
        let fresh = store
            .dedicated_client(Duration::from_millis(READ_BLOCK_MS))
            .await?;
        tracing::info!(ns = %self.ns, "change-log reader: reconnected");
        let old = std::mem::replace(&mut self.client, fresh);
        tokio::spawn(async move { super::quit_within(&old, Duration::from_secs(5)).await });
        Ok(())
    }

    /// QUIT, bounded ([`super::quit_within`]).
    pub async fn close(self) {
        super::quit_within(&self.client, Duration::from_secs(5)).await;
    }
}

impl Store {
    /// A reader of `ns`'s log that starts after its current last entry.
    pub async fn log_reader(&self, ns: &str) -> ApiResult<LogReader> {
        let log = self.keys().ns(ns).log;
        let last: Vec<(String, Fields)> = self
            .timed(
                "xrevrange",
                self.client().xrevrange_values(log.clone(), "+", "-", Some(1)),
            )
            .await?;
        let last = last
            .into_iter()
            .next()
            .map(|(id, _)| id)
            .unwrap_or_else(|| "0-0".into());
        let (rev, epoch) = self.epoch(ns).await?;
        let client = self
            .dedicated_client(Duration::from_millis(READ_BLOCK_MS))
            .await?;
        Ok(LogReader {
            client,
            ns: ns.to_string(),
            log,
            meta: self.keys().ns(ns).meta,
            last,
            epoch,
            rev,
        })
    }

    /// Retained changes after revision `from`, at most one page, and whether the log had been
    /// trimmed past `from`.
    pub async fn replay_page(&self, ns: &str, from: u64) -> ApiResult<Replay> {
        let nk = self.keys().ns(ns);
        let read = || async {
            let page: Vec<(String, Fields)> = self
                .timed(
                    "xrange",
                    self.client().xrange_values(
                        nk.log.clone(),
                        format!("0-{}", from.saturating_add(1)),
                        "+",
                        Some(REPLAY_PAGE),
                    ),
                )
                .await?;
            Ok::<_, crate::error::ApiError>(page)
        };
        let mut page = read().await?;
        if page.is_empty() {
            // Nothing retained after `from`: fine if nothing happened since. A revision's log
            // entry is written atomically with it and trimming always keeps the newest entry,
            // so if the revision has moved past `from` a second read must see the new entries,
            // unless the log itself was lost. (Reading the revision alone would race a write.)
            let rev = self.revision(ns).await?;
            if rev <= from {
                return Ok(Replay::Events(Vec::new()));
            }
            page = read().await?;
            if page.is_empty() {
                return Ok(Replay::Compacted(rev + 1));
            }
        }
        let first_rev = page
            .first()
            .and_then(|(id, _)| id.strip_prefix("0-")?.parse::<u64>().ok());
        if let Some(r) = first_rev {
            if r > from.saturating_add(1) {
                return Ok(Replay::Compacted(r));
            }
        }
        Ok(Replay::Events(
            page.into_iter()
                .filter_map(|(id, f)| Event::from_log(ns, &id, f))
                .collect(),
        ))
    }

    /// The namespace's current revision and the epoch of its history.
    pub async fn epoch(&self, ns: &str) -> ApiResult<(u64, Option<String>)> {
        let (rev, ep): (Option<u64>, Option<String>) = self
            .timed(
                "hmget",
                self.client().hmget(self.keys().ns(ns).meta, vec!["rev", "ep"]),
            )
            .await?;
        Ok((rev.unwrap_or(0), ep))
    }

    /// The namespace's current revision.
    pub async fn revision(&self, ns: &str) -> ApiResult<u64> {
        let rev: Option<u64> = self
            .timed("hget", self.client().hget(self.keys().ns(ns).meta, "rev"))
            .await?;
        Ok(rev.unwrap_or(0))
    }
}
