//! Arbitrary bytes as the data area of a store's only segment: the scan
//! returns a clean error or a verified prefix (never a panic), and opening
//! the store either refuses or recovers to a store that scans clean.
#![no_main]

use std::os::unix::fs::FileExt;

use libfuzzer_sys::fuzz_target;
use lockstep_engine::format::{segment_file_name, SEGMENT_HEADER_REGION, SEGMENT_SIZE_MIN, SEAL_REGION};
use lockstep_engine::recovery::scan;
use lockstep_engine::storage::StdStorage;
use lockstep_engine::{Options, Store};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = Options { segment_size: SEGMENT_SIZE_MIN, ..Options::default() };
    Store::create(dir.path(), &options).expect("create");
    drop(Store::open(dir.path(), options.clone()).expect("open"));
    let room = (SEGMENT_SIZE_MIN - SEGMENT_HEADER_REGION) as usize;
    let bytes = &data[..data.len().min(room)];
    let segment = std::fs::OpenOptions::new().write(true).open(dir.path().join(segment_file_name(0))).expect("segment");
    segment.write_all_at(bytes, SEGMENT_HEADER_REGION).expect("write");
    let report = scan(&StdStorage, dir.path(), true, &mut |_| {});
    if let Ok(report) = &report {
        assert!(report.log_end <= SEGMENT_SIZE_MIN - SEGMENT_HEADER_REGION - SEAL_REGION);
    }
    if let Ok(store) = Store::open(dir.path(), options) {
        drop(store);
        let after = scan(&StdStorage, dir.path(), true, &mut |_| {}).expect("a recovered store scans clean");
        assert!(after.torn_tail.is_none());
    }
});
