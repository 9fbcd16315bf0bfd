//! The operator's assembly, in the order that keeps it safe:
//!
//! 1. bind the HTTP port at once: it answers 503 with `Retry-After` until the database is
//!    open, so a restart looks like a short wait to clients, not a refused connection;
//! 2. take the Lease (one instance runs the controllers and the scheduler);
//! 3. open the core with monitor deadlines held;
//! 4. start the watch caches and the controllers;
//! 5. once the caches hold complete lists, remove what vanished while the operator was
//!    down, release the deadlines and report ready (`/readyz`);
//! 6. serve until SIGTERM or until another instance took the Lease, then stop the
//!    controllers, flush the store and release the Lease.
//!
//! With a database shared by replicas, 2 comes after the rest is ready: every replica
//! opens the core (deadlines held), builds the context and serves, ready as a follower;
//! the one that takes the Lease takes the database's leader row over, catches up, leads,
//! and goes on with 4 and 5 (alert delivery starts with the released deadlines). Losing
//! the Lease, or a write refused by the fence, stops it with exit code 1.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::{mpsc, watch};

use super::caches::{self, Caches, Relisted, ScopeCaches};
use super::context::Context;
use super::crd::{Application, Heartbeat};
use super::instances::{Claim, Instances, LEASE_LABEL, SCOPE_ANNOTATION, Scope};
use super::lease::{Elector, Leadership, LeaseSettings};
use super::reconcile::{self, error_policy};
use super::secrets::TOKEN_LABEL;
use super::status::{self, StatusQueue, WriterConfig};
use super::triggers::{TriggerStream, Triggers};
use super::{OperatorError, admin, catalogue, orphans, transitions};
use crate::config::ServerConfig;
use crate::core::metrics::MetricRegistry;
use crate::server::{Server, bind_early, shutdown_signal};

/// Default of [`OperatorConfig::concurrency`]. Measured with 1 000 new Heartbeats on a
/// 2-core test control plane: 32 or 64 did not make them Ready sooner (the API server
/// answered no more requests per second, each took two to four times longer) and slowed
/// other clients' requests, such as the user's own creates.
pub const CONCURRENCY: u16 = 16;

/// Everything the operator is started with.
#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// The core's settings.
    pub server: ServerConfig,
    /// Namespaces to watch; all when empty.
    pub namespaces: Vec<String>,
    /// Status writer settings.
    pub writer: WriterConfig,
    /// Where the dashboard admin token lives.
    pub admin: admin::AdminSecret,
    /// Namespace and name of the Lease.
    pub lease: (String, String),
    /// Reconciles of one kind running at once per scope. An activation waits on an API
    /// round trip (the Secret), so throughput grows with it until the API server is the
    /// limit (docs/benchmarks.md).
    pub concurrency: u16,
}

/// A stream of the values of a channel.
fn receiver_stream<T: Send + 'static>(
    rx: mpsc::UnboundedReceiver<T>,
) -> impl Stream<Item = T> + Send {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

/// A stream that yields whenever `rx` sees a new value.
fn changes<T: Send + Sync + 'static>(rx: watch::Receiver<T>) -> impl Stream<Item = ()> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok().map(|_| ((), rx))
    })
}

/// The resources of `kind` a token Secret belongs to: its owner, or for an adopted Secret
/// the resources that name it.
fn secret_users<K>(
    kind: &'static str,
    store: Store<K>,
    names_secret: fn(&K) -> String,
) -> impl Fn(Arc<Secret>) -> Vec<ObjectRef<K>> + Send + Sync + 'static
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    move |s: Arc<Secret>| {
        let ns = s.namespace().unwrap_or_default();
        let owned: Vec<ObjectRef<K>> = s
            .owner_references()
            .iter()
            .filter(|r| r.kind == kind && r.api_version.starts_with("hartslag.dev/"))
            .map(|r| ObjectRef::new(&r.name).within(&ns))
            .collect();
        if !owned.is_empty() {
            return owned;
        }
        let name = s.name_any();
        store
            .state()
            .iter()
            .filter(|o| o.namespace().as_deref() == Some(ns.as_str()) && names_secret(o) == name)
            .map(|o| ObjectRef::from(o.as_ref()))
            .collect()
    }
}

