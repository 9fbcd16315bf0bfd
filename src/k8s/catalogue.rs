//! Management-API writes in Kubernetes mode: the API is a facade over the custom
//! resources, which stay the single source of truth. A create makes a Heartbeat CR, updates
//! patch its spec, a delete deletes it; each call waits (bounded) until the controller has
//! reconciled the change, so the answer shows the new state.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::context::Context;
use super::crd::Heartbeat;
use crate::core::catalogue::{
    CatalogueError, CreateRequest, MonitorCatalogue, UpdateRequest, check_quota, slug,
    updated_cadence,
};
use crate::core::duration::SpecDuration;
use crate::core::monitor::engine::Monitor;
use crate::core::registry::{AppInfo, object_key};

/// How long an API call waits for the controller to reconcile its change.
const RECONCILE_WAIT: Duration = Duration::from_secs(15);

/// The Kubernetes [`MonitorCatalogue`]: Heartbeat resources are the source of truth.
pub struct KubernetesCatalogue {
    ctx: Arc<Context>,
}

impl KubernetesCatalogue {
    /// A catalogue over the controllers' context.
    pub fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }

    async fn wait<T>(
        &self,
        what: &str,
        mut check: impl FnMut() -> Option<T>,
    ) -> Result<T, CatalogueError> {
        let deadline = tokio::time::Instant::now() + RECONCILE_WAIT;
        loop {
            if let Some(v) = check() {
                return Ok(v);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CatalogueError::Unavailable(format!(
                    "the change was accepted but the operator has not {what} yet; retry the read shortly"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> CatalogueError {
    CatalogueError::Unavailable(e.to_string())
}

/// What an API client learns when the API server refused or failed a change: the kind of
/// failure in words of our own, never the API server's (they name the cluster's service
/// accounts, quotas, admission webhooks, policies and addresses). The whole error goes to
/// the log, where the cluster's operators look.
fn cluster_error(action: &str, namespace: &str, name: &str, e: &kube::Error) -> CatalogueError {
    tracing::warn!(
        namespace,
        heartbeat = name,
        error = %e,
        "the Kubernetes API server did not accept a management API {action}"
    );
    let details = "the operator's log has the details";
    match e {
        kube::Error::Api(s) if s.code == 403 && s.message.contains("exceeded quota") => {
            CatalogueError::Quota
        }
        // A quota the cluster has not counted yet (just created): the same request will
        // pass or meet the quota shortly.
        kube::Error::Api(s) if s.code == 403 && s.message.contains("status unknown for quota") => {
            CatalogueError::Unavailable(
                "the cluster is still counting a quota; retry shortly".into(),
            )
        }
        kube::Error::Api(s) if s.code == 403 => CatalogueError::Refused(format!(
            "the cluster does not allow this change (its access rules or admission policies refused it); {details}"
        )),
        kube::Error::Api(s) if s.code == 400 || s.code == 422 => CatalogueError::Refused(format!(
            "the cluster's validation refused this heartbeat; {details}"
        )),
        kube::Error::Api(s) if s.code == 409 => {
            CatalogueError::Unavailable("the heartbeat was changed at the same time; retry".into())
        }
        _ => CatalogueError::Unavailable(
            "the Kubernetes API server did not answer as expected; retry shortly".into(),
        ),
    }
}

impl MonitorCatalogue for KubernetesCatalogue {
    fn create<'a>(
        &'a self,
        app: &'a AppInfo,
        req: CreateRequest,
    ) -> BoxFuture<'a, Result<(Monitor, String), CatalogueError>> {
        Box::pin(async move {
            let core = &self.ctx.core;
            check_quota(&core.engine, app)?;
            let api: Api<Heartbeat> = Api::namespaced(self.ctx.client.clone(), &app.namespace);
            let base = slug(&req.name);
            let mut created = None;
            for n in 1..=50 {
                let name = if n == 1 {
                    base.clone()
                } else {
                    format!("{base}-{n}")
                };
                let hb: Heartbeat = serde_json::from_value(json!({
                    "apiVersion": "hartslag.dev/v1alpha1",
                    "kind": "Heartbeat",
                    "metadata": {"name": name, "namespace": app.namespace, "labels": {"app.kubernetes.io/managed-by": "hartslag-api"}},
                    "spec": req.heartbeat_spec(app),
                }))
                .map_err(unavailable)?;
                match api.create(&PostParams::default(), &hb).await {
                    Ok(_) => {
                        created = Some(name);
                        break;
                    }
                    Err(kube::Error::Api(s)) if s.code == 409 => continue,
                    Err(e) => return Err(cluster_error("create", &app.namespace, &name, &e)),
                }
            }
            let name =
                created.ok_or_else(|| unavailable("no free resource name for this heartbeat"))?;
            let key = object_key(&app.namespace, &name);
            self.wait("issued its token", || {
                let m = core.engine.get(&key)?;
                let t = self.ctx.heartbeat_token(&app.namespace, &name)?;
                Some((m, t))
            })
            .await
        })
    }

    fn update<'a>(
        &'a self,
        _app: &'a AppInfo,
        monitor: &'a Monitor,
        req: UpdateRequest,
    ) -> BoxFuture<'a, Result<Monitor, CatalogueError>> {
        Box::pin(async move {
            let mut spec = serde_json::Map::new();
            if let Some(n) = &req.name {
                spec.insert("displayName".into(), json!(n));
            }
            let (schedule, interval) = updated_cadence(&monitor.def, &req);
            if req.interval_secs.is_some() || req.schedule.is_some() {
                match &schedule {
                    Some(s) => {
                        spec.insert("schedule".into(), json!(s.expression()));
                        spec.insert("timeZone".into(), json!(s.zone()));
                        spec.insert("interval".into(), Value::Null);
                    }
                    None => {
                        spec.insert("schedule".into(), Value::Null);
                        spec.insert("timeZone".into(), Value::Null);
                        spec.insert(
                            "interval".into(),
                            json!(SpecDuration::from_secs(interval).to_string()),
                        );
                    }
                }
            }
            if let Some(g) = req.grace_secs {
                spec.insert(
                    "grace".into(),
                    json!(SpecDuration::from_secs(g).to_string()),
                );
            }
            if let Some(p) = req.paused {
                spec.insert("paused".into(), json!(p));
            }
            if spec.is_empty() {
                return Ok(monitor.clone());
            }
            let api: Api<Heartbeat> =
                Api::namespaced(self.ctx.client.clone(), monitor.def.namespace());
            api.patch(
                monitor.def.name(),
                &PatchParams::default(),
                &Patch::Merge(&json!({ "spec": spec })),
            )
            .await
            .map_err(|e| match e {
                kube::Error::Api(s) if s.code == 404 => CatalogueError::NotFound,
                other => cluster_error(
                    "update",
                    monitor.def.namespace(),
                    monitor.def.name(),
                    &other,
                ),
            })?;
            let key = monitor.def.key.clone();
            self.wait("applied the change", || {
                let m = self.ctx.core.engine.get(&key)?;
                let d = &m.def;
                let ok = req
                    .name
                    .as_ref()
                    .is_none_or(|n| d.display_name() == Some(n.as_str()))
                    && d.schedule == schedule
                    && d.interval_secs == interval
                    && req.grace_secs.is_none_or(|g| d.grace_secs == g)
                    && req.paused.is_none_or(|p| d.paused == p);
                ok.then_some(m)
            })
            .await
        })
    }

    fn delete<'a>(
        &'a self,
        _app: &'a AppInfo,
        monitor: &'a Monitor,
    ) -> BoxFuture<'a, Result<(), CatalogueError>> {
        Box::pin(async move {
            let api: Api<Heartbeat> =
                Api::namespaced(self.ctx.client.clone(), monitor.def.namespace());
            match api
                .delete(monitor.def.name(), &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => return Err(CatalogueError::NotFound),
                Err(e) => {
                    let d = &monitor.def;
                    return Err(cluster_error("delete", d.namespace(), d.name(), &e));
                }
            }
            let (key, d) = (monitor.def.key.clone(), &monitor.def);
            // Gone from the API server (the watch saw it go) and, by the clean-up that
            // the watch's delete event runs, from the engine.
            self.wait("removed it", || {
                let gone = self.ctx.core.engine.get(&key).is_none()
                    && self.ctx.caches.heartbeat(d.namespace(), d.name()).is_none();
                gone.then_some(())
            })
            .await
        })
    }

    fn tokens<'a>(&'a self, monitors: &'a [Monitor]) -> BoxFuture<'a, Vec<Option<String>>> {
        // Every replica reads the same Secrets.
        let tokens = monitors
            .iter()
            .map(|m| self.ctx.heartbeat_token(m.def.namespace(), m.def.name()))
            .collect();
        Box::pin(async move { tokens })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::limits::AppLimits;
    use crate::core::spec::ApplicationSpec;
    use crate::k8s::testing::{context, mock_client};

    fn app() -> AppInfo {
        let spec = ApplicationSpec::default();
        AppInfo {
            key: "shop/web".into(),
            num: 1,
            namespace: "shop".into(),
            name: "web".into(),
            limits: AppLimits::resolve(&spec, &Default::default()),
            ingest: None,
            counts: Default::default(),
            reads: Default::default(),
            spec,
            tz: jiff::tz::TimeZone::UTC,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_api_servers_own_words_never_reach_an_api_client() {
        let cases = [
            (
                403,
                "Forbidden",
                r#"heartbeats.hartslag.dev is forbidden: User "system:serviceaccount:ops:hs-hartslag" cannot create resource "heartbeats" in API group "hartslag.dev" in the namespace "shop""#,
                422,
            ),
            (
                403,
                "Forbidden",
                r#"heartbeats.hartslag.dev "nightly" is forbidden: exceeded quota: team-quota, requested: count/heartbeats.hartslag.dev=1, used: count/heartbeats.hartslag.dev=0, limited: count/heartbeats.hartslag.dev=0"#,
                402,
            ),
            (
                422,
                "Invalid",
                r#"admission webhook "policy.corp.internal" denied the request: team shop may not run jobs at night"#,
                422,
            ),
            (
                500,
                "InternalError",
                "etcdserver: request timed out, leader 10.0.3.17:2380",
                503,
            ),
        ];
        for (code, reason, message, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            let status = serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": reason, "code": code, "message": message,
            });
            let (client, _log) = mock_client(move |_| (code, status.clone()));
            let (ctx, _writers, _nudges) = context(dir.path(), client).await;
            let catalogue = KubernetesCatalogue::new(ctx);
            let req = CreateRequest {
                name: "nightly".into(),
                interval_secs: 3600,
                schedule: None,
                grace_secs: 300,
            };
            let Err(err) = catalogue.create(&app(), req).await else {
                panic!("{code} {reason}: created");
            };
            let (status, text) = match &err {
                CatalogueError::Quota => (402, err.to_string()),
                CatalogueError::Refused(m) => (422, m.clone()),
                CatalogueError::Unavailable(m) => (503, m.clone()),
                other => panic!("{code} {reason}: {other:?}"),
            };
            assert_eq!(status, want, "{code} {reason}: {text}");
            for word in [
                "system:",
                "serviceaccount",
                "quota:",
                "webhook",
                "policy.corp",
                "10.0.3.17",
                "etcd",
                message,
            ] {
                assert!(
                    !text.contains(word),
                    "{code} {reason}: the answer says {word:?}: {text}"
                );
            }
        }
    }
}
