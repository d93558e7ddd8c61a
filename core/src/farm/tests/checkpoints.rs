//! Checkpoints as the farm sees them: which assignments carry an interval and a key, what a
//! completion may claim it resumed from, and that accepting a segment deletes its checkpoint.

use super::*;

fn final_farm(steps: u32) -> Farm {
    let mut farm = farm_of_workers(1);
    let mut sequence = sequence(&[Transition::Cut]);
    sequence.pass = Pass::Final;
    sequence.steps = Some(steps);
    let plan = planner::plan(&sequence, &reelfarm_tiny());
    farm.submit("seq".into(), None, sequence, plan, 0.0);
    farm
}

#[test]
fn a_final_segment_is_told_where_and_how_often_to_checkpoint_a_draft_is_not() {
    let mut farm = final_farm(24);
    let (_, task, _) = segment_assignment(&farm.dispatch());
    assert_eq!(task.checkpoint_every, 10);
    assert_eq!(
        task.checkpoint_key,
        "sequences/seq/segments/s000-00.checkpoint"
    );

    let mut drafts = farm_with(&[Transition::Cut], 1);
    let (_, task, _) = segment_assignment(&drafts.dispatch());
    assert_eq!(
        (task.checkpoint_every, task.checkpoint_key.as_str()),
        (0, "")
    );

    let mut off = final_farm(24);
    off.set_checkpoint_policy(CheckpointPolicy {
        every_steps: 0,
        drafts: true,
    });
    let (_, task, _) = segment_assignment(&off.dispatch());
    assert_eq!(task.checkpoint_every, 0);
}

#[test]
fn a_resumed_completion_is_recorded_and_its_checkpoint_deleted() {
    let mut farm = final_farm(24);
    let (_, reference) = assigned(&farm.dispatch())[0].clone();
    let resumed = |step| Completion {
        resumed_from_step: step,
        ..Completion::default()
    };
    let refused = farm.complete_with(&reference, resumed(24), 1.0);
    assert!(
        matches!(&refused, Err(Error::InvalidArgument(message)) if message.contains("resumed_from_step")),
        "{refused:?}"
    );
    let actions = farm.complete_with(&reference, resumed(10), 1.0).unwrap();
    assert!(actions.iter().any(|action| matches!(
        action,
        Action::DeleteObjects { keys } if keys == &["sequences/seq/segments/s000-00.checkpoint".to_string()]
    )));
    let record = &farm.sequences["seq"];
    assert_eq!(record.segments[0].resumed_from_step, 10);
    let status = crate::snapshot::sequence_status(record);
    assert_eq!(status.segments[0].resumed_from_step, 10);
}
