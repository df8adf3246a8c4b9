//! Failover with real processes on loopback: manual promotion after the
//! primary is SIGKILLed, automatic promotion when the primary falls silent,
//! the old primary rejoining (its unacknowledged tail truncated and
//! exported), split brain after `degrade` refused and exported by
//! `lockstep rejoin`, and a partitioned primary whose lease expired never
//! answering again.

use std::time::{Duration, Instant};

use lockstep_replicator::client::Client;
use lockstep_replicator::proxy::{Fault, FaultProxy};
use lockstep_tests::pair::*;
use lockstep_tests::{expect_code, p, serve_until_exit, Served};

/// Every acknowledged write readable through `addr`, and the two nodes'
/// logs identical once `primary` reports its secondary caught up.
fn wait_identical(primary: &Served, secondary: &Served) {
    wait_until("the pair is in step", &[primary, secondary], Duration::from_secs(30), || {
        let (a, b) = (status(&primary.client), status(&secondary.client));
        a["link"] == "connected"
            && a["exposure_bytes"] == 0
            && a["degraded"] == false
            && a["log_end"] == b["log_end"]
            && a["fingerprint"] == b["fingerprint"]
    });
}

fn promote(addr: &str, extra: &[&str]) -> u64 {
    let mut args = vec!["promote", "--addr", addr];
    args.extend(extra);
    let out = expect_code(0, &args).stdout;
    out.trim().rsplit(' ').next().and_then(|e| e.parse().ok()).expect("promote prints the epoch")
}

#[test]
fn manual_failover_after_sigkill_then_the_old_primary_rejoins() {
    let root = tempfile::tempdir().expect("tempdir");
    let (a_dir, b_dir) = init_pair(root.path());
    let (a_repl, b_repl) = (free_addr(), free_addr());
    let b = start_node(&b_dir, "secondary", &b_repl, &a_repl, &[]);
    let mut a = start_node(&a_dir, "primary", &a_repl, &b_repl, &[]);
    let writers = Writers::start(&a.client, 4);
    writers.wait_for(300, &[&a, &b]);
    a.child.kill().expect("SIGKILL the primary");
    a.child.wait().expect("reap");
    let mut acked = writers.finish();

    assert_eq!(promote(&b.client, &[]), 2);
    let s = status(&b.client);
    assert_eq!((s["role"].as_str(), s["epoch"].as_u64()), (Some("primary"), Some(2)), "{s}");
    assert_all_readable(&b.client, &acked);
    // The promoted node takes writes alone and says so.
    let more = Writers::start(&b.client, 2);
    more.wait_for(100, &[&b]);
    acked.extend(more.finish());
    let s = status(&b.client);
    assert!(s["exposure_bytes"].as_u64().expect("exposure") > 0, "{s}");
    expect_code(64, ["promote", "--addr", &b.client]); // already primary

    // The old primary comes back as secondary on its old directory: its
    // unacknowledged tail (if any) is cut and exported, then it catches up.
    let a = start_node(&a_dir, "secondary", &a_repl, &b_repl, &[]);
    wait_identical(&b, &a);
    assert_all_readable(&a.client, &acked);
    let sa = status(&a.client);
    assert_eq!((sa["role"].as_str(), sa["epoch"].as_u64()), (Some("secondary"), Some(2)), "{sa}");
    // Back in synchronous mode: a write is on both sites when it returns.
    expect_code(0, ["client", "--addr", &b.client, "put", "after-rejoin", "1"]);
    assert_eq!(expect_code(0, ["client", "--addr", &a.client, "get", "after-rejoin"]).stdout, "1");
}

