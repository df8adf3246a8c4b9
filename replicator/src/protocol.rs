//! Every byte lockstep sends over a socket: the replication link between two
//! nodes and the client protocol. Constants, layouts and pure encode/decode
//! functions over byte slices; docs/FORMAT.md ("Wire protocol") mirrors this
//! file. All integers are fixed-width little-endian.
//!
//! ```text
//! frame = header (12 bytes) ‖ payload (len bytes)
//!   0  u32  len       payload length, at most FRAME_PAYLOAD_MAX
//!   4  u16  kind      message kind (KIND_*)
//!   6  u16  flags     0, or FLAG_MAC: the payload ends with a MAC_LEN-byte
//!                     HMAC-SHA256 tag (see [`crate::session::channel`])
//!   8  u32  crc       CRC32 (IEEE) of bytes 0..8 of the header ‖ payload
//! ```
//!
//! Invariants:
//! * A frame that fails any check (length, kind, flags, crc, payload layout,
//!   trailing bytes) is an error, never a message: the connection is closed.
//! * Every length read from the wire is checked against a named limit before
//!   anything is allocated for it.

use lockstep_engine::format::{BLOCK_LEN_MAX, EPOCH_HISTORY_MAX, EPOCH_MAX, KEY_LEN_MAX, VALUE_LEN_MAX};
use lockstep_engine::{EpochStart, Fingerprint, NodeId, StoreId};

/// The oldest replication protocol version this build speaks.
///
/// Version 2: the Auth proof covers both Hellos whole, Verdicts and every
/// later frame carry a MAC under session keys (when a key is configured),
/// and every number in a Hello is bounded. Version 1 peers are refused.
pub const PROTOCOL_VERSION_MIN: u16 = 2;
/// The newest replication protocol version this build speaks. Two nodes use
/// the highest version both support, and refuse each other if their ranges
/// do not overlap.
pub const PROTOCOL_VERSION: u16 = 2;
const _: () = assert!(PROTOCOL_VERSION_MIN <= PROTOCOL_VERSION);

pub const FRAME_HEADER_LEN: usize = 12;
/// The longest payload: one maximal commit block plus its frame fields.
pub const FRAME_PAYLOAD_MAX: usize = BLOCK_LEN_MAX + 64;
/// Longest text (reason, software version) in a message.
pub const TEXT_LEN_MAX: usize = 4096;
/// Most items in one scan page.
pub const SCAN_PAGE_ITEMS_MAX: u32 = 4096;
/// Bytes of an authentication nonce and proof (HMAC-SHA256).
pub const NONCE_LEN: usize = 16;
pub const PROOF_LEN: usize = 32;
pub const HELLO_MAGIC: u64 = u64::from_le_bytes(*b"LKSTHELO");
/// Frame flag: the payload ends with a [`MAC_LEN`]-byte tag.
pub const FLAG_MAC: u16 = 1;
pub const MAC_LEN: usize = 32;
/// The longest Hello payload (its fixed fields, the longest text and the
/// longest epoch history, rounded up): the bound on what a connection may
/// send before it authenticated.
pub const HELLO_PAYLOAD_MAX: usize = 16 << 10;
const _: () = assert!(200 + TEXT_LEN_MAX + 16 * EPOCH_HISTORY_MAX <= HELLO_PAYLOAD_MAX);
/// Leases a Hello may announce (`--lease`), in milliseconds.
pub const LEASE_MS_MIN: u64 = 10;
pub const LEASE_MS_MAX: u64 = 60_000;
/// The longest `--on-peer-loss degrade=` a Hello may announce (one day).
pub const DEGRADE_MS_MAX: u64 = 86_400_000;
/// The highest log position a peer may name (2^60 bytes: an exabyte).
pub const LOG_POSITION_MAX: u64 = 1 << 60;

pub const KIND_HELLO: u16 = 1;
pub const KIND_AUTH: u16 = 2;
pub const KIND_VERDICT: u16 = 3;
pub const KIND_BLOCK: u16 = 4;
pub const KIND_ACK: u16 = 5;
pub const KIND_HEARTBEAT: u16 = 6;
pub const KIND_HANDOVER: u16 = 7;
pub const KIND_REQUEST: u16 = 32;
pub const KIND_RESPONSE: u16 = 33;

/// Why bytes from the wire did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("frame ends after {len} bytes where {need} are needed")]
    Truncated { need: usize, len: usize },
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("frame checksum {stored:#010x} does not match computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u16),
    #[error("field `{field}` holds {value}, which is not valid here")]
    BadField { field: &'static str, value: u64 },
    #[error("{0} unexpected bytes after the message")]
    TrailingBytes(usize),
    #[error("text field is not UTF-8")]
    NotUtf8,
}

type Result<T, E = WireError> = std::result::Result<T, E>;

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary = 1,
    Secondary = 2,
}

/// When the primary acknowledges a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncLevel {
    /// After the secondary's fdatasync (default).
    Durable = 1,
    /// After the secondary has the block in memory.
    Received = 2,
    /// After local durability only, with a bounded lag.
    Async = 3,
}

/// What the primary does when it loses its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerLoss {
    /// Writes wait until the peer is back (default).
    Block,
    /// After this many milliseconds alone, continue without the peer.
    Degrade { after_ms: u64 },
}

