//! Monitors in sled, behind [`MonitorStore`]: one tree, `monitors`, with a family byte per
//! kind of record ([`keys`]): monitor records, monitors' state records ([`state`]), ping
//! blocks ([`pings`]), timeline entries and the records of monitors deleted with their
//! data retained.
//!
//! A round of the engine becomes one commit-log record: its removals, trims and timeline
//! entries, the ping blocks it appended to (and the blocks that fell out of the kept
//! window), its monitor records (whole where the definition changed, with the state record
//! removed; the state record alone where only the state did), and last the deliveries it
//! queues, put into the outbox's pending tree only where none is queued under the same key.
//! The round is prepared on the engine's thread through the committer's
//! [`PendingReader`](super::commit::PendingReader), which sees the rounds before it that
//! are still on their way to disk, and handed to the group committer without waiting: the
//! engine gathers the next round while the disk flushes this one.

mod convert;
mod journal;
mod journal_page;
pub mod keys;
mod load;
mod mover;
mod numbers;
mod pings;
mod state;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use super::commit::Progress;
use super::port::blocking;
use super::states::StateFile;
use super::wal::Mutation;
use super::{Store, StoreError};
use crate::core::alert::outbox::delivery_key;
use crate::core::monitor::engine::{Monitor, TransitionRecord};
use crate::core::monitor::history::PingRecord;
use crate::core::storage::{MonitorRound, MonitorStore, RoundDone, StorageError, StorageFuture};
use journal::{Index, split_value};
pub(crate) use journal::{JOURNAL_TREE, page_entries as journal_page_entries};
use journal_page::{PageEdits, PageWriter, page_key, page_of, put_page};
use keys::{Family, monitor_key, numbered_prefix, retained_key, state_key, transition_key};
use mover::{Journal, Mover};
use numbers::Numbers;

/// Monitors, ping history and timelines in sled.
pub struct SledMonitors {
    store: Store,
    tree: sled::Tree,
    /// Where state records go ([`state`]).
    states: StateFile,
    /// Monitors whose state record is too long for the state file, kept in sled instead:
    /// the next state record that fits removes it.
    overflow: Mutex<HashSet<u64>>,
    /// Monitor numbers: the next ones to give out, and how far the store says they were
    /// given out ([`numbers`]).
    numbers: Mutex<(Numbers, Numbers)>,
    /// The outbox's pending deliveries, where a round queues the alerts it raised.
    pending: sled::Tree,
    /// Where rounds append timeline entries ([`journal`]).
    journal: Arc<Journal>,
    /// Carries them to their monitors ([`mover`]); stops with the store.
    _mover: Mover,
    /// Released last, once the mover has stopped.
    _claim: Claim,
}

/// The store's monitors, held by one `SledMonitors`. A second would give out the same
/// monitor numbers, write the same state-file slots and move the same journal, each
/// believing it alone does: it is refused, not left to interleave.
struct Claim(Arc<std::sync::atomic::AtomicBool>);

