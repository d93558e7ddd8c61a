//! Results bound to attempts, and their repair: a completion may only hand in objects under
//! its own attempt's keys, with their checksums, and figures its device allows; a task that later reads one of them and
//! finds it corrupt makes its producer render again as a new attempt (with its own budget)
//! while it waits, instead of failing against the same bad bytes until the sequence dies.
//! Part of the `farm` state machine; pure like the rest of it.

use reelfarm_common::{keys, pb};

use super::{
    Action, FailureClass, Farm, FarmEvent, SequenceState, StoredObject, TaskRef, TaskState,
};
use crate::Error;

impl Farm {
    /// Every key the attempt behind `reference` may write.
    pub(super) fn attempt_keys(&self, reference: &pb::AssignmentRef) -> Option<Vec<String>> {
        let assignment = self.assignments.get(&reference.assignment_id)?;
        let record = self.sequences.get(&assignment.sequence_id)?;
        Some(match assignment.task {
            TaskRef::Segment(index) => {
                keys::attempt_objects(&record.attempt_prefix(index, assignment.attempt)).to_vec()
            }
            TaskRef::Stitch => vec![
                keys::final_video(&record.id),
                keys::final_report(&record.id),
                keys::final_timeline(&record.id),
                keys::final_contact_sheet(&record.id),
            ],
        })
    }

    /// The key the attempt behind `reference` must report as its result, if it is current.
    pub fn expected_output_key(&self, reference: &pb::AssignmentRef) -> Option<String> {
        let assignment = self.assignments.get(&reference.assignment_id)?;
        let record = self.sequences.get(&assignment.sequence_id)?;
        Some(match assignment.task {
            TaskRef::Segment(index) => {
                keys::segment_video(&record.attempt_prefix(index, assignment.attempt))
            }
            TaskRef::Stitch => keys::final_video(&record.id),
        })
    }

    /// Refuses objects outside the attempt's own keys or without a well-formed checksum.
    pub(super) fn check_objects(
        &self,
        reference: &pb::AssignmentRef,
        objects: &[StoredObject],
    ) -> Result<(), Error> {
        let Some(allowed) = self.attempt_keys(reference) else {
            // Not current: the fencing check that follows refuses it.
            return Ok(());
        };
        for object in objects {
            if !allowed.contains(&object.key) {
                return Err(Error::InvalidArgument(format!(
                    "objects: {:?} is not a key of assignment {} (its keys: {})",
                    object.key,
                    reference.assignment_id,
                    allowed.join(", ")
                )));
            }
            let well_formed = object.crc32c.len() == 8
                && object
                    .crc32c
                    .bytes()
                    .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
            if !well_formed {
                return Err(Error::InvalidArgument(format!(
                    "objects: crc32c {:?} of {} must be 8 lowercase hex digits",
                    object.crc32c, object.key
                )));
            }
        }
        Ok(())
    }

    /// Refuses a peak the attempt's device cannot have reached: one absurd figure would make
    /// its segment's shape look larger than any GPU, unplaceable for everyone after it.
    pub(super) fn check_peak(
        &self,
        reference: &pb::AssignmentRef,
        peak_memory_bytes: u64,
    ) -> Result<(), Error> {
        let Some(assignment) = self.assignments.get(&reference.assignment_id) else {
            return Ok(());
        };
        let device = self
            .workers
            .get(&assignment.worker)
            .and_then(|worker| worker.devices.get(assignment.device_slot));
        match device {
            Some(device) if peak_memory_bytes > device.device.memory_total_bytes => {
                Err(Error::InvalidArgument(format!(
                    "peak_memory_bytes: {peak_memory_bytes} is more than the {} bytes of device {} of worker {}, where it ran",
                    device.device.memory_total_bytes, device.device.index, assignment.worker
                )))
            }
            _ => Ok(()),
        }
    }

    /// The attempt behind `reference` read inputs that failed their checksums. Each input a
    /// finished segment produced is rendered again (a repair, budgeted like attempts) and the
    /// reader waits for it without using up its own attempts. Inputs nobody produced (a
    /// reference image) fail the attempt as a storage error.
    pub fn input_corrupt(
        &mut self,
        reference: &pb::AssignmentRef,
        corrupt_keys: &[String],
        message: &str,
        now: f64,
    ) -> Result<Vec<Action>, Error> {
        let assignment = self.take_current(reference)?;
        let max_attempts = self.max_attempts;
        let Some(record) = self.sequences.get_mut(&assignment.sequence_id) else {
            return Ok(Vec::new());
        };
        let producers: Vec<usize> = record
            .segments
            .iter()
            .enumerate()
            .filter(|(_, task)| {
                task.state == TaskState::Done
                    && task
                        .objects
                        .iter()
                        .any(|object| corrupt_keys.contains(&object.key))
            })
            .map(|(index, _)| index)
            .collect();
        let reader = record.task(assignment.task);
        if producers.is_empty()
            || reader.state != TaskState::Running
            || reader.attempt != assignment.attempt
        {
            return Ok(self.end_attempt(&assignment, FailureClass::StorageError, message, now));
        }
        self.changed.insert(record.id.clone());
        self.events.push(FarmEvent::Failed {
            stitch: assignment.task == TaskRef::Stitch,
            class: FailureClass::CorruptInput,
        });
        let names: Vec<String> = producers
            .iter()
            .map(|&index| record.plan.segments[index].id.clone())
            .collect();
        let reader = record.task_mut(assignment.task);
        reader.state = TaskState::Blocked;
        reader.excused_attempts += 1;
        reader.error = Some(format!(
            "waiting for {} to be rendered again: {message}",
            names.join(", ")
        ));
        if assignment.task == TaskRef::Stitch {
            record.state = SequenceState::Rendering;
        }
        for index in producers {
            let name = record.plan.segments[index].id.clone();
            let task = &mut record.segments[index];
            task.repairs += 1;
            if task.repairs > max_attempts {
                task.state = TaskState::Failed;
                let error = format!(
                    "segment {name}: its stored result failed its checksum {} times; last: {message}",
                    task.repairs
                );
                let id = record.id.clone();
                return Ok(self.fail_sequence(&id, error, now));
            }
            task.state = TaskState::Ready;
            task.ready_since_unix_s = now;
            task.output_key = None;
            // A reused result is rendered anew under this sequence's own keys.
            task.reused_from = None;
            task.error = Some(format!("rendering again: {message}"));
            // Continuations that have not started wait for the new result.
            for (successor, planned) in record.plan.segments.iter().enumerate() {
                if planned.continues_from == Some(index)
                    && record.segments[successor].state == TaskState::Ready
                {
                    record.segments[successor].state = TaskState::Blocked;
                }
            }
        }
        Ok(Vec::new())
    }
}
