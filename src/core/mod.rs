//! The domain: storage, event ingest, heartbeat monitors, alerts, the registry of
//! definitions and the spec types. It knows nothing of Kubernetes or HTTP.

pub mod alert;
pub mod calendar;
pub mod catalogue;
pub mod channel;
pub mod cron;
pub mod duration;
pub mod files;
pub mod ingest;
pub mod latency;
pub mod leadership;
pub mod limits;
pub mod log_limit;
pub mod metrics;
pub mod migrate;
pub mod monitor;
pub mod registry;
pub mod replica;
pub mod rfc3339;
pub mod services;
pub mod spec;
pub mod storage;
pub mod store;
pub mod store_pg;
pub mod token;

pub use services::{Services, ServicesConfig, ServicesError};
