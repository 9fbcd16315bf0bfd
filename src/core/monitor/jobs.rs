//! Evidence from the Jobs of a watched CronJob, as the state machine takes it: what a
//! front end reports about one Job, what a monitor remembers of recent Jobs (so evidence
//! replayed after a restart or a re-list counts once), and how the pings a job's code
//! sends are tied to the Job that sent them.
//!
//! Pure data and rules, like [`super::state`]; the Kubernetes front end fills
//! [`JobSignal`] from Job and Pod objects, nothing here knows their shape.

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

/// Jobs a monitor remembers, newest by start time. Kubernetes keeps 3 successful and 1
/// failed Job by default; this covers generous history limits, and anything older than
/// every remembered Job is taken as settled long ago.
pub const JOBS_KEPT: usize = 16;

/// Successful pings a `requirePing` monitor remembers, to tie them to Jobs that end later.
pub const PINGS_KEPT: usize = 16;

/// How far outside a Job's run an untagged ping still counts as the Job's: Job times are
/// whole seconds, and the two clocks may differ a little.
pub const PING_SLACK: SignedDuration = SignedDuration::from_secs(5);

/// Why a Job failed, as its `Failed` condition's reason says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobFailure {
    /// More Pods failed than `backoffLimit` allows.
    BackoffLimitExceeded,
    /// The Job ran longer than `activeDeadlineSeconds`.
    DeadlineExceeded,
    /// A rule of `podFailurePolicy` failed the Job.
    PodFailurePolicy,
    /// An indexed Job had more failed indexes than `maxFailedIndexes`.
    MaxFailedIndexesExceeded,
    /// An indexed Job with failed indexes.
    FailedIndexes,
    /// A reason this version does not know.
    Other,
}

impl JobFailure {
    /// The failure a condition reason names.
    pub fn from_reason(reason: &str) -> Self {
        match reason {
            "BackoffLimitExceeded" => Self::BackoffLimitExceeded,
            "DeadlineExceeded" => Self::DeadlineExceeded,
            "PodFailurePolicy" => Self::PodFailurePolicy,
            "MaxFailedIndexesExceeded" => Self::MaxFailedIndexesExceeded,
            "FailedIndexes" => Self::FailedIndexes,
            _ => Self::Other,
        }
    }

    /// The reason as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BackoffLimitExceeded => "BackoffLimitExceeded",
            Self::DeadlineExceeded => "DeadlineExceeded",
            Self::PodFailurePolicy => "PodFailurePolicy",
            Self::MaxFailedIndexesExceeded => "MaxFailedIndexesExceeded",
            Self::FailedIndexes => "FailedIndexes",
            Self::Other => "Failed",
        }
    }

    /// What it means, for people reading an alert.
    pub fn explain(self) -> &'static str {
        match self {
            Self::BackoffLimitExceeded => {
                "its pods kept failing until the backoff limit was reached"
            }
            Self::DeadlineExceeded => "it ran past its activeDeadlineSeconds",
            Self::PodFailurePolicy => "a pod failure policy rule failed it",
            Self::MaxFailedIndexesExceeded => "too many of its indexes failed",
            Self::FailedIndexes => "some of its indexes failed",
            Self::Other => "it failed",
        }
    }
}

/// Where a Job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    /// Started, not finished.
    Running,
    /// Completed at this time.
    Succeeded(Timestamp),
    /// Failed at this time.
    Failed {
        /// When the `Failed` condition was set.
        at: Timestamp,
        /// Its reason.
        reason: JobFailure,
        /// The exit code of the failed container, when a Pod still shows one.
        exit_code: Option<u8>,
    },
}

/// One Job of the watched CronJob, as its front end sees it now. Reporting the same Job
/// again (a re-list, a restart) changes nothing; reporting its end after its start does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSignal {
    /// The Job's name.
    pub name: String,
    /// When it started (`status.startTime`, else its creation).
    pub started_at: Timestamp,
    /// Running, succeeded or failed.
    pub outcome: JobOutcome,
    /// The ids a ping may carry in `?rid=` to say it came from this Job: the Job's name,
    /// or the name of one of its parts (`<id>-...`, such as its Pods' names, which is what
    /// `$HOSTNAME` holds in a Pod).
    pub run_ids: Vec<String>,
}

impl JobSignal {
    /// When the reported change happened: the end, or the start of a running Job.
    pub fn at(&self) -> Timestamp {
        match self.outcome {
            JobOutcome::Running => self.started_at,
            JobOutcome::Succeeded(at) | JobOutcome::Failed { at, .. } => at,
        }
    }

