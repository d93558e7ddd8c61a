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

    /// A completion's `cost_usd` is at most what the plan prices the segment at (a stitch
    /// and a local segment cost nothing).
    pub(super) fn check_cost(
        &self,
        reference: &pb::AssignmentRef,
        cost_usd: f64,
    ) -> Result<(), Error> {
        if cost_usd == 0.0 {
            return Ok(());
        }
        // A stale assignment is refused (and its device freed) by the completion itself.
        let Some(assignment) = self.assignments.get(&reference.assignment_id) else {
            return Ok(());
        };
        let priced = match assignment.task {
            TaskRef::Segment(index) => self
                .sequences
                .get(&assignment.sequence_id)
                .map_or(0.0, |record| record.plan.segments[index].cost_usd),
            TaskRef::Stitch => 0.0,
        };
        if !cost_usd.is_finite() || cost_usd < 0.0 || cost_usd > priced * (1.0 + 1e-9) + 1e-9 {
            return Err(Error::InvalidArgument(format!(
                "cost_usd: {cost_usd} is not within 0..={priced} (the segment's price)"
            )));
        }
        Ok(())
    }
}
