//! A fault-injecting TCP proxy for tests and drills: put it between the two
//! nodes' replication addresses and make the link pass, drop (black-hole
//! every byte, connections stay open), delay every chunk, or cut (close
//! every connection and refuse new ones).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the proxy does to the bytes it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    /// Swallow every byte in both directions; connections stay open.
    Drop,
    /// Hold every chunk this long before passing it on.
    Delay(Duration),
    /// Close every connection and refuse new ones.
    Cut,
}

#[derive(Debug)]
struct State {
    fault: Mutex<Fault>,
    stop: AtomicBool,
    target: SocketAddr,
}

impl State {
    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    state: Arc<State>,
    addr: SocketAddr,
    listener: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on `listen` (port 0 picks one) and forwards to `target`.
    pub fn start(listen: &str, target: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State { fault: Mutex::new(Fault::Pass), stop: AtomicBool::new(false), target });
        let s = state.clone();
        let listener = std::thread::spawn(move || accept(listener, &s));
        Ok(FaultProxy { state, addr, listener: Some(listener) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, fault: Fault) {
        *self.state.fault.lock().unwrap_or_else(PoisonError::into_inner) = fault;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.listener.take() {
            let _ = h.join();
        }
    }
}

fn accept(listener: TcpListener, state: &Arc<State>) {
    let mut pumps = Vec::new();
    while !state.stop.load(Ordering::SeqCst) {
        let Ok((client, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        if state.fault() == Fault::Cut {
            continue; // dropped: closed at once
        }
        let Ok(server) = TcpStream::connect_timeout(&state.target, Duration::from_secs(1)) else { continue };
        for (from, to) in [(&client, &server), (&server, &client)] {
            let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else { continue };
            let state = state.clone();
            pumps.push(std::thread::spawn(move || pump(from, to, &state)));
        }
        pumps.retain(|p: &JoinHandle<()>| !p.is_finished());
    }
    for p in pumps {
        let _ = p.join();
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, state: &State) {
    let _ = from.set_nonblocking(false);
    let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
    let _ = to.set_nodelay(true);
    let mut buf = vec![0u8; 64 << 10];
    while !state.stop.load(Ordering::SeqCst) {
        if state.fault() == Fault::Cut {
            break;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        match state.fault() {
            Fault::Pass => {}
            Fault::Drop => continue,
            Fault::Delay(d) => std::thread::sleep(d),
            Fault::Cut => break,
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// A loopback address nobody listens on right now, for a process that will
/// bind it a moment later (tests and drills give nodes fixed `--repl`
/// addresses so that restarts reuse them).
///
/// The port is chosen below the kernel's ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`): a port from `bind(":0")`
/// lies inside that range, where any outgoing connection of any process may
/// take it as its source port before the node binds it — under parallel
/// tests that happened often enough to fail a start.
pub fn free_addr() -> std::io::Result<String> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    const FIRST: u32 = 10_000;
    if low > FIRST + 1000 {
        // A random start per process, then consecutive ports: two calls in
        // one process never return the same port.
        static NEXT: std::sync::OnceLock<std::sync::atomic::AtomicU32> = std::sync::OnceLock::new();
        let next = NEXT.get_or_init(|| {
            let mut seed = [0u8; 4];
            let _ = getrandom::fill(&mut seed);
            std::sync::atomic::AtomicU32::new(u32::from_le_bytes(seed))
        });
        let span = low - FIRST;
        for _ in 0..span {
            let port = FIRST + next.fetch_add(1, Ordering::Relaxed) % span;
            if let Ok(listener) = TcpListener::bind(("127.0.0.1", port as u16)) {
                return Ok(listener.local_addr()?.to_string());
            }
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string())
}
