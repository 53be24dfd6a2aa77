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
//! primary), read every [`POLL`] by a background task; on a cluster, per primary, keyed by
//! the first hash slot it serves (a promoted replica serves the same slots, so it inherits
//! the count).

use std::sync::RwLock;
use std::time::{Duration, Instant};

/// How long a replica that has gone keeps counting.
pub const GRACE: Duration = Duration::from_secs(10);
/// How often the replica counts are read.
pub const POLL: Duration = Duration::from_millis(500);

/// One primary's replica requirement.
#[derive(Debug, Clone)]
struct Shard {
    /// Slot ranges served (empty outside a cluster: everything).
    ranges: Vec<[u16; 2]>,
    /// Replicas to wait for: the most seen within [`GRACE`].
    required: u32,
    /// When `required` replicas were last seen attached.
    seen_at: Instant,
}

impl Shard {
    fn key(&self) -> Option<u16> {
        self.ranges.iter().map(|r| r[0]).min()
    }

    fn serves(&self, slot: Option<u16>) -> bool {
        match slot {
            None => true,
            Some(s) => self.ranges.is_empty() || self.ranges.iter().any(|r| r[0] <= s && s <= r[1]),
        }
    }
}

/// The replica counts writes wait for.
#[derive(Debug, Default)]
pub struct ReplicaQuorum {
    shards: RwLock<Vec<Shard>>,
}

impl ReplicaQuorum {
    /// Replicas a write to `slot` (None: not clustered) waits for; at least 1.
    pub fn required(&self, slot: Option<u16>) -> u32 {
        let shards = self.shards.read().unwrap_or_else(|e| e.into_inner());
        shards
            .iter()
            .find(|s| s.serves(slot))
            .map_or(1, |s| s.required)
            .max(1)
    }

    /// Record the replicas attached now: `(slot ranges, replicas)` per primary.
    pub fn observe(&self, primaries: &[(Vec<[u16; 2]>, u32)], now: Instant) {
        let mut shards = self.shards.write().unwrap_or_else(|e| e.into_inner());
        let next = primaries
            .iter()
            .map(|(ranges, attached)| {
                let mut s = Shard {
                    ranges: ranges.clone(),
                    required: *attached,
                    seen_at: now,
                };
                if let Some(old) = shards.iter().find(|o| o.key() == s.key()) {
                    if old.required > *attached && now.duration_since(old.seen_at) < GRACE {
                        s.required = old.required;
                        s.seen_at = old.seen_at;
                    }
                }
                s
            })
            .collect();
        *shards = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detached_replica_counts_until_the_grace_has_passed() {
        let q = ReplicaQuorum::default();
        let t0 = Instant::now();
        assert_eq!(q.required(None), 1, "nothing observed yet: at least one replica");
        q.observe(&[(vec![], 2)], t0);
        assert_eq!(q.required(None), 2);
        // One replica detaches (a failover under way): still two.
        q.observe(&[(vec![], 1)], t0 + Duration::from_secs(3));
        assert_eq!(q.required(None), 2);
        q.observe(&[(vec![], 1)], t0 + GRACE - Duration::from_millis(1));
        assert_eq!(q.required(None), 2);
        // Gone for longer than the grace: it stops counting.
        q.observe(&[(vec![], 1)], t0 + GRACE + Duration::from_millis(1));
        assert_eq!(q.required(None), 1);
        // Back: counts at once.
        q.observe(&[(vec![], 2)], t0 + GRACE + Duration::from_secs(1));
        assert_eq!(q.required(None), 2);
        // No replica at all still waits for one (and times out: 503).
        q.observe(&[(vec![], 0)], t0 + GRACE * 3);
        assert_eq!(q.required(None), 1);
    }

    #[test]
    fn on_a_cluster_each_primary_has_its_own_count_and_a_promoted_replica_inherits_it() {
        let q = ReplicaQuorum::default();
        let t0 = Instant::now();
        q.observe(
            &[
                (vec![[0, 5460]], 2),
                (vec![[5461, 10922]], 1),
                (vec![[10923, 16383]], 1),
            ],
            t0,
        );
        assert_eq!(q.required(Some(100)), 2);
        assert_eq!(q.required(Some(6000)), 1);
        assert_eq!(q.required(Some(16383)), 1);
        // The first primary dies; its replica serves the same slots with one replica left.
        q.observe(
            &[
                (vec![[0, 5460]], 1),
                (vec![[5461, 10922]], 1),
                (vec![[10923, 16383]], 1),
            ],
            t0 + Duration::from_secs(2),
        );
        assert_eq!(q.required(Some(100)), 2);
    }
}
