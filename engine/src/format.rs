//! Every byte lockstep writes to disk: constants, layouts and pure
//! encode/decode functions over byte slices. docs/FORMAT.md mirrors this file.
//!
//! All integers are fixed-width little-endian. Checksums:
//! * records: CRC32 (IEEE, `crc32fast`) seeded with the store id;
//! * everything else: XXH3 (64-bit for headers, 128-bit for block digests and
//!   the chained log fingerprint), seeded per structure and, for commit blocks
//!   and seals, with store id + segment number + log position, so bytes copied
//!   from another store, a stale range or a misdirected write never verify.
//!
//! Invariants:
//! * A log position counts only commit-block bytes: segment `n` holds the
//!   positions `[first_position, end_position)` in its data area, which starts
//!   at file offset [`SEGMENT_HEADER_REGION`]. Positions are dense across segments.
//! * Every commit block is a multiple of [`BLOCK_ALIGN`] bytes long and lies
//!   entirely inside one segment's data area; records never span blocks.
//! * `fingerprint(block n) = xxh3_128(fingerprint(block n-1) ‖ digest(block n))`,
//!   starting from [`genesis_fingerprint`] of the store id.

use std::fmt;
use std::str::FromStr;

use xxhash_rust::xxh3::{xxh3_128_with_seed, xxh3_64_with_seed, Xxh3};

/// The on-disk format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Checksum algorithm id 1: CRC32 (IEEE) per record, XXH3 for all else.
pub const CHECKSUM_ALGORITHM: u32 = 1;

/// Incompatible feature bits this build understands (none in v1). A store
/// with any other bit set is refused.
pub const INCOMPAT_FEATURES_KNOWN: u64 = 0;
/// Read-only-compatible feature bits this build understands (none in v1). A
/// store with another bit set may be opened read-only only.
pub const RO_COMPAT_FEATURES_KNOWN: u64 = 0;
/// Compatible feature bit: this node may have acknowledged writes its
/// replication peer does not hold durably (it answered alone: degraded,
/// `received` or `async`). A rejoin that would truncate such a node's tail
/// is split brain. Builds that do not know the bit may ignore it.
pub const COMPAT_UNREPLICATED_ACKS: u64 = 1 << 0;

pub const SUPERBLOCK_FILE: &str = "superblock";
pub const SUPERBLOCK_COPIES: usize = 4;
pub const SUPERBLOCK_COPY_LEN: usize = 4096;
pub const SUPERBLOCK_FILE_LEN: usize = SUPERBLOCK_COPIES * SUPERBLOCK_COPY_LEN;
/// Most epochs (promotions) one store's history can record.
pub const EPOCH_HISTORY_MAX: usize = 200;
/// The highest epoch a store may begin. Far beyond any real number of
/// promotions, and far below `u64::MAX`: an epoch learned from a peer is
/// bounded by it, so `epoch + 1` can never wrap.
pub const EPOCH_MAX: u64 = 1 << 48;

/// Bytes reserved at the start of a segment file for its header.
pub const SEGMENT_HEADER_REGION: u64 = 4096;
/// Bytes reserved at the end of a segment file for its seal.
pub const SEAL_REGION: u64 = 4096;
pub const SEGMENT_HEADER_LEN: usize = 88;
pub const SEAL_LEN: usize = 72;

pub const SEGMENT_SIZE_DEFAULT: u64 = 64 << 20;
pub const SEGMENT_SIZE_MIN: u64 = 64 << 10;
pub const SEGMENT_SIZE_MAX: u64 = 1 << 30;
/// Segment sizes are a multiple of this (page size, for O_DIRECT later).
pub const SEGMENT_SIZE_ALIGN: u64 = 4096;

pub const BLOCK_ALIGN: usize = 8;
pub const BLOCK_HEADER_LEN: usize = 48;
pub const MARKER_LEN: usize = 40;
pub const RECORD_HEADER_LEN: usize = 12;
/// Bytes a block adds around its records, at most (header, padding, marker).
pub const BLOCK_OVERHEAD_MAX: usize = BLOCK_HEADER_LEN + BLOCK_ALIGN - 1 + MARKER_LEN;

pub const KEY_LEN_MAX: usize = 4096;
pub const VALUE_LEN_MAX: usize = 16 << 20;
/// The longest commit block: one maximal record always fits.
pub const BLOCK_LEN_MAX: usize = 24 << 20;

pub const BLOCK_KIND_RECORDS: u8 = 1;
pub const RECORD_KIND_PUT: u8 = 1;
pub const RECORD_KIND_DELETE: u8 = 2;

pub const SUPERBLOCK_MAGIC: u64 = u64::from_le_bytes(*b"LKSTSUPB");
pub const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"LKSTSEGM");
pub const SEAL_MAGIC: u64 = u64::from_le_bytes(*b"LKSTSEAL");
pub const BLOCK_MAGIC: u32 = u32::from_le_bytes(*b"LKBK");
pub const MARKER_MAGIC: u32 = u32::from_le_bytes(*b"LKMK");

const SEED_SUPERBLOCK: u64 = 0x5355_5042_4c4b_0001;
const SEED_SEGMENT: u64 = 0x5345_474d_4c4b_0001;
const SEED_BLOCK: u64 = 0x424c_4f43_4c4b_0001;
const SEED_SEAL: u64 = 0x5345_414c_4c4b_0001;
const SEED_GENESIS: u64 = 0x4745_4e45_4c4b_0001;
const SEED_RECORD: u64 = 0x5245_434f_4c4b_0001;

const _: () = assert!(BLOCK_OVERHEAD_MAX + RECORD_HEADER_LEN + KEY_LEN_MAX + VALUE_LEN_MAX <= BLOCK_LEN_MAX);
const _: () = assert!(BLOCK_LEN_MAX as u64 <= SEGMENT_SIZE_DEFAULT - SEGMENT_HEADER_REGION - SEAL_REGION);
const _: () = assert!(SEGMENT_HEADER_LEN as u64 <= SEGMENT_HEADER_REGION);
const _: () = assert!(SEAL_LEN as u64 <= SEAL_REGION);
const _: () = assert!(128 + EPOCH_HISTORY_MAX * 16 <= SUPERBLOCK_COPY_LEN - 8);
const _: () = assert!(BLOCK_HEADER_LEN.is_multiple_of(BLOCK_ALIGN) && MARKER_LEN.is_multiple_of(BLOCK_ALIGN));
const _: () = assert!(SEGMENT_SIZE_MAX <= u32::MAX as u64);

