//! lockstep-replicator: the `lockstep` command-line tool's building blocks
//! (read-only inspection, the load runner) and replication between two
//! sites: so far the wire protocol and the handshake rules; the node, the
//! client and the status server are not built yet (README, "Status").
#![forbid(unsafe_code)]

pub mod handshake;
pub mod inspect;
pub mod load;
pub mod protocol;
