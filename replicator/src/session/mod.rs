//! The replication link's decisions, apart from I/O: pure state machines
//! that take frames, store facts and the time as values and return what to
//! send and what to do. `node.rs` drives them over TCP with the real store
//! and clock; the simulator ([`crate::sim`]) drives the same machines over
//! its simulated network, disks and clock.
//!
//! * [`handshake::Handshake`]: Hello, Auth, Verdict on every connection;
//!   nothing a peer says is acted on before it authenticated.
//! * [`channel`]: per-frame authentication after the handshake.
//!
//! Not yet here (still in `node.rs` / `repl.rs`, see docs/TESTING.md): the
//! shipping and applying loops of an established link.

pub mod channel;
pub mod handshake;

use lockstep_engine::{Fingerprint, Store};

/// What the decisions read of a log: the narrow view of the store.
pub trait LogView {
    /// The end of what is durable.
    fn durable_end(&self) -> u64;
    /// The chained fingerprint at `position`, if it is a block boundary of
    /// the durable log.
    fn fingerprint_at(&self, position: u64) -> lockstep_engine::Result<Option<Fingerprint>>;
}

impl LogView for Store {
    fn durable_end(&self) -> u64 {
        self.info().durable_end
    }
    fn fingerprint_at(&self, position: u64) -> lockstep_engine::Result<Option<Fingerprint>> {
        Store::fingerprint_at(self, position)
    }
}
