//! What `check` and every opening command do with damaged or foreign files
//! (the recovery table in docs/FORMAT.md), through the real binary.

use std::os::unix::fs::FileExt;
use std::path::Path;

use lockstep_engine::format::{self, Superblock, FORMAT_VERSION, SEGMENT_HEADER_REGION, SUPERBLOCK_COPY_LEN};
use lockstep_tests::{expect_code, p};
use serde_json::Value;

fn store_with_records(dir: &Path, n: usize) {
    expect_code(0, ["init", p(dir), "--segment-size", "64K"]);
    for i in 0..n {
        expect_code(0, ["put", p(dir), &format!("key-{i}"), &format!("value-{i}")]);
    }
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).expect("open");
    f.write_all_at(bytes, offset).expect("write");
}

fn inspect(dir: &Path) -> Value {
    serde_json::from_str(&expect_code(0, ["inspect", p(dir), "--json"]).stdout).expect("json")
}

#[test]
fn flipped_byte_in_an_early_record_exits_65_naming_segment_and_offset() {
    let tmp = tempfile::tempdir().expect("tempdir");
    store_with_records(tmp.path(), 5);
    let segment = tmp.path().join(format::segment_file_name(0));
    let offset = SEGMENT_HEADER_REGION + (format::BLOCK_HEADER_LEN + format::RECORD_HEADER_LEN) as u64 + 2;
    let mut byte = [0u8];
    std::fs::File::open(&segment).expect("open").read_exact_at(&mut byte, offset).expect("read");
    write_at(&segment, offset, &[byte[0] ^ 0x01]);
    let block_offset = (SEGMENT_HEADER_REGION).to_string();
    for args in
        [vec!["check", p(tmp.path())], vec!["get", p(tmp.path()), "key-4"], vec!["put", p(tmp.path()), "k", "v"]]
    {
        let run = expect_code(65, &args);
        assert!(run.stderr.contains("segment-0000000000.log"), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(&format!("offset {block_offset}")), "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains("corruption"), "{args:?}: {}", run.stderr);
    }
}

#[test]
fn partial_block_after_the_last_block_is_truncated_with_a_warning() {
    let tmp = tempfile::tempdir().expect("tempdir");
    store_with_records(tmp.path(), 3);
    let before = inspect(tmp.path());
    let log_end = before["log_end"].as_u64().expect("log_end");
    let segment = tmp.path().join(format::segment_file_name(0));
    // The first 70 bytes of the first block, written again after the last
    // one: what a crash in the middle of writing a block leaves.
    let mut partial = vec![0u8; 70];
    std::fs::File::open(&segment).expect("open").read_exact_at(&mut partial, SEGMENT_HEADER_REGION).expect("read");
    write_at(&segment, SEGMENT_HEADER_REGION + log_end, &partial);
    let nonzero = partial.iter().rposition(|&b| b != 0).expect("non-zero") + 1;

    let check = expect_code(0, ["check", p(tmp.path())]);
    assert!(check.stdout.contains("torn tail"), "{}", check.stdout);
    let run = expect_code(0, ["get", p(tmp.path()), "key-2"]);
    assert_eq!(run.stdout, "value-2");
    assert!(
        run.stderr.contains("WARN") && run.stderr.contains(&format!("torn tail of {nonzero} bytes")),
        "{}",
        run.stderr
    );
    let after = inspect(tmp.path());
    assert_eq!(after["log_end"], before["log_end"]);
    assert_eq!(after["torn_tail"], Value::Null);
    assert_eq!(std::fs::read_dir(tmp.path().join("recovered")).expect("export dir").count(), 1);
    expect_code(0, ["put", p(tmp.path()), "key-3", "value-3"]);
    expect_code(0, ["check", p(tmp.path())]);
}

#[test]
fn superblock_of_a_newer_format_version_exits_78() {
    let tmp = tempfile::tempdir().expect("tempdir");
    store_with_records(tmp.path(), 2);
    let path = tmp.path().join(format::SUPERBLOCK_FILE);
    let file = std::fs::read(&path).expect("read superblock");
    let (mut sb, _) = Superblock::decode(&file[..SUPERBLOCK_COPY_LEN]).expect("decode");
    sb.format_version = FORMAT_VERSION + 1;
    let (copy, _) = sb.encode();
    for i in 0..format::SUPERBLOCK_COPIES {
        write_at(&path, (i * SUPERBLOCK_COPY_LEN) as u64, &copy);
    }
    for args in [vec!["get", p(tmp.path()), "key-1"], vec!["check", p(tmp.path())], vec!["inspect", p(tmp.path())]] {
        let run = expect_code(78, &args);
        assert!(
            run.stderr.contains(&format!("format version {}", FORMAT_VERSION + 1))
                && run.stderr.contains(&format!("only version {FORMAT_VERSION}")),
            "{args:?}: {}",
            run.stderr
        );
    }
}

#[test]
fn missing_segment_or_foreign_segment_exits_78() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = p(tmp.path());
    expect_code(0, ["init", d, "--segment-size", "64K"]);
    expect_code(0, ["load", d, "--records", "1500", "--writers", "2", "--value-size", "100"]);
    assert!(inspect(tmp.path())["segments"].as_array().expect("segments").len() >= 3);
    let middle = tmp.path().join(format::segment_file_name(1));
    let saved = std::fs::read(&middle).expect("read");
    std::fs::remove_file(&middle).expect("remove");
    let run = expect_code(78, ["get", d, "0000000000000001"]);
    assert!(run.stderr.contains("segment 1 is missing"), "{}", run.stderr);
    expect_code(78, ["check", d]);

    // Put the segment back, then replace the first one with another store's.
    std::fs::write(&middle, saved).expect("restore");
    expect_code(0, ["check", d]);
    let other = tempfile::tempdir().expect("tempdir");
    store_with_records(other.path(), 2);
    let name = format::segment_file_name(0);
    std::fs::copy(other.path().join(&name), tmp.path().join(&name)).expect("copy");
    let run = expect_code(78, ["get", d, "0000000000000001"]);
    assert!(run.stderr.contains("belongs to store"), "{}", run.stderr);
}
