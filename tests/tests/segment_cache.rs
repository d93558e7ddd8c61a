//! The segment cache as an editor meets it: render a 12-segment sequence, change one shot's
//! prompt, render again. Only that shot and the continuity chain after it render; the other
//! ten segments are reused, and the video equals a render of the edited spec from scratch.
//! On the embedded farm, and on the distributed one (real etcd, S3 and processes) counted
//! from the scheduler's records in etcd.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use reelfarm_common::blob::BlobStore;
use reelfarm_common::{keys, pb, spec};
use reelfarm_tests::TestFarm;
use reelfarm_tests::cluster::{Cluster, Timings};
use reelfarm_tests::farm::{Farm, STATE_PREFIX};
use reelfarm_tests::leading::poll_until_succeeded;

/// Twelve 1.5 s shots, one segment each, with continuity chains (1→2, 3→4, 7, 10) and
/// crossfades. Editing shot 3 changes s003-00 and its continuation s004-00; shot 5 only
/// dissolves from shot 4 and renders independently of it.
const SPEC: &str = r#"title: twelve segments
fps: 8
seed: 11
steps: 2
shots:
  - {prompt: "a harbour at dawn, static camera", duration: 1.5}
  - {prompt: "the camera pushes in toward the boats", duration: 1.5, transition: continue}
  - {prompt: "the boats leave the harbour", duration: 1.5, transition: continue}
  - {prompt: "desert dunes at noon", duration: 1.5}
  - {prompt: "the camera pans across the dunes", duration: 1.5, transition: continue}
  - {prompt: "a pine forest in fog", duration: 1.5, transition: crossfade, crossfade: 0.5}
  - {prompt: "a city street at night", duration: 1.5}
  - {prompt: "the camera tilts up to the towers", duration: 1.5, transition: continue}
  - {prompt: "a lighthouse at dusk", duration: 1.5}
  - {prompt: "snowy mountains at noon", duration: 1.5}
  - {prompt: "the camera pushes in on the summit", duration: 1.5, transition: continue}
  - {prompt: "a beach at sunset", duration: 1.5, transition: crossfade, crossfade: 0.5}
"#;

const EDITED_SHOT: &str = "desert dunes at noon";
const EDIT: &str = "red desert dunes under a storm";
/// What the edit renders again: the shot and the continuation conditioned on it.
const RENDERED_AGAIN: [&str; 2] = ["s003-00", "s004-00"];

fn spec_pb(text: &str) -> Result<pb::SequenceSpec> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("spec.yaml");
    std::fs::write(&path, text)?;
    let sequence = spec::load_spec_file(&path, None).map_err(|error| anyhow::anyhow!("{error}"))?;
    Ok(spec::sequence_to_pb(&sequence))
}

fn reused(status: &pb::SequenceStatus) -> BTreeSet<String> {
    status
        .segments
        .iter()
        .filter(|segment| segment.reused)
        .map(|segment| segment.segment_id.clone())
        .collect()
}

fn all_but_edited(status: &pb::SequenceStatus) -> BTreeSet<String> {
    status
        .segments
        .iter()
        .map(|segment| segment.segment_id.clone())
        .filter(|id| !RENDERED_AGAIN.contains(&id.as_str()))
        .collect()
}

