//! Configuration: defaults → optional TOML file (`--config`) → `SWARMSTATE_*` environment →
//! command-line flags, merged with figment and validated once at start-up, so a bad setting
//! stops the process with a message naming the setting instead of failing on first use.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

/// Prefix of every environment variable the service reads (`SWARMSTATE_REDIS_URL` → `redis_url`).
pub const ENV_PREFIX: &str = "SWARMSTATE_";

/// Every setting, in the order the README's table lists them, with a one-line meaning (shown by
/// `swarmstate serve --help`). Environment variables are the upper-cased names with
/// [`ENV_PREFIX`]; anything else under the prefix is ignored.
pub const SETTINGS: &[(&str, &str)] = &[
    ("listen", "HTTP address (loopback by default)"),
    ("redis_url", "redis://, rediss:// (TLS), redis+sentinel://…/<master>, redis-cluster://h1:p1,h2:p2; none: embedded redis-server"),
    ("redis_tls_ca_file", "rediss:// only: PEM bundle of the CAs to trust (default: the system's roots)"),
    ("redis_tls_cert_file", "rediss:// only: PEM client certificate (chain), for servers with tls-auth-clients; with redis_tls_key_file"),
    ("redis_tls_key_file", "rediss:// only: PEM private key of redis_tls_cert_file"),
    ("data_dir", "the embedded Redis keeps its append-only file under <data_dir>/redis"),
    ("log", "tracing filter, e.g. swarmstate=debug,tower_http=debug"),
    ("log_format", "text or json"),
    ("key_prefix", "first component of every Redis key"),
    ("body_limit_bytes", "larger request bodies are 413"),
    ("command_timeout_ms", "Redis deadline; 503 past it"),
    ("request_timeout_ms", "deadline of a whole request, body upload included (408)"),
    ("header_timeout_ms", "a request's headers must arrive within this (also ends idle keep-alive waits)"),
    ("idle_timeout_ms", "a connection with no bytes moving either way for this long is closed"),
    ("max_connections", "open HTTP connections at most; more wait in the listen backlog (1024)"),
    ("shutdown_grace_ms", "on SIGTERM, open requests and streams get this long before they are cut"),
    ("ws_ping_interval_ms", "WebSocket ping interval; silent for three intervals closes with 4001"),
    ("ws_send_timeout_ms", "a WebSocket write that cannot progress this long drops the consumer"),
    ("keyspace_relay", "relay keyspace notifications as expire / evict / external events"),
    ("redis_pool_size", "pipelined Redis connections"),
    ("durability", "none, replica (WAIT for every replica of the primary after each write) or aof (WAITAOF 1 0: fsynced on the primary)"),
    ("durability_timeout_ms", "how long a write waits for its durability confirmation (503 durability_timeout past it)"),
    ("history_versions", "versions kept per key, current included"),
    ("changelog_retention", "approximate entries kept per namespace change log"),
    ("startup_timeout_ms", "how long start-up waits for Redis"),
    ("redis_server_bin", "executable of the embedded Redis"),
    ("embedded_appendfsync", "everysec, or always to fsync every write"),
    ("tokens_file", "bearer tokens file (TOML); re-read on SIGHUP and when it changes"),
    ("insecure_no_auth", "allow a non-loopback listen address without a tokens file"),
    ("metrics_public", "serve /metrics without a token"),
    ("agent_rate_per_sec", "request budget per x-agent-id (burst 2x); none: no budget"),
    ("ws_max_watches", "watches and subscriptions per WebSocket connection"),
    ("backup_dir", "where backups are written (default <data_dir>/backups)"),
    ("backup_key", "backup encryption key: 32 bytes as 64 hex digits or base64; backups are encrypted when set"),
    ("backup_keys_old", "earlier backup keys (comma-separated), to restore and verify files made with them"),
    ("backup_upload_limit_bytes", "largest file POST /v1/backups/upload accepts (413 beyond)"),
    ("backup_schedule", "take a backup of everything on this schedule: a cron expression (UTC, 5 or 6 fields) or an interval like 6h"),
    ("backup_retention", "scheduled backups kept: a count, an age, or both (e.g. 7 or 30d or 7,30d)"),
    ("pool_capacity_bytes", "sum of all partition quotas allowed (507 pool_exhausted beyond)"),
];

