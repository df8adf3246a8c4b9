//! The device reference rows, measured in the same run as the engines:
//! the floor for durable single-writer latency and the ceiling for bulk
//! write bandwidth on this disk.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::{Latency, Result};

const FILE_LEN: u64 = 64 << 20;
const SMALL: usize = 4096;
const LARGE: usize = 1 << 20;

fn prezeroed(path: &Path, len: u64) -> Result<File> {
    let file = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(path)?;
    let zeros = vec![0u8; LARGE];
    let mut at = 0;
    while at < len {
        file.write_all_at(&zeros, at)?;
        at += LARGE as u64;
    }
    file.sync_all()?;
    Ok(file)
}

/// 4 KiB `pwrite` + `fdatasync`, one at a time, into a pre-zeroed, synced file.
pub fn small_write_sync_latency(dir: &Path, ops: u64) -> Result<Latency> {
    let path = dir.join("device-small");
    let file = prezeroed(&path, FILE_LEN)?;
    let block = vec![0xa5u8; SMALL];
    let mut samples = Vec::with_capacity(ops as usize);
    for i in 0..ops {
        let at = Instant::now();
        file.write_all_at(&block, (i * SMALL as u64) % FILE_LEN)?;
        file.sync_data()?;
        samples.push(at.elapsed());
    }
    std::fs::remove_file(path)?;
    Ok(Latency::of(&mut samples))
}

/// A 1 MiB buffer aligned for O_DIRECT, carved out of a larger allocation.
fn aligned_buffer(storage: &mut Vec<u8>) -> &mut [u8] {
    storage.resize(LARGE + SMALL, 0xa5);
    let skew = storage.as_ptr() as usize % SMALL;
    let start = (SMALL - skew) % SMALL;
    &mut storage[start..start + LARGE]
}

/// O_DIRECT 1 MiB writes, each followed by `fdatasync`, over `total` bytes
/// of a pre-zeroed file: MiB/s.
pub fn large_direct_write_bandwidth(dir: &Path, total: u64) -> Result<f64> {
    let path = dir.join("device-large");
    drop(prezeroed(&path, total)?);
    let file = OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(&path)?;
    let mut storage = Vec::new();
    let buf = aligned_buffer(&mut storage);
    let started = Instant::now();
    let mut at = 0;
    while at < total {
        file.write_all_at(buf, at)?;
        file.sync_data()?;
        at += LARGE as u64;
    }
    let seconds = started.elapsed().max(Duration::from_nanos(1)).as_secs_f64();
    std::fs::remove_file(path)?;
    Ok(total as f64 / seconds / (1 << 20) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_rows_measure_something() {
        let dir = tempfile::tempdir().expect("tempdir");
        let l = small_write_sync_latency(dir.path(), 20).expect("small");
        assert!(l.p50_us > 0.0 && l.p50_us <= l.p99_us);
        assert!(large_direct_write_bandwidth(dir.path(), 8 << 20).expect("large") > 0.0);
    }
}
