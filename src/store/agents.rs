//! Agents: registry, heartbeats, lifecycle, and the resources freed when one is lost.

use std::collections::HashMap;

use fred::prelude::*;
use fred::types::Value;
use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::{v_str, Store};
use crate::error::{ApiError, ApiResult, ErrorCode};

/// An agent as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Agent {
    pub id: String,
    /// initializing, ready, running, paused, terminating, terminated, error, or lost.
    pub state: String,
    #[schema(value_type = Vec<String>)]
    pub capabilities: Box<RawValue>,
    #[schema(value_type = Object)]
    pub metadata: Box<RawValue>,
    pub heartbeat_ttl_ms: u64,
    pub registered_at: String,
    pub last_heartbeat: String,
    /// Marked lost if no heartbeat arrives by then.
    pub heartbeat_deadline: String,
    pub state_changed_at: String,
}

impl Agent {
    fn from_fields(f: &HashMap<String, String>) -> Option<Agent> {
        let time = |k: &str| {
            f.get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .map(super::kv::rfc3339)
        };
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
        })
    }

    /// Has `cap` among its capabilities.
    pub fn can(&self, cap: &str) -> bool {
        serde_json::from_str::<Vec<String>>(self.capabilities.get())
            .map(|c| c.iter().any(|x| x == cap))
            .unwrap_or(false)
    }
}

fn agent_of(v: &Value) -> ApiResult<Agent> {
    Agent::from_fields(&super::hash_fields(v))
        .ok_or_else(|| ApiError::internal(format!("unreadable agent: {v:?}")))
}

/// A resource a lost agent held.
pub enum Held {
    Lock {
        ns: String,
        name: String,
        token: String,
    },
    Task {
        queue: String,
        id: String,
        token: String,
    },
}

impl Held {
    pub fn member(&self) -> String {
        match self {
            Held::Lock { ns, name, token } => format!("l\t{ns}\t{name}\t{token}"),
            Held::Task { queue, id, token } => format!("t\t{queue}\t{id}\t{token}"),
        }
    }

