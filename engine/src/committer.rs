//! The write path. [`LogWriter`] owns the end of the log: it packs encoded
//! records into commit blocks, writes them, rolls segments and publishes
//! what it wrote to the index. Durable writes reach it through the
//! [`Committer`] thread, which drains every pending request into one group
//! that shares one fdatasync; buffered writes call it on their own thread.
//!
//! Invariants:
//! * Blocks are written at strictly increasing, contiguous log positions.
//! * A block's `commit_position` is the durable end before it, so a later
//!   valid block proves every earlier byte was acknowledged.
//! * The index changes only after the bytes it points to are written (and,
//!   for a durable write, synced) — or, for buffered writes, are in the open
//!   block that readers can see.
//! * A segment is rolled only between blocks: seal (synced), then the next
//!   segment's header (synced) before any block goes into it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

use crate::error::{Error, Result};
use crate::files::{self, SegmentStart};
use crate::format::{
    block_seed, finished_block_len, record_len, segment_data_len, verify_block, BlockBuilder, EpochStart, Fingerprint,
    Seal, SegmentDigester, Superblock, BLOCK_HEADER_LEN, BLOCK_LEN_MAX, COMPAT_UNREPLICATED_ACKS, EPOCH_HISTORY_MAX,
    RECORD_KIND_DELETE, SEAL_REGION, SEGMENT_HEADER_REGION,
};
use crate::replica::{LogBlock, Replicated};
use crate::storage::{StorageFile, SyncTicket};
use crate::store::{lock, write, Loc, SegmentFile, Shared};

/// The committer stops draining the queue into one group past this many bytes.
pub(crate) const GROUP_BYTES_MAX: usize = 4 << 20;
/// Commit blocks written and being synced at once. While they are in
/// flight the committer builds and submits the next; their writers are
/// answered strictly in log order as each completes.
pub(crate) const INFLIGHT_BLOCKS_MAX: usize = 4;
/// Buffered writes collect in one open block in memory; it is written out
/// once it holds this many bytes of records ...
pub(crate) const BUFFERED_BLOCK_BYTES_MAX: usize = 256 << 10;
/// ... or when it is this old, whichever comes first (and at every sync).
pub(crate) const BUFFERED_FLUSH_INTERVAL: Duration = Duration::from_millis(10);

/// The block buffered writes are collecting into: not written to its
/// segment yet. Readers find its records here (see `Shared::read_value`).
#[derive(Debug)]
pub(crate) struct OpenBlock {
    pub segment: u64,
    /// File offset where the block will be written.
    pub file_offset: u64,
    pub builder: BlockBuilder,
    pub opened: Instant,
}

impl OpenBlock {
    /// The bytes of the record at `loc`, if it is in this block.
    pub(crate) fn record(&self, loc: &Loc) -> Option<Vec<u8>> {
        let start = usize::try_from(loc.offset.checked_sub(self.file_offset)?).ok()?;
        if loc.segment != self.segment || start < BLOCK_HEADER_LEN {
            return None;
        }
        self.builder.bytes().get(start..start.checked_add(loc.len as usize)?).map(<[u8]>::to_vec)
    }
}

/// How long the committer busy-polls for the next request before it sleeps.
/// Waking a sleeping thread costs tens of microseconds on an idle VM core; a
/// short poll hides that for back-to-back requests.
const COMMITTER_POLL: Duration = Duration::from_micros(1000);
/// How long a lone durable writer polls for its answer: about the longest
/// fdatasync worth waiting for awake. Polling keeps its core from going idle,
/// which saves the wake-up on every commit; with several writers waiting it
/// would only take CPU from the committer, so they sleep at once.
const LONE_WRITER_REPLY_POLL: Duration = Duration::from_millis(2);
/// While groups wait for the replica and no request comes, the committer
/// looks at the replica at least this often (it is also woken on progress).
const REPLICA_POLL: Duration = Duration::from_millis(5);

/// The next message, polling for `poll` before sleeping up to `timeout`.
fn poll_then_wait<T>(rx: &Receiver<T>, poll: Duration, timeout: Duration) -> Result<T, RecvTimeoutError> {
    let start = Instant::now();
    loop {
        match rx.try_recv() {
            Ok(msg) => return Ok(msg),
            Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
            Err(TryRecvError::Empty) if start.elapsed() < poll => std::thread::yield_now(),
            Err(TryRecvError::Empty) if timeout == Duration::MAX => {
                return rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            }
            Err(TryRecvError::Empty) => return rx.recv_timeout(timeout),
        }
    }
}

/// How a writer waits for the committer's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// The only writer waiting, for an fsync.
    LoneDurable,
    /// One of several writers waiting for an fsync.
    SharedDurable,
}

/// Waits for the committer's answer to one request.
pub(crate) fn wait(done: &Receiver<Result<()>>, how: Wait) -> Result<()> {
    let answer = match how {
        Wait::LoneDurable => poll_then_wait(done, LONE_WRITER_REPLY_POLL, Duration::MAX).ok(),
        Wait::SharedDurable => done.recv().ok(),
    };
    answer.unwrap_or(Err(Error::Closed))
}

/// One record of a write request, for the index.
#[derive(Debug)]
pub(crate) struct Entry {
    pub key: Bytes,
    /// Offset of the record within the request's encoded records.
    pub offset: u32,
    pub len: u32,
    pub delete: bool,
}

