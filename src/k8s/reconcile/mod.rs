//! Reconcilers, one per kind. Each is a pipeline of named steps — validate, resolve what
//! it refers to, ensure its token Secret, build the core's definition (pure), apply it to
//! the core — ending in a [`Verdict`] that the status writer turns into status. A step
//! either passes its result on or stops the pipeline with a [`Stop`]: a refusal the user
//! can fix (shown as `Ready=False` with a reason, and a Warning Event) or an error that is
//! retried with backoff.
//!
//! New kinds add a module with their own steps and reuse the finishing steps here.

pub mod alerts;
pub mod application;
pub mod heartbeat;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use super::context::{Context, RESYNC, spread};
use super::secrets::SecretError;
use super::status::{Lane, Outcome, Refusal, Target, Verdict, model::kinds};

/// The steps of the pipelines, named in errors and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Checking the spec.
    Validate,
    /// Finding the Application a Heartbeat belongs to.
    Application,
    /// Checking the Application's Heartbeat quota.
    Quota,
    /// Ensuring the token Secret.
    Secret,
    /// Reading webhook URLs from Secrets.
    Alerts,
    /// Registering the token and definition with the core.
    Apply,
    /// Removing what a deleted resource left in the core.
    Cleanup,
    /// Removing the finalizer of earlier versions.
    Finalizer,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Self::Validate => "validate",
            Self::Application => "application",
            Self::Quota => "quota",
            Self::Secret => "secret",
            Self::Alerts => "alerts",
            Self::Apply => "apply",
            Self::Cleanup => "cleanup",
            Self::Finalizer => "finalizer",
        };
        f.write_str(s)
    }
}

/// Why a reconcile failed; it is retried with exponential backoff and jitter.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The object has no namespace or uid (never the case for objects from the API server).
    #[error("the object has no {0}")]
    Incomplete(&'static str),
    /// The API server refused or was unreachable.
    #[error("{step}: {source}")]
    Kube {
        /// Where.
        step: Step,
        /// Why.
        source: kube::Error,
    },
    /// The token Secret could not be ensured.
    #[error("secret: {0}")]
    Secret(#[source] SecretError),
    /// The core refused.
    #[error("{step}: {message}")]
    Core {
        /// Where.
        step: Step,
        /// Why.
        message: String,
    },
}

impl ReconcileError {
    /// A core error at `step`.
    pub fn core(step: Step, e: impl std::fmt::Display) -> Self {
        Self::Core {
            step,
            message: e.to_string(),
        }
    }

    /// The API server's answer was 403: the operator's RBAC does not allow the request.
    pub fn forbidden(&self) -> bool {
        match self {
            Self::Kube {
                source: kube::Error::Api(s),
                ..
            } => s.code == 403,
            Self::Secret(e) => e.status_code() == Some(403),
            _ => false,
        }
    }
}

/// How a pipeline stopped before the end.
#[derive(Debug)]
pub enum Stop {
    /// The user can fix it; `retry` says whether to look again by itself (with backoff)
    /// or wait for a change of the object or of what it refers to.
    Refused {
        /// Reason and message for `Ready=False`.
        refusal: Refusal,
        /// Look again with backoff.
        retry: bool,
    },
    /// An error: retried with backoff.
    Failed(ReconcileError),
}

impl Stop {
    /// A refusal that only a change of the object (or of what triggers it) can lift.
    pub fn wait(reason: &'static str, message: impl Into<String>) -> Self {
        Self::Refused {
            refusal: Refusal::new(reason, message),
            retry: false,
        }
    }

    /// A refusal that may lift by itself (a Secret gets annotated, RBAC is fixed).
    pub fn retry(reason: &'static str, message: impl Into<String>) -> Self {
        Self::Refused {
            refusal: Refusal::new(reason, message),
            retry: true,
        }
    }
}

impl From<ReconcileError> for Stop {
    fn from(e: ReconcileError) -> Self {
        Self::Failed(e)
    }
}

/// A Secret error as a stop: an unadoptable Secret or a 403 is the user's to fix.
pub fn secret_stop(e: SecretError, namespace: &str) -> Stop {
    match e {
        SecretError::NotAdoptable(m) => Stop::retry("SecretNotAdoptable", m),
        e @ SecretError::TokenInUse(_) => Stop::retry("TokenInUse", e.to_string()),
        e if e.status_code() == Some(403) => Stop::retry(
            "Forbidden",
            format!(
                "the operator may not read or write Secrets in namespace {namespace} ({e}); check that the namespace is in the chart's scope"
            ),
        ),
        e => Stop::Failed(ReconcileError::Secret(e)),
    }
}

/// A change of a token that a person should hear of, published as a Normal Event. The
/// first issue of a token is none: `Ready=True` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenNews {
    /// The user's own Secret was adopted now.
    Adopted,
    /// A resource that had a token got a new one (its Secret was deleted, or lost its
    /// token): the old one no longer works, and whoever uses it must read the Secret again.
    Reissued,
}

