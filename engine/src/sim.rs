//! A simulated, seeded file system for fault-injection tests: what the
//! engine writes lives in memory, every write since a file's last
//! `sync_data` is *unsynced*, and [`SimStorage::crash`] decides per 512-byte
//! sector whether each unsynced write reached the disk — all of it, none of
//! it, or a torn mix — the way a power cut can. It can also fail the next
//! write or fsync (after a failed fsync the file's unsynced data is gone,
//! as on Linux), run out of space, and flip bits in stored data.
//!
//! Directory operations (create, rename, remove) are durable at once: the
//! engine syncs its directory after each of them, so the model keeps only
//! what it needs for data. Everything is deterministic for a given seed.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::storage::{LockOutcome, OpenMode, Storage, StorageFile};

/// The unit a torn write is torn at.
pub const SECTOR: usize = 512;

/// The simulations' random numbers: xorshift64*, small, fast and the same
/// on every machine for a given seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `per_mille` / 1000.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

#[derive(Debug, Default, Clone)]
struct SimFile {
    /// What a crash keeps for sure.
    durable: Vec<u8>,
    /// What reads see.
    current: Vec<u8>,
    /// Writes since the last sync, oldest first (offset, bytes).
    unsynced: Vec<(u64, Vec<u8>)>,
}

/// Faults to inject, counted down by the operations they name.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Fail the write after this many more writes succeed.
    pub fail_write_after: Option<u64>,
    /// Fail the fsync after this many more fsyncs succeed.
    pub fail_sync_after: Option<u64>,
    /// Total bytes the disk holds; writes past it fail with "no space".
    pub capacity: Option<u64>,
    /// Cut the power during the write after this many more writes: that
    /// write and every unsynced one before it are kept, lost or torn.
    pub crash_at_write_after: Option<u64>,
}

#[derive(Debug)]
struct State {
    /// Files by inode number; `names` maps paths to them, so an open handle
    /// follows its file across a rename, as on POSIX.
    files: BTreeMap<u64, SimFile>,
    names: BTreeMap<PathBuf, u64>,
    next_inode: u64,
    dirs: BTreeSet<PathBuf>,
    locks: BTreeSet<PathBuf>,
    rng: Rng,
    faults: Faults,
    /// Set by a crash: handles from before it fail every operation.
    generation: u64,
    /// What happened, when tracing (see [`SimStorage::trace`]).
    trace: Option<Vec<String>>,
}

impl State {
    /// See [`SimStorage::crash`].
    fn crash(&mut self) -> usize {
        self.note(|| "crash".into());
        self.generation += 1;
        self.locks.clear();
        // Files no name points to are gone.
        let named: BTreeSet<u64> = self.names.values().copied().collect();
        self.files.retain(|ino, _| named.contains(ino));
        let inodes: Vec<u64> = self.files.keys().copied().collect();
        let mut pending = 0;
        for ino in inodes {
            let Some(mut file) = self.files.remove(&ino) else { continue };
            let mut image = file.durable.clone();
            for (off, bytes) in file.unsynced.drain(..) {
                pending += 1;
                let mode = self.rng.next_u64() % 3; // 0: lost, 1: kept, 2: torn
                for (i, chunk) in bytes.chunks(SECTOR).enumerate() {
                    if mode == 0 || (mode == 2 && self.rng.next_u64().is_multiple_of(2)) {
                        continue;
                    }
                    let at = off as usize + i * SECTOR;
                    if image.len() < at + chunk.len() {
                        image.resize(at + chunk.len(), 0);
                    }
                    image[at..at + chunk.len()].copy_from_slice(chunk);
                }
            }
            file.durable = image.clone();
            file.current = image;
            self.files.insert(ino, file);
        }
        pending
    }

    fn note(&mut self, event: impl FnOnce() -> String) {
        if let Some(trace) = &mut self.trace {
            trace.push(event());
        }
    }

    fn file(&self, path: &Path) -> io::Result<&SimFile> {
        self.names.get(path).and_then(|ino| self.files.get(ino)).ok_or_else(|| not_found(path))
    }

    fn used(&self) -> u64 {
        self.files.values().map(|f| f.current.len() as u64).sum()
    }
}

