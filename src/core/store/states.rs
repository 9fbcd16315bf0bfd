//! The state file: every monitor's state record in a slot of its own, addressed by the
//! monitor's number, beside sled.
//!
//! A state record changes with every ping and every deadline, and is read back only when
//! the monitors are loaded. In sled each of those writes was an insert into a B-tree leaf
//! of sixteen entries: with a million monitors the leaf was rarely in sled's cache, so an
//! insert fetched, decoded and copied a whole leaf (about 11 µs), and a herd of Downs
//! spent half its time there. Here it is one positional write into the page cache.
//!
//! Durability is the commit log's, as for sled: a slot is written only after the record
//! holding the write is durable, a checkpoint syncs this file before the log starts over,
//! and a replay writes every slot the log holds again. So a slot torn by a crash was
//! written after the last checkpoint and is rewritten by the replay; a slot written
//! before it was synced whole.
//!
//! Layout: a header of [`HEADER`] bytes, then slot `n` at `HEADER + n * SLOT`. A slot is
//! the record's length (2 bytes, little-endian; 0 for none), a CRC-32 of the length and
//! the record (4 bytes), the record and zeros. Numbers that were never used read as zeros
//! (a hole in a sparse file): no record. A state record longer than [`CAPACITY`] does not
//! fit: the store keeps it in sled and leaves the slot empty.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::core::files;

/// The file's name in the data directory.
pub const FILE_NAME: &str = "monitor-states";

/// The name the commit log gives this file's writes, in place of a sled tree's: a name
/// no tree has (trees are named in plain words).
pub const LOG_NAME: &[u8] = b"\0monitor-states";

/// Bytes of the file's header: magic, slot size, CRC-32 of both, zeros. A page, so that
/// no slot straddles two pages of the page cache.
pub(crate) const HEADER: u64 = 4096;

const MAGIC: &[u8; 8] = b"HSSTATE2";

/// Bytes per slot.
pub const SLOT: usize = 512;

/// Length and CRC in front of a slot's record.
const SLOT_HEADER: usize = 6;

/// The longest state record a slot holds.
pub const CAPACITY: usize = SLOT - SLOT_HEADER;

/// Slots read at once while the monitors are loaded (in number order).
const WINDOW_SLOTS: u64 = 4096;

/// A monitor numbered at most this far after the one read before it is read with a
/// window of the slots after it; one further away, alone.
const NEAR_SLOTS: u64 = 64;

/// Monitors numbered from this on keep their state records in sled: the file stays
/// below 8 GiB (apparent size; a sparse file takes what its slots hold). Numbers are
/// dense from 1 in stores made since the state file; earlier ones took numbers from
/// sled's id generator, which may be far larger.
pub const SLOTS: u64 = 1 << 24;

/// How often the writeback thread syncs the slots written since it last did.
const WRITE_BACK_EVERY: Duration = Duration::from_millis(100);

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StatesError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The state file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The file is not a state file of this layout.
    #[error(
        "{path}: not a Hartslag state file of this version (unknown header); it was left untouched"
    )]
    Header {
        /// The file.
        path: PathBuf,
    },
    /// A slot does not hold what was written to it.
    #[error("{path}: the state record of monitor number {num} is corrupt: {detail}")]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// The monitor whose slot it is.
        num: u64,
        /// What is wrong with it.
        detail: String,
    },
    /// The database keeps its monitors' states in a state file other than this one.
    #[error(
        "{path} is not the state file this database was written with (it was made anew, or replaced: a restore without it?); starting would give every monitor the state of its last definition change. Restore the whole data directory from one backup (the file alone, from an older backup, would be older than the database)"
    )]
    Foreign {
        /// The file found.
        path: PathBuf,
    },
    /// The file is shorter than a sync before this start left it.
    #[error(
        "{path} is {found} bytes long, but a sync before this start left it at least {at_least}: it was cut short, and starting would give the monitors whose slots are gone the state of their last definition change. Restore the whole data directory from one backup"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Its length at a sync before.
        at_least: u64,
        /// Its length now.
        found: u64,
    },
    /// The file holds monitors' states, or a database once recorded it, but the database
    /// here has no record of it: the database was lost or made anew beside it.
    #[error(
        "{path} belongs to a database that has no record of it (its files were removed, emptied or replaced?); starting would begin from an empty database, without the events and monitors it held. Restore the whole data directory from one backup, or move it aside to start afresh"
    )]
    Unclaimed {
        /// The file found.
        path: PathBuf,
    },
    /// A state record longer than a slot, or a number past what a file can address.
    #[error("the state record of monitor number {num} does not fit a slot ({detail})")]
    DoesNotFit {
        /// The monitor.
        num: u64,
        /// Why.
        detail: String,
    },
}

