//! Agent operations: register, heartbeat, lifecycle transitions, read, list. A terminated
//! agent's held resources are freed at once; every state change is announced on `agents.<id>`.

use super::Ops;
use crate::domain::agent::{Agent, AgentFilter, AgentHeld, Held, HeldTask, RegisterBody, StateBody};
use crate::domain::auth::{Caller, Permission, Scope};
use crate::domain::names::validate_name;
use crate::domain::page::{encode_cursor, Page};
use crate::error::{ApiError, ApiResult};
use crate::live::presence::{announce, prune_held, release};

/// Held-set entries kept before a heartbeat prunes ended ones.
const HELD_KEEP: u64 = 256;

impl Ops {
    pub async fn agent_register(&self, who: &Caller, id: &str, b: RegisterBody) -> ApiResult<Agent> {
        who.check(Permission::Write, Scope::Agent(id))?;
        validate_name("agent", id)?;
        let r = b.registration()?;
        let agent = self
            .store
            .agent_register(id, &r.capabilities, &r.metadata, r.heartbeat_ttl_ms)
            .await?;
        self.presence.add(id);
        announce(&self.store, id, "initializing", serde_json::json!({})).await;
        Ok(agent)
    }

    pub async fn agent_heartbeat(&self, who: &Caller, id: &str) -> ApiResult<Agent> {
        who.check(Permission::Write, Scope::Agent(id))?;
        validate_name("agent", id)?;
        let agent = self.store.agent_heartbeat(id).await?;
        // Keep what the agent is recorded as holding bounded (expired locks and leases drop out).
        if let Err(e) = prune_held(&self.store, id, HELD_KEEP).await {
            tracing::debug!(id, error = %e.detail, "pruning an agent's held set failed");
        }
        Ok(agent)
    }

    pub async fn agent_set_state(&self, who: &Caller, id: &str, b: &StateBody) -> ApiResult<Agent> {
        who.check(Permission::Write, Scope::Agent(id))?;
        validate_name("agent", id)?;
        b.check()?;
        let agent = self.store.agent_set_state(id, &b.state).await?;
        if agent.state == "terminated" {
            // Gone for good: no more heartbeat checks, and what it still holds is freed.
            self.store.agent_untrack(id).await?;
            let held = self.store.agent_take_held(id).await?;
            release(&self.store, id, "terminated", held).await;
        } else {
            announce(&self.store, id, &agent.state, serde_json::json!({})).await;
        }
        Ok(agent)
    }

    pub async fn agent(&self, who: &Caller, id: &str) -> ApiResult<Agent> {
        who.check(Permission::Read, Scope::Agent(id))?;
        validate_name("agent", id)?;
        let mut agent = self
            .store
            .agent_get(id)
            .await?
            .ok_or_else(|| ApiError::not_found("no such agent"))?;
        agent.held = Some(self.agent_held(who, id).await?);
        Ok(agent)
    }

    /// The locks the agent holds and the tasks it has leased now: its held set, each member
    /// checked against the lock or task (ended ones stay in the set until a heartbeat prunes
    /// them), by namespace and name, queue and id — only those in namespaces and queues the
    /// caller may read.
    async fn agent_held(&self, who: &Caller, id: &str) -> ApiResult<AgentHeld> {
        let mut held = AgentHeld {
            locks: Vec::new(),
            tasks: Vec::new(),
        };
        for m in self.store.agent_held_members(id).await? {
            let Some(h) = Held::parse_member(&m) else { continue };
            let visible = match &h {
                Held::Lock { ns, .. } => who.may(Permission::Read, Scope::Namespace(ns)),
                Held::Task { queue, .. } => who.may(Permission::Read, Scope::Queue(queue)),
            };
            if !visible || !self.store.held_is_live(&h).await? {
                continue;
            }
            match h {
                Held::Lock { ns, name, .. } => held.locks.extend(self.store.lock_get(&ns, &name).await?),
                Held::Task { queue, id, .. } => {
                    held.tasks
                        .extend(self.store.q_task(&queue, &id).await?.map(|t| HeldTask {
                            queue,
                            id,
                            leased_until: t.leased_until,
                            attempts: t.attempts,
                        }))
                }
            }
        }
        held.locks
            .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        held.tasks
            .sort_by(|a, b| (&a.queue, &a.id).cmp(&(&b.queue, &b.id)));
        Ok(held)
    }

    /// Registered agents by id, filtered.
    /// A page of agents by id that match `filter`; the cursor follows the last one returned,
    /// and is null once no later agent matches.
    pub async fn agents(
        &self,
        who: &Caller,
        filter: &AgentFilter,
        page: &Page,
    ) -> ApiResult<(Vec<Agent>, Option<String>)> {
        who.check(Permission::Read, Scope::Service)?;
        filter.check()?;
        let mut ids = self.store.agent_ids().await?;
        ids.sort();
        ids.retain(|id| page.wants(id));
        let mut items = Vec::new();
        let mut more = false;
        for id in ids {
            if let Some(a) = self.store.agent_get(&id).await? {
                if filter.matches(&a) {
                    if items.len() == page.limit {
                        more = true;
                        break;
                    }
                    items.push(a);
                }
            }
        }
        let next = more.then(|| items.last().map(|a| encode_cursor(&a.id))).flatten();
        Ok((items, next))
    }
}
