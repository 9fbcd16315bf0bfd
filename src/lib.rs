//! Hartslag: event tracking and dead-man's-switch monitoring, run as a Kubernetes operator
//! or standalone from a directory of manifests.
//!
//! The core (`store`, `ingest`, `monitor`, `alert`, `registry`) knows nothing of Kubernetes;
//! the front ends (`k8s`, `standalone`) feed it definitions and read its state.

pub mod config;
pub mod core;
pub mod http;
pub mod k8s;
pub mod notify;
pub mod server;
pub mod standalone;

/// jemalloc instead of the system allocator. The storage, engine and HTTP threads
/// allocate from each other's memory all the time; glibc's arenas either contended for it
/// (ingest ran at about half speed) or fragmented it (about 100 MB more resident with
/// 100 000 monitors). jemalloc's per-thread caches avoid both.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
