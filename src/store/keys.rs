//! The only place Redis key and channel names are built (a test fails on key or channel
//! construction anywhere else in `src/`).
//!
//! Every key of a namespace carries the `{<ns>}` hash tag so that one namespace lives in one
//! cluster slot and every multi-key function call stays on one node. Namespace names are
//! validated (`[a-z0-9][a-z0-9._-]{0,62}`) and the prefix may not contain braces, so the
//! first `{…}` of a key is always the namespace, whatever bytes the user's key holds.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `<p>:{<ns>}:meta` | hash | `rev` namespace revision, `bytes` bytes used |
//! | `<p>:{<ns>}:idx` | zset | live keys, score 0, lexicographic |
//! | `<p>:{<ns>}:log` | stream | change log, id `0-<revision>`, capped |
//! | `<p>:{<ns>}:ttl` | zset | key → expiry (unix ms) |
//! | `<p>:{<ns>}:sz` | hash | key → accounted bytes |
//! | `<p>:{<ns>}:e:<key>` | string | the entry (one record, see migrations/swarmstate.lua) |
//! | `<p>:{<ns>}:h:<key>` | hash | past versions |
//! | `<p>:namespaces` | set | every namespace ever written (listing) |
//! | `<p>:{q:<q>}:meta` … `idem`, `cap`, `t:<id>` | | a task queue (see migrations/swarmstate.lua) |
//! | `<p>:queues` | set | every queue ever enqueued to |
//! | `<p>:schema` | string | key-schema version applied by migrations |
//! | `<p>:migrate-lock` | string | held while migrations run |
//! | `<p>:{<ns>}:lock:<name>`, `<p>:{<ns>}:fence` | hash | a held lock; last fencing tokens |
//! | `<p>:{<ns>}:locks` | zset | lock name → expires_at of locks granted and not released |
//! | `<p>:{<ns>}:part`, `<p>:{g:pool}:ledger`, `<p>:{g:pool}:total` | hash, hash, string | a partition; the pool ledger (name -> bytes); its sum |
//! | `<p>:{ag:<id>}:a` / `:held`, `<p>:agents` | hash / set, zset | agents |
//! | `<p>:{<ns>}:ik:<id>`, `<p>:{q:<q>}:ik:<id>`, `<p>:{ag:<id>}:ik:<id>`, `<p>:ik:<id>` | string | an `Idempotency-Key` record (JSON), beside what its route changes |
//!
//! Channels (PUBLISH / PSUBSCRIBE):
//!
//! | channel | published by | carries |
//! |---|---|---|
//! | `<p>:ch:<channel>` | `POST /v1/channels/{channel}/publish`, service events | pub/sub messages (`locks.<ns>.<name>`, `agents.<id>`, `partitions.<name>` are the service's own) |
//! | `<p>:q:<queue>` | the queue functions | task state changes (wake-ups, queue watches) |
//! | `<p>:lk:<ns>:<name>` | lock release / free | wakes waiting acquires |
//! | `__keyspace@*__:<p>:{*}:e:*` | Redis | keyspace notifications of entry keys (relay) |

