//! Token Secrets: issued by the operator and owned by their resource, or the user's own,
//! adopted only when its owner opted in.
//!
//! The rules, decided by [`classify`] without I/O:
//! - No Secret of that name: create one (type `Opaque`, owned by the resource, labelled).
//! - A Secret whose ownerReference is this resource (same uid) is ours: keep its token and
//!   restore what is missing.
//! - Any other Secret is adopted only when it is of type `Opaque`, carries the annotation
//!   `hartslag.dev/adopt: "true"` and a `token` of at least 16 characters. The operator
//!   then adds the cache label (and `ping-url` for a Heartbeat). Anything else — a
//!   service-account token, another Heartbeat's Secret, a Secret without the annotation —
//!   is left byte for byte as it is and its token is not accepted: whoever may create a
//!   Heartbeat must not be able to read a Secret through it.
//!
//! Every Secret the operator writes carries the label `hartslag.dev/token`, and the operator
//! watches only Secrets with that label: a ping or a resync never costs a Secret request.
//!
//! A token issued again to a resource that has one (its Secret was deleted, or lost its
//! token) is taken into the registry before the Secret is written ([`Wanted::hold`]), and
//! given back if the write fails, so it works from the moment anyone can read it. A first
//! token works once its monitor or Application is defined, after the Secret is written:
//! defining them first would arm a monitor (or accept an Application its Heartbeats then
//! rely on) for a resource that a conflicting, unadoptable Secret can still get refused,
//! and that cannot be taken back without effects; `Ready=True` says the token works.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::core::registry::{HeldToken, Registry, RegistryError};
use crate::core::storage::TokenOwner;
use crate::core::token::{Token, TokenKind};

/// Label on every Secret the operator creates (the contract's `managed-by`).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "hartslag");
/// Label on every Secret whose token the operator uses: `issued` or `adopted`. The watch
/// selects on it.
pub const TOKEN_LABEL: &str = "hartslag.dev/token";
/// Annotation by which a Secret's owner allows the operator to use (and write into) it.
pub const ADOPT_ANNOTATION: &str = "hartslag.dev/adopt";
/// Shortest token accepted from a Secret.
pub const MIN_TOKEN_LEN: usize = 16;

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
    /// A Secret of that name exists and may not be used; the message says how to opt in.
    #[error("{0}")]
    NotAdoptable(String),
    /// The Secret's token already belongs to another resource.
    #[error(
        "the token in Secret {0} is already used by another Heartbeat or Application; give each its own token"
    )]
    TokenInUse(String),
    /// The Secret appeared between a conflict and the read that followed it, or went and
    /// came back; the next reconcile settles it.
    #[error("Secret {0} changed while it was being created; trying again")]
    Raced(String),
    /// No randomness.
    #[error(transparent)]
    Token(#[from] crate::core::token::TokenError),
    /// A token issued again could not be taken into the registry.
    #[error("cannot take the new token: {0}")]
    Hold(#[source] RegistryError),
}

impl SecretError {
    /// The API server's status code, when it answered.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            Self::Api {
                source: kube::Error::Api(s),
                ..
            } => Some(s.code),
            _ => None,
        }
    }
}

/// What an existing Secret (or its absence) means for a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// No such Secret.
    Missing,
    /// Owned by this resource; its token, when it holds a usable one.
    Ours(Option<String>),
    /// The owner opted in; its token.
    Adoptable(String),
    /// Not ours and not adoptable; the message says why and how to opt in.
    NotAdoptable(String),
}

/// The token text in a Secret's `token` key, when usable.
pub fn token_in(secret: &Secret) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get("token")
        .and_then(|b| String::from_utf8(b.0.clone()).ok())
        .map(|t| t.trim().to_string())
        .filter(|t| t.len() >= MIN_TOKEN_LEN)
}

fn owned_by(secret: &Secret, owner_uid: &str) -> bool {
    secret
        .metadata
        .owner_references
        .as_ref()
        .is_some_and(|refs| refs.iter().any(|r| r.uid == owner_uid))
}

fn opted_in(secret: &Secret) -> bool {
    secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ADOPT_ANNOTATION))
        .is_some_and(|v| v == "true")
}

