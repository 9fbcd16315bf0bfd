//! Files that hold durable data: the commit log and the monitor-state file are opened
//! alike, and their names, like the token files', are made durable alike.

use std::fs::{File, OpenOptions};
use std::path::Path;

/// Opens `path` for reading and writing, creating it empty if it does not exist and
/// never truncating it: what a crash left in it is for the caller to read.
pub fn open_or_create(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// Makes the entries of the directory holding `path` durable: a file created (or renamed
/// into place) is only sure to be found after a crash once its directory is synced too.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}
