//! Two real `lockstep serve` processes on loopback: writes reach the
//! secondary, nothing acknowledged is lost when the primary is SIGKILLed, a
//! restarted secondary catches up to a byte-identical log, every mismatch is
//! refused with exit 76 before anything is written, and the peer-loss
//! policies behave through a fault-injecting proxy.

use std::path::Path;
use std::time::Duration;

use lockstep_replicator::proxy::{Fault, FaultProxy};
use lockstep_tests::pair::*;
use lockstep_tests::{expect_code, p, serve_until_exit, Served};
use serde_json::Value;

#[test]
fn acknowledged_writes_are_on_the_secondary_when_the_primary_is_killed() {
    let root = tempfile::tempdir().expect("tempdir");
    let (pdir, sdir) = init_pair(root.path());
    let (mut primary, secondary) = start_pair(&pdir, &sdir, &[]);
    expect_code(0, ["client", "--addr", &primary.client, "put", "first", "one"]);
    assert_eq!(expect_code(0, ["client", "--addr", &secondary.client, "get", "first"]).stdout, "one");

    let writers = Writers::start(&primary.client, 4);
    writers.wait_for(400, &[&primary, &secondary]);
    primary.child.kill().expect("SIGKILL the primary");
    primary.child.wait().expect("reap");
    let acked = writers.finish();
    assert!(acked.len() >= 400);
    assert_all_readable(&secondary.client, &acked);

    // The secondary serves reads, refuses writes and names the primary.
    let run = expect_code(77, ["client", "--addr", &secondary.client, "put", "k", "v"]);
    assert!(run.stderr.contains("secondary") && run.stderr.contains("127.0.0.1:9"), "{}", run.stderr);
    // It may hold a few more: writes in flight when the primary died.
    let scan = expect_code(0, ["client", "--addr", &secondary.client, "scan", "--prefix", "w0/"]).stdout;
    assert!(scan.lines().count() >= acked.iter().filter(|(k, _)| k.starts_with("w0/")).count());
    assert!(scan.lines().all(|l| l.starts_with("w0/")), "{scan}");
}

#[test]
fn a_restarted_secondary_catches_up_to_a_byte_identical_log() {
    let root = tempfile::tempdir().expect("tempdir");
    let (pdir, sdir) = init_pair(root.path());
    let (mut primary, mut secondary) = start_pair(&pdir, &sdir, &[]);
    let repl = secondary.repl.clone().expect("repl address");
    let writers = Writers::start(&primary.client, 4);
    writers.wait_for(300, &[&primary, &secondary]);
    secondary.child.kill().expect("SIGKILL the secondary");
    secondary.child.wait().expect("reap");
    // Writes wait for the secondary (policy `block`) while it is down.
    let stalled = writers.count();
    std::thread::sleep(Duration::from_millis(300));
    assert!(writers.count() <= stalled + 4, "writes were acknowledged without the secondary");
    let mut secondary = start_secondary(&sdir, &repl, &[], &[]);
    writers.wait_for(stalled + 2000, &[&primary, &secondary]);
    let acked = writers.finish();

    wait_until("the secondary holds the whole log", &[&primary, &secondary], Duration::from_secs(30), || {
        let s = status(&primary.client);
        s["link"] == "connected" && s["peer_durable"] == s["durable_end"] && s["lag_bytes"] == 0
    });
    assert_all_readable(&secondary.client, &acked);
    // Heartbeats prove the logs identical up to the end.
    let end = status(&primary.client)["log_end"].clone();
    wait_until("the secondary verified the tail", &[&primary, &secondary], Duration::from_secs(10), || {
        status(&secondary.client)["verified_position"] == end
    });
    assert_eq!(status(&secondary.client)["divergence"], Value::Null);
    for node in [&primary, &secondary] {
        node.signal("-TERM");
    }
    assert_eq!(primary.wait_exit(Duration::from_secs(20)), Some(0), "primary: {}", primary.log());
    assert_eq!(secondary.wait_exit(Duration::from_secs(20)), Some(0), "secondary: {}", secondary.log());

    let (a, b) = (inspect(&pdir), inspect(&sdir));
    assert_eq!(a["log_end"], b["log_end"]);
    assert_eq!(a["fingerprint"], b["fingerprint"]);
    let (sa, sb) = (segments(&pdir), segments(&sdir));
    assert!(sa.len() >= 3, "the test should span several segments, got {}", sa.len());
    assert_eq!(sa.len(), sb.len());
    for ((name, x), (_, y)) in sa.iter().zip(&sb) {
        assert!(x == y, "{name} differs between the two sites");
    }
    expect_code(0, ["check", p(&pdir)]);
    expect_code(0, ["check", p(&sdir)]);
}

