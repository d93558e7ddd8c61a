//! The `reelfarm` binary as a person uses it: bad input exits non-zero naming the field and
//! writes nothing; a render writes a video that ffprobe agrees with.

#[path = "../../tests/src/probe.rs"]
mod probe;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn reelfarm(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reelfarm"))
        .args(args)
        .current_dir(dir)
        // The segment cache of `render` in the test's own folder, never the user's.
        .env("XDG_CACHE_HOME", dir)
        .output()
        .expect("run reelfarm")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn write_spec(dir: &Path, body: &str) -> String {
    let path = dir.join("seq.yaml");
    std::fs::write(&path, body).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn bad_specs_exit_2_name_the_field_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.mp4");
    let cases = [
        ("shots:\n  - duration: 5\n", "shots[0].prompt: required"),
        (
            "shots:\n  - {prompt: a, duration: 5}\n  - {prompt: b, duration: 5}\n  - {prompt: c, duration: 0}\n",
            "shots[2].duration: must be between 1 and 600 seconds, got 0",
        ),
        (
            "shots:\n  - {prompt: a, duration: 601}\n",
            "shots[0].duration: must be between 1 and 600 seconds, got 601",
        ),
        (
            "fps: 7\nshots:\n  - {prompt: a, duration: 5}\n",
            "fps: must be a whole number between 8 and 60, got 7",
        ),
        (
            "resolution: 4k\nshots:\n  - {prompt: a, duration: 5}\n",
            "resolution: must be one of 480p, 720p, 1080p, got 4k",
        ),
        (
            "aspect: \"5:4\"\nshots:\n  - {prompt: a, duration: 5}\n",
            "aspect: must be one of",
        ),
        (
            "shots:\n  - {prompt: a, duration: 2}\n  - {prompt: b, duration: 5, transition: crossfade, crossfade: 3}\n",
            "shots[1].crossfade: 3 s is longer than the previous shot",
        ),
        (
            "shots:\n  - {prompt: a, duration: 5, reference: frames/start.png}\n",
            "shots[0].reference: file not found: frames/start.png",
        ),
        ("shots: [\n  - prompt: a\n", "line 2"),
        (
            "shots:\n  - {prompt: a, duration: 5, colour: red}\n",
            "unknown field `colour`",
        ),
    ];
    for (body, expected) in cases {
        let spec = write_spec(dir.path(), body);
        let output = reelfarm(&["render", &spec, "-o", out.to_str().unwrap()], dir.path());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "spec {body:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "spec {body:?}: expected {expected:?} in {stderr}"
        );
        assert!(!out.exists(), "nothing may be written for {body:?}");
    }
}

#[test]
fn a_missing_spec_file_or_output_directory_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let output = reelfarm(&["render", "nope.yaml", "-o", "out.mp4"], dir.path());
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read nope.yaml"));
    let spec = write_spec(dir.path(), "shots:\n  - {prompt: a, duration: 1}\n");
    let output = reelfarm(&["render", &spec, "-o", "missing/dir/out.mp4"], dir.path());
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("directory missing/dir does not exist")
    );
}

#[test]
fn validate_prints_the_plan_of_the_examples() {
    let root = repo_root();
    let output = reelfarm(
        &["validate", "examples/sequences/long-take-120s.yaml"],
        &root,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.matches("continue s000-").count(), 5, "{stdout}");
    let output = reelfarm(
        &["validate", "examples/sequences/coastline-60s.yaml"],
        &root,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("1440 frames at 24 fps, 848x480"),
        "{stdout}"
    );
    assert!(stdout.contains("crossfade 24f"), "{stdout}");
}

#[test]
fn help_teaches_where_to_start() {
    let output = reelfarm(&["--help"], &repo_root());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("reelfarm render examples/sequences/coastline-60s.yaml -o coastline.mp4"),
        "{stdout}"
    );
}

