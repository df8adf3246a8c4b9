//! The io_uring storage backend (Linux): a commit's block write and its
//! fdatasync go to the kernel as one linked pair in a single system call.
//! Everything else (reads, metadata, sizing) uses `std`, like [`StdStorage`].
//!
//! Invariants:
//! * One ring per storage, behind a mutex; a submission and the wait for its
//!   completions happen under the lock, so no buffer outlives its I/O.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use io_uring::{opcode, squeue, types, IoUring};

use crate::storage::{LockOutcome, OpenMode, StdFile, StdStorage, Storage, StorageFile};

const RING_ENTRIES: u32 = 8;
const USER_DATA_WRITE: u64 = 1;
const USER_DATA_SYNC: u64 = 2;

/// Storage whose commit path uses io_uring.
#[derive(Debug, Clone)]
pub struct UringStorage {
    ring: Arc<Ring>,
}

struct Ring(Mutex<IoUring>);

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ring")
    }
}

impl UringStorage {
    /// A ring, if this kernel (and any seccomp policy) allows one.
    pub fn probe() -> io::Result<UringStorage> {
        let ring = IoUring::new(RING_ENTRIES)?;
        Ok(UringStorage { ring: Arc::new(Ring(Mutex::new(ring))) })
    }
}

#[derive(Debug)]
struct UringFile {
    file: StdFile,
    ring: Arc<Ring>,
}

impl UringFile {
    /// One linked write + fdatasync; returns (bytes written, sync result).
    fn submit_write_and_sync(&self, buf: &[u8], off: u64) -> io::Result<(usize, io::Result<()>)> {
        let len = u32::try_from(buf.len()).map_err(|_| io::Error::other("write larger than 4 GiB"))?;
        let fd = types::Fd(self.file.0.as_raw_fd());
        let write = opcode::Write::new(fd, buf.as_ptr(), len)
            .offset(off)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(USER_DATA_WRITE);
        let sync = opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build().user_data(USER_DATA_SYNC);
        let mut ring = self.ring.0.lock().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: `buf` and the file descriptor stay valid until both
        // completions are reaped below, before this function returns (and
        // the ring's lock is held throughout, so no other submission reaps
        // them or reuses the slots).
        unsafe {
            ring.submission().push_multiple(&[write, sync]).map_err(|_| io::Error::other("io_uring queue full"))?;
        }
        let mut reaped = 0;
        let (mut written, mut synced) =
            (Err(io::Error::other("no write completion")), Err(io::Error::other("no sync completion")));
        while reaped < 2 {
            ring.submit_and_wait(2 - reaped)?;
            for cqe in ring.completion() {
                reaped += 1;
                let result =
                    if cqe.result() < 0 { Err(io::Error::from_raw_os_error(-cqe.result())) } else { Ok(cqe.result()) };
                match cqe.user_data() {
                    USER_DATA_WRITE => written = result.map(|n| n as usize),
                    _ => synced = result.map(|_| ()),
                }
            }
        }
        Ok((written?, synced))
    }
}

impl StorageFile for UringFile {
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, off)
    }
    fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.file.write_all_at(buf, off)
    }
    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn map(&self) -> Option<bytes::Bytes> {
        self.file.map()
    }
    fn write_and_sync(&self, buf: &[u8], off: u64) -> io::Result<()> {
        match self.submit_write_and_sync(buf, off)? {
            (n, synced) if n == buf.len() => synced,
            // A short write cancels the linked sync: finish with plain calls.
            (n, _) => {
                self.file.write_all_at(&buf[n..], off + n as u64)?;
                self.file.sync_data()
            }
        }
    }
}

impl Storage for UringStorage {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(UringFile { file: StdFile::open(path, mode)?, ring: self.ring.clone() }))
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
    fn io_backend(&self) -> &'static str {
        "io_uring"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linked_write_and_sync_lands() {
        let Ok(storage) = UringStorage::probe() else {
            eprintln!("io_uring is not available here; nothing to test");
            return;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let f = storage.open(&dir.path().join("f"), OpenMode::CreateNew).expect("create");
        f.set_len(8192).expect("size");
        f.write_and_sync(b"hello ring", 4096).expect("write and sync");
        f.write_and_sync(b"again", 100).expect("write and sync");
        let mut buf = [0u8; 10];
        f.read_exact_at(&mut buf, 4096).expect("read");
        assert_eq!(&buf, b"hello ring");
        f.read_exact_at(&mut buf[..5], 100).expect("read");
        assert_eq!(&buf[..5], b"again");
        assert_eq!(storage.io_backend(), "io_uring");
    }
}
