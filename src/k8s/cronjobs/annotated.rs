//! Heartbeats made from CronJob annotations: `hartslag.dev/monitor: "true"` creates a
//! Heartbeat of the CronJob's name with `cronJobRef`, owned by the CronJob (so it goes when
//! the CronJob goes); the other annotations fill its fields ([`super::annotations`]).
//! Editing them updates the Heartbeat, removing the monitor annotation deletes it. A
//! Heartbeat of that name that the CronJob does not own was made by someone else: it is
//! never touched, and a Warning Event on the CronJob says why nothing happens.
//!
//! The Heartbeat is written by server-side apply as its own field manager, so fields a
//! person adds to it by hand stay, and only what changed is sent: each CronJob's last
//! outcome is remembered, so its many status updates cost no request.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use super::annotations::{self, AnnotationError};
use super::view::CronJobView;
use crate::core::spec::HeartbeatSpec;
use crate::k8s::context::Context;
use crate::k8s::crd::Heartbeat;

/// Field manager of the Heartbeats made from annotations.
pub const MANAGER: &str = "hartslag-cronjob";

/// Label on a Heartbeat made from a CronJob's annotations, naming the CronJob.
pub const FROM_LABEL: &str = "hartslag.dev/cronjob";

/// What was last done for each CronJob (by uid), so an unchanged CronJob costs nothing.
#[derive(Debug, Default)]
pub struct Outcomes(Mutex<HashMap<String, String>>);

impl Outcomes {
    /// Records `outcome` for `uid`; false when it was the last one already.
    fn changed(&self, uid: &str, outcome: String) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(uid.to_string(), outcome.clone()).as_ref() != Some(&outcome)
    }

    /// Forgets `uid`, so the next look does the work again (after a failed request).
    fn forget(&self, uid: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(uid);
    }
}

/// What the annotations of a CronJob ask for, against the Heartbeat of its name.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Nothing to do.
    Nothing,
    /// Create or update the Heartbeat to this spec.
    Apply(Box<HeartbeatSpec>),
    /// Delete the Heartbeat the CronJob owns (its monitor annotation is gone).
    Delete,
    /// A Heartbeat of that name exists that the CronJob does not own: leave it.
    NotOurs,
    /// An annotation cannot be read.
    Invalid(AnnotationError),
}

/// Whether `hb` was made from the annotations of the CronJob with uid `uid`.
pub fn owned_by(hb: &Heartbeat, uid: &str) -> bool {
    hb.owner_references()
        .iter()
        .any(|o| o.kind == "CronJob" && o.uid == uid && o.controller == Some(true))
}

/// The plan for `cron_job` given the Heartbeat of its name, if any (pure).
pub fn plan(cron_job: &CronJobView, existing: Option<&Heartbeat>) -> Plan {
    let ours = existing.is_some_and(|hb| owned_by(hb, &cron_job.uid));
    match annotations::wanted(&cron_job.name, &cron_job.annotations) {
        Err(e) => Plan::Invalid(e),
        Ok(None) if ours => Plan::Delete,
        Ok(None) => Plan::Nothing,
        Ok(Some(_)) if existing.is_some() && !ours => Plan::NotOurs,
        Ok(Some(spec)) => Plan::Apply(Box::new(spec)),
    }
}

/// The Heartbeat to apply for `cron_job`: its spec, owned by the CronJob (`api_version`
/// is the version of the CronJob API served).
pub fn heartbeat_body(
    cron_job: &CronJobView,
    api_version: &str,
    spec: &HeartbeatSpec,
) -> serde_json::Value {
    let mut spec = serde_json::to_value(spec).unwrap_or_default();
    drop_nulls(&mut spec);
    serde_json::json!({
        "apiVersion": "hartslag.dev/v1alpha1",
        "kind": "Heartbeat",
        "metadata": {
            "name": cron_job.name,
            "namespace": cron_job.namespace,
            "labels": { FROM_LABEL: cron_job.name },
            "ownerReferences": [{
                "apiVersion": api_version,
                "kind": "CronJob",
                "name": cron_job.name,
                "uid": cron_job.uid,
                "controller": true,
            }],
        },
        "spec": spec,
    })
}

/// Removes `null` members, which server-side apply would read as "this manager sets the
/// field to null" rather than "this manager has no opinion".
fn drop_nulls(v: &mut serde_json::Value) {
    if let serde_json::Value::Object(map) = v {
        map.retain(|_, m| !m.is_null());
        map.values_mut().for_each(drop_nulls);
    }
}

fn reference(cron_job: &CronJobView, api_version: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some("CronJob".into()),
        namespace: Some(cron_job.namespace.clone()),
        name: Some(cron_job.name.clone()),
        uid: Some(cron_job.uid.clone()),
        ..Default::default()
    }
}