/// The first message on a replication link, sent by both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub protocol_min: u16,
    pub protocol_max: u16,
    pub format_version: u32,
    pub store_id: StoreId,
    pub node_id: NodeId,
    pub role: Role,
    pub epoch: u64,
    pub log_end: u64,
    pub fingerprint: Fingerprint,
    /// The highest position this node knows was acknowledged.
    pub commit_position: u64,
    /// A hash of the settings that must match across sites (segment size,
    /// checksum algorithm).
    pub settings: u64,
    pub sync: SyncLevel,
    pub peer_loss: PeerLoss,
    /// Whether this node checks an authentication key.
    pub auth: bool,
    pub nonce: [u8; NONCE_LEN],
    pub software_version: String,
    /// The store may hold acknowledged writes its peer lacks
    /// (`COMPAT_UNREPLICATED_ACKS`).
    pub unreplicated_acks: bool,
    /// A secondary that promotes itself when the primary is silent longer
    /// than `lease_ms` (plus a margin); the primary then holds a lease.
    pub auto_failover: bool,
    pub lease_ms: u64,
    /// The epoch history, oldest first (the last is `epoch`).
    pub epochs: Vec<EpochStart>,
}

impl Hello {
    /// A Hello of a fresh store (store id all ones, epoch 1, empty log) in
    /// `role`, with this build's versions: a starting point for tests, the
    /// fuzz targets and the simulator.
    pub fn example(role: Role) -> Hello {
        Hello {
            protocol_min: PROTOCOL_VERSION_MIN,
            protocol_max: PROTOCOL_VERSION,
            format_version: lockstep_engine::FORMAT_VERSION,
            store_id: StoreId([1; 16]),
            node_id: NodeId([role as u8; 16]),
            role,
            epoch: 1,
            log_end: 0,
            fingerprint: Fingerprint(0),
            commit_position: 0,
            settings: 42,
            sync: SyncLevel::Durable,
            peer_loss: PeerLoss::Block,
            auth: false,
            nonce: [0; NONCE_LEN],
            software_version: env!("CARGO_PKG_VERSION").into(),
            unreplicated_acks: false,
            auto_failover: false,
            lease_ms: 300,
            epochs: vec![EpochStart { epoch: 1, start_position: 0 }],
        }
    }
}

/// Each side's answer to the other's Hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Compatible; replication proceeds at this protocol version.
    Accept { version: u16 },
    /// Incompatible: the reason names the setting, both values and the fix.
    Refuse { reason: String },
    /// (Primary to a former primary rejoining as secondary.) The peer's log
    /// holds a tail after `position`, where this log's fingerprint is
    /// `fingerprint` and a newer epoch began: truncate it there (if nothing
    /// in it was acknowledged) and reconnect.
    Rejoin { position: u64, fingerprint: Fingerprint },
}

/// A replication-link message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    /// HMAC-SHA256 over the peer's nonce (all zeros when no key is set).
    Auth {
        proof: [u8; PROOF_LEN],
    },
    Verdict(Verdict),
    /// A commit block at `position` in segment `segment`, byte for byte as
    /// the primary wrote it.
    Block {
        segment: u64,
        position: u64,
        block: bytes::Bytes,
    },
    /// The secondary holds everything below `received_end`, durably below
    /// `durable_end`.
    Ack {
        received_end: u64,
        durable_end: u64,
        /// The `seq` of the last Heartbeat received (0: none yet): renews
        /// the primary's lease from when it sent that heartbeat.
        heartbeat: u64,
    },
    /// Liveness and verification, both ways: the sender's log end and its
    /// fingerprint there, and the highest acknowledged position it knows.
    Heartbeat {
        log_end: u64,
        fingerprint: Fingerprint,
        commit_position: u64,
        time_ms: u64,
        /// Numbers the sender's heartbeats on this connection, from 1.
        seq: u64,
    },
    /// (Primary to secondary, planned switchover.) Every write is
    /// replicated and the log ends at `position` with `fingerprint`: if the
    /// secondary's log is exactly that, it becomes the primary of the next
    /// epoch; the sender then rejoins it as secondary.
    Handover {
        position: u64,
        fingerprint: Fingerprint,
    },
}

/// A client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Get {
        key: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Keys starting with `prefix`, strictly after `after` if given, at most `limit`.
    Scan {
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: u32,
    },
    Status,
    /// Make this secondary the primary of the next epoch; `force` even if
    /// it knows it lacks acknowledged writes.
    Promote {
        force: bool,
    },
    /// (To the primary.) Planned switchover: stop taking writes, wait until
    /// the secondary holds everything, and swap roles.
    Switchover,
}

/// The answer to one [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Done,
    Value(Option<Vec<u8>>),
    Page {
        items: Vec<(Vec<u8>, Vec<u8>)>,
        more: bool,
    },
    /// The node's status as one JSON object (see docs/OPERATIONS.md).
    Status(String),
    /// The request failed; `code` is the sysexits code the CLI exits with.
    Error {
        code: u8,
        message: String,
    },
}

/// The frame header: payload length and kind, after checking both and the crc.
pub fn decode_header(header: &[u8]) -> Result<(usize, u16)> {
    match decode_header_flags(header)? {
        (len, kind, 0) => Ok((len, kind)),
        (_, _, flags) => Err(WireError::BadField { field: "flags", value: flags.into() }),
    }
}

