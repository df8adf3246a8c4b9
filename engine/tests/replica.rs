//! The engine's replication hooks: a second store fed with the blocks read
//! from a first ends up with byte-identical segment files, the same
//! fingerprint and the same data; a block that does not continue the log or
//! fails verification is refused and changes nothing.

mod common;

use std::path::Path;

use common::{open_small, small_options};
use lockstep_engine::{Error, LogBlock, Options, Store, WriteBatch};

/// A store bound to `primary`'s store id, empty.
fn second_site(primary: &Store, dir: &Path) -> Store {
    let options = Options { store_id: Some(primary.info().store_id), ..small_options() };
    Store::open(dir, options).expect("open second site")
}

/// Writes enough records to fill several small segments.
fn fill(store: &Store, from: usize, to: usize) {
    for i in from..to {
        let mut batch = WriteBatch::new();
        batch.put(format!("key/{i:05}"), vec![i as u8; 700]);
        if i % 7 == 0 {
            batch.delete(format!("key/{:05}", i / 2));
        }
        store.write(batch).expect("write");
    }
}

/// Ships every block from `from` to the end of `primary` into `secondary`.
fn ship_all(primary: &Store, secondary: &Store) {
    loop {
        let from = secondary.info().durable_end;
        let blocks = primary.read_blocks(from, 64 << 10).expect("read blocks");
        if blocks.is_empty() {
            return;
        }
        for block in blocks {
            secondary.append_replicated(block).expect("append replicated block");
        }
    }
}

fn segment_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry"))
        .filter(|e| e.file_name().to_string_lossy().starts_with("segment-"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).expect("read segment")))
        .collect();
    files.sort();
    files
}

#[test]
fn a_replicated_log_is_byte_identical_and_readable() {
    let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let primary = open_small(a.path());
    let secondary = second_site(&primary, b.path());
    fill(&primary, 0, 150);
    ship_all(&primary, &secondary);
    fill(&primary, 150, 300);
    ship_all(&primary, &secondary);

    let (p, s) = (primary.info(), secondary.info());
    assert!(p.segments >= 3, "the test must cross segment boundaries ({} segments)", p.segments);
    assert_eq!((s.log_end, s.fingerprint, s.segments, s.keys), (p.log_end, p.fingerprint, p.segments, p.keys));
    let expected: Vec<_> = primary.scan_prefix("").expect("scan").map(|r| r.expect("item")).collect();
    let replicated: Vec<_> = secondary.scan_prefix("").expect("scan").map(|r| r.expect("item")).collect();
    assert_eq!(replicated, expected);
    assert_eq!(secondary.fingerprint_at(p.log_end).expect("fingerprint"), Some(p.fingerprint));

    primary.close().expect("close");
    secondary.close().expect("close");
    let (pa, sb) = (segment_files(a.path()), segment_files(b.path()));
    assert_eq!(pa.len(), sb.len());
    for ((name_a, bytes_a), (name_b, bytes_b)) in pa.iter().zip(&sb) {
        assert_eq!(name_a, name_b);
        assert!(bytes_a == bytes_b, "{name_a} differs between the two sites");
    }
    // And the copy reopens, with the same end.
    let reopened = open_small(b.path());
    assert_eq!(reopened.info().fingerprint, p.fingerprint);
}

#[test]
fn fingerprint_at_knows_every_block_boundary_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_small(dir.path());
    assert_eq!(store.fingerprint_at(0).expect("genesis"), Some(store.info().fingerprint));
    fill(&store, 0, 150);
    let blocks = store.read_blocks(0, usize::MAX).expect("read all");
    let end: u64 = blocks.iter().map(|b| b.bytes.len() as u64).sum();
    assert_eq!(end, store.info().durable_end);
    // A replay of the first blocks gives the fingerprint at each boundary.
    let replica_dir = tempfile::tempdir().expect("tempdir");
    let replica = second_site(&store, replica_dir.path());
    for block in blocks.iter().take(40) {
        replica.append_replicated(block.clone()).expect("append");
        let info = replica.info();
        assert_eq!(store.fingerprint_at(info.log_end).expect("lookup"), Some(info.fingerprint));
    }
    assert_eq!(store.fingerprint_at(blocks[1].position + 8).expect("lookup"), None, "not a block boundary");
    assert_eq!(store.fingerprint_at(end + 1).expect("lookup"), None, "beyond the end");
}

