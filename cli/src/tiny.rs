//! `reelfarm bench tiny`: time a reelfarm-tiny draft segment; and where the demo model's
//! weights come from for it and for `eval-tiny`.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use reelfarm_models::{GenerateRequest, ModelRuntime};
use reelfarm_tiny::TinyModel;
use serde::Serialize;

#[derive(clap::Args, Debug)]
pub struct BenchTinyArgs {
    /// Weights to time (default: the shipped weights).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Segment length.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f32,
    /// Denoising steps (the draft count by default).
    #[arg(long, default_value_t = 8)]
    pub steps: u32,
    /// Timed repetitions (the first, untimed, warms caches).
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// One JSON object: segment_s, per_step_s, denoise_s, decode_s, budget_s, ratio_to_budget.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct TinyBench {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub frames: u32,
    pub steps: u32,
    pub threads: usize,
    /// Median seconds for the whole segment: denoising plus decoding every frame.
    pub segment_s: f64,
    pub denoise_s: f64,
    pub decode_s: f64,
    pub per_step_s: f64,
    /// The goal: a 10 s draft segment in under 10 s on 2 cores.
    pub budget_s: f64,
    pub ratio_to_budget: f64,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub fn run_bench(args: &BenchTinyArgs) -> Result<TinyBench> {
    if !(args.seconds.is_finite() && (0.5..=60.0).contains(&args.seconds)) {
        bail!("--seconds must be within 0.5..=60");
    }
    let model = load_tiny(args.weights.as_deref())?;
    let request = GenerateRequest {
        prompt: "Desert dunes at dusk, camera pans right".into(),
        frames: (args.seconds * 24.0).round() as u32 + 1,
        steps: args.steps.max(1),
        ..GenerateRequest::default()
    };
    let (mut denoise, mut decode) = (Vec::new(), Vec::new());
    for run in 0..=args.runs.max(1) {
        let started = Instant::now();
        let clip = model.generate(&request, &mut |_, _| {}, &AtomicBool::new(false))?;
        let generated = started.elapsed().as_secs_f64();
        let started = Instant::now();
        for index in 0..clip.len() {
            std::hint::black_box(clip.try_frame(index)?);
        }
        if run > 0 {
            denoise.push(generated);
            decode.push(started.elapsed().as_secs_f64());
        }
    }
    let (denoise_s, decode_s) = (median(denoise), median(decode));
    let segment_s = denoise_s + decode_s;
    let budget_s = f64::from(args.seconds);
    Ok(TinyBench {
        width: request.width,
        height: request.height,
        fps: request.fps,
        frames: request.frames,
        steps: request.steps,
        threads: std::thread::available_parallelism().map_or(1, |count| count.get()),
        segment_s,
        denoise_s,
        decode_s,
        per_step_s: denoise_s / f64::from(request.steps),
        budget_s,
        ratio_to_budget: segment_s / budget_s,
    })
}

pub fn print_bench(bench: &TinyBench) {
    println!(
        "reelfarm-tiny draft: {}x{} {} fps, {} frames, {} steps, {} threads",
        bench.width, bench.height, bench.fps, bench.frames, bench.steps, bench.threads
    );
    println!(
        "segment {:.2} s (denoise {:.2} s = {:.3} s per step, decode {:.2} s)",
        bench.segment_s, bench.denoise_s, bench.per_step_s, bench.decode_s
    );
    println!(
        "ratio to the {:.0} s budget: {:.2} (goal: below 1)",
        bench.budget_s, bench.ratio_to_budget
    );
}

/// The weights at `path`, or the built-in ones.
pub fn load_tiny(weights: Option<&Path>) -> Result<TinyModel> {
    Ok(match weights {
        Some(path) => TinyModel::load(path)
            .with_context(|| format!("loading reelfarm-tiny weights from {}", path.display()))?,
        None => TinyModel::shipped().context("loading the built-in reelfarm-tiny weights")?,
    })
}
