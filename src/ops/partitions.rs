//! Partition operations: create (allocated from the pool), list, read, change, delete, and the
//! pool's figures; each change is announced on `partitions.<name>`.

use super::Ops;
use crate::domain::auth::{Caller, Permission, Scope};
use crate::domain::names::validate_name;
use crate::domain::page::Page;
use crate::domain::partition::{CreateBody, Partition, PatchBody, Pool};
use crate::error::{ApiError, ApiResult};
use crate::live::pubsub::event;

impl Ops {
    pub async fn partition_create(&self, who: &Caller, b: CreateBody) -> ApiResult<Partition> {
        who.check(Permission::Admin, Scope::Namespace(&b.name))?;
        who.check(Permission::Admin, Scope::ActAs(&b.owner_agent))?;
        let ttl = b.check()?;
        let p = self
            .store
            .part_create(
                &b.name,
                &b.owner_agent,
                &b.tier,
                b.quota_bytes,
                b.max_keys,
                ttl,
                self.cfg.pool_capacity_bytes,
            )
            .await?;
        event(
            &self.store,
            self.store.keys().partition_events(&p.name),
            serde_json::json!({"event": "created", "partition": p.name, "owner_agent": p.owner_agent, "quota_bytes": p.quota_bytes}),
        )
        .await;
        Ok(p)
    }

    /// Every partition with its usage, by name.
    /// A page of partitions by name.
    pub async fn partitions(&self, who: &Caller, page: &Page) -> ApiResult<(Vec<Partition>, Option<String>)> {
        let mut names = self.store.part_names().await?;
        names.retain(|n| who.may(Permission::Read, Scope::Namespace(n)));
        names.sort();
        let (names, next) = page.of_names(&names);
        let mut items = Vec::new();
        for n in names {
            if let Some(p) = self.store.part_get(&n).await? {
                items.push(p);
            }
        }
        Ok((items, next))
    }

    pub async fn partition(&self, who: &Caller, name: &str) -> ApiResult<Partition> {
        who.check(Permission::Read, Scope::Namespace(name))?;
        validate_name("partition", name)?;
        self.store
            .part_get(name)
            .await?
            .ok_or_else(|| ApiError::not_found("no such partition"))
    }

    pub async fn partition_patch(&self, who: &Caller, name: &str, b: &PatchBody) -> ApiResult<Partition> {
        who.check(Permission::Admin, Scope::Namespace(name))?;
        validate_name("partition", name)?;
        b.check()?;
        let p = self
            .store
            .part_update(name, b.quota_bytes, b.max_keys, self.cfg.pool_capacity_bytes)
            .await?;
        event(
            &self.store,
            self.store.keys().partition_events(name),
            serde_json::json!({"event": "updated", "partition": name, "quota_bytes": p.quota_bytes, "max_keys": p.max_keys}),
        )
        .await;
        Ok(p)
    }

    /// Delete the partition and all its data; its quota goes back to the pool.
    pub async fn partition_delete(&self, who: &Caller, name: &str) -> ApiResult<()> {
        who.check(Permission::Admin, Scope::Namespace(name))?;
        validate_name("partition", name)?;
        self.store.part_delete(name, self.cfg.pool_capacity_bytes).await?;
        event(
            &self.store,
            self.store.keys().partition_events(name),
            serde_json::json!({"event": "deleted", "partition": name}),
        )
        .await;
        Ok(())
    }

    pub async fn pool(&self, who: &Caller) -> ApiResult<Pool> {
        who.check(Permission::Admin, Scope::Service)?;
        self.store.pool_status(self.cfg.pool_capacity_bytes).await
    }
}
