//! Runtime configuration shared by both front ends, independent of how it was given
//! (flags, environment, tests).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::core::ServicesConfig;

/// Settings of the core server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// sled directory.
    pub data_dir: PathBuf,
    /// Base URL written into issued ping URLs (no trailing slash).
    pub external_url: String,
    /// SMTP URL; no email when unset.
    pub smtp_url: Option<String>,
    /// Sender address of alert emails.
    pub mail_from: String,
    /// Default alert webhook.
    pub webhook_url: Option<String>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// sled page cache size.
    pub cache_bytes: u64,
    /// Pings kept per monitor.
    pub ping_history: usize,
    /// Shortest accepted Heartbeat interval (60s; lower only for development and tests).
    pub min_interval: crate::core::duration::SpecDuration,
    /// Management API requests per second per key (sustained).
    pub api_rate_per_sec: f64,
    /// Management API burst per key.
    pub api_rate_burst: f64,
    /// Alert retry policy.
    pub outbox: crate::core::alert::outbox::OutboxConfig,
    /// Limits of Applications that set none of their own.
    pub limits: crate::core::limits::LimitDefaults,
    /// Which addresses alert webhooks may reach.
    pub webhooks: crate::notify::guard::AddressPolicy,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// HTTP timeouts and the connection cap.
    pub http: crate::http::HttpLimits,
    /// Hold monitor deadlines until the front end releases them: the operator does, until
    /// it has removed the monitors whose resources vanished while it was down.
    pub hold_deadlines: bool,
    /// Event names per Application with a series of their own on `/metrics`.
    pub metrics_top_events: usize,
    /// Several replicas share the database and elect their leader (the front end runs the
    /// election): the services open as a follower. Otherwise this process leads from the
    /// start.
    pub elect_leader: bool,
    /// PostgreSQL for all the data (`data_dir` is then unused); `None` keeps it in
    /// `data_dir`.
    pub database_url: Option<crate::core::store_pg::DatabaseUrl>,
    /// The name of the installation this process belongs to, which a shared database
    /// records so that another installation's replicas refuse to use it
    /// (`--installation`); `None`: the front end's default ([`STANDALONE_INSTALLATION`],
    /// or the operator's Lease).
    pub installation: Option<String>,
}

/// The installation name of a standalone process given none: every standalone replica of
/// one installation gets the same one without being told, as an upgrade needs (a database
/// without a name is claimed by the first replica, and the others must match it).
pub const STANDALONE_INSTALLATION: &str = "standalone";

/// The installation name of an operator given none: its Lease, as `<namespace>/<name>`,
/// which every replica of one installation shares and two installations in one cluster
/// cannot (the chart names both after its release).
pub fn operator_installation(lease_namespace: &str, lease_name: &str) -> String {
    format!("{lease_namespace}/{lease_name}")
}

impl ServerConfig {
    /// Defaults for `listen` and `data_dir`, as the CLI documents them.
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            external_url: format!("http://{listen}"),
            listen,
            data_dir,
            smtp_url: None,
            mail_from: "hartslag@localhost".into(),
            webhook_url: None,
            max_body_bytes: 64 * 1024,
            cache_bytes: 32 * 1024 * 1024,
            ping_history: 1000,
            min_interval: crate::core::spec::MIN_INTERVAL,
            api_rate_per_sec: 10.0,
            api_rate_burst: 50.0,
            outbox: crate::core::alert::outbox::OutboxConfig::default(),
            limits: crate::core::limits::LimitDefaults::default(),
            webhooks: crate::notify::guard::AddressPolicy::default(),
            trusted_proxies: Vec::new(),
            http: crate::http::HttpLimits::default(),
            hold_deadlines: false,
            metrics_top_events: crate::core::ingest::counts::DEFAULT_TOP_EVENTS,
            database_url: None,
            elect_leader: false,
            installation: None,
        }
    }

    /// The external URL without a trailing slash.
    pub fn base_url(&self) -> &str {
        self.external_url.trim_end_matches('/')
    }

    /// What the core's services need of this configuration.
    pub fn services(&self) -> ServicesConfig {
        ServicesConfig {
            data_dir: self.data_dir.clone(),
            cache_bytes: self.cache_bytes,
            ping_history: self.ping_history as u64,
            outbox: self.outbox,
            limits: self.limits,
            hold_deadlines: self.hold_deadlines,
            top_events: self.metrics_top_events,
            database: self.database_url.clone(),
            installation: self
                .installation
                .clone()
                .unwrap_or_else(|| STANDALONE_INSTALLATION.to_string()),
            fence: if self.elect_leader && self.database_url.is_some() {
                crate::core::storage::Fence::follower()
            } else {
                crate::core::storage::Fence::sole()
            },
        }
    }
}