fn heartbeat_secret(hb: &Heartbeat) -> String {
    reconcile::heartbeat::secret_name(&hb.spec.spec, &hb.name_any())
}

fn application_secret(app: &Application) -> String {
    reconcile::application::secret_name(&app.spec.spec, &app.name_any())
}

/// Starts a scope's watches and controllers over the context.
type StartScope = Box<
    dyn FnOnce(
            Arc<Context>,
            TriggerStream,
            watch::Receiver<bool>,
        ) -> Vec<tokio::task::JoinHandle<()>>
        + Send,
>;

/// The parts of one scope that run as tasks.
struct ScopeTasks {
    caches: ScopeCaches,
    run: StartScope,
}

fn apis<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Builds the caches and controllers of one scope.
fn scope(
    client: &Client,
    ns: Option<String>,
    relisted: &mpsc::UnboundedSender<Relisted>,
    concurrency: u16,
) -> ScopeTasks {
    let (hb_store, hb_writer) = reflector::store::<Heartbeat>();
    let (app_store, app_writer) = reflector::store::<Application>();
    let (secret_store, secret_writer) = reflector::store_shared::<Secret>(256);
    let hb_secrets = secret_writer.subscribe();
    let app_secrets = secret_writer.subscribe();
    let hb_api = apis::<Heartbeat>(client, ns.as_deref());
    let app_api = apis::<Application>(client, ns.as_deref());
    let hb_relisted = (relisted.clone(), Relisted::Heartbeats(ns.clone()));
    let app_relisted = (relisted.clone(), Relisted::Applications(ns.clone()));
    // The shared stream the controllers watch Secrets through carries no deletions: a
    // deleted token Secret reaches its users from here, and is issued again.
    let (hb_gone_tx, hb_gone) = mpsc::unbounded_channel();
    let (app_gone_tx, app_gone) = mpsc::unbounded_channel();
    let hb_users = secret_users("Heartbeat", hb_store.clone(), heartbeat_secret);
    let app_users = secret_users("Application", app_store.clone(), application_secret);
    let secrets_root = watcher::watcher(
        apis::<Secret>(client, ns.as_deref()),
        caches::watch_config().labels(TOKEN_LABEL),
    )
    .default_backoff()
    .modify(caches::slim)
    .reflect_shared(secret_writer)
    .for_each(move |event| {
        if let Ok(watcher::Event::Delete(secret)) = event {
            let secret = Arc::new(secret);
            for user in hb_users(secret.clone()) {
                let _ = hb_gone_tx.send(user);
            }
            for user in app_users(secret) {
                let _ = app_gone_tx.send(user);
            }
        }
        std::future::ready(())
    });
    let caches = ScopeCaches {
        namespace: ns.clone(),
        applications: app_store.clone(),
        heartbeats: hb_store.clone(),
        secrets: secret_store,
    };
    let run = move |ctx: Arc<Context>, triggers: TriggerStream, stop: watch::Receiver<bool>| {
        let stopped = move || {
            let mut stop = stop.clone();
            async move {
                let _ = stop.wait_for(|s| *s).await;
            }
        };
        // A deletion is cleaned up from the watch event: there is no finalizer to wait for.
        let hb_stream = {
            let ctx = ctx.clone();
            caches::spec_changes(hb_api, hb_writer, hb_relisted, move |hb| {
                reconcile::heartbeat::gone(ctx.clone(), hb)
            })
        };
        let app_stream = {
            let ctx = ctx.clone();
            caches::spec_changes(app_api, app_writer, app_relisted, move |app| {
                reconcile::application::gone(ctx.clone(), app)
            })
        };
        let config = controller::Config::default().concurrency(concurrency.max(1));
        let ownership = ctx.instances.subscribe();
        let mut tasks = vec![tokio::spawn(secrets_root)];
        let mut hb = Controller::for_stream(hb_stream, hb_store.clone())
            .with_config(config.clone())
            .reconcile_on(receiver_stream(triggers))
            .reconcile_on(receiver_stream(hb_gone))
            .reconcile_all_on(changes(ownership.clone()))
            .graceful_shutdown_on(stopped());
        if let Some(s) = hb_secrets {
            hb = hb.watches_shared_stream(s, secret_users("Heartbeat", hb_store, heartbeat_secret));
        }
        tasks.push(tokio::spawn(
            hb.run(reconcile::heartbeat::reconcile, error_policy, ctx.clone())
                .for_each(|_| std::future::ready(())),
        ));
        let mut app = Controller::for_stream(app_stream, app_store.clone())
            .with_config(config)
            .reconcile_on(receiver_stream(app_gone))
            .reconcile_all_on(changes(ownership))
            .graceful_shutdown_on(stopped());
        if let Some(s) = app_secrets {
            app = app.watches_shared_stream(
                s,
                secret_users("Application", app_store, application_secret),
            );
        }
        tasks.push(tokio::spawn(
            app.run(reconcile::application::reconcile, error_policy, ctx)
                .for_each(|_| std::future::ready(())),
        ));
        tasks
    };
    ScopeTasks {
        caches,
        run: Box::new(run),
    }
}

