//! Server state the service reads or sets itself: INFO figures, PING latency, the
//! `notify-keyspace-events` setting on every primary, and the primaries themselves.

use std::collections::HashMap;
use std::time::Instant;

use fred::prelude::*;
use serde::Serialize;
use utoipa::ToSchema;

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

/// The Redis deployment as the service sees it now (`/v1/status` `topology`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Topology {
    /// `standalone`, `sentinel` or `cluster`.
    pub mode: String,
    /// The primaries, each with the hash slots it serves (cluster) and its replicas.
    pub primaries: Vec<PrimaryNode>,
    /// Replicas attached to the primaries, in all.
    pub replicas: u32,
    /// Hash slots served by a reachable primary (16384 when the cluster covers them all);
    /// null outside a cluster.
    pub slots_covered: Option<u32>,
    /// Cluster nodes the others mark as failing (`fail` or `fail?`).
    pub failing_nodes: Vec<String>,
    /// Sentinel mode: the master name and the sentinels known.
    pub sentinel: Option<SentinelView>,
    /// `durability` setting: none, replica or aof.
    pub durability: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PrimaryNode {
    /// host:port.
    pub address: String,
    /// Slot ranges served, `[first, last]` (cluster only).
    pub slot_ranges: Vec<[u16; 2]>,
    /// Slots served (cluster only; 0 otherwise).
    pub slots: u32,
    pub replicas: Vec<ReplicaNode>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReplicaNode {
    /// host:port.
    pub address: String,
    /// `online` (in sync), `wait_bgsave` / `send_bulk` (syncing), `connected` / `fail` (cluster).
    pub state: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SentinelView {
    pub master_name: String,
    /// Sentinels the client knows (host:port).
    pub sentinels: Vec<String>,
}

/// `CLUSTER NODES` as primaries with their slots and replicas, plus failing nodes.
pub fn parse_cluster_nodes(text: &str) -> (Vec<PrimaryNode>, Vec<String>) {
    struct Line<'a> {
        id: &'a str,
        addr: String,
        flags: &'a str,
        master: &'a str,
        link: &'a str,
        slots: Vec<[u16; 2]>,
    }
    let lines: Vec<Line> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            // ip:port@cport[,hostname]
            let addr = f[1].split(['@', ',']).next().unwrap_or(f[1]).to_string();
            let slots = f[8..]
                .iter()
                .filter(|r| !r.starts_with('['))
                .filter_map(|r| match r.split_once('-') {
                    Some((a, b)) => Some([a.parse().ok()?, b.parse().ok()?]),
                    None => r.parse().ok().map(|a| [a, a]),
                })
                .collect();
            Some(Line {
                id: f[0],
                addr,
                flags: f[2],
                master: f[3],
                link: f[7],
                slots,
            })
        })
        .collect();
    let failing = |flags: &str| flags.split(',').any(|x| x == "fail" || x == "fail?");
    let mut primaries = Vec::new();
    for p in lines
        .iter()
        .filter(|l| l.flags.contains("master") && !failing(l.flags))
    {
        let replicas = lines
            .iter()
            .filter(|r| r.master == p.id && r.flags.contains("slave"))
            .map(|r| ReplicaNode {
                address: r.addr.clone(),
                state: if failing(r.flags) {
                    "fail".into()
                } else {
                    r.link.to_string()
                },
            })
            .collect();
        let slots = p.slots.iter().map(|[a, b]| (*b as u32) - (*a as u32) + 1).sum();
        primaries.push(PrimaryNode {
            address: p.addr.clone(),
            slot_ranges: p.slots.clone(),
            slots,
            replicas,
        });
    }
    primaries.sort_by(|a, b| a.address.cmp(&b.address));
    let failing_nodes = lines
        .iter()
        .filter(|l| failing(l.flags))
        .map(|l| l.addr.clone())
        .collect();
    (primaries, failing_nodes)
}

