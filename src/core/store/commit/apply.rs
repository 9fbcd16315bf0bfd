//! The apply thread: applies each durable group to sled and reports `Applied`.

use std::sync::Arc;
use std::sync::mpsc::Receiver;

use super::split::Splitter;
use super::{CommitError, Entry, Inner, Progress, StopOnUnwind, fail_all, finished_group, halted};

/// The apply thread: applies each durable group to sled, in the order the commit thread
/// hands them over, and reports `Applied`; ends when the commit thread does.
pub(super) fn apply_groups(inner: &Inner, groups: Receiver<Vec<Entry>>) {
    let guard = StopOnUnwind(inner);
    let mut splitter = Splitter::start();
    for group in groups {
        apply_group(inner, group, &mut splitter);
        finished_group(inner);
    }
    std::mem::forget(guard);
}

/// Applies one durable group record by record; on failure stops everything.
pub(super) fn apply_group(inner: &Inner, group: Vec<Entry>, splitter: &mut Splitter) {
    #[cfg(test)]
    let injected = inner.apply_gate.pass();
    if let Some(refusal) = inner.refusal() {
        // Durable, so a restart replays it; but nothing is applied after a failure.
        fail_all(group, &refusal);
        return;
    }
    let mut group = group.into_iter();
    while let Some(mut e) = group.next() {
        #[cfg(not(test))]
        let applied = splitter.apply(&mut e.writes);
        #[cfg(test)]
        let applied = match injected {
            true => Err(sled::Error::Io(std::io::Error::other(
                "injected apply failure",
            ))),
            false => splitter.apply(&mut e.writes),
        };
        if let Err(err) = applied {
            let err = CommitError::Flush(Arc::new(err));
            tracing::error!(error = %err, "applying a commit to the database failed; refusing every write until a restart");
            let waiting = {
                let _report = inner.report();
                inner.halt(err.clone())
            };
            (e.notify)(Progress::Failed(&err));
            fail_all(group.collect(), &err);
            fail_all(waiting, &halted(&err));
            return;
        }
        inner.overlay().applied(e.seq, &e.writes);
        (e.notify)(Progress::Applied);
    }
}
