//! `reelfarm bench wan`: one sampling step of the real Wan 2.1 1.3B transformer shape (random weights or a checkpoint) at a size this machine can run, with its peak memory, and beside it the reference implementation's time for the same step when its Python is at hand.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use reelfarm_wan::bench::{StepBench, time_model, time_step};
use reelfarm_wan::pipeline::WanOptions;
use reelfarm_wan::transformer::TransformerConfig;
use reelfarm_wan::weights::{Checkpoint, Component};
use serde::Serialize;

#[derive(clap::Args, Debug)]
pub struct BenchWanArgs {
    /// Build the published 1.3B transformer shape with random weights (no download needed).
    #[arg(long, conflicts_with = "weights")]
    pub random_weights: bool,
    /// Or time the transformer of a checkpoint in the diffusers layout.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Frame width (a multiple of 16).
    #[arg(long, default_value_t = 160)]
    pub width: u32,
    /// Frame height (a multiple of 16).
    #[arg(long, default_value_t = 96)]
    pub height: u32,
    /// Frames (4n + 1); 81 is the reference's 5 s window.
    #[arg(long, default_value_t = 9)]
    pub frames: u32,
    /// Timed steps after one untimed warm-up (the median is printed).
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Python with torch and diffusers: also time the same step in the reference
    /// (tools/wan_parity.py bench) and print the ratio.
    #[arg(long, env = "REELFARM_WAN_REFERENCE_PYTHON")]
    pub reference: Option<PathBuf>,
    /// One JSON object: params, seconds_per_step, peak_rss_bytes, tokens, and with
    /// --reference reference_seconds_per_step and ratio_to_reference.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct WanBench {
    #[serde(flatten)]
    pub step: StepBench,
    pub peak_rss_bytes: Option<u64>,
    pub reference_seconds_per_step: Option<f64>,
    pub reference_peak_rss_bytes: Option<u64>,
    /// Ours over the reference's seconds per step (below 1: faster).
    pub ratio_to_reference: Option<f64>,
}

pub fn run_bench(args: &BenchWanArgs) -> Result<WanBench> {
    if !args.width.is_multiple_of(16)
        || !args.height.is_multiple_of(16)
        || args.width == 0
        || args.height == 0
    {
        bail!(
            "--width and --height must be non-zero multiples of 16, got {}x{}",
            args.width,
            args.height
        );
    }
    if args.frames == 0 || !(args.frames - 1).is_multiple_of(4) {
        bail!(
            "--frames must be 4n + 1 (1, 5, 9, ... 81), got {}",
            args.frames
        );
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    // Where and how a worker would run it.
    let WanOptions { device, dtype, .. } = WanOptions::best_available();
    let config = match (&args.weights, args.random_weights) {
        (Some(root), _) => {
            Checkpoint::open(root)?.config::<TransformerConfig>(Component::Transformer)?
        }
        (None, true) => TransformerConfig::wan_2_1_1_3b(),
        (None, false) => bail!(
            "give --random-weights (the published 1.3B shape) or --weights DIR (a checkpoint)"
        ),
    };
    let size = (args.width, args.height, args.frames);
    let step = match &args.weights {
        Some(root) => time_checkpoint(root, &config, size, args.runs, &device, dtype)?,
        None => time_step(&config, size, 512, args.runs, &device, dtype)?,
    };
    let peak_rss_bytes = crate::sim::peak_rss_bytes();
    let reference = match &args.reference {
        Some(python) => Some(reference_step(python, args)?),
        None => None,
    };
    let reference_seconds_per_step = reference.as_ref().map(|r| r.seconds_per_step);
    Ok(WanBench {
        ratio_to_reference: reference_seconds_per_step.map(|r| step.seconds_per_step / r),
        reference_peak_rss_bytes: reference.and_then(|r| r.peak_rss_bytes),
        reference_seconds_per_step,
        peak_rss_bytes,
        step,
    })
}

fn time_checkpoint(
    root: &Path,
    config: &TransformerConfig,
    size: (u32, u32, u32),
    runs: usize,
    device: &Device,
    dtype: DType,
) -> Result<StepBench> {
    let checkpoint = Checkpoint::open(root)?;
    let loading = std::time::Instant::now();
    let vb = checkpoint.var_builder(Component::Transformer, dtype, device)?;
    let model = reelfarm_wan::transformer::WanTransformer::new(config, vb)?;
    let load_seconds = loading.elapsed().as_secs_f64();
    let mut step = time_model(&model, size, 512, runs)?;
    step.load_seconds = load_seconds;
    Ok(step)
}

#[derive(serde::Deserialize)]
struct ReferenceStep {
    seconds_per_step: f64,
    peak_rss_bytes: Option<u64>,
}

/// `tools/wan_parity.py bench` on the same size, both guidance branches in one batch as ours.
fn reference_step(python: &Path, args: &BenchWanArgs) -> Result<ReferenceStep> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/wan_parity.py");
    let output = Command::new(python)
        .arg(&script)
        .args(["bench", "--cfg", "batch", "--warmup", "1"])
        .args(["--frames", &args.frames.to_string()])
        .args(["--height", &args.height.to_string()])
        .args(["--width", &args.width.to_string()])
        .args(["--steps", &args.runs.to_string()])
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    if !output.status.success() {
        bail!(
            "the reference bench failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or_default()
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|line| line.starts_with('{'))
        .context("the reference bench printed no JSON")?;
    Ok(serde_json::from_str(line)?)
}

pub fn print_bench(bench: &WanBench) {
    let step = &bench.step;
    println!(
        "Wan 2.1 transformer, {} parameters, {:?} {}",
        step.params, step.device, step.dtype
    );
    println!(
        "  {}x{}, {} frames: {} video tokens, text {} tokens, both guidance branches batched",
        step.width, step.height, step.frames, step.tokens, step.text_len
    );
    println!("  seconds per step  {:.3}", step.seconds_per_step);
    println!("  load              {:.1} s", step.load_seconds);
    if let Some(peak) = bench.peak_rss_bytes {
        println!(
            "  peak RSS          {:.2} GiB",
            peak as f64 / (1u64 << 30) as f64
        );
    }
    match (bench.reference_seconds_per_step, bench.ratio_to_reference) {
        (Some(reference), Some(ratio)) => println!(
            "  reference         {reference:.3} s per step (diffusers, same size); ratio {ratio:.2} (below 1: faster)"
        ),
        _ => println!(
            "  reference         not run (give --reference PYTHON with torch and diffusers)"
        ),
    }
}