/// Starts a secondary with `s_env`/`s_extra` and a primary with `p_extra`,
/// expects both to exit 76 with messages containing `expect`, and checks
/// that neither log changed.
#[track_caller]
fn assert_refused(
    pdir: &Path,
    sdir: &Path,
    s_env: &[(&str, &str)],
    s_extra: &[&str],
    p_extra: &[&str],
    expect: &[&str],
) {
    let before = (inspect(pdir), inspect(sdir));
    let mut secondary = start_secondary(sdir, "127.0.0.1:0", s_extra, s_env);
    let peer = secondary.repl.clone().expect("repl address");
    let log = pdir.with_extension("primary.log");
    // The primary may already have exited 76 before printing its ready line.
    let (primary_code, primary_log) = serve_until_exit(&primary_args(pdir, &peer, p_extra), &log);
    assert_eq!(primary_code, Some(76), "primary log: {primary_log}");
    assert_eq!(secondary.wait_exit(Duration::from_secs(20)), Some(76), "secondary log: {}", secondary.log());
    for text in expect {
        assert!(primary_log.contains(text), "the primary's message lacks {text:?}: {primary_log}");
        assert!(secondary.log().contains(text), "the secondary's message lacks {text:?}: {}", secondary.log());
    }
    let after = (inspect(pdir), inspect(sdir));
    for (b, a) in [(&before.0, &after.0), (&before.1, &after.1)] {
        assert_eq!((&b["log_end"], &b["fingerprint"]), (&a["log_end"], &a["fingerprint"]), "a refused pair wrote");
    }
}

/// A primary whose secondary does not hold its key exits 76; the
/// secondary cannot tell that peer from a stranger, so it logs the failed
/// authentication and goes on waiting for its real primary (a stranger's
/// bad proof must never stop a node). Neither log changes.
#[track_caller]
fn assert_refused_by_the_primary(pdir: &Path, sdir: &Path, s_extra: &[&str], p_extra: &[&str], expect: &str) {
    let before = (inspect(pdir), inspect(sdir));
    let mut secondary = start_secondary(sdir, "127.0.0.1:0", s_extra, &[]);
    let peer = secondary.repl.clone().expect("repl address");
    let (primary_code, primary_log) =
        serve_until_exit(&primary_args(pdir, &peer, p_extra), &pdir.with_extension("primary.log"));
    assert_eq!(primary_code, Some(76), "primary log: {primary_log}");
    assert!(primary_log.contains(expect), "the primary's message lacks {expect:?}: {primary_log}");
    wait_until("the secondary logs the failed authentication", &[&secondary], Duration::from_secs(10), || {
        secondary.log().contains(expect)
    });
    assert_eq!(secondary.wait_exit(Duration::from_millis(300)), None, "{}", secondary.log());
    assert_eq!(status(&secondary.client)["link"], "connecting", "a stranger changed the secondary's link state");
    drop(secondary);
    let after = (inspect(pdir), inspect(sdir));
    for (b, a) in [(&before.0, &after.0), (&before.1, &after.1)] {
        assert_eq!((&b["log_end"], &b["fingerprint"]), (&a["log_end"], &a["fingerprint"]), "a refused pair wrote");
    }
}

