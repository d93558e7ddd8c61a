//! Deadlines for running work: a connected worker whose task stops advancing (a hung
//! process, a stuck driver) would otherwise hold its segment forever. Each running attempt
//! gets a deadline for its next progress report, derived from the plan's estimate; past it,
//! the task is taken back (fenced off: the late attempt's reports are refused) and placed
//! again. Part of the `farm` state machine; pure like the rest of it (`now` is passed in).

use reelfarm_common::pb;

use super::{Action, AssignmentRecord, FailureClass, Farm, TaskRef};
use crate::Error;

/// How long a running task may go without progress.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StallPolicy {
    /// The shortest deadline whatever the estimate says; 0 turns deadlines off.
    pub floor_seconds: f64,
    /// The deadline is this many times the estimated time to the next report (a model load
    /// plus one step on the task's device).
    pub factor: f64,
}

impl Default for StallPolicy {
    /// Ten minutes at least: estimates are for a GPU, and a first step waits for the model
    /// to load; a hung worker is still noticed well within the hour.
    fn default() -> Self {
        StallPolicy {
            floor_seconds: 600.0,
            factor: 10.0,
        }
    }
}

/// What a stitch is expected to take between reports, in seconds on a speed-1.0 device.
const STITCH_REPORT_SECONDS: f64 = 5.0;

impl Farm {
    pub fn set_stall_policy(&mut self, policy: StallPolicy) {
        self.stall = policy;
    }

    /// Seconds the attempt may go without progress before it is taken back.
    pub fn stall_deadline_seconds(&self, assignment: &AssignmentRecord) -> f64 {
        let speed = self
            .workers
            .get(&assignment.worker)
            .and_then(|worker| worker.devices.get(assignment.device_slot))
            .map(|device| device.device.speed)
            .filter(|speed| *speed > 0.0)
            .unwrap_or(1.0);
        let per_report =
            self.sequences
                .get(&assignment.sequence_id)
                .map_or(STITCH_REPORT_SECONDS, |record| match assignment.task {
                    TaskRef::Segment(index) => {
                        let planned = &record.plan.segments[index];
                        record.plan.load_seconds
                            + planned.work_seconds / f64::from(planned.steps.max(1))
                    }
                    TaskRef::Stitch => STITCH_REPORT_SECONDS,
                });
        self.stall
            .floor_seconds
            .max(self.stall.factor * per_report / speed)
    }

    /// Whether the attempt's clock runs, it has not been taken back yet, and its deadline
    /// has passed.
    fn is_overdue(&self, assignment: &AssignmentRecord, now: f64) -> bool {
        !assignment.stalled
            && assignment.last_progress_unix_s > 0.0
            && now - assignment.last_progress_unix_s > self.stall_deadline_seconds(assignment)
    }

    /// Starts the clock of attempts that have none yet (just placed, or restored by a new
    /// leader); true when some attempt is past its deadline.
    pub fn check_stalls(&mut self, now: f64) -> bool {
        if self.stall.floor_seconds <= 0.0 {
            return false;
        }
        let mut any = false;
        let ids: Vec<String> = self.assignments.keys().cloned().collect();
        for id in ids {
            let assignment = &self.assignments[&id];
            if assignment.stalled {
                continue;
            }
            if assignment.last_progress_unix_s <= 0.0 {
                if let Some(assignment) = self.assignments.get_mut(&id) {
                    assignment.last_progress_unix_s = now;
                }
            } else if self.is_overdue(assignment, now) {
                any = true;
            }
        }
        any
    }

    /// Takes back every attempt past its deadline: its task goes back to the queue (within
    /// its retry budget), the worker is told to stop and gets no new work until it shows
    /// life. The attempt keeps its device
    /// reservation until the worker reports back or is gone, since it may still hold the
    /// memory.
    pub fn take_back_stalled(&mut self, now: f64) -> Vec<Action> {
        if self.stall.floor_seconds <= 0.0 {
            return Vec::new();
        }
        let overdue: Vec<(String, f64)> = self
            .assignments
            .iter()
            .filter(|(_, assignment)| self.is_overdue(assignment, now))
            .map(|(id, assignment)| (id.clone(), now - assignment.last_progress_unix_s))
            .collect();
        let mut actions = Vec::new();
        for (id, silent) in overdue {
            let Some(assignment) = self.assignments.get_mut(&id) else {
                continue;
            };
            assignment.stalled = true;
            let assignment = assignment.clone();
            if let Some(worker) = self.workers.get_mut(&assignment.worker) {
                worker.stalled = true;
                self.pool_changed();
            }
            self.clear_task_assignment(&id, &assignment);
            actions.extend(self.end_attempt(
                &assignment,
                FailureClass::Stalled,
                &format!(
                    "no progress from worker {} for {silent:.0} s (deadline {:.0} s); placed again",
                    assignment.worker,
                    self.stall_deadline_seconds(&assignment)
                ),
                now,
            ));
            actions.push(Action::Cancel {
                worker: assignment.worker.clone(),
                assignment: pb::AssignmentRef {
                    assignment_id: id,
                    attempt: assignment.attempt,
                },
                // Taken back, not unwanted: the next attempt polls a hosted segment's job.
                discard: false,
            });
        }
        actions
    }

    /// The worker answered (progress or a result): it takes work again.
    pub(super) fn worker_responsive(&mut self, worker: &str) {
        if let Some(record) = self.workers.get_mut(worker)
            && record.stalled
        {
            record.stalled = false;
            self.pool_changed();
        }
    }

    /// A report from an attempt that was taken back: its device is free now, and the
    /// worker is told to drop the work.
    pub(super) fn refuse_stalled(&mut self, reference: &pb::AssignmentRef) -> Error {
        if let Some(assignment) = self.remove_assignment(&reference.assignment_id) {
            self.free_device(&reference.assignment_id, &assignment);
            self.worker_responsive(&assignment.worker);
        }
        Error::FailedPrecondition(format!(
            "assignment {} attempt {} was taken back after no progress within its deadline; drop its work",
            reference.assignment_id, reference.attempt
        ))
    }
}