#[test]
fn blocks_that_do_not_continue_the_log_are_refused_and_change_nothing() {
    let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let primary = open_small(a.path());
    let secondary = second_site(&primary, b.path());
    fill(&primary, 0, 20);
    let blocks = primary.read_blocks(0, usize::MAX).expect("read");
    let refused = |block: LogBlock, what: &str| {
        let before = secondary.info();
        match secondary.append_replicated(block) {
            Err(Error::BadBlock { reason, .. }) => assert!(reason.contains(what), "{reason}"),
            other => panic!("expected a refusal naming {what:?}, got {other:?}"),
        }
        let after = secondary.info();
        assert_eq!((after.log_end, after.fingerprint, after.keys), (before.log_end, before.fingerprint, before.keys));
    };

    refused(blocks[1].clone(), "blocks must arrive in order");
    let mut flipped = blocks[0].clone();
    let mut bytes = flipped.bytes.to_vec();
    bytes[60] ^= 1;
    flipped.bytes = bytes.into();
    refused(flipped, "failed verification");
    let mut wrong_segment = blocks[0].clone();
    wrong_segment.segment += 5;
    refused(wrong_segment, "the active segment is");
    let mut padded = blocks[0].clone();
    padded.bytes = [&blocks[0].bytes[..], &[0u8; 8]].concat().into();
    refused(padded, "its header says");

    // A block of another store with the same shape: the seeded checksums fail.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = open_small(other_dir.path());
    fill(&other, 0, 1);
    refused(other.read_blocks(0, 1).expect("read").remove(0), "failed verification");

    // None of that poisoned the store: the right block is still taken.
    secondary.append_replicated(blocks[0].clone()).expect("the right block");
    assert_eq!(secondary.info().log_end, blocks[0].position + blocks[0].bytes.len() as u64);
}

#[test]
fn a_store_receiving_a_replicated_log_reads_what_it_holds() {
    let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let primary = open_small(a.path());
    let secondary = second_site(&primary, b.path());
    primary.put("patient/17", "allergy: penicillin").expect("put");
    ship_all(&primary, &secondary);
    assert_eq!(secondary.get("patient/17").expect("get").as_deref(), Some(&b"allergy: penicillin"[..]));
    assert!(primary.read_blocks(primary.info().durable_end + 1, 1).is_err(), "beyond the durable end");
}

