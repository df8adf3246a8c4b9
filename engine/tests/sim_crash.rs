//! Crash consistency and fault handling on the simulated disk, against a
//! `BTreeMap` model. Writers each own a disjoint key space, so whatever the
//! committer's grouping, each writer's keys must show exactly its
//! acknowledged batches, plus at most the one batch it was waiting on when
//! the fault hit (entirely or not at all).
//!
//! Properties: a power cut during any write (unsynced writes kept, lost or
//! torn per sector), from one writer or several threads; failing writes,
//! failing fsyncs and a full disk; a bit flipped anywhere in the store's
//! files, while it is open and at reopen; buffered writes and syncs. Cases
//! per property: 1000, or `LOCKSTEP_PROPTEST_CASES`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use common::small_options;
use lockstep_engine::sim::{Faults, SimStorage};
use lockstep_engine::storage::Storage;
use lockstep_engine::{Error, Options, Store, WriteBatch};
use proptest::prelude::*;

type Model = BTreeMap<Vec<u8>, Vec<u8>>;
/// One operation of a batch: a key number and a value length, or a delete.
type Op = (u8, Option<usize>);

const DIR: &str = "/sim/store";

fn key(writer: u8, k: u8) -> Vec<u8> {
    vec![b'k', writer, k]
}

fn value(writer: u8, k: u8, len: usize) -> Vec<u8> {
    vec![writer.wrapping_mul(31) ^ k; len]
}

fn apply(model: &mut Model, writer: u8, batch: &[Op]) {
    for &(k, v) in batch {
        match v {
            Some(len) => model.insert(key(writer, k), value(writer, k, len)),
            None => model.remove(&key(writer, k)),
        };
    }
}

fn write(store: &Store, writer: u8, batch: &[Op]) -> lockstep_engine::Result<()> {
    let mut b = WriteBatch::new();
    for &(k, v) in batch {
        match v {
            Some(len) => b.put(key(writer, k), value(writer, k, len)),
            None => b.delete(key(writer, k)),
        };
    }
    store.write(b)
}

fn contents(store: &Store) -> lockstep_engine::Result<Model> {
    store.scan_prefix("")?.map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec()))).collect()
}

fn cases() -> u32 {
    std::env::var("LOCKSTEP_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000)
}

fn options(sim: &SimStorage) -> Options {
    Options { storage: Arc::new(sim.machine()), ..small_options() }
}

/// A new store on a new simulated disk that records what it is asked to do
/// (printed when a case fails).
fn fresh(seed: u64) -> (SimStorage, Store) {
    let sim = SimStorage::new(seed);
    sim.trace(true);
    let store = Store::open(DIR, options(&sim)).expect("open");
    (sim, store)
}

/// What one writer did: its acknowledged batches, and the batch whose write
/// failed (after which it stopped).
#[derive(Debug, Default, Clone)]
struct Outcome {
    acked: Vec<Vec<Op>>,
    failed: Option<Vec<Op>>,
}

impl Outcome {
    /// The writer's keys after its acknowledged batches, and after those
    /// plus the failed one.
    fn allowed(&self, writer: u8) -> (Model, Model) {
        let mut acked = Model::new();
        for batch in &self.acked {
            apply(&mut acked, writer, batch);
        }
        let mut with_failed = acked.clone();
        if let Some(batch) = &self.failed {
            apply(&mut with_failed, writer, batch);
        }
        (acked, with_failed)
    }
}

/// Runs each writer's batches on its own thread (one writer: this thread).
fn run_writers(store: &Store, writers: &[Vec<Vec<Op>>]) -> Vec<Outcome> {
    let run = |writer: u8, batches: &[Vec<Op>]| {
        let mut outcome = Outcome::default();
        for batch in batches {
            match write(store, writer, batch) {
                Ok(()) => outcome.acked.push(batch.clone()),
                Err(_) => {
                    outcome.failed = Some(batch.clone());
                    break;
                }
            }
        }
        outcome
    };
    if writers.len() == 1 {
        return vec![run(0, &writers[0])];
    }
    std::thread::scope(|s| {
        let handles: Vec<_> =
            writers.iter().enumerate().map(|(w, batches)| s.spawn(move || run(w as u8, batches))).collect();
        handles.into_iter().map(|h| h.join().expect("writer thread")).collect()
    })
}

/// Each writer's keys in `found` are its acknowledged state, or that plus
/// its failed batch.
fn check_writers(found: &Model, outcomes: &[Outcome]) -> Result<(), TestCaseError> {
    for (w, outcome) in outcomes.iter().enumerate() {
        let w = w as u8;
        let mine: Model = found.iter().filter(|(k, _)| k[1] == w).map(|(k, v)| (k.clone(), v.clone())).collect();
        let (acked, with_failed) = outcome.allowed(w);
        prop_assert!(
            mine == acked || mine == with_failed,
            "writer {w}: the store holds neither its {} acknowledged batches nor those plus the failed one ({:?})",
            outcome.acked.len(),
            outcome.failed
        );
    }
    Ok(())
}

/// Power off, reopen with no faults, and check every writer.
fn crash_reopen_check(sim: &SimStorage, store: Store, outcomes: &[Outcome]) -> Result<Store, TestCaseError> {
    sim.crash();
    drop(store); // its files are gone; closing fails quietly
    sim.set_faults(Faults::default());
    let reopened = Store::open(DIR, options(sim)).map_err(|e| {
        TestCaseError::fail(format!("reopen: {e}\nwhat the disk saw:\n{}", sim.trace(false).join("\n")))
    })?;
    let found = contents(&reopened).map_err(|e| TestCaseError::fail(format!("scan after reopen: {e}")))?;
    check_writers(&found, outcomes)?;
    Ok(reopened)
}

fn batch() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec((0u8..16, prop::option::of(0usize..2000)), 1..6)
}

