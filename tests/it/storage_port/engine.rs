//! The contract of the monitor and outbox stores, at the port itself: what the monitor
//! engine's rounds leave behind, and what the delivery scheduler's claims and finishes do,
//! across a reopen of the backend.

use std::path::PathBuf;

use futures::future::BoxFuture;
use hartslag::core::alert::message::{Alert, AlertKind, Target};
use hartslag::core::alert::outbox::{Delivery, OutboxConfig, backoff, delivery_key};
use hartslag::core::alert::policy::TargetHistory;
use hartslag::core::monitor::engine::{
    Monitor, MonitorDef, PingKind, PingRecord, TransitionRecord,
};
use hartslag::core::monitor::state::{MonitorState, State};
use hartslag::core::storage::{
    Finished, MonitorRound, MonitorStorage, MonitorStore, Removal, StorageError,
};
use jiff::{SignedDuration, Timestamp};

/// Opens a backend's monitor and outbox stores over a directory of the test's; called
/// again on the same directory to reopen it once every handle of the previous opening is
/// dropped.
pub type OpenMonitors = fn(PathBuf) -> BoxFuture<'static, MonitorStorage>;

pub(super) fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_710_417_600 + secs).unwrap()
}

/// A monitor as the engine stores it, with a number the store handed out.
pub(super) fn monitor(store: &dyn MonitorStore, name: &str) -> Monitor {
    let def = MonitorDef::from(hartslag::core::monitor::engine::DefRecord {
        retain_on_delete: false,
        ..super::monitor(name).to_record()
    });
    let state = MonitorState::created(&def.timing(), at(0), false);
    Monitor {
        num: store.next_monitor_num().unwrap(),
        def,
        state,
        last_run_ms: None,
    }
}

pub(super) fn ping(seq: u64) -> PingRecord {
    PingRecord {
        seq,
        at: at(seq as i64),
        kind: PingKind::Success,
        exit_code: None,
        source: None,
        user_agent: None,
        body: Some(format!("run {seq}")),
        duration_ms: None,
        rid: None,
        job: None,
        reason: None,
    }
}

fn transition(secs: i64, to: State) -> TransitionRecord {
    TransitionRecord {
        at: at(secs),
        from: State::Up,
        to,
        reason: None,
    }
}

pub(super) fn delivery(monitor: &str, n: i64) -> Delivery {
    let alert = Alert {
        id: format!("default/{monitor}:{}:down", at(n).as_millisecond()),
        kind: AlertKind::Down,
        monitor: monitor.into(),
        display_name: None,
        scope: "namespace default".into(),
        reason: "no ping".into(),
        occurred_at: at(n),
        last_ping_at: None,
        last_failure_at: None,
        expected_at: None,
        ping_hint: String::new(),
        namespace: "default".into(),
        application: None,
        opened_at: None,
        runbook_url: None,
        exit_code: None,
        repeat: 0,
        policy: Default::default(),
        maintenance: Vec::new(),
    };
    Delivery {
        alert,
        target: Target::Webhook {
            url: "http://alerts.invalid/hook".into(),
        },
        attempts: 0,
        next_attempt_at: at(n),
        created_at: at(n),
        last_error: None,
    }
}

pub(super) fn key_of(d: &Delivery) -> Vec<u8> {
    delivery_key(&d.alert, &d.target)
}

/// Hands `round` over and waits for what became of it.
pub(super) async fn commit(
    store: &dyn MonitorStore,
    round: MonitorRound,
) -> Result<(), StorageError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    store.commit_round(
        round,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx.await.expect("the round's callback was called")
}

pub(super) async fn loaded(store: &dyn MonitorStore) -> Vec<Monitor> {
    let mut all = Vec::new();
    store.load_monitors(&mut |batch| all.extend(batch)).unwrap();
    all.sort_by(|a, b| a.def.key.cmp(&b.def.key));
    all
}

pub(super) fn seqs(pings: &[PingRecord]) -> Vec<u64> {
    pings.iter().map(|p| p.seq).collect()
}

