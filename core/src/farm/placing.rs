//! Where the farm meets placement: ready tasks become `ReadySegment`s in a queue kept
//! between dispatches, registered devices become `GpuState`s, the full policy picks, and
//! measured peaks and out-of-memory failures teach the estimator. Part of the `farm` state
//! machine; pure like the rest of it.

use std::collections::{BTreeMap, HashMap};

use reelfarm_models::SegmentShape;

use crate::estimator::{CorrectionKey, Corrections};
use crate::placement::{ReadyQueue, ReadySegment, permanent_reason};

use super::pool::{Ids, Pool, Running, STITCH_MODEL};
use super::{Action, Farm, SequenceId, SequenceRecord, TaskRef, TaskState, UNPLACEABLE_PREFIX};

/// Stitching is short and finishes a sequence: it goes before segments of equal standing.
const STITCH_WORK_SECONDS: f64 = 5.0;

#[derive(Debug, Default)]
pub(crate) struct PlacementState {
    queue: ReadyQueue,
    tasks: HashMap<usize, (SequenceId, TaskRef)>,
    /// Queue keys by task; ordered, so one sequence's tasks are a range.
    keys: BTreeMap<(SequenceId, TaskRef), usize>,
    next_key: usize,
    corrections: Corrections,
    pub(super) ids: Ids,
    /// Kept between dispatches (`pool.rs`); `None` after the workers changed.
    pub(super) pool: Option<Pool>,
    pub(super) running: Option<Running>,
}

impl PlacementState {
    fn owner_index(&mut self, record: &SequenceRecord) -> u32 {
        self.ids
            .owner(record.sequence.owner.as_deref(), record.submit_order)
    }

    fn correction_key(&mut self, record: &SequenceRecord, index: usize) -> CorrectionKey {
        let planned = &record.plan.segments[index];
        let model = self.ids.model(&planned.model);
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
        let range = (id.clone(), TaskRef::Segment(0))..=(id.clone(), TaskRef::Stitch);
        let keys: Vec<usize> = self.keys.range(range).map(|(_, &key)| key).collect();
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
                    model: self.ids.model(&record.plan.segments[index].model),
                    work_seconds: record.plan.segments[index].work_seconds,
                    max_speed: f64::INFINITY,
                    chain_seconds_behind: record.plan.segments[index].chain_work_seconds,
                    load_seconds: record.plan.load_seconds,
                    enqueued,
                }
            }
            TaskRef::Stitch => ReadySegment {
                sequence,
                owner,
                priority: priority + 1,
                reserve_bytes: record.stitch.memory_estimate_bytes,
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
        self.pool();
        self.running();
        let placement = &mut self.placement;
        let pool = placement.pool.as_mut().expect("built above");
        let running = &placement.running.as_ref().expect("built above").counts;
        let decided = placement.queue.place(self.policy, &mut pool.gpus, running);
        let mut chosen = Vec::with_capacity(decided.len());
        for assignment in decided {
            let Some((id, task)) = placement.tasks.remove(&assignment.segment) else {
                continue;
            };
            placement.keys.remove(&(id.clone(), task));
            let (worker, slot) = pool.slots[assignment.gpu].clone();
            chosen.push((id, task, worker, slot, assignment.reserved_bytes));
        }
        let mut actions = Vec::with_capacity(chosen.len());
        for (id, task, worker, slot, reserved_bytes) in chosen {
            actions.push(self.assign(&id, task, worker, slot, reserved_bytes));
        }
        // Tasks queued just now that no registered device can ever hold say so.
        for (id, task) in fresh {
            let placement = &self.placement;
            let Some(segment) = placement
                .keys
                .get(&(id.clone(), task))
                .and_then(|&key| placement.queue.get(key))
            else {
                continue;
            };
            let totals = placement
                .pool
                .as_ref()
                .map_or(&[][..], |pool| &pool.totals[..]);
            let Some(reason) = permanent_reason(segment, totals) else {
                continue;
            };
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
        actions
    }

    /// Registered workers change the pool: every queued task is placed and explained again.
    pub(crate) fn pool_changed(&mut self) {
        self.placement.pool = None;
        let live: Vec<SequenceId> = self
            .sequences
            .values()
            .filter(|record| !record.state.is_terminal())
            .map(|record| record.id.clone())
            .collect();
        self.changed.requeue.extend(live);
    }
}