#[test]
fn mismatched_builds_and_stores_are_refused_with_exit_76_and_nothing_written() {
    let root = tempfile::tempdir().expect("tempdir");
    let (pdir, sdir) = init_pair(root.path());
    expect_code(0, ["put", p(&pdir), "patient/1", "penicillin"]);

    // Another on-disk format version.
    assert_refused(&pdir, &sdir, &[("LOCKSTEP_TEST_FORMAT_VERSION", "2")], &[], &[], &["format v1", "format v2"]);
    // Protocol ranges that do not overlap (both constants raised).
    assert_refused(&pdir, &sdir, &[("LOCKSTEP_TEST_PROTOCOL_RANGE", "3..3")], &[], &[], &["2..=2", "3..=3"]);

    // Another store.
    let other = root.path().join("other");
    let other_id = expect_code(0, ["init", p(&other), "--segment-size", SEGMENT_SIZE]).stdout;
    let id = inspect(&pdir)["store_id"].as_str().expect("store id").to_string();
    assert_refused(&pdir, &other, &[], &[], &[], &[&id, other_id.trim()]);

    // A divergent log: the secondary holds a different first write.
    let diverged = root.path().join("diverged");
    expect_code(0, ["init", p(&diverged), "--segment-size", SEGMENT_SIZE, "--store-id", &id]);
    expect_code(0, ["put", p(&diverged), "patient/1", "amoxicillin"]);
    expect_code(0, ["put", p(&pdir), "patient/2", "none"]);
    let fp = inspect(&diverged)["fingerprint"].as_str().expect("fingerprint").to_string();
    assert_refused(&pdir, &diverged, &[], &[], &[], &["not a prefix", &fp]);

    // Authentication: different keys, and a key on one side only.
    let (key_a, key_b) = (root.path().join("key-a"), root.path().join("key-b"));
    std::fs::write(&key_a, "correct horse battery staple\n").expect("key");
    std::fs::write(&key_b, "another secret of enough bytes\n").expect("key");
    let (a, b) = (["--auth-key-file", p(&key_a)], ["--auth-key-file", p(&key_b)]);
    assert_refused_by_the_primary(&pdir, &sdir, &b, &a, "authentication failed");
    assert_refused(&pdir, &sdir, &[], &[], &a, &["one side only"]);
}

#[test]
fn a_secondary_one_protocol_version_newer_connects_and_the_same_key_authenticates() {
    let root = tempfile::tempdir().expect("tempdir");
    let (pdir, sdir) = init_pair(root.path());
    let key = root.path().join("key");
    std::fs::write(&key, "correct horse battery staple\n").expect("key");
    let auth = ["--auth-key-file", p(&key)];
    let secondary = start_secondary(&sdir, "127.0.0.1:0", &auth, &[("LOCKSTEP_TEST_PROTOCOL_RANGE", "2..3")]);
    let primary = start_primary(&pdir, secondary.repl.as_deref().expect("repl"), &auth, &[]);
    expect_code(0, ["client", "--addr", &primary.client, "put", "k", "v"]);
    assert_eq!(expect_code(0, ["client", "--addr", &secondary.client, "get", "k"]).stdout, "v");
    assert_eq!(status(&primary.client)["link"], "connected");
    assert!(secondary.log().contains("accepted at protocol version 2"), "{}", secondary.log());
}

/// A pair whose replication link runs through a fault-injecting proxy.
fn pair_through_proxy(root: &Path, extra: &[&str]) -> (Served, Served, FaultProxy) {
    let (pdir, sdir) = init_pair(root);
    let secondary = start_secondary(&sdir, "127.0.0.1:0", &[], &[]);
    let target = secondary.repl.as_deref().expect("repl").parse().expect("socket address");
    let proxy = FaultProxy::start("127.0.0.1:0", target).expect("proxy");
    let primary = start_primary(&pdir, &proxy.addr().to_string(), extra, &[]);
    (primary, secondary, proxy)
}

