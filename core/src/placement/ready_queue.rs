//! The queue placement draws from, kept between decisions so that one decision costs what
//! it places, not the length of the queue: 100,000 queued segments are not re-sorted every
//! time a GPU frees.
//!
//! Segments are grouped by their *fit shape* (what to reserve, cold headroom, smallest GPU
//! allowed). Within one decision GPUs only fill up, so once a shape fits nowhere no segment
//! of that shape can: the rest of the decision skips them without looking at each.
//! Arrival-order policies (fifo, pack) are here; the full policy is in `full.rs`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{
    Assignment, GpuState, Policy, PoolSummary, ReadySegment, Reason, RunningCounts, Unplaced,
    occupy, reason, reservation,
};

/// What decides whether a segment fits a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct FitShape {
    pub(super) reserve_bytes: u64,
    cold_extra_bytes: u64,
    min_gpu_bytes: u64,
    /// GPUs may serve only some models.
    model: u32,
}

impl FitShape {
    fn of(segment: &ReadySegment) -> FitShape {
        FitShape {
            reserve_bytes: segment.reserve_bytes,
            cold_extra_bytes: segment.cold_extra_bytes,
            min_gpu_bytes: segment.min_gpu_bytes,
            model: segment.model,
        }
    }

    pub(super) fn needs(&self) -> u64 {
        self.reserve_bytes.max(self.min_gpu_bytes)
    }
}

/// Order within a sequence, best first: longest chain behind, then earliest, then key.
/// Chains are non-negative, so their IEEE bits order like the numbers.
pub(super) type Preference = (Reverse<u64>, u64, usize);

fn preference(key: usize, segment: &ReadySegment) -> Preference {
    (
        Reverse(segment.chain_seconds_behind.max(0.0).to_bits()),
        segment.enqueued,
        key,
    )
}

#[derive(Debug, Default)]
pub(super) struct SequenceQueue {
    pub(super) owner: u32,
    by_shape: BTreeMap<FitShape, BTreeSet<Preference>>,
    priorities: BTreeMap<i32, u32>,
    arrivals: BTreeSet<(u64, usize)>,
    /// Kept current on every change, so a decision reads each sequence in a few loads:
    /// the best segment of every shape, the highest priority, the earliest arrival.
    heads: Vec<(Preference, FitShape)>,
    pub(super) priority: i32,
    pub(super) first_enqueued: u64,
}

impl SequenceQueue {
    /// The best segment whose shape `eligible` accepts and has not failed this decision.
    pub(super) fn best(
        &self,
        eligible: impl Fn(&FitShape) -> bool,
        failed: &[FitShape],
    ) -> Option<(Preference, FitShape)> {
        self.heads
            .iter()
            .filter(|(_, shape)| eligible(shape) && !failed.contains(shape))
            .min()
            .copied()
    }

    fn refresh(&mut self, shape: FitShape) {
        self.heads.retain(|(_, s)| *s != shape);
        if let Some(first) = self.by_shape.get(&shape).and_then(BTreeSet::first) {
            self.heads.push((*first, shape));
        }
        self.priority = self.priorities.keys().next_back().copied().unwrap_or(0);
        self.first_enqueued = self.arrivals.first().map_or(0, |a| a.0);
    }
}

/// Ready segments under caller-chosen keys.
#[derive(Debug, Default)]
pub struct ReadyQueue {
    pub(super) segments: HashMap<usize, ReadySegment>,
    /// Per shape, in arrival order (FIFO and Pack).
    pub(super) arrivals: BTreeMap<FitShape, BTreeSet<(u64, usize)>>,
    pub(super) sequences: BTreeMap<u32, SequenceQueue>,
}

impl ReadyQueue {
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    pub fn get(&self, key: usize) -> Option<&ReadySegment> {
        self.segments.get(&key)
    }

