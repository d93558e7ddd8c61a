//! Which ready segment goes on which GPU (pure: no async, no I/O, deterministic). The farm
//! and the simulator call the same `place`, so what the simulator proves is what runs.
//!
//! Policies:
//! - `Fifo`: arrival order, one segment per idle GPU, first fit — what a plain Kubernetes
//!   `nvidia.com/gpu: 1` pod per segment gives.
//! - `Pack`: arrival order, several segments per GPU while their reservations fit.
//! - `Full`: packing, plus
//!   - work that only fits the large GPUs is placed first, and small work may not take the
//!     memory such work is waiting for;
//!   - fair share: sequences take turns (fewest running segments of their owner, then of
//!     themselves, first), higher priority first;
//!   - critical path: within a sequence, the segment with the longest continuity chain
//!     behind it first;
//!   - each segment goes to the GPU where it is expected to finish first, counting the
//!     model load a GPU without the model resident must pay.
//!
//! Reservations never exceed a GPU's memory; a segment whose estimate is still unconfirmed
//! (cold) reserves extra headroom, or a whole idle GPU when that is less.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};

const GIB: f64 = (1u64 << 30) as f64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Policy {
    Fifo,
    Pack,
    Full,
}

impl Policy {
    pub const ALL: [Policy; 3] = [Policy::Fifo, Policy::Pack, Policy::Full];

    pub fn name(self) -> &'static str {
        match self {
            Policy::Fifo => "fifo",
            Policy::Pack => "pack",
            Policy::Full => "full",
        }
    }
}

/// A segment whose inputs are ready.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadySegment {
    pub sequence: u32,
    pub owner: u32,
    pub priority: i32,
    /// Bytes to reserve once the estimate is trusted.
    pub reserve_bytes: u64,
    /// Extra headroom while the estimate is unconfirmed, taken only where the GPU has it.
    pub cold_extra_bytes: u64,
    /// After an OOM on a GPU class: only GPUs with at least this much memory.
    pub min_gpu_bytes: u64,
    pub model: u32,
    /// Compute seconds on a speed-1.0 GPU, and the speed above which it runs no faster.
    pub work_seconds: f64,
    pub max_speed: f64,
    /// Compute seconds of the continuity chain that waits for this segment.
    pub chain_seconds_behind: f64,
    /// Seconds to load the model on a GPU where it is not resident.
    pub load_seconds: f64,
    /// Arrival order, for FIFO and ties.
    pub enqueued: u64,
}

/// A GPU as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuState {
    pub total_bytes: u64,
    pub reserved_bytes: u64,
    pub speed: f64,
    /// Speed already taken by the segments running on it.
    pub busy_speed: f64,
    pub running: u32,
    pub resident_models: Vec<u32>,
}

impl GpuState {
    fn free_bytes(&self) -> u64 {
        self.total_bytes.saturating_sub(self.reserved_bytes)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    pub segment: usize,
    pub gpu: usize,
    pub reserved_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Unplaced {
    pub segment: usize,
    pub reason: Reason,
}

/// Why a segment is not placed; `Display` gives the words a person can act on. Kept
/// structured so a queue of 100,000 costs no formatting until someone reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reason {
    NoGpus,
    TooLarge { needs: u64, largest: u64 },
    NeedsLargerClass { min_bytes: u64, largest: u64 },
    WaitingForIdleGpu { eligible: usize },
    WaitingForMemory { needs: u64, best_free: u64 },
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Reason::NoGpus => write!(f, "waiting: no GPU is registered"),
            Reason::TooLarge { needs, largest } => {
                write!(f, "needs {}, largest GPU has {}", gib(needs), gib(largest))
            }
            Reason::NeedsLargerClass { min_bytes, largest } => write!(
                f,
                "needs a GPU with at least {} after running out of memory; largest has {}",
                gib(min_bytes),
                gib(largest)
            ),
            Reason::WaitingForIdleGpu { eligible } => {
                write!(f, "waiting: all {eligible} GPUs that fit it are busy")
            }
            Reason::WaitingForMemory { needs, best_free } => write!(
                f,
                "waiting: needs {}, the GPUs that fit it have at most {} free",
                gib(needs),
                gib(best_free)
            ),
        }
    }
}

/// Totals and free memory of the pool, sorted so "the GPUs that fit" is a binary search.
struct PoolSummary {
    /// (total bytes, most free bytes among GPUs at least this large), largest first.
    by_total: Vec<(u64, u64)>,
}

