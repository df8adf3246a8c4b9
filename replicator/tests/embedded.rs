//! The library form: an application embeds a primary `Node` (and here a
//! secondary too) and gets replicated durability from the same API.

use std::time::{Duration, Instant};

use lockstep_engine::{Options, Store, WriteBatch};
use lockstep_replicator::node::{Node, NodeConfig, NodeError};
use lockstep_replicator::protocol::Role;

fn config(dir: &std::path::Path, role: Role, peer: String) -> NodeConfig {
    NodeConfig::new(dir, role, "127.0.0.1:0", peer)
}

#[test]
fn an_embedded_pair_replicates_writes_and_the_secondary_refuses_them() {
    let root = tempfile::tempdir().expect("tempdir");
    let (pdir, sdir) = (root.path().join("p"), root.path().join("s"));
    let id = Store::create(&pdir, &Options::default()).expect("create");
    Store::create(&sdir, &Options { store_id: Some(id), ..Options::default() }).expect("create second site");
    let secondary = Node::start(config(&sdir, Role::Secondary, "127.0.0.1:9".into())).expect("secondary");
    let peer = secondary.repl_addr().expect("repl address").to_string();
    let primary = Node::start(config(&pdir, Role::Primary, peer)).expect("primary");

    primary.put("patient/17", "allergy: penicillin").expect("put");
    let mut batch = WriteBatch::new();
    batch.put("patient/18", "ok").delete("patient/17");
    primary.write(batch).expect("batch");
    // Acknowledged means durable on both sites: readable there at once.
    assert_eq!(secondary.get("patient/18").expect("get").as_deref(), Some(&b"ok"[..]));
    assert_eq!(secondary.get("patient/17").expect("get"), None);
    assert_eq!(secondary.info().fingerprint, primary.info().fingerprint);
    let scanned: Vec<_> = secondary.scan_prefix("patient/").expect("scan").map(|r| r.expect("item").0).collect();
    assert_eq!(scanned, vec![bytes::Bytes::from_static(b"patient/18")]);

    let err = secondary.put("x", "y").expect_err("a secondary takes no writes");
    assert!(matches!(err, NodeError::NotPrimary { .. }), "{err}");
    assert_eq!(err.exit_code(), 77);
    assert!(err.to_string().contains("127.0.0.1:9"), "{err}");

    let deadline = Instant::now() + Duration::from_secs(5);
    while primary.status()["lag_bytes"] != 0 {
        assert!(Instant::now() < deadline, "{}", primary.status());
        std::thread::sleep(Duration::from_millis(10));
    }
    primary.shutdown().expect("primary shutdown");
    secondary.shutdown().expect("secondary shutdown");
    // Both closed cleanly: the stores open again.
    Store::open(&pdir, Options::default()).expect("reopen primary").close().expect("close");
    Store::open(&sdir, Options::default()).expect("reopen secondary").close().expect("close");
}

/// A primary whose disk fails an fsync is poisoned: it stops heartbeats and
/// lease renewals, so its secondary (automatic failover) takes over, and it
/// says why (`lockstep serve` exits 74 on it). Before, it went on renewing
/// its lease while it could not write, and the pair stood still.
#[test]
fn a_poisoned_primary_stops_its_lease_and_its_secondary_takes_over() {
    use lockstep_engine::sim::{Faults, SimStorage};
    let root = tempfile::tempdir().expect("tempdir");
    let disk = SimStorage::new(7);
    let pdir = std::path::PathBuf::from("/primary");
    let on_disk = Options { storage: std::sync::Arc::new(disk.clone()), ..Options::default() };
    let id = Store::create(&pdir, &on_disk).expect("create");
    let sdir = root.path().join("s");
    Store::create(&sdir, &Options { store_id: Some(id), ..Options::default() }).expect("create second site");
    let secondary = Node::start(NodeConfig {
        auto_failover: true,
        lease: Duration::from_millis(100),
        ..config(&sdir, Role::Secondary, "127.0.0.1:9".into())
    })
    .expect("secondary");
    let peer = secondary.repl_addr().expect("repl address").to_string();
    let primary = Node::start(NodeConfig {
        storage: Some(std::sync::Arc::new(disk.clone())),
        ..config(&pdir, Role::Primary, peer)
    })
    .expect("primary");
    primary.put("k", "v").expect("put");
    assert_eq!(primary.poisoned(), None);

    disk.set_faults(Faults { fail_sync_after: Some(0), ..Faults::default() });
    primary.put("k2", "v2").expect_err("the fsync failed");
    let reason = primary.poisoned().expect("the primary knows it is poisoned");
    let deadline = Instant::now() + Duration::from_secs(10);
    while secondary.status()["role"] != "primary" {
        assert!(Instant::now() < deadline, "the secondary never took over: {} / {reason}", secondary.status());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(secondary.get("k").expect("get").as_deref(), Some(&b"v"[..]));
    secondary.put("k3", "v3").expect("the new primary takes writes");
    disk.set_faults(Faults::default());
    drop(primary);
}
