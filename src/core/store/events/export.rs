//! Export: an application's raw events in time order, streamed from their blocks.

use crate::core::storage::timestamp_from_micros;
pub use crate::core::storage::{ExportFilter, ExportedEvent};
use crate::core::store::keys::{self, EventValue};
use crate::core::store::{Store, StoreError};

/// Where an event stands in export order: its time, the sequence of the block it was
/// stored in, its index in that block. Blocks are keyed by (first event time, sequence) and
/// every event of a block lies at or after its first, so once the block keyed `(t, s)` is
/// read, every unread event stands after `(t, s, u32::MAX)`.
type Position = (i64, u64, u32);

/// Most bytes of decoded events an export holds at once (about 100 000 short events).
const BUFFER_BYTES: usize = 16 * 1024 * 1024;

/// Rough heap cost of one buffered event.
fn cost(v: &EventValue) -> usize {
    96 + v.event.len()
}

/// Streams an application's events in time order (ties in the order they were stored)
/// in bounded memory, whatever the timestamps.
///
/// Blocks reach at most [`keys::BLOCK_SPAN_MICROS`] past their key, so normally only the
/// events of blocks that overlap in time are held, and events of one instant (a backfill
/// of millions of events dated `2024-01-01`) go out block by block. Should overlapping
/// blocks ever hold more than [`BUFFER_BYTES`] (many events within one span, at different
/// instants), the export keeps only the earliest ones, hands those out, and reads that
/// stretch again for the rest: slower, never bigger.
struct ExportIter {
    tree: sled::Tree,
    app: u64,
    hi: Vec<u8>,
    from: i64,
    to: i64,
    filter: ExportFilter,
    /// The current pass over the blocks; `None` once it is exhausted.
    blocks: Option<sled::Iter>,
    /// Events read but not handed out yet, in export order.
    buffered: std::collections::BTreeMap<Position, EventValue>,
    buffered_bytes: usize,
    /// Every unread event of this pass stands after this.
    frontier: Option<Position>,
    /// The last event handed out: later passes skip it and everything before it.
    emitted: Option<Position>,
    /// Set when this pass had to leave out events for lack of room: the first of them.
    /// Nothing at or after it is buffered or handed out until the next pass.
    cutoff: Option<Position>,
    /// Most bytes buffered at once ([`BUFFER_BYTES`]; tests use less).
    budget: usize,
    /// Passes made so far.
    passes: u32,
}

impl ExportIter {
    /// Whether an event read from a block is within the bounds and passes the filter.
    fn admits(&self, at: i64, value: &EventValue) -> bool {
        at >= self.from
            && at < self.to
            && self
                .filter
                .event
                .as_deref()
                .is_none_or(|e| e == value.event)
            && self.filter.user_id.is_none_or(|u| Some(u) == value.user_id)
    }

    /// Starts a pass over every block that may hold events after `self.emitted`.
    fn start_pass(&mut self) {
        let after = self
            .emitted
            .map_or(self.from, |(at, _, _)| at.max(self.from));
        // A block starting up to one span before `after` may still reach past it.
        let lo = keys::event_bound(self.app, after.saturating_sub(keys::BLOCK_SPAN_MICROS));
        self.blocks = Some(self.tree.range(lo.to_vec()..self.hi.clone()));
        self.frontier = None;
        self.cutoff = None;
        self.passes += 1;
    }

    /// Buffers `value` at `pos`, making room by leaving out the latest events if needed.
    fn buffer(&mut self, pos: Position, value: EventValue) {
        if self.cutoff.is_some_and(|c| pos >= c) || self.emitted.is_some_and(|e| pos <= e) {
            return;
        }
        self.buffered_bytes += cost(&value);
        self.buffered.insert(pos, value);
        while self.buffered_bytes > self.budget && self.buffered.len() > 1 {
            let Some((last, v)) = self.buffered.pop_last() else {
                break;
            };
            self.buffered_bytes -= cost(&v);
            self.cutoff = Some(self.cutoff.map_or(last, |c| c.min(last)));
        }
    }

