//! The embedded API: reads, writes, batches, scans, reopen, limits, locking.

mod common;

use std::sync::Arc;

use common::*;
use lockstep_engine::format::{KEY_LEN_MAX, VALUE_LEN_MAX};
use lockstep_engine::{Durability, Error, Options, Store, StoreId, WriteBatch};

fn collect(store: &Store, prefix: &str) -> Vec<(String, String)> {
    store
        .scan_prefix(prefix)
        .expect("scan")
        .map(|r| {
            let (k, v) = r.expect("item");
            (String::from_utf8_lossy(&k).into(), String::from_utf8_lossy(&v).into())
        })
        .collect()
}

#[test]
fn put_get_delete_scan_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let store = Store::open(&path, Options::default()).expect("create");
    store.put("b", "2").expect("put");
    store.put("a", "1").expect("put");
    store.put("c", "3").expect("put");
    store.put("a", "1bis").expect("overwrite");
    store.delete("b").expect("delete");
    store.delete("never-there").expect("delete of an absent key");
    assert_eq!(store.get("a").expect("get").as_deref(), Some(&b"1bis"[..]));
    assert_eq!(store.get("b").expect("get"), None);
    let all: Vec<_> = store.scan::<&str, _>(..).expect("scan").map(|r| r.expect("item").0).collect();
    assert_eq!(all, vec!["a", "c"]);
    let ranged: Vec<_> = store.scan("b".."d").expect("scan").map(|r| r.expect("item").0).collect();
    assert_eq!(ranged, vec!["c"]);
    assert_eq!(store.scan("z".."a").expect("empty range").count(), 0);
    let id = store.info().store_id;
    store.close().expect("close");

    let store = Store::open(&path, Options::default()).expect("reopen");
    assert_eq!(store.info().store_id, id);
    assert_eq!(collect(&store, ""), vec![("a".into(), "1bis".into()), ("c".into(), "3".into())]);
}

#[test]
fn batch_is_applied_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_small(dir.path());
    store.put("k/old", "x").expect("put");
    let mut batch = WriteBatch::new();
    batch.put("k/1", "one").put("k/2", "two").delete("k/old");
    assert_eq!(batch.len(), 3);
    store.write(batch).expect("batch");
    assert_eq!(collect(&store, "k/"), vec![("k/1".into(), "one".into()), ("k/2".into(), "two".into())]);
    store.write(WriteBatch::new()).expect("an empty batch is a no-op");
}

#[test]
fn segments_roll_seal_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_small(dir.path());
    let value = vec![b'v'; 300];
    for i in 0..1000u32 {
        store.put(format!("key-{i:05}"), &value).expect("put");
    }
    assert!(store.info().segments >= 4, "expected several segments, got {}", store.info().segments);
    let before = store.info();
    store.close().expect("close");
    let report = scan(dir.path());
    assert!(report.segments[..report.segments.len() - 1].iter().all(|s| s.sealed));
    assert_eq!(report.log_end, before.log_end);
    assert_eq!(report.fingerprint, before.fingerprint);
    assert_eq!(report.superblock.commit_position, before.log_end);
    let store = open_small(dir.path());
    assert_eq!(store.info().keys, 1000);
    for i in (0..1000u32).step_by(37) {
        assert_eq!(store.get(format!("key-{i:05}")).expect("get").as_deref(), Some(&value[..]));
    }
}

#[test]
fn concurrent_writers_all_land() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open_small(dir.path()));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    store.put(format!("t{t}-{i}"), format!("{t}:{i}")).expect("put");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer");
    }
    assert_eq!(store.info().keys, 800);
    drop(store);
    let store = open_small(dir.path());
    for t in 0..8 {
        for i in 0..100 {
            assert_eq!(store.get(format!("t{t}-{i}")).expect("get"), Some(format!("{t}:{i}").into()));
        }
    }
}