/// The frame header: payload length, kind and flags (0 or [`FLAG_MAC`]).
pub fn decode_header_flags(header: &[u8]) -> Result<(usize, u16, u16)> {
    let header =
        header.get(..FRAME_HEADER_LEN).ok_or(WireError::Truncated { need: FRAME_HEADER_LEN, len: header.len() })?;
    let len = u32::from_le_bytes(header[0..4].try_into().unwrap_or_default()) as usize;
    let kind = u16::from_le_bytes([header[4], header[5]]);
    let flags = u16::from_le_bytes([header[6], header[7]]);
    if len > FRAME_PAYLOAD_MAX + MAC_LEN {
        return Err(WireError::TooLong { len, max: FRAME_PAYLOAD_MAX });
    }
    if flags & !FLAG_MAC != 0 {
        return Err(WireError::BadField { field: "flags", value: flags.into() });
    }
    let max = if flags == FLAG_MAC { FRAME_PAYLOAD_MAX + MAC_LEN } else { FRAME_PAYLOAD_MAX };
    if len > max {
        return Err(WireError::TooLong { len, max });
    }
    Ok((len, kind, flags))
}

/// The longest payload a replication message of `kind` can have (without a
/// MAC tag); `None` for a kind that is not a replication message.
pub fn message_payload_max(kind: u16) -> Option<usize> {
    Some(match kind {
        KIND_HELLO => HELLO_PAYLOAD_MAX,
        KIND_AUTH => PROOF_LEN,
        KIND_VERDICT => 1 + 4 + TEXT_LEN_MAX,
        KIND_BLOCK => 8 + 8 + 4 + BLOCK_LEN_MAX,
        KIND_ACK => 24,
        KIND_HEARTBEAT => 56,
        KIND_HANDOVER => 24,
        _ => return None,
    })
}

/// Reads one replication frame: its header is checked (kind known, allowed
/// by `allowed`, length within that kind's bound, plus the tag when
/// flagged) before its payload is allocated. Returns kind, flags, payload.
pub fn read_message_frame(
    r: &mut impl std::io::Read,
    allowed: impl Fn(u16) -> bool,
) -> std::io::Result<(u16, u16, Vec<u8>)> {
    let invalid = |e: WireError| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let mut header = [0u8; FRAME_HEADER_LEN];
    r.read_exact(&mut header)?;
    let (len, kind, flags) = decode_header_flags(&header).map_err(invalid)?;
    let max =
        message_payload_max(kind).filter(|_| allowed(kind)).ok_or_else(|| invalid(WireError::UnknownKind(kind)))?;
    let max = if flags == FLAG_MAC { max + MAC_LEN } else { max };
    if len > max {
        return Err(invalid(WireError::TooLong { len, max }));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    check_frame(&header, &payload).map_err(invalid)?;
    Ok((kind, flags, payload))
}

/// Checks the crc of a frame whose header decoded, returning its payload.
pub fn check_frame<'a>(header: &[u8], payload: &'a [u8]) -> Result<&'a [u8]> {
    let stored = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
    let computed = frame_crc(&header[..8], payload);
    if stored != computed {
        return Err(WireError::Checksum { stored, computed });
    }
    Ok(payload)
}

fn frame_crc(head: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.update(payload);
    h.finalize()
}

/// One whole frame: header and payload.
pub fn frame(kind: u16, payload: &[u8]) -> Vec<u8> {
    frame_with(kind, 0, payload, &[])
}

/// One whole frame with `flags`, whose payload is `payload` ‖ `tail`.
pub fn frame_with(kind: u16, flags: u16, payload: &[u8], tail: &[u8]) -> Vec<u8> {
    let len = payload.len() + tail.len();
    debug_assert!(len <= FRAME_PAYLOAD_MAX + MAC_LEN);
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&out);
    h.update(payload);
    h.update(tail);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(tail);
    out
}

/// Decodes a whole frame (header ‖ payload, nothing after).
pub fn decode_frame(buf: &[u8]) -> Result<(u16, &[u8])> {
    match decode_frame_flags(buf)? {
        (kind, 0, payload) => Ok((kind, payload)),
        (_, flags, _) => Err(WireError::BadField { field: "flags", value: flags.into() }),
    }
}

/// Decodes a whole frame that may carry flags: kind, flags, payload.
pub fn decode_frame_flags(buf: &[u8]) -> Result<(u16, u16, &[u8])> {
    let (len, kind, flags) = decode_header_flags(buf)?;
    let payload = buf.get(FRAME_HEADER_LEN..).unwrap_or_default();
    if payload.len() < len {
        return Err(WireError::Truncated { need: FRAME_HEADER_LEN + len, len: buf.len() });
    }
    if payload.len() > len {
        return Err(WireError::TrailingBytes(payload.len() - len));
    }
    Ok((kind, flags, check_frame(buf, payload)?))
}

/// Reads one frame from `r`, checking the header before the payload is
/// allocated. Bytes that are not a valid frame are `InvalidData`.
pub fn read_frame(r: &mut impl std::io::Read) -> std::io::Result<(u16, Vec<u8>)> {
    let invalid = |e: WireError| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let mut header = [0u8; FRAME_HEADER_LEN];
    r.read_exact(&mut header)?;
    let (len, kind) = decode_header(&header).map_err(invalid)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    check_frame(&header, &payload).map_err(invalid)?;
    Ok((kind, payload))
}

// ---- field writer and reader ------------------------------------------------

#[derive(Default)]
struct Out(Vec<u8>);

