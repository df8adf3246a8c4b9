//! `lockstep-repl-bench`: durable write throughput and latency with 1, 8
//! and 64 writers on a single store and on a replicated pair at each sync
//! level (loopback, both stores on this disk), all in one run, as ratios to
//! the single store. See README.md "Benchmarks".

use std::path::PathBuf;

use clap::Parser;
use lockstep_benches::replication::{run, Mode};
use lockstep_benches::{run_dir, Run};
use serde_json::json;

#[derive(Parser)]
#[command(name = "lockstep-repl-bench", about = "Replicated writes beside unreplicated ones")]
struct Args {
    /// Where the stores go (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Where the secondary's store goes (default: beside the primary's,
    /// on the same disk).
    #[arg(long)]
    secondary_dir: Option<PathBuf>,
    /// Writer counts to run.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 8, 64])]
    writers: Vec<usize>,
    /// Durable puts per run with one writer; runs with W writers do W/4
    /// times as many (at least as many).
    #[arg(long, default_value_t = 3_000)]
    ops: u64,
    /// Runs of each row; the row reports the run with the median ops/s.
    /// Modes take turns, so drift on a noisy machine hits them alike.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Write the results as one JSON object to FILE.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args = Args::parse();
    let dir = run_dir(args.dir.as_deref(), "lockstep-repl-bench")?;
    let root = dir.path.clone();
    let secondary_dir = run_dir(args.secondary_dir.as_deref(), "lockstep-repl-bench-secondary")?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("lockstep-repl-bench: durable puts (16 B keys, 100 B values), loopback pair, load {}", load.trim());
    println!(
        "{:>7}  {:<13} {:>10} {:>8} {:>9} {:>8} {:>9}",
        "writers", "mode", "ops/s", "ratio", "p50 µs", "ratio", "p99 µs"
    );
    let mut rows = Vec::new();
    for &writers in &args.writers {
        let ops = args.ops * (writers as u64 / 4).max(1);
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); Mode::ALL.len()];
        for round in 0..args.repeat.max(1) {
            for (i, mode) in Mode::ALL.iter().enumerate() {
                let sub = root.join(format!("round-{round}"));
                runs[i].push(run(&sub, &secondary_dir.path.join(format!("round-{round}")), *mode, writers, ops)?);
            }
        }
        let mut base = None;
        for (mode, mut mode_runs) in Mode::ALL.into_iter().zip(runs) {
            mode_runs.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
            let r = mode_runs[mode_runs.len() / 2];
            let (ops_base, p50_base) = *base.get_or_insert((r.ops_per_sec, r.latency.p50_us));
            let (ratio, p50_ratio) = (r.ops_per_sec / ops_base, r.latency.p50_us / p50_base);
            println!(
                "{writers:>7}  {:<13} {:>10.0} {:>7.2}× {:>9.0} {:>7.2}× {:>9.0}",
                mode.name(),
                r.ops_per_sec,
                ratio,
                r.latency.p50_us,
                p50_ratio,
                r.latency.p99_us
            );
            rows.push(json!({"writers": writers, "mode": mode.name(), "ops": r.ops, "ops_per_sec": r.ops_per_sec,
                "throughput_ratio": ratio, "p50_us": r.latency.p50_us, "p50_ratio": p50_ratio,
                "p99_us": r.latency.p99_us}));
        }
    }
    if let Some(path) = args.json {
        std::fs::write(path, json!({"loadavg": load.trim(), "runs": rows}).to_string())?;
    }
    drop(dir);
    Ok(())
}
