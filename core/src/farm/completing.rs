//! How results arrive: a worker's completion is checked (its objects, resume step and peak),
//! recorded, and moves the sequence on: continuations become ready, the stitch follows the
//! last segment, and a stitch's seam scores go to seam QA before the sequence ends. Part of
//! the `farm` state machine; pure like the rest of it.

use reelfarm_common::pb;

use super::{
    Action, Farm, FarmEvent, SequenceState, StoredObject, TaskRef, TaskState, finite_phases,
};
use crate::Error;

/// What a worker reports with a finished task.
#[derive(Debug, Clone, Default)]
pub struct Completion {
    /// What the attempt wrote, with checksums; each one of the attempt's own keys.
    pub objects: Vec<StoredObject>,
    pub phases: Vec<pb::TimedPhase>,
    pub peak_memory_bytes: u64,
    /// The step an earlier attempt's checkpoint let it start from (0: from noise).
    pub resumed_from_step: u32,
    /// A stitch's continuity joins, scored.
    pub seams: Vec<pb::SeamScore>,
    /// What a hosted segment's clip cost (recorded within 0 and its planned price).
    pub cost_usd: f64,
}

impl Farm {
    /// A task's result. `objects` are what the attempt wrote, with their checksums; each
    /// must be one of the attempt's own keys. The result's key is derived, not reported.
    pub fn complete(
        &mut self,
        reference: &pb::AssignmentRef,
        objects: Vec<StoredObject>,
        phases: Vec<pb::TimedPhase>,
        peak_memory_bytes: u64,
        now: f64,
    ) -> Result<Vec<Action>, Error> {
        let completion = Completion {
            objects,
            phases,
            peak_memory_bytes,
            ..Completion::default()
        };
        self.complete_with(reference, completion, now)
    }

    /// A task's result with everything a worker reports beside its objects. Accepting a
    /// segment deletes its checkpoint; a stitch's seam scores go to seam QA, which may send
    /// joins back to rendering instead of ending the sequence.
    pub fn complete_with(
        &mut self,
        reference: &pb::AssignmentRef,
        completion: Completion,
        now: f64,
    ) -> Result<Vec<Action>, Error> {
        let Completion {
            objects,
            phases,
            peak_memory_bytes,
            resumed_from_step,
            seams,
            cost_usd,
        } = completion;
        self.check_objects(reference, &objects)?;
        let cost_usd = self.priced_cost(reference, cost_usd);
        self.check_resumed_step(reference, resumed_from_step)?;
        self.check_peak(reference, peak_memory_bytes)?;
        let assignment = self.take_current(reference)?;
        let record = self
            .sequences
            .get_mut(&assignment.sequence_id)
            .ok_or_else(|| Error::Internal("assignment of a missing sequence".into()))?;
        self.changed.insert(record.id.clone());
        if record.task(assignment.task).state != TaskState::Running {
            // Cancelled while it ran: the result is not wanted.
            return Ok(Vec::new());
        }
        let output_key = record.output_key(assignment.task);
        let superseded = match assignment.task {
            TaskRef::Segment(index) => (1..assignment.attempt)
                .flat_map(|attempt| {
                    reelfarm_common::keys::attempt_objects(&record.attempt_prefix(index, attempt))
                })
                .chain([reelfarm_common::keys::segment_checkpoint(
                    &record.segment_prefix(index),
                )])
                .collect(),
            TaskRef::Stitch => Vec::new(),
        };
        let phases = finite_phases(phases);
        let device_seconds = reelfarm_common::busy_seconds(&phases);
        record.phases.extend(phases);
        let video_seconds = match assignment.task {
            TaskRef::Segment(index) => {
                self.placement.learn_peak(record, index, peak_memory_bytes);
                record.plan.segments[index].timeline_frames as f64 / f64::from(record.sequence.fps)
            }
            TaskRef::Stitch => 0.0,
        };
        let model = match assignment.task {
            TaskRef::Segment(index) => record.plan.segments[index].model.clone(),
            TaskRef::Stitch => record.sequence.model.clone(),
        };
        self.events.push(FarmEvent::Completed {
            stitch: assignment.task == TaskRef::Stitch,
            model: model.clone(),
            video_seconds,
            device_seconds,
            owner: record.sequence.owner.clone(),
            cost_usd,
        });
        let mut actions = Vec::new();
        if !superseded.is_empty() {
            actions.push(Action::DeleteObjects { keys: superseded });
        }
        if let TaskRef::Segment(index) = assignment.task
            && let Some(key) = &record.segments[index].cache_key
        {
            let entry = crate::cache::CacheEntry::new(
                key,
                &record.attempt_prefix(index, assignment.attempt),
                &objects,
                &model,
                now,
            );
            actions.push(Action::WriteObject {
                key: crate::cache::entry_key(key),
                bytes: entry.to_bytes(),
            });
        }
        let task = record.task_mut(assignment.task);
        task.state = TaskState::Done;
        task.output_key = Some(output_key);
        task.objects = objects;
        task.reused_from = None;
        task.resumed_from_step = resumed_from_step;
        task.peak_memory_bytes = peak_memory_bytes;
        task.cost_usd += cost_usd;
        // The clip is ours now: a later render of this segment is a new job.
        task.remote_job_id = None;
        task.progress_done = task.progress_total;
        task.error = None;
        match assignment.task {
            TaskRef::Segment(index) => {
                for (successor, planned) in record.plan.segments.iter().enumerate() {
                    if planned.continues_from == Some(index)
                        && record.segments[successor].state == TaskState::Blocked
                    {
                        record.segments[successor].state = TaskState::Ready;
                        record.segments[successor].ready_since_unix_s = now;
                    }
                }
                if record
                    .segments
                    .iter()
                    .all(|segment| segment.state == TaskState::Done)
                {
                    record.stitch.state = TaskState::Ready;
                    record.stitch.ready_since_unix_s = now;
                    record.state = SequenceState::Stitching;
                }
            }
            TaskRef::Stitch if let Some(stale) = record.judge_seams(&seams, now) => {
                if !stale.is_empty() {
                    actions.push(Action::DeleteObjects { keys: stale });
                }
            }
            TaskRef::Stitch => {
                record.state = SequenceState::Succeeded;
                record.finished_unix_s = Some(now);
                self.events.push(FarmEvent::SequenceEnded {
                    sequence: record.id.clone(),
                    state: SequenceState::Succeeded,
                    seconds: now - record.submitted_unix_s,
                });
            }
        }
        Ok(actions)
    }
}
