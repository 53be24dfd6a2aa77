//! The process-wide Prometheus recorder (metrics-exporter-prometheus), installed once.

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
            metrics::gauge!("swarmstate_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            handle
        })
        .clone()
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
