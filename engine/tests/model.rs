//! Property test: random puts, deletes, batches, reopens and crashes that
//! leave a torn tail, checked against a `BTreeMap` model.

mod common;

use std::collections::BTreeMap;

use common::*;
use lockstep_engine::{Durability, Options, Store, WriteBatch};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Put(u8, usize),
    Delete(u8),
    Batch(Vec<(u8, Option<usize>)>),
    Reopen,
    /// Close, then leave garbage after the last block as a crash mid-write would.
    TornCrash(Vec<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..24, 0usize..3000).prop_map(|(k, v)| Op::Put(k, v)),
        2 => (0u8..24).prop_map(Op::Delete),
        2 => prop::collection::vec((0u8..24, prop::option::of(0usize..500)), 1..8).prop_map(Op::Batch),
        1 => Just(Op::Reopen),
        1 => prop::collection::vec(any::<u8>(), 1..300).prop_map(Op::TornCrash),
    ]
}

fn value(key: u8, len: usize, version: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(key).wrapping_add(version as u8)).collect()
}

fn options() -> Options {
    Options { durability: Durability::Buffered, ..small_options() }
}

fn check(store: &Store, model: &BTreeMap<Vec<u8>, Vec<u8>>) -> Result<(), TestCaseError> {
    let got: Vec<(Vec<u8>, Vec<u8>)> = store
        .scan::<&[u8], _>(..)
        .expect("scan")
        .map(|r| r.expect("item"))
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    let want: Vec<(Vec<u8>, Vec<u8>)> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    prop_assert_eq!(got, want);
    Ok(())
}

/// Cases per run: 128, or `LOCKSTEP_PROPTEST_CASES` for a longer run.
fn cases() -> u32 {
    std::env::var("LOCKSTEP_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn store_matches_model_across_reopens_and_torn_tails(ops in prop::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path(), options()).expect("open");
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for (version, op) in ops.into_iter().enumerate() {
            match op {
                Op::Put(k, len) => {
                    let v = value(k, len, version);
                    store.put([b'k', k], &v).expect("put");
                    model.insert(vec![b'k', k], v);
                }
                Op::Delete(k) => {
                    store.delete([b'k', k]).expect("delete");
                    model.remove(&vec![b'k', k]);
                }
                Op::Batch(items) => {
                    let mut batch = WriteBatch::new();
                    let mut staged = model.clone();
                    for (k, v) in items {
                        match v {
                            Some(len) => {
                                let v = value(k, len, version);
                                batch.put([b'k', k], &v);
                                staged.insert(vec![b'k', k], v);
                            }
                            None => {
                                batch.delete([b'k', k]);
                                staged.remove(&vec![b'k', k]);
                            }
                        }
                    }
                    store.write(batch).expect("batch");
                    model = staged;
                }
                Op::Reopen => {
                    store.close().expect("close");
                    store = Store::open(dir.path(), options()).expect("reopen");
                    check(&store, &model)?;
                }
                Op::TornCrash(garbage) => {
                    store.close().expect("close");
                    append_after_log_end(dir.path(), &garbage);
                    store = Store::open(dir.path(), options()).expect("reopen after torn tail");
                    check(&store, &model)?;
                }
            }
        }
        check(&store, &model)?;
    }
}