#[test]
fn render_writes_the_video_and_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let spec = repo_root().join("examples/sequences/quick-3-shots.yaml");
    let out = dir.path().join("quick.mp4");
    let output = reelfarm(
        &[
            "render",
            spec.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--steps",
            "2",
        ],
        dir.path(),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("segments") && stdout.contains("model s per video s"),
        "{stdout}"
    );
    let probed = probe::probe(&out);
    assert_eq!(
        (
            probed.width,
            probed.height,
            probed.frame_rate.as_str(),
            probed.frames
        ),
        (848, 480, "8/1", 72)
    );
    assert!((probed.duration_seconds - 9.0).abs() <= 0.125, "{probed:?}");
    let boxes = probe::top_level_boxes(&out);
    assert_eq!(
        boxes.iter().position(|b| b == "moov"),
        Some(1),
        "faststart: the index right after ftyp, before the media data: {boxes:?}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("quick.report.json")).unwrap())
            .unwrap();
    assert_eq!(report["frames"], 72);
    assert!(!dir.path().join("quick.partial").exists());
}

/// Client verbs against a port nothing listens on: they give up within the connect timeout
/// and say which URL they tried and what to do.
#[test]
fn client_verbs_fail_fast_naming_the_scheduler_when_none_runs() {
    let dir = tempfile::tempdir().unwrap();
    let verbs: [&[&str]; 5] = [
        &["status"],
        &["status", "seq-000000000000"],
        &["workers"],
        &["cancel", "seq-000000000000"],
        &["download", "seq-000000000000", "-o", "out.mp4"],
    ];
    for verb in verbs {
        let started = std::time::Instant::now();
        let mut args = verb.to_vec();
        args.extend([
            "--scheduler",
            "http://127.0.0.1:9",
            "--connect-timeout",
            "1",
        ]);
        let output = reelfarm(&args, dir.path());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{verb:?}: {stderr}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{verb:?} took {:?}",
            started.elapsed()
        );
        assert!(
            stderr.starts_with("error: ") && stderr.contains("http://127.0.0.1:9"),
            "{verb:?}: {stderr}"
        );
        assert!(stderr.contains("REELFARM_SCHEDULER"), "{verb:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{verb:?}");
    }
    assert!(!dir.path().join("out.mp4").exists());
    assert!(!dir.path().join("out.mp4.partial").exists());
}

#[test]
fn the_scheduler_also_comes_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_reelfarm"))
        .args(["workers", "--connect-timeout", "1"])
        .env("REELFARM_SCHEDULER", "127.0.0.1:9")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("http://127.0.0.1:9"), "{stderr}");
}

#[test]
fn submit_checks_the_spec_and_the_url_before_contacting_anything() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(
        dir.path(),
        "shots:\n  - {prompt: a, duration: 5}\n  - {prompt: b, duration: 0}\n",
    );
    // A black-hole address: had submit connected first, it would wait out the timeout.
    let started = std::time::Instant::now();
    let output = reelfarm(
        &[
            "submit",
            &spec,
            "--scheduler",
            "http://10.255.255.1:7070",
            "--connect-timeout",
            "30",
        ],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("shots[1].duration: must be between 1 and 600 seconds, got 0"),
        "{stderr}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(output.stdout.is_empty());

    let output = reelfarm(&["submit", &spec, "--steps", "0"], dir.path());
    assert_eq!(output.status.code(), Some(2));

    let good = write_spec(dir.path(), "shots:\n  - {prompt: a, duration: 5}\n");
    let output = reelfarm(
        &["submit", &good, "--scheduler", "http://bad url"],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--scheduler: \"http://bad url\" is not a URL"),
        "{stderr}"
    );
}

#[test]
fn client_help_teaches_the_scheduler_setting_and_an_example() {
    for verb in ["submit", "watch", "status", "cancel", "workers", "download"] {
        let output = reelfarm(&[verb, "--help"], &repo_root());
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{verb}: {stdout}");
        assert!(stdout.contains("REELFARM_SCHEDULER"), "{verb}: {stdout}");
        assert!(stdout.contains("--connect-timeout"), "{verb}: {stdout}");
        assert!(
            stdout.contains(&format!("  reelfarm {verb}")),
            "{verb} --help needs an example: {stdout}"
        );
    }
}

