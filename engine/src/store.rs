//! The embedded API: [`Store`], [`Options`], [`WriteBatch`].
//!
//! Invariants:
//! * One `LogWriter`, behind a mutex, appends to the log, so log order is
//!   index order. Durable writes reach it through the committer thread's
//!   channel (group commit); buffered writes call it directly.
//! * The index only points at records whose block was written (and, for a
//!   `Sync` write, made durable) before the index changed, or that sit in
//!   the open block of buffered writes: readers never see a write before its
//!   writer could have been acknowledged, and never wait for an fsync.
//! * After a failed write or fsync the store is poisoned: no further write
//!   is acknowledged until it is reopened.

use std::collections::BTreeMap;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

use bytes::Bytes;
use crossbeam_channel::Sender;

use crate::committer::{self, ActiveSegment, Cmd, Committer, Entry, LogWriter, OpenBlock, Wait, WriteRequest};
use crate::error::{Corruption, Error, Result};
use crate::files::{self, SegmentStart};
use crate::format::{
    self, decode_record, encode_record, record_len, EpochStart, Fingerprint, NodeId, StoreId, Superblock,
    BLOCK_LEN_MAX, BLOCK_OVERHEAD_MAX, KEY_LEN_MAX, RECORD_KIND_DELETE, RECORD_KIND_PUT, SEAL_REGION, VALUE_LEN_MAX,
};
use crate::index::Index;
use crate::recovery::{self, ScanReport, TornTail};
use crate::storage::{LockOutcome, OpenMode, Storage, StorageFile};

/// When a write returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// A write returns once it is durable (fdatasync'd). Concurrent writers
    /// share one fsync (group commit).
    #[default]
    Sync,
    /// A write returns once it is in the store's write buffer (visible to
    /// readers); the buffer reaches the operating system within 10 ms or
    /// 256 KiB. Call [`Store::sync`] to make all earlier writes durable.
    Buffered,
}

/// How to open (and, if needed, create) a store.
#[derive(Debug, Clone)]
pub struct Options {
    pub durability: Durability,
    /// Create the store if the directory is missing or empty.
    pub create_if_missing: bool,
    /// Segment size for a new store (fixed at creation).
    pub segment_size: u64,
    /// Store id for a new store; `None` draws a random one. Give the first
    /// site's id to bind a second site to the same store.
    pub store_id: Option<StoreId>,
    /// Where files live: the real file system, or a simulated one in tests.
    pub storage: Arc<dyn Storage>,
    /// Replicate every commit block and answer writers only once the
    /// replica has it (see [`crate::Replica`]); `None` for a single site.
    pub replica: Option<Arc<dyn crate::Replica>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            durability: Durability::Sync,
            create_if_missing: true,
            segment_size: format::SEGMENT_SIZE_DEFAULT,
            store_id: None,
            storage: crate::storage::default_storage(),
            replica: None,
        }
    }
}

/// Puts and deletes applied all together or not at all, also across a crash.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    ops: Vec<(u8, Bytes, Bytes)>,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn put(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> &mut Self {
        self.ops.push((RECORD_KIND_PUT, Bytes::copy_from_slice(key.as_ref()), Bytes::copy_from_slice(value.as_ref())));
        self
    }
    pub fn delete(&mut self, key: impl AsRef<[u8]>) -> &mut Self {
        self.ops.push((RECORD_KIND_DELETE, Bytes::copy_from_slice(key.as_ref()), Bytes::new()));
        self
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Where a record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
}

/// The log's current extent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogStatus {
    pub log_end: u64,
    pub durable_end: u64,
    pub fingerprint: Fingerprint,
}

/// A point-in-time description of an open store.
#[derive(Debug, Clone)]
pub struct StoreInfo {
    pub store_id: StoreId,
    pub node_id: NodeId,
    pub epoch: u64,
    pub segment_size: u64,
    pub log_end: u64,
    pub durable_end: u64,
    pub fingerprint: Fingerprint,
    pub keys: usize,
    pub segments: usize,
    /// The I/O path commits take: "io_uring" or "std".
    pub io_backend: &'static str,
}