    pub fn keys(&self) -> impl Iterator<Item = usize> + '_ {
        self.segments.keys().copied()
    }

    /// Queues a segment; one already under `key` is replaced.
    pub fn push(&mut self, key: usize, segment: ReadySegment) {
        self.remove(key);
        let shape = FitShape::of(&segment);
        self.arrivals
            .entry(shape)
            .or_default()
            .insert((segment.enqueued, key));
        let sequence = self.sequences.entry(segment.sequence).or_default();
        sequence.owner = segment.owner;
        sequence
            .by_shape
            .entry(shape)
            .or_default()
            .insert(preference(key, &segment));
        *sequence.priorities.entry(segment.priority).or_default() += 1;
        sequence.arrivals.insert((segment.enqueued, key));
        sequence.refresh(shape);
        self.segments.insert(key, segment);
    }

    pub fn remove(&mut self, key: usize) -> Option<ReadySegment> {
        let segment = self.segments.remove(&key)?;
        let shape = FitShape::of(&segment);
        if let Some(set) = self.arrivals.get_mut(&shape) {
            set.remove(&(segment.enqueued, key));
            if set.is_empty() {
                self.arrivals.remove(&shape);
            }
        }
        if let Some(sequence) = self.sequences.get_mut(&segment.sequence) {
            if let Some(set) = sequence.by_shape.get_mut(&shape) {
                set.remove(&preference(key, &segment));
                if set.is_empty() {
                    sequence.by_shape.remove(&shape);
                }
            }
            if let Some(count) = sequence.priorities.get_mut(&segment.priority) {
                *count -= 1;
                if *count == 0 {
                    sequence.priorities.remove(&segment.priority);
                }
            }
            sequence.arrivals.remove(&(segment.enqueued, key));
            if sequence.arrivals.is_empty() {
                self.sequences.remove(&segment.sequence);
            } else {
                sequence.refresh(shape);
            }
        }
        Some(segment)
    }

    /// Why the queued segment under `key` waits, as the pool stands.
    pub fn reason(&self, key: usize, gpus: &[GpuState], policy: Policy) -> Option<Reason> {
        let segment = self.segments.get(&key)?;
        Some(reason(segment, &PoolSummary::new(gpus), policy))
    }

    /// Why every queued segment waits, by key.
    pub fn reasons(&self, gpus: &[GpuState], policy: Policy) -> Vec<Unplaced> {
        let pool = PoolSummary::new(gpus);
        let mut unplaced: Vec<Unplaced> = self
            .segments
            .iter()
            .map(|(&key, segment)| Unplaced {
                segment: key,
                reason: reason(segment, &pool, policy),
            })
            .collect();
        unplaced.sort_by_key(|u| u.segment);
        unplaced
    }

    /// Places what fits now: the placed segments leave the queue and their reservations are
    /// applied to `gpus`. `running` counts what already runs, for fair share.
    pub fn place(
        &mut self,
        policy: Policy,
        gpus: &mut [GpuState],
        running: &RunningCounts,
    ) -> Vec<Assignment> {
        match policy {
            Policy::Fifo | Policy::Pack => self.place_in_arrival_order(policy, gpus),
            Policy::Full => self.place_full(gpus, running),
        }
    }

    /// The GPUs with room for the smallest queued reservation: the only ones a decision
    /// needs to look at, since placing only fills GPUs further.
    pub(super) fn open_gpus(&self, gpus: &[GpuState]) -> Vec<usize> {
        let smallest = self
            .arrivals
            .keys()
            .map(|s| s.reserve_bytes)
            .min()
            .unwrap_or(0);
        (0..gpus.len())
            .filter(|&g| gpus[g].free_bytes() >= smallest.max(1))
            .collect()
    }

    pub(super) fn take(
        &mut self,
        key: usize,
        gpus: &mut [GpuState],
        gpu: usize,
        bytes: u64,
    ) -> Assignment {
        let segment = self.remove(key).expect("placed segments are queued");
        occupy(&mut gpus[gpu], &segment, bytes);
        Assignment {
            segment: key,
            gpu,
            reserved_bytes: bytes,
        }
    }

    fn place_in_arrival_order(&mut self, policy: Policy, gpus: &mut [GpuState]) -> Vec<Assignment> {
        let usable = |gpu: &GpuState| policy == Policy::Pack || gpu.running == 0;
        let open = self.open_gpus(gpus);
        let most_free = |gpus: &[GpuState]| {
            open.iter()
                .map(|&g| &gpus[g])
                .filter(|g| usable(g))
                .map(GpuState::free_bytes)
                .max()
                .unwrap_or(0)
        };
        let mut max_free = most_free(gpus);
        let mut failed: Vec<FitShape> = Vec::new();
        let mut assignments = Vec::new();
        loop {
            let next = self
                .arrivals
                .iter()
                .filter(|(shape, _)| !failed.contains(shape))
                .filter_map(|(shape, set)| {
                    set.first().map(|&(enqueued, key)| (enqueued, key, *shape))
                })
                .min();
            let Some((_, key, shape)) = next else { break };
            let segment = &self.segments[&key];
            let chosen = (shape.reserve_bytes <= max_free)
                .then(|| {
                    open.iter().find_map(|&g| {
                        let gpu = &gpus[g];
                        usable(gpu)
                            .then(|| reservation(segment, gpu))
                            .flatten()
                            .map(|bytes| (g, bytes))
                    })
                })
                .flatten();
            match chosen {
                Some((gpu, bytes)) => {
                    assignments.push(self.take(key, gpus, gpu, bytes));
                    max_free = most_free(gpus);
                }
                None => {
                    failed.push(shape);
                }
            }
        }
        assignments
    }
}
