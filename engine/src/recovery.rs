//! Reading a store back: superblock → versions and features → segment list →
//! scan every block → classify the tail. Pure reading: nothing here modifies
//! the store, so `check` and `inspect` use it on a store another process has
//! open; [`crate::Store::open`] applies the verdict (truncating a torn tail).
//!
//! Invariants:
//! * Every byte at a log position below the known commit position verifies,
//!   or the scan fails with [`Error::Corruption`].
//! * Damaged bytes at the tail are reported as a [`TornTail`] only when no
//!   later valid block proves they had been acknowledged.

use std::path::{Path, PathBuf};

use crate::error::{Corruption, Error, Result};
use crate::format::{
    self, block_seed, choose_superblock, genesis_fingerprint, record_seed, verify_block, BlockHeader, DecodeError,
    Fingerprint, Seal, SegmentDigester, SegmentHeader, Superblock, SuperblockError, BLOCK_ALIGN, BLOCK_HEADER_LEN,
    BLOCK_MAGIC, CHECKSUM_ALGORITHM, FORMAT_VERSION, INCOMPAT_FEATURES_KNOWN, RO_COMPAT_FEATURES_KNOWN, SEAL_LEN,
    SEAL_REGION, SEGMENT_HEADER_REGION, SUPERBLOCK_FILE, SUPERBLOCK_FILE_LEN,
};
use crate::storage::{OpenMode, Storage};

/// One segment as the scan found it.
#[derive(Debug, Clone)]
pub struct SegmentInfo {
    pub number: u64,
    pub path: PathBuf,
    pub header: SegmentHeader,
    /// Log position after the last valid block.
    pub end_position: u64,
    /// Fingerprint at `end_position`.
    pub end_fingerprint: Fingerprint,
    pub sealed: bool,
    /// The last segment's seal region held bytes that are not a valid seal
    /// (a seal write torn by a crash); opening clears it.
    pub damaged_seal: bool,
    pub blocks: u64,
    pub records: u64,
}

/// Damaged bytes after the last valid block, beyond the commit position,
/// with no later block proving they were acknowledged: a write torn by a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub segment: u64,
    pub path: PathBuf,
    /// File offset of the first damaged byte.
    pub file_offset: u64,
    /// Log position of the first damaged byte.
    pub position: u64,
    /// Bytes from there to the last non-zero byte of the data area.
    pub len: u64,
    /// Why the bytes at `file_offset` do not form a valid block.
    pub reason: DecodeError,
}

/// A record as the scan passes it to its visitor.
#[derive(Debug, Clone, Copy)]
pub struct RecordVisit<'a> {
    pub segment: u64,
    /// File offset of the record's first byte.
    pub file_offset: u64,
    pub len: u32,
    pub kind: u8,
    pub key: &'a [u8],
}

/// What a scan of a whole store found.
#[derive(Debug)]
pub struct ScanReport {
    pub superblock: Superblock,
    pub segments: Vec<SegmentInfo>,
    pub log_end: u64,
    pub fingerprint: Fingerprint,
    /// The highest position known acknowledged: the superblock's, or a
    /// later one recorded in a valid block header.
    pub commit_position: u64,
    pub torn_tail: Option<TornTail>,
    /// The hash state of the last segment's data area, for its later seal.
    pub last_digester: Option<SegmentDigester>,
    /// A prepared segment after the last one: full length, all zeros, no
    /// header yet (see docs/FORMAT.md, "Segments").
    pub spare: Option<u64>,
}