pub async fn a_committed_round_is_there_after_a_reopen(open: OpenMonitors) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path().into()).await;
    let m = monitor(s.monitors.as_ref(), "nightly");
    let d = delivery("nightly", 5);
    let round = MonitorRound {
        put: vec![m.clone().into()],
        pings: (1..=3).map(|n| (m.num, ping(n))).collect(),
        keep_pings: 100,
        transitions: vec![(m.num, 0, transition(3, State::Down))],
        deliveries: vec![d.clone()],
        ..Default::default()
    };
    commit(s.monitors.as_ref(), round).await.unwrap();
    // Visible once it resolved.
    let pings = s.monitors.pings(m.num, 10, 100).await.unwrap();
    assert_eq!(seqs(&pings), [3, 2, 1]);
    drop(s);

    let s = open(dir.path().into()).await;
    assert_eq!(loaded(s.monitors.as_ref()).await, vec![m.clone()]);
    let pings = s.monitors.pings(m.num, 10, 100).await.unwrap();
    assert_eq!(seqs(&pings), [3, 2, 1]);
    assert_eq!(pings[0], ping(3));
    let timeline = s.monitors.transitions(m.num, 10).await.unwrap();
    assert_eq!(timeline, vec![transition(3, State::Down)]);
    assert_eq!(
        s.outbox.pending().await.unwrap(),
        vec![(key_of(&d), d.clone())]
    );
    assert!(s.monitors.next_monitor_num().unwrap() > m.num);
}

pub async fn ping_history_is_newest_first_and_cut_to_what_is_kept(open: OpenMonitors) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path().into()).await;
    let store = s.monitors.as_ref();
    let (a, b) = (monitor(store, "a"), monitor(store, "b"));
    // Rounds of every size, handed over without waiting for the ones before, as the
    // engine does; the last one resolving means every one before it did.
    let mut last = None;
    for (i, chunk) in (1..=250u64).collect::<Vec<_>>().chunks(7).enumerate() {
        let mut pings: Vec<(u64, PingRecord)> = chunk.iter().map(|&n| (a.num, ping(n))).collect();
        if i < 3 {
            pings.push((b.num, ping(i as u64 + 1)));
        }
        let round = MonitorRound {
            pings,
            keep_pings: 40,
            ..Default::default()
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        store.commit_round(
            round,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        last = Some(rx);
    }
    last.unwrap().await.unwrap().unwrap();
    let newest = store.pings(a.num, 1000, 40).await.unwrap();
    assert_eq!(seqs(&newest), (211..=250).rev().collect::<Vec<_>>());
    let page = store.pings(a.num, 5, 40).await.unwrap();
    assert_eq!(seqs(&page), [250, 249, 248, 247, 246]);
    assert_eq!(seqs(&store.pings(b.num, 10, 40).await.unwrap()), [3, 2, 1]);
    assert!(
        store
            .pings(a.num + b.num + 1, 10, 40)
            .await
            .unwrap()
            .is_empty()
    );
    drop(s);
    let s = open(dir.path().into()).await;
    let again = s.monitors.pings(a.num, 1000, 40).await.unwrap();
    assert_eq!(again, newest);
}

pub async fn a_timeline_is_trimmed_to_its_newest_entries(open: OpenMonitors) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path().into()).await;
    let store = s.monitors.as_ref();
    let m = monitor(store, "flappy");
    let round = MonitorRound {
        transitions: (0..30)
            .map(|i| (m.num, 0, transition(i, State::Down)))
            .collect(),
        ..Default::default()
    };
    commit(store, round).await.unwrap();
    // Two transitions at one instant keep their order by position.
    let round = MonitorRound {
        trims: vec![(m.num, 10)],
        transitions: vec![
            (m.num, 0, transition(100, State::Down)),
            (m.num, 1, transition(100, State::Up)),
        ],
        ..Default::default()
    };
    commit(store, round).await.unwrap();
    let timeline = store.transitions(m.num, 100).await.unwrap();
    let times: Vec<(Timestamp, State)> = timeline.iter().map(|t| (t.at, t.to)).collect();
    let mut want = vec![(at(100), State::Up), (at(100), State::Down)];
    want.extend((20..30).rev().map(|i| (at(i), State::Down)));
    assert_eq!(times, want);
    assert_eq!(store.transitions(m.num, 3).await.unwrap().len(), 3);
}