/// A replica that records shipped blocks and acknowledges only what the
/// test released (or fails every wait once told to).
#[derive(Debug, Default)]
struct GatedReplica {
    state: std::sync::Mutex<Gate>,
    changed: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct Gate {
    shipped: Vec<LogBlock>,
    released: u64,
    fail: Option<String>,
    alone: bool,
    waker: Option<lockstep_engine::ReplicaWaker>,
}

impl lockstep_engine::Replica for GatedReplica {
    fn ship(&self, block: &LogBlock) {
        self.state.lock().expect("gate").shipped.push(block.clone());
        self.changed.notify_all();
    }
    fn wait_replicated(&self, end: u64) -> Result<lockstep_engine::Replicated, String> {
        let mut state = self.state.lock().expect("gate");
        loop {
            if let Some(done) = Self::check(&state, end) {
                return done;
            }
            state = self.changed.wait(state).expect("gate");
        }
    }
    fn replicated(&self, end: u64) -> Result<Option<lockstep_engine::Replicated>, String> {
        Self::check(&self.state.lock().expect("gate"), end).transpose()
    }
    fn set_waker(&self, waker: lockstep_engine::ReplicaWaker) {
        self.state.lock().expect("gate").waker = Some(waker);
    }
}

/// A store in `dir` whose replica is gated, shared for writer threads.
fn gated_store(dir: &Path) -> (std::sync::Arc<GatedReplica>, std::sync::Arc<Store>) {
    let replica = std::sync::Arc::new(GatedReplica::default());
    let options = Options { replica: Some(replica.clone()), ..small_options() };
    (replica, std::sync::Arc::new(Store::open(dir, options).expect("open")))
}

fn put_in_thread(
    store: &std::sync::Arc<Store>,
    key: &'static str,
) -> std::thread::JoinHandle<lockstep_engine::Result<()>> {
    let store = store.clone();
    std::thread::spawn(move || store.put(key, "v"))
}

impl GatedReplica {
    fn check(state: &Gate, end: u64) -> Option<Result<lockstep_engine::Replicated, String>> {
        match &state.fail {
            Some(reason) => Some(Err(reason.clone())),
            None => (state.released >= end)
                .then_some(Ok(lockstep_engine::Replicated { end: state.released, alone: state.alone })),
        }
    }
    fn update(&self, f: impl FnOnce(&mut Gate)) {
        let mut state = self.state.lock().expect("gate");
        f(&mut state);
        if let Some(waker) = &state.waker {
            waker.wake();
        }
        drop(state);
        self.changed.notify_all();
    }
    fn wait_shipped(&self, n: usize) -> Vec<LogBlock> {
        let mut state = self.state.lock().expect("gate");
        while state.shipped.len() < n {
            state = self.changed.wait(state).expect("gate");
        }
        state.shipped.clone()
    }
}

#[test]
fn a_write_is_answered_and_visible_only_once_the_replica_acknowledges_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (replica, store) = gated_store(dir.path());
    let writer = put_in_thread(&store, "k");
    let shipped = replica.wait_shipped(1);
    // Durable locally, shipped, not acknowledged: invisible and unanswered.
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(!writer.is_finished(), "the writer was answered before the replica acknowledged");
    assert_eq!(store.get("k").expect("get"), None, "a reader saw a write the replica does not have");
    let end = shipped[0].position + shipped[0].bytes.len() as u64;
    replica.update(|g| g.released = end);
    writer.join().expect("writer thread").expect("put");
    assert_eq!(store.get("k").expect("get").as_deref(), Some(&b"v"[..]));

    // The shipped blocks build a byte-identical second site.
    let second_dir = tempfile::tempdir().expect("tempdir");
    let second = second_site(&store, second_dir.path());
    for block in shipped {
        second.append_replicated(block).expect("append");
    }
    assert_eq!(second.info().fingerprint, store.info().fingerprint);
}

#[test]
fn a_failed_replication_fails_the_writer_and_poisons_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (replica, store) = gated_store(dir.path());
    let writer = put_in_thread(&store, "k");
    replica.wait_shipped(1);
    replica.update(|g| g.fail = Some("the node is shutting down".into()));
    let err = writer.join().expect("writer thread").expect_err("put must fail");
    assert!(matches!(err, Error::Poisoned { .. }), "{err}");
    assert!(err.to_string().contains("shutting down"), "{err}");
    assert_eq!(store.get("k").expect("get"), None);
    assert!(store.put("k2", "v").is_err(), "a poisoned store took a write");
}

#[test]
fn a_replicated_store_refuses_buffered_durability() {
    let dir = tempfile::tempdir().expect("tempdir");
    let replica: std::sync::Arc<dyn lockstep_engine::Replica> = std::sync::Arc::new(GatedReplica::default());
    let options =
        Options { replica: Some(replica), durability: lockstep_engine::Durability::Buffered, ..small_options() };
    let err = Store::open(dir.path(), options).expect_err("must refuse");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
}

#[test]
fn later_blocks_are_shipped_while_earlier_ones_wait_and_are_answered_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (replica, store) = gated_store(dir.path());
    let first = put_in_thread(&store, "a");
    let shipped = replica.wait_shipped(1);
    let second = put_in_thread(&store, "b");
    // The second block is built and shipped while the first still waits.
    let shipped_both = replica.wait_shipped(2);
    assert_eq!(shipped_both[0], shipped[0]);
    let end = |b: &LogBlock| b.position + b.bytes.len() as u64;
    replica.update(|g| g.released = end(&shipped_both[0]));
    first.join().expect("thread").expect("first put");
    std::thread::sleep(std::time::Duration::from_millis(30));
    assert!(!second.is_finished(), "the second write was answered before the replica had it");
    assert_eq!(store.get("b").expect("get"), None);
    replica.update(|g| g.released = end(&shipped_both[1]));
    second.join().expect("thread").expect("second put");
    assert_eq!(store.get("b").expect("get").as_deref(), Some(&b"v"[..]));
}