/// Why bytes did not decode. Each variant names one failed check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("input ends after {len} bytes where {need} are needed")]
    Truncated { need: usize, len: usize },
    #[error("magic number {found:#x} is not {expected:#x}")]
    BadMagic { found: u64, expected: u64 },
    #[error("format version {found} is not {FORMAT_VERSION}, the version this build reads")]
    UnknownVersion { found: u32 },
    #[error("stored checksum {stored:#x} does not match computed {computed:#x}")]
    Checksum { stored: u128, computed: u128 },
    #[error("field `{field}` holds {value}, which is not valid here")]
    BadField { field: &'static str, value: u64 },
    #[error("fingerprint chain broken: block says {stored}, chain gives {computed}")]
    Fingerprint { stored: Fingerprint, computed: Fingerprint },
}

macro_rules! id128 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            /// A fresh random id from the operating system's generator.
            pub fn random() -> std::io::Result<Self> {
                let mut id = [0u8; 16];
                getrandom::fill(&mut id).map_err(|e| std::io::Error::other(e.to_string()))?;
                Ok(Self(id))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for b in self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl FromStr for $name {
            type Err = String;
            /// 32 hexadecimal digits; dashes (UUID style) are ignored.
            fn from_str(s: &str) -> Result<Self, String> {
                let hex: Vec<u8> = s.bytes().filter(|&b| b != b'-').collect();
                if hex.len() != 32 {
                    return Err(format!("`{s}` is not 32 hexadecimal digits"));
                }
                let mut id = [0u8; 16];
                for (i, pair) in hex.chunks(2).enumerate() {
                    let text = std::str::from_utf8(pair).map_err(|_| format!("`{s}` is not hexadecimal"))?;
                    id[i] = u8::from_str_radix(text, 16).map_err(|_| format!("`{s}` is not hexadecimal"))?;
                }
                Ok(Self(id))
            }
        }
    };
}

id128!(
    /// Identifies a store; both sites of a replicated pair share it.
    StoreId
);
id128!(
    /// Identifies one site (one directory) of a store.
    NodeId
);

/// The chained fingerprint of the whole log up to a position.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Fingerprint(pub u128);

impl Fingerprint {
    /// The fingerprint after appending a block with `digest`.
    pub fn chain(self, digest: u128) -> Fingerprint {
        let mut input = [0u8; 32];
        input[..16].copy_from_slice(&self.0.to_le_bytes());
        input[16..].copy_from_slice(&digest.to_le_bytes());
        Fingerprint(xxh3_128_with_seed(&input, SEED_BLOCK))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// The fingerprint of the empty log of a store.
pub fn genesis_fingerprint(store_id: &StoreId) -> Fingerprint {
    Fingerprint(xxh3_128_with_seed(&store_id.0, SEED_GENESIS))
}

/// The seed of a commit block's checksums: its store, segment and position.
pub fn block_seed(store_id: &StoreId, segment: u64, position: u64) -> u64 {
    let mut input = [0u8; 32];
    input[..16].copy_from_slice(&store_id.0);
    input[16..24].copy_from_slice(&segment.to_le_bytes());
    input[24..].copy_from_slice(&position.to_le_bytes());
    xxh3_64_with_seed(&input, SEED_BLOCK)
}

/// The initial CRC32 value of every record of a store.
pub fn record_seed(store_id: &StoreId) -> u32 {
    // Truncation intended: the low 32 bits of a 64-bit hash.
    xxh3_64_with_seed(&store_id.0, SEED_RECORD) as u32
}

/// Rounds `len` up to a multiple of [`BLOCK_ALIGN`].
pub const fn align_up(len: usize) -> usize {
    (len + BLOCK_ALIGN - 1) & !(BLOCK_ALIGN - 1)
}

/// Bytes available to commit blocks in a segment of `segment_size` bytes.
pub const fn segment_data_len(segment_size: u64) -> u64 {
    segment_size - SEGMENT_HEADER_REGION - SEAL_REGION
}

/// Checks a segment size given at init.
pub fn validate_segment_size(size: u64) -> Result<(), String> {
    if !(SEGMENT_SIZE_MIN..=SEGMENT_SIZE_MAX).contains(&size) || !size.is_multiple_of(SEGMENT_SIZE_ALIGN) {
        return Err(format!(
            "segment size {size} must be a multiple of {SEGMENT_SIZE_ALIGN} between {SEGMENT_SIZE_MIN} and {SEGMENT_SIZE_MAX} bytes"
        ));
    }
    Ok(())
}

/// The segment file name for segment `number`.
pub fn segment_file_name(number: u64) -> String {
    format!("segment-{number:010}.log")
}

/// The segment number a file name encodes, if it names a segment.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("segment-")?.strip_suffix(".log")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

// ---------------------------------------------------------------------------
// Little-endian cursors.

struct Put<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl<'a> Put<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Put { buf, at: 0 }
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
        self
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes(&[v])
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
    fn u128(&mut self, v: u128) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
}

/// Reads fixed-width fields; the caller checked the length first.
struct Get<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Get<'a> {
    fn new(buf: &'a [u8], need: usize) -> Result<Self, DecodeError> {
        if buf.len() < need {
            return Err(DecodeError::Truncated { need, len: buf.len() });
        }
        Ok(Get { buf, at: 0 })
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[self.at..self.at + N]);
        self.at += N;
        out
    }
    fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
    fn u128(&mut self) -> u128 {
        u128::from_le_bytes(self.array())
    }
}

fn check_magic(found: u64, expected: u64) -> Result<(), DecodeError> {
    if found != expected {
        return Err(DecodeError::BadMagic { found, expected });
    }
    Ok(())
}

fn check_sum(stored: u64, computed: u64) -> Result<(), DecodeError> {
    if stored != computed {
        return Err(DecodeError::Checksum { stored: stored.into(), computed: computed.into() });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Superblock.

/// The role a site plays; the replicator sets it, a standalone store is a primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary = 1,
    Secondary = 2,
}

impl Role {
    fn from_u8(v: u8) -> Result<Role, DecodeError> {
        match v {
            1 => Ok(Role::Primary),
            2 => Ok(Role::Secondary),
            _ => Err(DecodeError::BadField { field: "role", value: v.into() }),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        })
    }
}