/// Every setting with its environment variable and default, for `serve --help`.
pub fn settings_help() -> String {
    let defaults = serde_json::to_value(Config::default()).unwrap_or_default();
    let mut out = String::from(
        "Settings (flags > SWARMSTATE_* environment > --config TOML file, same names > defaults):\n",
    );
    for (name, meaning) in SETTINGS {
        let default = match &defaults[name] {
            serde_json::Value::Null => "none".to_string(),
            serde_json::Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        out.push_str(&format!(
            "  {name:<22} {:<34} default: {default}\n  {:<22} {meaning}\n",
            format!("{ENV_PREFIX}{}", name.to_uppercase()),
            ""
        ));
    }
    out
}

/// The validated service configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server binds. Loopback by default: without tokens nothing should be
    /// reachable from the network.
    pub listen: String,
    /// Redis to use. `None` starts the embedded, supervised `redis-server` under `data_dir`.
    pub redis_url: Option<String>,
    /// rediss:// only: PEM file of the CA certificates the server's certificate must chain to.
    /// Unset: the system's roots (as rustls-native-certs finds them).
    pub redis_tls_ca_file: Option<PathBuf>,
    /// rediss:// only: PEM client certificate (leaf first, then intermediates) presented to a
    /// server with `tls-auth-clients yes`. Set together with `redis_tls_key_file`.
    pub redis_tls_cert_file: Option<PathBuf>,
    /// rediss:// only: PEM private key (PKCS#8, PKCS#1 or SEC1) of `redis_tls_cert_file`.
    pub redis_tls_key_file: Option<PathBuf>,
    /// Where the embedded Redis keeps its append-only file (and later, backups by default).
    pub data_dir: PathBuf,
    /// tracing filter, e.g. `info` or `swarmstate=debug,tower_http=debug`.
    pub log: String,
    /// `text` or `json` log lines.
    pub log_format: String,
    /// First component of every Redis key, so several deployments (or test runs) can share one
    /// Redis without seeing each other's data.
    pub key_prefix: String,
    /// Largest accepted request body; larger bodies get 413 `payload_too_large`.
    pub body_limit_bytes: usize,
    /// Deadline of every Redis command; past it the request answers 503 `redis_unavailable`.
    pub command_timeout_ms: u64,
    /// Deadline of a whole request, body upload included; past it the client gets 408
    /// `request_timeout` (slow or stalled clients cannot hold a request open forever).
    pub request_timeout_ms: u64,
    /// A request's headers must arrive within this; hyper starts the timer whenever a
    /// connection waits for its next request, so an idle keep-alive connection ends then too.
    pub header_timeout_ms: u64,
    /// A connection on which no byte moved either way for this long is closed (a request that
    /// streams or long-polls writes well within it).
    pub idle_timeout_ms: u64,
    /// Open HTTP connections at most; more connections wait in the listen backlog.
    pub max_connections: usize,
    /// On SIGTERM: how long open requests, streams and sockets get before they are cut.
    pub shutdown_grace_ms: u64,
    /// WebSocket keepalive: a ping this often; a client silent for three intervals is closed
    /// with 4001.
    pub ws_ping_interval_ms: u64,
    /// A WebSocket write (the kernel's buffers full: the client reads nothing) that makes no
    /// progress for this long drops the consumer.
    pub ws_send_timeout_ms: u64,
    /// Relay Redis keyspace notifications (expirations, evictions, writes by other clients)
    /// into the change log; sets `notify-keyspace-events` on the primaries when allowed.
    pub keyspace_relay: bool,
    /// Redis connections in the client pool. Commands are pipelined on each; one connection
    /// batches best (measured with swarmstate-bench), more help with very large values.
    pub redis_pool_size: usize,
    /// When a write is acknowledged: `none` when the primary applied it, `replica` when every
    /// replica the primary has had in the last 10 s also has it (`WAIT n`, n >= 1), `aof` when the primary has fsynced it to its
    /// append-only file (`WAITAOF 1 0`, Redis >= 7.2 / Valkey >= 8).
    pub durability: Durability,
    /// How long `WAIT` / `WAITAOF` may take; an unconfirmed write answers 503
    /// `durability_timeout` (applied on the primary, maybe lost on failover).
    pub durability_timeout_ms: u64,
    /// Versions kept per key, current one included (history and `?version=` reads).
    pub history_versions: u32,
    /// Approximate number of entries kept in each namespace's change log (watch resume window).
    pub changelog_retention: u64,
    /// How long start-up waits for Redis to answer before giving up with exit code 1.
    pub startup_timeout_ms: u64,
    /// The `redis-server` executable used by the embedded default.
    pub redis_server_bin: String,
    /// `appendfsync` of the embedded Redis: `always` or `everysec`.
    pub embedded_appendfsync: String,
    /// Bearer tokens file (TOML `[[token]]` entries). Without it every route is open and the
    /// service listens on loopback only (unless `insecure_no_auth`).
    pub tokens_file: Option<PathBuf>,
    /// Start on a non-loopback address without a tokens file (anyone who reaches the port
    /// can do anything).
    pub insecure_no_auth: bool,
    /// `/metrics` without a token (false: any valid token).
    pub metrics_public: bool,
    /// Request budget per `x-agent-id` value (per second, burst twice that), beside the
    /// token's own `rate_per_sec`.
    pub agent_rate_per_sec: Option<u32>,
    /// Watches and subscriptions one WebSocket connection may hold.
    pub ws_max_watches: usize,
    /// Backup directory: `<id>.swsbak` files and their `<id>.json` records. Defaults to
    /// `<data_dir>/backups`; created on the first backup.
    pub backup_dir: Option<PathBuf>,
    /// AES-256-GCM key of new backups (32 bytes, 64 hex digits or base64). Set: backups are
    /// encrypted unless a request asks otherwise.
    pub backup_key: Option<String>,
    /// Keys of earlier backups: verify and restore open files made with them (a list, or one
    /// comma-separated string as in `SWARMSTATE_BACKUP_KEYS_OLD`).
    #[serde(deserialize_with = "list_or_csv")]
    pub backup_keys_old: Vec<String>,
    /// Largest file `POST /v1/backups/upload` takes (it is streamed to disk, outside
    /// `body_limit_bytes` and `request_timeout_ms`).
    pub backup_upload_limit_bytes: u64,
    /// Scheduled backups of everything: a cron expression (UTC; 5 fields, or 6 with seconds
    /// first) or an interval (`30m`, `6h`, `1d`).
    pub backup_schedule: Option<String>,
    /// How many scheduled backups are kept, and for how long: `7`, `30d` or `7,30d`. Backups
    /// taken through the API or uploaded are never removed by it.
    pub backup_retention: Option<String>,
    /// Total bytes memory partitions may allocate (sum of their quotas).
    pub pool_capacity_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            redis_url: None,
            redis_tls_ca_file: None,
            redis_tls_cert_file: None,
            redis_tls_key_file: None,
            data_dir: PathBuf::from("./data"),
            log: "info".into(),
            log_format: "text".into(),
            key_prefix: "ss".into(),
            body_limit_bytes: 1024 * 1024,
            command_timeout_ms: 2000,
            request_timeout_ms: 60_000,
            header_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 10_000,
            shutdown_grace_ms: 10_000,
            ws_ping_interval_ms: 15_000,
            ws_send_timeout_ms: 5_000,
            keyspace_relay: true,
            redis_pool_size: 1,
            durability: Durability::None,
            durability_timeout_ms: 1000,
            history_versions: 10,
            changelog_retention: 10_000,
            startup_timeout_ms: 30_000,
            redis_server_bin: "redis-server".into(),
            embedded_appendfsync: "everysec".into(),
            tokens_file: None,
            insecure_no_auth: false,
            metrics_public: true,
            agent_rate_per_sec: None,
            ws_max_watches: 256,
            backup_dir: None,
            backup_key: None,
            backup_keys_old: Vec::new(),
            backup_upload_limit_bytes: 16 * 1024 * 1024 * 1024,
            backup_schedule: None,
            backup_retention: None,
            pool_capacity_bytes: 10 * 1024 * 1024 * 1024,
        }
    }
}