/// State shared by the store handle, readers and the committer.
#[derive(Debug)]
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub storage: Arc<dyn Storage>,
    pub store_id: StoreId,
    pub node_id: NodeId,
    /// The epoch history (newest last) and the compatible feature bits, as
    /// in the superblock; the committer updates them.
    pub epochs: Mutex<(Vec<EpochStart>, u64)>,
    pub segment_size: u64,
    pub record_seed: u32,
    pub index: Index,
    pub segments: RwLock<BTreeMap<u64, SegmentFile>>,
    pub status: Mutex<LogStatus>,
    pub poisoned: Mutex<Option<String>>,
    /// Buffered writes not yet written to their segment.
    pub open_block: Mutex<Option<OpenBlock>>,
    /// Writers waiting for the committer's answer right now.
    pub waiting_writers: AtomicUsize,
    pub replica: Option<Arc<dyn crate::Replica>>,
}

/// Counts a writer as waiting for as long as it lives.
struct WaitingWriter<'a> {
    shared: &'a Shared,
    /// No other writer was waiting when this one started.
    alone: bool,
}

impl<'a> WaitingWriter<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let before = shared.waiting_writers.fetch_add(1, Ordering::SeqCst);
        WaitingWriter { shared, alone: before == 0 }
    }
}

impl Drop for WaitingWriter<'_> {
    fn drop(&mut self) {
        self.shared.waiting_writers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A lockstep store on one machine. `Send + Sync`: share it as `Arc<Store>`.
#[derive(Debug)]
pub struct Store {
    pub(crate) shared: Arc<Shared>,
    durability: Durability,
    writer: Arc<Mutex<LogWriter>>,
    tx: Option<Sender<Cmd>>,
    committer: Option<JoinHandle<Result<()>>>,
    // Dropped last: the lock outlives the committer.
    _lock: LockGuard,
}

struct LockGuard(#[allow(dead_code)] Box<dyn Send + Sync>);

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LockGuard")
    }
}

fn read<T: ?Sized>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn read_segments(shared: &Shared) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, SegmentFile>> {
    read(&shared.segments)
}

pub(crate) fn write<T: ?Sized>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn aux_file_name(name: &str) -> Result<String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid {
        return Err(Error::InvalidArgument(format!(
            "auxiliary file name {name:?}: use 1 to 64 lowercase letters, digits and dashes"
        )));
    }
    Ok(format!("aux-{name}"))
}

fn lock_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let since =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    let exe = std::env::args().next().unwrap_or_default();
    format!("process {} ({exe}) on host {} since unix time {since}", std::process::id(), host.trim())
}

impl Store {
    /// Opens the store in `dir`, creating it first if `dir` is missing or
    /// empty and `options.create_if_missing` is set. Recovers from a crash:
    /// a torn tail is exported to `recovered/` and truncated; anything else
    /// damaged is refused (see docs/FORMAT.md).
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Store> {
        let dir = dir.as_ref().to_path_buf();
        if options.replica.is_some() && options.durability == Durability::Buffered {
            return Err(Error::InvalidArgument(
                "a replicated store answers writers only once the replica has them: use Durability::Sync".into(),
            ));
        }
        let storage = options.storage.clone();
        let superblock = dir.join(format::SUPERBLOCK_FILE);
        let exists = |storage: &dyn Storage| storage.exists(&superblock).map_err(Error::io("checking the superblock"));
        if !options.create_if_missing && !exists(&*storage)? {
            let reason = "no lockstep store here (create one with `lockstep init`)";
            return Err(Error::NotAStore { path: dir, reason: reason.into() });
        }
        let guard = Self::lock_dir(&*storage, &dir, options.create_if_missing)?;
        if !exists(&*storage)? {
            Self::create_locked(&*storage, &dir, &options)?;
        }
        files::remove_temporaries(&*storage, &dir)?;
        let index = Index::new();
        let scan = || {
            recovery::scan(&*storage, &dir, false, &mut |r| {
                let loc = Loc { segment: r.segment, offset: r.file_offset, len: r.len };
                index.set(r.key, (r.kind == RECORD_KIND_PUT).then_some(loc));
            })
        };
        let mut report = scan()?;
        Self::repair(&*storage, &dir, &report)?;
        if Self::unroll(&*storage, &dir, &mut report)? {
            report = scan()?;
        }
        Self::start(dir, storage, &options, report, index, guard)
    }