/// One entry of the epoch history: epoch `epoch` began at log position `start_position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochStart {
    pub epoch: u64,
    pub start_position: u64,
}

/// One copy of the superblock. Byte map of a 4096-byte copy:
///
/// ```text
///    0  magic u64 "LKSTSUPB"        (fixed in every format version)
///    8  format_version u32          (fixed in every format version)
///   12  checksum_algorithm u32
///   16  sequence u64                (fixed in every format version)
///   24  prev_checksum u64           checksum of the copy with sequence - 1
///   32  incompat_features u64
///   40  ro_compat_features u64
///   48  compat_features u64
///   56  store_id [16]
///   72  node_id [16]
///   88  epoch u64
///   96  commit_position u64         highest log position known acknowledged
///  104  segment_size u64
///  112  log_start_segment u64       oldest live segment number
///  120  role u8, reserved [3]
///  124  epoch_count u32
///  128  epochs [epoch_count] of (epoch u64, start_position u64)
///  ...  zero
/// 4088  checksum u64                xxh3_64 of bytes 0..4088 (fixed in every format version)
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub format_version: u32,
    pub checksum_algorithm: u32,
    pub sequence: u64,
    pub prev_checksum: u64,
    pub incompat_features: u64,
    pub ro_compat_features: u64,
    pub compat_features: u64,
    pub store_id: StoreId,
    pub node_id: NodeId,
    pub epoch: u64,
    pub commit_position: u64,
    pub segment_size: u64,
    pub log_start_segment: u64,
    pub role: Role,
    pub epochs: Vec<EpochStart>,
}

const SB_CHECKSUM_AT: usize = SUPERBLOCK_COPY_LEN - 8;
const SB_EPOCHS_AT: usize = 128;

impl Superblock {
    /// The superblock of a brand-new store at epoch 1.
    pub fn new(store_id: StoreId, node_id: NodeId, segment_size: u64) -> Superblock {
        Superblock {
            format_version: FORMAT_VERSION,
            checksum_algorithm: CHECKSUM_ALGORITHM,
            sequence: 1,
            prev_checksum: 0,
            incompat_features: 0,
            ro_compat_features: 0,
            compat_features: 0,
            store_id,
            node_id,
            epoch: 1,
            commit_position: 0,
            segment_size,
            log_start_segment: 0,
            role: Role::Primary,
            epochs: vec![EpochStart { epoch: 1, start_position: 0 }],
        }
    }

    /// The superblock that replaces this one: the same fields, the next
    /// sequence, chained to this copy's checksum. Change fields on it, then
    /// write it (all copies).
    pub fn successor(&self) -> Superblock {
        let (_, checksum) = self.encode();
        Superblock { sequence: self.sequence + 1, prev_checksum: checksum, ..self.clone() }
    }

    /// Encodes one copy; returns it and its checksum.
    pub fn encode(&self) -> ([u8; SUPERBLOCK_COPY_LEN], u64) {
        debug_assert!(self.epochs.len() <= EPOCH_HISTORY_MAX);
        let mut buf = [0u8; SUPERBLOCK_COPY_LEN];
        let mut p = Put::new(&mut buf);
        p.u64(SUPERBLOCK_MAGIC)
            .u32(self.format_version)
            .u32(self.checksum_algorithm)
            .u64(self.sequence)
            .u64(self.prev_checksum)
            .u64(self.incompat_features)
            .u64(self.ro_compat_features)
            .u64(self.compat_features)
            .bytes(&self.store_id.0)
            .bytes(&self.node_id.0)
            .u64(self.epoch)
            .u64(self.commit_position)
            .u64(self.segment_size)
            .u64(self.log_start_segment)
            .u8(self.role as u8)
            .bytes(&[0; 3])
            .u32(self.epochs.len().min(EPOCH_HISTORY_MAX) as u32);
        debug_assert_eq!(p.at, SB_EPOCHS_AT);
        for e in self.epochs.iter().take(EPOCH_HISTORY_MAX) {
            p.u64(e.epoch).u64(e.start_position);
        }
        let checksum = xxh3_64_with_seed(&buf[..SB_CHECKSUM_AT], SEED_SUPERBLOCK);
        buf[SB_CHECKSUM_AT..].copy_from_slice(&checksum.to_le_bytes());
        (buf, checksum)
    }

    /// Decodes one copy; returns it and its checksum. An intact copy of
    /// another format version is [`DecodeError::UnknownVersion`].
    pub fn decode(buf: &[u8]) -> Result<(Superblock, u64), DecodeError> {
        let (version, _sequence, checksum) = peek_superblock(buf)?;
        if version != FORMAT_VERSION {
            return Err(DecodeError::UnknownVersion { found: version });
        }
        let mut g = Get::new(buf, SUPERBLOCK_COPY_LEN)?;
        g.u64();
        let mut sb = Superblock {
            format_version: g.u32(),
            checksum_algorithm: g.u32(),
            sequence: g.u64(),
            prev_checksum: g.u64(),
            incompat_features: g.u64(),
            ro_compat_features: g.u64(),
            compat_features: g.u64(),
            store_id: StoreId(g.array()),
            node_id: NodeId(g.array()),
            epoch: g.u64(),
            commit_position: g.u64(),
            segment_size: g.u64(),
            log_start_segment: g.u64(),
            role: Role::Primary,
            epochs: Vec::new(),
        };
        sb.role = Role::from_u8(g.u8())?;
        g.array::<3>();
        let count = g.u32();
        if count == 0 || count as usize > EPOCH_HISTORY_MAX {
            return Err(DecodeError::BadField { field: "epoch_count", value: count.into() });
        }
        for _ in 0..count {
            let e = EpochStart { epoch: g.u64(), start_position: g.u64() };
            if let Some(prev) = sb.epochs.last() {
                if e.epoch <= prev.epoch || e.start_position < prev.start_position {
                    return Err(DecodeError::BadField { field: "epochs", value: e.epoch });
                }
            }
            sb.epochs.push(e);
        }
        if sb.epochs.last().map(|e| e.epoch) != Some(sb.epoch) {
            return Err(DecodeError::BadField { field: "epoch", value: sb.epoch });
        }
        Ok((sb, checksum))
    }
}