/// Settings given on the command line; only the ones present override lower layers.
#[derive(Debug, Default, Clone, Serialize, clap::Args)]
pub struct CliOverrides {
    /// Address to listen on [env: SWARMSTATE_LISTEN] [default: 127.0.0.1:8080]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Redis URL: redis://, rediss://, redis+sentinel://, redis-cluster:// [env: SWARMSTATE_REDIS_URL]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// Data directory of the embedded Redis [env: SWARMSTATE_DATA_DIR] [default: ./data]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// tracing filter [env: SWARMSTATE_LOG] [default: info]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// Key prefix in Redis [env: SWARMSTATE_KEY_PREFIX] [default: ss]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// Bearer tokens file [env: SWARMSTATE_TOKENS_FILE]
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_file: Option<PathBuf>,
}

/// Why the service must not start as configured: listening beyond loopback with no tokens
/// file (exit 2). `None` when the address is loopback, tokens are set, or `insecure_no_auth`.
pub fn insecure_listen(cfg: &Config) -> Option<String> {
    let addr: SocketAddr = cfg.listen.parse().ok()?;
    if addr.ip().is_loopback() || cfg.tokens_file.is_some() || cfg.insecure_no_auth {
        return None;
    }
    Some(format!(
        "refusing to listen on {} without authentication: anyone who can reach it could read and \
         change everything. Either set SWARMSTATE_TOKENS_FILE (create tokens with `swarmstate token new`), \
         or set SWARMSTATE_INSECURE_NO_AUTH=true to run open on purpose (or listen on 127.0.0.1)",
        cfg.listen
    ))
}

