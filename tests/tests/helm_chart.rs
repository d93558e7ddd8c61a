//! The Helm chart, checked with the real Helm SDK and Kubernetes 1.31 schemas by
//! `tests/helm/check_chart.py` (helm-python-sdk and kubernetes-validate, installed by
//! `.ci/run`): strict lint and render for the default values and the two-pool example, every
//! manifest valid, GPU requests, requests/limits/probes, pinned images, the dashboard and
//! alert rules as shipped, a misspelled values key refused, and the model catalog the chart
//! renders from its values read by reelfarm's own catalog parser.

use std::path::Path;
use std::process::Command;

#[test]
fn the_chart_lints_renders_and_validates_for_both_value_sets() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models.toml");
    let hosted_models = dir.path().join("hosted-models.toml");
    let output = Command::new("python3")
        .arg("tests/helm/check_chart.py")
        .env("REELFARM_CHART_MODELS_OUT", &models)
        .env("REELFARM_CHART_HOSTED_MODELS_OUT", &hosted_models)
        .current_dir(&root)
        .output()
        .expect("python3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "chart checks failed (pip install helm-python-sdk kubernetes-validate; .ci/run does):\n{text}"
    );
    assert!(text.contains("chart checks: 0 failure(s)"), "{text}");
    // What the two-pool example's values render is a catalog file reelfarm accepts.
    let catalog = reelfarm_models::Catalog::builtin_with_file(&models).unwrap();
    let entry = catalog.require("coastline-tiny").unwrap();
    assert_eq!(entry.draft_steps, 12);
    assert_eq!(
        entry.weights.as_deref(),
        Some("/models/coastline-tiny.safetensors")
    );
    // The hosted entry, as Helm's toToml wrote it (numbers as floats), is one reelfarm takes.
    let catalog = reelfarm_models::Catalog::builtin_with_file(&hosted_models).unwrap();
    let sora = catalog
        .require("sora-2-pro")
        .unwrap()
        .hosted
        .clone()
        .unwrap();
    assert_eq!(sora.clip_seconds, [4, 8, 12]);
    assert_eq!(
        sora.key,
        reelfarm_models::KeySource::File("/var/run/secrets/reelfarm-hosted/openai".into())
    );
}
