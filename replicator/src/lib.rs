//! lockstep-replicator: the `lockstep` command-line tool's building blocks
//! (read-only inspection, the load runner) and, later, replication between
//! two sites.
#![forbid(unsafe_code)]

pub mod inspect;
pub mod load;
