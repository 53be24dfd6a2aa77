//! Agents (DESIGN.md "Coordination primitives"): the record, its lifecycle, and what a
//! registered agent holds (freed at once when it is lost).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use utoipa::ToSchema;

use super::json::canonical;
use crate::error::{ApiError, ApiResult};

/// Every state an agent can be in.
pub const STATES: &[&str] = &[
    "initializing",
    "ready",
    "running",
    "paused",
    "terminating",
    "terminated",
    "error",
    "lost",
];

/// An agent as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Agent {
    pub id: String,
    /// initializing, ready, running, paused, terminating, terminated, error, or lost.
    #[schema(value_type = AgentState)]
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
    /// Only in `GET /v1/agents/{id}`: the locks the agent holds and the tasks it has leased,
    /// now (freed or requeued at once if it is lost).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<AgentHeld>,
}

/// What an agent holds now.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AgentHeld {
    pub locks: Vec<crate::domain::lock::LockInfo>,
    pub tasks: Vec<HeldTask>,
}

/// A task leased by an agent.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HeldTask {
    pub queue: String,
    pub id: String,
    /// When the lease runs out unless extended, RFC 3339.
    pub leased_until: Option<String>,
    pub attempts: u32,
}

impl Agent {
    /// Has `cap` among its capabilities.
    pub fn can(&self, cap: &str) -> bool {
        serde_json::from_str::<Vec<String>>(self.capabilities.get())
            .map(|c| c.iter().any(|x| x == cap))
            .unwrap_or(false)
    }
}

/// A resource an agent holds: recorded when granted, freed if the agent is lost.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The member of the agent's `held` set (see migrations/functions/agents.lua).
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// What the agent can do (strings), used by `GET /v1/agents?capability=`.
    #[serde(default)]
    capabilities: Vec<String>,
    /// Any JSON object.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    /// Marked `lost` when no heartbeat arrives for this long (1000..=3600000, default 30000).
    #[schema(minimum = 1000, maximum = 3600000)]
    #[serde(default, deserialize_with = "crate::domain::json::int::opt")]
    heartbeat_ttl_ms: Option<u64>,
}

/// A validated registration: capabilities and metadata as JSON text.
pub struct Registration {
    pub capabilities: String,
    pub metadata: String,
    pub heartbeat_ttl_ms: u64,
}

impl RegisterBody {
    pub fn registration(self) -> ApiResult<Registration> {
        let ttl = self.heartbeat_ttl_ms.unwrap_or(30_000);
        if !(1000..=3_600_000).contains(&ttl) {
            return Err(ApiError::bad_request(
                "heartbeat_ttl_ms must be between 1000 and 3600000",
            ));
        }
        if self.capabilities.len() > 64
            || self
                .capabilities
                .iter()
                .any(|c| c.is_empty() || c.chars().count() > 64 || c.chars().any(char::is_control))
        {
            return Err(ApiError::bad_request(
                "at most 64 capabilities of 1 to 64 characters without control characters",
            ));
        }
        let metadata = match self.metadata {
            None => "{}".to_string(),
            Some(v @ Value::Object(_)) => canonical(&v),
            Some(_) => return Err(ApiError::bad_request("metadata must be a JSON object")),
        };
        Ok(Registration {
            capabilities: serde_json::to_string(&self.capabilities).unwrap_or_else(|_| "[]".into()),
            metadata,
            heartbeat_ttl_ms: ttl,
        })
    }
}

/// Every state an agent can be in (for the OpenAPI document; the service compares text).
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "snake_case")]
pub enum AgentState {
    Initializing,
    Ready,
    Running,
    Paused,
    Terminating,
    Terminated,
    Error,
    Lost,
}

/// The states a client may move an agent to.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "snake_case")]
pub enum TargetState {
    Ready,
    Running,
    Paused,
    Terminating,
    Terminated,
    Error,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateBody {
    /// ready, running, paused, terminating, terminated or error.
    #[schema(value_type = TargetState)]
    pub state: String,
}

impl StateBody {
    /// The states a client may ask for (`initializing` and `lost` are the service's own).
    pub fn check(&self) -> ApiResult<()> {
        let s = self.state.as_str();
        if !STATES.contains(&s) || s == "lost" || s == "initializing" {
            return Err(ApiError::bad_request(
                "state must be one of ready, running, paused, terminating, terminated, error",
            ));
        }
        Ok(())
    }
}

/// Filters of `GET /v1/agents`.
#[derive(Default)]
pub struct AgentFilter {
    pub state: Option<String>,
    pub capability: Option<String>,
}

impl AgentFilter {
    pub fn check(&self) -> ApiResult<()> {
        if let Some(s) = &self.state {
            if !STATES.contains(&s.as_str()) {
                return Err(ApiError::bad_request(format!("unknown state `{s}`")));
            }
        }
        Ok(())
    }

    pub fn matches(&self, a: &Agent) -> bool {
        self.state.as_deref().is_none_or(|s| a.state == s)
            && self.capability.as_deref().is_none_or(|c| a.can(c))
    }
}

#[derive(Serialize, ToSchema)]
pub struct AgentList {
    pub items: Vec<Agent>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_members_round_trip() {
        for h in [
            Held::Lock {
                ns: "app".into(),
                name: "db".into(),
                token: "t1".into(),
            },
            Held::Task {
                queue: "jobs".into(),
                id: "7".into(),
                token: "t2".into(),
            },
        ] {
            assert_eq!(Held::parse_member(&h.member()), Some(h));
        }
        assert_eq!(Held::parse_member("x\ty"), None);
    }
}
