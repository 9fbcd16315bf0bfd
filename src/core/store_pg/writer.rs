//! The ingest writer on PostgreSQL: one task per process takes every event that arrived
//! while the previous transaction committed and writes them as one transaction
//! ([`super::ingest`]); each is answered once that transaction's `COMMIT` returned, so an
//! acknowledged event is durable and a failed or uncertain commit is never acknowledged.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::{CommitMetrics, Db};
use crate::core::metrics::MetricRegistry;
use crate::core::storage::{EventWrite, Outcome, StorageError};

/// Most events waiting for a transaction: a request past it waits for room, so a slow
/// database holds clients back instead of growing memory without bound.
const MAX_WAITING: usize = 8192;

/// Most events in one transaction.
const MAX_BATCH: usize = 4096;

/// Longest a batch's transaction may take, connection included: past it the batch is
/// answered 503 (its outcome unknown, so never 201) and the next one starts afresh.
const COMMIT_WITHIN: Duration = Duration::from_secs(20);

struct Job {
    write: EventWrite,
    ack: oneshot::Sender<Result<Outcome, StorageError>>,
    /// Room among the waiting events, given back once this one is answered.
    _room: OwnedSemaphorePermit,
}

enum Work {
    Event(Job),
    /// Answered when the task takes it: the ingest path is alive and keeping up.
    Probe(oneshot::Sender<()>),
}

/// Handle to the ingest task.
#[derive(Clone)]
pub(super) struct Writer {
    queue: mpsc::UnboundedSender<Work>,
    room: Arc<Semaphore>,
    running: Arc<AtomicBool>,
    stored: Counter,
    replayed: Counter,
}

impl Writer {
    /// Starts the ingest task; it ends once every handle is dropped.
    pub(super) fn spawn(db: Db, commits: CommitMetrics) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let running = Arc::new(AtomicBool::new(true));
        tokio::spawn(run(db, rx, running.clone(), commits));
        Self {
            queue,
            room: Arc::new(Semaphore::new(MAX_WAITING)),
            running,
            stored: Counter::default(),
            replayed: Counter::default(),
        }
    }

    /// Adds the ingest counters to `/metrics` (the names the embedded backend uses).
    pub(super) fn register_metrics(&self, registry: &mut MetricRegistry) {
        registry.register(
            "hartslag_events_stored",
            "Events stored since start",
            self.stored.clone(),
        );
        registry.register(
            "hartslag_events_replayed",
            "Retries answered from their Idempotency-Key without counting again",
            self.replayed.clone(),
        );
    }

    /// Stores one event; resolves once the transaction holding it has committed.
    pub(super) async fn write(&self, write: EventWrite) -> Result<Outcome, StorageError> {
        let room = self
            .room
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StorageError::Stopped)?;
        let (ack, rx) = oneshot::channel();
        let job = Job {
            write,
            ack,
            _room: room,
        };
        self.queue
            .send(Work::Event(job))
            .map_err(|_| StorageError::Stopped)?;
        let outcome = rx.await.map_err(|_| StorageError::Stopped)??;
        match outcome {
            Outcome::Stored => self.stored.inc(),
            Outcome::Replayed => self.replayed.inc(),
            Outcome::KeyReused | Outcome::TooManyNames => 0,
        };
        Ok(outcome)
    }

    /// Resolves once the task has taken a probe sent now.
    pub(super) async fn probe(&self) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .send(Work::Probe(tx))
            .map_err(|_| StorageError::Stopped)?;
        rx.await.map_err(|_| StorageError::Stopped)
    }

    /// `Err` once the task has ended.
    pub(super) fn health(&self) -> Result<(), StorageError> {
        if self.running.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(StorageError::Stopped)
        }
    }
}

/// The task: waits for work, takes everything queued behind it (up to [`MAX_BATCH`]
/// events), commits it as one transaction and answers.
async fn run(
    db: Db,
    mut rx: mpsc::UnboundedReceiver<Work>,
    running: Arc<AtomicBool>,
    commits: CommitMetrics,
) {
    let mut pending = None;
    let mut failures = Failures::default();
    loop {
        let first = match pending.take() {
            Some(w) => w,
            None => match rx.recv().await {
                Some(w) => w,
                None => break,
            },
        };
        let mut jobs = Vec::new();
        let mut next = Some(first);
        while let Some(work) = next.take() {
            match work {
                Work::Probe(reply) => {
                    let _ = reply.send(());
                }
                Work::Event(job) => jobs.push(job),
            }
            if jobs.len() == MAX_BATCH {
                break;
            }
            next = rx.try_recv().ok();
        }
        pending = next;
        if !jobs.is_empty() {
            commit(&db, jobs, &mut failures, &commits).await;
        }
    }
    running.store(false, Ordering::Release);
}

/// Failed batches since the last one logged: while the database is away every batch
/// fails within milliseconds, and one line a few seconds says as much as thousands.
#[derive(Default)]
struct Failures {
    logged: Option<Instant>,
    batches: u64,
    events: u64,
}

/// How often a run of failed batches is logged.
const LOG_EVERY: Duration = Duration::from_secs(5);

impl Failures {
    fn record(&mut self, error: &StorageError, events: usize) {
        self.batches += 1;
        self.events += events as u64;
        if self.logged.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
            tracing::error!(
                error = %error,
                batches = self.batches,
                events = self.events,
                "events were not stored (answered 503); the next batches try again"
            );
            *self = Self {
                logged: Some(Instant::now()),
                ..Self::default()
            };
        }
    }

    fn recovered(&mut self) {
        if self.logged.take().is_some() {
            tracing::info!("events are stored again");
        }
    }
}

/// Writes `jobs` as one transaction and answers each.
async fn commit(db: &Db, jobs: Vec<Job>, failures: &mut Failures, commits: &CommitMetrics) {
    let started = Instant::now();
    let writes: Vec<&EventWrite> = jobs.iter().map(|j| &j.write).collect();
    let done = tokio::time::timeout(
        COMMIT_WITHIN,
        super::ingest::commit(db, &writes, Timestamp::now()),
    )
    .await;
    let done = done.unwrap_or_else(|_| {
        Err(StorageError::Unavailable(format!(
            "the database did not commit within {}s",
            COMMIT_WITHIN.as_secs()
        )))
    });
    match done {
        Ok(outcomes) => {
            commits.committed(started, jobs.len());
            failures.recovered();
            for (job, outcome) in jobs.into_iter().zip(outcomes) {
                let _ = job.ack.send(Ok(outcome));
            }
        }
        Err(e) => {
            failures.record(&e, jobs.len());
            let text = e.to_string();
            for job in jobs {
                let err = match &e {
                    StorageError::Unavailable(_) => StorageError::Unavailable(text.clone()),
                    StorageError::Incompatible(_) => StorageError::Incompatible(text.clone()),
                    _ => StorageError::NotStored(text.clone()),
                };
                let _ = job.ack.send(Err(err));
            }
        }
    }
}
