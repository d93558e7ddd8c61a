//! The worlds the simulator runs: GPU classes grouped into workers, the models the pool
//! renders (catalog entries, with hidden truths the farm never sees: how far each workload's
//! real peak and compute stray from the catalog's estimate, and how much of a fast GPU it can
//! use), and sequences arriving over time. Traces are pure functions of a seed.

use reelfarm_common::sequence::{Aspect, ColorMatch, Pass, Resolution, Sequence, Shot, Transition};
use reelfarm_models::catalog::simulated_models;
use reelfarm_models::{Catalog, ModelEntry};

use crate::planner::{SPLITMIX64_INCREMENT, splitmix64};

const GB: u64 = 1_000_000_000;
/// The frame rate of the simulated models (Wan renders 16 fps).
pub const SIM_FPS: u32 = 16;
/// A reference trace: 200 sequences arriving over an hour.
const REFERENCE_SEQUENCES: usize = 200;
const REFERENCE_ARRIVAL_SECONDS: f64 = 3600.0;
/// A scale trace offers work at this fraction of the pool's speed: neither an idle pool nor
/// one buried for good (continuity chains still leave GPUs idle while they wait).
const OFFERED_LOAD: f64 = 0.9;
/// GPUs per worker (one node).
const GPUS_PER_WORKER: usize = 8;

#[derive(Debug, Clone, PartialEq)]
pub struct GpuClass {
    pub name: &'static str,
    pub memory_bytes: u64,
    /// Throughput relative to an L4 (1.0), as workers report it.
    pub speed: f64,
}

/// One kind of segment work: a model at a size and pass, with its hidden truths.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub name: &'static str,
    pub model: &'static str,
    pub resolution: Resolution,
    pub pass: Pass,
    /// Hidden truth: measured peak / the catalog's estimate.
    pub true_memory_ratio: f64,
    /// Hidden truth: compute / the catalog's estimate.
    pub true_work_ratio: f64,
    /// Hidden truth: the GPU speed above which a segment runs no faster (a 480p draft of a
    /// small model cannot use a whole H100).
    pub max_speed: f64,
    /// Share of the trace's sequences.
    pub share: f64,
}

#[derive(Debug, Clone)]
pub struct TraceSequence {
    pub arrival_s: f64,
    pub workload: usize,
    pub sequence: Sequence,
}

#[derive(Debug, Clone)]
pub struct Trace {
    pub description: String,
    pub classes: Vec<GpuClass>,
    /// The class of every GPU, in worker order; workers hold `gpus_per_worker` of one class.
    pub gpus: Vec<usize>,
    pub gpus_per_worker: usize,
    pub catalog: Catalog,
    pub workloads: Vec<Workload>,
    /// In arrival order.
    pub sequences: Vec<TraceSequence>,
}

impl Trace {
    pub fn model(&self, workload: usize) -> &ModelEntry {
        self.catalog
            .get(self.workloads[workload].model)
            .expect("trace workloads name catalog models")
    }
}

/// splitmix64: a small deterministic generator, so a seed always gives the same trace.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        let output = splitmix64(self.0);
        self.0 = self.0.wrapping_add(SPLITMIX64_INCREMENT);
        output
    }

    pub(super) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// L4, A100 80 GB and H100 80 GB classes.
fn classes() -> Vec<GpuClass> {
    vec![
        GpuClass {
            name: "L4",
            memory_bytes: 24 * GB,
            speed: 1.0,
        },
        GpuClass {
            name: "A100",
            memory_bytes: 80 * GB,
            speed: 2.2,
        },
        GpuClass {
            name: "H100",
            memory_bytes: 80 * GB,
            speed: 3.5,
        },
    ]
}