/// Reads the superblock of the store in `dir` and checks that this build may
/// open it (`read_only` tolerates unknown read-only-compatible features).
pub fn read_superblock(storage: &dyn Storage, dir: &Path, read_only: bool) -> Result<Superblock> {
    let path = dir.join(SUPERBLOCK_FILE);
    let file = storage.open(&path, OpenMode::Read).map_err(Error::io(format!("opening {}", path.display())))?;
    let len = file.len().map_err(Error::io(format!("reading {}", path.display())))?;
    let mut buf = vec![0u8; len.min(SUPERBLOCK_FILE_LEN as u64) as usize];
    file.read_exact_at(&mut buf, 0).map_err(Error::io(format!("reading {}", path.display())))?;
    let sb = choose_superblock(&buf).map_err(|e| match e {
        SuperblockError::UnknownVersion { found } => {
            Error::IncompatibleFormat { path: path.clone(), found, supported: FORMAT_VERSION }
        }
        SuperblockError::NoQuorum { valid } => Error::corruption(&path, 0, Corruption::SuperblockQuorum { valid }),
    })?;
    let feature = |what, found: u64, known| Error::IncompatibleFeature { path: path.clone(), what, found, known };
    if sb.incompat_features & !INCOMPAT_FEATURES_KNOWN != 0 {
        return Err(feature("incompatible feature flags", sb.incompat_features, INCOMPAT_FEATURES_KNOWN));
    }
    if !read_only && sb.ro_compat_features & !RO_COMPAT_FEATURES_KNOWN != 0 {
        return Err(feature("read-only-compatible feature flags", sb.ro_compat_features, RO_COMPAT_FEATURES_KNOWN));
    }
    if sb.checksum_algorithm != CHECKSUM_ALGORITHM {
        return Err(feature("checksum algorithm", sb.checksum_algorithm.into(), CHECKSUM_ALGORITHM.into()));
    }
    if format::validate_segment_size(sb.segment_size).is_err() {
        let bad = DecodeError::BadField { field: "segment_size", value: sb.segment_size };
        return Err(Error::corruption(&path, 0, bad));
    }
    Ok(sb)
}

/// Segment numbers present in `dir`, checked to be one unbroken sequence
/// starting at the superblock's `log_start_segment`.
pub fn list_segments(storage: &dyn Storage, dir: &Path, sb: &Superblock) -> Result<Vec<u64>> {
    let names = storage.list(dir).map_err(Error::io(format!("listing {}", dir.display())))?;
    let mut numbers: Vec<u64> = names.iter().filter_map(|n| format::parse_segment_file_name(n)).collect();
    numbers.sort_unstable();
    let broken = |number: u64, reason: String| Error::SegmentSequence {
        path: dir.join(format::segment_file_name(number)),
        reason,
    };
    if let Some(&first) = numbers.first() {
        if first != sb.log_start_segment {
            let n = sb.log_start_segment;
            return Err(broken(n, format!("the log starts at segment {n}, but the first segment file is {first}")));
        }
    }
    for pair in numbers.windows(2) {
        if pair[1] != pair[0] + 1 {
            let missing = pair[0] + 1;
            return Err(broken(missing, format!("segment {missing} is missing between {} and {}", pair[0], pair[1])));
        }
    }
    Ok(numbers)
}

