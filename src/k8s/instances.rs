//! Other operator installations and who reconciles which namespace.
//!
//! Two Helm releases whose scopes overlap would both reconcile the objects they share:
//! two databases, two alerts per incident, two writers fighting over each status. Every
//! operator's Lease therefore carries its scope (annotation `hartslag.dev/scope`: `*` or a
//! comma-separated namespace list) and a label by which the operators find each other.
//! A namespace covered by several live installations is reconciled by the one whose Lease
//! is oldest — the same answer in every process, and stable across restarts and upgrades,
//! since a release's Lease outlives its pods. The others leave those objects alone and drop
//! the monitors they had there; the one that reconciles them adds the condition
//! `OperatorConflict` naming the other installation, until the overlap is gone.
//!
//! A Lease counts as a claim while it was renewed within [`CLAIM_TTL`], so an operator that
//! is being upgraded keeps its namespaces, and one that was uninstalled (Helm deletes the
//! Lease it created) or stopped for good gives them up.

use std::collections::BTreeSet;
use std::sync::RwLock;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use tokio::sync::watch;

use super::lease::Record;

/// Label on every operator Lease, by which installations find each other.
pub const LEASE_LABEL: (&str, &str) = ("hartslag.dev/lease", "operator");
/// Annotation on an operator Lease: the namespaces it watches (`*` for all).
pub const SCOPE_ANNOTATION: &str = "hartslag.dev/scope";
/// How long after its last renewal a Lease still claims its namespaces.
pub const CLAIM_TTL: Duration = Duration::from_secs(600);

/// The namespaces an installation watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace.
    Cluster,
    /// These namespaces.
    Namespaces(BTreeSet<String>),
}

impl Scope {
    /// The scope of `--namespaces` (empty: the whole cluster).
    pub fn of(namespaces: &[String]) -> Self {
        if namespaces.is_empty() {
            Self::Cluster
        } else {
            Self::Namespaces(namespaces.iter().cloned().collect())
        }
    }

    /// Parses the annotation.
    pub fn parse(text: &str) -> Self {
        let set: BTreeSet<String> = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if set.is_empty() || set.contains("*") {
            Self::Cluster
        } else {
            Self::Namespaces(set)
        }
    }

    /// The annotation's value.
    pub fn annotation(&self) -> String {
        match self {
            Self::Cluster => "*".into(),
            Self::Namespaces(s) => s.iter().cloned().collect::<Vec<_>>().join(","),
        }
    }

    /// Whether `namespace` is in scope.
    pub fn covers(&self, namespace: &str) -> bool {
        match self {
            Self::Cluster => true,
            Self::Namespaces(s) => s.contains(namespace),
        }
    }
}

/// One installation's claim, read from its Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// `namespace/name` of its Lease.
    pub lease: String,
    /// The process holding it, if any.
    pub holder: Option<String>,
    /// What it watches.
    pub scope: Scope,
    /// When its Lease was created: older claims win.
    pub created: Timestamp,
    /// Its last renewal.
    pub renewed: Option<Timestamp>,
}

impl Claim {
    /// The claim a Lease makes, if it is an operator Lease.
    pub fn of(lease: &Lease) -> Option<Self> {
        let meta = &lease.metadata;
        let labelled = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(LEASE_LABEL.0))
            .is_some_and(|v| v == LEASE_LABEL.1);
        if !labelled {
            return None;
        }
        let record = Record::of(lease);
        Some(Self {
            lease: format!(
                "{}/{}",
                meta.namespace.as_deref().unwrap_or_default(),
                meta.name.as_deref().unwrap_or_default()
            ),
            holder: record.holder,
            scope: Scope::parse(
                meta.annotations
                    .as_ref()
                    .and_then(|a| a.get(SCOPE_ANNOTATION))
                    .map(String::as_str)
                    .unwrap_or("*"),
            ),
            created: meta.creation_timestamp.as_ref()?.0,
            renewed: record.renewed,
        })
    }

    /// Whether the claim still counts at `now`.
    pub fn live(&self, now: Timestamp) -> bool {
        self.renewed.is_some_and(|r| {
            now.duration_since(r) < jiff::SignedDuration::try_from(CLAIM_TTL).unwrap_or_default()
        })
    }

    fn precedes(&self, other: &Self) -> bool {
        (self.created, &self.lease) < (other.created, &other.lease)
    }

    fn describe(&self) -> String {
        match &self.holder {
            Some(h) => format!("Lease {} (held by {h})", self.lease),
            None => format!("Lease {}", self.lease),
        }
    }
}

/// Who reconciles `namespace`, from our claim and the others' (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// We do; `others` also cover it.
    Us {
        /// Other live claims covering the namespace.
        others: Vec<Claim>,
    },
    /// Another installation does.
    Them(Claim),
    /// Nobody: the namespace is not in our scope.
    Outside,
}

/// Decides who reconciles `namespace`.
pub fn owner(namespace: &str, me: &Claim, others: &[Claim], now: Timestamp) -> Owner {
    if !me.scope.covers(namespace) {
        return Owner::Outside;
    }
    let rivals: Vec<Claim> = others
        .iter()
        .filter(|c| c.lease != me.lease && c.live(now) && c.scope.covers(namespace))
        .cloned()
        .collect();
    let oldest = rivals
        .iter()
        .filter(|c| c.precedes(me))
        .min_by(|a, b| (a.created, &a.lease).cmp(&(b.created, &b.lease)));
    match oldest {
        Some(c) => Owner::Them(c.clone()),
        None => Owner::Us { others: rivals },
    }
}

/// Our claim and the others', as seen by the Lease watch.
#[derive(Debug)]
pub struct Instances {
    me: Claim,
    others: RwLock<Vec<Claim>>,
    changed: watch::Sender<u64>,
}