/// Drafts and finals of the three simulated Wan models.
pub fn reference_workloads() -> Vec<Workload> {
    let workload = |name, model, resolution, pass, memory, max_speed, share| Workload {
        name,
        model,
        resolution,
        pass,
        true_memory_ratio: memory,
        true_work_ratio: 1.0,
        max_speed,
        share,
    };
    vec![
        workload(
            "1.3b-480p-draft",
            "sim-wan2.1-1.3b",
            Resolution::P480,
            Pass::Draft,
            1.05,
            1.0,
            0.4,
        ),
        workload(
            "5b-480p-draft",
            "sim-wan2.2-5b",
            Resolution::P480,
            Pass::Draft,
            1.12,
            1.6,
            0.2,
        ),
        workload(
            "5b-720p-final",
            "sim-wan2.2-5b",
            Resolution::P720,
            Pass::Final,
            1.12,
            2.5,
            0.2,
        ),
        workload(
            "14b-720p-final",
            "sim-wan2.1-14b",
            Resolution::P720,
            Pass::Final,
            0.98,
            4.0,
            0.1,
        ),
        workload(
            "1.3b-1080p-final",
            "sim-wan2.1-1.3b",
            Resolution::P1080,
            Pass::Final,
            1.05,
            2.5,
            0.1,
        ),
    ]
}

fn pick_workload(rng: &mut Rng, workloads: &[Workload]) -> usize {
    let pick = rng.unit();
    let mut cumulative = 0.0;
    workloads
        .iter()
        .position(|w| {
            cumulative += w.share;
            pick < cumulative
        })
        .unwrap_or(0)
}

/// A sequence of 60–180 s in shots of 5–20 s; after the first, a third of the shots continue
/// the one before.
fn sequence(
    rng: &mut Rng,
    index: usize,
    workload: &Workload,
    owner: String,
    priority: i32,
) -> Sequence {
    let mut seconds = (60.0 + rng.unit() * 120.0).round();
    let mut shots = Vec::new();
    while seconds >= 5.0 {
        let duration = (5.0 + (rng.unit() * 15.0).round()).min(seconds);
        seconds -= duration;
        let transition = if !shots.is_empty() && rng.unit() < 1.0 / 3.0 {
            Transition::Continue
        } else {
            Transition::Cut
        };
        shots.push(Shot {
            prompt: "shot".into(),
            duration_seconds: duration,
            transition,
            crossfade_seconds: None,
            seed: None,
            negative: None,
            reference: None,
            name: None,
            scene: None,
            variants: 1,
            take: 0,
            model: None,
        });
    }
    Sequence {
        title: None,
        model: workload.model.to_string(),
        resolution: workload.resolution,
        aspect: Aspect::Wide16x9,
        fps: SIM_FPS,
        seed: index as u64,
        pass: workload.pass,
        style: None,
        negative: None,
        steps: None,
        shots,
        color_match: ColorMatch::DEFAULT,
        continuity_blend_seconds: reelfarm_common::spec::DEFAULT_CONTINUITY_BLEND_SECONDS,
        grade_references: Default::default(),
        owner: Some(owner),
        priority,
        seam_qa: None,
        seam_qa_tries: reelfarm_common::sequence::SEAM_QA_TRIES,
    }
}

/// The reference trace: 64 GPUs (32 L4 at speed 1.0, 24 A100 at 2.2, 8 H100 at 3.5, all
/// 80 GB but the L4s' 24 GB), 200 sequences of 60–180 s arriving over an hour from 12 owners.
pub fn reference_trace(seed: u64) -> Trace {
    let mut rng = Rng::new(seed);
    let workloads = reference_workloads();
    let gpus: Vec<usize> = std::iter::repeat_n(0, 32)
        .chain(std::iter::repeat_n(1, 24))
        .chain(std::iter::repeat_n(2, 8))
        .collect();
    let mut arrivals: Vec<f64> = (0..REFERENCE_SEQUENCES)
        .map(|_| (rng.unit() * REFERENCE_ARRIVAL_SECONDS).floor())
        .collect();
    arrivals.sort_by(f64::total_cmp);
    let sequences = arrivals
        .into_iter()
        .enumerate()
        .map(|(index, arrival_s)| {
            let workload = pick_workload(&mut rng, &workloads);
            let owner = format!("owner-{:02}", index % 12);
            TraceSequence {
                arrival_s,
                workload,
                sequence: sequence(&mut rng, index, &workloads[workload], owner, 0),
            }
        })
        .collect();
    Trace {
        description: format!(
            "reference pool: 64 GPUs (32 x 24 GB @1.0, 24 x 80 GB @2.2, 8 x 80 GB @3.5), \
             {REFERENCE_SEQUENCES} sequences over an hour"
        ),
        classes: classes(),
        gpus,
        gpus_per_worker: GPUS_PER_WORKER,
        catalog: Catalog::from_entries(simulated_models()),
        workloads,
        sequences,
    }
}

