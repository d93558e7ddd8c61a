//! How task attempts end without a result: the failure classes workers report, the retry
//! budget, and the out-of-memory ladder with its own budget. Part of the `farm` state
//! machine, kept in its own file; pure like the rest of it.

use reelfarm_common::pb;

use super::{Action, AssignmentRecord, Farm, FarmEvent, TaskRecord, TaskRef, TaskState};
use crate::Error;

/// Why a task attempt ended without a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    ModelError,
    OutOfMemory,
    StorageError,
    Cancelled,
    WorkerLost,
    InvalidTask,
    /// Running, but no progress within its deadline (a hung worker): taken back.
    Stalled,
    /// Its input (a segment another task produced) failed its checksum: the producer is
    /// rendered again and this task waits for it.
    CorruptInput,
}

impl FailureClass {
    pub fn from_pb(reason: i32) -> Self {
        match pb::FailureReason::try_from(reason).unwrap_or(pb::FailureReason::Unspecified) {
            pb::FailureReason::OutOfMemory => FailureClass::OutOfMemory,
            pb::FailureReason::StorageError => FailureClass::StorageError,
            pb::FailureReason::Cancelled => FailureClass::Cancelled,
            pb::FailureReason::WorkerLost => FailureClass::WorkerLost,
            pb::FailureReason::InvalidTask => FailureClass::InvalidTask,
            pb::FailureReason::CorruptInput => FailureClass::CorruptInput,
            pb::FailureReason::ModelError | pb::FailureReason::Unspecified => {
                FailureClass::ModelError
            }
        }
    }

    /// The metric label (`reason="out_of_memory"`).
    pub fn label(self) -> &'static str {
        match self {
            FailureClass::ModelError => "model_error",
            FailureClass::OutOfMemory => "out_of_memory",
            FailureClass::StorageError => "storage_error",
            FailureClass::Cancelled => "cancelled",
            FailureClass::WorkerLost => "worker_lost",
            FailureClass::InvalidTask => "invalid_task",
            FailureClass::Stalled => "stalled",
            FailureClass::CorruptInput => "corrupt_input",
        }
    }

    pub const ALL: [FailureClass; 8] = [
        FailureClass::ModelError,
        FailureClass::OutOfMemory,
        FailureClass::StorageError,
        FailureClass::Cancelled,
        FailureClass::WorkerLost,
        FailureClass::InvalidTask,
        FailureClass::Stalled,
        FailureClass::CorruptInput,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            FailureClass::ModelError => "model error",
            FailureClass::OutOfMemory => "out of memory",
            FailureClass::StorageError => "storage error",
            FailureClass::Cancelled => "cancelled",
            FailureClass::WorkerLost => "worker lost",
            FailureClass::InvalidTask => "invalid task",
            FailureClass::Stalled => "stalled",
            FailureClass::CorruptInput => "corrupt input",
        }
    }
}

impl Farm {
    pub fn fail(
        &mut self,
        reference: &pb::AssignmentRef,
        class: FailureClass,
        message: &str,
        now: f64,
    ) -> Result<Vec<Action>, Error> {
        let assignment = self.take_current(reference)?;
        Ok(self.end_attempt(&assignment, class, message, now))
    }

    /// An attempt ended without a result: retry within the budget, else fail the sequence.
    pub(super) fn end_attempt(
        &mut self,
        assignment: &AssignmentRecord,
        class: FailureClass,
        message: &str,
        now: f64,
    ) -> Vec<Action> {
        let max_attempts = self.max_attempts;
        let Some(record) = self.sequences.get_mut(&assignment.sequence_id) else {
            return Vec::new();
        };
        self.changed.insert(record.id.clone());
        let name = record.task_name(assignment.task);
        let task = record.task_mut(assignment.task);
        // Only the task's current attempt can end it (not one taken back earlier).
        if task.state != TaskState::Running || task.attempt != assignment.attempt {
            return Vec::new();
        }
        let reason = format!("{}: {message}", class.describe());
        task.error = Some(reason.clone());
        self.events.push(FarmEvent::Failed {
            stitch: assignment.task == TaskRef::Stitch,
            class,
        });
        if class == FailureClass::OutOfMemory {
            let devices = || self.workers.values().flat_map(|worker| &worker.devices);
            let largest = devices()
                .map(|device| device.device.memory_total_bytes)
                .max()
                .unwrap_or(0);
            let failed_on = self
                .workers
                .get(&assignment.worker)
                .and_then(|worker| worker.devices.get(assignment.device_slot))
                .map_or(assignment.reserved_bytes, |d| d.device.memory_total_bytes);
            if let TaskRef::Segment(index) = assignment.task {
                self.placement.learn_oom(record, index);
            }
            let task = record.task_mut(assignment.task);
            if let Some(rung) = climb_oom_ladder(task, failed_on, largest) {
                task.error = Some(format!("{reason}; retrying {rung}"));
                task.state = TaskState::Ready;
                task.ready_since_unix_s = now;
                return Vec::new();
            }
        }
        let task = record.task_mut(assignment.task);
        let retryable = !matches!(
            class,
            FailureClass::InvalidTask | FailureClass::Cancelled | FailureClass::OutOfMemory
        );
        // Out-of-memory attempts have their own budget (the ladder above), and attempts that
        // found their input corrupt are excused.
        let counted = task
            .attempt
            .saturating_sub(task.oom_count)
            .saturating_sub(task.excused_attempts);
        if retryable && counted < max_attempts {
            task.state = TaskState::Ready;
            task.ready_since_unix_s = now;
            return Vec::new();
        }
        task.state = TaskState::Failed;
        let attempts = task.attempt;
        let id = record.id.clone();
        self.fail_sequence(
            &id,
            format!("{name} failed after {attempts} attempt(s); last reason: {reason}"),
            now,
        )
    }
}

/// The next rung of the out-of-memory ladder for a task that just ran out of memory on a
/// GPU of `failed_gpu_bytes`: a larger reservation (the estimator already grew it), then a
/// larger GPU class, then the model's lower-memory mode. `None` when the ladder is done.
fn climb_oom_ladder(
    task: &mut TaskRecord,
    failed_gpu_bytes: u64,
    largest_gpu: u64,
) -> Option<&'static str> {
    task.oom_count += 1;
    match task.oom_count {
        1 => Some("with a larger reservation"),
        2 if largest_gpu > failed_gpu_bytes => {
            task.min_gpu_bytes = failed_gpu_bytes + 1;
            Some("on a larger GPU class")
        }
        2 | 3 if !task.low_memory => {
            task.low_memory = true;
            Some("in the model's lower-memory mode")
        }
        _ => None,
    }
}
