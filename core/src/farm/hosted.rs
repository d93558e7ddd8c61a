//! Hosted segments in the farm: the remote job a worker created is recorded on its task
//! (durably, before the worker polls it) so no later attempt pays for a second one, and
//! what a completed clip cost is checked against the plan's price. Pure like the rest of
//! the `farm` state machine.

use reelfarm_common::pb;

use super::{Farm, TaskRef, TaskState};
use crate::Error;

/// The longest remote job id recorded (OpenAI's are `video_` and 32 hex digits).
pub const MAX_REMOTE_JOB_ID: usize = 256;

impl Farm {
    /// Records the remote job of a hosted segment's current attempt. The caller makes it
    /// durable before it answers the worker, which polls only after that answer.
    pub fn record_remote_job(
        &mut self,
        reference: &pb::AssignmentRef,
        remote_job_id: &str,
    ) -> Result<(), Error> {
        if remote_job_id.is_empty()
            || remote_job_id.len() > MAX_REMOTE_JOB_ID
            || remote_job_id
                .chars()
                .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(Error::InvalidArgument(format!(
                "remote_job_id: must be 1-{MAX_REMOTE_JOB_ID} printable characters without spaces"
            )));
        }
        let assignment = self.current(reference)?.clone();
        let TaskRef::Segment(index) = assignment.task else {
            return Err(Error::InvalidArgument(
                "remote_job_id: a stitch has no remote job".into(),
            ));
        };
        let record = self
            .sequences
            .get_mut(&assignment.sequence_id)
            .ok_or_else(|| Error::Internal("assignment of a missing sequence".into()))?;
        if record.plan.segments[index].clip_seconds == 0 {
            return Err(Error::InvalidArgument(format!(
                "remote_job_id: segment {} renders with a local model",
                record.plan.segments[index].id
            )));
        }
        let task = &mut record.segments[index];
        if task.state != TaskState::Running {
            return Err(Error::FailedPrecondition(
                "the segment is no longer running".into(),
            ));
        }
        match &task.remote_job_id {
            Some(known) if known != remote_job_id => {
                return Err(Error::FailedPrecondition(format!(
                    "remote_job_id: this segment already has remote job {known}; poll it"
                )));
            }
            Some(_) => return Ok(()),
            None => task.remote_job_id = Some(remote_job_id.to_string()),
        }
        self.changed.watch.insert(assignment.sequence_id);
        Ok(())
    }

    /// The worker found the current attempt's remote job unusable (it failed, is gone, or
    /// its clip cannot be read): the next attempt creates a new one. Any other failure keeps
    /// the job, which may still finish, for the next attempt to poll.
    pub fn forget_remote_job(&mut self, reference: &pb::AssignmentRef) -> Result<(), Error> {
        let assignment = self.current(reference)?.clone();
        if let TaskRef::Segment(index) = assignment.task
            && let Some(record) = self.sequences.get_mut(&assignment.sequence_id)
        {
            record.segments[index].remote_job_id = None;
            self.changed.watch.insert(assignment.sequence_id);
        }
        Ok(())
    }

    /// What a completion's reported `cost_usd` is recorded as: within 0 and the plan's price
    /// for the segment (a stitch and a local segment cost nothing). A worker whose catalog
    /// prices differently never costs a paid clip its acceptance.
    pub(super) fn priced_cost(&self, reference: &pb::AssignmentRef, reported: f64) -> f64 {
        let Some(assignment) = self.assignments.get(&reference.assignment_id) else {
            return 0.0;
        };
        let priced = match assignment.task {
            TaskRef::Segment(index) => self
                .sequences
                .get(&assignment.sequence_id)
                .map_or(0.0, |record| record.plan.segments[index].cost_usd),
            TaskRef::Stitch => 0.0,
        };
        if reported.is_finite() {
            reported.clamp(0.0, priced)
        } else {
            0.0
        }
    }
}
