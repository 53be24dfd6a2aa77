//! How many replicas a write must reach under `durability = replica`.
//!
//! `WAIT 1` is not enough with more than one replica: in a failover the sentinels (or the
//! cluster) may promote a replica other than the one that confirmed, and during a graceful
//! `SENTINEL FAILOVER` the old primary keeps accepting writes, still confirmed by a replica
//! that has not been moved yet, until the sentinels reconfigure it — every one of those is
//! lost. So a write waits for **every replica its primary has had in the last
//! [`GRACE`]**: when a replica detaches (a failover is under way) the wait can no longer be
//! met and the write answers 503 `durability_timeout` instead of a false success. A replica
//! gone for longer than [`GRACE`] stops counting (it was removed, or is down for good), so
//! the service does not refuse writes forever; a write always waits for at least one replica.
//!
//! The counts come from the topology (`CLUSTER NODES`, or `INFO replication` of the
//! primary), read every [`POLL`] by a background task. On a cluster a write uses its
//! primary's count, found by slot (a promoted replica serves the same slots). Outside a
//! cluster it uses the most any primary has had in the grace (`need(None, None)`): counting
//! by the address of the connection's primary lost acknowledged writes in the Sentinel
//! failover bench.

use std::sync::RwLock;
use std::time::{Duration, Instant};

/// How long a replica that has gone keeps counting.
pub const GRACE: Duration = Duration::from_secs(10);
/// How often the replica counts are read.
pub const POLL: Duration = Duration::from_millis(500);

/// One primary's replica requirement.
#[derive(Debug, Clone)]
struct Shard {
    /// host:port of the primary.
    address: String,
    /// Slot ranges served (empty outside a cluster).
    ranges: Vec<[u16; 2]>,
    /// Replicas to wait for: the most seen attached within [`GRACE`].
    required: u32,
    /// Replicas attached at the last observation.
    attached: u32,
    /// When `required` replicas were last seen attached.
    seen_at: Instant,
    /// When this primary was last seen at all (a primary no longer listed — demoted, or the
    /// service's poll reached the new one first — keeps its count for [`GRACE`]: some pool
    /// connections may still be writing to it).
    listed_at: Instant,
}

impl Shard {
    fn serves(&self, slot: u16) -> bool {
        self.ranges.iter().any(|r| r[0] <= slot && slot <= r[1])
    }
}

/// The replica counts writes wait for.
#[derive(Debug, Default)]
pub struct ReplicaQuorum {
    shards: RwLock<Vec<Shard>>,
}

impl ReplicaQuorum {
    /// Replicas a write waits for; at least 1. On a cluster by its `slot` (the primary listed
    /// last for it), otherwise by the `address` of the primary the connection is on; a
    /// primary not seen yet waits for the most any primary has.
    pub fn required(&self, slot: Option<u16>, address: Option<&str>) -> u32 {
        self.need(slot, address).0
    }

    /// `(required, attached)`: the replicas a write waits for ([`Self::required`]) and, when
    /// its primary is known, how many were attached at the last observation. A write whose
    /// primary has fewer attached than required cannot be confirmed: it is answered at once
    /// instead of holding a `WAIT` for the whole `durability_timeout_ms` — a blocked `WAIT`
    /// stalls every command queued behind it on the same multiplexed connection.
    pub fn need(&self, slot: Option<u16>, address: Option<&str>) -> (u32, Option<u32>) {
        let shards = self.shards.read().unwrap_or_else(|e| e.into_inner());
        let found = match (slot, address) {
            (Some(slot), _) => shards
                .iter()
                .filter(|s| s.serves(slot))
                .max_by_key(|s| s.listed_at),
            (None, Some(a)) => shards.iter().find(|s| s.address == a),
            (None, None) => None,
        };
        match found {
            Some(s) => (s.required.max(1), Some(s.attached)),
            None => (shards.iter().map(|s| s.required).max().unwrap_or(1).max(1), None),
        }
    }