impl Out {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
    /// A u32 length, then the bytes.
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32).raw(v)
    }
}

struct In<'a>(&'a [u8]);

impl<'a> In<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(WireError::Truncated { need: n, len: self.0.len() });
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn u128(&mut self) -> Result<u128> {
        Ok(u128::from_le_bytes(self.array()?))
    }
    fn bool(&mut self, field: &'static str) -> Result<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(WireError::BadField { field, value: v.into() }),
        }
    }
    /// A u32 length (at most `max`), then that many bytes.
    fn bytes(&mut self, field: &'static str, max: usize) -> Result<&'a [u8]> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(WireError::BadField { field, value: len as u64 });
        }
        self.take(len)
    }
    fn text(&mut self, field: &'static str) -> Result<String> {
        let raw = self.bytes(field, TEXT_LEN_MAX)?;
        String::from_utf8(raw.to_vec()).map_err(|_| WireError::NotUtf8)
    }
    fn end(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes(self.0.len()))
        }
    }
}

/// A log position, at most [`LOG_POSITION_MAX`].
fn position(i: &mut In<'_>, field: &'static str) -> Result<u64> {
    let value = i.u64()?;
    if value > LOG_POSITION_MAX {
        return Err(WireError::BadField { field, value });
    }
    Ok(value)
}

