//! The `Application`, `Heartbeat`, `AlertChannel` and `ClusterAlertChannel` custom resources
//! (`hartslag.dev/v1alpha1`).
//!
//! The specs are the core's own types (`crate::core::spec`), flattened into the resource, so a
//! manifest that works in standalone mode works with kubectl unchanged; only the status
//! types are Kubernetes-specific.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::core::spec::{ApplicationSpec, HeartbeatSpec};

mod channel;
mod schema;

pub use channel::{
    AlertChannel, AlertChannelResourceSpec, AlertChannelStatus, ClusterAlertChannel,
    ClusterAlertChannelResourceSpec,
};

/// Settings of an Application: time zone for stats, retention of raw events, alert defaults for its Heartbeats, quotas and the token Secret.
#[allow(clippy::duplicated_attributes)] // kube-derive takes one `printcolumn` per column.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "hartslag.dev",
    version = "v1alpha1",
    kind = "Application",
    namespaced,
    status = "ApplicationStatus",
    shortname = "hsapp",
    category = "hartslag",
    doc = "An Application sends events to Hartslag with its own API token (issued into a Secret) and owns Heartbeat monitors.",
    printcolumn(
        name = "Today",
        type_ = "integer",
        json_path = ".status.today.count",
        description = "Events today in the Application's time zone"
    ),
    printcolumn(
        name = "Week",
        type_ = "integer",
        json_path = ".status.week.count",
        description = "Events this ISO week"
    ),
    printcolumn(
        name = "Total",
        type_ = "integer",
        json_path = ".status.total.count",
        description = "Events ever stored"
    ),
    printcolumn(name = "Last Event", type_ = "date", json_path = ".status.lastEventAt"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Token issued and events accepted"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[schemars(transform = schema::application_spec)]
pub struct ApplicationResourceSpec {
    /// The Application's settings.
    #[serde(flatten)]
    pub spec: ApplicationSpec,
}

/// Settings of a Heartbeat monitor: expected interval between pings, grace before it is Down, pause, alert targets, owning Application and the token Secret.
#[allow(clippy::duplicated_attributes)] // kube-derive takes one `printcolumn` per column.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "hartslag.dev",
    version = "v1alpha1",
    kind = "Heartbeat",
    namespaced,
    status = "HeartbeatStatus",
    shortname = "hb",
    category = "hartslag",
    doc = "A Heartbeat is a dead-man's switch: a job pings its URL after every successful run; when pings stop for longer than interval plus grace it goes Down and alerts.",
    printcolumn(
        name = "State",
        type_ = "string",
        json_path = ".status.state",
        description = "New, Up, Started, Late, Down or Paused"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Token issued and monitor armed"
    ),
    printcolumn(name = "Last Ping", type_ = "date", json_path = ".status.lastPingAt"),
    // A date column shows a future time as "<invalid>", so the deadline is shown as written.
    printcolumn(
        name = "Next Due",
        type_ = "string",
        json_path = ".status.nextDueAt",
        description = "When the next ping is due (UTC)"
    ),
    printcolumn(name = "Interval", type_ = "string", json_path = ".spec.interval"),
    printcolumn(
        name = "Schedule",
        type_ = "string",
        json_path = ".spec.schedule",
        description = "Cron schedule (a cronJobRef without one follows its CronJob's)"
    ),
    printcolumn(
        name = "CronJob",
        type_ = "string",
        json_path = ".spec.cronJobRef.name",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[schemars(transform = schema::heartbeat_spec)]
pub struct HeartbeatResourceSpec {
    /// The monitor's settings.
    #[serde(flatten)]
    pub spec: HeartbeatSpec,
}

/// A count and a weight sum, as shown in status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TallyStatus {
    /// Number of events.
    pub count: i64,
    /// Sum of their weights (saturating at the 64-bit range).
    pub weight: i64,
}

/// Counts for one event name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventTotal {
    /// Event name.
    pub event: String,
    /// Events ever stored under this name.
    pub count: i64,
    /// Their weight sum.
    pub weight: i64,
}

/// Observed state of an Application, written by the operator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationStatus {
    /// Events today in the Application's time zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub today: Option<TallyStatus>,
    /// Events this ISO week (Monday first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub week: Option<TallyStatus>,
    /// Events this month.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub month: Option<TallyStatus>,
    /// Events ever stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<TallyStatus>,
    /// Time of the newest event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_at: Option<String>,
    /// The most frequent event names (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_events: Vec<EventTotal>,
    /// Secret holding the API token (key `token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_name: Option<String>,
    /// `Ready`: the token is issued and events are accepted; `OperatorConflict` while another
    /// operator instance also watches the namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// New, Up, Started, Late, Down or Paused; absent while the Heartbeat is not Ready (not
/// monitored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum HeartbeatState {
    /// Created, never pinged.
    New,
    /// Pinged on time.
    Up,
    /// A run signalled start and has not finished.
    Started,
    /// Past its deadline, within grace.
    Late,
    /// Past deadline plus grace, timed out or reported failure.
    Down,
    /// Paused: records pings, never alerts.
    Paused,
}

/// Observed state of a Heartbeat, written by the operator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatStatus {
    /// New, Up, Started, Late, Down or Paused; absent while the Heartbeat is not Ready
    /// (not monitored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<HeartbeatState>,
    /// Time of the last ping, refreshed with every state change and otherwise once it is
    /// more than interval plus grace (and at least the status period) behind: exact times
    /// are on the dashboard and the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ping_at: Option<String>,
    /// When the next ping is due: the deadline set by `lastPingAt` (it plus interval, or
    /// the next scheduled time); while Down, the next one after now in that rhythm. Absent
    /// while Paused, and while an interval Heartbeat is New.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_due_at: Option<String>,
    /// Whole intervals missed since the deadline while Down.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub consecutive_misses: u64,
    /// Pings received, refreshed together with `lastPingAt`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pings: u64,
    /// Time of the last Down alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_alert_at: Option<String>,
    /// Secret holding the token and ping URL (keys `token`, `ping-url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_name: Option<String>,
    /// `Ready` (token issued, monitor armed), `Up` (True while Up, for
    /// `kubectl wait --for=condition=Up`) and `OperatorConflict` while another operator
    /// instance also watches the namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Every CustomResourceDefinition as a multi-document YAML stream (`hartslag crd`).
pub fn crds_yaml() -> Result<String, serde_saphyr::ser_error::Error> {
    use kube::CustomResourceExt;
    let mut out = String::new();
    for crd in [
        Application::crd(),
        Heartbeat::crd(),
        AlertChannel::crd(),
        ClusterAlertChannel::crd(),
    ] {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}
