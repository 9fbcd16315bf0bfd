//! Management-API writes in standalone mode: monitors created through the API live in the
//! store next to the manifest ones (with token files like theirs); manifest monitors are
//! read-only through the API, because the next start would undo any change.

use futures::future::BoxFuture;

use super::tokens;
use crate::config::ServerConfig;
use crate::core::Services;
use crate::core::catalogue::{
    CatalogueError, CreateRequest, MonitorCatalogue, UpdateRequest, check_quota, slug,
    updated_cadence,
};
use crate::core::monitor::define::DeclaredHeartbeat;
use crate::core::monitor::engine::{Monitor, Origin};
use crate::core::registry::{AppInfo, object_key};
use crate::core::storage::TokenOwner;
use crate::core::token::{Token, TokenKind, random_id};

/// The standalone [`MonitorCatalogue`].
pub struct StandaloneCatalogue {
    core: Services,
    config: ServerConfig,
    /// Held by every create and delete: a create finds a free name, then writes its token
    /// files and defines the monitor under it, and two creates of one name at once would
    /// otherwise both find it free and write each other's files.
    writes: tokio::sync::Mutex<()>,
}

impl StandaloneCatalogue {
    /// A catalogue over `core`, with token files under `config`'s data directory.
    pub fn new(core: Services, config: ServerConfig) -> Self {
        Self {
            core,
            config,
            writes: tokio::sync::Mutex::new(()),
        }
    }

    /// The slug of `display_name`, numbered (`-2`, `-3`, ...) past every name a monitor,
    /// a retained monitor or a token file of `app`'s namespace already has.
    async fn free_name(&self, app: &AppInfo, display_name: &str) -> String {
        let engine = &self.core.engine;
        let taken = |name: String| async move {
            let key = object_key(&app.namespace, &name);
            engine.get(&key).is_some()
                || engine.retained(&key).await.is_some()
                || tokens::token_path(&self.config.data_dir, "heartbeat", &name).exists()
        };
        let base = slug(display_name);
        let mut name = base.clone();
        let mut n = 1;
        while taken(name.clone()).await {
            n += 1;
            name = format!("{base}-{n}");
        }
        name
    }

    /// `monitor` as it is now (read under [`Self::writes`]); `NotFound` once it was
    /// deleted, even if another of the same name was created since.
    fn current(&self, monitor: &Monitor) -> Result<Monitor, CatalogueError> {
        self.core
            .engine
            .get(&monitor.def.key)
            .filter(|now| now.def.id == monitor.def.id)
            .ok_or(CatalogueError::NotFound)
    }
}

/// Monitor `m`'s token from its token file in `data`, or else from its ping URL file (a
/// manifest Heartbeat whose `tokenFile` names its own), if it is `m`'s: a file left by a
/// monitor deleted and defined again elsewhere holds another token.
fn token_file(data: &std::path::Path, m: &Monitor) -> Option<Token> {
    let path = tokens::token_path(data, "heartbeat", m.def.name());
    let token = tokens::read_token(&path)
        .ok()
        .flatten()
        .or_else(|| tokens::ping_url_token(data, m.def.name()))?;
    token.hash().ct_eq(&m.def.token).then_some(token)
}

/// Stores, where replicas share a database, the tokens of the monitors created through
/// the API that it lacks and this replica's data directory has: monitors created before
/// the database kept them (an earlier release, or copied by `hartslag migrate`). The
/// leader does this when it takes office, so every replica shows their tokens from then on.
pub async fn share_tokens(core: &Services, data: &std::path::Path) -> Result<(), CatalogueError> {
    let api: Vec<Monitor> = core
        .engine
        .list()
        .into_iter()
        .filter(|m| m.def.origin == Origin::Api)
        .collect();
    let keys = api.iter().map(|m| m.def.key.clone()).collect();
    let stored = core
        .registry
        .shared_ping_tokens(keys)
        .await
        .map_err(unavailable)?;
    for m in api.iter().filter(|m| !stored.contains_key(&m.def.key)) {
        if let Some(token) = token_file(data, m) {
            core.registry
                .share_ping_token(&m.def.key, Some(token.expose()))
                .await
                .map_err(unavailable)?;
        }
    }
    Ok(())
}

fn unavailable(e: impl std::fmt::Display) -> CatalogueError {
    CatalogueError::Unavailable(e.to_string())
}

fn read_only(m: &Monitor) -> CatalogueError {
    CatalogueError::ReadOnly(format!(
        "heartbeat {} is defined by a manifest file; change or remove it there",
        m.def.name()
    ))
}

