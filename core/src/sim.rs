//! A discrete-event model of a heterogeneous GPU pool that drives the real `placement` code
//! and the real `estimator`, so placement policies are compared on the same trace.
//!
//! The model (what packing has to win on, not by fiat):
//! - **Compute sharing.** A GPU of speed `s` serves its running segments by water-filling:
//!   each gets an equal share of `s`, but never more than its own `max_speed` (a 480p draft
//!   of a small model cannot use a whole H100); what a capped segment leaves goes to the
//!   others. A lone final that saturates the card gains nothing from company.
//! - **Model loads.** A GPU keeps the weights of the last two models it ran warm; a segment
//!   of any other model first spends its model's load time (no compute) on that GPU.
//! - **Memory.** Each segment's true peak is its formula estimate times a hidden per-model
//!   ratio. If the true peaks of a GPU's segments exceed its memory, the segment that
//!   arrived last runs out of memory at 90 % of its work (the decode); the estimator learns
//!   (`observe_oom`) and the segment is retried: larger reservation, then a larger GPU
//!   class, then tiled decode. Finished segments report their true peak (`observe`).
//! - **Chains.** A segment that continues another becomes ready when that one finishes.

use std::collections::VecDeque;

use serde::Serialize;

use reelfarm_models::memory::{
    MemoryModel, SegmentShape, WAN_2_1_1_3B_MEMORY as WAN_1_3B, WAN_2_1_14B_MEMORY as WAN_14B,
    WAN_2_2_5B_MEMORY as WAN_2_2_5B,
};

use crate::estimator::{CorrectionKey, Corrections};
use crate::placement::{GpuState, Policy, ReadySegment, place};
use crate::planner::{SPLITMIX64_INCREMENT, splitmix64};

const GB: u64 = 1_000_000_000;
/// The work fraction at which an out-of-memory segment fails (its decode).
const OOM_AT_FRACTION: f64 = 0.9;
/// Retries after OOMs before a segment is given up.
const OOM_RETRY_BUDGET: u32 = 3;
const WARM_MODELS: usize = 2;

#[derive(Debug, Clone)]
pub struct GpuSpec {
    pub class: &'static str,
    pub memory_bytes: u64,
    pub speed: f64,
}

/// One kind of segment: a model at a size, how long it computes and how fast it can go.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: &'static str,
    pub model: u32,
    pub profile: &'static MemoryModel,
    pub shape: SegmentShape,
    pub work_seconds: f64,
    pub max_speed: f64,
    pub load_seconds: f64,
    /// Hidden truth: measured peak / formula estimate.
    pub true_ratio: f64,
}

#[derive(Debug, Clone)]
pub struct SimSegment {
    pub sequence: u32,
    pub workload: usize,
    /// The segment that continues this one (becomes ready when this finishes).
    pub next_in_chain: Option<usize>,
    pub starts_chain: bool,
}

#[derive(Debug, Clone)]
pub struct SimSequence {
    pub arrival_s: f64,
    pub owner: u32,
    pub priority: i32,
}

#[derive(Debug, Clone)]
pub struct Trace {
    pub gpus: Vec<GpuSpec>,
    pub workloads: Vec<Workload>,
    pub sequences: Vec<SimSequence>,
    pub segments: Vec<SimSegment>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SimResult {
    pub policy: &'static str,
    pub makespan_s: f64,
    pub lower_bound_s: f64,
    pub busy: f64,
    pub ooms: u32,
    pub p50_s: f64,
    pub p95_s: f64,
    pub segments: usize,
    pub given_up: usize,
    pub placement_calls: u64,
}

/// splitmix64: a small deterministic generator, so a seed always gives the same trace.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let output = splitmix64(self.0);
        self.0 = self.0.wrapping_add(SPLITMIX64_INCREMENT);
        output
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn shape(width: u32, height: u32) -> SegmentShape {
    SegmentShape {
        width,
        height,
        frames: 81,
        tiled_decode: false,
    }
}

/// The workloads of the reference trace: 5 s windows (81 frames at 16 fps).
pub fn reference_workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "1.3b-480p-draft",
            model: 0,
            profile: &WAN_1_3B,
            shape: shape(832, 480),
            work_seconds: 120.0,
            max_speed: 1.0,
            load_seconds: 20.0,
            true_ratio: 1.05,
        },
        Workload {
            name: "5b-480p-draft",
            model: 1,
            profile: &WAN_2_2_5B,
            shape: shape(832, 480),
            work_seconds: 200.0,
            max_speed: 1.6,
            load_seconds: 40.0,
            true_ratio: 1.12,
        },
        Workload {
            name: "5b-720p-final",
            model: 1,
            profile: &WAN_2_2_5B,
            shape: shape(1280, 720),
            work_seconds: 420.0,
            max_speed: 2.5,
            load_seconds: 40.0,
            true_ratio: 1.12,
        },
        Workload {
            name: "14b-720p-final",
            model: 2,
            profile: &WAN_14B,
            shape: shape(1280, 720),
            work_seconds: 1500.0,
            max_speed: 4.0,
            load_seconds: 90.0,
            true_ratio: 0.98,
        },
        Workload {
            name: "1.3b-1080p-final",
            model: 0,
            profile: &WAN_1_3B,
            shape: shape(1920, 1080),
            work_seconds: 600.0,
            max_speed: 2.5,
            load_seconds: 20.0,
            true_ratio: 1.05,
        },
    ]
}

