//! The Helm chart, checked with the real Helm SDK and Kubernetes 1.31 schemas by
//! `tests/helm/check_chart.py` (helm-python-sdk and kubernetes-validate, installed by
//! `.ci/run`): strict lint and render for the default values and the two-pool example, every
//! manifest valid, GPU requests, requests/limits/probes, pinned images, the dashboard and
//! alert rules as shipped, and a misspelled values key refused.

use std::path::Path;
use std::process::Command;

#[test]
fn the_chart_lints_renders_and_validates_for_both_value_sets() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new("python3")
        .arg("tests/helm/check_chart.py")
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
}
