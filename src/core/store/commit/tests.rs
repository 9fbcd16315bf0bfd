//! The committer's invariants, tested through the whole pipeline: a real commit log and
//! sled, with gates that hold the commit or the apply thread and inject failures.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::thread::{APPLY_HERE_BELOW, CHECKPOINT_BYTES, GROUP_BYTES};
use super::*;

/// Holds the commit thread before a group's write and sync, and injects failures.
#[derive(Default)]
pub(super) struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    /// `None`: open; `Some(n)`: closed, `n` more groups may pass.
    permits: Option<u32>,
    /// Groups that have reached the gate.
    arrivals: u32,
    fail_next: bool,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run by the commit thread: waits while the gate is closed; `true` means fail this
    /// group's write as a failed `fdatasync` would.
    pub(super) fn pass(&self) -> bool {
        let mut s = self.lock();
        s.arrivals += 1;
        self.changed.notify_all();
        while s.permits == Some(0) {
            s = self.changed.wait(s).unwrap();
        }
        if let Some(n) = &mut s.permits {
            *n -= 1;
        }
        std::mem::take(&mut s.fail_next)
    }

    pub(super) fn is_closed(&self) -> bool {
        self.lock().permits.is_some()
    }

    pub(super) fn close(&self) {
        self.lock().permits = Some(0);
    }

    /// Lets one more group through a closed gate (failing it if `fail`).
    fn allow_one(&self, fail: bool) {
        let mut s = self.lock();
        if let Some(n) = &mut s.permits {
            *n += 1;
        }
        s.fail_next = fail;
        self.changed.notify_all();
    }

    pub(super) fn open(&self) {
        self.lock().permits = None;
        self.changed.notify_all();
    }

    /// Waits until `n` groups in all have reached the gate.
    fn wait_for_arrivals(&self, n: u32) {
        let mut s = self.lock();
        while s.arrivals < n {
            s = self.changed.wait(s).unwrap();
        }
    }
}