/// A configuration problem, reported at start-up.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Merge all layers and validate.
    pub fn load(file: Option<&Path>, cli: &CliOverrides) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            fig = fig.merge(Toml::file(path));
        }
        let env = Env::prefixed(ENV_PREFIX)
            .filter(|k| SETTINGS.iter().any(|(s, _)| k.as_str().eq_ignore_ascii_case(s)));
        fig = fig.merge(env).merge(Serialized::defaults(cli));
        let cfg: Config = fig.extract().map_err(|e| ConfigError(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Check every setting; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError(m));
        if self.listen.parse::<SocketAddr>().is_err() {
            return bad(format!(
                "listen: `{}` is not an address like 127.0.0.1:8080",
                self.listen
            ));
        }
        if let Some(url) = &self.redis_url {
            RedisTarget::parse(url)?;
        }
        // The TLS files are read and checked now (a wrong path, a key that does not match its
        // certificate) rather than on the first connection attempt.
        self.redis_tls()?;
        let prefix_ok = !self.key_prefix.is_empty()
            && self.key_prefix.len() <= 64
            && self
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
        if !prefix_ok {
            return bad(format!(
                "key_prefix: `{}` must be 1-64 characters of [A-Za-z0-9_.:-]",
                self.key_prefix
            ));
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.body_limit_bytes) {
            return bad("body_limit_bytes: must be between 1024 and 67108864".into());
        }
        if !(50..=60_000).contains(&self.command_timeout_ms) {
            return bad("command_timeout_ms: must be between 50 and 60000".into());
        }
        if !(100..=3_600_000).contains(&self.request_timeout_ms) {
            return bad("request_timeout_ms: must be between 100 and 3600000".into());
        }
        if !(100..=600_000).contains(&self.header_timeout_ms) {
            return bad("header_timeout_ms: must be between 100 and 600000".into());
        }
        if !(100..=3_600_000).contains(&self.idle_timeout_ms) {
            return bad("idle_timeout_ms: must be between 100 and 3600000".into());
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return bad("max_connections: must be between 1 and 1000000".into());
        }
        if self.shutdown_grace_ms > 600_000 {
            return bad("shutdown_grace_ms: must be at most 600000".into());
        }
        if !(100..=600_000).contains(&self.ws_send_timeout_ms) {
            return bad("ws_send_timeout_ms: must be between 100 and 600000".into());
        }
        if !(100..=600_000).contains(&self.ws_ping_interval_ms) {
            return bad("ws_ping_interval_ms: must be between 100 and 600000".into());
        }
        if !(10..=60_000).contains(&self.durability_timeout_ms) {
            return bad("durability_timeout_ms: must be between 10 and 60000".into());
        }
        if !(1..=64).contains(&self.redis_pool_size) {
            return bad("redis_pool_size: must be between 1 and 64".into());
        }
        if !(1..=1000).contains(&self.history_versions) {
            return bad("history_versions: must be between 1 and 1000".into());
        }
        if !(100..=100_000_000).contains(&self.changelog_retention) {
            return bad("changelog_retention: must be between 100 and 100000000".into());
        }
        if !(["always", "everysec"].contains(&self.embedded_appendfsync.as_str())) {
            return bad("embedded_appendfsync: must be `always` or `everysec`".into());
        }
        if !(["text", "json"].contains(&self.log_format.as_str())) {
            return bad("log_format: must be `text` or `json`".into());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            return bad(format!("log: `{}` is not a tracing filter: {e}", self.log));
        }
        // Its contents are checked when the service loads it (ops::auth), before Redis.
        if let Some(t) = &self.tokens_file {
            if let Err(e) = std::fs::metadata(t) {
                return bad(format!("tokens_file: {}: {e}", t.display()));
            }
        }
        if self.agent_rate_per_sec == Some(0) {
            return bad("agent_rate_per_sec: must be at least 1 (leave it unset for no budget)".into());
        }
        if !(1..=100_000).contains(&self.ws_max_watches) {
            return bad("ws_max_watches: must be between 1 and 100000".into());
        }
        if self.backup_upload_limit_bytes == 0 {
            return bad("backup_upload_limit_bytes: must be greater than 0".into());
        }
        if let Some(s) = &self.backup_schedule {
            BackupSchedule::parse(s).map_err(|e| ConfigError(format!("backup_schedule: {e}")))?;
        }
        if let Some(r) = &self.backup_retention {
            Retention::parse(r).map_err(|e| ConfigError(format!("backup_retention: {e}")))?;
        }
        if self.pool_capacity_bytes == 0 {
            return bad("pool_capacity_bytes: must be greater than 0".into());
        }
        Ok(())
    }
}

/// When a write counts as done (DESIGN.md "Redis topologies and durability").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Applied on the primary (lost if the primary dies before its replicas or disk have it).
    #[default]
    None,
    /// Applied on the primary and on every replica it has had in the last 10 s
    /// (`WAIT n <ms>`, n >= 1; see `store::durability`).
    Replica,
    /// Applied on the primary and fsynced to its append-only file (`WAITAOF 1 0 <ms>`).
    Aof,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::None => "none",
            Durability::Replica => "replica",
            Durability::Aof => "aof",
        }
    }

    /// The Redis command that confirms a write.
    pub fn wait_command(self) -> &'static str {
        match self {
            Durability::Aof => "WAITAOF",
            _ => "WAIT",
        }
    }
}

