//! `reelfarm train-tiny`, `eval-tiny` and `bench tiny`: reproduce the shipped reelfarm-tiny weights, prove they follow the prompt, and time a draft segment.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use reelfarm_models::{GenerateRequest, ModelRuntime};
use reelfarm_tiny::eval::{EvalOptions, EvalReport, evaluate};
use reelfarm_tiny::train::{Cycle, StepReport, TrainOptions, train_from};
use reelfarm_tiny::{TinyConfig, TinyModel, TinyWeights};
use serde::Serialize;

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Where to write the weights (safetensors); a loss curve CSV is written beside it.
    #[arg(short, long, default_value = "reelfarm-tiny.safetensors")]
    pub output: PathBuf,
    /// Seed of the initial weights, the scenes and the noise: the default reproduces the
    /// shipped weights.
    #[arg(long, default_value_t = TrainOptions::default().seed)]
    pub seed: u64,
    /// Training cycles, comma-separated STEPS@PEAK_LEARNING_RATE (the rate defaults to 0.001).
    /// Each cycle warms up to its peak and decays it along a cosine to a tenth, with a fresh
    /// AdamW and new scenes, continuing from the weights the cycle before left; `--cycles 50`
    /// is a quick single-cycle run.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_CYCLES)]
    pub cycles: Vec<CycleArg>,
    /// Clips per step.
    #[arg(long, default_value_t = TrainOptions::default().batch)]
    pub batch: usize,
    /// Continue from these weights (safetensors, e.g. the output of an earlier run) instead of
    /// the untrained weights of --seed; --seed then picks only the scenes (cycle i draws from
    /// seed + i, so pass the earlier run's seed plus its number of cycles to carry on where it
    /// stopped).
    #[arg(long, value_name = "WEIGHTS")]
    pub from: Option<PathBuf>,
    /// Print the running loss every N steps.
    #[arg(long, default_value_t = 25)]
    pub every: usize,
}

/// `TrainOptions::default().cycles` as `--cycles` spells them (a test holds them equal).
const DEFAULT_CYCLES: &str = "1200@0.001,1000@0.0005,1000@0.0005";

/// One `--cycles` entry: `STEPS` or `STEPS@PEAK_LEARNING_RATE`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CycleArg(pub Cycle);

impl std::fmt::Display for CycleArg {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}@{}", self.0.steps, self.0.learning_rate)
    }
}

impl std::str::FromStr for CycleArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (steps, rate) = text.split_once('@').unwrap_or((text, "0.001"));
        let steps: usize = steps
            .trim()
            .parse()
            .map_err(|_| format!("`{text}`: steps must be a whole number, as in 1200@0.001"))?;
        let learning_rate: f64 = rate.trim().parse().map_err(|_| {
            format!("`{text}`: the learning rate after @ must be a number, as in 1200@0.001")
        })?;
        if steps == 0 {
            return Err(format!("`{text}`: a cycle needs at least 1 step"));
        }
        if !(learning_rate.is_finite() && learning_rate > 0.0) {
            return Err(format!(
                "`{text}`: the learning rate must be a positive number"
            ));
        }
        Ok(Self(Cycle {
            steps,
            learning_rate,
        }))
    }
}

fn minutes(seconds: f64) -> String {
    format!("{}m{:02}s", (seconds / 60.0) as u64, seconds as u64 % 60)
}

