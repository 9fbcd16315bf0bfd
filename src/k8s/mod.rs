//! The Kubernetes front end: custom resource types, controllers that turn Applications and
//! Heartbeats into issued tokens and armed monitors, the status writer, and the Lease that
//! keeps it to one running instance.
//!
//! Map: [`operator`] assembles everything; [`reconcile`] holds the controllers' pipelines;
//! [`status`] computes and writes status; [`caches`] are the watch caches everything reads
//! from; [`secrets`] the token Secret rules; [`lease`] the reusable Lease lock;
//! [`instances`] detects other installations; [`orphans`] removes what vanished while the
//! operator was down; [`channels`] watches and resolves alert channels.

pub mod admin;
pub mod caches;
pub mod catalogue;
pub mod channels;
pub mod context;
pub mod crd;
pub mod cronjobs;
pub mod instances;
pub mod lease;
pub mod operator;
pub mod orphans;
pub mod reconcile;
pub mod secrets;
pub mod status;
#[cfg(test)]
pub mod testing;
pub mod transitions;
pub mod triggers;

pub use operator::{OperatorConfig, run};

use crate::server::ServerError;

/// The finalizer earlier versions put on both kinds. Deletion needs none now (the watch's
/// delete event and the orphan sweep clean up), so it is taken off wherever it is still
/// found: left on, it would hold an object's deletion once no version that knows it runs.
pub const LEGACY_FINALIZER: &str = "hartslag.dev/cleanup";

/// Errors of the operator.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The core failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// No usable kubeconfig or in-cluster configuration.
    #[error("cannot connect to Kubernetes: {0}")]
    Client(#[from] kube::Error),
    /// The Lease could not be taken.
    #[error(transparent)]
    Lease(#[from] lease::LeaseError),
    /// Another instance took the Lease while this one ran.
    #[error("stopped: {0}")]
    LeaseLost(String),
    /// The Lease was won but the database's leader row could not be taken over.
    #[error("cannot take over as the leader: {0}")]
    Promotion(String),
}
