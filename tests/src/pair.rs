//! Helpers for tests that run a pair of `lockstep serve` processes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lockstep_replicator::client::Client;
use serde_json::Value;

use crate::{expect_code, p, serve, Served};

pub const SEGMENT_SIZE: &str = "256K";

/// A primary and a secondary store, bound to the same store id.
pub fn init_pair(root: &Path) -> (PathBuf, PathBuf) {
    let (primary, secondary) = (root.join("primary"), root.join("secondary"));
    let id = expect_code(0, ["init", p(&primary), "--segment-size", SEGMENT_SIZE]).stdout;
    expect_code(0, ["init", p(&secondary), "--segment-size", SEGMENT_SIZE, "--store-id", id.trim()]);
    (primary, secondary)
}

pub fn secondary_args(dir: &Path, repl: &str, extra: &[&str]) -> Vec<String> {
    node_args(dir, "secondary", repl, "127.0.0.1:9", extra)
}

pub fn primary_args(dir: &Path, peer: &str, extra: &[&str]) -> Vec<String> {
    node_args(dir, "primary", "127.0.0.1:0", peer, extra)
}

pub fn start_secondary(dir: &Path, repl: &str, extra: &[&str], env: &[(&str, &str)]) -> Served {
    let log = dir.with_extension("secondary.log");
    serve(&secondary_args(dir, repl, extra), env, &log)
}

pub fn start_primary(dir: &Path, peer: &str, extra: &[&str], env: &[(&str, &str)]) -> Served {
    let log = dir.with_extension("primary.log");
    serve(&primary_args(dir, peer, extra), env, &log)
}

/// A running pair; the primary dials `peer` (the secondary or a proxy).
pub fn start_pair(primary: &Path, secondary: &Path, extra: &[&str]) -> (Served, Served) {
    let s = start_secondary(secondary, "127.0.0.1:0", &[], &[]);
    let peer = s.repl.clone().expect("secondary repl address");
    let pr = start_primary(primary, &peer, extra, &[]);
    (pr, s)
}

pub fn status(addr: &str) -> Value {
    Client::connect(addr).and_then(|mut c| c.status()).expect("status")
}

/// Waits for `cond`; on a timeout, fails with the nodes' logs.
#[track_caller]
pub fn wait_until(what: &str, nodes: &[&Served], timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            let logs: Vec<String> = nodes.iter().map(|n| format!("--- {}:\n{}", n.stderr.display(), n.log())).collect();
            panic!("timed out waiting until {what}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writers that put distinct keys through the client until stopped, and
/// record every key whose put was acknowledged.
pub struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, String)>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Writers {
    pub fn start(addr: &str, n: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..n)
            .map(|t| {
                let (addr, stop, acked) = (addr.to_string(), stop.clone(), acked.clone());
                std::thread::spawn(move || {
                    let Ok(mut client) = Client::connect(&addr) else { return };
                    for i in 0.. {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let (key, value) = (format!("w{t}/{i:06}"), format!("value {t} {i} {}", "x".repeat(400)));
                        if client.put(key.as_bytes(), value.as_bytes()).is_err() {
                            return;
                        }
                        acked.lock().expect("acked").push((key, value));
                    }
                })
            })
            .collect();
        Writers { stop, acked, threads }
    }

    pub fn count(&self) -> usize {
        self.acked.lock().expect("acked").len()
    }

    #[track_caller]
    pub fn wait_for(&self, n: usize, nodes: &[&Served]) {
        wait_until(&format!("{n} writes are acknowledged"), nodes, Duration::from_secs(60), || self.count() >= n);
    }

    pub fn finish(self) -> Vec<(String, String)> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().expect("writer thread");
        }
        Arc::try_unwrap(self.acked).expect("writers done").into_inner().expect("acked")
    }
}

#[track_caller]
pub fn assert_all_readable(addr: &str, acked: &[(String, String)]) {
    let mut client = Client::connect(addr).expect("connect");
    for (key, value) in acked {
        let got = client.get(key.as_bytes()).expect("get");
        assert_eq!(got.as_deref(), Some(value.as_bytes()), "acknowledged write {key} is missing on {addr}");
    }
}

/// Segment files of `dir` by name; a trailing pre-zeroed spare is left out.
pub fn segments(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry"))
        .filter(|e| e.file_name().to_string_lossy().starts_with("segment-"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).expect("read")))
        .collect();
    files.sort();
    while files.last().is_some_and(|(_, bytes)| bytes.iter().all(|b| *b == 0)) {
        files.pop();
    }
    files
}

pub fn inspect(dir: &Path) -> Value {
    serde_json::from_str(&expect_code(0, ["inspect", p(dir), "--json"]).stdout).expect("inspect json")
}

pub fn put_in_background(addr: &str, key: &str) -> JoinHandle<Result<Duration, String>> {
    let (addr, key) = (addr.to_string(), key.to_string());
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut client = Client::connect(&addr).map_err(|e| e.to_string())?;
        client.put(key.as_bytes(), b"value").map_err(|e| e.to_string())?;
        Ok(started.elapsed())
    })
}

/// A loopback address nobody listens on right now (bound, then released;
/// below the ephemeral port range, see `proxy::free_addr`).
pub fn free_addr() -> String {
    lockstep_replicator::proxy::free_addr().expect("a free loopback port")
}

/// `serve` arguments for a node of either role with explicit addresses.
pub fn node_args(dir: &Path, role: &str, repl: &str, peer: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> =
        ["--dir", p(dir), "--role", role, "--repl", repl, "--peer", peer, "--client", "127.0.0.1:0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Starts a node with [`node_args`]; its log goes beside `dir`.
pub fn start_node(dir: &Path, role: &str, repl: &str, peer: &str, extra: &[&str]) -> Served {
    let log = dir.with_extension(format!("{role}.{}.log", std::process::id()));
    serve(&node_args(dir, role, repl, peer, extra), &[], &log)
}
