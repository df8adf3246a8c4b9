//! lockstep-benches: the workloads of `lockstep-bench`, the engines they run
//! against, and the device reference rows. Criterion micro-benchmarks live in
//! `benches/`.
//!
//! Workloads (16-byte keys, 100-byte incompressible values, fixed seed):
//! * W1 — one durable writer, each put durable before the next: latency.
//! * W2 — 8 and 64 concurrent durable writers: ops/s and latency.
//! * W3 — bulk load of N records without durability, then one sync: ops/s, MiB/s.
//! * W4 — N random gets over the W3 data with 1 and 2 threads: ops/s.
//! * W5 — reopen time after W3, and space amplification.
//!
//! `lockstep-repl-bench` ([`replication`]) runs the durable write workload
//! on a replicated pair at each sync level beside a single store.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub mod device;
pub mod engines;
#[cfg(feature = "peers")]
pub mod peers;
pub mod replication;

pub const KEY_LEN: usize = 16;
pub const VALUE_LEN: usize = 100;
const SEED: u64 = 0x6c6f_636b_7374_6570;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, BoxError>;

/// A key-value engine as the workloads use it.
pub trait Engine: Send + Sync {
    /// Stores a record; durable on return when the engine was opened durable.
    fn put(&self, key: &[u8], value: &[u8]) -> Result<()>;
    /// Makes every earlier put durable.
    fn sync(&self) -> Result<()>;
    /// The length of the value under `key`, if any (values are read in full).
    fn get(&self, key: &[u8]) -> Result<Option<usize>>;
}

/// Opens an engine in a directory: `durable` puts, or buffered ones.
pub trait EngineKind: Sync {
    fn name(&self) -> &'static str;
    /// The call that makes a write durable, for the report.
    fn durability_call(&self) -> &'static str;
    fn open(&self, dir: &Path, durable: bool) -> Result<Box<dyn Engine>>;
}

pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The key of record `i`: 16 hex digits of a hash of `i` (random order).
pub fn key(i: u64) -> [u8; KEY_LEN] {
    let mut out = [0u8; KEY_LEN];
    let text = format!("{:016x}", splitmix64(i ^ SEED));
    out.copy_from_slice(text.as_bytes());
    out
}

/// The value of record `i`: 100 pseudo-random (incompressible) bytes.
pub fn value(i: u64) -> [u8; VALUE_LEN] {
    let mut out = [0u8; VALUE_LEN];
    let mut state = splitmix64(i.wrapping_add(SEED));
    for chunk in out.chunks_mut(8) {
        state = splitmix64(state);
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    out
}

/// Latency percentiles of a set of samples, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
}

impl Latency {
    pub fn of(samples: &mut [Duration]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let at = |p: f64| {
            let rank = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[rank - 1].as_nanos() as f64 / 1e3
        };
        Latency { p50_us: at(0.50), p99_us: at(0.99), p999_us: at(0.999) }
    }
}

/// Throughput and latency of one workload run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Run {
    pub ops: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub latency: Latency,
}

/// Runs `ops` operations split over `threads` threads; operation `i` is
/// `op(i)`; every operation is timed.
pub fn run_threads(threads: usize, ops: u64, op: impl Fn(u64) -> Result<()> + Send + Sync + 'static) -> Result<Run> {
    let op = Arc::new(op);
    let started = Instant::now();
    let handles: Vec<_> = (0..threads as u64)
        .map(|t| {
            let op = op.clone();
            std::thread::spawn(move || -> Result<Vec<Duration>> {
                let mut samples = Vec::with_capacity((ops / threads as u64 + 1) as usize);
                let mut i = t;
                while i < ops {
                    let at = Instant::now();
                    op(i)?;
                    samples.push(at.elapsed());
                    i += threads as u64;
                }
                Ok(samples)
            })
        })
        .collect();
    let mut samples = Vec::with_capacity(ops as usize);
    for h in handles {
        samples.extend(h.join().map_err(|_| "a benchmark thread panicked")??);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Run { ops, seconds, ops_per_sec: ops as f64 / seconds, latency: Latency::of(&mut samples) })
}

/// Bytes the files under `dir` take on disk (allocated blocks), and their
/// apparent length.
pub fn disk_usage(dir: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let (mut allocated, mut apparent) = (0, 0);
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            let (a, b) = disk_usage(&entry.path())?;
            allocated += a;
            apparent += b;
        } else {
            allocated += meta.blocks() * 512;
            apparent += meta.len();
        }
    }
    Ok((allocated, apparent))
}

