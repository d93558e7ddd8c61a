//! A discrete-event simulator that drives the farm core itself: workers register, sequences
//! are planned by the planner and submitted to a `Farm`, and every transition (a submit, a
//! finished segment, an out-of-memory failure, a stitch) is followed by the farm's own
//! dispatch and the durable writes `records::Durable` would commit. So the placement, the
//! memory estimator and its corrections, the out-of-memory ladder, load-time estimates and
//! fair share are the live farm's, not a copy; the simulator adds only the physics the farm
//! lives with (`gpus.rs`) and the worlds it runs (`trace.rs`).
//!
//! What it measures: makespan against a lower bound (total work over the pool's speed, or
//! the latest arrival plus its longest chain), GPU busy fraction, OOMs, sequence latency, the
//! wall-clock speed of the real core's decisions (a clock is passed in: the core reads none)
//! and the state writes per segment.

mod gpus;
pub mod trace;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use reelfarm_common::{pb, spec};
use reelfarm_models::SegmentShape;
use serde::Serialize;

use crate::farm::{Action, FailureClass, Farm, FarmEvent, SequenceState};
use crate::placement::Policy;
use crate::planner::{self, Plan};
use crate::records::Durable;
use gpus::{Gpu, Job};
pub use trace::{Trace, reference_trace, scale_trace};

/// A stitch decodes, grades and encodes at about this many frames per second on a worker.
const STITCH_FRAMES_PER_SECOND: f64 = 50.0;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SimResult {
    pub policy: &'static str,
    pub gpus: usize,
    pub sequences: usize,
    pub segments: usize,
    pub makespan_s: f64,
    pub lower_bound_s: f64,
    pub busy: f64,
    pub ooms: u32,
    pub p50_s: f64,
    pub p95_s: f64,
    /// Segments of sequences that failed or could not be placed at all.
    pub given_up: usize,
    /// Farm dispatches (one after every transition) and the placements they made.
    pub decisions: u64,
    pub placements: u64,
    /// Wall-clock speed of the farm core's dispatches.
    pub decisions_per_s: f64,
    pub decision_p99_ms: f64,
    /// Records the state store would write (keys put) and transactions it would commit,
    /// counted by `records::Durable`, per planned segment.
    pub state_writes_per_segment: f64,
    pub state_commits_per_segment: f64,
    /// The process's peak resident memory, filled in by whoever runs the simulation.
    pub peak_rss_bytes: Option<u64>,
    /// Wall-clock seconds the whole simulation took.
    pub wall_s: f64,
}

/// One thing that happened to the farm, for comparing runs (the live farm in a test).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Logged {
    Submitted {
        sequence: usize,
    },
    Assigned {
        sequence: usize,
        task: String,
        attempt: u32,
        worker: String,
        device: u32,
        reserved_bytes: u64,
        low_memory: bool,
    },
    Completed {
        sequence: usize,
        task: String,
        attempt: u32,
        peak_bytes: u64,
    },
    OutOfMemory {
        sequence: usize,
        task: String,
        attempt: u32,
    },
}

/// What a worker registers for one simulated node.
#[derive(Debug, Clone)]
pub struct SimWorker {
    pub id: String,
    pub devices: Vec<pb::Device>,
}

/// The workers of a trace: nodes of up to `gpus_per_worker` GPUs of one class.
pub fn workers(trace: &Trace) -> Vec<SimWorker> {
    let mut workers = Vec::new();
    for (class_index, class) in trace.classes.iter().enumerate() {
        let count = trace.gpus.iter().filter(|&&c| c == class_index).count();
        let mut left = count;
        while left > 0 {
            let take = left.min(trace.gpus_per_worker.max(1));
            left -= take;
            let id = format!("sim-{:05}", workers.len());
            let devices = (0..take as u32)
                .map(|index| pb::Device {
                    index,
                    kind: "simulated".into(),
                    name: format!("simulated {}", class.name),
                    memory_total_bytes: class.memory_bytes,
                    memory_free_bytes: class.memory_bytes,
                    class: class.name.into(),
                    speed: class.speed,
                    ..Default::default()
                })
                .collect();
            workers.push(SimWorker { id, devices });
        }
    }
    workers
}

/// The sequence id the simulator gives the `index`th sequence.
pub fn sequence_id(index: usize) -> String {
    format!("sim-{index:06}")
}

