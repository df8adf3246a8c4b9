//! What a node knows about its replication link, shared by the committer
//! (through [`lockstep_engine::Replica`]), the link threads and status.
//!
//! On a primary: the blocks shipped recently (a ring the sender reads from
//! before falling back to the log on disk), the peer's acknowledged
//! watermarks, and the rules of when a write may be answered (sync level,
//! peer-loss policy, the async lag bound). On a secondary: what the primary
//! last reported. Both: link state, refusal, catch-up progress.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use lockstep_engine::{LogBlock, Replica, ReplicaWaker, Replicated};

use crate::protocol::{Hello, PeerLoss, SyncLevel};

/// Bytes of recently shipped blocks kept in memory for the sender; older
/// ones are read back from the log.
pub const SHIP_RING_BYTES_MAX: usize = 32 << 20;
/// With `--sync async`, a write waits once the peer is this many bytes behind.
pub const ASYNC_LAG_BYTES_MAX: u64 = 8 << 20;
/// A degraded primary returns to synchronous mode once the peer is within
/// this many bytes of its log end.
pub const RESYNC_SLACK_BYTES: u64 = 1 << 20;

/// Where the replication rules read the time: the machine's clock, or one
/// the deterministic simulator ([`crate::sim`]) advances by hand.
#[derive(Debug, Clone)]
pub enum Clock {
    Real,
    Simulated { start: Instant, ms: Arc<AtomicU64> },
}

impl Clock {
    /// A simulated clock at 0 ms, and the handle that moves it.
    pub fn simulated() -> (Clock, Arc<AtomicU64>) {
        let ms = Arc::new(AtomicU64::new(0));
        (Clock::Simulated { start: Instant::now(), ms: ms.clone() }, ms)
    }

    pub fn now(&self) -> Instant {
        match self {
            Clock::Real => Instant::now(),
            Clock::Simulated { start, ms } => *start + Duration::from_millis(ms.load(Ordering::SeqCst)),
        }
    }

    /// Time since `then`.
    pub fn since(&self, then: Instant) -> Duration {
        self.now().saturating_duration_since(then)
    }
}

/// What a secondary learned from its primary at the last handshake, kept
/// with its store (the auxiliary file `aux-peer`, JSON) so that it
/// survives a restart: the primary's epoch — a promotion begins a later
/// one, so two primaries never share an epoch — and the position the
/// primary had acknowledged writes up to — a promotion without `--force`
/// refuses while this log ends before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerRecord {
    pub epoch: u64,
    pub commit_position: u64,
    /// The epoch of the last primary that accepted this node as its
    /// secondary (checked that this log continues its own).
    pub accepted_epoch: u64,
}

impl PeerRecord {
    const FILE: &'static str = "peer";

    /// The record kept with `store` (all zeros if there is none).
    pub fn load(store: &lockstep_engine::Store) -> Result<PeerRecord, String> {
        let Some(bytes) = store.read_aux_file(Self::FILE).map_err(|e| e.to_string())? else {
            return Ok(PeerRecord::default());
        };
        let damaged = || {
            format!(
                "{}: the record of the replication peer (aux-{}) is damaged; remove it to start without what it \
                 knew (the primary's epoch and acknowledged position)",
                store.dir().display(),
                Self::FILE
            )
        };
        let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| damaged())?;
        let field = |name: &str| value[name].as_u64().ok_or_else(damaged);
        Ok(PeerRecord {
            epoch: field("epoch")?,
            commit_position: field("commit_position")?,
            accepted_epoch: field("accepted_epoch")?,
        })
    }

    /// Keeps the record with `store`, durably.
    pub fn save(self, store: &lockstep_engine::Store) -> lockstep_engine::Result<()> {
        let json = serde_json::json!({
            "epoch": self.epoch,
            "commit_position": self.commit_position,
            "accepted_epoch": self.accepted_epoch,
        });
        store.write_aux_file(Self::FILE, json.to_string().as_bytes())
    }
}

/// The state of the replication link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Not connected yet, or reconnecting.
    Connecting,
    Connected,
    /// The last handshake was refused (see `refusal`).
    Refused,
    /// The peer could not be reached or stopped answering.
    Unreachable,
}