    /// Undoes a segment roll that no block followed (a crash between the
    /// roll and the block that caused it): an empty last segment is
    /// removed (with a spare after it) and a sealed last segment is
    /// unsealed, so that it takes the next block if that fits. Which
    /// segment a block goes to is then decided with the block — by this
    /// site if it is the primary, by the block's segment number if it is
    /// received — and both sites' segment layouts stay identical whatever
    /// a crash interrupted. (Found by the simulation: a primary whose roll
    /// survived a crash without its block had a segment its new primary
    /// never started, and refused every block from it.) Returns whether a
    /// segment was removed (the log must be scanned again).
    fn unroll(storage: &dyn Storage, dir: &Path, report: &mut ScanReport) -> Result<bool> {
        let removed = match report.segments.as_slice() {
            [.., _, last] if last.blocks == 0 => {
                let doomed = [Some(last.number), report.spare].into_iter().flatten();
                for path in doomed.map(|n| files::segment_path(dir, n)) {
                    storage.remove_file(&path).map_err(Error::io(format!("removing {}", path.display())))?;
                }
                storage.sync_dir(dir).map_err(Error::io(format!("syncing {}", dir.display())))?;
                tracing::warn!(segment = %last.path.display(), "removed a segment no block was written to");
                report.segments.pop();
                report.spare = None;
                true
            }
            _ => false,
        };
        if let Some(last) = report.segments.last_mut().filter(|s| s.sealed) {
            let file = storage.open(&last.path, OpenMode::ReadWrite).map_err(Error::io("opening the last segment"))?;
            file.write_all_at(&vec![0u8; SEAL_REGION as usize], report.superblock.segment_size - SEAL_REGION)
                .and_then(|()| file.sync_data())
                .map_err(Error::io(format!("unsealing {}", last.path.display())))?;
            last.sealed = false;
        }
        Ok(removed)
    }

    /// Creates a new store in `dir` (missing or empty) and returns its id.
    pub fn create(dir: impl AsRef<Path>, options: &Options) -> Result<StoreId> {
        let dir = dir.as_ref();
        let storage = &*options.storage;
        let _guard = Self::lock_dir(storage, dir, true)?;
        Self::create_locked(storage, dir, options)
    }

    fn lock_dir(storage: &dyn Storage, dir: &Path, create: bool) -> Result<LockGuard> {
        if create && !storage.exists(dir).map_err(Error::io(format!("checking {}", dir.display())))? {
            storage.create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        }
        let lock_path = dir.join(files::LOCK_FILE);
        match storage.try_lock(&lock_path, &lock_owner()).map_err(Error::io(format!("locking {}", dir.display())))? {
            LockOutcome::Acquired(guard) => Ok(LockGuard(guard)),
            LockOutcome::HeldBy(holder) => Err(Error::Locked { path: dir.into(), holder }),
        }
    }

    fn create_locked(storage: &dyn Storage, dir: &Path, options: &Options) -> Result<StoreId> {
        if storage.exists(&dir.join(format::SUPERBLOCK_FILE)).map_err(Error::io("checking the superblock"))? {
            let sb = recovery::read_superblock(storage, dir, true)?;
            return Err(Error::AlreadyExists { path: dir.into(), store_id: sb.store_id });
        }
        if !files::is_blank(storage, dir)? {
            let reason = "the directory is not empty and holds no lockstep store; give an empty or new directory";
            return Err(Error::NotAStore { path: dir.into(), reason: reason.into() });
        }
        format::validate_segment_size(options.segment_size).map_err(Error::InvalidArgument)?;
        let store_id = match options.store_id {
            Some(id) => id,
            None => StoreId::random().map_err(Error::io("drawing a store id"))?,
        };
        let node_id = NodeId::random().map_err(Error::io("drawing a node id"))?;
        let sb = Superblock::new(store_id, node_id, options.segment_size);
        files::create_superblock(storage, dir, &sb)?;
        Ok(store_id)
    }

