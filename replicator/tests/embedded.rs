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
