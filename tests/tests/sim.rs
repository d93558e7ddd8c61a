//! `reelfarm sim` as a person runs it: the three policies on the reference trace, in JSON,
//! through the farm core; a farm at scale with its decision speed, writes and memory fields.

use std::process::Command;

use reelfarm_tests::cluster::reelfarm_binary;

/// `reelfarm sim ARGS --json`'s records; the command must succeed.
fn sim_json(args: &[&str]) -> Vec<serde_json::Value> {
    let output = Command::new(reelfarm_binary())
        .arg("sim")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    results.as_array().unwrap().clone()
}

#[test]
fn the_simulated_pool_ranks_the_policies() {
    let results = sim_json(&["--policy", "all"]);
    let policies: Vec<&str> = results
        .iter()
        .map(|r| r["policy"].as_str().unwrap())
        .collect();
    assert_eq!(policies, ["fifo", "pack", "full"]);
    let get = |policy: &str, field: &str| {
        results.iter().find(|r| r["policy"] == policy).unwrap()[field]
            .as_f64()
            .unwrap()
    };
    for policy in ["fifo", "pack", "full"] {
        for field in [
            "makespan_s",
            "lower_bound_s",
            "busy",
            "ooms",
            "p50_s",
            "p95_s",
        ] {
            assert!(get(policy, field).is_finite(), "{policy}.{field}");
        }
        assert!(get(policy, "makespan_s") >= get(policy, "lower_bound_s"));
        assert_eq!(get(policy, "given_up"), 0.0, "{policy} gave segments up");
    }
    // Out-of-memory failures happen (a cold estimate may take a whole idle 24 GB card for a
    // 1080p final that needs a little more) and the ladder recovers every one: nothing is
    // given up (above), and full runs out no more often than one segment per GPU does.
    assert!(get("full", "ooms") <= get("fifo", "ooms"));
    // At least 1.3x faster than one segment per GPU. Within 1.15x of the lower bound: the
    // farm places with the catalog's estimates only; the simulated GPUs know how much of a
    // fast card each segment can really use (README "Placement ... and the simulator").
    assert!(get("full", "makespan_s") * 1.3 <= get("fifo", "makespan_s"));
    assert!(get("full", "makespan_s") <= get("full", "lower_bound_s") * 1.15);
    for field in [
        "decisions_per_s",
        "decision_p99_ms",
        "state_writes_per_segment",
    ] {
        assert!(get("full", field) > 0.0, "{field}");
    }
}

#[test]
fn a_farm_at_scale_reports_decision_speed_state_writes_and_memory() {
    let results = sim_json(&["--gpus", "200", "--segments", "4000", "--policy", "full"]);
    let full = &results[0];
    assert_eq!(full["policy"], "full");
    assert_eq!(full["gpus"], 200);
    assert!(full["segments"].as_u64().unwrap() >= 4000);
    assert_eq!(full["given_up"], 0);
    assert!(full["decisions_per_s"].as_f64().unwrap() > 0.0);
    assert!(full["decision_p99_ms"].as_f64().unwrap() > 0.0);
    let writes = full["state_writes_per_segment"].as_f64().unwrap();
    assert!(
        (1.0..=6.0).contains(&writes),
        "{writes} state writes per segment"
    );
    // Read from /proc/self/status on Linux.
    assert!(full["peak_rss_bytes"].as_u64().unwrap() > 1 << 20);
}

#[test]
fn a_farm_at_scale_needs_both_its_size_flags() {
    let output = Command::new(reelfarm_binary())
        .args(["sim", "--gpus", "200"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--segments"), "{stderr}");
}

#[test]
fn an_unknown_policy_is_refused_naming_the_flag() {
    let output = Command::new(reelfarm_binary())
        .args(["sim", "--policy", "lifo"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--policy: must be fifo, pack, full or all, got lifo"),
        "{stderr}"
    );
}