fn writers(max: usize) -> impl Strategy<Value = Vec<Vec<Vec<Op>>>> {
    prop::collection::vec(prop::collection::vec(batch(), 1..25), 1..=max)
}

#[derive(Debug, Clone)]
enum Fault {
    Write(u64),
    Sync(u64),
    /// The disk holds this many bytes beyond what the fresh store uses.
    Space(u64),
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        (0u64..120).prop_map(Fault::Write),
        (0u64..60).prop_map(Fault::Sync),
        (0u64..200_000).prop_map(Fault::Space),
    ]
}

fn used(sim: &SimStorage) -> u64 {
    files(sim).iter().filter_map(|p| sim.contents(p)).map(|c| c.len() as u64).sum()
}

fn files(sim: &SimStorage) -> Vec<std::path::PathBuf> {
    let dir = Path::new(DIR);
    let mut names = sim.list(dir).expect("list");
    names.sort();
    // Not the files the store is creating right now (renamed any moment).
    names.retain(|n| !n.ends_with(".tmp"));
    names.into_iter().map(|n| dir.join(n)).filter(|p| sim.contents(p).is_some()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn acknowledged_writes_survive_a_power_cut_and_no_batch_is_half_applied(
        seed in any::<u64>(),
        writers in writers(4),
        crash_after in 0u64..200,
    ) {
        let (sim, store) = fresh(seed);
        sim.set_faults(Faults { crash_at_write_after: Some(crash_after), ..Faults::default() });
        let outcomes = run_writers(&store, &writers);
        crash_reopen_check(&sim, store, &outcomes)?;
    }

    #[test]
    fn failed_writes_fsyncs_and_a_full_disk_lose_nothing_acknowledged(
        seed in any::<u64>(),
        writers in writers(3),
        fault in fault(),
    ) {
        let (sim, store) = fresh(seed);
        sim.set_faults(match fault {
            Fault::Write(n) => Faults { fail_write_after: Some(n), ..Faults::default() },
            Fault::Sync(n) => Faults { fail_sync_after: Some(n), ..Faults::default() },
            Fault::Space(n) => Faults { capacity: Some(used(&sim) + n), ..Faults::default() },
        });
        let outcomes = run_writers(&store, &writers);
        // Still open after the fault: reads return acknowledged data, or an error.
        if let Ok(found) = contents(&store) {
            check_writers(&found, &outcomes)?;
        }
        let reopened = crash_reopen_check(&sim, store, &outcomes)?;
        // The fault is gone (space freed, disk replaced): writes work again.
        prop_assert!(reopened.put("after", "the fault").is_ok(), "the reopened store refuses writes");
    }

    #[test]
    fn a_flipped_bit_is_reported_as_corruption_never_returned_as_a_value(
        seed in any::<u64>(),
        batches in prop::collection::vec(batch(), 1..30),
        file_pick in any::<prop::sample::Index>(),
        offset_pick in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let (sim, store) = fresh(seed);
        let mut states = vec![Model::new()];
        for batch in &batches {
            write(&store, 0, batch).expect("write");
            let mut next = states.last().cloned().unwrap_or_default();
            apply(&mut next, 0, batch);
            states.push(next);
        }
        let model = states.last().cloned().unwrap_or_default();

        // Flip a bit somewhere in a file's written bytes.
        let files = files(&sim);
        let path = file_pick.get(&files).clone();
        let bytes = sim.contents(&path).unwrap_or_default();
        let written = bytes.iter().rposition(|&b| b != 0).map_or(bytes.len(), |i| i + 1).max(1);
        let offset = offset_pick.index(written) as u64;
        sim.flip_bit(&path, offset, bit).expect("flip");

        // The open store: every read gives the model's value or an error.
        for (k, v) in &model {
            if let Ok(got) = store.get(k) {
                prop_assert_eq!(got.as_deref(), Some(&v[..]), "a read returned a damaged value");
            }
        }
        if let Ok(scan) = store.scan_prefix("") {
            for item in scan.flatten() {
                prop_assert_eq!(model.get(&item.0[..]).map(|v| &v[..]), Some(&item.1[..]), "a scan returned a damaged item");
            }
        }
        drop(store);

        // Reopened: refused as corruption, or the state after a prefix of
        // the batches — shorter only if the cut tail was exported.
        match Store::open(DIR, options(&sim)) {
            Err(e) => prop_assert!(
                matches!(e, Error::Corruption { .. } | Error::SegmentSequence { .. } | Error::NotAStore { .. }),
                "a flipped bit at {}:{offset} gave an error that does not report damage: {e}", path.display()
            ),
            Ok(reopened) => {
                let found = contents(&reopened).expect("a store that opened scans clean");
                let prefix = states.iter().rposition(|s| *s == found);
                prop_assert!(prefix.is_some(), "after a bit flip at {}:{offset} the store holds a state no prefix of the log gives", path.display());
                if prefix != Some(states.len() - 1) {
                    let exported = sim.list(&Path::new(DIR).join("recovered")).map(|l| !l.is_empty()).unwrap_or(false);
                    prop_assert!(exported, "acknowledged batches disappeared without an export to recovered/");
                }
            }
        }
    }
}

/// Found by the concurrent power-cut property: a group of writes spanning a
/// segment roll wrote its first block without an fsync, then the seal; a
/// power cut could keep the seal and lose the block, and the store then
/// refused to open (a sealed segment with damage inside). Buffered writes
/// reach the same path deterministically: an unsynced block, then the roll.
#[test]
fn a_power_cut_while_sealing_a_segment_leaves_a_store_that_opens() {
    use lockstep_engine::Durability;
    for crash_after in 0..30 {
        for seed in 0..8 {
            let sim = SimStorage::new(seed);
            let options = || Options { durability: Durability::Buffered, ..options(&sim) };
            let store = Store::open(DIR, options()).expect("open");
            sim.set_faults(Faults { crash_at_write_after: Some(crash_after), ..Faults::default() });
            for i in 0..60u32 {
                if store.put(i.to_be_bytes(), vec![i as u8; 3000]).is_err() {
                    break;
                }
            }
            sim.crash();
            drop(store);
            sim.set_faults(Faults::default());
            if let Err(e) = Store::open(DIR, options()) {
                panic!("crash at write {crash_after}, seed {seed}: {e}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Buffered writes are answered before they are durable: after a power
    /// cut the store holds the state after some prefix of the batches —
    /// never a batch without the ones before it, never half a batch — and
    /// at least every batch before the last successful `sync`.
    #[test]
    fn buffered_writes_survive_as_a_prefix_and_sync_makes_them_durable(
        seed in any::<u64>(),
        ops in prop::collection::vec(prop_oneof![4 => batch().prop_map(Some), 1 => Just(None)], 1..40),
        crash_after in 0u64..200,
    ) {
        use lockstep_engine::Durability;
        let sim = SimStorage::new(seed);
        sim.trace(true);
        let options = || Options { durability: Durability::Buffered, ..options(&sim) };
        let store = Store::open(DIR, options()).expect("open");
        sim.set_faults(Faults { crash_at_write_after: Some(crash_after), ..Faults::default() });
        // The state after each answered batch; `synced`: how many of them a
        // successful sync made durable.
        let mut states = vec![Model::new()];
        let mut synced = 0;
        for op in &ops {
            let ok = match op {
                Some(batch) => write(&store, 0, batch).map(|()| {
                    let mut next = states.last().cloned().unwrap_or_default();
                    apply(&mut next, 0, batch);
                    states.push(next);
                }),
                None => store.sync().map(|()| synced = states.len() - 1),
            };
            if ok.is_err() {
                break;
            }
        }
        sim.crash();
        drop(store);
        sim.set_faults(Faults::default());
        let reopened = Store::open(DIR, options())
            .map_err(|e| TestCaseError::fail(format!("reopen: {e}\nwhat the disk saw:\n{}", sim.trace(false).join("\n"))))?;
        let found = contents(&reopened).expect("scan after reopen");
        prop_assert!(
            states[synced..].contains(&found),
            "the store holds no prefix of the batches that includes the {} a sync made durable ({} answered)",
            synced, states.len() - 1
        );
    }
}