#[test]
fn automatic_failover_promotes_the_secondary_within_the_lease() {
    let root = tempfile::tempdir().expect("tempdir");
    let (a_dir, b_dir) = init_pair(root.path());
    let (a_repl, b_repl) = (free_addr(), free_addr());
    let b = start_node(&b_dir, "secondary", &b_repl, &a_repl, &["--auto-failover", "--lease", "300ms"]);
    let mut a = start_node(&a_dir, "primary", &a_repl, &b_repl, &[]);
    let writers = Writers::start(&a.client, 4);
    writers.wait_for(200, &[&a, &b]);
    a.child.kill().expect("SIGKILL the primary");
    let killed = Instant::now();
    a.child.wait().expect("reap");
    let acked = writers.finish();
    wait_until("the secondary promotes itself", &[&b], Duration::from_secs(10), || {
        status(&b.client)["role"] == "primary"
    });
    let took = killed.elapsed();
    assert!(took >= Duration::from_millis(400), "promoted before the lease ran out: {took:?}");
    assert!(took < Duration::from_secs(3), "promotion took {took:?}");
    assert_all_readable(&b.client, &acked);
    expect_code(0, ["client", "--addr", &b.client, "put", "k", "v"]);

    // An unsafe combination is refused at the handshake: auto-failover on
    // the secondary needs a primary that blocks.
    let (c_dir, d_dir) = (root.path().join("c"), root.path().join("d"));
    let id = expect_code(0, ["init", p(&c_dir)]).stdout;
    expect_code(0, ["init", p(&d_dir), "--store-id", id.trim()]);
    let (c_repl, d_repl) = (free_addr(), free_addr());
    let mut d = start_node(&d_dir, "secondary", &d_repl, &c_repl, &["--auto-failover"]);
    let args = node_args(&c_dir, "primary", &c_repl, &d_repl, &["--on-peer-loss", "degrade=1s"]);
    let (code, log) = serve_until_exit(&args, &c_dir.with_extension("log"));
    assert_eq!(code, Some(76), "{log}");
    assert!(log.contains("--auto-failover") && log.contains("degrade=1000ms"), "{log}");
    assert_eq!(d.wait_exit(Duration::from_secs(20)), Some(76), "{}", d.log());
}

#[test]
fn split_brain_after_degrade_is_refused_and_exported_by_rejoin() {
    let root = tempfile::tempdir().expect("tempdir");
    let (a_dir, b_dir) = init_pair(root.path());
    let (a_repl, b_repl) = (free_addr(), free_addr());
    let b = start_node(&b_dir, "secondary", &b_repl, &a_repl, &[]);
    let to_b = FaultProxy::start("127.0.0.1:0", b_repl.parse().expect("addr")).expect("proxy");
    let mut a = start_node(&a_dir, "primary", &a_repl, &to_b.addr().to_string(), &["--on-peer-loss", "degrade=200ms"]);
    expect_code(0, ["client", "--addr", &a.client, "put", "shared", "1"]);
    // Partition: the primary goes on alone and acknowledges writes b never gets.
    to_b.set(Fault::Cut);
    expect_code(0, ["client", "--addr", &a.client, "put", "alone/1", "written while partitioned"]);
    expect_code(0, ["client", "--addr", &a.client, "put", "alone/2", "also"]);
    assert!(status(&a.client)["exposure_bytes"].as_u64().expect("exposure") > 0);
    a.child.kill().expect("SIGKILL");
    a.child.wait().expect("reap");
    promote(&b.client, &[]);
    expect_code(0, ["client", "--addr", &b.client, "put", "after-failover", "x"]);

    // The old primary may hold acknowledged writes b lacks: refused, 76,
    // nothing changed.
    let before = expect_code(0, ["inspect", p(&a_dir), "--json"]).stdout;
    let args = node_args(&a_dir, "secondary", &a_repl, &b_repl, &[]);
    let (code, log) = serve_until_exit(&args, &a_dir.with_extension("split.log"));
    assert_eq!(code, Some(76), "{log}");
    assert!(log.contains("split brain") && log.contains("lockstep rejoin"), "{log}");
    let after = expect_code(0, ["inspect", p(&a_dir), "--json"]).stdout;
    let field = |json: &str, k: &str| serde_json::from_str::<serde_json::Value>(json).expect("json")[k].clone();
    assert_eq!(field(&before, "log_end"), field(&after, "log_end"));

    // `lockstep rejoin` exports the divergent records, then truncates.
    let export = root.path().join("divergent.jsonl");
    expect_code(0, ["rejoin", p(&a_dir), "--export", p(&export)]);
    let lines = std::fs::read_to_string(&export).expect("export");
    let keys: Vec<String> = lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json line"))
        .filter_map(|v| v["key_text"].as_str().map(str::to_string))
        .collect();
    assert!(keys.contains(&"alone/1".to_string()) && keys.contains(&"alone/2".to_string()), "{lines}");
    assert!(lines.contains("\"position\"") && lines.contains("\"epoch\":1"), "{lines}");

    // Now it rejoins and catches up.
    let a = start_node(&a_dir, "secondary", &a_repl, &b_repl, &[]);
    wait_identical(&b, &a);
    assert_eq!(expect_code(0, ["client", "--addr", &a.client, "get", "after-failover"]).stdout, "x");
    expect_code(1, ["client", "--addr", &a.client, "get", "alone/1"]);
}

