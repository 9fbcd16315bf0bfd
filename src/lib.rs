//! Hartslag: event tracking and dead-man's-switch monitoring, run as a Kubernetes operator
//! or standalone from a directory of manifests.
//!
//! [`core`] is the domain (storage, ingest, monitors, alerts, definitions) and owns the
//! ports adapters implement; it knows nothing of Kubernetes or HTTP, and a test holds it to
//! that. Around it: the front ends ([`k8s`], [`standalone`]) feed it definitions, the HTTP
//! adapters ([`http`]) serve the APIs and the dashboard over it, [`notify`] carries its
//! alerts out, and [`server`] assembles them. `docs/ARCHITECTURE.md` draws the whole.

// The service never unwraps: a request, a file or the network must not be able to panic
// it. Tests may (clippy.toml allows it there).
#![deny(clippy::unwrap_used, clippy::expect_used)]
// The crate's documentation is for the people who work on it (`just docs` builds it with
// the private items): the module docs explain the design by linking to the private
// constants and modules that carry it, which only that build shows.
#![allow(rustdoc::private_intra_doc_links)]

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
