//! Deterministic simulation of a replicated pair: one seed drives a primary
//! and a secondary, each a real [`Store`] on its own simulated disk
//! ([`SimStorage`]), a simulated network between them (latency, drops,
//! duplicates, reordering, partitions), power cuts and restarts of either
//! node, automatic and manual promotion, rejoin of a former primary, and
//! client writes — all on a simulated clock. Invariants are checked after
//! every step; a failure names its seed, and the same seed replays the
//! same run (`LOCKSTEP_SIM_SEED`, `lockstep simulate --seed`).
//!
//! What runs for real: the engine (commit path, recovery after a power
//! cut, received-block verification, promotion, tail truncation), every
//! message through the wire codec, the handshake decisions
//! ([`crate::handshake`]) and the replication rules of [`ReplState`]
//! (acknowledgement watermarks, sync level and peer-loss rules, the lease
//! renewed from heartbeat send times, promotion state) on a simulated
//! clock. What is modelled: the session loops of `node.rs` (threads and
//! sockets) are rendered here as message handlers with the same rules and
//! constants; a handshake happens at once when the primary dials.
//!
//! Invariants: every acknowledged write is in the durable log of both
//! sites (written by a promoted primary alone: in its own log, and in both
//! once the pair is back in step); a secondary's log is a prefix of the
//! primary's in the same epoch (checked through the heartbeat fingerprint
//! comparison, as the node does, and directly); a node promotes only after
//! the old primary's lease expired; two primaries never share an epoch;
//! every mismatched Hello is refused; and at the end, with faults healed,
//! the pair converges to identical logs holding every acknowledged write.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lockstep_engine::sim::{Faults, Rng, SimStorage};
use lockstep_engine::{Fingerprint, LogBlock, Options, Store, StoreId};

use crate::auth::AuthKey;
use crate::handshake::{check_rejoin, describe, RejoinCheck};
use crate::node::{HEARTBEAT_INTERVAL, LINK_TIMEOUT, RECONNECT_BACKOFF, REFUSED_RETRY};
use crate::protocol::{Hello, Message, PeerLoss, Role, SyncLevel, NONCE_LEN};
use crate::repl::{Clock, PeerRecord, ReplState};
use crate::session::channel::{Opener, Sealer};
use crate::session::handshake::{parts, run_pair, Handshake, Outcome};
use crate::session::LogView;

/// Steps per seed unless asked otherwise.
pub const STEPS_DEFAULT: u32 = 300;
/// The lease the secondary's automatic failover uses.
const LEASE: Duration = Duration::from_millis(300);
/// Client writes in flight at once on the primary.
const WRITES_IN_FLIGHT_MAX: usize = 3;
/// How long the simulator waits for the engine's threads (real time)
/// before it reports a stall.
const STALL: Duration = Duration::from_secs(10);
/// Simulated time the pair gets to converge after the faults end.
const CONVERGE_MS: u64 = 30_000;
const SEGMENT_SIZE: u64 = lockstep_engine::format::SEGMENT_SIZE_MIN;

/// What one seed's run did.
#[derive(Debug, Default, Clone)]
pub struct SimReport {
    pub seed: u64,
    pub steps: u32,
    pub sim_ms: u64,
    pub writes_acked: u64,
    pub writes_acked_alone: u64,
    pub writes_failed: u64,
    pub messages: u64,
    pub crashes: u64,
    pub promotions: u64,
    pub rejoins: u64,
    pub demotions: u64,
    pub partitions: u64,
    pub session_resets: u64,
    pub mismatches_refused: u64,
    /// Connections of an attacker without the key (forged Hellos, replayed
    /// handshakes) that changed nothing, and forged frames refused on a
    /// live link.
    pub strangers_ignored: u64,
    pub forgeries_refused: u64,
    /// Rejoins refused as possible split brain and resolved as an operator
    /// would (export the tail, cut it).
    pub split_brain_refusals: u64,
    /// Handshakes between the pair refused (retried, as the node does).
    pub refusals: u64,
    /// Power cuts during a write (the block shipped, its local write cut).
    pub cut_writes: u64,
    /// Handshakes where the primary had lost blocks its secondary held (the
    /// secondary then takes over after the lease).
    pub primary_behind: u64,
    pub log_end: u64,
}

impl SimReport {
    /// Adds `other`'s counts to these (for a summary of many seeds).
    pub fn add(&mut self, other: &SimReport) {
        let SimReport {
            seed: _,
            steps,
            sim_ms,
            writes_acked,
            writes_acked_alone,
            writes_failed,
            messages,
            crashes,
            promotions,
            rejoins,
            demotions,
            partitions,
            session_resets,
            mismatches_refused,
            strangers_ignored,
            forgeries_refused,
            split_brain_refusals,
            refusals,
            cut_writes,
            primary_behind,
            log_end: _,
        } = other;
        self.steps += steps;
        self.sim_ms += sim_ms;
        for (total, n) in [
            (&mut self.writes_acked, writes_acked),
            (&mut self.writes_acked_alone, writes_acked_alone),
            (&mut self.writes_failed, writes_failed),
            (&mut self.messages, messages),
            (&mut self.crashes, crashes),
            (&mut self.promotions, promotions),
            (&mut self.rejoins, rejoins),
            (&mut self.demotions, demotions),
            (&mut self.partitions, partitions),
            (&mut self.session_resets, session_resets),
            (&mut self.mismatches_refused, mismatches_refused),
            (&mut self.strangers_ignored, strangers_ignored),
            (&mut self.forgeries_refused, forgeries_refused),
            (&mut self.split_brain_refusals, split_brain_refusals),
            (&mut self.refusals, refusals),
            (&mut self.cut_writes, cut_writes),
            (&mut self.primary_behind, primary_behind),
        ] {
            *total += n;
        }
    }
}

/// An invariant that did not hold, with what led to it.
#[derive(Debug, Clone)]
pub struct SimFailure {
    pub seed: u64,
    pub step: u32,
    pub sim_ms: u64,
    pub message: String,
    /// The last events before the failure, oldest first.
    pub trace: Vec<String>,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "simulation seed {} failed at step {} ({} ms): {}",
            self.seed, self.step, self.sim_ms, self.message
        )?;
        writeln!(f, "last events:")?;
        for event in &self.trace {
            writeln!(f, "  {event}")?;
        }
        write!(
            f,
            "replay: LOCKSTEP_SIM_SEED={} cargo test -p lockstep-replicator --test simulation  (or: lockstep simulate --seed {})",
            self.seed, self.seed
        )
    }
}

impl std::error::Error for SimFailure {}

/// Runs one seed for `steps` steps, then lets the pair converge.
pub fn run(seed: u64, steps: u32) -> Result<SimReport, SimFailure> {
    let mut sim = Sim::new(seed);
    let result = sim.run(steps);
    sim.shut_down();
    result.map(|()| sim.report.clone()).map_err(|message| SimFailure {
        seed,
        step: sim.step,
        sim_ms: sim.now,
        message,
        trace: sim.trace.iter().cloned().collect(),
    })
}

type Check = Result<(), String>;

/// A client write waiting for its answer.
struct PendingWrite {
    key: u64,
    end: u64,
    done: crossbeam_channel::Receiver<lockstep_engine::Result<()>>,
    thread: JoinHandle<()>,
}

