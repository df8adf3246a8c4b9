//! Open and recovery: each row of the table in docs/FORMAT.md ("What opening
//! a store does with what it finds").

mod common;

use common::*;
use lockstep_engine::format::{self, FORMAT_VERSION, SEAL_REGION, SEGMENT_HEADER_REGION, SUPERBLOCK_COPY_LEN};
use lockstep_engine::{Corruption, Error, Store};

/// A closed store with three durable blocks "a", "b", "c"; returns the log
/// positions where each block starts and the log end.
fn three_blocks(dir: &std::path::Path) -> (Vec<u64>, u64) {
    let store = open_small(dir);
    let mut starts = Vec::new();
    for k in ["a", "b", "c"] {
        starts.push(store.info().log_end);
        store.put(k, format!("value of {k}")).expect("put");
    }
    let end = store.info().log_end;
    store.close().expect("close");
    (starts, end)
}

/// A closed store of `n` 200-byte records, spread over several segments.
fn several_segments(dir: &std::path::Path, n: usize) {
    let store = open_small(dir);
    for i in 0..n {
        store.put(format!("k{i}"), vec![b'x'; 200]).expect("put");
    }
    assert!(store.info().segments >= 3, "{} records fill only {} segments", n, store.info().segments);
    store.close().expect("close");
}

#[test]
fn torn_tail_beyond_commit_is_exported_and_truncated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (starts, end) = three_blocks(dir.path());
    // A partial copy of block "c" written after the last block, as a crash
    // in the middle of writing a fourth block would leave it.
    let (path, offset) = locate(dir.path(), starts[2]);
    let partial = read_at(&path, offset, ((end - starts[2]) / 2) as usize);
    assert_eq!(append_after_log_end(dir.path(), &partial), partial.len() as u64);

    let report = scan(dir.path());
    let tail = report.torn_tail.expect("scan reports the torn tail");
    // The tail runs to the last non-zero byte written.
    let nonzero_len = partial.iter().rposition(|&b| b != 0).expect("non-zero bytes") as u64 + 1;
    assert_eq!((tail.position, tail.len), (end, nonzero_len));

    let store = open_small(dir.path());
    assert_eq!(store.info().log_end, end);
    assert_eq!(store.get("c").expect("get").as_deref(), Some(&b"value of c"[..]));
    let exported = std::fs::read_dir(dir.path().join("recovered")).expect("recovered dir").count();
    assert_eq!(exported, 1);
    store.put("d", "after recovery").expect("writes continue");
    store.close().expect("close");
    let report = scan(dir.path());
    assert!(report.torn_tail.is_none());
    assert_eq!(open_small(dir.path()).get("d").expect("get").as_deref(), Some(&b"after recovery"[..]));
}

#[test]
fn random_garbage_after_the_log_is_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, end) = three_blocks(dir.path());
    let garbage: Vec<u8> = (0..5000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    append_after_log_end(dir.path(), &garbage);
    let store = open_small(dir.path());
    assert_eq!(store.info().log_end, end);
    assert_eq!(store.info().keys, 3);
}

