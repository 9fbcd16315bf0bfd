//! Standalone mode: the core driven by a directory of manifests instead of a cluster.

pub mod catalogue;
pub mod channels;
pub mod installation;
pub mod manifests;
pub mod tokens;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;

use crate::config::ServerConfig;
use crate::core::Services;
use crate::core::monitor::define::DeclaredHeartbeat;
use crate::core::monitor::engine::{EngineError, Origin};
use crate::core::registry::{AppInfo, RegistryError, object_key};
use crate::core::spec::HeartbeatSpec;
use crate::core::storage::TokenOwner;
use crate::core::token::{Token, TokenError, TokenKind, random_id};
use crate::server::{Server, ServerError, shutdown_signal};
use manifests::{Manifests, Object};

/// Why standalone mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    /// A manifest is wrong.
    #[error(transparent)]
    Manifest(#[from] manifests::ManifestError),
    /// A token file is wrong.
    #[error(transparent)]
    TokenFile(#[from] tokens::TokenFileError),
    /// The core failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// An object's token file cannot be used.
    #[error("{source_file}: {object}: {cause}")]
    ObjectTokenFile {
        /// The manifest file defining the object.
        source_file: String,
        /// Which object.
        object: String,
        /// Why.
        cause: tokens::TokenFileError,
    },
    /// A Heartbeat names an Application that is not defined.
    #[error(
        "{source_file}: Heartbeat {heartbeat}: spec.applicationRef names Application {application:?}, which is not defined in namespace {namespace} of the manifests"
    )]
    UnknownApplication {
        /// The manifest file defining the Heartbeat.
        source_file: String,
        /// Heartbeat name.
        heartbeat: String,
        /// Its namespace, where the Application is looked for.
        namespace: String,
        /// Referenced name.
        application: String,
    },
    /// The monitor engine refused a definition.
    #[error("Heartbeat {object}: {source}")]
    Engine {
        /// Which object.
        object: String,
        /// Why.
        source: EngineError,
    },
    /// A Heartbeat's timing cannot be read.
    #[error("{object}: {source}")]
    Spec {
        /// Which object.
        object: String,
        /// Why.
        source: crate::core::spec::SpecError,
    },
    /// No randomness for ids.
    #[error(transparent)]
    Random(#[from] TokenError),
    /// An alert channel cannot be used.
    #[error(transparent)]
    Channels(#[from] channels::ChannelsError),
    /// An inline `spec.alerts.webhook` posts to an address the server refuses to post
    /// alerts to: each delivery would fail.
    #[error("{source_file}: {object}: spec.alerts.webhook: {source}")]
    WebhookRefused {
        /// The manifest file defining the object.
        source_file: String,
        /// Which object.
        object: String,
        /// Why.
        source: crate::notify::guard::RefusedHost,
    },
    /// A definition was refused.
    #[error("{object}: {source}")]
    Registry {
        /// Which object.
        object: String,
        /// Why.
        source: RegistryError,
    },
    /// The leadership could not be sought.
    #[error(transparent)]
    Leadership(#[from] crate::core::leadership::LeadershipError),
    /// A manifest names a monitor created through the management API.
    #[error(
        "Heartbeat {name}: a monitor of that name was created through the management API{}; a manifest would take it over (its Application, interval and history). Rename the manifest's Heartbeat, or delete that monitor through the API first",
        application.as_deref().map(|a| format!(" (Application {a})")).unwrap_or_default()
    )]
    TakesOver {
        /// The Heartbeat's name.
        name: String,
        /// The API monitor's Application.
        application: Option<String>,
    },
    /// This replica won the leadership but could not take office.
    #[error("cannot take over as the leader: {0}")]
    Promotion(String),
    /// This replica led and no longer does; it stops so that it restarts as a follower.
    #[error("lost the leadership: {0}")]
    LeadershipLost(String),
    /// The manifests directory holds no manifest file, but objects were defined from it.
    #[error(
        "the manifests directory {dir} holds no .yaml file, but {applications} Application(s) and {heartbeats} Heartbeat(s) were defined from it: applying it would revoke every token and delete the Heartbeats. Check that it is mounted and is the right one; to remove them all on purpose, leave an empty .yaml file in it"
    )]
    NoManifests {
        /// The directory.
        dir: PathBuf,
        /// Applications the store holds.
        applications: usize,
        /// Manifest Heartbeats the store holds.
        heartbeats: usize,
    },
}

