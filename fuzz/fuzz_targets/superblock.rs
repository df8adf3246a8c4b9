//! Arbitrary bytes as a superblock file: choosing a copy never panics, and
//! a chosen superblock re-encodes to an intact copy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_engine::format::{choose_superblock, Superblock};

fuzz_target!(|data: &[u8]| {
    if let Ok(sb) = choose_superblock(data) {
        let (copy, checksum) = sb.encode();
        assert_eq!(Superblock::decode(&copy).map(|(_, c)| c), Ok(checksum));
    }
});
