//! CronJobs as the operator reads them, whichever version the API server serves:
//! `batch/v1` on current clusters, `batch/v1beta1` up to Kubernetes 1.24. The version is
//! discovered once at start; objects are read as dynamic objects and only the fields used
//! are taken from them, since the typed `batch/v1` CronJob refuses an object that says
//! `apiVersion: batch/v1beta1`.

use std::collections::BTreeMap;

use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Client, ResourceExt};

use crate::core::monitor::define::WatchedCronJob;
use crate::core::spec::CronJobSchedule;

/// Why no CronJob API could be found.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The server serves neither version.
    #[error("the API server serves CronJobs neither as batch/v1 nor as batch/v1beta1")]
    NotServed,
    /// Discovery failed.
    #[error("discovering the CronJob API: {0}")]
    Kube(#[from] kube::Error),
}

/// The CronJob resource the server offers: `batch/v1` where it has CronJobs, else
/// `batch/v1beta1`. (`kube::discovery`'s recommended kind looks only at the preferred
/// version, which on 1.20 is `batch/v1` without CronJobs.)
pub async fn discover(client: &Client) -> Result<ApiResource, DiscoveryError> {
    for version in ["v1", "v1beta1"] {
        match client
            .list_api_group_resources(&format!("batch/{version}"))
            .await
        {
            Ok(list) if list.resources.iter().any(|r| r.name == "cronjobs") => {
                let gvk = GroupVersionKind::gvk("batch", version, "CronJob");
                return Ok(ApiResource::from_gvk_with_plural(&gvk, "cronjobs"));
            }
            Ok(_) => continue,
            Err(kube::Error::Api(e)) if e.code == 404 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(DiscoveryError::NotServed)
}

/// What the operator needs of a CronJob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronJobView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Uid: its Jobs and the Heartbeat made from its annotations point to it.
    pub uid: String,
    /// `spec.schedule`.
    pub schedule: String,
    /// `spec.timeZone` (`batch/v1`, Kubernetes 1.25+).
    pub time_zone: Option<String>,
    /// `spec.suspend`.
    pub suspend: bool,
    /// The `hartslag.dev/` annotations (the others are never read).
    pub annotations: BTreeMap<String, String>,
}

impl CronJobView {
    /// Reads a CronJob of either version; `None` when it lacks a namespace, uid or
    /// schedule (which an object from the API server never does).
    pub fn read(obj: &DynamicObject) -> Option<Self> {
        let spec = obj.data.get("spec")?;
        Some(Self {
            namespace: obj.namespace()?,
            name: obj.name_any(),
            uid: obj.uid()?,
            schedule: spec.get("schedule")?.as_str()?.to_string(),
            time_zone: spec
                .get("timeZone")
                .and_then(|z| z.as_str())
                .filter(|z| !z.is_empty())
                .map(str::to_string),
            suspend: spec
                .get("suspend")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
            annotations: obj
                .annotations()
                .iter()
                .filter(|(k, _)| k.starts_with("hartslag.dev/"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    /// What a Heartbeat's `cronJobRef` learns from it.
    pub fn watched(&self) -> WatchedCronJob {
        WatchedCronJob {
            schedule: CronJobSchedule {
                schedule: self.schedule.clone(),
                time_zone: self.time_zone.clone(),
            },
            suspended: self.suspend,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_versions_read_alike() {
        for (api_version, zone) in [
            ("batch/v1beta1", None),
            ("batch/v1", Some("Europe/Amsterdam")),
        ] {
            let mut spec =
                serde_json::json!({"schedule": "*/5 * * * *", "suspend": true, "jobTemplate": {}});
            if let Some(z) = zone {
                spec["timeZone"] = serde_json::json!(z);
            }
            let obj: DynamicObject = serde_json::from_value(serde_json::json!({
                "apiVersion": api_version,
                "kind": "CronJob",
                "metadata": {
                    "name": "nightly", "namespace": "team", "uid": "u1",
                    "annotations": {"hartslag.dev/monitor": "true", "kubectl.kubernetes.io/last-applied-configuration": "{...}"}
                },
                "spec": spec,
            }))
            .unwrap();
            let v = CronJobView::read(&obj).unwrap();
            assert_eq!(
                (v.namespace.as_str(), v.name.as_str(), v.uid.as_str()),
                ("team", "nightly", "u1")
            );
            assert_eq!((v.schedule.as_str(), v.suspend), ("*/5 * * * *", true));
            assert_eq!(v.time_zone.as_deref(), zone);
            assert_eq!(v.annotations.len(), 1, "only ours are kept");
            assert!(v.watched().suspended);
        }
    }
}
