//! The watch session (DESIGN.md "Watch over WebSocket"), independent of the transport: the
//! operations a client sends (`watch`, `subscribe`, `queue`, `cancel`, `ping`) and the
//! messages they produce, queued on an [`Outbox`]. The WebSocket (`http::ws`) and SSE
//! (`http::sse`) transports only move frames.
//!
//! Outgoing frames go through one bounded queue per connection, bounded in frames and bytes:
//! a consumer that lets it fill up is marked slow (the transport closes it with 4008 and the
//! client resumes with `from_revision`), so a slow or dead client never grows the server's
//! memory. A watch gets a gap-free stream: it subscribes to the namespace's live change feed
//! before replaying the retained log, then skips what it replayed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use super::Ops;
use crate::domain::auth::{may_receive, Caller, Permission, Scope};
use crate::domain::names::{validate_name, validate_pattern, validate_prefix};
use crate::domain::watch::{ClientOp, Event, Replay};
use crate::error::{ApiResult, ErrorCode};

/// Frames queued per connection before the consumer counts as too slow.
pub const SEND_QUEUE: usize = 1024;
/// Bytes queued per connection before the consumer counts as too slow (values can be large,
/// so the frame count alone would not bound memory).
pub const SEND_QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// Idle watches get a `progress` message this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Where a session's frames go: a bounded queue (frames and bytes) read by the transport.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<String>,
    slow: mpsc::Sender<()>,
    /// Bytes queued and not yet written (bounded by [`SEND_QUEUE_BYTES`]).
    queued: Arc<AtomicUsize>,
}

/// The transport's end of an [`Outbox`].
pub struct Inbox {
    pub frames: mpsc::Receiver<String>,
    /// Signalled once when the consumer fell too far behind.
    pub slow: mpsc::Receiver<()>,
    queued: Arc<AtomicUsize>,
}

impl Inbox {
    /// `bytes` of frames have left the queue (written to the client).
    pub fn sent(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// A handle to account sent bytes from elsewhere (an SSE stream).
    pub fn counter(&self) -> Arc<AtomicUsize> {
        self.queued.clone()
    }
}

/// A new outbox and the transport's end of it.
pub fn outbox() -> (Outbox, Inbox) {
    let (tx, frames) = mpsc::channel(SEND_QUEUE);
    let (slow_tx, slow) = mpsc::channel(1);
    let queued = Arc::new(AtomicUsize::new(0));
    (
        Outbox {
            tx,
            slow: slow_tx,
            queued: queued.clone(),
        },
        Inbox { frames, slow, queued },
    )
}

impl Outbox {
    /// Queue a frame; a full queue marks the consumer as too slow. Returns false once the
    /// connection is going away.
    pub fn frame(&self, text: String) -> bool {
        let len = text.len();
        // A frame larger than the whole budget still goes out when nothing else is queued, so
        // one big value cannot make a watch impossible to resume.
        let before = self.queued.fetch_add(len, Ordering::Relaxed);
        if before > 0 && before + len > SEND_QUEUE_BYTES {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            let _ = self.slow.try_send(());
            return false;
        }
        match self.tx.try_send(text) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.queued.fetch_sub(len, Ordering::Relaxed);
                let _ = self.slow.try_send(());
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.queued.fetch_sub(len, Ordering::Relaxed);
                false
            }
        }
    }

    /// Whether the connection is still there to send to.
    pub fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }

    /// An `error` message (the session stays open).
    pub fn error(&self, id: Option<&str>, code: &str, message: &str) {
        let mut e = json!({"type": "error", "code": code, "message": message});
        if let Some(id) = id {
            e["id"] = id.into();
        }
        self.frame(e.to_string());
    }
}

/// What one watch follows.
pub struct WatchSpec {
    id: String,
    /// `id` as a JSON string.
    id_json: String,
    ns: String,
    prefix: String,
    from: Option<u64>,
    values: bool,
    /// The epoch of the history `from` belongs to (from an earlier `progress`), if known.
    epoch: Option<String>,
}