impl Link {
    pub fn name(self) -> &'static str {
        match self {
            Link::Connecting => "connecting",
            Link::Connected => "connected",
            Link::Refused => "refused",
            Link::Unreachable => "unreachable",
        }
    }
}

/// Catch-up of a peer that was behind when the link came up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUp {
    pub from: u64,
    pub target: u64,
}

impl CatchUp {
    pub fn percent(&self, reached: u64) -> f64 {
        let total = self.target.saturating_sub(self.from);
        if total == 0 {
            return 100.0;
        }
        100.0 * reached.saturating_sub(self.from).min(total) as f64 / total as f64
    }
}

/// Log positions stamped with when they were produced, to tell how old the
/// oldest thing the peer lacks is.
#[derive(Debug, Default)]
pub struct LagClock(VecDeque<(u64, Instant)>);

impl LagClock {
    const MARKS_MAX: usize = 65_536;

    /// Notes that the log reached `end` now.
    pub fn mark(&mut self, end: u64) {
        // When full, keep the oldest marks: the lag is never understated.
        if self.0.len() < Self::MARKS_MAX {
            self.0.push_back((end, Instant::now()));
        }
    }

    /// How long ago the log first passed `reached` (0 if it did not).
    pub fn lag_ms(&mut self, reached: u64) -> u64 {
        while self.0.front().is_some_and(|(end, _)| *end <= reached) {
            self.0.pop_front();
        }
        self.0.front().map_or(0, |(_, at)| at.elapsed().as_millis() as u64)
    }
}

#[derive(Debug)]
pub struct Inner {
    pub link: Link,
    pub refusal: Option<String>,
    /// A refusal before any handshake succeeded: the node must not run.
    pub fatal: Option<String>,
    pub accepted_once: bool,
    /// Recently shipped blocks, contiguous, oldest first.
    pub ring: VecDeque<LogBlock>,
    pub ring_bytes: usize,
    /// The end of the last block shipped (primary) or received (secondary).
    pub shipped_end: u64,
    /// The peer's watermarks (primary: the secondary's acks; secondary: the
    /// primary's reported durable end in `peer_durable`).
    pub peer_received: u64,
    pub peer_durable: u64,
    /// The highest position a writer was answered for without the peer
    /// having it durably (degraded or async).
    pub alone_end: u64,
    pub degraded: bool,
    /// The peer's durable end when the primary went on alone.
    pub degraded_at: u64,
    pub catchup: Option<CatchUp>,
    pub lag: LagClock,
    /// Set when the node shuts down: waiting writers fail.
    pub closing: bool,
    /// The write end the committer is waiting for, and since when (the
    /// peer-loss clock).
    pub waiting_since: Option<(u64, Instant)>,
    pub waker: Option<ReplicaWaker>,
    /// Secondary: the last position where both logs' fingerprints were
    /// compared and found equal, and when.
    pub verified: Option<(u64, Instant)>,
    /// Secondary: a fingerprint mismatch found by that comparison.
    pub divergence: Option<String>,
    /// Primary: the highest log end answered to writers.
    pub answered_end: u64,
    /// Primary: heartbeats sent on this link and not yet acknowledged, with
    /// when they were sent; the last number used.
    pub heartbeats: VecDeque<(u64, Instant)>,
    pub heartbeat_seq: u64,
    /// Primary: the lease, when the secondary runs automatic failover (it
    /// may promote itself once the primary has been silent this long).
    pub pair_lease: Option<Duration>,
    /// Primary: whether it has met its secondary since it started (or
    /// need not: it does not block on peer loss, or it was promoted).
    /// Before, it answers neither reads nor writes: the secondary may have
    /// promoted itself meanwhile (and a block written locally then would
    /// diverge from the new primary's log).
    pub secondary_met: bool,
    /// Primary: the lease lasts until then (from when the last heartbeat
    /// the secondary acknowledged was sent).
    pub lease_until: Option<Instant>,
    /// Secondary: when the primary was last heard from, the number of its
    /// last heartbeat, and the highest position it reported acknowledged.
    pub last_heard: Option<Instant>,
    pub last_heartbeat: u64,
    pub primary_committed: u64,
    /// Set while this node is being demoted: waiting writers fail.
    pub demoted: Option<String>,
    /// Primary: a planned switchover is under way (writes are refused;
    /// the sender hands over once the secondary holds everything).
    pub switching: bool,
    /// Primary: the Handover was sent.
    pub handed_over: bool,
    /// The epoch of the peer at the last handshake.
    pub peer_epoch: u64,
    /// The highest epoch this node knows a primary began (its own store's
    /// aside): a promotion begins a later one.
    pub known_epoch: u64,
    /// The epoch of the last primary that accepted this node as secondary.
    pub accepted_epoch: u64,
    /// Secondary: bytes of blocks applied since the node started.
    pub applied_bytes: u64,
    /// Bytes this node truncated to rejoin since it started.
    pub truncated_bytes: u64,
    /// The last promotion of this node: when it began (unix ms) and how
    /// long it took.
    pub promoted: Option<(u64, Duration)>,
}

