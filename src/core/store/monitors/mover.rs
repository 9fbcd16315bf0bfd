//! The timeline journal's shared state and its mover: a thread (`hartslag-timeline`) that
//! carries the journal's entries to their monitors, a chunk at a time (one move: two
//! commit-log records, see [`journal`](super::journal)).
//!
//! When it moves is the point of the journal: a herd's entries cost an append each when
//! the herd is due, and their scattered inserts are paid when nothing waits for them. A
//! move of a chunk holds the apply threads for tens of milliseconds, and a round behind it
//! waits that long; so the mover moves
//! - back to back while the store is quiet: no round on its way to disk, and none finished
//!   for [`QUIET`];
//! - a chunk per [`TRICKLE_EVERY`] when more than [`STEADY_AT`] entries wait and no round has
//!   been on its way for [`GAP`], so a store that is never quiet for long still drains
//!   what a steady trickle of transitions adds, in the gaps between its rounds (a herd
//!   leaves none that long: its rounds follow each other within milliseconds);
//! - back to back past [`FORCE_AT`] entries, whatever the store is doing: the bound on the
//!   index's memory (12 bytes an entry) and on what a start has to list.
//!
//! Nothing moves before the engine's first round (or [`FIRST_MOVE`] after the start), so
//! the load of a million monitors at start is not slowed by moves. The journal itself is
//! listed at start on a thread of its own (`hartslag-journal`) while the monitors load;
//! whoever needs the index first waits for it ([`Journal::ready`]).
//!
//! Locks: the index's lock is held by whoever prepares a record that changes the journal
//! until it is submitted (the engine's rounds and this thread's moves), so records reach
//! the committer in the order their index changes were made. A submit can wait for room in
//! the committer's queue, which the apply thread makes; so the callbacks the apply thread
//! runs never take the index's lock: they count rounds in atomics and leave finished moves
//! in a list of their own, which the next holder of the index's lock records.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::journal::{Index, Move, split_value};
use super::journal_page::{self, page_key, page_of, remove_page};
use crate::core::store::StoreError;
use crate::core::store::commit::{Committer, Progress};
use crate::core::store::wal::Mutation;

/// Entries waiting past which the mover moves back to back whatever the store does: two
/// herds of a million monitors and more, 30 MB of index.
pub(super) const FORCE_AT: usize = 2_500_000;

/// Entries waiting past which a chunk moves every [`TRICKLE_EVERY`] between rounds.
pub(super) const STEADY_AT: usize = 1 << 18;

/// How long no round has been on its way, or finished, before the store counts as quiet: a
/// herd or a stream of pings submits rounds every few milliseconds.
const QUIET: Duration = Duration::from_millis(250);

/// How long no round has been on its way, or finished, before a trickle move may go.
const GAP: Duration = Duration::from_millis(25);

/// How often a chunk moves between rounds of a store that is not quiet: at 2 048 entries a
/// move, a few percent of the apply threads.
const TRICKLE_EVERY: Duration = Duration::from_millis(250);

/// How long after the start moves begin if no round came before.
const FIRST_MOVE: Duration = Duration::from_secs(30);

/// How long moves wait after a failed read, or while the committer refuses writes.
const PAUSE: Duration = Duration::from_secs(1);

/// How long the mover sleeps when nothing wakes it: a lost wake-up costs no more.
const NAP: Duration = Duration::from_millis(25);

// A finished round does not wake the mover (below `FORCE_AT`): its nap must be short
// enough to find the gaps and the quiet it waits for.
const _: () = assert!(NAP.as_millis() <= GAP.as_millis() && GAP.as_millis() <= QUIET.as_millis());

/// The journal tree, its index and what the mover needs to know about the engine's rounds.
pub(super) struct Journal {
    pub(super) tree: sled::Tree,
    /// Empty until the start's listing is put in place ([`Journal::ready`]).
    index: Mutex<Index>,
    /// The start's listing of the journal, on a thread of its own beside the monitors'
    /// load: at a million monitors after a herd it lists millions of entries, seconds a
    /// start would otherwise spend before the load begins.
    listing: Mutex<Listing>,
    /// The listing is in place: no need to take `listing`'s lock.
    listed: AtomicBool,
    /// Rounds submitted (counted under the index's lock) and finished (applied or failed);
    /// the committer finishes records in the order they were submitted.
    submitted: AtomicU64,
    finished: AtomicU64,
    /// Moves whose second record finished, (chunk, whether it was applied), not yet
    /// recorded in the index.
    finished_moves: Mutex<Vec<(u64, bool)>>,
    /// A move was submitted and has not finished.
    pub(super) moving: AtomicBool,
    /// Entries listed, as of the last change under the index's lock.
    len: AtomicUsize,
    /// No move before this, in milliseconds since `born` (see [`Journal::pause`]).
    paused_until: AtomicU64,
    /// Damaged entries found by a move, to unlist under the index's lock.
    damaged: Mutex<Vec<u64>>,
    /// When a round was last submitted or finished, in milliseconds since `born`.
    last_round: AtomicU64,
    born: Instant,
    /// Set when the mover should stop; its condition variable wakes the mover.
    stop: Mutex<bool>,
    wake: Condvar,
    /// Tests hold the mover to see entries while they wait in the journal.
    #[cfg(test)]
    pub(super) hold: AtomicBool,
}