#[test]
fn promotion_begins_an_epoch_at_the_log_end_that_a_second_site_adopts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_small(dir.path());
    fill(&store, 0, 50);
    let end = store.info().log_end;
    assert_eq!(store.promote().expect("promote"), 2);
    assert_eq!(store.info().epoch, 2);
    let history = store.epoch_history();
    assert_eq!(history.last().map(|e| (e.epoch, e.start_position)), Some((2, end)));
    fill(&store, 50, 400); // spans segments written in epoch 2

    // A second site receives epoch-1 blocks, then epoch-2 ones, and records
    // the promotion at the same position.
    let second_dir = tempfile::tempdir().expect("tempdir");
    let second = second_site(&store, second_dir.path());
    ship_all(&store, &second);
    assert_eq!(second.epoch_history(), store.epoch_history());
    assert_eq!(second.info().fingerprint, store.info().fingerprint);
    store.close().expect("close");
    second.close().expect("close");
    assert_eq!(segment_files(dir.path()), segment_files(second_dir.path()));

    // Both keep it across a reopen.
    let reopened = open_small(second_dir.path());
    assert_eq!(reopened.info().epoch, 2);
    assert_eq!(reopened.epoch_history()[1].start_position, end);
}

#[test]
fn a_block_from_an_older_epoch_is_refused() {
    let (old_dir, new_dir) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let old = open_small(old_dir.path());
    fill(&old, 0, 10);
    let promoted = second_site(&old, new_dir.path());
    ship_all(&old, &promoted);
    promoted.promote().expect("promote");
    // The demoted primary wrote on in epoch 1; its next block must not land.
    fill(&old, 10, 11);
    let from = promoted.info().log_end;
    let block = old.read_blocks(from, 1 << 20).expect("read").remove(0);
    let err = promoted.append_replicated(block).expect_err("an older epoch's block");
    assert!(err.to_string().contains("demoted primary"), "{err}");
    assert_eq!(promoted.info().log_end, from);
}

#[test]
fn answering_alone_is_recorded_durably_until_the_peer_holds_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = std::sync::Arc::new(GatedReplica::default());
    let options = Options { replica: Some(replica.clone()), ..small_options() };
    let store = Store::open(dir.path(), options).expect("open");
    assert!(!store.unreplicated_acks());
    replica.update(|g| {
        g.released = u64::MAX;
        g.alone = true;
    });
    store.put("k", "v").expect("put answered alone");
    assert!(store.unreplicated_acks());
    drop(store);
    let reopened = Store::open(dir.path(), small_options()).expect("reopen");
    assert!(reopened.unreplicated_acks(), "the flag did not survive a reopen");
    drop(reopened);

    let options = Options { replica: Some(replica.clone()), ..small_options() };
    let store = Store::open(dir.path(), options).expect("open");
    replica.update(|g| g.alone = false);
    store.put("k2", "v").expect("put acknowledged by the peer");
    assert!(!store.unreplicated_acks());
}

/// Found by the simulation: the flag stayed set once the peer had caught up
/// with every answer given alone if no later write was answered, so a later
/// rejoin was refused as split brain. `peer_holds` clears it — only once
/// the position covers every answer given alone (after a reopen: the whole
/// log, as nothing more precise is known).
#[test]
fn the_flag_clears_once_the_peer_holds_every_answer_given_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = std::sync::Arc::new(GatedReplica::default());
    let options = || Options { replica: Some(replica.clone()), ..small_options() };
    let store = Store::open(dir.path(), options()).expect("open");
    replica.update(|g| {
        g.released = u64::MAX;
        g.alone = true;
    });
    store.put("k", "v").expect("put answered alone");
    let first = store.info().log_end;
    store.put("k2", "v").expect("put answered alone");
    let wait_for = |store: &Store, want: bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while store.unreplicated_acks() != want && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        store.unreplicated_acks() == want
    };
    store.peer_holds(first);
    store.sync().expect("sync"); // after the committer took the note
    assert!(store.unreplicated_acks(), "cleared while the peer lacks an answer given alone");
    store.peer_holds(store.info().log_end);
    assert!(wait_for(&store, false), "the flag did not clear once the peer held everything");

    // Set again, then reopened: the whole log counts until the peer holds it.
    store.put("k3", "v").expect("put answered alone");
    drop(store);
    let store = Store::open(dir.path(), options()).expect("reopen");
    assert!(store.unreplicated_acks());
    store.peer_holds(first);
    store.sync().expect("sync");
    assert!(store.unreplicated_acks(), "after a reopen, a position short of the log end cleared the flag");
    store.peer_holds(store.info().log_end);
    assert!(wait_for(&store, false));
}