pub async fn a_retained_monitor_keeps_its_record_and_history(open: OpenMonitors) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path().into()).await;
    let store = s.monitors.as_ref();
    let (kept, gone) = (monitor(store, "kept"), monitor(store, "gone"));
    let round = MonitorRound {
        put: vec![kept.clone().into(), gone.clone().into()],
        pings: vec![(kept.num, ping(1)), (gone.num, ping(1))],
        keep_pings: 10,
        transitions: vec![
            (kept.num, 0, transition(1, State::Up)),
            (gone.num, 0, transition(1, State::Up)),
        ],
        ..Default::default()
    };
    commit(store, round).await.unwrap();
    let round = MonitorRound {
        remove: vec![
            Removal {
                key: kept.def.key.clone(),
                num: kept.num,
                retain: Some(kept.clone()),
            },
            Removal {
                key: gone.def.key.clone(),
                num: gone.num,
                retain: None,
            },
        ],
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    store.commit_round(
        round,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    // The engine's own reads see a round handed over before it resolved.
    assert_eq!(
        store.find_retained(&kept.def.key).unwrap(),
        Some(kept.clone())
    );
    rx.await.unwrap().unwrap();
    drop(s);

    let s = open(dir.path().into()).await;
    let store = s.monitors.as_ref();
    assert!(loaded(store).await.is_empty());
    assert_eq!(
        store.retained(kept.def.key.clone()).await.unwrap(),
        Some(kept.clone())
    );
    assert_eq!(store.retained(gone.def.key.clone()).await.unwrap(), None);
    assert_eq!(seqs(&store.pings(kept.num, 10, 10).await.unwrap()), [1]);
    assert_eq!(store.transitions(kept.num, 10).await.unwrap().len(), 1);
    assert!(store.pings(gone.num, 10, 10).await.unwrap().is_empty());
    assert!(store.transitions(gone.num, 10).await.unwrap().is_empty());
    // Defined again and deleted for good: the retained record and its history go.
    commit(store, removal(&kept, None)).await.unwrap();
    assert_eq!(store.retained(kept.def.key.clone()).await.unwrap(), None);
    assert_eq!(store.find_retained(&kept.def.key).unwrap(), None);
    assert!(store.pings(kept.num, 10, 10).await.unwrap().is_empty());
}

/// `m` as a round that changed its state alone leaves it: pinged `pings` times, Up, its
/// last run `pings` seconds long.
pub(super) fn pinged(m: &Monitor, pings: u64) -> Monitor {
    let mut next = m.clone();
    next.state.state = State::Up;
    next.state.since = at(pings as i64);
    next.state.last_ping_at = Some(at(pings as i64));
    next.state.deadline = Some(at(pings as i64 + 60));
    next.state.pings = pings;
    next.last_run_ms = Some(pings * 1000);
    next
}

pub(super) fn whole(m: &Monitor) -> MonitorRound {
    MonitorRound {
        put: vec![m.clone().into()],
        ..Default::default()
    }
}

/// `m` deleted, its data retained with `retain` as its last record, or not.
pub(super) fn removal(m: &Monitor, retain: Option<Monitor>) -> MonitorRound {
    MonitorRound {
        remove: vec![Removal {
            key: m.def.key.clone(),
            num: m.num,
            retain,
        }],
        ..Default::default()
    }
}

pub(super) fn state_only(m: &Monitor) -> MonitorRound {
    MonitorRound {
        put_state: vec![m.clone().into()],
        ..Default::default()
    }
}

pub async fn a_state_round_after_a_whole_one_is_there_merged_after_a_reopen(open: OpenMonitors) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path().into()).await;
    let store = s.monitors.as_ref();
    let (m, other) = (monitor(store, "nightly"), monitor(store, "other"));
    commit(store, whole(&m)).await.unwrap();
    commit(store, whole(&other)).await.unwrap();
    // Rounds handed over without waiting, as the engine does; the last one resolving
    // means every one before it did.
    for n in 1..5 {
        store.commit_round(state_only(&pinged(&m, n)), Box::new(|_| {}));
    }
    commit(store, state_only(&pinged(&m, 5))).await.unwrap();
    drop(s);

    let s = open(dir.path().into()).await;
    assert_eq!(
        loaded(s.monitors.as_ref()).await,
        vec![pinged(&m, 5), other.clone()]
    );
}