impl TokenNews {
    /// What ensuring the Secret did that is news, for a resource that `had_token` before.
    pub fn of(ensured: &super::secrets::Ensured, had_token: bool) -> Option<Self> {
        if ensured.adopted {
            Some(Self::Adopted)
        } else if ensured.issued && had_token {
            Some(Self::Reissued)
        } else {
            None
        }
    }

    /// The Event's reason.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Adopted => "TokenAdopted",
            Self::Reissued => "TokenReissued",
        }
    }
}

/// Whether `token` is registered to something other than `owner`.
pub fn taken_by_another(
    registry: &crate::core::registry::Registry,
    owner: &crate::core::storage::TokenOwner,
) -> impl Fn(&crate::core::token::Token) -> bool + Send + Sync + use<> {
    let (registry, owner) = (registry.clone(), owner.clone());
    move |t| {
        registry
            .owner_of_hash(&t.hash())
            .is_some_and(|o| o != owner)
    }
}

/// Requeue after a success: a resync about every [`RESYNC`], spread so that objects
/// created together do not resync together.
pub fn resync() -> Action {
    Action::requeue(spread(RESYNC))
}

/// Longest wait before a refusal that may lift by itself is checked again: someone who just
/// annotated their Secret or fixed RBAC should not wait minutes.
pub const RECHECK_AT_MOST: Duration = Duration::from_secs(60);

/// Requeue after a refusal with `retry`: backoff with jitter, capped at [`RECHECK_AT_MOST`].
pub fn recheck(ctx: &Context, target: &Target) -> Action {
    Action::requeue(ctx.retries.next(target).min(spread(RECHECK_AT_MOST)))
}

/// The Ready condition's reason on the live object, if any.
fn live_ready_reason(
    conditions: Option<&[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]>,
) -> Option<String> {
    conditions?
        .iter()
        .find(|c| c.type_ == kinds::READY)
        .map(|c| c.reason.clone())
}

/// The last step of every pipeline: record the verdict for the status writer, and publish a
/// Warning Event when a refusal is new (its reason differs from the live condition's), so
/// `kubectl describe` shows it once rather than on every retry.
pub async fn settle(
    ctx: &Context,
    target: &Target,
    uid: Option<String>,
    live_conditions: Option<&[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]>,
    verdict: Verdict,
) {
    if let Outcome::Refused(r) = &verdict.outcome
        && live_ready_reason(live_conditions).as_deref() != Some(r.reason)
        && ctx.verdicts.get(target).map(|v| v.outcome) != Some(verdict.outcome.clone())
    {
        ctx.event(
            target,
            uid,
            EventType::Warning,
            r.reason,
            r.message.clone(),
            "Reconcile",
        )
        .await;
    }
    if ctx.verdicts.set(target, verdict) {
        ctx.status.nudge(target.clone(), Lane::Verdict);
    }
}

/// What a reconcile is about, as [`framed`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The namespace is another installation's: leave the object alone (that one says so
    /// in the status).
    Elsewhere,
    /// The object is being deleted (another finalizer, or the one of earlier versions,
    /// holds it): clean up at once. In the object's namespace.
    Deleting(String),
    /// Apply it. In the object's namespace.
    Live(String),
}

/// The frame of every reconcile: whether the object is ours to reconcile and whether it is
/// being deleted. The finalizer that earlier versions put on every object is taken off
/// here (one patch, only where it still is, and not again from the same version of the
/// object): nothing waits for it any more, and left on, it would hold the object's
/// deletion for good once no version that knows it runs.
///
/// Deletion needs no finalizer: the watch's delete event cleans up (the `gone` of each
/// kind), and what was deleted while the operator was down is found by the orphan sweep
/// after every (re)list. Garbage collection removes the token Secret, which the object owns.
pub async fn framed<K>(obj: &K, ctx: &Context) -> Result<Frame, ReconcileError>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let ns = obj
        .namespace()
        .ok_or(ReconcileError::Incomplete("namespace"))?;
    if !ctx.instances.owns(&ns) {
        return Ok(Frame::Elsewhere);
    }
    let (uid, version) = (
        obj.meta().uid.as_deref(),
        obj.meta().resource_version.as_deref(),
    );
    let removal = legacy_finalizer_removal(obj.finalizers());
    if removal.is_none() {
        ctx.finalizer_patches.forget(uid);
    }
    if let Some(patch) = removal
        && !ctx.finalizer_patches.sent_from(uid, version)
    {
        let api: kube::Api<K> = kube::Api::namespaced(ctx.client.clone(), &ns);
        let params = kube::api::PatchParams::default();
        match api
            .patch(
                &obj.name_any(),
                &params,
                &kube::api::Patch::Json::<()>(patch),
            )
            .await
        {
            Ok(_) => ctx.finalizer_patches.sent(uid, version),
            // Gone already: it was only waiting for this finalizer.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(source) => {
                return Err(ReconcileError::Kube {
                    step: Step::Finalizer,
                    source,
                });
            }
        }
    }
    Ok(if obj.meta().deletion_timestamp.is_some() {
        Frame::Deleting(ns)
    } else {
        Frame::Live(ns)
    })
}

