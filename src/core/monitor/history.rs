//! A monitor's ping history: what one ping records, and the block format that stores
//! [`PINGS_PER_BLOCK`] consecutive pings of one monitor as one value.
//!
//! One insert into a key-value store costs far more than the few hundred bytes a ping
//! record holds, and a bounded history would cost two per ping: the new record and the
//! removal of the one that fell out of the window. A block holds consecutive pings of one
//! monitor (`seq / PINGS_PER_BLOCK`); a backend appends to it in memory during a round and
//! writes it once, and drops a whole block once every ping in it is older than the kept
//! window (the embedded backend, `crate::core::store::monitors`, keys blocks by monitor
//! and block index). Readers cut the window exactly.
//!
//! The value is a version byte, then per ping a little-endian `u32` length and the record
//! as JSON (so fields can be added later, as with every other monitor record).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// What kind of signal a ping carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PingKind {
    /// Success (`/ping`, exit code 0).
    Success,
    /// A run began (`/start`).
    Start,
    /// Failure (`/fail`, exit code 1–255).
    Fail,
}

/// One received ping, as kept in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingRecord {
    /// Sequence number within the monitor (1-based).
    pub seq: u64,
    /// When it arrived.
    pub at: Timestamp,
    /// Success, start or failure.
    pub kind: PingKind,
    /// Exit code, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u8>,
    /// Client address (first X-Forwarded-For entry when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// User agent, at most 200 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Request body, at most 10 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Run duration in milliseconds, when a `/start` (or the Job's start) preceded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    /// The run id the ping carried (`?rid=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Option<String>,
    /// The Job this entry reports, for evidence from a watched CronJob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Why the Job failed (`BackoffLimitExceeded`, `DeadlineExceeded`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Pings per block.
pub const PINGS_PER_BLOCK: u64 = 16;

/// First byte of a block value.
const BLOCK_V1: u8 = 1;

/// Why a ping block could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// A record could not be encoded or decoded.
    #[error("ping record: {0}")]
    Codec(#[from] serde_json::Error),
    /// A stored block is cut short or has an unknown layout.
    #[error("ping history block {key} is corrupt: {detail}")]
    Corrupt {
        /// The block's key, hex-encoded.
        key: String,
        /// What is wrong.
        detail: &'static str,
    },
}

/// Appends `record` to `block` (an empty vector starts a new block).
pub fn append(block: &mut Vec<u8>, record: &PingRecord) -> Result<(), HistoryError> {
    if block.is_empty() {
        block.push(BLOCK_V1);
    }
    let at = block.len();
    block.extend_from_slice(&[0; 4]);
    serde_json::to_writer(&mut *block, record)?;
    let len = u32::try_from(block.len() - at - 4).map_err(|_| HistoryError::Corrupt {
        key: String::new(),
        detail: "a ping record is larger than 4 GiB",
    })?;
    block[at..at + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// The pings of a block, oldest first.
pub fn decode(key: &[u8], block: &[u8]) -> Result<Vec<PingRecord>, HistoryError> {
    let corrupt = |detail| HistoryError::Corrupt {
        key: hex::encode(key),
        detail,
    };
    let Some((&BLOCK_V1, mut rest)) = block.split_first() else {
        return Err(corrupt("unknown block version"));
    };
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| corrupt("truncated length"))?;
        let len = u32::from_le_bytes(*len) as usize;
        let (json, tail) = tail
            .split_at_checked(len)
            .ok_or_else(|| corrupt("truncated record"))?;
        out.push(serde_json::from_slice(json)?);
        rest = tail;
    }
    Ok(out)
}

/// About how many bytes `record` takes in a block: what a round of the engine is cut by,
/// so that bursts of pings with large bodies make several writes of bounded size.
pub fn approx_size(record: &PingRecord) -> usize {
    let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    160 + text(&record.source)
        + text(&record.user_agent)
        + text(&record.body)
        + text(&record.rid)
        + text(&record.job)
        + text(&record.reason)
}

/// A ping as tests of the block format and of stored history use it: every third one
/// has a body of two lines with quotes.
#[cfg(test)]
pub(crate) fn sample_ping(seq: u64) -> PingRecord {
    PingRecord {
        seq,
        at: Timestamp::from_second(1_700_000_000 + seq as i64).unwrap_or_default(),
        kind: PingKind::Success,
        exit_code: None,
        source: Some("10.0.0.1".into()),
        user_agent: Some("curl/8".into()),
        body: seq
            .is_multiple_of(3)
            .then(|| format!("run {seq}\nline two, \"quoted\"")),
        duration_ms: None,
        rid: None,
        job: None,
        reason: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sample_ping as ping;

    #[test]
    fn blocks_round_trip_and_refuse_truncation() {
        let mut block = Vec::new();
        for s in 1..=5 {
            append(&mut block, &ping(s)).unwrap();
        }
        assert_eq!(
            decode(b"k", &block).unwrap(),
            (1..=5).map(ping).collect::<Vec<_>>()
        );
        assert!(matches!(
            decode(b"k", &block[..block.len() - 1]),
            Err(HistoryError::Corrupt { .. })
        ));
        assert!(decode(b"k", &block[..3]).is_err());
        assert!(decode(b"k", &[9, 0, 0, 0, 0]).is_err());
        assert!(decode(b"k", &[]).is_err());
    }

    #[test]
    fn the_size_estimate_grows_with_the_body() {
        let mut p = ping(1);
        let small = approx_size(&p);
        p.body = Some("x".repeat(10_000));
        assert!(approx_size(&p) >= small + 10_000);
        let mut block = Vec::new();
        append(&mut block, &p).unwrap();
        assert!(approx_size(&p) >= block.len());
    }
}
