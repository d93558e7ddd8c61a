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
//!
//! The policies run over a `ReadyQueue` (ready_queue.rs) that the farm keeps between
//! decisions; `place` builds one from scratch for tests and the simulator.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

mod full;
mod ready_queue;

pub use self::ready_queue::ReadyQueue;

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
    /// The models its worker serves; `None`: every model.
    pub serves: Option<Vec<u32>>,
}

impl GpuState {
    pub(crate) fn free_bytes(&self) -> u64 {
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
pub(crate) struct PoolSummary {
    /// (total bytes, most free bytes among GPUs at least this large), largest first.
    by_total: Vec<(u64, u64)>,
}

impl PoolSummary {
    pub(crate) fn new(gpus: &[GpuState]) -> PoolSummary {
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
pub(crate) fn reservation(segment: &ReadySegment, gpu: &GpuState) -> Option<u64> {
    let wanted = segment.reserve_bytes + segment.cold_extra_bytes;
    let free = gpu.free_bytes();
    if gpu.total_bytes < segment.min_gpu_bytes
        || segment.reserve_bytes > free
        || gpu
            .serves
            .as_ref()
            .is_some_and(|models| !models.contains(&segment.model))
    {
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
pub(crate) fn reason(segment: &ReadySegment, pool: &PoolSummary, policy: Policy) -> Reason {
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

/// Why a segment can never be placed on a pool whose device totals are `largest_first`
/// (sorted, largest first): it needs more than any GPU has, or a larger class than there is.
/// `None` when some GPU is large enough, however busy. Reservations never change totals, so
/// the farm keeps them sorted between decisions and this costs a binary search.
pub fn permanent_reason(segment: &ReadySegment, largest_first: &[u64]) -> Option<Reason> {
    let largest = largest_first.first().copied().unwrap_or(0);
    let needs = segment.min_gpu_bytes.max(segment.reserve_bytes);
    let eligible = largest_first.partition_point(|&total| total >= needs);
    if largest_first.is_empty() {
        None
    } else if segment.reserve_bytes > largest {
        Some(Reason::TooLarge {
            needs: segment.reserve_bytes,
            largest,
        })
    } else if eligible == 0 {
        Some(Reason::NeedsLargerClass {
            min_bytes: segment.min_gpu_bytes,
            largest,
        })
    } else {
        None
    }
}

/// Running segments per owner and per sequence, for fair share across decisions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunningCounts {
    pub by_owner: CountMap,
    pub by_sequence: CountMap,
}

/// Counts by id. Ids are small integers the caller assigns, so they hash as themselves: a
/// decision looks up thousands of them.
pub type CountMap = HashMap<u32, u32, BuildHasherDefault<IdHasher>>;

/// Hashes a `u32` id as itself (spread by a multiply, for the table's top bits).
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Places what can be placed now, from scratch: every segment of `segments` (keyed by its
/// index) is queued, placed where it fits, or explained. `gpus` is not changed; apply the
/// assignments to it. The farm keeps a `ReadyQueue` between decisions instead.
pub fn place(policy: Policy, segments: &[ReadySegment], gpus: &[GpuState]) -> Placement {
    place_with_running(policy, segments, gpus, &RunningCounts::default())
}

/// `place`, with what already runs counted for fair share.
pub fn place_with_running(
    policy: Policy,
    segments: &[ReadySegment],
    gpus: &[GpuState],
    running: &RunningCounts,
) -> Placement {
    let mut queue = ReadyQueue::default();
    for (index, segment) in segments.iter().enumerate() {
        queue.push(index, segment.clone());
    }
    let mut gpus = gpus.to_vec();
    let assignments = queue.place(policy, &mut gpus, running);
    let unplaced = queue.reasons(&gpus, policy);
    Placement {
        assignments,
        unplaced,
    }
}

/// Applies a placement decision to a GPU.
pub(crate) fn occupy(gpu: &mut GpuState, segment: &ReadySegment, bytes: u64) {
    gpu.reserved_bytes += bytes;
    gpu.running += 1;
    gpu.busy_speed += segment.max_speed.min(gpu.speed);
    if !gpu.resident_models.contains(&segment.model) {
        gpu.resident_models.push(segment.model);
    }
}

/// Expected seconds until `segment` finishes on `gpu`: model load (when not resident) plus
/// its work at the speed left on the GPU (or its fair share, on a saturated one).
pub(crate) fn expected_finish(segment: &ReadySegment, gpu: &GpuState) -> f64 {
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

#[cfg(test)]
mod tests;