#[test]
fn flipped_byte_in_an_early_record_is_refused_with_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (starts, _) = three_blocks(dir.path());
    let (path, offset) = locate(dir.path(), starts[0]);
    let record_byte = offset + format::BLOCK_HEADER_LEN as u64 + format::RECORD_HEADER_LEN as u64 + 3;
    flip(&path, record_byte);
    match Store::open(dir.path(), small_options()) {
        Err(e @ Error::Corruption { .. }) => {
            assert_eq!(e.exit_code(), 65);
            let Error::Corruption { path: p, offset: o, reason } = &e else { unreachable!() };
            assert_eq!((p, *o), (&path, offset));
            assert!(matches!(reason, Corruption::BeforeCommit { .. }), "{reason:?}");
            let message = e.to_string();
            assert!(message.contains("segment-0000000000.log") && message.contains(&offset.to_string()), "{message}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn damage_followed_by_a_block_that_acknowledged_it_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (starts, _) = three_blocks(dir.path());
    // Even with no commit position recorded in the superblock, block "b"
    // says block "a" was durable before "b" was written.
    rewrite_superblock(dir.path(), |sb| sb.commit_position = 0);
    let (path, offset) = locate(dir.path(), starts[0]);
    flip(&path, offset + 60);
    match Store::open(dir.path(), small_options()) {
        Err(Error::Corruption { offset: o, reason: Corruption::ValidBlockAfter { later_position }, .. }) => {
            assert_eq!((o, later_position), (offset, starts[1]));
        }
        other => panic!("expected corruption with a valid block after, got {other:?}"),
    }
}

#[test]
fn damage_in_a_sealed_segment_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    several_segments(dir.path(), 900);
    let path = dir.path().join(format::segment_file_name(0));
    flip(&path, SEGMENT_HEADER_REGION + 5000);
    let err = Store::open(dir.path(), small_options()).expect_err("must refuse");
    assert!(matches!(&err, Error::Corruption { path: p, .. } if *p == path), "{err:?}");
    assert_eq!(err.exit_code(), 65);
}

#[test]
fn segment_gap_is_refused_as_incompatible() {
    let dir = tempfile::tempdir().expect("tempdir");
    several_segments(dir.path(), 900);
    std::fs::remove_file(dir.path().join(format::segment_file_name(1))).expect("remove");
    let err = Store::open(dir.path(), small_options()).expect_err("must refuse");
    assert!(matches!(err, Error::SegmentSequence { .. }), "{err:?}");
    assert_eq!(err.exit_code(), 78);
    assert!(err.to_string().contains("segment 1 is missing"), "{err}");
}

#[test]
fn segment_of_another_store_is_refused() {
    let (a, b) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    three_blocks(a.path());
    three_blocks(b.path());
    let name = format::segment_file_name(0);
    std::fs::copy(b.path().join(&name), a.path().join(&name)).expect("copy");
    let err = Store::open(a.path(), small_options()).expect_err("must refuse");
    assert!(matches!(err, Error::ForeignSegment { .. }), "{err:?}");
    assert_eq!(err.exit_code(), 78);
}

#[test]
fn newer_format_version_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    three_blocks(dir.path());
    rewrite_superblock(dir.path(), |sb| sb.format_version = FORMAT_VERSION + 1);
    let err = Store::open(dir.path(), small_options()).expect_err("must refuse");
    assert!(
        matches!(err, Error::IncompatibleFormat { found, supported, .. } if found == FORMAT_VERSION + 1 && supported == FORMAT_VERSION),
        "{err:?}"
    );
    assert_eq!(err.exit_code(), 78);
    let message = err.to_string();
    assert!(message.contains("format version 2") && message.contains("only version 1"), "{message}");
}

#[test]
fn unknown_incompatible_feature_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    three_blocks(dir.path());
    rewrite_superblock(dir.path(), |sb| sb.incompat_features = 1 << 7);
    let err = Store::open(dir.path(), small_options()).expect_err("must refuse");
    assert!(matches!(err, Error::IncompatibleFeature { found: 0x80, .. }), "{err:?}");
    assert_eq!(err.exit_code(), 78);
}

#[test]
fn one_torn_or_stale_superblock_copy_is_outvoted() {
    let dir = tempfile::tempdir().expect("tempdir");
    three_blocks(dir.path());
    let path = dir.path().join(format::SUPERBLOCK_FILE);
    let good = scan(dir.path()).superblock;
    // Copy 2 torn (half zeros), copy 3 stale (an older sequence).
    write_at(&path, 2 * SUPERBLOCK_COPY_LEN as u64 + 100, &[0u8; 2000]);
    let mut stale = good.clone();
    stale.sequence -= 1;
    stale.commit_position = 0;
    write_at(&path, 3 * SUPERBLOCK_COPY_LEN as u64, &stale.encode().0);
    assert_eq!(scan(dir.path()).superblock, good);
    assert_eq!(open_small(dir.path()).info().keys, 3);
    // Three copies damaged: no quorum, refused as corruption.
    write_at(&path, 100, &[0u8; 8]);
    let err = Store::open(dir.path(), small_options()).expect_err("must refuse");
    assert!(matches!(err, Error::Corruption { reason: Corruption::SuperblockQuorum { .. }, .. }), "{err:?}");
}

