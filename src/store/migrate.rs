//! Start-up migrations.
//!
//! 1. The functions library (`migrations/functions/*.lua`, concatenated into [`LIBRARY`] at
//!    build time) is loaded with FUNCTION LOAD REPLACE
//!    (on every primary in cluster mode) whenever the loaded copy answers another version than
//!    [`LIBRARY_VERSION`]. A loaded library *newer* than this binary's is left alone and start-up
//!    fails: an older binary must not downgrade the functions a newer one relies on.
//! 2. Key-schema migrations (`migrations/schema/NNNN_*.lua`) run in order under a lock, each
//!    recorded in `<prefix>:schema`. A recorded schema newer than [`SCHEMA_VERSION`] stops
//!    start-up with a clear message.

use std::time::{Duration, Instant};

use fred::error::Error as RedisError;
use fred::prelude::*;
use fred::types::Value;

use super::Store;

/// Version of the functions library; must equal `LIBRARY_VERSION` in
/// `migrations/functions/library.lua`.
pub const LIBRARY_VERSION: &str = "20";
/// The functions library source, compiled into the binary: one file per area, in this order
/// (later files use the helpers of earlier ones).
pub const LIBRARY: &str = concat!(
    include_str!("../../migrations/functions/library.lua"),
    include_str!("../../migrations/functions/kv.lua"),
    include_str!("../../migrations/functions/queues.lua"),
    include_str!("../../migrations/functions/locks.lua"),
    include_str!("../../migrations/functions/agents.lua"),
    include_str!("../../migrations/functions/partitions.lua"),
    include_str!("../../migrations/functions/backup.lua"),
);

/// One ordered key-schema migration.
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub lua: &'static str,
}

/// All key-schema migrations, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        lua: include_str!("../../migrations/schema/0001_initial.lua"),
    },
    Migration {
        version: 2,
        name: "pool_in_one_slot",
        lua: include_str!("../../migrations/schema/0002_pool_in_one_slot.lua"),
    },
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: u32 = 2;

/// Why migrations did not complete.
#[derive(Debug, Clone)]
pub enum MigrateError {
    /// Redis holds a newer schema or library: this binary must not run. Final.
    Refused(String),
    /// Redis did not answer as needed (loading its dataset, failing over, timing out):
    /// worth retrying until the start-up deadline.
    Redis(String),
}

impl std::fmt::Display for MigrateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MigrateError::Refused(m) | MigrateError::Redis(m) => f.write_str(m),
        }
    }
}

/// What start-up migration did.
#[derive(Debug, Clone)]
pub struct Report {
    pub library_loaded: bool,
    pub schema_from: u32,
    pub schema_to: u32,
}

/// The library version loaded in Redis, if any.
pub(super) async fn loaded_library_version(store: &Store) -> Result<Option<String>, RedisError> {
    let res: Result<Value, RedisError> = store
        .pool()
        .fcall_ro("swarmstate_version", Vec::<String>::new(), Vec::<String>::new())
        .await;
    match res {
        Ok(v) => Ok(v.as_string()),
        Err(e) if e.details().contains("Function not found") => Ok(None),
        Err(e) => Err(e),
    }
}

/// FUNCTION LOAD REPLACE on every primary.
pub async fn load_library(store: &Store) -> Result<(), RedisError> {
    let _: Value = store.pool().next().function_load_cluster(true, LIBRARY).await?;
    Ok(())
}

/// Run both steps; an `Err` is a message for the operator and stops start-up.
pub async fn run(store: &Store) -> Result<Report, MigrateError> {
    use MigrateError::{Redis, Refused};
    let loaded = loaded_library_version(store)
        .await
        .map_err(|e| Redis(format!("reading the functions library version: {e}")))?;
    let ours: u64 = LIBRARY_VERSION.parse().unwrap_or(0);
    let library_loaded = match loaded.as_deref() {
        Some(v) if v == LIBRARY_VERSION => false,
        Some(v) if v.parse::<u64>().map(|n| n > ours).unwrap_or(false) => {
            return Err(Refused(format!(
                "Redis holds swarmstate functions library version {v}, newer than this binary's {LIBRARY_VERSION}; \
                 run the newer swarmstate (refusing to downgrade)"
            )))
        }
        _ => {
            load_library(store)
                .await
                .map_err(|e| Redis(format!("loading the functions library: {e}")))?;
            tracing::info!(version = LIBRARY_VERSION, previous = ?loaded, "functions library loaded");
            true
        }
    };

    let keys = store.keys().clone();
    let lock_key = keys.migrate_lock();
    let token = uuid::Uuid::new_v4().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: Option<String> = store
            .pool()
            .set(
                &lock_key,
                token.as_str(),
                Some(Expiration::PX(30_000)),
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(|e| Redis(format!("taking the migration lock: {e}")))?;
        if got.is_some() {
            break;
        }
        if Instant::now() > deadline {
            return Err(Redis(format!(
                "another process has held {lock_key} for over 60 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let result = migrate_schema(store).await;
    let holder: Option<String> = store.pool().get(&lock_key).await.unwrap_or(None);
    if holder.as_deref() == Some(token.as_str()) {
        let _: Result<i64, _> = store.pool().del(&lock_key).await;
    }
    let (from, to) = result?;
    Ok(Report {
        library_loaded,
        schema_from: from,
        schema_to: to,
    })
}

async fn migrate_schema(store: &Store) -> Result<(u32, u32), MigrateError> {
    use MigrateError::{Redis, Refused};
    let schema_key = store.keys().schema();
    let current: Option<String> = store
        .pool()
        .get(&schema_key)
        .await
        .map_err(|e| Redis(format!("reading {schema_key}: {e}")))?;
    let current: u32 = match current {
        None => 0,
        Some(s) => s
            .parse()
            .map_err(|_| Refused(format!("{schema_key} holds `{s}`, not a schema version")))?,
    };
    if current > SCHEMA_VERSION {
        return Err(Refused(format!(
            "the key schema in Redis is version {current}, newer than this binary's {SCHEMA_VERSION}; \
             run the newer swarmstate (refusing to work on a newer schema)"
        )));
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        let _: Value = store
            .pool()
            .eval(
                m.lua,
                vec![schema_key.clone()],
                vec![
                    store.keys().prefix().to_string(),
                    m.version.to_string(),
                    format!("{:?}", store.mode()).to_lowercase(),
                ],
            )
            .await
            .map_err(|e| Redis(format!("schema migration {:04}_{}: {e}", m.version, m.name)))?;
        let _: () = store
            .pool()
            .set(&schema_key, m.version.to_string(), None, None, false)
            .await
            .map_err(|e| Redis(format!("recording schema version {}: {e}", m.version)))?;
        tracing::info!(version = m.version, name = m.name, "schema migration applied");
    }
    Ok((current, SCHEMA_VERSION))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_version_matches_lua() {
        let needle = format!("local LIBRARY_VERSION = '{LIBRARY_VERSION}'");
        assert!(
            LIBRARY.contains(&needle),
            "migrations/functions/library.lua must declare {needle}"
        );
        assert!(LIBRARY.starts_with("#!lua name=swarmstate"));
    }

    #[test]
    fn migrations_are_ordered_and_end_at_schema_version() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(SCHEMA_VERSION));
    }
}
