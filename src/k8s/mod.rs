//! The Kubernetes front end: custom resource types, controllers that turn Applications and
//! Heartbeats into issued tokens and armed monitors, and the status writer.

pub mod admin;
pub mod catalogue;
pub mod crd;
pub mod reconcile;
pub mod secrets;
pub mod status;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::runtime::controller::Controller;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client};

use crate::config::ServerConfig;
use crate::core::Services;
use crate::core::metrics::MetricRegistry;
use crate::server::{Server, ServerError, shutdown_signal};
use crd::{Application, Heartbeat};

/// Finalizer on both kinds: deletion revokes the token and removes (or retains) data first.
pub const FINALIZER: &str = "hartslag.dev/cleanup";

/// Errors of the operator.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The core failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// No usable kubeconfig or in-cluster configuration.
    #[error("cannot connect to Kubernetes: {0}")]
    Client(#[from] kube::Error),
}

/// What the status writer needs to know about a resource.
#[derive(Debug, Clone)]
pub struct ResourceMeta {
    /// Secret holding the token.
    pub secret: String,
    /// Last reconciled generation.
    pub generation: Option<i64>,
    /// Its uid, for Events.
    pub uid: Option<String>,
}

/// The object an Event is about.
pub struct Regarding<'a> {
    /// Kind (`Application`, `Heartbeat`).
    pub kind: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// Uid, when known.
    pub uid: Option<String>,
}

/// Shared state of the controllers.
pub struct Context {
    /// The core's services.
    pub core: Services,
    /// The process configuration.
    pub config: ServerConfig,
    /// Kubernetes client.
    pub client: Client,
    /// Event recorder.
    pub recorder: Recorder,
    apps: RwLock<HashMap<String, ResourceMeta>>,
    heartbeats: RwLock<HashMap<String, ResourceMeta>>,
    tokens: RwLock<HashMap<String, String>>,
    /// Status patches sent.
    pub patches: AtomicU64,
    /// Time from a state transition to its status patch.
    pub status_lag: crate::core::metrics::Histogram,
    /// Serialises Heartbeat activation, so two new monitors cannot both take the last quota slot.
    pub activation: tokio::sync::Mutex<()>,
}

impl Context {
    /// A context over `core` and `client`.
    pub fn new(core: Services, config: ServerConfig, client: Client) -> Self {
        let reporter = Reporter {
            controller: "hartslag".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            core,
            config,
            client,
            apps: RwLock::default(),
            heartbeats: RwLock::default(),
            tokens: RwLock::default(),
            patches: AtomicU64::new(0),
            status_lag: crate::core::metrics::Histogram::default(),
            activation: tokio::sync::Mutex::new(()),
        }
    }

    /// Reconciled metadata of an Application.
    pub fn application_meta(&self, key: &str) -> Option<ResourceMeta> {
        self.apps
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Reconciled metadata of a Heartbeat.
    pub fn heartbeat_meta(&self, key: &str) -> Option<ResourceMeta> {
        self.heartbeats
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// A Heartbeat's ping token, as last read from its Secret.
    pub fn heartbeat_token(&self, key: &str) -> Option<String> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    fn set_app(&self, key: &str, meta: Option<ResourceMeta>) {
        let mut map = self.apps.write().unwrap_or_else(|p| p.into_inner());
        match meta {
            Some(m) => map.insert(key.to_string(), m),
            None => map.remove(key),
        };
    }

    fn set_heartbeat(&self, key: &str, meta: Option<ResourceMeta>, token: Option<String>) {
        let mut map = self.heartbeats.write().unwrap_or_else(|p| p.into_inner());
        let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        match meta {
            Some(m) => map.insert(key.to_string(), m),
            None => map.remove(key),
        };
        match token {
            Some(t) => tokens.insert(key.to_string(), t),
            None => tokens.remove(key),
        };
    }

    /// Publishes a Kubernetes Event about a resource; failures are logged, not fatal.
    pub async fn event(
        &self,
        about: Regarding<'_>,
        type_: EventType,
        reason: &str,
        note: String,
        action: &str,
    ) {
        let Regarding {
            kind,
            namespace,
            name,
            uid,
        } = about;
        let reference = ObjectReference {
            api_version: Some("hartslag.dev/v1alpha1".into()),
            kind: Some(kind.into()),
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            uid,
            ..Default::default()
        };
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            tracing::warn!(error = %e, %namespace, %name, reason, "cannot publish a Kubernetes Event");
        }
    }
}

async fn publish_transitions(ctx: Arc<Context>) {
    let mut changes = ctx.core.engine.subscribe();
    loop {
        let change = match changes.recv().await {
            Ok(c) => c,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    skipped = n,
                    "too many transitions at once; some Events were not published"
                );
                continue;
            }
            Err(_) => return,
        };
        tracing::debug!(monitor = %change.key, from = %change.from, to = %change.to, "transition");
        let Some(m) = ctx.core.engine.get(&change.key) else {
            continue;
        };
        if m.def.origin != crate::core::monitor::engine::Origin::Kubernetes {
            continue;
        }
        let uid = ctx.heartbeat_meta(&change.key).and_then(|h| h.uid);
        let warning = matches!(
            change.to,
            crate::core::monitor::state::State::Down | crate::core::monitor::state::State::Late
        );
        let note = match &change.reason {
            Some(r) => format!("{} → {}: {r}", change.from, change.to),
            None => format!("{} → {}", change.from, change.to),
        };
        ctx.event(
            Regarding {
                kind: "Heartbeat",
                namespace: &m.def.namespace,
                name: &m.def.name,
                uid,
            },
            if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            change.to.as_str(),
            note,
            "StateChange",
        )
        .await;
    }
}