    /// Record the replicas attached now: `(address, slot ranges, replicas)` per primary.
    pub fn observe(&self, primaries: &[(String, Vec<[u16; 2]>, u32)], now: Instant) {
        let mut shards = self.shards.write().unwrap_or_else(|e| e.into_inner());
        let mut next: Vec<Shard> = primaries
            .iter()
            .map(|(address, ranges, attached)| {
                let mut s = Shard {
                    address: address.clone(),
                    ranges: ranges.clone(),
                    required: *attached,
                    attached: *attached,
                    seen_at: now,
                    listed_at: now,
                };
                if let Some(old) = shards.iter().find(|o| o.address == *address) {
                    if old.required > *attached && now.duration_since(old.seen_at) < GRACE {
                        s.required = old.required;
                        s.seen_at = old.seen_at;
                    }
                }
                s
            })
            .collect();
        next.extend(
            shards
                .iter()
                .filter(|o| !primaries.iter().any(|(a, _, _)| *a == o.address))
                .filter(|o| now.duration_since(o.listed_at) < GRACE)
                .cloned(),
        );
        *shards = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(address: &str, attached: u32) -> Vec<(String, Vec<[u16; 2]>, u32)> {
        vec![(address.to_string(), vec![], attached)]
    }

    #[test]
    fn a_detached_replica_counts_until_the_grace_has_passed() {
        let q = ReplicaQuorum::default();
        let t0 = Instant::now();
        let p = Some("p:1");
        assert_eq!(
            q.required(None, p),
            1,
            "nothing observed yet: at least one replica"
        );
        q.observe(&one("p:1", 2), t0);
        assert_eq!(q.required(None, p), 2);
        assert_eq!(q.need(None, p), (2, Some(2)));
        // One replica detaches (a failover under way): still two, one attached.
        q.observe(&one("p:1", 1), t0 + Duration::from_secs(3));
        assert_eq!(q.required(None, p), 2);
        assert_eq!(q.need(None, p), (2, Some(1)));
        q.observe(&one("p:1", 1), t0 + GRACE - Duration::from_millis(1));
        assert_eq!(q.required(None, p), 2);
        // Gone for longer than the grace: it stops counting.
        q.observe(&one("p:1", 1), t0 + GRACE + Duration::from_millis(1));
        assert_eq!(q.required(None, p), 1);
        // Back: counts at once.
        q.observe(&one("p:1", 2), t0 + GRACE + Duration::from_secs(1));
        assert_eq!(q.required(None, p), 2);
        // No replica at all still waits for one (and times out: 503).
        q.observe(&one("p:1", 0), t0 + GRACE * 3);
        assert_eq!(q.required(None, p), 1);
    }

    #[test]
    fn a_new_primary_starts_from_its_own_replicas_while_the_old_one_keeps_its_count() {
        let q = ReplicaQuorum::default();
        let t0 = Instant::now();
        q.observe(&one("old:1", 2), t0);
        // The sentinels promoted a replica; the service's poll reaches the new primary, which
        // has one replica so far. Connections still on the old primary keep waiting for two.
        q.observe(&one("new:2", 1), t0 + Duration::from_secs(1));
        assert_eq!(q.required(None, Some("new:2")), 1);
        assert_eq!(q.required(None, Some("old:1")), 2);
        // A connection whose primary is unknown (reconnecting) waits for the most.
        assert_eq!(q.required(None, None), 2);
        assert_eq!(q.need(None, None), (2, None));
        assert_eq!(q.required(None, Some("other:3")), 2);
        // The old primary, no longer listed, is forgotten after the grace.
        q.observe(&one("new:2", 1), t0 + GRACE + Duration::from_secs(2));
        assert_eq!(q.required(None, None), 1);
    }

    #[test]
    fn on_a_cluster_each_primary_has_its_own_count() {
        let q = ReplicaQuorum::default();
        let t0 = Instant::now();
        let shards = |first: u32| {
            vec![
                ("a:1".to_string(), vec![[0, 5460]], first),
                ("b:1".to_string(), vec![[5461, 10922]], 1),
                ("c:1".to_string(), vec![[10923, 16383]], 1),
            ]
        };
        q.observe(&shards(2), t0);
        assert_eq!(q.required(Some(100), None), 2);
        assert_eq!(q.required(Some(6000), None), 1);
        assert_eq!(q.required(Some(16383), None), 1);
        q.observe(&shards(1), t0 + Duration::from_secs(2));
        assert_eq!(q.required(Some(100), None), 2, "within the grace");
        // a:1 died; its replica d:1 serves its slots now, with no replica yet.
        q.observe(
            &[
                ("d:1".to_string(), vec![[0, 5460]], 0),
                ("b:1".to_string(), vec![[5461, 10922]], 1),
                ("c:1".to_string(), vec![[10923, 16383]], 1),
            ],
            t0 + Duration::from_secs(4),
        );
        assert_eq!(q.required(Some(100), None), 1);
    }
}