/// Applies the manifests in `dir` to the server's services: applications and heartbeats
/// (and their tokens) are created or updated; applications that disappeared from the
/// directory lose their token but keep their data, heartbeats that disappeared are removed.
/// Installs the standalone monitor catalogue for the management API.
pub async fn apply_manifests(
    server: &mut Server,
    dir: &Path,
) -> Result<Manifests, StandaloneError> {
    let m = declare(&server.core, &server.config, dir).await?;
    install_catalogue(server);
    Ok(m)
}

/// The management API's writes go to the standalone catalogue.
fn install_catalogue(server: &mut Server) {
    let catalogue = catalogue::StandaloneCatalogue::new(server.core.clone(), server.config.clone());
    server.set_catalogue(Arc::new(catalogue));
}

/// Declares the manifests in `dir` into `core` (see [`apply_manifests`]): the leader's
/// work when replicas share a database.
async fn declare(
    core: &Services,
    config: &ServerConfig,
    dir: &Path,
) -> Result<Manifests, StandaloneError> {
    let m = manifests::load_dir(dir, config.min_interval)?;
    if m.files == 0 {
        refuse_if_defined(core, dir)?;
    }
    tokens::remove_stale_temporaries(&config.data_dir.join("tokens"));
    // Before anything is applied: a webhook or channel that could never be delivered to
    // stops the start with the file, the object and the flag to use.
    check_inline_webhooks(&m, &config.webhooks)?;
    channels::load(&core.channels, &m, dir, &config.webhooks)?;
    let apply = Apply { core, config, dir };
    for app in &m.applications {
        apply.application(app).await?;
    }
    apply.remove_stale_applications(&m).await?;
    let now = jiff::Timestamp::now();
    // Several at once, so their writes share the store's commits: one at a time, each
    // Heartbeat waited for its own database transaction, and a leader declaring thousands
    // on PostgreSQL took minutes before it served. Each touches only its own name's files,
    // token and monitor (names are unique: `manifests::load_dir`).
    let mut declared = futures::stream::iter(&m.heartbeats)
        .map(|hb| apply.heartbeat(hb, now))
        .buffer_unordered(DECLARE_AT_ONCE);
    while let Some(result) = declared.next().await {
        result?;
    }
    drop(declared);
    apply.remove_stale_heartbeats(&m).await?;
    apply.admin_token().await?;
    Ok(m)
}

/// Refuses an Application's or Heartbeat's `spec.alerts.webhook` whose host `policy`
/// refuses whatever DNS says ([`AddressPolicy::check_url`](crate::notify::guard::AddressPolicy::check_url)):
/// every alert to it would be refused at delivery. Host names are checked at delivery.
fn check_inline_webhooks(
    m: &Manifests,
    policy: &crate::notify::guard::AddressPolicy,
) -> Result<(), StandaloneError> {
    let apps = m
        .applications
        .iter()
        .map(|o| ("Application", &o.name, o.spec.alerts.as_ref(), &o.source));
    let heartbeats = m
        .heartbeats
        .iter()
        .map(|o| ("Heartbeat", &o.name, o.spec.alerts.as_ref(), &o.source));
    for (kind, name, alerts, source) in apps.chain(heartbeats) {
        let Some(url) = alerts.and_then(|a| a.webhook.as_deref()) else {
            continue;
        };
        policy
            .check_url(url)
            .map_err(|source_err| StandaloneError::WebhookRefused {
                source_file: source.display().to_string(),
                object: format!("{kind} {name}"),
                source: source_err,
            })?;
    }
    Ok(())
}

/// Refuses a manifests directory without a single manifest file when objects were defined
/// from one: an unmounted volume or a wrong path would otherwise revoke every token, and
/// new ones would be issued when the right directory came back.
fn refuse_if_defined(core: &Services, dir: &Path) -> Result<(), StandaloneError> {
    let applications = core.registry.applications().len();
    let heartbeats = core.engine.view(|all| {
        all.values()
            .filter(|m| m.def.origin == Origin::Manifest)
            .count()
    });
    if applications + heartbeats == 0 {
        return Ok(());
    }
    Err(StandaloneError::NoManifests {
        dir: dir.to_path_buf(),
        applications,
        heartbeats,
    })
}

/// Heartbeats declared at once (see [`declare`]).
const DECLARE_AT_ONCE: usize = 64;

/// One pass of applying a manifests directory.
struct Apply<'a> {
    core: &'a Services,
    config: &'a ServerConfig,
    dir: &'a Path,
}

fn refused(object: String) -> impl FnOnce(RegistryError) -> StandaloneError {
    move |source| StandaloneError::Registry { object, source }
}

fn engine_refused(object: &str) -> impl FnOnce(EngineError) -> StandaloneError {
    let object = object.to_string();
    move |source| StandaloneError::Engine { object, source }
}

