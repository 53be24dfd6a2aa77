//! The only place Redis key names are built.
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
//! | `<p>:{q:<q>}:meta` … `idem`, `t:<id>` | | a task queue (see migrations/swarmstate.lua) |
//! | `<p>:queues` | set | every queue ever enqueued to |
//! | `<p>:schema` | string | key-schema version applied by migrations |
//! | `<p>:migrate-lock` | string | held while migrations run |

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
        format!("{}:lk:{ns}:{name}", self.prefix)
    }

    /// An agent's record and the set of resources it holds (`{ag:<id>}` slot).
    pub fn agent(&self, id: &str) -> (String, String) {
        (
            format!("{}:{{ag:{id}}}:a", self.prefix),
            format!("{}:{{ag:{id}}}:held", self.prefix),
        )
    }

    /// The partition pool: `allocated` bytes.
    pub fn pool(&self) -> String {
        format!("{}:pool", self.prefix)
    }

    /// Every partition's name.
    pub fn partitions(&self) -> String {
        format!("{}:partitions", self.prefix)
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
        format!("{}:q:{q}", self.prefix)
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

/// Keys of one queue: KEYS of every queue function, the task key prefix and the channel.
#[derive(Debug, Clone)]
pub struct QueueKeys {
    pub keys: Vec<String>,
    pub task_prefix: String,
    pub channel: String,
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
        format!("{}part", self.base)
    }

    /// The namespace's key prefix (`<p>:{ns}:`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// name -> last fencing token granted, for every lock of the namespace.
    pub fn fence(&self) -> String {
        format!("{}fence", self.base)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_namespace_key_carries_the_hash_tag() {
        let k = Keys::new("ss").ns("app");
        for key in k.for_entry("we{ird}*key") {
            assert!(key.starts_with("ss:{app}:"), "{key}");
        }
    }
}
