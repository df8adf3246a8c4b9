//! Dropping a divergent tail by hand: `lockstep rejoin DIR --export FILE`.
//! A former primary that may have acknowledged writes alone (after
//! `degrade`, `received` or `async`) is refused when it rejoins a promoted
//! peer (split brain); this writes every record of its divergent tail to a
//! file a person can review, then truncates the tail so the node can rejoin.

use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use lockstep_engine::truncate::{cut_tail, RemovedRecord, Truncation};
use lockstep_engine::{Error, Options};

use crate::node::DIVERGENCE_FILE;

/// Writes `records` as JSON lines: `key` and `value` in base64 (`value`
/// null for a delete), `key_text` when the key is UTF-8, `position` (of
/// the block), `epoch`. Synced, with its directory and that directory's
/// parent, before returning.
pub fn export(path: &Path, records: &[RemovedRecord]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in records {
        let line = serde_json::json!({
            "key": b64.encode(&r.key),
            "key_text": std::str::from_utf8(&r.key).ok(),
            "value": r.value.as_ref().map(|v| b64.encode(v)),
            "position": r.position,
            "epoch": r.epoch,
        });
        writeln!(out, "{line}")?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    // The file's name, and the directory it may have created, are durable
    // too before anything is cut.
    for dir in path.ancestors().skip(1).take(2).filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The divergence point a split-brain refusal recorded in `dir`.
pub fn recorded_divergence(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(DIVERGENCE_FILE)).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["position"].as_u64()
}

/// Exports the records after `position` (default: the recorded divergence
/// point) to `export`, then truncates them from the closed store in `dir`.
pub fn rejoin(dir: &Path, export_to: &Path, position: Option<u64>) -> Result<Truncation, Error> {
    let position = match position.or_else(|| recorded_divergence(dir)) {
        Some(p) => p,
        None => {
            return Err(Error::InvalidArgument(format!(
                "no divergence point recorded in {} (a refused rejoin records one); give --position",
                dir.display()
            )))
        }
    };
    let options = Options { create_if_missing: false, ..Options::default() };
    let cut = cut_tail(dir, &options, position, |records| {
        export(export_to, records)
            .map_err(|e| Error::Io { context: format!("writing {}", export_to.display()), source: e })
    })?;
    let _ = std::fs::remove_file(dir.join(DIVERGENCE_FILE));
    Ok(cut)
}
