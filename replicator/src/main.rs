//! The `lockstep` command-line tool. Exit codes follow sysexits (see
//! docs/OPERATIONS.md): 0 ok, 1 key not found, 64 usage, 65 corruption,
//! 74 I/O, 75 store in use, 76 peer refused, 78 incompatible.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use lockstep_engine::{Durability, Error, Options, Store, StoreId};
use lockstep_replicator::auth::AuthKey;
use lockstep_replicator::client::{Client, ClientError};
use lockstep_replicator::inspect;
use lockstep_replicator::load::{self, LoadSpec};
use lockstep_replicator::node::{Node, NodeConfig, NodeError};
use lockstep_replicator::protocol::{PeerLoss, Role, SyncLevel};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "lockstep",
    version,
    about = "A log-structured record store with checksummed, version-handshaked segments"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum DurabilityArg {
    Sync,
    Buffered,
}

#[derive(Subcommand)]
enum Command {
    /// Create a store and print its id.
    Init {
        dir: PathBuf,
        /// Segment file size in bytes (suffixes K, M, G = KiB, MiB, GiB); default 64M.
        #[arg(long, value_parser = parse_size)]
        segment_size: Option<u64>,
        /// Bind this directory to an existing store (e.g. a second site).
        #[arg(long)]
        store_id: Option<StoreId>,
    },
    /// Store VALUE under KEY (durable on return).
    Put { dir: PathBuf, key: OsString, value: OsString },
    /// Remove KEY.
    Delete { dir: PathBuf, key: OsString },
    /// Print the value of KEY; exit 1 if absent.
    Get { dir: PathBuf, key: OsString },
    /// Print `KEY<TAB>VALUE` lines in key order.
    Scan {
        dir: PathBuf,
        #[arg(long)]
        prefix: Option<OsString>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Verify every checksum, marker, seal and fingerprint; exit 0 clean, 65 corrupt.
    Check { dir: PathBuf },
    /// Describe a store (works while another process has it open).
    Inspect {
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Run a node of a replicated pair (see docs/OPERATIONS.md). Prints one
    /// JSON line with the bound addresses once listening; SIGTERM stops it
    /// cleanly; exits 76 if the peer is refused at start-up.
    Serve {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// This node's replication listen address.
        #[arg(long)]
        repl: String,
        /// The other node's replication address (the primary dials it).
        #[arg(long)]
        peer: String,
        /// Where to serve clients and status.
        #[arg(long)]
        client: String,
        /// When the primary acknowledges a write.
        #[arg(long, value_enum, default_value = "durable")]
        sync: SyncArg,
        /// `block` (writes wait for the peer) or `degrade=DURATION` (e.g.
        /// degrade=2s: continue alone after that long without the peer).
        #[arg(long, default_value = "block", value_parser = parse_peer_loss)]
        on_peer_loss: PeerLoss,
        /// A file holding a shared secret (at least 16 bytes) both nodes use
        /// to authenticate each other.
        #[arg(long)]
        auth_key_file: Option<PathBuf>,
        /// (Secondary.) Promote this node when the primary has been silent
        /// longer than the lease plus half of it. Requires the primary's
        /// peer-loss policy to be `block` (checked at the handshake).
        #[arg(long)]
        auto_failover: bool,
        /// The primary's lease with --auto-failover (e.g. 300ms, 1s).
        #[arg(long, value_parser = parse_duration, default_value = "300ms")]
        lease: Duration,
    },
    /// Make a secondary the primary of the next epoch (see docs/OPERATIONS.md).
    Promote {
        /// The secondary's client address.
        #[arg(long)]
        addr: String,
        /// Promote even if the secondary knows it lacks acknowledged writes.
        #[arg(long)]
        force: bool,
    },
    /// Planned switchover: the primary stops taking writes, waits until its
    /// secondary holds everything, and the two swap roles (no write lost).
    Switchover {
        /// The primary's client address.
        #[arg(long)]
        addr: String,
    },
    /// The failover drill: runs pairs of nodes on loopback, injects faults,
    /// fails over, rejoins, measures, and checks no acknowledged write was
    /// lost (exit 0 only then; 65 if one was).
    Drill {
        /// Drills to run; faults take turns.
        #[arg(long, default_value_t = 4)]
        drills: usize,
        #[arg(long, value_enum, default_value = "all")]
        fault: FaultArg,
        /// Client threads writing (and reading) during each drill.
        #[arg(long, default_value_t = 4)]
        writers: usize,
        /// The secondary promotes itself (default).
        #[arg(long, conflicts_with = "manual")]
        auto_failover: bool,
        /// The harness detects the failure and runs `lockstep promote`.
        #[arg(long)]
        manual: bool,
        #[arg(long, value_parser = parse_duration, default_value = "300ms")]
        lease: Duration,
        /// Where the drills' stores go (default: a temporary directory, removed after).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Write the results as one JSON object (`drills`, `summary`).
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write a chart of the timings.
        #[arg(long)]
        svg: Option<PathBuf>,
        /// Write every client operation as JSON lines (Jepsen-style history).
        #[arg(long)]
        history: Option<PathBuf>,
        /// Data both sites hold before each drill (e.g. 1G), to measure
        /// rejoin on a large store.
        #[arg(long, value_parser = parse_size, default_value = "0")]
        preload: u64,
    },
    /// The deterministic simulation: a pair on simulated disks, network and
    /// clock, with power cuts, partitions, failovers and rejoins, checked
    /// after every step (see docs/TESTING.md). Exit 0 if every seed held,
    /// 70 with the failing seed otherwise.
    Simulate {
        /// Seeds to run, from --first.
        #[arg(long, default_value_t = 1000)]
        seeds: u64,
        #[arg(long, default_value_t = 0)]
        first: u64,
        /// Run only this seed (replay a failure).
        #[arg(long, conflicts_with_all = ["seeds", "first"])]
        seed: Option<u64>,
        /// Steps per seed before the pair is left to converge.
        #[arg(long, default_value_t = lockstep_replicator::sim::STEPS_DEFAULT)]
        steps: u32,
    },
    /// Export a former primary's divergent tail (JSON lines) and truncate it,
    /// so the node can rejoin the new primary after a split-brain refusal.
    Rejoin {
        dir: PathBuf,
        /// Where the removed records go.
        #[arg(long)]
        export: PathBuf,
        /// Cut here instead of at the divergence point the refusal recorded.
        #[arg(long)]
        position: Option<u64>,
    },
    /// Talk to a running node.
    Client {
        /// The node's client address.
        #[arg(long)]
        addr: String,
        #[command(subcommand)]
        op: ClientOp,
    },
    /// Print a node's status (role, log end, peer, lag, link, exposure).
    Status {
        #[arg(long)]
        addr: String,
        #[arg(long)]
        json: bool,
    },
    /// Run a write workload; the last line of stdout is a JSON summary.
    Load {
        dir: PathBuf,
        #[arg(long)]
        records: u64,
        #[arg(long, default_value_t = 16)]
        key_size: usize,
        #[arg(long, default_value_t = 100)]
        value_size: usize,
        #[arg(long, default_value_t = 1)]
        writers: usize,
        #[arg(long, value_enum, default_value = "sync")]
        durability: DurabilityArg,
        /// Append each key to FILE once its write is acknowledged durable.
        #[arg(long)]
        ack_log: Option<PathBuf>,
        /// Records per atomic batch.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Segment size if the store is created by this run.
        #[arg(long, value_parser = parse_size)]
        segment_size: Option<u64>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Primary,
    Secondary,
}

#[derive(Clone, Copy, ValueEnum)]
enum SyncArg {
    Durable,
    Received,
    Async,
}

#[derive(Clone, Copy, ValueEnum)]
enum FaultArg {
    KillPrimary,
    Partition,
    KillSecondary,
    CrashDuringCatchup,
    All,
}

#[derive(Subcommand)]
enum ClientOp {
    /// Store VALUE under KEY; returns once acknowledged.
    Put { key: OsString, value: OsString },
    /// Print the value of KEY; exit 1 if absent.
    Get { key: OsString },
    /// Remove KEY.
    Delete { key: OsString },
    /// Print `KEY<TAB>VALUE` lines in key order.
    Scan {
        #[arg(long)]
        prefix: Option<OsString>,
    },
}

/// A duration: a number with ms, s or m (a bare number is milliseconds).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..split].parse().map_err(|_| format!("`{s}` is not a duration (use e.g. 500ms, 2s, 1m)"))?;
    match &s[split..] {
        "" | "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        _ => Err(format!("`{s}` is not a duration (use e.g. 500ms, 2s, 1m)")),
    }
}

fn parse_peer_loss(s: &str) -> Result<PeerLoss, String> {
    match s.split_once('=') {
        None if s == "block" => Ok(PeerLoss::Block),
        Some(("degrade", d)) => Ok(PeerLoss::Degrade { after_ms: parse_duration(d)?.as_millis() as u64 }),
        _ => Err(format!("`{s}` is not a peer-loss policy: use `block` or `degrade=DURATION` (e.g. degrade=2s)")),
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    };
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        _ => return Err(format!("`{s}` is not a size: use bytes, or a number with K, M or G")),
    };
    let n: u64 = digits.parse().map_err(|_| format!("`{s}` is not a size"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("`{s}` is too large"))
}

/// A failed command: message for stderr and exit code.
struct Failure {
    code: u8,
    message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure { code: e.exit_code(), message: e.to_string() }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure { code: 74, message: format!("writing output: {e}") }
    }
}

fn open(dir: &Path) -> Result<Store, Failure> {
    Ok(Store::open(dir, Options { create_if_missing: false, ..Options::default() })?)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 64 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // A node logs what it does (connections, catch-up progress); the other
    // commands only warnings — except the simulation, whose nodes fail on
    // purpose all the time (a failing seed prints its own trace).
    let level = match cli.command {
        Command::Serve { .. } => tracing::level_filters::LevelFilter::INFO,
        Command::Simulate { .. } => tracing::level_filters::LevelFilter::OFF,
        _ => tracing::level_filters::LevelFilter::WARN,
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_max_level(level)
        .with_target(false)
        .init();
    match run(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(f) if f.message.contains("Broken pipe") => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("lockstep: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run(command: Command) -> Result<u8, Failure> {
    let mut out = std::io::stdout().lock();
    match command {
        Command::Init { dir, segment_size, store_id } => {
            let defaults = Options::default();
            let options = Options { segment_size: segment_size.unwrap_or(defaults.segment_size), store_id, ..defaults };
            let id = Store::create(&dir, &options)?;
            writeln!(out, "{id}")?;
        }
        Command::Put { dir, key, value } => open(&dir)?.put(key.as_bytes(), value.as_bytes())?,
        Command::Delete { dir, key } => open(&dir)?.delete(key.as_bytes())?,
        Command::Get { dir, key } => {
            let Some(value) = open(&dir)?.get(key.as_bytes())? else {
                return Ok(1);
            };
            out.write_all(&value)?;
            if out.is_terminal() {
                writeln!(out)?;
            }
        }
        Command::Scan { dir, prefix, limit } => {
            let store = open(&dir)?;
            let scan = store.scan_prefix(prefix.as_ref().map(|p| p.as_bytes()).unwrap_or_default())?;
            for item in scan.take(limit.unwrap_or(usize::MAX)) {
                let (key, value) = item?;
                out.write_all(&key)?;
                out.write_all(b"\t")?;
                out.write_all(&value)?;
                out.write_all(b"\n")?;
            }
        }
        Command::Check { dir } => return check(&dir, &mut out),
        Command::Serve { dir, role, repl, peer, client, sync, on_peer_loss, auth_key_file, auto_failover, lease } => {
            let auth_key = auth_key_file
                .map(|path| AuthKey::from_file(&path))
                .transpose()
                .map_err(|message| Failure { code: 78, message })?;
            let config = NodeConfig {
                dir,
                role: match role {
                    RoleArg::Primary => Role::Primary,
                    RoleArg::Secondary => Role::Secondary,
                },
                repl,
                peer,
                client: Some(client),
                sync: match sync {
                    SyncArg::Durable => SyncLevel::Durable,
                    SyncArg::Received => SyncLevel::Received,
                    SyncArg::Async => SyncLevel::Async,
                },
                peer_loss: on_peer_loss,
                auth_key,
                storage: None,
                auto_failover,
                lease,
            };
            return serve(config, &mut out);
        }
        Command::Client { addr, op } => return client(&addr, op, &mut out),
        Command::Promote { addr, force } => {
            let epoch = Client::connect(&addr).and_then(|mut c| c.promote(force)).map_err(Failure::from)?;
            writeln!(out, "promoted {addr} to primary at epoch {epoch}")?;
        }
        Command::Switchover { addr } => {
            let epoch = Client::connect(&addr).and_then(|mut c| c.switchover()).map_err(Failure::from)?;
            writeln!(out, "switched over: {addr} is now the secondary; its peer is primary at epoch {epoch}")?;
        }
        Command::Simulate { seeds, first, seed, steps } => {
            let seeds: Vec<u64> = match seed {
                Some(seed) => vec![seed],
                None => (first..first.saturating_add(seeds)).collect(),
            };
            let summary = lockstep_replicator::sim::run_many(&seeds, steps, &mut std::io::stderr())
                .map_err(|failure| Failure { code: 70, message: failure.to_string() })?;
            writeln!(out, "{summary}")?;
        }
        Command::Drill {
            drills,
            fault,
            writers,
            auto_failover: _,
            manual,
            lease,
            dir,
            json,
            svg,
            history,
            preload,
        } => {
            use lockstep_replicator::drill::{self, DrillSpec, FaultKind};
            let faults = match fault {
                FaultArg::KillPrimary => vec![FaultKind::KillPrimary],
                FaultArg::Partition => vec![FaultKind::Partition],
                FaultArg::KillSecondary => vec![FaultKind::KillSecondary],
                FaultArg::CrashDuringCatchup => vec![FaultKind::CrashDuringCatchup],
                FaultArg::All => FaultKind::ALL.to_vec(),
            };
            let temp = dir.is_none();
            let dir =
                dir.unwrap_or_else(|| std::env::temp_dir().join(format!("lockstep-drill-{}", std::process::id())));
            let binary = std::env::current_exe()?;
            let spec = DrillSpec {
                drills: drills.max(1),
                faults,
                writers: writers.max(1),
                auto_failover: !manual,
                lease,
                dir: dir.clone(),
                binary,
                preload,
            };
            let mut ops = Vec::new();
            let result = drill::run(&spec, &mut out, &mut ops);
            if temp {
                let _ = std::fs::remove_dir_all(&dir);
            }
            let reports = result.map_err(|e| Failure { code: 74, message: format!("drill failed: {e}") })?;
            if let Some(path) = json {
                let drills: Vec<_> = reports.iter().map(|r| r.to_json()).collect();
                let doc = serde_json::json!({ "drills": drills, "summary": drill::summary(&reports) });
                std::fs::write(&path, format!("{doc}\n"))?;
            }
            if let Some(path) = svg {
                std::fs::write(&path, drill::svg(&reports))?;
            }
            if let Some(path) = history {
                let mut text = String::new();
                for op in &ops {
                    text += &format!("{op}\n");
                }
                std::fs::write(&path, text)?;
            }
            if reports.iter().any(|r| r.lost_acked_writes > 0) {
                return Err(Failure { code: 65, message: "acknowledged writes were lost (see the table)".into() });
            }
        }
        Command::Rejoin { dir, export, position } => {
            let cut = lockstep_replicator::rejoin::rejoin(&dir, &export, position)?;
            writeln!(
                out,
                "{}: exported {} records to {} and truncated {} bytes after position {}; start the node as secondary",
                dir.display(),
                cut.records.len(),
                export.display(),
                cut.bytes,
                cut.position
            )?;
        }
        Command::Status { addr, json } => {
            let status = Client::connect(&addr).and_then(|mut c| c.status()).map_err(Failure::from)?;
            if json {
                writeln!(out, "{status}")?;
            } else if let Some(fields) = status.as_object() {
                for (name, value) in fields {
                    writeln!(out, "{name}: {}", value.as_str().map_or_else(|| value.to_string(), str::to_string))?;
                }
            }
        }
        Command::Inspect { dir, json } => {
            let inspection = inspect::inspect(&dir)?;
            if json {
                writeln!(out, "{}", inspection.to_json())?;
            } else {
                write!(out, "{}", inspection.to_text())?;
            }
        }
        Command::Load { dir, records, key_size, value_size, writers, durability, ack_log, batch, segment_size } => {
            let durability = match durability {
                DurabilityArg::Sync => Durability::Sync,
                DurabilityArg::Buffered => Durability::Buffered,
            };
            let defaults = Options::default();
            let options =
                Options { durability, segment_size: segment_size.unwrap_or(defaults.segment_size), ..defaults };
            let store = Arc::new(Store::open(&dir, options)?);
            let io_backend = store.info().io_backend;
            let spec = LoadSpec { records, key_size, value_size, writers, batch, ack_log };
            let report = load::run(store.clone(), durability, &spec)
                .map_err(|e| Failure { code: e.exit_code(), message: e.to_string() })?;
            let store =
                Arc::into_inner(store).ok_or(Failure { code: 74, message: "the store is still in use".into() })?;
            store.close()?;
            eprintln!(
                "loaded {} records with {} writers in {:.3} s: {:.0} ops/s, p50 {} µs, p99 {} µs, p99.9 {} µs",
                report.records,
                writers,
                report.seconds,
                report.ops_per_sec,
                report.p50_us,
                report.p99_us,
                report.p999_us
            );
            let summary = serde_json::json!({
                "records": report.records,
                "seconds": report.seconds,
                "ops_per_sec": report.ops_per_sec,
                "p50_us": report.p50_us,
                "p99_us": report.p99_us,
                "p999_us": report.p999_us,
                "max_us": report.max_us,
                "bytes": report.bytes,
                "payload_bytes": report.payload_bytes,
                "writers": writers,
                "batch": batch,
                "durability": if durability == Durability::Sync { "sync" } else { "buffered" },
                "io_backend": io_backend,
            });
            writeln!(out, "{summary}")?;
        }
    }
    Ok(0)
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure { code: e.exit_code(), message: e.to_string() }
    }
}

impl From<NodeError> for Failure {
    fn from(e: NodeError) -> Self {
        Failure { code: e.exit_code(), message: e.to_string() }
    }
}

fn serve(config: NodeConfig, out: &mut impl Write) -> Result<u8, Failure> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| Failure { code: 74, message: format!("installing the signal handler: {e}") })?;
    }
    let role = config.role;
    let node = Node::start(config)?;
    let addr = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string());
    let ready = serde_json::json!({
        "role": role.name(),
        "client": addr(node.client_addr()),
        "repl": addr(node.repl_addr()),
        "pid": std::process::id(),
    });
    writeln!(out, "{ready}")?;
    out.flush()?;
    loop {
        if let Some(reason) = node.fatal() {
            node.shutdown()?;
            return Err(NodeError::Refused(reason).into());
        }
        if let Some(reason) = node.poisoned() {
            tracing::error!("the store can no longer write durably: {reason}");
            let _ = node.shutdown();
            return Err(Failure {
                code: 74,
                message: format!(
                    "the store can no longer write durably ({reason}); this node stopped so that its peer can take \
                     over — fix the disk (space, errors), then start it again: the store is checked when it opens"
                ),
            });
        }
        if stop.load(Ordering::SeqCst) {
            tracing::info!("stopping: finishing the writes in flight and closing the store");
            node.shutdown()?;
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn client(addr: &str, op: ClientOp, out: &mut (impl Write + IsTerminal)) -> Result<u8, Failure> {
    let mut client = Client::connect(addr)?;
    match op {
        ClientOp::Put { key, value } => client.put(key.as_bytes(), value.as_bytes())?,
        ClientOp::Delete { key } => client.delete(key.as_bytes())?,
        ClientOp::Get { key } => {
            let Some(value) = client.get(key.as_bytes())? else {
                return Ok(1);
            };
            out.write_all(&value)?;
            if out.is_terminal() {
                writeln!(out)?;
            }
        }
        ClientOp::Scan { prefix } => {
            for (key, value) in client.scan(prefix.as_ref().map(|p| p.as_bytes()).unwrap_or_default())? {
                out.write_all(&key)?;
                out.write_all(b"\t")?;
                out.write_all(&value)?;
                out.write_all(b"\n")?;
            }
        }
    }
    Ok(0)
}

fn check(dir: &Path, out: &mut impl Write) -> Result<u8, Failure> {
    let inspection = match inspect::inspect(dir) {
        Ok(i) => i,
        Err(e) => {
            writeln!(out, "{}: NOT CLEAN", dir.display())?;
            return Err(e.into());
        }
    };
    let r = &inspection.report;
    let sealed = r.segments.iter().filter(|s| s.sealed).count();
    writeln!(
        out,
        "{}: store {} format v{}: {} segments ({sealed} sealed), {} blocks, {} records, log end {}, fingerprint {}",
        dir.display(),
        r.superblock.store_id,
        r.superblock.format_version,
        r.segments.len(),
        inspection.blocks,
        inspection.records,
        r.log_end,
        r.fingerprint
    )?;
    if inspection.superblock_copies_intact < lockstep_engine::format::SUPERBLOCK_COPIES {
        writeln!(
            out,
            "note: {} of {} superblock copies intact; the next superblock update rewrites all of them",
            inspection.superblock_copies_intact,
            lockstep_engine::format::SUPERBLOCK_COPIES
        )?;
    }
    if let Some(t) = &r.torn_tail {
        writeln!(
            out,
            "note: torn tail of {} bytes beyond the commit position at {} offset {} ({}); opening the store exports it to recovered/ and truncates it",
            t.len,
            t.path.display(),
            t.file_offset,
            t.reason
        )?;
    }
    writeln!(out, "clean: every checksum, commit marker, seal and fingerprint verified")?;
    Ok(0)
}