    /// Applies what recovery found: exports and clears a torn tail, clears a
    /// torn seal.
    fn repair(storage: &dyn Storage, dir: &Path, report: &ScanReport) -> Result<()> {
        if let Some(tail) = &report.torn_tail {
            repair_torn_tail(storage, dir, tail)?;
        }
        if let Some(last) = report.segments.last().filter(|s| s.damaged_seal) {
            let file = storage.open(&last.path, OpenMode::ReadWrite).map_err(Error::io("opening the last segment"))?;
            let zeros = vec![0u8; SEAL_REGION as usize];
            file.write_all_at(&zeros, report.superblock.segment_size - SEAL_REGION)
                .and_then(|()| file.sync_data())
                .map_err(Error::io(format!("clearing the torn seal of {}", last.path.display())))?;
            tracing::warn!(segment = %last.path.display(), "cleared a seal torn by a crash");
        }
        Ok(())
    }

    fn start(
        dir: PathBuf,
        storage: Arc<dyn Storage>,
        options: &Options,
        mut report: ScanReport,
        index: Index,
        guard: LockGuard,
    ) -> Result<Store> {
        let sb = report.superblock.clone();
        let last = report.segments.last().map(|s| s.number);
        let mut segments = BTreeMap::new();
        for seg in &report.segments {
            let mode = if Some(seg.number) == last { OpenMode::ReadWrite } else { OpenMode::Read };
            let file = storage.open(&seg.path, mode).map_err(Error::io(format!("opening {}", seg.path.display())))?;
            segments
                .insert(seg.number, SegmentFile::new(file, seg.header.first_position, seg.header.start_fingerprint));
        }
        let mut spare = match report.spare {
            Some(n) => {
                let path = files::segment_path(&dir, n);
                Some(
                    storage
                        .open(&path, OpenMode::ReadWrite)
                        .map_err(Error::io(format!("opening {}", path.display())))?,
                )
            }
            None => None,
        };
        let active = match report.segments.last().filter(|s| !s.sealed) {
            Some(seg) => {
                let digester = report.last_digester.take().unwrap_or_default();
                ActiveSegment { number: seg.number, first_position: seg.header.first_position, digester }
            }
            None => {
                // A new store, or a crash right after sealing the last segment.
                let start = SegmentStart {
                    store_id: sb.store_id,
                    segment_size: sb.segment_size,
                    number: last.map_or(sb.log_start_segment, |n| n + 1),
                    first_position: report.log_end,
                    fingerprint: report.fingerprint,
                    epoch: sb.epoch,
                };
                debug_assert!(report.spare.is_none_or(|n| n == start.number));
                let file = match spare.take() {
                    Some(file) => file,
                    None => files::prepare_segment(&*storage, &dir, start.number, sb.segment_size)?,
                };
                files::activate_segment(&*file, &start)?;
                segments.insert(start.number, SegmentFile::new(file, start.first_position, start.fingerprint));
                ActiveSegment {
                    number: start.number,
                    first_position: start.first_position,
                    digester: format::SegmentDigester::new(),
                }
            }
        };
        // What recovery read may sit only in the page cache (an earlier
        // process wrote it without fsync): make it durable before building on it.
        if let Some(segment) = segments.get(&active.number) {
            segment.file.sync_data().map_err(Error::io("syncing the last segment"))?;
        }
        let status =
            LogStatus { log_end: report.log_end, durable_end: report.log_end, fingerprint: report.fingerprint };
        let shared = Arc::new(Shared {
            dir,
            storage,
            store_id: sb.store_id,
            node_id: sb.node_id,
            epochs: Mutex::new((sb.epochs.clone(), sb.compat_features)),
            segment_size: sb.segment_size,
            record_seed: format::record_seed(&sb.store_id),
            index,
            segments: RwLock::new(segments),
            status: Mutex::new(status),
            poisoned: Mutex::new(None),
            open_block: Mutex::new(None),
            waiting_writers: AtomicUsize::new(0),
            replica: options.replica.clone(),
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        let (wake_tx, wake) = crossbeam_channel::bounded(1);
        if let Some(replica) = &options.replica {
            replica.set_waker(crate::ReplicaWaker(wake_tx));
        }
        let writer = LogWriter::new(shared.clone(), sb, active, spare, report.log_end, report.fingerprint)?;
        let writer = Arc::new(Mutex::new(writer));
        let committer = Committer::new(rx, wake, writer.clone(), shared.clone());
        let handle = std::thread::Builder::new()
            .name("lockstep-committer".into())
            .spawn(move || committer.run())
            .map_err(Error::io("starting the committer thread"))?;
        Ok(Store {
            shared,
            durability: options.durability,
            writer,
            tx: Some(tx),
            committer: Some(handle),
            _lock: guard,
        })
    }

    /// The longest record (key + value + header) this store accepts.
    pub fn record_len_max(&self) -> usize {
        let segment_room = format::segment_data_len(self.shared.segment_size) as usize;
        BLOCK_LEN_MAX.min(segment_room) - BLOCK_OVERHEAD_MAX
    }

    fn check_key(key: &[u8]) -> Result<()> {
        if key.is_empty() || key.len() > KEY_LEN_MAX {
            return Err(Error::InvalidArgument(format!(
                "a key must be 1 to {KEY_LEN_MAX} bytes long, not {}",
                key.len()
            )));
        }
        Ok(())
    }

    fn check_record(&self, key: &[u8], value: &[u8]) -> Result<()> {
        Self::check_key(key)?;
        if value.len() > VALUE_LEN_MAX {
            return Err(Error::InvalidArgument(format!(
                "a value must be at most {VALUE_LEN_MAX} bytes long, not {}",
                value.len()
            )));
        }
        let len = record_len(key.len(), value.len());
        if len > self.record_len_max() {
            return Err(Error::InvalidArgument(format!(
                "a record of {len} bytes does not fit this store's segments ({} bytes at most)",
                self.record_len_max()
            )));
        }
        Ok(())
    }

    /// Stores `value` under `key`.
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        self.submit(&[(RECORD_KIND_PUT, key.as_ref(), value.as_ref())])
    }

    /// Removes `key` (a no-op for the data if absent; it is still logged).
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<()> {
        self.submit(&[(RECORD_KIND_DELETE, key.as_ref(), &[])])
    }

    /// Applies every operation of `batch` atomically.
    pub fn write(&self, batch: WriteBatch) -> Result<()> {
        let ops: Vec<(u8, &[u8], &[u8])> = batch.ops.iter().map(|(k, key, value)| (*k, &key[..], &value[..])).collect();
        self.submit(&ops)
    }

    fn submit(&self, ops: &[(u8, &[u8], &[u8])]) -> Result<()> {
        let mut total = 0usize;
        for (_, key, value) in ops {
            self.check_record(key, value)?;
            total += record_len(key.len(), value.len());
        }
        if ops.is_empty() {
            return Ok(());
        }
        if total > self.record_len_max() {
            return Err(Error::InvalidArgument(format!(
                "a batch of {total} bytes does not fit one commit block ({} bytes at most)",
                self.record_len_max()
            )));
        }
        self.check_poisoned()?;
        if self.tx.is_none() {
            return Err(Error::Closed);
        }
        let mut records = Vec::with_capacity(total);
        let mut entries = Vec::with_capacity(ops.len());
        for &(kind, key, value) in ops {
            let offset = records.len() as u32;
            encode_record(&mut records, self.shared.record_seed, kind, key, value);
            let len = records.len() as u32 - offset;
            entries.push(Entry { key: Bytes::copy_from_slice(key), offset, len, delete: kind == RECORD_KIND_DELETE });
        }
        let request = WriteRequest { records, count: ops.len() as u32, entries };
        if self.durability == Durability::Buffered {
            // No fsync to share: append on this thread, no hand-off.
            let opened = lock(&self.writer).commit_buffered(&request).map_err(|reason| Error::Poisoned { reason })?;
            if opened {
                self.send(Cmd::FlushSoon)?;
            }
            return Ok(());
        }
        let (reply, done) = crossbeam_channel::bounded(1);
        let waiting = WaitingWriter::enter(&self.shared);
        self.send(Cmd::Write(request, reply))?;
        committer::wait(&done, if waiting.alone { Wait::LoneDurable } else { Wait::SharedDurable })
    }

    pub(crate) fn send(&self, cmd: Cmd) -> Result<()> {
        let tx = self.tx.as_ref().ok_or(Error::Closed)?;
        tx.send(cmd).map_err(|_| Error::Closed)
    }

    fn check_poisoned(&self) -> Result<()> {
        self.shared.check_poisoned()
    }

    /// Why the store refuses writes, once a write or fsync failed (it stays
    /// so until reopened).
    pub fn poisoned(&self) -> Option<String> {
        lock(&self.shared.poisoned).clone()
    }

    /// Begins the next epoch at the current log end (a promotion): every
    /// earlier write is made durable, the epoch and its start position are
    /// recorded durably in the superblock's epoch history, and every later
    /// block carries the new epoch. Returns the new epoch.
    pub fn promote(&self) -> Result<u64> {
        self.promote_past(0)
    }

    /// [`Store::promote`] to an epoch after both this store's and
    /// `known_epoch` (an epoch another site is known to have begun), so two
    /// promotions never share an epoch number.
    pub fn promote_past(&self, known_epoch: u64) -> Result<u64> {
        self.check_poisoned()?;
        let epoch = self.info().epoch.max(known_epoch);
        if epoch >= crate::format::EPOCH_MAX {
            return Err(Error::InvalidArgument(format!(
                "cannot begin an epoch after {epoch}: epochs end at {} (a peer that claims such an epoch is not \
                 believed); nothing was changed",
                crate::format::EPOCH_MAX
            )));
        }
        let (reply, done) = crossbeam_channel::bounded(1);
        self.send(Cmd::Promote(known_epoch, reply))?;
        done.recv().unwrap_or(Err(Error::Closed))
    }

    /// Tells the store its replication peer holds the log durably up to
    /// `position`. Once that covers every write answered without the peer
    /// ([`crate::Replicated::alone`]), [`Store::unreplicated_acks`] clears:
    /// a later rejoin then knows the store's tail holds nothing
    /// acknowledged. Does not wait.
    pub fn peer_holds(&self, position: u64) {
        let _ = self.send(Cmd::PeerHolds(position));
    }

    /// Replaces the small file `name` in the store's directory with
    /// `bytes`, durably and atomically (written to a temporary, synced,
    /// renamed, directory synced), for state an embedding application keeps
    /// with the store — the replicator's record of its peer. The file is
    /// named `aux-NAME`; `name` is lowercase letters, digits and dashes.
    pub fn write_aux_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let file = aux_file_name(name)?;
        files::replace_file(&*self.shared.storage, &self.shared.dir, &file, bytes)
    }

