//! The `AlertChannel` (namespaced) and `ClusterAlertChannel` (cluster-scoped) custom
//! resources: one spec type, [`AlertChannelSpec`], shared with standalone manifests.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::core::channel::AlertChannelSpec;

/// Where a Heartbeat's alerts go when it names this channel in `spec.alerts.channels`.
#[allow(clippy::duplicated_attributes)] // kube-derive takes one `printcolumn` per column.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "hartslag.dev",
    version = "v1alpha1",
    kind = "AlertChannel",
    namespaced,
    status = "AlertChannelStatus",
    shortname = "hsch",
    category = "hartslag",
    doc = "An AlertChannel is one alert target (Alertmanager, PagerDuty, Slack, Teams, a webhook or email) with its policy; Heartbeats in its namespace name it in spec.alerts.channels. Secrets it names are read from its namespace and must carry the label hartslag.dev/channel-secret.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Target resolved (its Secret found) and usable"
    ),
    printcolumn(
        name = "Last Delivery",
        type_ = "date",
        json_path = ".status.lastDeliveryAt"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[schemars(transform = super::schema::channel_spec)]
pub struct AlertChannelResourceSpec {
    /// The channel's target and policy.
    #[serde(flatten)]
    pub spec: AlertChannelSpec,
}

/// A channel for Heartbeats in every namespace (an `AlertChannel` of the same name in the
/// Heartbeat's namespace wins).
#[allow(clippy::duplicated_attributes)] // kube-derive takes one `printcolumn` per column.
#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "hartslag.dev",
    version = "v1alpha1",
    kind = "ClusterAlertChannel",
    status = "AlertChannelStatus",
    shortname = "hscch",
    category = "hartslag",
    doc = "A ClusterAlertChannel is an alert target any Heartbeat in the cluster may name in spec.alerts.channels; Secrets it refers to are read from the operator's namespace and must carry the label hartslag.dev/channel-secret.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Target resolved (its Secret found) and usable"
    ),
    printcolumn(
        name = "Last Delivery",
        type_ = "date",
        json_path = ".status.lastDeliveryAt"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[schemars(transform = super::schema::channel_spec)]
pub struct ClusterAlertChannelResourceSpec {
    /// The channel's target and policy.
    #[serde(flatten)]
    pub spec: AlertChannelSpec,
}

/// Observed state of a channel, written by the operator.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertChannelStatus {
    /// `Ready`: the target is valid and its Secrets resolved (reasons when not:
    /// `SecretNotFound`, `SecretKeyNotFound`, `SecretInvalid`, `Invalid`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// When a notice was last accepted by the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_delivery_at: Option<String>,
    /// The last delivery error, as the target answered (no secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When that error happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<String>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