#[test]
fn with_block_writes_wait_for_a_cut_peer_and_complete_when_it_returns() {
    let root = tempfile::tempdir().expect("tempdir");
    let (primary, secondary, proxy) = pair_through_proxy(root.path(), &[]);
    expect_code(0, ["client", "--addr", &primary.client, "put", "before", "1"]);
    proxy.set(Fault::Cut);
    wait_until("the primary sees the link down", &[&primary], Duration::from_secs(10), || {
        status(&primary.client)["link"] != "connected"
    });
    let put = put_in_background(&primary.client, "during");
    std::thread::sleep(Duration::from_millis(700));
    assert!(!put.is_finished(), "a write was acknowledged without the secondary");
    proxy.set(Fault::Pass);
    put.join().expect("put thread").expect("the write completes once the peer is back");
    assert_eq!(expect_code(0, ["client", "--addr", &secondary.client, "get", "during"]).stdout, "value");
    let s = status(&primary.client);
    assert_eq!(s["exposure_bytes"], 0);
    assert_eq!(s["refusal"], Value::Null);

    // A slow link delays writes but loses nothing.
    proxy.set(Fault::Delay(Duration::from_millis(40)));
    let took = put_in_background(&primary.client, "slow").join().expect("thread").expect("put over a slow link");
    assert!(took >= Duration::from_millis(40), "a write returned before the delayed ack: {took:?}");
}

#[test]
fn with_degrade_the_primary_goes_on_alone_shows_exposure_and_resyncs() {
    let root = tempfile::tempdir().expect("tempdir");
    let (primary, secondary, proxy) = pair_through_proxy(root.path(), &["--on-peer-loss", "degrade=300ms"]);
    expect_code(0, ["client", "--addr", &primary.client, "put", "before", "1"]);
    proxy.set(Fault::Drop);
    let took = put_in_background(&primary.client, "alone").join().expect("thread").expect("put while degraded");
    assert!(took >= Duration::from_millis(300), "answered alone before the degrade timeout: {took:?}");
    assert!(took < Duration::from_secs(5), "degrade took {took:?}");
    let s = status(&primary.client);
    assert_eq!(s["degraded"], true, "{s}");
    assert!(s["exposure_bytes"].as_u64().expect("exposure") > 0, "{s}");
    // Later writes go on without waiting.
    let took = put_in_background(&primary.client, "alone2").join().expect("thread").expect("put");
    assert!(took < Duration::from_millis(300), "a degraded primary still waited {took:?}");

    proxy.set(Fault::Pass);
    wait_until(
        "the secondary catches up and exposure is gone",
        &[&primary, &secondary],
        Duration::from_secs(30),
        || {
            let s = status(&primary.client);
            s["degraded"] == false && s["exposure_bytes"] == 0 && s["link"] == "connected"
        },
    );
    assert_eq!(expect_code(0, ["client", "--addr", &secondary.client, "get", "alone2"]).stdout, "value");
    // Back in synchronous mode: a cut peer makes writes wait again (until the timeout).
    proxy.set(Fault::Drop);
    let took = put_in_background(&primary.client, "again").join().expect("thread").expect("put");
    assert!(took >= Duration::from_millis(300), "not synchronous again after the resync: {took:?}");
}

#[test]
fn sigterm_stops_both_nodes_cleanly_during_load() {
    let root = tempfile::tempdir().expect("tempdir");
    let (pdir, sdir) = init_pair(root.path());
    let (mut primary, mut secondary) = start_pair(&pdir, &sdir, &[]);
    let writers = Writers::start(&primary.client, 4);
    writers.wait_for(200, &[&primary, &secondary]);
    primary.signal("-TERM");
    assert_eq!(primary.wait_exit(Duration::from_secs(20)), Some(0), "{}", primary.log());
    let acked = writers.finish();
    assert_all_readable(&secondary.client, &acked);
    secondary.signal("-TERM");
    assert_eq!(secondary.wait_exit(Duration::from_secs(20)), Some(0), "{}", secondary.log());
    expect_code(0, ["check", p(&pdir)]);
    expect_code(0, ["check", p(&sdir)]);
}

