//! The process-wide Prometheus recorder (metrics-exporter-prometheus), installed once, with
//! HELP text for every metric.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds, shared by HTTP and Redis histograms.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Install the recorder (first call) and return its handle.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .expect("static buckets are valid");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (embedding in a larger program);
            // then our handle renders only what reaches it, which is still well-formed.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            metrics::gauge!("swarmstate_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
}

/// Kinds `redis_errors_total` counts (see `store::map_redis_error`).
pub const REDIS_ERROR_KINDS: &[&str] = &["timeout", "io", "canceled", "topology", "busy", "denied", "other"];

/// HELP text for every metric, and zero values for the unlabelled ones and those with a fixed
/// label set, so `promtool check metrics` is clean and dashboards have series before the first
/// event. (Series labelled by queue or partition appear with their queue or partition.)
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        "swarmstate_build_info",
        "Build of the running service (always 1), by version"
    );
    describe_counter!(
        "http_requests_total",
        "HTTP requests answered, by method, route template and status"
    );
    describe_histogram!(
        "http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request duration, by method, route template and status"
    );
    describe_histogram!(
        "redis_command_duration_seconds",
        Unit::Seconds,
        "Redis command and function call duration, by command"
    );
    describe_counter!(
        "redis_errors_total",
        "Redis calls that failed, by kind (timeout, io, canceled, topology, busy, denied, other)"
    );
    describe_counter!(
        "redis_durability_timeouts_total",
        "Writes applied but not confirmed by the durability wait (503 durability_timeout)"
    );
    describe_gauge!("redis_up", "1 when the last check reached Redis, else 0");
    describe_gauge!("ws_connections", "Open WebSocket connections");
    describe_counter!("watch_events_sent_total", "Change events queued to watchers");
    describe_counter!(
        "http_rate_limited_total",
        "Requests answered 429 rate_limited, by token name"
    );
    describe_counter!(
        "watch_clients_dropped_total",
        "Watch sockets closed with 4008 for falling behind"
    );
    describe_counter!(
        "watch_resets_total",
        "Namespace histories found lost and started again under a reader (watchers told compacted/reset)"
    );
    describe_counter!(
        "watch_log_entries_read_total",
        "Change-log entries read by this process's log readers"
    );
    describe_histogram!(
        "watch_event_lag_seconds",
        Unit::Seconds,
        "Change committed in Redis to read by this process's log reader"
    );
    describe_counter!(
        "keyspace_external_writes_total",
        "Writes by other Redis clients adopted or removed by the keyspace relay"
    );
    describe_counter!(
        "keyspace_notifications_lost_total",
        "Keyspace notifications lost because the relay fell behind"
    );
    describe_counter!("locks_acquired_total", "Locks granted");
    describe_counter!("locks_contended_total", "Lock requests answered lock_held");
    describe_counter!("agents_lost_total", "Agents marked lost after a missed heartbeat");
    describe_gauge!("agents", "Registered agents, by state");
    describe_gauge!("queue_tasks", "Tasks of a queue, by state");
    describe_gauge!(
        "queue_oldest_ready_age_seconds",
        "Age of the task that has been ready longest, by queue (0 when none is ready)"
    );
    describe_counter!("queue_tasks_enqueued_total", "Tasks enqueued, by queue");
    describe_counter!("queue_tasks_completed_total", "Tasks acked, by queue");
    describe_counter!("queue_tasks_failed_total", "Failed attempts (nacks), by queue");
    describe_counter!("queue_tasks_dead_total", "Tasks dead-lettered, by queue");
    describe_counter!("queue_lease_expired_total", "Leases that ran out, by queue");
    describe_histogram!(
        "queue_lease_wait_seconds",
        Unit::Seconds,
        "Time a lease call that got tasks waited, by queue"
    );
    describe_gauge!("partition_used_bytes", "Bytes a partition holds, by partition");
    describe_gauge!("partition_quota_bytes", "A partition's quota, by partition");
    describe_gauge!("partition_keys", "Keys a partition holds, by partition");
    describe_counter!(
        "partition_recount_drift_bytes_total",
        "Byte-count drift corrected by the exact recount, by partition"
    );

    describe_counter!(
        "backups_total",
        "Backup captures that ended, by result (succeeded, failed) and origin (api, schedule)"
    );
    describe_histogram!(
        "backup_duration_seconds",
        Unit::Seconds,
        "Duration of successful backup captures"
    );
    describe_counter!("backup_bytes_total", "Bytes of backup files written");
    describe_gauge!(
        "backup_last_size_bytes",
        "Size of the last successful backup file"
    );
    describe_gauge!(
        "backups_last_success_timestamp_seconds",
        "Unix time of the newest successful backup in the backup directory (absent until there is one)"
    );
    describe_counter!(
        "backups_pruned_total",
        "Scheduled backups removed by backup_retention"
    );
    describe_counter!("backup_restores_total", "Restores through the API, by result");
    describe_counter!("backup_uploads_total", "Backup files registered by upload");
    for result in ["succeeded", "failed"] {
        for origin in ["api", "schedule"] {
            metrics::counter!("backups_total", "result" => result, "origin" => origin).absolute(0);
        }
        metrics::counter!("backup_restores_total", "result" => result).absolute(0);
    }
    for name in [
        "backup_bytes_total",
        "backups_pruned_total",
        "backup_uploads_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    let _ = metrics::histogram!("backup_duration_seconds");
    for kind in REDIS_ERROR_KINDS {
        metrics::counter!("redis_errors_total", "kind" => *kind).absolute(0);
    }
    for state in crate::domain::agent::STATES {
        metrics::gauge!("agents", "state" => *state).set(0.0);
    }
    for name in [
        "watch_events_sent_total",
        "watch_clients_dropped_total",
        "watch_resets_total",
        "watch_log_entries_read_total",
        "keyspace_external_writes_total",
        "keyspace_notifications_lost_total",
        "locks_acquired_total",
        "locks_contended_total",
        "agents_lost_total",
        "redis_durability_timeouts_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    metrics::gauge!("ws_connections").increment(0.0);
    metrics::gauge!("redis_up").set(0.0);
    let _ = metrics::histogram!("watch_event_lag_seconds");
}

/// Metric handles cached per label set. The `metrics` macros rebuild and look up the label set
/// on every call (≈ 8k instructions per request, 11 % of a GET, by callgrind); a read-locked
/// map lookup plus an `Arc` clone is a small fraction of that.
mod cache {
    use std::collections::HashMap;
    use std::hash::{DefaultHasher, Hash, Hasher};
    use std::sync::{OnceLock, RwLock};

    use metrics::{Counter, Histogram};

    type HttpEntry = (String, String, u16, Counter, Histogram);

    fn http_map() -> &'static RwLock<HashMap<u64, Vec<HttpEntry>>> {
        static M: OnceLock<RwLock<HashMap<u64, Vec<HttpEntry>>>> = OnceLock::new();
        M.get_or_init(Default::default)
    }

    fn redis_map() -> &'static RwLock<HashMap<&'static str, Histogram>> {
        static M: OnceLock<RwLock<HashMap<&'static str, Histogram>>> = OnceLock::new();
        M.get_or_init(Default::default)
    }

    /// `http_requests_total` and `http_request_duration_seconds` for one label set.
    pub fn http(method: &str, route: &str, status: u16) -> (Counter, Histogram) {
        let mut h = DefaultHasher::new();
        (method, route, status).hash(&mut h);
        let key = h.finish();
        let found = |v: &Vec<HttpEntry>| {
            v.iter()
                .find(|e| e.0 == method && e.1 == route && e.2 == status)
                .map(|e| (e.3.clone(), e.4.clone()))
        };
        if let Some(hit) = http_map().read().ok().and_then(|m| m.get(&key).and_then(found)) {
            return hit;
        }
        let labels = [
            ("method", method.to_string()),
            ("route", route.to_string()),
            ("status", status.to_string()),
        ];
        let counter = metrics::counter!("http_requests_total", &labels);
        let hist = metrics::histogram!("http_request_duration_seconds", &labels);
        if let Ok(mut m) = http_map().write() {
            let v = m.entry(key).or_default();
            if found(v).is_none() {
                v.push((
                    method.to_string(),
                    route.to_string(),
                    status,
                    counter.clone(),
                    hist.clone(),
                ));
            }
        }
        (counter, hist)
    }

    /// `redis_command_duration_seconds{command}`.
    pub fn redis_command(command: &'static str) -> Histogram {
        if let Some(h) = redis_map().read().ok().and_then(|m| m.get(command).cloned()) {
            return h;
        }
        let h = metrics::histogram!("redis_command_duration_seconds", "command" => command);
        if let Ok(mut m) = redis_map().write() {
            m.insert(command, h.clone());
        }
        h
    }
}

