//! Hartslag: event tracking and dead-man's-switch monitoring, run as a Kubernetes operator
//! or standalone from a directory of manifests.
//!
//! The core (`store`, `ingest`, `monitor`, `alert`, `registry`) knows nothing of Kubernetes;
//! the front ends (`k8s`, `standalone`) feed it definitions and read its state.

pub mod alert;
pub mod api;
pub mod config;
pub mod duration;
pub mod ingest;
pub mod k8s;
pub mod metrics;
pub mod monitor;
pub mod registry;
pub mod server;
pub mod spec;
pub mod standalone;
pub mod store;
pub mod token;