/// The replicas an `INFO replication` of a primary lists (`slaveN:ip=…,port=…,state=…`).
pub fn parse_info_replicas(info: &str) -> Vec<ReplicaNode> {
    info_fields(info)
        .iter()
        .filter(|(k, _)| k.starts_with("slave") && k[5..].parse::<u32>().is_ok())
        .filter_map(|(_, v)| {
            let kv: HashMap<&str, &str> = v.split(',').filter_map(|p| p.split_once('=')).collect();
            Some(ReplicaNode {
                address: [*kv.get("ip")?, *kv.get("port")?].join(":"),
                state: kv.get("state").unwrap_or(&"").to_string(),
            })
        })
        .collect()
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

    /// The deployment now: CLUSTER NODES on a cluster, INFO replication of the primary
    /// otherwise.
    pub async fn topology(&self) -> ApiResult<Topology> {
        let mode = format!("{:?}", self.inner.mode).to_lowercase();
        let durability = self.inner.durability.as_str().to_string();
        if self.inner.fred_cfg.server.is_clustered() {
            let text: String = self.timed("cluster_nodes", self.client().cluster_nodes()).await?;
            let (primaries, failing_nodes) = parse_cluster_nodes(&text);
            let replicas = primaries.iter().map(|p| p.replicas.len() as u32).sum();
            let slots_covered = Some(primaries.iter().map(|p| p.slots).sum());
            return Ok(Topology {
                mode,
                primaries,
                replicas,
                slots_covered,
                failing_nodes,
                sentinel: None,
                durability,
            });
        }
        let info: String = self
            .timed(
                "info",
                self.client().info(Some(fred::types::InfoKind::Replication)),
            )
            .await?;
        let replicas = parse_info_replicas(&info);
        let client = self.client();
        let address = client
            .sentinel_primary()
            .or_else(|| client.active_connections().into_iter().next())
            .map(|s| s.to_string())
            .unwrap_or_default();
        let sentinel = match &self.inner.fred_cfg.server {
            fred::types::config::ServerConfig::Sentinel { service_name, .. } => Some(SentinelView {
                master_name: service_name.to_string(),
                sentinels: client
                    .sentinel_nodes()
                    .unwrap_or_default()
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            }),
            _ => None,
        };
        Ok(Topology {
            mode,
            replicas: replicas.len() as u32,
            primaries: vec![PrimaryNode {
                address,
                slot_ranges: Vec::new(),
                slots: 0,
                replicas,
            }],
            slots_covered: None,
            failing_nodes: Vec::new(),
            sentinel,
            durability,
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

    /// Read the replicas attached to each primary now, for the count `durability =
    /// replica` waits for (see [`super::durability`]).
    pub async fn observe_replicas(&self) -> ApiResult<()> {
        let clustered = self.inner.fred_cfg.server.is_clustered();
        if !clustered {
            // Each pool connection may be on another primary while a failover is under way:
            // ask each one about its own.
            let mut counts = Vec::new();
            for client in self.pool().clients() {
                let Some(address) = client.active_connections().first().map(|s| s.to_string()) else {
                    continue;
                };
                // A connection that does not answer (its primary died) is skipped: the
                // others still report theirs.
                let Ok(info) = self
                    .timed::<String, _>("info", client.info(Some(fred::types::InfoKind::Replication)))
                    .await
                else {
                    continue;
                };
                let attached = parse_info_replicas(&info).len() as u32;
                counts.push((address, Vec::new(), attached));
            }
            self.inner.replicas.observe(&counts, Instant::now());
            return Ok(());
        }
        let t = self.topology().await?;
        let counts: Vec<(String, Vec<[u16; 2]>, u32)> = t
            .primaries
            .iter()
            .map(|p| {
                let attached = p
                    .replicas
                    .iter()
                    // A cluster replica counts while its link is up.
                    .filter(|r| r.state == "connected")
                    .count() as u32;
                (p.address.clone(), p.slot_ranges.clone(), attached)
            })
            .collect();
        self.inner.replicas.observe(&counts, Instant::now());
        Ok(())
    }

    /// Whether the chosen durability can work on every primary: `aof` needs WAITAOF
    /// (Redis >= 7.2, Valkey >= 8) and `appendonly yes`. `Err` is the operator's message.
    /// Under `replica`, the replica counts are read for the first time.
    pub async fn check_durability(&self) -> Result<(), String> {
        if self.inner.durability == crate::config::Durability::Replica {
            if let Err(e) = self.observe_replicas().await {
                tracing::warn!(error = %e, "could not read the replicas of the primaries yet");
            }
        }
        if self.inner.durability != crate::config::Durability::Aof {
            return Ok(());
        }
        for node in self.primaries() {
            let cmd =
                fred::types::CustomCommand::new_static("WAITAOF", fred::types::ClusterHash::Random, false);
            let args: Vec<fred::types::Value> = vec![1i64.into(), 0i64.into(), 100i64.into()];
            let res: Result<fred::types::Value, fred::error::Error> = match &node {
                Some(s) => self.client().with_cluster_node(s.clone()).custom(cmd, args).await,
                None => self.client().custom(cmd, args).await,
            };
            let at = node.as_ref().map(|s| format!(" at {s}")).unwrap_or_default();
            match res {
                Ok(_) => {}
                Err(e) if e.details().to_ascii_lowercase().contains("unknown command") => {
                    let version = self
                        .server_info()
                        .await
                        .ok()
                        .and_then(|i| i.version)
                        .unwrap_or_default();
                    return Err(format!(
                        "durability = aof needs WAITAOF, which the Redis server{at} (version {version}) does not have \
                         (Redis >= 7.2 or Valkey >= 8 has it); use durability = replica or none, or upgrade Redis"
                    ));
                }
                Err(e) => {
                    return Err(format!(
                    "durability = aof: the Redis server{at} refused WAITAOF ({}); it needs `appendonly yes`",
                    e.details()
                ))
                }
            }
        }
        Ok(())
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
    fn cluster_nodes_become_primaries_with_slots_and_replicas() {
        let text = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7002@17002 master - 0 0 2 connected 5461-10922 [5461->-c3]
c3 127.0.0.1:7003@17003,host3 master,fail - 0 0 3 disconnected 10923-16383
d4 127.0.0.1:7004@17004 slave a1 0 0 1 connected
e5 127.0.0.1:7005@17005 slave,fail b2 0 0 2 disconnected
";
        let (p, failing) = parse_cluster_nodes(text);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].address, "127.0.0.1:7001");
        assert_eq!(p[0].slots, 5461);
        assert_eq!(p[0].replicas[0].address, "127.0.0.1:7004");
        assert_eq!(p[0].replicas[0].state, "connected");
        assert_eq!(p[1].slot_ranges, vec![[5461, 10922]]);
        assert_eq!(p[1].replicas[0].state, "fail");
        assert_eq!(failing, ["127.0.0.1:7003", "127.0.0.1:7005"]);
    }

    #[test]
    fn info_replication_lists_replicas() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
slave0:ip=127.0.0.1,port=6380,state=online,offset=1,lag=0\r\n\
slave1:ip=127.0.0.1,port=6381,state=wait_bgsave,offset=0,lag=0\r\nmaster_repl_offset:1\r\n";
        let mut r = parse_info_replicas(info);
        r.sort_by(|a, b| a.address.cmp(&b.address));
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].address.as_str(), r[0].state.as_str()),
            ("127.0.0.1:6380", "online")
        );
        assert_eq!(r[1].state, "wait_bgsave");
    }

    #[test]
    fn info_lines_split_once() {
        let f = info_fields("# Server\r\nredis_version:7.0.15\r\nrole:master\r\nx:a:b\r\n");
        assert_eq!(f.get("redis_version"), Some(&"7.0.15"));
        assert_eq!(f.get("x"), Some(&"a:b"));
    }
}
