//! Where the farm meets placement: ready tasks become `ReadySegment`s in a queue kept
//! between dispatches, registered devices become `GpuState`s, the full policy picks, and
//! measured peaks and out-of-memory failures teach the estimator. Part of the `farm` state
//! machine; pure like the rest of it.

use std::collections::HashMap;

use reelfarm_models::SegmentShape;

use crate::estimator::{CorrectionKey, Corrections};
use crate::placement::{GpuState, Policy, ReadyQueue, ReadySegment, Reason, RunningCounts};

use super::{
    Action, Farm, STITCH_MEMORY_ESTIMATE_BYTES, SequenceId, SequenceRecord, TaskRef, TaskState,
    UNPLACEABLE_PREFIX, WorkerId,
};

/// Stitching is short and finishes a sequence: it goes before segments of equal standing.
const STITCH_WORK_SECONDS: f64 = 5.0;
/// The model index every worker serves: stitching.
const STITCH_MODEL: u32 = u32::MAX;

#[derive(Debug, Default)]
pub(crate) struct PlacementState {
    queue: ReadyQueue,
    tasks: HashMap<usize, (SequenceId, TaskRef)>,
    keys: HashMap<(SequenceId, TaskRef), usize>,
    next_key: usize,
    corrections: Corrections,
    models: Vec<String>,
    owners: HashMap<String, u32>,
}

/// Named owners are numbered from here; a sequence without one is its own owner and takes
/// its submit order, below this.
const NAMED_OWNER_BASE: u32 = 1 << 31;

impl PlacementState {
    fn model_index(&mut self, model: &str) -> u32 {
        match self.models.iter().position(|m| m == model) {
            Some(index) => index as u32,
            None => {
                self.models.push(model.to_string());
                (self.models.len() - 1) as u32
            }
        }
    }

    /// Fair-share identity: the named owner, or the sequence itself.
    fn owner_index(&mut self, record: &SequenceRecord) -> u32 {
        match &record.sequence.owner {
            None => record.submit_order as u32 & (NAMED_OWNER_BASE - 1),
            Some(name) => {
                let next = NAMED_OWNER_BASE + self.owners.len() as u32;
                *self.owners.entry(name.clone()).or_insert(next)
            }
        }
    }

    fn correction_key(&mut self, record: &SequenceRecord, index: usize) -> CorrectionKey {
        let model = self.model_index(&record.sequence.model);
        let planned = &record.plan.segments[index];
        CorrectionKey::new(
            model,
            &SegmentShape {
                width: record.plan.width,
                height: record.plan.height,
                frames: planned.render_frames,
                tiled_decode: record.segments[index].low_memory,
            },
        )
    }

    /// What placement reserves for a segment now: (trusted bytes, cold headroom).
    pub(crate) fn reservation(&mut self, record: &SequenceRecord, index: usize) -> (u64, u64) {
        let key = self.correction_key(record, index);
        self.corrections
            .reservation(&key, formula_bytes(record, index))
    }

    /// A finished segment's measured peak (0: not measured) corrects its size class.
    pub(crate) fn learn_peak(&mut self, record: &SequenceRecord, index: usize, peak: u64) {
        if peak > 0 {
            let key = self.correction_key(record, index);
            self.corrections
                .observe(key, formula_bytes(record, index), peak);
        }
    }

    /// A segment ran out of memory with what it reserved: its size class needs more.
    pub(crate) fn learn_oom(&mut self, record: &SequenceRecord, index: usize) {
        let key = self.correction_key(record, index);
        let reserved = record.segments[index].reserved_bytes;
        self.corrections
            .observe_oom(key, formula_bytes(record, index), reserved);
    }

    fn forget(&mut self, id: &SequenceId) {
        let keys: Vec<usize> = self
            .keys
            .iter()
            .filter(|((sequence, _), _)| sequence == id)
            .map(|(_, &key)| key)
            .collect();
        for key in keys {
            self.queue.remove(key);
            if let Some(task) = self.tasks.remove(&key) {
                self.keys.remove(&task);
            }
        }
    }

    fn enqueue(&mut self, record: &SequenceRecord, task: TaskRef) {
        let segment = self.ready_segment(record, task);
        let key = self.next_key;
        self.next_key += 1;
        self.queue.push(key, segment);
        self.tasks.insert(key, (record.id.clone(), task));
        self.keys.insert((record.id.clone(), task), key);
    }

    fn ready_segment(&mut self, record: &SequenceRecord, task: TaskRef) -> ReadySegment {
        let sequence = record.submit_order as u32;
        let owner = self.owner_index(record);
        // Stitching goes just ahead of segments of the same sequence priority.
        let priority = record.sequence.priority * 2;
        let enqueued = (record.submit_order << 20)
            + match task {
                TaskRef::Segment(index) => index as u64,
                TaskRef::Stitch => (1 << 20) - 1,
            };
        match task {
            TaskRef::Segment(index) => {
                let (reserve_bytes, cold_extra_bytes) = self.reservation(record, index);
                ReadySegment {
                    sequence,
                    owner,
                    priority,
                    reserve_bytes,
                    cold_extra_bytes,
                    min_gpu_bytes: record.segments[index].min_gpu_bytes,
                    model: self.model_index(&record.sequence.model),
                    work_seconds: work_seconds(record, index),
                    max_speed: f64::INFINITY,
                    chain_seconds_behind: chain_seconds_behind(record, index),
                    load_seconds: record.plan.load_seconds,
                    enqueued,
                }
            }
            TaskRef::Stitch => ReadySegment {
                sequence,
                owner,
                priority: priority + 1,
                reserve_bytes: STITCH_MEMORY_ESTIMATE_BYTES,
                cold_extra_bytes: 0,
                min_gpu_bytes: 0,
                model: STITCH_MODEL,
                work_seconds: STITCH_WORK_SECONDS,
                max_speed: f64::INFINITY,
                chain_seconds_behind: 0.0,
                load_seconds: 0.0,
                enqueued,
            },
        }
    }
}

