//! The queue placement draws from, kept between decisions so that one decision costs what
//! it places, not the length of the queue: 100,000 queued segments are not re-sorted every
//! time a GPU frees.
//!
//! Segments are grouped by their *fit shape* (what to reserve, cold headroom, smallest GPU
//! allowed). Within one decision GPUs only fill up, so once a shape fits nowhere no segment
//! of that shape can: the rest of the decision skips them without looking at each.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use crate::placement::{
    Assignment, CountMap, GpuState, Policy, PoolSummary, ReadySegment, Reason, RunningCounts,
    Unplaced, expected_finish, occupy, reason, reservation,
};

/// What decides whether a segment fits a GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct FitShape {
    reserve_bytes: u64,
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

    fn needs(&self) -> u64 {
        self.reserve_bytes.max(self.min_gpu_bytes)
    }
}

/// Order within a sequence, best first: longest chain behind, then earliest, then key.
/// Chains are non-negative, so their IEEE bits order like the numbers.
type Preference = (Reverse<u64>, u64, usize);

fn preference(key: usize, segment: &ReadySegment) -> Preference {
    (
        Reverse(segment.chain_seconds_behind.max(0.0).to_bits()),
        segment.enqueued,
        key,
    )
}

#[derive(Debug, Default)]
struct SequenceQueue {
    owner: u32,
    by_shape: BTreeMap<FitShape, BTreeSet<Preference>>,
    priorities: BTreeMap<i32, u32>,
    arrivals: BTreeSet<(u64, usize)>,
    /// Kept current on every change, so a decision reads each sequence in a few loads:
    /// the best segment of every shape, the highest priority, the earliest arrival.
    heads: Vec<(Preference, FitShape)>,
    priority: i32,
    first_enqueued: u64,
}

