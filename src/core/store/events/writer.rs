//! The single ingest writer thread: gathers events into batches, commits each batch as one
//! record and answers every event of it once that record is on disk.

use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot};

use super::batch::{EventWrite, Outcome};
use crate::core::metrics::MetricRegistry;
use crate::core::store::{Store, StoreError};

/// Largest number of events written in one record.
const MAX_BATCH: usize = 1024;

struct Job {
    write: EventWrite,
    ack: oneshot::Sender<Result<Outcome, String>>,
}

/// What the writer thread is sent.
enum Work {
    /// An event to store.
    Event(Job),
    /// Answered as soon as the thread takes it: it is alive and keeping up.
    Probe(oneshot::Sender<()>),
    /// Tests: holds the thread for a while, as a stuck disk would.
    #[cfg(test)]
    Stall(std::time::Duration),
}

/// Handle to the single ingest writer thread.
#[derive(Clone, Debug)]
pub struct EventWriter {
    tx: mpsc::Sender<Work>,
    /// Events stored since start.
    stored: Counter,
    /// Retries answered from their `Idempotency-Key` without counting again.
    replayed: Counter,
}

impl EventWriter {
    /// Starts the writer thread for `store`. A dedicated OS thread, because sled calls and
    /// the commit (often its own `fdatasync`) block.
    pub fn spawn(store: Store) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel::<Work>(8192);
        std::thread::Builder::new()
            .name("hartslag-ingest".into())
            .spawn(move || run(&store, rx))
            .map_err(|e| StoreError::Thread(e.to_string()))?;
        Ok(Self {
            tx,
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

    /// Resolves once the writer thread has taken a probe sent now, behind the events queued
    /// before it: the thread is alive and keeping up. `Err` if it is gone.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Work::Probe(tx))
            .await
            .map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)
    }

    /// Tests: holds the writer thread for `d`, as a stuck disk would.
    #[cfg(test)]
    pub(crate) async fn stall(&self, d: std::time::Duration) {
        let _ = self.tx.send(Work::Stall(d)).await;
    }

    /// Stores one event durably; returns once it is on disk (or once its `Idempotency-Key`
    /// has been settled). Queries made after that see it: they wait for the apply.
    pub async fn write(&self, write: EventWrite) -> Result<Outcome, StoreError> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Work::Event(Job { write, ack }))
            .await
            .map_err(|_| StoreError::Stopped)?;
        match rx.await {
            Ok(Ok(outcome)) => {
                match outcome {
                    Outcome::Stored => self.stored.inc(),
                    Outcome::Replayed => self.replayed.inc(),
                    Outcome::KeyReused | Outcome::TooManyNames => 0,
                };
                Ok(outcome)
            }
            Ok(Err(msg)) => Err(StoreError::Corrupt {
                what: "event batch".into(),
                detail: msg,
            }),
            Err(_) => Err(StoreError::Stopped),
        }
    }
}

/// The writer thread: each batch takes whatever has queued up (up to [`MAX_BATCH`]) while
/// the previous one was being committed.
fn run(store: &Store, mut rx: mpsc::Receiver<Work>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut seq = 0u64;
    while let Some(first) = rx.blocking_recv() {
        take(first, &mut batch);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(work) => take(work, &mut batch),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            seq += 1;
            commit(store, &mut batch, seq);
        }
    }
}

/// Adds an event to the batch; answers a probe at once.
fn take(work: Work, batch: &mut Vec<Job>) {
    match work {
        Work::Event(job) => batch.push(job),
        Work::Probe(reply) => {
            let _ = reply.send(());
        }
        #[cfg(test)]
        Work::Stall(d) => std::thread::sleep(d),
    }
}

/// Commits batch number `seq` as one record and answers each of its events: with its
/// outcome as soon as the record is on disk, with the error if it could not be written.
fn commit(store: &Store, batch: &mut Vec<Job>, seq: u64) {
    let writes: Vec<&EventWrite> = batch.iter().map(|j| &j.write).collect();
    let (record, outcomes) = match store.event_writes(&writes, Timestamp::now()) {
        Ok(prepared) => prepared,
        Err(e) => {
            tracing::error!(error = %e, "preparing a batch of events failed");
            // Names counted for this batch were never stored.
            store.names.forget(None);
            for job in batch.drain(..) {
                let _ = job.ack.send(Err(e.to_string()));
            }
            return;
        }
    };
    // One outcome per event, in batch order. The answers go out as soon as the batch is on
    // disk; readers wait for the apply (`Visibility`).
    let answers: Vec<_> = batch.drain(..).map(|j| j.ack).zip(outcomes).collect();
    let answers = Arc::new(Mutex::new(Some(answers)));
    let on_durable = {
        let (answers, visible) = (answers.clone(), store.visible.clone());
        Box::new(move || {
            visible.acknowledged(seq);
            let taken = answers.lock().unwrap_or_else(|p| p.into_inner()).take();
            for (ack, outcome) in taken.into_iter().flatten() {
                let _ = ack.send(Ok(outcome));
            }
        })
    };
    // Readers may go on once the batch is in sled, without waiting for a checkpoint the
    // commit may run next; after a failure, nothing more arrives for this batch, so they
    // stop waiting too.
    let visible = store.visible.clone();
    let on_applied = Box::new(move || visible.applied(seq));
    let result = store
        .committer()
        .log_blocking_then(record, Some(on_durable), Some(on_applied));
    store.visible.applied(seq);
    if let Err(e) = result {
        tracing::error!(error = %e, "writing a batch of events failed");
        store.names.forget(None);
        let taken = answers.lock().unwrap_or_else(|p| p.into_inner()).take();
        for (ack, _) in taken.into_iter().flatten() {
            let _ = ack.send(Err(e.to_string()));
        }
    }
}