/// The estimator's bytes for a segment in the mode it renders in now: the low-memory estimate
/// once the out-of-memory ladder reached that rung.
fn formula_bytes(record: &SequenceRecord, index: usize) -> u64 {
    if record.segments[index].low_memory {
        record.plan.segments[index].low_memory_estimate_bytes
    } else {
        record.segments[index].memory_estimate_bytes
    }
}

fn work_seconds(record: &SequenceRecord, index: usize) -> f64 {
    record.plan.segments[index].work_seconds
}

/// Compute of the continuity chain that waits for this segment (its successors, in turn).
fn chain_seconds_behind(record: &SequenceRecord, index: usize) -> f64 {
    let mut total = 0.0;
    let mut current = index;
    while let Some(next) = record
        .plan
        .segments
        .iter()
        .position(|planned| planned.continues_from == Some(current))
    {
        total += work_seconds(record, next);
        current = next;
    }
    total
}

impl Farm {
    /// Places ready tasks with the full policy: several per device while their reservations
    /// fit, the model's resident devices first, critical path and fair share between
    /// sequences. A task that fits no registered device says why in its status.
    pub fn dispatch(&mut self) -> Vec<Action> {
        let requeue = std::mem::take(&mut self.changed.requeue);
        let mut fresh = Vec::new();
        for id in &requeue {
            self.placement.forget(id);
            let Some(record) = self.sequences.get(id) else {
                continue;
            };
            if record.state.is_terminal() {
                continue;
            }
            let ready = record
                .segments
                .iter()
                .enumerate()
                .filter(|(_, task)| task.state == TaskState::Ready)
                .map(|(index, _)| TaskRef::Segment(index))
                .chain((record.stitch.state == TaskState::Ready).then_some(TaskRef::Stitch));
            for task in ready {
                self.placement.enqueue(record, task);
                fresh.push((id.clone(), task));
            }
        }
        let (mut gpus, slots) = self.gpu_states();
        let running = self.running_counts();
        let assignments = self
            .placement
            .queue
            .place(Policy::Full, &mut gpus, &running);
        let mut actions = Vec::new();
        for assignment in assignments {
            let Some((id, task)) = self.placement.tasks.remove(&assignment.segment) else {
                continue;
            };
            self.placement.keys.remove(&(id.clone(), task));
            let (worker, slot) = slots[assignment.gpu].clone();
            actions.push(self.assign(&id, task, worker, slot, assignment.reserved_bytes));
        }
        // Tasks queued just now that no registered device can ever hold say so.
        for (id, task) in fresh {
            let Some(&key) = self.placement.keys.get(&(id.clone(), task)) else {
                continue;
            };
            let Some(reason) = self.placement.queue.reason(key, &gpus, Policy::Full) else {
                continue;
            };
            if matches!(
                reason,
                Reason::TooLarge { .. } | Reason::NeedsLargerClass { .. }
            ) {
                let text = reason.to_string();
                debug_assert!(text.starts_with(UNPLACEABLE_PREFIX));
                if let Some(record) = self.sequences.get_mut(&id) {
                    let record_task = record.task_mut(task);
                    if record_task.error.as_deref() != Some(text.as_str()) {
                        record_task.error = Some(text);
                        self.changed.watch.insert(id.clone());
                    }
                }
            }
        }
        actions
    }

    /// Registered workers change the pool: every queued task is placed and explained again.
    pub(crate) fn pool_changed(&mut self) {
        let live: Vec<SequenceId> = self
            .sequences
            .values()
            .filter(|record| !record.state.is_terminal())
            .map(|record| record.id.clone())
            .collect();
        self.changed.requeue.extend(live);
    }

    /// The devices of connected workers as placement sees them, with where each one is.
    fn gpu_states(&mut self) -> (Vec<GpuState>, Vec<(WorkerId, usize)>) {
        let mut gpus = Vec::new();
        let mut slots = Vec::new();
        for worker in self
            .workers
            .values()
            .filter(|worker| worker.connected && !worker.draining)
        {
            let mut serves: Vec<u32> = worker
                .models
                .iter()
                .map(|model| self.placement.model_index(model))
                .collect();
            serves.push(STITCH_MODEL);
            for (slot, device) in worker.devices.iter().enumerate() {
                let speed = if device.device.speed > 0.0 {
                    device.device.speed
                } else {
                    1.0
                };
                gpus.push(GpuState {
                    total_bytes: device.device.memory_total_bytes,
                    reserved_bytes: device.reserved_bytes,
                    speed,
                    // Running tasks share the device's speed with a newcomer.
                    busy_speed: if device.running.is_empty() {
                        0.0
                    } else {
                        speed
                    },
                    running: device.running.len() as u32,
                    resident_models: device
                        .resident_models
                        .iter()
                        .map(|model| self.placement.model_index(model))
                        .collect(),
                    serves: Some(serves.clone()),
                });
                slots.push((worker.id.clone(), slot));
            }
        }
        (gpus, slots)
    }

    fn running_counts(&mut self) -> RunningCounts {
        let mut counts = RunningCounts::default();
        for assignment in self.assignments.values() {
            if let Some(record) = self.sequences.get(&assignment.sequence_id) {
                let sequence = record.submit_order as u32;
                let owner = self.placement.owner_index(record);
                *counts.by_sequence.entry(sequence).or_default() += 1;
                *counts.by_owner.entry(owner).or_default() += 1;
            }
        }
        counts
    }
}