pub async fn a_whole_round_after_a_state_round_wins(open: OpenMonitors) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path().into()).await;
    let store = s.monitors.as_ref();
    let m = monitor(store, "nightly");
    commit(store, whole(&m)).await.unwrap();
    commit(store, state_only(&pinged(&m, 3))).await.unwrap();
    // Redefined (paused) with a state of its own: the whole record is all there is.
    let mut redefined = m.clone();
    redefined.def.paused = true;
    redefined.def.grace_secs += 30;
    redefined.state = MonitorState::created(&redefined.def.timing(), at(10), true);
    commit(store, whole(&redefined)).await.unwrap();
    drop(s);

    let s = open(dir.path().into()).await;
    let store = s.monitors.as_ref();
    assert_eq!(loaded(store).await, vec![redefined.clone()]);
    // And a state round after that one is laid over it again.
    let later = pinged(&redefined, 4);
    commit(store, state_only(&later)).await.unwrap();
    drop(s);
    let s = open(dir.path().into()).await;
    assert_eq!(loaded(s.monitors.as_ref()).await, vec![later]);
}

pub async fn a_deleted_monitor_leaves_no_state_behind(open: OpenMonitors) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path().into()).await;
    let store = s.monitors.as_ref();
    let m = monitor(store, "nightly");
    commit(store, whole(&m)).await.unwrap();
    commit(store, state_only(&pinged(&m, 3))).await.unwrap();
    commit(store, removal(&m, None)).await.unwrap();
    drop(s);

    let s = open(dir.path().into()).await;
    let store = s.monitors.as_ref();
    assert!(loaded(store).await.is_empty());
    // Defined again under the same key: it starts from its own record, not the old state.
    let again = monitor(store, "nightly");
    commit(store, whole(&again)).await.unwrap();
    drop(s);
    let s = open(dir.path().into()).await;
    assert_eq!(loaded(s.monitors.as_ref()).await, vec![again]);
}

pub async fn a_retained_record_carries_the_newest_state(open: OpenMonitors) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path().into()).await;
    let store = s.monitors.as_ref();
    let m = monitor(store, "nightly");
    commit(store, whole(&m)).await.unwrap();
    commit(store, state_only(&pinged(&m, 3))).await.unwrap();
    // The engine hands over the monitor as it has it, with the state of the last round.
    let newest = pinged(&m, 4);
    commit(store, removal(&m, Some(newest.clone())))
        .await
        .unwrap();
    drop(s);

    let s = open(dir.path().into()).await;
    let store = s.monitors.as_ref();
    assert!(loaded(store).await.is_empty());
    assert_eq!(
        store.retained(m.def.key.clone()).await.unwrap(),
        Some(newest.clone())
    );
    assert_eq!(store.find_retained(&m.def.key).unwrap(), Some(newest));
}

/// Queues `deliveries` the way the engine does: in a round.
pub(super) async fn queue(s: &MonitorStorage, deliveries: Vec<Delivery>) {
    let round = MonitorRound {
        deliveries,
        ..Default::default()
    };
    commit(s.monitors.as_ref(), round).await.unwrap();
}

fn history(s: &str) -> (String, TargetHistory) {
    (s.to_string(), TargetHistory::default())
}