/// The deployment shapes a Redis URL can name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisMode {
    Standalone,
    Sentinel,
    Cluster,
}

/// A parsed Redis URL, converted to the form fred understands.
#[derive(Debug, Clone)]
pub struct RedisTarget {
    pub mode: RedisMode,
    pub tls: bool,
    /// The URL in fred's syntax (`redis-cluster://h:p?node=h2:p2`, `redis-sentinel://…`).
    pub fred_url: String,
}

impl RedisTarget {
    /// Accepts `redis://[user:pass@]host[:port][/db]`, `rediss://…` (TLS),
    /// `redis+sentinel://[user:pass@]s1:p1,s2:p2/<service>[/db]` (`rediss+sentinel` for TLS) and
    /// `redis-cluster://[user:pass@]h1:p1,h2:p2,…` (`rediss-cluster` for TLS).
    pub fn parse(url: &str) -> Result<RedisTarget, ConfigError> {
        let err = |m: &str| ConfigError(format!("redis_url: {m} (got `{}`)", redact(url)));
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| err("expected a URL such as redis://127.0.0.1:6379"))?;
        let (creds, rest) = match rest.rsplit_once('@') {
            Some((c, r)) => (format!("{c}@"), r),
            None => (String::new(), rest),
        };
        let (hosts, path) = match rest.split_once('/') {
            Some((h, p)) => (h, p),
            None => (rest, ""),
        };
        let host_list: Vec<&str> = hosts.split(',').filter(|h| !h.is_empty()).collect();
        if host_list.is_empty() {
            return Err(err("no host given"));
        }
        for h in &host_list {
            if let Some((_, port)) = h.rsplit_once(':') {
                if port.parse::<u16>().is_err() {
                    return Err(err("a port is not a number between 0 and 65535"));
                }
            }
        }
        let with_port = |h: &str, default: u16| {
            if h.contains(':') {
                h.to_string()
            } else {
                format!("{h}:{default}")
            }
        };
        let target = match scheme {
            "redis" | "rediss" => {
                if host_list.len() != 1 {
                    return Err(err("redis:// takes one host; use redis-cluster:// for several"));
                }
                if !path.is_empty() && path.parse::<u8>().is_err() {
                    return Err(err("the path must be a database number"));
                }
                RedisTarget {
                    mode: RedisMode::Standalone,
                    tls: scheme == "rediss",
                    fred_url: url.to_string(),
                }
            }
            "redis-cluster" | "rediss-cluster" => {
                let first = with_port(host_list[0], 6379);
                let nodes: Vec<String> = host_list[1..]
                    .iter()
                    .map(|h| format!("node={}", with_port(h, 6379)))
                    .collect();
                let q = if nodes.is_empty() {
                    String::new()
                } else {
                    format!("?{}", nodes.join("&"))
                };
                RedisTarget {
                    mode: RedisMode::Cluster,
                    tls: scheme == "rediss-cluster",
                    fred_url: format!("{scheme}://{creds}{first}{q}"),
                }
            }
            "redis+sentinel" | "rediss+sentinel" | "redis-sentinel" | "rediss-sentinel" => {
                let tls = scheme.starts_with("rediss");
                let fred_scheme = if tls { "rediss-sentinel" } else { "redis-sentinel" };
                if scheme.contains('-') {
                    // fred's own syntax, passed through.
                    RedisTarget {
                        mode: RedisMode::Sentinel,
                        tls,
                        fred_url: format!(
                            "{fred_scheme}://{}",
                            url.split_once("://").map(|x| x.1).unwrap_or("")
                        ),
                    }
                } else {
                    let mut parts = path.split('/').filter(|p| !p.is_empty());
                    let service = parts
                        .next()
                        .ok_or_else(|| err("redis+sentinel:// needs the master name as its path: redis+sentinel://s1:26379,s2:26379/mymaster"))?;
                    let db = match parts.next() {
                        Some(d) => {
                            d.parse::<u8>()
                                .map_err(|_| err("the database must be a number"))?;
                            format!("/{d}")
                        }
                        None => String::new(),
                    };
                    let first = with_port(host_list[0], 26379);
                    let mut q = format!("?sentinelServiceName={service}");
                    for h in &host_list[1..] {
                        q.push_str(&format!("&node={}", with_port(h, 26379)));
                    }
                    RedisTarget {
                        mode: RedisMode::Sentinel,
                        tls,
                        fred_url: format!("{fred_scheme}://{creds}{first}{db}{q}"),
                    }
                }
            }
            other => {
                return Err(err(&format!(
                    "unknown scheme `{other}`; use redis, rediss, redis+sentinel or redis-cluster"
                )))
            }
        };
        fred::prelude::Config::from_url(&target.fred_url)
            .map_err(|e| err(&format!("not understood: {e}")))?;
        Ok(target)
    }
}

