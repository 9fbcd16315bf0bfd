//! Reconcilers: each turns one custom resource into an issued token (Secret), a definition
//! in the core and a first status; deletion (through the finalizer) revokes the token at
//! once and removes or retains the data as `deletionPolicy` says.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};

use super::crd::{Application, ApplicationStatus, Heartbeat, HeartbeatStatus};
use super::status::{condition, patch_status};
use super::{Context, FINALIZER, Regarding, ResourceMeta, secrets};
use crate::core::monitor::define::{DeclaredHeartbeat, ping_url};
use crate::core::monitor::engine::{MonitorDef, Origin};
use crate::core::registry::object_key;
use crate::core::spec::DeletionPolicy;
use crate::core::store::apps::TokenOwner;
use crate::core::token::TokenKind;

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The object has no namespace.
    #[error("object has no namespace")]
    NoNamespace,
    /// The API server failed.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// The Secret could not be ensured.
    #[error(transparent)]
    Secret(#[from] secrets::SecretError),
    /// The core refused.
    #[error("{0}")]
    Core(String),
    /// The finalizer helper failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
}

/// Retries failed reconciles after a short pause.
pub fn error_policy<K>(_obj: Arc<K>, error: &ReconcileError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(10))
}

fn owner<K: Resource<DynamicType = ()>>(obj: &K) -> Option<OwnerReference> {
    obj.controller_owner_ref(&())
}

fn core_err(e: impl std::fmt::Display) -> ReconcileError {
    ReconcileError::Core(e.to_string())
}

/// Reconciles an Application.
pub async fn application(
    obj: Arc<Application>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let ns = obj.namespace().ok_or(ReconcileError::NoNamespace)?;
    let api: Api<Application> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            Finalizer::Apply(app) => apply_application(app, &ctx, &ns).await,
            Finalizer::Cleanup(app) => {
                let purge = app.spec.spec.deletion_policy != Some(DeletionPolicy::Retain);
                ctx.core
                    .registry
                    .remove_application(&ns, &app.name_any(), purge)
                    .await
                    .map_err(core_err)?;
                ctx.set_app(&object_key(&ns, &app.name_any()), None);
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| ReconcileError::Finalizer(e.to_string()))
}

async fn invalid<K>(
    api: &Api<K>,
    name: &str,
    status: serde_json::Value,
) -> Result<Action, ReconcileError>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    patch_status(api, name, &status).await?;
    Ok(Action::requeue(Duration::from_secs(60)))
}