/// Brings the Heartbeat of `cron_job` in line with its annotations.
pub async fn sync(ctx: &Context, cron_job: &CronJobView) {
    let Some(api_version) = ctx.cron_jobs.api_version() else {
        return;
    };
    let existing = ctx.caches.heartbeat(&cron_job.namespace, &cron_job.name);
    let plan = plan(cron_job, existing.as_deref());
    let outcome = format!("{plan:?}");
    if plan == Plan::Nothing || !ctx.cron_jobs.outcomes.changed(&cron_job.uid, outcome) {
        return;
    }
    let api: Api<Heartbeat> = Api::namespaced(ctx.client.clone(), &cron_job.namespace);
    let at = reference(cron_job, &api_version);
    let done = match plan {
        Plan::Nothing => Ok(()),
        Plan::Apply(spec) => {
            let body = heartbeat_body(cron_job, &api_version, &spec);
            let params = PatchParams::apply(MANAGER).force();
            api.patch(&cron_job.name, &params, &Patch::Apply(&body))
                .await
                .map(|_| ())
        }
        Plan::Delete => api
            .delete(&cron_job.name, &DeleteParams::default())
            .await
            .map(|_| ()),
        Plan::NotOurs => {
            let note = format!(
                "Heartbeat {}/{} exists and was not made from this CronJob's annotations; it is left as it is. Rename or delete it, or remove the hartslag.dev/monitor annotation",
                cron_job.namespace, cron_job.name
            );
            ctx.event_on(&at, EventType::Warning, "HeartbeatExists", note, "Monitor")
                .await;
            Ok(())
        }
        Plan::Invalid(e) => {
            let note = format!("{e}; the Heartbeat made from this CronJob is not changed");
            ctx.event_on(
                &at,
                EventType::Warning,
                "InvalidAnnotation",
                note,
                "Monitor",
            )
            .await;
            Ok(())
        }
    };
    if let Err(e) = done {
        tracing::warn!(error = %e, cronjob = %format!("{}/{}", cron_job.namespace, cron_job.name), "cannot apply the Heartbeat the CronJob's annotations ask for");
        ctx.cron_jobs.outcomes.forget(&cron_job.uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn cron_job(annotations: &[(&str, &str)]) -> CronJobView {
        CronJobView {
            namespace: "team".into(),
            name: "nightly".into(),
            uid: "cj-uid".into(),
            schedule: "0 3 * * *".into(),
            time_zone: None,
            suspend: false,
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn heartbeat(owner_uid: Option<&str>) -> Heartbeat {
        let mut hb: Heartbeat = serde_json::from_value(serde_json::json!({
            "apiVersion": "hartslag.dev/v1alpha1", "kind": "Heartbeat",
            "metadata": {"name": "nightly", "namespace": "team"},
            "spec": {"cronJobRef": {"name": "nightly"}}
        }))
        .unwrap();
        if let Some(uid) = owner_uid {
            hb.metadata.owner_references = Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "batch/v1".into(),
                    kind: "CronJob".into(),
                    name: "nightly".into(),
                    uid: uid.into(),
                    controller: Some(true),
                    ..Default::default()
                },
            ]);
        }
        hb
    }

    #[test]
    fn plans_follow_the_annotations_and_never_take_a_hand_made_heartbeat() {
        let on = cron_job(&[(annotations::MONITOR, "true"), (annotations::GRACE, "10m")]);
        let off = cron_job(&[]);
        let ours = heartbeat(Some("cj-uid"));
        let theirs = heartbeat(None);
        let other_cron_job = heartbeat(Some("older-uid"));
        let Plan::Apply(spec) = plan(&on, None) else {
            panic!("a new Heartbeat")
        };
        assert_eq!(spec.cron_job_ref.unwrap().name, "nightly");
        assert!(matches!(plan(&on, Some(&ours)), Plan::Apply(_)));
        assert_eq!(plan(&on, Some(&theirs)), Plan::NotOurs);
        assert_eq!(plan(&on, Some(&other_cron_job)), Plan::NotOurs);
        assert_eq!(plan(&off, Some(&ours)), Plan::Delete);
        assert_eq!(plan(&off, Some(&theirs)), Plan::Nothing);
        assert_eq!(plan(&off, None), Plan::Nothing);
        let bad = cron_job(&[(annotations::MONITOR, "true"), (annotations::GRACE, "soon")]);
        assert!(
            matches!(plan(&bad, Some(&ours)), Plan::Invalid(e) if e.annotation == annotations::GRACE)
        );
    }

    #[test]
    fn the_body_is_owned_by_the_cron_job_and_has_no_nulls() {
        let on = cron_job(&[(annotations::MONITOR, "true")]);
        let Plan::Apply(spec) = plan(&on, None) else {
            panic!()
        };
        let body = heartbeat_body(&on, "batch/v1beta1", &spec);
        let owner = &body["metadata"]["ownerReferences"][0];
        assert_eq!(owner["apiVersion"], "batch/v1beta1");
        assert_eq!(owner["uid"], "cj-uid");
        assert_eq!(owner["controller"], true);
        assert_eq!(body["spec"]["cronJobRef"]["name"], "nightly");
        assert!(!body.to_string().contains("null"), "{body}");
        let hb: Heartbeat = serde_json::from_value(body).unwrap();
        assert!(owned_by(&hb, "cj-uid"));
    }

    #[test]
    fn an_unchanged_outcome_is_not_redone() {
        let o = Outcomes::default();
        assert!(o.changed("u", "Apply".into()));
        assert!(!o.changed("u", "Apply".into()));
        o.forget("u");
        assert!(o.changed("u", "Apply".into()));
    }
}