impl Instances {
    /// Our claim, with nobody else known yet.
    pub fn new(me: Claim) -> Self {
        Self {
            me,
            others: RwLock::default(),
            changed: watch::channel(0).0,
        }
    }

    /// Our claim.
    pub fn me(&self) -> &Claim {
        &self.me
    }

    /// Replaces what we know of the others; signals a change when any namespace's owner
    /// may have changed.
    pub fn set_others(&self, claims: Vec<Claim>) {
        let now = Timestamp::now();
        let summary = |cs: &[Claim]| -> Vec<(String, bool, Scope)> {
            let mut v: Vec<_> = cs
                .iter()
                .map(|c| (c.lease.clone(), c.live(now), c.scope.clone()))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let mut others = self.others.write().unwrap_or_else(|p| p.into_inner());
        let before = summary(&others);
        *others = claims
            .into_iter()
            .filter(|c| c.lease != self.me.lease)
            .collect();
        if summary(&others) != before {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    /// A receiver that sees a new value whenever ownership may have changed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn owner(&self, namespace: &str) -> Owner {
        let others = self.others.read().unwrap_or_else(|p| p.into_inner());
        owner(namespace, &self.me, &others, Timestamp::now())
    }

    /// Whether this process reconciles `namespace`.
    pub fn owns(&self, namespace: &str) -> bool {
        matches!(self.owner(namespace), Owner::Us { .. })
    }

    /// The condition message for objects in `namespace` while other installations also
    /// watch it; `None` when we are alone there.
    pub fn conflict_note(&self, namespace: &str) -> Option<String> {
        let Owner::Us { others } = self.owner(namespace) else {
            return None;
        };
        if others.is_empty() {
            return None;
        }
        let names: Vec<String> = others.iter().map(Claim::describe).collect();
        Some(format!(
            "namespace {namespace} is also watched by the Hartslag operator of {}; this one ({}) reconciles it because its Lease is older, the other leaves it alone. Give the installations disjoint scopes (scope.namespaces).",
            names.join(", "),
            self.me.describe()
        ))
    }

    /// The installation that reconciles `namespace` instead of us, if any.
    pub fn reconciled_elsewhere(&self, namespace: &str) -> Option<Claim> {
        match self.owner(namespace) {
            Owner::Them(c) => Some(c),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn claim(lease: &str, scope: &str, created: i64, renewed: i64) -> Claim {
        Claim {
            lease: lease.into(),
            holder: Some(format!("{lease}-pod")),
            scope: Scope::parse(scope),
            created: t(created),
            renewed: Some(t(renewed)),
        }
    }

    #[test]
    fn scopes_parse_and_cover() {
        assert_eq!(Scope::parse("*"), Scope::Cluster);
        assert_eq!(Scope::parse(""), Scope::Cluster);
        let s = Scope::parse("b, a");
        assert_eq!(s.annotation(), "a,b");
        assert!(s.covers("a") && !s.covers("c"));
        assert_eq!(Scope::of(&[]), Scope::Cluster);
    }

    #[test]
    fn the_oldest_live_lease_covering_a_namespace_reconciles_it() {
        let me = claim("ops/new", "team-a,team-b", 100, 1000);
        let old = claim("ops-b/old", "team-b,team-c", 0, 990);
        let now = t(1000);
        assert_eq!(
            owner("team-a", &me, std::slice::from_ref(&old), now),
            Owner::Us { others: vec![] }
        );
        assert_eq!(
            owner("team-b", &me, std::slice::from_ref(&old), now),
            Owner::Them(old.clone())
        );
        assert_eq!(
            owner("team-c", &me, std::slice::from_ref(&old), now),
            Owner::Outside
        );
        // Seen from the older one, the same answer.
        assert_eq!(
            owner("team-b", &old, std::slice::from_ref(&me), now),
            Owner::Us {
                others: vec![me.clone()]
            }
        );
        // A cluster-wide installation covers everything.
        let wide = claim("ops-c/wide", "*", 50, 999);
        assert_eq!(
            owner("team-a", &me, std::slice::from_ref(&wide), now),
            Owner::Them(wide)
        );
    }

    #[test]
    fn a_lease_not_renewed_for_the_claim_ttl_no_longer_counts() {
        let me = claim("ops/new", "team-b", 100, 2000);
        let gone = claim("ops-b/old", "team-b", 0, 1000);
        let now = t(1000) + jiff::SignedDuration::from_secs(599);
        assert!(matches!(
            owner("team-b", &me, std::slice::from_ref(&gone), now),
            Owner::Them(_)
        ));
        let later = t(1000) + jiff::SignedDuration::from_secs(601);
        assert_eq!(
            owner("team-b", &me, std::slice::from_ref(&gone), later),
            Owner::Us { others: vec![] }
        );
    }

    #[test]
    fn the_conflict_note_names_the_other_installation() {
        let me = claim("ops/old", "team-b", 0, i64::from(i32::MAX));
        let instances = Instances::new(Claim {
            renewed: Some(Timestamp::now()),
            ..me
        });
        let mut rx = instances.subscribe();
        instances.set_others(vec![Claim {
            renewed: Some(Timestamp::now()),
            ..claim("ops-b/new", "team-b", 100, 0)
        }]);
        assert!(rx.has_changed().unwrap());
        assert!(instances.owns("team-b"));
        let note = instances.conflict_note("team-b").unwrap();
        assert!(
            note.contains("ops-b/new") && note.contains("ops-b/new-pod"),
            "{note}"
        );
        assert_eq!(instances.conflict_note("team-a"), None);
        rx.borrow_and_update();
        instances.set_others(vec![]);
        assert!(rx.has_changed().unwrap());
        assert_eq!(instances.conflict_note("team-b"), None);
    }
}