pub use cache::{http, redis_command};

/// Process-wide running totals that the watch socket's `stats` op reports (the dashboard's
/// live rates), kept beside the Prometheus series so no one has to scrape `/metrics` for them.
pub mod live {
    use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

    use serde::Serialize;

    static REQUESTS: AtomicU64 = AtomicU64::new(0);
    static CLIENT_ERRORS: AtomicU64 = AtomicU64::new(0);
    static SERVER_ERRORS: AtomicU64 = AtomicU64::new(0);
    static EVENTS_SENT: AtomicU64 = AtomicU64::new(0);
    static WS_CONNECTIONS: AtomicI64 = AtomicI64::new(0);

    /// One answered HTTP request with this status.
    pub fn request(status: u16) {
        REQUESTS.fetch_add(1, Relaxed);
        match status {
            400..=499 => CLIENT_ERRORS.fetch_add(1, Relaxed),
            500..=599 => SERVER_ERRORS.fetch_add(1, Relaxed),
            _ => 0,
        };
    }

    /// One watch event sent to a client.
    pub fn event_sent() {
        EVENTS_SENT.fetch_add(1, Relaxed);
    }

    /// A watch socket opened (+1) or closed (-1).
    pub fn ws(delta: i64) {
        WS_CONNECTIONS.fetch_add(delta, Relaxed);
    }

    /// The totals since this process started (`stats` frames of the watch socket).
    #[derive(Debug, Clone, Copy, Serialize)]
    pub struct Totals {
        /// HTTP requests answered (every route, every status).
        pub requests_total: u64,
        /// Of those, answered 4xx / 5xx.
        pub client_errors_total: u64,
        pub server_errors_total: u64,
        /// Watch events sent to watch sockets and event streams.
        pub watch_events_sent_total: u64,
        /// Watch sockets open now.
        pub ws_connections: i64,
    }

    pub fn totals() -> Totals {
        Totals {
            requests_total: REQUESTS.load(Relaxed),
            client_errors_total: CLIENT_ERRORS.load(Relaxed),
            server_errors_total: SERVER_ERRORS.load(Relaxed),
            watch_events_sent_total: EVENTS_SENT.load(Relaxed),
            ws_connections: WS_CONNECTIONS.load(Relaxed),
        }
    }
}