/// Checks magic and checksum of a copy and returns the fields every format
/// version keeps in place: (format_version, sequence, checksum).
fn peek_superblock(buf: &[u8]) -> Result<(u32, u64, u64), DecodeError> {
    let mut g = Get::new(buf, SUPERBLOCK_COPY_LEN)?;
    check_magic(g.u64(), SUPERBLOCK_MAGIC)?;
    let version = g.u32();
    g.u32();
    let sequence = g.u64();
    let stored = u64::from_le_bytes(buf[SB_CHECKSUM_AT..SUPERBLOCK_COPY_LEN].try_into().unwrap_or_default());
    check_sum(stored, xxh3_64_with_seed(&buf[..SB_CHECKSUM_AT], SEED_SUPERBLOCK))?;
    Ok((version, sequence, stored))
}

/// Why no superblock could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SuperblockError {
    #[error("the store was written in format version {found}; this build reads version {FORMAT_VERSION}")]
    UnknownVersion { found: u32 },
    #[error("no two of the {SUPERBLOCK_COPIES} superblock copies agree ({valid} intact)")]
    NoQuorum { valid: usize },
}

/// Picks the superblock from the copies in a superblock file: the newest
/// sequence that at least two intact copies agree on (same checksum).
pub fn choose_superblock(file: &[u8]) -> Result<Superblock, SuperblockError> {
    let mut intact: Vec<(u32, u64, u64, usize)> = Vec::new();
    let mut foreign_version = None;
    for i in 0..SUPERBLOCK_COPIES {
        let copy = file.get(i * SUPERBLOCK_COPY_LEN..(i + 1) * SUPERBLOCK_COPY_LEN).unwrap_or(&[]);
        match peek_superblock(copy) {
            Ok((version, sequence, checksum)) => intact.push((version, sequence, checksum, i)),
            Err(_) if copy.len() >= 12 && copy[..8] == SUPERBLOCK_MAGIC.to_le_bytes() => {
                let version = u32::from_le_bytes([copy[8], copy[9], copy[10], copy[11]]);
                if version != FORMAT_VERSION {
                    foreign_version = Some(version);
                }
            }
            Err(_) => {}
        }
    }
    let agreed =
        intact.iter().filter(|a| intact.iter().filter(|b| (b.1, b.2) == (a.1, a.2)).count() >= 2).max_by_key(|a| a.1);
    let Some(&(version, _, _, index)) = agreed else {
        return Err(match foreign_version {
            Some(found) => SuperblockError::UnknownVersion { found },
            None => SuperblockError::NoQuorum { valid: intact.len() },
        });
    };
    if version != FORMAT_VERSION {
        return Err(SuperblockError::UnknownVersion { found: version });
    }
    let copy = &file[index * SUPERBLOCK_COPY_LEN..(index + 1) * SUPERBLOCK_COPY_LEN];
    // An intact v1 copy whose fields are invalid counts as no quorum.
    Superblock::decode(copy).map(|(sb, _)| sb).map_err(|_| SuperblockError::NoQuorum { valid: intact.len() })
}

// ---------------------------------------------------------------------------
// Segment header and seal.

/// The header at file offset 0 of every segment. Byte map:
///
/// ```text
///  0  magic u64 "LKSTSEGM"
///  8  format_version u32
/// 12  checksum_algorithm u32
/// 16  store_id [16]
/// 32  segment_number u64
/// 40  first_position u64        log position of the first data byte
/// 48  segment_size u64          file length
/// 56  start_fingerprint u128    log fingerprint at first_position
/// 72  epoch u64                 epoch when the segment was created
/// 80  checksum u64              xxh3_64 of bytes 0..80
/// 88  zero up to SEGMENT_HEADER_REGION
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentHeader {
    pub format_version: u32,
    pub checksum_algorithm: u32,
    pub store_id: StoreId,
    pub segment_number: u64,
    pub first_position: u64,
    pub segment_size: u64,
    pub start_fingerprint: Fingerprint,
    pub epoch: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut buf = [0u8; SEGMENT_HEADER_LEN];
        let mut p = Put::new(&mut buf);
        p.u64(SEGMENT_MAGIC)
            .u32(self.format_version)
            .u32(self.checksum_algorithm)
            .bytes(&self.store_id.0)
            .u64(self.segment_number)
            .u64(self.first_position)
            .u64(self.segment_size)
            .u128(self.start_fingerprint.0)
            .u64(self.epoch);
        let checksum = xxh3_64_with_seed(&buf[..SEGMENT_HEADER_LEN - 8], SEED_SEGMENT);
        buf[SEGMENT_HEADER_LEN - 8..].copy_from_slice(&checksum.to_le_bytes());
        buf
    }

    pub fn decode(buf: &[u8]) -> Result<SegmentHeader, DecodeError> {
        let mut g = Get::new(buf, SEGMENT_HEADER_LEN)?;
        check_magic(g.u64(), SEGMENT_MAGIC)?;
        let h = SegmentHeader {
            format_version: g.u32(),
            checksum_algorithm: g.u32(),
            store_id: StoreId(g.array()),
            segment_number: g.u64(),
            first_position: g.u64(),
            segment_size: g.u64(),
            start_fingerprint: Fingerprint(g.u128()),
            epoch: g.u64(),
        };
        check_sum(g.u64(), xxh3_64_with_seed(&buf[..SEGMENT_HEADER_LEN - 8], SEED_SEGMENT))?;
        if h.format_version != FORMAT_VERSION {
            return Err(DecodeError::UnknownVersion { found: h.format_version });
        }
        Ok(h)
    }
}

/// The seal at file offset `segment_size - SEAL_REGION` of a full segment. Byte map:
///
/// ```text
///  0  magic u64 "LKSTSEAL"
///  8  segment_number u64
/// 16  first_position u64
/// 24  end_position u64          position after the last block
/// 32  digest u128               xxh3_128 of the data area bytes [0, end - first)
/// 48  fingerprint u128          log fingerprint at end_position
/// 64  checksum u64              xxh3_64 of bytes 0..64, seeded by block_seed(store, segment, end_position)
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    pub segment_number: u64,
    pub first_position: u64,
    pub end_position: u64,
    pub digest: u128,
    pub fingerprint: Fingerprint,
}

