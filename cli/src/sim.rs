//! `reelfarm sim` and `reelfarm bench placement`: the farm core on a simulated pool (the
//! reference hour, or a farm at scale), and how fast the placement queue alone decides.

use std::time::Instant;

use anyhow::{Result, bail};
use reelfarm_core::placement::{
    Assignment, GpuState, Policy, ReadyQueue, ReadySegment, RunningCounts,
};
use reelfarm_core::sim::{SimResult, Trace, reference_trace, scale_trace, simulate};
use serde::Serialize;

/// `fifo`, `pack`, `full` or `all`.
pub fn policies(name: &str) -> Result<Vec<Policy>> {
    match name {
        "all" => Ok(Policy::ALL.to_vec()),
        other => match Policy::ALL.into_iter().find(|p| p.name() == other) {
            Some(policy) => Ok(vec![policy]),
            None => bail!("--policy: must be fifo, pack, full or all, got {other}"),
        },
    }
}

/// The trace a `reelfarm sim` runs: the reference pool, or a farm at scale.
pub fn trace(scale: Option<(usize, usize)>, seed: u64) -> Result<Trace> {
    match scale {
        None => Ok(reference_trace(seed)),
        Some((gpus, segments)) => {
            if !(1..=1_000_000).contains(&gpus) {
                bail!("--gpus: must be between 1 and 1000000, got {gpus}");
            }
            if !(1..=10_000_000).contains(&segments) {
                bail!("--segments: must be between 1 and 10000000, got {segments}");
            }
            Ok(scale_trace(gpus, segments, seed))
        }
    }
}