/// The simulated storage; clone it to share (clones see the same disk).
///
/// Give a store [`SimStorage::machine`], not the handle the test keeps: a
/// crash stops that machine — its threads (a committer, a segment being
/// prepared) can no longer create, rename or write anything, as after a
/// real power cut — while the test's handle goes on working.
#[derive(Debug, Clone)]
pub struct SimStorage {
    state: Arc<Mutex<State>>,
    /// The machine generation this handle belongs to (`None`: the test's).
    machine: Option<u64>,
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file (simulated)", path.display()))
}

fn gone() -> io::Error {
    io::Error::other("the simulated machine crashed; this handle is gone")
}

impl SimStorage {
    pub fn new(seed: u64) -> SimStorage {
        let state = Arc::new(Mutex::new(State {
            files: BTreeMap::new(),
            names: BTreeMap::new(),
            next_inode: 1,
            dirs: BTreeSet::new(),
            locks: BTreeSet::new(),
            rng: Rng(seed | 1),
            faults: Faults::default(),
            generation: 0,
            trace: None,
        }));
        SimStorage { state, machine: None }
    }

    /// A handle for the machine as it runs now: after the next crash every
    /// operation through it fails. Open stores with this one.
    pub fn machine(&self) -> SimStorage {
        SimStorage { state: self.state.clone(), machine: Some(lock(&self.state).generation) }
    }

    /// The state, unless this handle's machine has crashed since.
    fn live(&self) -> io::Result<std::sync::MutexGuard<'_, State>> {
        let s = lock(&self.state);
        match self.machine {
            Some(generation) if generation != s.generation => Err(gone()),
            _ => Ok(s),
        }
    }

    pub fn set_faults(&self, faults: Faults) {
        lock(&self.state).faults = faults;
    }

    /// A power cut: every unsynced write is kept, lost or torn (per sector,
    /// at random), locks are released, and every open handle stops working.
    /// Returns how many unsynced writes there were.
    pub fn crash(&self) -> usize {
        lock(&self.state).crash()
    }

    /// How many crashes there were (a power cut set up with
    /// [`Faults::crash_at_write_after`] counts once it happened).
    pub fn crashes(&self) -> u64 {
        lock(&self.state).generation
    }

    /// Flips bit `bit` of the byte at `offset` in `path` (durably).
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) -> io::Result<()> {
        let mut s = lock(&self.state);
        let ino = *s.names.get(path).ok_or_else(|| not_found(path))?;
        let file = s.files.get_mut(&ino).ok_or_else(|| not_found(path))?;
        let at = offset as usize;
        if at >= file.current.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "offset past the end of the file"));
        }
        file.current[at] ^= 1 << (bit % 8);
        if at < file.durable.len() {
            file.durable[at] ^= 1 << (bit % 8);
        }
        Ok(())
    }

    /// Starts recording every operation (`Some`), or returns and clears
    /// the record; a failing test prints it.
    pub fn trace(&self, start: bool) -> Vec<String> {
        let mut s = lock(&self.state);
        let old = s.trace.take().unwrap_or_default();
        s.trace = start.then(Vec::new);
        old
    }

    /// Bytes currently in `path`.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        lock(&self.state).file(path).ok().map(|f| f.current.clone())
    }
}

#[derive(Debug)]
struct SimHandle {
    state: Arc<Mutex<State>>,
    inode: u64,
    path: PathBuf,
    generation: u64,
    writable: bool,
}

impl SimHandle {
    fn with<T>(&self, op: &str, f: impl FnOnce(&mut State) -> io::Result<T>) -> io::Result<T> {
        let mut s = lock(&self.state);
        let result = if s.generation != self.generation { Err(gone()) } else { f(&mut s) };
        s.note(|| {
            let thread = std::thread::current();
            let outcome = result.as_ref().err().map(|e| format!(": {e}")).unwrap_or_default();
            format!("{} {op} {}{outcome} [{}]", self.path.display(), self.generation, thread.name().unwrap_or("?"))
        });
        result
    }

    fn file<'a>(&self, s: &'a mut State) -> io::Result<&'a mut SimFile> {
        s.files.get_mut(&self.inode).ok_or_else(|| not_found(&self.path))
    }
}

