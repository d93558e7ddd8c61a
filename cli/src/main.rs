//! `reelfarm`: render long multi-shot AI video sequences on a render farm, or on this
//! machine with the embedded farm.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use reelfarm_cli::input::{InputError, load_catalog, load_spec};
#[cfg(feature = "worker")]
use reelfarm_cli::render::{RenderOptions, print_summary, render};

/// Counts the heap, so workers can report each task's measured peak memory on the CPU.
#[cfg(feature = "worker")]
#[global_allocator]
static HEAP_COUNTER: reelfarm_worker::memory_meter::CountingAllocator =
    reelfarm_worker::memory_meter::CountingAllocator;

#[derive(Parser)]
#[command(
    name = "reelfarm",
    version,
    about = "Render long multi-shot AI video sequences",
    long_about = "\
Render long multi-shot AI video sequences. A sequence spec (YAML or JSON) lists shots with
prompts and durations; reelfarm splits long shots into 10-20 s windows, renders them on a
farm of workers (continuing shots conditioned on the previous window's last frame), and
stitches one H.264 MP4.

Start here:
  reelfarm render examples/sequences/coastline-60s.yaml -o coastline.mp4"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[cfg(feature = "worker")]
    /// Render a sequence on this machine (embedded scheduler and CPU workers) into one MP4.
    #[command(long_about = "\
Render a sequence on this machine: an in-process scheduler and N CPU workers talk gRPC over
loopback, segments go to a local object store in a work directory, and the stitched video is
written to OUT (its report beside it as OUT.report.json). Nothing is written to OUT unless the
render succeeds.

Render again after editing the spec and only what changed is rendered: segments are kept in
the segment cache ($XDG_CACHE_HOME/reelfarm, else ~/.cache/reelfarm), keyed by everything
that decides their pixels, so an edited shot renders again with the continuity chain after
it and every other segment is reused. The summary and OUT.report.json say how many were
reused. --no-cache renders everything; delete the folder to empty the cache.

Examples:
  reelfarm render examples/sequences/coastline-60s.yaml -o coastline.mp4
  reelfarm render spec.yaml -o take2.mp4 --steps 24     # more steps: every segment anew
  reelfarm render spec.yaml -o clean.mp4 --no-cache")]
    Render(RenderArgs),
    /// Check a sequence spec and print its plan, without rendering.
    Validate {
        /// The sequence spec (YAML or JSON).
        spec: PathBuf,
        /// Model catalog file adding models to the built-in ones (see README "Models").
        #[arg(long, env = "REELFARM_MODELS")]
        models: Option<PathBuf>,
    },
    /// submit, watch, status, cancel, workers, download: talk to a running scheduler.
    #[command(flatten)]
    Client(reelfarm_cli::client::ClientCommand),
    /// Run a scheduler of the distributed farm (state in etcd, objects in S3).
    #[command(long_about = "\
Run a scheduler of the distributed farm. Several schedulers may run against one etcd: one
leads (etcd election), the others answer clients with the leader's address and take over
within --leader-ttl seconds when it dies. Settings: defaults, then --config FILE (TOML with
[scheduler] and [store] sections), then REELFARM_* environment variables, then flags.

Example:
  reelfarm scheduler --listen 0.0.0.0:7070 --etcd http://etcd:2379 \\
      --s3-endpoint http://minio:9000 --bucket renders")]
    Scheduler {
        #[command(flatten)]
        args: reelfarm_cli::config::SchedulerArgs,
        #[command(flatten)]
        store: reelfarm_cli::config::StoreArgs,
        #[command(flatten)]
        telemetry: reelfarm_cli::config::TelemetryArgs,
        /// TOML settings file, under environment variables and flags.
        #[arg(long, env = "REELFARM_CONFIG")]
        config: Option<PathBuf>,
    },
    #[cfg(feature = "worker")]
    /// Run a worker: take segments from the leading scheduler and render them.
    #[command(long_about = "\
Run a worker of the distributed farm: it finds the leading scheduler among --scheduler URLs,
registers its devices, renders the segments it is given and writes them to the object store.
It reconnects when a scheduler fails over, keeping the work it runs. Settings: defaults, then
--config FILE ([worker] and [store] sections), then REELFARM_* variables, then flags.

Example:
  reelfarm worker --scheduler http://scheduler:7070 --simulate-gpus 2x80GiB \\
      --s3-endpoint http://minio:9000 --bucket renders")]
    Worker {
        #[command(flatten)]
        args: reelfarm_cli::config::WorkerArgs,
        #[command(flatten)]
        store: reelfarm_cli::config::StoreArgs,
        #[command(flatten)]
        telemetry: reelfarm_cli::config::TelemetryArgs,
        /// TOML settings file, under environment variables and flags.
        #[arg(long, env = "REELFARM_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run the farm core on a simulated GPU pool and compare placement policies.
    #[command(long_about = "\
Run the farm core itself (planner, placement, memory estimator with its corrections, the
out-of-memory ladder, fair share, durable records) on a discrete-event model of a GPU pool:
workers register simulated GPUs, sequences are planned and submitted, and each finished or
failed segment is reported back as a worker would. The pool's physics are the simulator's:
compute shared by co-running segments up to what each can use, model loads, out-of-memory
failures when true peaks (hidden from the farm) exceed a GPU.

Without --gpus/--segments: the reference trace, 64 GPUs (32 x 24 GB at speed 1.0, 24 x 80 GB
at 2.2, 8 x 80 GB at 3.5) and 200 sequences of 60-180 s arriving over an hour. With them: a
farm at scale: N GPUs and many owners' sequences until M segments, their work offered at
90 % of the pool's speed (long continuity chains still leave GPUs idle between arrivals).

Per policy it prints makespan and its lower bound, GPU busy fraction, OOMs, p50/p95 sequence
completion, the farm's decisions per second and p99 decision time (wall clock), state writes
per segment and peak memory.

Policies: fifo (one segment per GPU, first fit: a plain nvidia.com/gpu: 1 pod per segment),
pack (memory packing only), full (what the farm runs: packing, model affinity, critical path,
large-GPU protection, fair share).

Examples:
  reelfarm sim --policy all
  reelfarm sim --gpus 10000 --segments 200000 --policy full --json")]
    Sim {
        /// fifo, pack, full or all.
        #[arg(long, default_value = "all")]
        policy: String,
        /// Seed of the trace.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// GPUs of a farm at scale (with --segments).
        #[arg(long, requires = "segments")]
        gpus: Option<usize>,
        /// Segments of a farm at scale (with --gpus).
        #[arg(long, requires = "gpus")]
        segments: Option<usize>,
        /// A JSON list, one record per policy: policy, makespan_s, lower_bound_s, busy, ooms,
        /// p50_s, p95_s, decisions_per_s, decision_p99_ms, state_writes_per_segment,
        /// peak_rss_bytes, ...
        #[arg(long)]
        json: bool,
    },
    #[cfg(feature = "train")]
    /// Train reelfarm-tiny on procedural scenes (reproduces the shipped weights).
    #[command(long_about = "\
Train reelfarm-tiny, the built-in demo model, on clips from the procedural scene generator
(time of day, setting, weather, camera move, with prompts phrased from them) with the
rectified-flow objective. The defaults reproduce the weights built into reelfarm from a fixed
seed: three cosine cycles, 1,200 steps at a peak learning rate of 0.001 and then twice 1,000
steps at 0.0005, each on new scenes. The loss is printed as it goes and written as
OUT.loss.csv beside the weights. Takes about 85 minutes on 2 CPU cores with a release build;
`--cycles 50` is a quick run to try the command, and --from continues an earlier run.

Use the result with --weights (render, worker, eval-tiny) or REELFARM_TINY_WEIGHTS.

Example:
  cargo run --release -p reelfarm -- train-tiny -o reelfarm-tiny.safetensors")]
    TrainTiny(reelfarm_cli::train::TrainArgs),
    #[cfg(feature = "train")]
    /// Measure how well reelfarm-tiny follows prompts it never saw in training.
    #[command(long_about = "\
Render held-out generator prompts (never used in training) with the trained weights and with
untrained ones (the chance baseline), read time of day, camera move, setting and weather back
from the pixels with measures that do not use the model (a motion search between frames and a
small classifier trained on the generator's ground truth), and print the accuracy of each.
Goals: time of day and camera 80 %, setting 60 %. Also checks that one prompt and seed
render identical frames and that another seed differs.

Example:
  cargo run --release -p reelfarm -- eval-tiny --json")]
    EvalTiny(reelfarm_cli::train::EvalArgs),
    /// Benchmarks that print ratios and where time went (not for tests).
    Bench {
        #[command(subcommand)]
        bench: BenchCommand,
    },
}

#[cfg(feature = "worker")]
#[derive(clap::Args)]
struct RenderArgs {
    /// The sequence spec (YAML or JSON); see README "Sequence spec".
    spec: PathBuf,
    /// Where to write the video, e.g. out.mp4.
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    farm: FarmArgs,
    /// No progress bars, only the summary.
    #[arg(short, long)]
    quiet: bool,
}

#[cfg(feature = "worker")]
#[derive(clap::Args)]
struct FarmArgs {
    /// CPU workers in the embedded farm; independent shots render in parallel.
    #[arg(long, default_value_t = 2, env = "REELFARM_WORKERS")]
    workers: usize,
    /// Denoising steps per segment (default: the model's draft or final count).
    #[arg(long)]
    steps: Option<u32>,
    /// reelfarm-tiny weights (safetensors); default: the built-in weights that
    /// `reelfarm train-tiny` reproduces.
    #[arg(long, env = "REELFARM_TINY_WEIGHTS")]
    weights: Option<PathBuf>,
    /// Model catalog file (TOML, `[[model]]` entries) adding models to the built-in
    /// reelfarm-tiny, e.g. your own trained tiny weights under a name a spec can use.
    #[arg(long, env = "REELFARM_MODELS")]
    models: Option<PathBuf>,
    /// The embedded farm's object store: segments, the segment cache, intermediate files.
    /// Default: the segment cache folder, $XDG_CACHE_HOME/reelfarm (else ~/.cache/reelfarm),
    /// where a later render finds the segments it can reuse.
    #[arg(long, env = "REELFARM_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// Render every segment. By default a segment whose inputs (model and weights, prompt,
    /// negative, seed, size, frames, steps, guidance, the picture it starts from) match one
    /// rendered before is reused, not rendered again; --no-cache reads nothing from the
    /// cache and leaves nothing in it (a temporary work folder).
    #[arg(long)]
    no_cache: bool,
    /// Keep the work folder (the segment cache) within this many GiB: after a render, the
    /// least recently used sequences' segments are removed until it fits (the render just
    /// made always stays).
    #[arg(
        long,
        env = "REELFARM_CACHE_MAX_GIB",
        default_value_t = 20.0,
        value_name = "GIB"
    )]
    cache_max_gib: f64,
    /// Render N takes (1-8) of every shot that does not set its own `variants`; the contact
    /// sheet shows them under each shot.
    #[arg(long, value_name = "N")]
    variants: Option<u32>,
}