/// Runs each policy on the trace, through the farm core; peak memory is this process's,
/// reset before each policy (Linux `clear_refs`; left out where that is not possible).
pub fn run_sim(
    policy: &str,
    trace: &Trace,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<SimResult>> {
    let policies = policies(policy)?;
    let started = Instant::now();
    let mut clock = move || started.elapsed().as_secs_f64();
    let mut results = Vec::new();
    for policy in policies {
        progress(&format!("simulating {} ...", policy.name()));
        let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
        let (mut result, _) = simulate(trace, policy, &mut clock, false);
        if reset {
            result.peak_rss_bytes = peak_rss_bytes();
        }
        results.push(result);
    }
    Ok(results)
}

/// The process's peak resident set since start or the last reset (`VmHWM`).
pub(crate) fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

pub fn print_sim(trace: &Trace, results: &[SimResult]) {
    println!(
        "{} ({} segments), through the farm core",
        trace.description,
        results.first().map_or(0, |r| r.segments)
    );
    println!(
        "{:<6} {:>11} {:>13} {:>7} {:>5} {:>5} {:>9} {:>9} {:>11} {:>8} {:>8} {:>8} {:>8}",
        "policy",
        "makespan_s",
        "lower_bound_s",
        "/bound",
        "busy",
        "ooms",
        "p50_s",
        "p95_s",
        "decisions/s",
        "p99_ms",
        "writes/s",
        "rss_mib",
        "wall_s"
    );
    for r in results {
        println!(
            "{:<6} {:>11.0} {:>13.0} {:>7.3} {:>5.2} {:>5} {:>9.0} {:>9.0} {:>11.0} {:>8.3} {:>8.2} {:>8} {:>8.1}",
            r.policy,
            r.makespan_s,
            r.lower_bound_s,
            r.makespan_s / r.lower_bound_s,
            r.busy,
            r.ooms,
            r.p50_s,
            r.p95_s,
            r.decisions_per_s,
            r.decision_p99_ms,
            r.state_writes_per_segment,
            r.peak_rss_bytes
                .map_or("-".to_string(), |b| format!("{}", b >> 20)),
            r.wall_s,
        );
    }
    println!(
        "(writes/s: state writes per segment; p99_ms: the 99th percentile of one farm dispatch)"
    );
    if let (Some(fifo), Some(full)) = (
        results.iter().find(|r| r.policy == "fifo"),
        results.iter().find(|r| r.policy == "full"),
    ) {
        println!(
            "full is {:.2}x faster than fifo (goal 1.3x), {:.3}x its lower bound (goal 1.05x)",
            fifo.makespan_s / full.makespan_s,
            full.makespan_s / full.lower_bound_s
        );
    }
    if let Some(full) = results.iter().find(|r| r.policy == "full") {
        let gib = full
            .peak_rss_bytes
            .map(|b| b as f64 / f64::from(1u32 << 30));
        println!(
            "full: {:.2} state writes per segment (goal <= 6), decision p99 {:.3} ms (goal < 10), peak memory {} (goal < 4 GiB)",
            full.state_writes_per_segment,
            full.decision_p99_ms,
            gib.map_or("not measured".to_string(), |g| format!("{g:.2} GiB"))
        );
    }
}

#[derive(Debug, Serialize)]
pub struct PlacementBench {
    pub workers: usize,
    pub gpus: usize,
    pub queued: usize,
    /// Placements of the timed decisions (after the pool first filled).
    pub placements: usize,
    pub placements_per_s: f64,
    pub p99_ms: f64,
    /// The first decision, which fills the empty pool.
    pub fill_placements: usize,
    pub fill_ms: f64,
    pub baseline_placements_per_s: f64,
    pub baseline_p99_ms: f64,
}

const BENCH_GPUS: usize = 4000;
const BENCH_QUEUED: u64 = 100_000;
/// Timed decisions after the fill; each follows one finished segment.
const BENCH_DECISIONS: usize = 2000;

/// 1,000 workers of 4 GPUs (mixed 24 and 80 GB), 100,000 queued segments over 2,000
/// sequences and 50 owners. The first decision fills the empty pool; then each decision
/// follows one finished segment (its GPU frees what it held) and places what now fits,
/// from the queue the farm keeps between decisions. Baseline: the same loop with FIFO
/// first fit.
pub fn bench_placement() -> PlacementBench {
    let full = measure(Policy::Full);
    let fifo = measure(Policy::Fifo);
    PlacementBench {
        workers: BENCH_GPUS / 4,
        gpus: BENCH_GPUS,
        queued: BENCH_QUEUED as usize,
        placements: full.placements,
        placements_per_s: full.placements as f64 / full.seconds,
        p99_ms: full.p99_ms,
        fill_placements: full.fill_placements,
        fill_ms: full.fill_ms,
        baseline_placements_per_s: fifo.placements as f64 / fifo.seconds,
        baseline_p99_ms: fifo.p99_ms,
    }
}

struct Measured {
    placements: usize,
    seconds: f64,
    p99_ms: f64,
    fill_placements: usize,
    fill_ms: f64,
}

fn bench_segment(i: u64) -> ReadySegment {
    const GIB: u64 = 1 << 30;
    ReadySegment {
        sequence: (i % 2000) as u32,
        owner: (i % 50) as u32,
        priority: 0,
        reserve_bytes: [8, 15, 20, 60][(i % 4) as usize] * GIB,
        cold_extra_bytes: 0,
        min_gpu_bytes: 0,
        model: (i % 3) as u32,
        work_seconds: 200.0,
        max_speed: 1.5,
        chain_seconds_behind: (i % 17) as f64 * 100.0,
        load_seconds: 30.0,
        enqueued: i,
    }
}

/// What runs in the bench pool: (gpu, reserved bytes, speed taken, segment).
#[derive(Default)]
struct Running {
    segments: Vec<(usize, u64, f64, ReadySegment)>,
    counts: RunningCounts,
}

impl Running {
    fn start(&mut self, assignments: &[Assignment], gpus: &[GpuState]) -> usize {
        for a in assignments {
            let segment = bench_segment(a.segment as u64);
            let speed = segment.max_speed.min(gpus[a.gpu].speed);
            *self.counts.by_owner.entry(segment.owner).or_default() += 1;
            *self.counts.by_sequence.entry(segment.sequence).or_default() += 1;
            self.segments
                .push((a.gpu, a.reserved_bytes, speed, segment));
        }
        assignments.len()
    }

    /// A segment finishes somewhere: its GPU frees what it held.
    fn finish_one(&mut self, pick: usize, gpus: &mut [GpuState]) {
        if self.segments.is_empty() {
            return;
        }
        let (gpu, bytes, speed, segment) = self.segments.swap_remove(pick % self.segments.len());
        let g = &mut gpus[gpu];
        g.reserved_bytes -= bytes;
        g.running -= 1;
        g.busy_speed -= speed;
        *self.counts.by_owner.entry(segment.owner).or_default() -= 1;
        *self.counts.by_sequence.entry(segment.sequence).or_default() -= 1;
    }
}

fn measure(policy: Policy) -> Measured {
    const GIB: u64 = 1 << 30;
    let mut gpus: Vec<GpuState> = (0..BENCH_GPUS)
        .map(|i| GpuState {
            total_bytes: if i % 4 == 0 { 80 * GIB } else { 24 * GIB },
            reserved_bytes: 0,
            speed: if i % 4 == 0 { 2.2 } else { 1.0 },
            busy_speed: 0.0,
            running: 0,
            resident_models: vec![(i % 3) as u32],
            serves: None,
        })
        .collect();
    let mut queue = ReadyQueue::default();
    for i in 0..BENCH_QUEUED {
        queue.push(i as usize, bench_segment(i));
    }
    let mut running = Running::default();
    let fill = Instant::now();
    let assignments = queue.place(policy, &mut gpus, &running.counts);
    let fill_ms = fill.elapsed().as_secs_f64() * 1000.0;
    let fill_placements = running.start(&assignments, &gpus);

    let mut latencies = Vec::new();
    let mut placements = 0usize;
    let started = Instant::now();
    for round in 0..BENCH_DECISIONS {
        running.finish_one(round * 7919, &mut gpus);
        let decision = Instant::now();
        let assignments = queue.place(policy, &mut gpus, &running.counts);
        latencies.push(decision.elapsed().as_secs_f64() * 1000.0);
        placements += running.start(&assignments, &gpus);
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let p99_ms = latencies[((latencies.len() - 1) as f64 * 0.99).round() as usize];
    Measured {
        placements,
        seconds,
        p99_ms,
        fill_placements,
        fill_ms,
    }
}

pub fn print_bench(bench: &PlacementBench) {
    println!(
        "placement on {} workers ({} GPUs), {} queued segments",
        bench.workers, bench.gpus, bench.queued
    );
    println!(
        "  first decision fills the empty pool: {} placements in {:.1} ms",
        bench.fill_placements, bench.fill_ms
    );
    println!(
        "  then {BENCH_DECISIONS} decisions, each after one segment finished: {} placements",
        bench.placements
    );
    println!(
        "  full  {:>10.0} placements/s   p99 decision {:>8.2} ms   (goal >= 5000/s, p99 < 10 ms)",
        bench.placements_per_s, bench.p99_ms
    );
    println!(
        "  fifo  {:>10.0} placements/s   p99 decision {:>8.2} ms   (baseline, same loop)",
        bench.baseline_placements_per_s, bench.baseline_p99_ms
    );
    println!(
        "  ratio full/fifo placements per second: {:.2}",
        bench.placements_per_s / bench.baseline_placements_per_s
    );
}