impl PoolSummary {
    fn new(gpus: &[GpuState]) -> PoolSummary {
        let mut totals: Vec<(u64, u64)> = gpus
            .iter()
            .map(|g| (g.total_bytes, g.free_bytes()))
            .collect();
        totals.sort_by(|a, b| b.cmp(a));
        let mut best = 0;
        for entry in &mut totals {
            best = best.max(entry.1);
            entry.1 = best;
        }
        PoolSummary { by_total: totals }
    }

    fn largest(&self) -> u64 {
        self.by_total.first().map_or(0, |e| e.0)
    }

    /// How many GPUs have at least `bytes`, and the most free memory among them.
    fn at_least(&self, bytes: u64) -> (usize, u64) {
        let count = self.by_total.partition_point(|e| e.0 >= bytes);
        (
            count,
            count.checked_sub(1).map_or(0, |i| self.by_total[i].1),
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Placement {
    pub assignments: Vec<Assignment>,
    pub unplaced: Vec<Unplaced>,
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / GIB)
}

/// What to reserve for `segment` on `gpu`, if it fits there at all now. An unconfirmed
/// estimate shares a GPU only with its full headroom; alone on an idle GPU it may take
/// the whole card instead.
fn reservation(segment: &ReadySegment, gpu: &GpuState) -> Option<u64> {
    let wanted = segment.reserve_bytes + segment.cold_extra_bytes;
    let free = gpu.free_bytes();
    if gpu.total_bytes < segment.min_gpu_bytes || segment.reserve_bytes > free {
        return None;
    }
    if wanted <= free {
        Some(wanted)
    } else if gpu.running == 0 && gpu.reserved_bytes == 0 {
        Some(free)
    } else {
        None
    }
}

/// Why a segment could not be placed.
fn reason(segment: &ReadySegment, pool: &PoolSummary, policy: Policy) -> Reason {
    let largest = pool.largest();
    let (eligible, best_free) = pool.at_least(segment.min_gpu_bytes.max(segment.reserve_bytes));
    if pool.by_total.is_empty() {
        Reason::NoGpus
    } else if segment.reserve_bytes > largest {
        Reason::TooLarge {
            needs: segment.reserve_bytes,
            largest,
        }
    } else if eligible == 0 {
        Reason::NeedsLargerClass {
            min_bytes: segment.min_gpu_bytes,
            largest,
        }
    } else if policy == Policy::Fifo {
        Reason::WaitingForIdleGpu { eligible }
    } else {
        Reason::WaitingForMemory {
            needs: segment.reserve_bytes,
            best_free,
        }
    }
}

/// Places what can be placed now. `gpus` is not changed; apply the assignments to it.
pub fn place(policy: Policy, segments: &[ReadySegment], gpus: &[GpuState]) -> Placement {
    let mut gpus = gpus.to_vec();
    let mut placement = Placement::default();
    match policy {
        Policy::Fifo | Policy::Pack => {
            let mut order: Vec<usize> = (0..segments.len()).collect();
            order.sort_by_key(|&i| (segments[i].enqueued, i));
            let usable = |gpu: &GpuState| policy == Policy::Pack || gpu.running == 0;
            let mut max_free = most_free(&gpus, usable);
            for index in order {
                let segment = &segments[index];
                let chosen = if segment.reserve_bytes > max_free {
                    None
                } else {
                    gpus.iter().enumerate().find_map(|(g, gpu)| {
                        if !usable(gpu) {
                            return None;
                        }
                        reservation(segment, gpu).map(|bytes| (g, bytes))
                    })
                };
                if record(&mut placement, &mut gpus, segments, index, chosen) {
                    max_free = most_free(&gpus, usable);
                }
            }
        }
        Policy::Full => place_full(segments, &mut gpus, &mut placement),
    }
    // Reasons describe the pool as this placement leaves it.
    let pool = PoolSummary::new(&gpus);
    for unplaced in &mut placement.unplaced {
        unplaced.reason = reason(&segments[unplaced.segment], &pool, policy);
    }
    placement.unplaced.sort_by_key(|u| u.segment);
    placement
}

/// The most free memory on any GPU `usable` accepts.
fn most_free(gpus: &[GpuState], usable: impl Fn(&GpuState) -> bool) -> u64 {
    gpus.iter()
        .filter(|g| usable(g))
        .map(GpuState::free_bytes)
        .max()
        .unwrap_or(0)
}

/// Applies a choice to the working copy of the pool; true when the segment was placed.
fn record(
    placement: &mut Placement,
    gpus: &mut [GpuState],
    segments: &[ReadySegment],
    index: usize,
    chosen: Option<(usize, u64)>,
) -> bool {
    let placed = chosen.is_some();
    match chosen {
        Some((g, bytes)) => {
            let segment = &segments[index];
            let gpu = &mut gpus[g];
            gpu.reserved_bytes += bytes;
            gpu.running += 1;
            gpu.busy_speed += segment.max_speed.min(gpu.speed);
            if !gpu.resident_models.contains(&segment.model) {
                gpu.resident_models.push(segment.model);
            }
            placement.assignments.push(Assignment {
                segment: index,
                gpu: g,
                reserved_bytes: bytes,
            });
        }
        // The reason is filled in once placement is over.
        None => placement.unplaced.push(Unplaced {
            segment: index,
            reason: Reason::NoGpus,
        }),
    }
    placed
}

/// Expected seconds until `segment` finishes on `gpu`: model load (when not resident) plus
/// its work at the speed left on the GPU (or its fair share, on a saturated one).
fn expected_finish(segment: &ReadySegment, gpu: &GpuState) -> f64 {
    let load = if gpu.resident_models.contains(&segment.model) {
        0.0
    } else {
        segment.load_seconds
    };
    let spare = gpu.speed - gpu.busy_speed;
    let share = gpu.speed / f64::from(gpu.running + 1);
    let rate = spare.max(share).min(segment.max_speed).max(1e-6);
    load + segment.work_seconds / rate
}

/// How much later than on the fastest choice a segment may finish on a smaller GPU.
const SLOWER_BY: f64 = 2.0;

/// A sequence's turn: higher priority, then the owner and the sequence with fewer running
/// segments, then earlier arrival.
#[derive(PartialEq)]
struct Turn {
    priority: i32,
    /// Longest chain behind the sequence's next segment, in whole minutes.
    chain_minutes: u64,
    owner_running: u32,
    sequence_running: u32,
    first_enqueued: u64,
    sequence: u32,
}

impl Eq for Turn {}

impl Ord for Turn {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap pops the greatest: greatest = most deserving.
        self.priority
            .cmp(&other.priority)
            .then(self.chain_minutes.cmp(&other.chain_minutes))
            .then(other.owner_running.cmp(&self.owner_running))
            .then(other.sequence_running.cmp(&self.sequence_running))
            .then(other.first_enqueued.cmp(&self.first_enqueued))
            .then(other.sequence.cmp(&self.sequence))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn place_full(segments: &[ReadySegment], gpus: &mut [GpuState], placement: &mut Placement) {
    // The largest memory of the GPUs that are not the largest class: work needing more
    // than that only fits the large GPUs.
    let largest = gpus.iter().map(|g| g.total_bytes).max().unwrap_or(0);
    let small_class = gpus
        .iter()
        .map(|g| g.total_bytes)
        .filter(|&t| t < largest)
        .max()
        .unwrap_or(0);
    let large_only = |s: &ReadySegment| s.reserve_bytes.max(s.min_gpu_bytes) > small_class;

    // Per sequence, its segments by critical path (longest chain behind first).
    let mut queues: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (index, segment) in segments.iter().enumerate() {
        queues.entry(segment.sequence).or_default().push(index);
    }
    for queue in queues.values_mut() {
        queue.sort_by(|&a, &b| {
            let (a_seg, b_seg) = (&segments[a], &segments[b]);
            a_seg
                .chain_seconds_behind
                .total_cmp(&b_seg.chain_seconds_behind)
                .then(b_seg.enqueued.cmp(&a_seg.enqueued))
                .then(b.cmp(&a))
        });
        // Pop from the back: the best is last.
    }
    let mut owner_running: BTreeMap<u32, u32> = BTreeMap::new();
    let mut sequence_running: BTreeMap<u32, u32> = BTreeMap::new();
    let mut max_free;
    let smallest_need = segments.iter().map(|s| s.reserve_bytes).min().unwrap_or(0);

    for large_pass in [true, false] {
        // Memory that waiting large-only work needs: small work must leave it free.
        let waiting_large: u64 = if large_pass {
            0
        } else {
            placement
                .unplaced
                .iter()
                .map(|u| &segments[u.segment])
                .filter(|s| large_only(s) && s.reserve_bytes.max(s.min_gpu_bytes) <= largest)
                .map(|s| s.reserve_bytes)
                .min()
                .unwrap_or(0)
        };
        // Free memory as this pass may use it: on a protected GPU, what is left above the
        // memory waiting large work needs.
        let usable_free = |gpus: &[GpuState]| {
            gpus.iter()
                .map(|g| {
                    if !large_pass && waiting_large > 0 && g.total_bytes > small_class {
                        g.free_bytes().saturating_sub(waiting_large)
                    } else {
                        g.free_bytes()
                    }
                })
                .max()
                .unwrap_or(0)
        };
        max_free = usable_free(gpus);
        let mut heap: BinaryHeap<Turn> = BinaryHeap::new();
        let mut pending: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for (&sequence, queue) in &queues {
            let chosen: Vec<usize> = queue
                .iter()
                .copied()
                .filter(|&i| large_only(&segments[i]) == large_pass)
                .collect();
            if let Some(&first) = chosen.first() {
                let segment = &segments[first];
                heap.push(Turn {
                    chain_minutes: chosen
                        .last()
                        .map_or(0, |&i| (segments[i].chain_seconds_behind / 60.0) as u64),
                    priority: chosen
                        .iter()
                        .map(|&i| segments[i].priority)
                        .max()
                        .unwrap_or(0),
                    owner_running: owner_running.get(&segment.owner).copied().unwrap_or(0),
                    sequence_running: 0,
                    first_enqueued: chosen
                        .iter()
                        .map(|&i| segments[i].enqueued)
                        .min()
                        .unwrap_or(0),
                    sequence,
                });
                pending.insert(sequence, chosen);
            }
        }
        while let Some(turn) = heap.pop() {
            if max_free < smallest_need {
                // Nothing left fits anywhere: the rest of this pass waits.
                heap.push(turn);
                break;
            }
            let queue = pending.get_mut(&turn.sequence).expect("a turn has a queue");
            let Some(index) = queue.pop() else { continue };
            let segment = &segments[index];
            // The owner's count may have grown since this turn was queued: requeue if so.
            let owner_now = owner_running.get(&segment.owner).copied().unwrap_or(0);
            if owner_now > turn.owner_running {
                queue.push(index);
                heap.push(Turn {
                    owner_running: owner_now,
                    ..turn
                });
                continue;
            }
            let chosen = if segment.reserve_bytes > max_free {
                None
            } else {
                let candidates: Vec<(usize, u64, f64)> = gpus
                    .iter()
                    .enumerate()
                    .filter_map(|(g, gpu)| {
                        let bytes = reservation(segment, gpu)?;
                        let protects = !large_pass
                            && waiting_large > 0
                            && gpu.total_bytes > small_class
                            && gpu.free_bytes() - bytes < waiting_large;
                        (!protects).then(|| (g, bytes, expected_finish(segment, gpu)))
                    })
                    .collect();
                // The smallest GPUs whose expected finish is within `SLOWER_BY` of the best,
                // so the large ones stay for work that needs them; among those the earliest
                // finish, then the fullest, then the first.
                let best = candidates.iter().map(|c| c.2).fold(f64::INFINITY, f64::min);
                candidates
                    .into_iter()
                    .filter(|c| c.2 <= best * SLOWER_BY)
                    .min_by(|a, b| {
                        gpus[a.0]
                            .total_bytes
                            .cmp(&gpus[b.0].total_bytes)
                            .then(a.2.total_cmp(&b.2))
                            .then(gpus[a.0].free_bytes().cmp(&gpus[b.0].free_bytes()))
                            .then(a.0.cmp(&b.0))
                    })
                    .map(|(g, bytes, _)| (g, bytes))
            };
            let placed = record(placement, gpus, segments, index, chosen);
            if placed {
                max_free = usable_free(gpus);
                *owner_running.entry(segment.owner).or_default() += 1;
                let running = sequence_running.entry(turn.sequence).or_default();
                *running += 1;
                if let Some(&next) = queue.last() {
                    heap.push(Turn {
                        chain_minutes: (segments[next].chain_seconds_behind / 60.0) as u64,
                        owner_running: owner_running[&segment.owner],
                        sequence_running: *running,
                        ..turn
                    });
                }
            } else if !queue.is_empty() {
                // Nothing fits this one now; the sequence's next segment may still fit.
                heap.push(turn);
            }
        }
        for queue in pending.values() {
            for &index in queue {
                record(placement, gpus, segments, index, None);
            }
        }
    }
}

#[cfg(test)]
#[path = "placement_tests.rs"]
mod tests;