use crate::domain::idempotency::Home;
/// Key builder for one deployment (one key prefix).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The keys of one namespace. Built with `push_str`, not `format!`: this runs on every
    /// request and the formatting machinery was ~4k instructions of it (callgrind).
    pub fn ns(&self, ns: &str) -> NsKeys {
        let mut base = String::with_capacity(self.prefix.len() + ns.len() + 4);
        base.push_str(&self.prefix);
        base.push_str(":{");
        base.push_str(ns);
        base.push_str("}:");
        let with = |suffix: &str| {
            let mut k = String::with_capacity(base.len() + suffix.len());
            k.push_str(&base);
            k.push_str(suffix);
            k
        };
        NsKeys {
            meta: with("meta"),
            idx: with("idx"),
            log: with("log"),
            ttl: with("ttl"),
            sz: with("sz"),
            base,
        }
    }

    pub fn namespaces(&self) -> String {
        format!("{}:namespaces", self.prefix)
    }

    pub fn schema(&self) -> String {
        format!("{}:schema", self.prefix)
    }

    pub fn migrate_lock(&self) -> String {
        format!("{}:migrate-lock", self.prefix)
    }

    /// Channel a lock's release is announced on (`<p>:lk:<ns>:<name>`).
    pub fn lock_channel(&self, ns: &str, name: &str) -> String {
        format!("{}{ns}:{name}", self.lock_channel_prefix())
    }

    /// What every lock channel starts with; the rest is `<ns>:<name>`.
    pub fn lock_channel_prefix(&self) -> String {
        format!("{}:lk:", self.prefix)
    }

    /// PSUBSCRIBE pattern of every lock channel.
    pub fn lock_channel_pattern(&self) -> String {
        format!("{}*", self.lock_channel_prefix())
    }

    /// The Redis channel of pub/sub channel `name` (or pattern: validated names and patterns
    /// hold no characters special to Redis beyond the client's own `*` and `?`).
    pub fn pubsub_channel(&self, name: &str) -> String {
        format!("{}{name}", self.pubsub_channel_prefix())
    }

    /// What every pub/sub channel starts with; the rest is the client's channel name.
    pub fn pubsub_channel_prefix(&self) -> String {
        format!("{}:ch:", self.prefix)
    }

    /// PSUBSCRIBE pattern of every pub/sub channel of this prefix (the prefix glob-escaped):
    /// one subscription per process, matched against clients' patterns in-process.
    pub fn pubsub_channel_pattern(&self) -> String {
        format!("{}*", glob_escape(&self.pubsub_channel_prefix()))
    }

    /// The service's own pub/sub channel for events of lock `name` of `ns`.
    pub fn lock_events(&self, ns: &str, name: &str) -> String {
        self.pubsub_channel(&format!("locks.{ns}.{name}"))
    }

    /// The service's own pub/sub channel for events of agent `id`.
    pub fn agent_events(&self, id: &str) -> String {
        self.pubsub_channel(&format!("agents.{id}"))
    }

    /// The service's own pub/sub channel for events of partition `name`.
    pub fn partition_events(&self, name: &str) -> String {
        self.pubsub_channel(&format!("partitions.{name}"))
    }

    /// PSUBSCRIBE pattern of the keyspace notifications of every entry key of this prefix
    /// (the prefix glob-escaped).
    pub fn entry_keyspace_pattern(&self) -> String {
        format!("__keyspace@*__:{}:{{*}}:e:*", glob_escape(&self.prefix))
    }

    /// `(namespace, key)` of an entry key `<prefix>:{<ns>}:e:<key>` with a valid namespace and
    /// key; `None` for any other key.
    pub fn parse_entry_key<'a>(&self, name: &'a str) -> Option<(&'a str, &'a str)> {
        let name = name.strip_prefix(self.prefix.as_str())?.strip_prefix(":{")?;
        let (ns, rest) = name.split_once('}')?;
        let key = rest.strip_prefix(":e:")?;
        crate::domain::names::validate_name("namespace", ns).ok()?;
        crate::domain::names::validate_key(key).ok()?;
        Some((ns, key))
    }

    /// An agent's record and the set of resources it holds (`{ag:<id>}` slot).
    pub fn agent(&self, id: &str) -> (String, String) {
        (
            format!("{}:{{ag:{id}}}:a", self.prefix),
            format!("{}:{{ag:{id}}}:held", self.prefix),
        )
    }

    /// An `Idempotency-Key` record, in the slot of what its route changes.
    pub fn idempotency(&self, home: &Home, id: &str) -> String {
        match home {
            Home::Namespace(ns) => format!("{}:{{{ns}}}:ik:{id}", self.prefix),
            Home::Queue(q) => format!("{}:{{q:{q}}}:ik:{id}", self.prefix),
            Home::Agent(a) => format!("{}:{{ag:{a}}}:ik:{id}", self.prefix),
            Home::Global => format!("{}:ik:{id}", self.prefix),
        }
    }

    /// The pool ledger: partition name -> bytes allocated to it (one field per partition).
    /// Tagged `{g:pool}` like [`Keys::pool_total`] so `pool_set` stays in one cluster slot
    /// (namespace names cannot contain `:`, so no namespace shares the tag).
    pub fn pool(&self) -> String {
        format!("{}:{{g:pool}}:ledger", self.prefix)
    }

    /// The sum of the ledger (string, bytes).
    pub fn pool_total(&self) -> String {
        format!("{}:{{g:pool}}:total", self.prefix)
    }

    /// Key-schema 1 names of the pool hash (with an `allocated` field) and the partitions
    /// set; migration 0002 moves them.
    pub fn pool_v1(&self) -> (String, String) {
        (
            format!("{}:pool", self.prefix),
            format!("{}:partitions", self.prefix),
        )
    }

    /// Every registered agent: id -> heartbeat deadline (+inf once lost or terminated).
    pub fn agents(&self) -> String {
        format!("{}:agents", self.prefix)
    }

    /// Every queue ever enqueued to (listing, background upkeep).
    pub fn queues(&self) -> String {
        format!("{}:queues", self.prefix)
    }

    /// Pub/sub channel of a queue's task state changes (`<p>:q:<name>`).
    pub fn queue_channel(&self, q: &str) -> String {
        format!("{}{q}", self.queue_channel_prefix())
    }

    /// What every queue channel starts with; the rest is the queue's name.
    pub fn queue_channel_prefix(&self) -> String {
        format!("{}:q:", self.prefix)
    }

    /// PSUBSCRIBE pattern of every queue channel.
    pub fn queue_channel_pattern(&self) -> String {
        format!("{}*", self.queue_channel_prefix())
    }

    /// The keys of one queue, all with the `{q:<name>}` hash tag.
    pub fn queue(&self, q: &str) -> QueueKeys {
        let base = format!("{}:{{q:{q}}}:", self.prefix);
        let keys = [
            "meta",
            "ready",
            "age",
            "delayed",
            "retry",
            "leased",
            "completed",
            "dead",
            "idem",
            "cap",
        ]
        .iter()
        .map(|k| format!("{base}{k}"))
        .collect();
        QueueKeys {
            keys,
            task_prefix: format!("{base}t:"),
            channel: self.queue_channel(q),
        }
    }
}