/// A state file's id (see [`StateFile::id`]).
pub type FileId = [u8; 16];

/// The open state file; clones share it.
#[derive(Debug, Clone)]
pub struct StateFile {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    file: File,
    /// Chosen at random when the file was made; the database keeps it, so a start with a
    /// file that is not this database's is refused ([`StatesError::Foreign`]).
    id: FileId,
    path: PathBuf,
    /// Slots were written since the background writeback last synced.
    dirty: AtomicBool,
    /// The file's length when the last sync began: on disk once that sync returned.
    synced_len: AtomicU64,
    /// The header says a database recorded this file ([`StateFile::mark_claimed`]).
    claimed: AtomicBool,
    /// This open made the file ([`StateFile::discard_if_made_now`]).
    made_now: bool,
    /// Why a background sync failed: the kernel may have dropped the pages it could not
    /// write, so a later sync that succeeds proves nothing, and every later
    /// [`StateFile::sync`] fails with this.
    failed: Mutex<Option<String>>,
}

impl StateFile {
    /// Opens (or creates) the state file in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StatesError> {
        let path = dir.join(FILE_NAME);
        let io = |source| StatesError::Io {
            path: path.clone(),
            source,
        };
        let file = files::open_or_create(&path).map_err(io)?;
        let mut head = [0u8; HEADER as usize];
        let read = read_at_most(&file, &mut head, 0).map_err(io)?;
        let blank = read == 0 || head.iter().all(|b| *b == 0);
        // Only a file no longer than its header may be thrown away again
        // ([`StateFile::discard_if_made_now`]): one with slots behind a zeroed header holds
        // states, and is kept for whoever recovers them.
        let made_now = blank && file.metadata().map_err(io)?.len() <= HEADER;
        let id = if blank {
            // New, or created but never given a header before a crash: no slot written
            // yet either (the header is synced before the first slot is written).
            let mut id = FileId::default();
            getrandom::fill(&mut id)
                .map_err(|e| io(std::io::Error::other(format!("no random id: {e}"))))?;
            file.write_all_at(&header(&id), 0).map_err(io)?;
            file.sync_all().map_err(io)?;
            files::sync_parent(&path).map_err(io)?;
            id
        } else {
            parse_header(&head).ok_or_else(|| StatesError::Header { path: path.clone() })?
        };
        let len = file.metadata().map_err(io)?.len();
        if let Some(at_least) = recorded_len(&head).filter(|n| *n > len) {
            return Err(StatesError::Truncated {
                path,
                at_least,
                found: len,
            });
        }
        let inner = Arc::new(Inner {
            file,
            id,
            path,
            dirty: AtomicBool::new(false),
            synced_len: AtomicU64::new(len),
            claimed: AtomicBool::new(claimed_mark(&head)),
            made_now,
            failed: Mutex::new(None),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("hartslag-states".into())
            .spawn(move || write_back(&weak))
            .map_err(|source| StatesError::Io {
                path: inner.path.clone(),
                source,
            })?;
        Ok(Self { inner })
    }

    /// The id the file was made with.
    pub fn id(&self) -> FileId {
        self.inner.id
    }

    /// Whether any slot was ever written: the file is longer than its header.
    pub fn has_slots(&self) -> Result<bool, StatesError> {
        let len = self.inner.file.metadata().map_err(|e| self.io(e))?.len();
        Ok(len > HEADER)
    }

    /// Removes the file again when this open made it: a start refused because the
    /// database's own file is missing leaves the directory as it found it, so restoring
    /// that file (or the whole directory) is all a retry needs, and the next refusal still
    /// says the file is missing rather than foreign.
    pub fn discard_if_made_now(&self) {
        if self.inner.made_now && std::fs::remove_file(&self.inner.path).is_ok() {
            let _ = files::sync_parent(&self.inner.path);
        }
    }

    /// Whether the header says a database recorded this file as its own.
    pub fn marked_claimed(&self) -> bool {
        self.inner.claimed.load(Ordering::Acquire)
    }

    /// Writes into the header, durably, that a database recorded this file as its own;
    /// called once that record is durable. A start that finds the mark but no record in
    /// the database knows the database is not the one the file was made with, even when
    /// no monitor ever wrote a slot (an install with events only).
    pub fn mark_claimed(&self) -> Result<(), StatesError> {
        if self.marked_claimed() {
            return Ok(());
        }
        self.inner
            .file
            .write_all_at(CLAIMED, CLAIMED_AT)
            .and_then(|()| self.inner.file.sync_data())
            .map_err(|e| self.io(e))?;
        self.inner.claimed.store(true, Ordering::Release);
        Ok(())
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Writes monitor `num`'s state record (`None`: clears the slot). Not durable until
    /// [`StateFile::sync`]; the commit log makes it so meanwhile.
    pub fn write(&self, num: u64, record: Option<&[u8]>) -> Result<(), StatesError> {
        let slot = encode_slot(num, record)?;
        self.inner
            .file
            .write_all_at(&slot, offset(num)?)
            .map_err(|source| self.io(source))?;
        self.inner.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Monitor `num`'s state record, if its slot holds one.
    pub fn read(&self, num: u64) -> Result<Option<Vec<u8>>, StatesError> {
        let Ok(at) = offset(num) else {
            return Ok(None);
        };
        let mut slot = [0u8; SLOT];
        let read =
            read_at_most(&self.inner.file, &mut slot, at).map_err(|source| self.io(source))?;
        decode_slot(&slot[..read], num).map_err(|detail| self.corrupt(num, detail))
    }

    /// Makes every slot written so far durable; fails for good once a sync has failed.
    pub fn sync(&self) -> Result<(), StatesError> {
        self.inner
            .sync()
            .map_err(|e| self.io(std::io::Error::other(e)))
    }

    /// A sync that could not be done, as an error of this file.
    pub(crate) fn failed_sync(&self, why: String) -> StatesError {
        self.io(std::io::Error::other(why))
    }

    /// Tests: makes every later sync fail with `reason`, as after a failed `fdatasync`.
    #[cfg(test)]
    pub(crate) fn fail_syncs(&self, reason: &str) {
        *self.inner.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.into());
    }

    /// A reader for monitors taken in ascending number order, which reads the file a
    /// window at a time instead of a slot at a time.
    pub fn cursor(&self) -> Cursor<'_> {
        Cursor {
            file: self,
            window: Vec::new(),
            first: 0,
            end: None,
            last: 0,
        }
    }

    fn io(&self, source: std::io::Error) -> StatesError {
        StatesError::Io {
            path: self.inner.path.clone(),
            source,
        }
    }

    fn corrupt(&self, num: u64, detail: String) -> StatesError {
        StatesError::Corrupt {
            path: self.inner.path.clone(),
            num,
            detail,
        }
    }
}

impl Inner {
    /// Syncs the file, or fails with the failure of an earlier sync. One lock holds the
    /// check, the sync and the record of its failure: Linux reports a failed writeback
    /// to one `fdatasync` on the file only, so a sync by another thread between the check
    /// and the record would find nothing wrong and a checkpoint would empty the log over
    /// slots the kernel dropped.
    fn sync(&self) -> Result<(), String> {
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = failed.as_ref() {
            return Err(format!(
                "an earlier sync failed, so nothing written since can be trusted: {e}"
            ));
        }
        self.dirty.store(false, Ordering::Release);
        let fail = |e: std::io::Error, failed: &mut Option<String>| {
            *failed = Some(e.to_string());
            e.to_string()
        };
        // The header says how long the file was at the last sync, which is on disk: a
        // length not synced yet could reach the disk (the header page written back) before
        // the file's size does, and a crash then would read as a truncated file.
        let on_disk = self.synced_len.load(Ordering::Acquire);
        let len = match self.file.metadata() {
            Ok(m) => m.len(),
            Err(e) => return Err(fail(e, &mut failed)),
        };
        if let Err(e) = self.file.write_all_at(&length_field(on_disk), LENGTH_AT) {
            return Err(fail(e, &mut failed));
        }
        self.file.sync_data().map_err(|e| fail(e, &mut failed))?;
        self.synced_len.fetch_max(len, Ordering::AcqRel);
        Ok(())
    }
}

/// The writeback thread: syncs written slots every [`WRITE_BACK_EVERY`] until the file is
/// closed, so a checkpoint's sync (on the commit thread, which writes nothing meanwhile)
/// finds little left to write. Left to the kernel, a herd's dirty pages waited for the
/// checkpoint, whose sync then stalled the commit log for up to half a second.
fn write_back(inner: &Weak<Inner>) {
    loop {
        std::thread::sleep(WRITE_BACK_EVERY);
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if !inner.dirty.load(Ordering::Acquire) {
            continue;
        }
        if let Err(e) = inner.sync() {
            tracing::error!(path = %inner.path.display(), error = %e, "syncing the monitors' state file failed; the next checkpoint fails, and writes stop then until a restart");
            return;
        }
    }
}

/// Reads slots in ascending number order through a window of [`WINDOW_SLOTS`].
pub struct Cursor<'a> {
    file: &'a StateFile,
    window: Vec<u8>,
    /// The number of the window's first slot.
    first: u64,
    /// The first number past the end of the file, once a window reached it: nothing is
    /// written while monitors load, so no slot from there on holds a record.
    end: Option<u64>,
    /// The number read last.
    last: u64,
}

