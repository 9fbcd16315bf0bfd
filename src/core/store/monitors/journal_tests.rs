//! The timeline journal through the store: entries read the same wherever they are (the
//! journal, their monitor's range, or both while a move is cut short), and trims,
//! removals, restarts and dumps see both places.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jiff::Timestamp;

use super::tests::{commit, open_when_free};
use super::*;
use crate::core::migrate::rows::{Part, Row};
use crate::core::monitor::state::State;
use crate::core::storage::Removal;

fn entry(secs: i64, to: State) -> TransitionRecord {
    TransitionRecord {
        at: Timestamp::from_second(1_700_000_000 + secs).unwrap(),
        from: State::Up,
        to,
        reason: Some(format!("step {secs}")),
    }
}

/// A round of timeline entries for monitor `num`, one per second from `from`.
fn entries(num: u64, from: i64, n: i64) -> MonitorRound {
    MonitorRound {
        transitions: (from..from + n)
            .map(|s| (num, 0, entry(s, State::Down)))
            .collect(),
        ..Default::default()
    }
}

/// A round that trims monitor `num`'s timeline to its newest `keep` entries.
fn trim(num: u64, keep: usize) -> MonitorRound {
    MonitorRound {
        trims: vec![(num, keep)],
        ..Default::default()
    }
}

/// A round that removes monitor `num` with its history.
fn removal(num: u64) -> MonitorRound {
    MonitorRound {
        remove: vec![Removal {
            key: format!("ns/{num}"),
            num,
            retain: None,
        }],
        ..Default::default()
    }
}

fn read(sled: &SledMonitors, num: u64, limit: usize) -> Vec<i64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let got = rt.block_on(sled.transitions(num, limit)).unwrap();
    got.iter()
        .map(|t| t.at.as_second() - 1_700_000_000)
        .collect()
}

/// Keys of `num`'s entries under the monitor, and entries of the journal (any monitor).
fn places(sled: &SledMonitors, num: u64) -> (usize, usize) {
    let placed = sled
        .tree
        .scan_prefix(numbered_prefix(Family::Transition, num))
        .count();
    let journaled = sled
        .journal
        .tree
        .iter()
        .map(|item| {
            let (k, v) = item.unwrap();
            journal::page_entries(&k, &v).unwrap().len()
        })
        .sum();
    (placed, journaled)
}

fn wait_moved(sled: &SledMonitors) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sled.journal.tree.is_empty() || sled.journal.len() > 0 {
        assert!(Instant::now() < deadline, "the mover left the journal full");
        std::thread::sleep(Duration::from_millis(10));
        // Records finished moves in the index.
        drop(sled.journal.lock().unwrap());
    }
}

/// The store at `dir` with its mover held: entries stay in the journal until released.
fn opened(dir: &std::path::Path) -> (Store, SledMonitors) {
    let store = open_when_free(dir);
    let sled = SledMonitors::open_with(&store, true).unwrap();
    (store, sled)
}

/// Commits `round`, lets the mover carry it under its monitors, and holds the mover again.
fn moved_then_held(sled: &SledMonitors, round: MonitorRound) {
    commit(sled, round);
    release(sled);
    wait_moved(sled);
    hold(sled);
}

fn release(sled: &SledMonitors) {
    sled.journal.hold.store(false, Ordering::Relaxed);
}

fn hold(sled: &SledMonitors) {
    sled.journal.hold.store(true, Ordering::Relaxed);
}

/// Hands `round` over without waiting; the receiver hears when it is applied.
fn submit(sled: &SledMonitors, round: MonitorRound) -> std::sync::mpsc::Receiver<bool> {
    let (tx, rx) = std::sync::mpsc::channel();
    sled.commit_round(
        round,
        Box::new(move |r| {
            let _ = tx.send(r.is_ok());
        }),
    );
    rx
}

#[test]
fn entries_wait_in_the_journal_then_move_to_their_monitor_and_read_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, sled) = opened(dir.path());
    hold(&sled);
    commit(&sled, entries(3, 0, 5));
    commit(&sled, entries(4, 10, 2));
    assert_eq!(places(&sled, 3), (0, 7), "appended to the journal only");
    assert_eq!(read(&sled, 3, 10), vec![4, 3, 2, 1, 0]);
    assert_eq!(read(&sled, 3, 2), vec![4, 3]);
    assert_eq!(read(&sled, 4, 10), vec![11, 10]);

    release(&sled);
    wait_moved(&sled);
    assert_eq!(places(&sled, 3), (5, 0), "moved under the monitor");
    assert_eq!(read(&sled, 3, 10), vec![4, 3, 2, 1, 0]);
    assert_eq!(read(&sled, 4, 1), vec![11]);
}

