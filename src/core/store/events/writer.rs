//! The ingest writer: events wait in an open batch of the group committer, which seals
//! whatever arrived while the disk flushed the previous group into one record, and every
//! event of it is answered once that record is on disk.
//!
//! There is no writer thread: a request adds its event to the batch and waits for its
//! answer, and the commit thread prepares the record when it starts the next group. One
//! record per group keeps raw-event blocks large and writes each rollup once per flush,
//! however many requests arrived; the commit thread is the single writer of the rollups
//! and of the distinct-name counts, so it reads and adds to them without conflicts.

use std::sync::Arc;

use jiff::Timestamp;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::Visibility;
use super::batch::{EventWrite, NameCounts, Outcome, Prepare};
use crate::core::metrics::MetricRegistry;
use crate::core::store::commit::{
    CommitError, Notify, OpenBatch, PendingReader, Progress, SealFailure, Sealed, Sealer,
};
use crate::core::store::{Store, StoreError};

/// Most events waiting for a record: a request past it waits for room, so a disk that
/// stalls holds clients back instead of growing memory without bound.
const MAX_WAITING: usize = 8192;

struct Job {
    write: EventWrite,
    ack: oneshot::Sender<Result<Outcome, String>>,
    /// Room in the batch, given back once the event is answered.
    _room: OwnedSemaphorePermit,
}

/// What waits in the open batch.
enum Work {
    /// An event to store.
    Event(Job),
    /// Answered when the commit thread seals the batch: it is alive and keeping up.
    Probe(oneshot::Sender<()>),
    /// Tests: holds the commit thread for a while, as a stuck disk would.
    #[cfg(test)]
    Stall(std::time::Duration),
}

/// Handle to the ingest writer.
#[derive(Clone, Debug)]
pub struct EventWriter {
    batch: OpenBatch<Vec<Work>>,
    room: Arc<Semaphore>,
    /// Events stored since start.
    stored: Counter,
    /// Retries answered from their `Idempotency-Key` without counting again.
    replayed: Counter,
}

impl EventWriter {
    /// Opens the ingest batch in `store`'s committer.
    pub fn spawn(store: Store) -> Result<Self, StoreError> {
        let sealer = Seal {
            events: store.events.clone(),
            db: store.db.clone(),
            visible: store.visible.clone(),
            names: store.names.clone(),
            seq: 0,
        };
        Ok(Self {
            batch: store.committer().open_batch(sealer),
            room: Arc::new(Semaphore::new(MAX_WAITING)),
            stored: Counter::default(),
            replayed: Counter::default(),
        })
    }

    /// Adds the ingest counters to `/metrics`.
    pub fn register_metrics(&self, registry: &mut MetricRegistry) {
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

    /// Resolves once the commit thread has sealed a batch holding a probe added now: the
    /// ingest path is alive and keeping up. `Err` if it is gone.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.batch.add(|work| work.push(Work::Probe(tx)))?;
        rx.await.map_err(|_| StoreError::Stopped)
    }

    /// Tests: holds the commit thread for `d`, as a stuck disk would.
    #[cfg(test)]
    pub(crate) async fn stall(&self, d: std::time::Duration) {
        let _ = self.batch.add(|work| work.push(Work::Stall(d)));
    }

    /// Stores one event durably; returns once it is on disk (or once its `Idempotency-Key`
    /// has been settled). Queries made after that see it: they wait for the apply.
    pub async fn write(&self, write: EventWrite) -> Result<Outcome, StoreError> {
        let room = self
            .room
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Stopped)?;
        let (ack, rx) = oneshot::channel();
        self.batch.add(|work| {
            work.push(Work::Event(Job {
                write,
                ack,
                _room: room,
            }))
        })?;
        match rx.await {
            Ok(Ok(outcome)) => {
                match outcome {
                    Outcome::Stored => self.stored.inc(),
                    Outcome::Replayed => self.replayed.inc(),
                    Outcome::KeyReused | Outcome::TooManyNames => 0,
                };
                Ok(outcome)
            }
            Ok(Err(msg)) => Err(StoreError::Write(msg)),
            Err(_) => Err(StoreError::Stopped),
        }
    }
}

/// Turns the waiting events into one record, on the commit thread. Holds the store's parts
/// rather than the store, which holds the committer that holds this.
struct Seal {
    events: sled::Tree,
    db: sled::Db,
    visible: Arc<Visibility>,
    names: Arc<NameCounts>,
    /// Number of the last batch sealed, for [`Visibility`].
    seq: u64,
}

/// The events of a batch; probes are answered on the way.
fn events_of(work: Vec<Work>) -> Vec<Job> {
    let mut jobs = Vec::with_capacity(work.len());
    for w in work {
        match w {
            Work::Event(job) => jobs.push(job),
            Work::Probe(reply) => {
                let _ = reply.send(());
            }
            #[cfg(test)]
            Work::Stall(d) => std::thread::sleep(d),
        }
    }
    jobs
}

impl Sealer<Vec<Work>> for Seal {
    fn seal(&mut self, work: Vec<Work>, reader: &PendingReader<'_>) -> Sealed {
        let jobs = events_of(work);
        if jobs.is_empty() {
            return Ok(None);
        }
        let writes: Vec<&EventWrite> = jobs.iter().map(|j| &j.write).collect();
        let prepare = Prepare {
            events: &self.events,
            db: &self.db,
            reader,
            names: &self.names,
        };
        let (record, outcomes) = match prepare.event_writes(&writes, Timestamp::now()) {
            Ok(prepared) => prepared,
            Err(e) => {
                tracing::error!(error = %e, "preparing a batch of events failed");
                // Names counted for this batch were never stored.
                self.names.forget(None);
                let message = e.to_string();
                let mut jobs = Some(jobs);
                let mut answer = move || {
                    for job in jobs.take().into_iter().flatten() {
                        let _ = job.ack.send(Err(message.clone()));
                    }
                };
                // sled failing (a full disk) stops every write, as a failed write does;
                // the writers hear of it once the committer has stopped.
                return match e {
                    StoreError::Sled(e) => Err(SealFailure {
                        cause: CommitError::Database(Arc::new(e)),
                        notify: Box::new(move |_| answer()),
                    }),
                    _ => {
                        answer();
                        Ok(None)
                    }
                };
            }
        };
        self.seq += 1;
        let seq = self.seq;
        let (visible, names) = (self.visible.clone(), self.names.clone());
        // One outcome per event, in batch order. The answers go out as soon as the batch
        // is on disk; readers wait for the apply (`Visibility`).
        let mut answers: Option<Vec<_>> = Some(jobs.into_iter().zip(outcomes).collect());
        let notify: Notify = Box::new(move |progress| match progress {
            Progress::Durable => {
                visible.acknowledged(seq);
                for (job, outcome) in answers.take().into_iter().flatten() {
                    let _ = job.ack.send(Ok(outcome));
                }
            }
            // Readers may go on once the batch is in sled, without waiting for a
            // checkpoint; after a failure nothing more arrives for this batch, so they
            // stop waiting too.
            Progress::Applied => visible.applied(seq),
            Progress::Failed(e) => {
                tracing::error!(error = %e, "writing a batch of events failed");
                names.forget(None);
                for (job, _) in answers.take().into_iter().flatten() {
                    let _ = job.ack.send(Err(e.to_string()));
                }
                visible.applied(seq);
            }
        });
        Ok(Some((record, notify)))
    }

    fn fail(&mut self, work: Vec<Work>, error: &CommitError) {
        for job in events_of(work) {
            let _ = job.ack.send(Err(error.to_string()));
        }
    }
}
