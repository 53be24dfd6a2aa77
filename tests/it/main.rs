//! The single integration-test binary (one link, one shared redis-server per run).

mod agents;
mod auth;
mod backup;
mod backup_api;
mod bodies;
mod cli;
mod common;
mod connections;
mod errors;
mod faults;
mod idempotency;
mod kv;
mod listings;
mod locks;
mod ops;
mod partitions;
mod queues;
mod redis_access;
mod relay;
mod resilience;
mod topologies;
mod watch;
