//! lockstep-replicator: synchronous replication between two sites and the
//! `lockstep` command-line tool's building blocks.
//!
//! * [`node::Node`]: a store plus its replication link (primary or
//!   secondary; promotion, demotion, rejoin, switchover) and client
//!   listener — what `lockstep serve` runs, and what an application embeds
//!   for replicated durability.
//! * [`client::Client`]: the client protocol (`lockstep client`, `status`).
//! * [`protocol`], [`handshake`], [`auth`]: frames, compatibility rules,
//!   peer authentication; [`repl`]: acknowledgement watermarks and the
//!   sync-level and peer-loss rules.
//! * [`session`]: the link's decisions as pure state machines (handshake,
//!   per-frame authentication), driven by the node and the simulator.
//! * [`drill`]: `lockstep drill`, the failover harness; [`rejoin`]: export
//!   and cut a former primary's divergent tail.
//! * [`proxy::FaultProxy`]: a fault-injecting TCP proxy for tests and drills;
//!   [`sim`]: the deterministic simulation of a pair (one seed, simulated
//!   disks, network and clock).
//! * [`inspect`], [`load`]: read-only inspection and the load runner.
#![forbid(unsafe_code)]

pub mod auth;
pub mod client;
pub mod drill;
pub mod handshake;
pub mod inspect;
pub mod load;
pub mod node;
pub mod protocol;
pub mod proxy;
pub mod rejoin;
pub mod repl;
pub mod session;
pub mod sim;
