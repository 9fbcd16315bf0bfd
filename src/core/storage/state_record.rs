//! A monitor's state record: what a backend may write in place of the whole record when a
//! round changed nothing but a monitor's state (a ping, a deadline, a Job's evidence)
//! ([`super::MonitorRound::put_state`]). Every backend encodes it the same way, so data
//! moves between them unchanged.
//!
//! The whole record holds the definition too (targets, token hash, ping hint, alerting
//! settings), a kilobyte or more; the state record holds [`MonitorState`] and the last
//! run's duration, as JSON (about 150 bytes for a monitor pinged on an interval), laid
//! over the whole record's state when both are read.

use serde::{Deserialize, Serialize};

use super::StorageError;
use crate::core::monitor::engine::Monitor;
use crate::core::monitor::state::MonitorState;

/// The state record as written, borrowing from the monitor.
#[derive(Serialize)]
struct StateRef<'a> {
    state: &'a MonitorState,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_run_ms: Option<u64>,
}

/// The state record as read.
#[derive(Deserialize)]
struct Stored {
    state: MonitorState,
    #[serde(default)]
    last_run_ms: Option<u64>,
}

/// `m`'s state record.
pub fn encode(m: &Monitor) -> Result<Vec<u8>, StorageError> {
    let record = StateRef {
        state: &m.state,
        last_run_ms: m.last_run_ms,
    };
    serde_json::to_vec(&record)
        .map_err(|e| StorageError::NotStored(format!("encoding a monitor's state: {e}")))
}

/// `m` with the state of the stored state record `v` in place of its own.
pub fn apply(m: &mut Monitor, v: &[u8]) -> Result<(), StorageError> {
    let stored: Stored = serde_json::from_slice(v).map_err(|e| StorageError::Corrupt {
        what: format!("state of monitor {}", m.def.key),
        detail: e.to_string(),
    })?;
    m.state = stored.state;
    m.last_run_ms = stored.last_run_ms;
    Ok(())
}