/// 64 GPUs (32 × 24 GB at speed 1.0, 24 × 80 GB at 2.2, 8 × 80 GB at 3.5); 200 sequences of
/// 60–180 s arriving over an hour; shots of 5–20 s, each a chain of 5 s windows, a third of
/// them continuing the shot before; a mix of drafts and finals over three model sizes.
pub fn reference_trace(seed: u64) -> Trace {
    let mut gpus = Vec::new();
    gpus.extend((0..32).map(|_| GpuSpec {
        class: "24GB@1.0",
        memory_bytes: 24 * GB,
        speed: 1.0,
    }));
    gpus.extend((0..24).map(|_| GpuSpec {
        class: "80GB@2.2",
        memory_bytes: 80 * GB,
        speed: 2.2,
    }));
    gpus.extend((0..8).map(|_| GpuSpec {
        class: "80GB@3.5",
        memory_bytes: 80 * GB,
        speed: 3.5,
    }));
    let mut rng = Rng(seed);
    let mix = [(0usize, 0.4), (1, 0.2), (2, 0.2), (3, 0.1), (4, 0.1)];
    let (mut sequences, mut segments) = (Vec::new(), Vec::new());
    let mut arrivals: Vec<f64> = (0..200).map(|_| (rng.unit() * 3600.0).floor()).collect();
    arrivals.sort_by(f64::total_cmp);
    for (index, arrival_s) in (0u32..).zip(arrivals) {
        let pick = rng.unit();
        let mut cumulative = 0.0;
        let workload = mix
            .iter()
            .find(|(_, share)| {
                cumulative += share;
                pick < cumulative
            })
            .map_or(0, |(w, _)| *w);
        sequences.push(SimSequence {
            arrival_s,
            owner: index % 12,
            priority: 0,
        });
        let mut seconds = (60.0 + rng.unit() * 120.0).round();
        let mut previous: Option<usize> = None;
        while seconds >= 5.0 {
            let shot = (5.0 + (rng.unit() * 15.0).round()).min(seconds);
            seconds -= shot;
            let continues = previous.is_some() && rng.unit() < 1.0 / 3.0;
            let windows = (shot / 5.0).ceil() as usize;
            for window in 0..windows {
                let id = segments.len();
                let chained = window > 0 || continues;
                if chained && let Some(previous) = previous {
                    let before: &mut SimSegment = &mut segments[previous];
                    before.next_in_chain = Some(id);
                }
                segments.push(SimSegment {
                    sequence: index,
                    workload,
                    next_in_chain: None,
                    starts_chain: !chained,
                });
                previous = Some(id);
            }
        }
    }
    Trace {
        gpus,
        workloads: reference_workloads(),
        sequences,
        segments,
    }
}

struct Job {
    segment: usize,
    reserved: u64,
    true_peak: u64,
    load_left: f64,
    work_left: f64,
    /// Work left at which it fails for lack of memory.
    oom_at: Option<f64>,
    rate: f64,
}

struct Gpu {
    spec: GpuSpec,
    jobs: Vec<Job>,
    warm: VecDeque<u32>,
    busy_seconds: f64,
}

