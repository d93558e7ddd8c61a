//! Wan 2.1 through the whole embedded farm as a person runs it: a spec naming `wan2.1-t2v-1.3b`, the weights given by a catalog file (here the tiny random checkpoint of the parity fixtures), planner windows from the catalog, placement with the estimate, the worker, the stitch.

#[allow(dead_code)]
#[path = "../../tests/src/probe.rs"]
mod probe;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn reelfarm(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reelfarm"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run reelfarm")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

const SPEC: &str = "\
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
    std::fs::write(&spec, SPEC).unwrap();
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
