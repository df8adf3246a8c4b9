//! Arbitrary bytes as a record: a clean error or a record whose fields lie
//! inside the input; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_engine::format::{decode_record, record_len};

fuzz_target!(|data: &[u8]| {
    let seed = data.first().copied().unwrap_or_default().into();
    if let Ok((record, len)) = decode_record(data, seed) {
        assert!(len <= data.len());
        assert_eq!(len, record_len(record.key.len(), record.value.len()));
    }
});