#[derive(Clone, Default)]
struct Attempts {
    ooms: u32,
    min_gpu_bytes: u64,
    tiled: bool,
}

fn water_fill(speed: f64, caps: &[f64]) -> Vec<f64> {
    let mut rates = vec![0.0; caps.len()];
    let mut open: Vec<usize> = (0..caps.len()).collect();
    let mut left = speed;
    while !open.is_empty() && left > 1e-12 {
        let share = left / open.len() as f64;
        let (capped, free): (Vec<usize>, Vec<usize>) =
            open.iter().partition(|&&i| caps[i] - rates[i] <= share);
        if capped.is_empty() {
            for &i in &free {
                rates[i] += share;
            }
            break;
        }
        for &i in &capped {
            left -= caps[i] - rates[i];
            rates[i] = caps[i];
        }
        open = free;
    }
    rates
}

impl Trace {
    fn chain_seconds_behind(&self) -> Vec<f64> {
        let mut behind = vec![0.0; self.segments.len()];
        for index in (0..self.segments.len()).rev() {
            if let Some(next) = self.segments[index].next_in_chain {
                behind[index] =
                    behind[next] + self.workloads[self.segments[next].workload].work_seconds;
            }
        }
        behind
    }

    /// max(total work / pool speed, the latest arrival plus its longest chain at the best
    /// rate it can run at). Segments that fit no GPU are left out of both.
    pub fn lower_bound_s(&self) -> f64 {
        let capacity: f64 = self.gpus.iter().map(|g| g.speed).sum();
        let fastest = self.gpus.iter().map(|g| g.speed).fold(0.0, f64::max);
        let total: f64 = self
            .segments
            .iter()
            .map(|s| self.workloads[s.workload].work_seconds)
            .sum();
        let behind = self.chain_seconds_behind();
        let chains = self
            .segments
            .iter()
            .enumerate()
            .filter(|(_, s)| s.starts_chain)
            .map(|(i, s)| {
                let w = &self.workloads[s.workload];
                let rate = w.max_speed.min(fastest);
                self.sequences[s.sequence as usize].arrival_s + (w.work_seconds + behind[i]) / rate
            })
            .fold(0.0, f64::max);
        (total / capacity).max(chains)
    }
}