/// Records encoded by a writer thread, to be committed atomically.
#[derive(Debug)]
pub(crate) struct WriteRequest {
    pub records: Vec<u8>,
    pub count: u32,
    pub entries: Vec<Entry>,
}

/// What the committer thread is asked to do; every command is answered
/// once what it asked for is durable.
#[derive(Debug)]
pub(crate) enum Cmd {
    /// Append these records durably.
    Write(WriteRequest, Sender<Result<()>>),
    /// Make everything written so far durable.
    Sync(Sender<Result<()>>),
    /// A buffered write opened a block: write it out within
    /// [`BUFFERED_FLUSH_INTERVAL`] unless something else does first.
    FlushSoon,
    /// Append a block received from the primary durably.
    Replicated(LogBlock, Sender<Result<()>>),
    /// Begin the epoch after both this store's and the one given, at the
    /// log end; answer with it.
    Promote(u64, Sender<Result<u64>>),
    /// The peer holds the log durably up to this position (see
    /// `Store::peer_holds`); nobody waits for it.
    PeerHolds(u64),
}

/// A promotion asked for while a group was gathered: the known epoch and
/// where to answer.
type PromoteRequest = (u64, Sender<Result<u64>>);

impl Cmd {
    fn len(&self) -> usize {
        match self {
            Cmd::Write(w, _) => w.records.len(),
            Cmd::Replicated(b, _) => b.bytes.len(),
            Cmd::Sync(_) | Cmd::FlushSoon | Cmd::Promote(..) | Cmd::PeerHolds(_) => 0,
        }
    }

    fn reply(self, result: Result<()>) {
        match self {
            // A writer that gave up waiting is not an error of the committer.
            Cmd::Write(_, reply) | Cmd::Sync(reply) | Cmd::Replicated(_, reply) => {
                let _ = reply.send(result);
            }
            Cmd::Promote(_, reply) => {
                let _ = reply.send(result.map(|()| 0));
            }
            Cmd::FlushSoon | Cmd::PeerHolds(_) => {}
        }
    }
}

/// The segment blocks are appended to.
pub(crate) struct ActiveSegment {
    pub number: u64,
    pub first_position: u64,
    /// Hash state over the data written so far, for the seal.
    pub digester: SegmentDigester,
}

/// The segment after the active one, zeroed ahead of need.
enum Spare {
    Ready(Result<Arc<dyn StorageFile>>),
    Preparing(JoinHandle<Result<Arc<dyn StorageFile>>>),
}

impl Spare {
    /// Starts preparing segment `number` on a background thread.
    fn prepare(shared: &Shared, number: u64, segment_size: u64) -> Spare {
        let (storage, dir) = (shared.storage.clone(), shared.dir.clone());
        let work = move || files::prepare_segment(&*storage, &dir, number, segment_size);
        match std::thread::Builder::new().name("lockstep-prepare".into()).spawn(work) {
            Ok(handle) => Spare::Preparing(handle),
            // No thread to spare: prepare it here and now instead.
            Err(_) => Spare::Ready(files::prepare_segment(&*shared.storage, &shared.dir, number, segment_size)),
        }
    }

    /// The prepared file, waiting for the preparation if it is still running.
    fn take(self) -> Result<Arc<dyn StorageFile>> {
        match self {
            Spare::Ready(file) => file,
            Spare::Preparing(handle) => {
                handle.join().unwrap_or_else(|_| Err(Error::Poisoned { reason: "preparing a segment panicked".into() }))
            }
        }
    }
}

/// The end of the log and everything needed to append to it. Appends of a
/// `Durability::Buffered` store run on the writer's own thread; those of a
/// `Durability::Sync` store run on the committer thread. Either way the
/// mutex around it serialises them, so log order is index order.
pub(crate) struct LogWriter {
    shared: Arc<Shared>,
    superblock: Superblock,
    active: ActiveSegment,
    file: Arc<dyn StorageFile>,
    spare: Option<Spare>,
    position: u64,
    fingerprint: Fingerprint,
    durable_end: u64,
    /// Write + sync pairs submitted and not yet waited for, oldest first,
    /// each with the log end it makes durable.
    inflight: VecDeque<(SyncTicket, u64)>,
    /// The highest log end answered without the peer holding it, while
    /// [`COMPAT_UNREPLICATED_ACKS`] is set (after a restart: the log end
    /// at open, as nothing more precise is known).
    alone_end: u64,
}

type IndexUpdate = (Bytes, Option<Loc>);

/// Where the log would end after the received blocks checked so far.
struct Cursor {
    position: u64,
    fingerprint: Fingerprint,
    epoch: u64,
    segment: u64,
    /// Free bytes left in `segment`.
    room: usize,
}

/// A received block that verified: whether it starts a new segment, its
/// records (key, offset in the block, length, is a delete), and the log
/// fingerprint after it.
struct Checked {
    rolls: bool,
    epoch: u64,
    records: Vec<(Bytes, u64, u32, bool)>,
    fingerprint: Fingerprint,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter")
            .field("segment", &self.active.number)
            .field("position", &self.position)
            .field("durable_end", &self.durable_end)
            .finish_non_exhaustive()
    }
}

/// The committer thread: drains the queue into groups that share one fsync.
pub(crate) struct Committer {
    rx: Receiver<Cmd>,
    /// The replica's wake-ups (see `crate::ReplicaWaker`).
    wake: Receiver<()>,
    writer: Arc<Mutex<LogWriter>>,
    shared: Arc<Shared>,
}

