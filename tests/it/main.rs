//! Every integration test in one binary (one link step instead of one per file), with one
//! module of shared helpers. Tests that need a cluster are ignored, each with the reason
//! and how to run it; `tests/run-all.sh` passes `--include-ignored`.

mod helpers;
mod pg;

mod alert_closing;
mod alert_content;
mod alert_delivery;
mod alerting;
mod big_export;
mod boundary;
mod channels;
mod chart;
mod command_line;
mod crds;
mod dashboard;
mod dashboard_browser;
mod durability;
mod events_api;
mod examples;
mod hostile_input;
mod image;
mod management_api;
mod monitors;
mod operator_e2e;
mod pg_failover;
mod pg_follower;
mod pg_leader;
mod pg_migrate;
mod pg_relay;
mod pg_replicas;
mod pg_schema;
mod properties;
mod schedules;
mod secrets;
mod slow_clients;
mod storage_port;
mod tenant_limits;
mod webhook_ssrf;
