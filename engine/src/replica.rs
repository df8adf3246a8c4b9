//! The hooks replication needs, without knowing why: read durable commit
//! blocks from a log position, the log fingerprint at a position, and append
//! a block received from the peer at the same position in the same segment,
//! so both sites' segment files stay byte-identical.
//!
//! Invariants:
//! * Only durable blocks are read, and every block read is verified (header,
//!   digest, records) before it is returned: corrupt bytes are never shipped.
//! * A received block is verified in full — position, segment, digest,
//!   records and the fingerprint chain from this log's end — before any byte
//!   of it is written; a block that fails is refused without poisoning the
//!   store, so a bad frame from the network loses nothing.

use bytes::Bytes;

use crate::committer::{Cmd, Wait};
use crate::error::{Error, Result};
use crate::files;
use crate::format::{block_seed, verify_block, BlockHeader, Fingerprint, BLOCK_HEADER_LEN, SEGMENT_HEADER_REGION};
use crate::store::{lock, read_segments, SegmentFile, Shared, Store};

/// Where a primary's commit blocks go as they are built, and what its
/// writers wait for before they are answered. Set in
/// [`crate::Options::replica`]; the replicator implements it.
///
/// The committer calls [`Replica::ship`] with every commit block right after
/// building it (before its local fdatasync, so the network and the remote
/// fsync overlap the local one), and [`Replica::wait_replicated`] once a
/// block is durable locally, before any reader or writer learns of it.
pub trait Replica: Send + Sync + std::fmt::Debug {
    /// Hands over a block just built. Must not block: a replica that cannot
    /// take it now drops it and reads it from the log later.
    fn ship(&self, block: &LogBlock);
    /// Waits until the log up to `end` is replicated as the sync level
    /// requires (or the replica decides to go on without its peer) and
    /// returns how far writers may be answered (at least `end`). An error fails
    /// the waiting writers and poisons the store: their bytes are in the
    /// local log but were never acknowledged.
    fn wait_replicated(&self, end: u64) -> std::result::Result<Replicated, String>;
    /// [`Replica::wait_replicated`] without waiting: `None` while the
    /// write ending at `end` may not be answered yet.
    fn replicated(&self, end: u64) -> std::result::Result<Option<Replicated>, String>;
    /// Called once when the store opens: `waker.wake()` makes the committer
    /// look at [`Replica::replicated`] again (call it on progress).
    fn set_waker(&self, waker: ReplicaWaker);
}

/// How far writers may be answered, and whether the peer holds that durably.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replicated {
    /// Writers of blocks ending at or before this may be answered.
    pub end: u64,
    /// The peer does not hold all of it durably (the replica answers
    /// alone: degraded, `received` or `async`). Before such an answer the
    /// store sets [`crate::format::COMPAT_UNREPLICATED_ACKS`] durably; an
    /// answer with `alone == false` clears it.
    pub alone: bool,
}

/// Wakes a store's committer (see [`Replica::set_waker`]).
#[derive(Debug, Clone)]
pub struct ReplicaWaker(pub(crate) crossbeam_channel::Sender<()>);

impl ReplicaWaker {
    pub fn wake(&self) {
        // Wake-ups coalesce: one pending is enough; a closed store needs none.
        let _ = self.0.try_send(());
    }
}

/// A received block being appended: [`PendingAppend::wait`] returns once it
/// is durable (or refused).
#[derive(Debug)]
pub struct PendingAppend(crossbeam_channel::Receiver<Result<()>>);

impl PendingAppend {
    pub fn wait(self) -> Result<()> {
        crate::committer::wait(&self.0, Wait::SharedDurable)
    }
}

/// A commit block as it lies in the log: its segment, log position and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogBlock {
    pub segment: u64,
    pub position: u64,
    pub bytes: Bytes,
}