fn count_down(counter: &mut Option<u64>) -> bool {
    match counter {
        Some(0) => {
            *counter = None;
            true
        }
        Some(n) => {
            *n -= 1;
            false
        }
        None => false,
    }
}

impl StorageFile for SimHandle {
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.with("read", |s| {
            let file = self.file(s)?;
            let at = off as usize;
            let src = file
                .current
                .get(at..at + buf.len())
                .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the file"))?;
            buf.copy_from_slice(src);
            Ok(())
        })
    }

    fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "opened read-only"));
        }
        self.with(&format!("write {off}+{}", buf.len()), |s| {
            if count_down(&mut s.faults.fail_write_after) {
                return Err(io::Error::other("simulated write failure"));
            }
            if count_down(&mut s.faults.crash_at_write_after) {
                // The write was under way: it joins the unsynced ones.
                if let Ok(file) = self.file(s) {
                    file.unsynced.push((off, buf.to_vec()));
                }
                s.crash();
                return Err(gone());
            }
            let grows = (off as usize + buf.len()).saturating_sub(self.file(s)?.current.len()) as u64;
            if s.faults.capacity.is_some_and(|cap| s.used() + grows > cap) {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "no space left on the simulated disk"));
            }
            let file = self.file(s)?;
            let end = off as usize + buf.len();
            if file.current.len() < end {
                file.current.resize(end, 0);
            }
            file.current[off as usize..end].copy_from_slice(buf);
            file.unsynced.push((off, buf.to_vec()));
            Ok(())
        })
    }

    fn len(&self) -> io::Result<u64> {
        self.with("len", |s| Ok(self.file(s)?.current.len() as u64))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(&format!("set_len {len}"), |s| {
            let grows = len.saturating_sub(self.file(s)?.current.len() as u64);
            if s.faults.capacity.is_some_and(|cap| s.used() + grows > cap) {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "no space left on the simulated disk"));
            }
            let file = self.file(s)?;
            // Length changes are metadata: durable at once, like directory operations.
            file.current.resize(len as usize, 0);
            file.durable.resize(len as usize, 0);
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with("sync", |s| {
            let failed = count_down(&mut s.faults.fail_sync_after);
            let file = self.file(s)?;
            if failed {
                // As Linux does: the unsynced pages are dropped, not retried.
                file.unsynced.clear();
                file.current = file.durable.clone();
                return Err(io::Error::other("simulated fsync failure"));
            }
            file.unsynced.clear();
            file.durable = file.current.clone();
            Ok(())
        })
    }
}

impl Storage for SimStorage {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn StorageFile>> {
        let mut s = self.live()?;
        let inode = match (mode, s.names.get(path).copied()) {
            (OpenMode::CreateNew, Some(_)) => {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists", path.display())))
            }
            (OpenMode::CreateNew, None) => {
                s.note(|| format!("create {}", path.display()));
                let ino = s.next_inode;
                s.next_inode += 1;
                s.files.insert(ino, SimFile::default());
                s.names.insert(path.to_path_buf(), ino);
                ino
            }
            (_, Some(ino)) => ino,
            (_, None) => return Err(not_found(path)),
        };
        Ok(Arc::new(SimHandle {
            state: self.state.clone(),
            inode,
            path: path.to_path_buf(),
            generation: s.generation,
            writable: mode != OpenMode::Read,
        }))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let s = self.live()?;
        Ok(s.names
            .keys()
            .chain(s.dirs.iter())
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.live()?;
        for ancestor in dir.ancestors() {
            s.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.live()?;
        s.note(|| format!("rename {} -> {}", from.display(), to.display()));
        let ino = s.names.remove(from).ok_or_else(|| not_found(from))?;
        s.names.insert(to.to_path_buf(), ino);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.live()?.names.remove(path).map(|_| ()).ok_or_else(|| not_found(path))
    }

    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let s = self.live()?;
        Ok(s.names.contains_key(path) || s.dirs.contains(path))
    }

    fn try_lock(&self, path: &Path, owner: &str) -> io::Result<LockOutcome> {
        let mut s = self.live()?;
        if !s.locks.insert(path.to_path_buf()) {
            return Ok(LockOutcome::HeldBy(format!("another handle in this simulation ({owner} asked)")));
        }
        Ok(LockOutcome::Acquired(Box::new(SimLock {
            state: self.state.clone(),
            path: path.to_path_buf(),
            generation: s.generation,
        })))
    }

