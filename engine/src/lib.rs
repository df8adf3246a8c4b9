//! lockstep-engine: a log-structured, checksummed record store on one machine.
//!
//! ```no_run
//! use lockstep_engine::{Options, Store, WriteBatch};
//! # fn main() -> Result<(), lockstep_engine::Error> {
//! let store = Store::open("/tmp/lockstep-doc", Options::default())?;
//! store.put(b"patient/17", b"allergy: penicillin")?; // durable on return
//! let mut batch = WriteBatch::new();
//! batch.put(b"patient/18", b"ok").delete(b"patient/16");
//! store.write(batch)?; // all or nothing, also across a crash
//! assert_eq!(store.get(b"patient/17")?.as_deref(), Some(&b"allergy: penicillin"[..]));
//! for item in store.scan_prefix(b"patient/")? {
//!     let (key, value) = item?;
//!     println!("{key:?} = {value:?}");
//! }
//! store.close()?;
//! # Ok(()) }
//! ```
#![deny(unsafe_code)]

mod committer;
pub mod error;
mod files;
pub mod format;
mod index;
mod mmap;
pub mod recovery;
mod replica;
pub mod sim;
pub mod storage;
mod store;
pub mod truncate;
#[cfg(target_os = "linux")]
pub mod uring;

pub use error::{Corruption, Error, Result};
pub use format::{EpochStart, Fingerprint, NodeId, StoreId, FORMAT_VERSION};
pub use replica::{LogBlock, PendingAppend, Replica, ReplicaWaker, Replicated};
pub use store::{Durability, Options, Scan, Store, StoreInfo, WriteBatch};

/// Access to the engine's private index for the criterion benchmarks in
/// `benches/` only; not a stable API.
#[doc(hidden)]
pub mod bench_support {
    use crate::index::Index;
    use crate::store::Loc;

    /// An index whose entries point at made-up locations.
    #[derive(Debug)]
    pub struct BenchIndex(Index);

    impl Default for BenchIndex {
        fn default() -> Self {
            BenchIndex(Index::new())
        }
    }

    impl BenchIndex {
        pub fn insert(&self, key: &[u8], n: u64) {
            self.0.set(key, Some(Loc { segment: 0, offset: n, len: 128 }));
        }
        pub fn contains(&self, key: &[u8]) -> bool {
            self.0.get(key).is_some()
        }
    }
}