/// A node's replication state; implements the engine's [`Replica`] hook.
#[derive(Debug)]
pub struct ReplState {
    pub sync: SyncLevel,
    pub peer_loss: PeerLoss,
    pub clock: Clock,
    inner: Mutex<Inner>,
    changed: Condvar,
}

impl ReplState {
    pub fn new(sync: SyncLevel, peer_loss: PeerLoss) -> ReplState {
        ReplState::with_clock(sync, peer_loss, Clock::Real)
    }

    pub fn with_clock(sync: SyncLevel, peer_loss: PeerLoss, clock: Clock) -> ReplState {
        ReplState {
            sync,
            peer_loss,
            clock,
            inner: Mutex::new(Inner {
                link: Link::Connecting,
                refusal: None,
                fatal: None,
                accepted_once: false,
                ring: VecDeque::new(),
                ring_bytes: 0,
                shipped_end: 0,
                peer_received: 0,
                peer_durable: 0,
                alone_end: 0,
                degraded: false,
                degraded_at: 0,
                catchup: None,
                lag: LagClock::default(),
                closing: false,
                waiting_since: None,
                waker: None,
                verified: None,
                divergence: None,
                answered_end: 0,
                heartbeats: VecDeque::new(),
                heartbeat_seq: 0,
                pair_lease: None,
                // Only a primary that blocks may have a self-promoting peer
                // (the handshake refuses the other combinations).
                secondary_met: peer_loss != PeerLoss::Block,
                lease_until: None,
                last_heard: None,
                last_heartbeat: 0,
                primary_committed: 0,
                demoted: None,
                switching: false,
                handed_over: false,
                peer_epoch: 0,
                known_epoch: 0,
                accepted_epoch: 0,
                applied_bytes: 0,
                truncated_bytes: 0,
                promoted: None,
            }),
            changed: Condvar::new(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the state and wakes everyone waiting on it (the store's
    /// committer too).
    pub fn update<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut s = self.lock();
        let out = f(&mut s);
        if let Some(waker) = &s.waker {
            waker.wake();
        }
        drop(s);
        self.changed.notify_all();
        out
    }

    /// Waits for a change, at most `timeout`.
    pub fn wait<'a>(&self, guard: MutexGuard<'a, Inner>, timeout: Duration) -> MutexGuard<'a, Inner> {
        self.changed.wait_timeout(guard, timeout).unwrap_or_else(PoisonError::into_inner).0
    }

    /// Records the peer's acknowledgement; leaves degraded mode once the
    /// peer is close enough to the log end again. An acknowledgement of
    /// more than was shipped is refused (the link must close): nothing the
    /// peer says may move a watermark past what exists.
    pub fn acknowledge(&self, received: u64, durable: u64) -> Result<(), String> {
        let shipped = self.lock().shipped_end;
        if received > shipped || durable > received {
            return Err(format!(
                "the secondary acknowledged position {received} (durable {durable}), beyond what this primary \
                 shipped ({shipped})"
            ));
        }
        self.update(|s| {
            s.peer_received = s.peer_received.max(received).max(durable);
            s.peer_durable = s.peer_durable.max(durable);
            if let Some(c) = s.catchup {
                if s.peer_durable >= c.target {
                    tracing::info!("the secondary caught up: {} bytes from position {}", c.target - c.from, c.from);
                    s.catchup = None;
                }
            }
            // Back in step: the peer holds everything, or it stored something
            // written since it was lost (a stale ack proves nothing) and is
            // close to the end.
            let resynced = s.peer_durable >= s.shipped_end
                || (s.peer_durable > s.degraded_at && s.peer_durable + RESYNC_SLACK_BYTES >= s.shipped_end);
            if s.degraded && resynced {
                tracing::warn!(
                    "the secondary is back in step at position {}: writes wait for it again (synchronous mode)",
                    s.peer_durable
                );
                s.degraded = false;
            }
        });
        Ok(())
    }

    /// The secondary acknowledged heartbeat `seq`: the lease lasts until
    /// `lease` after that heartbeat was sent.
    pub fn renew_lease(&self, seq: u64) {
        let mut s = self.lock();
        let Some(lease) = s.pair_lease else { return };
        while let Some(&(n, sent)) = s.heartbeats.front() {
            if n > seq {
                break;
            }
            s.heartbeats.pop_front();
            if n == seq {
                s.lease_until = Some(s.lease_until.map_or(sent + lease, |t| t.max(sent + lease)));
            }
        }
    }

    // ---- transitions shared by the node's threads and the simulator ---------------

    /// A handshake with `peer` succeeded (either role).
    pub fn accepted(&self, peer: &Hello) {
        self.update(|s| {
            s.peer_epoch = peer.epoch;
            s.link = Link::Connected;
            s.refusal = None;
            s.accepted_once = true;
        });
    }

    /// (Primary.) A handshake with `peer` succeeded; this log is durable up
    /// to `durable`.
    pub fn primary_session_started(&self, peer: &Hello, durable: u64) {
        self.update(|s| {
            s.peer_durable = peer.log_end;
            s.peer_received = peer.log_end;
            s.catchup = (peer.log_end < durable).then_some(CatchUp { from: peer.log_end, target: durable });
            s.heartbeats.clear();
            // Still a secondary after a Handover was sent: it never arrived;
            // send it again on this link.
            if s.switching && s.handed_over {
                tracing::warn!("switchover: the secondary did not take over; handing over again");
                s.handed_over = false;
            }
            // Once a secondary that may promote itself was met, the lease
            // rules this primary until it shuts down, and it never answers
            // alone again: a promoted primary waiting for its old primary to
            // catch up goes back to synchronous mode at once (writes wait for
            // the catch-up), or that secondary could promote itself over
            // writes only this node holds (split brain; found by the
            // simulation, seed 8).
            if peer.auto_failover {
                s.pair_lease = Some(Duration::from_millis(peer.lease_ms));
                s.degraded = false;
            }
            s.secondary_met = true;
        });
    }

    /// (Primary.) Numbers the next heartbeat and notes when it was sent (the
    /// lease runs from there); returns its number and the highest position
    /// answered to writers.
    pub fn heartbeat_sent(&self) -> (u64, u64) {
        let now = self.clock.now();
        self.update(|s| {
            s.heartbeat_seq += 1;
            s.heartbeats.push_back((s.heartbeat_seq, now));
            if s.heartbeats.len() > 1024 {
                s.heartbeats.pop_front();
            }
            (s.heartbeat_seq, s.answered_end)
        })
    }

    /// (Primary.) Waits up to `wait` until the node has met its secondary
    /// since it started (see [`Inner::secondary_met`]); whether it has.
    pub fn wait_until_secondary_met(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut s = self.lock();
        while !s.secondary_met {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self.wait(s, left);
        }
        true
    }

    /// (Primary.) Whether it may answer reads: when its secondary does not
    /// promote itself, or while the lease lasts; never before it knows which
    /// (see [`Inner::secondary_met`]).
    pub fn lease_held(&self) -> bool {
        let s = self.lock();
        match (s.secondary_met, s.pair_lease, s.lease_until) {
            (false, _, _) => false,
            (true, Some(_), until) => until.is_some_and(|t| t > self.clock.now()),
            (true, None, _) => true,
        }
    }

    /// The node opened `store`; `record` is the peer record kept with it.
    pub fn store_opened(&self, store: &lockstep_engine::Store, record: PeerRecord) {
        let log_end = store.info().log_end;
        // Answers given alone before a restart: where they end is not
        // known, so the whole log counts (as the store assumes too).
        let alone = store.unreplicated_acks();
        self.update(|s| {
            s.shipped_end = log_end;
            if alone {
                s.alone_end = s.alone_end.max(log_end);
            }
            s.primary_committed = s.primary_committed.max(record.commit_position);
            s.known_epoch = s.known_epoch.max(record.epoch);
            s.accepted_epoch = s.accepted_epoch.max(record.accepted_epoch);
        });
    }

    /// (Secondary.) A handshake with the primary `peer` succeeded; this log
    /// is durable up to `own`. Returns what to keep in the peer record.
    pub fn secondary_session_started(&self, peer: &Hello, own: u64) -> PeerRecord {
        let now = self.clock.now();
        self.update(|s| {
            s.peer_durable = peer.log_end;
            s.shipped_end = own;
            s.catchup = (own < peer.log_end).then_some(CatchUp { from: own, target: peer.log_end });
            s.lag.mark(peer.log_end);
            s.last_heard = Some(now);
            s.last_heartbeat = 0;
            s.accepted_epoch = s.accepted_epoch.max(peer.epoch);
        });
        self.learn_primary(peer)
    }

    /// What the Hello of the primary `peer` says about it: its epoch, and
    /// the position it acknowledged writes up to. Returns what to keep in
    /// the peer record.
    pub fn learn_primary(&self, peer: &Hello) -> PeerRecord {
        self.update(|s| {
            s.primary_committed = s.primary_committed.max(peer.commit_position);
            s.known_epoch = s.known_epoch.max(peer.epoch);
            PeerRecord { epoch: s.known_epoch, commit_position: s.primary_committed, accepted_epoch: s.accepted_epoch }
        })
    }

    /// (Secondary.) Why promoting this node (its store at `epoch`, durable
    /// up to `durable`) could lose acknowledged writes, if it could: it
    /// lacks writes the primary reported acknowledged, or it learned of a
    /// newer primary (stepping down) but was never accepted by it since —
    /// its own tail may hold what that primary discarded, and that
    /// primary's writes are missing. `--force` promotes anyway.
    pub fn promotion_risk(&self, epoch: u64, durable: u64) -> Option<String> {
        let s = self.lock();
        if durable < s.primary_committed {
            return Some(format!(
                "this secondary holds the log up to position {durable}, but the primary reported writes \
                 acknowledged up to {}: promoting it would lose them; let it catch up, or promote with --force to \
                 accept the loss",
                s.primary_committed
            ));
        }
        if s.known_epoch > epoch.max(s.accepted_epoch) {
            return Some(format!(
                "this node learned that a primary of epoch {} exists (this store is at epoch {epoch}) but has not \
                 caught up with it since: promoting it would discard that primary's writes; start that primary so \
                 this node rejoins it, or promote with --force to accept the loss",
                s.known_epoch
            ));
        }
        None
    }

    /// (Secondary.) Something arrived from the primary.
    pub fn heard_from_primary(&self) {
        // The failover watcher polls this; nobody needs waking.
        self.lock().last_heard = Some(self.clock.now());
    }

    /// (Secondary.) The primary lost blocks this node holds (see
    /// `handshake::primary_lost_blocks`): it is refused, and counts as
    /// silent from now on, so that automatic failover promotes this node
    /// after the lease (it holds everything the primary has).
    pub fn primary_behind(&self, why: &str) {
        let now = self.clock.now();
        self.update(|s| {
            s.last_heard.get_or_insert(now);
            s.refusal = Some(why.to_string());
        });
    }

    /// (Secondary.) Whether the primary has been silent for `wait` since
    /// it was last heard (never heard: not silent).
    pub fn primary_silent_for(&self, wait: Duration) -> bool {
        self.lock().last_heard.is_some_and(|t| self.clock.since(t) >= wait)
    }

    /// (Secondary.) A heartbeat from the primary; returns the end of what
    /// was received.
    pub fn primary_heartbeat(&self, log_end: u64, commit_position: u64, seq: u64) -> u64 {
        self.update(|s| {
            s.peer_durable = s.peer_durable.max(log_end);
            s.lag.mark(log_end);
            s.last_heartbeat = seq;
            s.primary_committed = s.primary_committed.max(commit_position);
            s.shipped_end
        })
    }

    /// (Secondary.) A block from `position` to `end` was handed to the store.
    pub fn block_received(&self, position: u64, end: u64) {
        self.update(|s| {
            s.shipped_end = end;
            s.peer_durable = s.peer_durable.max(end);
            s.lag.mark(end);
            s.applied_bytes += end - position;
        });
    }

    /// (Primary.) How often heartbeats go out: at least four per lease.
    pub fn heartbeat_interval(&self, default: Duration) -> Duration {
        self.lock().pair_lease.map_or(default, |l| default.min(l / 4))
    }

    /// This secondary became the primary of the next epoch, its log ending
    /// at `log_end`: it answers alone (degraded) until a secondary catches
    /// up. `began_ms` (unix) and `took` describe the promotion for status.
    pub fn promoted(&self, log_end: u64, began_ms: u64, took: Duration) {
        self.update(|s| {
            s.degraded = true;
            s.degraded_at = log_end;
            s.link = Link::Connecting;
            s.refusal = None;
            s.peer_durable = 0;
            s.peer_received = 0;
            s.ring.clear();
            s.ring_bytes = 0;
            s.shipped_end = log_end;
            s.catchup = None;
            s.pair_lease = None;
            // The newest epoch answers without a lease until a secondary
            // that may promote itself joins.
            s.secondary_met = true;
            s.lease_until = None;
            s.last_heard = None;
            s.switching = false;
            s.handed_over = false;
            s.promoted = Some((began_ms, took));
        });
    }

    /// Bytes answered to writers that the peer does not hold durably.
    pub fn exposure(s: &Inner) -> u64 {
        s.alone_end.saturating_sub(s.peer_durable)
    }
}

impl Replica for ReplState {
    fn ship(&self, block: &LogBlock) {
        // Called by the committer: wakes the sender, not the committer.
        let mut s = self.lock();
        let end = block.position + block.bytes.len() as u64;
        s.shipped_end = end;
        s.lag.mark(end);
        s.ring_bytes += block.bytes.len();
        s.ring.push_back(block.clone());
        while s.ring_bytes > SHIP_RING_BYTES_MAX {
            let Some(old) = s.ring.pop_front() else { break };
            s.ring_bytes -= old.bytes.len();
        }
        drop(s);
        self.changed.notify_all();
    }