impl Seal {
    pub fn encode(&self, store_id: &StoreId) -> [u8; SEAL_LEN] {
        let mut buf = [0u8; SEAL_LEN];
        let mut p = Put::new(&mut buf);
        p.u64(SEAL_MAGIC)
            .u64(self.segment_number)
            .u64(self.first_position)
            .u64(self.end_position)
            .u128(self.digest)
            .u128(self.fingerprint.0);
        let seed = block_seed(store_id, self.segment_number, self.end_position) ^ SEED_SEAL;
        let checksum = xxh3_64_with_seed(&buf[..SEAL_LEN - 8], seed);
        buf[SEAL_LEN - 8..].copy_from_slice(&checksum.to_le_bytes());
        buf
    }

    pub fn decode(buf: &[u8], store_id: &StoreId) -> Result<Seal, DecodeError> {
        let mut g = Get::new(buf, SEAL_LEN)?;
        check_magic(g.u64(), SEAL_MAGIC)?;
        let s = Seal {
            segment_number: g.u64(),
            first_position: g.u64(),
            end_position: g.u64(),
            digest: g.u128(),
            fingerprint: Fingerprint(g.u128()),
        };
        let seed = block_seed(store_id, s.segment_number, s.end_position) ^ SEED_SEAL;
        check_sum(g.u64(), xxh3_64_with_seed(&buf[..SEAL_LEN - 8], seed))?;
        if s.end_position < s.first_position {
            return Err(DecodeError::BadField { field: "end_position", value: s.end_position });
        }
        Ok(s)
    }
}

/// The digest a seal stores, over a segment's used data area.
pub fn segment_digest(data: &[u8]) -> u128 {
    xxh3_128_with_seed(data, SEED_SEAL)
}

/// Incremental form of [`segment_digest`], for the writer.
#[derive(Clone)]
pub struct SegmentDigester(Box<Xxh3>);

impl SegmentDigester {
    pub fn new() -> Self {
        SegmentDigester(Box::new(Xxh3::with_seed(SEED_SEAL)))
    }
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn digest(&self) -> u128 {
        self.0.digest128()
    }
}

impl Default for SegmentDigester {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for SegmentDigester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SegmentDigester({:032x})", self.digest())
    }
}

// ---------------------------------------------------------------------------
// Records.

/// One decoded record, borrowing the block it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub kind: u8,
    pub key: &'a [u8],
    pub value: &'a [u8],
}

/// Encoded length of a record with this key and value.
pub const fn record_len(key_len: usize, value_len: usize) -> usize {
    RECORD_HEADER_LEN + key_len + value_len
}

/// Appends one record. Byte map:
///
/// ```text
///  0  kind u8          1 = put, 2 = delete
///  1  reserved u8      0
///  2  key_len u16      1..=KEY_LEN_MAX
///  4  value_len u32    0..=VALUE_LEN_MAX (0 for delete)
///  8  crc u32          CRC32 of bytes 0..8 ‖ key ‖ value, initial value record_seed(store)
/// 12  key, then value
/// ```
/// The caller checked the limits (see `Store` argument validation).
pub fn encode_record(out: &mut Vec<u8>, seed: u32, kind: u8, key: &[u8], value: &[u8]) {
    debug_assert!(!key.is_empty() && key.len() <= KEY_LEN_MAX && value.len() <= VALUE_LEN_MAX);
    let mut head = [0u8; 8];
    Put::new(&mut head).u8(kind).u8(0).u16(key.len() as u16).u32(value.len() as u32);
    let mut crc = crc32fast::Hasher::new_with_initial(seed);
    crc.update(&head);
    crc.update(key);
    crc.update(value);
    out.extend_from_slice(&head);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

/// Decodes the record at the start of `buf`; returns it and its length.
pub fn decode_record(buf: &[u8], seed: u32) -> Result<(Record<'_>, usize), DecodeError> {
    let mut g = Get::new(buf, RECORD_HEADER_LEN)?;
    let kind = g.u8();
    let reserved = g.u8();
    let key_len = g.u16() as usize;
    let value_len = g.u32() as usize;
    let stored = g.u32();
    if kind != RECORD_KIND_PUT && kind != RECORD_KIND_DELETE {
        return Err(DecodeError::BadField { field: "record kind", value: kind.into() });
    }
    if reserved != 0 {
        return Err(DecodeError::BadField { field: "record reserved", value: reserved.into() });
    }
    if key_len == 0 || key_len > KEY_LEN_MAX {
        return Err(DecodeError::BadField { field: "key_len", value: key_len as u64 });
    }
    if value_len > VALUE_LEN_MAX || (kind == RECORD_KIND_DELETE && value_len != 0) {
        return Err(DecodeError::BadField { field: "value_len", value: value_len as u64 });
    }
    let len = record_len(key_len, value_len);
    if buf.len() < len {
        return Err(DecodeError::Truncated { need: len, len: buf.len() });
    }
    let mut crc = crc32fast::Hasher::new_with_initial(seed);
    crc.update(&buf[..8]);
    crc.update(&buf[RECORD_HEADER_LEN..len]);
    let computed = crc.finalize();
    if stored != computed {
        return Err(DecodeError::Checksum { stored: stored.into(), computed: computed.into() });
    }
    let key = &buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + key_len];
    Ok((Record { kind, key, value: &buf[RECORD_HEADER_LEN + key_len..len] }, len))
}

// ---------------------------------------------------------------------------
// Commit blocks.

/// The fixed header of a commit block. Byte map:
///
/// ```text
///  0  magic u32 "LKBK"
///  4  kind u8               1 = records
///  5  flags u8              0
///  6  reserved u16          0
///  8  position u64          log position of this header
/// 16  len u32               whole block: header, records, zero padding, marker
/// 20  record_count u32
/// 24  epoch u64             epoch of the writer
/// 32  commit_position u64   log position known durable when the block was built
/// 40  header_checksum u64   xxh3_64 of bytes 0..40, seeded by block_seed
/// ```
/// Then `record_count` records, zero padding to a multiple of 8, and the marker:
///
/// ```text
///  0  magic u32 "LKMK"
///  4  reserved u32          0
///  8  digest u128           xxh3_128 of block bytes [0, len - 40), seeded by block_seed
/// 24  fingerprint u128      Fingerprint::chain(previous fingerprint, digest)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockHeader {
    pub position: u64,
    pub len: u32,
    pub record_count: u32,
    pub epoch: u64,
    pub commit_position: u64,
}

