//! What `reelfarm render` delivers beside the video, checked the way a person would use it:
//! the OTIO timeline opens in the real `opentimelineio` package, the contact sheet is a PNG
//! with a row per shot, the report carries seam metrics for every join, and a bad colour
//! setting is refused naming its field.

use std::path::Path;
use std::process::Command;

use reelfarm_tests::cluster::reelfarm_binary;
use reelfarm_tests::probe::probe;

const SPEC: &str = r#"
title: Harbour at dusk
fps: 8
steps: 1
color_match: reinhard
continuity_blend: 0.25
grade_reference: {harbour: wide}
shots:
  - {prompt: "A harbour at dusk, static camera", duration: 3, scene: harbour, name: wide}
  - {prompt: "The camera pushes in toward the boats", duration: 2.5, transition: continue}
  - {prompt: "Desert dunes at noon", duration: 2, scene: desert, name: dunes}
  - {prompt: "The harbour again, from the pier", duration: 2, scene: harbour, transition: crossfade, crossfade: 0.5}
"#;

fn render(dir: &Path, spec: &str) -> std::process::Output {
    let spec_path = dir.join("spec.yaml");
    std::fs::write(&spec_path, spec).unwrap();
    Command::new(reelfarm_binary())
        .args(["render", spec_path.to_str().unwrap(), "-o"])
        .arg(dir.join("out.mp4"))
        .args(["--workers", "2"])
        .env("RAYON_NUM_THREADS", "1")
        .env("XDG_CACHE_HOME", dir)
        .output()
        .unwrap()
}

#[test]
fn render_delivers_report_timeline_and_contact_sheet_beside_the_video() {
    let dir = tempfile::tempdir().unwrap();
    let output = render(dir.path(), SPEC);
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let video = probe(&dir.path().join("out.mp4"));
    assert_eq!(video.frames, 76, "9.5 s at 8 fps, the sum of the shots");

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("out.report.json")).unwrap())
            .unwrap();
    assert_eq!(report["color_match"], "reinhard");
    let joins = report["joins"].as_array().unwrap();
    let kinds: Vec<&str> = joins.iter().map(|j| j["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["continue", "cut", "crossfade"]);
    for join in joins {
        for field in ["index", "delta_e00_before", "delta_e00_after"] {
            assert!(join[field].is_number(), "{field} missing: {join}");
        }
        let continuity = join["kind"] == "continue";
        assert_eq!(join["within_p50"].is_number(), continuity, "{join}");
        assert_eq!(join["within_p95"].is_number(), continuity, "{join}");
        assert_eq!(join["w2_before"].is_number(), !continuity, "{join}");
    }
    assert_eq!(
        joins[0]["same_scene"], true,
        "a continuation is its shot's scene"
    );
    assert_eq!(joins[1]["same_scene"], false, "harbour → desert");

    // The timeline, read by OpenTimelineIO itself.
    let script = r#"
import sys, opentimelineio as otio
t = otio.adapters.read_from_file(sys.argv[1])
clips = list(t.find_clips())
transitions = [i for i in t.tracks[0] if isinstance(i, otio.schema.Transition)]
print(len(clips))
print("|".join(c.name for c in clips))
print(" ".join(str(int(c.duration().value)) for c in clips))
print(len(transitions), int(t.duration().value), clips[0].media_reference.target_url)
"#;
    let otio = Command::new("python3")
        .args(["-c", script])
        .arg(dir.path().join("out.otio"))
        .output()
        .expect("python3 runs");
    assert!(
        otio.status.success(),
        "opentimelineio could not read the timeline (pip install opentimelineio; .ci/run does): {}",
        String::from_utf8_lossy(&otio.stderr)
    );
    let lines: Vec<String> = String::from_utf8_lossy(&otio.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        lines,
        [
            "4",
            "wide|shot 1|dunes|shot 3",
            "24 20 16 16",
            "1 76 out.mp4"
        ]
    );

    // The contact sheet: a PNG tall enough for a title and four labelled rows.
    let sheet = reelfarm_media::video::decode_png(
        &std::fs::read(dir.path().join("out.contact.png")).unwrap(),
    )
    .unwrap();
    assert!(sheet.width >= 3 * 240, "{}x{}", sheet.width, sheet.height);
    assert!(sheet.height >= 4 * 135, "{}x{}", sheet.width, sheet.height);
}

#[test]
fn a_bad_colour_setting_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = SPEC.replace("color_match: reinhard", "color_match: lut");
    let output = render(dir.path(), &bad);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("color_match: must be one of off, hm, reinhard, mkl, hm-mkl-hm, got lut"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("out.mp4").exists(),
        "nothing is written for a refused spec"
    );
}

/// Every continuity join of the shipped examples, rendered with their defaults, changes no
/// more across the join than the two segments change from frame to frame (their p95): the
/// blend hides the seam. With the old 0.25 s blend all three examples failed this.
#[test]
fn the_shipped_examples_continuity_joins_stay_within_the_segments_own_motion() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for example in ["quick-3-shots", "coastline-60s", "long-take-120s"] {
        let dir = tempfile::tempdir().unwrap();
        let spec = std::fs::read_to_string(root.join(format!("examples/sequences/{example}.yaml")))
            .unwrap();
        let output = render(dir.path(), &spec);
        assert!(
            output.status.success(),
            "{example}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("out.report.json")).unwrap())
                .unwrap();
        let continuity: Vec<&serde_json::Value> = report["joins"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|join| join["kind"] == "continue")
            .collect();
        assert!(!continuity.is_empty(), "{example} has a continuity join");
        for join in continuity {
            let after = join["delta_e00_after"].as_f64().unwrap();
            let p95 = join["within_p95"].as_f64().unwrap();
            eprintln!(
                "{example}: join {} ΔE00 {after:.3}, within p95 {p95:.3}",
                join["index"]
            );
            assert!(
                after <= p95,
                "{example}: the join stands out of its segments: {join}"
            );
        }
    }
}
