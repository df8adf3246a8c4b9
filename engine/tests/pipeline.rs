//! The committer keeps several commit blocks in flight: it submits the next
//! block while earlier ones are still being written and synced, answers
//! writers strictly in log order, publishes nothing before it is durable,
//! and fails every later waiter when an earlier block fails.

mod common;

use std::io;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{sleep, JoinHandle};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{small_options, WrapStorage};
use lockstep_engine::storage::{PendingIo, StorageFile, SyncTicket};
use lockstep_engine::{Error, Options, Store};

/// The syncs submitted so far, each released by the test with its result;
/// and, optionally, a gate the next submission waits at.
#[derive(Debug, Default)]
struct Gates {
    syncs: Mutex<Vec<Sender<io::Result<()>>>>,
    hold_next_submit: Mutex<Option<Receiver<()>>>,
}

impl Gates {
    fn submitted(&self) -> usize {
        self.syncs.lock().expect("lock").len()
    }
    fn release(&self, n: usize, result: io::Result<()>) {
        self.syncs.lock().expect("lock")[n].send(result).expect("the ticket is waiting");
    }
    fn wait_for_submissions(&self, n: usize) {
        let start = Instant::now();
        while self.submitted() < n {
            assert!(start.elapsed() < Duration::from_secs(10), "only {} of {n} blocks submitted", self.submitted());
            sleep(Duration::from_millis(1));
        }
    }
}

#[derive(Debug)]
struct GatedFile {
    inner: Arc<dyn StorageFile>,
    gates: Arc<Gates>,
}

struct GatedSync {
    inner: Arc<dyn StorageFile>,
    released: Receiver<io::Result<()>>,
}

impl PendingIo for GatedSync {
    fn wait(self: Box<Self>) -> io::Result<()> {
        // A test that failed never releases it: give up rather than hang.
        self.released.recv_timeout(Duration::from_secs(10)).map_err(|_| io::Error::other("never released"))??;
        self.inner.sync_data()
    }
}

impl StorageFile for GatedFile {
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
        self.inner.sync_data()
    }
    fn submit_write_and_sync(&self, buf: Bytes, off: u64) -> SyncTicket {
        if let Err(e) = self.inner.write_all_at(&buf, off) {
            return SyncTicket::done(Err(e));
        }
        let (tx, released) = channel();
        self.gates.syncs.lock().expect("lock").push(tx);
        let hold = self.gates.hold_next_submit.lock().expect("lock").take();
        if let Some(gate) = hold {
            let _ = gate.recv();
        }
        SyncTicket::pending(Box::new(GatedSync { inner: self.inner.clone(), released }))
    }
}

fn gated_store(dir: &std::path::Path) -> (Arc<Store>, Arc<Gates>, Sender<()>) {
    let gates = Arc::new(Gates::default());
    let (go, gate) = channel();
    *gates.hold_next_submit.lock().expect("lock") = Some(gate);
    let g = gates.clone();
    let wrap = move |inner| Arc::new(GatedFile { inner, gates: g.clone() }) as Arc<dyn StorageFile>;
    let options = Options { storage: Arc::new(WrapStorage(wrap)), ..small_options() };
    (Arc::new(Store::open(dir, options).expect("open")), gates, go)
}

fn put_in_background(store: &Arc<Store>, key: &'static str) -> JoinHandle<Result<(), Error>> {
    let store = store.clone();
    std::thread::spawn(move || store.put(key, "v"))
}

/// Puts "a" and then "b" so that both blocks are in flight at once: the
/// first submission is held until "b" waits in the committer's queue.
fn two_blocks_in_flight(store: &Arc<Store>, gates: &Gates, go: &Sender<()>) -> [JoinHandle<Result<(), Error>>; 2] {
    let a = put_in_background(store, "a");
    gates.wait_for_submissions(1);
    let b = put_in_background(store, "b");
    sleep(Duration::from_millis(100)); // "b" reaches the queue
    go.send(()).expect("release the first submission");
    gates.wait_for_submissions(2);
    [a, b]
}

#[test]
fn writers_are_answered_in_log_order_once_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, gates, go) = gated_store(dir.path());
    let [a, b] = two_blocks_in_flight(&store, &gates, &go);

    // The later block's sync finishes first: its writer must still wait.
    gates.release(1, Ok(()));
    sleep(Duration::from_millis(50));
    assert!(!b.is_finished(), "a write was acknowledged before an earlier block was durable");
    assert_eq!(store.get("b").expect("get"), None, "visible before every earlier block was durable");
    assert_eq!(store.get("a").expect("get"), None, "visible before durable");

    gates.release(0, Ok(()));
    a.join().expect("writer a").expect("put a");
    b.join().expect("writer b").expect("put b");
    assert_eq!(store.get("a").expect("get").as_deref(), Some(&b"v"[..]));
    assert_eq!(store.get("b").expect("get").as_deref(), Some(&b"v"[..]));
}

#[test]
fn a_durable_block_does_not_answer_the_writers_of_later_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, gates, go) = gated_store(dir.path());
    let [a, b] = two_blocks_in_flight(&store, &gates, &go);

    gates.release(0, Ok(()));
    a.join().expect("writer a").expect("put a");
    assert_eq!(store.get("a").expect("get").as_deref(), Some(&b"v"[..]));
    sleep(Duration::from_millis(50));
    assert!(!b.is_finished(), "a write was acknowledged before its own block was durable");
    assert_eq!(store.get("b").expect("get"), None, "visible before durable");

    gates.release(1, Ok(()));
    b.join().expect("writer b").expect("put b");
    assert_eq!(store.get("b").expect("get").as_deref(), Some(&b"v"[..]));
}

#[test]
fn a_failed_block_fails_every_block_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, gates, go) = gated_store(dir.path());
    let [a, b] = two_blocks_in_flight(&store, &gates, &go);

    gates.release(1, Ok(()));
    gates.release(0, Err(io::Error::other("injected fsync failure")));
    for (name, writer) in [("a", a), ("b", b)] {
        let err = writer.join().expect("writer").expect_err("its block or an earlier one failed");
        assert!(matches!(&err, Error::Poisoned { reason } if reason.contains("injected fsync failure")), "{err:?}");
        assert_eq!(store.get(name).expect("get"), None, "{name}: a failed write must not be visible");
    }
    assert!(matches!(store.put("c", "v"), Err(Error::Poisoned { .. })));
}
