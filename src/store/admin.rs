//! Server state the service reads or sets itself: INFO figures, PING latency, the
//! `notify-keyspace-events` setting on every primary, and the primaries themselves.

use std::collections::HashMap;
use std::time::Instant;

use fred::prelude::*;

use super::{migrate, Store};
use crate::error::{ApiError, ApiResult};

/// The figures of `INFO` (and a PING) that `/v1/status` shows.
#[derive(Debug, Clone, Default)]
pub struct ServerInfo {
    pub version: Option<String>,
    pub role: Option<String>,
    pub used_memory: Option<u64>,
    pub maxmemory: Option<u64>,
    pub connected_clients: Option<u64>,
    /// Round trip of a PING, milliseconds.
    pub latency_ms: f64,
    pub library_version: Option<String>,
    pub schema_version: Option<u32>,
    /// `None` when CONFIG is not allowed.
    pub notify_keyspace_events: Option<String>,
}

/// A primary to address (None: the one server, or whatever fred routes to).
pub type Node = Option<fred::types::config::Server>;

/// `field:value` lines of an INFO reply.
fn info_fields(info: &str) -> HashMap<&str, &str> {
    info.lines()
        .filter_map(|l| l.trim_end().split_once(':'))
        .collect()
}

impl Store {
    /// PING, INFO, the library and schema versions and notify-keyspace-events.
    pub async fn server_info(&self) -> ApiResult<ServerInfo> {
        let pool = self.pool();
        let t = Instant::now();
        let _: String = self.timed("ping", pool.ping(None)).await?;
        let latency = t.elapsed().as_secs_f64() * 1000.0;
        let info: String = self.timed("info", pool.info(None)).await?;
        let fields = info_fields(&info);
        let num = |k: &str| fields.get(k).and_then(|v| v.parse::<u64>().ok());
        let lib = migrate::loaded_library_version(self).await.ok().flatten();
        let schema: Option<String> = pool.get(self.keys().schema()).await.ok().flatten();
        Ok(ServerInfo {
            version: fields.get("redis_version").map(|s| s.to_string()),
            role: fields.get("role").map(|s| s.to_string()),
            used_memory: num("used_memory"),
            maxmemory: num("maxmemory"),
            connected_clients: num("connected_clients"),
            latency_ms: latency,
            library_version: lib,
            schema_version: schema.and_then(|s| s.parse().ok()),
            notify_keyspace_events: self.notify_flags(&None).await.ok(),
        })
    }

    /// Whether Redis answers a PING now.
    pub async fn ping(&self) -> bool {
        self.timed("ping", self.pool().ping::<String>(None)).await.is_ok()
    }

    /// The functions library version Redis answers (None: not loaded).
    pub async fn library_version(&self) -> ApiResult<Option<String>> {
        self.timed("fcall_ro", migrate::loaded_library_version(self))
            .await
    }

    /// Every primary, one entry per node (one `None` unless clustered).
    pub fn primaries(&self) -> Vec<Node> {
        if self.inner.fred_cfg.server.is_clustered() {
            if let Some(state) = self.client().cached_cluster_state() {
                return state.unique_primary_nodes().into_iter().map(Some).collect();
            }
        }
        vec![None]
    }

    /// The node's `notify-keyspace-events`.
    pub async fn notify_flags(&self, node: &Node) -> Result<String, fred::error::Error> {
        let m: HashMap<String, String> = match node {
            Some(s) => {
                self.client()
                    .with_cluster_node(s.clone())
                    .config_get("notify-keyspace-events")
                    .await?
            }
            None => self.client().config_get("notify-keyspace-events").await?,
        };
        Ok(m.get("notify-keyspace-events").cloned().unwrap_or_default())
    }

    /// CONFIG SET notify-keyspace-events on the node.
    pub async fn set_notify_flags(&self, node: &Node, flags: &str) -> Result<(), fred::error::Error> {
        match node {
            Some(s) => {
                self.client()
                    .with_cluster_node(s.clone())
                    .config_set("notify-keyspace-events", flags)
                    .await
            }
            None => self.client().config_set("notify-keyspace-events", flags).await,
        }
    }

    /// Subscriber connections for keyspace notifications, which Redis Cluster publishes only on
    /// the node holding the key: one per primary in cluster mode, else one (which follows a
    /// Sentinel failover by itself). `capacity` is the client's message buffer.
    pub async fn node_subscribers(
        &self,
        capacity: usize,
    ) -> ApiResult<Vec<(String, super::channels::Subscriber)>> {
        let mut configs = Vec::new();
        if self.inner.fred_cfg.server.is_clustered() {
            let state = self
                .client()
                .cached_cluster_state()
                .ok_or_else(|| ApiError::unavailable("cluster state not known yet"))?;
            for server in state.unique_primary_nodes() {
                let mut c = self.inner.fred_cfg.clone();
                c.server = fred::types::config::ServerConfig::Centralized {
                    server: server.clone(),
                };
                configs.push((server.to_string(), c));
            }
        } else {
            configs.push(("redis".to_string(), self.inner.fred_cfg.clone()));
        }
        let mut out = Vec::new();
        for (name, c) in configs {
            let sub = self.subscriber_from(c, capacity).await?;
            out.push((name, super::channels::Subscriber::new(self.clone(), sub)));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_lines_split_once() {
        let f = info_fields("# Server\r\nredis_version:7.0.15\r\nrole:master\r\nx:a:b\r\n");
        assert_eq!(f.get("redis_version"), Some(&"7.0.15"));
        assert_eq!(f.get("x"), Some(&"a:b"));
    }
}
