//! `lockstep-bench`: runs workloads W1–W5 against lockstep (and, built with
//! `--features peers`, other engines) plus the device reference rows, all in
//! one run, and prints a table with ratios. See README.md "Benchmarks".

use std::path::PathBuf;

use clap::Parser;
use lockstep_benches::{device, engines, run_dir, run_engine, EngineReport, Latency, Run, Sizes};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(name = "lockstep-bench", about = "lockstep beside other engines and the raw device")]
struct Args {
    /// Where the engines' directories go (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Comma-separated engine names (default: every engine this build has).
    #[arg(long, value_delimiter = ',')]
    engines: Vec<String>,
    /// Records for W3 (bulk load) and gets for W4.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Durable puts for W1.
    #[arg(long, default_value_t = 5_000)]
    w1_ops: u64,
    /// Durable puts for each W2 run.
    #[arg(long, default_value_t = 50_000)]
    w2_ops: u64,
    /// Small sizes, for a smoke run.
    #[arg(long)]
    quick: bool,
    /// Write the results as one JSON object to FILE.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn run_json(r: &Run) -> Value {
    json!({"ops": r.ops, "seconds": r.seconds, "ops_per_sec": r.ops_per_sec, "p50_us": r.latency.p50_us,
           "p99_us": r.latency.p99_us, "p999_us": r.latency.p999_us})
}

fn report_json(r: &EngineReport) -> Value {
    json!({"w1": run_json(&r.w1), "w2_8": run_json(&r.w2_8), "w2_64": run_json(&r.w2_64), "w3": run_json(&r.w3),
           "w3_mib_per_sec": r.w3_mib_per_sec, "w4_1": run_json(&r.w4_1), "w4_2": run_json(&r.w4_2),
           "w5_reopen_ms": r.w5_reopen_ms, "w5_space_amplification": r.w5_space_amplification,
           "w5_disk_bytes": r.w5_disk_bytes})
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args = Args::parse();
    let sizes = if args.quick {
        Sizes { w1_ops: 500, w2_ops: 5_000, records: 50_000 }
    } else {
        Sizes { w1_ops: args.w1_ops, w2_ops: args.w2_ops, records: args.records }
    };
    let tmp = run_dir(args.dir.as_deref(), "lockstep-bench")?;
    let root = tmp.path.clone();
    let load_before = loadavg();
    let progress = |what: &str| eprintln!("[lockstep-bench] {what}");

    progress("device: 4 KiB pwrite + fdatasync");
    let device_small: Latency = device::small_write_sync_latency(&root, sizes.w1_ops)?;
    progress("device: O_DIRECT 1 MiB write + fdatasync");
    let device_mib_s = device::large_direct_write_bandwidth(&root, 256 << 20)?;

    let kinds: Vec<_> = engines::all()
        .into_iter()
        .filter(|k| args.engines.is_empty() || args.engines.iter().any(|e| e == k.name()))
        .collect();
    let mut results = Vec::new();
    for kind in &kinds {
        let report = run_engine(kind.as_ref(), &root, sizes, &progress)?;
        results.push((kind.name(), kind.durability_call(), report));
    }
    let load_after = loadavg();

    println!("lockstep-bench — {} cores, load {load_before} before / {load_after} after", num_cpus());
    println!(
        "W1 {} durable puts, W2 {} per run, W3/W4 {} records; 16-byte keys, 100-byte values\n",
        sizes.w1_ops, sizes.w2_ops, sizes.records
    );
    println!("| engine | W1 p50 µs | W1 p99 µs | W1 p99.9 µs | W2×8 ops/s | W2×8 p99 µs | W2×64 ops/s | W2×64 p99 µs | W3 ops/s | W3 MiB/s | W4×1 gets/s | W4×2 gets/s | W5 reopen ms | W5 space amp |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| device | {:.0} | {:.0} | {:.0} | | | | | | {:.0} | | | | |",
        device_small.p50_us, device_small.p99_us, device_small.p999_us, device_mib_s
    );
    for (name, _, r) in &results {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} | {:.1} | {:.2} |",
            r.w1.latency.p50_us, r.w1.latency.p99_us, r.w1.latency.p999_us, r.w2_8.ops_per_sec, r.w2_8.latency.p99_us,
            r.w2_64.ops_per_sec, r.w2_64.latency.p99_us, r.w3.ops_per_sec, r.w3_mib_per_sec, r.w4_1.ops_per_sec,
            r.w4_2.ops_per_sec, r.w5_reopen_ms, r.w5_space_amplification
        );
    }
    let mut ratios = json!({});
    if let Some((_, _, ls)) = results.iter().find(|(n, _, _)| *n == "lockstep") {
        let w1 = ls.w1.latency.p50_us / device_small.p50_us;
        let w3 = ls.w3_mib_per_sec / device_mib_s;
        println!("\nlockstep vs device: W1 p50 {w1:.2}× the device's 4 KiB write+fdatasync p50; W3 {:.1}% of O_DIRECT bandwidth", w3 * 100.0);
        ratios["w1_p50_vs_device"] = json!(w1);
        ratios["w3_mib_vs_device"] = json!(w3);
        let peers: Vec<_> = results.iter().filter(|(n, _, _)| *n != "lockstep").collect();
        if !peers.is_empty() {
            let best = |f: &dyn Fn(&EngineReport) -> f64| peers.iter().map(|(_, _, r)| f(r)).fold(0.0, f64::max);
            let lowest = |f: &dyn Fn(&EngineReport) -> f64| peers.iter().map(|(_, _, r)| f(r)).fold(f64::MAX, f64::min);
            let w2 = ls.w2_64.ops_per_sec / best(&|r| r.w2_64.ops_per_sec);
            let w2p99 = ls.w2_64.latency.p99_us / lowest(&|r| r.w2_64.latency.p99_us);
            let w3p = ls.w3.ops_per_sec / best(&|r| r.w3.ops_per_sec);
            let w4 = ls.w4_2.ops_per_sec / best(&|r| r.w4_2.ops_per_sec);
            println!("lockstep vs best peer: W2×64 {w2:.2}× ops/s (p99 {w2p99:.2}× the lowest peer p99), W3 {w3p:.2}× ops/s, W4×2 {w4:.2}× gets/s");
            ratios["w2_64_ops_vs_best_peer"] = json!(w2);
            ratios["w2_64_p99_vs_lowest_peer"] = json!(w2p99);
            ratios["w3_ops_vs_best_peer"] = json!(w3p);
            ratios["w4_2_ops_vs_best_peer"] = json!(w4);
        }
    }
    println!("\nDurability calls:");
    for (name, call, _) in &results {
        println!("- {name}: {call}");
    }
    if let Some(path) = args.json {
        let engines: serde_json::Map<String, Value> =
            results.iter().map(|(n, _, r)| (n.to_string(), report_json(r))).collect();
        let out = json!({
            "cores": num_cpus(), "loadavg_before": load_before, "loadavg_after": load_after,
            "sizes": {"w1_ops": sizes.w1_ops, "w2_ops": sizes.w2_ops, "records": sizes.records},
            "device": {"small_write_sync": {"p50_us": device_small.p50_us, "p99_us": device_small.p99_us, "p999_us": device_small.p999_us},
                       "direct_write_mib_per_sec": device_mib_s},
            "engines": engines, "ratios": ratios,
        });
        std::fs::write(path, format!("{out}\n"))?;
    }
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