    /// Reads the next block of the pass; `Ok(false)` when the pass is over.
    fn read_block(&mut self) -> Result<bool, StoreError> {
        let Some(blocks) = self.blocks.as_mut() else {
            return Ok(false);
        };
        let (k, v) = match blocks.next() {
            None => return Ok(false),
            Some(item) => item?,
        };
        let Some((first, seq)) = keys::parse_block_key(&k) else {
            return Ok(true);
        };
        // Every event from here on stands after the cutoff: the pass is over.
        if self.cutoff.is_some_and(|c| (first, seq, 0) >= c) {
            return Ok(false);
        }
        self.frontier = Some((first, seq, u32::MAX));
        let events = keys::decode_events(first, &v).ok_or_else(|| StoreError::Corrupt {
            what: "event".into(),
            detail: hex::encode(&k[..]),
        })?;
        for (index, (at, value)) in events.into_iter().enumerate() {
            if self.admits(at, &value) {
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                self.buffer((at, seq, index), value);
            }
        }
        Ok(true)
    }
}

impl Iterator for ExportIter {
    type Item = Result<ExportedEvent, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let pass_over = self.blocks.is_none();
            let ready = self
                .buffered
                .first_key_value()
                .is_some_and(|(pos, _)| pass_over || self.frontier.is_some_and(|f| *pos <= f));
            if ready {
                let (pos, value) = self.buffered.pop_first()?;
                self.buffered_bytes -= cost(&value);
                self.emitted = Some(pos);
                match timestamp_from_micros(pos.0) {
                    Some(at) => return Some(Ok(ExportedEvent { at, value })),
                    // Only a damaged block holds such a time: the rest of the export is
                    // still worth having, but the row's absence must not go unnoticed.
                    None => {
                        tracing::warn!(
                            app = self.app,
                            micros = pos.0,
                            event = %value.event,
                            "export left out an event whose stored time no timestamp holds"
                        );
                        continue;
                    }
                }
            }
            if pass_over {
                // Everything buffered is out. Done, unless events were left out for room:
                // those need another pass.
                self.cutoff?;
                self.start_pass();
                continue;
            }
            match self.read_block() {
                Ok(true) => {}
                Ok(false) => self.blocks = None,
                Err(e) => {
                    self.blocks = None;
                    self.cutoff = None;
                    return Some(Err(e));
                }
            }
        }
    }
}

