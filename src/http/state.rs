//! What request handlers share: the core's services beside the HTTP layer's own state.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::api::manage::RateLimiter;
use super::dashboard::Dashboard;
use super::reads::HeavyReads;
use super::track::RequestMetrics;
use super::{ConnectionStats, HttpLimits};
use crate::config::ServerConfig;
use crate::core::Services;
use crate::core::catalogue::MonitorCatalogue;
use crate::core::metrics::MetricRegistry;

/// Everything request handlers share, behind one `Arc`: axum clones the state for every
/// request, and one reference count is cheaper than one per field.
#[derive(Clone)]
pub struct HttpState(Arc<Shared>);

/// The parts of [`HttpState`].
pub struct Shared {
    /// The domain.
    pub core: Services,
    /// Where management API writes go; `None` when the front end offers none.
    pub catalogue: Option<Arc<dyn MonitorCatalogue>>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Timeouts and the connection cap.
    pub limits: HttpLimits,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Connection counters.
    pub connections: ConnectionStats,
    /// Per-key rate limit of the management API.
    pub rate_limit: RateLimiter,
    /// The heavy reads running over every Application, and both bounds on them.
    pub reads: HeavyReads,
    /// Set while serving.
    pub serving: AtomicBool,
    /// Set once a shutdown began: `/readyz` says `stopping`, not `starting`.
    pub stopping: AtomicBool,
    /// Opened by the front end once it is ready (the operator: when its watch caches are
    /// complete); `/readyz` answers ready while serving with the gate open.
    pub ready: Arc<AtomicBool>,
    /// The HTTP layer's own metric families.
    pub requests: RequestMetrics,
    /// Every metric family of the process, for `/metrics`.
    pub metrics: MetricRegistry,
    /// Dashboard sessions, badges and live streams.
    pub dashboard: Dashboard,
}

impl HttpState {
    /// The state for serving `core`: registers the HTTP layer's families into `metrics`
    /// and keeps the registry for `/metrics`; `ready` is the front end's readiness gate,
    /// `connections` the counters of the port it is served on.
    pub fn new(
        core: Services,
        config: &ServerConfig,
        catalogue: Option<Arc<dyn MonitorCatalogue>>,
        mut metrics: MetricRegistry,
        ready: Arc<AtomicBool>,
        connections: ConnectionStats,
    ) -> Self {
        let requests = RequestMetrics::register(&mut metrics);
        connections.register(&mut metrics, config.http.max_connections);
        let reads = HeavyReads::new(config.http.max_concurrent_reads_total);
        reads.register(&mut metrics);
        Self(Arc::new(Shared {
            core,
            catalogue,
            max_body_bytes: config.max_body_bytes,
            limits: config.http,
            trusted_proxies: config.trusted_proxies.clone(),
            connections,
            rate_limit: RateLimiter::new(config.api_rate_per_sec, config.api_rate_burst),
            reads,
            serving: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            ready,
            requests,
            metrics,
            dashboard: Dashboard::new(config.base_url()),
        }))
    }
}

impl Deref for HttpState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}