/// An acknowledged write.
#[derive(Debug, Clone, Copy)]
struct Acked {
    key: u64,
    end: u64,
    fingerprint: Fingerprint,
    /// Answered by a primary acting alone (promoted, peer not back yet).
    alone: bool,
    node: usize,
}

struct Node {
    name: &'static str,
    disk: SimStorage,
    dir: PathBuf,
    store: Option<Arc<Store>>,
    repl: Arc<ReplState>,
    role: Role,
    /// The connection this node is in (both ends share the number), and
    /// its frame sealer and opener (from the handshake).
    conn: Option<u64>,
    link: Option<(Sealer, Opener)>,
    /// When anything last arrived on the connection.
    heard_ms: u64,
    /// Primary: the next log position to send, when the next heartbeat is
    /// due, when to dial next and the backoff, and since when the peer's
    /// durable acknowledgement has not moved while blocks are outstanding.
    send_next: u64,
    heartbeat_due: u64,
    dial_at: u64,
    backoff: u64,
    stalled: (u64, u64),
    writes: Vec<PendingWrite>,
}

impl Node {
    fn store(&self) -> Result<&Arc<Store>, String> {
        self.store.as_ref().ok_or_else(|| format!("node {} is down", self.name))
    }
}

struct Packet {
    deliver_at: u64,
    order: u64,
    conn: u64,
    to: usize,
    frame: Vec<u8>,
    /// Injected by the attacker: must never be accepted.
    forged: bool,
}

/// Message faults for the whole run, per mille per message.
#[derive(Debug, Clone, Copy)]
struct NetFaults {
    latency_max: u64,
    drop: u64,
    duplicate: u64,
    reorder: u64,
    /// (With a key.) Frames an attacker on the path forges or alters.
    forge: u64,
}

struct Sim {
    rng: Rng,
    clock: Clock,
    clock_ms: Arc<AtomicU64>,
    now: u64,
    step: u32,
    nodes: [Node; 2],
    packets: Vec<Packet>,
    /// The latest delivery time per direction, for in-order delivery.
    last_delivery: [u64; 2],
    packet_order: u64,
    next_conn: u64,
    partitioned: bool,
    net: NetFaults,
    next_key: u64,
    acked: Vec<Acked>,
    report: SimReport,
    trace: VecDeque<String>,
    last_refusal: Option<String>,
    /// The pair's key (`--auth-key-file`), in about half the seeds.
    key: Option<AuthKey>,
    /// The frames the primary sent in its last handshake, for an attacker
    /// to replay.
    recorded: Vec<Vec<u8>>,
}

const STORE_ID: StoreId = StoreId([7; 16]);

fn options(disk: &SimStorage, repl: &Arc<ReplState>) -> Options {
    Options {
        segment_size: SEGMENT_SIZE,
        store_id: Some(STORE_ID),
        storage: Arc::new(disk.machine()),
        replica: Some(repl.clone() as Arc<dyn lockstep_engine::Replica>),
        ..Options::default()
    }
}

fn value_of(key: u64) -> Vec<u8> {
    let len = 200 + (key * 7919 % 1800) as usize;
    vec![(key % 251) as u8; len]
}