#[test]
fn buffered_writes_are_visible_and_durable_after_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = Options { durability: Durability::Buffered, ..small_options() };
    let store = Store::open(dir.path(), options.clone()).expect("open");
    for i in 0..200 {
        store.put(format!("{i}"), "v").expect("put");
    }
    assert_eq!(store.get("199").expect("get").as_deref(), Some(&b"v"[..]));
    let before = store.info();
    assert!(before.durable_end < before.log_end, "buffered writes should not be synced yet");
    store.sync().expect("sync");
    let after = store.info();
    assert_eq!(after.durable_end, after.log_end);
    drop(store);
    assert_eq!(Store::open(dir.path(), options).expect("reopen").info().keys, 200);
}

#[test]
fn invalid_arguments_write_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_small(dir.path());
    store.put("keep", "me").expect("put");
    let before = store.info();
    let big_key = vec![b'k'; KEY_LEN_MAX + 1];
    let huge_value = vec![0u8; VALUE_LEN_MAX + 1];
    let too_big_for_segment = vec![0u8; 70_000];
    let mut batch = WriteBatch::new();
    batch.put("fine", "x").put("", "empty key");
    let mut big_batch = WriteBatch::new();
    for i in 0..10 {
        big_batch.put(format!("b{i}"), vec![0u8; 7000]);
    }
    let attempts: Vec<(&str, Result<(), Error>)> = vec![
        ("empty key", store.put("", "v")),
        ("oversize key", store.put(&big_key, "v")),
        ("oversize value", store.put("k", &huge_value)),
        ("value larger than a segment", store.put("k", &too_big_for_segment)),
        ("empty key delete", store.delete("")),
        ("batch with an empty key", store.write(batch)),
        ("batch larger than a block", store.write(big_batch)),
    ];
    for (what, result) in attempts {
        assert!(matches!(result, Err(Error::InvalidArgument(_))), "{what}: {result:?}");
        assert_eq!(result.map_err(|e| e.exit_code()), Err(64));
    }
    let after = store.info();
    assert_eq!((after.log_end, after.keys), (before.log_end, before.keys));
    assert_eq!(store.get("fine").expect("get"), None);
    // A key of exactly the limit is fine.
    store.put(vec![b'k'; KEY_LEN_MAX], "v").expect("max key");
}

#[test]
fn a_second_opener_is_refused_and_named_the_holder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_small(dir.path());
    match Store::open(dir.path(), small_options()) {
        Err(Error::Locked { holder, .. }) => {
            assert!(holder.contains(&std::process::id().to_string()), "holder: {holder}")
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(store);
    open_small(dir.path());
}

#[test]
fn create_refuses_existing_or_foreign_directories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = Store::create(dir.path(), &small_options()).expect("create");
    match Store::create(dir.path(), &small_options()) {
        Err(Error::AlreadyExists { store_id, .. }) => assert_eq!(store_id, id),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    let other = tempfile::tempdir().expect("tempdir");
    std::fs::write(other.path().join("notes.txt"), "mine").expect("write");
    assert!(matches!(Store::open(other.path(), Options::default()), Err(Error::NotAStore { .. })));
    let missing = other.path().join("missing");
    let options = Options { create_if_missing: false, ..Options::default() };
    assert!(matches!(Store::open(&missing, options), Err(Error::NotAStore { .. })));
}

#[test]
fn store_id_can_be_given_at_creation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id: StoreId = "00112233445566778899aabbccddeeff".parse().expect("id");
    let options = Options { store_id: Some(id), ..small_options() };
    let store = Store::open(dir.path(), options).expect("open");
    assert_eq!(store.info().store_id, id);
    let bad = Options { segment_size: 12345, ..Options::default() };
    let other = tempfile::tempdir().expect("tempdir");
    assert!(matches!(Store::open(other.path(), bad), Err(Error::InvalidArgument(_))));
}

#[test]
fn store_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();
    assert_send_sync::<lockstep_engine::Scan>();
}

#[test]
fn closing_waits_for_a_spare_started_by_the_final_flush() {
    // Regression: the flush of buffered writes at close could cross the
    // half-full mark and start preparing the next segment after close had
    // already waited for preparations; that thread then raced the next open
    // (which removes half-made `.tmp` files) and failed it.
    for _ in 0..5 {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = Options { durability: Durability::Buffered, ..small_options() };
        let store = Store::open(dir.path(), options.clone()).expect("open");
        store.put("big", vec![b'x'; 40_000]).expect("put");
        store.close().expect("close");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "a preparation outlived close: {names:?}");
        assert!(names.contains(&"segment-0000000001.log".to_string()), "{names:?}");
    }
}