impl Store {
    /// Durable blocks starting at `from` (a block boundary), in log order:
    /// at least one if any is durable there, and no more once `max_bytes`
    /// are gathered. Empty when `from` is the durable end.
    pub fn read_blocks(&self, from: u64, max_bytes: usize) -> Result<Vec<LogBlock>> {
        let end = self.info().durable_end;
        if from > end {
            return Err(Error::InvalidArgument(format!(
                "log position {from} is beyond the durable end of the log ({end})"
            )));
        }
        let (mut blocks, mut pos, mut total) = (Vec::new(), from, 0);
        while pos < end && (blocks.is_empty() || total < max_bytes) {
            let (block, _) = self.shared.block_at(pos, None)?;
            pos += block.bytes.len() as u64;
            total += block.bytes.len();
            blocks.push(block);
        }
        Ok(blocks)
    }

    /// The log fingerprint after the block that ends at `position`, if
    /// `position` is a block boundary at or below the durable end. Reads and
    /// verifies the chain from the start of the segment holding `position`.
    pub fn fingerprint_at(&self, position: u64) -> Result<Option<Fingerprint>> {
        if position > self.info().durable_end {
            return Ok(None);
        }
        let (_, segment) = self.shared.segment_holding(position)?;
        let (mut pos, mut fingerprint) = (segment.first_position, segment.start_fingerprint);
        while pos < position {
            let (block, after) = self.shared.block_at(pos, Some(fingerprint))?;
            pos += block.bytes.len() as u64;
            fingerprint = after;
        }
        Ok((pos == position).then_some(fingerprint))
    }

    /// Appends a block received from the primary: it must continue this
    /// log exactly (position, segment, fingerprint chain) and verify in
    /// full. Durable and visible to readers on return. A refused block
    /// changes nothing ([`Error::BadBlock`]).
    pub fn append_replicated(&self, block: LogBlock) -> Result<()> {
        self.submit_replicated(block)?.wait()
    }

    /// Like [`Store::append_replicated`] without waiting: blocks submitted
    /// back to back share one fdatasync. Answers come in submission order.
    pub fn submit_replicated(&self, block: LogBlock) -> Result<PendingAppend> {
        let (reply, done) = crossbeam_channel::bounded(1);
        self.send(Cmd::Replicated(block, reply))?;
        Ok(PendingAppend(done))
    }
}

impl Shared {
    /// The segment whose data area holds `position` (or starts there).
    pub(crate) fn segment_holding(&self, position: u64) -> Result<(u64, SegmentFile)> {
        read_segments(self)
            .iter()
            .rev()
            .find(|(_, s)| s.first_position <= position)
            .map(|(n, s)| (*n, s.clone()))
            .ok_or_else(|| Error::InvalidArgument(format!("no segment of this store holds log position {position}")))
    }

    /// The block at `position`, verified (and chained from `prev`, if
    /// given), with the fingerprint after it.
    fn block_at(&self, position: u64, prev: Option<Fingerprint>) -> Result<(LogBlock, Fingerprint)> {
        let (number, segment) = self.segment_holding(position)?;
        let offset = SEGMENT_HEADER_REGION + (position - segment.first_position);
        let path = || files::segment_path(&self.dir, number);
        let io = |e| Error::Io { context: format!("reading {}", path().display()), source: e };
        let seed = block_seed(&self.store_id, number, position);
        let header = segment.read(offset, BLOCK_HEADER_LEN).map_err(io)?;
        let header = BlockHeader::decode(&header, seed).map_err(|e| Error::corruption(path(), offset, e))?;
        let bytes = segment.read(offset, header.len as usize).map_err(io)?;
        let verified = verify_block(&bytes, position, seed, self.record_seed, prev)
            .map_err(|e| Error::corruption(path(), offset, e))?;
        let fingerprint = verified.fingerprint;
        Ok((LogBlock { segment: number, position, bytes }, fingerprint))
    }

    /// Refuses further writes if the store is poisoned.
    pub(crate) fn check_poisoned(&self) -> Result<()> {
        match &*lock(&self.poisoned) {
            Some(reason) => Err(Error::Poisoned { reason: reason.clone() }),
            None => Ok(()),
        }
    }
}