impl Apply<'_> {
    fn data(&self) -> &Path {
        &self.config.data_dir
    }

    /// Creates or updates an Application with its token (the manifest's file, the one
    /// issued earlier, or a new one, printed once).
    async fn application(
        &self,
        app: &Object<crate::core::spec::ApplicationSpec>,
    ) -> Result<(), StandaloneError> {
        let (token, source) = tokens::ensure_token(
            self.data(),
            self.dir,
            TokenKind::Application,
            "application",
            &app.name,
            app.spec.token_file.as_deref(),
        )
        .map_err(|cause| StandaloneError::ObjectTokenFile {
            source_file: app.source.display().to_string(),
            object: format!("Application {}", app.name),
            cause,
        })?;
        self.core
            .registry
            .upsert_application(&app.namespace, &app.name, app.spec.clone(), token.hash())
            .await
            .map_err(refused(format!("Application {}", app.name)))?;
        if source == tokens::TokenSource::New {
            let path = tokens::token_path(self.data(), "application", &app.name);
            // Only where it is: stdout ends up in terminals, CI logs and log collectors.
            println!(
                "Issued a token for Application {}: saved in {}",
                app.name,
                path.display()
            );
        }
        Ok(())
    }

    async fn remove_stale_applications(&self, m: &Manifests) -> Result<(), StandaloneError> {
        let wanted: HashSet<String> = m
            .applications
            .iter()
            .map(|a| object_key(&a.namespace, &a.name))
            .collect();
        for app in self.core.registry.applications() {
            if !wanted.contains(&app.key) {
                tracing::warn!(application = %app.key, "application no longer in the manifests: its token is revoked, its data kept");
                self.core
                    .registry
                    .remove_application(&app.namespace, &app.name, false)
                    .await
                    .map_err(refused(format!("Application {}", app.name)))?;
                // As for a Heartbeat: the revoked token must not come back with the name.
                let _ =
                    std::fs::remove_file(tokens::token_path(self.data(), "application", &app.name));
            }
        }
        Ok(())
    }

    /// Creates or updates a Heartbeat's monitor, its token and its ping URL file.
    async fn heartbeat(
        &self,
        hb: &Object<HeartbeatSpec>,
        now: jiff::Timestamp,
    ) -> Result<(), StandaloneError> {
        let app = self.application_of(hb)?;
        let (token, source, url_path) = tokens::heartbeat_files(
            self.data(),
            self.dir,
            &hb.name,
            hb.spec.token_file.as_deref(),
            self.config.base_url(),
        )
        .await
        .map_err(|cause| StandaloneError::ObjectTokenFile {
            source_file: hb.source.display().to_string(),
            object: format!("Heartbeat {}", hb.name),
            cause,
        })?;
        let key = object_key(&hb.namespace, &hb.name);
        let existing = self.core.engine.get(&key);
        if let Some(api) = existing.as_ref().filter(|e| e.def.origin == Origin::Api) {
            return Err(StandaloneError::TakesOver {
                name: hb.name.clone(),
                application: api
                    .def
                    .application()
                    .map(|a| a.rsplit('/').next().unwrap_or(a).to_string()),
            });
        }
        self.index_token(
            &token,
            key,
            existing.as_ref().map(|e| e.def.token),
            &hb.name,
        )
        .await?;
        let def = DeclaredHeartbeat {
            namespace: &hb.namespace,
            name: &hb.name,
            spec: &hb.spec,
            application: app.as_deref(),
            cron_job: None,
            token: token.hash(),
            ping_hint: tokens::ping_hint(&hb.name),
            origin: Origin::Manifest,
            id: random_id()?,
            channels: channels::of_heartbeat(
                &self.core.channels,
                &hb.namespace,
                &hb.name,
                &hb.spec,
                app.as_deref(),
            )?,
        }
        .monitor_def(
            existing.as_ref().map(|e| &e.def),
            self.config.webhook_url.as_deref(),
            now,
        )
        .map_err(|source| StandaloneError::Spec {
            object: format!("Heartbeat {}", hb.name),
            source,
        })?;
        if existing.as_ref().is_none_or(|e| e.def != def) {
            self.core
                .engine
                .upsert(def)
                .await
                .map_err(engine_refused(&hb.name))?;
        }
        if source == tokens::TokenSource::New {
            println!(
                "Issued a ping URL for Heartbeat {}: saved in {}",
                hb.name,
                url_path.display()
            );
        }
        Ok(())
    }

    /// The Application a Heartbeat's `applicationRef` names, which must be defined.
    fn application_of(
        &self,
        hb: &Object<HeartbeatSpec>,
    ) -> Result<Option<Arc<AppInfo>>, StandaloneError> {
        let Some(r) = &hb.spec.application_ref else {
            return Ok(None);
        };
        match self
            .core
            .registry
            .application(&object_key(&hb.namespace, &r.name))
        {
            Some(app) => Ok(Some(app)),
            None => Err(StandaloneError::UnknownApplication {
                source_file: hb.source.display().to_string(),
                heartbeat: hb.name.clone(),
                namespace: hb.namespace.clone(),
                application: r.name.clone(),
            }),
        }
    }

    /// Indexes a Heartbeat's ping token, replacing the one it had.
    async fn index_token(
        &self,
        token: &Token,
        key: String,
        old: Option<crate::core::token::TokenHash>,
        name: &str,
    ) -> Result<(), StandaloneError> {
        let owner = TokenOwner {
            kind: TokenKind::Heartbeat,
            key,
        };
        self.core
            .registry
            .put_token(token.hash(), owner, old)
            .await
            .map_err(refused(format!("Heartbeat {name}")))
    }

    async fn remove_stale_heartbeats(&self, m: &Manifests) -> Result<(), StandaloneError> {
        // A set: thousands of Heartbeats against thousands of monitors, pairwise, took
        // tens of millions of comparisons at every start.
        let wanted: HashSet<String> = m
            .heartbeats
            .iter()
            .map(|h| object_key(&h.namespace, &h.name))
            .collect();
        for mon in self.core.engine.list() {
            if mon.def.origin == Origin::Manifest && !wanted.contains(&mon.def.key) {
                tracing::warn!(monitor = %mon.def.key, "heartbeat no longer in the manifests: removing it and revoking its token");
                self.core
                    .registry
                    .remove_token(mon.def.token)
                    .await
                    .map_err(refused(format!("Heartbeat {}", mon.def.name())))?;
                self.core
                    .engine
                    .remove(&mon.def.key)
                    .await
                    .map_err(engine_refused(mon.def.name()))?;
                // The revoked token's files go too: kept, a Heartbeat of that name defined
                // again later took the token up again, and its old URL answered once more.
                tokens::remove_heartbeat_files(self.data(), mon.def.name());
            }
        }
        Ok(())
    }

    /// The dashboard and status admin token: `<data>/tokens/admin.token`, issued once.
    async fn admin_token(&self) -> Result<(), StandaloneError> {
        let path = self.data().join("tokens").join("admin.token");
        let token = match tokens::read_token(&path)? {
            Some(t) => t,
            None => {
                let t = Token::generate(TokenKind::Admin)?;
                tokens::write_private(&path, t.expose())?;
                println!(
                    "Issued the admin token (sees every application and monitor): saved in {}",
                    path.display()
                );
                t
            }
        };
        self.core
            .registry
            .set_admin_token(token.hash())
            .await
            .map_err(refused("admin token".into()))
    }
}