#[test]
fn a_partitioned_primary_stops_answering_once_its_lease_expires() {
    let root = tempfile::tempdir().expect("tempdir");
    let (a_dir, b_dir) = init_pair(root.path());
    let (a_repl, b_repl) = (free_addr(), free_addr());
    // Both directions run through proxies, so the partition is complete.
    let to_b = FaultProxy::start("127.0.0.1:0", b_repl.parse().expect("addr")).expect("proxy");
    let to_a = FaultProxy::start("127.0.0.1:0", a_repl.parse().expect("addr")).expect("proxy");
    let b =
        start_node(&b_dir, "secondary", &b_repl, &to_a.addr().to_string(), &["--auto-failover", "--lease", "300ms"]);
    let a = start_node(&a_dir, "primary", &a_repl, &to_b.addr().to_string(), &[]);
    expect_code(0, ["client", "--addr", &a.client, "put", "before", "1"]);
    assert_eq!(expect_code(0, ["client", "--addr", &a.client, "get", "before"]).stdout, "1");

    to_b.set(Fault::Cut);
    to_a.set(Fault::Cut);
    let cut = Instant::now();
    // A write on the old primary cannot be acknowledged (it blocks), and
    // once the lease ran out it stops serving reads too.
    let stuck = {
        let addr = a.client.clone();
        std::thread::spawn(move || Client::connect(&addr).and_then(|mut c| c.put(b"during", b"partition")))
    };
    wait_until("the old primary's lease expires", &[&a], Duration::from_secs(5), || {
        lockstep_tests::lockstep(["client", "--addr", &a.client, "get", "before"]).code == 69
    });
    let expired = cut.elapsed();
    wait_until("the secondary promotes itself", &[&b], Duration::from_secs(10), || {
        status(&b.client)["role"] == "primary"
    });
    let promoted = cut.elapsed();
    assert!(expired < promoted, "the old lease ({expired:?}) must end before the promotion ({promoted:?})");
    expect_code(0, ["client", "--addr", &b.client, "put", "new-primary", "1"]);
    assert!(!stuck.is_finished(), "the old primary acknowledged a write during the partition");

    // Heal: the old primary learns it was demoted; its pending write fails
    // (never acknowledged), and it rejoins as secondary.
    to_b.set(Fault::Pass);
    to_a.set(Fault::Pass);
    let result = stuck.join().expect("thread");
    assert!(result.is_err(), "the old primary acknowledged a write after being replaced: {result:?}");
    wait_identical(&b, &a);
    assert_eq!(status(&a.client)["role"], "secondary");
    assert_eq!(expect_code(0, ["client", "--addr", &a.client, "get", "new-primary"]).stdout, "1");
    expect_code(1, ["client", "--addr", &a.client, "get", "during"]);
    let exported = std::fs::read_dir(a_dir.join("recovered")).map(|d| d.count()).unwrap_or(0);
    assert!(exported >= 1, "the truncated tail was not exported");
    assert!(a.log().contains("rejoined: truncated"), "{}", a.log());
}

#[test]
fn switchover_swaps_roles_both_ways_with_no_write_lost() {
    let root = tempfile::tempdir().expect("tempdir");
    let (a_dir, b_dir) = init_pair(root.path());
    let (a_repl, b_repl) = (free_addr(), free_addr());
    let b = start_node(&b_dir, "secondary", &b_repl, &a_repl, &[]);
    let a = start_node(&a_dir, "primary", &a_repl, &b_repl, &[]);
    let mut acked = Vec::new();
    for (primary, secondary, epoch) in [(&a, &b, 2), (&b, &a, 3)] {
        let writers = Writers::start(&primary.client, 4);
        writers.wait_for(200, &[primary, secondary]);
        let run = lockstep_tests::lockstep(["switchover", "--addr", &primary.client]);
        assert!(
            run.code == 0 && run.stdout.contains(&format!("epoch {epoch}")),
            "switchover to epoch {epoch}: {run:?}\n--- old primary:\n{}\n--- old secondary:\n{}",
            primary.log(),
            secondary.log()
        );
        acked.extend(writers.finish()); // writes during the switchover were refused, not lost
        let (p, s) = (status(&secondary.client), status(&primary.client));
        assert_eq!((p["role"].as_str(), p["epoch"].as_u64()), (Some("primary"), Some(epoch)), "{p}");
        assert_eq!(s["role"], "secondary", "{s}");
        wait_identical(secondary, primary);
        assert_eq!(status(secondary.client.as_str())["exposure_bytes"], 0);
        assert_all_readable(&secondary.client, &acked);
        assert_all_readable(&primary.client, &acked);
    }
}