/// Where the start's listing of the journal stands.
enum Listing {
    Running(std::thread::JoinHandle<Result<Index, StoreError>>),
    Done,
    /// It failed: so does every use of the index after it.
    Failed(StoreError),
}

impl Journal {
    /// Opens the journal tree and starts listing what it holds ([`Journal::ready`]).
    pub(super) fn open(db: &sled::Db) -> Result<Arc<Self>, StoreError> {
        let tree = db.open_tree(super::journal::JOURNAL_TREE)?;
        let listed = tree.clone();
        let listing = std::thread::Builder::new()
            .name("hartslag-journal".into())
            .spawn(move || list(&listed))
            .map_err(|e| StoreError::Thread(e.to_string()))?;
        Ok(Arc::new(Self {
            len: AtomicUsize::new(0),
            tree,
            index: Mutex::new(Index::default()),
            listing: Mutex::new(Listing::Running(listing)),
            listed: AtomicBool::new(false),
            submitted: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            last_round: AtomicU64::new(0),
            born: Instant::now(),
            finished_moves: Mutex::new(Vec::new()),
            moving: AtomicBool::new(false),
            paused_until: AtomicU64::new(0),
            damaged: Mutex::new(Vec::new()),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            #[cfg(test)]
            hold: AtomicBool::new(false),
        }))
    }

    /// Waits for the start's listing and puts it in place. A listing that failed (a
    /// damaged entry, a failed read) fails this, and every call after it.
    pub(super) fn ready(&self) -> Result<(), StoreError> {
        if self.listed.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut listing = lock(&self.listing);
        match std::mem::replace(&mut *listing, Listing::Done) {
            Listing::Done => Ok(()),
            Listing::Failed(e) => {
                let again = repeat(&e);
                *listing = Listing::Failed(e);
                Err(again)
            }
            Listing::Running(thread) => {
                let listed = thread.join().unwrap_or_else(|_| {
                    Err(StoreError::Thread(
                        "listing the timeline journal panicked".into(),
                    ))
                });
                match listed {
                    Ok(index) => {
                        self.len.store(index.len(), Ordering::Relaxed);
                        *lock(&self.index) = index;
                        self.listed.store(true, Ordering::Release);
                        Ok(())
                    }
                    Err(e) => {
                        *listing = Listing::Failed(repeat(&e));
                        Err(e)
                    }
                }
            }
        }
    }

