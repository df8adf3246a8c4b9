//! The replication benchmark: the same durable write workload (16-byte
//! keys, 100-byte values, W concurrent writers) on a single store and on a
//! replicated pair at each sync level — two embedded [`Node`]s on loopback,
//! both stores on the same disk — so every ratio compares runs of one
//! process on one machine.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_engine::{Options, Store};
use lockstep_replicator::node::{Node, NodeConfig};
use lockstep_replicator::protocol::{Role, SyncLevel};

use crate::{key, run_threads, value, Result, Run};

/// What is measured: a single store, or a pair at a sync level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Unreplicated,
    Replicated(SyncLevel),
}

impl Mode {
    pub const ALL: [Mode; 4] = [
        Mode::Unreplicated,
        Mode::Replicated(SyncLevel::Durable),
        Mode::Replicated(SyncLevel::Received),
        Mode::Replicated(SyncLevel::Async),
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::Unreplicated => "unreplicated",
            Mode::Replicated(level) => level.name(),
        }
    }
}

fn config(dir: &Path, role: Role, peer: String, sync: SyncLevel) -> NodeConfig {
    NodeConfig { sync, ..NodeConfig::new(dir, role, "127.0.0.1:0", peer) }
}

/// Runs `ops` durable puts with `writers` threads in a fresh directory
/// under `root` (the secondary's under `secondary_root`: another disk, or
/// the same).
pub fn run(root: &Path, secondary_root: &Path, mode: Mode, writers: usize, ops: u64) -> Result<Run> {
    let primary_dir = root.join(format!("{}-{writers}-primary", mode.name()));
    std::fs::create_dir_all(root)?;
    std::fs::create_dir_all(secondary_root)?;
    let store_id = Store::create(&primary_dir, &Options::default())?;
    let Mode::Replicated(sync) = mode else {
        let store = Arc::new(Store::open(&primary_dir, Options::default())?);
        let s = store.clone();
        let run = run_threads(writers, ops, move |i| Ok(s.put(key(i), value(i))?))?;
        Arc::into_inner(store).ok_or("the store is still in use")?.close()?;
        return Ok(run);
    };
    let secondary_dir = secondary_root.join(format!("{}-{writers}-secondary", mode.name()));
    Store::create(&secondary_dir, &Options { store_id: Some(store_id), ..Options::default() })?;
    let secondary = Node::start(config(&secondary_dir, Role::Secondary, "127.0.0.1:9".into(), sync))?;
    let peer = secondary.repl_addr().ok_or("the secondary has no replication address")?.to_string();
    let primary = Arc::new(Node::start(config(&primary_dir, Role::Primary, peer, sync))?);
    let deadline = Instant::now() + Duration::from_secs(10);
    while primary.status()["link"] != "connected" {
        if Instant::now() > deadline {
            return Err(format!("the pair did not connect: {}", primary.status()).into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let p = primary.clone();
    let run = run_threads(writers, ops, move |i| Ok(p.put(key(i), value(i))?))?;
    Arc::into_inner(primary).ok_or("the primary is still in use")?.shutdown()?;
    secondary.shutdown()?;
    Ok(run)
}