/// `(sequence index, task name)` of an assignment id `sim-000012/s003-01/2`.
fn parse_assignment(id: &str) -> (usize, String) {
    let mut parts = id.split('/');
    let sequence = parts
        .next()
        .and_then(|s| s.strip_prefix("sim-"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX);
    (sequence, parts.next().unwrap_or_default().to_string())
}

/// The farm, the durable records, and what the run counted.
struct Run<'a> {
    trace: &'a Trace,
    farm: Farm,
    durable: Durable,
    revision: i64,
    gpus: Vec<Gpu>,
    /// GPU index of each (worker, device index).
    gpu_of: BTreeMap<(String, u32), usize>,
    heap: BinaryHeap<Reverse<(u64, u64, usize)>>,
    clock: &'a mut dyn FnMut() -> f64,
    decision_seconds: Vec<f64>,
    placements: u64,
    writes: u64,
    commits: u64,
    ooms: u32,
    latencies: Vec<f64>,
    failed: Vec<usize>,
    log: Option<Vec<Logged>>,
}

impl Run<'_> {
    /// One transition as the leader runs it: the change, the farm's dispatch (timed), and the
    /// writes that would make it durable; then the commands go to the simulated workers.
    fn step(&mut self, now: f64, transition: impl FnOnce(&mut Farm) -> Vec<Action>) {
        let mut actions = transition(&mut self.farm);
        let started = (self.clock)();
        actions.extend(self.farm.dispatch());
        self.decision_seconds.push((self.clock)() - started);
        let settled = self.durable.settle(&mut self.farm);
        if !settled.writes.is_empty() {
            self.writes += settled.writes.len() as u64;
            self.commits += 1;
            let revisions: Vec<i64> = (0..settled.writes.len())
                .map(|_| {
                    self.revision += 1;
                    self.revision
                })
                .collect();
            self.durable.committed(settled.writes, &revisions);
        }
        for event in settled.events {
            if let FarmEvent::SequenceEnded {
                sequence,
                state,
                seconds,
            } = event
            {
                match state {
                    SequenceState::Succeeded => self.latencies.push(seconds),
                    _ => self.failed.push(parse_assignment(&sequence).0),
                }
            }
        }
        for action in actions {
            self.carry_out(action, now);
        }
    }

    fn carry_out(&mut self, action: Action, now: f64) {
        match action {
            // The simulator stores no objects.
            Action::DeleteObjects { .. } | Action::WriteObject { .. } => {}
            Action::Assign { worker, assignment } => {
                let Some(reference) = assignment.assignment.clone() else {
                    return;
                };
                let Some(&gpu) = self.gpu_of.get(&(worker.clone(), assignment.device_index)) else {
                    return;
                };
                self.placements += 1;
                let (sequence, task) = parse_assignment(&reference.assignment_id);
                if let Some(log) = &mut self.log {
                    let (reserved_bytes, low_memory) = match &assignment.task {
                        Some(pb::assignment::Task::Segment(segment)) => {
                            (segment.memory_estimate_bytes, segment.low_memory)
                        }
                        _ => (0, false),
                    };
                    log.push(Logged::Assigned {
                        sequence,
                        task,
                        attempt: reference.attempt,
                        worker: worker.clone(),
                        device: assignment.device_index,
                        reserved_bytes,
                        low_memory,
                    });
                }
                let trace_sequence = &self.trace.sequences[sequence];
                self.gpus[gpu].advance(now);
                match assignment.task {
                    Some(pb::assignment::Task::Segment(task_message)) => {
                        let workload = &self.trace.workloads[trace_sequence.workload];
                        let model = self.trace.model(trace_sequence.workload);
                        // As the planner prices it: a model with its own rate renders
                        // its native frames.
                        let shape = SegmentShape {
                            width: task_message.width,
                            height: task_message.height,
                            frames: model
                                .model_frames(task_message.render_frames, task_message.fps),
                            tiled_decode: task_message.low_memory,
                        };
                        let work = model.work_seconds(&shape, task_message.steps)
                            * workload.true_work_ratio;
                        let peak = (model.memory_estimate_bytes(&shape) as f64
                            * workload.true_memory_ratio) as u64;
                        self.gpus[gpu].start(
                            Job::segment(reference, work, workload.max_speed, peak),
                            &model.id,
                            model.load_seconds(),
                        );
                    }
                    Some(pb::assignment::Task::Stitch(stitch)) => {
                        let frames: u64 = stitch.parts.iter().map(|p| p.timeline_frames).sum();
                        let seconds = frames as f64 / STITCH_FRAMES_PER_SECOND;
                        self.gpus[gpu].start(Job::stitch(reference, seconds), "", 0.0);
                    }
                    None => return,
                }
                self.schedule(gpu);
            }
            Action::Cancel {
                worker, assignment, ..
            } => {
                // Only a failed sequence cancels: its running work stops and reports back.
                let on_worker: Vec<usize> = self
                    .gpu_of
                    .range((worker.clone(), 0)..=(worker, u32::MAX))
                    .map(|(_, &gpu)| gpu)
                    .collect();
                for gpu in on_worker {
                    self.gpus[gpu].advance(now);
                    if self.gpus[gpu].remove(&assignment.assignment_id).is_some() {
                        self.schedule(gpu);
                        self.step(now, |farm| {
                            farm.fail(&assignment, FailureClass::Cancelled, "cancelled", now)
                                .unwrap_or_default()
                        });
                        return;
                    }
                }
            }
        }
    }

    fn schedule(&mut self, gpu: usize) {
        if let Some(at) = self.gpus[gpu].next_event() {
            self.heap.push(Reverse((
                at.max(0.0).to_bits(),
                self.gpus[gpu].version,
                gpu,
            )));
        }
    }

    /// A GPU's job ended: the farm hears of it as a worker would report it.
    fn ended(&mut self, job: Job, now: f64) {
        let (sequence, task) = parse_assignment(&job.reference.assignment_id);
        let reference = job.reference.clone();
        if job.oom_at.is_some() {
            self.ooms += 1;
            if let Some(log) = &mut self.log {
                log.push(Logged::OutOfMemory {
                    sequence,
                    task,
                    attempt: reference.attempt,
                });
            }
            self.step(now, |farm| {
                farm.fail(
                    &reference,
                    FailureClass::OutOfMemory,
                    "measured peak exceeds the GPU",
                    now,
                )
                .unwrap_or_default()
            });
        } else {
            if let Some(log) = &mut self.log {
                log.push(Logged::Completed {
                    sequence,
                    task,
                    attempt: reference.attempt,
                    peak_bytes: job.true_peak,
                });
            }
            let peak = job.true_peak;
            self.step(now, |farm| {
                farm.complete(&reference, Vec::new(), Vec::new(), peak, now)
                    .unwrap_or_default()
            });
        }
    }
}