    /// The index, with the moves finished since it was last held recorded in it, once the
    /// start's listing is in place. Hold it from preparing a record that changes the
    /// journal until the record is submitted.
    pub(super) fn lock(&self) -> Result<MutexGuard<'_, Index>, StoreError> {
        self.ready()?;
        Ok(self.guard())
    }

    /// The index, the listing in place (after [`Journal::ready`] succeeded).
    fn guard(&self) -> MutexGuard<'_, Index> {
        let mut index = self.index.lock().unwrap_or_else(|p| p.into_inner());
        let done = std::mem::take(&mut *lock(&self.finished_moves));
        for (id, moved) in done {
            index.moved(id, moved);
        }
        for seq in std::mem::take(&mut *lock(&self.damaged)) {
            index.unlist_seq(seq);
        }
        self.len.store(index.len(), Ordering::Relaxed);
        index
    }

    /// The number the round about to be submitted will have (see [`Index::append`]).
    pub(super) fn next_round(&self) -> u64 {
        self.submitted.load(Ordering::Relaxed) + 1
    }

    /// Counts a round as submitted; call with the index's lock held, after the submit.
    pub(super) fn submitted(&self, index: &Index) {
        self.submitted.fetch_add(1, Ordering::Relaxed);
        self.touch();
        self.len.store(index.len(), Ordering::Relaxed);
    }

    /// Counts a round as finished (from the committer's callback). The mover is woken
    /// only past [`FORCE_AT`], where it moves whatever the store does: below, a finished
    /// round makes the store busier, not quieter, and the mover's nap finds the quiet and
    /// the gaps it waits for (both at least a nap long). Waking it for every round cost a
    /// switch of threads per round for nothing.
    pub(super) fn finished(&self) {
        self.touch();
        self.finished.fetch_add(1, Ordering::Release);
        if self.len() > FORCE_AT {
            self.wake.notify_one();
        }
    }

    /// Entries waiting to be moved.
    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    fn touch(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.last_round.store(ms, Ordering::Relaxed);
    }

    /// Whether a move may start now, as far as the counters tell ([the policy](self));
    /// `trickle` says a trickle move is due.
    pub(super) fn may_move(&self, trickle: bool) -> bool {
        #[cfg(test)]
        if self.hold.load(Ordering::Relaxed) {
            return false;
        }
        let since = self.born.elapsed().as_millis() as u64;
        if self.moving.load(Ordering::Acquire) || since < self.paused_until.load(Ordering::Relaxed)
        {
            return false;
        }
        let submitted = self.submitted.load(Ordering::Relaxed);
        // A start's load of the monitors has the cores to itself: nothing moves before the
        // engine's first round, or a while after the start if none comes.
        if submitted == 0 && since < FIRST_MOVE.as_millis() as u64 {
            return false;
        }
        let len = self.len();
        let idle = self.finished.load(Ordering::Acquire) == submitted;
        let still = since.saturating_sub(self.last_round.load(Ordering::Relaxed));
        let quiet = idle && still >= QUIET.as_millis() as u64;
        let gap = idle && still >= GAP.as_millis() as u64;
        len > 0 && (quiet || len > FORCE_AT || (gap && trickle && len > STEADY_AT))
    }

    /// Moves the oldest chunk if the policy allows: reads its entries (outside the index's
    /// lock: they are applied, and only ever removed), then, under the lock again, keeps
    /// those still listed and submits their puts under their monitors, then their removal
    /// from the journal. Returns whether a move was submitted.
    fn move_oldest(
        self: &Arc<Self>,
        monitors: &sled::Tree,
        committer: &Committer,
        trickle: bool,
    ) -> bool {
        if let Err(e) = committer.health() {
            tracing::debug!(error = %e, "no timeline moves while writes are refused");
            self.pause();
            return false;
        }
        let m = {
            let Ok(mut index) = self.lock() else {
                // The listing failed: so did the start ([`Journal::ready`]).
                self.pause();
                return false;
            };
            if !self.may_move(trickle) {
                return false;
            }
            match index.start_move(self.finished.load(Ordering::Acquire)) {
                Some(m) => m,
                None => return false,
            }
        };
        let read = self.read(&m);
        let mut index = self.guard();
        let entries = match read {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(error = %e, "reading the timeline journal failed; trying again in a second");
                index.moved(m.id, false);
                self.pause();
                return false;
            }
        };
        // Trimmed or removed while the lock was free: not moved back.
        let listed = index.listed(m.id);
        let mut puts = Vec::with_capacity(entries.len());
        let mut pages = Vec::new();
        for (seq, target, json) in entries {
            if listed.binary_search(&seq).is_ok() {
                puts.push(Mutation::put(monitors, target, json));
                pages.push(page_of(seq));
            }
        }
        // Pages whole: the chunk holds every entry they have (invariant 4).
        pages.dedup();
        let removes: Vec<Mutation> = pages
            .into_iter()
            .map(|p| remove_page(&self.tree, p))
            .collect();
        if removes.is_empty() {
            index.moved(m.id, true);
            return true;
        }
        // In key order, so neighbouring monitors share the leaves they fetch; a stable
        // sort, so of two entries under one key the later one is written last and stays.
        puts.sort_by(|a, b| a.key.cmp(&b.key));
        self.moving.store(true, Ordering::Release);
        committer.submit(puts, Box::new(|_| {}));
        let journal = Arc::downgrade(self);
        let id = m.id;
        let mut reported = false;
        committer.submit(
            removes,
            Box::new(move |progress| {
                let moved = match progress {
                    Progress::Durable => return,
                    Progress::Applied => true,
                    Progress::Failed(_) => false,
                };
                if std::mem::replace(&mut reported, true) {
                    return;
                }
                if let Some(j) = journal.upgrade() {
                    lock(&j.finished_moves).push((id, moved));
                    j.moving.store(false, Ordering::Release);
                    j.wake.notify_one();
                }
            }),
        );
        drop(index);
        true
    }

    /// Move `m`'s entries as (sequence number, key under the monitor, JSON), in order. An
    /// entry that is not a timeline entry is unlisted and logged: it cannot be moved, and
    /// keeping it listed would stop every move after it. It goes with its page when the
    /// page's other entries move; a page that cannot be read at all stays where it is.
    fn read(&self, m: &Move) -> Result<Vec<Waiting>, StoreError> {
        let mut entries = Vec::with_capacity(m.seqs.len());
        let (Some(&first), Some(&last)) = (m.seqs.first(), m.seqs.last()) else {
            return Ok(entries);
        };
        for item in self
            .tree
            .range(page_key(page_of(first))..=page_key(page_of(last)))
        {
            let (k, v) = item?;
            let page = match journal_page::entries(&k, &v) {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(error = %e, "a damaged timeline journal page stays in the journal, its entries unlisted");
                    let p = journal_page::page_of_key(&k)?;
                    let seqs = m.seqs.iter().filter(|&&s| page_of(s) == p);
                    lock(&self.damaged).extend(seqs);
                    continue;
                }
            };
            for (seq, entry) in page {
                if m.seqs.binary_search(&seq).is_err() {
                    continue;
                }
                match split_value(&k, entry) {
                    Ok((target, _, json)) => entries.push((seq, target, json)),
                    Err(e) => {
                        tracing::error!(error = %e, "a damaged timeline journal entry is not moved; it is unlisted");
                        lock(&self.damaged).push(seq);
                    }
                }
            }
        }
        Ok(entries)
    }

    /// No move for a second (a read failed, or the committer refuses writes).
    fn pause(&self) {
        let until = self.born.elapsed().as_millis() as u64 + PAUSE.as_millis() as u64;
        self.paused_until.store(until, Ordering::Relaxed);
    }
}

