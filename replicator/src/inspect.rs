//! `lockstep inspect` and `lockstep check`: read-only views of a store that
//! work while another process has it open.

use std::path::Path;

use lockstep_engine::format::{self, Superblock, SUPERBLOCK_COPIES, SUPERBLOCK_COPY_LEN};
use lockstep_engine::recovery::{self, ScanReport};
use lockstep_engine::storage::{default_storage, OpenMode, StdStorage, Storage};
use lockstep_engine::{Error, Result};
use serde_json::{json, Value};

/// A verified read of the whole store.
pub struct Inspection {
    pub report: ScanReport,
    pub records: u64,
    pub blocks: u64,
    /// How many of the superblock copies are intact on their own.
    pub superblock_copies_intact: usize,
}

/// Scans `dir` read-only, verifying every checksum, marker, seal and the
/// fingerprint chain.
pub fn inspect(dir: &Path) -> Result<Inspection> {
    let report = recovery::scan(&StdStorage, dir, true, &mut |_| {})?;
    let records = report.segments.iter().map(|s| s.records).sum();
    let blocks = report.segments.iter().map(|s| s.blocks).sum();
    let superblock_copies_intact = intact_superblock_copies(dir)?;
    Ok(Inspection { report, records, blocks, superblock_copies_intact })
}

fn intact_superblock_copies(dir: &Path) -> Result<usize> {
    let path = dir.join(format::SUPERBLOCK_FILE);
    let context = || format!("reading {}", path.display());
    let file = StdStorage.open(&path, OpenMode::Read).map_err(|source| Error::Io { context: context(), source })?;
    let mut intact = 0;
    let mut copy = vec![0u8; SUPERBLOCK_COPY_LEN];
    for i in 0..SUPERBLOCK_COPIES {
        if file.read_exact_at(&mut copy, (i * SUPERBLOCK_COPY_LEN) as u64).is_ok() && Superblock::decode(&copy).is_ok()
        {
            intact += 1;
        }
    }
    Ok(intact)
}

impl Inspection {
    /// The `inspect --json` object.
    pub fn to_json(&self) -> Value {
        let r = &self.report;
        let sb = &r.superblock;
        let segments: Vec<Value> = r
            .segments
            .iter()
            .map(|s| {
                json!({
                    "file": s.path.file_name().map(|n| n.to_string_lossy().into_owned()),
                    "number": s.number,
                    "first_position": s.header.first_position,
                    "len": s.end_position - s.header.first_position,
                    "sealed": s.sealed,
                    "blocks": s.blocks,
                    "records": s.records,
                })
            })
            .collect();
        let torn_tail = r.torn_tail.as_ref().map(|t| {
            json!({
                "file": t.path.file_name().map(|n| n.to_string_lossy().into_owned()),
                "offset": t.file_offset,
                "position": t.position,
                "len": t.len,
                "reason": t.reason.to_string(),
            })
        });
        json!({
            "format_version": sb.format_version,
            "store_id": sb.store_id.to_string(),
            "node_id": sb.node_id.to_string(),
            "role": sb.role.to_string(),
            "epoch": sb.epoch,
            "epoch_history": sb.epochs.iter().map(|e| json!({"epoch": e.epoch, "start_position": e.start_position})).collect::<Vec<_>>(),
            "segment_size": sb.segment_size,
            "checksum_algorithm": checksum_algorithm_name(sb.checksum_algorithm),
            "incompat_features": sb.incompat_features,
            "ro_compat_features": sb.ro_compat_features,
            "compat_features": sb.compat_features,
            "superblock_sequence": sb.sequence,
            "superblock_copies_intact": self.superblock_copies_intact,
            "commit_position": r.commit_position,
            "log_end": r.log_end,
            "fingerprint": r.fingerprint.to_string(),
            "blocks": self.blocks,
            "records": self.records,
            "segments": segments,
            "spare_segment": r.spare,
            "torn_tail": torn_tail,
            "io_backend": default_storage().io_backend(),
        })
    }

    /// The human form of `inspect`.
    pub fn to_text(&self) -> String {
        let r = &self.report;
        let sb = &r.superblock;
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(format!("store id        {}", sb.store_id));
        line(format!("node id         {}", sb.node_id));
        line(format!(
            "format version  {} (features: incompat {:#x}, ro-compat {:#x}, compat {:#x})",
            sb.format_version, sb.incompat_features, sb.ro_compat_features, sb.compat_features
        ));
        line(format!("role            {}", sb.role));
        let history: Vec<String> = sb.epochs.iter().map(|e| format!("{}@{}", e.epoch, e.start_position)).collect();
        line(format!("epoch           {} (history: {})", sb.epoch, history.join(", ")));
        line(format!(
            "settings        segment size {} bytes, checksums {}",
            sb.segment_size,
            checksum_algorithm_name(sb.checksum_algorithm)
        ));
        line(format!(
            "superblock      sequence {}, {}/{} copies intact",
            sb.sequence, self.superblock_copies_intact, SUPERBLOCK_COPIES
        ));
        line(format!("log end         {} (commit position {})", r.log_end, r.commit_position));
        line(format!("fingerprint     {}", r.fingerprint));
        line(format!(
            "contents        {} blocks, {} records in {} segments",
            self.blocks,
            self.records,
            r.segments.len()
        ));
        for s in &r.segments {
            line(format!(
                "  {}  positions {}..{}  {} blocks  {}",
                s.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                s.header.first_position,
                s.end_position,
                s.blocks,
                if s.sealed { "sealed" } else { "open" }
            ));
        }
        if let Some(t) = &r.torn_tail {
            line(format!(
                "torn tail       {} bytes at position {} ({} offset {}): {}",
                t.len,
                t.position,
                t.path.display(),
                t.file_offset,
                t.reason
            ));
        }
        out
    }
}

fn checksum_algorithm_name(id: u32) -> String {
    match id {
        format::CHECKSUM_ALGORITHM => "crc32+xxh3".into(),
        other => format!("unknown ({other})"),
    }
}
