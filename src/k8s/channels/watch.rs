//! The channel watches: `AlertChannel`s and labelled channel Secrets of each watched scope,
//! `ClusterAlertChannel`s, and the labelled Secrets of the operator's own namespace (where
//! a `ClusterAlertChannel`'s Secrets live). Every event leads to [`super::settle::all`],
//! once every list is complete; nothing is read from the API server per channel.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::ListParams;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event, watcher as watch_fn};
use kube::{Api, Client};
use tokio::sync::watch;

use super::resolve::CHANNEL_SECRET_LABEL;
use super::settle::{self, Settled};
use crate::core::alert::channels::ChannelRef;
use crate::k8s::caches::{slim, watch_config};
use crate::k8s::context::Context;
use crate::k8s::crd::{AlertChannel, ClusterAlertChannel};

/// The channel caches of one scope (`namespace` `None`: the whole cluster).
#[derive(Clone)]
struct ChannelScope {
    namespace: Option<String>,
    channels: Store<AlertChannel>,
    secrets: Store<Secret>,
}

impl ChannelScope {
    fn covers(&self, namespace: &str) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == namespace)
    }
}

/// What is watched once for the whole cluster.
#[derive(Clone)]
struct ClusterSide {
    channels: Store<ClusterAlertChannel>,
    /// The operator's namespace, where a `ClusterAlertChannel`'s Secrets are read.
    home: String,
    /// Its labelled Secrets; `None` when a scope's Secret cache covers it.
    home_secrets: Option<Store<Secret>>,
}

/// The channel caches; empty until [`start`] found the channel APIs readable.
#[derive(Default)]
pub struct ChannelCaches {
    scopes: OnceLock<Vec<ChannelScope>>,
    cluster: OnceLock<ClusterSide>,
    synced: AtomicBool,
    synced_tx: OnceLock<watch::Sender<bool>>,
    /// What each channel was last settled to.
    pub(super) settled: Mutex<std::collections::BTreeMap<ChannelRef, Settled>>,
}

impl std::fmt::Debug for ChannelCaches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelCaches")
            .field("synced", &self.synced())
            .finish_non_exhaustive()
    }
}

impl ChannelCaches {
    fn scope_of(&self, namespace: &str) -> Option<&ChannelScope> {
        self.scopes.get()?.iter().find(|s| s.covers(namespace))
    }

    /// Whether `AlertChannel`s are watched.
    pub fn served(&self) -> bool {
        self.scopes.get().is_some()
    }

    /// Whether `ClusterAlertChannel`s are watched.
    pub fn cluster_served(&self) -> bool {
        self.cluster.get().is_some()
    }

    /// `AlertChannel` `name` in `namespace`, as last seen.
    pub fn channel(&self, namespace: &str, name: &str) -> Option<Arc<AlertChannel>> {
        self.scope_of(namespace)?
            .channels
            .get(&ObjectRef::new(name).within(namespace))
    }

    /// `ClusterAlertChannel` `name`, as last seen.
    pub fn cluster_channel(&self, name: &str) -> Option<Arc<ClusterAlertChannel>> {
        self.cluster.get()?.channels.get(&ObjectRef::new(name))
    }

    /// Every `AlertChannel` of every scope.
    pub fn channels(&self) -> Vec<Arc<AlertChannel>> {
        self.scopes
            .get()
            .map(|s| s.iter().flat_map(|s| s.channels.state()).collect())
            .unwrap_or_default()
    }

    /// Every `ClusterAlertChannel`.
    pub fn cluster_channels(&self) -> Vec<Arc<ClusterAlertChannel>> {
        self.cluster
            .get()
            .map(|c| c.channels.state())
            .unwrap_or_default()
    }

    /// The operator's namespace, where `ClusterAlertChannel` Secrets are read.
    pub fn home(&self) -> Option<&str> {
        self.cluster.get().map(|c| c.home.as_str())
    }

    /// A labelled channel Secret.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        let key = ObjectRef::new(name).within(namespace);
        if let Some(c) = self.cluster.get()
            && c.home == namespace
            && let Some(s) = &c.home_secrets
        {
            return s.get(&key);
        }
        self.scope_of(namespace)?.secrets.get(&key)
    }

    /// Whether every channel cache holds its first complete list.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Waits until every channel cache holds its first complete list; at once when no
    /// channel API is watched.
    pub async fn wait_synced(&self) {
        let Some(tx) = self.synced_tx.get() else {
            return;
        };
        let mut rx = tx.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// One watch feeding `writer`, yielding `(index, list complete)` for each event.
fn feed<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    index: usize,
) -> BoxStream<'static, (usize, bool)>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    watch_fn(api, config)
        .default_backoff()
        .modify(slim)
        .reflect(writer)
        .filter_map(move |e| async move {
            match e {
                Ok(Event::InitDone) => Some((index, true)),
                Ok(Event::Init | Event::InitApply(_)) => None,
                Ok(_) => Some((index, false)),
                Err(e) => {
                    tracing::warn!(error = %e, "watching alert channels or their Secrets");
                    None
                }
            }
        })
        .boxed()
}