/// Keeps [`Instances`] up to date from the operator Leases of the whole cluster; `looked`
/// turns true once the first list is in (or the Leases cannot be read at all).
async fn watch_instances(client: Client, ctx: Arc<Context>, looked: watch::Sender<bool>) {
    let api: Api<Lease> = Api::all(client);
    let (store, writer) = reflector::store::<Lease>();
    let selector = format!("{}={}", LEASE_LABEL.0, LEASE_LABEL.1);
    let mut events = watcher::watcher(api, caches::watch_config().labels(&selector))
        .default_backoff()
        .modify(caches::slim)
        .reflect(writer)
        .boxed();
    // Claims also expire with time alone: look again now and then.
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "cannot watch operator Leases; overlapping installations are not detected");
                    looked.send_replace(true);
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    looked.send_replace(true);
                }
                Some(Ok(_)) => {}
                None => return,
            },
            _ = tick.tick() => {}
        }
        // Before the first complete list the store is empty: nobody else is known yet.
        let claims = store.state().iter().filter_map(|l| Claim::of(l)).collect();
        ctx.instances.set_others(claims);
    }
}

/// Sweeps orphans after every relist and every change of namespace ownership.
async fn keep_sweeping(ctx: Arc<Context>, mut relisted: mpsc::UnboundedReceiver<Relisted>) {
    let mut ownership = ctx.instances.subscribe();
    loop {
        tokio::select! {
            r = relisted.recv() => if r.is_none() { return },
            c = ownership.changed() => if c.is_err() { return },
        }
        while relisted.try_recv().is_ok() {}
        orphans::sweep(&ctx).await;
    }
}

fn register_metrics(registry: &mut MetricRegistry, ctx: &Arc<Context>) {
    registry.register_with_unit(
        "hartslag_status_lag",
        "Time from a Heartbeat state transition to its status write",
        prometheus_client::registry::Unit::Seconds,
        ctx.stats.status_lag.clone(),
    );
    registry.register_collector(Box::new(Counters(ctx.clone())));
}

/// The operator's counters, read from the context at each scrape.
struct Counters(Arc<Context>);

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters").finish_non_exhaustive()
    }
}

