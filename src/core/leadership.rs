//! Who leads: the port a front end elects its leader through, and this process's role.
//!
//! Several replicas may share one database; every one serves requests, exactly one leads
//! (runs the deadline scheduler, alert delivery, retention and the front end's
//! declarations). How the leader is chosen depends on the deployment: an embedded store
//! serves one process, which leads at once ([`Sole`]); on PostgreSQL an advisory lock
//! (`store_pg::elector`) or a Kubernetes Lease decides. Whichever it is, the winner leads
//! under a generation the store fences leader-only writes with ([`Fence`]).
//!
//! A leader that loses its leadership stops the process: demoting a running leader in
//! place would have to stop every task it started mid-flight, and a restart as a follower
//! is what the Deployment (or the operator's supervisor) does anyway.

use std::future::Future;
use std::pin::Pin;

use futures::future::BoxFuture;
use prometheus_client::metrics::gauge::Gauge;

use super::metrics::MetricRegistry;
use super::storage::Fence;

/// Why leadership could not be sought.
#[derive(Debug, thiserror::Error)]
pub enum LeadershipError {
    /// Retrying will not help: the lock's owner refused us (permissions, a missing schema).
    #[error("cannot take the leadership: {0}")]
    Refused(String),
}

/// A way of becoming the leader.
pub trait Elector: Send + 'static {
    /// Waits until this process leads and returns its term. Cancelled by dropping the
    /// future; until it resolves, nothing is held.
    fn campaign(self: Box<Self>) -> BoxFuture<'static, Result<Term, LeadershipError>>;
}

/// One period of leadership: its generation, and how it ends.
pub struct Term {
    generation: u64,
    lost: Pin<Box<dyn Future<Output = String> + Send>>,
    /// What holds the leadership (a connection, a renewal task): dropping it lets go.
    _held: Box<dyn Send + Sync>,
}

impl std::fmt::Debug for Term {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Term")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Term {
    /// A term under `generation` that ends when `lost` resolves (with the reason), held
    /// for as long as `held` lives.
    pub fn new(
        generation: u64,
        lost: impl Future<Output = String> + Send + 'static,
        held: impl Send + Sync + 'static,
    ) -> Self {
        Self {
            generation,
            lost: Box::pin(lost),
            _held: Box::new(held),
        }
    }

    /// The fencing generation: larger than any earlier term's.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// The one process a store serves: leads at once, under generation 1, for ever.
#[derive(Debug, Default)]
pub struct Sole;

impl Elector for Sole {
    fn campaign(self: Box<Self>) -> BoxFuture<'static, Result<Term, LeadershipError>> {
        Box::pin(async { Ok(Term::new(1, std::future::pending(), ())) })
    }
}

/// A holder name unique to this process: the pod (or host) name, the process id and a
/// random suffix, so a restarted container on the same pod is a new holder.
pub fn identity() -> String {
    let base = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| "hartslag".into());
    let suffix = super::token::random_id()
        .map(|s| s.chars().take(8).collect::<String>())
        .unwrap_or_default();
    format!("{base}_{}_{suffix}", std::process::id())
}

/// This process's role: the fence its leader-only writes carry and the two gauges that
/// show it (`hartslag_leader`, `hartslag_leader_generation`). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Role {
    fence: Fence,
    leader: Gauge,
    generation: Gauge,
}

impl Role {
    /// The role `fence` describes (a sole process leads already), its gauges in `metrics`.
    pub fn new(fence: Fence, metrics: &mut MetricRegistry) -> Self {
        let role = Self {
            fence,
            leader: Gauge::default(),
            generation: Gauge::default(),
        };
        metrics.register(
            "hartslag_leader",
            "1 while this replica leads (runs deadlines, alert delivery, retention and the declarations), 0 while it follows",
            role.leader.clone(),
        );
        metrics.register(
            "hartslag_leader_generation",
            "The generation this replica leads under (0 while it follows); grows with every change of leader",
            role.generation.clone(),
        );
        role.show();
        role
    }

    /// The fence leader-only writes carry.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Whether this process leads now.
    pub fn leads(&self) -> bool {
        self.fence.generation().is_some()
    }

    fn show(&self) {
        let g = self.fence.generation().unwrap_or(0);
        self.leader.set(i64::from(g > 0));
        self.generation.set(i64::try_from(g).unwrap_or(i64::MAX));
    }

    /// Waits until `elector` makes this process the leader. It does not lead yet: the
    /// caller catches up with what the deposed leader wrote, then calls [`Role::lead`].
    pub async fn campaign(&self, elector: Box<dyn Elector>) -> Result<Term, LeadershipError> {
        elector.campaign().await
    }

    /// From now on this process leads under `term`'s generation.
    pub fn lead(&self, term: &Term) {
        self.fence.lead(term.generation);
        self.show();
        tracing::info!(generation = term.generation, "leading");
    }

    /// Resolves with the reason once `term` ends or a leader-only write was refused
    /// because another replica took over; this process leads no more after it.
    pub async fn until_lost(&self, term: &mut Term) -> String {
        let reason = tokio::select! {
            reason = &mut term.lost => reason,
            () = self.fence.deposed() => {
                "a leader-only write failed: another replica has taken over the leadership, or the database refused a round of monitor changes".to_string()
            }
        };
        self.fence.depose();
        self.show();
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sole_process_leads_at_once_and_a_deposed_one_learns_it() {
        let metrics = &mut MetricRegistry::default();
        let role = Role::new(Fence::follower(), metrics);
        assert!(!role.leads());
        let mut term = role.campaign(Box::new(Sole)).await.unwrap();
        assert!(!role.leads());
        role.lead(&term);
        assert!(role.leads());
        assert_eq!(role.generation.get(), 1);
        assert_eq!(role.leader.get(), 1);
        let deposer = role.fence().clone();
        tokio::spawn(async move { deposer.depose() });
        let reason = role.until_lost(&mut term).await;
        assert!(reason.contains("taken over"), "{reason}");
        assert_eq!(role.leader.get(), 0);
    }

    #[test]
    fn identities_differ_per_call_and_name_the_process() {
        let (a, b) = (identity(), identity());
        assert_ne!(a, b);
        assert!(a.contains(&format!("_{}_", std::process::id())), "{a}");
    }
}
