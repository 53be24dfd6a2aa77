//! Memory partitions and the pool: wrappers of `part_*`, `ns_drop`, `ns_recount` and
//! `pool_set` (`migrations/functions/partitions.lua`).

use std::collections::HashMap;

use fred::prelude::*;
use fred::types::Value;

use super::fcall::{Arity, Function};
use super::Store;
use crate::domain::kv::Provenance;
use crate::domain::partition::{Partition, Pool};
use crate::domain::time::rfc3339;
use crate::error::{ApiError, ApiResult, ErrorCode};

pub const PART_CREATE: Function = Function::new("part_create", Arity::Exactly(2), Arity::Exactly(6));
pub const PART_UPDATE: Function = Function::new("part_update", Arity::Exactly(2), Arity::Exactly(2));
pub const NS_DROP: Function = Function::new("ns_drop", Arity::AtLeast(6), Arity::AtLeast(6));
pub const NS_RECOUNT: Function = Function::new("ns_recount", Arity::Exactly(2), Arity::Exactly(0));
pub const POOL_SET: Function = Function::new("pool_set", Arity::Exactly(2), Arity::Exactly(4));

pub const FUNCTIONS: &[&Function] = &[&PART_CREATE, &PART_UPDATE, &NS_DROP, &NS_RECOUNT, &POOL_SET];

/// Entries one `ns_drop` call removes at most.
const DROP_BATCH: i64 = 500;

/// An optional number as a function argument ('' = none).
fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

impl Store {
    /// Set the pool's ledger entry for partition `name` to `bytes` (0 = release). Absolute,
    /// so repeating it or racing it cannot count twice. `force` skips the capacity check.
    pub async fn pool_set(&self, name: &str, bytes: u64, capacity: u64, force: bool) -> ApiResult<u64> {
        let keys = vec![self.keys().pool(), self.keys().pool_total()];
        let mode = if force { "force" } else { "check" };
        let args: Vec<Value> = vec![
            name.into(),
            (bytes as i64).into(),
            (capacity as i64).into(),
            mode.into(),
        ];
        let mut r = self.fcall(&POOL_SET, keys, args).await?;
        let status = r.status()?;
        let allocated = r.u64_or_0();
        match status.as_str() {
            "ok" => Ok(allocated),
            _ => Err(ApiError::new(
                ErrorCode::PoolExhausted,
                format!(
                    "the pool has {allocated} of {capacity} bytes allocated; {bytes} for `{name}` do not fit"
                ),
            )),
        }
    }

    /// Create; the name is claimed first, then the pool allocation (undone on failure).
    #[allow(clippy::too_many_arguments)]
    pub async fn part_create(
        &self,
        name: &str,
        owner: &str,
        tier: &str,
        quota: u64,
        max_keys: Option<u64>,
        default_ttl_ms: Option<u64>,
        capacity: u64,
    ) -> ApiResult<Partition> {
        let nk = self.keys().ns(name);
        let args: Vec<Value> = vec![
            name.into(),
            owner.into(),
            tier.into(),
            (quota as i64).into(),
            opt(max_keys).into(),
            opt(default_ttl_ms).into(),
        ];
        let mut r = self
            .fcall(&PART_CREATE, vec![nk.part(), nk.meta.clone()], args)
            .await?;
        if r.status()? == "exists" {
            return Err(ApiError::new(
                ErrorCode::AlreadyExists,
                format!("partition `{name}` exists"),
            ));
        }
        if let Err(e) = self.pool_set(name, quota, capacity, false).await {
            let _: i64 = self
                .timed("del", self.client().del(vec![nk.part()]))
                .await
                .unwrap_or(0);
            let _: i64 = self
                .timed(
                    "hdel",
                    self.client().hdel(nk.meta.clone(), vec!["qb", "qk", "dttl"]),
                )
                .await
                .unwrap_or(0);
            return Err(e);
        }
        self.register_namespace(name).await?;
        self.part_get(name)
            .await?
            .ok_or_else(|| ApiError::internal("partition vanished after create"))
    }

    pub async fn part_get(&self, name: &str) -> ApiResult<Option<Partition>> {
        let nk = self.keys().ns(name);
        let m: HashMap<String, String> = self.timed("hgetall", self.client().hgetall(nk.part())).await?;
        if m.is_empty() {
            return Ok(None);
        }
        let used: Option<u64> = self
            .timed("hget", self.client().hget(nk.meta.clone(), "bytes"))
            .await?;
        let keys: u64 = self.timed("zcard", self.client().zcard(nk.idx.clone())).await?;
        let num = |k: &str| m.get(k).and_then(|v| v.parse::<u64>().ok());
        let quota = num("quota_bytes").unwrap_or(0);
        let used = used.unwrap_or(0);
        let time = |k: &str| rfc3339(m.get(k).and_then(|v| v.parse().ok()).unwrap_or(0));
        Ok(Some(Partition {
            name: name.to_string(),
            owner_agent: m.get("owner_agent").cloned().unwrap_or_default(),
            tier: m.get("tier").cloned().unwrap_or_default(),
            quota_bytes: quota,
            max_keys: num("max_keys"),
            default_ttl_ms: num("default_ttl_ms"),
            used_bytes: used,
            key_count: keys,
            utilization: if quota == 0 {
                0.0
            } else {
                used as f64 / quota as f64
            },
            created_at: time("created_at"),
            updated_at: time("updated_at"),
        }))
    }

