//! `reelfarm sim` and `reelfarm bench placement`: the placement policies on the simulated
//! reference pool, and how fast one placement decision is on a large farm.

use std::time::Instant;

use anyhow::{Result, bail};
use reelfarm_scheduler::placement::{GpuState, Policy, ReadySegment, place};
use reelfarm_scheduler::sim::{SimResult, reference_trace, simulate};
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

pub fn run_sim(policy: &str, seed: u64) -> Result<Vec<SimResult>> {
    let policies = policies(policy)?;
    let trace = reference_trace(seed);
    Ok(policies.into_iter().map(|p| simulate(&trace, p)).collect())
}

pub fn print_sim(results: &[SimResult]) {
    println!(
        "reference pool: 64 GPUs (32 x 24 GB @1.0, 24 x 80 GB @2.2, 8 x 80 GB @3.5), 200 sequences over an hour ({} segments)",
        results.first().map_or(0, |r| r.segments)
    );
    println!(
        "{:<6} {:>11} {:>13} {:>8} {:>6} {:>6} {:>9} {:>9}",
        "policy", "makespan_s", "lower_bound_s", "/bound", "busy", "ooms", "p50_s", "p95_s"
    );
    for r in results {
        println!(
            "{:<6} {:>11.0} {:>13.0} {:>8.3} {:>6.2} {:>6} {:>9.0} {:>9.0}",
            r.policy,
            r.makespan_s,
            r.lower_bound_s,
            r.makespan_s / r.lower_bound_s,
            r.busy,
            r.ooms,
            r.p50_s,
            r.p95_s
        );
    }
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
}

#[derive(Debug, Serialize)]
pub struct PlacementBench {
    pub workers: usize,
    pub gpus: usize,
    pub queued: usize,
    pub placements: usize,
    pub placements_per_s: f64,
    pub p99_ms: f64,
    pub baseline_placements_per_s: f64,
    pub baseline_p99_ms: f64,
}

/// 1,000 workers of 4 GPUs (mixed 24 and 80 GB), 100,000 queued segments over 2,000
/// sequences. Each decision: one GPU frees (a segment finished), `place` runs over the whole
/// queue, the placed segments leave it. Baseline: the same loop with FIFO first fit.
pub fn bench_placement() -> PlacementBench {
    let (full_rate, full_p99, placements) = measure(Policy::Full);
    let (fifo_rate, fifo_p99, _) = measure(Policy::Fifo);
    PlacementBench {
        workers: 1000,
        gpus: 4000,
        queued: 100_000,
        placements,
        placements_per_s: full_rate,
        p99_ms: full_p99,
        baseline_placements_per_s: fifo_rate,
        baseline_p99_ms: fifo_p99,
    }
}

fn measure(policy: Policy) -> (f64, f64, usize) {
    const GIB: u64 = 1 << 30;
    let mut gpus: Vec<GpuState> = (0..4000)
        .map(|i| GpuState {
            total_bytes: if i % 4 == 0 { 80 * GIB } else { 24 * GIB },
            reserved_bytes: 0,
            speed: if i % 4 == 0 { 2.2 } else { 1.0 },
            busy_speed: 0.0,
            running: 0,
            resident_models: vec![(i % 3) as u32],
        })
        .collect();
    let mut queue: Vec<ReadySegment> = (0..100_000u64)
        .map(|i| ReadySegment {
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
        })
        .collect();
    let mut running: Vec<(usize, u64, f64)> = Vec::new();
    let mut latencies = Vec::new();
    let mut placed = 0usize;
    let started = Instant::now();
    for round in 0..200usize {
        if round > 0 && !running.is_empty() {
            // A segment finishes somewhere: its GPU frees what it held.
            let (gpu, bytes, speed) = running.swap_remove((round * 7919) % running.len());
            let g = &mut gpus[gpu];
            g.reserved_bytes -= bytes;
            g.running -= 1;
            g.busy_speed -= speed;
        }
        let decision = Instant::now();
        let placement = place(policy, &queue, &gpus);
        latencies.push(decision.elapsed().as_secs_f64() * 1000.0);
        let mut taken = vec![false; queue.len()];
        for a in &placement.assignments {
            let g = &mut gpus[a.gpu];
            let speed = queue[a.segment].max_speed.min(g.speed);
            g.reserved_bytes += a.reserved_bytes;
            g.running += 1;
            g.busy_speed += speed;
            running.push((a.gpu, a.reserved_bytes, speed));
            taken[a.segment] = true;
        }
        placed += placement.assignments.len();
        let mut keep = taken.iter().map(|t| !t);
        queue.retain(|_| keep.next().unwrap_or(true));
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let p99 = latencies[((latencies.len() - 1) as f64 * 0.99).round() as usize];
    (placed as f64 / seconds, p99, placed)
}

pub fn print_bench(bench: &PlacementBench) {
    println!(
        "placement on {} workers ({} GPUs), {} queued segments: {} placements",
        bench.workers, bench.gpus, bench.queued, bench.placements
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
