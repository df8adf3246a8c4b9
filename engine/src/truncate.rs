//! Cutting a store's log back to an earlier block boundary: what a former
//! primary does when it rejoins a promoted peer and holds a tail the new
//! primary never had. The records removed are returned first, so a person
//! (or `lockstep rejoin --export`) can keep them; nothing is dropped unseen.
//!
//! [`truncate_tail`] works on a closed store (it takes the directory lock):
//! segments after the cut are deleted, the segment holding it is zeroed
//! from the cut to its end (seal included), and the superblock forgets
//! epochs that began after the cut. A crash in between leaves a store that opens: zeros after
//! the last block are a clean end, and a deleted later segment was never
//! needed by an earlier one.

use std::path::Path;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::files;
use crate::format::{
    block_seed, record_seed, verify_block, SegmentHeader, COMPAT_UNREPLICATED_ACKS, RECORD_KIND_PUT,
    SEGMENT_HEADER_LEN, SEGMENT_HEADER_REGION,
};
use crate::recovery;
use crate::storage::{LockOutcome, OpenMode};
use crate::{Options, Store};

/// A record removed by [`truncate_tail`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedRecord {
    pub key: Bytes,
    /// `None` for a delete.
    pub value: Option<Bytes>,
    /// Log position of the block that held it.
    pub position: u64,
    /// Epoch of that block.
    pub epoch: u64,
}

/// What [`truncate_tail`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Truncation {
    /// The new log end.
    pub position: u64,
    /// Log bytes removed.
    pub bytes: u64,
    pub records: Vec<RemovedRecord>,
}

/// The records from `position` (a block boundary) to the end of the log,
/// without changing anything.
pub fn tail_records(store: &Store, position: u64) -> Result<Vec<RemovedRecord>> {
    let info = store.info();
    if store.fingerprint_at(position)?.is_none() {
        return Err(Error::InvalidArgument(format!(
            "log position {position} is not a block boundary of this store (its log ends at {})",
            info.log_end
        )));
    }
    let rseed = record_seed(&info.store_id);
    let (mut records, mut at) = (Vec::new(), position);
    while at < info.durable_end {
        let blocks = store.read_blocks(at, 4 << 20)?;
        for block in &blocks {
            let seed = block_seed(&info.store_id, block.segment, block.position);
            let verified = verify_block(&block.bytes, block.position, seed, rseed, None)
                .map_err(|e| Error::InvalidArgument(format!("block at {}: {e}", block.position)))?;
            for (_, r) in verified.records {
                records.push(RemovedRecord {
                    key: Bytes::copy_from_slice(r.key),
                    value: (r.kind == RECORD_KIND_PUT).then(|| Bytes::copy_from_slice(r.value)),
                    position: block.position,
                    epoch: verified.header.epoch,
                });
            }
            at = block.position + block.bytes.len() as u64;
        }
        if blocks.is_empty() {
            break;
        }
    }
    Ok(records)
}

/// Removes every block at or after `position` from the closed store in
/// `dir`. `position` must be a block boundary of its log (as
/// [`tail_records`] checks on the open store, which also lists what is
/// removed). Reads only segment headers and the segment holding the cut:
/// the time is proportional to the tail, not to the log. Clears
/// [`COMPAT_UNREPLICATED_ACKS`]: what remains is what the peer has.
pub fn truncate_tail(dir: &Path, options: &Options, position: u64) -> Result<()> {
    let storage = &*options.storage;
    let lock_path = dir.join(files::LOCK_FILE);
    let _guard = match storage.try_lock(&lock_path, "lockstep truncate").map_err(Error::io("locking the store"))? {
        LockOutcome::Acquired(guard) => guard,
        LockOutcome::HeldBy(holder) => return Err(Error::Locked { path: dir.into(), holder }),
    };
    let sb = recovery::read_superblock(storage, dir, false)?;
    let numbers = recovery::list_segments(storage, dir, &sb)?;
    let mut header = vec![0u8; SEGMENT_HEADER_LEN];
    let mut cut_done = false;
    for (i, &number) in numbers.iter().enumerate().rev() {
        let path = files::segment_path(dir, number);
        let io = |what: &str| Error::io(format!("{what} {}", path.display()));
        let file = storage.open(&path, OpenMode::ReadWrite).map_err(io("opening"))?;
        file.read_exact_at(&mut header, 0).map_err(io("reading"))?;
        // A segment without a header (a prepared spare) or starting after
        // the cut goes; so does a spare left behind.
        let first = SegmentHeader::decode(&header).ok().map(|h| h.first_position);
        if first.is_none_or(|first| first > position) && i > 0 {
            storage.remove_file(&path).map_err(io("removing"))?;
            continue;
        }
        let first = first.ok_or_else(|| Error::corruption(&path, 0, crate::error::Corruption::MissingHeader))?;
        let zeros = vec![0u8; 1 << 20];
        let mut at = SEGMENT_HEADER_REGION + (position - first);
        while at < sb.segment_size {
            let n = (sb.segment_size - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], at).map_err(io("zeroing"))?;
            at += n as u64;
        }
        file.sync_data().map_err(io("syncing"))?;
        cut_done = true;
        break;
    }
    if !cut_done {
        return Err(Error::InvalidArgument(format!("no segment of {} holds log position {position}", dir.display())));
    }
    storage.sync_dir(dir).map_err(Error::io("syncing the store directory"))?;
    let mut next = sb.successor();
    next.commit_position = next.commit_position.min(position);
    let first = next.epochs[0];
    next.epochs.retain(|e| e.start_position < position);
    if next.epochs.is_empty() {
        next.epochs.push(first);
    }
    next.epoch = next.epochs.last().map_or(first.epoch, |e| e.epoch);
    next.compat_features &= !COMPAT_UNREPLICATED_ACKS;
    files::write_superblock(storage, dir, &next)?;
    tracing::warn!("truncated the log at position {position}");
    Ok(())
}

/// Lists the tail after `position` of the store in `dir`, then removes it
/// ([`tail_records`], then [`truncate_tail`]); `keep` gets the records
/// before anything is changed (to export them) and may refuse.
pub fn cut_tail(
    dir: &Path,
    options: &Options,
    position: u64,
    keep: impl FnOnce(&[RemovedRecord]) -> Result<()>,
) -> Result<Truncation> {
    let store = Store::open(dir, Options { create_if_missing: false, replica: None, ..options.clone() })?;
    let log_end = store.info().log_end;
    let records = tail_records(&store, position)?;
    store.close()?;
    keep(&records)?;
    truncate_tail(dir, options, position)?;
    Ok(Truncation { position, bytes: log_end - position, records })
}
