//! `lockstep drill` end to end: every fault kind, automatic and manual
//! failover, the JSON report, the chart and the operation history.

use lockstep_tests::{expect_code, p};
use serde_json::Value;

fn run_drill(args: &[&str]) -> (Value, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (json, svg, history) = (dir.path().join("d.json"), dir.path().join("d.svg"), dir.path().join("h.jsonl"));
    let work = dir.path().join("work");
    let mut all = vec!["drill", "--dir", p(&work), "--json", p(&json), "--svg", p(&svg), "--history", p(&history)];
    all.extend(args);
    let run = expect_code(0, &all);
    assert!(run.stdout.contains("lost: 0"), "{}", run.stdout);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("report");
    assert!(std::fs::read_to_string(&svg).expect("svg").starts_with("<svg"));
    (report, std::fs::read_to_string(&history).expect("history"))
}

#[test]
fn every_fault_fails_over_and_rejoins_without_losing_an_acknowledged_write() {
    let (report, history) = run_drill(&[]);
    let drills = report["drills"].as_array().expect("drills");
    let faults: Vec<&str> = drills.iter().filter_map(|d| d["fault"].as_str()).collect();
    assert_eq!(faults, ["kill-primary", "partition", "kill-secondary", "crash-during-catchup"]);
    for d in drills {
        for field in
            ["detection_ms", "promotion_ms", "unavailability_ms", "rejoin_ms", "resync_bytes", "truncated_bytes"]
        {
            assert!(d[field].as_f64().is_some_and(|v| v >= 0.0), "{field} in {d}");
        }
        assert!(d["acked_writes"].as_u64().expect("acked") > 0, "{d}");
        assert_eq!(d["lost_acked_writes"], 0, "{d}");
        assert_eq!(d["acked_on_both"], d["acked_writes"], "{d}");
    }
    for timing in ["detection_ms", "promotion_ms", "unavailability_ms", "rejoin_ms"] {
        for stat in ["min", "p50", "p99", "max"] {
            assert!(report["summary"][timing][stat].is_number(), "summary {timing} {stat}");
        }
    }
    // The history is Jepsen-style: every line an operation, reads mixed in.
    let ops: Vec<Value> = history.lines().map(|l| serde_json::from_str(l).expect("history line")).collect();
    assert!(ops.iter().any(|o| o["f"] == "read" && o["type"] == "ok"));
    assert!(ops.iter().any(|o| o["f"] == "write" && o["type"] == "ok"));
    for o in &ops {
        for field in ["process", "type", "f", "key", "time_ns"] {
            assert!(!o[field].is_null(), "{field} missing in {o}");
        }
    }
}

#[test]
fn manual_failover_drills_promote_through_the_cli() {
    let (report, _) = run_drill(&["--manual", "--drills", "4", "--writers", "2"]);
    for d in report["drills"].as_array().expect("drills") {
        if d["fault"] != "kill-secondary" {
            assert!(d["promotion_ms"].as_f64().expect("promotion") > 0.0, "{d}");
        }
        assert_eq!(d["lost_acked_writes"], 0, "{d}");
    }
}
