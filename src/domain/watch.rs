//! The watch stream (DESIGN.md "Watch over WebSocket"): change events as read from a
//! namespace's change log, pub/sub messages, and the operations a client sends.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use utoipa::ToSchema;

use super::json::present;
use super::time::rfc3339;

/// One change from the log, as sent to watchers.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// `put`, `delete`, `expire`, `evict` or `external`.
    pub kind: String,
    pub namespace: String,
    pub key: String,
    /// The entry's version after a put; the deleted version for a delete; 0 when unknown.
    pub version: u64,
    pub revision: u64,
    /// The written value (JSON) for puts, unless the watch asked for no values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_reason: Option<String>,
    /// RFC 3339 time of the change.
    pub time: String,
    /// The same, unix ms (for the lag metric).
    #[serde(skip)]
    pub ts_ms: i64,
    /// This event as JSON, with and without the value, built once for all watchers.
    #[serde(skip)]
    json: [OnceLock<String>; 2],
}

/// `kind` of the marker a namespace reader broadcasts when the history was reset (never sent
/// to clients as an event: watches answer it with `compacted`, reason `reset`).
pub const RESET: &str = "reset";

impl Event {
    /// The marker of a reset history of `ns`.
    pub fn reset(ns: &str) -> Event {
        Event {
            kind: RESET.to_string(),
            namespace: ns.to_string(),
            key: String::new(),
            version: 0,
            revision: 0,
            value: None,
            agent_id: None,
            change_reason: None,
            time: String::new(),
            ts_ms: 0,
            json: Default::default(),
        }
    }

    pub fn is_reset(&self) -> bool {
        self.kind == RESET
    }

    /// The event's JSON text (`with_value: false` leaves the value out).
    pub fn json(&self, with_value: bool) -> &str {
        let with_value = with_value || self.value.is_none();
        self.json[usize::from(with_value)].get_or_init(|| {
            let text = serde_json::to_string(self).unwrap_or_default();
            if with_value {
                return text;
            }
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.remove("value");
            }
            v.to_string()
        })
    }

    /// From a change-log entry: id `0-<rev>`, fields k, key, ver, ts, v?, a?, r? (see
    /// migrations/functions/kv.lua).
    pub fn from_log(ns: &str, id: &str, mut f: HashMap<String, String>) -> Option<Event> {
        let revision = id.strip_prefix("0-")?.parse().ok()?;
        let ts = f.get("ts").and_then(|t| t.parse::<i64>().ok()).unwrap_or(0);
        Some(Event {
            kind: f.remove("k")?,
            namespace: ns.to_string(),
            key: f.remove("key")?,
            version: f.get("ver").and_then(|v| v.parse().ok()).unwrap_or(0),
            revision,
            value: f.remove("v").and_then(|v| RawValue::from_string(v).ok()),
            agent_id: f.remove("a"),
            change_reason: f.remove("r"),
            time: rfc3339(ts),
            ts_ms: ts,
            json: Default::default(),
        })
    }
}

/// One published pub/sub message.
#[derive(Debug)]
pub struct PubMessage {
    pub channel: String,
    pub payload: Box<RawValue>,
}

/// What a client sends on the watch socket.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientOp {
    Watch {
        id: String,
        namespace: String,
        #[serde(default)]
        prefix: Option<String>,
        #[serde(default)]
        from_revision: Option<u64>,
        /// Include values in put events (default true).
        #[serde(default)]
        values: Option<bool>,
        /// The `epoch` of an earlier `progress`: a resume into another history of the
        /// namespace answers `compacted` with reason `reset`.
        #[serde(default)]
        epoch: Option<String>,
    },
    Subscribe {
        id: String,
        /// A channel name or glob pattern (`*`, `?`).
        channel: String,
    },
    Queue {
        id: String,
        queue: String,
    },
    /// This process's running totals (requests, errors, events sent, sockets) every
    /// `interval_ms` (500 ..= 60000, default 2000): the dashboard's live rates.
    Stats {
        id: String,
        #[serde(default)]
        interval_ms: Option<u64>,
    },
    Cancel {
        id: String,
    },
    Ping,
}

/// What a replay of the change log found.
pub enum Replay {
    /// Events after the requested revision, in order (possibly empty).
    Events(Vec<Event>),
    /// The log no longer holds revision `from + 1`; the oldest it holds is given.
    Compacted(u64),
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    /// Any JSON value.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Value, required = true)]
    pub message: Option<Value>,
}

#[derive(Serialize, ToSchema)]
pub struct PublishResult {
    /// Redis subscriptions that received it: one per matching pattern per service process
    /// (not per socket). Pub/sub is fire-and-forget; use watches for guaranteed delivery.
    pub receivers: u64,
}
