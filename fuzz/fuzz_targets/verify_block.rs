//! Arbitrary bytes as the first commit block of a store: the first 16 bytes
//! are the store id, the rest the block at position 0 of segment 0. A clean
//! error, or a block whose header, records and length agree with the input;
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_engine::format::{block_seed, genesis_fingerprint, record_seed, verify_block, StoreId};

fuzz_target!(|data: &[u8]| {
    let Some((id, bytes)) = data.split_first_chunk::<16>() else { return };
    let store = StoreId(*id);
    let seed = block_seed(&store, 0, 0);
    if let Ok(block) = verify_block(bytes, 0, seed, record_seed(&store), Some(genesis_fingerprint(&store))) {
        assert!(block.header.len as usize <= bytes.len());
        assert_eq!(block.records.len(), block.header.record_count as usize);
    }
});