/// Adds the status writer's families to `/metrics`.
fn register_metrics(registry: &mut MetricRegistry, ctx: &Arc<Context>) {
    registry.register_with_unit(
        "hartslag_status_lag",
        "Time from a Heartbeat state transition to its status patch",
        prometheus_client::registry::Unit::Seconds,
        ctx.status_lag.clone(),
    );
    registry.register_collector(Box::new(StatusPatches(ctx.clone())));
}

/// The `hartslag_status_patches_total` counter, read from the context at each scrape.
struct StatusPatches(Arc<Context>);

impl std::fmt::Debug for StatusPatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusPatches").finish_non_exhaustive()
    }
}

impl prometheus_client::collector::Collector for StatusPatches {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let patches = self.0.patches.load(std::sync::atomic::Ordering::Relaxed);
        let counter = prometheus_client::metrics::counter::ConstCounter::new(patches);
        counter.encode(encoder.encode_descriptor(
            "hartslag_status_patches",
            "Status patches sent to the API server.",
            None,
            counter.metric_type(),
        )?)
    }
}

/// Runs the controllers and the HTTP server until SIGTERM.
pub async fn run(
    config: ServerConfig,
    namespaces: Vec<String>,
    writer: status::WriterConfig,
    admin_secret: admin::AdminSecret,
) -> Result<(), OperatorError> {
    let mut server = Server::open(config)?;
    let client = Client::try_default().await?;
    let ctx = Arc::new(Context::new(
        server.core.clone(),
        server.config.clone(),
        client.clone(),
    ));
    server.set_catalogue(Arc::new(catalogue::KubernetesCatalogue::new(ctx.clone())));
    register_metrics(server.metrics(), &ctx);
    tokio::spawn(status::run_heartbeat_writer(ctx.clone(), writer));
    tokio::spawn(status::run_application_writer(ctx.clone(), writer));
    tokio::spawn(publish_transitions(ctx.clone()));
    server
        .core
        .spawn_retention(std::time::Duration::from_secs(3600));
    tokio::spawn(admin::keep_in_sync(
        Api::namespaced(client.clone(), &admin_secret.namespace),
        admin_secret.name.clone(),
        server.core.registry.clone(),
        std::time::Duration::from_secs(30),
    ));

    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    let secrets_cfg = watcher::Config::default().labels(&format!(
        "{}={}",
        secrets::MANAGED_BY.0,
        secrets::MANAGED_BY.1
    ));
    let mut controllers = Vec::new();
    for scope in scopes {
        let (apps, hbs, secs): (Api<Application>, Api<Heartbeat>, Api<Secret>) = match &scope {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        };
        tracing::info!(
            namespace = scope.as_deref().unwrap_or("<all>"),
            "watching Applications and Heartbeats"
        );
        let c = ctx.clone();
        controllers.push(tokio::spawn(
            Controller::new(apps, watcher::Config::default())
                .owns(secs.clone(), secrets_cfg.clone())
                .graceful_shutdown_on(shutdown_signal())
                .run(reconcile::application, reconcile::error_policy, c)
                .for_each(|r| async move {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "application reconcile");
                    }
                }),
        ));
        let c = ctx.clone();
        controllers.push(tokio::spawn(
            Controller::new(hbs, watcher::Config::default())
                .owns(secs, secrets_cfg.clone())
                .graceful_shutdown_on(shutdown_signal())
                .run(reconcile::heartbeat, reconcile::error_policy, c)
                .for_each(|r| async move {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "heartbeat reconcile");
                    }
                }),
        ));
    }
    let listener = server.bind().await?;
    server.serve(listener, shutdown_signal()).await?;
    for c in controllers {
        c.abort();
    }
    Ok(())
}