impl BlockHeader {
    fn encode_into(&self, buf: &mut [u8], seed: u64) {
        let mut p = Put::new(buf);
        p.u32(BLOCK_MAGIC)
            .u8(BLOCK_KIND_RECORDS)
            .u8(0)
            .u16(0)
            .u64(self.position)
            .u32(self.len)
            .u32(self.record_count)
            .u64(self.epoch)
            .u64(self.commit_position);
        let checksum = xxh3_64_with_seed(&buf[..BLOCK_HEADER_LEN - 8], seed);
        buf[BLOCK_HEADER_LEN - 8..BLOCK_HEADER_LEN].copy_from_slice(&checksum.to_le_bytes());
    }

    /// Decodes and checks a block header found where `seed` says it should be.
    pub fn decode(buf: &[u8], seed: u64) -> Result<BlockHeader, DecodeError> {
        let mut g = Get::new(buf, BLOCK_HEADER_LEN)?;
        check_magic(g.u32().into(), BLOCK_MAGIC.into())?;
        let kind = g.u8();
        let flags = g.u8();
        let reserved = g.u16();
        let h = BlockHeader {
            position: g.u64(),
            len: g.u32(),
            record_count: g.u32(),
            epoch: g.u64(),
            commit_position: g.u64(),
        };
        check_sum(g.u64(), xxh3_64_with_seed(&buf[..BLOCK_HEADER_LEN - 8], seed))?;
        if kind != BLOCK_KIND_RECORDS {
            return Err(DecodeError::BadField { field: "block kind", value: kind.into() });
        }
        if flags != 0 || reserved != 0 {
            return Err(DecodeError::BadField { field: "block flags", value: flags.into() });
        }
        let len = h.len as usize;
        if !(BLOCK_HEADER_LEN + MARKER_LEN..=BLOCK_LEN_MAX).contains(&len) || !len.is_multiple_of(BLOCK_ALIGN) {
            return Err(DecodeError::BadField { field: "block len", value: len as u64 });
        }
        Ok(h)
    }
}

/// Builds one commit block: records are appended as encoded by
/// [`encode_record`], then [`BlockBuilder::finish`] fills header and marker.
#[derive(Debug)]
pub struct BlockBuilder {
    buf: Vec<u8>,
    record_count: u32,
}

impl Default for BlockBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl BlockBuilder {
    pub fn new() -> Self {
        BlockBuilder { buf: vec![0; BLOCK_HEADER_LEN], record_count: 0 }
    }

    /// Appends already-encoded records.
    pub fn push_records(&mut self, encoded: &[u8], count: u32) {
        self.buf.extend_from_slice(encoded);
        self.record_count += count;
    }

    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    /// The block so far: a header placeholder, then the records.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes of records pushed so far.
    pub fn records_len(&self) -> usize {
        self.buf.len() - BLOCK_HEADER_LEN
    }

    /// The block's length once finished.
    pub fn finished_len(&self) -> usize {
        finished_block_len(self.records_len())
    }

    /// Completes the block for `position`; returns its bytes and the log
    /// fingerprint after it.
    pub fn finish(
        mut self,
        position: u64,
        epoch: u64,
        commit_position: u64,
        seed: u64,
        prev: Fingerprint,
    ) -> (Vec<u8>, Fingerprint) {
        let len = self.finished_len();
        debug_assert!(len <= BLOCK_LEN_MAX);
        self.buf.resize(len - MARKER_LEN, 0);
        let header = BlockHeader { position, len: len as u32, record_count: self.record_count, epoch, commit_position };
        header.encode_into(&mut self.buf, seed);
        let digest = xxh3_128_with_seed(&self.buf, seed);
        let fingerprint = prev.chain(digest);
        self.buf.reserve_exact(MARKER_LEN);
        self.buf.extend_from_slice(&MARKER_MAGIC.to_le_bytes());
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        self.buf.extend_from_slice(&digest.to_le_bytes());
        self.buf.extend_from_slice(&fingerprint.0.to_le_bytes());
        debug_assert_eq!(self.buf.len(), len);
        (self.buf, fingerprint)
    }
}

/// The length of a block whose records take `records_len` bytes.
pub const fn finished_block_len(records_len: usize) -> usize {
    align_up(BLOCK_HEADER_LEN + records_len) + MARKER_LEN
}

/// A commit block whose header, digest and records all verified.
#[derive(Debug, Clone)]
pub struct VerifiedBlock<'a> {
    pub header: BlockHeader,
    /// The records region (without padding).
    pub records: Vec<(usize, Record<'a>)>,
    pub digest: u128,
    pub fingerprint: Fingerprint,
}

