//! A lockstep node: a [`Store`] plus its replication link and (for
//! `lockstep serve`) the client listener. The primary dials the secondary's
//! replication address, both run the handshake on every connect, and the
//! primary ships each commit block as it is built; the secondary verifies,
//! writes and acknowledges it. See docs/OPERATIONS.md for running a pair.
//!
//! Threads: the primary has one dialer (which is also the sender of the
//! current session) plus an acknowledgement reader per session; the
//! secondary has one listener plus a reader and an acknowledger per
//! session; the client listener has a thread per client connection.

use std::io::{BufWriter, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lockstep_engine::{Error, LogBlock, Options, Store, StoreInfo, WriteBatch, FORMAT_VERSION};

use crate::auth::AuthKey;
use crate::handshake::{check_rejoin, describe, RejoinCheck};
use crate::protocol::{
    read_frame, read_message_frame, Hello, Message, PeerLoss, Request, Response, Role, SyncLevel, FRAME_PAYLOAD_MAX,
    KIND_ACK, KIND_BLOCK, KIND_HANDOVER, KIND_HEARTBEAT, NONCE_LEN, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN,
    SCAN_PAGE_ITEMS_MAX,
};
use crate::repl::{Link, PeerRecord, ReplState};
use crate::session::channel::{Opener, Sealer};
use crate::session::handshake::{Handshake, Outcome};

/// Idle links carry a heartbeat this often.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// A link that carried nothing for this long is dead.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnection backoff: from the first to the last value, doubling.
pub const RECONNECT_BACKOFF: (Duration, Duration) = (Duration::from_millis(20), Duration::from_millis(100));
/// After a refusal the primary retries no faster than this.
pub const REFUSED_RETRY: Duration = Duration::from_secs(2);
/// The handshake must finish within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// On shutdown, writes in flight get this long to be acknowledged.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Blocks sent per batch, at most (bytes).
const SEND_BATCH_BYTES: usize = 1 << 20;
/// Inbound replication connections in their handshake at once, at most;
/// more are closed at once (a flood of strangers cannot pile up threads).
pub const INBOUND_HANDSHAKES_MAX: usize = 8;
/// Exit code of a write sent to a secondary (sysexits EX_NOPERM).
pub const EXIT_NOT_PRIMARY: u8 = 77;

/// How to run a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub dir: PathBuf,
    pub role: Role,
    /// This node's replication listen address (the secondary listens on it).
    pub repl: String,
    /// The other node's replication address (the primary dials it).
    pub peer: String,
    /// Where to serve the client protocol, if anywhere.
    pub client: Option<String>,
    pub sync: SyncLevel,
    pub peer_loss: PeerLoss,
    pub auth_key: Option<AuthKey>,
    /// (Secondary.) Promote itself when the primary has been silent longer
    /// than `lease` plus half of it.
    pub auto_failover: bool,
    /// The primary's lease, renewed by the secondary's acknowledgements,
    /// when the pair runs automatic failover.
    pub lease: Duration,
    /// Where the store's files live (`None`: the real file system). Tests
    /// inject faults through it.
    pub storage: Option<Arc<dyn lockstep_engine::storage::Storage>>,
}

/// The default `--lease`.
pub const LEASE_DEFAULT: Duration = Duration::from_millis(300);

impl NodeConfig {
    /// A node of `role` on the store in `dir`, listening for its peer on
    /// `repl` (port 0 picks one) and dialing `peer` when primary; no client
    /// listener, `durable`, `block`, no key, no automatic failover.
    pub fn new(dir: impl Into<PathBuf>, role: Role, repl: impl Into<String>, peer: impl Into<String>) -> NodeConfig {
        NodeConfig {
            dir: dir.into(),
            role,
            repl: repl.into(),
            peer: peer.into(),
            client: None,
            sync: SyncLevel::Durable,
            peer_loss: PeerLoss::Block,
            auth_key: None,
            auto_failover: false,
            lease: LEASE_DEFAULT,
            storage: None,
        }
    }
}

/// Why a node could not start or do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] Error),
    #[error("this node is the secondary: it serves reads only; write to the primary (its replication peer is {peer})")]
    NotPrimary { peer: String },
    #[error("the peer was refused: {0}")]
    Refused(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    /// The node cannot do this now (promotion of a lagging secondary, reads
    /// on a primary whose lease expired, ...).
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    InvalidArgument(String),
}

impl NodeError {
    pub fn exit_code(&self) -> u8 {
        match self {
            NodeError::Store(e) => e.exit_code(),
            NodeError::NotPrimary { .. } => EXIT_NOT_PRIMARY,
            NodeError::Refused(_) => 76,
            NodeError::Io { .. } => 74,
            NodeError::Unavailable(_) => 69,
            NodeError::InvalidArgument(_) => 64,
        }
    }
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
    let context = context.into();
    move |source| NodeError::Io { context, source }
}

/// State shared by the node's threads.
#[derive(Debug)]
struct Shared {
    config: NodeConfig,
    /// Replaced when the log is truncated to rejoin a promoted peer.
    store: RwLock<Arc<Store>>,
    /// Changes on promotion and demotion.
    role: Mutex<Role>,
    /// The secondary's current replication connection (a promotion ends it).
    session: Mutex<Option<TcpStream>>,
    /// Held by the secondary's running session: a newly accepted one waits
    /// for the old one to end before it applies anything.
    session_running: Mutex<()>,
    /// Inbound connections still in their handshake.
    inbound: AtomicUsize,
    repl: Arc<ReplState>,
    stop: AtomicBool,
    /// Client requests being answered.
    busy: AtomicUsize,
    /// Open connections (replication and client), shut down on stop.
    sockets: Mutex<Vec<TcpStream>>,
}

/// A running node. Dropping it shuts it down; [`Node::shutdown`] reports
/// how that went.
#[derive(Debug)]
pub struct Node {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    client_addr: Option<SocketAddr>,
    repl_addr: Option<SocketAddr>,
}

/// Protocol versions this build speaks. Debug builds let tests pose as
/// another build (`LOCKSTEP_TEST_PROTOCOL_RANGE=MIN..MAX`); release builds
/// ignore it.
fn protocol_range() -> (u16, u16) {
    #[cfg(debug_assertions)]
    if let Ok(range) = std::env::var("LOCKSTEP_TEST_PROTOCOL_RANGE") {
        if let Some((min, max)) = range.split_once("..").and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?))) {
            return (min, max);
        }
    }
    (PROTOCOL_VERSION_MIN, PROTOCOL_VERSION)
}

/// The format version this node announces (debug builds: overridable with
/// `LOCKSTEP_TEST_FORMAT_VERSION`, to test the refusal).
fn format_version() -> u32 {
    #[cfg(debug_assertions)]
    if let Some(v) = std::env::var("LOCKSTEP_TEST_FORMAT_VERSION").ok().and_then(|v| v.parse().ok()) {
        return v;
    }
    FORMAT_VERSION
}

pub use crate::handshake::settings_hash;

/// How the node opens its store: existing only, with the replica hook.
fn store_options(config: &NodeConfig, repl: &Arc<ReplState>) -> Options {
    let defaults = Options::default();
    Options {
        create_if_missing: false,
        replica: Some(repl.clone()),
        storage: config.storage.clone().unwrap_or(defaults.storage.clone()),
        ..defaults
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn bind(addr: &str, what: &str) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr).map_err(io_error(format!("listening for {what} on {addr}")))
}