async fn apply_application(
    app: Arc<Application>,
    ctx: &Context,
    ns: &str,
) -> Result<Action, ReconcileError> {
    let name = app.name_any();
    let api: Api<Application> = Api::namespaced(ctx.client.clone(), ns);
    let spec = app.spec.spec.clone();
    let previous = app.status.clone().unwrap_or_default();
    let now = jiff::Timestamp::now();
    if let Err(e) = spec.validate() {
        let mut st: ApplicationStatus = previous.clone();
        st.conditions = vec![condition(
            &previous.conditions,
            "Ready",
            false,
            "InvalidSpec",
            e.to_string(),
            app.metadata.generation,
            now,
        )];
        return invalid(&api, &name, serde_json::to_value(&st).map_err(core_err)?).await;
    }
    let secret_name = spec
        .token_secret_name
        .clone()
        .unwrap_or_else(|| format!("{name}-hartslag-token"));
    let secrets_api = Api::namespaced(ctx.client.clone(), ns);
    let Some(owner_ref) = owner(app.as_ref()) else {
        return Err(core_err("object has no uid yet"));
    };
    let ensured = secrets::ensure(
        &secrets_api,
        &secret_name,
        owner_ref,
        TokenKind::Application,
        |_| None,
    )
    .await?;
    ctx.core
        .registry
        .upsert_application(ns, &name, spec, ensured.token.hash())
        .await
        .map_err(core_err)?;
    let key = object_key(ns, &name);
    ctx.set_app(
        &key,
        Some(ResourceMeta {
            secret: secret_name.clone(),
            generation: app.metadata.generation,
            uid: app.metadata.uid.clone(),
        }),
    );
    if ensured.issued || ensured.adopted {
        let note = if ensured.adopted {
            format!("using the token in Secret {secret_name} (created by you)")
        } else {
            format!("issued an API token into Secret {secret_name}")
        };
        ctx.event(
            Regarding {
                kind: "Application",
                namespace: ns,
                name: &name,
                uid: app.metadata.uid.clone(),
            },
            EventType::Normal,
            "TokenIssued",
            note,
            "IssueToken",
        )
        .await;
    }
    if previous.observed_generation != app.metadata.generation
        || previous.token_secret_name.as_deref() != Some(&secret_name)
    {
        let mut st = previous.clone();
        st.token_secret_name = Some(secret_name);
        st.observed_generation = app.metadata.generation;
        st.conditions = vec![condition(
            &previous.conditions,
            "Ready",
            true,
            "TokenIssued",
            "token issued; events are accepted".into(),
            app.metadata.generation,
            now,
        )];
        patch_status(&api, &name, &st).await?;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// Reconciles a Heartbeat.
pub async fn heartbeat(obj: Arc<Heartbeat>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let ns = obj.namespace().ok_or(ReconcileError::NoNamespace)?;
    let api: Api<Heartbeat> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            Finalizer::Apply(hb) => apply_heartbeat(hb, &ctx, &ns).await,
            Finalizer::Cleanup(hb) => {
                let key = object_key(&ns, &hb.name_any());
                if let Some(m) = ctx.core.engine.get(&key) {
                    ctx.core
                        .registry
                        .remove_token(m.def.token)
                        .await
                        .map_err(core_err)?;
                    ctx.core.engine.remove(&key).await.map_err(core_err)?;
                }
                ctx.set_heartbeat(&key, None, None);
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| ReconcileError::Finalizer(e.to_string()))
}

async fn deactivate(ctx: &Context, key: &str) -> Result<(), ReconcileError> {
    if let Some(m) = ctx.core.engine.get(key) {
        ctx.core
            .registry
            .remove_token(m.def.token)
            .await
            .map_err(core_err)?;
        ctx.core.engine.remove(key).await.map_err(core_err)?;
    }
    Ok(())
}

async fn apply_heartbeat(
    hb: Arc<Heartbeat>,
    ctx: &Context,
    ns: &str,
) -> Result<Action, ReconcileError> {
    let name = hb.name_any();
    let key = object_key(ns, &name);
    let api: Api<Heartbeat> = Api::namespaced(ctx.client.clone(), ns);
    let spec = hb.spec.spec.clone();
    let previous: HeartbeatStatus = hb.status.clone().unwrap_or_default();
    let now = jiff::Timestamp::now();
    let not_ready = |reason: &str, message: String| {
        let mut st = previous.clone();
        st.state = None;
        st.observed_generation = hb.metadata.generation;
        st.conditions = vec![condition(
            &previous.conditions,
            "Ready",
            false,
            reason,
            message,
            hb.metadata.generation,
            now,
        )];
        st
    };
    if let Err(e) = spec.validate_with_min_interval(ctx.config.min_interval) {
        deactivate(ctx, &key).await?;
        return invalid(
            &api,
            &name,
            serde_json::to_value(not_ready("InvalidSpec", e.to_string())).map_err(core_err)?,
        )
        .await;
    }
    let app = match &spec.application_ref {
        Some(r) => match ctx.core.registry.application(&object_key(ns, &r.name)) {
            Some(a) => Some(a),
            None => {
                let st = not_ready(
                    "ApplicationNotFound",
                    format!(
                        "Application {} does not exist in namespace {ns} (yet)",
                        r.name
                    ),
                );
                patch_status(&api, &name, &st).await?;
                return Ok(Action::requeue(Duration::from_secs(2)));
            }
        },
        None => None,
    };
    let _activation = ctx.activation.lock().await;
    if let Some(app) = &app
        && let Some(limit) = app.spec.limits.as_ref().and_then(|l| l.heartbeats)
    {
        let others = ctx.core.engine.count_for_application(&app.key, Some(&key));
        if others >= limit as usize {
            deactivate(ctx, &key).await?;
            let msg = format!(
                "Application {} may own {limit} Heartbeats and already owns {others}; this one is not activated",
                app.name
            );
            let st = not_ready("QuotaExceeded", msg);
            patch_status(&api, &name, &st).await?;
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
    }
    let secret_name = spec
        .token_secret_name
        .clone()
        .unwrap_or_else(|| format!("{name}-heartbeat"));
    let secrets_api = Api::namespaced(ctx.client.clone(), ns);
    let Some(owner_ref) = owner(hb.as_ref()) else {
        return Err(core_err("object has no uid yet"));
    };
    let base = ctx.config.base_url().to_string();
    let ensured = secrets::ensure(
        &secrets_api,
        &secret_name,
        owner_ref,
        TokenKind::Heartbeat,
        |t| Some(ping_url(&base, t.expose())),
    )
    .await?;
    let existing = ctx.core.engine.get(&key);
    ctx.core
        .registry
        .put_token(
            ensured.token.hash(),
            TokenOwner {
                kind: TokenKind::Heartbeat,
                key: key.clone(),
            },
            existing.as_ref().map(|m| m.def.token),
        )
        .await
        .map_err(core_err)?;
    let def = DeclaredHeartbeat {
        namespace: ns,
        name: &name,
        spec: &spec,
        application: app.as_deref(),
        token: ensured.token.hash(),
        ping_hint: format!(
            "curl -fsS -m 10 --retry 3 \"$PING_URL\" (the ping URL is key ping-url of Secret {ns}/{secret_name})"
        ),
        origin: Origin::Kubernetes,
        id: hb.metadata.uid.clone().unwrap_or_else(|| key.clone()),
    }
    .monitor_def(
        existing.as_ref().map(|m| &m.def),
        ctx.config.webhook_url.as_deref(),
        now,
    );
    let changed = existing.as_ref().is_none_or(|m| {
        MonitorDef {
            updated_at: m.def.updated_at,
            ..def.clone()
        } != m.def
    });
    let monitor = if changed {
        ctx.core
            .engine
            .upsert(MonitorDef {
                updated_at: now,
                ..def
            })
            .await
            .map_err(core_err)?
    } else {
        existing
            .clone()
            .ok_or_else(|| core_err("monitor vanished"))?
    };
    ctx.set_heartbeat(
        &key,
        Some(ResourceMeta {
            secret: secret_name.clone(),
            generation: hb.metadata.generation,
            uid: hb.metadata.uid.clone(),
        }),
        Some(ensured.token.expose().to_string()),
    );
    if ensured.issued || ensured.adopted {
        let note = if ensured.adopted {
            format!("using the token in Secret {secret_name} (created by you)")
        } else {
            format!("issued a ping token and URL into Secret {secret_name}")
        };
        ctx.event(
            Regarding {
                kind: "Heartbeat",
                namespace: ns,
                name: &name,
                uid: hb.metadata.uid.clone(),
            },
            EventType::Normal,
            "TokenIssued",
            note,
            "IssueToken",
        )
        .await;
    }
    let desired = super::status::heartbeat_status(
        &monitor,
        &previous,
        &secret_name,
        hb.metadata.generation,
        now,
    );
    if desired != previous {
        patch_status(&api, &name, &desired).await?;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}