/// Verifies the block at the start of `buf`, expected at log position
/// `position` (through `seed`), and every record in it. With `prev`, also
/// checks that the block continues the fingerprint chain from `prev`.
/// Record offsets returned are relative to the block start.
pub fn verify_block(
    buf: &[u8],
    position: u64,
    seed: u64,
    record_seed: u32,
    prev: Option<Fingerprint>,
) -> Result<VerifiedBlock<'_>, DecodeError> {
    let header = BlockHeader::decode(buf, seed)?;
    if header.position != position {
        return Err(DecodeError::BadField { field: "block position", value: header.position });
    }
    let len = header.len as usize;
    if buf.len() < len {
        return Err(DecodeError::Truncated { need: len, len: buf.len() });
    }
    let body_end = len - MARKER_LEN;
    let mut g = Get::new(&buf[body_end..len], MARKER_LEN)?;
    check_magic(g.u32().into(), MARKER_MAGIC.into())?;
    if g.u32() != 0 {
        return Err(DecodeError::BadField { field: "marker reserved", value: 1 });
    }
    let stored_digest = g.u128();
    let fingerprint = Fingerprint(g.u128());
    let digest = xxh3_128_with_seed(&buf[..body_end], seed);
    if digest != stored_digest {
        return Err(DecodeError::Checksum { stored: stored_digest, computed: digest });
    }
    if let Some(prev) = prev {
        let computed = prev.chain(digest);
        if computed != fingerprint {
            return Err(DecodeError::Fingerprint { stored: fingerprint, computed });
        }
    }
    // Every record takes at least its header: a count the body cannot
    // hold is refused before anything is allocated for it.
    let fits = (body_end.saturating_sub(BLOCK_HEADER_LEN) / RECORD_HEADER_LEN) as u64;
    if u64::from(header.record_count) > fits {
        return Err(DecodeError::BadField { field: "record_count", value: header.record_count.into() });
    }
    let mut records = Vec::with_capacity(header.record_count as usize);
    let mut at = BLOCK_HEADER_LEN;
    for _ in 0..header.record_count {
        let (record, rlen) = decode_record(&buf[at..body_end], record_seed)?;
        records.push((at, record));
        at += rlen;
    }
    if body_end - at >= BLOCK_ALIGN || buf[at..body_end].iter().any(|&b| b != 0) {
        return Err(DecodeError::BadField { field: "block padding", value: (body_end - at) as u64 });
    }
    Ok(VerifiedBlock { header, records, digest, fingerprint })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> StoreId {
        StoreId([7; 16])
    }

    fn sample_superblock() -> Superblock {
        let mut sb = Superblock::new(store(), NodeId([9; 16]), SEGMENT_SIZE_DEFAULT);
        sb.sequence = 42;
        sb.commit_position = 12345;
        sb.epoch = 3;
        sb.epochs.push(EpochStart { epoch: 3, start_position: 100 });
        sb.role = Role::Secondary;
        sb
    }

    fn superblock_file(copies: [&Superblock; 4]) -> Vec<u8> {
        copies.iter().flat_map(|sb| sb.encode().0).collect()
    }

    #[test]
    fn superblock_round_trip() {
        let sb = sample_superblock();
        let (bytes, checksum) = sb.encode();
        assert_eq!(Superblock::decode(&bytes), Ok((sb, checksum)));
    }

    #[test]
    fn superblock_rejects_bad_magic_truncation_flip_and_version() {
        let (mut bytes, _) = sample_superblock().encode();
        assert!(matches!(Superblock::decode(&bytes[..100]), Err(DecodeError::Truncated { .. })));
        bytes[200] ^= 1;
        assert!(matches!(Superblock::decode(&bytes), Err(DecodeError::Checksum { .. })));
        bytes[0] ^= 1;
        assert!(matches!(Superblock::decode(&bytes), Err(DecodeError::BadMagic { .. })));
        let mut sb = sample_superblock();
        sb.format_version = FORMAT_VERSION + 1;
        let (bytes, _) = sb.encode();
        assert_eq!(Superblock::decode(&bytes), Err(DecodeError::UnknownVersion { found: FORMAT_VERSION + 1 }));
    }

    #[test]
    fn choose_takes_newest_sequence_agreed_by_two() {
        let old = sample_superblock();
        let mut new = old.clone();
        new.sequence += 1;
        new.commit_position += 1;
        // One stale copy.
        let file = superblock_file([&new, &new, &new, &old]);
        assert_eq!(choose_superblock(&file), Ok(new.clone()));
        // Half written: two new, two old.
        let file = superblock_file([&new, &new, &old, &old]);
        assert_eq!(choose_superblock(&file), Ok(new.clone()));
        // Only one new copy reached the disk: the update did not complete.
        let file = superblock_file([&new, &old, &old, &old]);
        assert_eq!(choose_superblock(&file), Ok(old.clone()));
        // One torn copy.
        let mut file = superblock_file([&new, &new, &new, &new]);
        file[SUPERBLOCK_COPY_LEN + 17] ^= 0xff;
        assert_eq!(choose_superblock(&file), Ok(new.clone()));
        // A lone copy with a higher sequence (misdirected write) does not win.
        let mut newer = new.clone();
        newer.sequence += 5;
        let file = superblock_file([&newer, &new, &old, &new]);
        assert_eq!(choose_superblock(&file), Ok(new));
    }

    #[test]
    fn choose_refuses_without_quorum_and_names_foreign_version() {
        let sb = sample_superblock();
        let mut file = superblock_file([&sb, &sb, &sb, &sb]);
        for i in 1..4 {
            file[i * SUPERBLOCK_COPY_LEN + 30] ^= 1;
        }
        assert_eq!(choose_superblock(&file), Err(SuperblockError::NoQuorum { valid: 1 }));
        let mut future = sb.clone();
        future.format_version = FORMAT_VERSION + 1;
        let file = superblock_file([&future, &future, &future, &future]);
        assert_eq!(choose_superblock(&file), Err(SuperblockError::UnknownVersion { found: FORMAT_VERSION + 1 }));
        assert_eq!(choose_superblock(&[]), Err(SuperblockError::NoQuorum { valid: 0 }));
    }

    #[test]
    fn segment_header_round_trip_and_negative() {
        let h = SegmentHeader {
            format_version: FORMAT_VERSION,
            checksum_algorithm: CHECKSUM_ALGORITHM,
            store_id: store(),
            segment_number: 5,
            first_position: 1 << 30,
            segment_size: SEGMENT_SIZE_DEFAULT,
            start_fingerprint: Fingerprint(0xdead_beef),
            epoch: 2,
        };
        let mut bytes = h.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(h.clone()));
        assert!(matches!(SegmentHeader::decode(&bytes[..10]), Err(DecodeError::Truncated { .. })));
        bytes[40] ^= 4;
        assert!(matches!(SegmentHeader::decode(&bytes), Err(DecodeError::Checksum { .. })));
        bytes[3] ^= 4;
        assert!(matches!(SegmentHeader::decode(&bytes), Err(DecodeError::BadMagic { .. })));
        let future = SegmentHeader { format_version: 2, ..h };
        assert_eq!(SegmentHeader::decode(&future.encode()), Err(DecodeError::UnknownVersion { found: 2 }));
    }

    #[test]
    fn seal_round_trip_and_negative() {
        let s = Seal {
            segment_number: 3,
            first_position: 100,
            end_position: 900,
            digest: 77,
            fingerprint: Fingerprint(88),
        };
        let mut bytes = s.encode(&store());
        assert_eq!(Seal::decode(&bytes, &store()), Ok(s));
        // A seal from another store does not verify.
        assert!(matches!(Seal::decode(&bytes, &StoreId([1; 16])), Err(DecodeError::Checksum { .. })));
        bytes[50] ^= 1;
        assert!(matches!(Seal::decode(&bytes, &store()), Err(DecodeError::Checksum { .. })));
        bytes[0] = 0;
        assert!(matches!(Seal::decode(&bytes, &store()), Err(DecodeError::BadMagic { .. })));
    }

    #[test]
    fn record_round_trip_and_negative() {
        let seed = record_seed(&store());
        let mut buf = Vec::new();
        encode_record(&mut buf, seed, RECORD_KIND_PUT, b"key", b"value");
        encode_record(&mut buf, seed, RECORD_KIND_DELETE, b"gone", b"");
        let (r, len) = decode_record(&buf, seed).expect("first record");
        assert_eq!((r.kind, r.key, r.value, len), (RECORD_KIND_PUT, &b"key"[..], &b"value"[..], record_len(3, 5)));
        let (r, _) = decode_record(&buf[len..], seed).expect("second record");
        assert_eq!((r.kind, r.key, r.value), (RECORD_KIND_DELETE, &b"gone"[..], &b""[..]));
        assert!(matches!(decode_record(&buf[..len - 1], seed), Err(DecodeError::Truncated { .. })));
        assert!(matches!(decode_record(&buf, seed ^ 1), Err(DecodeError::Checksum { .. })));
        let mut flipped = buf.clone();
        flipped[RECORD_HEADER_LEN + 4] ^= 0x10;
        assert!(matches!(decode_record(&flipped, seed), Err(DecodeError::Checksum { .. })));
        let mut bad_kind = buf.clone();
        bad_kind[0] = 9;
        assert_eq!(
            decode_record(&bad_kind, seed).map(|_| ()),
            Err(DecodeError::BadField { field: "record kind", value: 9 })
        );
    }

    fn sample_block(position: u64, prev: Fingerprint) -> (Vec<u8>, Fingerprint) {
        let rseed = record_seed(&store());
        let mut records = Vec::new();
        encode_record(&mut records, rseed, RECORD_KIND_PUT, b"a", b"1");
        encode_record(&mut records, rseed, RECORD_KIND_PUT, b"bb", b"22");
        let mut b = BlockBuilder::new();
        b.push_records(&records, 2);
        b.finish(position, 1, position, block_seed(&store(), 0, position), prev)
    }

    #[test]
    fn block_round_trip_and_chain() {
        let g = genesis_fingerprint(&store());
        let (block, fp) = sample_block(0, g);
        assert_eq!(block.len() % BLOCK_ALIGN, 0);
        let v = verify_block(&block, 0, block_seed(&store(), 0, 0), record_seed(&store()), Some(g)).expect("valid");
        assert_eq!(v.fingerprint, fp);
        assert_eq!(v.header.record_count, 2);
        assert_eq!(v.records[1].1.key, b"bb");
        let (block2, fp2) = sample_block(block.len() as u64, fp);
        let seed2 = block_seed(&store(), 0, block.len() as u64);
        let v2 = verify_block(&block2, block.len() as u64, seed2, record_seed(&store()), Some(fp)).expect("valid");
        assert_eq!(v2.fingerprint, fp2);
        // Same block, wrong predecessor: the chain is broken.
        let err = verify_block(&block2, block.len() as u64, seed2, record_seed(&store()), Some(g));
        assert!(matches!(err, Err(DecodeError::Fingerprint { .. })));
    }

    #[test]
    fn block_rejects_misplaced_and_flipped_bytes() {
        let g = genesis_fingerprint(&store());
        let (block, _) = sample_block(0, g);
        let rseed = record_seed(&store());
        // The same bytes at another position or segment or store do not verify.
        let moved = verify_block(&block, 0, block_seed(&store(), 1, 0), rseed, None);
        assert!(matches!(moved, Err(DecodeError::Checksum { .. })));
        let foreign = verify_block(&block, 0, block_seed(&StoreId([1; 16]), 0, 0), rseed, None);
        assert!(matches!(foreign, Err(DecodeError::Checksum { .. })));
        // Every single flipped byte is caught.
        let seed = block_seed(&store(), 0, 0);
        for i in 0..block.len() {
            let mut bad = block.clone();
            bad[i] ^= 0x01;
            assert!(verify_block(&bad, 0, seed, rseed, Some(g)).is_err(), "flip at byte {i} not detected");
        }
        assert!(matches!(
            verify_block(&block[..block.len() - 1], 0, seed, rseed, None),
            Err(DecodeError::Truncated { .. })
        ));
    }

    /// A block that verifies but claims more records than its body can
    /// hold is refused before the decoder reserves room for that many
    /// (it reserved `record_count` items first).
    #[test]
    fn a_record_count_the_block_cannot_hold_is_refused_before_allocating() {
        let (position, prev) = (0, genesis_fingerprint(&store()));
        let rseed = record_seed(&store());
        let mut records = Vec::new();
        encode_record(&mut records, rseed, RECORD_KIND_PUT, b"a", b"1");
        let mut b = BlockBuilder::new();
        b.push_records(&records, 100_000_000);
        let seed = block_seed(&store(), 0, position);
        let (block, _) = b.finish(position, 1, position, seed, prev);
        assert_eq!(
            verify_block(&block, position, seed, rseed, Some(prev)).err(),
            Some(DecodeError::BadField { field: "record_count", value: 100_000_000 })
        );
    }

    #[test]
    fn ids_parse_and_print() {
        let id: StoreId = "000102030405060708090a0b0c0d0e0f".parse().expect("hex");
        assert_eq!(id.0[15], 15);
        assert_eq!(id.to_string(), "000102030405060708090a0b0c0d0e0f");
        assert_eq!("00010203-0405-0607-0809-0a0b0c0d0e0f".parse::<StoreId>(), Ok(id));
        assert!("xyz".parse::<StoreId>().is_err());
        assert!("zz0102030405060708090a0b0c0d0e0f".parse::<StoreId>().is_err());
    }

    #[test]
    fn segment_names_and_sizes() {
        assert_eq!(parse_segment_file_name(&segment_file_name(12)), Some(12));
        assert_eq!(parse_segment_file_name("segment-.log"), None);
        assert_eq!(parse_segment_file_name("segment-12.tmp"), None);
        assert!(validate_segment_size(SEGMENT_SIZE_DEFAULT).is_ok());
        assert!(validate_segment_size(SEGMENT_SIZE_MIN - 4096).is_err());
        assert!(validate_segment_size(SEGMENT_SIZE_MIN + 1).is_err());
    }
}
