//! How sequences end: cancelled or failed (running tasks told to stop, keeping their memory
//! until they report back), and deleted once finished, by request or by retention. Part of
//! the `farm` state machine; pure like the rest of it.

use reelfarm_common::{keys, pb};

use super::{Action, Farm, FarmEvent, SequenceId, SequenceState, TaskState};
use crate::Error;

impl Farm {
    /// Forgets a finished sequence (its records are deleted with the next commit) and
    /// returns every object it may have left in the store: reference images, each attempt
    /// of each segment, and the final outputs.
    pub fn delete_sequence(&mut self, id: &str) -> Result<Vec<Action>, Error> {
        if self.quarantined.remove(id).is_some() {
            self.changed.insert(id.to_string());
            return Ok(Vec::new());
        }
        let record = self.sequence(id)?;
        if !record.state.is_terminal() {
            return Err(Error::FailedPrecondition(format!(
                "sequence {id} is {}; cancel it first (`reelfarm cancel {id}`), then delete it",
                crate::records::sequence_state_name(record.state)
            )));
        }
        let mut keys: Vec<String> = (0..record.sequence.shots.len() as u32)
            .map(|shot| keys::reference_image(id, shot))
            .collect();
        for (index, task) in record.segments.iter().enumerate() {
            // Left by a cancelled or failed render, or saved late by a fenced-off attempt.
            keys.push(keys::segment_checkpoint(&record.segment_prefix(index)));
            for attempt in 1..=task.attempt {
                keys.extend(keys::attempt_objects(
                    &record.attempt_prefix(index, attempt),
                ));
            }
        }
        keys.extend([
            keys::final_video(id),
            keys::final_report(id),
            keys::final_timeline(id),
            keys::final_contact_sheet(id),
        ]);
        if let Some(key) = record.idempotency_key.clone() {
            self.idempotency_keys.remove(&key);
        }
        // A finished sequence holds no assignment, except one told to stop and not yet
        // reported back: that one keeps its device until it does.
        self.sequences.remove(id);
        self.changed.insert(id.to_string());
        Ok(vec![Action::DeleteObjects { keys }])
    }

    /// Finished sequences that ended before `cutoff_unix_s` (for retention).
    pub fn finished_before(&self, cutoff_unix_s: f64) -> Vec<SequenceId> {
        self.sequences
            .values()
            .filter(|record| {
                record.state.is_terminal()
                    && record
                        .finished_unix_s
                        .is_some_and(|finished| finished < cutoff_unix_s)
            })
            .map(|record| record.id.clone())
            .collect()
    }

    /// Cancels a sequence; running tasks are told to stop and keep their device until they
    /// report back, so memory is never handed out twice.
    pub fn cancel(&mut self, id: &str, now: f64) -> Result<Vec<Action>, Error> {
        if self.quarantined.contains_key(id) {
            // Already failed; nothing of it runs.
            return Ok(Vec::new());
        }
        let record = self
            .sequences
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(format!("sequence {id} not found")))?;
        if record.state.is_terminal() {
            return Ok(Vec::new());
        }
        Ok(self.end_sequence(id, SequenceState::Cancelled, None, now))
    }

    /// Ends the sequence as failed with `error` and stops its running tasks.
    pub(super) fn fail_sequence(&mut self, id: &str, error: String, now: f64) -> Vec<Action> {
        self.end_sequence(id, SequenceState::Failed, Some(error), now)
    }

    /// Puts the sequence in its final `state` and tells its running tasks to stop.
    fn end_sequence(
        &mut self,
        id: &str,
        state: SequenceState,
        error: Option<String>,
        now: f64,
    ) -> Vec<Action> {
        let Some(record) = self.sequences.get_mut(id) else {
            return Vec::new();
        };
        record.state = state;
        record.finished_unix_s = Some(now);
        if error.is_some() {
            record.error = error;
        }
        self.events.push(FarmEvent::SequenceEnded {
            sequence: id.to_string(),
            state,
            seconds: now - record.submitted_unix_s,
        });
        self.changed.insert(id.to_string());
        self.stop_running_tasks(id)
    }

    pub(super) fn stop_running_tasks(&mut self, id: &str) -> Vec<Action> {
        let Some(record) = self.sequences.get_mut(id) else {
            return Vec::new();
        };
        for task in record
            .segments
            .iter_mut()
            .chain(std::iter::once(&mut record.stitch))
        {
            if !matches!(task.state, TaskState::Done | TaskState::Failed) {
                task.state = TaskState::Cancelled;
            }
        }
        let mut actions: Vec<Action> = self
            .assignments
            .iter()
            .filter(|(_, assignment)| assignment.sequence_id == id)
            .map(|(assignment_id, assignment)| Action::Cancel {
                worker: assignment.worker.clone(),
                assignment: pb::AssignmentRef {
                    assignment_id: assignment_id.clone(),
                    attempt: assignment.attempt,
                },
                discard: true,
            })
            .collect();
        actions.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        actions
    }
}