impl Committer {
    pub(crate) fn new(
        rx: Receiver<Cmd>,
        wake: Receiver<()>,
        writer: Arc<Mutex<LogWriter>>,
        shared: Arc<Shared>,
    ) -> Self {
        Committer { rx, wake, writer, shared }
    }

    /// Serves requests until every [`crate::Store`] handle is gone, then
    /// makes everything durable and records the commit position.
    pub(crate) fn run(self) -> Result<()> {
        let mut waiting = VecDeque::new();
        loop {
            let first = if waiting.is_empty() {
                // Sleep for good unless buffered writes wait in memory.
                let open = lock(&self.shared.open_block).is_some();
                let timeout = if open { BUFFERED_FLUSH_INTERVAL } else { Duration::MAX };
                match poll_then_wait(&self.rx, COMMITTER_POLL, timeout) {
                    Ok(Cmd::FlushSoon) => continue,
                    Ok(cmd) => cmd,
                    Err(RecvTimeoutError::Timeout) => {
                        // A failure poisons the store; the next write reports it.
                        let _ = lock(&self.writer).flush_if_stale();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else if let Some(replica) = &self.shared.replica {
                // Answer what both sites hold, then take the next request
                // while the oldest groups wait for the replica.
                self.complete_replicated(replica.as_ref(), &mut waiting);
                if waiting.is_empty() {
                    continue;
                }
                if waiting.len() >= INFLIGHT_BLOCKS_MAX {
                    self.complete_oldest(&mut waiting);
                    continue;
                }
                match self.rx.try_recv() {
                    Ok(cmd) => cmd,
                    Err(TryRecvError::Disconnected) => break,
                    Err(TryRecvError::Empty) if !lock(&self.writer).oldest_is_durable() => {
                        self.complete_oldest(&mut waiting);
                        continue;
                    }
                    // Sleep until a request, the replica's wake-up or a
                    // timeout (the replica's own deadlines, e.g. peer loss).
                    Err(TryRecvError::Empty) => crossbeam_channel::select! {
                        recv(self.rx) -> cmd => match cmd {
                            Ok(Cmd::FlushSoon) => continue,
                            Ok(cmd) => cmd,
                            Err(_) => break,
                        },
                        recv(self.wake) -> _ => continue,
                        default(REPLICA_POLL) => continue,
                    },
                }
            } else {
                match self.rx.try_recv() {
                    Ok(cmd) => cmd,
                    // Nothing new: the oldest block in flight is what to wait for.
                    Err(_) => {
                        self.complete_oldest(&mut waiting);
                        continue;
                    }
                }
            };
            if let Cmd::Promote(known, reply) = first {
                self.promote(&mut waiting, known, reply);
                continue;
            }
            if let Cmd::PeerHolds(position) = first {
                self.peer_holds(position);
                continue;
            }
            let (group, promote) = self.gather(first);
            if group.iter().any(|cmd| matches!(cmd, Cmd::Replicated(..))) {
                self.submit_replicated(group, &mut waiting);
            } else {
                self.submit_writes(group, &mut waiting);
            }
            if let Some((known, reply)) = promote {
                self.promote(&mut waiting, known, reply);
            }
        }
        while !waiting.is_empty() {
            self.complete_oldest(&mut waiting);
        }
        lock(&self.writer).finish()
    }

    /// Appends the writes of `group` and starts making them durable.
    fn submit_writes(&self, group: Vec<Cmd>, waiting: &mut VecDeque<Waiting>) {
        {
            let requests: Vec<&WriteRequest> =
                group.iter().filter_map(|cmd| if let Cmd::Write(w, _) = cmd { Some(w) } else { None }).collect();
            let submitted = lock(&self.writer).submit(&requests);
            match submitted {
                Ok((end, updates)) => {
                    waiting.push_back(Waiting { end, group, updates, own: true });
                    if self.should_complete_now(waiting) {
                        self.complete_oldest(waiting);
                    }
                }
                Err(reason) => {
                    for cmd in group {
                        cmd.reply(Err(Error::Poisoned { reason: reason.clone() }));
                    }
                }
            }
        }
    }

    /// Appends the received blocks of `group` (in order, up to the first
    /// refused one) with one fdatasync; local writes in the same group are
    /// refused: a store that receives a replicated log takes no others.
    fn submit_replicated(&self, group: Vec<Cmd>, waiting: &mut VecDeque<Waiting>) {
        let blocks: Vec<&LogBlock> =
            group.iter().filter_map(|cmd| if let Cmd::Replicated(b, _) = cmd { Some(b) } else { None }).collect();
        let submitted = lock(&self.writer).submit_replicated(&blocks);
        let (end, updates, accepted, refusal) = match submitted {
            Ok(outcome) => outcome,
            Err(reason) => {
                for cmd in group {
                    cmd.reply(Err(Error::Poisoned { reason: reason.clone() }));
                }
                return;
            }
        };
        let (mut index, mut answered) = (0, Vec::new());
        for cmd in group {
            match cmd {
                Cmd::Replicated(..) if index < accepted => {
                    index += 1;
                    answered.push(cmd);
                }
                Cmd::Replicated(ref block, _) => {
                    let at = block.position;
                    let reason = match &refusal {
                        Some(Error::BadBlock { position, reason }) if *position == at => reason.clone(),
                        _ => "an earlier block of the same batch was refused".into(),
                    };
                    cmd.reply(Err(Error::BadBlock { position: at, reason }));
                }
                Cmd::Write(..) => cmd.reply(Err(Error::InvalidArgument(
                    "this store receives a replicated log; write through the primary".into(),
                ))),
                Cmd::Sync(_) | Cmd::FlushSoon | Cmd::Promote(..) | Cmd::PeerHolds(_) => answered.push(cmd),
            }
        }
        waiting.push_back(Waiting { end, group: answered, updates, own: false });
        if self.should_complete_now(waiting) {
            self.complete_oldest(waiting);
        }
    }

    /// Whether to complete the oldest group now rather than build the next.
    /// With a replica, groups keep being built and shipped while earlier
    /// ones wait for their acknowledgement (see `run`).
    fn should_complete_now(&self, waiting: &VecDeque<Waiting>) -> bool {
        match self.shared.replica {
            Some(_) => waiting.len() >= INFLIGHT_BLOCKS_MAX,
            None => lock(&self.writer).should_wait_now(),
        }
    }

    /// Publishes and answers, in log order, every group that is durable
    /// here and acknowledged by the replica, without blocking.
    fn complete_replicated(&self, replica: &dyn crate::Replica, waiting: &mut VecDeque<Waiting>) {
        while let Some(oldest) = waiting.front() {
            let local = lock(&self.writer).poll_durable();
            let ready = match local {
                Ok(local) if oldest.end > local => return,
                Ok(_) if !oldest.own => Ok(None),
                Ok(_) => replica.replicated(oldest.end).map(Some),
                Err(reason) => Err(reason),
            };
            let result = match ready {
                Ok(Some(None)) => return,
                Ok(Some(Some(r))) => lock(&self.writer).note_alone(r),
                Ok(None) => Ok(()),
                Err(reason) => Err(lock(&self.writer).poison(format!("not replicated: {reason}"))),
            };
            let Some(done) = waiting.pop_front() else { return };
            if result.is_ok() {
                self.shared.index.apply(&done.updates);
            }
            for cmd in done.group {
                cmd.reply(result.clone().map_err(|reason| Error::Poisoned { reason }));
            }
        }
    }

    /// `first` and whatever else is queued, up to [`GROUP_BYTES_MAX`].
    fn gather(&self, first: Cmd) -> (Vec<Cmd>, Option<PromoteRequest>) {
        let mut bytes = first.len();
        let mut group = vec![first];
        while bytes < GROUP_BYTES_MAX {
            match self.rx.try_recv() {
                // A promotion is a barrier: it runs after this group.
                Ok(Cmd::Promote(known, reply)) => return (group, Some((known, reply))),
                Ok(Cmd::PeerHolds(position)) => self.peer_holds(position),
                Ok(cmd) => {
                    bytes += cmd.len();
                    group.push(cmd);
                }
                Err(_) => break,
            }
        }
        (group, None)
    }

    /// Answers everything waiting, then begins the next epoch.
    fn peer_holds(&self, position: u64) {
        // A failure poisons the store; the next write reports it.
        let _ = lock(&self.writer).peer_holds(position);
    }

    fn promote(&self, waiting: &mut VecDeque<Waiting>, known_epoch: u64, reply: Sender<Result<u64>>) {
        while !waiting.is_empty() {
            self.complete_oldest(waiting);
        }
        let promoted = lock(&self.writer).promote(known_epoch).map_err(|reason| Error::Poisoned { reason });
        let _ = reply.send(promoted);
    }

    /// Waits for the oldest block in flight, then publishes and answers
    /// every group that is now durable, in log order. After a failure every
    /// group still waiting fails: none of them may be acknowledged.
    fn complete_oldest(&self, waiting: &mut VecDeque<Waiting>) {
        let mut durable = lock(&self.writer).wait_oldest();
        if let (Ok(local), Some(replica), Some(oldest)) = (&durable, &self.shared.replica, waiting.front()) {
            if oldest.end <= *local {
                durable = match oldest.own {
                    // Received blocks are answered alone; the next group waits its turn.
                    false => Ok(oldest.end),
                    true => match replica.wait_replicated(oldest.end) {
                        Ok(r) => lock(&self.writer).note_alone(r).map(|()| r.end.min(*local)),
                        Err(reason) => Err(lock(&self.writer).poison(format!("not replicated: {reason}"))),
                    },
                };
            }
        }
        while let Some(next) = waiting.front() {
            if durable.as_ref().is_ok_and(|end| next.end > *end) {
                // Still in flight (locally, or waiting for the replica).
                debug_assert!(self.shared.replica.is_some() || !lock(&self.writer).inflight.is_empty());
                break;
            }
            let Some(done) = waiting.pop_front() else { break };
            if durable.is_ok() {
                self.shared.index.apply(&done.updates);
            }
            for cmd in done.group {
                cmd.reply(durable.as_ref().map(|_| ()).map_err(|reason| Error::Poisoned { reason: reason.clone() }));
            }
        }
    }
}

/// A group of commands whose blocks are in flight.
struct Waiting {
    /// The log end that must be durable before the group is answered.
    end: u64,
    group: Vec<Cmd>,
    updates: Vec<IndexUpdate>,
    /// This store's own writes: they wait for its replica. Blocks received
    /// from a primary do not (they are the primary's writes).
    own: bool,
}

impl LogWriter {
    pub(crate) fn new(
        shared: Arc<Shared>,
        superblock: Superblock,
        active: ActiveSegment,
        spare: Option<Arc<dyn StorageFile>>,
        position: u64,
        fingerprint: Fingerprint,
    ) -> Result<LogWriter> {
        let file = crate::store::read_segments(&shared)
            .get(&active.number)
            .map(|segment| segment.file.clone())
            .ok_or_else(|| Error::Poisoned { reason: format!("segment {} is not open", active.number) })?;
        debug_assert!(position >= active.first_position);
        let spare = spare.map(|file| Spare::Ready(Ok(file)));
        let superblock_has_alone_acks = superblock.compat_features & COMPAT_UNREPLICATED_ACKS != 0;
        Ok(LogWriter {
            shared,
            superblock,
            active,
            file,
            spare,
            position,
            fingerprint,
            durable_end: position,
            inflight: VecDeque::new(),
            alone_end: if superblock_has_alone_acks { position } else { 0 },
        })
    }

    /// Writes `requests` (in order, atomically each) and starts making them
    /// durable; returns the log end that must be durable before they may be
    /// answered, and their index updates, to publish then. With no requests,
    /// makes everything written so far durable before returning. An error
    /// poisons the store: the reason is returned now and to every later call.
    pub(crate) fn submit(&mut self, requests: &[&WriteRequest]) -> Result<(u64, Vec<IndexUpdate>), String> {
        let mut updates = Vec::new();
        self.commit_with(|writer| {
            updates = writer.append(requests)?;
            Ok(Vec::new())
        })?;
        Ok((self.position, updates))
    }

    /// Verifies received blocks in order and writes the longest prefix that
    /// continues this log, submitting the last with its fdatasync. Returns
    /// the log end to wait for, the index updates, how many blocks were
    /// accepted, and why the next one was refused, if one was. A refusal
    /// changes nothing; an I/O failure poisons the store.
    #[allow(clippy::type_complexity)]
    pub(crate) fn submit_replicated(
        &mut self,
        blocks: &[&LogBlock],
    ) -> Result<(u64, Vec<IndexUpdate>, usize, Option<Error>), String> {
        if let Some(reason) = lock(&self.shared.poisoned).clone() {
            return Err(reason);
        }
        let mut cursor = Cursor {
            position: self.position,
            fingerprint: self.fingerprint,
            epoch: self.superblock.epoch,
            segment: self.active.number,
            room: self.segment_room(),
        };
        let mut checked = Vec::with_capacity(blocks.len());
        let mut refusal = None;
        for block in blocks {
            match self.check_replicated(&mut cursor, block) {
                Ok(c) => checked.push(c),
                Err(e) => {
                    refusal = Some(e);
                    break;
                }
            }
        }
        let accepted = checked.len();
        let mut updates = Vec::new();
        self.commit_with(|writer| {
            for (i, (block, check)) in blocks.iter().zip(checked).enumerate() {
                if check.epoch > writer.superblock.epoch {
                    // The primary was promoted: record its epoch before any
                    // block of it lands here.
                    writer.begin_epoch(check.epoch, writer.position)?;
                }
                if check.rolls {
                    writer.roll()?;
                }
                let file_offset = SEGMENT_HEADER_REGION + (writer.position - writer.active.first_position);
                writer.active.digester.update(&block.bytes);
                let end = writer.position + block.bytes.len() as u64;
                if i + 1 == accepted {
                    let ticket = writer.file.submit_write_and_sync(block.bytes.clone(), file_offset);
                    writer.inflight.push_back((ticket, end));
                } else {
                    writer.file.write_all_at(&block.bytes, file_offset).map_err(Error::io("writing a commit block"))?;
                }
                updates.extend(check.records.into_iter().map(|(key, offset, len, delete)| {
                    let loc = Loc { segment: block.segment, offset: file_offset + offset, len };
                    (key, (!delete).then_some(loc))
                }));
                writer.position = end;
                writer.fingerprint = check.fingerprint;
            }
            Ok(Vec::new())
        })?;
        self.prepare_spare_when_half_full();
        Ok((self.position, updates, accepted, refusal))
    }

    /// Checks that `block` continues the log at `cursor` and verifies it in
    /// full; advances the cursor past it.
    fn check_replicated(&self, cursor: &mut Cursor, block: &LogBlock) -> Result<Checked> {
        let refuse = |reason: String| Error::BadBlock { position: block.position, reason };
        if block.position != cursor.position {
            return Err(refuse(format!("this log ends at position {}; blocks must arrive in order", cursor.position)));
        }
        let rolls = block.segment != cursor.segment;
        if rolls && block.segment != cursor.segment + 1 {
            return Err(refuse(format!(
                "it is for segment {}, but the active segment is {}",
                block.segment, cursor.segment
            )));
        }
        let seed = block_seed(&self.superblock.store_id, block.segment, block.position);
        let verified =
            verify_block(&block.bytes, block.position, seed, self.shared.record_seed, Some(cursor.fingerprint))
                .map_err(|e| refuse(format!("it failed verification: {e}")))?;
        let epoch = verified.header.epoch;
        if epoch < cursor.epoch {
            return Err(refuse(format!(
                "it was written in epoch {epoch}, but this log is in epoch {}: it comes from a demoted primary",
                cursor.epoch
            )));
        }
        let len = block.bytes.len();
        if verified.header.len as usize != len {
            return Err(refuse(format!("it is {len} bytes long, but its header says {}", verified.header.len)));
        }
        let room = if rolls { segment_data_len(self.superblock.segment_size) as usize } else { cursor.room };
        if len > room {
            return Err(refuse(format!("it is {len} bytes long, but segment {} has room for {room}", block.segment)));
        }
        let records = verified
            .records
            .iter()
            .map(|(offset, r)| {
                let len = record_len(r.key.len(), r.value.len()) as u32;
                (Bytes::copy_from_slice(r.key), *offset as u64, len, r.kind == RECORD_KIND_DELETE)
            })
            .collect();
        *cursor = Cursor {
            position: cursor.position + len as u64,
            fingerprint: verified.fingerprint,
            epoch,
            segment: block.segment,
            room: room - len,
        };
        Ok(Checked { rolls, epoch, records, fingerprint: verified.fingerprint })
    }

    /// The durable end after every write + sync in flight that already
    /// completed; never blocks.
    pub(crate) fn poll_durable(&mut self) -> Result<u64, String> {
        while self.oldest_is_durable() && !self.inflight.is_empty() {
            self.wait_oldest()?;
        }
        match lock(&self.shared.poisoned).clone() {
            Some(reason) => Err(reason),
            None => Ok(self.durable_end),
        }
    }

    /// Whether the oldest write + sync in flight completed (or none is).
    fn oldest_is_durable(&self) -> bool {
        self.inflight.front().is_none_or(|(ticket, _)| ticket.is_done())
    }

    /// Waits for the oldest write + sync in flight and returns the durable
    /// end after it (at once if nothing is in flight). A failure poisons the
    /// store and abandons every other pair in flight.
    pub(crate) fn wait_oldest(&mut self) -> Result<u64, String> {
        self.commit_with(|writer| writer.wait_inflight(1).map(|()| Vec::new()))?;
        Ok(self.durable_end)
    }

    /// Adds one request to the open block (writing the block out first if
    /// it is full) and publishes it to the index at once; the bytes reach
    /// the file within [`BUFFERED_FLUSH_INTERVAL`] or at the next sync.
    /// Returns whether the request opened a new block.
    pub(crate) fn commit_buffered(&mut self, request: &WriteRequest) -> Result<bool, String> {
        let was_open = lock(&self.shared.open_block).is_some();
        self.commit_with(|writer| writer.append_buffered(request))?;
        Ok(!was_open)
    }

    /// Writes out the open block if it is older than [`BUFFERED_FLUSH_INTERVAL`].
    pub(crate) fn flush_if_stale(&mut self) -> Result<(), String> {
        let stale =
            lock(&self.shared.open_block).as_ref().is_some_and(|b| b.opened.elapsed() >= BUFFERED_FLUSH_INTERVAL);
        if !stale {
            return Ok(());
        }
        self.commit_with(|writer| writer.flush_open_block().map(|()| Vec::new()))
    }

    fn commit_with(&mut self, work: impl FnOnce(&mut Self) -> Result<Vec<IndexUpdate>>) -> Result<(), String> {
        if let Some(reason) = lock(&self.shared.poisoned).clone() {
            return Err(reason);
        }
        let updates = work(self).map_err(|e| self.poison(e.to_string()))?;
        self.shared.index.apply(&updates);
        let open_len = lock(&self.shared.open_block).as_ref().map_or(0, |b| b.builder.finished_len() as u64);
        let mut status = lock(&self.shared.status);
        status.log_end = self.position + open_len;
        status.durable_end = self.durable_end;
        status.fingerprint = self.fingerprint;
        Ok(())
    }

    /// Begins the next epoch after this store's and `known_epoch` at the
    /// log end (see `Store::promote_past`).
    pub(crate) fn promote(&mut self, known_epoch: u64) -> Result<u64, String> {
        let mut epoch = 0;
        self.commit_with(|writer| {
            writer.append(&[])?;
            epoch = writer.superblock.epoch.max(known_epoch) + 1;
            writer.begin_epoch(epoch, writer.position)?;
            Ok(Vec::new())
        })?;
        Ok(epoch)
    }

    /// Records durably that `epoch` begins at log position `start` (the
    /// log end: nothing is in flight).
    fn begin_epoch(&mut self, epoch: u64, start: u64) -> Result<()> {
        debug_assert!(epoch > self.superblock.epoch && start == self.position);
        if self.superblock.epochs.len() >= EPOCH_HISTORY_MAX {
            return Err(Error::InvalidArgument(format!(
                "the epoch history is full ({EPOCH_HISTORY_MAX} epochs); this store cannot be promoted again"
            )));
        }
        self.wait_inflight(usize::MAX)?;
        self.rewrite_superblock(|sb| {
            sb.epoch = epoch;
            sb.epochs.push(EpochStart { epoch, start_position: start });
        })?;
        tracing::info!("epoch {epoch} begins at log position {start}");
        Ok(())
    }

    /// Writes the superblock with `change` applied (durably, all copies)
    /// and publishes its epoch history and feature bits.
    fn rewrite_superblock(&mut self, change: impl FnOnce(&mut Superblock)) -> Result<()> {
        let mut next = self.superblock.successor();
        change(&mut next);
        files::write_superblock(&*self.shared.storage, &self.shared.dir, &next)?;
        *lock(&self.shared.epochs) = (next.epochs.clone(), next.compat_features);
        self.superblock = next;
        Ok(())
    }

    /// Before writers are answered: records durably whether the answer is
    /// given without the peer holding it ([`COMPAT_UNREPLICATED_ACKS`]).
    /// A failure poisons the store.
    fn note_alone(&mut self, r: Replicated) -> Result<(), String> {
        if r.alone {
            // Nothing beyond the log is answered, whatever the replica says.
            self.alone_end = self.alone_end.max(r.end.min(self.position));
        }
        let set = self.superblock.compat_features & COMPAT_UNREPLICATED_ACKS != 0;
        if set == r.alone {
            return Ok(());
        }
        self.commit_with(|writer| {
            writer.rewrite_superblock(|sb| sb.compat_features ^= COMPAT_UNREPLICATED_ACKS)?;
            Ok(Vec::new())
        })
    }

    /// The peer holds the log durably up to `position`: if that covers
    /// every answer given alone, [`COMPAT_UNREPLICATED_ACKS`] is cleared.
    pub(crate) fn peer_holds(&mut self, position: u64) -> Result<(), String> {
        if self.alone_end > position {
            return Ok(());
        }
        self.note_alone(Replicated { end: position, alone: false })
    }

    /// Refuses every later write with `reason` and returns it. What is
    /// still in flight can no longer be acknowledged; it is waited for only
    /// so that no I/O outlives the store.
    pub(crate) fn poison(&mut self, reason: String) -> String {
        tracing::error!("write failed, the store accepts no more writes until reopened: {reason}");
        lock(&self.shared.poisoned).get_or_insert_with(|| reason.clone());
        for (ticket, _) in self.inflight.drain(..) {
            let _ = ticket.wait();
        }
        reason
    }

    /// Free bytes left in the active segment's data area.
    fn segment_room(&self) -> usize {
        let used = self.position - self.active.first_position;
        (segment_data_len(self.superblock.segment_size) - used) as usize
    }

    /// Whether the committer should wait for the oldest block now rather
    /// than build the next: the pipeline is full, or the oldest I/O already
    /// ended (std), so its writers are answered at once, not after the next block.
    fn should_wait_now(&self) -> bool {
        self.inflight.len() >= INFLIGHT_BLOCKS_MAX || self.oldest_is_durable()
    }

    /// Waits for the oldest `n` write + sync pairs in flight (all if fewer).
    fn wait_inflight(&mut self, n: usize) -> Result<()> {
        for _ in 0..n {
            let Some((ticket, end)) = self.inflight.pop_front() else { break };
            ticket.wait().map_err(Error::io("writing and syncing a commit block"))?;
            debug_assert!(end >= self.durable_end);
            self.durable_end = end;
        }
        Ok(())
    }

    /// Writes the requests as few blocks as fit; the last one is submitted
    /// with its fdatasync, which covers the others. With no requests, waits
    /// for everything in flight and syncs what else was written.
    fn append(&mut self, requests: &[&WriteRequest]) -> Result<Vec<IndexUpdate>> {
        self.flush_open_block()?;
        if requests.is_empty() {
            self.wait_inflight(usize::MAX)?;
            if self.durable_end < self.position {
                self.file.sync_data().map_err(Error::io("fdatasync of the log"))?;
                self.durable_end = self.position;
            }
            return Ok(Vec::new());
        }
        let mut updates = Vec::new();
        let mut builder = BlockBuilder::new();
        let mut staged: Vec<(&WriteRequest, u64)> = Vec::new();
        for &req in requests {
            let room = BLOCK_LEN_MAX.min(self.segment_room());
            if builder.record_count() > 0 && finished_block_len(builder.records_len() + req.records.len()) > room {
                self.write_block(std::mem::take(&mut builder), &mut staged, &mut updates, false)?;
            }
            if builder.record_count() == 0 && finished_block_len(req.records.len()) > self.segment_room() {
                self.roll()?;
            }
            staged.push((req, (BLOCK_HEADER_LEN + builder.records_len()) as u64));
            builder.push_records(&req.records, req.count);
        }
        // The last block of a group goes down with its fsync.
        self.write_block(builder, &mut staged, &mut updates, true)?;
        self.prepare_spare_when_half_full();
        Ok(updates)
    }

    fn write_block(
        &mut self,
        builder: BlockBuilder,
        staged: &mut Vec<(&WriteRequest, u64)>,
        updates: &mut Vec<IndexUpdate>,
        sync: bool,
    ) -> Result<()> {
        let segment = self.active.number;
        let seed = block_seed(&self.superblock.store_id, segment, self.position);
        let (block, fingerprint) =
            builder.finish(self.position, self.superblock.epoch, self.durable_end, seed, self.fingerprint);
        debug_assert!(block.len() <= self.segment_room());
        let file_offset = SEGMENT_HEADER_REGION + (self.position - self.active.first_position);
        self.active.digester.update(&block);
        let end = self.position + block.len() as u64;
        let block = Bytes::from(block);
        if let Some(replica) = &self.shared.replica {
            replica.ship(&LogBlock { segment, position: self.position, bytes: block.clone() });
        }
        if sync {
            self.inflight.push_back((self.file.submit_write_and_sync(block, file_offset), end));
        } else {
            self.file.write_all_at(&block, file_offset).map_err(Error::io("writing a commit block"))?;
        }
        for (req, base) in staged.drain(..) {
            for e in &req.entries {
                let loc = Loc { segment, offset: file_offset + base + u64::from(e.offset), len: e.len };
                updates.push((e.key.clone(), (!e.delete).then_some(loc)));
            }
        }
        self.position = end;
        self.fingerprint = fingerprint;
        Ok(())
    }

    fn append_buffered(&mut self, req: &WriteRequest) -> Result<Vec<IndexUpdate>> {
        let fits = |block: &OpenBlock, room: usize| {
            let len = finished_block_len(block.builder.records_len() + req.records.len());
            len <= room && block.builder.records_len() + req.records.len() <= BUFFERED_BLOCK_BYTES_MAX
        };
        let room = BLOCK_LEN_MAX.min(self.segment_room());
        if lock(&self.shared.open_block).as_ref().is_some_and(|block| !fits(block, room)) {
            self.flush_open_block()?;
        }
        if lock(&self.shared.open_block).is_none() && finished_block_len(req.records.len()) > self.segment_room() {
            self.roll()?;
        }
        let mut open = lock(&self.shared.open_block);
        let block = open.get_or_insert_with(|| OpenBlock {
            segment: self.active.number,
            file_offset: SEGMENT_HEADER_REGION + (self.position - self.active.first_position),
            builder: BlockBuilder::new(),
            opened: Instant::now(),
        });
        let base = block.file_offset + (BLOCK_HEADER_LEN + block.builder.records_len()) as u64;
        block.builder.push_records(&req.records, req.count);
        Ok(req
            .entries
            .iter()
            .map(|e| {
                let loc = Loc { segment: block.segment, offset: base + u64::from(e.offset), len: e.len };
                (e.key.clone(), (!e.delete).then_some(loc))
            })
            .collect())
    }

    /// Writes the open block of buffered writes to its segment.
    fn flush_open_block(&mut self) -> Result<()> {
        // Readers wait on this lock while the block is written, so they find
        // its records either in the open block or in the file.
        let mut open = lock(&self.shared.open_block);
        let Some(block) = open.take() else {
            return Ok(());
        };
        debug_assert_eq!(block.file_offset, SEGMENT_HEADER_REGION + (self.position - self.active.first_position));
        let seed = block_seed(&self.superblock.store_id, block.segment, self.position);
        let (bytes, fingerprint) =
            block.builder.finish(self.position, self.superblock.epoch, self.durable_end, seed, self.fingerprint);
        self.file.write_all_at(&bytes, block.file_offset).map_err(Error::io("writing a commit block"))?;
        drop(open);
        self.active.digester.update(&bytes);
        self.position += bytes.len() as u64;
        self.fingerprint = fingerprint;
        self.prepare_spare_when_half_full();
        Ok(())
    }

    /// Starts zeroing the next segment once the active one is half full:
    /// early enough to be ready long before it is needed, late enough not to
    /// compete with commits for the disk right after opening.
    fn prepare_spare_when_half_full(&mut self) {
        let data_len = segment_data_len(self.superblock.segment_size);
        if self.spare.is_none() && self.position - self.active.first_position >= data_len / 2 {
            self.spare = Some(Spare::prepare(&self.shared, self.active.number + 1, self.superblock.segment_size));
        }
    }

    /// Seals the active segment and starts the next one.
    fn roll(&mut self) -> Result<()> {
        // The seal vouches for every block before it: they must be on disk
        // before the seal is written, or a power cut between the two could
        // keep the seal and lose a block (a sealed segment with damage in it,
        // which recovery must refuse). Blocks written without their own
        // fsync (the first blocks of a group, buffered writes) get one here.
        self.wait_inflight(usize::MAX)?;
        if self.durable_end < self.position {
            self.file.sync_data().map_err(Error::io(format!("fdatasync of segment {}", self.active.number)))?;
            self.durable_end = self.position;
        }
        let sb = &self.superblock;
        let seal = Seal {
            segment_number: self.active.number,
            first_position: self.active.first_position,
            end_position: self.position,
            digest: self.active.digester.digest(),
            fingerprint: self.fingerprint,
        };
        self.file
            .write_all_at(&seal.encode(&sb.store_id), sb.segment_size - SEAL_REGION)
            .and_then(|()| self.file.sync_data())
            .map_err(Error::io(format!("sealing segment {}", self.active.number)))?;
        self.durable_end = self.position;
        let start = SegmentStart {
            store_id: sb.store_id,
            segment_size: sb.segment_size,
            number: self.active.number + 1,
            first_position: self.position,
            fingerprint: self.fingerprint,
            epoch: sb.epoch,
        };
        let file = match self.spare.take() {
            Some(spare) => spare.take()?,
            None => files::prepare_segment(&*self.shared.storage, &self.shared.dir, start.number, sb.segment_size)?,
        };
        files::activate_segment(&*file, &start)?;
        write(&self.shared.segments)
            .insert(start.number, SegmentFile::new(file.clone(), start.first_position, start.fingerprint));
        self.file = file;
        self.active = ActiveSegment {
            number: start.number,
            first_position: start.first_position,
            digester: SegmentDigester::new(),
        };
        Ok(())
    }

    /// On shutdown: write out buffered writes, sync, record the commit
    /// position in the superblock; then wait for any segment preparation.
    fn finish(&mut self) -> Result<()> {
        let result = self.finish_writes();
        // Last: no thread of this store may touch the directory after it is
        // unlocked, and the writes above may have started a preparation.
        if let Some(Err(e)) = self.spare.take().map(Spare::take) {
            tracing::warn!("preparing the next segment failed: {e}");
        }
        result
    }

    fn finish_writes(&mut self) -> Result<()> {
        if let Some(reason) = lock(&self.shared.poisoned).clone() {
            return Err(Error::Poisoned { reason });
        }
        self.append(&[])?;
        if self.durable_end == self.superblock.commit_position {
            return Ok(());
        }
        let durable_end = self.durable_end;
        self.rewrite_superblock(|sb| sb.commit_position = durable_end)
    }
}
