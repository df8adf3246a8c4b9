//! Injected I/O faults through the storage trait: a failed fsync poisons the
//! store, nothing unsynced is acknowledged, and reopening recovers.

mod common;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::{small_options, WrapStorage};
use lockstep_engine::storage::StorageFile;
use lockstep_engine::{Error, Options, Store};

/// Real files, with fsyncs counted and optionally failing.
#[derive(Debug, Default)]
struct Faulty {
    fail_sync: AtomicBool,
    syncs: AtomicUsize,
}

#[derive(Debug)]
struct FaultyFile {
    inner: Arc<dyn StorageFile>,
    faults: Arc<Faulty>,
}

impl StorageFile for FaultyFile {
    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, off)
    }
    fn write_all_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, off)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        if self.faults.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected fsync failure"));
        }
        self.faults.syncs.fetch_add(1, Ordering::SeqCst);
        self.inner.sync_data()
    }
}

fn faulty_options(faults: &Arc<Faulty>) -> Options {
    let faults = faults.clone();
    let wrap = move |inner| Arc::new(FaultyFile { inner, faults: faults.clone() }) as Arc<dyn StorageFile>;
    Options { storage: Arc::new(WrapStorage(wrap)), ..small_options() }
}

#[test]
fn failed_fsync_poisons_the_store_until_reopened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Arc::new(Faulty::default());
    let store = Store::open(dir.path(), faulty_options(&faults)).expect("open");
    store.put("durable", "yes").expect("put");
    faults.fail_sync.store(true, Ordering::SeqCst);
    let err = store.put("lost", "never acknowledged").expect_err("fsync failed");
    assert!(matches!(&err, Error::Poisoned { reason } if reason.contains("injected fsync failure")), "{err:?}");
    assert_eq!(store.get("lost").expect("get"), None, "an unacknowledged write must not be visible");
    // Healthy again, but a failed fsync is final: no more writes.
    faults.fail_sync.store(false, Ordering::SeqCst);
    assert!(matches!(store.put("after", "x"), Err(Error::Poisoned { .. })));
    assert!(matches!(store.sync(), Err(Error::Poisoned { .. })));
    assert!(matches!(store.close(), Err(Error::Poisoned { .. })));

    let store = Store::open(dir.path(), faulty_options(&faults)).expect("reopen recovers");
    assert_eq!(store.get("durable").expect("get").as_deref(), Some(&b"yes"[..]));
    store.put("after", "x").expect("writes work after reopening");
}

#[test]
fn concurrent_sync_writers_share_fsyncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Arc::new(Faulty::default());
    let store = Arc::new(Store::open(dir.path(), faulty_options(&faults)).expect("open"));
    let before = faults.syncs.load(Ordering::SeqCst);
    let writers: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    store.put(format!("{t}/{i}"), "v").expect("put");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    let syncs = faults.syncs.load(Ordering::SeqCst) - before;
    assert!(syncs < 400, "400 durable writes took {syncs} fsyncs: group commit is not grouping");
    assert_eq!(store.info().keys, 400);
}
