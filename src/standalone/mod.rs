//! Standalone mode: the core driven by a directory of manifests instead of a cluster.

pub mod catalogue;
pub mod manifests;
pub mod tokens;

use std::path::{Path, PathBuf};

use crate::config::ServerConfig;
use crate::core::monitor::define::DeclaredHeartbeat;
use crate::core::monitor::engine::{EngineError, Origin};
use crate::core::registry::{RegistryError, object_key};
use crate::core::store::apps::TokenOwner;
use crate::core::token::{TokenError, TokenKind};
use crate::server::{Core, ServerError, shutdown_signal};

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
    /// A Heartbeat names an Application that is not defined.
    #[error(
        "Heartbeat {heartbeat}: spec.applicationRef names Application {application:?}, which is not defined in the manifests"
    )]
    UnknownApplication {
        /// Heartbeat name.
        heartbeat: String,
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
    /// No randomness for ids.
    #[error(transparent)]
    Random(#[from] TokenError),
    /// A definition was refused.
    #[error("{object}: {source}")]
    Registry {
        /// Which object.
        object: String,
        /// Why.
        source: RegistryError,
    },
}

/// Applies the manifests in `dir` to the core: applications (and their tokens) are created
/// or updated; ones that disappeared from the directory lose their token but keep their data.
pub async fn apply_manifests(
    core: &Core,
    dir: &Path,
) -> Result<manifests::Manifests, StandaloneError> {
    let m = manifests::load_dir(dir, core.config.min_interval)?;
    let data = &core.config.data_dir;
    for app in &m.applications {
        let (token, origin) = tokens::ensure_token(
            data,
            dir,
            TokenKind::Application,
            "application",
            &app.name,
            app.spec.token_file.as_deref(),
        )?;
        core.registry
            .upsert_application(&app.namespace, &app.name, app.spec.clone(), token.hash())
            .await
            .map_err(|source| StandaloneError::Registry {
                object: format!("Application {}", app.name),
                source,
            })?;
        if origin == tokens::TokenSource::New {
            let path = tokens::token_path(data, "application", &app.name);
            println!(
                "Issued a token for Application {}: {} (saved in {})",
                app.name,
                token.expose(),
                path.display()
            );
        }
    }
    let wanted: Vec<String> = m
        .applications
        .iter()
        .map(|a| object_key(&a.namespace, &a.name))
        .collect();
    for app in core.registry.applications() {
        if !wanted.contains(&app.key) {
            tracing::info!(application = %app.key, "application no longer in the manifests: its token is revoked, its data kept");
            core.registry
                .remove_application(&app.namespace, &app.name, false)
                .await
                .map_err(|source| StandaloneError::Registry {
                    object: format!("Application {}", app.name),
                    source,
                })?;
        }
    }
    apply_heartbeats(core, dir, &m).await?;
    ensure_admin_token(core).await?;
    let _ = core
        .catalogue
        .set(std::sync::Arc::new(catalogue::StandaloneCatalogue::new(
            core.clone(),
        )));
    Ok(m)
}

/// The dashboard/status admin token: `<data>/tokens/admin.token`.
async fn ensure_admin_token(core: &Core) -> Result<(), StandaloneError> {
    let path = core.config.data_dir.join("tokens").join("admin.token");
    let token = match tokens::read_token(&path)? {
        Some(t) => t,
        None => {
            let t = crate::core::token::Token::generate(TokenKind::Admin)?;
            tokens::write_private(&path, t.expose())?;
            println!(
                "Issued the admin token (sees every application and monitor): saved in {}",
                path.display()
            );
            t
        }
    };
    core.registry
        .set_admin_token(token.hash())
        .await
        .map_err(|source| StandaloneError::Registry {
            object: "admin token".into(),
            source,
        })
}

async fn apply_heartbeats(
    core: &Core,
    dir: &Path,
    m: &manifests::Manifests,
) -> Result<(), StandaloneError> {
    let data = &core.config.data_dir;
    let now = jiff::Timestamp::now();
    for hb in &m.heartbeats {
        let key = object_key(&hb.namespace, &hb.name);
        let app = match &hb.spec.application_ref {
            Some(r) => {
                let app_key = object_key(&hb.namespace, &r.name);
                let Some(app) = core.registry.application(&app_key) else {
                    return Err(StandaloneError::UnknownApplication {
                        heartbeat: hb.name.clone(),
                        application: r.name.clone(),
                    });
                };
                Some(app)
            }
            None => None,
        };
        let (token, origin) = tokens::ensure_token(
            data,
            dir,
            TokenKind::Heartbeat,
            "heartbeat",
            &hb.name,
            hb.spec.token_file.as_deref(),
        )?;
        let url_path = tokens::write_ping_url(data, &hb.name, &token, core.config.base_url())?;
        let existing = core.engine.get(&key);
        let old_token = existing.as_ref().map(|e| e.def.token);
        core.registry
            .put_token(
                token.hash(),
                TokenOwner {
                    kind: TokenKind::Heartbeat,
                    key: key.clone(),
                },
                old_token,
            )
            .await
            .map_err(|source| StandaloneError::Registry {
                object: format!("Heartbeat {}", hb.name),
                source,
            })?;
        let def = DeclaredHeartbeat {
            namespace: &hb.namespace,
            name: &hb.name,
            spec: &hb.spec,
            application: app.as_deref(),
            token: token.hash(),
            ping_hint: tokens::ping_hint(&url_path),
            origin: Origin::Manifest,
            id: crate::core::token::random_id()?,
        }
        .monitor_def(
            existing.as_ref().map(|e| &e.def),
            core.config.webhook_url.as_deref(),
            now,
        );
        let unchanged = existing.as_ref().is_some_and(|e| e.def == def);
        if !unchanged {
            core.engine
                .upsert(def)
                .await
                .map_err(|source| StandaloneError::Engine {
                    object: hb.name.clone(),
                    source,
                })?;
        }
        if origin == tokens::TokenSource::New {
            println!(
                "Issued a ping URL for Heartbeat {}: saved in {}",
                hb.name,
                url_path.display()
            );
        }
    }
    let wanted: Vec<String> = m
        .heartbeats
        .iter()
        .map(|h| object_key(&h.namespace, &h.name))
        .collect();
    for mon in core.engine.list() {
        if mon.def.origin == Origin::Manifest && !wanted.contains(&mon.def.key) {
            tracing::info!(monitor = %mon.def.key, "heartbeat no longer in the manifests: removing it and revoking its token");
            core.registry
                .remove_token(mon.def.token)
                .await
                .map_err(|source| StandaloneError::Registry {
                    object: format!("Heartbeat {}", mon.def.name),
                    source,
                })?;
            core.engine
                .remove(&mon.def.key)
                .await
                .map_err(|source| StandaloneError::Engine {
                    object: mon.def.name.clone(),
                    source,
                })?;
        }
    }
    Ok(())
}

/// Runs standalone mode until SIGTERM/Ctrl-C.
pub async fn run(config: ServerConfig, manifests_dir: PathBuf) -> Result<(), StandaloneError> {
    let core = Core::open(config)?;
    let m = apply_manifests(&core, &manifests_dir).await?;
    tracing::info!(
        applications = m.applications.len(),
        heartbeats = m.heartbeats.len(),
        manifests = %manifests_dir.display(),
        "manifests applied"
    );
    core.spawn_retention(std::time::Duration::from_secs(3600));
    let listener = core.bind().await?;
    core.serve(listener, shutdown_signal()).await?;
    Ok(())
}