impl WatchSpec {
    /// Resume only within this epoch of the namespace's history.
    pub fn in_epoch(mut self, epoch: Option<String>) -> WatchSpec {
        self.epoch = epoch.filter(|e| !e.is_empty());
        self
    }

    pub fn new(id: &str, ns: String, prefix: String, from: Option<u64>, values: bool) -> WatchSpec {
        WatchSpec {
            id_json: serde_json::to_string(id).unwrap_or_default(),
            id: id.to_string(),
            ns,
            prefix,
            from,
            values,
            epoch: None,
        }
    }
}

/// The watches and subscriptions of one connection.
pub struct Session {
    ops: Arc<Ops>,
    out: Outbox,
    /// Who opened the socket (checked again per op: a token removed from the tokens file
    /// can start nothing new).
    who: Caller,
    watches: HashMap<String, JoinHandle<()>>,
}

impl Session {
    pub fn new(ops: Arc<Ops>, out: Outbox, who: Caller) -> Session {
        Session {
            ops,
            out,
            who,
            watches: HashMap::new(),
        }
    }

    /// A frame that is not JSON text.
    pub fn binary(&self) {
        self.out
            .error(None, "invalid_argument", "frames must be JSON text");
    }

    /// One text frame from the client.
    pub fn handle(&mut self, text: &str) {
        let op: ClientOp = match serde_json::from_str(text) {
            Ok(op) => op,
            Err(e) => {
                self.out
                    .error(None, "invalid_argument", &format!("unknown or malformed op: {e}"));
                return;
            }
        };
        self.watches.retain(|_, h| !h.is_finished());
        let (ops, out) = (self.ops.clone(), self.out.clone());
        if matches!(op, ClientOp::Ping) {
            // Keepalive: answered whatever the token's state or budget.
            self.out.frame(json!({"type": "pong"}).to_string());
            return;
        }
        let op_id = match &op {
            ClientOp::Watch { id, .. }
            | ClientOp::Subscribe { id, .. }
            | ClientOp::Queue { id, .. }
            | ClientOp::Stats { id, .. }
            | ClientOp::Cancel { id } => Some(id.clone()),
            ClientOp::Ping => None,
        };
        // Every op is checked against the tokens in force now (a reload may have removed or
        // narrowed the socket's token) and spends the token's request budget.
        match self.ops.auth.current_caller(&self.who) {
            Some(now) => self.who = now,
            None => {
                self.out.error(
                    op_id.as_deref(),
                    "unauthorized",
                    "the token of this socket is no longer in the tokens file",
                );
                return;
            }
        }
        if let Err(limited) = self.ops.auth.admit(&self.who, None) {
            self.out
                .error(op_id.as_deref(), "rate_limited", &limited.error.detail);
            return;
        }
        match op {
            ClientOp::Ping => {
                self.out.frame(json!({"type": "pong"}).to_string());
            }
            ClientOp::Cancel { id } => match self.watches.remove(&id) {
                Some(h) => h.abort(),
                None => self.out.error(Some(&id), "not_found", "no such watch"),
            },
            ClientOp::Queue { id, queue } => {
                let invalid = self
                    .who
                    .check(Permission::Read, Scope::Queue(&queue))
                    .and_then(|_| validate_name("queue", &queue));
                if self.refuse(&id, invalid.err()) {
                    return;
                }
                let task = self.spawn(&id, run_queue_watch(ops, id.clone(), queue, out));
                self.watches.insert(id, task);
            }
            ClientOp::Stats { id, interval_ms } => {
                let interval = interval_ms.unwrap_or(2000);
                let invalid = self
                    .who
                    .check(Permission::Read, Scope::Service)
                    .err()
                    .or_else(|| {
                        (!(500..=60_000).contains(&interval)).then(|| {
                            crate::error::ApiError::bad_request("interval_ms must be between 500 and 60000")
                        })
                    });
                if self.refuse(&id, invalid) {
                    return;
                }
                let task = self.spawn(&id, run_stats(id.clone(), interval, out));
                self.watches.insert(id, task);
            }
            ClientOp::Subscribe { id, channel } => {
                let invalid = validate_pattern(&channel).and_then(|_| self.who.check_subscribe(&channel));
                if self.refuse(&id, invalid.err()) {
                    return;
                }
                let task = self.spawn(
                    &id,
                    run_subscription(ops, self.who.clone(), id.clone(), channel, out),
                );
                self.watches.insert(id, task);
            }
            ClientOp::Watch {
                id,
                namespace,
                prefix,
                from_revision,
                values,
                epoch,
            } => {
                if self.refuse(&id, watch_scope(&self.who, &namespace).err()) {
                    return;
                }
                let prefix = prefix.unwrap_or_default();
                if let Err(e) = validate_prefix(&prefix) {
                    // The same rule as the HTTP listing's prefix.
                    self.out.error(Some(&id), "invalid_argument", &e.detail);
                    return;
                }
                let spec = WatchSpec::new(&id, namespace, prefix, from_revision, values.unwrap_or(true))
                    .in_epoch(epoch);
                let task = self.spawn(&id, run_watch(ops, spec, out));
                self.watches.insert(id, task);
            }
        }
    }