impl Claim {
    fn take(store: &Store) -> Result<Self, StoreError> {
        let open = &store.monitors_open;
        if open.swap(true, std::sync::atomic::Ordering::AcqRel) {
            return Err(StoreError::InUse("monitors"));
        }
        Ok(Self(open.clone()))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// How a round changes the journal's index, made once the round is prepared whole.
#[derive(Default)]
struct IndexChanges {
    /// Monitors removed with their history.
    removed: Vec<u64>,
    /// Entries trimmed: (monitor, sequence number).
    trimmed: Vec<(u64, u64)>,
    /// Entries appended: (monitor, sequence number).
    appended: Vec<(u64, u64)>,
}

impl SledMonitors {
    /// Opens the monitors tree, converting what earlier versions stored in other layouts
    /// first: ping history one ping per value into blocks, monitor and state records by
    /// name to their numbers.
    pub fn open(store: &Store) -> Result<Self, StoreError> {
        Self::open_with(store, false)
    }

    /// Opens as [`SledMonitors::open`] does; with `held`, the mover starts held (tests).
    fn open_with(store: &Store, held: bool) -> Result<Self, StoreError> {
        let claim = Claim::take(store)?;
        let tree = store.db.open_tree("monitors")?;
        let converted = pings::convert_single_records(&tree, store.committer())?;
        if converted > 0 {
            tracing::info!(pings = converted, "converted stored ping history to blocks");
        }
        let started = std::time::Instant::now();
        let converted = convert::convert_named_records(&tree, store.committer())?;
        if converted > 0 {
            tracing::info!(
                monitors = converted,
                ms = started.elapsed().as_millis() as u64,
                "moved the stored monitors to the layout by number"
            );
        }
        state::claim_state_file(&tree, store.committer())?;
        let started = std::time::Instant::now();
        let moved = state::move_to_state_file(&tree, store.committer())?;
        if moved > 0 {
            tracing::info!(
                monitors = moved,
                ms = started.elapsed().as_millis() as u64,
                "moved the stored monitors' state records to the state file"
            );
        }
        let overflow = state::kept_in_sled(&tree)?;
        let numbers = Numbers::of(&tree)?;
        // Listed on a thread of its own while the monitors load; a failed listing fails
        // the load ([`MonitorStore::load_monitors`]).
        let journal = Journal::open(&store.db)?;
        #[cfg(test)]
        journal
            .hold
            .store(held, std::sync::atomic::Ordering::Relaxed);
        #[cfg(not(test))]
        let _ = held;
        let mover = Mover::start(&journal, tree.clone(), store.committer().clone())?;
        Ok(Self {
            journal,
            _mover: mover,
            _claim: claim,
            numbers: Mutex::new((numbers, numbers)),
            pending: store.db.open_tree(super::outbox::PENDING_TREE)?,
            states: store.committer().states().clone(),
            overflow: Mutex::new(overflow),
            store: store.clone(),
            tree,
        })
    }

    /// A round as writes, in the order of one record: removals, trims and timeline
    /// entries, then ping blocks, monitor and state records and queued deliveries. A
    /// removal and a whole record remove the state record with it, so a state record
    /// found is always newer than its monitor's record ([`state`]).
    fn round_writes(
        &self,
        round: MonitorRound,
        index: &mut Index,
        changes: &mut IndexChanges,
    ) -> Result<Vec<Mutation>, StoreError> {
        let reader = self.store.committer().reader();
        let tree = &self.tree;
        let mut writes = Vec::with_capacity(
            round.remove.len()
                + round.transitions.len()
                + round.pings.len()
                + round.put.len() * 2
                + round.put_state.len()
                + round.deliveries.len(),
        );
        // Which monitors keep their state record in sled once the round is written; the
        // set changes only once the whole round has been prepared.
        let mut in_sled = Vec::new();
        let mut pages = PageEdits::default();
        let journal = &self.journal.tree;
        for r in &round.remove {
            writes.push(Mutation::remove(tree, monitor_key(r.num).to_vec()));
            writes.push(Mutation::remove(tree, state_key(r.num).to_vec()));
            state::clear(&mut writes, &self.states, r.num);
            in_sled.push((r.num, false));
            if let Some(m) = &r.retain {
                // History and state stay, under the retained key, for a re-created monitor.
                writes.push(Mutation::put(tree, retained_key(&r.key), encode(m)?));
                continue;
            }
            writes.push(Mutation::remove(tree, retained_key(&r.key)));
            for seq in index.seqs_of(r.num) {
                pages.remove(&reader, journal, seq)?;
            }
            changes.removed.push(r.num);
            for prefix in [
                pings::monitor_prefix(r.num),
                numbered_prefix(Family::Transition, r.num),
            ] {
                for k in reader.keys_with_prefix(tree, &prefix)? {
                    writes.push(Mutation::remove(tree, k));
                }
            }
        }
        for &(num, keep) in &round.trims {
            self.trim(num, keep, index, &mut pages, &mut writes, changes)?;
        }
        writes.extend(pages.into_writes(journal));
        self.append_pages(&round.transitions, index, &mut writes, changes)?;
        let mut blocks = pings::RoundBlocks::default();
        let mut expired = Vec::new();
        for (num, p) in &round.pings {
            blocks.record(&reader, tree, *num, p, round.keep_pings, &mut expired)?;
        }
        writes.extend(expired.into_iter().map(|k| Mutation::remove(tree, k)));
        writes.extend(blocks.into_writes(tree));
        let mut numbers = self.numbers.lock().unwrap_or_else(|p| p.into_inner());
        writes.extend(Numbers::record(
            &mut numbers.1,
            round.put.iter().map(|m| m.num),
            tree,
        ));
        drop(numbers);
        for m in &round.put {
            writes.push(Mutation::put(
                tree,
                monitor_key(m.num).to_vec(),
                encode(m.as_ref())?,
            ));
            writes.push(Mutation::remove(tree, state_key(m.num).to_vec()));
            state::clear(&mut writes, &self.states, m.num);
            in_sled.push((m.num, false));
        }
        {
            let overflow = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
            for m in &round.put_state {
                let record = state::encode(m)?;
                let now = state::write(
                    &mut writes,
                    (tree, &self.states),
                    m.num,
                    record,
                    overflow.contains(&m.num),
                );
                in_sled.push((m.num, now));
            }
        }
        for d in &round.deliveries {
            let key = delivery_key(&d.alert, &d.target);
            writes.push(Mutation::put_if_absent(&self.pending, key, encode(d)?));
        }
        let mut overflow = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
        for (num, kept) in in_sled {
            if kept {
                overflow.insert(num);
            } else {
                overflow.remove(&num);
            }
        }
        Ok(writes)
    }

    /// Appends a round's timeline entries to the journal, in pages of their own, each
    /// entry encoded in place in its page.
    fn append_pages(
        &self,
        transitions: &[(u64, u8, TransitionRecord)],
        index: &mut Index,
        writes: &mut Vec<Mutation>,
        changes: &mut IndexChanges,
    ) -> Result<(), StoreError> {
        let journal = &self.journal.tree;
        let seqs = index.take_seqs(transitions.len());
        let room = transitions.len().min(journal_page::PAGE_AT_MOST);
        let mut page: Option<(u64, PageWriter)> = None;
        for ((num, idx, record), seq) in transitions.iter().zip(seqs) {
            let target = transition_key(*num, record.at, *idx);
            let p = page_of(seq);
            if let Some((q, w)) = page.take_if(|(q, _)| *q != p) {
                writes.push(put_page(journal, q, w.into_value()));
            }
            let (_, w) = page.get_or_insert_with(|| (p, PageWriter::with_room(room)));
            w.push(seq, &target, |buf| {
                serde_json::to_writer(buf, record)
                    .map_err(|e| StoreError::Write(format!("encoding a timeline entry: {e}")))
            })?;
            changes.appended.push((*num, seq));
        }
        if let Some((p, w)) = page.filter(|(_, w)| !w.is_empty()) {
            writes.push(put_page(journal, p, w.into_value()));
        }
        Ok(())
    }

    /// Removes monitor `num`'s timeline entries beyond the newest `keep`, wherever they
    /// are: under the monitor, in the journal, or in both while a move is under way. Both
    /// are read as the records before this round leave them (journal pages through the
    /// committer's pending view).
    fn trim(
        &self,
        num: u64,
        keep: usize,
        index: &Index,
        pages: &mut PageEdits,
        writes: &mut Vec<Mutation>,
        changes: &mut IndexChanges,
    ) -> Result<(), StoreError> {
        let reader = self.store.committer().reader();
        // Each entry by its key under the monitor: whether it is there, and where it
        // waits in the journal (two steps at one instant can have written one key twice).
        let mut entries: BTreeMap<Vec<u8>, (bool, Vec<u64>)> = reader
            .keys_with_prefix(&self.tree, &numbered_prefix(Family::Transition, num))?
            .into_iter()
            .map(|k| (k, (true, Vec::new())))
            .collect();
        let journal = &self.journal.tree;
        for seq in index.seqs_of(num) {
            let key = page_key(page_of(seq));
            let target = match pages.entry(&reader, journal, seq) {
                Ok(Some(entry)) => split_value(&key, &entry).map(|(target, _, _)| target),
                Ok(None) => continue,
                // A damaged page: nothing in it to keep.
                Err(e @ StoreError::Corrupt { .. }) => Err(e),
                Err(other) => return Err(other),
            };
            match target {
                Ok(target) => entries.entry(target).or_default().1.push(seq),
                // Not a timeline entry: nothing to keep, and no reason to fail the round.
                Err(_) => {
                    pages.remove(&reader, journal, seq)?;
                    changes.trimmed.push((num, seq));
                }
            }
        }
        let beyond = entries.len().saturating_sub(keep);
        for (k, (placed, journaled)) in entries.into_iter().take(beyond) {
            if placed {
                writes.push(Mutation::remove(&self.tree, k));
            }
            for seq in journaled {
                pages.remove(&reader, journal, seq)?;
                changes.trimmed.push((num, seq));
            }
        }
        Ok(())
    }
}

impl IndexChanges {
    fn apply(self, index: &mut Index, round: u64) {
        for num in self.removed {
            index.unlist_monitor(num);
        }
        for (num, seq) in self.trimmed {
            index.unlist(num, seq);
        }
        index.append(&self.appended, round);
    }
}

/// Every stored monitor, its state record laid over its record, in batches (for
/// `hartslag migrate`, which reads the store while nothing else runs on it).
pub(crate) fn load_all(
    store: &Store,
    batch: &mut dyn FnMut(Vec<Monitor>),
) -> Result<(), StoreError> {
    let states = store.committer().states();
    let tree = store.db.open_tree("monitors")?;
    // A store whose state file was lost is not copied with stale states.
    state::is_claimed(&tree, states)?;
    load::load_monitors(&tree, states, batch)
}

/// A record as its JSON value.
fn encode(value: &impl serde::Serialize) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Write(format!("encoding a record: {e}")))
}

