//! The engines `lockstep-bench` compares. lockstep is always built; the
//! others only with the cargo feature `peers` (not built by CI).
//!
//! What makes a write durable in each (the `durable` mode of W1/W2; W3 loads
//! without it and ends with the engine's sync):
//! * lockstep: `Store::put` with `Durability::Sync` (fdatasync by the group
//!   committer); W3: `Durability::Buffered` then `Store::sync`.
//! * the peers: see each adapter in `peers.rs` (`EngineKind::durability_call`).

use std::path::Path;

use lockstep_engine::{Durability, Options, Store};

use crate::{Engine, EngineKind, Result};

/// lockstep itself.
pub struct Lockstep;

struct LockstepEngine(Store);

impl Engine for LockstepEngine {
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        Ok(self.0.put(key, value)?)
    }
    fn sync(&self) -> Result<()> {
        Ok(self.0.sync()?)
    }
    fn get(&self, key: &[u8]) -> Result<Option<usize>> {
        Ok(self.0.get(key)?.map(|v| v.len()))
    }
}

impl EngineKind for Lockstep {
    fn name(&self) -> &'static str {
        "lockstep"
    }
    fn durability_call(&self) -> &'static str {
        "Store::put with Durability::Sync (group-committed fdatasync)"
    }
    fn open(&self, dir: &Path, durable: bool) -> Result<Box<dyn Engine>> {
        let durability = if durable { Durability::Sync } else { Durability::Buffered };
        Ok(Box::new(LockstepEngine(Store::open(dir, Options { durability, ..Options::default() })?)))
    }
}

/// Every engine this build can run, lockstep first.
pub fn all() -> Vec<Box<dyn EngineKind>> {
    #[allow(unused_mut)]
    let mut engines: Vec<Box<dyn EngineKind>> = vec![Box::new(Lockstep)];
    #[cfg(feature = "peers")]
    engines.extend([
        Box::new(crate::peers::RocksDb) as Box<dyn EngineKind>,
        Box::new(crate::peers::Redb),
        Box::new(crate::peers::Fjall),
        Box::new(crate::peers::Sled),
        Box::new(crate::peers::Sqlite),
        Box::new(crate::peers::RaftEngine),
    ]);
    engines
}