impl Cursor<'_> {
    /// Monitor `num`'s state record, if its slot holds one.
    pub fn read(&mut self, num: u64) -> Result<Option<Vec<u8>>, StatesError> {
        let Ok(at) = offset(num) else {
            return Ok(None);
        };
        if self.end.is_some_and(|end| num >= end) {
            return Ok(None);
        }
        let near = num.saturating_sub(self.last) <= NEAR_SLOTS;
        self.last = num;
        let in_window = num >= self.first && (num - self.first) < self.slots_held();
        if !in_window {
            if !near {
                // Far from the monitor before: its slot alone, not a window of holes.
                return self.file.read(num);
            }
            self.first = num;
            self.window.resize(WINDOW_SLOTS as usize * SLOT, 0);
            let read = read_at_most(&self.file.inner.file, &mut self.window, at)
                .map_err(|source| self.file.io(source))?;
            self.window.truncate(read);
            if read < WINDOW_SLOTS as usize * SLOT {
                self.end = Some(num + self.slots_held());
            }
        }
        let start = ((num - self.first) as usize) * SLOT;
        let slot = self.window.get(start..).unwrap_or_default();
        let slot = slot.get(..SLOT).unwrap_or(slot);
        decode_slot(slot, num).map_err(|detail| self.file.corrupt(num, detail))
    }

    fn slots_held(&self) -> u64 {
        self.window.len().div_ceil(SLOT) as u64
    }
}