    pub async fn part_names(&self) -> ApiResult<Vec<String>> {
        self.timed("hkeys", self.client().hkeys(self.keys().pool())).await
    }

    /// Change the quota (pool first when it grows) and/or max_keys (0 = none).
    pub async fn part_update(
        &self,
        name: &str,
        quota: Option<u64>,
        max_keys: Option<u64>,
        capacity: u64,
    ) -> ApiResult<Partition> {
        if self.part_get(name).await?.is_none() {
            return Err(ApiError::not_found("no such partition"));
        }
        if let Some(q) = quota {
            self.pool_set(name, q, capacity, false).await?;
        }
        let nk = self.keys().ns(name);
        let mut r = self
            .fcall(
                &PART_UPDATE,
                vec![nk.part(), nk.meta.clone()],
                vec![opt(quota).into(), opt(max_keys).into()],
            )
            .await?;
        if r.status()? != "ok" {
            // Deleted meanwhile: it has no allocation.
            let _ = self.pool_set(name, 0, capacity, true).await;
            return Err(ApiError::not_found("no such partition"));
        }
        self.part_get(name)
            .await?
            .ok_or_else(|| ApiError::not_found("no such partition"))
    }

    /// Delete the partition and all its data (each key logged as a delete), then give its
    /// quota back to the pool. Safe to retry after an interruption: the partition record goes
    /// last, and the upkeep repairs the pool ledger if the process stopped in between.
    pub async fn part_delete(&self, name: &str, capacity: u64) -> ApiResult<()> {
        if self.part_get(name).await?.is_none() {
            return Err(ApiError::not_found("no such partition"));
        }
        let nk = self.keys().ns(name);
        loop {
            // A page of its keys; the function removes those still indexed (each key's
            // entry and history are passed in KEYS, built here like every other key).
            let page: Vec<String> = self
                .timed(
                    "zrange",
                    self.client()
                        .zrange(nk.idx.clone(), 0, DROP_BATCH - 1, None, false, None, false),
                )
                .await?;
            let mut keys = nk.common();
            keys.push(nk.part());
            let mut args = self.ctx_args(&Provenance::default());
            for k in &page {
                keys.push(nk.entry(k));
                keys.push(nk.hist(k));
                args.push(k.as_str().into());
            }
            let left = self.fcall(&NS_DROP, keys, args).await?.u64("left")?;
            if left == 0 {
                break;
            }
        }
        self.pool_set(name, 0, capacity, true).await?;
        Ok(())
    }

    /// Make the pool ledger match the partitions that exist (after interrupted deletes or
    /// racing quota changes). Returns how many entries were corrected.
    pub async fn pool_reconcile(&self, capacity: u64) -> ApiResult<u64> {
        let ledger: HashMap<String, u64> = self
            .timed("hgetall", self.client().hgetall(self.keys().pool()))
            .await?;
        let mut names: std::collections::BTreeSet<String> =
            self.namespace_names().await?.into_iter().collect();
        names.extend(ledger.keys().cloned());
        let mut fixed = 0;
        for n in names {
            let want = self.part_get(&n).await?.map(|p| p.quota_bytes).unwrap_or(0);
            let have = ledger.get(&n).copied().unwrap_or(0);
            if want != have {
                self.pool_set(&n, want, capacity, true).await?;
                fixed += 1;
            }
        }
        Ok(fixed)
    }

    /// Recount the partition's bytes from its per-key sizes; returns the drift corrected.
    pub async fn part_recount(&self, name: &str) -> ApiResult<i64> {
        let nk = self.keys().ns(name);
        self.fcall(&NS_RECOUNT, vec![nk.meta.clone(), nk.sz.clone()], vec![])
            .await?
            .i64("drift")
    }

    pub async fn pool_status(&self, capacity: u64) -> ApiResult<Pool> {
        let allocated: Option<u64> = self
            .timed("get", self.client().get(self.keys().pool_total()))
            .await?;
        let names = self.part_names().await?;
        let mut used = 0;
        for n in &names {
            let b: Option<u64> = self
                .timed("hget", self.client().hget(self.keys().ns(n).meta, "bytes"))
                .await?;
            used += b.unwrap_or(0);
        }
        let allocated = allocated.unwrap_or(0);
        Ok(Pool {
            capacity_bytes: capacity,
            allocated_bytes: allocated,
            used_bytes: used,
            utilization: if capacity == 0 {
                0.0
            } else {
                allocated as f64 / capacity as f64
            },
            partitions: names.len() as u64,
        })
    }
}