impl MonitorCatalogue for StandaloneCatalogue {
    fn create<'a>(
        &'a self,
        app: &'a AppInfo,
        req: CreateRequest,
    ) -> BoxFuture<'a, Result<(Monitor, String), CatalogueError>> {
        Box::pin(async move {
            let _writing = self.writes.lock().await;
            let core = &self.core;
            check_quota(&core.engine, app)?;
            let data = &self.config.data_dir;
            let name = self.free_name(app, &req.name).await;
            let token = Token::generate(TokenKind::Heartbeat).map_err(unavailable)?;
            tokens::write_heartbeat_files(data, &name, &token, self.config.base_url())
                .map_err(unavailable)?;
            let key = object_key(&app.namespace, &name);
            core.registry
                .put_token(
                    token.hash(),
                    TokenOwner {
                        kind: TokenKind::Heartbeat,
                        key: key.clone(),
                    },
                    None,
                )
                .await
                .map_err(unavailable)?;
            core.registry
                .share_ping_token(&key, Some(token.expose()))
                .await
                .map_err(unavailable)?;
            let spec = req.heartbeat_spec(app);
            let def = DeclaredHeartbeat {
                namespace: &app.namespace,
                name: &name,
                spec: &spec,
                application: Some(app),
                cron_job: None,
                token: token.hash(),
                ping_hint: tokens::ping_hint(&name),
                origin: Origin::Api,
                id: random_id().map_err(unavailable)?,
                channels: super::channels::of_heartbeat(
                    &core.channels,
                    &app.namespace,
                    &name,
                    &spec,
                    Some(app),
                )
                .map_err(|e| CatalogueError::Invalid(e.to_string()))?,
            }
            .monitor_def(
                None,
                self.config.webhook_url.as_deref(),
                jiff::Timestamp::now(),
            )
            .map_err(|e| CatalogueError::Invalid(e.to_string()))?;
            let m = core.engine.upsert(def).await.map_err(unavailable)?;
            Ok((m, token.expose().to_string()))
        })
    }

    fn update<'a>(
        &'a self,
        _app: &'a AppInfo,
        monitor: &'a Monitor,
        req: UpdateRequest,
    ) -> BoxFuture<'a, Result<Monitor, CatalogueError>> {
        Box::pin(async move {
            if monitor.def.origin == Origin::Manifest {
                return Err(read_only(monitor));
            }
            // Changes to one monitor take effect one after another, each on what the one
            // before left: a copy read before the lock would undo a change made meanwhile,
            // or bring back a monitor deleted meanwhile.
            let _writing = self.writes.lock().await;
            let monitor = &self.current(monitor)?;
            let mut def = monitor.def.clone();
            if let Some(n) = req.name.clone() {
                def = def.edited(|d| d.display_name = Some(n));
            }
            (def.schedule, def.interval_secs) = updated_cadence(&monitor.def, &req);
            if let Some(g) = req.grace_secs {
                def.grace_secs = g;
            }
            if let Some(p) = req.paused {
                def.paused = p;
            }
            if def == monitor.def {
                return Ok(monitor.clone());
            }
            def.updated_at = jiff::Timestamp::now();
            self.core.engine.upsert(def).await.map_err(unavailable)
        })
    }

    fn delete<'a>(
        &'a self,
        _app: &'a AppInfo,
        monitor: &'a Monitor,
    ) -> BoxFuture<'a, Result<(), CatalogueError>> {
        Box::pin(async move {
            if monitor.def.origin == Origin::Manifest {
                return Err(read_only(monitor));
            }
            let _writing = self.writes.lock().await;
            let monitor = &self.current(monitor)?;
            let core = &self.core;
            core.registry
                .remove_token(monitor.def.token)
                .await
                .map_err(unavailable)?;
            core.registry
                .share_ping_token(&monitor.def.key, None)
                .await
                .map_err(unavailable)?;
            core.engine
                .remove(&monitor.def.key)
                .await
                .map_err(unavailable)?;
            tokens::remove_heartbeat_files(&self.config.data_dir, monitor.def.name());
            Ok(())
        })
    }

    fn tokens<'a>(&'a self, monitors: &'a [Monitor]) -> BoxFuture<'a, Vec<Option<String>>> {
        Box::pin(async move {
            // A store replicas share holds the tokens of the monitors created through
            // the API, whichever replica created them: it comes first, since a token
            // file another replica left (a monitor deleted and created again while that
            // one followed) may be stale. The data directory has the rest.
            let keys = monitors.iter().map(|m| m.def.key.clone()).collect();
            let mut shared = match self.core.registry.shared_ping_tokens(keys).await {
                Ok(shared) => shared,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the shared ping tokens failed");
                    Default::default()
                }
            };
            let data = &self.config.data_dir;
            monitors
                .iter()
                .map(|m| {
                    let from_file = || token_file(data, m).map(|t| t.expose().to_string());
                    shared.remove(&m.def.key).or_else(from_file)
                })
                .collect()
        })
    }
}
