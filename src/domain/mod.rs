//! The rules of the domain, with no I/O: names and limits, canonical JSON, time, and the
//! request and result types of every area (validated here, so HTTP, WebSocket and any later
//! transport apply the same rules). Imports nothing of ours but [`crate::error`].

pub mod agent;
pub mod auth;
pub mod backup;
pub mod backups;
pub mod idempotency;
pub mod json;
pub mod kv;
pub mod lock;
pub mod names;
pub mod page;
pub mod partition;
pub mod queue;
pub mod time;
pub mod txn;
pub mod watch;