/// Magic, slot size, the file's id, and a CRC-32 of those.
fn header(id: &FileId) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&(SLOT as u32).to_le_bytes());
    h[12..28].copy_from_slice(id);
    let crc = crc32fast::hash(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// The id in a header of this layout (its first 32 bytes; the length field after them
/// changes with every sync).
fn parse_header(h: &[u8]) -> Option<FileId> {
    let id: FileId = h.get(12..28)?.try_into().ok()?;
    (h.get(..32)? == &header(&id)[..32]).then_some(id)
}

/// Where the header keeps the file's length at a sync: 8 bytes, little-endian, and a
/// CRC-32 of them. Zeros (a file from before it was kept) say nothing.
const LENGTH_AT: u64 = 32;

fn length_field(len: u64) -> [u8; 12] {
    let mut f = [0u8; 12];
    f[..8].copy_from_slice(&len.to_le_bytes());
    let crc = crc32fast::hash(&f[..8]);
    f[8..].copy_from_slice(&crc.to_le_bytes());
    f
}

/// The length a sync before recorded in header `h`, if it holds one.
fn recorded_len(h: &[u8]) -> Option<u64> {
    let f = h.get(32..44)?;
    let len = u64::from_le_bytes(f.get(..8)?.try_into().ok()?);
    let crc = u32::from_le_bytes(f.get(8..)?.try_into().ok()?);
    (len > 0 && crc32fast::hash(f.get(..8)?) == crc).then_some(len)
}

/// Where the header says a database recorded the file ([`StateFile::mark_claimed`]):
/// these 8 bytes; zeros (a file from before the mark, or not claimed yet) say nothing.
const CLAIMED_AT: u64 = 48;
const CLAIMED: &[u8; 8] = b"HSCLAIMD";

/// Whether header `h` holds the claim mark.
fn claimed_mark(h: &[u8]) -> bool {
    h.get(48..56) == Some(CLAIMED.as_slice())
}

/// Whether monitor `num` has a slot (see [`SLOTS`]).
pub fn addressable(num: u64) -> bool {
    num < SLOTS
}

/// Where slot `num` begins.
fn offset(num: u64) -> Result<u64, StatesError> {
    if !addressable(num) {
        return Err(StatesError::DoesNotFit {
            num,
            detail: format!("monitors numbered from {SLOTS} on have no slot"),
        });
    }
    Ok(HEADER + num * SLOT as u64)
}

fn encode_slot(num: u64, record: Option<&[u8]>) -> Result<[u8; SLOT], StatesError> {
    let mut slot = [0u8; SLOT];
    let Some(record) = record else {
        return Ok(slot);
    };
    if record.is_empty() || record.len() > CAPACITY {
        return Err(StatesError::DoesNotFit {
            num,
            detail: format!("{} bytes; a slot holds 1 to {CAPACITY}", record.len()),
        });
    }
    let len = (record.len() as u16).to_le_bytes();
    slot[..2].copy_from_slice(&len);
    slot[SLOT_HEADER..SLOT_HEADER + record.len()].copy_from_slice(record);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len);
    crc.update(record);
    slot[2..6].copy_from_slice(&crc.finalize().to_le_bytes());
    Ok(slot)
}