/// What a record's callback heard, in order, across all records of a test.
type Heard = Arc<Mutex<Vec<(u32, &'static str)>>>;

fn listen(heard: &Heard, id: u32) -> Notify {
    let heard = heard.clone();
    Box::new(move |p| {
        let what = match p {
            Progress::Durable => "durable",
            Progress::Applied => "applied",
            Progress::Failed(CommitError::Halted(_)) => "halted",
            Progress::Failed(_) => "failed",
        };
        heard.lock().unwrap().push((id, what));
    })
}

fn put(tree: &sled::Tree, k: &[u8], v: &[u8]) -> Vec<Mutation> {
    vec![Mutation::put(tree, k.to_vec(), v.to_vec())]
}

/// Waits (with a deadline) until `heard` holds `n` notifications. The deadline is
/// generous: a queue of 96 MiB took close to 10 s on a loaded two-core machine.
fn wait_for(heard: &Heard, n: usize) -> Vec<(u32, &'static str)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h = heard.lock().unwrap().clone();
        if h.len() >= n {
            return h;
        }
        assert!(Instant::now() < deadline, "only heard {h:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn records_are_reported_and_applied_in_submission_order() {
    let (_dir, _db, c, tree) = open();
    let heard = Heard::default();
    for i in 0..2000u32 {
        c.submit(put(&tree, b"k", &i.to_be_bytes()), listen(&heard, i));
    }
    let h = wait_for(&heard, 4000);
    for stage in ["durable", "applied"] {
        let ids: Vec<u32> = h
            .iter()
            .filter(|(_, s)| *s == stage)
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(ids, (0..2000).collect::<Vec<_>>(), "{stage} out of order");
    }
    for i in 0..2000u32 {
        let d = h.iter().position(|e| *e == (i, "durable")).unwrap();
        let a = h.iter().position(|e| *e == (i, "applied")).unwrap();
        assert!(d < a, "record {i} applied before it was durable");
    }
    // Applied in order: the last value wins.
    assert_eq!(
        tree.get(b"k").unwrap().unwrap().as_ref(),
        1999u32.to_be_bytes()
    );
    assert!(
        c.stats().groups.load(Ordering::Relaxed) < 2000,
        "no group held two records"
    );
}

#[test]
fn nothing_is_reported_or_applied_before_its_own_fsync() {
    let (_dir, _db, c, tree) = open();
    let heard = Heard::default();
    c.inner.gate.close();
    c.submit(put(&tree, b"a", b"1"), listen(&heard, 1));
    c.inner.gate.wait_for_arrivals(1);
    // Queued while the first group waits for the disk: the writer was not held up.
    c.submit(put(&tree, b"b", b"2"), listen(&heard, 2));
    c.submit(put(&tree, b"c", b"3"), listen(&heard, 3));
    std::thread::sleep(Duration::from_millis(20));
    assert!(heard.lock().unwrap().is_empty());
    assert!(
        tree.get(b"a").unwrap().is_none(),
        "sled got a record before its fsync"
    );
    // The writer reads its own pending writes meanwhile.
    assert_eq!(
        c.reader().read(&tree, b"b").unwrap().as_deref(),
        Some(&b"2"[..])
    );
    assert_eq!(
        c.reader().keys_with_prefix(&tree, b"").unwrap(),
        vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
    );
    // The first fsync covers the first record only; the other two wait for the next.
    c.inner.gate.allow_one(false);
    let h = wait_for(&heard, 2);
    assert_eq!(h, vec![(1, "durable"), (1, "applied")]);
    c.inner.gate.wait_for_arrivals(2);
    assert!(tree.get(b"b").unwrap().is_none());
    assert_eq!(c.stats().groups.load(Ordering::Relaxed), 1);
    c.inner.gate.open();
    let h = wait_for(&heard, 6);
    assert_eq!(
        &h[2..],
        &[
            (2, "durable"),
            (3, "durable"),
            (2, "applied"),
            (3, "applied")
        ]
    );
    assert_eq!(c.stats().groups.load(Ordering::Relaxed), 2);
    assert_eq!(tree.get(b"c").unwrap().as_deref(), Some(&b"3"[..]));
}

#[test]
fn a_failure_mid_pipeline_fails_its_group_and_everything_behind_it() {
    let (_dir, _db, c, tree) = open();
    c.log_blocking(put(&tree, b"before", b"v")).unwrap();
    let heard = Heard::default();
    c.inner.gate.close();
    c.submit(put(&tree, b"a", b"1"), listen(&heard, 1));
    c.inner.gate.wait_for_arrivals(2);
    c.submit(put(&tree, b"b", b"2"), listen(&heard, 2));
    c.submit(
        vec![Mutation::remove(&tree, b"before".to_vec())],
        listen(&heard, 3),
    );
    c.inner.gate.allow_one(true);
    let h = wait_for(&heard, 3);
    assert_eq!(h, vec![(1, "failed"), (2, "halted"), (3, "halted")]);
    // The disk works again, yet nothing more is accepted: the lost pages may be gone.
    c.submit(put(&tree, b"later", b"v"), listen(&heard, 4));
    assert_eq!(heard.lock().unwrap().last(), Some(&(4, "halted")));
    let later = c.log_blocking(put(&tree, b"later", b"v")).unwrap_err();
    assert!(
        later.to_string().contains("injected fsync failure"),
        "{later}"
    );
    assert!(c.health().is_err());
    for k in [&b"a"[..], b"b", b"later"] {
        assert!(tree.get(k).unwrap().is_none());
        assert!(
            c.reader().read(&tree, k).unwrap().is_none(),
            "a failed write still reads"
        );
    }
    assert_eq!(tree.get(b"before").unwrap().as_deref(), Some(&b"v"[..]));
    let flush = tokio::runtime::Runtime::new().unwrap().block_on(c.flush());
    assert!(matches!(flush, Err(CommitError::Halted(_))), "{flush:?}");
}

#[test]
fn a_group_is_made_durable_while_the_one_before_it_is_applied() {
    let (_dir, _db, c, tree) = open();
    let heard = Heard::default();
    c.inner.apply_gate.close();
    c.submit(put(&tree, b"a", b"1"), listen(&heard, 1));
    c.inner.apply_gate.wait_for_arrivals(1);
    // Group 1 is durable and held before its apply; group 2 is written and flushed
    // meanwhile, and reported durable, in order.
    c.submit(put(&tree, b"b", b"2"), listen(&heard, 2));
    let h = wait_for(&heard, 2);
    assert_eq!(h, vec![(1, "durable"), (2, "durable")]);
    assert_eq!(c.stats().groups.load(Ordering::Relaxed), 2);
    // Neither is visible in sled yet; their writer reads both.
    assert!(tree.get(b"a").unwrap().is_none());
    assert!(tree.get(b"b").unwrap().is_none());
    assert_eq!(
        c.reader().read(&tree, b"a").unwrap().as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(
        c.reader().keys_with_prefix(&tree, b"").unwrap(),
        vec![b"a".to_vec(), b"b".to_vec()]
    );
    c.inner.apply_gate.open();
    let h = wait_for(&heard, 4);
    assert_eq!(&h[2..], &[(1, "applied"), (2, "applied")]);
    assert_eq!(tree.get(b"b").unwrap().as_deref(), Some(&b"2"[..]));
    assert!(c.inner.overlay().trees.values().all(BTreeMap::is_empty));
}

#[test]
fn a_write_nobody_reads_back_stays_out_of_the_pending_view_and_still_lands() {
    let (_dir, _db, c, tree) = open();
    let heard = Heard::default();
    c.inner.apply_gate.close();
    let writes = vec![
        Mutation::put(&tree, b"read".to_vec(), b"1".to_vec()),
        Mutation::put_unread(&tree, b"unread".to_vec(), b"2".to_vec()),
    ];
    c.submit(writes, listen(&heard, 1));
    c.inner.apply_gate.wait_for_arrivals(1);
    let pending: Vec<Vec<u8>> = c
        .inner
        .overlay()
        .trees
        .values()
        .flat_map(|k| k.keys().cloned())
        .collect();
    assert_eq!(pending, vec![b"read".to_vec()]);
    assert_eq!(c.reader().read(&tree, b"unread").unwrap(), None);
    c.inner.apply_gate.open();
    wait_for(&heard, 2);
    assert_eq!(tree.get(b"unread").unwrap().as_deref(), Some(&b"2"[..]));
    assert!(c.inner.overlay().trees.values().all(BTreeMap::is_empty));
}

#[test]
fn a_checkpoint_waits_for_the_group_being_applied_and_a_crash_meanwhile_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new()
        .path(dir.path())
        .flush_every_ms(None)
        .open()
        .unwrap();
    let (c, _) = Committer::spawn(db.clone(), dir.path()).unwrap();
    let tree = db.open_tree("t").unwrap();
    let heard = Heard::default();
    c.inner.apply_gate.close();
    c.submit(put(&tree, b"a", b"1"), listen(&heard, 1));
    c.inner.apply_gate.wait_for_arrivals(1);
    wait_for(&heard, 1);
    let flushed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flusher = {
        let (c, flushed) = (c.clone(), flushed.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(c.flush()).unwrap();
            flushed.store(true, Ordering::SeqCst);
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !flushed.load(Ordering::SeqCst),
        "the checkpoint ran while a durable group waited for its apply"
    );
    // Killed now, the log still holds the durable record sled does not have.
    let copy = crash_copy(dir.path());
    c.inner.apply_gate.open();
    flusher.join().unwrap();
    assert_eq!(wait_for(&heard, 2)[1], (1, "applied"));
    assert_eq!(tree.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    let db = sled::Config::new().path(copy.path()).open().unwrap();
    let (_c, replayed) = Committer::spawn(db.clone(), copy.path()).unwrap();
    assert_eq!(replayed, 1);
    let tree = db.open_tree("t").unwrap();
    assert_eq!(tree.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
}

#[test]
fn a_state_file_that_cannot_be_synced_fails_the_checkpoint_and_stops_every_write() {
    let (_dir, _db, c, tree) = open();
    c.log_blocking(vec![Mutation::state(c.states(), 1, Some(b"{}".to_vec()))])
        .unwrap();
    assert_eq!(c.states().read(1).unwrap().as_deref(), Some(&b"{}"[..]));
    c.states().fail_syncs("injected: the disk went away");
    let flush = tokio::runtime::Runtime::new().unwrap().block_on(c.flush());
    assert!(matches!(flush, Err(CommitError::States(_))), "{flush:?}");
    assert!(c.health().is_err());
    let heard = Heard::default();
    c.submit(put(&tree, b"later", b"v"), listen(&heard, 1));
    assert_eq!(heard.lock().unwrap().last(), Some(&(1, "halted")));
}

#[test]
fn a_failed_apply_stops_everything_and_nothing_is_applied_after_it() {
    let (_dir, _db, c, tree) = open();
    c.log_blocking(put(&tree, b"before", b"v")).unwrap();
    let heard = Heard::default();
    c.inner.apply_gate.close();
    c.submit(put(&tree, b"a", b"1"), listen(&heard, 1));
    c.inner.apply_gate.wait_for_arrivals(2);
    // Group 2 is made durable while group 1 waits for its apply; record 3 queues
    // behind it.
    c.submit(put(&tree, b"b", b"2"), listen(&heard, 2));
    assert_eq!(wait_for(&heard, 2), vec![(1, "durable"), (2, "durable")]);
    c.submit(
        vec![Mutation::remove(&tree, b"before".to_vec())],
        listen(&heard, 3),
    );
    c.inner.apply_gate.allow_one(true);
    wait_for(&heard, 4);
    c.inner.apply_gate.open();
    let h = wait_for(&heard, 5);
    assert_eq!(
        &h[2..],
        &[(1, "failed"), (3, "halted"), (2, "halted")],
        "the durable group behind the failed apply is refused, not applied"
    );
    for k in [&b"a"[..], b"b"] {
        assert!(tree.get(k).unwrap().is_none());
        assert!(c.reader().read(&tree, k).unwrap().is_none());
    }
    assert_eq!(tree.get(b"before").unwrap().as_deref(), Some(&b"v"[..]));
    assert!(c.health().is_err());
    c.submit(put(&tree, b"later", b"v"), listen(&heard, 4));
    assert_eq!(heard.lock().unwrap().last(), Some(&(4, "halted")));
    let flush = tokio::runtime::Runtime::new().unwrap().block_on(c.flush());
    assert!(matches!(flush, Err(CommitError::Halted(_))), "{flush:?}");
}

#[test]
fn pending_removes_and_puts_merge_with_stored_keys() {
    let (_dir, _db, c, tree) = open();
    for k in [&b"p1"[..], b"p3", b"p5", b"q"] {
        c.log_blocking(put(&tree, k, b"s")).unwrap();
    }
    c.inner.gate.close();
    c.submit(put(&tree, b"p0", b"n"), Box::new(|_| {}));
    c.inner.gate.wait_for_arrivals(5);
    c.submit(
        vec![
            Mutation::remove(&tree, b"p3".to_vec()),
            Mutation::put(&tree, b"p4".to_vec(), b"n".to_vec()),
        ],
        Box::new(|_| {}),
    );
    c.submit(
        vec![
            Mutation::put(&tree, b"p3".to_vec(), b"again".to_vec()),
            Mutation::remove(&tree, b"p5".to_vec()),
        ],
        Box::new(|_| {}),
    );
    let keys = c.reader().keys_with_prefix(&tree, b"p").unwrap();
    assert_eq!(keys, [&b"p0"[..], b"p1", b"p3", b"p4"].map(<[u8]>::to_vec));
    assert_eq!(
        c.reader().keys(&tree, b"p2", Some(b"p4")).unwrap(),
        vec![b"p3".to_vec()]
    );
    assert_eq!(
        c.reader().read(&tree, b"p3").unwrap().as_deref(),
        Some(&b"again"[..])
    );
    assert_eq!(c.reader().read(&tree, b"p5").unwrap(), None);
    assert_eq!(tree.get(b"p5").unwrap().as_deref(), Some(&b"s"[..]));
    c.inner.gate.open();
    c.log_blocking(Vec::new()).unwrap();
    let stored: Vec<Vec<u8>> = tree
        .scan_prefix(b"p")
        .keys()
        .map(|k| k.unwrap().to_vec())
        .collect();
    assert_eq!(stored, keys);
    assert!(c.inner.overlay().trees.values().all(BTreeMap::is_empty));
}

/// Seals a batch of numbers into one record putting each under its own key, and
/// tells what it sealed and failed.
struct Numbers {
    tree: sled::Tree,
    sealed: Arc<Mutex<Vec<Vec<u32>>>>,
    failed: Arc<Mutex<Vec<u32>>>,
    heard: Heard,
}

impl Sealer<Vec<u32>> for Numbers {
    fn seal(&mut self, batch: Vec<u32>, reader: &PendingReader<'_>) -> Sealed {
        // The previous record's writes are seen whether applied yet or not.
        let last = reader.read(&self.tree, b"last").unwrap();
        assert_eq!(
            last.map(|v| u32::from_be_bytes(v.as_ref().try_into().unwrap())),
            self.sealed
                .lock()
                .unwrap()
                .last()
                .and_then(|b| b.last().copied())
        );
        let mut writes: Vec<Mutation> = batch
            .iter()
            .map(|n| Mutation::put(&self.tree, n.to_be_bytes().to_vec(), b"n".to_vec()))
            .collect();
        writes.push(Mutation::put(
            &self.tree,
            b"last".to_vec(),
            batch[batch.len() - 1].to_be_bytes().to_vec(),
        ));
        let id = self.sealed.lock().unwrap().len() as u32;
        self.sealed.lock().unwrap().push(batch);
        Ok(Some((writes, listen(&self.heard, id))))
    }

    fn fail(&mut self, batch: Vec<u32>, _: &CommitError) {
        self.failed.lock().unwrap().extend(batch);
    }
}

#[test]
fn an_open_batch_becomes_one_record_per_group() {
    let (_dir, _db, c, tree) = open();
    let heard = Heard::default();
    let sealed = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let batch = c.open_batch(Numbers {
        tree: tree.clone(),
        sealed: sealed.clone(),
        failed: failed.clone(),
        heard: heard.clone(),
    });
    c.inner.gate.close();
    c.submit(put(&tree, b"x", b"1"), listen(&heard, 100));
    c.inner.gate.wait_for_arrivals(1);
    // Added while the disk holds the first group: all of it goes into the next one.
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let batch = batch.clone();
            s.spawn(move || {
                for i in 0..250 {
                    batch.add(|b| b.push(t * 1000 + i)).unwrap();
                }
            });
        }
    });
    c.inner.gate.allow_one(false);
    c.inner.gate.wait_for_arrivals(2);
    assert_eq!(sealed.lock().unwrap().len(), 1);
    assert_eq!(sealed.lock().unwrap()[0].len(), 1000);
    batch.add(|b| b.push(5000)).unwrap();
    c.inner.gate.open();
    wait_for(&heard, 6);
    assert_eq!(tree.len(), 1001 + 2);
    assert_eq!(sealed.lock().unwrap().len(), 2);
    assert_eq!(c.stats().records.load(Ordering::Relaxed), 3);

    // A failure closes the batch: what waits in it fails, later adds are refused.
    c.inner.gate.close();
    batch.add(|b| b.push(6000)).unwrap();
    c.inner.gate.wait_for_arrivals(4);
    batch.add(|b| b.push(6001)).unwrap();
    c.inner.gate.allow_one(true);
    let h = wait_for(&heard, 7);
    assert_eq!(h.last(), Some(&(2, "failed")));
    let deadline = Instant::now() + Duration::from_secs(10);
    while failed.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(*failed.lock().unwrap(), vec![6001]);
    assert!(matches!(
        batch.add(|b| b.push(7000)),
        Err(CommitError::Halted(_))
    ));
    assert!(tree.get(6000u32.to_be_bytes()).unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_waiters_all_get_answered() {
    let (_dir, db, committer, tree) = open();
    let mut tasks = Vec::new();
    for i in 0..256u32 {
        let db = db.clone();
        let tree = tree.clone();
        let c = committer.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                db.insert(i.to_be_bytes(), &b"x"[..]).unwrap();
                c.flush().await
            } else {
                let w = vec![Mutation::put(
                    &tree,
                    i.to_be_bytes().to_vec(),
                    b"y".to_vec(),
                )];
                tokio::task::spawn_blocking(move || c.log_blocking(w))
                    .await
                    .unwrap()
            }
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(db.len(), 128);
    assert_eq!(tree.len(), 128);
}

#[test]
fn logged_writes_survive_a_restart_that_sled_never_flushed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::Config::new()
            .path(dir.path())
            .flush_every_ms(None)
            .open()
            .unwrap();
        let (committer, _) = Committer::spawn(db.clone(), dir.path()).unwrap();
        let tree = db.open_tree("t").unwrap();
        committer
            .log_blocking(vec![Mutation::put(&tree, b"k".to_vec(), b"v".to_vec())])
            .unwrap();
        assert_eq!(tree.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
        // Simulate a crash: keep the log, throw away what sled holds in memory.
        std::mem::forget(committer);
        std::mem::forget(tree);
        std::mem::forget(db);
    }
    // sled's lock is held by the forgotten handle, so reopen a copy of the directory.
    let copy = crash_copy(dir.path());
    let db = sled::Config::new().path(copy.path()).open().unwrap();
    let (_committer, replayed) = Committer::spawn(db.clone(), copy.path()).unwrap();
    assert_eq!(replayed, 1);
    let tree = db.open_tree("t").unwrap();
    assert_eq!(tree.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn writers_on_many_threads_all_land() {
    let (_dir, _db, committer, tree) = open();
    std::thread::scope(|s| {
        for t in 0..8u32 {
            let (committer, tree) = (committer.clone(), tree.clone());
            s.spawn(move || {
                for i in 0..50u32 {
                    let k = [t.to_be_bytes(), i.to_be_bytes()].concat();
                    committer
                        .log_blocking(vec![Mutation::put(&tree, k.clone(), k)])
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(tree.len(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_groups_records_syncs_and_checkpoints() {
    let (_dir, _db, committer, tree) = open();
    let writers: Vec<_> = (0..16u32)
        .map(|t| {
            let (committer, tree) = (committer.clone(), tree.clone());
            std::thread::spawn(move || {
                for i in 0..20u32 {
                    let k = [t.to_be_bytes(), i.to_be_bytes()].concat();
                    committer
                        .log_blocking(vec![Mutation::put(&tree, k.clone(), k)])
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let stats = committer.stats();
    let groups = stats.groups.load(Ordering::Relaxed);
    assert_eq!(stats.records.load(Ordering::Relaxed), 320);
    assert!((1..=320).contains(&groups), "{groups} groups");
    assert_eq!(stats.flush.snapshot().count(), groups);
    let mut text = String::new();
    stats.sync.render("sync", "", &mut text);
    assert!(text.contains(&format!("sync_count {groups}\n")), "{text}");
    assert!(text.contains("sync_bucket{le=\"0.0001\"}"), "{text}");
    committer.flush().await.unwrap();
    let mut text = String::new();
    stats.checkpoint.render("checkpoint", "", &mut text);
    assert!(!text.contains("checkpoint_count 0\n"), "{text}");
}

#[test]
fn a_long_queue_is_committed_in_bounded_groups_and_the_log_stays_bounded() {
    let (dir, _db, c, tree) = open();
    let heard = Heard::default();
    c.inner.gate.close();
    c.submit(put(&tree, b"first", b"1"), listen(&heard, 0));
    c.inner.gate.wait_for_arrivals(1);
    // 96 MiB queue up behind the first group, three times what one group may hold.
    let value = vec![7u8; 2 * 1024 * 1024];
    for i in 1..=48u32 {
        c.submit(put(&tree, &i.to_be_bytes(), &value), listen(&heard, i));
    }
    c.inner.gate.open();
    wait_for(&heard, 2 * 49);
    let groups = c.stats().groups.load(Ordering::Relaxed);
    assert!(groups >= 4, "{groups} groups");
    let size = std::fs::metadata(dir.path().join(wal::FILE_NAME))
        .unwrap()
        .len();
    let bound = CHECKPOINT_BYTES + GROUP_BYTES as u64 + 4 * 1024 * 1024;
    assert!(size <= bound, "the log file grew to {size} bytes");
    assert_eq!(tree.len(), 49);
}

/// Fails every batch as a database that cannot be read would, and notes whether the
/// committer's health had already failed when its writers were told.
struct Broken {
    committer: Arc<Mutex<Option<Committer>>>,
    healthy_when_told: Arc<Mutex<Vec<bool>>>,
}

impl Sealer<Vec<u32>> for Broken {
    fn seal(&mut self, _: Vec<u32>, _: &PendingReader<'_>) -> Sealed {
        let (committer, told) = (self.committer.clone(), self.healthy_when_told.clone());
        Err(SealFailure {
            cause: CommitError::Stopped,
            notify: Box::new(move |progress| {
                assert!(matches!(progress, Progress::Failed(_)));
                let c = committer.lock().unwrap();
                let healthy = c.as_ref().map(|c| c.health().is_ok());
                told.lock().unwrap().push(healthy.unwrap_or(true));
            }),
        })
    }

    fn fail(&mut self, _: Vec<u32>, _: &CommitError) {}
}

#[test]
fn writers_of_a_batch_that_could_not_be_sealed_hear_of_it_after_the_committer_stopped() {
    let (_dir, _db, c, _tree) = open();
    let committer = Arc::new(Mutex::new(Some(c.clone())));
    let told = Arc::new(Mutex::new(Vec::new()));
    let batch = c.open_batch(Broken {
        committer: committer.clone(),
        healthy_when_told: told.clone(),
    });
    batch.add(|b| b.push(1)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while told.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the batch was never refused");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(*told.lock().unwrap(), [false]);
    assert!(c.health().is_err());
    committer.lock().unwrap().take();
}

/// A committer on a fresh database, with tree `t` to write to.
fn open() -> (tempfile::TempDir, sled::Db, Committer, sled::Tree) {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new().path(dir.path()).open().unwrap();
    let (committer, _) = Committer::spawn(db.clone(), dir.path()).unwrap();
    let tree = db.open_tree("t").unwrap();
    (dir, db, committer, tree)
}

/// A copy of the files in `dir` as they are now, as a process killed now leaves them.
fn crash_copy(dir: &Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for entry in walk(dir) {
        let rel = entry.strip_prefix(dir).unwrap();
        let to = copy.path().join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&entry, &to).unwrap();
    }
    copy
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A callback that records the thread `Applied` ran on, after running `then` there.
fn applied_on(
    seen: &Arc<Mutex<Vec<(u32, String)>>>,
    id: u32,
    then: impl FnOnce() + Send + 'static,
) -> Notify {
    let seen = seen.clone();
    let mut then = Some(then);
    Box::new(move |p| {
        if let Progress::Applied = p {
            if let Some(then) = then.take() {
                then();
            }
            let name = std::thread::current().name().unwrap_or("?").to_string();
            seen.lock().unwrap().push((id, name));
        }
    })
}

fn many_puts(tree: &sled::Tree, n: usize) -> Vec<Mutation> {
    (0..n)
        .map(|i| Mutation::put(tree, (i as u32).to_be_bytes().to_vec(), b"v".to_vec()))
        .collect()
}

fn wait_for_applied(seen: &Arc<Mutex<Vec<(u32, String)>>>, n: usize) -> Vec<(u32, String)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = seen.lock().unwrap().clone();
        if s.len() >= n {
            return s;
        }
        assert!(Instant::now() < deadline, "only applied {s:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_small_group_is_applied_on_the_commit_thread_and_a_large_one_on_the_apply_thread() {
    let (_dir, _db, c, tree) = open();
    let seen = Arc::default();
    c.submit(put(&tree, b"small", b"v"), applied_on(&seen, 0, || {}));
    assert_eq!(wait_for_applied(&seen, 1)[0].1, "hartslag-commit");
    c.submit(
        many_puts(&tree, APPLY_HERE_BELOW),
        applied_on(&seen, 1, || {}),
    );
    assert_eq!(wait_for_applied(&seen, 2)[1].1, "hartslag-apply");
    assert_eq!(tree.get(b"small").unwrap().unwrap().as_ref(), b"v");
    assert_eq!(tree.len(), APPLY_HERE_BELOW + 1);
}

#[test]
fn a_small_group_behind_one_still_being_applied_waits_its_turn_on_the_apply_thread() {
    let (_dir, _db, c, tree) = open();
    let seen = Arc::default();
    // The large group's `Applied` holds the apply thread until the small group is durable.
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let mut writes = many_puts(&tree, APPLY_HERE_BELOW);
    writes.push(Mutation::put(&tree, b"k".to_vec(), b"first".to_vec()));
    let heard = Heard::default();
    let first_durable = heard.clone();
    let mut first = applied_on(&seen, 0, move || {
        let _ = wait.recv_timeout(Duration::from_secs(60));
    });
    c.submit(
        writes,
        Box::new(move |p| {
            if let Progress::Durable = p {
                first_durable.lock().unwrap().push((0, "durable"));
            }
            first(p)
        }),
    );
    // In a group of its own: the first one is durable and on its way to the apply thread.
    wait_for(&heard, 1);
    let (durable, applied) = (heard.clone(), seen.clone());
    c.submit(
        put(&tree, b"k", b"second"),
        Box::new(move |p| match p {
            Progress::Durable => durable.lock().unwrap().push((1, "durable")),
            Progress::Applied => {
                let name = std::thread::current().name().unwrap_or("?").to_string();
                applied.lock().unwrap().push((1, name));
            }
            Progress::Failed(_) => durable.lock().unwrap().push((1, "failed")),
        }),
    );
    wait_for(&heard, 2);
    go.send(()).unwrap();
    let s = wait_for_applied(&seen, 2);
    assert_eq!(
        s,
        vec![
            (0, "hartslag-apply".to_string()),
            (1, "hartslag-apply".to_string())
        ],
        "the small group was applied before the one ahead of it, or beside it"
    );
    assert_eq!(tree.get(b"k").unwrap().unwrap().as_ref(), b"second");
}