impl prometheus_client::collector::Collector for Counters {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = &self.0.stats;
        crate::core::metrics::encode_counters(
            &mut encoder,
            &[
                (
                    "hartslag_status_patches",
                    "Status writes sent to the API server.",
                    stats.status_writes.load(Relaxed),
                ),
                (
                    "hartslag_reconcile_errors",
                    "Reconciles that failed and were retried with backoff.",
                    stats.reconcile_errors.load(Relaxed),
                ),
            ],
        )
    }
}

fn lease_settings(config: &OperatorConfig, scope: &Scope) -> LeaseSettings {
    let (ns, name) = &config.lease;
    let mut settings = LeaseSettings::new(ns, name, &super::lease::identity());
    settings
        .labels
        .insert(LEASE_LABEL.0.into(), LEASE_LABEL.1.into());
    settings
        .annotations
        .insert(SCOPE_ANNOTATION.into(), scope.annotation());
    settings
}

/// The installation an operator given no `--installation` belongs to
/// ([`crate::config::operator_installation`]).
fn default_installation(config: &OperatorConfig) -> String {
    let (namespace, name) = &config.lease;
    crate::config::operator_installation(namespace, name)
}

/// Resolves once `stop` turns true.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Takes the Lease, or gives up (`None`) when asked to stop first.
async fn take_lease(
    client: &Client,
    settings: LeaseSettings,
    stop: watch::Receiver<bool>,
) -> Result<Option<Leadership>, OperatorError> {
    tracing::info!(lease = %format!("{}/{}", settings.namespace, settings.name), identity = %settings.identity, "waiting for the Lease");
    let acquire = Elector::new(client.clone(), settings).acquire(|holder| {
        tracing::warn!(%holder, "another instance holds the Lease; waiting until it stops or lets go")
    });
    tokio::select! {
        l = acquire => Ok(Some(l?)),
        _ = stopped(stop) => Ok(None),
    }
}

/// What [`start`] hands back to [`run`].
struct Running {
    ctx: Arc<Context>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    relisted: mpsc::UnboundedReceiver<Relisted>,
}

/// The context and the parts of the controllers, built but not running: a replica that
/// does not lead serves the management API and the metrics over them.
struct Prepared {
    ctx: Arc<Context>,
    scopes: Vec<Option<String>>,
    parts: Vec<ScopeTasks>,
    trigger_rxs: Vec<TriggerStream>,
    status_inbox: mpsc::UnboundedReceiver<status::writer::Nudge>,
    status_queue: StatusQueue,
    relisted: mpsc::UnboundedReceiver<Relisted>,
}

/// Opens the context over `server`: its management API's catalogue and metric families.
fn prepare(config: &OperatorConfig, client: &Client, server: &mut Server, me: Claim) -> Prepared {
    let scopes: Vec<Option<String>> = if config.namespaces.is_empty() {
        vec![None]
    } else {
        config.namespaces.iter().cloned().map(Some).collect()
    };
    let (relist_tx, relisted) = mpsc::unbounded_channel();
    let parts: Vec<ScopeTasks> = scopes
        .iter()
        .map(|ns| scope(client, ns.clone(), &relist_tx, config.concurrency))
        .collect();
    let caches = Caches::new(parts.iter().map(|p| p.caches.clone()).collect());
    let (triggers, trigger_rxs) = Triggers::new(&scopes);
    let (status_queue, status_inbox) = StatusQueue::new();
    let ctx = Arc::new(Context::new(
        server.core.clone(),
        server.config.clone(),
        client.clone(),
        caches,
        status_queue.clone(),
        Instances::new(me),
        triggers,
    ));
    server.set_catalogue(Arc::new(catalogue::KubernetesCatalogue::new(ctx.clone())));
    register_metrics(server.metrics(), &ctx);
    Prepared {
        ctx,
        scopes,
        parts,
        trigger_rxs,
        status_inbox,
        status_queue,
        relisted,
    }
}