/// A stored JSON record, `what` naming it when it is corrupt.
fn decode<T: serde::de::DeserializeOwned>(what: &str, v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
        what: what.to_string(),
        detail: e.to_string(),
    })
}

impl MonitorStore for SledMonitors {
    fn load_monitors(&self, batch: &mut dyn FnMut(Vec<Monitor>)) -> Result<(), StorageError> {
        load::load_monitors(&self.tree, &self.states, batch)?;
        // The journal was listed beside the load; a start fails here if that failed.
        Ok(self.journal.ready()?)
    }

    fn next_monitor_num(&self) -> Result<u64, StorageError> {
        let mut numbers = self.numbers.lock().unwrap_or_else(|p| p.into_inner());
        Ok(numbers.0.take())
    }

    fn find_retained(&self, key: &str) -> Result<Option<Monitor>, StorageError> {
        let reader = self.store.committer().reader();
        match reader
            .read(&self.tree, &retained_key(key))
            .map_err(StoreError::from)?
        {
            Some(v) => Ok(Some(decode(&format!("retained monitor {key}"), &v)?)),
            None => Ok(None),
        }
    }

    fn commit_round(&self, round: MonitorRound, done: RoundDone) {
        // Held until the round is submitted, so rounds and moves reach the committer in
        // the order they changed the journal's index ([`mover`]).
        let mut index = match self.journal.lock() {
            Ok(index) => index,
            Err(e) => return done(Err(e.into())),
        };
        let mut changes = IndexChanges::default();
        let writes = match self.round_writes(round, &mut index, &mut changes) {
            Ok(w) => w,
            Err(e) => return done(Err(e.into())),
        };
        changes.apply(&mut index, self.journal.next_round());
        let mut done = Some(done);
        let journal = self.journal.clone();
        self.store.committer().submit(
            writes,
            Box::new(move |progress| {
                let result = match progress {
                    Progress::Durable => return,
                    Progress::Applied => Ok(()),
                    Progress::Failed(e) => Err(StorageError::NotStored(e.to_string())),
                };
                if let Some(done) = done.take() {
                    journal.finished();
                    done(result);
                }
            }),
        );
        self.journal.submitted(&index);
    }

