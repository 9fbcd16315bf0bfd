//! When a monitor notifies, as its Heartbeat says: after how many failures it is Down
//! (`failureThreshold`), the Heartbeat's own policy (which overrides its channels'), its
//! maintenance windows and its runbook. Carried in the monitor's definition.

use serde::{Deserialize, Serialize};

use crate::core::channel::{AlertPolicy, MaintenanceWindow};
use crate::core::spec::HeartbeatSpec;

/// A monitor's alerting settings, from its Heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct Alerting {
    /// Down only after this many consecutive failed runs or missed deadlines (at least 1).
    #[serde(default = "one")]
    pub failure_threshold: u32,
    /// The Heartbeat's (or its Application's) policy; unset fields take the channel's.
    #[serde(default)]
    pub policy: AlertPolicy,
    /// Windows without notifications.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maintenance: Vec<MaintenanceWindow>,
    /// A runbook for whoever is paged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runbook_url: Option<String>,
}

fn one() -> u32 {
    1
}

impl Default for Alerting {
    fn default() -> Self {
        Self {
            failure_threshold: 1,
            policy: AlertPolicy::default(),
            maintenance: Vec::new(),
            runbook_url: None,
        }
    }
}

impl Alerting {
    /// The settings `spec` asks for.
    pub fn of(spec: &HeartbeatSpec) -> Self {
        Self {
            failure_threshold: spec.failure_threshold().max(1),
            policy: spec
                .alerts
                .as_ref()
                .map(|a| a.policy.clone())
                .unwrap_or_default(),
            maintenance: spec.maintenance.clone(),
            runbook_url: spec.runbook_url.clone(),
        }
    }

    /// Nothing set: stored definitions leave the field out.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}
