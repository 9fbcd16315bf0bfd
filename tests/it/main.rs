//! Every integration test in one binary (one link step instead of one per file), with one
//! module of shared helpers. Tests that need a cluster are `#[ignore]`d; `tests/run-all.sh`
//! passes `--include-ignored`.

mod helpers;

mod boundary;

mod alerting;
mod chart;
mod crds;
mod dashboard;
mod dashboard_browser;
mod durability;
mod events_api;
mod examples;
mod image;
mod management_api;
mod monitors;
mod operator_e2e;
mod schedules;