    /// Run a watch, subscription or queue watch until it ends or the socket's token is
    /// removed or changed in the tokens file (then an `error` frame `unauthorized`).
    fn spawn(&self, id: &str, run: impl std::future::Future<Output = ()> + Send + 'static) -> JoinHandle<()> {
        let revoked = self.ops.auth.revoked(self.who.clone());
        let (out, id) = (self.out.clone(), id.to_string());
        tokio::spawn(async move {
            tokio::select! {
                _ = run => {}
                _ = revoked => out.error(
                    Some(&id),
                    "unauthorized",
                    "the token of this socket was removed or changed in the tokens file; open the watch again",
                ),
            }
        })
    }

    /// Answer an `error` (true) when the id is unusable or the op's own check failed.
    fn refuse(&self, id: &str, invalid: Option<crate::error::ApiError>) -> bool {
        if let Err((code, msg)) = self.check_id(id) {
            self.out.error(Some(id), code, msg);
            return true;
        }
        if let Some(e) = invalid {
            self.out.error(Some(id), e.code.as_str(), &e.detail);
            return true;
        }
        false
    }

    /// An id for a new watch or subscription on this connection.
    fn check_id(&self, id: &str) -> Result<(), (&'static str, &'static str)> {
        if id.is_empty() || id.len() > 128 {
            return Err(("invalid_argument", "id must be 1 to 128 characters"));
        }
        if self.watches.contains_key(id) {
            return Err((
                "invalid_argument",
                "a watch or subscription with this id is active",
            ));
        }
        if self.watches.len() >= self.ops.cfg.ws_max_watches {
            return Err((
                "invalid_argument",
                "too many watches and subscriptions on this connection",
            ));
        }
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        for (_, h) in self.watches.drain() {
            h.abort();
        }
    }
}

/// What a namespace watch (WebSocket `watch`, SSE) needs: a valid name and read on it.
pub fn watch_scope(who: &Caller, ns: &str) -> ApiResult<()> {
    who.check(Permission::Read, Scope::Namespace(ns))?;
    validate_name("namespace", ns)
}