/// The JSON patch that takes [`super::LEGACY_FINALIZER`] off an object with `finalizers`,
/// if it has it. The `test` makes the patch fail rather than remove another finalizer
/// when the list changed meanwhile (it is then retried with the new list).
pub fn legacy_finalizer_removal(finalizers: &[String]) -> Option<json_patch::Patch> {
    let i = finalizers
        .iter()
        .position(|f| f == super::LEGACY_FINALIZER)?;
    let path = format!("/metadata/finalizers/{i}");
    serde_json::from_value(serde_json::json!([
        {"op": "test", "path": path, "value": super::LEGACY_FINALIZER},
        {"op": "remove", "path": path},
    ]))
    .ok()
}

/// Whether `cached` (the watch cache's object of the same name, now) is still `obj`. After
/// an apply, a `false` means the object was deleted while it was being reconciled: the
/// watch's clean-up may have run before the apply finished, so the apply cleans up itself.
pub fn still_cached<K: kube::Resource>(cached: Option<Arc<K>>, obj: &K) -> bool {
    cached.is_some_and(|c| c.meta().uid == obj.meta().uid)
}

/// Runs `cleanup` for object `target`, which the watch saw deleted. Should it fail (the
/// database could not write), it is tried again in the background with backoff and jitter
/// until it succeeds, or until an object of that name is back (`back`), whose reconcile
/// then decides: no relist, and so no orphan sweep, may come for hours.
pub async fn clean_up_gone<F, Fut, B>(ctx: Arc<Context>, target: Target, back: B, cleanup: F)
where
    F: Fn(Arc<Context>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), ReconcileError>> + Send,
    B: Fn(&Context) -> bool + Send + 'static,
{
    let Err(error) = cleanup(ctx.clone()).await else {
        return;
    };
    tracing::warn!(object = %target, %error, "cannot clean up after a deletion; will try again");
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(ctx.retries.next(&target)).await;
            if back(&ctx) {
                ctx.retries.reset(&target);
                return;
            }
            match cleanup(ctx.clone()).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(object = %target, %error, "cannot clean up after a deletion; will try again");
                }
            }
        }
    });
}

/// The end of an apply: turns what the steps concluded (the Secret holding the token, or
/// why not) into a verdict and the next requeue. Returns whether the object is Ready.
pub async fn conclude(
    ctx: &Context,
    target: &Target,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    live: Option<&[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]>,
    concluded: Result<String, Stop>,
) -> Result<(Action, bool), ReconcileError> {
    let generation = meta.generation;
    match concluded {
        Ok(secret) => {
            ctx.retries.reset(target);
            let verdict = Verdict {
                generation,
                outcome: Outcome::Ready { secret },
            };
            settle(ctx, target, meta.uid.clone(), live, verdict).await;
            Ok((resync(), true))
        }
        Err(Stop::Refused { refusal, retry }) => {
            let verdict = Verdict {
                generation,
                outcome: Outcome::Refused(refusal),
            };
            settle(ctx, target, meta.uid.clone(), live, verdict).await;
            let next = if retry {
                recheck(ctx, target)
            } else {
                ctx.retries.reset(target);
                Action::await_change()
            };
            Ok((next, false))
        }
        Err(Stop::Failed(e)) => Err(e),
    }
}

/// Failed reconciles come back after an exponential backoff with jitter; a 403 also gets a
/// Warning Event (once per run of failures), since it needs a person.
pub fn error_policy<K>(obj: Arc<K>, error: &ReconcileError, ctx: Arc<Context>) -> Action
where
    K: kube::Resource<DynamicType = ()>,
{
    let kind = if K::kind(&()) == "Application" {
        super::status::Kind::Application
    } else {
        super::status::Kind::Heartbeat
    };
    let target = Target {
        kind,
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
    };
    ctx.stats
        .reconcile_errors
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let first = ctx.retries.failures(&target) == 0;
    let delay = ctx.retries.next(&target);
    tracing::warn!(object = %target, %error, retry_in = ?delay, "reconcile failed");
    if first && error.forbidden() {
        let ctx = ctx.clone();
        let note = format!("the API server refused the operator: {error}; check the chart's RBAC");
        let uid = obj.meta().uid.clone();
        tokio::spawn(async move {
            ctx.event(
                &target,
                uid,
                EventType::Warning,
                "Forbidden",
                note,
                "Reconcile",
            )
            .await;
        });
    }
    Action::requeue(delay.max(Duration::from_millis(100)))
}
