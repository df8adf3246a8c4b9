//! Arbitrary bytes as a record: the first 4 bytes are the store's record
//! seed (little endian), the rest the record. A clean error, or a record
//! whose fields lie inside the input and that re-encodes to the same bytes;
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_engine::format::{decode_record, encode_record, record_len};

fuzz_target!(|data: &[u8]| {
    let Some((seed, bytes)) = data.split_first_chunk::<4>() else { return };
    let seed = u32::from_le_bytes(*seed);
    if let Ok((record, len)) = decode_record(bytes, seed) {
        assert!(len <= bytes.len());
        assert_eq!(len, record_len(record.key.len(), record.value.len()));
        let mut again = Vec::new();
        encode_record(&mut again, seed, record.kind, record.key, record.value);
        assert_eq!(&again[..], &bytes[..len], "a decoded record re-encodes to other bytes");
    }
});
