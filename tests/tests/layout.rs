//! The layers as Cargo sees them (docs/ARCHITECTURE.md): `cargo tree` shows what each crate
//! and each image's build of the command pulls in, so a dependency that crosses a layer fails
//! here, not in review. Positive controls show the checks can see what they look for.

use std::path::PathBuf;
use std::process::Command;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// The lines of `cargo tree` for these arguments, without tree drawing.
fn tree(args: &[&str]) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let output = Command::new(cargo)
        .current_dir(workspace())
        .args(["tree", "--offline", "--locked", "--prefix", "none"])
        .args(args)
        .output()
        .expect("cargo runs the tests, so it is there");
    assert!(
        output.status.success(),
        "cargo tree {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Package names in a `-e normal` tree.
fn packages(args: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = tree(&[args, &["-e", "normal"]].concat())
        .iter()
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    names
}

fn assert_none_of(names: &[String], forbidden: &[&str], what: &str) {
    let found: Vec<&&str> = forbidden
        .iter()
        .filter(|name| names.iter().any(|n| n == *name))
        .collect();
    assert!(found.is_empty(), "{what} pulls in {found:?}");
}

#[test]
fn the_farm_core_has_no_async_runtime_rpc_store_or_tensors() {
    let core = packages(&["-p", "reelfarm-core"]);
    assert!(core.iter().any(|n| n == "reelfarm-models"));
    assert_none_of(
        &core,
        &[
            "tokio",
            "tonic",
            "etcd-client",
            "aws-sdk-s3",
            "candle-core",
            "openh264",
            "reelfarm-media",
        ],
        "reelfarm-core",
    );
}

#[test]
fn the_scheduler_carries_no_model_runtime() {
    let scheduler = packages(&["-p", "reelfarm-scheduler"]);
    assert!(
        scheduler.iter().any(|n| n == "tonic"),
        "the control: it serves gRPC"
    );
    assert_none_of(
        &scheduler,
        &[
            "candle-core",
            "openh264",
            "reelfarm-tiny",
            "reelfarm-worker",
        ],
        "reelfarm-scheduler",
    );
}

/// The `cargo build` arguments of an image's Dockerfile.
fn image_build(dockerfile: &str) -> String {
    let text = std::fs::read_to_string(workspace().join("docker").join(dockerfile))
        .expect("the Dockerfile is in docker/");
    let joined = text.replace("\\\n", " ");
    let line = joined
        .lines()
        .find(|line| line.contains("cargo build"))
        .expect("the image builds with cargo");
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn the_scheduler_image_build_has_no_candle_and_the_full_build_does() {
    assert!(
        image_build("scheduler.Dockerfile")
            .contains("cargo build --release --locked -p reelfarm --no-default-features &&"),
        "{}",
        image_build("scheduler.Dockerfile")
    );
    let image = packages(&["-p", "reelfarm", "--no-default-features"]);
    assert_none_of(
        &image,
        &[
            "candle-core",
            "openh264",
            "reelfarm-tiny",
            "reelfarm-worker",
        ],
        "the scheduler image's reelfarm",
    );
    let full = packages(&["-p", "reelfarm"]);
    assert!(full.iter().any(|n| n == "candle-core"), "the control");
}

#[test]
fn the_worker_image_build_has_the_runtime_but_no_trainer() {
    // The worker image builds `--no-default-features --features cuda` (cuda implies worker;
    // checked here without cuda, whose crates need the CUDA toolkit).
    assert!(
        image_build("worker.Dockerfile")
            .contains("-p reelfarm --no-default-features --features cuda &&"),
        "{}",
        image_build("worker.Dockerfile")
    );
    let tiny_features = |args: &[&str]| {
        tree(&[args, &["-e", "features", "-i", "reelfarm-tiny"]].concat())
            .into_iter()
            .filter(|line| line.starts_with("reelfarm-tiny"))
            .collect::<Vec<_>>()
    };
    let image = tiny_features(&[
        "-p",
        "reelfarm",
        "--no-default-features",
        "--features",
        "worker",
    ]);
    assert!(
        !image.is_empty(),
        "the worker image renders with reelfarm-tiny"
    );
    assert!(
        !image.iter().any(|line| line.contains("feature \"train\"")),
        "{image:?}"
    );
    let full = tiny_features(&["-p", "reelfarm"]);
    assert!(
        full.iter().any(|line| line.contains("feature \"train\"")),
        "the control: {full:?}"
    );
}