/// Found by the simulation: a primary restarted while its secondary was
/// unreachable answered reads, and wrote blocks for writes that then
/// waited, though that secondary might have promoted itself meanwhile (the
/// blocks then diverge from the new primary's log). Now it answers neither
/// until it has met its secondary (a write waits up to 2 s for that).
#[test]
fn a_restarted_primary_answers_only_after_meeting_its_secondary() {
    let root = tempfile::tempdir().expect("tempdir");
    let (a_dir, b_dir) = init_pair(root.path());
    let (a_repl, b_repl) = (free_addr(), free_addr());
    let a = start_node(&a_dir, "primary", &a_repl, &b_repl, &[]);
    let refused = expect_code(69, ["client", "--addr", &a.client, "get", "k"]);
    assert!(refused.stderr.contains("has not met its secondary"), "{}", refused.stderr);
    let refused = expect_code(69, ["client", "--addr", &a.client, "put", "early", "v"]);
    assert!(refused.stderr.contains("has not met its secondary"), "{}", refused.stderr);
    assert_eq!(inspect(&a_dir)["log_end"], 0, "a refused write reached the log");
    let b = start_node(&b_dir, "secondary", &b_repl, &a_repl, &["--auto-failover"]);
    wait_until("the pair connects", &[&a, &b], Duration::from_secs(10), || status(&a.client)["link"] == "connected");
    expect_code(0, ["client", "--addr", &a.client, "put", "k", "v"]);
    assert_eq!(expect_code(0, ["client", "--addr", &a.client, "get", "k"]).stdout, "v");
}

/// Found by the simulation: a primary ships a block before writing it, so
/// a power cut can leave the secondary holding blocks the primary lost.
/// Both restarted, the secondary was refused as "ahead" and both `serve`s
/// exited 76 (a refusal before any accepted handshake): the pair stayed
/// down. Now the secondary sees that the primary's log is a strict prefix
/// of its own in the same epoch, keeps running and, with --auto-failover,
/// takes over after the lease; the old primary (which still refuses and
/// exits) rejoins it when started again, and nothing is lost.
#[test]
fn a_secondary_holding_blocks_its_primary_lost_takes_over() {
    let root = tempfile::tempdir().expect("tempdir");
    let (a_dir, b_dir) = init_pair(root.path());
    let (a_repl, b_repl) = (free_addr(), free_addr());
    let auto = ["--auto-failover", "--lease", "300ms"];
    let mut b = start_node(&b_dir, "secondary", &b_repl, &a_repl, &auto);
    let mut a = start_node(&a_dir, "primary", &a_repl, &b_repl, &[]);
    for i in 0..3 {
        expect_code(0, ["client", "--addr", &a.client, "put", &format!("k{i}"), "v"]);
    }
    let cut = status(&a.client)["log_end"].as_u64().expect("log end");
    for i in 3..6 {
        expect_code(0, ["client", "--addr", &a.client, "put", &format!("k{i}"), "v"]);
    }
    for node in [&mut a, &mut b] {
        node.signal("-TERM");
        assert_eq!(node.wait_exit(Duration::from_secs(10)), Some(0));
    }
    // The primary loses its last blocks (as a power cut during their write would).
    let export = root.path().join("lost.jsonl");
    expect_code(0, ["rejoin", p(&a_dir), "--export", p(&export), "--position", &cut.to_string()]);

    let b = start_node(&b_dir, "secondary", &b_repl, &a_repl, &auto);
    let (code, log) =
        serve_until_exit(&node_args(&a_dir, "primary", &a_repl, &b_repl, &[]), &root.path().join("a1.log"));
    assert_eq!(code, Some(76), "{log}");
    assert!(log.contains("beyond the primary's end"), "{log}");
    wait_until("the secondary takes over", &[&b], Duration::from_secs(10), || status(&b.client)["role"] == "primary");
    // Started again as it was (as a service manager would): it meets the
    // newer primary, steps down and rejoins.
    let a = start_node(&a_dir, "primary", &a_repl, &b_repl, &[]);
    wait_until("the secondary takes over and the old primary rejoins it", &[&a, &b], Duration::from_secs(20), || {
        let status = |addr: &str| Client::connect(addr).and_then(|mut c| c.status()).ok();
        let (Some(sa), Some(sb)) = (status(&a.client), status(&b.client)) else { return false };
        sb["role"] == "primary"
            && sa["role"] == "secondary"
            && sa["log_end"] == sb["log_end"]
            && sb["link"] == "connected"
    });
    for i in 0..6 {
        assert_eq!(expect_code(0, ["client", "--addr", &a.client, "get", &format!("k{i}")]).stdout, "v");
    }
}