/// Learns the other installations, and starts the caches, controllers, status writer and
/// Event publisher.
async fn start(
    config: &OperatorConfig,
    client: &Client,
    prepared: Prepared,
    stop: &watch::Receiver<bool>,
) -> Running {
    let Prepared {
        ctx,
        scopes,
        parts,
        trigger_rxs,
        status_inbox,
        status_queue,
        relisted,
    } = prepared;
    let core = ctx.core.clone();
    // Know the other installations before reconciling anything, so that a newer one never
    // touches a namespace an older one reconciles.
    let (looked_tx, mut looked) = watch::channel(false);
    let mut tasks = vec![tokio::spawn(watch_instances(
        client.clone(),
        ctx.clone(),
        looked_tx,
    ))];
    let _ = looked.wait_for(|l| *l).await;
    tasks.extend([
        tokio::spawn(status::writer::run(
            ctx.clone(),
            status_inbox,
            status_queue,
            config.writer,
        )),
        tokio::spawn(transitions::publish(ctx.clone())),
        tokio::spawn(admin::keep_in_sync(
            Api::namespaced(client.clone(), &config.admin.namespace),
            config.admin.name.clone(),
            core.registry.clone(),
        )),
    ]);
    // Channels before the controllers: a Heartbeat naming a channel waits for this list.
    tasks.extend(super::channels::watch::start(&ctx, &scopes, &config.lease.0, stop.clone()).await);
    // The CronJob API found (or not) before the controllers too: a Heartbeat with a
    // `cronJobRef` reconciled before would be refused as if no CronJobs were served.
    tasks.extend(super::cronjobs::watch::start(&ctx, &scopes, stop.clone()).await);
    for (part, triggers) in parts.into_iter().zip(trigger_rxs) {
        tracing::info!(
            namespace = part.caches.namespace.as_deref().unwrap_or("<all>"),
            "watching Applications and Heartbeats"
        );
        tasks.extend((part.run)(ctx.clone(), triggers, stop.clone()));
    }
    Running {
        ctx,
        tasks,
        relisted,
    }
}

/// Runs the operator until SIGTERM (or until another instance takes the Lease).
///
/// The port answers from the first moment (503 with `Retry-After` while the Lease and the
/// database are awaited); `/readyz` turns ready once the watch caches are complete and
/// what vanished during downtime is removed. Monitor deadlines are held until then. With a
/// database shared by replicas, see [`run_replica`].
pub async fn run(mut config: OperatorConfig) -> Result<(), OperatorError> {
    if config.server.installation.is_none() {
        config.server.installation = Some(default_installation(&config));
    }
    let port = bind_early(config.server.listen, config.server.http).await?;
    let (stop_tx, stop) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            stop_tx.send_replace(true);
        });
    }
    let client = Client::try_default().await?;
    let scope_claim = Scope::of(&config.namespaces);
    let settings = lease_settings(&config, &scope_claim);
    let me = Claim {
        lease: format!("{}/{}", settings.namespace, settings.name),
        holder: Some(settings.identity.clone()),
        scope: scope_claim,
        created: jiff::Timestamp::now(),
        renewed: Some(jiff::Timestamp::now()),
    };
    if let Some(url) = config.server.database_url.clone() {
        let replica = Replica {
            settings,
            me,
            url,
            stop,
            stop_tx,
        };
        return run_replica(config, client, port, replica).await;
    }
    port.waiting_for("the Lease (another instance may hold it)");
    let Some(leadership) = take_lease(&client, settings, stop.clone()).await? else {
        port.close()
            .await
            .map_err(|e| OperatorError::Server(http_error(&config, e)))?;
        return Ok(());
    };
    port.waiting_for("the database to open");
    let mut server_config = config.server.clone();
    server_config.hold_deadlines = true;
    let mut server = match Server::open(server_config).await {
        Ok(s) => s,
        Err(e) => {
            leadership.release().await;
            return Err(e.into());
        }
    };
    let ready = Arc::new(AtomicBool::new(false));
    server.ready_when(ready.clone());
    let me = Claim {
        created: leadership.created().unwrap_or(me.created),
        ..me
    };
    let prepared = prepare(&config, &client, &mut server, me);
    let Running {
        ctx,
        mut tasks,
        relisted,
    } = start(&config, &client, prepared, &stop).await;
    server.core.spawn_retention(RETENTION_EVERY);
    // Stop on SIGTERM, or at once when another instance took the Lease.
    let lost_reason = Arc::new(std::sync::Mutex::new(None::<String>));
    {
        let (lost, reason, stop_tx) = (leadership.on_lost(), lost_reason.clone(), stop_tx.clone());
        tokio::spawn(async move {
            let r = lost.await;
            tracing::error!(reason = %r, "lost the Lease; stopping");
            *reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
            stop_tx.send_replace(true);
        });
    }
    let serving = tokio::spawn(server.serve_on(port, stopped(stop.clone())));
    tokio::select! {
        _ = caches_synced(&ctx) => {
            settle(&ctx).await;
            ctx.core.engine.release_deadlines();
            ready.store(true, Ordering::Release);
            tasks.push(tokio::spawn(keep_sweeping(ctx.clone(), relisted)));
        }
        _ = stopped(stop.clone()) => {}
    }
    let served = serving
        .await
        .unwrap_or_else(|e| Err(http_error(&config, std::io::Error::other(e))));
    for t in tasks {
        t.abort();
    }
    let lost = lost_reason.lock().unwrap_or_else(|p| p.into_inner()).take();
    match lost {
        Some(reason) => {
            drop(leadership);
            served?;
            Err(OperatorError::LeaseLost(reason))
        }
        None => {
            leadership.release().await;
            served?;
            Ok(())
        }
    }
}