fn text_of(s: &str) -> &[u8] {
    // Longer texts are cut at a character boundary, never sent too long.
    let mut end = s.len().min(TEXT_LEN_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s.as_bytes()[..end]
}

// ---- replication messages ------------------------------------------------------

impl Role {
    fn from_wire(v: u8) -> Result<Role> {
        match v {
            1 => Ok(Role::Primary),
            2 => Ok(Role::Secondary),
            _ => Err(WireError::BadField { field: "role", value: v.into() }),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        }
    }
}

impl SyncLevel {
    fn from_wire(v: u8) -> Result<SyncLevel> {
        match v {
            1 => Ok(SyncLevel::Durable),
            2 => Ok(SyncLevel::Received),
            3 => Ok(SyncLevel::Async),
            _ => Err(WireError::BadField { field: "sync", value: v.into() }),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            SyncLevel::Durable => "durable",
            SyncLevel::Received => "received",
            SyncLevel::Async => "async",
        }
    }
}

impl Message {
    /// The message as one frame.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload) = self.encode_payload();
        frame(kind, &payload)
    }

    /// The message's kind and payload (what a frame carries).
    pub fn encode_payload(&self) -> (u16, Vec<u8>) {
        let mut o = Out::default();
        let kind = match self {
            Message::Hello(h) => {
                let (loss, after_ms) = match h.peer_loss {
                    PeerLoss::Block => (1, 0),
                    PeerLoss::Degrade { after_ms } => (2, after_ms),
                };
                o.u64(HELLO_MAGIC).u16(h.protocol_min).u16(h.protocol_max).u32(h.format_version);
                o.raw(&h.store_id.0).raw(&h.node_id.0).u8(h.role as u8).u64(h.epoch).u64(h.log_end);
                o.raw(&h.fingerprint.0.to_le_bytes()).u64(h.commit_position).u64(h.settings);
                o.u8(h.sync as u8).u8(loss).u64(after_ms).u8(h.auth.into()).raw(&h.nonce);
                o.bytes(text_of(&h.software_version));
                o.u8(h.unreplicated_acks.into()).u8(h.auto_failover.into()).u64(h.lease_ms);
                let epochs = &h.epochs[..h.epochs.len().min(EPOCH_HISTORY_MAX)];
                o.u32(epochs.len() as u32);
                for e in epochs {
                    o.u64(e.epoch).u64(e.start_position);
                }
                KIND_HELLO
            }
            Message::Auth { proof } => {
                o.raw(proof);
                KIND_AUTH
            }
            Message::Verdict(Verdict::Accept { version }) => {
                o.u8(1).u16(*version);
                KIND_VERDICT
            }
            Message::Verdict(Verdict::Refuse { reason }) => {
                o.u8(2).bytes(text_of(reason));
                KIND_VERDICT
            }
            Message::Verdict(Verdict::Rejoin { position, fingerprint }) => {
                o.u8(3).u64(*position).raw(&fingerprint.0.to_le_bytes());
                KIND_VERDICT
            }
            Message::Block { segment, position, block } => {
                o.u64(*segment).u64(*position).bytes(block);
                KIND_BLOCK
            }
            Message::Ack { received_end, durable_end, heartbeat } => {
                o.u64(*received_end).u64(*durable_end).u64(*heartbeat);
                KIND_ACK
            }
            Message::Heartbeat { log_end, fingerprint, commit_position, time_ms, seq } => {
                o.u64(*log_end).raw(&fingerprint.0.to_le_bytes()).u64(*commit_position).u64(*time_ms).u64(*seq);
                KIND_HEARTBEAT
            }
            Message::Handover { position, fingerprint } => {
                o.u64(*position).raw(&fingerprint.0.to_le_bytes());
                KIND_HANDOVER
            }
        };
        (kind, o.0)
    }

    /// Decodes the payload of a frame of kind `kind`.
    pub fn decode(kind: u16, payload: &[u8]) -> Result<Message> {
        let mut i = In(payload);
        let msg = match kind {
            KIND_HELLO => {
                let magic = i.u64()?;
                if magic != HELLO_MAGIC {
                    return Err(WireError::BadField { field: "magic", value: magic });
                }
                let protocol_min = i.u16()?;
                let protocol_max = i.u16()?;
                let format_version = i.u32()?;
                let store_id = StoreId(i.array()?);
                let node_id = NodeId(i.array()?);
                let role = Role::from_wire(i.u8()?)?;
                let epoch = i.u64()?;
                let log_end = i.u64()?;
                let fingerprint = Fingerprint(i.u128()?);
                let commit_position = i.u64()?;
                let settings = i.u64()?;
                let sync = SyncLevel::from_wire(i.u8()?)?;
                let peer_loss = match (i.u8()?, i.u64()?) {
                    (1, 0) => PeerLoss::Block,
                    (2, after_ms) => PeerLoss::Degrade { after_ms },
                    (v, _) => return Err(WireError::BadField { field: "peer_loss", value: v.into() }),
                };
                let auth = i.bool("auth")?;
                let nonce = i.array()?;
                let software_version = i.text("software_version")?;
                let unreplicated_acks = i.bool("unreplicated_acks")?;
                let auto_failover = i.bool("auto_failover")?;
                let lease_ms = i.u64()?;
                if !(LEASE_MS_MIN..=LEASE_MS_MAX).contains(&lease_ms) {
                    return Err(WireError::BadField { field: "lease_ms", value: lease_ms });
                }
                if let PeerLoss::Degrade { after_ms } = peer_loss {
                    if after_ms > DEGRADE_MS_MAX {
                        return Err(WireError::BadField { field: "degrade_ms", value: after_ms });
                    }
                }
                for (field, value) in [("log_end", log_end), ("commit_position", commit_position)] {
                    if value > LOG_POSITION_MAX {
                        return Err(WireError::BadField { field, value });
                    }
                }
                let count = i.u32()?;
                if count == 0 || count as usize > EPOCH_HISTORY_MAX {
                    return Err(WireError::BadField { field: "epoch_count", value: count.into() });
                }
                let mut epochs: Vec<EpochStart> = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    let e = EpochStart { epoch: i.u64()?, start_position: i.u64()? };
                    if e.epoch > EPOCH_MAX || e.start_position > LOG_POSITION_MAX {
                        return Err(WireError::BadField { field: "epochs", value: e.epoch });
                    }
                    if epochs.last().is_some_and(|p| e.epoch <= p.epoch || e.start_position < p.start_position) {
                        return Err(WireError::BadField { field: "epochs", value: e.epoch });
                    }
                    epochs.push(e);
                }
                if protocol_min > protocol_max {
                    return Err(WireError::BadField { field: "protocol_min", value: protocol_min.into() });
                }
                if epochs.last().map(|e| e.epoch) != Some(epoch) {
                    return Err(WireError::BadField { field: "epoch", value: epoch });
                }
                Message::Hello(Hello {
                    protocol_min,
                    protocol_max,
                    format_version,
                    store_id,
                    node_id,
                    role,
                    epoch,
                    log_end,
                    fingerprint,
                    commit_position,
                    settings,
                    sync,
                    peer_loss,
                    auth,
                    nonce,
                    software_version,
                    unreplicated_acks,
                    auto_failover,
                    lease_ms,
                    epochs,
                })
            }
            KIND_AUTH => Message::Auth { proof: i.array()? },
            KIND_VERDICT => match i.u8()? {
                1 => Message::Verdict(Verdict::Accept { version: i.u16()? }),
                2 => Message::Verdict(Verdict::Refuse { reason: i.text("reason")? }),
                3 => Message::Verdict(Verdict::Rejoin { position: i.u64()?, fingerprint: Fingerprint(i.u128()?) }),
                v => return Err(WireError::BadField { field: "verdict", value: v.into() }),
            },
            KIND_BLOCK => {
                let segment = i.u64()?;
                let position = position(&mut i, "position")?;
                let block = bytes::Bytes::copy_from_slice(i.bytes("block", BLOCK_LEN_MAX)?);
                Message::Block { segment, position, block }
            }
            KIND_ACK => {
                let (received_end, durable_end, heartbeat) = (i.u64()?, i.u64()?, i.u64()?);
                if received_end > LOG_POSITION_MAX {
                    return Err(WireError::BadField { field: "received_end", value: received_end });
                }
                if durable_end > received_end {
                    return Err(WireError::BadField { field: "durable_end", value: durable_end });
                }
                Message::Ack { received_end, durable_end, heartbeat }
            }
            KIND_HEARTBEAT => Message::Heartbeat {
                log_end: position(&mut i, "log_end")?,
                fingerprint: Fingerprint(i.u128()?),
                commit_position: position(&mut i, "commit_position")?,
                time_ms: i.u64()?,
                seq: i.u64()?,
            },
            KIND_HANDOVER => {
                Message::Handover { position: position(&mut i, "position")?, fingerprint: Fingerprint(i.u128()?) }
            }
            other => return Err(WireError::UnknownKind(other)),
        };
        i.end()?;
        Ok(msg)
    }
}

// ---- client messages -------------------------------------------------------------

