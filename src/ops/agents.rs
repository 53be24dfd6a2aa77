//! Agent operations: register, heartbeat, lifecycle transitions, read, list. A terminated
//! agent's held resources are freed at once; every state change is announced on `agents.<id>`.

use super::Ops;
use crate::domain::agent::{Agent, AgentFilter, RegisterBody, StateBody};
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
        self.store
            .agent_get(id)
            .await?
            .ok_or_else(|| ApiError::not_found("no such agent"))
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
