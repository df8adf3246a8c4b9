//! Arbitrary bytes as a commit block at position 0 of segment 0.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_engine::format::{block_seed, genesis_fingerprint, record_seed, verify_block, StoreId};

fuzz_target!(|data: &[u8]| {
    let store = StoreId([1; 16]);
    let seed = block_seed(&store, 0, 0);
    if let Ok(block) = verify_block(data, 0, seed, record_seed(&store), Some(genesis_fingerprint(&store))) {
        assert!(block.header.len as usize <= data.len());
        assert_eq!(block.records.len(), block.header.record_count as usize);
    }
});
