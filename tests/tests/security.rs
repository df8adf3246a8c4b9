//! Attacks on a real pair with `--auth-key-file` on both nodes, from a
//! stranger on loopback who does not hold the key: nothing it sends to
//! either replication port changes any state or disturbs the live session.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use lockstep_engine::EpochStart;
use lockstep_replicator::protocol::{read_message_frame, Message, KIND_HELLO, PROOF_LEN};
use lockstep_tests::pair::*;
use lockstep_tests::{expect_code, p};

/// Connects to `addr`, reads the node's Hello and answers with `forge` of
/// it (a Hello), then a zero proof; returns what the node said after.
fn forged_handshake(addr: &str, forge: impl FnOnce(&mut lockstep_replicator::protocol::Hello)) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let (kind, _, payload) = read_message_frame(&mut stream, |k| k == KIND_HELLO).expect("the node's Hello");
    let Ok(Message::Hello(mut hello)) = Message::decode(kind, &payload) else { panic!("not a Hello") };
    forge(&mut hello);
    stream.write_all(&Message::Hello(hello).encode()).expect("send Hello");
    stream.write_all(&Message::Auth { proof: [0; PROOF_LEN] }.encode()).expect("send Auth");
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
    rest
}

#[test]
fn strangers_on_either_replication_port_change_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let (pdir, sdir) = init_pair(root.path());
    let key = root.path().join("key");
    std::fs::write(&key, "correct horse battery staple\n").expect("key");
    let auth = ["--auth-key-file", p(&key)];
    let secondary = start_secondary(&sdir, "127.0.0.1:0", &auth, &[]);
    let s_repl = secondary.repl.clone().expect("repl");
    let primary = start_primary(&pdir, &s_repl, &auth, &[]);
    let p_repl = primary.repl.clone().expect("a primary listens on --repl");
    wait_until("the pair connects", &[&primary, &secondary], Duration::from_secs(10), || {
        status(&primary.client)["link"] == "connected"
    });
    let writers = Writers::start(&primary.client, 2);
    writers.wait_for(20, &[&primary, &secondary]);

    // Idle sockets, garbage, a wrong proof on the secondary's port...
    let idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(&s_repl).expect("connect")).collect();
    for _ in 0..5 {
        let mut garbage = TcpStream::connect(&s_repl).expect("connect");
        let _ = garbage.write_all(b"GET / HTTP/1.1\r\n\r\n");
        // The node answers with its Hello and closes.
        let _ = garbage.read_to_end(&mut Vec::new());
    }
    for addr in [&s_repl, &p_repl] {
        // ...and on both ports a primary of the same store at a far newer
        // epoch, acknowledged far beyond the log (once, this demoted a
        // primary and was recorded in the secondary's aux-peer).
        forged_handshake(addr, |h| {
            h.role = lockstep_replicator::protocol::Role::Primary;
            h.epoch = lockstep_engine::format::EPOCH_MAX;
            h.epochs.push(EpochStart { epoch: h.epoch, start_position: h.log_end });
            h.commit_position = 1 << 40;
        });
    }
    let before = writers.count();
    writers.wait_for(before + 20, &[&primary, &secondary]);
    drop(idle);
    let acked = writers.finish();

    let (ps, ss) = (status(&primary.client), status(&secondary.client));
    assert_eq!((&ps["role"], &ps["epoch"], &ps["link"]), (&"primary".into(), &1.into(), &"connected".into()), "{ps}");
    assert!(ps["refusal"].is_null(), "{ps}");
    assert_eq!((&ss["role"], &ss["epoch"]), (&"secondary".into(), &1.into()), "{ss}");
    assert_eq!(ss["primary_committed"].as_u64().map(|c| c < 1 << 40), Some(true), "{ss}");
    // One session from start to end: none of it tore the live one down.
    let accepted = |log: String| log.matches("accepted at protocol version").count();
    assert_eq!(accepted(secondary.log()), 1, "{}", secondary.log());
    assert!(!primary.log().contains("link lost"), "{}", primary.log());
    assert!(secondary.log().contains("did not authenticate"), "{}", secondary.log());
    assert_all_readable(&secondary.client, &acked);
    drop((primary, secondary));
    let record = std::fs::read_to_string(sdir.join("aux-peer")).expect("aux-peer");
    assert!(record.contains("\"epoch\":1"), "{record}");
    expect_code(0, ["check", p(&sdir)]);
}