/// A literal for a Redis glob pattern.
fn glob_escape(s: &str) -> String {
    let mut escaped = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Keys of one queue: KEYS of every queue function, the task key prefix and the channel.
#[derive(Debug, Clone)]
pub struct QueueKeys {
    pub keys: Vec<String>,
    /// Task keys are this plus the task id (same `{q:<name>}` slot); the queue functions
    /// find task ids in the queue's sorted sets, so they get the prefix, not every key.
    pub task_prefix: String,
    pub channel: String,
}

impl QueueKeys {
    /// The hash of task `id`.
    pub fn task(&self, id: &str) -> String {
        format!("{}{id}", self.task_prefix)
    }
}

/// Keys of one namespace; per-entry keys are derived with [`NsKeys::entry`] / [`NsKeys::hist`].
#[derive(Debug, Clone)]
pub struct NsKeys {
    base: String,
    pub meta: String,
    pub idx: String,
    pub log: String,
    pub ttl: String,
    pub sz: String,
}

impl NsKeys {
    pub fn entry(&self, key: &str) -> String {
        self.derived("e:", key)
    }

    pub fn hist(&self, key: &str) -> String {
        self.derived("h:", key)
    }

    /// A lock of the namespace (hash, expires with the lease).
    pub fn lock(&self, name: &str) -> String {
        self.derived("lock:", name)
    }

    /// The namespace's partition record (when it is one).
    pub fn part(&self) -> String {
        self.derived("part", "")
    }

    /// The namespace's key prefix (`<p>:{ns}:`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// name -> expires_at (ms) of every lock granted and not released (the listing's index).
    pub fn locks(&self) -> String {
        self.derived("locks", "")
    }

    /// name -> last fencing token granted, for every lock of the namespace.
    pub fn fence(&self) -> String {
        self.derived("fence", "")
    }

    fn derived(&self, kind: &str, key: &str) -> String {
        let mut k = String::with_capacity(self.base.len() + kind.len() + key.len());
        k.push_str(&self.base);
        k.push_str(kind);
        k.push_str(key);
        k
    }

    /// KEYS[1..5] of every namespace function: meta, idx, log, ttl, sz.
    pub fn common(&self) -> Vec<String> {
        vec![
            self.meta.clone(),
            self.idx.clone(),
            self.log.clone(),
            self.ttl.clone(),
            self.sz.clone(),
        ]
    }

    /// KEYS of a single-entry function: the common five, then entry and history.
    pub fn for_entry(self, key: &str) -> Vec<String> {
        let (entry, hist) = (self.entry(key), self.hist(key));
        vec![self.meta, self.idx, self.log, self.ttl, self.sz, entry, hist]
    }

    /// KEYS of a single-entry write that checks `x-fencing-token`: entry, history, fence.
    pub fn for_fenced_entry(self, key: &str) -> Vec<String> {
        let (entry, hist, fence) = (self.entry(key), self.hist(key), self.fence());
        vec![
            self.meta, self.idx, self.log, self.ttl, self.sz, entry, hist, fence,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_keys_name_namespace_and_key() {
        let k = Keys::new("ss");
        assert_eq!(k.parse_entry_key("ss:{app}:e:a/b:{c}"), Some(("app", "a/b:{c}")));
        assert_eq!(k.parse_entry_key("ss:{app}:h:a"), None);
        assert_eq!(k.parse_entry_key("sx:{app}:e:a"), None);
        assert_eq!(k.parse_entry_key("ss:{A p}:e:a"), None);
        assert_eq!(
            Keys::new("a*b").entry_keyspace_pattern(),
            "__keyspace@*__:a\\*b:{*}:e:*"
        );
    }

    #[test]
    fn every_namespace_key_carries_the_hash_tag() {
        let k = Keys::new("ss").ns("app");
        for key in k.for_entry("we{ird}*key") {
            assert!(key.starts_with("ss:{app}:"), "{key}");
        }
    }
}
