//! Outstanding assignments: the fencing check a report must pass (its attempt is the
//! current one), and what ending an assignment frees (its device's reservation, its task's
//! pointer to it). Part of the `farm` state machine; pure like the rest of it.

use reelfarm_common::pb;

use super::{AssignmentRecord, Farm, WorkerId};
use crate::Error;

impl Farm {
    /// The worker an outstanding assignment was placed on.
    pub fn assignment_worker(&self, assignment_id: &str) -> Option<WorkerId> {
        self.assignments
            .get(assignment_id)
            .map(|assignment| assignment.worker.clone())
    }

    /// Checks a report against the current assignment (the fencing token).
    pub(super) fn current(
        &self,
        reference: &pb::AssignmentRef,
    ) -> Result<&AssignmentRecord, Error> {
        match self.assignments.get(&reference.assignment_id) {
            Some(assignment) if assignment.attempt == reference.attempt && !assignment.stalled => {
                Ok(assignment)
            }
            _ => Err(Error::FailedPrecondition(format!(
                "assignment {} attempt {} is not current; drop its work",
                reference.assignment_id, reference.attempt
            ))),
        }
    }

    /// Releases the assignment `reference` names if it is the current attempt.
    pub(super) fn take_current(
        &mut self,
        reference: &pb::AssignmentRef,
    ) -> Result<AssignmentRecord, Error> {
        let stalled = self
            .assignments
            .get(&reference.assignment_id)
            .is_some_and(|assignment| {
                assignment.stalled && assignment.attempt == reference.attempt
            });
        if stalled {
            return Err(self.refuse_stalled(reference));
        }
        let worker = self.current(reference)?.worker.clone();
        self.worker_responsive(&worker);
        self.release(&reference.assignment_id)
            .ok_or_else(|| Error::Internal("current assignment vanished".into()))
    }

    /// Ends an outstanding assignment: its device is free and its task no longer points at it.
    pub(super) fn release(&mut self, assignment_id: &str) -> Option<AssignmentRecord> {
        let assignment = self.remove_assignment(assignment_id)?;
        self.free_device(assignment_id, &assignment);
        self.clear_task_assignment(assignment_id, &assignment);
        Some(assignment)
    }

    /// Drops an assignment from the books (and from placement's running counts).
    pub(super) fn remove_assignment(&mut self, assignment_id: &str) -> Option<AssignmentRecord> {
        let assignment = self.assignments.remove(assignment_id)?;
        if let Some(running) = self.placement.running.as_mut() {
            running.ended(assignment_id);
        }
        Some(assignment)
    }

    pub(super) fn clear_task_assignment(
        &mut self,
        assignment_id: &str,
        assignment: &AssignmentRecord,
    ) {
        if let Some(record) = self.sequences.get_mut(&assignment.sequence_id) {
            let task = record.task_mut(assignment.task);
            if task.assignment_id.as_deref() == Some(assignment_id) {
                task.assignment_id = None;
                task.device_slot = None;
            }
            self.changed.insert(assignment.sequence_id.clone());
        }
    }

    pub(super) fn free_device(&mut self, assignment_id: &str, assignment: &AssignmentRecord) {
        let Some(worker) = self.workers.get_mut(&assignment.worker) else {
            return;
        };
        let Some(device) = worker.devices.get_mut(assignment.device_slot) else {
            return;
        };
        device.reserved_bytes = device
            .reserved_bytes
            .saturating_sub(assignment.reserved_bytes);
        device.running.retain(|id| id != assignment_id);
        self.refresh_device(&assignment.worker.clone(), assignment.device_slot);
    }
}
