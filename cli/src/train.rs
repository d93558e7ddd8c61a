//! `reelfarm train-tiny` and `eval-tiny`: reproduce the shipped reelfarm-tiny weights and
//! prove they follow prompts they never saw. Only with the `train` feature: worker images
//! leave the trainer out.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use reelfarm_tiny::eval::{EvalOptions, EvalReport, evaluate};
use reelfarm_tiny::train::{Cycle, StepReport, TrainOptions, train_from};
use reelfarm_tiny::{TinyConfig, TinyModel, TinyWeights};

use crate::tiny::load_tiny;

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
    let trained = load_tiny(args.weights.as_deref())?;
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