#[test]
fn buffered_writes_reach_the_file_within_the_flush_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = Options { durability: Durability::Buffered, ..small_options() };
    let store = Store::open(dir.path(), options).expect("open");
    store.put("a", "in memory first").expect("put");
    // Readable at once, from the open block.
    assert_eq!(store.get("a").expect("get").as_deref(), Some(&b"in memory first"[..]));
    // Written to the segment (not synced) within the 10 ms interval: a
    // read-only scan of the files, as another process would do, finds it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while scan(dir.path()).segments[0].records == 0 {
        assert!(std::time::Instant::now() < deadline, "the open block was never written out");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(store.get("a").expect("get").as_deref(), Some(&b"in memory first"[..]));
}

#[test]
fn auxiliary_files_are_replaced_whole_and_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_small(dir.path());
    assert_eq!(store.read_aux_file("peer").expect("read"), None);
    store.write_aux_file("peer", b"first, longer version").expect("write");
    store.write_aux_file("peer", b"second").expect("replace");
    assert!(matches!(store.write_aux_file("../escape", b"x"), Err(Error::InvalidArgument(_))));
    assert!(matches!(store.write_aux_file("", b"x"), Err(Error::InvalidArgument(_))));
    drop(store);
    let store = open_small(dir.path());
    assert_eq!(store.read_aux_file("peer").expect("read").as_deref(), Some(&b"second"[..]));
    assert!(dir.path().join("aux-peer").exists());
    store.close().expect("close");
    // The store's own checks ignore them.
    assert_eq!(scan(dir.path()).segments.len(), 1);
}

#[test]
fn a_promotion_begins_an_epoch_after_every_one_known() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_small(dir.path());
    assert_eq!(store.promote_past(0).expect("promote"), 2);
    assert_eq!(store.promote_past(7).expect("promote past a known epoch 7"), 8);
    assert_eq!(store.promote_past(3).expect("promote"), 9, "an older known epoch lowered the next one");
    let epochs: Vec<u64> = store.epoch_history().iter().map(|e| e.epoch).collect();
    assert_eq!(epochs, [1, 2, 8, 9]);
}

/// Reported from outside: an epoch of `u64::MAX` learned from a peer made a
/// later promotion wrap the epoch to 0, and the store never opened again.
#[test]
fn a_promotion_past_an_absurd_epoch_is_refused_and_the_store_still_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_small(dir.path());
    store.put("k", "v").expect("put");
    for known in [u64::MAX, lockstep_engine::format::EPOCH_MAX] {
        match store.promote_past(known) {
            Err(Error::InvalidArgument(reason)) => assert!(reason.contains("nothing was changed"), "{reason}"),
            other => panic!("promotion past epoch {known}: {other:?}"),
        }
    }
    assert_eq!(
        store.promote_past(lockstep_engine::format::EPOCH_MAX - 1).expect("the last epoch"),
        lockstep_engine::format::EPOCH_MAX
    );
    store.put("k2", "v2").expect("writes go on");
    drop(store);
    let store = open_small(dir.path());
    assert_eq!(store.info().epoch, lockstep_engine::format::EPOCH_MAX);
    assert_eq!(store.get("k2").expect("get").as_deref(), Some(&b"v2"[..]));
}

/// Reported from outside: two threads replacing `aux-peer` through the
/// same temporary name failed (`renaming …/aux-peer.tmp: No such file`).
#[test]
fn auxiliary_files_can_be_replaced_from_several_threads_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(open_small(dir.path()));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    store.write_aux_file("peer", format!("{t}-{i}").as_bytes()).expect("replace aux-peer");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let last = String::from_utf8(store.read_aux_file("peer").expect("read").expect("present")).expect("utf8");
    assert!(last.ends_with("-49"), "{last}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
