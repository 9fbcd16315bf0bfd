//! Issued tokens in Secrets: created and owned by their custom resource, or adopted when a
//! user created the Secret first with a `token` key (bring your own token).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::core::token::{Token, TokenKind};

/// Label on every Secret the operator creates.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "hartslag");

/// Why a token Secret could not be ensured.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The API server refused or was unreachable.
    #[error("Secret {name}: {source}")]
    Api {
        /// Secret name.
        name: String,
        /// Why.
        source: kube::Error,
    },
    /// A Secret of that name exists, is not ours and has no usable `token` key.
    #[error(
        "Secret {0} exists but has no `token` key of at least 16 characters; add one or choose another tokenSecretName"
    )]
    Unusable(String),
    /// No randomness.
    #[error(transparent)]
    Token(#[from] crate::core::token::TokenError),
}

/// The outcome of ensuring a Secret.
#[derive(Debug)]
pub struct Ensured {
    /// The token in the Secret.
    pub token: Token,
    /// A new token was issued now.
    pub issued: bool,
    /// The Secret was created by the user and adopted.
    pub adopted: bool,
}

fn owned_by(secret: &Secret, owner: &OwnerReference) -> bool {
    secret
        .metadata
        .owner_references
        .as_ref()
        .is_some_and(|refs| refs.iter().any(|r| r.uid == owner.uid))
}

/// Makes sure Secret `name` holds a token (and `ping-url` for heartbeats, built by `url`).
pub async fn ensure(
    api: &Api<Secret>,
    name: &str,
    owner: OwnerReference,
    kind: TokenKind,
    url: impl Fn(&Token) -> Option<String>,
) -> Result<Ensured, SecretError> {
    let err = |source| SecretError::Api {
        name: name.to_string(),
        source,
    };
    let existing = api.get_opt(name).await.map_err(err)?;
    if let Some(secret) = existing {
        let token = secret
            .data
            .as_ref()
            .and_then(|d| d.get("token"))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .map(|t| t.trim().to_string())
            .filter(|t| t.len() >= 16);
        let ours = owned_by(&secret, &owner);
        match token {
            Some(t) => {
                let token = Token::from_string(t);
                if let Some(u) = url(&token) {
                    let current = secret
                        .data
                        .as_ref()
                        .and_then(|d| d.get("ping-url"))
                        .map(|b| b.0.clone());
                    if current.as_deref() != Some(u.as_bytes()) {
                        let patch = serde_json::json!({ "stringData": { "ping-url": u } });
                        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                            .await
                            .map_err(err)?;
                    }
                }
                return Ok(Ensured {
                    token,
                    issued: false,
                    adopted: !ours,
                });
            }
            None if ours => {
                let token = Token::generate(kind)?;
                let mut data = serde_json::json!({ "token": token.expose() });
                if let Some(u) = url(&token) {
                    data["ping-url"] = u.into();
                }
                let patch = serde_json::json!({ "stringData": data });
                api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(err)?;
                return Ok(Ensured {
                    token,
                    issued: true,
                    adopted: false,
                });
            }
            None => return Err(SecretError::Unusable(name.to_string())),
        }
    }
    let token = Token::generate(kind)?;
    let mut data = BTreeMap::new();
    data.insert(
        "token".to_string(),
        ByteString(token.expose().as_bytes().to_vec()),
    );
    if let Some(u) = url(&token) {
        data.insert("ping-url".to_string(), ByteString(u.into_bytes()));
    }
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY.0.to_string(),
                MANAGED_BY.1.to_string(),
            )])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    };
    api.create(&PostParams::default(), &secret)
        .await
        .map_err(err)?;
    Ok(Ensured {
        token,
        issued: true,
        adopted: false,
    })
}
