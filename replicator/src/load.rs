//! `lockstep load`: a real write workload against a store, with latency
//! percentiles and an optional log of acknowledged keys (for crash tests).
//!
//! Record `i` has key [`key`]`(i)` and value [`value`]`(i)`, both printable
//! ASCII and deterministic, so a checker can recompute what was written.
//! Records are grouped into batches of `batch` consecutive records; writer
//! `w` of `W` writes batches `w, w + W, w + 2W, ...`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use lockstep_engine::{Durability, Error, Store, WriteBatch};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub records: u64,
    pub key_size: usize,
    pub value_size: usize,
    pub writers: usize,
    pub batch: usize,
    pub ack_log: Option<PathBuf>,
}

/// What a run measured. `bytes` is what the log grew by.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    pub records: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub bytes: u64,
    pub payload_bytes: u64,
}

/// Why a load could not run or finish.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] Error),
    #[error("ack log {path}: {source}")]
    AckLog { path: PathBuf, source: std::io::Error },
}

impl LoadError {
    pub fn exit_code(&self) -> u8 {
        match self {
            LoadError::Invalid(_) => 64,
            LoadError::Store(e) => e.exit_code(),
            LoadError::AckLog { .. } => 74,
        }
    }
}

/// The key of record `i`: its number, zero-padded to `key_size` digits.
pub fn key(i: u64, key_size: usize) -> Vec<u8> {
    format!("{i:0key_size$}").into_bytes()
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// The value of record `i`: `value_size` pseudo-random printable bytes
/// (6 bits of entropy each, so effectively incompressible).
pub fn value(i: u64, value_size: usize) -> Vec<u8> {
    let mut state = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x6c6f_636b_7374_6570;
    let mut out = Vec::with_capacity(value_size);
    while out.len() < value_size {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        for shift in (0..60).step_by(6) {
            if out.len() < value_size {
                out.push(ALPHABET[((z >> shift) & 63) as usize]);
            }
        }
    }
    out
}

impl LoadSpec {
    fn validate(&self) -> Result<(), LoadError> {
        let digits = self.records.saturating_sub(1).to_string().len();
        if self.key_size < digits || self.key_size > lockstep_engine::format::KEY_LEN_MAX {
            return Err(LoadError::Invalid(format!(
                "--key-size {} cannot hold {} distinct keys: give {digits} to {} bytes",
                self.key_size,
                self.records,
                lockstep_engine::format::KEY_LEN_MAX
            )));
        }
        if self.writers == 0 || self.batch == 0 {
            return Err(LoadError::Invalid("--writers and --batch must be at least 1".into()));
        }
        Ok(())
    }
}

/// Appends acknowledged keys, one line each, one `write` per batch.
struct AckLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AckLog {
    fn open(path: PathBuf) -> Result<AckLog, LoadError> {
        match OpenOptions::new().create(true).append(true).open(&path) {
            Ok(file) => Ok(AckLog { path, file: Mutex::new(file) }),
            Err(source) => Err(LoadError::AckLog { path, source }),
        }
    }

    fn record(&self, first: u64, end: u64, key_size: usize) -> Result<(), LoadError> {
        let mut lines = Vec::with_capacity(((end - first) as usize) * (key_size + 1));
        for i in first..end {
            lines.extend_from_slice(&key(i, key_size));
            lines.push(b'\n');
        }
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        file.write_all(&lines).map_err(|source| LoadError::AckLog { path: self.path.clone(), source })
    }
}

/// Runs the workload; `durability` is the store's.
pub fn run(store: Arc<Store>, durability: Durability, spec: &LoadSpec) -> Result<LoadReport, LoadError> {
    spec.validate()?;
    let ack_log = spec.ack_log.clone().map(AckLog::open).transpose()?.map(Arc::new);
    let batches = spec.records.div_ceil(spec.batch as u64);
    let start_end = store.info().log_end;
    let started = Instant::now();
    let handles: Vec<_> = (0..spec.writers)
        .map(|w| {
            let (store, spec, ack_log) = (store.clone(), spec.clone(), ack_log.clone());
            let ack_now = durability == Durability::Sync;
            std::thread::spawn(move || -> Result<Vec<u32>, LoadError> {
                let mut latencies = Vec::new();
                for b in (w as u64..batches).step_by(spec.writers) {
                    let (first, end) = (b * spec.batch as u64, ((b + 1) * spec.batch as u64).min(spec.records));
                    let t = Instant::now();
                    if end - first == 1 {
                        store.put(key(first, spec.key_size), value(first, spec.value_size))?;
                    } else {
                        let mut batch = WriteBatch::new();
                        for i in first..end {
                            batch.put(key(i, spec.key_size), value(i, spec.value_size));
                        }
                        store.write(batch)?;
                    }
                    latencies.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    if let (Some(log), true) = (&ack_log, ack_now) {
                        log.record(first, end, spec.key_size)?;
                    }
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(batches as usize);
    let mut failure = None;
    for h in handles {
        match h.join() {
            Ok(Ok(l)) => latencies.extend(l),
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(_) => failure = failure.or(Some(LoadError::Invalid("a writer thread panicked".into()))),
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if durability == Durability::Buffered {
        store.sync()?;
        if let Some(log) = &ack_log {
            log.record(0, spec.records, spec.key_size)?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| -> u64 {
        if latencies.is_empty() {
            return 0;
        }
        let rank = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        latencies[rank - 1].into()
    };
    Ok(LoadReport {
        records: spec.records,
        seconds,
        ops_per_sec: if seconds > 0.0 { spec.records as f64 / seconds } else { 0.0 },
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        max_us: latencies.last().copied().unwrap_or_default().into(),
        bytes: store.info().log_end - start_end,
        payload_bytes: spec.records * (spec.key_size + spec.value_size) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_are_deterministic_and_printable() {
        assert_eq!(key(42, 6), b"000042");
        assert_eq!(value(7, 100), value(7, 100));
        assert_ne!(value(7, 100), value(8, 100));
        assert_eq!(value(7, 100).len(), 100);
        assert!(value(1, 1000).iter().all(|b| b.is_ascii_graphic()));
        assert_eq!(value(3, 0), b"");
    }

    #[test]
    fn load_writes_every_record_and_logs_acks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path().join("s"), Default::default()).expect("open"));
        let ack = dir.path().join("acks");
        let spec =
            LoadSpec { records: 103, key_size: 8, value_size: 20, writers: 3, batch: 4, ack_log: Some(ack.clone()) };
        let report = run(store.clone(), Durability::Sync, &spec).expect("load");
        assert_eq!(report.records, 103);
        assert!(report.bytes > report.payload_bytes);
        assert!(report.p50_us <= report.p99_us && report.p99_us <= report.max_us);
        for i in 0..103 {
            assert_eq!(store.get(key(i, 8)).expect("get").as_deref(), Some(&value(i, 20)[..]));
        }
        let mut logged: Vec<String> =
            std::fs::read_to_string(ack).expect("ack log").lines().map(String::from).collect();
        logged.sort();
        assert_eq!(logged, (0..103).map(|i| format!("{i:08}")).collect::<Vec<_>>());
    }

    #[test]
    fn key_size_too_small_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path(), Default::default()).expect("open"));
        let spec = LoadSpec { records: 1000, key_size: 2, value_size: 1, writers: 1, batch: 1, ack_log: None };
        let err = run(store, Durability::Sync, &spec).expect_err("must refuse");
        assert_eq!(err.exit_code(), 64);
    }
}