/// A slot's record; `slot` may be short (past the end of the file: zeros).
fn decode_slot(slot: &[u8], num: u64) -> Result<Option<Vec<u8>>, String> {
    let len = match slot.get(..2) {
        Some(b) => u16::from_le_bytes([b[0], b[1]]) as usize,
        None => return Ok(None),
    };
    if len == 0 {
        return Ok(None);
    }
    let (Some(stored), Some(record)) = (slot.get(2..6), slot.get(SLOT_HEADER..SLOT_HEADER + len))
    else {
        return Err(format!(
            "slot {num} says {len} bytes, more than a slot holds"
        ));
    };
    let mut crc = crc32fast::Hasher::new();
    crc.update(&slot[..2]);
    crc.update(record);
    if crc.finalize().to_le_bytes() != stored {
        return Err("its checksum does not match".into());
    }
    Ok(Some(record.to_vec()))
}

/// Reads into `buf` from `at` until it is full or the file ends; returns the bytes read.
fn read_at_most(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    let mut read = 0;
    while read < buf.len() {
        match file.read_at(&mut buf[read..], at + read as u64) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_hold_what_was_written_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::open(dir.path()).unwrap();
        f.write(3, Some(b"{\"state\":\"up\"}")).unwrap();
        f.write(1_000_000, Some(&[7u8; CAPACITY])).unwrap();
        assert_eq!(
            f.read(3).unwrap().as_deref(),
            Some(&b"{\"state\":\"up\"}"[..])
        );
        assert_eq!(f.read(1_000_000).unwrap(), Some(vec![7u8; CAPACITY]));
        // Never written: a hole, or past the end of the file.
        assert_eq!(f.read(4).unwrap(), None);
        assert_eq!(f.read(5_000_000).unwrap(), None);
        f.write(3, None).unwrap();
        assert_eq!(f.read(3).unwrap(), None);
        f.sync().unwrap();
        drop(f);
        let f = StateFile::open(dir.path()).unwrap();
        assert_eq!(f.read(1_000_000).unwrap(), Some(vec![7u8; CAPACITY]));
    }

    #[test]
    fn a_file_cut_short_after_a_sync_is_refused_and_one_of_before_the_length_was_kept_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        {
            let f = StateFile::open(dir.path()).unwrap();
            f.write(20, Some(b"twenty")).unwrap();
            // The first sync records the length of the sync before (the open's); the
            // second, the length the slots made.
            f.sync().unwrap();
            f.sync().unwrap();
        }
        let full = std::fs::metadata(&path).unwrap().len();
        assert_eq!(full, HEADER + 21 * SLOT as u64);
        assert_eq!(
            StateFile::open(dir.path())
                .unwrap()
                .read(20)
                .unwrap()
                .as_deref(),
            Some(&b"twenty"[..])
        );
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(full - SLOT as u64).unwrap();
        let err = StateFile::open(dir.path()).expect_err("refused");
        assert!(matches!(err, StatesError::Truncated { .. }), "{err}");
        assert!(err.to_string().contains("it was cut short"), "{err}");
        // A file written before the length was kept (zeros there) opens as before.
        file.write_all_at(&[0u8; 12], LENGTH_AT).unwrap();
        assert!(StateFile::open(dir.path()).is_ok());
    }

    #[test]
    fn a_record_too_long_or_empty_is_refused_and_the_slot_is_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::open(dir.path()).unwrap();
        f.write(2, Some(b"x")).unwrap();
        let err = f.write(2, Some(&[1u8; CAPACITY + 1])).unwrap_err();
        assert!(
            matches!(err, StatesError::DoesNotFit { num: 2, .. }),
            "{err}"
        );
        assert!(f.write(2, Some(b"")).is_err());
        assert_eq!(f.read(2).unwrap().as_deref(), Some(&b"x"[..]));
        assert!(matches!(
            f.write(u64::MAX / 2, Some(b"x")),
            Err(StatesError::DoesNotFit { .. })
        ));
        assert!(!addressable(SLOTS) && addressable(SLOTS - 1));
        assert_eq!(f.read(u64::MAX).unwrap(), None);
        assert_eq!(f.cursor().read(u64::MAX).unwrap(), None);
    }

    #[test]
    fn a_damaged_slot_is_reported_with_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::open(dir.path()).unwrap();
        f.write(9, Some(b"{\"state\":\"down\"}")).unwrap();
        let raw = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(FILE_NAME))
            .unwrap();
        raw.write_all_at(b"?", HEADER + 9 * SLOT as u64 + 10)
            .unwrap();
        let err = f.read(9).unwrap_err();
        assert!(matches!(err, StatesError::Corrupt { num: 9, .. }), "{err}");
        // A length past the slot is corrupt too, not a panic.
        raw.write_all_at(&u16::MAX.to_le_bytes(), HEADER + 9 * SLOT as u64)
            .unwrap();
        assert!(matches!(
            f.cursor().read(9),
            Err(StatesError::Corrupt { .. })
        ));
    }

    #[test]
    fn after_a_failed_sync_every_sync_fails_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::open(dir.path()).unwrap();
        f.write(1, Some(b"{}")).unwrap();
        f.sync().unwrap();
        f.fail_syncs("Input/output error");
        for _ in 0..2 {
            let err = f.sync().unwrap_err().to_string();
            assert!(
                err.contains("an earlier sync failed") && err.contains("Input/output error"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_writeback_thread_ends_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::open(dir.path()).unwrap();
        let weak = Arc::downgrade(&f.inner);
        f.write(1, Some(b"{}")).unwrap();
        drop(f);
        // The thread holds the file only while it syncs: once it is dropped, nothing does.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while weak.upgrade().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the state file is still open"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn the_cursor_finds_nothing_past_the_end_of_the_file_and_reads_far_numbers_alone() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::open(dir.path()).unwrap();
        for n in [3u64, 100, 5000] {
            f.write(n, Some(format!("{{\"n\":{n}}}").as_bytes()))
                .unwrap();
        }
        let mut c = f.cursor();
        assert_eq!(c.read(3).unwrap(), Some(b"{\"n\":3}".to_vec()));
        // A hole in the window read from 3; 5000 is far from 100, and read alone; the
        // window read from 5001 finds the file's end.
        assert_eq!(c.read(60).unwrap(), None);
        assert_eq!(c.read(100).unwrap(), Some(b"{\"n\":100}".to_vec()));
        assert_eq!(c.read(5000).unwrap(), Some(b"{\"n\":5000}".to_vec()));
        assert_eq!(c.read(5001).unwrap(), None);
        // Written after the cursor found the end: not read, as the cursor assumes nothing
        // is written while monitors load.
        f.write(5003, Some(b"{}")).unwrap();
        assert_eq!(c.read(5003).unwrap(), None);
        assert_eq!(f.cursor().read(5003).unwrap(), Some(b"{}".to_vec()));
    }

    #[test]
    fn only_a_file_no_longer_than_its_header_is_discarded_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        // Made by this open: thrown away again.
        StateFile::open(dir.path()).unwrap().discard_if_made_now();
        assert!(!path.exists());
        // Slots behind a header zeroed by damage: kept for whoever recovers them.
        {
            let f = StateFile::open(dir.path()).unwrap();
            f.write(3, Some(b"state")).unwrap();
            f.sync().unwrap();
        }
        let raw = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        raw.write_all_at(&[0u8; HEADER as usize], 0).unwrap();
        StateFile::open(dir.path()).unwrap().discard_if_made_now();
        assert!(path.exists(), "a file with slots was deleted");
    }

    #[test]
    fn a_file_of_another_kind_is_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), b"something else entirely").unwrap();
        let err = StateFile::open(dir.path()).unwrap_err();
        assert!(matches!(err, StatesError::Header { .. }), "{err}");
        assert_eq!(
            std::fs::read(dir.path().join(FILE_NAME)).unwrap(),
            b"something else entirely"
        );
    }

    #[test]
    fn the_cursor_reads_in_number_order_across_windows_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::open(dir.path()).unwrap();
        let nums = [1u64, 2, 4095, 4096, 4097, 9000, 2_000_000];
        for n in nums {
            f.write(n, Some(format!("{{\"n\":{n}}}").as_bytes()))
                .unwrap();
        }
        let mut c = f.cursor();
        for n in 0..4100 {
            let want = nums
                .contains(&n)
                .then(|| format!("{{\"n\":{n}}}").into_bytes());
            assert_eq!(c.read(n).unwrap(), want, "slot {n}");
        }
        assert_eq!(c.read(9000).unwrap(), Some(b"{\"n\":9000}".to_vec()));
        assert_eq!(
            c.read(2_000_000).unwrap(),
            Some(b"{\"n\":2000000}".to_vec())
        );
        assert_eq!(c.read(3_000_000).unwrap(), None);
    }
}