#[test]
fn a_trim_keeps_the_newest_across_both_places() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, sled) = opened(dir.path());
    moved_then_held(&sled, entries(5, 0, 4));
    commit(&sled, entries(5, 4, 3));
    assert_eq!(places(&sled, 5), (4, 3));

    // Oldest three, all under the monitor.
    commit(&sled, trim(5, 4));
    assert_eq!(places(&sled, 5), (1, 3));
    // The one left there and the oldest in the journal.
    commit(&sled, trim(5, 2));
    assert_eq!(places(&sled, 5), (0, 2));
    assert_eq!(
        sled.journal.lock().unwrap().len(),
        2,
        "the trimmed entry is unlisted"
    );
    assert_eq!(read(&sled, 5, 10), vec![6, 5]);
    release(&sled);
    wait_moved(&sled);
    assert_eq!(read(&sled, 5, 10), vec![6, 5]);
    assert_eq!(
        places(&sled, 5),
        (2, 0),
        "a trimmed entry is not moved back"
    );
}

#[test]
fn a_big_round_fills_pages_and_a_trim_rewrites_or_removes_them() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, sled) = opened(dir.path());
    let n = 2 * journal_page::PAGE_AT_MOST as i64 + 22;
    commit(&sled, entries(5, 0, n));
    assert_eq!(
        sled.journal.tree.len(),
        3,
        "two full pages and a part of one"
    );
    assert_eq!(places(&sled, 5), (0, n as usize));
    commit(&sled, trim(5, 10));
    assert_eq!(sled.journal.tree.len(), 1, "pages left empty are removed");
    assert_eq!(places(&sled, 5), (0, 10), "the last page is rewritten");
    let newest: Vec<i64> = (n - 10..n).rev().collect();
    assert_eq!(read(&sled, 5, 100), newest);
    release(&sled);
    wait_moved(&sled);
    assert_eq!(places(&sled, 5), (10, 0));
    assert_eq!(read(&sled, 5, 100), newest);
}

#[test]
fn a_trim_sees_the_entries_of_a_round_not_applied_yet() {
    let dir = tempfile::tempdir().unwrap();
    let (store, sled) = opened(dir.path());
    store.committer().hold_apply();
    let appended = submit(&sled, entries(9, 0, 5));
    let trimmed = submit(&sled, trim(9, 2));
    store.committer().release_apply();
    assert!(appended.recv().unwrap() && trimmed.recv().unwrap());
    assert_eq!(places(&sled, 9), (0, 2));
    assert_eq!(sled.journal.lock().unwrap().seqs_of(9), vec![3, 4]);
    assert_eq!(read(&sled, 9, 10), vec![4, 3]);
}

#[test]
fn removing_a_monitor_removes_its_entries_from_both_places() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, sled) = opened(dir.path());
    moved_then_held(&sled, entries(6, 0, 2));
    commit(&sled, entries(6, 2, 2));
    commit(&sled, entries(7, 0, 1));
    commit(&sled, removal(6));
    assert_eq!(places(&sled, 6), (0, 1), "only monitor 7's entry is left");
    assert_eq!(read(&sled, 6, 10), Vec::<i64>::new());
    assert_eq!(read(&sled, 7, 10), vec![0]);
    assert_eq!(sled.journal.lock().unwrap().seqs_of(6), Vec::<u64>::new());
    release(&sled);
    wait_moved(&sled);
    assert_eq!(places(&sled, 6), (0, 0), "nothing of it is moved back");
    assert_eq!(places(&sled, 7), (1, 0));
    assert_eq!(read(&sled, 7, 10), vec![0]);
}

#[test]
fn a_restart_lists_the_journal_and_a_move_cut_short_reads_once() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, sled) = opened(dir.path());
        commit(&sled, entries(8, 0, 3));
        // A move whose first record is on disk and whose second is not: the entry is
        // under its monitor and still in the journal.
        let first = sled.journal.tree.first().unwrap().unwrap();
        let (_, (target, _, json)) = journal::page_entries(&first.0, &first.1).unwrap().remove(0);
        store
            .committer()
            .log_blocking(vec![Mutation::put(&sled.tree, target, json)])
            .unwrap();
    }
    let (store, sled) = opened(dir.path());
    assert_eq!(sled.journal.lock().unwrap().seqs_of(8), vec![0, 1, 2]);
    assert_eq!(read(&sled, 8, 10), vec![2, 1, 0], "each entry once");

    let mut dumped = Vec::new();
    store
        .dump(Part::Timelines, Timestamp::now(), &mut |rows| {
            dumped.extend(rows.into_iter().map(|r| match r {
                Row::Transition(num, _, t) => (num, t.at.as_second() - 1_700_000_000),
                _ => (0, -1),
            }));
            true
        })
        .unwrap();
    dumped.sort_unstable();
    assert_eq!(
        dumped,
        vec![(8, 0), (8, 1), (8, 2)],
        "a dump rows each entry once"
    );

    // Nothing moves before the engine's first round after a start.
    commit(&sled, MonitorRound::default());
    release(&sled);
    wait_moved(&sled);
    assert_eq!(places(&sled, 8), (3, 0));
    assert_eq!(read(&sled, 8, 10), vec![2, 1, 0]);
}

