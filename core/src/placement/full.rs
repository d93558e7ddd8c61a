//! The full policy: large-only work first on the large GPUs, protected memory for it, fair
//! share and priority through turns, the critical path within a sequence, and the smallest
//! GPU that finishes a segment within 2× of the fastest. The phases are described in
//! `README.md` beside this file.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::ready_queue::{FitShape, Preference, ReadyQueue};
use super::{
    Assignment, CountMap, GpuState, ReadySegment, RunningCounts, expected_finish, reservation,
};

impl ReadyQueue {
    pub(super) fn place_full(
        &mut self,
        gpus: &mut [GpuState],
        running: &RunningCounts,
    ) -> Vec<Assignment> {
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