impl Store {
    /// Iterates an application's stored events, oldest first, applying `filter`.
    pub fn export(
        &self,
        app: u64,
        filter: ExportFilter,
    ) -> impl Iterator<Item = Result<ExportedEvent, StoreError>> + Send + 'static {
        self.export_within(app, filter, BUFFER_BYTES)
    }

    /// [`Store::export`], holding at most about `budget` bytes of events at once.
    fn export_within(&self, app: u64, filter: ExportFilter, budget: usize) -> ExportIter {
        self.visible.wait();
        let hi = match filter.to {
            Some(to) => keys::event_bound(app, keys::micros(to)).to_vec(),
            None => keys::events_end(app),
        };
        let mut it = ExportIter {
            tree: self.events.clone(),
            app,
            hi,
            from: filter.from.map(keys::micros).unwrap_or(i64::MIN),
            to: filter.to.map(keys::micros).unwrap_or(i64::MAX),
            filter,
            blocks: None,
            buffered: std::collections::BTreeMap::new(),
            buffered_bytes: 0,
            frontier: None,
            emitted: None,
            cutoff: None,
            budget,
            passes: 0,
        };
        it.start_pass();
        it
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use proptest::prelude::*;

    use super::*;
    use crate::core::store::StoreOptions;
    use crate::core::store::events::EventWrite;

    const T: i64 = 1_700_000_000_000_000;

    fn write(store: &Store, batch: &[(i64, String)]) {
        let writes: Vec<EventWrite> = batch
            .iter()
            .map(|(micros, name)| EventWrite {
                app: 1,
                at: timestamp_from_micros(*micros).unwrap(),
                date: 20231114,
                value: EventValue {
                    event: name.clone(),
                    weight: 1,
                    user_id: None,
                },
                idempotency: None,
                name_limit: u32::MAX,
            })
            .collect();
        let refs: Vec<&EventWrite> = writes.iter().collect();
        let (w, _) = store.event_writes(&refs, Timestamp::now()).unwrap();
        store.committer().log_blocking(w).unwrap();
    }

    /// Exports app 1 with `budget`; returns (time, name) pairs and the passes it took.
    fn export(store: &Store, budget: usize, filter: ExportFilter) -> (Vec<(i64, String)>, u32) {
        let mut it = store.export_within(1, filter, budget);
        let rows = it
            .by_ref()
            .map(|r| r.map(|e| (e.at.as_microsecond(), e.value.event)).unwrap())
            .collect();
        (rows, it.passes)
    }

    /// Stored order: by time, ties in the order written.
    fn expected(batches: &[Vec<(i64, String)>]) -> Vec<(i64, String)> {
        let mut all: Vec<(i64, String)> = batches.iter().flatten().cloned().collect();
        all.sort_by_key(|(at, _)| *at);
        all
    }

    #[test]
    fn events_of_one_instant_go_out_block_by_block() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let batches: Vec<Vec<(i64, String)>> = (0..20)
            .map(|b| (0..300).map(|i| (T, format!("e{b}-{i}"))).collect())
            .collect();
        for b in &batches {
            write(&store, b);
        }
        // Room for one block only: events of one instant never need more.
        let one_block = keys::BLOCK_MAX_EVENTS * (96 + 8);
        let (rows, passes) = export(&store, one_block, ExportFilter::default());
        assert_eq!(rows, expected(&batches));
        assert_eq!(passes, 1);
    }

    #[test]
    fn events_in_the_last_second_a_timestamp_holds_are_exported() {
        // `Timestamp::from_microsecond` refuses these microseconds, and the export skipped
        // such events without a word while the stats counted them.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let last = Timestamp::MAX.as_second() * 1_000_000;
        let batch: Vec<(i64, String)> = [0, 1, 500_000, 999_999]
            .into_iter()
            .map(|us| (last + us, format!("at-{us}")))
            .collect();
        write(&store, &batch);
        let (rows, _) = export(&store, usize::MAX / 2, ExportFilter::default());
        assert_eq!(rows, batch);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever the layout of timestamps and however little room, the export is
        /// complete and in order; with room to spare it reads the blocks once.
        #[test]
        fn export_is_ordered_and_complete_within_any_budget(
            batches in proptest::collection::vec(
                proptest::collection::vec((0i64..3_000_000, 0u8..4), 1..80), 1..12),
            budget_events in 1usize..200,
            from in proptest::option::of(0i64..3_000_000),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            let batches: Vec<Vec<(i64, String)>> = batches
                .iter()
                .enumerate()
                .map(|(b, events)| {
                    events
                        .iter()
                        .enumerate()
                        .map(|(i, (dt, n))| (T + dt - dt % (1 + i64::from(*n) * 400_000), format!("b{b}i{i}")))
                        .collect()
                })
                .collect();
            for b in &batches {
                write(&store, b);
            }
            let filter = ExportFilter {
                from: from.map(|f| Timestamp::from_microsecond(T + f).unwrap()),
                ..Default::default()
            };
            let want: Vec<(i64, String)> = expected(&batches)
                .into_iter()
                .filter(|(at, _)| from.is_none_or(|f| *at >= T + f))
                .collect();
            let (rows, _) = export(&store, budget_events * 110, filter.clone());
            prop_assert_eq!(&rows, &want);
            let (rows, passes) = export(&store, usize::MAX / 2, filter);
            prop_assert_eq!(&rows, &want);
            prop_assert_eq!(passes, 1);
        }
    }
}
