//! SIGKILL a running `lockstep load` and check that every write it reported
//! durable is present after reopening, with no batch partially applied.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lockstep_engine::{Options, Store};
use lockstep_replicator::load::{key, value};
use lockstep_tests::{expect_code, lockstep_bin, p};

const KEY_SIZE: usize = 16;
const VALUE_SIZE: usize = 100;
const BATCH: u64 = 5;

/// Complete lines of the ack log (a kill may cut the last one short).
fn acked(path: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete.lines().map(|l| l.parse().expect("ack log line is a record number")).collect()
}

fn kill_load_after(dir: &Path, ack_log: &Path, acks_wanted: usize) {
    let mut child = Command::new(lockstep_bin())
        .args(["load", p(dir), "--records", "50000000", "--writers", "4", "--batch", "5"])
        .args(["--key-size", "16", "--value-size", "100", "--ack-log", p(ack_log)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start load");
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked(ack_log).len() < acks_wanted {
        assert!(Instant::now() < deadline, "load acknowledged too little in time");
        assert!(child.try_wait().expect("poll").is_none(), "load exited early");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
}

fn verify(dir: &Path, ack_log: &Path) -> usize {
    // `check` first: a killed writer leaves nothing `check` calls corrupt.
    expect_code(0, ["check", p(dir)]);
    let acks = acked(ack_log);
    let store = Store::open(dir, Options { create_if_missing: false, ..Options::default() }).expect("reopen");
    for &i in &acks {
        let got = store.get(key(i, KEY_SIZE)).expect("get");
        assert_eq!(got.as_deref(), Some(&value(i, VALUE_SIZE)[..]), "acknowledged record {i} lost or wrong");
    }
    let present: BTreeSet<u64> = store
        .scan::<&[u8], _>(..)
        .expect("scan")
        .map(|item| {
            let (k, v) = item.expect("a readable record");
            let i: u64 = std::str::from_utf8(&k).expect("ascii key").parse().expect("numeric key");
            assert_eq!(&v[..], &value(i, VALUE_SIZE)[..], "record {i} has a wrong value");
            i
        })
        .collect();
    for &i in &present {
        let batch = (i / BATCH) * BATCH;
        for j in batch..batch + BATCH {
            assert!(present.contains(&j), "batch starting at {batch} is partial: {i} present, {j} missing");
        }
    }
    acks.len()
}

#[test]
fn sigkill_during_load_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    expect_code(0, ["init", p(&dir), "--segment-size", "1M"]);
    // Two rounds on the same store: the second kill lands on a store that
    // already went through one crash and recovery.
    for (round, wanted) in [(1, 2_000), (2, 6_000)] {
        let ack_log = tmp.path().join(format!("acks-{round}"));
        kill_load_after(&dir, &ack_log, wanted);
        let verified = verify(&dir, &ack_log);
        assert!(verified >= wanted, "round {round}: only {verified} acks verified");
    }
}
