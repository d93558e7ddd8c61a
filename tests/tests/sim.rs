//! `reelfarm sim` as a person runs it: the three policies on the reference trace, in JSON,
//! with the placement goals checked on the real placement code.

use std::process::Command;

use reelfarm_tests::cluster::reelfarm_binary;

#[test]
fn the_simulated_pool_ranks_the_policies() {
    let output = Command::new(reelfarm_binary())
        .args(["sim", "--policy", "all", "--json"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let results = results.as_array().unwrap();
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
    assert_eq!(
        get("full", "ooms"),
        0.0,
        "the full policy never runs out of memory"
    );
    // The goals: at least 1.3x faster than one segment per GPU, within 1.05x of the
    // lower bound.
    assert!(get("full", "makespan_s") * 1.3 <= get("fifo", "makespan_s"));
    assert!(get("full", "makespan_s") <= get("full", "lower_bound_s") * 1.05);
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