pub fn run_train(args: &TrainArgs) -> Result<()> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    if args.cycles.is_empty() {
        bail!("--cycles needs at least one cycle, as in 1200@0.001");
    }
    let options = TrainOptions {
        seed: args.seed,
        cycles: args.cycles.iter().map(|cycle| cycle.0).collect(),
        batch: args.batch,
        ..TrainOptions::default()
    };
    let start = match &args.from {
        Some(path) => TinyWeights::load_safetensors(&TinyConfig::default(), path)
            .with_context(|| format!("reading --from {}", path.display()))?,
        None => TinyWeights::from_seed(&TinyConfig::default(), options.seed)?,
    };
    let defaults = options == TrainOptions::default() && args.from.is_none();
    let cycles: Vec<String> = args.cycles.iter().map(ToString::to_string).collect();
    println!(
        "training reelfarm-tiny: {} steps in {} cycle(s) ({}) of {} procedural clips ({} latent frames at {}x{}), seed {}",
        options.total_steps(),
        options.cycles.len(),
        cycles.join(", "),
        options.batch,
        options.latent_frames,
        options.width,
        options.height,
        options.seed
    );
    let mut curve: Vec<StepReport> = Vec::with_capacity(options.total_steps());
    let every = args.every.max(1);
    let weights = train_from(&start, &options, &mut |report| {
        curve.push(*report);
        if report.step % every == 0 || report.step == report.steps {
            let window = &curve[curve.len().saturating_sub(every)..];
            let mean = |value: fn(&StepReport) -> f32| {
                window.iter().map(|r| f64::from(value(r))).sum::<f64>() / window.len() as f64
            };
            let remaining =
                report.elapsed_seconds / report.step as f64 * (report.steps - report.step) as f64;
            println!(
                "step {:>5}/{}  cycle {}  loss {:.4}  camera {:.4}  lr {:.5}  {} elapsed, ~{} left",
                report.step,
                report.steps,
                report.cycle,
                mean(|r| r.loss),
                mean(|r| r.camera_loss),
                report.learning_rate,
                minutes(report.elapsed_seconds),
                minutes(remaining)
            );
        }
    })?;
    weights
        .save_safetensors(&args.output)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let csv_path = args.output.with_extension("loss.csv");
    let mut csv = String::from("step,cycle,loss,camera_loss,learning_rate,elapsed_s\n");
    for report in &curve {
        csv.push_str(&format!(
            "{},{},{},{},{},{:.3}\n",
            report.step,
            report.cycle,
            report.loss,
            report.camera_loss,
            report.learning_rate,
            report.elapsed_seconds
        ));
    }
    std::fs::write(&csv_path, csv).with_context(|| format!("writing {}", csv_path.display()))?;
    let elapsed = curve.last().map_or(0.0, |r| r.elapsed_seconds);
    println!(
        "wrote {} ({:.1} MB, {} parameters) and its loss curve {} after {}",
        args.output.display(),
        std::fs::metadata(&args.output)?.len() as f64 / 1e6,
        weights.parameter_count(),
        csv_path.display(),
        minutes(elapsed)
    );
    let shipped = TinyModel::shipped()?;
    let gap = weights.max_difference(shipped.weights())?;
    if gap == 0.0 {
        println!("identical to the shipped weights");
    } else if defaults {
        println!(
            "differs from the shipped weights by up to {gap:.2e} (same defaults: floating-point \
             results can differ across CPUs and thread counts)"
        );
    } else {
        println!("differs from the shipped weights (non-default options)");
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Weights to judge (default: the shipped weights).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Held-out prompts to render (each by the trained and by untrained weights).
    #[arg(long, default_value_t = EvalOptions::default().prompts)]
    pub prompts: usize,
    /// Length of each clip.
    #[arg(long, default_value_t = EvalOptions::default().seconds)]
    pub seconds: f32,
    /// Seed of the held-out set.
    #[arg(long, default_value_t = EvalOptions::default().seed)]
    pub seed: u64,
    /// Denoising steps per clip (the draft count by default).
    #[arg(long, default_value_t = EvalOptions::default().steps)]
    pub steps: u32,
    /// Classifier-free guidance scale.
    #[arg(long, default_value_t = EvalOptions::default().guidance)]
    pub guidance: f32,
    /// One JSON object: time_of_day, camera, setting, weather (each with trained, random,
    /// chance), same_seed_identical, other_seed_difference, ground_truth, cases.
    #[arg(long)]
    pub json: bool,
    /// Exit non-zero when a goal is missed (time of day and camera 80 %, setting 60 %).
    #[arg(long)]
    pub check: bool,
}

/// The accuracy goals of the shipped weights.
pub const GOALS: [(&str, f64); 3] = [("time_of_day", 0.8), ("camera", 0.8), ("setting", 0.6)];