    pub fn parse_member(m: &str) -> Option<Held> {
        let p: Vec<&str> = m.split('\t').collect();
        match p.as_slice() {
            ["l", ns, name, token] => Some(Held::Lock {
                ns: ns.to_string(),
                name: name.to_string(),
                token: token.to_string(),
            }),
            ["t", q, id, token] => Some(Held::Task {
                queue: q.to_string(),
                id: id.to_string(),
                token: token.to_string(),
            }),
            _ => None,
        }
    }
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
        let v = self
            .fcall(
                "agent_register",
                vec![a, held],
                vec![
                    id.into(),
                    capabilities.into(),
                    metadata.into(),
                    (ttl_ms as i64).into(),
                ],
            )
            .await?;
        let agent = agent_of(&v)?;
        self.agent_track(id, (crate::store::kv::now_ms() + ttl_ms as i64) as f64)
            .await?;
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
        self.fcall("agent_untrack", vec![self.keys().agents()], vec![id.into()])
            .await
            .map(|_| ())
    }

    pub async fn agent_heartbeat(&self, id: &str) -> ApiResult<Agent> {
        let (a, _) = self.keys().agent(id);
        let r = self.fcall("agent_heartbeat", vec![a], vec![]).await?.into_array();
        match r.first().and_then(v_str).as_deref() {
            Some("ok") => {
                let agent = agent_of(r.get(1).unwrap_or(&Value::Null))?;
                let deadline = crate::store::kv::now_ms() + agent.heartbeat_ttl_ms as i64;
                self.agent_track(id, deadline as f64).await?;
                Ok(agent)
            }
            Some("not_found") => Err(ApiError::not_found("no such agent")),
            _ => Err(ApiError::new(
                ErrorCode::InvalidTransition,
                format!(
                    "the agent is {}; register it again (PUT) to come back",
                    r.get(1).and_then(v_str).unwrap_or_default()
                ),
            )),
        }
    }

    pub async fn agent_set_state(&self, id: &str, state: &str) -> ApiResult<Agent> {
        let (a, _) = self.keys().agent(id);
        let r = self
            .fcall("agent_state", vec![a], vec![state.into()])
            .await?
            .into_array();
        match r.first().and_then(v_str).as_deref() {
            Some("ok") => agent_of(r.get(1).unwrap_or(&Value::Null)),
            Some("not_found") => Err(ApiError::not_found("no such agent")),
            _ => Err(ApiError::new(
                ErrorCode::InvalidTransition,
                format!(
                    "an agent cannot go from {} to {state}",
                    r.get(1).and_then(v_str).unwrap_or_default()
                ),
            )),
        }
    }

    pub async fn agent_get(&self, id: &str) -> ApiResult<Option<Agent>> {
        let (a, _) = self.keys().agent(id);
        let m: HashMap<String, String> = self.timed("hgetall", self.client().hgetall(a)).await?;
        if m.is_empty() {
            return Ok(None);
        }
        Agent::from_fields(&m)
            .map(Some)
            .ok_or_else(|| ApiError::internal("unreadable agent"))
    }

    /// Every agent id, and ids whose heartbeat deadline has passed.
    pub async fn agent_ids(&self) -> ApiResult<Vec<String>> {
        self.timed(
            "zrange",
            self.client()
                .zrange(self.keys().agents(), 0, -1, None, false, None, false),
        )
        .await
    }

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
        let r = self
            .fcall("agent_lost", vec![a, held], vec![])
            .await?
            .into_array();
        match r.first().and_then(v_str).as_deref() {
            Some("lost") => Ok(Some(
                r[1..]
                    .iter()
                    .filter_map(v_str)
                    .filter_map(|m| Held::parse_member(&m))
                    .collect(),
            )),
            Some("skip") => {
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
        self.fcall("agent_hold", vec![a, h], args).await.map(|_| ())
    }

    pub async fn agent_unhold(&self, id: &str, held: &Held) -> ApiResult<()> {
        let (_, h) = self.keys().agent(id);
        self.timed("srem", self.client().srem::<i64, _, _>(h, held.member()))
            .await
            .map(|_| ())
    }

    /// Drop entries of the agent's held set whose resource it no longer holds (lock released
    /// or expired, lease acked, expired or re-leased) once the set has grown past `keep`, so the
    /// set stays bounded for long-lived agents. Returns how many were dropped.
    pub async fn agent_prune_held(&self, id: &str, keep: u64) -> ApiResult<u64> {
        let (_, h) = self.keys().agent(id);
        let n: u64 = self.timed("scard", self.client().scard(h.clone())).await?;
        if n <= keep {
            return Ok(0);
        }
        let members: Vec<String> = self.timed("smembers", self.client().smembers(h.clone())).await?;
        let mut stale = Vec::new();
        for m in members {
            let live = match Held::parse_member(&m) {
                Some(Held::Lock { ns, name, token }) => {
                    let t: Option<String> = self
                        .timed(
                            "hget",
                            self.client().hget(self.keys().ns(&ns).lock(&name), "token"),
                        )
                        .await?;
                    t.as_deref() == Some(token.as_str())
                }
                Some(Held::Task { queue, id, token }) => {
                    let key = format!("{}{id}", self.keys().queue(&queue).task_prefix);
                    let f: Vec<Option<String>> = self
                        .timed("hmget", self.client().hmget(key, vec!["state", "lease_token"]))
                        .await?;
                    f.first().cloned().flatten().as_deref() == Some("leased")
                        && f.get(1).cloned().flatten().as_deref() == Some(token.as_str())
                }
                None => false,
            };
            if !live {
                stale.push(m);
            }
        }
        if stale.is_empty() {
            return Ok(0);
        }
        let n = stale.len() as u64;
        self.timed("srem", self.client().srem::<i64, _, _>(h, stale))
            .await?;
        Ok(n)
    }

    /// Free whatever a lost agent held; returns (locks freed, tasks requeued).
    pub async fn agent_free(&self, held: &[Held], why: &str) -> ApiResult<(u64, u64)> {
        let (mut locks, mut tasks) = (0, 0);
        for h in held {
            match h {
                Held::Lock { ns, name, token } => {
                    let keys = vec![self.keys().ns(ns).lock(name)];
                    let channel = self.keys().lock_channel(ns, name);
                    // One failure must not leave the rest to their TTLs.
                    match self
                        .fcall("lock_free", keys, vec![token.as_str().into(), channel.into()])
                        .await
                    {
                        Ok(v) => locks += super::v_u64(&v),
                        Err(e) => {
                            tracing::warn!(ns, name, error = %e.detail, "could not free a lost agent's lock")
                        }
                    }
                }
                Held::Task { queue, id, token } => {
                    let qk = self.keys().queue(queue);
                    let args: Vec<Value> = vec![
                        qk.task_prefix.into(),
                        qk.channel.into(),
                        id.as_str().into(),
                        token.as_str().into(),
                        why.into(),
                    ];
                    match self.fcall("q_requeue", qk.keys, args).await {
                        Ok(v) => tasks += super::v_u64(&v),
                        Err(e) => {
                            tracing::warn!(queue, id, error = %e.detail, "could not requeue a lost agent's task")
                        }
                    }
                }
            }
        }
        Ok((locks, tasks))
    }
}