    /// The contents of the file [`Store::write_aux_file`] wrote, if any.
    pub fn read_aux_file(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.shared.dir.join(aux_file_name(name)?);
        let storage = &*self.shared.storage;
        if !storage.exists(&path).map_err(Error::io(format!("checking {}", path.display())))? {
            return Ok(None);
        }
        let read = || -> std::io::Result<Vec<u8>> {
            let file = storage.open(&path, crate::storage::OpenMode::Read)?;
            let mut buf = vec![0u8; file.len()? as usize];
            file.read_exact_at(&mut buf, 0)?;
            Ok(buf)
        };
        read().map(Some).map_err(Error::io(format!("reading {}", path.display())))
    }

    /// The epoch history, oldest first: each epoch and the log position it
    /// began at.
    pub fn epoch_history(&self) -> Vec<EpochStart> {
        lock(&self.shared.epochs).0.clone()
    }

    /// Whether the store may hold acknowledged writes its replication peer
    /// lacks ([`format::COMPAT_UNREPLICATED_ACKS`]): set durably before a
    /// replicated store answers a writer alone, cleared once the peer
    /// acknowledges a later write durably.
    pub fn unreplicated_acks(&self) -> bool {
        lock(&self.shared.epochs).1 & format::COMPAT_UNREPLICATED_ACKS != 0
    }