#[test]
fn a_catalog_file_adds_a_model_a_spec_can_name() {
    let dir = tempfile::tempdir().unwrap();
    let weights = dir.path().join("studio-tiny.safetensors");
    std::fs::copy(
        repo_root().join("models/tiny/weights/reelfarm-tiny.safetensors"),
        &weights,
    )
    .unwrap();
    let catalog = dir.path().join("models.toml");
    let write_catalog = |draft_steps: u32, weights: &Path| {
        std::fs::write(
            &catalog,
            format!(
                "[[model]]\nid = \"studio-tiny\"\nbase = \"reelfarm-tiny\"\nweights = {:?}\ndraft_steps = {draft_steps}\n",
                weights.display().to_string()
            ),
        )
        .unwrap();
    };
    write_catalog(3, &weights);
    let spec = write_spec(
        dir.path(),
        "model: studio-tiny\nfps: 8\nshots:\n  - {prompt: a calm sea at dawn, duration: 2}\n",
    );
    let models = catalog.to_string_lossy().into_owned();

    // Without the catalog the model is unknown, and the error lists what there is.
    let unknown = reelfarm(&["validate", &spec], dir.path());
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains(
            "model: unknown model \"studio-tiny\"; available: reelfarm-tiny, wan2.1-t2v-1.3b"
        ),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );

    // With it, the plan takes the entry's draft steps and the render its weights.
    let plan = reelfarm(&["validate", &spec, "--models", &models], dir.path());
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan.status.success() && text.contains("model studio-tiny"),
        "{text}"
    );
    assert!(
        text.contains("s000-00")
            && text
                .lines()
                .any(|l| l.contains("s000-00") && l.contains(" 3 ")),
        "{text}"
    );
    let out = dir.path().join("studio.mp4");
    let render = reelfarm(
        &[
            "render",
            &spec,
            "-o",
            out.to_str().unwrap(),
            "--models",
            &models,
            "--quiet",
        ],
        dir.path(),
    );
    assert!(
        render.status.success(),
        "{}",
        String::from_utf8_lossy(&render.stderr)
    );
    assert_eq!(probe::probe(&out).frames, 16);

    // A bad entry is refused naming the file, the entry and the field.
    write_catalog(0, &weights);
    let bad = reelfarm(&["validate", &spec, "--models", &models], dir.path());
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("--models: ")
            && stderr.contains("model[0].draft_steps: must be within 1..=200, got 0"),
        "{stderr}"
    );

    // Weights that are not there fail the render before anything starts, naming them.
    write_catalog(3, &dir.path().join("gone.safetensors"));
    let missing = reelfarm(
        &[
            "render",
            &spec,
            "-o",
            out.to_str().unwrap(),
            "--models",
            &models,
        ],
        dir.path(),
    );
    assert_eq!(missing.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("model studio-tiny: weights ") && stderr.contains("gone.safetensors"),
        "{stderr}"
    );
}

// Wan 2.1 through the whole embedded farm as a person runs it: a spec naming
// `wan2.1-t2v-1.3b`, the weights given by a catalog file (the tiny random checkpoint of the
// parity fixtures), planner windows from the catalog, placement with the estimate, the worker
// with retiming, the stitch.
/// A Wan spec: two shots, the first split into continuing windows by the catalog file below.
const WAN_SPEC: &str = "\
title: Lighthouse
model: wan2.1-t2v-1.3b
fps: 12
resolution: 480p
aspect: \"1:1\"
shots:
  - {prompt: a lighthouse on a cliff at dusk, duration: 2}
  - {prompt: waves breaking below the lighthouse, duration: 1}
";

