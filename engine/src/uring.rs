//! The io_uring storage backend (Linux): a commit's block write and its
//! fdatasync go to the kernel as one linked pair in a single system call,
//! and the committer goes on building the next block while they run (up to
//! `INFLIGHT_BLOCKS_MAX` pairs at once). Everything else (reads, metadata,
//! sizing) uses `std`, like [`StdStorage`].
//!
//! Invariants:
//! * One ring per storage, behind a mutex. A buffer handed to the kernel is
//!   owned by the ring's state until its write's completion is reaped, and
//!   dropping the ring first waits for every submitted operation, so no
//!   buffer is freed while the kernel may read it.
//! * Completions may arrive in any order; each pair's results are kept
//!   until the ticket that owns them asks.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use io_uring::{opcode, squeue, types, IoUring};

use crate::storage::{LockOutcome, OpenMode, PendingIo, StdFile, StdStorage, Storage, StorageFile, SyncTicket};

/// Submission queue slots: room for every pair the committer keeps in flight.
const RING_ENTRIES: u32 = 16;
const _: () = assert!(RING_ENTRIES as usize >= 2 * crate::committer::INFLIGHT_BLOCKS_MAX);

/// Storage whose commit path uses io_uring.
#[derive(Debug, Clone)]
pub struct UringStorage {
    ring: Arc<Ring>,
}

struct RingState {
    ring: IoUring,
    /// user_data of the next write; its sync is `next_id + 1`.
    next_id: u64,
    /// Results reaped but not yet claimed by their ticket.
    results: HashMap<u64, i32>,
    /// Buffers of writes whose completion has not been reaped.
    buffers: HashMap<u64, Bytes>,
    /// Files of syncs whose completion has not been reaped (kept open).
    files: HashMap<u64, Arc<StdFile>>,
    /// Submitted operations whose completion has not been reaped.
    outstanding: usize,
}

struct Ring(Mutex<RingState>);

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ring")
    }
}

impl Ring {
    fn lock(&self) -> MutexGuard<'_, RingState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl RingState {
    /// Waits for at least one completion and files every one that arrived.
    fn reap(&mut self) -> io::Result<()> {
        self.ring.submit_and_wait(1)?;
        let completed: Vec<(u64, i32)> = self.ring.completion().map(|c| (c.user_data(), c.result())).collect();
        for (id, result) in completed {
            self.outstanding -= 1;
            // The kernel is done with this operation's buffer or file.
            self.buffers.remove(&id);
            self.files.remove(&id);
            self.results.insert(id, result);
        }
        Ok(())
    }

    /// The result of operation `id`, reaping until it is there.
    fn take(&mut self, id: u64) -> io::Result<i32> {
        loop {
            if let Some(result) = self.results.remove(&id) {
                return Ok(result);
            }
            self.reap()?;
        }
    }
}

impl Drop for RingState {
    fn drop(&mut self) {
        // The kernel may still read a buffer until its completion arrives.
        while self.outstanding > 0 {
            if self.reap().is_err() {
                // Leak rather than free what the kernel may still use.
                std::mem::forget(std::mem::take(&mut self.buffers));
                std::mem::forget(std::mem::take(&mut self.files));
                return;
            }
        }
    }
}

impl UringStorage {
    /// A ring, if this kernel (and any seccomp policy) allows one.
    pub fn probe() -> io::Result<UringStorage> {
        let ring = IoUring::new(RING_ENTRIES)?;
        let state = RingState {
            ring,
            next_id: 0,
            results: HashMap::new(),
            buffers: HashMap::new(),
            files: HashMap::new(),
            outstanding: 0,
        };
        Ok(UringStorage { ring: Arc::new(Ring(Mutex::new(state))) })
    }
}

#[derive(Debug)]
struct UringFile {
    file: Arc<StdFile>,
    ring: Arc<Ring>,
}

/// A linked write + fdatasync in the ring.
struct InFlight {
    ring: Arc<Ring>,
    file: Arc<StdFile>,
    write_id: u64,
    buf: Bytes,
    off: u64,
}

impl PendingIo for InFlight {
    fn wait(self: Box<Self>) -> io::Result<()> {
        let (written, synced) = {
            let mut state = self.ring.lock();
            (state.take(self.write_id)?, state.take(self.write_id + 1)?)
        };
        let written = usize::try_from(written).map_err(|_| io::Error::from_raw_os_error(-written))?;
        if written == self.buf.len() {
            return if synced < 0 { Err(io::Error::from_raw_os_error(-synced)) } else { Ok(()) };
        }
        // A short write cancels the linked sync: finish with plain calls.
        self.file.write_all_at(&self.buf[written..], self.off + written as u64)?;
        self.file.sync_data()
    }
}

impl UringFile {
    /// Queues one linked write + fdatasync and starts it.
    fn submit(&self, buf: Bytes, off: u64) -> io::Result<InFlight> {
        let len = u32::try_from(buf.len()).map_err(|_| io::Error::other("write larger than 4 GiB"))?;
        let fd = types::Fd(self.file.0.as_raw_fd());
        let mut state = self.ring.lock();
        let write_id = state.next_id;
        let write = opcode::Write::new(fd, buf.as_ptr(), len)
            .offset(off)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(write_id);
        let sync = opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build().user_data(write_id + 1);
        // SAFETY: the buffer and the file (so its descriptor) are kept in
        // `state` until the completions of the write and the sync are
        // reaped, and `RingState::drop` waits for every completion.
        unsafe {
            state
                .ring
                .submission()
                .push_multiple(&[write, sync])
                .map_err(|_| io::Error::other("io_uring queue full"))?;
        }
        state.next_id += 2;
        state.outstanding += 2;
        state.buffers.insert(write_id, buf.clone());
        state.files.insert(write_id + 1, self.file.clone());
        state.ring.submit()?;
        Ok(InFlight { ring: self.ring.clone(), file: self.file.clone(), write_id, buf, off })
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
        self.submit_write_and_sync(Bytes::copy_from_slice(buf), off).wait()
    }
    fn submit_write_and_sync(&self, buf: Bytes, off: u64) -> SyncTicket {
        match self.submit(buf, off) {
            Ok(io) => SyncTicket::pending(Box::new(io)),
            Err(e) => SyncTicket::done(Err(e)),
        }
    }
}

impl Storage for UringStorage {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        Ok(Arc::new(UringFile { file: Arc::new(StdFile::open(path, mode)?), ring: self.ring.clone() }))
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