const REQ_PUT: u8 = 1;
const REQ_GET: u8 = 2;
const REQ_DELETE: u8 = 3;
const REQ_SCAN: u8 = 4;
const REQ_STATUS: u8 = 5;
const REQ_PROMOTE: u8 = 6;
const REQ_SWITCHOVER: u8 = 7;
const RESP_DONE: u8 = 1;
const RESP_VALUE: u8 = 2;
const RESP_PAGE: u8 = 3;
const RESP_STATUS: u8 = 4;
const RESP_ERROR: u8 = 5;

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let mut o = Out::default();
        match self {
            Request::Put { key, value } => o.u8(REQ_PUT).bytes(key).bytes(value),
            Request::Get { key } => o.u8(REQ_GET).bytes(key),
            Request::Delete { key } => o.u8(REQ_DELETE).bytes(key),
            Request::Scan { prefix, after, limit } => {
                o.u8(REQ_SCAN).bytes(prefix).u8(after.is_some().into()).bytes(after.as_deref().unwrap_or_default());
                o.u32(*limit)
            }
            Request::Status => o.u8(REQ_STATUS),
            Request::Promote { force } => o.u8(REQ_PROMOTE).u8((*force).into()),
            Request::Switchover => o.u8(REQ_SWITCHOVER),
        };
        frame(KIND_REQUEST, &o.0)
    }

    pub fn decode(kind: u16, payload: &[u8]) -> Result<Request> {
        if kind != KIND_REQUEST {
            return Err(WireError::UnknownKind(kind));
        }
        let mut i = In(payload);
        let key = |i: &mut In<'_>| i.bytes("key", KEY_LEN_MAX).map(<[u8]>::to_vec);
        let req = match i.u8()? {
            REQ_PUT => Request::Put { key: key(&mut i)?, value: i.bytes("value", VALUE_LEN_MAX)?.to_vec() },
            REQ_GET => Request::Get { key: key(&mut i)? },
            REQ_DELETE => Request::Delete { key: key(&mut i)? },
            REQ_SCAN => {
                let prefix = key(&mut i)?;
                let has_after = i.bool("after")?;
                let after = key(&mut i)?;
                let limit = i.u32()?;
                if limit == 0 || limit > SCAN_PAGE_ITEMS_MAX {
                    return Err(WireError::BadField { field: "limit", value: limit.into() });
                }
                Request::Scan { prefix, after: has_after.then_some(after), limit }
            }
            REQ_STATUS => Request::Status,
            REQ_PROMOTE => Request::Promote { force: i.bool("force")? },
            REQ_SWITCHOVER => Request::Switchover,
            v => return Err(WireError::BadField { field: "request", value: v.into() }),
        };
        i.end()?;
        Ok(req)
    }
}

impl Response {
    pub fn encode(&self) -> Vec<u8> {
        let mut o = Out::default();
        match self {
            Response::Done => o.u8(RESP_DONE),
            Response::Value(v) => o.u8(RESP_VALUE).u8(v.is_some().into()).bytes(v.as_deref().unwrap_or_default()),
            Response::Page { items, more } => {
                o.u8(RESP_PAGE).u8((*more).into()).u32(items.len() as u32);
                for (k, v) in items {
                    o.bytes(k).bytes(v);
                }
                &mut o
            }
            Response::Status(json) => o.u8(RESP_STATUS).bytes(json.as_bytes()),
            Response::Error { code, message } => o.u8(RESP_ERROR).u8(*code).bytes(text_of(message)),
        };
        frame(KIND_RESPONSE, &o.0)
    }