impl Node {
    /// Opens the store in `config.dir` (it must exist: `lockstep init`),
    /// binds the listeners and starts replication. Returns at once; an
    /// unreachable peer is reported in status, a refused one in
    /// [`Node::fatal`].
    pub fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let repl = Arc::new(ReplState::new(config.sync, config.peer_loss));
        // Both roles: a secondary writes only received blocks, which are not
        // shipped, and a promoted one needs the hook from its first write.
        let store = Arc::new(Store::open(&config.dir, store_options(&config, &repl))?);
        let record = PeerRecord::load(&store)
            .map_err(|reason| NodeError::Io { context: reason, source: std::io::ErrorKind::InvalidData.into() })?;
        repl.store_opened(&store, record);
        // A primary listens too: a peer that dials it (another primary) is
        // refused by the handshake rather than left unanswered.
        let repl_listener = bind(&config.repl, "replication")?;
        let client_listener = config.client.as_deref().map(|a| bind(a, "clients")).transpose()?;
        let local = |l: &TcpListener| l.local_addr().map_err(io_error("reading a listen address"));
        let repl_addr = Some(local(&repl_listener)?);
        let client_addr = client_listener.as_ref().map(local).transpose()?;
        let role = config.role;
        let shared = Arc::new(Shared {
            config,
            store: RwLock::new(store),
            role: Mutex::new(role),
            session: Mutex::new(None),
            session_running: Mutex::new(()),
            inbound: AtomicUsize::new(0),
            repl,
            stop: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            sockets: Mutex::new(Vec::new()),
        });
        let mut threads = Vec::new();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name.into()).spawn(f).map_err(io_error("starting a thread"))
        };
        let s = shared.clone();
        threads.push(spawn("lockstep-repl-listen", Box::new(move || s.listen_replication(repl_listener)))?);
        // The dialer idles while the node is a secondary (it may be promoted).
        let s = shared.clone();
        threads.push(spawn("lockstep-repl-dial", Box::new(move || s.dial()))?);
        if shared.config.auto_failover {
            let s = shared.clone();
            threads.push(spawn("lockstep-failover", Box::new(move || s.watch_primary()))?);
        }
        if let Some(listener) = client_listener {
            let s = shared.clone();
            threads.push(spawn("lockstep-client-listen", Box::new(move || s.listen_clients(listener)))?);
        }
        Ok(Node { shared, threads, client_addr, repl_addr })
    }

    /// The store's extent, ids and fingerprint. (The store itself is not
    /// handed out: a write that bypassed the node would diverge a secondary.)
    pub fn info(&self) -> StoreInfo {
        self.shared.store().info()
    }

    /// The bound client address (useful when started on port 0).
    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.client_addr
    }

    /// The bound replication address of a secondary.
    pub fn repl_addr(&self) -> Option<SocketAddr> {
        self.repl_addr
    }

    /// A refusal that happened before any handshake succeeded: a node
    /// that cannot trust its peer must not run (`lockstep serve` exits 76).
    pub fn fatal(&self) -> Option<String> {
        self.shared.repl.lock().fatal.clone()
    }

    /// Why the store can no longer write durably (a write or fsync failed),
    /// if so. Such a node stops heartbeats and lease renewals (a primary;
    /// its secondary takes over) and applies nothing more (a secondary);
    /// `lockstep serve` exits 74.
    pub fn poisoned(&self) -> Option<String> {
        self.shared.poisoned()
    }

    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), NodeError> {
        self.shared.writable()?;
        Ok(self.shared.store().put(key, value)?)
    }

    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<(), NodeError> {
        self.shared.writable()?;
        Ok(self.shared.store().delete(key)?)
    }

    pub fn write(&self, batch: WriteBatch) -> Result<(), NodeError> {
        self.shared.writable()?;
        Ok(self.shared.store().write(batch)?)
    }

    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<bytes::Bytes>, NodeError> {
        self.shared.readable()?;
        Ok(self.shared.store().get(key)?)
    }

    /// Makes this secondary the primary of the next epoch (see
    /// docs/OPERATIONS.md, "Fail over"). Without `force`, refuses if it
    /// knows it lacks writes the primary reported acknowledged.
    pub fn promote(&self, force: bool) -> Result<u64, NodeError> {
        self.shared.promote(force)
    }

    /// Key/value pairs whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Result<lockstep_engine::Scan, NodeError> {
        self.shared.readable()?;
        Ok(self.shared.store().scan_prefix(prefix)?)
    }

    /// The node's status: the JSON object `lockstep status --json` prints.
    pub fn status(&self) -> serde_json::Value {
        self.shared.status()
    }

    /// Stops serving: clients finish their current request, writes in
    /// flight get [`SHUTDOWN_GRACE`] to be acknowledged (then fail: their
    /// bytes are durable locally but were never acknowledged), replication
    /// stops, and the store is synced and closed.
    pub fn shutdown(mut self) -> Result<(), NodeError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), NodeError> {
        if self.shared.stop.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        // Clients send no new requests; the current ones finish.
        self.shared.shutdown_sockets(Shutdown::Read);
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while self.shared.busy.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.shared.repl.update(|s| s.closing = true);
        self.shared.shutdown_sockets(Shutdown::Both);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let store = Arc::get_mut(&mut self.shared)
            .map(|s| s.store.get_mut().unwrap_or_else(PoisonError::into_inner))
            .and_then(Arc::get_mut);
        let Some(store) = store else {
            tracing::error!("a thread of the node still holds the store; it closes when that thread ends");
            return Ok(());
        };
        match store.shutdown() {
            Err(Error::Poisoned { reason }) if reason.contains(CLOSING_REASON) => {
                tracing::warn!("writes still waiting for the secondary at shutdown were failed (not acknowledged)");
                Ok(())
            }
            other => Ok(other?),
        }
    }
}

/// Where a split-brain refusal records the divergence point for
/// `lockstep rejoin`.
pub const DIVERGENCE_FILE: &str = "divergence.json";

/// Part of the reason writers get when the node stops before their write
/// was acknowledged by the secondary (see `ReplState::wait_replicated`).
const CLOSING_REASON: &str = "shut down before the secondary acknowledged";

impl Drop for Node {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!("shutting the node down: {e}");
        }
    }
}

/// Counts a client request in progress for as long as it lives.
struct Busy<'a>(&'a AtomicUsize);

