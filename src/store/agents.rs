//! Agents: registry, heartbeats, lifecycle, and the record of what each holds — wrappers of
//! `migrations/functions/agents.lua` plus the `<p>:agents` deadline index kept beside them.

use std::collections::HashMap;

use fred::prelude::*;
use fred::types::Value;
use serde_json::value::RawValue;

use super::fcall::{hash_fields, v_str, Arity, Function};
use super::Store;
use crate::domain::agent::{Agent, Held};
use crate::domain::time::{now_ms, rfc3339};
use crate::error::{ApiError, ApiResult, ErrorCode};

pub const AGENT_REGISTER: Function = Function::new("agent_register", Arity::Exactly(2), Arity::Exactly(4));
pub const AGENT_HEARTBEAT: Function = Function::new("agent_heartbeat", Arity::Exactly(1), Arity::Exactly(0));
pub const AGENT_STATE: Function = Function::new("agent_state", Arity::Exactly(1), Arity::Exactly(1));
pub const AGENT_LOST: Function = Function::new("agent_lost", Arity::Exactly(2), Arity::Exactly(0));
pub const AGENT_UNTRACK: Function = Function::new("agent_untrack", Arity::Exactly(1), Arity::Exactly(1));
pub const AGENT_HOLD: Function = Function::new("agent_hold", Arity::Exactly(2), Arity::AtLeast(1));

pub const FUNCTIONS: &[&Function] = &[
    &AGENT_REGISTER,
    &AGENT_HEARTBEAT,
    &AGENT_STATE,
    &AGENT_LOST,
    &AGENT_UNTRACK,
    &AGENT_HOLD,
];

fn agent_from_fields(f: &HashMap<String, String>) -> Option<Agent> {
    let time = |k: &str| f.get(k).and_then(|v| v.parse::<i64>().ok()).map(rfc3339);
    Some(Agent {
        id: f.get("id")?.clone(),
        state: f.get("state")?.clone(),
        capabilities: RawValue::from_string(f.get("capabilities")?.clone()).ok()?,
        metadata: RawValue::from_string(f.get("metadata")?.clone()).ok()?,
        heartbeat_ttl_ms: f.get("heartbeat_ttl_ms")?.parse().ok()?,
        registered_at: time("registered_at")?,
        last_heartbeat: time("last_heartbeat")?,
        heartbeat_deadline: time("deadline")?,
        state_changed_at: time("state_changed_at")?,
        held: None,
    })
}

fn agent_of(v: &Value) -> ApiResult<Agent> {
    agent_from_fields(&hash_fields(v)).ok_or_else(|| ApiError::internal(format!("unreadable agent: {v:?}")))
}

impl Store {
    pub async fn agent_register(
        &self,
        id: &str,
        capabilities: &str,
        metadata: &str,
        ttl_ms: u64,
    ) -> ApiResult<Agent> {
        let (a, held) = self.keys().agent(id);
        let args = vec![
            id.into(),
            capabilities.into(),
            metadata.into(),
            (ttl_ms as i64).into(),
        ];
        let r = self.fcall(&AGENT_REGISTER, vec![a, held], args).await?;
        let agent = agent_of(&Value::Array(r.rest()))?;
        self.agent_track(id, (now_ms() + ttl_ms as i64) as f64).await?;
        Ok(agent)
    }

    /// Index the agent's heartbeat deadline (unix ms; +inf = never check again).
    async fn agent_track(&self, id: &str, deadline: f64) -> ApiResult<()> {
        self.timed(
            "zadd",
            self.client()
                .zadd::<i64, _, _>(self.keys().agents(), None, None, false, false, (deadline, id)),
        )
        .await
        .map(|_| ())
    }

    /// Stop heartbeat checks (terminated: unconditionally).
    pub async fn agent_untrack(&self, id: &str) -> ApiResult<()> {
        self.agent_track(id, f64::INFINITY).await
    }

    /// Take (and forget) everything the agent is recorded as holding.
    pub async fn agent_take_held(&self, id: &str) -> ApiResult<Vec<Held>> {
        let (_, h) = self.keys().agent(id);
        let members: Vec<String> = self.timed("smembers", self.client().smembers(h.clone())).await?;
        let _: i64 = self.timed("del", self.client().del(h)).await?;
        Ok(members.iter().filter_map(|m| Held::parse_member(m)).collect())
    }

    /// Stop heartbeat checks for an agent found lost, unless its deadline moved meanwhile.
    pub async fn agent_untrack_if_due(&self, id: &str) -> ApiResult<()> {
        self.fcall(&AGENT_UNTRACK, vec![self.keys().agents()], vec![id.into()])
            .await
            .map(|_| ())
    }

