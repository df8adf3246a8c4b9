//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lockstep_engine::format::{self, Superblock, SEGMENT_HEADER_REGION, SUPERBLOCK_COPY_LEN};
use lockstep_engine::recovery::{self, ScanReport};
use lockstep_engine::storage::{LockOutcome, OpenMode, StdStorage, Storage, StorageFile};
use lockstep_engine::{Options, Store};

pub const SMALL_SEGMENT: u64 = format::SEGMENT_SIZE_MIN;

pub fn small_options() -> Options {
    Options { segment_size: SMALL_SEGMENT, ..Options::default() }
}

pub fn open_small(dir: &Path) -> Store {
    Store::open(dir, small_options()).expect("open store")
}

pub fn scan(dir: &Path) -> ScanReport {
    recovery::scan(&StdStorage, dir, true, &mut |_| {}).expect("scan")
}

/// Overwrites bytes of a file at `offset`.
pub fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).expect("open for writing");
    f.write_all_at(bytes, offset).expect("write");
    f.sync_all().expect("sync");
}

pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(path).expect("open for reading");
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).expect("read");
    buf
}

/// Flips one bit of a file's byte at `offset`.
pub fn flip(path: &Path, offset: u64) {
    let mut b = read_at(path, offset, 1);
    b[0] ^= 0x20;
    write_at(path, offset, &b);
}

/// The file and file offset that hold log position `position`.
pub fn locate(dir: &Path, position: u64) -> (PathBuf, u64) {
    let report = scan(dir);
    let seg = report
        .segments
        .iter()
        .rev()
        .find(|s| s.header.first_position <= position)
        .expect("a segment holds the position");
    (seg.path.clone(), SEGMENT_HEADER_REGION + position - seg.header.first_position)
}

/// Writes `bytes` right after the last block, as a crash mid-write would.
pub fn append_after_log_end(dir: &Path, bytes: &[u8]) -> u64 {
    let report = scan(dir);
    let seg = report.segments.last().expect("a segment");
    let (path, offset) = (seg.path.clone(), SEGMENT_HEADER_REGION + report.log_end - seg.header.first_position);
    let room = (report.superblock.segment_size - format::SEAL_REGION - offset) as usize;
    let bytes = &bytes[..bytes.len().min(room)];
    write_at(&path, offset, bytes);
    bytes.len() as u64
}

/// Rewrites all four superblock copies with `edit` applied.
pub fn rewrite_superblock(dir: &Path, edit: impl Fn(&mut Superblock)) {
    let mut sb = scan(dir).superblock;
    edit(&mut sb);
    let (copy, _) = sb.encode();
    let path = dir.join(format::SUPERBLOCK_FILE);
    for i in 0..format::SUPERBLOCK_COPIES {
        write_at(&path, (i * SUPERBLOCK_COPY_LEN) as u64, &copy);
    }
}

/// The real file system with every opened file wrapped by `wrap`: the way
/// tests put a fault-injecting or instrumented file between the store and
/// the disk while directories behave as usual.
pub struct WrapStorage<W>(pub W);

impl<W> std::fmt::Debug for WrapStorage<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WrapStorage")
    }
}

impl<W> Storage for WrapStorage<W>
where
    W: Fn(Arc<dyn StorageFile>) -> Arc<dyn StorageFile> + Send + Sync,
{
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        Ok((self.0)(StdStorage.open(path, mode)?))
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        StdStorage.list(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        StdStorage.create_dir_all(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdStorage.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        StdStorage.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        StdStorage.sync_dir(dir)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        StdStorage.exists(path)
    }
    fn try_lock(&self, path: &Path, owner: &str) -> io::Result<LockOutcome> {
        StdStorage.try_lock(path, owner)
    }
}