/// Whether the operator may list `api` (one small list of metadata, of labelled Secrets
/// only); a missing CRD or RBAC rule leaves that kind unwatched rather than the operator
/// never ready.
async fn readable<K>(api: &Api<K>) -> Result<(), kube::Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut params = ListParams::default().limit(1);
    if K::kind(&()) == "Secret" {
        params = params.labels(CHANNEL_SECRET_LABEL);
    }
    api.list_metadata(&params).await.map(|_| ())
}

/// The watches feeding [`run`], in order.
type Feeds = Vec<BoxStream<'static, (usize, bool)>>;

/// Labelled channel Secrets only.
fn secrets_config() -> watcher::Config {
    watch_config().labels(CHANNEL_SECRET_LABEL)
}

/// The `AlertChannel` and channel Secret watches of every scope, once all are readable.
async fn watch_scopes(ctx: &Context, scopes: &[Option<String>], feeds: &mut Feeds) {
    let client = &ctx.client;
    for ns in scopes {
        let a = api::<AlertChannel>(client, ns.as_deref());
        let s = api::<Secret>(client, ns.as_deref());
        if let Err(e) = futures::try_join!(readable(&a), readable(&s)) {
            tracing::warn!(error = %e, namespace = ns.as_deref().unwrap_or("<all>"), "cannot list AlertChannels or Secrets (is the CRD installed, does the chart's RBAC allow it?); AlertChannels are not watched");
            return;
        }
    }
    let mut caches = Vec::new();
    for ns in scopes {
        let (channels, cw) = reflector::store::<AlertChannel>();
        let (secrets, sw) = reflector::store::<Secret>();
        let n = feeds.len();
        feeds.push(feed(api(client, ns.as_deref()), watch_config(), cw, n));
        feeds.push(feed(
            api(client, ns.as_deref()),
            secrets_config(),
            sw,
            n + 1,
        ));
        caches.push(ChannelScope {
            namespace: ns.clone(),
            channels,
            secrets,
        });
    }
    let _ = ctx.channels.scopes.set(caches);
}

/// The `ClusterAlertChannel` watch, and the channel Secrets of `home` unless a scope's
/// watch covers them already.
async fn watch_cluster(ctx: &Context, home: &str, feeds: &mut Feeds) {
    let client = &ctx.client;
    let cluster_api: Api<ClusterAlertChannel> = Api::all(client.clone());
    let home_api: Api<Secret> = Api::namespaced(client.clone(), home);
    let covered = ctx.channels.scope_of(home).is_some();
    let readable = match readable(&cluster_api).await {
        Ok(()) if covered => Ok(()),
        Ok(()) => readable(&home_api).await,
        Err(e) => Err(e),
    };
    if let Err(e) = readable {
        tracing::warn!(error = %e, namespace = home, "cannot list ClusterAlertChannels or the Secrets of the operator's namespace (is the CRD installed, does the chart's RBAC allow it?); ClusterAlertChannels are not watched");
        return;
    }
    let (channels, cw) = reflector::store::<ClusterAlertChannel>();
    let n = feeds.len();
    feeds.push(feed(cluster_api, watch_config(), cw, n));
    let home_secrets = (!covered).then(|| {
        let (store, sw) = reflector::store::<Secret>();
        feeds.push(feed(home_api, secrets_config(), sw, n + 1));
        store
    });
    let _ = ctx.channels.cluster.set(ClusterSide {
        channels,
        home: home.to_string(),
        home_secrets,
    });
}

/// Starts the channel watches of `scopes` and the cluster's, and the task that settles
/// channels on every change. `home` is the operator's namespace.
pub async fn start(
    ctx: &Arc<Context>,
    scopes: &[Option<String>],
    home: &str,
    stop: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut feeds = Feeds::new();
    watch_scopes(ctx, scopes, &mut feeds).await;
    watch_cluster(ctx, home, &mut feeds).await;
    if feeds.is_empty() {
        return Vec::new();
    }
    let (tx, _) = watch::channel(false);
    let _ = ctx.channels.synced_tx.set(tx);
    vec![tokio::spawn(run(ctx.clone(), feeds, stop))]
}

/// Settles every channel after each batch of events, once every watch listed completely.
async fn run(ctx: Arc<Context>, feeds: Feeds, mut stop: watch::Receiver<bool>) {
    let mut listed = vec![false; feeds.len()];
    let mut events = futures::stream::select_all(feeds);
    // A Secret or channel that keeps failing to resolve is looked at again now and then,
    // as are delivery results for the status.
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut deliveries = ctx.core.channels.subscribe();
    let mut open = true;
    loop {
        tokio::select! {
            r = deliveries.changed(), if open => {
                match r {
                    Ok(()) => settle::nudge_all(&ctx),
                    Err(_) => open = false,
                }
                continue;
            }
            e = events.next() => {
                let Some((i, done)) = e else { return };
                if done && let Some(l) = listed.get_mut(i) {
                    *l = true;
                }
                // Take what else is ready now, so a relist settles once.
                while let Some(Some((i, done))) = events.next().now_or_never() {
                    if done && let Some(l) = listed.get_mut(i) {
                        *l = true;
                    }
                }
            }
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if !listed.iter().all(|l| *l) {
            continue;
        }
        settle::all(&ctx).await;
        if !ctx.channels.synced.swap(true, Ordering::AcqRel)
            && let Some(tx) = ctx.channels.synced_tx.get()
        {
            tx.send_replace(true);
        }
    }
}
