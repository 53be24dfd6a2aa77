//! What every HTTP handler gets: the operations, the configuration and the metrics handle.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::Config;
use crate::ops::Ops;

/// Shared by every handler (cloned per request: three reference counts).
#[derive(Clone)]
pub struct AppState {
    pub ops: Arc<Ops>,
    pub cfg: Arc<Config>,
    pub metrics: PrometheusHandle,
}
