//! Outbound alert delivery: email and webhooks.

pub mod email;
pub mod webhook;
