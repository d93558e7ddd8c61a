//! Seam QA as a person meets it: `reelfarm render` of a final pass scores every continuity
//! join after the stitch, renders a failing one again with a new seed and keeps the best
//! try; the report lists every try with its scores. The join is made to fail on purpose (the
//! worker's mirror fault flips the continuation's first render from its first timeline frame
//! on: the picture jumps, its colours do not), since the model's own joins here pass.

use std::path::Path;
use std::process::Command;

use reelfarm_tests::cluster::reelfarm_binary;

/// A still shot continued by the same still shot: the join hides well within the segments'
/// own frame-to-frame change (badness about 0.7), unless it is broken on purpose.
const SPEC: &str = r#"
title: Seam QA
fps: 8
seed: 1
pass: final
steps: 6
continuity_blend: 1.0
shots:
  - {prompt: "Mountains at noon, clear sky, static camera", duration: 2}
  - {prompt: "Mountains at noon, clear sky, static camera", duration: 2, transition: continue}
"#;

fn render(dir: &Path, fault: Option<&str>) -> (serde_json::Value, String) {
    let spec = dir.join("spec.yaml");
    std::fs::write(&spec, SPEC).unwrap();
    let mut command = Command::new(reelfarm_binary());
    command
        .args(["render", spec.to_str().unwrap(), "-o"])
        .arg(dir.join("out.mp4"))
        .args(["--no-cache"])
        .env("RAYON_NUM_THREADS", "1")
        .env("XDG_CACHE_HOME", dir);
    if let Some(segment) = fault {
        command.env("REELFARM_FAULT_MIRROR_SEGMENT", segment);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "render failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = std::fs::read(dir.join("out.report.json")).unwrap();
    (
        serde_json::from_slice(&report).unwrap(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

fn continuity_join(report: &serde_json::Value) -> &serde_json::Value {
    report["joins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|join| join["kind"] == "continue")
        .expect("a continuity join")
}

#[test]
fn a_join_that_fails_is_rendered_again_with_a_new_seed_and_the_report_lists_every_try() {
    let dir = tempfile::tempdir().unwrap();
    let (report, summary) = render(dir.path(), Some("s001-00"));
    assert_eq!(report["seam_qa"]["enabled"], true, "{report}");
    let tries = report["seam_qa"]["tries"].as_array().unwrap();
    eprintln!(
        "{}",
        serde_json::to_string_pretty(&report["seam_qa"]).unwrap()
    );
    assert!(tries.len() >= 2, "a failed try and a new one: {tries:?}");
    let first = &tries[0];
    assert_eq!(first["segment_id"], "s001-00");
    assert_eq!(first["passed"], false, "the mirrored render fails: {first}");
    assert_eq!(first["kept"], false);
    let jump = first["structure_jump"].as_f64().unwrap();
    let within = first["structure_within_p95"].as_f64().unwrap();
    assert!(
        jump > 2.0 * within,
        "the mirror is a structure jump: {jump} against {within}"
    );
    let seeds: std::collections::BTreeSet<u64> = tries
        .iter()
        .map(|tried| tried["seed"].as_u64().unwrap())
        .collect();
    assert_eq!(seeds.len(), tries.len(), "every try has its own seed");
    let kept: Vec<_> = tries.iter().filter(|tried| tried["kept"] == true).collect();
    assert_eq!(kept.len(), 1, "one try is in the video: {tries:?}");
    assert_eq!(kept[0]["passed"], true, "re-rendered into one that passes");
    let best = tries
        .iter()
        .map(|tried| tried["badness"].as_f64().unwrap())
        .fold(f64::INFINITY, f64::min);
    assert_eq!(
        kept[0]["badness"].as_f64().unwrap(),
        best,
        "the best try is kept"
    );
    // The video's join is the kept try's.
    let join = continuity_join(&report);
    assert_eq!(join["qa_passed"], true, "{join}");
    assert_eq!(join["structure_jump"], kept[0]["structure_jump"]);
    let expected = format!(
        "join at s001-00: {} tries, kept seed {} (passes",
        tries.len(),
        kept[0]["seed"]
    );
    assert!(summary.contains(&expected), "{expected:?} in: {summary}");
}

#[test]
fn a_join_that_passes_renders_once_and_draft_passes_skip_qa() {
    let dir = tempfile::tempdir().unwrap();
    let (report, summary) = render(dir.path(), None);
    assert!(
        summary.contains("every continuity join passed on its first render"),
        "{summary}"
    );
    assert_eq!(report["seam_qa"]["enabled"], true);
    assert_eq!(
        report["seam_qa"]["tries"],
        serde_json::json!([]),
        "{report}"
    );
    assert_eq!(continuity_join(&report)["qa_passed"], true);

    let draft = tempfile::tempdir().unwrap();
    std::fs::write(
        draft.path().join("spec.yaml"),
        SPEC.replace("pass: final", "pass: draft"),
    )
    .unwrap();
    let output = Command::new(reelfarm_binary())
        .args([
            "render",
            draft.path().join("spec.yaml").to_str().unwrap(),
            "-o",
        ])
        .arg(draft.path().join("out.mp4"))
        .env("REELFARM_FAULT_MIRROR_SEGMENT", "s001-00")
        .env("XDG_CACHE_HOME", draft.path())
        .output()
        .unwrap();
    assert!(output.status.success());
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(draft.path().join("out.report.json")).unwrap())
            .unwrap();
    assert_eq!(report["seam_qa"]["enabled"], false);
    assert_eq!(
        continuity_join(&report)["qa_passed"],
        false,
        "a draft keeps its failing join (QA scores it, nobody renders it again)"
    );
}