    pub async fn agent_heartbeat(&self, id: &str) -> ApiResult<Agent> {
        let (a, _) = self.keys().agent(id);
        let mut r = self.fcall(&AGENT_HEARTBEAT, vec![a], vec![]).await?;
        match r.status()?.as_str() {
            "ok" => {
                let agent = agent_of(&r.value())?;
                let deadline = now_ms() + agent.heartbeat_ttl_ms as i64;
                self.agent_track(id, deadline as f64).await?;
                Ok(agent)
            }
            "not_found" => Err(ApiError::not_found("no such agent")),
            _ => Err(ApiError::new(
                ErrorCode::InvalidTransition,
                format!("the agent is {}; register it again (PUT) to come back", r.str()),
            )),
        }
    }

    pub async fn agent_set_state(&self, id: &str, state: &str) -> ApiResult<Agent> {
        let (a, _) = self.keys().agent(id);
        let mut r = self.fcall(&AGENT_STATE, vec![a], vec![state.into()]).await?;
        match r.status()?.as_str() {
            "ok" => agent_of(&r.value()),
            "not_found" => Err(ApiError::not_found("no such agent")),
            _ => Err(ApiError::new(
                ErrorCode::InvalidTransition,
                format!("an agent cannot go from {} to {state}", r.str()),
            )),
        }
    }

    pub async fn agent_get(&self, id: &str) -> ApiResult<Option<Agent>> {
        let (a, _) = self.keys().agent(id);
        let m: HashMap<String, String> = self.timed("hgetall", self.client().hgetall(a)).await?;
        if m.is_empty() {
            return Ok(None);
        }
        agent_from_fields(&m)
            .map(Some)
            .ok_or_else(|| ApiError::internal("unreadable agent"))
    }

    /// Every agent id.
    pub async fn agent_ids(&self) -> ApiResult<Vec<String>> {
        self.timed(
            "zrange",
            self.client()
                .zrange(self.keys().agents(), 0, -1, None, false, None, false),
        )
        .await
    }

    /// Ids whose heartbeat deadline has passed (up to 100).
    pub async fn agents_overdue(&self, now_ms: i64) -> ApiResult<Vec<String>> {
        self.timed(
            "zrangebyscore",
            self.client()
                .zrangebyscore(self.keys().agents(), "-inf", now_ms as f64, false, Some((0, 100))),
        )
        .await
    }

    /// Mark the agent lost if its deadline has passed; returns what it held (None = not lost).
    pub async fn agent_mark_lost(&self, id: &str) -> ApiResult<Option<Vec<Held>>> {
        let (a, held) = self.keys().agent(id);
        let mut r = self.fcall(&AGENT_LOST, vec![a, held], vec![]).await?;
        match r.status()?.as_str() {
            "lost" => Ok(Some(
                r.rest()
                    .iter()
                    .filter_map(v_str)
                    .filter_map(|m| Held::parse_member(&m))
                    .collect(),
            )),
            "skip" => {
                self.agent_untrack_if_due(id).await?;
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Record that agent `id` holds these (ignored unless it is a live registered agent).
    pub async fn agent_hold(&self, id: &str, held: &[Held]) -> ApiResult<()> {
        if held.is_empty() {
            return Ok(());
        }
        let (a, h) = self.keys().agent(id);
        let args: Vec<Value> = held.iter().map(|x| Value::from(x.member())).collect();
        self.fcall(&AGENT_HOLD, vec![a, h], args).await.map(|_| ())
    }

    /// Forget that the agent holds these.
    pub async fn agent_unhold(&self, id: &str, held: &[Held]) -> ApiResult<()> {
        self.agent_forget_members(id, held.iter().map(Held::member).collect())
            .await
    }

    /// Remove these members from the agent's held set.
    pub async fn agent_forget_members(&self, id: &str, members: Vec<String>) -> ApiResult<()> {
        if members.is_empty() {
            return Ok(());
        }
        let (_, h) = self.keys().agent(id);
        self.timed("srem", self.client().srem::<i64, _, _>(h, members))
            .await
            .map(|_| ())
    }

    /// Whether a held-set member is still held: the lock still has its token, the task is
    /// still leased with it.
    pub async fn held_is_live(&self, h: &Held) -> ApiResult<bool> {
        match h {
            Held::Lock { ns, name, token } => {
                Ok(self.lock_token(ns, name).await?.as_deref() == Some(token.as_str()))
            }
            Held::Task { queue, id, token } => self.q_still_leased(queue, id, token).await,
        }
    }

    /// How many resources the agent is recorded as holding.
    pub async fn agent_held_count(&self, id: &str) -> ApiResult<u64> {
        let (_, h) = self.keys().agent(id);
        self.timed("scard", self.client().scard(h)).await
    }

    /// The members of the agent's held set, as stored.
    pub async fn agent_held_members(&self, id: &str) -> ApiResult<Vec<String>> {
        let (_, h) = self.keys().agent(id);
        self.timed("smembers", self.client().smembers(h)).await
    }
}
