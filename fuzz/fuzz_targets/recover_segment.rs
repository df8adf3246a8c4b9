//! Arbitrary bytes as the data area of a store's only segment (store id all
//! ones, on the simulated disk): the scan returns a clean error or a
//! verified prefix (never a panic), and opening the store either refuses or
//! recovers to a store that scans clean and reads back every key it lists.
#![no_main]

use std::path::Path;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use lockstep_engine::format::{segment_file_name, StoreId, SEAL_REGION, SEGMENT_HEADER_REGION, SEGMENT_SIZE_MIN};
use lockstep_engine::recovery::scan;
use lockstep_engine::sim::SimStorage;
use lockstep_engine::storage::{OpenMode, Storage};
use lockstep_engine::{Options, Store};

fuzz_target!(|data: &[u8]| {
    let sim = SimStorage::new(1);
    let dir = Path::new("/fuzz");
    let options = Options {
        segment_size: SEGMENT_SIZE_MIN,
        store_id: Some(StoreId([1; 16])),
        storage: Arc::new(sim.machine()),
        ..Options::default()
    };
    Store::create(dir, &options).expect("create");
    drop(Store::open(dir, options.clone()).expect("open"));
    let room = (SEGMENT_SIZE_MIN - SEGMENT_HEADER_REGION) as usize;
    let bytes = &data[..data.len().min(room)];
    let segment = sim.open(&dir.join(segment_file_name(0)), OpenMode::ReadWrite).expect("segment");
    segment.write_all_at(bytes, SEGMENT_HEADER_REGION).expect("write");
    segment.sync_data().expect("sync");
    let report = scan(&sim, dir, true, &mut |_| {});
    if let Ok(report) = &report {
        assert!(report.log_end <= SEGMENT_SIZE_MIN - SEGMENT_HEADER_REGION - SEAL_REGION);
    }
    if let Ok(store) = Store::open(dir, options) {
        for item in store.scan_prefix("").expect("scan") {
            let (key, value) = item.expect("a recovered store reads every record it lists");
            assert_eq!(store.get(&key).expect("get").as_deref(), Some(&value[..]));
        }
        drop(store);
        let after = scan(&sim, dir, true, &mut |_| {}).expect("a recovered store scans clean");
        assert!(after.torn_tail.is_none());
    }
});