/// The plans of a trace's sequences, as the planner makes them.
pub fn plans(trace: &Trace) -> Vec<Plan> {
    trace
        .sequences
        .iter()
        .map(|s| planner::plan(&s.sequence, trace.model(s.workload)))
        .collect()
}

/// The largest of three bounds no policy can beat, in true compute (the hidden ratios
/// applied): total work over the pool's speed; for every GPU memory size, the work that fits
/// only larger GPUs (its least true peak, in low-memory mode, exceeds that size) over their
/// speed; and the latest arrival plus its longest chain at the best rate it can run at.
pub fn lower_bound_s(trace: &Trace, plans: &[Plan]) -> f64 {
    let gpus: Vec<(u64, f64)> = trace
        .gpus
        .iter()
        .map(|&c| (trace.classes[c].memory_bytes, trace.classes[c].speed))
        .collect();
    let capacity: f64 = gpus.iter().map(|g| g.1).sum();
    let fastest = gpus.iter().map(|g| g.1).fold(0.0, f64::max);
    let mut sizes: Vec<u64> = gpus.iter().map(|g| g.0).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut total = 0.0;
    let mut above = vec![0.0; sizes.len()];
    let mut chains = 0.0f64;
    for (sequence, plan) in trace.sequences.iter().zip(plans) {
        let workload = &trace.workloads[sequence.workload];
        let rate = workload.max_speed.min(fastest).max(1e-9);
        for segment in &plan.segments {
            let work = segment.work_seconds * workload.true_work_ratio;
            total += work;
            let least_peak = segment.low_memory_estimate_bytes as f64 * workload.true_memory_ratio;
            for (size, work_above) in sizes.iter().zip(&mut above) {
                if least_peak > *size as f64 {
                    *work_above += work;
                }
            }
            if segment.continues_from.is_none() {
                let chain = work + segment.chain_work_seconds * workload.true_work_ratio;
                chains = chains.max(sequence.arrival_s + chain / rate);
            }
        }
    }
    let by_size = sizes
        .iter()
        .zip(&above)
        .map(|(&size, &work)| {
            let speed: f64 = gpus.iter().filter(|g| g.0 > size).map(|g| g.1).sum();
            if work > 0.0 {
                work / speed.max(1e-9)
            } else {
                0.0
            }
        })
        .fold(0.0, f64::max);
    (total / capacity.max(1e-9)).max(by_size).max(chains)
}