fn key_bytes(key: u64) -> Vec<u8> {
    format!("w{key:08}").into_bytes()
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng::new(seed);
        let (clock, clock_ms) = Clock::simulated();
        let net = if rng.chance(250) {
            NetFaults { latency_max: 2, drop: 0, duplicate: 0, reorder: 0, forge: 0 }
        } else {
            NetFaults {
                latency_max: 1 + rng.below(40),
                drop: rng.below(15),
                duplicate: rng.below(15),
                reorder: rng.below(15),
                forge: rng.below(10),
            }
        };
        let node = |name: &'static str, role: Role, disk_seed: u64| Node {
            name,
            disk: SimStorage::new(disk_seed),
            dir: PathBuf::from(format!("/{name}")),
            store: None,
            repl: Arc::new(ReplState::new(SyncLevel::Durable, PeerLoss::Block)),
            role,
            conn: None,
            link: None,
            heard_ms: 0,
            send_next: 0,
            heartbeat_due: 0,
            dial_at: 0,
            backoff: RECONNECT_BACKOFF.0.as_millis() as u64,
            stalled: (0, 0),
            writes: Vec::new(),
        };
        let nodes = [node("a", Role::Primary, rng.next_u64()), node("b", Role::Secondary, rng.next_u64())];
        let key = rng
            .chance(500)
            .then(|| AuthKey::new(format!("sim-key-{}", rng.next_u64()).as_bytes()))
            .and_then(Result::ok);
        Sim {
            rng,
            clock,
            clock_ms,
            now: 0,
            step: 0,
            nodes,
            packets: Vec::new(),
            last_delivery: [0; 2],
            packet_order: 0,
            next_conn: 1,
            partitioned: false,
            net,
            next_key: 0,
            acked: Vec::new(),
            report: SimReport { seed, ..SimReport::default() },
            trace: VecDeque::new(),
            last_refusal: None,
            key,
            recorded: Vec::new(),
        }
    }

    fn note(&mut self, event: String) {
        if self.trace.len() == 300 {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("[{} ms] {event}", self.now));
    }

    fn run(&mut self, steps: u32) -> Check {
        let net = self.net;
        self.note(format!("network: {net:?}; key: {}", self.key.is_some()));
        self.start(0)?;
        self.start(1)?;
        for step in 1..=steps {
            self.step = step;
            self.report.steps = step;
            self.act()?;
            self.check()?;
        }
        self.converge()
    }

    // ---- actions -----------------------------------------------------------------

    fn act(&mut self) -> Check {
        match self.rng.below(100) {
            0..=39 => {
                let ms = 1 + self.rng.below(60);
                self.advance(ms)
            }
            40..=67 => self.client_write(),
            68..=69 => self.power_cut_during_a_write(),
            70..=73 => {
                self.partitioned = !self.partitioned;
                if self.partitioned {
                    self.report.partitions += 1;
                    // What was on the wire is lost with the link.
                    self.packets.clear();
                }
                let state = if self.partitioned { "partition" } else { "heal" };
                self.note(state.into());
                Ok(())
            }
            74..=77 => {
                let n = self.rng.below(2) as usize;
                if self.nodes[n].store.is_some() {
                    self.crash(n)?;
                }
                Ok(())
            }
            78..=87 => {
                let n = self.rng.below(2) as usize;
                if self.nodes[n].store.is_none() {
                    self.start(n)?;
                }
                Ok(())
            }
            88..=89 => self.operator_promotes(),
            90..=94 => self.stranger(),
            _ => self.mismatched_peer(),
        }
    }

    /// Starts (or restarts after a crash) node `n` in the role it had.
    fn start(&mut self, n: usize) -> Check {
        let node = &mut self.nodes[n];
        node.repl = Arc::new(ReplState::with_clock(SyncLevel::Durable, PeerLoss::Block, self.clock.clone()));
        let store = Store::open(&node.dir, options(&node.disk, &node.repl))
            .map_err(|e| format!("node {} does not open after a crash: {e}", node.name))?;
        let info = store.info();
        node.repl.store_opened(&store, PeerRecord::load(&store)?);
        node.store = Some(Arc::new(store));
        node.conn = None;
        node.dial_at = self.now;
        let (name, role) = (node.name, node.role);
        self.note(format!(
            "start {name} as {} (epoch {}, log end {}, durable {})",
            role.name(),
            info.epoch,
            info.log_end,
            info.durable_end
        ));
        self.check_acked_on(n)
    }

    /// A power cut on node `n`'s machine.
    fn crash(&mut self, n: usize) -> Check {
        self.report.crashes += 1;
        self.stop(n, true)
    }

    /// Node `n` stops: after a power cut, or because it exited (refused at
    /// start-up). Waiting writes fail; none may have been answered.
    fn stop(&mut self, n: usize, power_cut: bool) -> Check {
        let node = &mut self.nodes[n];
        let pending = if power_cut { node.disk.crash() } else { 0 };
        node.repl.update(|s| s.closing = true);
        let writes = std::mem::take(&mut node.writes);
        let name = node.name;
        for w in writes {
            match recv(&w.done) {
                Some(Ok(())) => {
                    return Err(format!("write {} was answered on {name} although not replicated", w.key));
                }
                _ => self.report.writes_failed += 1,
            }
            let _ = w.thread.join();
        }
        let node = &mut self.nodes[n];
        node.store = None; // every thread of the store has finished
        node.conn = None;
        self.note(match power_cut {
            true => format!("power cut on {name} ({pending} unsynced writes kept, lost or torn)"),
            false => format!("{name} exits (refused before any accepted handshake)"),
        });
        Ok(())
    }

    fn primary(&self) -> Option<usize> {
        (0..2).find(|&n| self.nodes[n].role == Role::Primary && self.nodes[n].store.is_some())
    }

    fn client_write(&mut self) -> Check {
        let Some(p) = self.primary() else { return Ok(()) };
        if self.nodes[p].writes.len() >= WRITES_IN_FLIGHT_MAX {
            return self.advance(1);
        }
        // Refused, as the node refuses it, before the first handshake.
        if !self.nodes[p].repl.wait_until_secondary_met(Duration::ZERO) {
            return Ok(());
        }
        let key = self.next_key;
        self.next_key += 1;
        let node = &mut self.nodes[p];
        let store = node.store()?.clone();
        let shipped_before = node.repl.lock().shipped_end;
        let (tx, done) = crossbeam_channel::bounded(1);
        let thread = std::thread::spawn(move || {
            let _ = tx.send(store.put(key_bytes(key), value_of(key)));
        });
        // Wait until the committer shipped the block and wrote it locally
        // (or refused the write): from here on nothing races the simulator.
        let started = Instant::now();
        let end = loop {
            let shipped = node.repl.lock().shipped_end;
            if shipped > shipped_before && node.store()?.info().durable_end >= shipped {
                break shipped;
            }
            if !done.is_empty() {
                break 0;
            }
            if started.elapsed() > STALL {
                return Err(format!("write {key} on {} was neither shipped nor refused", node.name));
            }
            std::thread::sleep(Duration::from_micros(50));
        };
        node.writes.push(PendingWrite { key, end, done, thread });
        let name = node.name;
        self.note(format!("write {key} on {name} -> block end {end}"));
        self.settle(p)
    }

    /// The power fails while the primary writes a block it has already
    /// shipped (the committer ships before its local write): the write is
    /// kept, lost or torn, and the sender may or may not have sent it — the
    /// secondary can end up holding a block the primary lost.
    fn power_cut_during_a_write(&mut self) -> Check {
        let Some(p) = self.primary() else { return Ok(()) };
        if self.nodes[p].writes.len() >= WRITES_IN_FLIGHT_MAX {
            return Ok(());
        }
        let disk = self.nodes[p].disk.clone();
        let before = disk.crashes();
        disk.set_faults(Faults { crash_at_write_after: Some(0), ..Faults::default() });
        self.client_write()?;
        disk.set_faults(Faults::default());
        if disk.crashes() == before {
            return Ok(()); // the write was refused before it reached the disk
        }
        self.report.cut_writes += 1;
        // The sender may already have sent the block (from memory; reading
        // the log fails now, as it would for the real sender).
        if self.rng.chance(500) && self.nodes[p].conn.is_some() {
            if let Err(e) = self.send_blocks(p) {
                self.note(format!("the sender stops: {e}"));
            }
        }
        self.crash(p)
    }

    /// The operator promotes the secondary (without --force) while the
    /// primary is down.
    fn operator_promotes(&mut self) -> Check {
        let s = (0..2).find(|&n| self.nodes[n].role == Role::Secondary && self.nodes[n].store.is_some());
        match s {
            Some(s) if self.nodes[1 - s].store.is_none() => self.promote(s, "the operator"),
            _ => Ok(()),
        }
    }

    fn promote(&mut self, n: usize, by: &str) -> Check {
        let other = &self.nodes[1 - n];
        if other.store.is_some() && other.role == Role::Primary && other.repl.lease_held() {
            return Err(format!(
                "{by} promotes {} while {} still holds its primary lease: two primaries could answer",
                self.nodes[n].name, other.name
            ));
        }
        let node = &mut self.nodes[n];
        let store = node.store()?.clone();
        let info = store.info();
        if let Some(risk) = node.repl.promotion_risk(info.epoch, info.durable_end) {
            let name = node.name;
            node.repl.lock().last_heard = None;
            self.note(format!("{by} cannot promote {name}: {risk}"));
            return Ok(());
        }
        let known_epoch = node.repl.lock().known_epoch;
        let epoch = store.promote_past(known_epoch).map_err(|e| format!("promoting {}: {e}", node.name))?;
        let log_end = store.info().log_end;
        node.role = Role::Primary;
        node.repl.promoted(log_end, self.now, Duration::ZERO);
        node.conn = None;
        node.dial_at = self.now;
        self.report.promotions += 1;
        let name = node.name;
        self.note(format!("{by} promotes {name} to epoch {epoch} at {log_end}"));
        Ok(())
    }

    /// A Hello that differs from the real peer's in one way the handshake
    /// must refuse, judged by both running nodes; nothing may change.
    fn mismatched_peer(&mut self) -> Check {
        let up: Vec<usize> = (0..2).filter(|&n| self.nodes[n].store.is_some()).collect();
        if up.is_empty() {
            return Ok(());
        }
        let n = up[self.rng.below(up.len() as u64) as usize];
        let ours = self.hello(n)?;
        let mut peer = ours.clone();
        peer.role = if ours.role == Role::Primary { Role::Secondary } else { Role::Primary };
        peer.node_id = lockstep_engine::NodeId([9; 16]);
        let what = match self.rng.below(8) {
            0 => {
                peer.store_id = StoreId([8; 16]);
                "another store"
            }
            1 => {
                peer.format_version += 1;
                "another format version"
            }
            2 => {
                peer.protocol_min = ours.protocol_max + 1;
                peer.protocol_max = ours.protocol_max + 2;
                "protocol ranges that do not overlap"
            }
            3 => {
                peer.settings ^= 1;
                "other settings"
            }
            4 => {
                peer.auth = !ours.auth;
                "authentication on one side only"
            }
            5 => {
                peer.role = ours.role;
                "the same role in the same epoch"
            }
            6 if ours.role == Role::Primary => {
                peer.log_end = ours.log_end + 4096;
                "a secondary ahead of the primary"
            }
            _ if ours.role == Role::Primary && ours.log_end > 0 => {
                peer.fingerprint = Fingerprint(ours.fingerprint.0 ^ 1);
                "a secondary whose log diverged"
            }
            _ => {
                peer.epoch = ours.epoch + 1;
                peer.epochs.push(lockstep_engine::EpochStart { epoch: peer.epoch, start_position: ours.log_end });
                peer.role = ours.role;
                peer.store_id = StoreId([8; 16]);
                "another store's primary of a newer epoch"
            }
        };
        // The mismatched node holds the pair's key when it says it has one
        // (it is misconfigured, not an attacker).
        let peer_key = match (&self.key, peer.auth) {
            (_, false) => None,
            (Some(key), true) => Some(key.clone()),
            (None, true) => AuthKey::new(b"another node's key, not the pair's").ok(),
        };
        let before = self.observe(n)?;
        let outcome = self.handshake_with(n, peer, peer_key, &mut |_, _| {})?;
        let reason = match outcome {
            Some(Outcome::Refused(reason) | Outcome::PeerRefused(reason) | Outcome::Stranger(reason)) => reason,
            other => return Err(format!("{} accepted a peer with {what}: {other:?}", self.nodes[n].name)),
        };
        if self.observe(n)? != before {
            return Err(format!("judging a peer with {what} changed {}'s state", self.nodes[n].name));
        }
        self.report.mismatches_refused += 1;
        let name = self.nodes[n].name;
        self.note(format!("{name} refuses a peer with {what}: {reason}"));
        Ok(())
    }

    /// What a connection that is refused must leave as it was: the
    /// node's role, its store's extent and epoch, what it knows of its
    /// peer, its link and its session.
    fn observe(&self, n: usize) -> Result<String, String> {
        let node = &self.nodes[n];
        let info = node.store()?.info();
        let s = node.repl.lock();
        Ok(format!(
            "{:?} {} {} {} {} {} {} {:?} {:?} {:?} {:?}",
            node.role,
            info.epoch,
            info.log_end,
            s.known_epoch,
            s.accepted_epoch,
            s.primary_committed,
            s.link.name(),
            s.refusal,
            s.fatal,
            s.demoted,
            node.conn
        ))
    }

    /// A connection to node `n` (which listens) from a peer whose Hello is
    /// `peer` and key `peer_key`, run through both real handshake machines;
    /// `tamper` may change frames on the way. Node `n`'s outcome.
    fn handshake_with(
        &mut self,
        n: usize,
        mut peer: Hello,
        peer_key: Option<AuthKey>,
        tamper: &mut dyn FnMut(bool, &mut Vec<u8>),
    ) -> Result<Option<Outcome>, String> {
        peer.auth = peer_key.is_some();
        peer.nonce = self.nonce();
        let mut ours = self.hello(n)?;
        ours.nonce = self.nonce();
        let store = self.nodes[n].store()?.clone();
        let (mut dialer, d_hello) = Handshake::start(peer, peer_key, true);
        let (mut listener, l_hello) = Handshake::start(ours, self.key.clone(), false);
        let (_, outcome) = run_pair((&mut dialer, d_hello, &EmptyLog), (&mut listener, l_hello, &*store), tamper);
        Ok(outcome)
    }

    fn nonce(&mut self) -> [u8; NONCE_LEN] {
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..8].copy_from_slice(&self.rng.next_u64().to_le_bytes());
        nonce[8..].copy_from_slice(&self.rng.next_u64().to_le_bytes());
        nonce
    }

    /// An attacker without the pair's key connects to a node (with a key
    /// configured; without one any peer is trusted, by design): a Hello of
    /// a primary of the same store at a much newer epoch (which would
    /// demote a primary and be recorded by a secondary), with a wrong key or
    /// none, or a replay of the real primary's last handshake. Nothing may
    /// change: not the role, the epoch, the peer record, the status or the
    /// live session.
    fn stranger(&mut self) -> Check {
        if self.key.is_none() {
            return Ok(());
        }
        let up: Vec<usize> = (0..2).filter(|&n| self.nodes[n].store.is_some()).collect();
        if up.is_empty() {
            return Ok(());
        }
        let n = up[self.rng.below(up.len() as u64) as usize];
        let before = self.observe(n)?;
        let mut forged = self.hello(n)?;
        forged.role = Role::Primary;
        forged.node_id = lockstep_engine::NodeId([0xee; 16]);
        forged.epoch = lockstep_engine::format::EPOCH_MAX;
        forged.epochs.push(lockstep_engine::EpochStart { epoch: forged.epoch, start_position: forged.log_end });
        forged.commit_position = lockstep_engine::format::EPOCH_MAX;
        let choice = self.rng.below(3);
        let what = match choice {
            0 => "a forged newer primary's Hello with a wrong key",
            1 => "a forged newer primary's Hello without a key",
            _ => "a replay of the primary's last handshake",
        };
        let outcome = match choice {
            0 => {
                self.handshake_with(n, forged, AuthKey::new(b"an attacker's guess at the key").ok(), &mut |_, _| {})?
            }
            1 => self.handshake_with(n, forged, None, &mut |_, _| {})?,
            _ => {
                // The attacker replays the recorded frames in place of what
                // the dialer sends now (it holds no key; every frame it
                // would send is replaced).
                if self.recorded.is_empty() {
                    return Ok(());
                }
                let mut recorded = self.recorded.clone().into_iter();
                let peer = self.hello(n)?;
                let guess = AuthKey::new(b"an attacker's guess at the key").ok();
                self.handshake_with(n, peer, guess, &mut |from_dialer, f| {
                    if from_dialer {
                        *f = recorded.next().unwrap_or_default();
                    }
                })?
            }
        };
        match outcome {
            Some(Outcome::Stranger(_)) | Some(Outcome::Failed(_)) | None => {}
            other => return Err(format!("{} acted on {what}: {other:?}", self.nodes[n].name)),
        }
        if self.observe(n)? != before {
            return Err(format!("{what} changed {}'s state", self.nodes[n].name));
        }
        self.report.strangers_ignored += 1;
        let name = self.nodes[n].name;
        self.note(format!("{name} ignores {what}"));
        Ok(())
    }

    // ---- time and the network ------------------------------------------------------

    /// Lets `ms` milliseconds pass, one at a time.
    fn advance(&mut self, ms: u64) -> Check {
        for _ in 0..ms {
            self.now += 1;
            self.clock_ms.store(self.now, Ordering::SeqCst);
            self.report.sim_ms = self.now;
            self.deliver()?;
            for n in 0..2 {
                if self.nodes[n].store.is_some() {
                    self.timers(n)?;
                }
            }
        }
        Ok(())
    }

    fn send(&mut self, from: usize, message: &Message) {
        let Some(conn) = self.nodes[from].conn else { return };
        self.report.messages += 1;
        if self.partitioned || self.rng.chance(self.net.drop) {
            return;
        }
        let to = 1 - from;
        let latency = self.rng.below(self.net.latency_max + 1);
        let mut deliver_at = self.now + latency;
        if !self.rng.chance(self.net.reorder) {
            deliver_at = deliver_at.max(self.last_delivery[to]);
        }
        self.last_delivery[to] = self.last_delivery[to].max(deliver_at);
        let copies = if self.rng.chance(self.net.duplicate) { 2 } else { 1 };
        let Some((sealer, _)) = self.nodes[from].link.as_mut() else { return };
        let frame = sealer.seal(message);
        for _ in 0..copies {
            self.packet_order += 1;
            let order = self.packet_order;
            self.packets.push(Packet { deliver_at, order, conn, to, frame: frame.clone(), forged: false });
        }
        // An attacker on the path of an authenticated link alters this
        // frame, or forges an acknowledgement of everything (a plain frame,
        // or one tagged under a guessed key).
        if self.key.is_some() && self.rng.chance(self.net.forge) {
            let mut forged = match self.rng.below(3) {
                0 => Message::Ack { received_end: 1 << 40, durable_end: 1 << 40, heartbeat: 1 }.encode(),
                1 => Sealer::new(Some([7; 32])).seal(&Message::Ack {
                    received_end: 1 << 40,
                    durable_end: 1 << 40,
                    heartbeat: 1,
                }),
                _ => frame,
            };
            if let Some(last) = forged.last_mut() {
                *last ^= 0x20;
            }
            // A valid frame checksum: only the tag can tell.
            if let Some((kind, flags, payload)) = decode_unchecked(&forged) {
                forged = crate::protocol::frame_with(kind, flags, &payload, &[]);
            }
            self.packet_order += 1;
            let order = self.packet_order;
            self.packets.push(Packet { deliver_at, order, conn, to, frame: forged, forged: true });
        }
    }

    fn deliver(&mut self) -> Check {
        loop {
            let due = self
                .packets
                .iter()
                .enumerate()
                .filter(|(_, p)| p.deliver_at <= self.now)
                .min_by_key(|(_, p)| (p.deliver_at, p.order))
                .map(|(i, _)| i);
            let Some(i) = due else { return Ok(()) };
            let packet = self.packets.swap_remove(i);
            let node = &self.nodes[packet.to];
            if node.store.is_none() || node.conn != Some(packet.conn) {
                continue; // the connection is gone at this end
            }
            let (kind, flags, payload) = parts(&packet.frame).ok_or("a sent frame does not decode")?;
            let Some((_, opener)) = self.nodes[packet.to].link.as_mut() else { continue };
            let message = match opener.open(kind, flags, payload) {
                Ok(_) if packet.forged => {
                    return Err(format!(
                        "{} accepted a forged frame on an authenticated link",
                        self.nodes[packet.to].name
                    ))
                }
                Ok(message) => message,
                Err(e) => {
                    // As the node does: the link is closed (a replayed or
                    // reordered frame fails its tag just as a forged one).
                    self.report.forgeries_refused += u64::from(packet.forged);
                    self.reset(packet.to, format!("a frame failed to open: {e}"));
                    continue;
                }
            };
            self.nodes[packet.to].heard_ms = self.now;
            match self.nodes[packet.to].role {
                Role::Primary => self.primary_receives(packet.to, message)?,
                Role::Secondary => self.secondary_receives(packet.to, message)?,
            }
        }
    }

    /// Ends node `n`'s session (the peer notices by its own timeout, or when
    /// the primary dials again).
    fn reset(&mut self, n: usize, why: String) {
        self.report.session_resets += 1;
        let node = &mut self.nodes[n];
        node.conn = None;
        node.dial_at = self.now + node.backoff;
        let name = node.name;
        self.note(format!("{name} ends its session: {why}"));
    }

    fn timers(&mut self, n: usize) -> Check {
        let node = &self.nodes[n];
        match (node.role, node.conn) {
            (Role::Primary, None) if self.now >= node.dial_at => self.dial(n),
            (Role::Primary, Some(_)) => {
                if self.now - node.heard_ms >= LINK_TIMEOUT.as_millis() as u64 {
                    self.reset(n, "nothing from the secondary within the link timeout".into());
                    return Ok(());
                }
                let acked = node.repl.lock().peer_durable;
                let stalled = node.stalled;
                if acked != stalled.0 || acked >= node.send_next {
                    self.nodes[n].stalled = (acked, self.now);
                } else if self.now - stalled.1 >= LINK_TIMEOUT.as_millis() as u64 {
                    self.reset(n, format!("the secondary acknowledged nothing beyond {acked}"));
                    return Ok(());
                }
                if self.now >= self.nodes[n].heartbeat_due {
                    self.heartbeat(n)?;
                }
                self.send_blocks(n)
            }
            (Role::Secondary, _) => {
                let wait = LEASE + LEASE / 2;
                if node.repl.primary_silent_for(wait) {
                    return self.promote(n, "automatic failover");
                }
                if node.conn.is_some() && self.now - node.heard_ms >= LINK_TIMEOUT.as_millis() as u64 {
                    self.reset(n, "nothing from the primary within the link timeout".into());
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn heartbeat(&mut self, p: usize) -> Check {
        let node = &mut self.nodes[p];
        let info = node.store()?.info();
        let (seq, commit_position) = node.repl.heartbeat_sent();
        node.heartbeat_due = self.now + node.repl.heartbeat_interval(HEARTBEAT_INTERVAL).as_millis() as u64;
        let heartbeat = Message::Heartbeat {
            log_end: info.log_end,
            fingerprint: info.fingerprint,
            commit_position,
            time_ms: self.now,
            seq,
        };
        self.send(p, &heartbeat);
        Ok(())
    }

    /// Sends what the secondary lacks: recently shipped blocks from the
    /// ring, older ones read back from the log.
    fn send_blocks(&mut self, p: usize) -> Check {
        let node = &self.nodes[p];
        let next = node.send_next;
        let (ring, from_log) = {
            let s = node.repl.lock();
            let i = s.ring.partition_point(|b| b.position < next);
            if s.ring.get(i).is_some_and(|b| b.position == next) {
                (s.ring.range(i..).take(8).cloned().collect(), false)
            } else {
                (Vec::new(), next < s.shipped_end || s.ring.front().is_some_and(|b| b.position > next))
            }
        };
        let store = node.store()?;
        let blocks = match from_log && next <= store.info().durable_end {
            true => store.read_blocks(next, 64 << 10).map_err(|e| format!("reading the log: {e}"))?,
            false => ring,
        };
        for b in blocks {
            let end = b.position + b.bytes.len() as u64;
            self.send(p, &Message::Block { segment: b.segment, position: b.position, block: b.bytes });
            self.nodes[p].send_next = end;
        }
        Ok(())
    }

    /// The primary dials: the whole handshake at once, both Hellos through
    /// the codec, both verdicts from the shared rules.
    fn dial(&mut self, p: usize) -> Check {
        let s = 1 - p;
        if self.partitioned || self.nodes[s].store.is_none() {
            let node = &mut self.nodes[p];
            node.dial_at = self.now + node.backoff;
            node.backoff = (node.backoff * 2).min(RECONNECT_BACKOFF.1.as_millis() as u64);
            return Ok(());
        }
        self.nodes[p].backoff = RECONNECT_BACKOFF.0.as_millis() as u64;
        let (mut ours, mut theirs) = (self.hello(p)?, self.hello(s)?);
        if theirs.role == Role::Primary && theirs.epoch == ours.epoch {
            return Err(format!(
                "{} and {} are both primary of epoch {}",
                self.nodes[p].name, self.nodes[s].name, ours.epoch
            ));
        }
        (ours.nonce, theirs.nonce) = (self.nonce(), self.nonce());
        // Both real handshake machines, every frame through the codec; the
        // dialer's frames are kept for an attacker to replay.
        let (ps, ss) = (self.nodes[p].store()?.clone(), self.nodes[s].store()?.clone());
        let (mut dialer, d_hello) = Handshake::start(ours.clone(), self.key.clone(), true);
        let (mut listener, l_hello) = Handshake::start(theirs.clone(), self.key.clone(), false);
        let mut recorded = Vec::new();
        let outcomes = run_pair((&mut dialer, d_hello, &*ps), (&mut listener, l_hello, &*ss), &mut |from_dialer, f| {
            if from_dialer {
                recorded.push(f.clone());
            }
        });
        self.recorded = recorded;
        drop((ps, ss)); // a node that steps down or rejoins reopens its store
        match outcomes {
            (Some(Outcome::Accepted), Some(Outcome::Accepted)) => {
                self.nodes[p].link = Some(dialer.into_channel());
                self.nodes[s].link = Some(listener.into_channel());
                self.connect(p, &ours, &theirs)
            }
            // The one of the older epoch was replaced: it steps down.
            (Some(Outcome::StepDown), Some(Outcome::PeerStepsDown)) => self.demote(p, &theirs),
            (Some(Outcome::PeerStepsDown), Some(Outcome::StepDown)) => self.demote(s, &ours),
            (Some(Outcome::PeerRejoins { .. }), Some(Outcome::Rejoin { position, fingerprint })) => {
                self.rejoin(s, &ours, position, fingerprint)
            }
            // As the node does: a node that never had a handshake accepted
            // since it started exits (76); one that had retries later. The
            // secondary of a primary that lost blocks it holds goes on, and
            // takes over after the lease.
            (Some(Outcome::Refused(reason) | Outcome::PeerRefused(reason)), answer) => {
                self.report.refusals += 1;
                let note = format!(
                    "the pair refuses to connect (epochs {} and {}, log ends {} and {}): {reason}",
                    ours.epoch, theirs.epoch, ours.log_end, theirs.log_end
                );
                self.note(note.clone());
                self.last_refusal = Some(note);
                self.nodes[p].dial_at = self.now + REFUSED_RETRY.as_millis() as u64;
                let behind = match answer {
                    Some(Outcome::PrimaryBehind(why)) => {
                        self.report.primary_behind += 1;
                        self.nodes[s].repl.primary_behind(&why);
                        true
                    }
                    _ => false,
                };
                for (n, exits) in [(p, true), (s, !behind)] {
                    if exits && !self.nodes[n].repl.lock().accepted_once {
                        self.stop(n, false)?;
                    }
                }
                Ok(())
            }
            (d, l) => Err(format!("unexpected handshake outcomes: primary {d:?}, secondary {l:?}")),
        }
    }

    fn hello(&self, n: usize) -> Result<Hello, String> {
        let node = &self.nodes[n];
        let store = node.store()?;
        let mut hello = Hello {
            auto_failover: node.role == Role::Secondary,
            lease_ms: LEASE.as_millis() as u64,
            auth: self.key.is_some(),
            ..Hello::example(node.role)
        };
        describe(&mut hello, store);
        hello.commit_position = match node.role {
            Role::Primary => node.repl.lock().answered_end.max(hello.log_end),
            Role::Secondary => node.repl.lock().primary_committed,
        };
        Ok(hello)
    }

    fn connect(&mut self, p: usize, ours: &Hello, theirs: &Hello) -> Check {
        let s = 1 - p;
        let conn = self.next_conn;
        self.next_conn += 1;
        let durable = self.nodes[p].store()?.info().durable_end;
        let own = self.nodes[s].store()?.info().durable_end;
        let now = self.now;
        for (n, peer) in [(p, theirs), (s, ours)] {
            let node = &mut self.nodes[n];
            node.conn = Some(conn);
            node.heard_ms = now;
            node.repl.accepted(peer);
        }
        self.nodes[p].repl.primary_session_started(theirs, durable);
        let record = self.nodes[s].repl.secondary_session_started(ours, own);
        record.save(self.nodes[s].store()?).map_err(|e| format!("keeping the peer record: {e}"))?;
        let node = &mut self.nodes[p];
        node.send_next = theirs.log_end;
        node.heartbeat_due = now;
        node.stalled = (theirs.log_end, now);
        let (pn, sn) = (self.nodes[p].name, self.nodes[s].name);
        self.note(format!("{pn} connects to {sn} (conn {conn}); {sn} holds {}, {pn} {durable}", theirs.log_end));
        // What the secondary holds may answer waiting writes.
        self.settle(p)
    }

    /// The primary told node `s` to rejoin from `position`: check, cut the
    /// tail, reopen; the primary dials again at once.
    fn rejoin(&mut self, s: usize, primary: &Hello, position: u64, fingerprint: Fingerprint) -> Check {
        let node = &mut self.nodes[s];
        let store = node.store()?.clone();
        match check_rejoin(&store, &node.dir, primary, position, fingerprint) {
            RejoinCheck::Allowed => {}
            RejoinCheck::Diverged(reason) => return Err(format!("{} may not rejoin: {reason}", node.name)),
            // After a power cut a node that answered writes alone cannot
            // tell where those answers end, so it refuses to cut its tail
            // automatically; the operator exports the tail and cuts it
            // (`lockstep rejoin --export`), which this does. Whether any
            // acknowledged write was in that tail, the invariants tell.
            RejoinCheck::SplitBrain(_) => {
                self.report.split_brain_refusals += 1;
                let name = node.name;
                self.note(format!(
                    "{name} refuses to rejoin (it may have answered alone); the operator exports and cuts"
                ));
            }
        }
        let node = &mut self.nodes[s];
        let log_end = store.info().log_end;
        drop(store);
        node.store = None;
        let opts = options(&node.disk, &node.repl);
        lockstep_engine::truncate::truncate_tail(&node.dir, &opts, position)
            .map_err(|e| format!("truncating {} to {position}: {e}", node.name))?;
        self.report.rejoins += 1;
        let name = node.name;
        self.note(format!("{name} rejoins: cut {} bytes after {position}", log_end - position));
        self.start(s)
    }

    /// Node `n` met a primary of a newer epoch: its waiting writes fail, it
    /// reopens its store and goes on as secondary.
    fn demote(&mut self, n: usize, newer: &Hello) -> Check {
        self.report.demotions += 1;
        let node = &mut self.nodes[n];
        node.repl.update(|s| s.demoted = Some("demoted".into()));
        let writes = std::mem::take(&mut node.writes);
        for w in writes {
            if let Some(Ok(())) = recv(&w.done) {
                return Err(format!("write {} was answered by a demoted primary without replication", w.key));
            }
            self.report.writes_failed += 1;
            let _ = w.thread.join();
        }
        let node = &mut self.nodes[n];
        node.store = None;
        node.role = Role::Secondary;
        let name = node.name;
        self.note(format!("{name} steps down to secondary"));
        self.start(n)?;
        let node = &self.nodes[n];
        node.repl.learn_primary(newer).save(node.store()?).map_err(|e| format!("keeping the peer record: {e}"))
    }

    // ---- messages ------------------------------------------------------------------

    fn primary_receives(&mut self, p: usize, message: Message) -> Check {
        match message {
            Message::Ack { received_end, durable_end, heartbeat } => {
                let node = &self.nodes[p];
                if let Err(e) = node.repl.acknowledge(received_end, durable_end) {
                    self.reset(p, e);
                    return Ok(());
                }
                let node = &self.nodes[p];
                node.repl.renew_lease(heartbeat);
                let store = node.store()?;
                if store.unreplicated_acks() {
                    store.peer_holds(durable_end);
                    // The committer clears the flag on its own time: wait,
                    // so that what follows does not depend on when.
                    if node.repl.lock().alone_end <= durable_end {
                        let started = Instant::now();
                        while store.unreplicated_acks() {
                            if started.elapsed() > STALL {
                                return Err(format!("{} never cleared its unreplicated-acks flag", node.name));
                            }
                            std::thread::sleep(Duration::from_micros(50));
                        }
                    }
                }
                self.settle(p)
            }
            Message::Heartbeat { .. } => Ok(()),
            other => {
                self.reset(p, format!("unexpected {} from the secondary", kind(&other)));
                Ok(())
            }
        }
    }

    fn secondary_receives(&mut self, s: usize, message: Message) -> Check {
        self.nodes[s].repl.heard_from_primary();
        match message {
            Message::Block { segment, position, block } => {
                let end = position + block.len() as u64;
                let store = self.nodes[s].store()?.clone();
                let applied =
                    store.submit_replicated(LogBlock { segment, position, bytes: block }).and_then(|p| p.wait());
                if let Err(e) = applied {
                    self.reset(s, format!("block at {position} refused: {e}"));
                    return Ok(());
                }
                let repl = &self.nodes[s].repl;
                repl.block_received(position, end);
                let heartbeat = repl.lock().last_heartbeat;
                self.send(s, &Message::Ack { received_end: end, durable_end: end, heartbeat });
                Ok(())
            }
            Message::Heartbeat { log_end, fingerprint, commit_position, seq, .. } => {
                let repl = self.nodes[s].repl.clone();
                let received = repl.primary_heartbeat(log_end, commit_position, seq);
                let info = self.nodes[s].store()?.info();
                if info.durable_end == log_end && info.log_end == log_end && info.fingerprint != fingerprint {
                    return Err(format!(
                        "at position {log_end} the primary's fingerprint is {fingerprint}, {}'s {}: the logs differ",
                        self.nodes[s].name, info.fingerprint
                    ));
                }
                self.send(s, &Message::Ack { received_end: received, durable_end: info.durable_end, heartbeat: seq });
                Ok(())
            }
            other => {
                self.reset(s, format!("unexpected {} from the primary", kind(&other)));
                Ok(())
            }
        }
    }

    /// Collects the answers node `n`'s writers must have by now (the rules
    /// say so), and checks no other writer was answered.
    fn settle(&mut self, n: usize) -> Check {
        let node = &self.nodes[n];
        let (peer_durable, degraded) = {
            let s = node.repl.lock();
            (s.peer_durable, s.degraded)
        };
        let mut i = 0;
        while i < self.nodes[n].writes.len() {
            let node = &mut self.nodes[n];
            let w = &node.writes[i];
            let due = w.end == 0 || degraded || peer_durable >= w.end;
            if !due {
                if let Ok(Ok(())) = w.done.try_recv() {
                    return Err(format!(
                        "write {} (block end {}) was answered on {} before the secondary held it (it holds {peer_durable})",
                        w.key, w.end, node.name
                    ));
                }
                i += 1;
                continue;
            }
            let w = node.writes.remove(i);
            let result = recv(&w.done).ok_or_else(|| format!("write {} on {} was never answered", w.key, node.name))?;
            let _ = w.thread.join();
            match result {
                Ok(()) => {
                    let store = node.store()?;
                    let fingerprint = store
                        .fingerprint_at(w.end)
                        .map_err(|e| e.to_string())?
                        .ok_or_else(|| format!("write {} was answered but {} is not durable there", w.key, w.end))?;
                    let alone = peer_durable < w.end;
                    self.acked.push(Acked { key: w.key, end: w.end, fingerprint, alone, node: n });
                    self.report.writes_acked += 1;
                    self.report.writes_acked_alone += u64::from(alone);
                }
                Err(e) => {
                    self.report.writes_failed += 1;
                    let name = self.nodes[n].name;
                    self.note(format!("write {} on {name} failed: {e}", w.key));
                }
            }
        }
        Ok(())
    }

    // ---- invariants ----------------------------------------------------------------

    fn check(&mut self) -> Check {
        for n in 0..2 {
            if self.nodes[n].store.is_some() {
                self.check_acked_on(n)?;
            }
        }
        self.check_prefix()
    }

    /// Node `n` holds, durably, the last write acknowledged with the peer
    /// holding it (so every earlier one: the fingerprint chains the log),
    /// and the last one it acknowledged alone.
    fn check_acked_on(&self, n: usize) -> Check {
        let store = self.nodes[n].store()?;
        let last_both = self.acked.iter().filter(|a| !a.alone).max_by_key(|a| a.end);
        let last_alone = self.acked.iter().filter(|a| a.alone && a.node == n).max_by_key(|a| a.end);
        for a in [last_both, last_alone].into_iter().flatten() {
            let found = store.fingerprint_at(a.end).map_err(|e| e.to_string())?;
            if found != Some(a.fingerprint) {
                return Err(format!(
                    "acknowledged write {} (log position {}) is not in {}'s durable log (fingerprint there: {found:?}, \
                     acknowledged: {})",
                    a.key, a.end, self.nodes[n].name, a.fingerprint
                ));
            }
        }
        Ok(())
    }

    /// In the same epoch, the secondary's log is a prefix of the primary's.
    fn check_prefix(&self) -> Check {
        let Some(p) = self.primary() else { return Ok(()) };
        let s = 1 - p;
        let (Some(primary), Some(secondary)) = (&self.nodes[p].store, &self.nodes[s].store) else { return Ok(()) };
        let (pi, si) = (primary.info(), secondary.info());
        if self.nodes[s].role != Role::Secondary || pi.epoch != si.epoch || si.durable_end > pi.durable_end {
            return Ok(());
        }
        let theirs = primary.fingerprint_at(si.durable_end).map_err(|e| e.to_string())?;
        if theirs != Some(si.fingerprint) {
            return Err(format!(
                "{}'s log (end {}, {}) is not a prefix of the primary {}'s (there: {theirs:?})",
                self.nodes[s].name, si.durable_end, si.fingerprint, self.nodes[p].name
            ));
        }
        Ok(())
    }

    /// Faults end: the network heals, every node runs (one that exits is
    /// started again); within the convergence time the pair must be
    /// connected with identical logs and every acknowledged write readable
    /// on both.
    fn converge(&mut self) -> Check {
        self.partitioned = false;
        self.net = NetFaults { latency_max: 2, drop: 0, duplicate: 0, reorder: 0, forge: 0 };
        self.note("faults end".into());
        for n in 0..2 {
            if self.nodes[n].store.is_none() {
                self.start(n)?;
            }
        }
        let deadline = self.now + CONVERGE_MS;
        while self.now < deadline {
            self.advance(10)?;
            if self.converged()? {
                return self.check_all_acked();
            }
            // A node that exited is started again, as a service manager would.
            if self.now % 500 < 10 {
                for n in 0..2 {
                    if self.nodes[n].store.is_none() {
                        self.start(n)?;
                    }
                }
            }
        }
        let states: Vec<String> = (0..2)
            .map(|n| {
                let node = &self.nodes[n];
                let info = node.store.as_ref().map(|s| s.info());
                format!(
                    "{}: {} conn {:?} epoch {:?} durable {:?}",
                    node.name,
                    node.role.name(),
                    node.conn,
                    info.as_ref().map(|i| i.epoch),
                    info.as_ref().map(|i| i.durable_end)
                )
            })
            .collect();
        Err(format!(
            "the pair did not converge within {CONVERGE_MS} ms of healing: {}; last refusal: {}",
            states.join("; "),
            self.last_refusal.as_deref().unwrap_or("none")
        ))
    }

    fn converged(&self) -> Result<bool, String> {
        let Some(p) = self.primary() else { return Ok(false) };
        let s = 1 - p;
        let (a, b) = (&self.nodes[p], &self.nodes[s]);
        if b.role != Role::Secondary || a.conn.is_none() || a.conn != b.conn || !a.writes.is_empty() {
            return Ok(false);
        }
        let (pi, si) = (a.store()?.info(), b.store()?.info());
        Ok(pi.durable_end == pi.log_end && si.durable_end == pi.durable_end && si.fingerprint == pi.fingerprint)
    }

    fn check_all_acked(&mut self) -> Check {
        for n in 0..2 {
            let store = self.nodes[n].store()?;
            for a in &self.acked {
                let found = store.get(key_bytes(a.key)).map_err(|e| e.to_string())?;
                if found.as_deref() != Some(&value_of(a.key)[..]) {
                    return Err(format!(
                        "acknowledged write {} is missing on {} at the end",
                        a.key, self.nodes[n].name
                    ));
                }
            }
        }
        self.report.log_end = self.nodes[0].store()?.info().log_end;
        let name = |n: usize| self.nodes[n].name;
        let note = format!("converged: {} and {} identical at {}", name(0), name(1), self.report.log_end);
        self.note(note);
        Ok(())
    }

    /// Stops every thread the run started.
    fn shut_down(&mut self) {
        for node in &mut self.nodes {
            node.repl.update(|s| s.closing = true);
            for w in node.writes.drain(..) {
                let _ = w.thread.join();
            }
            node.store = None;
        }
    }
}

/// A frame's parts without checking its checksum (an attacker rebuilds it).
fn decode_unchecked(frame: &[u8]) -> Option<(u16, u16, Vec<u8>)> {
    let header = frame.get(..crate::protocol::FRAME_HEADER_LEN)?;
    let kind = u16::from_le_bytes([header[4], header[5]]);
    let flags = u16::from_le_bytes([header[6], header[7]]);
    Some((kind, flags, frame[crate::protocol::FRAME_HEADER_LEN..].to_vec()))
}

/// The log of a peer that is not one of the pair's nodes (an attacker, a
/// mismatched node): empty.
struct EmptyLog;

impl LogView for EmptyLog {
    fn durable_end(&self) -> u64 {
        0
    }
    fn fingerprint_at(&self, position: u64) -> lockstep_engine::Result<Option<Fingerprint>> {
        Ok((position == 0).then_some(Fingerprint(0)))
    }
}

fn recv<T>(rx: &crossbeam_channel::Receiver<T>) -> Option<T> {
    rx.recv_timeout(STALL).ok()
}

fn kind(message: &Message) -> &'static str {
    match message {
        Message::Hello(_) => "Hello",
        Message::Auth { .. } => "Auth",
        Message::Verdict(_) => "Verdict",
        Message::Block { .. } => "Block",
        Message::Ack { .. } => "Ack",
        Message::Heartbeat { .. } => "Heartbeat",
        Message::Handover { .. } => "Handover",
    }
}

/// Runs `seeds` on every core, printing progress to `progress`; stops at
/// the first failure. Returns a one-line summary of what ran.
pub fn run_many(seeds: &[u64], steps: u32, progress: &mut dyn std::io::Write) -> Result<String, SimFailure> {
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let failed = std::sync::Mutex::new(None::<SimFailure>);
    let totals = std::sync::Mutex::new(SimReport::default());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst) as usize;
                let Some(&seed) = seeds.get(i) else { break };
                if failed.lock().map_or(true, |f| f.is_some()) {
                    break;
                }
                match run(seed, steps) {
                    Ok(r) => {
                        if let Ok(mut t) = totals.lock() {
                            t.add(&r);
                        }
                    }
                    Err(failure) => {
                        if let Ok(mut f) = failed.lock() {
                            f.get_or_insert(failure);
                        }
                    }
                }
            });
        }
        let mut last = 0;
        while next.load(Ordering::SeqCst) < seeds.len() as u64 && failed.lock().is_ok_and(|f| f.is_none()) {
            std::thread::sleep(Duration::from_millis(200));
            let done = next.load(Ordering::SeqCst).min(seeds.len() as u64);
            if done / 100 > last / 100 {
                let _ = writeln!(progress, "{done} / {} seeds ({:.0} s)", seeds.len(), started.elapsed().as_secs_f64());
                last = done;
            }
        }
    });
    if let Some(failure) = failed.into_inner().ok().flatten() {
        return Err(failure);
    }
    let t = totals.into_inner().unwrap_or_default();
    Ok(format!(
        "{} seeds held every invariant in {:.0} s: {} steps, {:.0} simulated seconds, {} acknowledged writes, {} \
         messages, {} power cuts ({} during a write), {} partitions, {} promotions, {} rejoins ({} refused as \
         possible split brain, resolved by export), {} primaries found behind their secondary (which took over), \
         {} mismatched peers refused, {} attacker connections ignored, {} forged frames refused",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        t.steps,
        t.sim_ms as f64 / 1000.0,
        t.writes_acked,
        t.messages,
        t.crashes,
        t.cut_writes,
        t.partitions,
        t.promotions,
        t.rejoins,
        t.split_brain_refusals,
        t.primary_behind,
        t.mismatches_refused,
        t.strangers_ignored,
        t.forgeries_refused
    ))
}

/// Seeds to run from the environment: `LOCKSTEP_SIM_SEED` (one seed),
/// else `LOCKSTEP_SIM_SEEDS` seeds (default `default`) from
/// `LOCKSTEP_SIM_FIRST_SEED` (default 0).
pub fn seeds_from_env(default: u64) -> Vec<u64> {
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(seed) = var("LOCKSTEP_SIM_SEED") {
        return vec![seed];
    }
    let first = var("LOCKSTEP_SIM_FIRST_SEED").unwrap_or(0);
    (first..first + var("LOCKSTEP_SIM_SEEDS").unwrap_or(default)).collect()
}
