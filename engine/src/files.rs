//! Creating and rewriting the store's files: the superblock (atomically at
//! init, then two-phase updates) and new segments (complete before they
//! appear under their final name).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::{
    self, Fingerprint, SegmentHeader, StoreId, Superblock, CHECKSUM_ALGORITHM, FORMAT_VERSION, SUPERBLOCK_COPY_LEN,
    SUPERBLOCK_FILE,
};
use crate::storage::{OpenMode, Storage, StorageFile};

pub(crate) const LOCK_FILE: &str = "LOCK";
const TMP_SUFFIX: &str = ".tmp";

fn io_at(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    Error::io(format!("{what} {}", path.display()))
}

/// Bytes of zeros written per call when a segment is pre-zeroed.
const ZERO_CHUNK: usize = 1 << 20;

/// Writes a file so that it appears whole or not at all: a temporary file of
/// `len` bytes, `contents` written at their offsets and (with `zero_fill`)
/// every other byte written as zero, synced, renamed into place, directory synced.
fn create_atomically(
    storage: &dyn Storage,
    dir: &Path,
    name: &str,
    len: u64,
    contents: &[(u64, &[u8])],
    zero_fill: bool,
) -> Result<Arc<dyn StorageFile>> {
    let path = dir.join(name);
    // A name of its own per call: two threads replacing the same file never
    // write, rename or remove each other's temporary.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!("{name}.{}-{n}{TMP_SUFFIX}", std::process::id()));
    if storage.exists(&tmp).map_err(io_at("checking", &tmp))? {
        storage.remove_file(&tmp).map_err(io_at("removing", &tmp))?;
    }
    let file = storage.open(&tmp, OpenMode::CreateNew).map_err(io_at("creating", &tmp))?;
    file.set_len(len).map_err(io_at("sizing", &tmp))?;
    if zero_fill {
        // Real zeros, not a sparse file: a later commit into this file then
        // needs no block allocation, so its fdatasync needs no journal commit.
        let zeros = vec![0u8; ZERO_CHUNK];
        let mut at = 0;
        while at < len {
            let n = ZERO_CHUNK.min((len - at) as usize);
            file.write_all_at(&zeros[..n], at).map_err(io_at("zeroing", &tmp))?;
            at += n as u64;
        }
    }
    for (offset, bytes) in contents {
        file.write_all_at(bytes, *offset).map_err(io_at("writing", &tmp))?;
    }
    file.sync_data().map_err(io_at("syncing", &tmp))?;
    storage.rename(&tmp, &path).map_err(io_at("renaming", &tmp))?;
    storage.sync_dir(dir).map_err(io_at("syncing directory", dir))?;
    Ok(file)
}

/// Replaces (or creates) file `name` in `dir` with `bytes`, atomically and
/// durably: the rename replaces the old file; a crash before it leaves it.
pub(crate) fn replace_file(storage: &dyn Storage, dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    create_atomically(storage, dir, name, bytes.len() as u64, &[(0, bytes)], false).map(drop)
}

/// Removes temporary files an interrupted creation left behind.
pub(crate) fn remove_temporaries(storage: &dyn Storage, dir: &Path) -> Result<()> {
    for name in storage.list(dir).map_err(io_at("listing", dir))? {
        if name.ends_with(TMP_SUFFIX) {
            let path = dir.join(&name);
            storage.remove_file(&path).map_err(io_at("removing", &path))?;
        }
    }
    Ok(())
}

/// Whether `dir` holds nothing but what a failed init may leave (lock, temporaries).
pub(crate) fn is_blank(storage: &dyn Storage, dir: &Path) -> Result<bool> {
    let names = storage.list(dir).map_err(io_at("listing", dir))?;
    Ok(names.iter().all(|n| n == LOCK_FILE || n.ends_with(TMP_SUFFIX)))
}

/// Creates the superblock file of a new store.
pub(crate) fn create_superblock(storage: &dyn Storage, dir: &Path, sb: &Superblock) -> Result<()> {
    let (copy, _) = sb.encode();
    let copies: Vec<(u64, &[u8])> =
        (0..format::SUPERBLOCK_COPIES).map(|i| ((i * SUPERBLOCK_COPY_LEN) as u64, &copy[..])).collect();
    create_atomically(storage, dir, SUPERBLOCK_FILE, format::SUPERBLOCK_FILE_LEN as u64, &copies, false)?;
    Ok(())
}

/// Replaces the superblock with `next` (whose sequence must be one higher):
/// copies 0 and 1, sync, copies 2 and 3, sync. A crash at any point leaves at
/// least two agreeing copies of either the old or the new superblock.
pub(crate) fn write_superblock(storage: &dyn Storage, dir: &Path, next: &Superblock) -> Result<()> {
    let path = dir.join(SUPERBLOCK_FILE);
    let file = storage.open(&path, OpenMode::ReadWrite).map_err(io_at("opening", &path))?;
    let (copy, _) = next.encode();
    for half in [[0usize, 1], [2, 3]] {
        for i in half {
            file.write_all_at(&copy, (i * SUPERBLOCK_COPY_LEN) as u64).map_err(io_at("writing", &path))?;
        }
        file.sync_data().map_err(io_at("syncing", &path))?;
    }
    Ok(())
}

/// What a new segment starts with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SegmentStart {
    pub store_id: StoreId,
    pub segment_size: u64,
    pub number: u64,
    pub first_position: u64,
    pub fingerprint: Fingerprint,
    pub epoch: u64,
}

/// Creates segment file `number`: full length, every byte written as zero
/// and durable, its directory entry durable. It holds no header yet, so it is
/// a *spare*: [`activate_segment`] turns it into the next segment at the
/// moment the log reaches it. Called ahead of need, off the commit path.
pub(crate) fn prepare_segment(
    storage: &dyn Storage,
    dir: &Path,
    number: u64,
    segment_size: u64,
) -> Result<Arc<dyn StorageFile>> {
    create_atomically(storage, dir, &format::segment_file_name(number), segment_size, &[], true)
}

/// Writes the header of a prepared spare and makes it durable before any
/// block goes into the segment: one small write and one fdatasync, no
/// directory sync.
pub(crate) fn activate_segment(file: &dyn StorageFile, start: &SegmentStart) -> Result<()> {
    let header = SegmentHeader {
        format_version: FORMAT_VERSION,
        checksum_algorithm: CHECKSUM_ALGORITHM,
        store_id: start.store_id,
        segment_number: start.number,
        first_position: start.first_position,
        segment_size: start.segment_size,
        start_fingerprint: start.fingerprint,
        epoch: start.epoch,
    };
    file.write_all_at(&header.encode(), 0)
        .and_then(|()| file.sync_data())
        .map_err(Error::io(format!("writing the header of segment {}", start.number)))
}

pub(crate) fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format::segment_file_name(number))
}