impl SequenceQueue {
    /// The best segment whose shape `eligible` accepts and has not failed this decision.
    fn best(
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
    segments: HashMap<usize, ReadySegment>,
    /// Per shape, in arrival order (FIFO and Pack).
    arrivals: BTreeMap<FitShape, BTreeSet<(u64, usize)>>,
    sequences: BTreeMap<u32, SequenceQueue>,
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
    fn open_gpus(&self, gpus: &[GpuState]) -> Vec<usize> {
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

    fn take(&mut self, key: usize, gpus: &mut [GpuState], gpu: usize, bytes: u64) -> Assignment {
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

    fn place_full(&mut self, gpus: &mut [GpuState], running: &RunningCounts) -> Vec<Assignment> {
        // The largest memory of the GPUs that are not the largest class: work needing more
        // than that only fits the large GPUs.
        let largest = gpus.iter().map(|g| g.total_bytes).max().unwrap_or(0);
        let small_class = gpus
            .iter()
            .map(|g| g.total_bytes)
            .filter(|&t| t < largest)
            .max()
            .unwrap_or(0);
        let large_only = |shape: &FitShape| shape.needs() > small_class;
        let open = self.open_gpus(gpus);
        // Segments this decision placed, on top of what already runs.
        let mut placed_by_owner = CountMap::default();
        let mut placed_by_sequence = CountMap::default();
        let owner_running = |placed: &CountMap, owner: u32| {
            running.by_owner.get(&owner).copied().unwrap_or(0)
                + placed.get(&owner).copied().unwrap_or(0)
        };
        let mut assignments = Vec::new();

        for large_pass in [true, false] {
            let in_pass = |shape: &FitShape| large_only(shape) == large_pass;
            // Memory that waiting large-only work needs: small work must leave it free.
            let waiting_large: u64 = if large_pass {
                0
            } else {
                self.arrivals
                    .keys()
                    .filter(|s| large_only(s) && s.needs() <= largest)
                    .map(|s| s.reserve_bytes)
                    .min()
                    .unwrap_or(0)
            };
            let protects = |gpu: &GpuState, bytes: u64| {
                waiting_large > 0
                    && gpu.total_bytes > small_class
                    && gpu.free_bytes() - bytes < waiting_large
            };
            // Free memory as this pass may use it: on a protected GPU, what is left above
            // the memory waiting large work needs.
            let usable_free = |gpus: &[GpuState]| {
                open.iter()
                    .map(|&g| &gpus[g])
                    .map(|g| {
                        if waiting_large > 0 && g.total_bytes > small_class {
                            g.free_bytes().saturating_sub(waiting_large)
                        } else {
                            g.free_bytes()
                        }
                    })
                    .max()
                    .unwrap_or(0)
            };
            let Some(smallest_need) = self
                .arrivals
                .keys()
                .filter(|s| in_pass(s))
                .map(|s| s.reserve_bytes)
                .min()
            else {
                continue;
            };
            let mut max_free = usable_free(gpus);
            let mut failed: Vec<FitShape> = Vec::new();
            if max_free < smallest_need {
                continue;
            }
            let turns: Vec<Turn> = self
                .sequences
                .iter()
                .filter_map(|(&sequence, queue)| {
                    // Shapes larger than any free memory cannot place this decision.
                    let fits = |shape: &FitShape| in_pass(shape) && shape.reserve_bytes <= max_free;
                    let (best, _) = queue.best(fits, &failed)?;
                    Some(Turn {
                        priority: queue.priority,
                        chain_minutes: chain_minutes(best),
                        owner_running: owner_running(&placed_by_owner, queue.owner),
                        sequence_running: running.by_sequence.get(&sequence).copied().unwrap_or(0)
                            + placed_by_sequence.get(&sequence).copied().unwrap_or(0),
                        first_enqueued: queue.first_enqueued,
                        sequence,
                    })
                })
                .collect();
            let mut heap = BinaryHeap::from(turns);
            while let Some(turn) = heap.pop() {
                if max_free < smallest_need {
                    // Nothing left fits anywhere: the rest of this pass waits.
                    break;
                }
                let Some(queue) = self.sequences.get(&turn.sequence) else {
                    continue;
                };
                let Some(((_, _, key), shape)) = queue.best(in_pass, &failed) else {
                    continue;
                };
                // The owner's count may have grown since this turn was queued: requeue if so.
                let owner = queue.owner;
                let owner_now = owner_running(&placed_by_owner, owner);
                if owner_now > turn.owner_running {
                    heap.push(Turn {
                        owner_running: owner_now,
                        ..turn
                    });
                    continue;
                }
                let segment = &self.segments[&key];
                let chosen = if shape.reserve_bytes > max_free {
                    None
                } else {
                    fastest_small_enough(segment, gpus, &open, |gpu, bytes| {
                        !large_pass && protects(gpu, bytes)
                    })
                };
                let Some((gpu, bytes)) = chosen else {
                    // Nothing fits this shape now; the sequence's other shapes still may.
                    failed.push(shape);
                    heap.push(turn);
                    continue;
                };
                assignments.push(self.take(key, gpus, gpu, bytes));
                max_free = usable_free(gpus);
                *placed_by_owner.entry(owner).or_default() += 1;
                *placed_by_sequence.entry(turn.sequence).or_default() += 1;
                if let Some((next, _)) = self
                    .sequences
                    .get(&turn.sequence)
                    .and_then(|q| q.best(in_pass, &failed))
                {
                    heap.push(Turn {
                        chain_minutes: chain_minutes(next),
                        owner_running: owner_running(&placed_by_owner, owner),
                        sequence_running: turn.sequence_running + 1,
                        ..turn
                    });
                }
            }
        }
        assignments
    }
}

fn chain_minutes(preference: Preference) -> u64 {
    (f64::from_bits(preference.0.0) / 60.0) as u64
}

/// How much later than on the fastest choice a segment may finish on a smaller GPU.
const SLOWER_BY: f64 = 2.0;

/// The smallest GPU whose expected finish is within `SLOWER_BY` of the best, so the large
/// ones stay for work that needs them; among those the earliest finish, then the fullest,
/// then the first. `excluded` vetoes a GPU for a reservation.
fn fastest_small_enough(
    segment: &ReadySegment,
    gpus: &[GpuState],
    open: &[usize],
    excluded: impl Fn(&GpuState, u64) -> bool,
) -> Option<(usize, u64)> {
    let candidates: Vec<(usize, u64, f64)> = open
        .iter()
        .map(|&g| (g, &gpus[g]))
        .filter_map(|(g, gpu)| {
            let bytes = reservation(segment, gpu)?;
            (!excluded(gpu, bytes)).then(|| (g, bytes, expected_finish(segment, gpu)))
        })
        .collect();
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
}

/// A sequence's turn: higher priority, then the longer chain, then the owner and the
/// sequence with fewer running segments, then earlier arrival.
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
