//! Hartslag: event tracking and dead-man's-switch monitoring, run as a Kubernetes operator
//! or standalone from a directory of manifests.
//!
//! The core (`store`, `ingest`, `monitor`, `alert`, `registry`) knows nothing of Kubernetes;
//! the front ends (`k8s`, `standalone`) feed it definitions and read its state.

pub mod alert;
pub mod api;
pub mod config;
pub mod dashboard;
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

/// Limits glibc to two malloc arenas. With one arena per thread (glibc's default, up to
/// eight per core) the storage and engine threads fragment memory enough to double the
/// resident size of a server with 100 000 monitors; two arenas cost nothing measurable.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called before other threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