    fn wait_replicated(&self, end: u64) -> Result<Replicated, String> {
        let mut s = self.lock();
        loop {
            match self.check(&mut s, end)? {
                None => s = self.wait(s, Duration::from_millis(5)),
                Some(r) => return Ok(r),
            }
        }
    }

    fn replicated(&self, end: u64) -> Result<Option<Replicated>, String> {
        self.check(&mut self.lock(), end)
    }

    fn set_waker(&self, waker: ReplicaWaker) {
        self.update(|s| s.waker = Some(waker));
    }
}

impl ReplState {
    /// Whether the write ending at `end` may be answered now, and up to
    /// where; `None` while it must wait. Starts the peer-loss clock the
    /// first time it is asked about `end`.
    fn check(&self, s: &mut Inner, end: u64) -> Result<Option<Replicated>, String> {
        if s.closing {
            return Err("the node shut down before the secondary acknowledged the write".into());
        }
        if let Some(reason) = &s.demoted {
            return Err(reason.clone());
        }
        let acknowledged = match self.sync {
            SyncLevel::Durable => s.peer_durable,
            SyncLevel::Received => s.peer_received,
            SyncLevel::Async => s.peer_durable + ASYNC_LAG_BYTES_MAX,
        };
        if acknowledged >= end {
            let answerable = end.max(acknowledged.min(s.shipped_end));
            // Only a durable acknowledgement means the peer holds it all.
            let alone = self.sync != SyncLevel::Durable;
            if alone {
                s.alone_end = s.alone_end.max(answerable);
            }
            s.answered_end = s.answered_end.max(answerable);
            return Ok(Some(Replicated { end: answerable, alone }));
        }
        if s.degraded {
            s.alone_end = s.alone_end.max(end);
            s.answered_end = s.answered_end.max(end);
            return Ok(Some(Replicated { end, alone: true }));
        }
        let PeerLoss::Degrade { after_ms } = self.peer_loss else {
            return Ok(None);
        };
        let since = match s.waiting_since {
            Some((at, since)) if at == end => since,
            _ => {
                s.waiting_since = Some((end, self.clock.now()));
                return Ok(None);
            }
        };
        if self.clock.since(since) < Duration::from_millis(after_ms) {
            return Ok(None);
        }
        tracing::warn!(
            "no acknowledgement from the secondary for {after_ms} ms (link {}): continuing alone from position {}; \
             the unreplicated range shows as exposure in status",
            s.link.name(),
            s.peer_durable
        );
        s.degraded = true;
        s.degraded_at = s.peer_durable;
        s.alone_end = s.alone_end.max(end);
        s.answered_end = s.answered_end.max(end);
        Ok(Some(Replicated { end, alone: true }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn block(position: u64, len: usize) -> LogBlock {
        LogBlock { segment: 1, position, bytes: Bytes::from(vec![0u8; len]) }
    }

    #[test]
    fn durable_waits_for_the_ack_and_degrade_goes_on_alone_then_resyncs() {
        let state = std::sync::Arc::new(ReplState::new(SyncLevel::Durable, PeerLoss::Degrade { after_ms: 50 }));
        state.ship(&block(0, 100));
        let waiter = {
            let state = state.clone();
            std::thread::spawn(move || state.wait_replicated(100))
        };
        std::thread::sleep(Duration::from_millis(10));
        state.acknowledge(100, 100).expect("ack");
        assert_eq!(waiter.join().expect("thread"), Ok(Replicated { end: 100, alone: false }));
        assert_eq!(ReplState::exposure(&state.lock()), 0);

        // No ack: after 50 ms the write is answered alone, as exposure.
        state.ship(&block(100, 100));
        let started = Instant::now();
        assert_eq!(state.wait_replicated(200), Ok(Replicated { end: 200, alone: true }));
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(state.lock().degraded);
        assert_eq!(ReplState::exposure(&state.lock()), 100);
        state.acknowledge(100, 100).expect("ack");
        assert!(state.lock().degraded, "a stale acknowledgement ended degraded mode");
        state.acknowledge(200, 200).expect("ack");
        assert!(!state.lock().degraded);
        assert_eq!(ReplState::exposure(&state.lock()), 0);
    }

    #[test]
    fn block_waits_until_closing_and_async_allows_a_bounded_lag() {
        let state = ReplState::new(SyncLevel::Durable, PeerLoss::Block);
        state.update(|s| s.closing = true);
        assert!(state.wait_replicated(1).is_err());

        let state = std::sync::Arc::new(ReplState::new(SyncLevel::Async, PeerLoss::Block));
        state.ship(&block(0, ASYNC_LAG_BYTES_MAX as usize + 1));
        assert_eq!(
            state.wait_replicated(ASYNC_LAG_BYTES_MAX),
            Ok(Replicated { end: ASYNC_LAG_BYTES_MAX, alone: true })
        );
        assert_eq!(ReplState::exposure(&state.lock()), ASYNC_LAG_BYTES_MAX);
        let waiter = {
            let state = state.clone();
            std::thread::spawn(move || state.wait_replicated(ASYNC_LAG_BYTES_MAX + 1))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "the async lag bound was not enforced");
        state.acknowledge(1, 1).expect("ack");
        assert_eq!(waiter.join().expect("thread"), Ok(Replicated { end: ASYNC_LAG_BYTES_MAX + 1, alone: true }));
    }

    /// Found by the simulation (seed 0): a primary restarted while its
    /// secondary was unreachable answered reads — the secondary could have
    /// promoted itself meanwhile (two primaries answering).
    #[test]
    fn a_blocking_primary_reads_only_once_it_knows_its_lease() {
        let (clock, ms) = Clock::simulated();
        let state = ReplState::with_clock(SyncLevel::Durable, PeerLoss::Block, clock);
        assert!(!state.lease_held(), "a primary that never met its secondary answers reads");
        let mut peer = Hello::example(crate::protocol::Role::Secondary);
        state.primary_session_started(&peer, 0);
        assert!(state.lease_held(), "a secondary that does not promote itself needs no lease");

        let state = ReplState::with_clock(SyncLevel::Durable, PeerLoss::Block, state.clock.clone());
        peer.auto_failover = true;
        state.primary_session_started(&peer, 0);
        assert!(!state.lease_held(), "no heartbeat acknowledged yet");
        let (seq, _) = state.heartbeat_sent();
        state.renew_lease(seq);
        assert!(state.lease_held());
        ms.store(peer.lease_ms, Ordering::SeqCst);
        assert!(!state.lease_held(), "the lease outlived its term");

        let degrading = ReplState::new(SyncLevel::Durable, PeerLoss::Degrade { after_ms: 100 });
        assert!(degrading.lease_held(), "a degrading primary never has a self-promoting peer");
    }

    /// Found by the simulation: a restarted secondary forgot its primary,
    /// so an unforced promotion could reuse the other site's epoch or
    /// discard the writes of a primary it had stepped down for.
    #[test]
    fn what_a_secondary_knows_of_its_primary_survives_a_restart_and_guards_promotion() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = lockstep_engine::Options {
            segment_size: lockstep_engine::format::SEGMENT_SIZE_MIN,
            ..lockstep_engine::Options::default()
        };
        let store = lockstep_engine::Store::open(dir.path(), options.clone()).expect("open");
        assert_eq!(PeerRecord::load(&store), Ok(PeerRecord::default()));
        let state = ReplState::new(SyncLevel::Durable, PeerLoss::Block);
        let mut primary = Hello::example(crate::protocol::Role::Primary);
        (primary.epoch, primary.commit_position) = (3, 500);
        // Stepped down on meeting it: known, not accepted.
        state.learn_primary(&primary).save(&store).expect("save");
        drop(store);

        let store = lockstep_engine::Store::open(dir.path(), options).expect("reopen");
        let state = ReplState::new(SyncLevel::Durable, PeerLoss::Block);
        state.store_opened(&store, PeerRecord::load(&store).expect("load"));
        let risk = state.promotion_risk(1, 600).expect("a stepped-down node is not promotable");
        assert!(risk.contains("epoch 3"), "{risk}");
        assert!(state.promotion_risk(1, 400).expect("behind").contains("acknowledged up to 500"));
        // Accepted by that primary since: promotable.
        state.secondary_session_started(&primary, 600).save(&store).expect("save");
        assert_eq!(state.promotion_risk(1, 600), None);
        assert_eq!(store.promote_past(state.lock().known_epoch).expect("promote"), 4);
        // A damaged record stops the node rather than being ignored.
        std::fs::write(dir.path().join("aux-peer"), b"{not json").expect("damage");
        assert!(PeerRecord::load(&store).expect_err("damaged").contains("damaged"));
    }

    /// Reported from outside: a relay forged Acks and the primary answered
    /// a durable write the secondary never received. Besides the MAC, no
    /// acknowledgement may reach beyond what was shipped.
    #[test]
    fn an_acknowledgement_beyond_what_was_shipped_is_refused() {
        let state = ReplState::new(SyncLevel::Durable, PeerLoss::Block);
        state.ship(&block(0, 100));
        let err = state.acknowledge(1 << 40, 1 << 40).expect_err("beyond what was shipped");
        assert!(err.contains("beyond what this primary shipped (100)"), "{err}");
        assert_eq!(state.lock().peer_durable, 0, "a refused acknowledgement moved the watermark");
        assert!(state.acknowledge(100, 101).is_err(), "durable beyond received");
        assert_eq!(state.acknowledge(100, 100), Ok(()));
        assert_eq!(state.lock().peer_durable, 100);
    }

    #[test]
    fn the_ring_keeps_recent_blocks_within_its_byte_bound() {
        let state = ReplState::new(SyncLevel::Durable, PeerLoss::Block);
        let len = 1 << 20;
        for i in 0..40u64 {
            state.ship(&block(i * len as u64, len));
        }
        let s = state.lock();
        assert!(s.ring_bytes <= SHIP_RING_BYTES_MAX);
        assert_eq!(s.ring.back().map(|b| b.position), Some(39 * len as u64));
        assert_eq!(s.shipped_end, 40 * len as u64);
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_position_not_reached() {
        let mut clock = LagClock::default();
        clock.mark(10);
        std::thread::sleep(Duration::from_millis(20));
        clock.mark(20);
        assert!(clock.lag_ms(0) >= 20);
        assert!(clock.lag_ms(10) < 20);
        assert_eq!(clock.lag_ms(20), 0);
    }
}