/// Scans the whole store, verifying every block, record, seal and the
/// fingerprint chain, and passes every record to `visit` in log order.
pub fn scan(
    storage: &dyn Storage,
    dir: &Path,
    read_only: bool,
    visit: &mut dyn FnMut(RecordVisit<'_>),
) -> Result<ScanReport> {
    let sb = read_superblock(storage, dir, read_only)?;
    let mut numbers = list_segments(storage, dir, &sb)?;
    let spare = match numbers.last() {
        Some(&last) if is_spare(storage, dir, last, sb.segment_size)? => numbers.pop(),
        _ => None,
    };
    let mut report = ScanReport {
        fingerprint: genesis_fingerprint(&sb.store_id),
        commit_position: sb.commit_position,
        superblock: sb,
        segments: Vec::new(),
        log_end: 0,
        torn_tail: None,
        last_digester: None,
        spare,
    };
    if numbers.is_empty() && report.commit_position > 0 {
        let commit_position = report.commit_position;
        return Err(Error::corruption(dir, 0, Corruption::NoSegments { commit_position }));
    }
    let mut buf = Vec::new();
    for (i, &number) in numbers.iter().enumerate() {
        let last = i + 1 == numbers.len();
        scan_segment(storage, dir, number, last, &mut buf, &mut report, visit)?;
    }
    Ok(report)
}

/// Whether segment file `number` is a prepared spare: full length and every
/// byte zero. A file without a header that holds anything else is damage.
fn is_spare(storage: &dyn Storage, dir: &Path, number: u64, size: u64) -> Result<bool> {
    let path = dir.join(format::segment_file_name(number));
    let file = storage.open(&path, OpenMode::Read).map_err(Error::io(format!("opening {}", path.display())))?;
    if file.len().map_err(Error::io(format!("reading {}", path.display())))? != size {
        return Ok(false);
    }
    let mut buf = vec![0u8; SEGMENT_HEADER_REGION as usize];
    file.read_exact_at(&mut buf, 0).map_err(Error::io(format!("reading {}", path.display())))?;
    if buf.iter().any(|&b| b != 0) {
        return Ok(false);
    }
    buf.resize(size as usize, 0);
    file.read_exact_at(&mut buf, 0).map_err(Error::io(format!("reading {}", path.display())))?;
    match buf.iter().position(|&b| b != 0) {
        None => Ok(true),
        Some(offset) => Err(Error::corruption(&path, offset as u64, Corruption::MissingHeader)),
    }
}

/// Where a segment's block walk stopped.
struct Walk {
    /// Data-area offset after the last valid block.
    end: usize,
    /// The first invalid bytes, if the walk did not end on zeros.
    damage: Option<(usize, DecodeError)>,
    digester: SegmentDigester,
    blocks: u64,
    records: u64,
}

fn scan_segment(
    storage: &dyn Storage,
    dir: &Path,
    number: u64,
    last: bool,
    buf: &mut Vec<u8>,
    report: &mut ScanReport,
    visit: &mut dyn FnMut(RecordVisit<'_>),
) -> Result<()> {
    let path = dir.join(format::segment_file_name(number));
    let size = report.superblock.segment_size;
    read_segment_file(storage, &path, size, buf)?;
    let header = check_segment_header(&path, number, &buf[..SEGMENT_HEADER_REGION as usize], report)?;
    let data = &buf[SEGMENT_HEADER_REGION as usize..(size - SEAL_REGION) as usize];
    let walk = walk_blocks(&header, data, report, visit);
    let end_position = header.first_position + walk.end as u64;
    let seal_bytes = &buf[(size - SEAL_REGION) as usize..];
    let sealed =
        check_seal(&path, &report.superblock, &header, end_position, seal_bytes, &walk, report.fingerprint, last)?;
    if let Some((offset, reason)) = walk.damage {
        let file_offset = SEGMENT_HEADER_REGION + offset as u64;
        if !last || sealed {
            return Err(Error::corruption(&path, file_offset, reason));
        }
        report.torn_tail =
            Some(classify_tail(&path, &report.superblock, &header, data, offset, reason, report.commit_position)?);
    } else if !last && !sealed {
        return Err(Error::corruption(
            &path,
            SEGMENT_HEADER_REGION + walk.end as u64,
            Corruption::Unsealed { segment: number },
        ));
    }
    report.log_end = end_position;
    report.segments.push(SegmentInfo {
        number,
        path,
        header,
        end_position,
        end_fingerprint: report.fingerprint,
        sealed,
        damaged_seal: last && !sealed && seal_bytes.iter().any(|&b| b != 0),
        blocks: walk.blocks,
        records: walk.records,
    });
    report.last_digester = Some(walk.digester);
    Ok(())
}

fn read_segment_file(storage: &dyn Storage, path: &Path, size: u64, buf: &mut Vec<u8>) -> Result<()> {
    let file = storage.open(path, OpenMode::Read).map_err(Error::io(format!("opening {}", path.display())))?;
    let len = file.len().map_err(Error::io(format!("reading {}", path.display())))?;
    if len != size {
        let bad = DecodeError::BadField { field: "segment file length", value: len };
        return Err(Error::corruption(path, len.min(size), bad));
    }
    buf.resize(size as usize, 0);
    file.read_exact_at(buf, 0).map_err(Error::io(format!("reading {}", path.display())))
}

fn check_segment_header(path: &Path, number: u64, bytes: &[u8], report: &ScanReport) -> Result<SegmentHeader> {
    let sb = &report.superblock;
    let header = SegmentHeader::decode(bytes).map_err(|e| match e {
        DecodeError::UnknownVersion { found } => {
            Error::IncompatibleFormat { path: path.into(), found, supported: FORMAT_VERSION }
        }
        e => Error::corruption(path, 0, e),
    })?;
    if header.store_id != sb.store_id {
        return Err(Error::ForeignSegment { path: path.into(), found: header.store_id, expected: sb.store_id });
    }
    let sequence = |reason: String| Error::SegmentSequence { path: path.into(), reason };
    if header.segment_number != number {
        return Err(sequence(format!(
            "the file is named segment {number} but its header says {}",
            header.segment_number
        )));
    }
    if header.segment_size != sb.segment_size || header.checksum_algorithm != sb.checksum_algorithm {
        let bad = DecodeError::BadField { field: "segment settings", value: header.segment_size };
        return Err(Error::corruption(path, 0, bad));
    }
    if let Some(prev) = report.segments.last() {
        if header.first_position != prev.end_position {
            return Err(sequence(format!(
                "the segment starts at log position {} but segment {} ends at {}",
                header.first_position, prev.number, prev.end_position
            )));
        }
        if header.start_fingerprint != prev.end_fingerprint {
            let bad = DecodeError::Fingerprint { stored: header.start_fingerprint, computed: prev.end_fingerprint };
            return Err(Error::corruption(path, 0, bad));
        }
    } else if header.first_position == 0 && header.start_fingerprint != genesis_fingerprint(&sb.store_id) {
        let bad =
            DecodeError::Fingerprint { stored: header.start_fingerprint, computed: genesis_fingerprint(&sb.store_id) };
        return Err(Error::corruption(path, 0, bad));
    }
    Ok(header)
}

/// Walks the commit blocks of one data area, from its start until zeros or
/// the first invalid bytes, updating the report's fingerprint and commit position.
fn walk_blocks(
    header: &SegmentHeader,
    data: &[u8],
    report: &mut ScanReport,
    visit: &mut dyn FnMut(RecordVisit<'_>),
) -> Walk {
    let store_id = report.superblock.store_id;
    let rseed = record_seed(&store_id);
    let mut walk = Walk { end: 0, damage: None, digester: SegmentDigester::new(), blocks: 0, records: 0 };
    if report.segments.is_empty() {
        report.fingerprint = header.start_fingerprint;
    }
    while walk.end < data.len() {
        let at = walk.end;
        let rest = &data[at..];
        if rest.iter().all(|&b| b == 0) {
            break;
        }
        let position = header.first_position + at as u64;
        let seed = block_seed(&store_id, header.segment_number, position);
        match verify_block(rest, position, seed, rseed, Some(report.fingerprint)) {
            Ok(block) => {
                for (offset, record) in &block.records {
                    visit(RecordVisit {
                        segment: header.segment_number,
                        file_offset: SEGMENT_HEADER_REGION + (at + offset) as u64,
                        len: format::record_len(record.key.len(), record.value.len()) as u32,
                        kind: record.kind,
                        key: record.key,
                    });
                }
                let len = block.header.len as usize;
                walk.digester.update(&rest[..len]);
                walk.records += block.records.len() as u64;
                walk.blocks += 1;
                walk.end += len;
                report.fingerprint = block.fingerprint;
                report.commit_position = report.commit_position.max(block.header.commit_position);
            }
            Err(reason) => {
                walk.damage = Some((at, reason));
                break;
            }
        }
    }
    walk
}

/// Checks the seal region; returns whether the segment is validly sealed.
#[allow(clippy::too_many_arguments)]
fn check_seal(
    path: &Path,
    sb: &Superblock,
    header: &SegmentHeader,
    end_position: u64,
    bytes: &[u8],
    walk: &Walk,
    fingerprint: Fingerprint,
    last: bool,
) -> Result<bool> {
    let seal_offset = sb.segment_size - SEAL_REGION;
    if bytes.iter().all(|&b| b == 0) {
        return Ok(false);
    }
    let seal = match Seal::decode(&bytes[..SEAL_LEN], &sb.store_id) {
        Ok(seal) if bytes[SEAL_LEN..].iter().all(|&b| b == 0) => seal,
        // A seal torn by a crash on the last segment protects nothing yet.
        _ if last => return Ok(false),
        Ok(_) => return Err(Error::corruption(path, seal_offset, Corruption::SealMismatch { what: "padding" })),
        Err(e) => return Err(Error::corruption(path, seal_offset, e)),
    };
    let mismatch = |what| Err(Error::corruption(path, seal_offset, Corruption::SealMismatch { what }));
    if walk.damage.is_some() {
        // A sealed segment must be whole; the caller reports the damage itself.
        return Ok(true);
    }
    if seal.segment_number != header.segment_number || seal.first_position != header.first_position {
        return mismatch("segment number or first position");
    }
    if seal.end_position != end_position {
        return mismatch("end position");
    }
    if seal.digest != walk.digester.digest() {
        return mismatch("digest");
    }
    if seal.fingerprint != fingerprint {
        return mismatch("fingerprint");
    }
    Ok(true)
}

/// Decides what damaged bytes at data-area offset `offset` of the last
/// segment are: a torn tail (returned) or mid-log corruption (an error).
fn classify_tail(
    path: &Path,
    sb: &Superblock,
    header: &SegmentHeader,
    data: &[u8],
    offset: usize,
    reason: DecodeError,
    commit_position: u64,
) -> Result<TornTail> {
    let position = header.first_position + offset as u64;
    let file_offset = SEGMENT_HEADER_REGION + offset as u64;
    if position < commit_position {
        return Err(Error::corruption(path, file_offset, Corruption::BeforeCommit { commit_position }));
    }
    if let Some(later_position) = later_acknowledging_block(sb, header, data, offset, position) {
        return Err(Error::corruption(path, file_offset, Corruption::ValidBlockAfter { later_position }));
    }
    let last_nonzero = data.iter().rposition(|&b| b != 0).unwrap_or(offset);
    Ok(TornTail {
        segment: header.segment_number,
        path: path.into(),
        file_offset,
        position,
        len: (last_nonzero + 1).saturating_sub(offset) as u64,
        reason,
    })
}

/// Looks past damaged bytes for a valid block written after they had been
/// acknowledged (its commit position is beyond them). Such a block proves the
/// damage is not a torn write. Blocks written while the damaged ones were
/// still in flight do not count: a crash may persist them out of order.
fn later_acknowledging_block(
    sb: &Superblock,
    header: &SegmentHeader,
    data: &[u8],
    offset: usize,
    damaged_position: u64,
) -> Option<u64> {
    let rseed = record_seed(&sb.store_id);
    let magic = BLOCK_MAGIC.to_le_bytes();
    let mut at = offset + BLOCK_ALIGN;
    while at + BLOCK_HEADER_LEN <= data.len() {
        if data[at..at + 4] == magic {
            let position = header.first_position + at as u64;
            let seed = block_seed(&sb.store_id, header.segment_number, position);
            if let Ok(h) = BlockHeader::decode(&data[at..], seed) {
                if verify_block(&data[at..], position, seed, rseed, None).is_ok()
                    && h.commit_position > damaged_position
                {
                    return Some(position);
                }
            }
        }
        at += BLOCK_ALIGN;
    }
    None
}