/// Runs `trace` under `policy`. `clock` gives monotonic seconds, to time the farm's
/// decisions; `log` records every submit, assignment and report for comparison.
pub fn simulate(
    trace: &Trace,
    policy: Policy,
    clock: &mut dyn FnMut() -> f64,
    log: bool,
) -> (SimResult, Vec<Logged>) {
    let run_started = clock();
    let plans = plans(trace);
    let lower_bound = lower_bound_s(trace, &plans);
    let segments: usize = plans.iter().map(|plan| plan.segments.len()).sum();
    let workers = workers(trace);
    let mut gpus = Vec::new();
    let mut gpu_of = BTreeMap::new();
    for worker in &workers {
        for device in &worker.devices {
            gpu_of.insert((worker.id.clone(), device.index), gpus.len());
            gpus.push(Gpu::new(device.memory_total_bytes, device.speed));
        }
    }
    let models: Vec<String> = trace.catalog.ids();
    let mut run = Run {
        trace,
        farm: Farm::default().with_policy(policy),
        durable: Durable::default(),
        revision: 0,
        gpus,
        gpu_of,
        heap: BinaryHeap::new(),
        clock,
        decision_seconds: Vec::new(),
        placements: 0,
        writes: 0,
        commits: 0,
        ooms: 0,
        latencies: Vec::new(),
        failed: Vec::new(),
        log: log.then(Vec::new),
    };
    for worker in &workers {
        let devices = worker.devices.clone();
        let models = models.clone();
        run.step(0.0, |farm| {
            farm.register_worker(
                worker.id.clone(),
                worker.id.clone(),
                devices,
                models,
                &[],
                0.0,
            )
        });
    }
    let mut plans = plans.into_iter();
    let mut next_arrival = 0;
    let mut now = 0.0f64;
    loop {
        // The earliest GPU event that is still current.
        let gpu_event = loop {
            match run.heap.peek() {
                Some(&Reverse((at, version, gpu))) if run.gpus[gpu].version != version => {
                    run.heap.pop();
                    let _ = (at, gpu);
                }
                Some(&Reverse((at, _, gpu))) => break Some((f64::from_bits(at), gpu)),
                None => break None,
            }
        };
        let arrival = trace.sequences.get(next_arrival).map(|s| s.arrival_s);
        match (arrival, gpu_event) {
            (Some(at), event) if event.is_none_or(|(t, _)| at <= t) => {
                now = now.max(at);
                let sequence = trace.sequences[next_arrival].sequence.clone();
                let plan = plans.next().expect("one plan per sequence");
                let id = sequence_id(next_arrival);
                if let Some(log) = &mut run.log {
                    log.push(Logged::Submitted {
                        sequence: next_arrival,
                    });
                }
                next_arrival += 1;
                run.step(now, |farm| {
                    farm.submit(id, None, sequence, plan, now);
                    Vec::new()
                });
            }
            (_, Some((at, gpu))) => {
                run.heap.pop();
                now = now.max(at);
                run.gpus[gpu].advance(now);
                let ended = run.gpus[gpu].take_ended();
                run.schedule(gpu);
                for job in ended {
                    run.ended(job, now);
                }
            }
            (None, None) => break,
            (Some(_), None) => unreachable!("the first arm takes an arrival with no event"),
        }
    }
    // Whatever never finished: queued work no GPU could take, and failed sequences' segments.
    let given_up: usize = run
        .farm
        .sequences()
        .filter(|record| record.state != SequenceState::Succeeded)
        .map(|record| record.plan.segments.len())
        .sum();
    let mut latencies = std::mem::take(&mut run.latencies);
    latencies.sort_by(f64::total_cmp);
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let mut decisions = std::mem::take(&mut run.decision_seconds);
    let decision_total: f64 = decisions.iter().sum();
    decisions.sort_by(f64::total_cmp);
    let p99 = decisions
        .get(((decisions.len().max(1) - 1) as f64 * 0.99).round() as usize)
        .copied()
        .unwrap_or(0.0);
    let makespan = now;
    let busy = run.gpus.iter().map(|g| g.busy_seconds).sum::<f64>()
        / (run.gpus.len().max(1) as f64 * makespan.max(1e-9));
    let result = SimResult {
        policy: policy.name(),
        gpus: run.gpus.len(),
        sequences: trace.sequences.len(),
        segments,
        makespan_s: makespan,
        lower_bound_s: lower_bound,
        busy,
        ooms: run.ooms,
        p50_s: percentile(0.5),
        p95_s: percentile(0.95),
        given_up,
        decisions: decisions.len() as u64,
        placements: run.placements,
        decisions_per_s: decisions.len() as f64 / decision_total.max(1e-9),
        decision_p99_ms: p99 * 1000.0,
        state_writes_per_segment: run.writes as f64 / segments.max(1) as f64,
        state_commits_per_segment: run.commits as f64 / segments.max(1) as f64,
        peak_rss_bytes: None,
        wall_s: 0.0,
    };
    let log = run.log.take().unwrap_or_default();
    let wall_s = (run.clock)() - run_started;
    (SimResult { wall_s, ..result }, log)
}

/// A trace's sequences as the API carries them, for a live farm to be given the same work.
pub fn specs(trace: &Trace) -> Vec<pb::SequenceSpec> {
    trace
        .sequences
        .iter()
        .map(|s| spec::sequence_to_pb(&s.sequence))
        .collect()
}

#[cfg(test)]
mod tests;