#[derive(Subcommand)]
enum BenchCommand {
    #[cfg(feature = "worker")]
    /// Time one reelfarm-tiny draft segment (480p, 24 fps, 10 s): seconds per segment and
    /// per denoising step, and the ratio to the 10 s budget.
    Tiny(reelfarm_cli::tiny::BenchTinyArgs),
    #[cfg(feature = "worker")]
    /// One sampling step of the Wan 2.1 1.3B transformer (both guidance branches) at a small
    /// size: seconds per step and peak memory, and the ratio to the reference when its Python
    /// is given.
    #[command(long_about = "\
One sampling step of the Wan 2.1 T2V 1.3B transformer (both guidance branches, batched, text
padded to 512) at a size this machine can run, with random weights of the published shape
(--random-weights, nothing to download) or a checkpoint's (--weights DIR). Prints parameters,
seconds per step and peak resident memory. With --reference PYTHON (a Python with torch and
diffusers, see tools/wan_parity.py) it times the same step in diffusers and prints the ratio.
Runs on the first CUDA device in bf16 when built with --features cuda, else on the CPU in f32.

Examples:
  cargo run --release -p reelfarm -- bench wan --random-weights
  cargo run --release -p reelfarm -- bench wan --random-weights --reference venv/bin/python --json
  reelfarm bench wan --random-weights --width 832 --height 480 --frames 81   # on a GPU node")]
    Wan(reelfarm_cli::wan::BenchWanArgs),
    #[cfg(feature = "worker")]
    /// Render a sequence at draft settings and print where the wall time went.
    Render {
        spec: PathBuf,
        #[command(flatten)]
        farm: FarmArgs,
        /// One JSON object: wall_s, model_s, codec_s, overhead_s, overhead_fraction.
        #[arg(long)]
        json: bool,
    },
    #[cfg(feature = "worker")]
    /// What the segment cache saves: render a sequence, edit one shot's prompt, render it
    /// again on the same embedded farm, and print the second wall time as a fraction of
    /// the first.
    #[command(long_about = "\
Render a sequence on a fresh embedded farm, edit one shot's prompt (--shot, 0-based; default
the middle shot), and render it again on the same farm: only that shot and the continuity
chain after it render, the rest comes from the segment cache. Prints both wall times and the
second as a fraction of the first. Build with --release for figures worth quoting.

