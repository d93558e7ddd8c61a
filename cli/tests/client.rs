//! The client verbs against a real scheduler: an embedded farm in this test process, the
//! built `reelfarm` binary talking to it over loopback gRPC as a person would.

#[path = "../../tests/src/probe.rs"]
#[allow(dead_code)]
mod probe;

use std::path::{Path, PathBuf};
use std::process::Output;

use reelfarm_cli::embedded::EmbeddedFarm;

/// The farm runs in this process: count its heap as the `reelfarm` binary does, so workers
/// report measured peaks.
#[global_allocator]
static HEAP_COUNTER: reelfarm_worker::memory_meter::CountingAllocator =
    reelfarm_worker::memory_meter::CountingAllocator;

/// Where the embedded farm listens, and the admin token it made for its clients.
struct Target {
    url: String,
    token: String,
}

impl Target {
    fn of(farm: &EmbeddedFarm) -> Self {
        Target {
            url: farm.url.clone(),
            token: farm.token.clone(),
        }
    }
}

async fn reelfarm(args: &[&str], target: &Target, dir: &Path) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_reelfarm"))
        .args(args)
        .args(["--scheduler", &target.url])
        .env_remove("REELFARM_SCHEDULER")
        .env_remove("REELFARM_TOKEN_FILE")
        .env("REELFARM_TOKEN", &target.token)
        .current_dir(dir)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run reelfarm")
}

fn example(name: &str) -> String {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "..",
        "examples",
        "sequences",
        name,
    ]
    .iter()
    .collect();
    path.to_string_lossy().into_owned()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Panics with both streams, so a failure shows what the command said.
fn expect_success(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what}: exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_watch_status_workers_download_against_a_running_farm() {
    let dir = tempfile::tempdir().unwrap();
    let farm = EmbeddedFarm::start_builtin(&dir.path().join("farm"), 2)
        .await
        .unwrap();
    let url = Target::of(&farm);
    let here = dir.path();

    let output = reelfarm(
        &[
            "submit",
            &example("quick-3-shots.yaml"),
            "--steps",
            "2",
            "--watch",
            "-q",
        ],
        &url,
        here,
    )
    .await;
    let stdout = expect_success(&output, "submit --watch");
    let id = stdout.trim().to_string();
    assert!(
        id.starts_with("seq-") && !id.contains(char::is_whitespace),
        "stdout must be the id alone: {stdout:?}"
    );
    assert!(
        text(&output.stderr).contains("succeeded"),
        "{}",
        text(&output.stderr)
    );

    let listing = expect_success(&reelfarm(&["status"], &url, here).await, "status");
    let line = listing
        .lines()
        .find(|line| line.starts_with(&id))
        .unwrap_or_else(|| panic!("{id} not listed: {listing}"));
    assert!(listing.starts_with("ID "), "{listing}");
    assert!(
        line.contains("Quick look") && line.contains("succeeded") && line.contains("3/3"),
        "{line}"
    );

    let detail = expect_success(&reelfarm(&["status", &id], &url, here).await, "status ID");
    assert!(
        detail.contains("succeeded") && detail.contains("72 frames"),
        "{detail}"
    );
    let segment_rows: Vec<&str> = detail
        .lines()
        .filter(|line| line.contains(" done ") && line.contains("2/2"))
        .collect();
    assert_eq!(segment_rows.len(), 3, "{detail}");
    // Every done segment shows its reservation and the peak its worker measured.
    assert!(detail.contains("MIB EST/PEAK"), "{detail}");
    for row in &segment_rows {
        let cell = row
            .split_whitespace()
            .find(|word| word.contains('/') && *word != "2/2" && !word.contains('-'))
            .unwrap_or_else(|| panic!("no memory cell in {row}"));
        let (estimate, peak) = cell.split_once('/').unwrap();
        assert!(
            estimate.parse::<f64>().unwrap() > 0.0 && peak.parse::<f64>().unwrap() > 0.0,
            "{row}"
        );
    }

    let workers = expect_success(&reelfarm(&["workers"], &url, here).await, "workers");
    for expected in [
        "cpu0/0",
        "cpu1/0",
        "connected",
        "connected  cpu ",
        "reelfarm-tiny",
        "GIB TOTAL",
    ] {
        assert!(workers.contains(expected), "{expected} in {workers}");
    }

    let video = here.join("quick.mp4");
    let output = reelfarm(&["download", &id, "-o", "quick.mp4"], &url, here).await;
    expect_success(&output, "download");
    let probed = probe::probe(&video);
    assert_eq!((probed.width, probed.height, probed.frames), (848, 480, 72));
    assert!(!here.join("quick.mp4.partial").exists());

    let output = reelfarm(&["download", &id, "--report"], &url, here).await;
    expect_success(&output, "download --report");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(here.join(format!("{id}.report.json"))).unwrap())
            .unwrap();
    assert_eq!(report["frames"], 72);

    // Watching a finished sequence reports its outcome at once; cancelling it changes nothing.
    expect_success(&reelfarm(&["watch", &id, "-q"], &url, here).await, "watch");
    let cancelled = expect_success(&reelfarm(&["cancel", &id], &url, here).await, "cancel");
    assert_eq!(cancelled.trim(), format!("{id} succeeded"));

    let output = reelfarm(&["status", "seq-000000000000"], &url, here).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("not found"),
        "{}",
        text(&output.stderr)
    );

    farm.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_sequence_watches_as_a_failure_and_has_nothing_to_download() {
    let dir = tempfile::tempdir().unwrap();
    let farm = EmbeddedFarm::start_builtin(&dir.path().join("farm"), 1)
        .await
        .unwrap();
    let url = Target::of(&farm);
    let here = dir.path();
    // A minute of video: still rendering when the cancel arrives.
    let spec = example("coastline-60s.yaml");
    let submit = [
        "submit",
        spec.as_str(),
        "--idempotency-key",
        "k1",
        "--steps",
        "1",
    ];
    let first = expect_success(&reelfarm(&submit, &url, here).await, "submit");
    let again = reelfarm(&submit, &url, here).await;
    assert_eq!(
        expect_success(&again, "resubmit"),
        first,
        "same key, same sequence"
    );
    assert!(
        text(&again.stderr).contains("used before"),
        "{}",
        text(&again.stderr)
    );
    let id = first.trim();

    let cancelled = expect_success(&reelfarm(&["cancel", id], &url, here).await, "cancel");
    assert_eq!(cancelled.trim(), format!("{id} cancelled"));

    let output = reelfarm(&["watch", id], &url, here).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains(&format!("error: sequence {id} was cancelled")),
        "{}",
        text(&output.stderr)
    );

    let output = reelfarm(&["download", id, "-o", "out.mp4"], &url, here).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("has no output yet"), "{stderr}");
    assert!(!here.join("out.mp4").exists() && !here.join("out.mp4.partial").exists());

    farm.stop().await.unwrap();
}
