//! `lockstep drill`: the failover-latency harness. Each drill starts a pair
//! of real `lockstep serve` processes on loopback (their replication links
//! run through fault-injecting proxies), runs client writers (that also
//! read), injects a fault, fails over (automatically or by promoting), keeps
//! writing to the new primary, brings the failed node back, waits for it to
//! rejoin, and checks that every acknowledged write is on both nodes.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::client::{Client, ClientError};
use crate::proxy::{free_addr, Fault, FaultProxy};

/// A fault a drill injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    KillPrimary,
    Partition,
    KillSecondary,
    CrashDuringCatchup,
}

impl FaultKind {
    pub const ALL: [FaultKind; 4] =
        [FaultKind::KillPrimary, FaultKind::Partition, FaultKind::KillSecondary, FaultKind::CrashDuringCatchup];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillPrimary => "kill-primary",
            FaultKind::Partition => "partition",
            FaultKind::KillSecondary => "kill-secondary",
            FaultKind::CrashDuringCatchup => "crash-during-catchup",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct DrillSpec {
    pub drills: usize,
    pub faults: Vec<FaultKind>,
    pub writers: usize,
    pub auto_failover: bool,
    pub lease: Duration,
    pub dir: PathBuf,
    /// The `lockstep` binary to run the nodes with.
    pub binary: PathBuf,
    /// Bytes of data both sites hold before each drill (0: none): loaded
    /// into the first site, whose segment files are then copied to the
    /// second (they are byte-identical by design).
    pub preload: u64,
}

/// Fills the store in `from` with about `bytes` of records (1 KiB values,
/// buffered, one sync) and copies its segment files into `to`.
fn preload(from: &Path, to: &Path, bytes: u64) -> Result<(), Failed> {
    let store = Arc::new(lockstep_engine::Store::open(
        from,
        lockstep_engine::Options { durability: lockstep_engine::Durability::Buffered, ..Default::default() },
    )?);
    let spec = crate::load::LoadSpec {
        records: bytes / 1050,
        key_size: 16,
        value_size: 1024,
        writers: 2,
        batch: 64,
        ack_log: None,
    };
    crate::load::run(store.clone(), lockstep_engine::Durability::Buffered, &spec)?;
    Arc::into_inner(store).ok_or("the preloaded store is still in use")?.close()?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with("segment-") {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// What one drill measured.
#[derive(Debug, Clone, Default)]
pub struct DrillReport {
    pub fault: &'static str,
    pub detection_ms: f64,
    pub promotion_ms: f64,
    pub unavailability_ms: f64,
    pub rejoin_ms: f64,
    pub resync_bytes: u64,
    pub acked_writes: u64,
    pub lost_acked_writes: u64,
    pub acked_on_both: u64,
    pub truncated_bytes: u64,
}

impl DrillReport {
    pub fn to_json(&self) -> Value {
        json!({
            "fault": self.fault, "detection_ms": self.detection_ms, "promotion_ms": self.promotion_ms,
            "unavailability_ms": self.unavailability_ms, "rejoin_ms": self.rejoin_ms,
            "resync_bytes": self.resync_bytes, "acked_writes": self.acked_writes,
            "lost_acked_writes": self.lost_acked_writes, "acked_on_both": self.acked_on_both,
            "truncated_bytes": self.truncated_bytes,
        })
    }
}

/// The timings summarized: min, p50, p99, max of each.
pub fn summary(drills: &[DrillReport]) -> Value {
    let stat = |f: fn(&DrillReport) -> f64| {
        let mut v: Vec<f64> = drills.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let x = v.get(((v.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(0.0);
            (x * 10.0).round() / 10.0
        };
        json!({"min": at(0.0), "p50": at(0.5), "p99": at(0.99), "max": at(1.0)})
    };
    json!({
        "detection_ms": stat(|d| d.detection_ms),
        "promotion_ms": stat(|d| d.promotion_ms),
        "unavailability_ms": stat(|d| d.unavailability_ms),
        "rejoin_ms": stat(|d| d.rejoin_ms),
        "resync_bytes": stat(|d| d.resync_bytes as f64),
        "truncated_bytes": stat(|d| d.truncated_bytes as f64),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

type Failed = Box<dyn std::error::Error + Send + Sync>;

/// One `lockstep serve` process.
struct NodeProcess {
    child: Child,
    client: String,
    dir: PathBuf,
    repl: String,
    peer: String,
    extra: Vec<String>,
}

impl NodeProcess {
    fn start(
        binary: &Path,
        dir: &Path,
        role: &'static str,
        repl: &str,
        peer: &str,
        extra: &[String],
    ) -> Result<NodeProcess, Failed> {
        let log = dir.with_extension(format!("{role}.log"));
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let mut child = Command::new(binary)
            .args(["serve", "--dir"])
            .arg(dir)
            .args(["--role", role, "--repl", repl, "--peer", peer, "--client", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let ready: Value = serde_json::from_str(&line).map_err(|_| {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
            format!("{} did not start ({}): {}", dir.display(), log.display(), tail.join(" | "))
        })?;
        let client = ready["client"].as_str().ok_or("no client address")?.to_string();
        Ok(NodeProcess { child, client, dir: dir.into(), repl: repl.into(), peer: peer.into(), extra: extra.to_vec() })
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the process again on the same directory and addresses, as `role`.
    fn restart(&mut self, binary: &Path, role: &'static str) -> Result<(), Failed> {
        self.kill();
        let extra: Vec<String> = self.extra.iter().filter(|a| *a != "--auto-failover").cloned().collect();
        *self = NodeProcess::start(binary, &self.dir, role, &self.repl, &self.peer, &extra)?;
        Ok(())
    }

    fn status(&self) -> Option<Value> {
        Client::connect(&self.client).and_then(|mut c| c.status()).ok()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One client operation, as Jepsen histories record them.
struct Op {
    process: usize,
    kind: &'static str,
    f: &'static str,
    key: String,
    value: Option<String>,
    time_ns: u128,
}

/// Shared by the writers and the harness.
struct Load {
    primary: Mutex<String>,
    stop: AtomicBool,
    /// Acknowledged writes: key, value, when invoked, when acknowledged.
    acked: Mutex<Vec<(String, String, Instant, Instant)>>,
    history: Mutex<Vec<Op>>,
    epoch: Instant,
}

impl Load {
    fn record(&self, process: usize, kind: &'static str, f: &'static str, key: &str, value: Option<&str>) {
        lock(&self.history).push(Op {
            process,
            kind,
            f,
            key: key.into(),
            value: value.map(str::to_string),
            time_ns: self.epoch.elapsed().as_nanos(),
        });
    }

    /// The last acknowledgement at or before `t`.
    fn last_ack_before(&self, t: Instant) -> Option<Instant> {
        lock(&self.acked).iter().map(|a| a.3).filter(|a| *a <= t).max()
    }

    /// The first acknowledgement of a write invoked after `t`.
    fn first_ack_invoked_after(&self, t: Instant) -> Option<Instant> {
        lock(&self.acked).iter().filter(|a| a.2 > t).map(|a| a.3).min()
    }
}

/// Process numbers of one drill's writers: writer `t` of drill `n` starts
/// as `n * PROCESS_STRIDE * 1000 + t` and adds `PROCESS_STRIDE` after each
/// operation of unknown outcome.
const PROCESS_STRIDE: usize = 100;

/// How long a drill client waits for an answer.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(500);

fn writer(load: Arc<Load>, first_process: usize, drill: usize) {
    // As in Jepsen histories, a process whose operation ended unknown
    // ("info") is never reused: the writer goes on as a new process.
    let mut process = first_process;
    let mut client: Option<(String, Client)> = None;
    let mut own: Vec<String> = Vec::new();
    for i in 0u64.. {
        if load.stop.load(Ordering::SeqCst) {
            return;
        }
        let addr = lock(&load.primary).clone();
        if client.as_ref().is_none_or(|(a, _)| *a != addr) {
            // A client that waits for ever on a partitioned primary never
            // moves to the new one: give up after half a second (outcome unknown).
            client = Client::connect(&addr)
                .and_then(|mut c| c.set_timeout(Some(CLIENT_TIMEOUT)).map(|()| c))
                .ok()
                .map(|c| (addr.clone(), c));
        }
        let Some((_, c)) = client.as_mut() else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        if i % 4 == 3 && !own.is_empty() {
            let key = own[(i as usize / 4) % own.len()].clone();
            load.record(process, "invoke", "read", &key, None);
            match c.get(key.as_bytes()) {
                Ok(v) => {
                    let v = v.map(|v| String::from_utf8_lossy(&v).into_owned());
                    load.record(process, "ok", "read", &key, v.as_deref());
                }
                Err(_) => {
                    load.record(process, "fail", "read", &key, None);
                    client = None;
                }
            }
            continue;
        }
        let (key, value) = (format!("d{drill}/w{first_process}/{i:07}"), format!("v{i}"));
        load.record(process, "invoke", "write", &key, Some(&value));
        let invoked = Instant::now();
        match c.put(key.as_bytes(), value.as_bytes()) {
            Ok(()) => {
                load.record(process, "ok", "write", &key, Some(&value));
                lock(&load.acked).push((key.clone(), value, invoked, Instant::now()));
                own.push(key);
            }
            // Refused before anything was written: a definite failure.
            Err(ClientError::Remote { code: 77 | 64 | 69, .. }) => {
                load.record(process, "fail", "write", &key, Some(&value));
                client = None;
                std::thread::sleep(Duration::from_millis(2));
            }
            // The connection died or the write failed midway: unknown.
            Err(_) => {
                load.record(process, "info", "write", &key, Some(&value));
                process += PROCESS_STRIDE;
                client = None;
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<Instant, Failed> {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting until {what}").into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn run_cli(binary: &Path, args: &[&str]) -> Result<String, Failed> {
    let out = Command::new(binary).args(args).output()?;
    if !out.status.success() {
        return Err(format!("lockstep {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}

/// Runs one drill in `dir`; its client operations go to `history`.
fn drill(
    spec: &DrillSpec,
    n: usize,
    fault: FaultKind,
    epoch: Instant,
    history: &mut Vec<Value>,
) -> Result<DrillReport, Failed> {
    let dir = spec.dir.join(format!("drill-{n}-{}", fault.name()));
    std::fs::create_dir_all(&dir)?;
    let (a_dir, b_dir) = (dir.join("a"), dir.join("b"));
    let id = run_cli(&spec.binary, &["init", &a_dir.to_string_lossy(), "--segment-size", "4M"])?;
    run_cli(&spec.binary, &["init", &b_dir.to_string_lossy(), "--segment-size", "4M", "--store-id", id.trim()])?;
    if spec.preload > 0 {
        eprint!("(preloading {} MiB) ", spec.preload >> 20);
        preload(&a_dir, &b_dir, spec.preload)?;
    }
    let (a_repl, b_repl) = (free_addr()?, free_addr()?);
    let to_b = FaultProxy::start("127.0.0.1:0", b_repl.parse()?)?;
    let to_a = FaultProxy::start("127.0.0.1:0", a_repl.parse()?)?;
    let lease = format!("{}ms", spec.lease.as_millis());
    let secondary_extra: Vec<String> =
        if spec.auto_failover { vec!["--auto-failover".into(), "--lease".into(), lease] } else { Vec::new() };
    let mut b =
        NodeProcess::start(&spec.binary, &b_dir, "secondary", &b_repl, &to_a.addr().to_string(), &secondary_extra)?;
    let mut a = NodeProcess::start(&spec.binary, &a_dir, "primary", &a_repl, &to_b.addr().to_string(), &[])?;
    wait_for("the pair connects", Duration::from_secs(10), || a.status().is_some_and(|s| s["link"] == "connected"))?;

    let load = Arc::new(Load {
        primary: Mutex::new(a.client.clone()),
        stop: AtomicBool::new(false),
        acked: Mutex::new(Vec::new()),
        history: Mutex::new(Vec::new()),
        epoch,
    });
    let writers: Vec<JoinHandle<()>> = (0..spec.writers)
        .map(|t| {
            let load = load.clone();
            std::thread::spawn(move || writer(load, n * PROCESS_STRIDE * 1000 + t, n))
        })
        .collect();
    wait_for("writes are acknowledged", Duration::from_secs(20), || lock(&load.acked).len() >= 200)?;

    let mut report = DrillReport { fault: fault.name(), ..DrillReport::default() };
    let fault_wall = crate::node::now_ms();
    let fault_at = Instant::now();
    let fails_over = fault != FaultKind::KillSecondary;
    match fault {
        FaultKind::KillPrimary | FaultKind::CrashDuringCatchup => a.kill(),
        FaultKind::Partition => {
            to_a.set(Fault::Cut);
            to_b.set(Fault::Cut);
        }
        FaultKind::KillSecondary => b.kill(),
    }
    let last_ack_before = load.last_ack_before(fault_at).unwrap_or(fault_at);

    if fails_over {
        if spec.auto_failover {
            wait_for("the secondary promotes itself", Duration::from_secs(20), || {
                b.status().is_some_and(|s| s["role"] == "primary")
            })?;
            let s = b.status().ok_or("the new primary does not answer")?;
            let began = s["promoted_at_unix_ms"].as_u64().unwrap_or(fault_wall);
            report.detection_ms = began.saturating_sub(fault_wall) as f64;
            report.promotion_ms = (s["promotion_ms"].as_f64().unwrap_or(0.0) * 10.0).round() / 10.0;
        } else {
            // The harness watches the secondary hear nothing for a lease.
            let lease_ms = spec.lease.as_millis() as u64;
            let detected = wait_for("the harness notices the primary is gone", Duration::from_secs(20), || {
                b.status().is_some_and(|s| s["last_heard_ms"].as_u64().is_none_or(|ms| ms >= lease_ms))
            })?;
            report.detection_ms = ms(detected - fault_at);
            let started = Instant::now();
            run_cli(&spec.binary, &["promote", "--addr", &b.client])?;
            report.promotion_ms = ms(started.elapsed());
        }
        *lock(&load.primary) = b.client.clone();
    } else {
        let detected = wait_for("the primary notices the secondary is gone", Duration::from_secs(20), || {
            a.status().is_some_and(|s| s["link"] != "connected")
        })?;
        report.detection_ms = ms(detected - fault_at);
    }

    // The failed node comes back.
    let acked_before_return = lock(&load.acked).len();
    let (primary, rejoiner): (&NodeProcess, &mut NodeProcess) = if fails_over { (&b, &mut a) } else { (&a, &mut b) };
    if fails_over {
        // Writes go on alone; the crash-during-catchup drill piles more up.
        let backlog = if fault == FaultKind::CrashDuringCatchup { 3000 } else { 200 };
        wait_for("the new primary takes writes", Duration::from_secs(20), || {
            lock(&load.acked).len() >= acked_before_return + backlog
        })?;
    }
    let returned = Instant::now();
    match fault {
        FaultKind::KillPrimary => rejoiner.restart(&spec.binary, "secondary")?,
        FaultKind::Partition => {
            to_a.set(Fault::Pass);
            to_b.set(Fault::Pass);
        }
        FaultKind::KillSecondary => rejoiner.restart(&spec.binary, "secondary")?,
        FaultKind::CrashDuringCatchup => {
            rejoiner.restart(&spec.binary, "secondary")?;
            // Crash it again while it catches up, then once more back.
            let _ = wait_for("the rejoining node applies blocks", Duration::from_secs(10), || {
                rejoiner.status().is_some_and(|s| s["applied_bytes"].as_u64().unwrap_or(0) > 0)
            });
            rejoiner.kill();
            rejoiner.restart(&spec.binary, "secondary")?;
        }
    }
    wait_for("a write invoked after the fault is acknowledged", Duration::from_secs(30), || {
        load.first_ack_invoked_after(fault_at).is_some()
    })?;
    let first_after = load.first_ack_invoked_after(fault_at).unwrap_or(fault_at);
    report.unavailability_ms = ms(first_after.saturating_duration_since(last_ack_before));
    // Rejoined: the primary is back in synchronous mode with its peer.
    wait_for("the failed node rejoins", Duration::from_secs(60), || {
        primary.status().is_some_and(|p| {
            p["link"] == "connected" && p["exposure_bytes"] == 0 && p["degraded"] == false && p["catchup"].is_null()
        })
    })?;
    report.rejoin_ms = ms(returned.elapsed());
    let r = rejoiner.status().ok_or("the rejoined node does not answer")?;
    report.resync_bytes = r["applied_bytes"].as_u64().unwrap_or(0);
    report.truncated_bytes = r["truncated_bytes"].as_u64().unwrap_or(0);

    load.stop.store(true, Ordering::SeqCst);
    for w in writers {
        let _ = w.join();
    }
    wait_for("the two logs are identical", Duration::from_secs(30), || match (primary.status(), rejoiner.status()) {
        (Some(p), Some(r)) => p["log_end"] == r["log_end"] && p["fingerprint"] == r["fingerprint"],
        _ => false,
    })?;
    let acked = std::mem::take(&mut *lock(&load.acked));
    report.acked_writes = acked.len() as u64;
    let (mut on_primary, mut on_rejoiner) = (Client::connect(&primary.client)?, Client::connect(&rejoiner.client)?);
    for (key, value, _, _) in &acked {
        let here = on_primary.get(key.as_bytes())?;
        let there = on_rejoiner.get(key.as_bytes())?;
        let expected = Some(value.as_bytes());
        if here.as_deref() != expected {
            report.lost_acked_writes += 1;
        } else if there.as_deref() == expected {
            report.acked_on_both += 1;
        }
    }
    for op in lock(&load.history).drain(..) {
        history.push(json!({
            "process": op.process, "type": op.kind, "f": op.f, "key": op.key, "value": op.value,
            "time_ns": op.time_ns, "drill": n,
        }));
    }
    Ok(report)
}

/// Runs the drills, printing progress and a table; returns the reports.
pub fn run(spec: &DrillSpec, out: &mut impl Write, history: &mut Vec<Value>) -> Result<Vec<DrillReport>, Failed> {
    let (mut reports, epoch) = (Vec::new(), Instant::now());
    writeln!(
        out,
        "lockstep drill: {} drills ({}), {} writers, {} failover, lease {} ms, in {}",
        spec.drills,
        spec.faults.iter().map(|f| f.name()).collect::<Vec<_>>().join(", "),
        spec.writers,
        if spec.auto_failover { "automatic" } else { "manual" },
        spec.lease.as_millis(),
        spec.dir.display()
    )?;
    writeln!(
        out,
        "{:>3}  {:<21} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>6} {:>10}",
        "#", "fault", "detect ms", "promo ms", "unavail", "rejoin", "resync B", "acked", "lost", "truncated"
    )?;
    for n in 0..spec.drills {
        let fault = spec.faults[n % spec.faults.len()];
        eprint!("drill {}/{}: {} ... ", n + 1, spec.drills, fault.name());
        let started = Instant::now();
        let r = drill(spec, n, fault, epoch, history)?;
        eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
        writeln!(
            out,
            "{:>3}  {:<21} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10} {:>9} {:>6} {:>10}",
            n + 1,
            r.fault,
            r.detection_ms,
            r.promotion_ms,
            r.unavailability_ms,
            r.rejoin_ms,
            r.resync_bytes,
            r.acked_writes,
            r.lost_acked_writes,
            r.truncated_bytes
        )?;
        out.flush()?;
        reports.push(r);
    }
    let s = summary(&reports);
    for k in ["detection_ms", "promotion_ms", "unavailability_ms", "rejoin_ms"] {
        writeln!(out, "{k:>18}: min {} p50 {} p99 {} max {}", s[k]["min"], s[k]["p50"], s[k]["p99"], s[k]["max"])?;
    }
    let lost: u64 = reports.iter().map(|r| r.lost_acked_writes).sum();
    let acked: u64 = reports.iter().map(|r| r.acked_writes).sum();
    let both: u64 = reports.iter().map(|r| r.acked_on_both).sum();
    writeln!(out, "acknowledged writes: {acked}; lost: {lost}; found on both sites after rejoin: {both}")?;
    Ok(reports)
}

/// A bar chart of each drill's timings, readable at a glance.
pub fn svg(reports: &[DrillReport]) -> String {
    let rows: Vec<(&str, [f64; 4])> =
        reports.iter().map(|r| (r.fault, [r.detection_ms, r.promotion_ms, r.unavailability_ms, r.rejoin_ms])).collect();
    let max = rows.iter().flat_map(|(_, v)| v.iter().copied()).fold(1.0, f64::max);
    let (label_w, chart_w, bar_h, gap) = (190.0, 560.0, 11.0, 14.0);
    let row_h = 4.0 * bar_h + gap;
    let height = 60.0 + rows.len() as f64 * row_h + 30.0;
    let colors = ["#4c78a8", "#f58518", "#e45756", "#54a24b"];
    let names = ["detection", "promotion", "client unavailability", "rejoin"];
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" \
         font-size=\"11\">\n<text x=\"10\" y=\"20\" font-size=\"14\">lockstep drill: failover timings (ms)</text>\n",
        label_w + chart_w + 80.0
    );
    for (i, (name, color)) in names.iter().zip(colors).enumerate() {
        let x = 10.0 + i as f64 * 160.0;
        s += &format!("<rect x=\"{x}\" y=\"32\" width=\"10\" height=\"10\" fill=\"{color}\"/>");
        s += &format!("<text x=\"{}\" y=\"41\">{name}</text>\n", x + 14.0);
    }
    for (i, (fault, values)) in rows.iter().enumerate() {
        let y0 = 55.0 + i as f64 * row_h;
        s += &format!("<text x=\"10\" y=\"{}\">{} {fault}</text>\n", y0 + 2.0 * bar_h, i + 1);
        for (j, v) in values.iter().enumerate() {
            let y = y0 + j as f64 * bar_h;
            let w = (v / max * chart_w).max(1.0);
            s += &format!(
                "<rect x=\"{label_w}\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" fill=\"{}\"/>",
                bar_h - 2.0,
                colors[j]
            );
            s += &format!("<text x=\"{:.1}\" y=\"{}\">{v:.0}</text>\n", label_w + w + 4.0, y + bar_h - 3.0);
        }
    }
    s += "</svg>\n";
    s
}
