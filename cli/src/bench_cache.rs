//! `reelfarm bench rerender`: what the segment cache saves an editor. Renders a sequence on
//! a fresh embedded farm, edits one shot's prompt, renders again on the same farm, and
//! prints the second render's wall time as a fraction of the first (the baseline, measured
//! in the same run on the same machine).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Result, bail};
use reelfarm_common::pb;
use serde::Serialize;

use crate::embedded::EmbeddedFarm;
use crate::input::{InputError, load_catalog, load_spec};
use crate::render::{submit_and_follow, with_weights_digest};

pub struct BenchRerenderOptions {
    pub spec: PathBuf,
    /// The shot whose prompt is edited (0-based); default: the middle shot.
    pub shot: Option<usize>,
    pub workers: usize,
    pub steps: Option<u32>,
    pub models: Option<PathBuf>,
    pub weights: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct BenchRerender {
    pub segments: usize,
    pub edited_shot: usize,
    pub first_wall_s: f64,
    pub second_wall_s: f64,
    /// second / first: the share of a full render an edit of one shot costs.
    pub second_fraction: f64,
    pub reused_segments: usize,
    pub rendered_segments: usize,
}

fn wall_s(status: &pb::SequenceStatus) -> f64 {
    status.finished_unix_s - status.submitted_unix_s
}

pub async fn run(options: BenchRerenderOptions) -> Result<BenchRerender> {
    let catalog = Arc::new(load_catalog(options.models.as_deref())?);
    let mut sequence = load_spec(&options.spec, options.steps, Some(&catalog))?;
    let shots = sequence.shots.len();
    let edited_shot = options.shot.unwrap_or(shots / 2);
    if edited_shot >= shots {
        return Err(InputError(vec![format!(
            "--shot: the spec has shots 0 to {}, got {edited_shot}",
            shots - 1
        )])
        .into());
    }
    let runtimes = reelfarm_worker::runtimes::load_runtimes(&catalog, options.weights.as_deref())
        .map_err(|error| InputError(vec![error.to_string()]))?;
    let catalog = with_weights_digest(catalog, options.weights.as_deref())?;
    // A fresh cache: the first render is a full one.
    let work_dir = tempfile::Builder::new()
        .prefix("reelfarm-bench-")
        .tempdir()?;
    let farm = EmbeddedFarm::start(work_dir.path(), options.workers, catalog, runtimes).await?;
    let first = submit_and_follow(&farm, &sequence, false, true).await;
    let shot = &mut sequence.shots[edited_shot];
    shot.prompt = format!("{}, seen again in another light", shot.prompt);
    let second = match &first {
        Ok(_) => Some(submit_and_follow(&farm, &sequence, false, true).await),
        Err(_) => None,
    };
    farm.stop().await?;
    let first = first?;
    let Some(second) = second else {
        bail!("the first render did not finish")
    };
    let second = second?;
    let reused_segments = second.segments.iter().filter(|s| s.reused).count();
    Ok(BenchRerender {
        segments: second.segments.len(),
        edited_shot,
        first_wall_s: wall_s(&first),
        second_wall_s: wall_s(&second),
        second_fraction: wall_s(&second) / wall_s(&first).max(1e-9),
        reused_segments,
        rendered_segments: second.segments.len() - reused_segments,
    })
}

pub fn print(bench: &BenchRerender) {
    println!(
        "first render (everything):          {:>7.2} s, {} segments",
        bench.first_wall_s, bench.segments
    );
    println!(
        "after editing shot {:<3} (0-based):   {:>7.2} s, {} rendered, {} reused",
        bench.edited_shot, bench.second_wall_s, bench.rendered_segments, bench.reused_segments
    );
    println!(
        "second / first:                     {:>7.3}",
        bench.second_fraction
    );
}