#[test]
fn truncating_a_tail_returns_its_records_and_leaves_a_prefix_that_catches_up() {
    // Two sites in step, then the first writes on alone (a tail the second
    // never got), across segments.
    let (a_dir, b_dir) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let a = open_small(a_dir.path());
    fill(&a, 0, 40);
    let b = second_site(&a, b_dir.path());
    ship_all(&a, &b);
    let cut = b.info().log_end;
    let cut_fingerprint = b.info().fingerprint;
    fill(&a, 40, 400);
    let tail_keys = lockstep_engine::truncate::tail_records(&a, cut).expect("tail").len();
    assert!(tail_keys > 300);
    let options = small_options();
    a.close().expect("close");

    // Not a block boundary: refused, nothing changes.
    let keep = |_: &[lockstep_engine::truncate::RemovedRecord]| Ok(());
    assert!(lockstep_engine::truncate::cut_tail(a_dir.path(), &options, cut + 1, keep).is_err());
    let cut_report = lockstep_engine::truncate::cut_tail(a_dir.path(), &options, cut, keep).expect("truncate");
    assert_eq!(cut_report.records.len(), tail_keys);
    assert_eq!(cut_report.records[0].key, bytes::Bytes::from("key/00040"));
    assert!(cut_report.records.iter().all(|r| r.position >= cut && r.epoch == 1));

    // What remains is the prefix the second site has; it reads and then
    // follows the second site (promoted) byte for byte.
    let a = open_small(a_dir.path());
    assert_eq!((a.info().log_end, a.info().fingerprint), (cut, cut_fingerprint));
    assert_eq!(a.get("key/00041").expect("get"), None);
    assert!(a.get("key/00039").expect("get").is_some());
    b.promote().expect("promote");
    fill(&b, 1000, 1300);
    ship_all(&b, &a);
    assert_eq!(a.info().fingerprint, b.info().fingerprint);
    assert_eq!(a.epoch_history(), b.epoch_history());
    a.close().expect("close");
    b.close().expect("close");
    assert_eq!(segment_files(a_dir.path()), segment_files(b_dir.path()));
}

#[test]
fn blocks_received_from_a_primary_do_not_wait_for_this_stores_own_replica() {
    // A secondary keeps its replica hook (it may be promoted); blocks it
    // receives are the primary's writes, not its own: applying them must
    // neither wait for its replica nor mark it as answering alone.
    let (a_dir, b_dir) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let a = open_small(a_dir.path());
    fill(&a, 0, 20);
    let replica = std::sync::Arc::new(GatedReplica::default()); // never releases
    replica.update(|g| g.alone = true);
    let options = Options { replica: Some(replica), store_id: Some(a.info().store_id), ..small_options() };
    let b = std::sync::Arc::new(Store::open(b_dir.path(), options).expect("open"));
    let shipper = {
        let (b, blocks) = (b.clone(), a.read_blocks(0, usize::MAX).expect("read"));
        std::thread::spawn(move || blocks.into_iter().try_for_each(|block| b.append_replicated(block)))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !shipper.is_finished() {
        assert!(std::time::Instant::now() < deadline, "applying received blocks waited for this store's replica");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    shipper.join().expect("thread").expect("append");
    assert_eq!(b.info().fingerprint, a.info().fingerprint);
    assert!(!b.unreplicated_acks(), "received blocks marked the store as answering alone");
}