/// Applies the rules of the module documentation to `existing`.
pub fn classify(existing: Option<&Secret>, name: &str, owner_uid: &str) -> Classified {
    let Some(secret) = existing else {
        return Classified::Missing;
    };
    if owned_by(secret, owner_uid) {
        return Classified::Ours(token_in(secret));
    }
    let how = format!(
        "to use your own token, create Secret {name} with type Opaque, a key `token` of at least {MIN_TOKEN_LEN} characters and the annotation {ADOPT_ANNOTATION}: \"true\"; or choose another tokenSecretName"
    );
    let type_ = secret.type_.as_deref().unwrap_or("Opaque");
    if !opted_in(secret) {
        return Classified::NotAdoptable(format!(
            "Secret {name} exists and does not allow Hartslag to use it (no annotation {ADOPT_ANNOTATION}: \"true\"); it was left unchanged. {how}"
        ));
    }
    if type_ != "Opaque" {
        return Classified::NotAdoptable(format!(
            "Secret {name} has type {type_}; only Opaque Secrets are adopted. {how}"
        ));
    }
    match token_in(secret) {
        Some(t) => Classified::Adoptable(t),
        None => Classified::NotAdoptable(format!(
            "Secret {name} allows adoption but has no key `token` of at least {MIN_TOKEN_LEN} characters. {how}"
        )),
    }
}

/// The merge patch that brings a used Secret up to date, or `None` when it is: the token
/// label, the token itself when it was reissued, and `ping-url` for Heartbeats.
pub fn patch_for(
    secret: &Secret,
    label: &str,
    token: Option<&Token>,
    ping_url: Option<&str>,
) -> Option<Value> {
    let mut patch = json!({});
    let has_label = secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(TOKEN_LABEL))
        .is_some();
    if !has_label {
        patch["metadata"] = json!({ "labels": { TOKEN_LABEL: label } });
    }
    let mut data = serde_json::Map::new();
    if let Some(t) = token {
        data.insert("token".into(), json!(t.expose()));
    }
    if let Some(u) = ping_url {
        let current = secret
            .data
            .as_ref()
            .and_then(|d| d.get("ping-url"))
            .map(|b| b.0.as_slice());
        if current != Some(u.as_bytes()) {
            data.insert("ping-url".into(), json!(u));
        }
    }
    if !data.is_empty() {
        patch["stringData"] = Value::Object(data);
    }
    (patch != json!({})).then_some(patch)
}

/// A new issued Secret.
pub fn issued(
    name: &str,
    owner: OwnerReference,
    token: &Token,
    ping_url: Option<String>,
) -> Secret {
    let mut data = BTreeMap::new();
    data.insert(
        "token".to_string(),
        ByteString(token.expose().as_bytes().to_vec()),
    );
    if let Some(u) = ping_url {
        data.insert("ping-url".to_string(), ByteString(u.into_bytes()));
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
                (TOKEN_LABEL.to_string(), "issued".to_string()),
            ])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// The outcome of ensuring a Secret.
#[derive(Debug)]
pub struct Ensured {
    /// The token in the Secret.
    pub token: Token,
    /// A new token was issued now.
    pub issued: bool,
    /// The user's Secret was adopted now.
    pub adopted: bool,
    /// A token issued again, working ahead of its store write ([`Wanted::hold`]): keep it
    /// until the token is stored (or the pipeline gave up), then drop it.
    pub held: Option<HeldToken>,
}

/// Where a token issued again to a defined owner is taken before its Secret is written.
pub struct Hold<'a> {
    /// The registry.
    pub registry: &'a Registry,
    /// The owner, which the registry knows already.
    pub owner: TokenOwner,
}

impl Hold<'_> {
    fn take(&self, token: &Token) -> Result<Option<HeldToken>, SecretError> {
        self.registry
            .hold_token(token.hash(), self.owner.clone())
            .map_err(SecretError::Hold)
    }
}

/// What [`ensure`] needs to know about the resource.
pub struct Wanted<'a> {
    /// Secret name.
    pub name: &'a str,
    /// The resource, as an owner reference (uid included).
    pub owner: OwnerReference,
    /// Token kind for new tokens.
    pub kind: TokenKind,
    /// The ping URL for a token (Heartbeats), `None` for Applications.
    pub ping_url: &'a (dyn Fn(&Token) -> Option<String> + Send + Sync),
    /// Whether a token already belongs to another resource: such a Secret is refused
    /// before anything is written into it.
    pub taken: &'a (dyn Fn(&Token) -> bool + Send + Sync),
    /// Whether the watch cache holds its complete list: only then does a Secret missing
    /// from it mean one that is (almost certainly) missing.
    pub cache_complete: bool,
    /// For an owner with a token already (monitor armed, Application defined): a new
    /// token is taken here before the Secret is written, and given back if the write fails.
    pub hold: Option<Hold<'a>>,
}

