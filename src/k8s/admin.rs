//! The operator's admin token: kept in a Secret in the operator's own namespace, so
//! whoever may read that Secret may open the whole dashboard, and nobody else.
//!
//! The Secret is created with a fresh token when missing; an existing one (for example
//! created by GitOps with your own token) is used as it is. The operator watches that one
//! Secret (a field selector on its name, which RBAC can limit to it), so editing or
//! deleting it rotates the token at once without a restart, and costs no polling.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};

use super::secrets::{MANAGED_BY, SecretError};
use crate::core::registry::Registry;
use crate::core::token::{Token, TokenHash, TokenKind};

/// Where the admin token lives.
#[derive(Debug, Clone)]
pub struct AdminSecret {
    /// Namespace (the operator's own).
    pub namespace: String,
    /// Secret name.
    pub name: String,
}

/// The namespace the operator runs in: the service account's namespace in a pod,
/// otherwise `default`.
pub fn own_namespace() -> String {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

fn token_of(secret: &Secret) -> Option<Token> {
    super::secrets::token_in(secret).map(Token::from_string)
}

fn unusable(name: &str) -> SecretError {
    SecretError::NotAdoptable(format!(
        "Secret {name} has no key `token` of at least 16 characters; add one or delete the Secret to get a new token"
    ))
}

/// Reads the admin token from its Secret, creating the Secret when it does not exist.
pub async fn ensure(api: &Api<Secret>, name: &str) -> Result<Token, SecretError> {
    let err = |source| SecretError::Api {
        name: name.to_string(),
        source,
    };
    if let Some(secret) = api.get_opt(name).await.map_err(err)? {
        return token_of(&secret).ok_or_else(|| unusable(name));
    }
    let token = Token::generate(TokenKind::Admin)?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY.0.to_string(),
                MANAGED_BY.1.to_string(),
            )])),
            annotations: Some(BTreeMap::from([(
                "hartslag.dev/description".to_string(),
                "Admin token of the Hartslag dashboard: sees every application and monitor."
                    .to_string(),
            )])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            "token".to_string(),
            ByteString(token.expose().as_bytes().to_vec()),
        )])),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = name, "issued the dashboard admin token");
            Ok(token)
        }
        // Another replica (or a user) was faster: use theirs.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let secret = api.get(name).await.map_err(err)?;
            token_of(&secret).ok_or_else(|| unusable(name))
        }
        Err(e) => Err(err(e)),
    }
}

async fn install(registry: &Registry, current: &mut Option<TokenHash>, token: Token) {
    let hash = token.hash();
    if *current == Some(hash) {
        return;
    }
    match registry.set_admin_token(hash).await {
        Ok(()) => *current = Some(hash),
        Err(e) => tracing::error!(error = %e, "cannot install the admin token"),
    }
}

/// Keeps the registry's admin token equal to the Secret's, until the process ends: creates
/// the Secret when it is missing (or deleted), then follows it through a watch.
pub async fn keep_in_sync(api: Api<Secret>, name: String, registry: Registry) {
    let mut current: Option<TokenHash> = None;
    let config = super::caches::watch_config().fields(&format!("metadata.name={name}"));
    let mut events = watcher::watcher(api.clone(), config)
        .default_backoff()
        .boxed();
    let mut seen = false;
    while let Some(event) = events.next().await {
        let secret = match event {
            Ok(Event::Apply(s) | Event::InitApply(s)) => {
                seen = true;
                Some(s)
            }
            Ok(Event::Init) => {
                seen = false;
                None
            }
            Ok(Event::InitDone) if seen => None,
            // Missing, or just deleted: issue a new one (or pick up whoever was faster).
            Ok(Event::InitDone | Event::Delete(_)) => match ensure(&api, &name).await {
                Ok(token) => {
                    install(&registry, &mut current, token).await;
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot issue the admin token Secret; the dashboard admin login keeps the last known token");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the admin token Secret; the dashboard admin login keeps the last known token");
                None
            }
        };
        if let Some(s) = secret {
            match token_of(&s) {
                Some(token) => install(&registry, &mut current, token).await,
                None => tracing::warn!(secret = %name, "{}", unusable(&name)),
            }
        }
    }
}
