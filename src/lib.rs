//! swarmstate: coordination state for multi-agent systems, served over HTTP from Redis.
//!
//! # Layout
//! - [`config`]: layered configuration (defaults → TOML → `SWARMSTATE_*` env → flags), validated.
//! - [`app`]: application state, start-up (embedded Redis, connect, migrate), serving, shutdown,
//!   and the background expiry reconciler.
//! - [`http`]: router, middleware (request ids, tracing, metrics, problem documents), extractors;
//!   [`http::kv`] key/value handlers, [`http::ops`] health/status/metrics, [`http::watch`] the
//!   watch WebSocket.
//! - [`pubsub`]: one Redis pattern subscription per pattern per process, fanned out to sockets.
//! - [`queues`]: queue wakeups and events (one subscription per process) and the queue reaper.
//! - [`relay`]: keyspace notifications (expired, evicted, written by other clients) → change log.
//! - [`watch`]: per-namespace change-log readers shared by all watchers, and log replay.
//! - [`store`]: Redis access. [`store::keys`] builds every key name; [`store::kv`] wraps the
//!   key/value functions; [`store::migrate`] loads the functions library and runs key-schema
//!   migrations.
//! - [`embedded`]: the supervised `redis-server` child used when no Redis is configured.
//! - [`error`]: the one error type and its code → status table.
//! - [`metrics`]: the Prometheus recorder.
//!
//! Redis-side logic lives in `migrations/swarmstate.lua` (every state change, one atomic
//! function each) and `migrations/schema/` (ordered key-schema migrations).

pub mod agents;
pub mod app;
pub mod config;
pub mod embedded;
pub mod error;
pub mod http;
pub mod metrics;
pub mod pubsub;
pub mod queues;
pub mod relay;
pub mod store;
pub mod wake;
pub mod watch;