/// Runs standalone mode until SIGTERM/Ctrl-C. The port answers (503 with `Retry-After`)
/// while the database is recovered and the manifests are applied. With a database shared
/// by several replicas, see [`run_replica`].
pub async fn run(config: ServerConfig, manifests_dir: PathBuf) -> Result<(), StandaloneError> {
    // Before the store is opened: a wrong directory leaves no new data directory behind.
    let loaded = manifests::load_dir(&manifests_dir, config.min_interval)?;
    let port = crate::server::bind_early(config.listen, config.http).await?;
    port.waiting_for("the database to open");
    if let Some(url) = config.database_url.clone() {
        return run_replica(config, url, port, manifests_dir, loaded).await;
    }
    let mut server = Server::open(config).await?;
    port.waiting_for("the manifests to be applied");
    let m = apply_manifests(&mut server, &manifests_dir).await?;
    log_applied(&m, &manifests_dir);
    server
        .core
        .spawn_retention(std::time::Duration::from_secs(3600));
    server.serve_on(port, shutdown_signal()).await?;
    Ok(())
}

fn log_applied(m: &Manifests, dir: &Path) {
    tracing::info!(
        applications = m.applications.len(),
        heartbeats = m.heartbeats.len(),
        manifests = %dir.display(),
        "manifests applied"
    );
}

/// How often a leader deletes what is past retention.
const RETENTION_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// How long a starting replica waits for its first attempt at the leadership before it
/// serves as a follower. The lock is tried at once, so this is the time one attempt takes
/// on a slow database; a replica that wins declares the manifests before it serves, as a
/// single process does, so clients never see its tokens unknown.
const FIRST_ATTEMPT: std::time::Duration = std::time::Duration::from_secs(2);