/// Segments whose denoising ran for this sequence (from the phases workers reported).
fn denoised(status: &pb::SequenceStatus) -> BTreeSet<String> {
    status
        .phases
        .iter()
        .filter(|phase| phase.kind == "denoise")
        .map(|phase| phase.task_id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_one_shot_renders_only_it_and_its_chain_on_the_embedded_farm() -> Result<()> {
    let mut farm = TestFarm::start(2).await?;
    let timeout = Duration::from_secs(300);
    let first = farm.render(spec_pb(SPEC)?, timeout).await?;
    if first.segments.len() != 12 || !reused(&first).is_empty() || denoised(&first).len() != 12 {
        bail!(
            "the first render should render all 12 segments: reused {:?}, denoised {:?}",
            reused(&first),
            denoised(&first)
        );
    }
    let edited = SPEC.replace(EDITED_SHOT, EDIT);
    let second = farm.render(spec_pb(&edited)?, timeout).await?;
    if reused(&second) != all_but_edited(&second) {
        bail!(
            "after editing shot 3, all but {RENDERED_AGAIN:?} should be reused; reused: {:?}",
            reused(&second)
        );
    }
    let rendered: BTreeSet<String> = RENDERED_AGAIN.iter().map(|s| s.to_string()).collect();
    if denoised(&second) != rendered {
        bail!("denoised for the edit: {:?}", denoised(&second));
    }
    if second
        .segments
        .iter()
        .any(|segment| segment.reused != (segment.attempt == 0))
    {
        bail!("a reused segment ran no attempt, a rendered one did: {second:?}");
    }
    let store = farm.farm.store.clone();
    let report: serde_json::Value =
        serde_json::from_slice(&store.get(&keys::final_report(&second.sequence_id)).await?)?;
    if report["segments"] != 12 || report["reused_segments"] != 10 {
        bail!(
            "report: {} segments, {} reused",
            report["segments"],
            report["reused_segments"]
        );
    }

    // The same edit with the cache off renders everything, into the same video.
    let fresh = farm.render_with(spec_pb(&edited)?, true, timeout).await?;
    if !reused(&fresh).is_empty() || denoised(&fresh).len() != 12 {
        bail!(
            "--no-cache should render all 12: reused {:?}",
            reused(&fresh)
        );
    }
    let cached_video = store.get(&keys::final_video(&second.sequence_id)).await?;
    let fresh_video = store.get(&keys::final_video(&fresh.sequence_id)).await?;
    if cached_video != fresh_video {
        bail!(
            "the render that reused segments ({} bytes) differs from the full render ({} bytes)",
            cached_video.len(),
            fresh_video.len()
        );
    }
    farm.farm.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_one_shot_renders_only_it_and_its_chain_on_the_distributed_farm() {
    let farm = Farm::start(Timings::default()).expect("etcd and S3 start");
    farm.check(async |farm| {
        let mut etcd = farm.etcd_client().await?;
        let cluster = &mut farm.cluster;
        start_two_workers(cluster)?;
        let dir = farm.dir.path();
        let original = dir.join("twelve.yaml");
        let edited = dir.join("twelve-edited.yaml");
        std::fs::write(&original, SPEC)?;
        std::fs::write(&edited, SPEC.replace(EDITED_SHOT, EDIT))?;
        let mut ids = Vec::new();
        let mut outputs = Vec::new();
        for spec in [&original, &edited] {
            // As a person would: submit, watch to the end (plain progress lines on stderr).
            let (code, stdout, stderr) =
                cluster.client(&["submit", "--watch", spec.to_str().unwrap()])?;
            if code != 0 {
                bail!("reelfarm submit exited {code}: {stdout}{stderr}");
            }
            let id = stdout.lines().next().unwrap_or_default().trim().to_string();
            poll_until_succeeded(cluster, &id, Duration::from_secs(300)).await?;
            ids.push(id);
            outputs.push(stderr);
        }
        if outputs[0].contains("reusing") {
            bail!("the first submission reused something: {}", outputs[0]);
        }
        if !outputs[1].contains("reusing 10 of 12 segments from the segment cache; rendering 2") {
            bail!(
                "the edit's submit did not say what it reuses: {}",
                outputs[1]
            );
        }

        // Counted from the records the scheduler keeps in etcd.
        let prefix = format!("{STATE_PREFIX}sequences/{}/tasks/", ids[1]);
        let records = etcd
            .get(
                prefix.as_str(),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await?;
        let mut reused_from = BTreeSet::new();
        let mut rendered = BTreeSet::new();
        for kv in records.kvs() {
            let name = kv.key_str()?.trim_start_matches(&prefix).to_string();
            if name == "stitch" {
                continue;
            }
            let doc: serde_json::Value = serde_json::from_slice(kv.value())
                .with_context(|| format!("task record {name}"))?;
            match doc["reused_from"].as_str() {
                Some(from) => {
                    if !from.starts_with(&format!("sequences/{}/segments/", ids[0])) {
                        bail!("{name} reused {from}, not the first sequence's segment");
                    }
                    if doc["attempt"] != 0 {
                        bail!("reused {name} ran an attempt: {doc}");
                    }
                    reused_from.insert(name);
                }
                None => {
                    if doc["attempt"].as_u64().unwrap_or(0) < 1 || doc["state"] != "done" {
                        bail!("{name} neither reused nor rendered: {doc}");
                    }
                    rendered.insert(name);
                }
            }
        }
        let expected: BTreeSet<String> = RENDERED_AGAIN.iter().map(|s| s.to_string()).collect();
        if reused_from.len() != 10 || rendered != expected {
            bail!("records: reused {reused_from:?}, rendered {rendered:?}");
        }
        let (code, stdout, stderr) = cluster.client(&["status", &ids[1]])?;
        if code != 0 || !stdout.contains("reused 10 of 12 segments from the segment cache") {
            bail!("reelfarm status exited {code}: {stdout}{stderr}");
        }
        if stdout
            .lines()
            .filter(|line| line.contains(" reused "))
            .count()
            != 10
        {
            bail!("status should mark the 10 reused segments: {stdout}");
        }
        let output = dir.join("edited.mp4");
        let (code, stdout, stderr) =
            cluster.client(&["download", &ids[1], "-o", output.to_str().unwrap()])?;
        if code != 0 {
            bail!("reelfarm download exited {code}: {stdout}{stderr}");
        }
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("edited.report.json"))?)?;
        if report["reused_segments"] != 10 {
            bail!("report: {report}");
        }
        let video = reelfarm_tests::probe::probe(&output);
        if video.frames != 144 {
            bail!("the edited video: {video:?}");
        }
        Ok(())
    })
    .await;
}

/// Four shots: a continuity pair, then two cuts.
const SHORT: &str = r#"title: four shots
fps: 8
seed: 3
steps: 2
shots:
  - {prompt: "a harbour at dawn", duration: 1.5, name: harbour}
  - {prompt: "the camera pushes in toward the boats", duration: 1.5, transition: continue}
  - {prompt: "desert dunes at noon", duration: 1.5}
  - {prompt: "a lighthouse at dusk", duration: 1.5, transition: crossfade, crossfade: 0.5}
"#;

/// A scheduler and two workers of 4 GiB each.
fn start_two_workers(cluster: &mut Cluster) -> Result<()> {
    cluster.start_scheduler()?;
    cluster.start_worker("gpu-a", "1x4GiB")?;
    cluster.start_worker("gpu-b", "1x4GiB")?;
    Ok(())
}

/// `reelfarm ARGS` against the cluster: stdout and stderr, or an error with both.
fn succeeded(cluster: &Cluster, args: &[&str]) -> Result<(String, String)> {
    let (code, stdout, stderr) = cluster.client(args)?;
    if code != 0 {
        bail!("reelfarm {args:?} exited {code}: {stdout}{stderr}");
    }
    Ok((stdout, stderr))
}

fn id_of(stdout: &str) -> String {
    stdout.lines().next().unwrap_or_default().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerender_makes_versions_that_reuse_the_rest_and_promote_renders_the_final_pass() {
    let farm = Farm::start(Timings::default()).expect("etcd and S3 start");
    farm.check(async |farm| {
        let cluster = &mut farm.cluster;
        start_two_workers(cluster)?;
        let dir = farm.dir.path();
        let spec = dir.join("four.yaml");
        std::fs::write(&spec, SHORT)?;
        let run = |args: &[&str]| succeeded(cluster, args);
        let first = id_of(&run(&["submit", "--watch", "--quiet", spec.to_str().unwrap()])?.0);

        // A new prompt for the harbour shot (by name): it and its continuation render.
        let (stdout, stderr) = run(&[
            "rerender",
            &first,
            "--shot",
            "harbour",
            "--prompt",
            "a harbour under snow",
            "--watch",
        ])?;
        let second = id_of(&stdout);
        if !stderr.contains(&format!("version 2 of {first}"))
            || !stderr.contains("reusing 2 of 4 segments from the segment cache; rendering 2")
        {
            bail!("rerender said: {stderr}");
        }
        // Another take of shot 2 (by index): only it renders.
        let (stdout, stderr) = run(&["rerender", &second, "--shot", "2", "--new-seed", "--watch"])?;
        let third = id_of(&stdout);
        if !stderr.contains("version 3 of") || !stderr.contains("reusing 3 of 4 segments") {
            bail!("rerender --new-seed said: {stderr}");
        }

        let (stdout, _) = run(&["versions", &third])?;
        let lines: Vec<&str> = stdout.lines().collect();
        let row = |version: &str, id: &str, change: &str| {
            lines
                .iter()
                .any(|line| line.starts_with(version) && line.contains(id) && line.contains(change))
        };
        if !(row("1", &first, "first version")
            && row("2", &second, "harbour: prompt \"a harbour under snow\"")
            && row("3", &third, "shot 2: seed "))
        {
            bail!("versions listed:\n{stdout}");
        }

        // Every version stays downloadable.
        for (id, name) in [(&first, "v1.mp4"), (&second, "v2.mp4"), (&third, "v3.mp4")] {
            let output = dir.join(name);
            run(&["download", id, "-o", output.to_str().unwrap()])?;
            if reelfarm_tests::probe::probe(&output).frames != 48 {
                bail!("version {id} did not download whole");
            }
        }

        // The final pass: every segment again at the final steps, then both passes' joins.
        let (stdout, stderr) = run(&["promote", &third, "--watch", "--quiet"])?;
        let promoted = id_of(&stdout);
        // One continuity join (s001-00), judged with both passes' p95; the cut and the
        // dissolve are listed but not judged.
        if !stdout.contains("of 1 continuity joins improved in the final pass")
            || !stdout.lines().any(|line| {
                line.starts_with("s001-00 at frame 12") && line.matches(" (p95 ").count() == 2
            })
        {
            bail!("promote printed: {stdout}{stderr}");
        }
        let (status, _) = run(&["status", &promoted])?;

        let final_steps = status
            .lines()
            .filter(|line| line.starts_with("s00"))
            .filter(|line| line.contains(" 24/24 "))
            .count();
        if final_steps != 4 {
            bail!("the final pass should render all 4 segments at 24 steps:\n{status}");
        }
        let (stdout, _) = run(&["versions", &first])?;

        if !stdout
            .lines()
            .any(|line| line.starts_with('4') && line.contains("final pass"))
        {
            bail!("versions after promote:\n{stdout}");
        }
        // Each verb teaches itself.
        for verb in ["rerender", "promote", "versions"] {
            let (help, _) = run(&[verb, "--help"])?;
            if !help.contains("Example") {
                bail!("reelfarm {verb} --help has no example:\n{help}");
            }
        }
        Ok(())
    })
    .await;
}

/// Three takes of the opener, a continuation of it, then a cut.
const TAKES: &str = r#"title: takes
fps: 8
seed: 5
steps: 2
shots:
  - {prompt: "a harbour at dawn", duration: 1.5, name: opener, variants: 3}
  - {prompt: "the camera pushes in toward the boats", duration: 1.5, transition: continue}
  - {prompt: "desert dunes at noon", duration: 1.5}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variants_render_takes_side_by_side_and_pick_swaps_one_in_without_rendering_it() {
    let farm = Farm::start(Timings::default()).expect("etcd and S3 start");
    farm.check(async |farm| {
        let cluster = &mut farm.cluster;
        start_two_workers(cluster)?;
        let dir = farm.dir.path();
        let spec = dir.join("takes.yaml");
        std::fs::write(&spec, TAKES)?;
        let run = |args: &[&str]| succeeded(cluster, args);
        let first = id_of(&run(&["submit", "--watch", "--quiet", spec.to_str().unwrap()])?.0);
        let (status, _) = run(&["status", &first])?;
        for take in ["s000-00-t1", "s000-00-t2"] {
            if !status.lines().any(|line| line.starts_with(take) && line.contains("done")) {
                bail!("take {take} did not render:\n{status}");
            }
        }
        // The report lists the three takes; the contact sheet has a row for each alternate.
        let video = dir.join("first.mp4");
        run(&["download", &first, "-o", video.to_str().unwrap()])?;
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("first.report.json"))?)?;
        let takes = report["takes"].as_array().cloned().unwrap_or_default();
        let listed: Vec<(u64, bool)> = takes
            .iter()
            .map(|take| (take["take"].as_u64().unwrap_or(99), take["on_timeline"] == true))
            .collect();
        if listed != [(0, true), (1, false), (2, false)] {
            bail!("report takes: {}", report["takes"]);
        }
        let take_two_seed = takes[2]["seed"].as_u64().unwrap_or_default();
        let sheet = |path: &std::path::Path| -> Result<(u32, u32)> {
            let bytes = std::fs::read(path)?;
            let frame = reelfarm_media::video::decode_png(&bytes)
                .map_err(|error| anyhow::anyhow!("contact sheet: {error}"))?;
            Ok((frame.width, frame.height))
        };
        let (_, with_takes) = sheet(&dir.join("first.contact.png"))?;

        // Take 2 onto the timeline: the opener is not rendered again, its continuation is.
        let (stdout, stderr) = run(&["pick", &first, "--shot", "opener", "--take", "2", "--watch"])?;
        let picked = id_of(&stdout);
        if !stderr.contains("opener: take 2")
            || !stderr.contains("reusing 4 of 5 segments from the segment cache; rendering 1")
        {
            bail!("pick said: {stderr}");
        }
        let (status, _) = run(&["status", &picked])?;
        let state = |segment: &str| {
            status
                .lines()
                .find(|line| line.starts_with(&format!("{segment} ")))
                .map(|line| line.split_whitespace().nth(2).unwrap_or("").to_string())
                .unwrap_or_default()
        };
        if (state("s000-00"), state("s000-00-t0"), state("s001-00"), state("s002-00"))
            != ("reused".into(), "reused".into(), "done".into(), "reused".into())
        {
            bail!("after pick:\n{status}");
        }
        let video = dir.join("picked.mp4");
        run(&["download", &picked, "-o", video.to_str().unwrap()])?;
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("picked.report.json"))?)?;
        let on_timeline = report["takes"]
            .as_array()
            .and_then(|takes| takes.iter().find(|take| take["on_timeline"] == true).cloned())
            .unwrap_or_default();
        if on_timeline["take"] != 2 || on_timeline["seed"].as_u64() != Some(take_two_seed) {
            bail!("the picked version's timeline take: {}", report["takes"]);
        }
        if reelfarm_tests::probe::probe(&video).frames != 36 {
            bail!("the picked version's video is not 36 frames");
        }
        // Without variants the sheet has one row per shot: the takes added two.
        std::fs::write(&spec, TAKES.replace(", variants: 3", ""))?;
        let plain = id_of(&run(&["submit", "--watch", "--quiet", spec.to_str().unwrap()])?.0);
        let video = dir.join("plain.mp4");
        run(&["download", &plain, "-o", video.to_str().unwrap()])?;
        let (_, without) = sheet(&dir.join("plain.contact.png"))?;
        if with_takes <= without {
            bail!("the contact sheet with takes ({with_takes} px) is no taller than without ({without} px)");
        }
        Ok(())
    })
    .await;
}
