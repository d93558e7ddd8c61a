//! The demo model's commands as a person runs them: `eval-tiny` scores the shipped weights on held-out prompts against untrained ones, `train-tiny` trains and writes weights with a loss curve, `bench tiny` times a segment, and bad options fail naming the option.

use std::process::Command;

use reelfarm_tests::cluster::reelfarm_binary;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(reelfarm_binary())
        .args(args)
        .output()
        .expect("run reelfarm")
}

#[test]
fn the_shipped_weights_follow_held_out_prompts_better_than_untrained_ones() {
    // 35 prompts: every camera move 5 times, every time of day 7 times.
    let output = run(&["eval-tiny", "--prompts", "35", "--seconds", "2", "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let score = |attribute: &str, model: &str| report[attribute][model].as_f64().unwrap();
    for attribute in ["time_of_day", "camera", "setting", "weather"] {
        for model in ["trained", "random", "chance"] {
            let value = score(attribute, model);
            assert!(
                (0.0..=1.0).contains(&value),
                "{attribute}.{model} = {value}"
            );
        }
    }
    // What the shipped weights reliably do: move the camera, and draw the time of day and the
    // setting, the way the prompt says, far above untrained weights (`eval-tiny --check`
    // holds them to the goals).
    for (attribute, margin) in [("camera", 0.4), ("time_of_day", 0.3), ("setting", 0.15)] {
        let (trained, random) = (score(attribute, "trained"), score(attribute, "random"));
        assert!(
            trained >= random + margin,
            "{attribute}: trained {trained}, random {random}"
        );
    }
    assert_eq!(report["same_seed_identical"], true);
    assert!(report["other_seed_difference"].as_f64().unwrap() > 1.0);
    assert_eq!(report["cases"].as_array().unwrap().len(), 35);
}

#[test]
fn training_writes_weights_and_a_loss_curve() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("tiny.safetensors");
    let output = run(&[
        "train-tiny",
        "--cycles",
        "1,1@0.0005",
        "--batch",
        "1",
        "--every",
        "1",
        "-o",
        weights.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("step     2/2  cycle 2  loss"), "{stdout}");
    assert!(stdout.contains("differs from the shipped weights (non-default options)"));
    let size = std::fs::metadata(&weights).unwrap().len();
    assert!(size > 1_000_000 && size <= 25_000_000, "{size} bytes");
    let curve = std::fs::read_to_string(dir.path().join("tiny.loss.csv")).unwrap();
    assert_eq!(curve.lines().count(), 3, "{curve}");
    // The written weights load and render.
    let bench = run(&[
        "bench",
        "tiny",
        "--weights",
        weights.to_str().unwrap(),
        "--seconds",
        "1",
        "--runs",
        "1",
        "--json",
    ]);
    assert!(
        bench.status.success(),
        "{}",
        String::from_utf8_lossy(&bench.stderr)
    );
    let bench: serde_json::Value = serde_json::from_slice(&bench.stdout).unwrap();
    assert_eq!(bench["frames"], 25);
    assert!(bench["per_step_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_options_name_the_option() {
    for (args, expected) in [
        (vec!["train-tiny", "--cycles", "0@0.001"], "--cycles"),
        (vec!["train-tiny", "--cycles", "100@fast"], "--cycles"),
        (vec!["eval-tiny", "--prompts", "0"], "--prompts"),
        (vec!["eval-tiny", "--seconds", "90"], "--seconds"),
        (vec!["bench", "tiny", "--seconds", "0"], "--seconds"),
    ] {
        let output = run(&args);
        assert!(!output.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