/// Runs the trace under `policy`.
pub fn simulate(trace: &Trace, policy: Policy) -> SimResult {
    let behind = trace.chain_seconds_behind();
    let mut gpus: Vec<Gpu> = trace
        .gpus
        .iter()
        .map(|spec| Gpu {
            spec: spec.clone(),
            jobs: Vec::new(),
            warm: VecDeque::new(),
            busy_seconds: 0.0,
        })
        .collect();
    let mut corrections = Corrections::default();
    let mut attempts = vec![Attempts::default(); trace.segments.len()];
    let mut ready: Vec<usize> = Vec::new();
    let mut left_in_sequence = vec![0usize; trace.sequences.len()];
    for s in &trace.segments {
        left_in_sequence[s.sequence as usize] += 1;
    }
    let mut finished_at = vec![f64::NAN; trace.sequences.len()];
    let (mut now, mut next_arrival, mut ooms, mut given_up, mut calls) =
        (0.0, 0usize, 0u32, 0usize, 0u64);
    let mut enqueued = vec![0u64; trace.segments.len()];
    let mut enqueue_counter = 0u64;
    let mut heads: Vec<Vec<usize>> = vec![Vec::new(); trace.sequences.len()];
    for (i, s) in trace.segments.iter().enumerate() {
        if s.starts_chain {
            heads[s.sequence as usize].push(i);
        }
    }
    loop {
        while next_arrival < trace.sequences.len() && trace.sequences[next_arrival].arrival_s <= now
        {
            for &head in &heads[next_arrival] {
                enqueued[head] = enqueue_counter;
                enqueue_counter += 1;
                ready.push(head);
            }
            next_arrival += 1;
        }
        // Place what is ready.
        if !ready.is_empty() {
            let requests: Vec<ReadySegment> = ready
                .iter()
                .map(|&i| {
                    let s = &trace.segments[i];
                    let w = &trace.workloads[s.workload];
                    let a = &attempts[i];
                    let shape = SegmentShape {
                        tiled_decode: a.tiled,
                        ..w.shape
                    };
                    let key = CorrectionKey::new(w.model, &shape);
                    let formula = w.profile.estimate_bytes(4, &shape);
                    let (warm, cold) = corrections.reservation(&key, formula);
                    ReadySegment {
                        sequence: s.sequence,
                        owner: trace.sequences[s.sequence as usize].owner,
                        priority: trace.sequences[s.sequence as usize].priority,
                        reserve_bytes: warm,
                        cold_extra_bytes: cold,
                        min_gpu_bytes: a.min_gpu_bytes,
                        model: w.model,
                        work_seconds: w.work_seconds,
                        max_speed: w.max_speed,
                        chain_seconds_behind: behind[i],
                        load_seconds: w.load_seconds,
                        enqueued: enqueued[i],
                    }
                })
                .collect();
            let states: Vec<GpuState> = gpus
                .iter()
                .map(|g| GpuState {
                    total_bytes: g.spec.memory_bytes,
                    reserved_bytes: g.jobs.iter().map(|j| j.reserved).sum(),
                    speed: g.spec.speed,
                    busy_speed: g
                        .jobs
                        .iter()
                        .map(|j| {
                            trace.workloads[trace.segments[j.segment].workload]
                                .max_speed
                                .min(g.spec.speed)
                        })
                        .sum(),
                    running: g.jobs.len() as u32,
                    resident_models: g.warm.iter().copied().collect(),
                    serves: None,
                })
                .collect();
            calls += 1;
            let placement = place(policy, &requests, &states);
            let mut started = vec![false; ready.len()];
            for a in &placement.assignments {
                let i = ready[a.segment];
                started[a.segment] = true;
                let w = &trace.workloads[trace.segments[i].workload];
                let shape = SegmentShape {
                    tiled_decode: attempts[i].tiled,
                    ..w.shape
                };
                let true_peak = (w.profile.estimate_bytes(4, &shape) as f64 * w.true_ratio) as u64;
                let gpu = &mut gpus[a.gpu];
                let load_left = if gpu.warm.contains(&w.model) {
                    0.0
                } else {
                    w.load_seconds
                };
                gpu.warm.retain(|&m| m != w.model);
                gpu.warm.push_front(w.model);
                gpu.warm.truncate(WARM_MODELS.max(gpu.jobs.len() + 1));
                let peaks: u64 = gpu.jobs.iter().map(|j| j.true_peak).sum::<u64>() + true_peak;
                let oom_at = (peaks > gpu.spec.memory_bytes)
                    .then_some(w.work_seconds * (1.0 - OOM_AT_FRACTION));
                gpu.jobs.push(Job {
                    segment: i,
                    reserved: a.reserved_bytes,
                    true_peak,
                    load_left,
                    work_left: w.work_seconds,
                    oom_at,
                    rate: 0.0,
                });
            }
            let mut keep = started.iter().map(|s| !s);
            ready.retain(|_| keep.next().unwrap_or(true));
        }
        // Rates, and the next event.
        let mut dt = f64::INFINITY;
        for gpu in &mut gpus {
            let computing: Vec<usize> = (0..gpu.jobs.len())
                .filter(|&j| gpu.jobs[j].load_left <= 0.0)
                .collect();
            let caps: Vec<f64> = computing
                .iter()
                .map(|&j| trace.workloads[trace.segments[gpu.jobs[j].segment].workload].max_speed)
                .collect();
            let rates = water_fill(gpu.spec.speed, &caps);
            for job in &mut gpu.jobs {
                job.rate = 0.0;
            }
            for (&j, rate) in computing.iter().zip(rates) {
                gpu.jobs[j].rate = rate;
            }
            for job in &gpu.jobs {
                let until = if job.load_left > 0.0 {
                    job.load_left
                } else {
                    (job.work_left - job.oom_at.unwrap_or(0.0)) / job.rate.max(1e-12)
                };
                dt = dt.min(until);
            }
        }
        if next_arrival < trace.sequences.len() {
            dt = dt.min(trace.sequences[next_arrival].arrival_s - now);
        }
        if !dt.is_finite() {
            // Nothing runs and nothing arrives: what is still ready fits nowhere.
            given_up += ready.len();
            break;
        }
        let dt = dt.max(0.0);
        now += dt;
        for gpu in &mut gpus {
            let used: f64 = gpu.jobs.iter().map(|j| j.rate).sum();
            gpu.busy_seconds += dt * (used / gpu.spec.speed).min(1.0);
            let mut index = 0;
            while index < gpu.jobs.len() {
                let job = &mut gpu.jobs[index];
                if job.load_left > 0.0 {
                    job.load_left -= dt;
                } else {
                    job.work_left -= job.rate * dt;
                }
                let done_loading = job.load_left <= 1e-9;
                let target = job.oom_at.unwrap_or(0.0);
                if !(done_loading && job.work_left - target <= 1e-6) {
                    index += 1;
                    continue;
                }
                let job = gpu.jobs.swap_remove(index);
                let segment = &trace.segments[job.segment];
                let w = &trace.workloads[segment.workload];
                let a = &mut attempts[job.segment];
                let shape = SegmentShape {
                    tiled_decode: a.tiled,
                    ..w.shape
                };
                let key = CorrectionKey::new(w.model, &shape);
                let formula = w.profile.estimate_bytes(4, &shape);
                if job.oom_at.is_some() {
                    ooms += 1;
                    corrections.observe_oom(key, formula, job.reserved);
                    a.ooms += 1;
                    match a.ooms {
                        1 => {}
                        2 => a.min_gpu_bytes = gpu.spec.memory_bytes + 1,
                        _ => a.tiled = true,
                    }
                    if a.ooms > OOM_RETRY_BUDGET {
                        given_up += 1;
                    } else {
                        ready.push(job.segment);
                    }
                    continue;
                }
                corrections.observe(key, formula, job.true_peak);
                let sequence = segment.sequence as usize;
                left_in_sequence[sequence] -= 1;
                if left_in_sequence[sequence] == 0 {
                    finished_at[sequence] = now;
                }
                if let Some(next) = segment.next_in_chain {
                    enqueued[next] = enqueue_counter;
                    enqueue_counter += 1;
                    ready.push(next);
                }
            }
        }
        if next_arrival >= trace.sequences.len()
            && ready.is_empty()
            && gpus.iter().all(|g| g.jobs.is_empty())
        {
            break;
        }
    }
    let mut latencies: Vec<f64> = trace
        .sequences
        .iter()
        .zip(&finished_at)
        .filter(|(_, f)| f.is_finite())
        .map(|(s, f)| f - s.arrival_s)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let makespan = now;
    SimResult {
        policy: policy.name(),
        makespan_s: makespan,
        lower_bound_s: trace.lower_bound_s(),
        busy: gpus.iter().map(|g| g.busy_seconds).sum::<f64>()
            / (gpus.len() as f64 * makespan.max(1e-9)),
        ooms,
        p50_s: percentile(0.5),
        p95_s: percentile(0.95),
        segments: trace.segments.len(),
        given_up,
        placement_calls: calls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn water_filling_caps_small_segments_and_shares_the_rest() {
        assert_eq!(water_fill(3.5, &[1.0]), vec![1.0]);
        let rates = water_fill(3.5, &[1.0, 4.0]);
        assert!(
            (rates[0] - 1.0).abs() < 1e-9 && (rates[1] - 2.5).abs() < 1e-9,
            "{rates:?}"
        );
        let rates = water_fill(2.0, &[4.0, 4.0]);
        assert!((rates[0] - 1.0).abs() < 1e-9, "{rates:?}");
    }

    #[test]
    fn the_trace_is_deterministic_and_chains_are_linked() {
        let (a, b) = (reference_trace(7), reference_trace(7));
        assert_eq!(a.segments.len(), b.segments.len());
        assert_eq!(a.gpus.len(), 64);
        assert_eq!(a.sequences.len(), 200);
        assert!(
            a.segments
                .iter()
                .filter(|s| s.next_in_chain.is_some())
                .count()
                > a.segments.len() / 3
        );
        assert_ne!(reference_trace(8).segments.len(), 0);
    }

    #[test]
    fn every_policy_finishes_the_trace_above_its_lower_bound() {
        let trace = reference_trace(1);
        for policy in Policy::ALL {
            let result = simulate(&trace, policy);
            assert_eq!(result.given_up, 0, "{result:?}");
            assert!(
                result.makespan_s >= result.lower_bound_s * 0.999,
                "{result:?}"
            );
            assert!(result.busy > 0.0 && result.busy <= 1.0, "{result:?}");
        }
    }
}