/// One of several replicas on a shared database: serves requests from the start (ready as
/// a follower), seeks the leadership through the database's advisory lock, and once it
/// leads declares the manifests and starts the leader's work (deadlines, alert delivery,
/// retention). A leader that loses the leadership returns
/// [`StandaloneError::LeadershipLost`]: the process exits 1 and restarts as a follower.
async fn run_replica(
    mut config: ServerConfig,
    url: crate::core::store_pg::DatabaseUrl,
    port: crate::http::Port,
    manifests_dir: PathBuf,
    loaded: Manifests,
) -> Result<(), StandaloneError> {
    use crate::core::store_pg::elector::{AdvisoryLock, Timing};
    config.hold_deadlines = true;
    config.elect_leader = true;
    let named = config.installation.is_some();
    // A broken manifests directory failed every replica at start ([`run`]), not only the
    // one that leads.
    let mut server = Server::open(config).await?;
    // Before this replica writes anything, leader or not: under the default name another
    // standalone installation on this database is not refused.
    if !named {
        installation::warn_if_shared(
            &server.core.registry,
            crate::config::STANDALONE_INSTALLATION,
            &loaded,
            &manifests_dir,
            &server.config.data_dir,
        );
    }
    install_catalogue(&mut server);
    // Every replica holds its admin token, not only the leader: a follower serves the
    // dashboard too.
    let dir = manifests_dir.as_path();
    let (core, config) = (&server.core, &server.config);
    Apply { core, config, dir }.admin_token().await?;
    let (core, config, courier) = (server.core.clone(), server.config.clone(), server.courier());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let on_signal = stop_tx.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        on_signal.send_replace(true);
    });
    let stopped = move || {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    let elector = AdvisoryLock::new(url, crate::core::leadership::identity(), Timing::default());
    let role = core.role.clone();
    let campaign = role.campaign(Box::new(elector));
    tokio::pin!(campaign);
    port.waiting_for("the first attempt at the leadership");
    let first = tokio::select! {
        term = &mut campaign => Some(term?),
        () = tokio::time::sleep(FIRST_ATTEMPT) => None,
        () = stopped() => return Ok(()),
    };
    let (mut term, mut serving) = match first {
        Some(term) => {
            port.waiting_for("the manifests to be applied");
            lead(&core, &config, &manifests_dir, courier, &term).await?;
            (term, tokio::spawn(server.serve_on(port, stopped())))
        }
        None => {
            let mut serving = tokio::spawn(server.serve_on(port, stopped()));
            let term = tokio::select! {
                term = &mut campaign => term?,
                served = &mut serving => return finished(served),
            };
            lead(&core, &config, &manifests_dir, courier, &term).await?;
            (term, serving)
        }
    };
    tokio::select! {
        reason = role.until_lost(&mut term) => {
            // The requests in flight are answered (a deposed leader's writes are refused
            // anyway) before the process ends, so no client sees a dropped connection.
            stop_tx.send_replace(true);
            let _ = tokio::time::timeout(DRAIN_WITHIN, &mut serving).await;
            Err(StandaloneError::LeadershipLost(reason))
        }
        served = &mut serving => finished(served),
    }
}

/// How long a replica that lost the leadership waits for the requests in flight.
const DRAIN_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Takes office under `term`, then does the leader's work: the manifests declared, then
/// deadlines, alert delivery, retention.
async fn lead(
    core: &Services,
    config: &ServerConfig,
    manifests_dir: &Path,
    courier: Arc<dyn crate::core::alert::Deliver>,
    term: &crate::core::leadership::Term,
) -> Result<(), StandaloneError> {
    core.promote(term)
        .await
        .map_err(|e| StandaloneError::Promotion(e.to_string()))?;
    let m = declare(core, config, manifests_dir).await?;
    log_applied(&m, manifests_dir);
    // Not worth refusing to lead over: the tokens it lacks show as null until next time.
    if let Err(e) = catalogue::share_tokens(core, &config.data_dir).await {
        tracing::warn!(error = %e, "storing the API monitors' tokens in the database failed");
    }
    core.start_leading(courier, RETENTION_EVERY);
    Ok(())
}

/// The outcome of the serving task.
fn finished(
    served: Result<Result<(), ServerError>, tokio::task::JoinError>,
) -> Result<(), StandaloneError> {
    match served {
        Ok(result) => Ok(result?),
        Err(e) => Err(StandaloneError::Server(ServerError::Http {
            addr: String::new(),
            source: std::io::Error::other(e),
        })),
    }
}