/// Everything one engine measured.
#[derive(Debug, Clone, Default)]
pub struct EngineReport {
    pub w1: Run,
    pub w2_8: Run,
    pub w2_64: Run,
    pub w3: Run,
    pub w3_mib_per_sec: f64,
    pub w4_1: Run,
    pub w4_2: Run,
    pub w5_reopen_ms: f64,
    pub w5_space_amplification: f64,
    pub w5_disk_bytes: u64,
}

/// How many operations each workload runs.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub w1_ops: u64,
    pub w2_ops: u64,
    pub records: u64,
}

/// Runs W1–W5 against one engine in fresh directories under `root`.
pub fn run_engine(kind: &dyn EngineKind, root: &Path, sizes: Sizes, progress: &dyn Fn(&str)) -> Result<EngineReport> {
    let mut r = EngineReport::default();
    let fresh = |name: &str| -> Result<std::path::PathBuf> {
        let dir = root.join(format!("{}-{name}", kind.name()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    };
    let durable_run = |name: &str, threads: usize, ops: u64| -> Result<Run> {
        progress(&format!("{} {name}", kind.name()));
        let engine: Arc<dyn Engine> = Arc::from(kind.open(&fresh(name)?, true)?);
        run_threads(threads, ops, move |i| engine.put(&key(i), &value(i)))
    };
    r.w1 = durable_run("w1", 1, sizes.w1_ops)?;
    r.w2_8 = durable_run("w2-8", 8, sizes.w2_ops)?;
    r.w2_64 = durable_run("w2-64", 64, sizes.w2_ops)?;

    progress(&format!("{} w3", kind.name()));
    let dir = fresh("w3")?;
    let engine: Arc<dyn Engine> = Arc::from(kind.open(&dir, false)?);
    let started = Instant::now();
    let loader = engine.clone();
    let mut load = run_threads(1, sizes.records, move |i| loader.put(&key(i), &value(i)))?;
    engine.sync()?;
    load.seconds = started.elapsed().as_secs_f64();
    load.ops_per_sec = sizes.records as f64 / load.seconds;
    r.w3_mib_per_sec = (sizes.records * (KEY_LEN + VALUE_LEN) as u64) as f64 / load.seconds / (1 << 20) as f64;
    r.w3 = load;
    drop(engine);

    progress(&format!("{} w5", kind.name()));
    let started = Instant::now();
    let engine: Arc<dyn Engine> = Arc::from(kind.open(&dir, false)?);
    r.w5_reopen_ms = started.elapsed().as_secs_f64() * 1e3;
    let (allocated, _) = disk_usage(&dir)?;
    r.w5_disk_bytes = allocated;
    r.w5_space_amplification = allocated as f64 / (sizes.records * (KEY_LEN + VALUE_LEN) as u64) as f64;

    for (threads, slot) in [(1, &mut r.w4_1), (2, &mut r.w4_2)] {
        progress(&format!("{} w4 {threads} thread(s)", kind.name()));
        let (reader, records) = (engine.clone(), sizes.records);
        *slot = run_threads(threads, sizes.records, move |i| {
            let n = splitmix64(i ^ 0x5eed) % records;
            match reader.get(&key(n))? {
                Some(VALUE_LEN) => Ok(()),
                other => Err(format!("record {n} read back as {other:?}").into()),
            }
        })?;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_and_values_fixed() {
        assert_ne!(key(1), key(2));
        assert_eq!(value(5), value(5));
        assert_ne!(value(5), value(6));
    }

    #[test]
    fn percentiles_pick_ranks() {
        let mut samples: Vec<Duration> = (1..=1000).map(Duration::from_micros).collect();
        let l = Latency::of(&mut samples);
        assert_eq!((l.p50_us, l.p99_us, l.p999_us), (500.0, 990.0, 999.0));
    }

    #[test]
    fn lockstep_runs_every_workload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sizes = Sizes { w1_ops: 20, w2_ops: 64, records: 2000 };
        let r = run_engine(&engines::Lockstep, dir.path(), sizes, &|_| {}).expect("run");
        assert_eq!((r.w1.ops, r.w2_64.ops, r.w3.ops, r.w4_2.ops), (20, 64, 2000, 2000));
        assert!(r.w5_space_amplification > 1.0);
    }
}

/// Where a benchmark run puts its directories: the one given, or a
/// temporary one removed when this is dropped.
#[derive(Debug)]
pub struct RunDir {
    pub path: std::path::PathBuf,
    remove: bool,
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

pub fn run_dir(given: Option<&Path>, name: &str) -> std::io::Result<RunDir> {
    let (path, remove) = match given {
        Some(p) => (p.to_path_buf(), false),
        None => (std::env::temp_dir().join(format!("{name}-{}", std::process::id())), true),
    };
    std::fs::create_dir_all(&path)?;
    Ok(RunDir { path, remove })
}