    /// Makes every earlier write durable.
    pub fn sync(&self) -> Result<()> {
        self.check_poisoned()?;
        let (reply, done) = crossbeam_channel::bounded(1);
        self.send(Cmd::Sync(reply))?;
        committer::wait(&done, Wait::SharedDurable)
    }

    /// The value stored under `key`, verified against its checksum.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        let key = key.as_ref();
        Self::check_key(key)?;
        let Some(loc) = self.shared.index.get(key) else {
            return Ok(None);
        };
        self.shared.read_value(key, loc).map(Some)
    }

    /// Key/value pairs in `range`, in key order, as of this call.
    pub fn scan<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> Result<Scan> {
        let range: (Bound<&[u8]>, Bound<&[u8]>) = (as_bytes(range.start_bound()), as_bytes(range.end_bound()));
        if let (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e)) = range {
            if s > e {
                return Ok(Scan { shared: self.shared.clone(), entries: Vec::new().into_iter() });
            }
        }
        let entries = self.shared.index.range(range);
        Ok(Scan { shared: self.shared.clone(), entries: entries.into_iter() })
    }

    /// Key/value pairs whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Result<Scan> {
        let prefix = prefix.as_ref();
        let mut scan = self.scan::<&[u8], _>((Bound::Included(prefix), Bound::Unbounded))?;
        let entries: Vec<_> = scan.entries.by_ref().take_while(|(k, _)| k.starts_with(prefix)).collect();
        scan.entries = entries.into_iter();
        Ok(scan)
    }

    /// A description of the store as it is now.
    pub fn info(&self) -> StoreInfo {
        let status = *lock(&self.shared.status);
        StoreInfo {
            store_id: self.shared.store_id,
            node_id: self.shared.node_id,
            epoch: self.shared.epoch(),
            segment_size: self.shared.segment_size,
            log_end: status.log_end,
            durable_end: status.durable_end,
            fingerprint: status.fingerprint,
            keys: self.shared.index.len(),
            segments: read(&self.shared.segments).len(),
            io_backend: self.shared.storage.io_backend(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Makes everything durable, records the commit position in the
    /// superblock and releases the store.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    /// Closes this store, runs `between` on its directory while no one holds
    /// it (e.g. [`crate::truncate::truncate_tail`]), then opens it again in
    /// place with `options`. If `between` or the reopening fails, the handle
    /// stays closed: every later call fails with [`Error::Closed`].
    pub fn reopen_with<T>(&mut self, options: Options, between: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
        let closed = self.shutdown();
        // Release the directory lock (the committer is gone).
        self._lock = LockGuard(Box::new(()));
        if let Err(e) = closed {
            tracing::warn!("closing the store before reopening it: {e}");
        }
        let dir = self.shared.dir.clone();
        let out = between(&dir)?;
        *self = Store::open(&dir, Options { create_if_missing: false, ..options })?;
        Ok(out)
    }

    /// [`Store::close`] for a store that cannot be moved out of where it is
    /// held (e.g. through `Arc::get_mut`). Every later call on this handle
    /// fails with [`Error::Closed`]; the directory stays locked until the
    /// handle is dropped.
    pub fn shutdown(&mut self) -> Result<()> {
        self.tx = None;
        match self.committer.take() {
            Some(handle) => {
                handle.join().map_err(|_| Error::Poisoned { reason: "the committer thread panicked".into() })?
            }
            None => Ok(()),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!("closing the store failed: {e}");
        }
    }
}

impl Shared {
    pub(crate) fn epoch(&self) -> u64 {
        lock(&self.epochs).0.last().map_or(1, |e| e.epoch)
    }

    fn read_value(&self, key: &[u8], loc: Loc) -> Result<Bytes> {
        // Paths are only built for errors: this is the hot read path.
        let path = || files::segment_path(&self.dir, loc.segment);
        let corrupt = |reason: Corruption| Error::corruption(path(), loc.offset, reason);
        let io = |e| Error::Io { context: format!("reading {}", path().display()), source: e };
        let segment =
            read(&self.segments).get(&loc.segment).cloned().ok_or_else(|| corrupt(Corruption::WrongRecord))?;
        let mut bytes = segment.read(loc.offset, loc.len as usize).map_err(io)?;
        if bytes.first() == Some(&0) {
            // Not a record (kinds start at 1): a buffered write whose block is
            // still in memory. If it was written out meanwhile, it is in the
            // file now: the flush holds the open block's lock until it is.
            bytes = match lock(&self.open_block).as_ref().and_then(|block| block.record(&loc)) {
                Some(record) => Bytes::from(record),
                None => segment.read(loc.offset, loc.len as usize).map_err(io)?,
            };
        }
        let (record, _) = decode_record(&bytes, self.record_seed).map_err(|e| corrupt(e.into()))?;
        if record.key != key || record.kind != RECORD_KIND_PUT {
            return Err(corrupt(Corruption::WrongRecord));
        }
        Ok(bytes.slice(format::RECORD_HEADER_LEN + key.len()..))
    }
}

/// An open segment file, memory-mapped where the storage allows.
#[derive(Debug, Clone)]
pub(crate) struct SegmentFile {
    pub file: Arc<dyn StorageFile>,
    map: Option<Bytes>,
    /// The log position where the segment's data area starts.
    pub first_position: u64,
    /// The log fingerprint at `first_position` (from the segment header).
    pub start_fingerprint: Fingerprint,
}

impl SegmentFile {
    pub(crate) fn new(file: Arc<dyn StorageFile>, first_position: u64, start_fingerprint: Fingerprint) -> SegmentFile {
        let map = file.map();
        SegmentFile { file, map, first_position, start_fingerprint }
    }

    /// `len` bytes at `offset`: a slice of the map (no copy, no system
    /// call), or read from the file.
    pub(crate) fn read(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        if let Some(map) = &self.map {
            let start = usize::try_from(offset).unwrap_or(usize::MAX);
            return match start.checked_add(len).filter(|&end| end <= map.len()) {
                Some(end) => Ok(map.slice(start..end)),
                None => Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past the end of the segment")),
            };
        }
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    }
}

/// The result of [`Store::scan`]: an ordered snapshot of keys whose values
/// are read (and verified) as the iterator advances.
#[derive(Debug)]
pub struct Scan {
    shared: Arc<Shared>,
    entries: std::vec::IntoIter<(Bytes, Loc)>,
}

impl Iterator for Scan {
    type Item = Result<(Bytes, Bytes)>;

    fn next(&mut self) -> Option<Self::Item> {
        let (key, loc) = self.entries.next()?;
        Some(self.shared.read_value(&key, loc).map(|value| (key, value)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.entries.size_hint()
    }
}

fn as_bytes<K: AsRef<[u8]>>(bound: Bound<&K>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(k) => Bound::Included(k.as_ref()),
        Bound::Excluded(k) => Bound::Excluded(k.as_ref()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// Exports the bytes of a torn tail to `recovered/` and zeroes them.
fn repair_torn_tail(storage: &dyn Storage, dir: &Path, tail: &TornTail) -> Result<()> {
    let file =
        storage.open(&tail.path, OpenMode::ReadWrite).map_err(Error::io(format!("opening {}", tail.path.display())))?;
    let mut bytes = vec![0u8; tail.len as usize];
    file.read_exact_at(&mut bytes, tail.file_offset).map_err(Error::io(format!("reading {}", tail.path.display())))?;
    let recovered = dir.join("recovered");
    storage.create_dir_all(&recovered).map_err(Error::io(format!("creating {}", recovered.display())))?;
    // Never overwrite an earlier export: each gets its own file.
    let mut export = recovered.join(format!("torn-tail-segment-{}-position-{}.bin", tail.segment, tail.position));
    let mut n = 1;
    while storage.exists(&export).map_err(Error::io("checking the export file"))? {
        export = recovered.join(format!("torn-tail-segment-{}-position-{}.{n}.bin", tail.segment, tail.position));
        n += 1;
    }
    let out =
        storage.open(&export, OpenMode::CreateNew).map_err(Error::io(format!("creating {}", export.display())))?;
    out.write_all_at(&bytes, 0)
        .and_then(|()| out.sync_data())
        .and_then(|()| storage.sync_dir(&recovered))
        .map_err(Error::io(format!("writing {}", export.display())))?;
    bytes.fill(0);
    file.write_all_at(&bytes, tail.file_offset)
        .and_then(|()| file.sync_data())
        .map_err(Error::io(format!("truncating {}", tail.path.display())))?;
    tracing::warn!(
        "truncated a torn tail of {} bytes at log position {} ({} offset {}: {}); the bytes were saved to {}",
        tail.len,
        tail.position,
        tail.path.display(),
        tail.file_offset,
        tail.reason,
        export.display()
    );
    Ok(())
}