#[test]
fn a_damaged_journal_entry_is_refused_at_start_by_name() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (_store, sled) = opened(dir.path());
        sled.journal
            .tree
            .insert([1u8, 2, 3], &b"short"[..])
            .unwrap();
    }
    let store = open_when_free(dir.path());
    // Listed beside the load: the load of the monitors fails with the listing.
    let sled = SledMonitors::open(&store).unwrap();
    let err = sled.load_monitors(&mut |_| {}).expect_err("refused");
    assert!(err.to_string().contains("timeline journal entry"), "{err}");
    // And so does every later use of the journal, a round among them.
    let (tx, rx) = std::sync::mpsc::channel();
    sled.commit_round(
        MonitorRound::default(),
        Box::new(move |r| tx.send(r).unwrap()),
    );
    let err = rx.recv().unwrap().expect_err("round refused");
    assert!(err.to_string().contains("timeline journal entry"), "{err}");
}

#[test]
fn of_two_entries_under_one_key_the_later_reads_and_a_trim_takes_both() {
    let dir = tempfile::tempdir().unwrap();
    let (store, sled) = opened(dir.path());
    commit(
        &sled,
        MonitorRound {
            transitions: vec![(12, 0, entry(0, State::Down)), (12, 0, entry(0, State::Up))],
            ..Default::default()
        },
    );
    let states = |sled: &SledMonitors| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let got = rt.block_on(sled.transitions(12, 10)).unwrap();
        got.iter().map(|t| t.to).collect::<Vec<_>>()
    };
    assert_eq!(
        states(&sled),
        vec![State::Up],
        "the later write wins, as in sled"
    );
    let mut dumped = Vec::new();
    store
        .dump(Part::Timelines, Timestamp::now(), &mut |rows| {
            dumped.extend(rows.into_iter().filter_map(|r| match r {
                Row::Transition(_, _, t) => Some(t.to),
                _ => None,
            }));
            true
        })
        .unwrap();
    assert_eq!(dumped, vec![State::Up], "a dump rows the key once");

    commit(&sled, entries(12, 5, 1));
    commit(&sled, trim(12, 1));
    assert_eq!(
        places(&sled, 12),
        (0, 1),
        "both writes of the old key are trimmed"
    );
    release(&sled);
    wait_moved(&sled);
    assert_eq!(read(&sled, 12, 10), vec![5]);
}

#[test]
fn a_trim_and_a_removal_while_a_move_is_on_its_way_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (store, sled) = opened(dir.path());
    commit(&sled, entries(10, 0, 3));
    commit(&sled, entries(11, 0, 2));
    // The move's two records wait before the apply thread.
    store.committer().hold_apply();
    release(&sled);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sled.journal.moving.load(Ordering::Acquire) {
        assert!(Instant::now() < deadline, "no move started");
        std::thread::sleep(Duration::from_millis(5));
    }
    hold(&sled);
    let trimmed = submit(&sled, trim(10, 1));
    let removed = submit(&sled, removal(11));
    store.committer().release_apply();
    assert!(trimmed.recv().unwrap() && removed.recv().unwrap());
    release(&sled);
    wait_moved(&sled);
    assert_eq!(places(&sled, 10), (1, 0));
    assert_eq!(read(&sled, 10, 10), vec![2]);
    assert_eq!(places(&sled, 11), (0, 0));
}

#[test]
fn a_chunk_waits_for_the_rounds_that_appended_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let (store, sled) = opened(dir.path());
    store.committer().hold_apply();
    let appended = submit(&sled, entries(13, 0, 2));
    release(&sled);
    // Asked directly, not waited for: neither the policy nor the chunk lets it move.
    assert!(
        !sled.journal.may_move(true) && !sled.journal.lock().unwrap().movable(0),
        "nothing moves before its round is applied"
    );
    store.committer().release_apply();
    assert!(appended.recv().unwrap());
    wait_moved(&sled);
    assert_eq!(places(&sled, 13), (2, 0));
}