/// How often the leader deletes what is past retention.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// Resolves once the watch caches hold their first complete lists.
async fn caches_synced(ctx: &Context) {
    ctx.caches.wait_synced().await;
    ctx.cron_jobs.wait_synced().await;
    ctx.channels.wait_synced().await;
}

/// Once the caches are complete: removes what vanished while no operator ran, and reports
/// the CronJobs.
async fn settle(ctx: &Arc<Context>) {
    tracing::info!("watch caches hold their first complete lists");
    orphans::sweep(ctx).await;
    tracing::info!("removed what vanished while the operator was down");
    super::cronjobs::watch::report_everything(ctx).await;
}

/// One of several operator replicas on a shared database. Every one serves the APIs,
/// pings and the dashboard from the start and is ready; the one that holds the Lease takes
/// the database's leader row over (fencing the previous leader), starts the controllers
/// and the status writer, and once the caches are complete releases the deadlines and
/// delivers alerts. A leader that loses the Lease, or whose write is fenced, stops with
/// [`OperatorError::LeaseLost`] (exit code 1) and restarts as a follower; it answers the
/// requests in flight first, for up to [`DRAIN_WITHIN`], so that no client of a replica
/// that stays in the Service sees its connection dropped.
async fn run_replica(
    config: OperatorConfig,
    client: Client,
    port: crate::http::Port,
    replica: Replica,
) -> Result<(), OperatorError> {
    let Replica {
        settings,
        me,
        url,
        stop,
        stop_tx,
    } = replica;
    port.waiting_for("the database to open");
    let mut server_config = config.server.clone();
    server_config.hold_deadlines = true;
    server_config.elect_leader = true;
    let mut server = Server::open(server_config).await?;
    let identity = settings.identity.clone();
    // The installation's claim dates from its Lease, as when the Lease is held.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &settings.namespace);
    let created = match leases.get_opt(&settings.name).await {
        Ok(Some(l)) => l.metadata.creation_timestamp.map(|t| t.0),
        _ => None,
    };
    let me = Claim {
        created: created.unwrap_or(me.created),
        ..me
    };
    let prepared = prepare(&config, &client, &mut server, me);
    let (core, courier) = (server.core.clone(), server.courier());
    // Every replica holds the admin token, not only the leader: a follower serves the
    // dashboard too. The leader's own follows it from `start` on.
    let admin_token = tokio::spawn(admin::keep_in_sync(
        Api::namespaced(client.clone(), &config.admin.namespace),
        config.admin.name.clone(),
        core.registry.clone(),
    ));
    let mut serving = tokio::spawn(server.serve_on(port, stopped(stop.clone())));
    let leadership = tokio::select! {
        l = take_lease(&client, settings, stop.clone()) => l?,
        served = &mut serving => return finished(&config, served),
    };
    let Some(leadership) = leadership else {
        return finished(&config, serving.await);
    };
    let generation = match crate::core::store_pg::elector::take_over(&url, &identity).await {
        Ok(g) => g,
        Err(e) => {
            leadership.release().await;
            return Err(OperatorError::Promotion(e.to_string()));
        }
    };
    let mut term = crate::core::leadership::Term::new(generation, leadership.on_lost(), ());
    if let Err(e) = core.promote(&term).await {
        leadership.release().await;
        return Err(OperatorError::Promotion(e.to_string()));
    }
    admin_token.abort();
    let Running {
        ctx,
        mut tasks,
        relisted,
    } = start(&config, &client, prepared, &stop).await;
    let role = core.role.clone();
    // The controllers run until the server has stopped (after SIGTERM: after the shutdown
    // delay and the requests in flight), or until the leadership is lost.
    let leading = async {
        tokio::select! {
            () = caches_synced(&ctx) => {
                settle(&ctx).await;
                core.start_leading(courier, RETENTION_EVERY);
                tasks.push(tokio::spawn(keep_sweeping(ctx.clone(), relisted)));
            }
            () = stopped(stop.clone()) => {}
        }
        std::future::pending::<Ended>().await
    };
    let ended = tokio::select! {
        reason = role.until_lost(&mut term) => Ended::Lost(reason.to_string()),
        served = &mut serving => Ended::Served(finished(&config, served)),
        ended = leading => ended,
    };
    for t in tasks {
        t.abort();
    }
    match ended {
        Ended::Lost(reason) => {
            tracing::error!(%reason, "lost the leadership; answering the requests in flight, then stopping");
            drop(leadership);
            // The controllers have stopped; the requests in flight are answered (a deposed
            // leader's fenced writes are refused) before the process ends.
            stop_tx.send_replace(true);
            let _ = tokio::time::timeout(DRAIN_WITHIN, &mut serving).await;
            Err(OperatorError::LeaseLost(format!(
                "lost the leadership: {reason}"
            )))
        }
        Ended::Served(served) => {
            leadership.release().await;
            served
        }
    }
}

