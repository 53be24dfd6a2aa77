//! swarmstate: coordination state for multi-agent systems, served over HTTP from Redis.
//!
//! # Layout
//! - [`error`]: the one error type and its code → status table.
//! - [`config`]: layered configuration (defaults → TOML → `SWARMSTATE_*` env → flags), validated.
//! - [`metrics`]: the Prometheus recorder and cached metric handles.
//! - [`shutdown`]: the stop signal and [`shutdown::Every`], the clock of background tasks.
//! - [`domain`]: names and limits, canonical JSON, time, and the request / result types of
//!   every area (kv, txn, queue, lock, agent, partition, watch) — validation, no I/O.
//! - [`store`]: Redis access. [`store::keys`] builds every key and channel name;
//!   [`store::fcall`] calls the functions library with declared arities and refusals; one file
//!   per area wraps its functions; [`store::log`] reads change logs; [`store::channels`]
//!   publishes and subscribes; [`store::admin`] reads INFO / CONFIG; [`store::migrate`] loads
//!   the library and runs key-schema migrations.
//! - [`embedded`]: the supervised `redis-server` child used when no Redis is configured.
//! - [`live`]: per-process state fed by Redis subscriptions and readers — pub/sub fan-out,
//!   lock wake-ups, queue wake-ups and events, change-log readers, the keyspace relay, agent
//!   presence — all drained by one dispatcher loop.
//! - [`ops`]: every operation of the API, shared by all transports (HTTP, WebSocket, SSE):
//!   merge-CAS, batches, transactions, the lease long-poll, lock waits, the watch session.
//! - [`state`]: [`state::AppState`], what HTTP handlers get (ops, config, metrics).
//! - [`http`]: the HTTP transport — one `router()` per resource, extractors, problem documents,
//!   the WebSocket and SSE transports of the watch session, health and metrics.
//! - [`app`]: start-up, serving, shutdown, and the background tasks ([`app::tasks`]).
//! - [`testkit`]: real redis-server processes (single, a 3+3 cluster, a Sentinel set) for the
//!   integration tests and `swarmstate-bench`; not used by the service.
//!
//! Redis-side logic lives in `migrations/functions/*.lua` (every state change, one atomic
//! function each, concatenated into one library) and `migrations/schema/` (ordered key-schema
//! migrations).
//!
//! # Layering
//! Each module may use only modules of a lower layer (and its own submodules):
//!
//! | layer | modules |
//! |---|---|
//! | 0 | `error`, `testkit` |
//! | 1 | `config`, `shutdown`, `domain` |
//! | 2 | `metrics` |
//! | 3 | `store`, `embedded` |
//! | 4 | `live` |
//! | 5 | `ops` |
//! | 6 | `state` |
//! | 7 | `http` |
//! | 8 | `app` |
//!
//! So `http → ops → live → store → domain`; nothing but `app` (the composition root) uses
//! `http`; `domain` uses only `error`. A unit test (`layering`, below) reads every file and
//! fails on an upward or sideways `crate::` path and on any cycle among the files, and on a
//! Redis key or channel name built outside `store/keys.rs`.

pub mod app;
pub mod config;
pub mod domain;
pub mod embedded;
pub mod error;
pub mod http;
pub mod live;
pub mod metrics;
pub mod ops;
pub mod shutdown;
pub mod state;
pub mod store;
pub mod testkit;

#[cfg(test)]
mod layering;