#[test]
fn torn_seal_on_the_last_segment_is_cleared() {
    let dir = tempfile::tempdir().expect("tempdir");
    three_blocks(dir.path());
    let path = dir.path().join(format::segment_file_name(0));
    write_at(&path, SMALL_SEGMENT - SEAL_REGION, b"LKSTSEAL half a seal");
    let store = open_small(dir.path());
    assert_eq!(store.info().keys, 3);
    store.close().expect("close");
    assert_eq!(read_at(&path, SMALL_SEGMENT - SEAL_REGION, 20), vec![0u8; 20]);
}

#[test]
fn reads_verify_checksums_and_never_return_damaged_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_small(dir.path());
    let start = store.info().log_end;
    store.put("k", "the value").expect("put");
    let (path, offset) = locate(dir.path(), start);
    // Damage the value on disk while the store is open.
    flip(&path, offset + (format::BLOCK_HEADER_LEN + format::RECORD_HEADER_LEN + 1 + 2) as u64);
    let err = store.get("k").expect_err("damaged value must not be returned");
    assert!(matches!(err, Error::Corruption { .. }), "{err:?}");
    assert_eq!(err.exit_code(), 65);
}

/// Seals the last segment of the closed store in `dir` as a roll does.
fn seal_last_segment(dir: &std::path::Path) -> lockstep_engine::recovery::ScanReport {
    let report = scan(dir);
    let seg = report.segments.last().expect("segment");
    let data = read_at(&seg.path, SEGMENT_HEADER_REGION, (report.log_end - seg.header.first_position) as usize);
    let seal = format::Seal {
        segment_number: seg.number,
        first_position: seg.header.first_position,
        end_position: report.log_end,
        digest: format::segment_digest(&data),
        fingerprint: report.fingerprint,
    };
    write_at(&seg.path, SMALL_SEGMENT - SEAL_REGION, &seal.encode(&report.superblock.store_id));
    assert!(scan(dir).segments.last().expect("segment").sealed);
    report
}

/// A crash after sealing a segment and before the block that made the
/// roll: the segment is unsealed at open and takes the next block if it
/// fits — which segment a block goes to is decided with the block, so a
/// peer that never rolled there keeps the same layout.
#[test]
fn a_sealed_last_segment_is_unsealed_and_takes_the_next_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    three_blocks(dir.path());
    seal_last_segment(dir.path());

    let store = open_small(dir.path());
    assert_eq!(store.info().segments, 1);
    store.put("d", "in the same segment").expect("put");
    store.close().expect("close");
    let report = scan(dir.path());
    assert_eq!(report.segments.len(), 1);
    assert!(!report.segments[0].sealed);
    assert_eq!(report.segments[0].records, 4);
}

/// Found by the simulation: a crash after a roll and before its block left
/// an empty segment that a peer which never rolled there does not have;
/// every block from that peer was refused ("for segment 0, but the active
/// segment is 1"). The empty segment is removed at open.
#[test]
fn an_empty_segment_left_by_a_roll_is_removed_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    three_blocks(dir.path());
    let report = seal_last_segment(dir.path());
    let seg = report.segments.last().expect("segment");
    let header = format::SegmentHeader {
        format_version: FORMAT_VERSION,
        checksum_algorithm: format::CHECKSUM_ALGORITHM,
        store_id: report.superblock.store_id,
        segment_number: seg.number + 1,
        first_position: report.log_end,
        segment_size: SMALL_SEGMENT,
        start_fingerprint: report.fingerprint,
        epoch: report.superblock.epoch,
    };
    let next = dir.path().join(format::segment_file_name(seg.number + 1));
    let mut file = vec![0u8; SMALL_SEGMENT as usize];
    file[..format::SEGMENT_HEADER_LEN].copy_from_slice(&header.encode());
    std::fs::write(&next, file).expect("write the empty segment");
    assert_eq!(scan(dir.path()).segments.len(), 2);

    let store = open_small(dir.path());
    assert_eq!(store.info().segments, 1);
    store.put("d", "in the first segment").expect("put");
    store.close().expect("close");
    let report = scan(dir.path());
    assert_eq!((report.segments.len(), report.segments[0].records), (1, 4));
    assert!(!next.exists());
}