    fn phase(&self) -> JobPhase {
        match self.outcome {
            JobOutcome::Running => JobPhase::Running,
            JobOutcome::Succeeded(_) => JobPhase::Succeeded,
            JobOutcome::Failed { .. } => JobPhase::Failed,
        }
    }

    /// The run's length at its end, never negative.
    pub fn duration(&self) -> Option<SignedDuration> {
        match self.outcome {
            JobOutcome::Running => None,
            _ => Some(
                self.at()
                    .duration_since(self.started_at)
                    .max(SignedDuration::ZERO),
            ),
        }
    }

    /// Whether the code of this Job pinged during its run: a remembered ping tagged with
    /// one of its run ids, or an untagged one between its start and end (with
    /// [`PING_SLACK`] on either side).
    pub fn pinged(&self, pings: &[RecentPing]) -> bool {
        let from = self
            .started_at
            .checked_sub(PING_SLACK)
            .unwrap_or(self.started_at);
        let to = self.at().checked_add(PING_SLACK).unwrap_or(self.at());
        pings.iter().any(|p| match &p.rid {
            Some(rid) => self.run_ids.iter().any(|id| names_part_of(rid, id)),
            None => from <= p.at && p.at <= to,
        })
    }
}

/// Whether `rid` is `id` itself or names a part of it (`<id>-<suffix>`).
fn names_part_of(rid: &str, id: &str) -> bool {
    rid.strip_prefix(id)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
}

/// How far a remembered Job has got; evidence never moves a Job backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobPhase {
    /// Seen running.
    Running,
    /// Seen completed.
    Succeeded,
    /// Seen failed.
    Failed,
}

impl JobPhase {
    fn done(self) -> bool {
        self != JobPhase::Running
    }
}

/// A Job a monitor remembers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenJob {
    /// Its name.
    pub name: String,
    /// When it started.
    pub started_at: Timestamp,
    /// How far it had got when last reported.
    pub phase: JobPhase,
}

/// A successful ping a `requirePing` monitor remembers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentPing {
    /// When it arrived.
    pub at: Timestamp,
    /// The run id it carried (`?rid=`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Option<String>,
}

/// What is new about a reported Job, against the remembered ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Novelty {
    /// Already known at this phase or further (or older than anything remembered).
    Stale,
    /// Not seen before (a finished Job seen for the first time also started).
    New,
    /// Seen running, now finished.
    Ended,
}

/// Records `job` in `seen` (newest kept, by start time) and says what is new about it.
pub fn remember(seen: &mut Vec<SeenJob>, job: &JobSignal) -> Novelty {
    let phase = job.phase();
    if let Some(known) = seen
        .iter_mut()
        .find(|s| s.name == job.name && s.started_at == job.started_at)
    {
        if known.phase.done() || known.phase >= phase {
            return Novelty::Stale;
        }
        known.phase = phase;
        return Novelty::Ended;
    }
    let full = seen.len() >= JOBS_KEPT;
    if full && seen.iter().all(|s| s.started_at > job.started_at) {
        return Novelty::Stale;
    }
    seen.push(SeenJob {
        name: job.name.clone(),
        started_at: job.started_at,
        phase,
    });
    seen.sort_by(|a, b| {
        b.started_at
            .cmp(&a.started_at)
            .then_with(|| a.name.cmp(&b.name))
    });
    seen.truncate(JOBS_KEPT);
    Novelty::New
}

/// The remembered Job running since `started_at`, if any: the run a timeout is about.
pub fn running_since(seen: &[SeenJob], started_at: Timestamp) -> Option<&SeenJob> {
    seen.iter()
        .find(|s| s.phase == JobPhase::Running && s.started_at == started_at)
}

