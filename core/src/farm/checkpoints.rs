//! How often a segment's worker saves its sampling state, so that an attempt lost to a dead
//! or preempted worker resumes on another from its last checkpoint instead of from noise.
//! Drafts are cheap to redo and skip it unless told otherwise. Part of the pure `farm`.

use reelfarm_common::pb;
use reelfarm_common::sequence::Pass;

use super::{Farm, TaskRef};
use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// Save every this many denoising steps; 0 turns checkpoints off.
    pub every_steps: u32,
    /// Checkpoint draft passes too.
    pub drafts: bool,
}

impl Default for CheckpointPolicy {
    /// Every 10 steps of a final pass: a 50-step Wan final loses at most a fifth of its
    /// steps with its worker, for four saves of its state (about 34 MB each for a 5 s 480p
    /// window: the latents and UniPC's history).
    fn default() -> Self {
        CheckpointPolicy {
            every_steps: 10,
            drafts: false,
        }
    }
}

impl CheckpointPolicy {
    /// The interval for a segment of `steps` steps in `pass` (0: no checkpoints): none when a
    /// run never reaches the first save.
    pub fn every_for(&self, pass: Pass, steps: u32) -> u32 {
        let wanted = self.every_steps > 0 && (pass == Pass::Final || self.drafts);
        if wanted && self.every_steps < steps {
            self.every_steps
        } else {
            0
        }
    }
}

impl Farm {
    pub fn set_checkpoint_policy(&mut self, policy: CheckpointPolicy) {
        self.checkpoints = policy;
    }

    /// A completion's `resumed_from_step` must lie inside the segment's run (a stitch never
    /// resumes): the record and the status show it.
    pub(super) fn check_resumed_step(
        &self,
        reference: &pb::AssignmentRef,
        resumed_from_step: u32,
    ) -> Result<(), Error> {
        if resumed_from_step == 0 {
            return Ok(());
        }
        let Some(assignment) = self.assignments.get(&reference.assignment_id) else {
            return Ok(());
        };
        let steps = match (assignment.task, self.sequences.get(&assignment.sequence_id)) {
            (TaskRef::Segment(index), Some(record)) => record.plan.segments[index].steps,
            _ => 0,
        };
        if resumed_from_step >= steps {
            return Err(Error::InvalidArgument(format!(
                "resumed_from_step: {resumed_from_step} is not a step partway through this task's {steps}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finals_checkpoint_and_drafts_only_when_told() {
        let policy = CheckpointPolicy::default();
        assert_eq!(policy.every_for(Pass::Final, 24), 10);
        assert_eq!(policy.every_for(Pass::Draft, 24), 0);
        assert_eq!(policy.every_for(Pass::Final, 10), 0, "never reaches a save");
        let drafts = CheckpointPolicy {
            every_steps: 2,
            drafts: true,
        };
        assert_eq!(drafts.every_for(Pass::Draft, 8), 2);
        let off = CheckpointPolicy {
            every_steps: 0,
            drafts: true,
        };
        assert_eq!(off.every_for(Pass::Final, 50), 0);
    }
}