impl Config {
    /// The rustls client configuration for a TLS Redis URL (`None` for a plain one): the CAs
    /// of `redis_tls_ca_file` or else the system's roots, and the client certificate of
    /// `redis_tls_cert_file` / `redis_tls_key_file` when set. Always the ring provider, the one
    /// crypto backend compiled in (fred's `enable-rustls-ring`). The TLS files set with a plain
    /// URL, or only one of the certificate and key, are refused.
    pub fn redis_tls(&self) -> Result<Option<rustls::ClientConfig>, ConfigError> {
        let bad = |m: String| Err(ConfigError(m));
        let files = [
            ("redis_tls_ca_file", &self.redis_tls_ca_file),
            ("redis_tls_cert_file", &self.redis_tls_cert_file),
            ("redis_tls_key_file", &self.redis_tls_key_file),
        ];
        let tls = match &self.redis_url {
            Some(url) => RedisTarget::parse(url)?.tls,
            None => false,
        };
        if !tls {
            return match files.iter().find(|(_, v)| v.is_some()) {
                Some((name, _)) => bad(format!(
                    "{name}: only used with a TLS Redis URL (rediss://, rediss-cluster://, rediss+sentinel://), \
                     but redis_url is {}",
                    match &self.redis_url {
                        Some(u) => format!("`{}`", redact(u)),
                        None => "not set (the embedded redis-server listens on loopback without TLS)".into(),
                    }
                )),
                None => Ok(None),
            };
        }
        let mut roots = rustls::RootCertStore::empty();
        match &self.redis_tls_ca_file {
            Some(path) => {
                for cert in pem_certificates("redis_tls_ca_file", path)? {
                    roots
                        .add(cert)
                        .map_err(|e| ConfigError(format!("redis_tls_ca_file: {}: {e}", path.display())))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return bad(
                        "redis_tls_ca_file: not set, and no system CA certificates were found \
                         (install ca-certificates, or set redis_tls_ca_file to the CA of the Redis server)"
                            .into(),
                    );
                }
            }
        }
        let builder =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| ConfigError(format!("redis TLS: {e}")))?
                .with_root_certificates(roots);
        let config = match (&self.redis_tls_cert_file, &self.redis_tls_key_file) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => {
                let chain = pem_certificates("redis_tls_cert_file", cert)?;
                let key_der = rustls::pki_types::PrivateKeyDer::from_pem_slice(&read_file(
                    "redis_tls_key_file",
                    key,
                )?)
                .map_err(|e| {
                    ConfigError(format!(
                        "redis_tls_key_file: {} holds no PEM private key ({e})",
                        key.display()
                    ))
                })?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    ConfigError(format!(
                        "redis_tls_cert_file / redis_tls_key_file: {} and {} do not make a client certificate: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?
            }
            _ => {
                return bad(
                    "redis_tls_cert_file, redis_tls_key_file: set both (the client certificate and its key) or neither"
                        .into(),
                )
            }
        };
        Ok(Some(config))
    }
}

/// A TLS setting's file, read whole (the error names the setting and the path).
fn read_file(setting: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError(format!("{setting}: cannot read {}: {e}", path.display())))
}