/// Lists the journal's entries, logging how many there were and how long that took.
fn list(tree: &sled::Tree) -> Result<Index, StoreError> {
    let started = Instant::now();
    let index = Index::load(tree)?;
    if index.len() > 0 {
        tracing::info!(
            entries = index.len(),
            ms = started.elapsed().as_millis() as u64,
            "listed the timeline entries waiting in the journal"
        );
    }
    Ok(index)
}

/// A failed listing's error, again for a later use of the index: a damaged entry stays
/// corrupt data; anything else is a store that cannot serve the journal.
fn repeat(e: &StoreError) -> StoreError {
    match e {
        StoreError::Corrupt { what, detail } => StoreError::Corrupt {
            what: what.clone(),
            detail: detail.clone(),
        },
        other => StoreError::Thread(format!("listing the timeline journal failed: {other}")),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A journal entry read for a move: sequence number, key under its monitor, JSON.
type Waiting = (u64, Vec<u8>, Vec<u8>);

/// The mover's thread; stopped and joined when dropped, so the store's directory is free
/// for the next opener once the store is gone.
pub(super) struct Mover {
    journal: Arc<Journal>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Mover {
    /// Starts the mover of `journal`, moving entries into `monitors` through `committer`.
    pub(super) fn start(
        journal: &Arc<Journal>,
        monitors: sled::Tree,
        committer: Committer,
    ) -> Result<Self, StoreError> {
        let j = journal.clone();
        let thread = std::thread::Builder::new()
            .name("hartslag-timeline".into())
            .spawn(move || run(&j, &monitors, &committer))
            .map_err(|e| StoreError::Thread(e.to_string()))?;
        Ok(Self {
            journal: journal.clone(),
            thread: Some(thread),
        })
    }
}

impl Drop for Mover {
    fn drop(&mut self) {
        *lock(&self.journal.stop) = true;
        self.journal.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // The listing thread holds the store too: it ends before the store is released.
        let _ = self.journal.ready();
    }
}

/// Moves while the policy allows, naps otherwise, until told to stop.
fn run(journal: &Arc<Journal>, monitors: &sled::Tree, committer: &Committer) {
    let mut last_move = Instant::now();
    loop {
        if *lock(&journal.stop) {
            return;
        }
        let trickle = last_move.elapsed() >= TRICKLE_EVERY;
        if journal.may_move(trickle) && journal.move_oldest(monitors, committer, trickle) {
            last_move = Instant::now();
            continue;
        }
        // Nothing to move now: a finished round or move wakes us, or the nap ends.
        let stop = lock(&journal.stop);
        if *stop {
            return;
        }
        let (stop, _) = journal
            .wake
            .wait_timeout(stop, NAP)
            .unwrap_or_else(|p| p.into_inner());
        if *stop {
            return;
        }
    }
}

/// The `hartslag_timeline_journal_entries` gauge: timeline entries waiting to be moved
/// under their monitors. It rises through a herd and falls when the store is quiet; one
/// that never falls means a store never quiet for long (moves then trickle, and past 2.5
/// million go back to back).
pub(super) struct Backlog(pub(super) Arc<Journal>);

impl std::fmt::Debug for Backlog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backlog").finish_non_exhaustive()
    }
}

impl prometheus_client::collector::Collector for Backlog {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        let gauge = prometheus_client::metrics::gauge::ConstGauge::new(
            i64::try_from(self.0.len()).unwrap_or(i64::MAX),
        );
        gauge.encode(encoder.encode_descriptor(
            "hartslag_timeline_journal_entries",
            "Timeline entries appended by the monitor engine and not yet moved under their monitors (sled only).",
            None,
            gauge.metric_type(),
        )?)
    }
}
