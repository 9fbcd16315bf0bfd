//! Standalone mode: the core driven by a directory of manifests instead of a cluster.

pub mod manifests;
pub mod tokens;

use std::path::{Path, PathBuf};

use crate::config::ServerConfig;
use crate::registry::{RegistryError, object_key};
use crate::server::{Core, ServerError, shutdown_signal};
use crate::token::TokenKind;

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
    let m = manifests::load_dir(dir)?;
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
        if origin == tokens::Origin::New {
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
    Ok(m)
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