pub async fn a_delivery_is_claimed_and_finished_once_across_a_reopen(open: OpenMonitors) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path().into()).await;
    let (d, other) = (delivery("a", 1), delivery("b", 2));
    queue(&s, vec![d.clone(), other.clone()]).await;
    // Queued again (a round written twice, say): the first one stays as it is.
    let mut again = d.clone();
    again.created_at = at(99);
    queue(&s, vec![again]).await;
    let mut pending = s.outbox.pending().await.unwrap();
    pending.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want = vec![(key_of(&d), d.clone()), (key_of(&other), other.clone())];
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(pending, want);
    assert_eq!(s.outbox.pending_notices().unwrap(), 2);

    assert!(s.outbox.claim(key_of(&d)).await.unwrap());
    assert!(!s.outbox.claim(key_of(&d)).await.unwrap(), "claimed twice");
    let done = Finished {
        key: key_of(&d),
        outcome: "delivered".into(),
        detail: None,
        attempts: 1,
    };
    let identity = d.target.identity();
    s.outbox
        .finish(vec![done], history(&identity), None)
        .await
        .unwrap();
    assert!(
        !s.outbox.claim(key_of(&d)).await.unwrap(),
        "finished, yet claimed"
    );
    assert_eq!(
        s.outbox.pending().await.unwrap(),
        vec![(key_of(&other), other.clone())]
    );
    drop(s);

    let s = open(dir.path().into()).await;
    assert_eq!(
        s.outbox.pending().await.unwrap(),
        vec![(key_of(&other), other.clone())]
    );
    assert!(
        !s.outbox.claim(key_of(&d)).await.unwrap(),
        "delivered again after a reopen"
    );
    let histories = s.outbox.target_histories().await.unwrap();
    assert_eq!(histories, vec![history(&identity)]);
}

pub async fn a_claimed_delivery_never_finished_is_pending_after_a_restart(open: OpenMonitors) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path().into()).await;
    let d = delivery("a", 1);
    queue(&s, vec![d.clone()]).await;
    assert!(s.outbox.claim(key_of(&d)).await.unwrap());
    // The process ends mid-attempt.
    drop(s);
    let s = open(dir.path().into()).await;
    assert_eq!(
        s.outbox.pending().await.unwrap(),
        vec![(key_of(&d), d.clone())]
    );
    // A store one process serves (no feed: sled) hands it out again at once, since the
    // attempt ended with that process; a shared one only once the claim ran out, since
    // another replica's attempt may still be under way (`leader_writes` runs the claim
    // out and claims it then).
    let shared = s.feed.is_some();
    assert_eq!(
        s.outbox.claim(key_of(&d)).await.unwrap(),
        !shared,
        "claimable again after a restart (shared store: {shared})"
    );
}

pub async fn a_retry_keeps_its_backoff_and_ends_the_claim(open: OpenMonitors) {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path().into()).await;
    let d = delivery("a", 1);
    queue(&s, vec![d.clone()]).await;
    assert!(s.outbox.claim(key_of(&d)).await.unwrap());
    let config = OutboxConfig::default();
    let delay = backoff(&config, 0, &key_of(&d));
    let mut retried = d.clone();
    retried.attempts = 1;
    retried.next_attempt_at = at(10) + SignedDuration::try_from(delay).unwrap();
    retried.last_error = Some("connection refused".into());
    s.outbox.retry(key_of(&d), retried.clone()).await.unwrap();
    assert!(
        s.outbox.claim(key_of(&d)).await.unwrap(),
        "the retry kept the claim"
    );
    drop(s);
    let s = open(dir.path().into()).await;
    let pending = s.outbox.pending().await.unwrap();
    assert_eq!(pending, vec![(key_of(&d), retried.clone())]);
    let due = pending[0].1.next_attempt_at;
    assert!(due >= at(10) + SignedDuration::from_secs(2), "{due}");
    assert!(due <= at(10) + SignedDuration::from_millis(2400), "{due}");
}