#[test]
fn a_wan_spec_renders_through_the_farm_with_weights_from_a_catalog_file() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("seq.yaml");
    std::fs::write(&spec, WAN_SPEC).unwrap();
    let spec = spec.to_string_lossy().into_owned();

    // Without weights the model is known but nothing can render it: say what to do.
    let out = dir.path().join("lighthouse.mp4");
    let unserved = reelfarm(
        &["render", &spec, "-o", out.to_str().unwrap(), "--quiet"],
        dir.path(),
    );
    assert_eq!(unserved.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&unserved.stderr);
    assert!(
        stderr.contains("model wan2.1-t2v-1.3b: no weights configured")
            && stderr.contains("--models"),
        "{stderr}"
    );
    assert!(!out.exists());

    // The catalog file re-declares the built-in entry: the tiny checkpoint, 1 s windows so the
    // 2 s shot splits into continuing windows, 2 draft steps, the tiny model's memory, and a
    // native rate of 8 fps (the real 16 would double the CPU time of this test), retimed to
    // the spec's 12.
    let catalog = dir.path().join("models.toml");
    std::fs::write(
        &catalog,
        format!(
            "[[model]]\nid = \"wan2.1-t2v-1.3b\"\nweights = {:?}\nwindow_seconds = 1\nnative_fps = 8\ndraft_steps = 2\n\n[model.memory]\nfixed_bytes = 2e8\nbytes_per_token = 2e3\nweights_bytes = 3e6\n",
            repo_root().join("tests/fixtures/wan/tiny").display().to_string()
        ),
    )
    .unwrap();
    let models = catalog.to_string_lossy().into_owned();
    let plan = reelfarm(&["validate", &spec, "--models", &models], dir.path());
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    for window in ["s000-00", "s000-01", "s001-00"] {
        assert!(text.contains(window), "no window {window}: {text}");
    }
    assert!(!text.contains("s000-02"), "{text}");
    assert!(
        text.lines()
            .any(|line| line.contains("s000-01") && line.contains("continue s000-00")),
        "{text}"
    );

    let render = reelfarm(
        &[
            "render",
            &spec,
            "-o",
            out.to_str().unwrap(),
            "--models",
            &models,
            "--quiet",
        ],
        dir.path(),
    );
    assert!(
        render.status.success(),
        "{}",
        String::from_utf8_lossy(&render.stderr)
    );
    let probed = probe::probe(&out);
    assert_eq!(probed.frames, 36, "3 s at 12 fps");
    assert_eq!((probed.width, probed.height), (480, 480));
}

/// The segment cache folder keeps within `--cache-max-gib`: a render into a full folder
/// removes the least recently used sequence (not itself), so a later render of that spec
/// renders again instead of reusing.
#[test]
fn the_segment_cache_keeps_within_its_size_bound() {
    let dir = tempfile::tempdir().unwrap();
    let spec = |seed: u32| {
        write_spec(
            dir.path(),
            &format!(
                "title: bound\nfps: 8\nseed: {seed}\nsteps: 1\nshots:\n  - {{prompt: \"fog over pines\", duration: 1}}\n"
            ),
        )
    };
    let render = |spec: &str, bound: &str| {
        let output = reelfarm(
            &["render", spec, "-o", "out.mp4", "--cache-max-gib", bound],
            dir.path(),
        );
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let first = spec(1);
    render(&first, "20");
    let sequences = dir.path().join("reelfarm/objects/sequences");
    assert_eq!(std::fs::read_dir(&sequences).unwrap().count(), 1);
    let again = render(&first, "20");
    assert!(again.contains("reusing 1 of 1"), "{again}");
    // A bound of about 1 KiB: every older sequence goes.
    let second = spec(2);
    let pruned = render(&second, "0.000001");
    assert!(
        pruned.contains("segment cache: removed the ")
            && pruned.contains("least recently used sequence(s)"),
        "{pruned}"
    );
    assert_eq!(
        std::fs::read_dir(&sequences).unwrap().count(),
        1,
        "the new render stays"
    );
    let first = spec(1);
    let after = render(&first, "20");
    assert!(!after.contains("reusing"), "its segments are gone: {after}");
}

#[test]
fn a_bad_cache_bound_is_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), "fps: 8\nshots:\n  - {prompt: a, duration: 1}\n");
    let output = reelfarm(
        &["render", &spec, "-o", "out.mp4", "--cache-max-gib", "0"],
        dir.path(),
    );
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("--cache-max-gib: 0 is not a size above 0 GiB")
    );
}
