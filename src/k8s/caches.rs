//! Watch caches: the live Applications, Heartbeats and token Secrets of each watched scope.
//!
//! Reconcilers, the status writer and the management-API facade read objects from here
//! instead of asking the API server, so neither a ping nor a resync costs a request. The
//! cached objects are slimmed ([`slim`]): `managedFields` and the last-applied annotation
//! (which for a Secret is a plaintext copy of its data) are never read and can be large.
//!
//! One cache per scope and kind: a reflector's relist replaces its whole store, so two
//! namespaces cannot share one. The Secret cache is shared by both controllers of a scope.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::watcher::{self, Event, watcher};
use kube::runtime::{Predicate, WatchStreamExt, predicates};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::crd::{Application, Heartbeat};

/// Annotation kubectl writes with a full copy of the applied object.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what the operator never reads from a cached object.
pub fn slim<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

/// A watch configuration whose requests end after 5 to 10 minutes, chosen per watch, as
/// client-go's informers do: fewer re-watches than kube's default of 290 s, and spread so
/// that watches started together do not restart together. A watch that goes silent for
/// longer is treated as broken and restarted.
pub fn watch_config() -> watcher::Config {
    let secs = 300.0 + 300.0 * super::context::jitter();
    watcher::Config::default().timeout(secs as u32)
}

/// Which list of a scope was (re)loaded: the orphan sweep runs after each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relisted {
    /// Applications of the scope.
    Applications(Option<String>),
    /// Heartbeats of the scope.
    Heartbeats(Option<String>),
}

/// The caches of one scope (`namespace` `None`: the whole cluster).
#[derive(Clone)]
pub struct ScopeCaches {
    /// The namespace, or `None` for all.
    pub namespace: Option<String>,
    /// Applications.
    pub applications: Store<Application>,
    /// Heartbeats.
    pub heartbeats: Store<Heartbeat>,
    /// Secrets labelled `hartslag.dev/token`.
    pub secrets: Store<Secret>,
}

impl ScopeCaches {
    fn covers(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == namespace)
    }
}

/// The caches of every watched scope.
#[derive(Clone)]
pub struct Caches {
    scopes: Vec<ScopeCaches>,
    synced: Arc<AtomicBool>,
}

impl Caches {
    /// Caches over `scopes`.
    pub fn new(scopes: Vec<ScopeCaches>) -> Self {
        Self {
            scopes,
            synced: Arc::default(),
        }
    }

    /// Every scope.
    pub fn scopes(&self) -> &[ScopeCaches] {
        &self.scopes
    }

    /// The scope that watches `namespace`.
    pub fn scope_of(&self, namespace: &str) -> Option<&ScopeCaches> {
        self.scopes.iter().find(|s| s.covers(namespace))
    }

    /// Whether `namespace` is watched at all.
    pub fn covers(&self, namespace: &str) -> bool {
        self.scope_of(namespace).is_some()
    }

    /// A Heartbeat.
    pub fn heartbeat(&self, namespace: &str, name: &str) -> Option<Arc<Heartbeat>> {
        self.scope_of(namespace)?
            .heartbeats
            .get(&ObjectRef::new(name).within(namespace))
    }

    /// An Application.
    pub fn application(&self, namespace: &str, name: &str) -> Option<Arc<Application>> {
        self.scope_of(namespace)?
            .applications
            .get(&ObjectRef::new(name).within(namespace))
    }

    /// A token Secret (only labelled ones are cached).
    pub fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.scope_of(namespace)?
            .secrets
            .get(&ObjectRef::new(name).within(namespace))
    }

    /// The Heartbeats of `namespace`.
    pub fn heartbeats_in(&self, namespace: &str) -> Vec<Arc<Heartbeat>> {
        let Some(scope) = self.scope_of(namespace) else {
            return Vec::new();
        };
        scope
            .heartbeats
            .state()
            .into_iter()
            .filter(|h| h.metadata.namespace.as_deref() == Some(namespace))
            .collect()
    }

    /// Waits until every cache holds its first complete list.
    pub async fn wait_synced(&self) {
        for s in &self.scopes {
            listed(&s.applications).await;
            listed(&s.heartbeats).await;
            listed(&s.secrets).await;
        }
        self.synced.store(true, Ordering::Release);
    }

    /// Whether every cache holds its first complete list (for `/readyz`).
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }
}

/// Waits until `store` holds its first complete list. A store wakes only the most recent
/// of several waiters (the controller waits on the same store), so look again now and then
/// instead of trusting the wake-up.
async fn listed<K>(store: &Store<K>)
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let again = std::time::Duration::from_millis(200);
    while tokio::time::timeout(again, store.wait_until_ready())
        .await
        .is_err()
    {}
}

/// A watch on `api` feeding `writer`: slimmed objects, backoff on errors, a note on
/// `relisted` after every complete (re)list, and `gone` awaited for every object the watch
/// saw deleted — after the cache dropped it and before the next event is applied, so a
/// resource created again under the same name is cleaned up after, never before. Yields
/// the applied objects.
pub fn reflect<K, G, Fut>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    relisted: Option<(mpsc::UnboundedSender<Relisted>, Relisted)>,
    gone: G,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    G: Fn(K) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    watcher(api, config)
        .default_backoff()
        .modify(slim)
        .reflect(writer)
        .inspect(move |event| {
            if let (Ok(Event::InitDone), Some((tx, which))) = (event, &relisted) {
                let _ = tx.send(which.clone());
            }
        })
        .then(move |event| {
            let cleanup = match &event {
                Ok(Event::Delete(obj)) => Some(gone(obj.clone())),
                _ => None,
            };
            async move {
                if let Some(c) = cleanup {
                    c.await;
                }
                event
            }
        })
        .applied_objects()
}

/// [`reflect`], passing on only what a reconciler must see: a spec change (generation, which
/// the API server also bumps when a deletion starts) or a change of finalizers. A status
/// write or a ping does not wake a reconciler; a deletion goes to `gone`.
pub fn spec_changes<K, G, Fut>(
    api: Api<K>,
    writer: Writer<K>,
    relisted: (mpsc::UnboundedSender<Relisted>, Relisted),
    gone: G,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    G: Fn(K) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    reflect(api, watch_config(), writer, Some(relisted), gone).predicate_filter(
        predicates::generation.combine(predicates::finalizers),
        Default::default(),
    )
}