/// A farm at scale: `gpus` GPUs (half L4, three eighths A100, an eighth H100) and sequences
/// of many owners (one per 40 sequences, at least 12; a twentieth rushed at priority 1, a
/// twentieth at -1) until they plan to at least `segments` segments, arriving uniformly over
/// the time the pool needs for their work at 90 % of its speed (at least an hour).
pub fn scale_trace(gpus: usize, segments: usize, seed: u64) -> Trace {
    let mut rng = Rng::new(seed);
    let workloads = reference_workloads();
    let catalog = Catalog::from_entries(simulated_models());
    let (a100, h100) = (gpus * 3 / 8, gpus / 8);
    let l4 = gpus - a100 - h100;
    let gpu_classes: Vec<usize> = std::iter::repeat_n(0, l4)
        .chain(std::iter::repeat_n(1, a100))
        .chain(std::iter::repeat_n(2, h100))
        .collect();
    let mut sequences = Vec::new();
    let mut planned = 0usize;
    let mut work = 0.0;
    while planned < segments {
        let index = sequences.len();
        let workload = pick_workload(&mut rng, &workloads);
        let roll = rng.unit();
        let priority = if roll < 0.05 {
            1
        } else if roll < 0.10 {
            -1
        } else {
            0
        };
        let sequence = sequence(
            &mut rng,
            index,
            &workloads[workload],
            String::new(),
            priority,
        );
        let model = catalog
            .get(workloads[workload].model)
            .expect("workloads name catalog models");
        let plan = crate::planner::plan(&sequence, model);
        planned += plan.segments.len();
        work += plan.segments.iter().map(|s| s.work_seconds).sum::<f64>()
            * workloads[workload].true_work_ratio;
        sequences.push((workload, sequence));
    }
    let owners = (sequences.len() / 40).max(12);
    let classes = classes();
    let speed: f64 = gpu_classes.iter().map(|&c| classes[c].speed).sum();
    let span = (work / (OFFERED_LOAD * speed.max(1e-9))).max(3600.0);
    let mut arrivals: Vec<f64> = (0..sequences.len())
        .map(|_| (rng.unit() * span).floor())
        .collect();
    arrivals.sort_by(f64::total_cmp);
    let sequences = sequences
        .into_iter()
        .zip(arrivals)
        .map(|((workload, mut sequence), arrival_s)| {
            let owner = (rng.unit() * owners as f64) as usize;
            sequence.owner = Some(format!("owner-{owner:04}"));
            TraceSequence {
                arrival_s,
                workload,
                sequence,
            }
        })
        .collect::<Vec<_>>();
    Trace {
        description: format!(
            "a farm at scale: {gpus} GPUs ({l4} x 24 GB @1.0, {a100} x 80 GB @2.2, {h100} x 80 GB @3.5), \
             {} sequences of {owners} owners arriving over {:.1} h (90 % of the pool's speed)",
            sequences.len(),
            span / 3600.0
        ),
        classes,
        gpus: gpu_classes,
        gpus_per_worker: GPUS_PER_WORKER,
        catalog,
        workloads,
        sequences,
    }
}