fn goal_misses(report: &EvalReport) -> Vec<String> {
    let scores = [
        report.time_of_day.trained,
        report.camera.trained,
        report.setting.trained,
    ];
    GOALS
        .iter()
        .zip(scores)
        .filter(|((_, goal), score)| score < goal)
        .map(|((name, goal), score)| {
            format!("{name} {:.0} % < {:.0} %", score * 100.0, goal * 100.0)
        })
        .collect()
}

pub fn run_eval(args: &EvalArgs) -> Result<()> {
    if args.prompts == 0 {
        bail!("--prompts must be at least 1");
    }
    if !(args.seconds.is_finite() && (0.5..=20.0).contains(&args.seconds)) {
        bail!("--seconds must be within 0.5..=20");
    }
    if !(1..=100).contains(&args.steps) {
        bail!("--steps must be within 1..=100");
    }
    if !(args.guidance.is_finite() && (0.0..=20.0).contains(&args.guidance)) {
        bail!("--guidance must be within 0..=20");
    }
    let trained = crate::render::load_tiny(args.weights.as_deref())?;
    let random = TinyModel::from_seed(TrainOptions::default().seed)?;
    let options = EvalOptions {
        prompts: args.prompts,
        seconds: args.seconds,
        seed: args.seed,
        steps: args.steps,
        guidance: args.guidance,
        ..EvalOptions::default()
    };
    let report = evaluate(&trained, &random, &options, &mut |done, total| {
        if !args.json {
            eprint!("\rrendering held-out prompts: {done}/{total}");
        }
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        eprintln!();
        print_eval(&report);
    }
    let misses = goal_misses(&report);
    if args.check && !misses.is_empty() {
        bail!("goals missed: {}", misses.join(", "));
    }
    Ok(())
}

fn print_eval(report: &EvalReport) {
    println!(
        "{} held-out prompts, {:.0} s clips at {}x{}, {} steps (took {:.0} s)",
        report.prompts,
        report.clip_seconds,
        report.width,
        report.height,
        report.steps,
        report.elapsed_seconds
    );
    println!("attribute     trained  random  chance  goal  generator");
    let goal = |name: &str| {
        GOALS
            .iter()
            .find(|(goal_name, _)| *goal_name == name)
            .map_or("   -".to_string(), |(_, goal)| {
                format!("{:>3.0}%", goal * 100.0)
            })
    };
    for (name, score, truth) in [
        (
            "time_of_day",
            report.time_of_day,
            report.ground_truth.time_of_day,
        ),
        ("camera", report.camera, report.ground_truth.camera),
        ("setting", report.setting, report.ground_truth.setting),
        ("weather", report.weather, report.ground_truth.weather),
    ] {
        println!(
            "{name:<12} {:>7.0}% {:>6.0}% {:>6.0}%  {}  {:>8.0}%",
            score.trained * 100.0,
            score.random * 100.0,
            score.chance * 100.0,
            goal(name),
            truth * 100.0
        );
    }
    println!(
        "same prompt and seed twice: {}; another seed differs by {:.1} levels on average",
        if report.same_seed_identical {
            "identical frames"
        } else {
            "DIFFERENT frames"
        },
        report.other_seed_difference
    );
    println!("(generator: how well the measures read the generator's own clips, their ceiling)");
}

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
    let model = crate::render::load_tiny(args.weights.as_deref())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cycles_are_the_training_defaults() {
        let parsed: Vec<Cycle> = DEFAULT_CYCLES
            .split(',')
            .map(|text| text.parse::<CycleArg>().map(|cycle| cycle.0))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(parsed, TrainOptions::default().cycles);
    }

    #[test]
    fn a_cycle_reads_steps_and_an_optional_rate() {
        let cycle = |text: &str| text.parse::<CycleArg>().map(|cycle| cycle.0);
        assert_eq!(
            cycle("50").unwrap(),
            Cycle {
                steps: 50,
                learning_rate: 0.001
            }
        );
        assert_eq!(cycle(" 300 @ 2e-4").unwrap().learning_rate, 2e-4);
        for bad in ["", "0@0.001", "ten", "10@", "10@-1", "10@inf"] {
            assert!(cycle(bad).is_err(), "{bad} was accepted");
        }
    }
}
