//! The CLI's exact shapes: commands, output, exit codes.

use lockstep_tests::{expect_code, lockstep, p};
use serde_json::Value;

#[test]
fn init_put_get_delete_scan() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("store");
    let d = p(&dir);
    let id = expect_code(0, ["init", d, "--segment-size", "64K"]).stdout;
    let id = id.trim();
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "store id: {id:?}");
    for (k, v) in [("user/2", "bob"), ("user/1", "alice"), ("group/1", "admins"), ("user/3", "carol")] {
        expect_code(0, ["put", d, k, v]);
    }
    assert_eq!(expect_code(0, ["get", d, "user/1"]).stdout, "alice");
    expect_code(1, ["get", d, "user/9"]);
    expect_code(0, ["delete", d, "user/2"]);
    expect_code(1, ["get", d, "user/2"]);
    assert_eq!(expect_code(0, ["scan", d]).stdout, "group/1\tadmins\nuser/1\talice\nuser/3\tcarol\n");
    assert_eq!(expect_code(0, ["scan", d, "--prefix", "user/"]).stdout, "user/1\talice\nuser/3\tcarol\n");
    assert_eq!(expect_code(0, ["scan", d, "--prefix", "user/", "--limit", "1"]).stdout, "user/1\talice\n");
    let check = expect_code(0, ["check", d]);
    assert!(check.stdout.contains(id) && check.stdout.contains("clean"), "{}", check.stdout);
}

#[test]
fn init_binds_a_given_store_id_and_refuses_twice() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = p(tmp.path());
    let id = "0123456789abcdef0123456789abcdef";
    assert_eq!(expect_code(0, ["init", d, "--store-id", id]).stdout.trim(), id);
    let again = expect_code(64, ["init", d]);
    assert!(again.stderr.contains(id), "{}", again.stderr);
    expect_code(64, ["init", p(&tmp.path().join("x")), "--store-id", "not-hex"]);
    expect_code(64, ["init", p(&tmp.path().join("y")), "--segment-size", "1000"]);
}

#[test]
fn inspect_json_has_the_documented_fields() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = p(tmp.path());
    let id = expect_code(0, ["init", d, "--segment-size", "65536"]).stdout.trim().to_string();
    for i in 0..300 {
        expect_code(0, ["put", d, &format!("k{i:03}"), &"v".repeat(400)]);
    }
    let json: Value = serde_json::from_str(&expect_code(0, ["inspect", d, "--json"]).stdout).expect("one JSON object");
    assert_eq!(json["format_version"], 1);
    assert_eq!(json["store_id"], id.as_str());
    assert_eq!(json["node_id"].as_str().map(str::len), Some(32));
    assert_eq!(json["epoch"], 1);
    assert_eq!(json["fingerprint"].as_str().map(str::len), Some(32));
    let segments = json["segments"].as_array().expect("segments array");
    assert!(segments.len() >= 2, "{json}");
    let mut next = 0;
    for s in segments {
        assert_eq!(s["first_position"].as_u64(), Some(next));
        next += s["len"].as_u64().expect("len");
        assert!(s["file"].as_str().expect("file").starts_with("segment-"));
    }
    assert_eq!(json["log_end"].as_u64(), Some(next));
    let text = expect_code(0, ["inspect", d]).stdout;
    assert!(text.contains(&id) && text.contains("fingerprint"), "{text}");
}

#[test]
fn bad_input_exits_64_and_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = p(tmp.path());
    expect_code(0, ["init", d]);
    expect_code(0, ["put", d, "keep", "me"]);
    let before = expect_code(0, ["inspect", d, "--json"]).stdout;
    let long_key = "k".repeat(4097);
    let run = expect_code(64, ["put", d, &long_key, "v"]);
    assert!(run.stderr.contains("4096"), "{}", run.stderr);
    expect_code(64, ["put", d, "", "v"]);
    expect_code(64, ["delete", d, ""]);
    expect_code(64, ["get", d, ""]);
    expect_code(64, ["put", d, "only-key"]);
    expect_code(64, ["frobnicate"]);
    let after = expect_code(0, ["inspect", d, "--json"]).stdout;
    let (b, a): (Value, Value) =
        (serde_json::from_str(&before).expect("json"), serde_json::from_str(&after).expect("json"));
    assert_eq!(b["log_end"], a["log_end"]);
    assert_eq!(b["fingerprint"], a["fingerprint"]);
}

#[test]
fn oversize_value_exits_64() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = p(tmp.path());
    expect_code(0, ["init", d, "--segment-size", "64K"]);
    let run = expect_code(64, ["put", d, "k", &"v".repeat(70_000)]);
    assert!(run.stderr.starts_with("lockstep: invalid argument"), "{}", run.stderr);
    expect_code(1, ["get", d, "k"]);
}

#[test]
fn a_store_in_use_is_refused_with_75_but_inspect_works() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = p(tmp.path());
    expect_code(0, ["init", d]);
    let store = lockstep_engine::Store::open(tmp.path(), Default::default()).expect("open in this process");
    store.put("k", "v").expect("put");
    let run = expect_code(75, ["put", d, "k", "w"]);
    assert!(run.stderr.contains(&format!("process {}", std::process::id())), "{}", run.stderr);
    expect_code(75, ["get", d, "k"]);
    let json: Value = serde_json::from_str(&expect_code(0, ["inspect", d, "--json"]).stdout).expect("json");
    assert!(json["log_end"].as_u64().expect("log_end") > 0);
    drop(store);
    assert_eq!(expect_code(0, ["get", d, "k"]).stdout, "v");
}

#[test]
fn commands_on_a_missing_store_exit_64() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("nothing-here");
    let run = lockstep(["get", p(&missing), "k"]);
    assert_eq!(run.code, 64, "{}", run.stderr);
    assert!(run.stderr.contains("lockstep init"), "{}", run.stderr);
    assert!(!missing.exists(), "a read must not create the directory");
}

#[test]
fn load_prints_a_json_summary_last() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("demo");
    let run = expect_code(
        0,
        ["load", p(&dir), "--records", "500", "--writers", "4", "--key-size", "8", "--value-size", "50"],
    );
    let last = run.stdout.lines().last().expect("a line");
    let json: Value = serde_json::from_str(last).expect("JSON summary");
    for field in ["records", "seconds", "ops_per_sec", "p50_us", "p99_us", "bytes"] {
        assert!(json.get(field).is_some(), "missing {field} in {json}");
    }
    assert_eq!(json["records"], 500);
    let key = String::from_utf8(lockstep_replicator::load::key(123, 8)).expect("ascii");
    let value = String::from_utf8(lockstep_replicator::load::value(123, 50)).expect("ascii");
    assert_eq!(expect_code(0, ["get", p(&dir), &key]).stdout, value);
    expect_code(64, ["load", p(&dir), "--records", "500", "--key-size", "2"]);
}