    pub fn decode(kind: u16, payload: &[u8]) -> Result<Response> {
        if kind != KIND_RESPONSE {
            return Err(WireError::UnknownKind(kind));
        }
        let mut i = In(payload);
        let resp = match i.u8()? {
            RESP_DONE => Response::Done,
            RESP_VALUE => {
                let present = i.bool("present")?;
                let value = i.bytes("value", VALUE_LEN_MAX)?.to_vec();
                Response::Value(present.then_some(value))
            }
            RESP_PAGE => {
                let more = i.bool("more")?;
                let count = i.u32()?;
                if count > SCAN_PAGE_ITEMS_MAX {
                    return Err(WireError::BadField { field: "items", value: count.into() });
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    let k = i.bytes("key", KEY_LEN_MAX)?.to_vec();
                    items.push((k, i.bytes("value", VALUE_LEN_MAX)?.to_vec()));
                }
                Response::Page { items, more }
            }
            RESP_STATUS => {
                let raw = i.bytes("status", FRAME_PAYLOAD_MAX)?;
                Response::Status(String::from_utf8(raw.to_vec()).map_err(|_| WireError::NotUtf8)?)
            }
            RESP_ERROR => Response::Error { code: i.u8()?, message: i.text("message")? },
            v => return Err(WireError::BadField { field: "response", value: v.into() }),
        };
        i.end()?;
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            protocol_min: PROTOCOL_VERSION_MIN,
            protocol_max: PROTOCOL_VERSION,
            format_version: lockstep_engine::FORMAT_VERSION,
            store_id: StoreId([7; 16]),
            node_id: NodeId([9; 16]),
            role: Role::Secondary,
            epoch: 3,
            log_end: 4096,
            fingerprint: Fingerprint(0x1234_5678_9abc_def0_1122_3344_5566_7788),
            commit_position: 2048,
            settings: 0xfeed,
            sync: SyncLevel::Durable,
            peer_loss: PeerLoss::Degrade { after_ms: 5000 },
            auth: true,
            nonce: [5; NONCE_LEN],
            software_version: "0.1.0".into(),
            unreplicated_acks: true,
            auto_failover: true,
            lease_ms: 300,
            epochs: vec![EpochStart { epoch: 1, start_position: 0 }, EpochStart { epoch: 3, start_position: 1024 }],
        }
    }

    fn messages() -> Vec<Message> {
        vec![
            Message::Hello(hello()),
            Message::Auth { proof: [3; PROOF_LEN] },
            Message::Verdict(Verdict::Accept { version: 1 }),
            Message::Verdict(Verdict::Refuse { reason: "store ids differ: a ≠ b".into() }),
            Message::Block { segment: 2, position: 65536, block: bytes::Bytes::from_static(b"block bytes") },
            Message::Verdict(Verdict::Rejoin { position: 4096, fingerprint: Fingerprint(17) }),
            Message::Handover { position: 4096, fingerprint: Fingerprint(18) },
            Message::Ack { received_end: 100, durable_end: 96, heartbeat: 7 },
            Message::Heartbeat { log_end: 1, fingerprint: Fingerprint(2), commit_position: 1, time_ms: 4, seq: 7 },
        ]
    }

    fn roundtrip(frame_bytes: &[u8]) -> (u16, Vec<u8>) {
        let (kind, payload) = decode_frame(frame_bytes).expect("frame decodes");
        (kind, payload.to_vec())
    }

    #[test]
    fn every_message_round_trips() {
        for msg in messages() {
            let (kind, payload) = roundtrip(&msg.encode());
            assert_eq!(Message::decode(kind, &payload).expect("decodes"), msg);
        }
    }

    #[test]
    fn client_messages_round_trip() {
        let requests = [
            Request::Put { key: b"k".to_vec(), value: b"v".to_vec() },
            Request::Get { key: b"k".to_vec() },
            Request::Delete { key: b"k".to_vec() },
            Request::Scan { prefix: b"p/".to_vec(), after: Some(b"p/1".to_vec()), limit: 10 },
            Request::Scan { prefix: Vec::new(), after: None, limit: 1 },
            Request::Status,
            Request::Promote { force: true },
            Request::Switchover,
        ];
        for req in requests {
            let (kind, payload) = roundtrip(&req.encode());
            assert_eq!(Request::decode(kind, &payload).expect("decodes"), req);
        }
        let responses = [
            Response::Done,
            Response::Value(None),
            Response::Value(Some(b"v".to_vec())),
            Response::Page { items: vec![(b"a".to_vec(), b"1".to_vec())], more: true },
            Response::Status("{\"role\":\"primary\"}".into()),
            Response::Error { code: 76, message: "refused".into() },
        ];
        for resp in responses {
            let (kind, payload) = roundtrip(&resp.encode());
            assert_eq!(Response::decode(kind, &payload).expect("decodes"), resp);
        }
    }

    #[test]
    fn a_flipped_byte_fails_the_frame_checksum() {
        let mut bytes = Message::Ack { received_end: 10, durable_end: 5, heartbeat: 0 }.encode();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(matches!(decode_frame(&bytes), Err(WireError::Checksum { .. })));
    }

    #[test]
    fn oversized_and_truncated_frames_are_refused() {
        let mut header = frame(KIND_ACK, &[]);
        header[0..4].copy_from_slice(&(FRAME_PAYLOAD_MAX as u32 + 1).to_le_bytes());
        assert_eq!(
            decode_header(&header),
            Err(WireError::TooLong { len: FRAME_PAYLOAD_MAX + 1, max: FRAME_PAYLOAD_MAX })
        );
        let bytes = Message::Ack { received_end: 10, durable_end: 5, heartbeat: 0 }.encode();
        assert_eq!(decode_frame(&bytes[..5]), Err(WireError::Truncated { need: FRAME_HEADER_LEN, len: 5 }));
        assert!(matches!(decode_frame(&bytes[..bytes.len() - 1]), Err(WireError::Truncated { .. })));
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(decode_frame(&long), Err(WireError::TrailingBytes(1)));
    }

    #[test]
    fn bad_fields_are_named() {
        assert_eq!(Message::decode(99, &[]), Err(WireError::UnknownKind(99)));
        let ack = Message::decode(KIND_ACK, &[5, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(ack, Err(WireError::BadField { field: "durable_end", value: 6 }));
        let Message::Hello(h) = Message::decode(KIND_HELLO, &payload_of(&Message::Hello(hello()))).expect("hello")
        else {
            panic!("not a hello")
        };
        assert_eq!(h, hello());
        let mut bad_magic = payload_of(&Message::Hello(hello()));
        bad_magic[0] ^= 1;
        assert!(matches!(Message::decode(KIND_HELLO, &bad_magic), Err(WireError::BadField { field: "magic", .. })));
        let scan = Request::Scan { prefix: Vec::new(), after: None, limit: SCAN_PAGE_ITEMS_MAX + 1 }.encode();
        let (kind, payload) = roundtrip(&scan);
        assert_eq!(
            Request::decode(kind, &payload),
            Err(WireError::BadField { field: "limit", value: u64::from(SCAN_PAGE_ITEMS_MAX) + 1 })
        );
    }

    /// Every number a Hello carries is bounded before anything uses it
    /// (an epoch of u64::MAX once bricked a store; a lease of u64::MAX
    /// let two primaries answer).
    #[test]
    fn hello_numbers_out_of_their_bounds_are_refused() {
        let decode = |h: Hello| Message::decode(KIND_HELLO, &payload_of(&Message::Hello(h)));
        let mut h = hello();
        h.lease_ms = u64::MAX;
        assert_eq!(decode(h), Err(WireError::BadField { field: "lease_ms", value: u64::MAX }));
        let mut h = hello();
        h.lease_ms = LEASE_MS_MIN - 1;
        assert_eq!(decode(h), Err(WireError::BadField { field: "lease_ms", value: LEASE_MS_MIN - 1 }));
        let mut h = hello();
        h.epoch = EPOCH_MAX + 1;
        h.epochs.push(EpochStart { epoch: EPOCH_MAX + 1, start_position: 4096 });
        assert_eq!(decode(h), Err(WireError::BadField { field: "epochs", value: EPOCH_MAX + 1 }));
        let mut h = hello();
        h.log_end = LOG_POSITION_MAX + 1;
        assert_eq!(decode(h), Err(WireError::BadField { field: "log_end", value: LOG_POSITION_MAX + 1 }));
        let mut h = hello();
        h.peer_loss = PeerLoss::Degrade { after_ms: DEGRADE_MS_MAX + 1 };
        assert_eq!(decode(h), Err(WireError::BadField { field: "degrade_ms", value: DEGRADE_MS_MAX + 1 }));
        let hb = Message::Heartbeat {
            log_end: u64::MAX,
            fingerprint: Fingerprint(0),
            commit_position: 0,
            time_ms: 0,
            seq: 1,
        };
        assert_eq!(
            Message::decode(KIND_HEARTBEAT, &payload_of(&hb)),
            Err(WireError::BadField { field: "log_end", value: u64::MAX })
        );
    }

    /// Frames are bounded by their kind before their payload is read: a
    /// connection announcing a 24 MiB Hello (or a frame of an unknown
    /// kind) is refused after its 12-byte header.
    #[test]
    fn frames_are_bounded_by_kind_before_their_payload_is_read() {
        let header = |kind: u16, len: usize| {
            let mut f = frame(kind, &[]);
            f[0..4].copy_from_slice(&(len as u32).to_le_bytes());
            f
        };
        let read = |bytes: Vec<u8>| read_message_frame(&mut &bytes[..], |_| true).map_err(|e| e.to_string());
        let err = read(header(KIND_HELLO, HELLO_PAYLOAD_MAX + 1)).expect_err("an oversized Hello");
        assert!(err.contains("exceeds the limit"), "{err}");
        assert!(read(header(KIND_ACK, 25)).expect_err("a long Ack").contains("exceeds"));
        assert!(read(header(99, 0)).expect_err("unknown kind").contains("unknown frame kind 99"));
        let only_hello =
            read_message_frame(&mut &Message::Auth { proof: [0; PROOF_LEN] }.encode()[..], |k| k == KIND_HELLO);
        assert!(only_hello.is_err(), "a kind the phase does not allow was read");
        let ack = Message::Ack { received_end: 3, durable_end: 2, heartbeat: 1 };
        let (kind, flags, payload) = read_message_frame(&mut &ack.encode()[..], |_| true).expect("an Ack");
        assert_eq!((Message::decode(kind, &payload), flags), (Ok(ack), 0));
    }

    #[test]
    fn oversized_keys_are_refused_before_allocating() {
        let mut o = Out::default();
        o.u8(REQ_GET).u32(KEY_LEN_MAX as u32 + 1);
        assert_eq!(
            Request::decode(KIND_REQUEST, &o.0),
            Err(WireError::BadField { field: "key", value: KEY_LEN_MAX as u64 + 1 })
        );
    }

    fn payload_of(msg: &Message) -> Vec<u8> {
        msg.encode()[FRAME_HEADER_LEN..].to_vec()
    }

    #[test]
    fn long_texts_are_cut_at_a_character_boundary() {
        let reason = "é".repeat(TEXT_LEN_MAX);
        let (kind, payload) = roundtrip(&Message::Verdict(Verdict::Refuse { reason }).encode());
        let Ok(Message::Verdict(Verdict::Refuse { reason })) = Message::decode(kind, &payload) else {
            panic!("refusal decodes")
        };
        assert_eq!(reason.len(), TEXT_LEN_MAX);
    }

    proptest::proptest! {
        /// Any bytes after a valid header: a clean error or a value that
        /// round-trips; never a panic.
        #[test]
        fn arbitrary_payloads_never_panic(kind in 0u16..40, payload in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let bytes = frame(kind, &payload);
            let (k, p) = decode_frame(&bytes).expect("a frame we built");
            if let Ok(m) = Message::decode(k, p) {
                let again = m.encode();
                let (k2, p2) = decode_frame(&again).expect("re-encoded frame");
                proptest::prop_assert_eq!(Message::decode(k2, p2).expect("re-decoded"), m);
            }
            if let Ok(r) = Request::decode(k, p) {
                proptest::prop_assert_eq!(Request::decode(KIND_REQUEST, &r.encode()[FRAME_HEADER_LEN..]).expect("re-decoded"), r);
            }
            if let Ok(r) = Response::decode(k, p) {
                proptest::prop_assert_eq!(Response::decode(KIND_RESPONSE, &r.encode()[FRAME_HEADER_LEN..]).expect("re-decoded"), r);
            }
        }

        /// Arbitrary bytes as a whole frame: never a panic, never an
        /// allocation beyond the limits.
        #[test]
        fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = decode_frame(&bytes);
            let _ = read_frame(&mut &bytes[..]);
        }
    }
}
