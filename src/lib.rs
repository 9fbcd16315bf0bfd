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

/// Limits glibc to two malloc arenas unless `MALLOC_ARENA_MAX` is set. With glibc's
/// default (up to eight per core) the storage and engine threads fragment memory enough to
/// add about 100 MB to a server with 100 000 monitors. The price is allocator contention:
/// durable ingest is about a quarter slower, so ingest-heavy installations with few
/// monitors may prefer `MALLOC_ARENA_MAX=8`.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only adjusts allocator parameters; called before other threads
        // start. An explicit MALLOC_ARENA_MAX (read by glibc itself) is left in force.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