/// One pub/sub subscription: forward every matching message the caller may read (a pattern
/// over the service's own channels reaches only the namespaces, partitions and agents in
/// the token's scope).
async fn run_subscription(ops: Arc<Ops>, who: Caller, id: String, pattern: String, out: Outbox) {
    let mut rx = match ops.pubsub.subscribe(&ops.store, &pattern).await {
        Ok(rx) => rx,
        Err(e) => {
            out.error(Some(&id), e.code.as_str(), &e.detail);
            return;
        }
    };
    // Live: every message published from now on reaches this subscription.
    out.frame(json!({"type": "subscribed", "id": id}).to_string());
    loop {
        match rx.recv().await {
            Ok(m) if !may_receive(&who, &m.channel, m.payload.get()) => {}
            Ok(m) => {
                let frame =
                    json!({"type": "message", "id": id, "channel": m.channel, "payload": &*m.payload});
                if !out.frame(frame.to_string()) {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                out.error(
                    Some(&id),
                    "lagged",
                    &format!("{n} messages were dropped: this subscriber is too slow"),
                );
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// `queue` op: `{"type":"task","id":…,"task":{…}}` for every state change of the queue's
/// tasks from now on (fire-and-forget, like pub/sub: a socket that falls behind gets `lagged`).
async fn run_queue_watch(ops: Arc<Ops>, id: String, queue: String, out: Outbox) {
    let mut rx = match ops.queues.events(&ops.store, &queue).await {
        Ok(rx) => rx,
        Err(e) => {
            out.error(Some(&id), e.code.as_str(), &e.detail);
            return;
        }
    };
    let id_json = serde_json::to_string(&id).unwrap_or_default();
    out.frame(format!(
        r#"{{"type":"progress","id":{id_json},"queue":{}}}"#,
        serde_json::to_string(&queue).unwrap_or_default()
    ));
    loop {
        match rx.recv().await {
            Ok(ev) => {
                if !out.frame(format!(r#"{{"type":"task","id":{id_json},"task":{ev}}}"#)) {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => out.error(
                Some(&id),
                "lagged",
                &format!("{n} task events were dropped: this subscriber is too slow"),
            ),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// `{"type":"event","id":…,"event":…}` around the event's JSON, which is serialised once per
/// event however many watchers send it.
fn event_frame(spec: &WatchSpec, e: &Event) -> String {
    let body = e.json(spec.values);
    let mut f = String::with_capacity(body.len() + spec.id_json.len() + 32);
    f.push_str(r#"{"type":"event","id":"#);
    f.push_str(&spec.id_json);
    f.push_str(r#","event":"#);
    f.push_str(body);
    f.push('}');
    f
}

fn sent_counter() -> &'static metrics::Counter {
    static C: std::sync::OnceLock<metrics::Counter> = std::sync::OnceLock::new();
    C.get_or_init(|| metrics::counter!("watch_events_sent_total"))
}

/// `stats` frames every `interval_ms` until cancelled or the socket closes (the first at once).
async fn run_stats(id: String, interval_ms: u64, out: Outbox) {
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let frame = json!({
            "type": "stats",
            "id": id,
            "time": crate::domain::time::rfc3339(crate::domain::time::now_ms()),
            "stats": crate::metrics::live::totals(),
        });
        if !out.frame(frame.to_string()) {
            return;
        }
    }
}

/// One watch: subscribe to live changes, replay what the client missed, then stream live.
pub async fn run_watch(ops: Arc<Ops>, spec: WatchSpec, out: Outbox) {
    let mut live = match ops.hub.subscribe(&ops.store, &spec.ns).await {
        Ok(rx) => rx,
        Err(e) => {
            out.error(Some(&spec.id), e.code.as_str(), &e.detail);
            return;
        }
    };
    let (rev, epoch) = match ops.store.epoch(&spec.ns).await {
        Ok(x) => x,
        Err(e) => {
            out.error(Some(&spec.id), e.code.as_str(), &e.detail);
            return;
        }
    };
    // A resume into another history than the one it came from (the client's epoch differs),
    // or past the namespace's revision: that history is gone (Redis lost its data).
    let other_epoch = spec.epoch.is_some() && spec.epoch != epoch;
    if other_epoch || spec.from.is_some_and(|f| rev < f) {
        reset(&spec, &out);
        return;
    }
    let mut last = spec.from.unwrap_or(rev);
    if spec.from.is_some() && !catch_up(&ops, &spec, &out, &mut last).await {
        return;
    }
    // The first `progress` tells the client the watch is live from this revision on, and in
    // which epoch of the namespace's history (send it back as `epoch` when resuming).
    let progress_frame =
        |last: u64| json!({"type": "progress", "id": spec.id, "revision": last, "epoch": epoch}).to_string();
    out.frame(progress_frame(last));
    // One timer per watch (not one per event): a tick with nothing sent since the last one
    // sends `progress`.
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    let mut active = false;
    loop {
        let next = tokio::select! {
            r = live.recv() => Ok(r),
            _ = progress.tick() => Err(()),
        };
        match next {
            Err(()) => {
                if !std::mem::take(&mut active) && !out.frame(progress_frame(last)) {
                    return;
                }
            }
            Ok(Ok(e)) => {
                active = true;
                if e.is_reset() {
                    reset(&spec, &out);
                    return;
                }
                if e.revision <= last {
                    continue;
                }
                if e.revision > last.saturating_add(1) {
                    // A revision between the last sent and this one never reached the
                    // broadcast (reader restarted): read it from the log.
                    if !catch_up(&ops, &spec, &out, &mut last).await {
                        return;
                    }
                    if e.revision <= last {
                        continue;
                    }
                }
                last = e.revision;
                if e.key.starts_with(&spec.prefix) {
                    sent_counter().increment(1);
                    crate::metrics::live::event_sent();
                    if !out.frame(event_frame(&spec, &e)) {
                        return;
                    }
                }
            }
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                if !catch_up(&ops, &spec, &out, &mut last).await {
                    return;
                }
            }
            Ok(Err(broadcast::error::RecvError::Closed)) => {
                let since = tokio::time::Instant::now();
                live = loop {
                    match ops.hub.subscribe(&ops.store, &spec.ns).await {
                        Ok(rx) => break rx,
                        Err(e)
                            if e.code == ErrorCode::RedisUnavailable
                                && since.elapsed() < OUTAGE_PATIENCE
                                && out.is_open() =>
                        {
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                        Err(e) => {
                            out.error(Some(&spec.id), e.code.as_str(), &e.detail);
                            return;
                        }
                    }
                };
                if !catch_up(&ops, &spec, &out, &mut last).await {
                    return;
                }
            }
        }
    }
}

/// The namespace's history was lost under the watcher (or before its resume): it must resync
/// from revision 0 (DESIGN.md "Watch": `compacted` with reason `reset`).
fn reset(spec: &WatchSpec, out: &Outbox) {
    out.frame(
        json!({"type": "compacted", "id": spec.id, "compact_revision": 0, "reason": "reset"}).to_string(),
    );
}

/// How long a watch waits for Redis to answer again (a failover: the sentinels or the cluster
/// promoting a replica) before it ends with an `error` frame.
const OUTAGE_PATIENCE: Duration = Duration::from_secs(30);

/// Send every retained change after `last`, page by page. False when the watch must end
/// (compacted, Redis unavailable for longer than [`OUTAGE_PATIENCE`] or another Redis error,
/// or the connection is going away).
async fn catch_up(ops: &Ops, spec: &WatchSpec, out: &Outbox, last: &mut u64) -> bool {
    let mut outage: Option<tokio::time::Instant> = None;
    loop {
        let page = ops.store.replay_page(&spec.ns, *last).await;
        if let Err(e) = &page {
            // Redis unavailable (a failover under way): try again from the same revision
            // until it answers, so the watch goes on without a gap.
            let since = *outage.get_or_insert_with(tokio::time::Instant::now);
            if e.code == ErrorCode::RedisUnavailable && since.elapsed() < OUTAGE_PATIENCE && out.is_open() {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        }
        match page {
            Ok(Replay::Compacted(oldest)) => {
                out.frame(
                    json!({"type": "compacted", "id": spec.id, "compact_revision": oldest}).to_string(),
                );
                return false;
            }
            Ok(Replay::Events(events)) => {
                if events.is_empty() {
                    return true;
                }
                for e in events {
                    *last = e.revision;
                    if e.key.starts_with(&spec.prefix) {
                        sent_counter().increment(1);
                        crate::metrics::live::event_sent();
                        if !out.frame(event_frame(spec, &e)) {
                            return false;
                        }
                    }
                }
            }
            Err(e) => {
                out.error(Some(&spec.id), e.code.as_str(), &e.detail);
                return false;
            }
        }
    }
}