/// Why a leading replica stops.
enum Ended {
    /// Another replica took the Lease, or the database fenced this one's writes.
    Lost(String),
    /// The server stopped: after SIGTERM, or because it failed.
    Served(Result<(), OperatorError>),
}

/// What [`run`] hands a replica on a shared database.
struct Replica {
    settings: LeaseSettings,
    me: Claim,
    url: crate::core::store_pg::DatabaseUrl,
    stop: watch::Receiver<bool>,
    /// Stops the server (and everything waiting on `stop`).
    stop_tx: Arc<watch::Sender<bool>>,
}

/// How long a deposed leader on a shared database waits for the requests in flight before
/// it exits.
const DRAIN_WITHIN: Duration = Duration::from_secs(5);

/// The outcome of the serving task.
fn finished(
    config: &OperatorConfig,
    served: Result<Result<(), crate::server::ServerError>, tokio::task::JoinError>,
) -> Result<(), OperatorError> {
    served
        .unwrap_or_else(|e| Err(http_error(config, std::io::Error::other(e))))
        .map_err(OperatorError::Server)
}

fn http_error(config: &OperatorConfig, source: std::io::Error) -> crate::server::ServerError {
    crate::server::ServerError::Http {
        addr: config.server.listen.to_string(),
        source,
    }
}