    fn pings(&self, num: u64, limit: usize, keep: u64) -> StorageFuture<'_, Vec<PingRecord>> {
        let tree = self.tree.clone();
        blocking(&self.store, move |_| pings::newest(&tree, num, limit, keep))
    }

    fn transitions(&self, num: u64, limit: usize) -> StorageFuture<'_, Vec<TransitionRecord>> {
        let tree = self.tree.clone();
        let journal = self.journal.clone();
        blocking(&self.store, move |_| {
            // The journal before the monitor's range: an entry moved in between is then
            // found in the range ([`journal`]'s invariant 2).
            let seqs = journal.lock()?.seqs_of(num);
            let mut waiting = Vec::with_capacity(seqs.len());
            let mut page: Option<(u64, Option<sled::IVec>)> = None;
            for seq in seqs {
                let p = page_of(seq);
                if page.as_ref().is_none_or(|(q, _)| *q != p) {
                    page = Some((p, journal.tree.get(page_key(p))?));
                }
                let Some((_, Some(v))) = &page else {
                    continue;
                };
                let key = page_key(p);
                if let Some(entry) = journal_page::entry_of(&key, v, seq)? {
                    let (target, _, json) = split_value(&key, entry)?;
                    waiting.push((target, json));
                }
            }
            let mut found: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            for item in tree
                .scan_prefix(numbered_prefix(Family::Transition, num))
                .rev()
                .take(limit)
            {
                let (k, v) = item?;
                found.insert(k.to_vec(), v.to_vec());
            }
            // The journal's last: under one key the newest write wins, as it does in sled.
            found.extend(waiting);
            found
                .values()
                .rev()
                .take(limit)
                .map(|v| decode::<TransitionRecord>("timeline entry", v))
                .collect()
        })
    }

    fn register_metrics(&self, registry: &mut crate::core::metrics::MetricRegistry) {
        registry.register_collector(Box::new(mover::Backlog(self.journal.clone())));
    }

    fn retained(&self, key: String) -> StorageFuture<'_, Option<Monitor>> {
        let tree = self.tree.clone();
        blocking(&self.store, move |_| {
            match tree.get(retained_key(&key))? {
                Some(v) => Ok(Some(decode(&format!("retained monitor {key}"), &v)?)),
                None => Ok(None),
            }
        })
    }

    fn retained_all(&self) -> StorageFuture<'_, Vec<Monitor>> {
        let tree = self.tree.clone();
        blocking(&self.store, move |_| {
            tree.scan_prefix([Family::Retained as u8])
                .map(|item| {
                    let (_, v) = item?;
                    decode("retained monitor", &v)
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod journal_tests;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::core::alert::message::{Alert, AlertKind, Target};
    use crate::core::alert::outbox::deliveries;
    use crate::core::monitor::engine::sample;
    use crate::core::monitor::history::sample_ping;
    use crate::core::monitor::state::State;
    use crate::core::storage::Removal;
    use crate::core::store::StoreOptions;
    use crate::core::store::wal::{Op, Target as WriteTarget};

    fn down(m: &Monitor) -> Alert {
        Alert {
            id: format!("{}:1:down", m.def.key),
            kind: AlertKind::Down,
            monitor: m.def.name().to_string(),
            display_name: None,
            scope: "namespace ns".into(),
            reason: "no ping".into(),
            occurred_at: m.state.since,
            last_ping_at: None,
            last_failure_at: None,
            expected_at: None,
            ping_hint: String::new(),
            namespace: "ns".into(),
            application: None,
            opened_at: None,
            runbook_url: None,
            exit_code: None,
            repeat: 0,
            policy: Default::default(),
            maintenance: Vec::new(),
        }
    }

    /// Each write as (tree, key family or first byte, what it does).
    fn shape(writes: &[Mutation]) -> Vec<(String, u8, &'static str)> {
        writes
            .iter()
            .map(|w| {
                let op = match w.op {
                    Op::Put(_) => "put",
                    Op::Remove => "remove",
                    Op::PutIfAbsent(_) => "put if absent",
                };
                let tree = match &w.target {
                    WriteTarget::States(_) => "state file".to_string(),
                    WriteTarget::Tree(t) => String::from_utf8_lossy(&t.name()).into_owned(),
                };
                (tree, w.key.first().copied().unwrap_or(0), op)
            })
            .collect()
    }

    #[test]
    fn a_round_is_one_record_of_removals_timeline_blocks_monitors_then_deliveries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let sled = SledMonitors::open(&store).unwrap();
        let (mut kept, mut gone) = (sample("ns/kept", State::Down), sample("ns/gone", State::Up));
        let mut pinged = sample("ns/pinged", State::Up);
        (kept.num, gone.num, pinged.num) = (7, 8, 9);
        let hook = Target::Webhook {
            url: "http://alerts.invalid/hook".into(),
        };
        let round = MonitorRound {
            remove: vec![Removal {
                key: gone.def.key.clone(),
                num: gone.num,
                retain: None,
            }],
            put: vec![Arc::new(kept.clone())],
            put_state: vec![Arc::new(pinged)],
            pings: vec![(kept.num, sample_ping(1)), (kept.num, sample_ping(2))],
            keep_pings: 10,
            transitions: vec![(
                kept.num,
                0,
                TransitionRecord {
                    at: kept.state.since,
                    from: State::Up,
                    to: State::Down,
                    reason: None,
                },
            )],
            trims: Vec::new(),
            deliveries: deliveries(&down(&kept), &[hook], kept.state.since),
            relayed: Vec::new(),
        };
        let mut changes = IndexChanges::default();
        let writes = sled
            .round_writes(round, &mut sled.journal.lock().unwrap(), &mut changes)
            .unwrap();
        let f = |family: Family| family as u8;
        let monitors = || "monitors".to_string();
        // Slots are keyed by the monitor's number: its first byte is 0 here.
        let slot = || "state file".to_string();
        assert_eq!(
            shape(&writes),
            vec![
                (monitors(), f(Family::Monitor), "remove"),
                (monitors(), f(Family::State), "remove"),
                (slot(), 0, "remove"),
                (monitors(), f(Family::Retained), "remove"),
                // Timeline entries are appended to the journal, in page number 0.
                ("timeline-journal".to_string(), 0, "put"),
                // Both pings in one block, written once.
                (monitors(), f(Family::PingBlock), "put"),
                // A number past those given out so far is stored as given out.
                (monitors(), 0xff, "put"),
                // A whole record takes the place of the state record, wherever it is.
                (monitors(), f(Family::Monitor), "put"),
                (monitors(), f(Family::State), "remove"),
                (slot(), 0, "remove"),
                // The state alone where only the state changed, in its slot.
                (slot(), 0, "put"),
                ("outbox".to_string(), b'n', "put if absent"),
            ]
        );
        assert_eq!(writes[5].key, pings::block_key(kept.num, 1).to_vec());
        assert_eq!(writes[10].key, 9u64.to_be_bytes().to_vec());

        // Handed over as one record of the commit log.
        let before = store.committer().stats().records.load(Ordering::Relaxed);
        commit(
            &sled,
            MonitorRound {
                put: vec![Arc::new(kept)],
                ..Default::default()
            },
        );
        let after = store.committer().stats().records.load(Ordering::Relaxed);
        assert_eq!(after - before, 1);
    }

    /// Hands `round` to the store and waits until it is applied.
    pub(super) fn commit(sled: &SledMonitors, round: MonitorRound) {
        let (tx, rx) = std::sync::mpsc::channel();
        sled.commit_round(
            round,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().unwrap().unwrap();
    }

    /// Opens the store at `dir` once sled's lock is free: the last one's committer lets
    /// go of the database on its own thread.
    pub(super) fn open_when_free(dir: &std::path::Path) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open(dir, &StoreOptions::default()) {
                Ok(s) => return s,
                Err(e) if std::time::Instant::now() > deadline => panic!("{e}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    }

    fn loaded(sled: &SledMonitors) -> Vec<Monitor> {
        let mut all = Vec::new();
        sled.load_monitors(&mut |batch| all.extend(batch)).unwrap();
        all.sort_by_key(|m| m.num);
        all
    }

    #[test]
    fn the_monitors_of_a_store_are_opened_once_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let first = SledMonitors::open(&store).unwrap();
        commit(
            &first,
            MonitorRound {
                put: vec![Arc::new(sample("ns/a", State::Up))],
                ..Default::default()
            },
        );
        let err = SledMonitors::open(&store.clone()).err().expect("refused");
        assert_eq!(
            err.to_string(),
            "the monitors of this database are already open in this process"
        );
        drop(first);
        let again = SledMonitors::open(&store).unwrap();
        assert_eq!(loaded(&again).len(), 1);
    }

    #[test]
    fn a_store_in_the_layout_by_name_opens_converted_and_keeps_its_monitors() {
        let dir = tempfile::tempdir().unwrap();
        let (mut a, mut b) = (sample("ns/a", State::Up), sample("ns/b", State::New));
        (a.num, b.num) = (5, 2);
        {
            // As an earlier version left it: records by name, one state record by name.
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let tree = db.open_tree("monitors").unwrap();
            for m in [&a, &b] {
                tree.insert(keys::named_monitor_key(&m.def.key), encode(m).unwrap())
                    .unwrap();
            }
            a.state.pings = 7;
            a.last_run_ms = Some(1500);
            tree.insert(keys::named_state_key("ns/a"), state::encode(&a).unwrap())
                .unwrap();
            db.flush().unwrap();
        }
        {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            let sled = SledMonitors::open(&store).unwrap();
            assert_eq!(loaded(&sled), vec![b.clone(), a.clone()]);
            // A round writes b's state under its number, as every round does now.
            b.state.state = State::Up;
            b.state.pings = 1;
            commit(
                &sled,
                MonitorRound {
                    put_state: vec![Arc::new(b.clone())],
                    ..Default::default()
                },
            );
        }
        let store = open_when_free(dir.path());
        let sled = SledMonitors::open(&store).unwrap();
        assert_eq!(
            loaded(&sled),
            vec![b, a],
            "each monitor once, with its newest state"
        );
        // The state records moved on to the state file.
        for family in [Family::NamedMonitor, Family::NamedState, Family::State] {
            assert_eq!(sled.tree.scan_prefix([family as u8]).count(), 0);
        }
    }

    /// Writes monitor `ns/a` (number 1), then a newer state of it, which goes to its slot.
    fn a_monitor_with_its_state_in_a_slot(store: &Store) {
        let sled = SledMonitors::open(store).unwrap();
        let mut m = sample("ns/a", State::Up);
        m.num = 1;
        let put = vec![Arc::new(m.clone())];
        commit(
            &sled,
            MonitorRound {
                put,
                ..Default::default()
            },
        );
        m.state.pings = 3;
        let put_state = vec![Arc::new(m)];
        commit(
            &sled,
            MonitorRound {
                put_state,
                ..Default::default()
            },
        );
    }

    #[test]
    fn a_lost_or_replaced_state_file_is_refused_at_start_not_taken_for_an_empty_one() {
        let (dir, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            a_monitor_with_its_state_in_a_slot(&store);
            // Another database's state file.
            crate::core::store::states::StateFile::open(other.path()).unwrap();
        }
        let file = dir.path().join(crate::core::store::states::FILE_NAME);
        for replace in [false, true] {
            std::fs::remove_file(&file).unwrap();
            if replace {
                std::fs::copy(
                    other.path().join(crate::core::store::states::FILE_NAME),
                    &file,
                )
                .unwrap();
            }
            let store = open_when_free(dir.path());
            // `migrate` and `dump` read the store without opening its monitors: refused too.
            assert!(load_all(&store, &mut |_| {}).is_err());
            let err = SledMonitors::open(&store).err().expect("refused");
            assert!(
                err.to_string()
                    .contains("is not the state file this database was written with"),
                "{err}"
            );
            // A file this start made is not left behind; one put there is not touched.
            assert_eq!(file.exists(), replace, "replaced: {replace}");
            if !replace {
                drop(store);
                std::fs::copy(
                    other.path().join(crate::core::store::states::FILE_NAME),
                    &file,
                )
                .unwrap();
            }
        }
    }

    #[test]
    fn a_state_file_beside_a_lost_database_is_refused_at_start_not_claimed_anew() {
        // With a monitor's state in a slot, and with none (an install that tracks events
        // only, where the file holds nothing but its header).
        for with_monitor in [true, false] {
            a_state_file_beside_a_lost_database_is_refused(with_monitor);
        }
    }

    fn a_state_file_beside_a_lost_database_is_refused(with_monitor: bool) {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            if with_monitor {
                a_monitor_with_its_state_in_a_slot(&store);
            } else {
                drop(SledMonitors::open(&store).unwrap());
            }
        }
        // Closed for good (the lock is free once the first one is), then the database's
        // files are gone and its commit log holds nothing more (as after a checkpoint);
        // the state file stays.
        drop(open_when_free(dir.path()));
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name != crate::core::store::states::FILE_NAME
                && name != crate::core::store::wal::FILE_NAME
            {
                if path.is_dir() {
                    std::fs::remove_dir_all(&path).unwrap();
                } else {
                    std::fs::remove_file(&path).unwrap();
                }
            }
        }
        let store = open_when_free(dir.path());
        let err = SledMonitors::open(&store).err().expect("refused");
        assert!(
            err.to_string()
                .contains("belongs to a database that has no record of it"),
            "with a monitor: {with_monitor}: {err}"
        );
    }

    /// `m` remembering `jobs` Jobs, which makes its state record long.
    fn with_jobs(mut m: Monitor, jobs: usize) -> Monitor {
        use crate::core::monitor::jobs::{JobPhase, SeenJob};
        for i in 0..jobs {
            m.state.jobs.vec_mut().push(SeenJob {
                name: format!("nightly-backup-2951{i:04}"),
                started_at: m.state.since,
                phase: JobPhase::Succeeded,
            });
        }
        m
    }

    #[test]
    fn a_state_record_too_long_for_its_slot_is_kept_in_sled_until_one_fits_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = sample("ns/nightly-backup", State::Up);
        m.num = 3;
        let state_in_sled = |sled: &SledMonitors| sled.tree.get(state_key(3)).unwrap().is_some();
        {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            let sled = SledMonitors::open(&store).unwrap();
            let put_state = |m: &Monitor| MonitorRound {
                put_state: vec![Arc::new(m.clone())],
                ..Default::default()
            };
            commit(
                &sled,
                MonitorRound {
                    put: vec![Arc::new(m.clone())],
                    ..Default::default()
                },
            );
            m.state.pings = 1;
            commit(&sled, put_state(&m));
            assert!(!state_in_sled(&sled));
            m = with_jobs(m, 16);
            assert!(state::encode(&m).unwrap().len() > crate::core::store::states::CAPACITY);
            commit(&sled, put_state(&m));
            assert!(state_in_sled(&sled));
            assert_eq!(store.committer().states().read(3).unwrap(), None);
            assert_eq!(loaded(&sled), vec![m.clone()]);
        }
        // Known to be in sled after a restart too: the next short one removes it.
        let store = open_when_free(dir.path());
        let sled = SledMonitors::open(&store).unwrap();
        assert_eq!(loaded(&sled), vec![m.clone()]);
        m.state.jobs = Default::default();
        m.state.pings = 2;
        commit(
            &sled,
            MonitorRound {
                put_state: vec![Arc::new(m.clone())],
                ..Default::default()
            },
        );
        assert!(!state_in_sled(&sled));
        assert_eq!(loaded(&sled), vec![m]);
    }

    #[test]
    fn state_records_an_earlier_version_kept_in_sled_move_to_the_state_file_when_one_fits() {
        let dir = tempfile::tempdir().unwrap();
        let mut all: Vec<Monitor> = (1..=2500u64)
            .map(|num| {
                let mut m = sample(&format!("ns/m{num:04}"), State::New);
                m.num = num;
                m
            })
            .collect();
        {
            // As the version before the state file left it: state records in sled.
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let tree = db.open_tree("monitors").unwrap();
            for m in all.iter_mut() {
                tree.insert(monitor_key(m.num), encode(&*m).unwrap())
                    .unwrap();
                if m.num % 2 == 0 {
                    m.state.state = State::Up;
                    m.state.pings = m.num;
                    if m.num == 1000 {
                        *m = with_jobs(m.clone(), 16);
                    }
                    tree.insert(state_key(m.num), state::encode(m).unwrap())
                        .unwrap();
                }
            }
            db.flush().unwrap();
        }
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let sled = SledMonitors::open(&store).unwrap();
        assert_eq!(loaded(&sled), all);
        // All but the one too long for its slot moved.
        let kept: Vec<_> = sled
            .tree
            .scan_prefix([Family::State as u8])
            .keys()
            .collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(
            kept[0].as_ref().unwrap().as_ref(),
            state_key(1000).as_slice()
        );
        assert!(store.committer().states().read(2).unwrap().is_some());
        assert_eq!(store.committer().states().read(1000).unwrap(), None);
        drop((sled, store));
        let store = open_when_free(dir.path());
        let sled = SledMonitors::open(&store).unwrap();
        assert_eq!(loaded(&sled), all);
    }
}
