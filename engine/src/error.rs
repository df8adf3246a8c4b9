//! The engine's error type: one variant per thing a caller may act on.

use std::io;
use std::path::PathBuf;

use crate::format::{DecodeError, StoreId};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine. `Display` is one sentence a
/// person can act on; [`Error::exit_code`] maps each variant to sysexits.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store was written in a format version this build does not read.
    #[error(
        "{path}: the store uses format version {found}, but this build supports only version {supported}; \
         run a lockstep build that supports version {found}, or upgrade the store with `lockstep upgrade`"
    )]
    IncompatibleFormat { path: PathBuf, found: u32, supported: u32 },

    /// The store uses features (or settings) this build does not know.
    #[error("{path}: the store uses {what} {found:#x}, which this build does not know (it knows {known:#x}); open it with a newer lockstep build")]
    IncompatibleFeature { path: PathBuf, what: &'static str, found: u64, known: u64 },

    /// A segment belongs to another store.
    #[error("{path}: this segment belongs to store {found}, not to store {expected}; it was copied here by mistake — move it away")]
    ForeignSegment { path: PathBuf, found: StoreId, expected: StoreId },

    /// Segment files are missing, duplicated or overlap.
    #[error("{path}: {reason}; the segment sequence is broken, restore the missing segment from a backup or the peer")]
    SegmentSequence { path: PathBuf, reason: String },

    /// Stored bytes failed verification where they must be intact.
    #[error("{path} at offset {offset}: corruption detected ({reason}); the store refuses to open rather than return or drop damaged data — repair it from the peer or a backup")]
    Corruption { path: PathBuf, offset: u64, reason: Corruption },

    /// The directory is not a lockstep store (or its initialisation never finished).
    #[error("{path}: {reason}")]
    NotAStore { path: PathBuf, reason: String },

    /// The directory already holds a store.
    #[error("{path} already holds lockstep store {store_id}")]
    AlreadyExists { path: PathBuf, store_id: StoreId },

    /// Another process has the store open.
    #[error("{path} is in use by {holder}; stop that process first (`lockstep inspect` works while it runs)")]
    Locked { path: PathBuf, holder: String },

    /// A caller mistake: bad key, value, batch or option. Nothing was written.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The store refuses writes: it was opened read-only.
    #[error("the store was opened read-only")]
    ReadOnly,

    /// An earlier write or fsync failed; the store accepts no more writes
    /// until it is reopened (which recovers what is durable).
    #[error("the store stopped accepting writes after a failure ({reason}); reopen it to recover")]
    Poisoned { reason: String },

    /// A block received from the peer does not continue this log or fails
    /// verification. Nothing of it was written.
    #[error("the replicated block at log position {position} was refused: {reason}; nothing of it was written")]
    BadBlock { position: u64, reason: String },

    /// The store was closed.
    #[error("the store is closed")]
    Closed,

    /// An operating system I/O error.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

/// What kind of damage a [`Error::Corruption`] found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Corruption {
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("the superblock has no two agreeing copies ({valid} of 4 intact)")]
    SuperblockQuorum { valid: usize },
    #[error("segment {segment} is followed by another segment but has no valid seal")]
    Unsealed { segment: u64 },
    #[error("the seal does not match the segment's contents ({what})")]
    SealMismatch { what: &'static str },
    #[error("damaged bytes at or before the commit position {commit_position}, which was acknowledged")]
    BeforeCommit { commit_position: u64 },
    #[error("damaged bytes followed by a valid block at position {later_position} that was written after them")]
    ValidBlockAfter { later_position: u64 },
    #[error("a record read back does not hold the key the index points to")]
    WrongRecord,
    #[error("the segment has no header but holds data")]
    MissingHeader,
    #[error("the store holds no segment although its commit position is {commit_position}")]
    NoSegments { commit_position: u64 },
}

impl Error {
    /// The process exit code for this error (sysexits, see DESIGN.md).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::IncompatibleFormat { .. }
            | Error::IncompatibleFeature { .. }
            | Error::ForeignSegment { .. }
            | Error::SegmentSequence { .. } => 78,
            Error::Corruption { .. } | Error::BadBlock { .. } => 65,
            Error::NotAStore { .. } | Error::AlreadyExists { .. } | Error::InvalidArgument(_) => 64,
            Error::Locked { .. } => 75,
            Error::ReadOnly | Error::Poisoned { .. } | Error::Closed | Error::Io { .. } => 74,
        }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    pub(crate) fn corruption(path: impl Into<PathBuf>, offset: u64, reason: impl Into<Corruption>) -> Error {
        Error::Corruption { path: path.into(), offset, reason: reason.into() }
    }
}
