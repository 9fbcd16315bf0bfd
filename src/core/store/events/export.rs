//! Export: an application's raw events in time order, streamed from their blocks.

use jiff::Timestamp;

use crate::core::store::keys::{self, EventValue};
use crate::core::store::{Store, StoreError};

/// Filters for export.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    /// Inclusive lower bound.
    pub from: Option<Timestamp>,
    /// Exclusive upper bound.
    pub to: Option<Timestamp>,
    /// Only this event name.
    pub event: Option<String>,
    /// Only this user.
    pub user_id: Option<i64>,
}

/// One exported row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedEvent {
    /// When it happened.
    pub at: Timestamp,
    /// Name, weight and user.
    pub value: EventValue,
}

/// An event read from a block, waiting until no later block can hold an earlier one.
struct Buffered {
    at: i64,
    seq: u64,
    index: usize,
    value: EventValue,
}

impl Buffered {
    fn order(&self) -> (i64, u64, usize) {
        (self.at, self.seq, self.index)
    }
}

impl PartialEq for Buffered {
    fn eq(&self, other: &Self) -> bool {
        self.order() == other.order()
    }
}
impl Eq for Buffered {}
impl PartialOrd for Buffered {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Buffered {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.order().cmp(&other.order())
    }
}

/// Streams an application's events in time order (ties in the order they were stored).
/// Blocks are keyed by their first event and reach at most [`keys::BLOCK_SPAN_MICROS`]
/// further, so once a block starting at `t` is read, every buffered event before `t` is
/// final: memory holds only the events of blocks that overlap in time.
struct ExportIter {
    blocks: sled::Iter,
    buffered: std::collections::BinaryHeap<std::cmp::Reverse<Buffered>>,
    frontier: i64,
    done: bool,
    from: i64,
    to: i64,
    filter: ExportFilter,
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

    /// Reads the next block into the buffer; `false` when there is none left.
    fn read_block(&mut self) -> Result<bool, StoreError> {
        let Some(item) = self.blocks.next() else {
            return Ok(false);
        };
        let (k, v) = item?;
        let Some((first, seq)) = keys::parse_block_key(&k) else {
            return Ok(true);
        };
        self.frontier = first;
        let events = keys::decode_events(first, &v).ok_or_else(|| StoreError::Corrupt {
            what: "event".into(),
            detail: hex::encode(&k[..]),
        })?;
        for (index, (at, value)) in events.into_iter().enumerate() {
            if self.admits(at, &value) {
                self.buffered.push(std::cmp::Reverse(Buffered {
                    at,
                    seq,
                    index,
                    value,
                }));
            }
        }
        Ok(true)
    }
}

impl Iterator for ExportIter {
    type Item = Result<ExportedEvent, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let ready = self
                .buffered
                .peek()
                .is_some_and(|p| self.done || p.0.at < self.frontier);
            if ready {
                let std::cmp::Reverse(p) = self.buffered.pop()?;
                if let Ok(at) = Timestamp::from_microsecond(p.at) {
                    return Some(Ok(ExportedEvent { at, value: p.value }));
                }
                continue;
            }
            if self.done {
                return None;
            }
            match self.read_block() {
                Ok(more) => self.done = !more,
                Err(e) => return Some(Err(e)),
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
        self.visible.wait();
        let from = filter.from.map(keys::micros).unwrap_or(i64::MIN);
        let to = filter.to.map(keys::micros).unwrap_or(i64::MAX);
        // A block starting up to one span before `from` may still hold events after it.
        let lo = keys::event_bound(app, from.saturating_sub(keys::BLOCK_SPAN_MICROS));
        let hi = match filter.to {
            Some(_) => keys::event_bound(app, to).to_vec(),
            None => keys::events_end(app),
        };
        ExportIter {
            blocks: self.events.range(lo.to_vec()..hi),
            buffered: std::collections::BinaryHeap::new(),
            frontier: i64::MIN,
            done: false,
            from,
            to,
            filter,
        }
    }
}