/// Every certificate of a PEM file; none at all is an error.
fn pem_certificates(
    setting: &str,
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ConfigError> {
    let bytes = read_file(setting, path)?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError(format!("{setting}: {} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ConfigError(format!(
            "{setting}: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certs)
}

/// The URL with any password replaced by `***`, for messages and logs: the one before `@`
/// and fred's `sentinelPassword=` query parameter.
pub fn redact(url: &str) -> String {
    let out = match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(_)) => {
            let (creds, host) = rest.rsplit_once('@').unwrap_or(("", rest));
            let user = creds.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_string(),
    };
    const SENTINEL_PASSWORD: &str = "sentinelPassword=";
    match out.find(SENTINEL_PASSWORD) {
        Some(i) => {
            let start = i + SENTINEL_PASSWORD.len();
            let end = out[start..].find('&').map_or(out.len(), |e| start + e);
            format!("{}***{}", &out[..start], &out[end..])
        }
        None => out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `serve --help` and the README's table list every setting the config has, and nothing
    /// else; the README shows its env variable.
    #[test]
    fn every_setting_is_in_the_help_and_the_readme() {
        let fields = serde_json::to_value(Config::default()).unwrap();
        let fields: Vec<&String> = fields.as_object().unwrap().keys().collect();
        let mut listed: Vec<&str> = SETTINGS.iter().map(|(n, _)| *n).collect();
        listed.sort();
        let mut fields: Vec<&str> = fields.iter().map(|s| s.as_str()).collect();
        fields.sort();
        assert_eq!(listed, fields);
        let help = settings_help();
        let readme = include_str!("../README.md");
        for (name, _) in SETTINGS {
            let env = format!("{ENV_PREFIX}{}", name.to_uppercase());
            assert!(help.contains(name) && help.contains(&env), "{name} not in --help");
            assert!(
                readme.contains(&format!("| `{name}` | `{env}` |")),
                "{name} not in the README table"
            );
        }
    }

    #[test]
    fn url_forms_parse() {
        let t = RedisTarget::parse("redis://127.0.0.1:6379/2").unwrap();
        assert_eq!(t.mode, RedisMode::Standalone);
        let t = RedisTarget::parse("rediss://u:p@example.com:6380").unwrap();
        assert!(t.tls);
        let t = RedisTarget::parse("redis-cluster://a:7000,b:7001,c").unwrap();
        assert_eq!(t.mode, RedisMode::Cluster);
        assert_eq!(t.fred_url, "redis-cluster://a:7000?node=b:7001&node=c:6379");
        let t = RedisTarget::parse("redis+sentinel://:pw@s1:26379,s2/mymaster/1").unwrap();
        assert_eq!(t.mode, RedisMode::Sentinel);
        assert_eq!(
            t.fred_url,
            "redis-sentinel://:pw@s1:26379/1?sentinelServiceName=mymaster&node=s2:26379"
        );
        for bad in [
            "localhost:6379",
            "http://x",
            "redis://a,b",
            "redis+sentinel://s1:26379",
            "redis://h:99999",
            "redis://h/notadb",
        ] {
            assert!(RedisTarget::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://u:secret@h:1"), "redis://u:***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        // The embedded server's URL (no user), ACL users, passwords holding `@` or `:`.
        assert_eq!(
            redact("redis://:0123abcd@127.0.0.1:6379"),
            "redis://:***@127.0.0.1:6379"
        );
        assert_eq!(
            redact("rediss://svc:p@ss:w0rd@h:6380/2"),
            "rediss://svc:***@h:6380/2"
        );
        assert_eq!(
            redact("redis-sentinel://u:pw@s1:26379?sentinelServiceName=m&sentinelPassword=spw&node=s2:26379"),
            "redis-sentinel://u:***@s1:26379?sentinelServiceName=m&sentinelPassword=***&node=s2:26379"
        );
        for url in ["redis://u:secret@h:99999", "redis+sentinel://:secret@s1,s2"] {
            let e = RedisTarget::parse(url).unwrap_err();
            assert!(!e.0.contains("secret"), "{e}");
        }
    }

    /// The TLS files: only with a TLS URL, certificate and key together, readable PEM.
    #[test]
    fn tls_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let tls = |url: Option<&str>, ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>| {
            Config {
                redis_url: url.map(String::from),
                redis_tls_ca_file: ca.map(Path::to_path_buf),
                redis_tls_cert_file: cert.map(Path::to_path_buf),
                redis_tls_key_file: key.map(Path::to_path_buf),
                ..Config::default()
            }
            .validate()
            .map_err(|e| e.0)
        };
        let err = tls(Some("redis://h:1"), Some(&not_pem), None, None).unwrap_err();
        assert!(
            err.starts_with("redis_tls_ca_file: only used with a TLS Redis URL"),
            "{err}"
        );
        let err = tls(None, None, None, Some(&not_pem)).unwrap_err();
        assert!(
            err.starts_with("redis_tls_key_file:") && err.contains("embedded"),
            "{err}"
        );
        let err = tls(Some("rediss://h:1"), None, Some(&not_pem), None).unwrap_err();
        assert!(err.contains("set both"), "{err}");
        let missing = dir.path().join("missing.pem");
        let err = tls(Some("rediss://h:1"), Some(&missing), None, None).unwrap_err();
        assert!(
            err.starts_with("redis_tls_ca_file: cannot read") && err.contains("missing.pem"),
            "{err}"
        );
        let err = tls(Some("rediss://h:1"), Some(&not_pem), None, None).unwrap_err();
        assert!(err.contains("holds no PEM certificate"), "{err}");
        assert!(tls(Some("redis://h:1"), None, None, None).is_ok());
    }

    #[test]
    fn validation_names_the_setting() {
        let c = Config {
            key_prefix: "a{b}".into(),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().0.contains("key_prefix"));
        let c = Config {
            listen: "nope".into(),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().0.contains("listen"));
        assert!(Config::default().validate().is_ok());
    }
}

/// A list setting given as a list (TOML) or as one comma-separated string (environment).
fn list_or_csv<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCsv {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match ListOrCsv::deserialize(d)? {
        ListOrCsv::List(l) => l,
        ListOrCsv::Csv(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// `backup_schedule`: a cron expression (croner: 5 fields, or 6 with seconds first; UTC) or
/// a fixed interval (humantime, at least 1 s).
#[derive(Debug, Clone)]
pub enum BackupSchedule {
    Cron(Box<croner::Cron>),
    Every(std::time::Duration),
}

impl BackupSchedule {
    pub fn parse(text: &str) -> Result<BackupSchedule, String> {
        let t = text.trim();
        if let Ok(d) = humantime::parse_duration(t) {
            if d < std::time::Duration::from_secs(1) {
                return Err("an interval must be at least 1s".into());
            }
            return Ok(BackupSchedule::Every(d));
        }
        <croner::Cron as std::str::FromStr>::from_str(t)
            .map(|c| BackupSchedule::Cron(Box::new(c)))
            .map_err(|e| {
                format!(
                    "`{t}` is neither a cron expression (like `0 3 * * *`) nor an interval (like `6h`): {e}"
                )
            })
    }

    /// Milliseconds from `now_ms` to the next run.
    pub fn next_in_ms(&self, now_ms: i64) -> Option<u64> {
        match self {
            BackupSchedule::Every(d) => Some(d.as_millis() as u64),
            BackupSchedule::Cron(c) => {
                // Whole seconds (croner keeps the fraction it is given).
                let now = chrono::DateTime::<chrono::Utc>::from_timestamp(now_ms.div_euclid(1000), 0)?;
                let next = c.find_next_occurrence(&now, false).ok()?;
                Some((next.timestamp_millis() - now_ms).max(0) as u64)
            }
        }
    }
}

/// `backup_retention`: keep at most `count` scheduled backups, none older than `max_age`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Retention {
    pub count: Option<usize>,
    pub max_age: Option<std::time::Duration>,
}

impl Retention {
    pub fn parse(text: &str) -> Result<Retention, String> {
        let mut r = Retention::default();
        for part in text.split([',', ' ']).map(str::trim).filter(|p| !p.is_empty()) {
            if let Ok(n) = part.parse::<usize>() {
                if n == 0 || r.count.is_some() {
                    return Err(format!("`{part}`: one count, at least 1"));
                }
                r.count = Some(n);
            } else {
                let d = humantime::parse_duration(part)
                    .map_err(|_| format!("`{part}` is neither a count (7) nor an age (30d)"))?;
                if d.is_zero() || r.max_age.is_some() {
                    return Err(format!("`{part}`: one age, more than 0"));
                }
                r.max_age = Some(d);
            }
        }
        if r == Retention::default() {
            return Err("give a count, an age, or both (e.g. 7,30d)".into());
        }
        Ok(r)
    }
}

#[cfg(test)]
mod backup_settings {
    use super::*;

    #[test]
    fn schedules_are_cron_or_intervals() {
        // 2026-12-03T13:05:12.345Z
        let now = 1_796_303_112_345;
        let daily = BackupSchedule::parse("0 3 * * *").unwrap();
        // Next 03:00 UTC is 2026-12-04T03:00:00Z.
        assert_eq!(daily.next_in_ms(now), Some((1_796_353_200_000 - now) as u64));
        let every_10s = BackupSchedule::parse("*/10 * * * * *").unwrap();
        assert_eq!(every_10s.next_in_ms(now), Some((1_796_303_120_000 - now) as u64));
        assert_eq!(
            BackupSchedule::parse("6h").unwrap().next_in_ms(now),
            Some(6 * 3_600_000)
        );
        for bad in ["", "soon", "0 3 * *", "500ms", "61 * * * *"] {
            assert!(BackupSchedule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn retention_is_a_count_an_age_or_both() {
        let day = std::time::Duration::from_secs(86_400);
        assert_eq!(
            Retention::parse("7").unwrap(),
            Retention {
                count: Some(7),
                max_age: None
            }
        );
        assert_eq!(Retention::parse("30d").unwrap().max_age, Some(30 * day));
        assert_eq!(
            Retention::parse("7, 30d").unwrap(),
            Retention {
                count: Some(7),
                max_age: Some(30 * day)
            }
        );
        for bad in ["", "0", "7,8", "forever", "1d,2d"] {
            assert!(Retention::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn old_keys_are_a_list_or_a_comma_separated_string() {
        let c: Config = serde_json::from_value(serde_json::json!({"backup_keys_old": "a, b,"})).unwrap();
        assert_eq!(c.backup_keys_old, ["a", "b"]);
        let c: Config = serde_json::from_value(serde_json::json!({"backup_keys_old": ["a"]})).unwrap();
        assert_eq!(c.backup_keys_old, ["a"]);
    }
}