impl<'a> Busy<'a> {
    fn enter(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Busy(n)
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a replication session ended.
enum SessionEnd {
    Io(std::io::Error),
    Refused(String),
    /// A peer that did not authenticate (or an inbound connection that
    /// never finished its handshake): nothing changes.
    Stranger(String),
    Stopped,
    /// Over for a reason that calls for an immediate new connection (the
    /// peer truncated its tail to rejoin, or this node was demoted).
    Retry(String),
}

impl From<std::io::Error> for SessionEnd {
    fn from(e: std::io::Error) -> Self {
        SessionEnd::Io(e)
    }
}

fn invalid(what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// Reads one message of an established link: its kind and length are
/// bounded before its payload is read, and it must open under the
/// session's keys.
fn recv(stream: &mut TcpStream, opener: &mut Opener) -> std::io::Result<Message> {
    let (kind, flags, payload) =
        read_message_frame(stream, |k| matches!(k, KIND_BLOCK | KIND_ACK | KIND_HEARTBEAT | KIND_HANDOVER))?;
    opener.open(kind, flags, &payload).map_err(invalid)
}

/// The writing half of a connection, shared by the threads of a session;
/// frames are sealed in the order they are written.
struct Sender(Mutex<(BufWriter<TcpStream>, Sealer)>);

impl Sender {
    fn new(stream: &TcpStream, sealer: Sealer) -> std::io::Result<Sender> {
        Ok(Sender(Mutex::new((BufWriter::with_capacity(256 << 10, stream.try_clone()?), sealer))))
    }
    fn send(&self, messages: &[Message]) -> std::io::Result<()> {
        let mut guard = lock(&self.0);
        let (w, sealer) = &mut *guard;
        for m in messages {
            w.write_all(&sealer.seal(m))?;
        }
        w.flush()
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Shared {
    fn store(&self) -> Arc<Store> {
        self.store.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn role(&self) -> Role {
        *lock(&self.role)
    }

    fn writable(&self) -> Result<(), NodeError> {
        match self.role() {
            Role::Primary if self.repl.lock().switching => Err(NodeError::Unavailable(
                "a switchover is under way: this node is handing the primary role to its secondary; retry on the new \
                 primary"
                    .into(),
            )),
            // A write waits a little for the first handshake (the secondary
            // may be connecting right now), then is refused: a block written
            // before could diverge from a secondary that promoted itself.
            Role::Primary if !self.repl.wait_until_secondary_met(LINK_TIMEOUT) => Err(NodeError::Unavailable(format!(
                "this primary has not met its secondary at {} since it started, so it cannot tell whether the \
                     secondary promoted itself meanwhile; writes resume once the secondary is connected",
                self.config.peer
            ))),
            Role::Primary => Ok(()),
            Role::Secondary => Err(NodeError::NotPrimary { peer: self.config.peer.clone() }),
        }
    }

    /// A primary whose secondary may promote itself answers reads only
    /// while its lease (renewed by the secondary) lasts.
    fn readable(&self) -> Result<(), NodeError> {
        if self.role() != Role::Primary || self.repl.lease_held() {
            return Ok(());
        }
        let reason = if self.repl.lock().secondary_met {
            "this primary's lease expired (no acknowledgement from the secondary within the lease)"
        } else {
            "this primary has not met its secondary since it started, so it cannot tell whether the secondary \
             promoted itself meanwhile"
        };
        Err(NodeError::Unavailable(format!(
            "{reason}: it may have been replaced by a promoted secondary at {}; read from the current primary, or \
             retry once the secondary is connected",
            self.config.peer
        )))
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The store's poisoning, unless it is the node's own doing (writes
    /// failed on purpose while it is demoted or shuts down).
    fn poisoned(&self) -> Option<String> {
        let s = self.repl.lock();
        if s.demoted.is_some() || s.closing {
            return None;
        }
        drop(s);
        self.store().poisoned()
    }

    fn register(&self, stream: &TcpStream) {
        if let Ok(clone) = stream.try_clone() {
            lock(&self.sockets).push(clone);
        }
        // A socket registered after stop was already decided is closed here.
        if self.stopping() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn unregister(&self, stream: &TcpStream) {
        let Ok(addr) = stream.local_addr() else { return };
        let peer = stream.peer_addr().ok();
        lock(&self.sockets).retain(|s| !(s.local_addr().ok() == Some(addr) && s.peer_addr().ok() == peer));
    }

    fn shutdown_sockets(&self, how: Shutdown) {
        for s in lock(&self.sockets).iter() {
            let _ = s.shutdown(how);
        }
    }

    fn hello(&self) -> Hello {
        let store = self.store();
        let (protocol_min, protocol_max) = protocol_range();
        let mut nonce = [0u8; NONCE_LEN];
        // A nonce only has to differ between connections; should the
        // system's random source fail, the time still makes it differ.
        if getrandom::fill(&mut nonce).is_err() {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            nonce.copy_from_slice(&nanos.as_nanos().to_le_bytes());
        }
        let role = self.role();
        let mut hello = Hello {
            protocol_min,
            protocol_max,
            format_version: format_version(),
            role,
            sync: self.config.sync,
            peer_loss: self.config.peer_loss,
            auth: self.config.auth_key.is_some(),
            nonce,
            auto_failover: self.config.auto_failover && role == Role::Secondary,
            lease_ms: self.config.lease.as_millis() as u64,
            ..Hello::example(role)
        };
        describe(&mut hello, &store);
        hello.commit_position = match role {
            Role::Primary => self.repl.lock().answered_end.max(hello.log_end),
            Role::Secondary => self.repl.lock().primary_committed,
        };
        hello
    }

    /// Runs the handshake ([`Handshake`]) on `stream` and carries out its
    /// outcome; returns the peer's Hello and the link's halves once both
    /// sides accepted. `dialer`: this node dialed.
    fn handshake(&self, stream: &mut TcpStream, dialer: bool) -> Result<(Hello, Sender, Opener), SessionEnd> {
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        stream.set_write_timeout(Some(LINK_TIMEOUT))?;
        let (mut machine, hello) = Handshake::start(self.hello(), self.config.auth_key.clone(), dialer);
        let mut writer = stream.try_clone()?;
        let outcome = (|| -> std::io::Result<Outcome> {
            writer.write_all(&hello)?;
            loop {
                let (kind, flags, payload) = read_message_frame(stream, |k| machine.expects(k))?;
                let step = machine.receive(kind, flags, &payload, &*self.store());
                for frame in &step.send {
                    writer.write_all(frame)?;
                }
                if let Some(outcome) = step.outcome {
                    return Ok(outcome);
                }
            }
        })();
        let outcome = match outcome {
            Ok(outcome) => outcome,
            // A connection this node accepted that never finished its
            // handshake changes nothing.
            Err(e) if !dialer => return Err(SessionEnd::Stranger(format!("an inbound connection's handshake: {e}"))),
            Err(e) => return Err(SessionEnd::Io(e)),
        };
        stream.set_read_timeout(Some(LINK_TIMEOUT))?;
        let peer = machine.peer().cloned();
        let describe_peer =
            |p: &Option<Hello>| p.as_ref().map_or_else(String::new, |p| format!("{} {}", p.role.name(), p.node_id));
        match outcome {
            Outcome::Accepted => {
                let Some(peer) = peer else { return Err(SessionEnd::Io(invalid("no Hello from the peer"))) };
                tracing::info!(
                    "handshake with {} {} (lockstep {}{}) accepted at protocol version {}; its log ends at {}",
                    peer.role.name(),
                    peer.node_id,
                    peer.software_version,
                    if self.config.auth_key.is_some() { ", authenticated" } else { "" },
                    crate::handshake::agreed_version(machine.ours(), &peer).unwrap_or_default(),
                    peer.log_end
                );
                let (sealer, opener) = machine.into_channel();
                Ok((peer, Sender::new(stream, sealer)?, opener))
            }
            Outcome::Refused(reason) => Err(SessionEnd::Refused(reason)),
            Outcome::PeerRefused(reason) => Err(SessionEnd::Refused(format!("the peer refused this node: {reason}"))),
            Outcome::PrimaryBehind(why) => {
                tracing::warn!("{why}");
                self.repl.primary_behind(&why);
                Err(SessionEnd::Retry(why))
            }
            Outcome::Rejoin { position, fingerprint } => match peer {
                Some(peer) => Err(self.rejoin(&peer, position, fingerprint)),
                None => Err(SessionEnd::Io(invalid("no Hello from the peer"))),
            },
            Outcome::PeerRejoins { position } => {
                tracing::info!(
                    "{} holds a tail after position {position}, where a newer epoch began: it truncates it to rejoin",
                    describe_peer(&peer)
                );
                Err(SessionEnd::Retry(format!("the secondary rejoins from position {position}")))
            }
            Outcome::StepDown => match peer {
                Some(peer) => {
                    self.demote(&peer);
                    Err(SessionEnd::Retry(format!("demoted by {} (epoch {})", peer.node_id, peer.epoch)))
                }
                None => Err(SessionEnd::Io(invalid("no Hello from the peer"))),
            },
            Outcome::PeerStepsDown => {
                Err(SessionEnd::Retry(format!("{} was primary of an older epoch: it steps down", describe_peer(&peer))))
            }
            Outcome::Stranger(reason) => Err(SessionEnd::Stranger(reason)),
            Outcome::Failed(reason) => Err(SessionEnd::Io(invalid(reason))),
        }
    }

    /// Records how a session ended; a refusal before any accepted
    /// handshake is fatal.
    fn session_ended(&self, end: &SessionEnd, was_connected: bool) {
        match end {
            SessionEnd::Refused(reason) => {
                tracing::error!("replication refused: {reason}");
                self.repl.update(|s| {
                    s.link = Link::Refused;
                    s.refusal = Some(reason.clone());
                    if !s.accepted_once {
                        s.fatal = Some(reason.clone());
                    }
                });
            }
            SessionEnd::Io(e) => {
                if was_connected {
                    tracing::warn!("replication link lost: {e}");
                } else {
                    tracing::debug!("replication peer not reachable: {e}");
                }
                self.repl.update(|s| s.link = Link::Unreachable);
            }
            SessionEnd::Retry(why) => {
                tracing::info!("replication reconnects: {why}");
                self.repl.update(|s| s.link = Link::Connecting);
            }
            SessionEnd::Stranger(why) => Self::stranger(why),
            SessionEnd::Stopped => {}
        }
    }

    fn accepted(&self, peer: &Hello) {
        self.repl.accepted(peer);
    }

    /// A connection that did not authenticate: logged, nothing else.
    fn stranger(why: &str) {
        tracing::warn!("ignored a replication connection that did not authenticate: {why}");
    }

    // ---- roles -------------------------------------------------------------------

    /// Makes this secondary the primary of the next epoch: ends the link to
    /// the old primary, records the epoch durably, and takes writes alone
    /// (counted as exposure) until the old primary rejoins as secondary.
    fn promote(&self, force: bool) -> Result<u64, NodeError> {
        if self.role() != Role::Secondary {
            return Err(NodeError::InvalidArgument("this node is already the primary".into()));
        }
        let store = self.store();
        let info = store.info();
        if let Some(risk) = self.repl.promotion_risk(info.epoch, info.durable_end).filter(|_| !force) {
            return Err(NodeError::Unavailable(risk));
        }
        if let Some(session) = lock(&self.session).take() {
            let _ = session.shutdown(Shutdown::Both);
        }
        let (began, started) = (now_ms(), Instant::now());
        let epoch = store.promote_past(self.repl.lock().known_epoch)?;
        let log_end = store.info().log_end;
        *lock(&self.role) = Role::Primary;
        self.repl.promoted(log_end, began, started.elapsed());
        tracing::warn!(
            "promoted to primary at epoch {epoch} from log position {log_end}{}; taking writes alone until {} \
             rejoins as secondary",
            if force { " (forced)" } else { "" },
            self.config.peer
        );
        Ok(epoch)
    }

    /// (Secondary with `--auto-failover`.) Promotes this node once the
    /// primary has been silent for the lease plus half of it: by then the
    /// old primary's lease has expired, so it no longer answers.
    fn watch_primary(self: Arc<Self>) {
        let wait = self.config.lease + self.config.lease / 2;
        while !self.stopping() {
            std::thread::sleep(Duration::from_millis(5));
            let silent = self.repl.primary_silent_for(wait);
            if self.role() != Role::Secondary || !silent {
                continue;
            }
            tracing::warn!("the primary has been silent for {} ms: promoting this secondary", wait.as_millis());
            if let Err(e) = self.promote(false) {
                tracing::error!("automatic promotion failed: {e}");
                self.repl.update(|s| s.last_heard = None);
            }
        }
    }

    /// This primary met a primary of a newer epoch: it was replaced. Writes
    /// waiting for acknowledgement fail (they were never acknowledged), the
    /// store is reopened to take the new primary's log, and the node goes on
    /// as its secondary.
    fn demote(&self, newer: &Hello) {
        let reason = format!(
            "this node was demoted: {} is the primary of epoch {} (this node's epoch is {}); rejoining as its secondary",
            newer.node_id,
            newer.epoch,
            self.store().info().epoch
        );
        tracing::warn!("{reason}");
        *lock(&self.role) = Role::Secondary;
        self.repl.update(|s| {
            s.demoted = Some(reason.clone());
            s.degraded = false;
            s.switching = false;
            s.pair_lease = None;
            s.link = Link::Connecting;
        });
        if let Err(e) = self.replace_store(|_| Ok(())) {
            tracing::error!("reopening the store after demotion failed: {e}");
        }
        // Its epoch is known from now on, across restarts: a later promotion
        // of this node begins a newer one.
        let record = self.repl.learn_primary(newer);
        if let Err(e) = record.save(&self.store()) {
            tracing::warn!("keeping the record of the primary (epoch {}): {e}", record.epoch);
        }
        self.repl.update(|s| {
            s.demoted = None;
            s.ring.clear();
            s.ring_bytes = 0;
        });
    }

    /// The new primary says this node's log has a tail after `position`
    /// that it never had. Truncates it (exporting its records to
    /// DIR/recovered/ first) unless this node may have acknowledged some of
    /// it alone: that is split brain, refused.
    fn rejoin(&self, primary: &Hello, position: u64, fingerprint: lockstep_engine::Fingerprint) -> SessionEnd {
        let store = self.store();
        match check_rejoin(&store, &self.config.dir, primary, position, fingerprint) {
            RejoinCheck::Allowed => {}
            RejoinCheck::Diverged(reason) => return SessionEnd::Refused(reason),
            RejoinCheck::SplitBrain(reason) => {
                let note = serde_json::json!({
                    "position": position,
                    "fingerprint": fingerprint.to_string(),
                    "primary": primary.node_id.to_string(),
                    "epoch": primary.epoch,
                });
                if let Err(e) = std::fs::write(self.config.dir.join(DIVERGENCE_FILE), note.to_string()) {
                    tracing::error!("recording the divergence point: {e}");
                }
                return SessionEnd::Refused(reason);
            }
        }
        let log_end = store.info().log_end;
        // The tail is read and exported from the open store (proportional
        // to the tail); only then is the store closed and cut.
        let io = |e: Error| SessionEnd::Io(std::io::Error::other(e.to_string()));
        let records = match lockstep_engine::truncate::tail_records(&store, position) {
            Ok(records) => records,
            Err(e) => return io(e),
        };
        let bytes = log_end - position;
        drop(store);
        let export = self.config.dir.join("recovered").join(format!("rejoin-position-{position}.jsonl"));
        if let Err(e) = crate::rejoin::export(&export, &records) {
            return SessionEnd::Io(e);
        }
        let dir = self.config.dir.clone();
        let truncated = self.replace_store(|options| lockstep_engine::truncate::truncate_tail(&dir, options, position));
        match truncated {
            Ok(Some(())) => {
                self.repl.update(|s| s.truncated_bytes += bytes);
                tracing::warn!(
                    "rejoined: truncated {bytes} unacknowledged bytes ({} records, exported to {}) after position \
                     {position}",
                    records.len(),
                    export.display()
                );
                SessionEnd::Retry(format!("truncated to position {position} to rejoin"))
            }
            Ok(None) => SessionEnd::Retry("the store is busy; rejoin retried".into()),
            Err(e) => SessionEnd::Io(std::io::Error::other(e.to_string())),
        }
    }

    /// Closes the store, runs `between` on the closed directory, and opens
    /// it again in its place. `None` if other threads kept it busy.
    fn replace_store<T>(&self, between: impl FnOnce(&Options) -> Result<T, Error>) -> Result<Option<T>, Error> {
        let mut slot = self.store.write().unwrap_or_else(PoisonError::into_inner);
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        loop {
            if let Some(store) = Arc::get_mut(&mut slot) {
                let options = store_options(&self.config, &self.repl);
                let reopen = options.clone();
                return store.reopen_with(reopen, |_| between(&options)).map(Some);
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    // ---- primary -----------------------------------------------------------------

    /// Dials the secondary, with backoff, for as long as the node runs.
    fn dial(self: Arc<Self>) {
        let mut backoff = RECONNECT_BACKOFF.0;
        while !self.stopping() {
            if self.role() != Role::Primary || self.poisoned().is_some() {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            let mut connected = false;
            let end = match self.connect() {
                Ok(mut stream) => {
                    self.register(&stream);
                    let end = self.primary_session(&mut stream, &mut connected);
                    let _ = stream.shutdown(Shutdown::Both);
                    self.unregister(&stream);
                    end
                }
                Err(e) => SessionEnd::Io(e),
            };
            if self.stopping() {
                break;
            }
            // Demoted meanwhile: the link is the listener's business now.
            if self.role() != Role::Primary {
                continue;
            }
            self.session_ended(&end, connected);
            let wait = match end {
                SessionEnd::Refused(_) => REFUSED_RETRY,
                SessionEnd::Retry(_) => Duration::ZERO,
                _ if connected => RECONNECT_BACKOFF.0,
                _ => backoff,
            };
            backoff = if connected { RECONNECT_BACKOFF.0 } else { (backoff * 2).min(RECONNECT_BACKOFF.1) };
            let until = Instant::now() + wait;
            while !self.stopping() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn connect(&self) -> std::io::Result<TcpStream> {
        let addrs: Vec<SocketAddr> = self.config.peer.to_socket_addrs()?.collect();
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "the peer address resolved to nothing");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    return Ok(stream);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn primary_session(self: &Arc<Self>, stream: &mut TcpStream, connected: &mut bool) -> SessionEnd {
        let (peer, sender, opener) = match self.handshake(stream, true) {
            Ok(link) => link,
            Err(end) => return end,
        };
        *connected = true;
        let durable = self.store().info().durable_end;
        self.accepted(&peer);
        self.repl.primary_session_started(&peer, durable);
        if peer.log_end < durable {
            tracing::info!(
                "the secondary is behind: catching up {} bytes from position {}",
                durable - peer.log_end,
                peer.log_end
            );
        }
        let dead = Arc::new(AtomicBool::new(false));
        let reader = {
            let (shared, dead) = (self.clone(), dead.clone());
            let stream = match stream.try_clone() {
                Ok(s) => s,
                Err(e) => return SessionEnd::Io(e),
            };
            std::thread::spawn(move || shared.read_acks(stream, &dead, opener))
        };
        let end = self.send_blocks(&sender, peer.log_end, &dead);
        dead.store(true, Ordering::SeqCst);
        let _ = stream.shutdown(Shutdown::Both);
        let read_end = reader.join().unwrap_or(SessionEnd::Stopped);
        match (end, read_end) {
            (SessionEnd::Stopped, other) | (other, _) => other,
        }
    }

    /// Reads the secondary's acknowledgements until the link fails.
    fn read_acks(&self, mut stream: TcpStream, dead: &AtomicBool, mut opener: Opener) -> SessionEnd {
        let end = loop {
            match recv(&mut stream, &mut opener) {
                Ok(Message::Ack { received_end, durable_end, heartbeat }) => {
                    if let Err(e) = self.repl.acknowledge(received_end, durable_end) {
                        break SessionEnd::Io(invalid(e));
                    }
                    self.repl.renew_lease(heartbeat);
                    let store = self.store();
                    if store.unreplicated_acks() {
                        store.peer_holds(durable_end);
                    }
                }
                Ok(Message::Heartbeat { .. }) => {}
                Ok(other) => {
                    break SessionEnd::Io(invalid(format!("unexpected message from the secondary: {other:?}")))
                }
                Err(_) if dead.load(Ordering::SeqCst) => break SessionEnd::Stopped,
                Err(e) => break SessionEnd::Io(e),
            }
        };
        dead.store(true, Ordering::SeqCst);
        let _ = stream.shutdown(Shutdown::Both);
        end
    }

    /// Sends every block from `next` on, from the ring of recently shipped
    /// blocks or, for older ones, from the log; a heartbeat when idle.
    fn send_blocks(&self, sender: &Sender, mut next: u64, dead: &AtomicBool) -> SessionEnd {
        let mut last_heartbeat: Option<Instant> = None;
        let mut last_progress = Instant::now();
        // The peer's durable end, and since when it has not moved while
        // blocks sent are unacknowledged: a link that carries heartbeats but
        // loses data is as dead as a silent one.
        let mut stalled = (self.repl.lock().peer_durable, Instant::now());
        loop {
            if dead.load(Ordering::SeqCst) || self.stopping() {
                return SessionEnd::Stopped;
            }
            // A primary that cannot write durably sends no more heartbeats:
            // its lease runs out and its secondary may take over.
            if let Some(reason) = self.poisoned() {
                tracing::error!("this primary can no longer write durably ({reason}): replication stops");
                return SessionEnd::Stopped;
            }
            // Heartbeats go out on schedule even under load: they renew the
            // lease and prove liveness.
            let interval = self.heartbeat_interval();
            if last_heartbeat.is_none_or(|t| t.elapsed() >= interval) {
                if let Err(e) = self.send_heartbeat(sender) {
                    return SessionEnd::Io(e);
                }
                last_heartbeat = Some(Instant::now());
            }
            if let Some(end) = self.try_handover(sender, next, dead) {
                return end;
            }
            let acked = self.repl.lock().peer_durable;
            if acked != stalled.0 || acked >= next {
                stalled = (acked, Instant::now());
            } else if stalled.1.elapsed() >= LINK_TIMEOUT {
                return SessionEnd::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("the secondary acknowledged nothing beyond position {acked} for {LINK_TIMEOUT:?}"),
                ));
            }
            let (mut blocks, from_log) = {
                let s = self.repl.lock();
                let i = s.ring.partition_point(|b| b.position < next);
                if s.ring.get(i).is_some_and(|b| b.position == next) {
                    let mut bytes = 0;
                    let blocks: Vec<LogBlock> = s
                        .ring
                        .range(i..)
                        .take_while(|b| {
                            bytes += b.bytes.len();
                            bytes - b.bytes.len() < SEND_BATCH_BYTES
                        })
                        .cloned()
                        .collect();
                    (blocks, false)
                } else if next < s.shipped_end || s.ring.front().is_some_and(|b| b.position > next) {
                    (Vec::new(), true)
                } else {
                    if s.ring.back().is_some_and(|b| b.position + b.bytes.len() as u64 > next) {
                        return SessionEnd::Io(invalid(format!("position {next} is not a block boundary")));
                    }
                    let wait = last_heartbeat.map_or(interval, |t| interval.saturating_sub(t.elapsed()));
                    drop(self.repl.wait(s, wait));
                    continue;
                }
            };
            if from_log {
                match self.store().read_blocks(next, SEND_BATCH_BYTES) {
                    Ok(found) if found.is_empty() => {
                        // Not durable here yet: the ring or the log has it soon.
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    Ok(found) => blocks = found,
                    Err(e) => {
                        tracing::error!("reading the log to ship it: {e}");
                        return SessionEnd::Io(std::io::Error::other(e.to_string()));
                    }
                }
            }
            let messages: Vec<Message> = blocks
                .into_iter()
                .map(|b| Message::Block { segment: b.segment, position: b.position, block: b.bytes })
                .collect();
            if let Some(Message::Block { position, block, .. }) = messages.last() {
                next = position + block.len() as u64;
            }
            if let Err(e) = sender.send(&messages) {
                return SessionEnd::Io(e);
            }
            if last_progress.elapsed() >= Duration::from_secs(1) {
                last_progress = Instant::now();
                let s = self.repl.lock();
                if let Some(c) = s.catchup {
                    tracing::info!(
                        "catch-up: the secondary holds {} of {} bytes ({:.1}%)",
                        s.peer_durable.saturating_sub(c.from),
                        c.target - c.from,
                        c.percent(s.peer_durable)
                    );
                }
            }
        }
    }

    /// During a switchover, once every block was sent and the secondary
    /// holds all of it durably: sends Handover and ends the session.
    fn try_handover(&self, sender: &Sender, next: u64, dead: &AtomicBool) -> Option<SessionEnd> {
        let info = self.store().info();
        {
            let s = self.repl.lock();
            if !s.switching || s.handed_over || next != info.log_end || s.peer_durable != info.log_end {
                return None;
            }
        }
        if info.durable_end != info.log_end {
            return None;
        }
        let handover = Message::Handover { position: info.log_end, fingerprint: info.fingerprint };
        if let Err(e) = sender.send(&[handover]) {
            return Some(SessionEnd::Io(e));
        }
        self.repl.update(|s| s.handed_over = true);
        tracing::info!("switchover: handed over at log position {}; waiting for the new primary", info.log_end);
        // Let the secondary close the link once it took over: closing first
        // could reset the connection and lose the Handover in flight.
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        while !dead.load(Ordering::SeqCst) && Instant::now() < deadline && !self.stopping() {
            std::thread::sleep(Duration::from_millis(1));
        }
        Some(SessionEnd::Retry("handed over the primary role".into()))
    }

    /// Planned switchover (on the primary): refuse new writes, let the
    /// secondary get everything, hand over, and rejoin the new primary as
    /// its secondary. Returns the new primary's epoch.
    fn switchover(&self) -> Result<u64, NodeError> {
        if self.role() != Role::Primary {
            return Err(NodeError::InvalidArgument(
                "switchover is asked of the primary; this node is the secondary".into(),
            ));
        }
        {
            let s = self.repl.lock();
            if s.link != Link::Connected || s.degraded {
                return Err(NodeError::Unavailable(format!(
                    "the secondary is not in step (link {}, degraded {}): a switchover would lose writes; fail over \
                     instead, or wait",
                    s.link.name(),
                    s.degraded
                )));
            }
        }
        let epoch = self.store().info().epoch;
        self.repl.update(|s| {
            s.switching = true;
            s.handed_over = false;
        });
        // Writes already taken finish (replicated) before the handover.
        let drained = self.store().sync();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (handed_over, peer_epoch, link) = {
                let s = self.repl.lock();
                (s.handed_over, s.peer_epoch, s.link)
            };
            if self.role() == Role::Secondary && link == Link::Connected && peer_epoch > epoch {
                tracing::info!("switchover complete: the peer is primary at epoch {peer_epoch}");
                return Ok(peer_epoch);
            }
            if Instant::now() > deadline || (drained.is_err() && !handed_over) {
                if !handed_over {
                    self.repl.update(|s| s.switching = false);
                }
                return Err(NodeError::Unavailable(format!(
                    "the switchover did not complete{}; check both nodes with `lockstep status`",
                    if handed_over {
                        " after the handover (this node takes no writes)"
                    } else {
                        "; this node is still the primary"
                    }
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Heartbeats come at least four times per lease.
    fn heartbeat_interval(&self) -> Duration {
        self.repl.heartbeat_interval(HEARTBEAT_INTERVAL)
    }

    fn send_heartbeat(&self, sender: &Sender) -> std::io::Result<()> {
        let info = self.store().info();
        let (seq, commit_position) = self.repl.heartbeat_sent();
        // Log end and fingerprint are read together: a consistent pair the
        // secondary checks its own log against when it is at that position.
        sender.send(&[Message::Heartbeat {
            log_end: info.log_end,
            fingerprint: info.fingerprint,
            commit_position,
            time_ms: now_ms(),
            seq,
        }])
    }

    // ---- secondary ---------------------------------------------------------------

    /// Accepts connections to the replication port, each handshaking on a
    /// thread of its own (at most [`INBOUND_HANDSHAKES_MAX`] at once): a
    /// connection that does not authenticate, or never finishes its
    /// handshake, leaves the running session alone; an accepted primary's
    /// connection replaces it.
    fn listen_replication(self: Arc<Self>, listener: TcpListener) {
        let mut sessions: Vec<JoinHandle<()>> = Vec::new();
        for stream in self.accept_loop(listener) {
            sessions.retain(|h| !h.is_finished());
            if self.inbound.load(Ordering::SeqCst) >= INBOUND_HANDSHAKES_MAX {
                tracing::warn!(
                    "{INBOUND_HANDSHAKES_MAX} replication connections are handshaking already: closing one more"
                );
                let _ = stream.shutdown(Shutdown::Both);
                continue;
            }
            self.inbound.fetch_add(1, Ordering::SeqCst);
            let shared = self.clone();
            sessions.push(std::thread::spawn(move || {
                let mut stream = stream;
                shared.register(&stream);
                let mut connected = false;
                let end = match shared.role() {
                    Role::Secondary => shared.secondary_session(&mut stream, &mut connected),
                    Role::Primary => shared.inbound_on_primary(&mut stream),
                };
                shared.inbound.fetch_sub(1, Ordering::SeqCst);
                let _ = stream.shutdown(Shutdown::Both);
                shared.unregister(&stream);
                if shared.stopping() {
                    return;
                }
                match end {
                    // On a primary the link is its own dialed one: an inbound
                    // refusal is news only at start-up (it is fatal then).
                    SessionEnd::Refused(reason) if shared.role() == Role::Primary => {
                        tracing::error!("replication refused an inbound peer: {reason}");
                        shared.repl.update(|s| {
                            if !s.accepted_once {
                                s.fatal = Some(reason);
                            }
                        });
                    }
                    end if shared.role() == Role::Secondary || matches!(end, SessionEnd::Stranger(_)) => {
                        shared.session_ended(&end, connected)
                    }
                    _ => {}
                }
            }));
        }
        for h in sessions {
            let _ = h.join();
        }
    }

    /// Accepted connections until the node stops.
    fn accept_loop(&self, listener: TcpListener) -> impl Iterator<Item = TcpStream> + '_ {
        let nonblocking = listener.set_nonblocking(true);
        std::iter::from_fn(move || {
            if let Err(e) = &nonblocking {
                tracing::error!("listener: {e}");
                return None;
            }
            loop {
                if self.stopping() {
                    return None;
                }
                match listener.accept() {
                    Ok((stream, _)) => {
                        if stream.set_nonblocking(false).and_then(|()| stream.set_nodelay(true)).is_ok() {
                            return Some(stream);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => {
                        tracing::warn!("accepting a connection: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })
    }

    /// A peer dialed this primary: only another primary would (a secondary
    /// waits to be dialed), and the handshake refuses it.
    fn inbound_on_primary(&self, stream: &mut TcpStream) -> SessionEnd {
        match self.handshake(stream, false) {
            Ok((peer, _, _)) => SessionEnd::Io(invalid(format!(
                "{} {} dialed this primary; a primary dials its secondary, so the connection is closed",
                peer.role.name(),
                peer.node_id
            ))),
            Err(end) => end,
        }
    }

    fn secondary_session(self: &Arc<Self>, stream: &mut TcpStream, connected: &mut bool) -> SessionEnd {
        let (peer, sender, opener) = match self.handshake(stream, false) {
            Ok((peer, sender, opener)) => (peer, Arc::new(sender), opener),
            Err(end) => return end,
        };
        // Authenticated and accepted: only now does this connection replace
        // the running session (whose end it waits for).
        if let Some(old) = lock(&self.session).take() {
            let _ = old.shutdown(Shutdown::Both);
        }
        let _running = lock(&self.session_running);
        if self.role() != Role::Secondary || self.stopping() {
            return SessionEnd::Stopped;
        }
        *connected = true;
        self.accepted(&peer);
        let own = self.store().info().durable_end;
        let record = self.repl.secondary_session_started(&peer, own);
        if let Err(e) = record.save(&self.store()) {
            tracing::warn!("keeping the record of the primary (epoch {}): {e}", record.epoch);
        }
        *lock(&self.session) = stream.try_clone().ok();
        if own < peer.log_end {
            tracing::info!("behind the primary: catching up {} bytes from position {own}", peer.log_end - own);
        }
        let (tx, rx) = crossbeam_channel::bounded::<(u64, lockstep_engine::PendingAppend)>(1024);
        let acker = {
            let (shared, sender, stream) = (self.clone(), sender.clone(), stream.try_clone());
            std::thread::spawn(move || {
                let end = shared.acknowledge_appends(&rx, &sender);
                if let Ok(s) = stream {
                    let _ = s.shutdown(Shutdown::Both);
                }
                end
            })
        };
        let received_acks = peer.sync == SyncLevel::Received;
        let end = self.apply_blocks(stream, opener, &sender, &tx, received_acks);
        drop(tx);
        let _ = stream.shutdown(Shutdown::Both);
        match (end, acker.join().unwrap_or(SessionEnd::Stopped)) {
            (SessionEnd::Stopped, other) | (other, _) => other,
        }
    }

    /// Reads blocks and heartbeats from the primary; hands blocks to the
    /// store (verified there before any byte is written) and their pending
    /// appends to the acknowledger.
    fn apply_blocks(
        &self,
        stream: &mut TcpStream,
        mut opener: Opener,
        sender: &Sender,
        pending: &crossbeam_channel::Sender<(u64, lockstep_engine::PendingAppend)>,
        received_acks: bool,
    ) -> SessionEnd {
        let mut last_progress = Instant::now();
        loop {
            let message = match recv(stream, &mut opener) {
                Ok(m) => m,
                Err(_) if self.stopping() => return SessionEnd::Stopped,
                Err(e) => return SessionEnd::Io(e),
            };
            if self.role() != Role::Secondary {
                return SessionEnd::Stopped; // promoted meanwhile
            }
            self.repl.heard_from_primary();
            match message {
                Message::Block { segment, position, block } => {
                    let end = position + block.len() as u64;
                    // Applied by the session this one replaced (the primary
                    // starts from the end this node's Hello named).
                    if end <= self.store().info().log_end {
                        continue;
                    }
                    let append = match self.store().submit_replicated(LogBlock { segment, position, bytes: block }) {
                        Ok(p) => p,
                        Err(e) => return SessionEnd::Io(std::io::Error::other(format!("applying a block: {e}"))),
                    };
                    self.repl.block_received(position, end);
                    let durable = self.store().info().durable_end;
                    if pending.send((end, append)).is_err() {
                        return SessionEnd::Stopped;
                    }
                    if received_acks {
                        let heartbeat = self.repl.lock().last_heartbeat;
                        if let Err(e) =
                            sender.send(&[Message::Ack { received_end: end, durable_end: durable, heartbeat }])
                        {
                            return SessionEnd::Io(e);
                        }
                    }
                }
                Message::Heartbeat { log_end, fingerprint, commit_position, seq, .. } => {
                    let received = self.repl.primary_heartbeat(log_end, commit_position, seq);
                    let info = self.store().info();
                    let durable = info.durable_end;
                    if durable == log_end && info.log_end == log_end {
                        self.verify_tail(log_end, fingerprint, info.fingerprint);
                    }
                    let ack = Message::Ack { received_end: received, durable_end: durable, heartbeat: seq };
                    if let Err(e) = sender.send(&[ack]) {
                        return SessionEnd::Io(e);
                    }
                }
                Message::Handover { position, fingerprint } => {
                    return self.take_over(position, fingerprint, pending);
                }
                other => return SessionEnd::Io(invalid(format!("unexpected message from the primary: {other:?}"))),
            }
            if last_progress.elapsed() >= Duration::from_secs(1) {
                last_progress = Instant::now();
                let s = self.repl.lock();
                if let Some(c) = s.catchup {
                    let own = self.store().info().durable_end;
                    tracing::info!(
                        "catch-up: {} of {} bytes ({:.1}%)",
                        own.saturating_sub(c.from),
                        c.target - c.from,
                        c.percent(own)
                    );
                }
            }
        }
    }

    /// The primary handed over: once every block is applied, this log must
    /// end exactly where the primary's does; then this node promotes itself.
    fn take_over(
        &self,
        position: u64,
        fingerprint: lockstep_engine::Fingerprint,
        pending: &crossbeam_channel::Sender<(u64, lockstep_engine::PendingAppend)>,
    ) -> SessionEnd {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pending.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let info = self.store().info();
        if info.durable_end != position || info.fingerprint != fingerprint {
            return SessionEnd::Io(invalid(format!(
                "handover refused: the primary's log ends at {position} ({fingerprint}), this one at {} ({})",
                info.durable_end, info.fingerprint
            )));
        }
        match self.promote(false) {
            Ok(epoch) => SessionEnd::Retry(format!("took over as primary of epoch {epoch}")),
            Err(e) => SessionEnd::Io(std::io::Error::other(format!("handover: {e}"))),
        }
    }

    /// Compares the primary's fingerprint at `position` with this log's:
    /// equal proves the two logs identical up to there.
    fn verify_tail(&self, position: u64, primary: lockstep_engine::Fingerprint, ours: lockstep_engine::Fingerprint) {
        self.repl.update(|s| {
            if primary == ours {
                s.verified = Some((position, Instant::now()));
            } else if s.divergence.is_none() {
                let reason = format!(
                    "at position {position} the primary's log fingerprint is {primary}, this secondary's {ours}: \
                     the logs differ; stop and compare both with `lockstep inspect`"
                );
                tracing::error!("{reason}");
                s.divergence = Some(reason);
            }
        });
    }

    /// Waits for each append in order and acknowledges it durable.
    fn acknowledge_appends(
        &self,
        pending: &crossbeam_channel::Receiver<(u64, lockstep_engine::PendingAppend)>,
        sender: &Sender,
    ) -> SessionEnd {
        while let Ok((end, append)) = pending.recv() {
            if let Err(e) = append.wait() {
                tracing::error!("a block from the primary was not applied: {e}");
                return SessionEnd::Io(std::io::Error::other(e.to_string()));
            }
            let (received, heartbeat) = self.repl.update(|s| {
                if s.catchup.is_some_and(|c| end >= c.target) {
                    tracing::info!("caught up with the primary at position {end}");
                    s.catchup = None;
                }
                (s.shipped_end, s.last_heartbeat)
            });
            if pending.is_empty() {
                if let Err(e) = sender.send(&[Message::Ack { received_end: received, durable_end: end, heartbeat }]) {
                    return SessionEnd::Io(e);
                }
            }
        }
        SessionEnd::Stopped
    }

    // ---- status --------------------------------------------------------------------

    fn status(&self) -> serde_json::Value {
        let info = self.store().info();
        let mut s = self.repl.lock();
        let primary = self.role() == Role::Primary;
        // How far the secondary's log reaches, and the end it is behind.
        let (reached, end) =
            if primary { (s.peer_durable, info.durable_end) } else { (info.durable_end, s.peer_durable) };
        let (peer_durable, lag_bytes) = (s.peer_durable, end.saturating_sub(reached));
        let lag_ms = s.lag.lag_ms(reached);
        let catchup = s.catchup.map(|c| {
            serde_json::json!({
                "from": c.from,
                "target": c.target,
                "remaining_bytes": c.target.saturating_sub(reached),
                "percent": (c.percent(reached) * 10.0).round() / 10.0,
            })
        });
        serde_json::json!({
            "role": self.role().name(),
            "epoch": info.epoch,
            "store_id": info.store_id.to_string(),
            "node_id": info.node_id.to_string(),
            "log_end": info.log_end,
            "durable_end": info.durable_end,
            "fingerprint": info.fingerprint.to_string(),
            "peer": self.config.peer,
            "peer_durable": peer_durable,
            "lag_bytes": lag_bytes,
            "lag_ms": lag_ms,
            "link": s.link.name(),
            "refusal": s.refusal,
            "sync": self.config.sync.name(),
            "peer_loss": match self.config.peer_loss {
                PeerLoss::Block => "block".to_string(),
                PeerLoss::Degrade { after_ms } => format!("degrade={after_ms}ms"),
            },
            "degraded": s.degraded,
            "exposure_bytes": if primary { ReplState::exposure(&s) } else { 0 },
            "catchup": catchup,
            "verified_position": s.verified.map(|(position, _)| position),
            "verified_ago_ms": s.verified.map(|(_, at)| at.elapsed().as_millis() as u64),
            "divergence": s.divergence,
            "auto_failover": self.config.auto_failover,
            "lease_ms": self.config.lease.as_millis() as u64,
            "lease_left_ms": s.lease_until.map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64),
            "last_heard_ms": s.last_heard.map(|t| t.elapsed().as_millis() as u64),
            "primary_committed": s.primary_committed,
            "applied_bytes": s.applied_bytes,
            "truncated_bytes": s.truncated_bytes,
            "promoted_at_unix_ms": s.promoted.map(|(at, _)| at),
            "promotion_ms": s.promoted.map(|(_, took)| took.as_secs_f64() * 1000.0),
            "keys": info.keys,
            "software_version": env!("CARGO_PKG_VERSION"),
        })
    }

    // ---- clients ---------------------------------------------------------------------

    fn listen_clients(self: Arc<Self>, listener: TcpListener) {
        let mut connections: Vec<JoinHandle<()>> = Vec::new();
        for stream in self.accept_loop(listener) {
            connections.retain(|h| !h.is_finished());
            let shared = self.clone();
            connections.push(std::thread::spawn(move || {
                shared.register(&stream);
                shared.serve_client(&stream);
                shared.unregister(&stream);
            }));
        }
        for h in connections {
            let _ = h.join();
        }
    }

    fn serve_client(&self, stream: &TcpStream) {
        let Ok(sender) = Sender::new(stream, Sealer::new(None)) else { return };
        let mut reader = stream;
        loop {
            let request = match read_frame(&mut reader) {
                Ok((kind, payload)) => Request::decode(kind, &payload),
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    let _ = self.reply(&sender, Response::Error { code: 64, message: format!("bad request: {e}") });
                    // Close gently: unread input would turn the close into a
                    // reset that can destroy the answer before it is read.
                    let _ = stream.shutdown(Shutdown::Write);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                    let _ = std::io::copy(&mut std::io::Read::take(reader, 1 << 20), &mut std::io::sink());
                    return;
                }
                Err(_) => return,
            };
            let _busy = Busy::enter(&self.busy);
            let response = match request {
                Ok(request) => self.answer(request),
                Err(e) => Response::Error { code: 64, message: format!("bad request: {e}") },
            };
            if self.reply(&sender, response).is_err() {
                return;
            }
        }
    }

    fn reply(&self, sender: &Sender, response: Response) -> std::io::Result<()> {
        let mut w = lock(&sender.0);
        w.0.write_all(&response.encode())?;
        w.0.flush()
    }

    fn answer(&self, request: Request) -> Response {
        let failed = |e: NodeError| Response::Error { code: e.exit_code(), message: e.to_string() };
        let write = |f: &dyn Fn() -> Result<(), Error>| match self.writable().and_then(|()| Ok(f()?)) {
            Ok(()) => Response::Done,
            Err(e) => failed(e),
        };
        match request {
            Request::Put { key, value } => write(&|| self.store().put(&key, &value)),
            Request::Delete { key } => write(&|| self.store().delete(&key)),
            Request::Get { key } => match self.readable().and_then(|()| Ok(self.store().get(&key)?)) {
                Ok(value) => Response::Value(value.map(|v| v.to_vec())),
                Err(e) => failed(e),
            },
            Request::Scan { prefix, after, limit } => {
                match self.readable().and_then(|()| Ok(self.scan_page(&prefix, after.as_deref(), limit)?)) {
                    Ok((items, more)) => Response::Page { items, more },
                    Err(e) => failed(e),
                }
            }
            Request::Status => Response::Status(self.status().to_string()),
            Request::Switchover => match self.switchover() {
                Ok(epoch) => Response::Status(serde_json::json!({ "epoch": epoch }).to_string()),
                Err(e) => failed(e),
            },
            Request::Promote { force } => match self.promote(force) {
                Ok(epoch) => Response::Status(serde_json::json!({ "epoch": epoch }).to_string()),
                Err(e) => failed(e),
            },
        }
    }

    /// One page of a prefix scan: at most `limit` items and what fits a frame.
    #[allow(clippy::type_complexity)]
    fn scan_page(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: u32,
    ) -> Result<(Vec<(Vec<u8>, Vec<u8>)>, bool), Error> {
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let limit = limit.clamp(1, SCAN_PAGE_ITEMS_MAX) as usize;
        let (mut items, mut bytes) = (Vec::new(), 0usize);
        for item in self.store().scan::<&[u8], _>((start, Bound::Unbounded))? {
            let (key, value) = item?;
            if !key.starts_with(prefix) {
                return Ok((items, false));
            }
            bytes += key.len() + value.len() + 8;
            if items.len() == limit || (bytes > FRAME_PAYLOAD_MAX - 64 && !items.is_empty()) {
                return Ok((items, true));
            }
            items.push((key.to_vec(), value.to_vec()));
        }
        Ok((items, false))
    }
}