Example:
  cargo run --release -p reelfarm -- bench rerender examples/sequences/coastline-60s.yaml")]
    Rerender {
        spec: PathBuf,
        /// The shot whose prompt is edited (0-based); default: the middle shot.
        #[arg(long)]
        shot: Option<usize>,
        #[command(flatten)]
        farm: FarmArgs,
        /// One JSON object: first_wall_s, second_wall_s, second_fraction, reused_segments, ...
        #[arg(long)]
        json: bool,
    },
    /// Placement speed: 1,000 workers, 100,000 queued segments; placements/s and p99 latency.
    Placement {
        /// One JSON object: placements_per_s, p99_ms, baseline_placements_per_s, ...
        #[arg(long)]
        json: bool,
    },
    #[cfg(feature = "worker")]
    /// Stitch synthetic segments of a long 1080p sequence with colour matching on and off,
    /// and time ffmpeg (libx264 veryfast) re-encoding the same segments without matching.
    #[command(long_about = "\
Stitch synthetic segments of a long sequence (15 s shots with per-shot exposure and white
balance offsets, continuations that drift, dissolves) three ways and print the times and
their ratios: reelfarm with colour matching on, reelfarm with it off, and plain
`ffmpeg -c:v libx264 -preset veryfast` re-encoding the same segment files. The goal is a
ratio ffmpeg/reelfarm of at least 1: matching close to free. Needs ffmpeg on PATH. Build
with --release: a debug build measures the debug build.