    fn io_backend(&self) -> &'static str {
        "sim"
    }
}

/// Holds a simulated directory lock until dropped.
struct SimLock {
    state: Arc<Mutex<State>>,
    path: PathBuf,
    generation: u64,
}

impl Drop for SimLock {
    fn drop(&mut self) {
        let mut s = lock(&self.state);
        // A crash already released it (and someone may hold it again).
        if s.generation == self.generation {
            s.locks.remove(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(sim: &SimStorage, name: &str) -> Arc<dyn StorageFile> {
        sim.open(Path::new(name), OpenMode::CreateNew).expect("create")
    }

    #[test]
    fn synced_data_survives_a_crash_and_unsynced_data_may_not() {
        let sim = SimStorage::new(7);
        let f = file(&sim, "/a");
        f.write_all_at(&[1u8; 1024], 0).expect("write");
        f.sync_data().expect("sync");
        f.write_all_at(&[2u8; 4096], 1024).expect("write");
        assert_eq!(sim.crash(), 1);
        let after = sim.contents(Path::new("/a")).expect("file");
        assert_eq!(&after[..1024], &[1u8; 1024][..]);
        // Every sector of the unsynced write is either all new or all old.
        for sector in after[1024..].chunks(SECTOR) {
            assert!(sector.iter().all(|&b| b == 2) || sector.iter().all(|&b| b == 0), "{sector:?}");
        }
        assert!(f.read_exact_at(&mut [0u8; 1], 0).is_err(), "a handle from before the crash still works");
    }

    #[test]
    fn a_crashed_machine_can_do_nothing_more_but_the_test_can() {
        let sim = SimStorage::new(3);
        let machine = sim.machine();
        machine.open(Path::new("/a"), OpenMode::CreateNew).expect("create");
        sim.crash();
        assert!(machine.open(Path::new("/b"), OpenMode::CreateNew).is_err());
        assert!(machine.rename(Path::new("/a"), Path::new("/c")).is_err());
        assert!(sim.open(Path::new("/b"), OpenMode::CreateNew).is_ok());
        assert!(sim.machine().open(Path::new("/a"), OpenMode::ReadWrite).is_ok(), "a restarted machine works");
    }

    #[test]
    fn crashes_keep_lose_and_tear_depending_on_the_seed() {
        let mut outcomes = BTreeSet::new();
        for seed in 0..64 {
            let sim = SimStorage::new(seed);
            let f = file(&sim, "/a");
            f.write_all_at(&[9u8; 4 * SECTOR], 0).expect("write");
            sim.crash();
            let after = sim.contents(Path::new("/a")).expect("file");
            let kept = after.chunks(SECTOR).filter(|s| s.first() == Some(&9)).count();
            outcomes.insert(match kept {
                0 => "lost",
                4 => "kept",
                _ => "torn",
            });
        }
        assert_eq!(outcomes.len(), 3, "{outcomes:?}");
    }

    #[test]
    fn a_failed_fsync_drops_unsynced_data_and_full_disks_refuse_writes() {
        let sim = SimStorage::new(1);
        let f = file(&sim, "/a");
        f.write_all_at(b"durable", 0).expect("write");
        f.sync_data().expect("sync");
        f.write_all_at(b"DURABLE", 0).expect("write");
        sim.set_faults(Faults { fail_sync_after: Some(0), ..Faults::default() });
        assert!(f.sync_data().is_err());
        let mut buf = [0u8; 7];
        f.read_exact_at(&mut buf, 0).expect("read");
        assert_eq!(&buf, b"durable", "data that failed to sync is still returned");

        sim.set_faults(Faults { capacity: Some(100), ..Faults::default() });
        let err = f.write_all_at(&[0u8; 200], 0).expect_err("beyond capacity");
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        sim.set_faults(Faults { fail_write_after: Some(1), ..Faults::default() });
        f.write_all_at(b"x", 0).expect("first write");
        assert!(f.write_all_at(b"y", 0).is_err());
    }
}
