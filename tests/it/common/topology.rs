//! Redis Cluster and Sentinel sets of real `redis-server` processes on free loopback ports,
//! torn down on drop, and the topology the whole run's shared Redis has
//! (`SWARMSTATE_TEST_REDIS=standalone|cluster|sentinel`, default standalone).
//!
//! - [`Cluster`]: 3 primaries + 3 replicas made by `redis-cli --cluster create
//!   --cluster-replicas 1`, node timeout 2 s, so a killed primary's replica is promoted within
//!   a few seconds.
//! - [`SentinelSet`]: 1 primary, 2 replicas and 3 sentinels (`redis-server --sentinel`,
//!   quorum 2, down-after 1 s) watching it under the name `mymaster`.

pub use swarmstate::testkit::{cli, info_field, redis_cli, wait_until, Cluster, SentinelSet, MASTER_NAME};

/// The topology of the run's shared Redis, from `SWARMSTATE_TEST_REDIS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    Standalone,
    Cluster,
    Sentinel,
}

pub fn topology() -> Topology {
    match std::env::var("SWARMSTATE_TEST_REDIS").as_deref() {
        Ok("cluster") => Topology::Cluster,
        Ok("sentinel") => Topology::Sentinel,
        Ok("standalone") | Ok("") | Err(_) => Topology::Standalone,
        Ok(other) => panic!("SWARMSTATE_TEST_REDIS={other}: expected standalone, cluster or sentinel"),
    }
}

/// The `host:port` list of a URL the service takes (`redis://h:p`, `redis-cluster://a,b`,
/// `redis+sentinel://s1,s2/name`).
fn hosts_of(url: &str) -> (String, Vec<u16>) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    let hosts = rest.split('/').next().unwrap();
    let ports = hosts
        .split(',')
        .map(|h| h.rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    (scheme.to_string(), ports)
}

/// The port of the primary a URL names now: the server itself, a cluster's first node (use
/// `redis-cli -c` to follow redirections), or the primary the first reachable sentinel names.
pub fn primary_port(url: &str) -> u16 {
    let (scheme, ports) = hosts_of(url);
    if scheme.contains("sentinel") {
        let name = url.rsplit('/').next().unwrap();
        for p in ports {
            let out = swarmstate::testkit::redis_cli_within(
                &["-p", &p.to_string(), "sentinel", "get-master-addr-by-name", name],
                std::time::Duration::from_secs(10),
            )
            .unwrap_or_default();
            if let Some(port) = out.lines().nth(1) {
                return port.trim().parse().unwrap();
            }
        }
        panic!("no sentinel of {url} names a primary");
    }
    ports[0]
}

/// Run the real `redis-cli` against the Redis a URL names, as another client would (in
/// cluster mode with `-c`, following redirections to the key's node).
pub fn url_cli(url: &str, args: &[&str]) -> String {
    let port = primary_port(url).to_string();
    let mut a = vec!["-p", port.as_str()];
    if url.starts_with("redis-cluster") {
        a.insert(0, "-c");
    }
    a.extend_from_slice(args);
    redis_cli(&a).trim().to_string()
}

/// Every key matching `pattern` on every primary (KEYS on a cluster node sees only its own).
pub fn all_keys(url: &str, pattern: &str) -> Vec<String> {
    let (scheme, ports) = hosts_of(url);
    let ports = if scheme.contains("cluster") {
        ports
            .into_iter()
            .filter(|p| info_field(&cli(*p, &["info", "replication"]), "role").as_deref() == Some("master"))
            .collect()
    } else {
        vec![primary_port(url)]
    };
    let mut keys: Vec<String> = ports
        .iter()
        .flat_map(|p| {
            cli(*p, &["keys", pattern])
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    keys.sort();
    keys
}