Example:
  cargo run --release -p reelfarm -- bench stitch --seconds 120 --resolution 1080p")]
    Stitch {
        /// Length of the synthetic sequence.
        #[arg(long, default_value_t = 120.0)]
        seconds: f64,
        /// Frame size (16:9): 480p, 720p or 1080p.
        #[arg(long, default_value = "1080p")]
        resolution: String,
        /// One JSON object: reelfarm_s, reelfarm_off_s, ffmpeg_s, ratio_vs_ffmpeg, matching_overhead, ...
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The long-running processes log what they do; the one-shot verbs stay quiet.
    let serving = match cli.command {
        Command::Scheduler { .. } => true,
        #[cfg(feature = "worker")]
        Command::Worker { .. } => true,
        _ => false,
    };
    // They install their own logging with metrics and traces (`serve.rs`).
    if !serving {
        reelfarm_common::telemetry::init("warn", false);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => match error.downcast_ref::<InputError>() {
            Some(input) => {
                for line in &input.0 {
                    eprintln!("error: {line}");
                }
                ExitCode::from(2)
            }
            None => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        },
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        #[cfg(feature = "worker")]
        Command::Render(args) => {
            let options = RenderOptions {
                spec: args.spec,
                output: Some(args.output),
                workers: args.farm.workers,
                steps: args.farm.steps,
                weights: args.farm.weights,
                models: args.farm.models,
                work_dir: args.farm.work_dir,
                no_cache: args.farm.no_cache,
                variants: args.farm.variants,
                cache_max_bytes: cache_max_bytes(args.farm.cache_max_gib)?,
                quiet: args.quiet,
            };
            print_summary(&render(options).await?);
        }
        Command::Scheduler {
            args,
            store,
            telemetry,
            config,
        } => reelfarm_cli::serve::run_scheduler(args, store, telemetry, config).await?,
        #[cfg(feature = "worker")]
        Command::Worker {
            args,
            store,
            telemetry,
            config,
        } => reelfarm_cli::serve::run_worker(args, store, telemetry, config).await?,
        Command::Validate { spec, models } => {
            let catalog = load_catalog(models.as_deref())?;
            reelfarm_cli::validate::print_plan(&load_spec(&spec, None, Some(&catalog))?, &catalog)
        }
        Command::Client(command) => reelfarm_cli::client::run(command).await?,
        Command::Sim {
            policy,
            seed,
            gpus,
            segments,
            json,
        } => {
            let scale = gpus.zip(segments);
            reelfarm_cli::sim::policies(&policy)?;
            let (trace, results) = tokio::task::spawn_blocking(move || {
                let trace = reelfarm_cli::sim::trace(scale, seed)?;
                let results =
                    reelfarm_cli::sim::run_sim(&policy, &trace, &mut |line| eprintln!("{line}"))?;
                anyhow::Ok((trace, results))
            })
            .await??;
            if json {
                println!("{}", serde_json::to_string(&results)?);
            } else {
                reelfarm_cli::sim::print_sim(&trace, &results);
            }
        }
        #[cfg(feature = "train")]
        Command::TrainTiny(args) => {
            tokio::task::spawn_blocking(move || reelfarm_cli::train::run_train(&args)).await??
        }
        #[cfg(feature = "train")]
        Command::EvalTiny(args) => {
            tokio::task::spawn_blocking(move || reelfarm_cli::train::run_eval(&args)).await??
        }
        #[cfg(feature = "worker")]
        Command::Bench {
            bench: BenchCommand::Wan(args),
        } => {
            let json = args.json;
            let bench =
                tokio::task::spawn_blocking(move || reelfarm_cli::wan::run_bench(&args)).await??;
            if json {
                println!("{}", serde_json::to_string(&bench)?);
            } else {
                reelfarm_cli::wan::print_bench(&bench);
            }
        }
        #[cfg(feature = "worker")]
        Command::Bench {
            bench: BenchCommand::Tiny(args),
        } => {
            let json = args.json;
            let bench =
                tokio::task::spawn_blocking(move || reelfarm_cli::tiny::run_bench(&args)).await??;
            if json {
                println!("{}", serde_json::to_string(&bench)?);
            } else {
                reelfarm_cli::tiny::print_bench(&bench);
            }
        }
        #[cfg(feature = "worker")]
        Command::Bench {
            bench:
                BenchCommand::Rerender {
                    spec,
                    shot,
                    farm,
                    json,
                },
        } => {
            let bench =
                reelfarm_cli::bench_cache::run(reelfarm_cli::bench_cache::BenchRerenderOptions {
                    spec,
                    shot,
                    workers: farm.workers,
                    steps: farm.steps,
                    models: farm.models,
                    weights: farm.weights,
                })
                .await?;
            if json {
                println!("{}", serde_json::to_string(&bench)?);
            } else {
                reelfarm_cli::bench_cache::print(&bench);
            }
        }
        Command::Bench {
            bench: BenchCommand::Placement { json },
        } => {
            let bench = tokio::task::spawn_blocking(reelfarm_cli::sim::bench_placement).await?;
            if json {
                println!("{}", serde_json::to_string(&bench)?);
            } else {
                reelfarm_cli::sim::print_bench(&bench);
            }
        }
        #[cfg(feature = "worker")]
        Command::Bench {
            bench:
                BenchCommand::Stitch {
                    seconds,
                    resolution,
                    json,
                },
        } => {
            let bench = tokio::task::spawn_blocking(move || {
                reelfarm_cli::bench_stitch::run(seconds, &resolution)
            })
            .await??;
            if json {
                println!("{}", serde_json::to_string(&bench)?);
            } else {
                reelfarm_cli::bench_stitch::print(&bench);
            }
        }
        #[cfg(feature = "worker")]
        Command::Bench {
            bench: BenchCommand::Render { spec, farm, json },
        } => {
            let options = RenderOptions {
                spec,
                output: None,
                workers: farm.workers,
                steps: farm.steps,
                weights: farm.weights,
                models: farm.models,
                work_dir: farm.work_dir,
                no_cache: farm.no_cache,
                variants: farm.variants,
                cache_max_bytes: cache_max_bytes(farm.cache_max_gib)?,
                quiet: true,
            };
            let outcome = render(options).await?;
            if json {
                println!("{}", serde_json::to_string(&outcome.breakdown)?);
            } else {
                print_summary(&outcome);
            }
        }
    }
    Ok(())
}

/// `--cache-max-gib` in bytes: a positive number of GiB.
fn cache_max_bytes(gib: f64) -> anyhow::Result<u64> {
    if !(gib.is_finite() && gib > 0.0) {
        anyhow::bail!("--cache-max-gib: {gib} is not a size above 0 GiB");
    }
    Ok((gib * f64::from(1u32 << 30)) as u64)
}