#[test]
fn an_unreachable_peer_is_reported_and_an_incompatible_one_refused_while_running() {
    let root = tempfile::tempdir().expect("tempdir");
    let (pdir, sdir) = init_pair(root.path());
    // Reserve an address nobody listens on yet.
    let repl = free_addr();
    let primary = start_primary(&pdir, &repl, &[], &[]);
    wait_until("the primary reports the peer unreachable", &[&primary], Duration::from_secs(10), || {
        status(&primary.client)["link"] == "unreachable"
    });
    let secondary = start_secondary(&sdir, &repl, &[], &[]);
    wait_until("the pair connects", &[&primary, &secondary], Duration::from_secs(10), || {
        status(&primary.client)["link"] == "connected"
    });
    expect_code(0, ["client", "--addr", &primary.client, "put", "k", "v"]);
    drop(secondary);

    // Another store answers at the peer's address: refused, and the running
    // primary keeps running and says why.
    let other = root.path().join("other");
    expect_code(0, ["init", p(&other), "--segment-size", SEGMENT_SIZE]);
    let mut impostor = start_secondary(&other, &repl, &[], &[]);
    assert_eq!(impostor.wait_exit(Duration::from_secs(20)), Some(76), "{}", impostor.log());
    let s = status(&primary.client);
    assert_eq!(s["link"], "refused", "{s}");
    assert!(s["refusal"].as_str().is_some_and(|r| r.contains("store ids differ")), "{s}");
    assert_eq!(expect_code(0, ["client", "--addr", &primary.client, "get", "k"]).stdout, "v");
}

#[test]
fn garbage_on_the_client_port_gets_an_error_and_the_node_keeps_serving() {
    use std::io::{Read, Write};
    let root = tempfile::tempdir().expect("tempdir");
    let (pdir, sdir) = init_pair(root.path());
    let (primary, _secondary) = start_pair(&pdir, &sdir, &[]);
    let mut raw = std::net::TcpStream::connect(&primary.client).expect("connect");
    raw.write_all(b"GET / HTTP/1.1\r\nHost: lockstep\r\n\r\n").expect("write");
    let mut answer = Vec::new();
    raw.read_to_end(&mut answer).expect("read");
    let (kind, payload) = lockstep_replicator::protocol::decode_frame(&answer).expect("one frame");
    match lockstep_replicator::protocol::Response::decode(kind, payload).expect("a response") {
        lockstep_replicator::protocol::Response::Error { code, message } => {
            assert_eq!(code, 64);
            assert!(message.contains("bad request"), "{message}");
        }
        other => panic!("garbage got {other:?}"),
    }
    expect_code(0, ["client", "--addr", &primary.client, "put", "k", "v"]);
    // An oversized key is a clear error too.
    let long = "k".repeat(70_000);
    let run = expect_code(64, ["client", "--addr", &primary.client, "put", &long, "v"]);
    assert!(run.stderr.contains("key"), "{}", run.stderr);
}

#[test]
fn two_primaries_refuse_each_other_with_exit_76() {
    let root = tempfile::tempdir().expect("tempdir");
    let (adir, bdir) = init_pair(root.path());
    // Each dials the other's replication address; pick B's port first.
    let b_repl = free_addr();
    let mut a = start_primary(&adir, &b_repl, &[], &[]);
    let a_repl = a.repl.clone().expect("a primary listens on --repl");
    let mut args = primary_args(&bdir, &a_repl, &[]);
    let at = args.iter().position(|x| x == "--repl").expect("--repl") + 1;
    args[at] = b_repl;
    let (b_code, b_log) = serve_until_exit(&args, &bdir.with_extension("primary.log"));
    assert_eq!(b_code, Some(76), "{b_log}");
    assert_eq!(a.wait_exit(Duration::from_secs(20)), Some(76), "{}", a.log());
    for log in [b_log, a.log()] {
        assert!(log.contains("both nodes claim the role primary"), "{log}");
    }
}