#[test]
fn leftover_temporary_files_are_removed() {
    // A crash while creating a segment leaves only its temporary file.
    let dir = tempfile::tempdir().expect("tempdir");
    three_blocks(dir.path());
    let tmp = dir.path().join(format!("{}.tmp", format::segment_file_name(1)));
    std::fs::write(&tmp, b"half a segment").expect("write");
    let store = open_small(dir.path());
    assert_eq!(store.info().keys, 3);
    assert!(!tmp.exists());
}

#[test]
fn a_seal_that_does_not_match_its_segment_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    several_segments(dir.path(), 900);
    let report = scan(dir.path());
    let first = &report.segments[0];
    // A valid seal for a shorter segment: the end position disagrees.
    let seal = format::Seal {
        segment_number: 0,
        first_position: 0,
        end_position: first.end_position - 8,
        digest: 0,
        fingerprint: first.end_fingerprint,
    };
    write_at(&first.path, SMALL_SEGMENT - SEAL_REGION, &seal.encode(&report.superblock.store_id));
    let err = Store::open(dir.path(), small_options()).expect_err("must refuse");
    assert!(
        matches!(err, Error::Corruption { reason: Corruption::SealMismatch { what: "end position" }, .. }),
        "{err:?}"
    );
}

#[test]
fn overlapping_segments_are_refused_as_incompatible() {
    let dir = tempfile::tempdir().expect("tempdir");
    several_segments(dir.path(), 900);
    let report = scan(dir.path());
    let second = &report.segments[1];
    // Segment 1 claims to start 8 bytes before segment 0 ends.
    let header = format::SegmentHeader { first_position: second.header.first_position - 8, ..second.header.clone() };
    write_at(&second.path, 0, &header.encode());
    let err = Store::open(dir.path(), small_options()).expect_err("must refuse");
    assert!(matches!(err, Error::SegmentSequence { .. }), "{err:?}");
    assert_eq!(err.exit_code(), 78);
}

#[test]
fn the_next_segment_is_prepared_as_a_zeroed_spare_once_half_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    let half = format::segment_data_len(SMALL_SEGMENT) / 2;
    let store = open_small(dir.path());
    let mut i = 0;
    while store.info().log_end + 1000 < half {
        store.put(format!("k{i}"), [b'v'; 800]).expect("put");
        i += 1;
    }
    store.close().expect("close");
    assert_eq!(scan(dir.path()).spare, None, "no spare before the segment is half full");

    let store = open_small(dir.path());
    store.put("crossing", [b'v'; 2000]).expect("put");
    store.close().expect("close");
    let report = scan(dir.path());
    assert_eq!((report.segments.len(), report.spare), (1, Some(1)));
    let spare = dir.path().join(format::segment_file_name(1));
    assert_eq!(std::fs::read(&spare).expect("read spare"), vec![0u8; SMALL_SEGMENT as usize]);
    // The next roll activates the spare as segment 1.
    let store = open_small(dir.path());
    while store.info().segments < 2 {
        store.put("more", [b'v'; 2000]).expect("put");
    }
    store.close().expect("close");
    let report = scan(dir.path());
    assert_eq!(report.segments.len(), 2);
    assert!(report.segments[0].sealed);
}

#[test]
fn a_segment_without_header_but_with_data_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    three_blocks(dir.path());
    let spare = dir.path().join(format::segment_file_name(1));
    let mut bytes = vec![0u8; SMALL_SEGMENT as usize];
    bytes[SEGMENT_HEADER_REGION as usize + 100] = 1;
    std::fs::write(&spare, bytes).expect("write");
    let err = Store::open(dir.path(), small_options()).expect_err("must refuse");
    assert!(
        matches!(&err, Error::Corruption { path, offset, reason: Corruption::MissingHeader } if *path == spare && *offset == SEGMENT_HEADER_REGION + 100),
        "{err:?}"
    );
}