/// Adds a successful ping to `pings`, keeping the newest [`PINGS_KEPT`].
pub fn remember_ping(pings: &mut Vec<RecentPing>, at: Timestamp, rid: Option<&str>) {
    pings.push(RecentPing {
        at,
        rid: rid.map(str::to_string),
    });
    pings.sort_by_key(|p| p.at);
    let excess = pings.len().saturating_sub(PINGS_KEPT);
    pings.drain(..excess);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn job(name: &str, started: i64, outcome: JobOutcome) -> JobSignal {
        JobSignal {
            name: name.into(),
            started_at: t(started),
            outcome,
            run_ids: vec![name.into()],
        }
    }

    #[test]
    fn evidence_counts_once_and_only_forwards() {
        let mut seen = Vec::new();
        let run = job("a", 0, JobOutcome::Running);
        let done = job("a", 0, JobOutcome::Succeeded(t(10)));
        assert_eq!(remember(&mut seen, &run), Novelty::New);
        assert_eq!(remember(&mut seen, &run), Novelty::Stale);
        assert_eq!(remember(&mut seen, &done), Novelty::Ended);
        assert_eq!(remember(&mut seen, &done), Novelty::Stale);
        assert_eq!(remember(&mut seen, &run), Novelty::Stale, "never backwards");
        let failed = job(
            "a",
            0,
            JobOutcome::Failed {
                at: t(11),
                reason: JobFailure::Other,
                exit_code: None,
            },
        );
        assert_eq!(
            remember(&mut seen, &failed),
            Novelty::Stale,
            "a finished Job stays finished"
        );
        // A Job first seen finished is new (its start is implied).
        assert_eq!(
            remember(&mut seen, &job("b", 20, JobOutcome::Succeeded(t(30)))),
            Novelty::New
        );
        // The same name with another start time is another Job (deleted and re-created).
        assert_eq!(
            remember(&mut seen, &job("b", 40, JobOutcome::Running)),
            Novelty::New
        );
    }

    #[test]
    fn only_the_newest_jobs_are_remembered() {
        let mut seen = Vec::new();
        for i in 0..40 {
            remember(
                &mut seen,
                &job(&format!("j{i}"), i * 100, JobOutcome::Running),
            );
        }
        assert_eq!(seen.len(), JOBS_KEPT);
        assert_eq!(seen[0].name, "j39");
        // Older than every remembered Job: settled long ago, ignored.
        assert_eq!(
            remember(&mut seen, &job("j1", 100, JobOutcome::Succeeded(t(150)))),
            Novelty::Stale
        );
        // Newer ones push the oldest out.
        assert_eq!(
            remember(&mut seen, &job("j40", 4000, JobOutcome::Running)),
            Novelty::New
        );
        assert_eq!(seen.len(), JOBS_KEPT);
        assert!(running_since(&seen, t(4000)).is_some());
        assert!(running_since(&seen, t(4001)).is_none());
    }

    #[test]
    fn pings_are_tied_to_jobs_by_run_id_or_by_time() {
        let mut pings = Vec::new();
        let a = job("a", 100, JobOutcome::Succeeded(t(200)));
        assert!(!a.pinged(&pings));
        remember_ping(&mut pings, t(50), None);
        remember_ping(&mut pings, t(250), None);
        assert!(!a.pinged(&pings), "before and after the run");
        remember_ping(&mut pings, t(204), None);
        assert!(a.pinged(&pings), "within the slack after the end");
        let mut tagged = Vec::new();
        remember_ping(&mut tagged, t(150), Some("b-pod"));
        assert!(
            !a.pinged(&tagged),
            "tagged for another Job, even within the run"
        );
        remember_ping(&mut tagged, t(9_000), Some("ab-pod"));
        assert!(!a.pinged(&tagged), "another Job whose name starts alike");
        remember_ping(&mut tagged, t(10_000), Some("a-pod"));
        assert!(
            a.pinged(&tagged),
            "tagged for this Job's pod, whenever it came"
        );
        let mut by_name = Vec::new();
        remember_ping(&mut by_name, t(10_000), Some("a"));
        assert!(a.pinged(&by_name), "tagged with the Job's own name");
        for i in 0..40 {
            remember_ping(&mut tagged, t(20_000 + i), None);
        }
        assert_eq!(tagged.len(), PINGS_KEPT);
        assert!(!a.pinged(&tagged), "the oldest are forgotten");
    }

    #[test]
    fn reasons_round_trip() {
        for r in [
            JobFailure::BackoffLimitExceeded,
            JobFailure::DeadlineExceeded,
            JobFailure::PodFailurePolicy,
            JobFailure::MaxFailedIndexesExceeded,
            JobFailure::FailedIndexes,
        ] {
            assert_eq!(JobFailure::from_reason(r.as_str()), r);
        }
        assert_eq!(JobFailure::from_reason("SomethingNew"), JobFailure::Other);
        assert_eq!(
            job("a", 0, JobOutcome::Succeeded(t(-5))).duration(),
            Some(SignedDuration::ZERO)
        );
    }
}