impl Wanted<'_> {
    /// A new token, taken into the registry first when [`Wanted::hold`] says so.
    fn new_token(&self) -> Result<(Token, Option<HeldToken>), SecretError> {
        let token = Token::generate(self.kind)?;
        let held = match &self.hold {
            Some(h) => h.take(&token)?,
            None => None,
        };
        Ok((token, held))
    }
}

/// Issues a new token into a new Secret `wanted.name`; `None` when a Secret of that name
/// exists already (the API server answers 409 and writes nothing).
async fn issue(api: &Api<Secret>, wanted: &Wanted<'_>) -> Result<Option<Ensured>, SecretError> {
    // A held token is given back (dropped) on every way out but success.
    let (token, held) = wanted.new_token()?;
    let secret = issued(
        wanted.name,
        wanted.owner.clone(),
        &token,
        (wanted.ping_url)(&token),
    );
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(Some(Ensured {
            token,
            issued: true,
            adopted: false,
            held,
        })),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(None),
        Err(source) => Err(SecretError::Api {
            name: wanted.name.to_string(),
            source,
        }),
    }
}

/// Makes Secret `wanted.name` hold a usable token, writing only what is missing.
/// `cached` is the Secret from the watch cache. Once the cache is complete a Secret not in
/// it is usually missing, so it is created at once (one request, not a read and then a
/// create); only when one of that name exists already (not labelled yet, or the cache
/// lags) is it read and judged like a cached one. A refused create writes nothing. Before
/// the cache is complete (just after a start) the Secret is read first, so a restart
/// writes nothing.
pub async fn ensure(
    api: &Api<Secret>,
    cached: Option<&Secret>,
    wanted: Wanted<'_>,
) -> Result<Ensured, SecretError> {
    let name = wanted.name;
    let err = |source| SecretError::Api {
        name: name.to_string(),
        source,
    };
    let fetched;
    let existing = match cached {
        Some(s) => Some(s),
        None => {
            if wanted.cache_complete
                && let Some(ensured) = issue(api, &wanted).await?
            {
                return Ok(ensured);
            }
            fetched = api.get_opt(name).await.map_err(err)?;
            fetched.as_ref()
        }
    };
    let patch = |p: Value| async move {
        api.patch(name, &PatchParams::default(), &Patch::Merge(&p))
            .await
            .map_err(err)
    };
    match (classify(existing, name, &wanted.owner.uid), existing) {
        // Gone between the conflict and the read (or never cached): create it; a second
        // conflict is a race the next reconcile settles.
        (Classified::Missing, _) | (_, None) => issue(api, &wanted)
            .await?
            .ok_or_else(|| SecretError::Raced(name.to_string())),
        (Classified::Ours(Some(t)), Some(s)) => {
            let token = Token::from_string(t);
            if let Some(p) = patch_for(s, "issued", None, (wanted.ping_url)(&token).as_deref()) {
                patch(p).await?;
            }
            Ok(Ensured {
                token,
                issued: false,
                adopted: false,
                held: None,
            })
        }
        (Classified::Ours(None), Some(s)) => {
            let (token, held) = wanted.new_token()?;
            let url = (wanted.ping_url)(&token);
            if let Some(p) = patch_for(s, "issued", Some(&token), url.as_deref()) {
                patch(p).await?;
            }
            Ok(Ensured {
                token,
                issued: true,
                adopted: false,
                held,
            })
        }
        (Classified::Adoptable(t), Some(s)) => {
            let token = Token::from_string(t);
            if (wanted.taken)(&token) {
                return Err(SecretError::TokenInUse(name.to_string()));
            }
            let p = patch_for(s, "adopted", None, (wanted.ping_url)(&token).as_deref());
            let adopted = p.is_some();
            if let Some(p) = p {
                patch(p).await?;
            }
            Ok(Ensured {
                token,
                issued: false,
                adopted,
                held: None,
            })
        }
        (Classified::NotAdoptable(why), _) => Err(SecretError::NotAdoptable(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(type_: &str, annotated: bool, owner: Option<&str>, token: Option<&str>) -> Secret {
        let mut s: Secret = serde_json::from_value(json!({
            "metadata": {"name": "byo"},
            "type": type_,
        }))
        .unwrap();
        if annotated {
            s.metadata.annotations =
                Some(BTreeMap::from([(ADOPT_ANNOTATION.into(), "true".into())]));
        }
        if let Some(uid) = owner {
            s.metadata.owner_references = Some(vec![OwnerReference {
                uid: uid.into(),
                ..Default::default()
            }]);
        }
        if let Some(t) = token {
            s.data = Some(BTreeMap::from([(
                "token".into(),
                ByteString(t.as_bytes().to_vec()),
            )]));
        }
        s
    }

    const GOOD: &str = "my-own-token-0123456789";

    #[test]
    fn only_annotated_opaque_secrets_with_a_token_are_adopted() {
        let c = |s: &Secret| classify(Some(s), "byo", "uid-1");
        assert_eq!(classify(None, "byo", "uid-1"), Classified::Missing);
        assert_eq!(
            c(&secret("Opaque", true, None, Some(GOOD))),
            Classified::Adoptable(GOOD.into())
        );
        for (s, why) in [
            (secret("Opaque", false, None, Some(GOOD)), "annotation"),
            (
                secret(
                    "kubernetes.io/service-account-token",
                    true,
                    None,
                    Some(GOOD),
                ),
                "only Opaque",
            ),
            (
                secret("Opaque", true, None, Some("short")),
                "no key `token`",
            ),
            // Another Heartbeat's issued Secret: owned, but not by us.
            (
                secret("Opaque", false, Some("uid-2"), Some(GOOD)),
                "annotation",
            ),
        ] {
            match c(&s) {
                Classified::NotAdoptable(m) => {
                    assert!(m.contains(why), "{m}");
                    assert!(
                        m.contains("hartslag.dev/adopt: \"true\""),
                        "says how to opt in: {m}"
                    );
                }
                other => panic!("{why}: {other:?}"),
            }
        }
    }

    #[test]
    fn our_own_secret_is_ours_with_or_without_a_usable_token() {
        assert_eq!(
            classify(
                Some(&secret("Opaque", false, Some("uid-1"), Some(GOOD))),
                "s",
                "uid-1"
            ),
            Classified::Ours(Some(GOOD.into()))
        );
        assert_eq!(
            classify(
                Some(&secret("Opaque", false, Some("uid-1"), None)),
                "s",
                "uid-1"
            ),
            Classified::Ours(None)
        );
    }

    #[test]
    fn a_secret_that_is_up_to_date_needs_no_write() {
        let mut s = secret("Opaque", false, Some("uid-1"), Some(GOOD));
        s.metadata.labels = Some(BTreeMap::from([(TOKEN_LABEL.into(), "issued".into())]));
        s.data
            .get_or_insert_with(BTreeMap::new)
            .insert("ping-url".into(), ByteString(b"http://x/ping".to_vec()));
        assert_eq!(patch_for(&s, "issued", None, Some("http://x/ping")), None);
        assert_eq!(
            patch_for(&s, "issued", None, Some("http://y/ping")),
            Some(json!({"stringData": {"ping-url": "http://y/ping"}}))
        );
        let adopted = secret("Opaque", true, None, Some(GOOD));
        assert_eq!(
            patch_for(&adopted, "adopted", None, None),
            Some(json!({"metadata": {"labels": {TOKEN_LABEL: "adopted"}}}))
        );
    }

    #[test]
    fn an_issued_secret_is_opaque_owned_and_labelled() {
        let token = Token::from_string(GOOD);
        let owner = OwnerReference {
            uid: "uid-1".into(),
            kind: "Heartbeat".into(),
            ..Default::default()
        };
        let s = issued("hb-heartbeat", owner, &token, Some("http://x/ping".into()));
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        let labels = s.metadata.labels.clone().unwrap();
        assert_eq!(labels[MANAGED_BY.0], "hartslag");
        assert_eq!(labels[TOKEN_LABEL], "issued");
        assert_eq!(
            classify(Some(&s), "hb-heartbeat", "uid-1"),
            Classified::Ours(Some(GOOD.into()))
        );
    }
}
