//! The HTTP adapters: the APIs and the dashboard.

pub mod api;
pub mod dashboard;
pub mod serve;
