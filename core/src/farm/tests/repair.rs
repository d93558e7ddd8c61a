//! Results bound to attempts: foreign objects refused, corrupt inputs repaired.

use reelfarm_common::sequence::Transition;

use super::*;

/// What an honest worker hands in: every object of its attempt, with a checksum.
fn objects_of(farm: &Farm, reference: &pb::AssignmentRef, crc32c: &str) -> Vec<StoredObject> {
    farm.attempt_keys(reference)
        .unwrap()
        .into_iter()
        .map(|key| StoredObject {
            key,
            crc32c: crc32c.into(),
            size: 1,
        })
        .collect()
}

#[test]
fn a_completion_may_only_hand_in_objects_under_its_own_attempt_s_keys() {
    let mut farm = farm_with(&[Transition::Cut], 1);
    let (_, reference) = assigned(&farm.dispatch())[0].clone();
    let forged = vec![StoredObject {
        key: "sequences/other/final.mp4".into(),
        crc32c: "0000abcd".into(),
        size: 1,
    }];
    let refused = farm.complete(&reference, forged, Vec::new(), 0, 1.0);
    assert!(
        matches!(refused, Err(Error::InvalidArgument(message)) if message.contains("not a key of assignment"))
    );
    let mut bad_checksum = objects_of(&farm, &reference, "0000abcd");
    bad_checksum[0].crc32c = "NOTHEX!!".into();
    assert!(
        farm.complete(&reference, bad_checksum, Vec::new(), 0, 1.0)
            .is_err()
    );
    // A peak beyond its 16 GiB device is refused: it would make the shape unplaceable.
    let objects = objects_of(&farm, &reference, "0000abcd");
    let refused = farm.complete(&reference, objects.clone(), Vec::new(), u64::MAX, 1.0);
    assert!(
        matches!(&refused, Err(Error::InvalidArgument(message)) if message.starts_with("peak_memory_bytes: 18446744073709551615 is more than the 17179869184 bytes")),
        "{refused:?}"
    );
    // Still current: the honest completion goes through, under the derived key.
    farm.complete(&reference, objects, Vec::new(), 16 << 30, 1.0)
        .unwrap();
    let task = &farm.sequences["seq"].segments[0];
    assert_eq!(
        task.output_key.as_deref(),
        Some("sequences/seq/segments/s000-00.a1.mp4")
    );
    assert_eq!(task.objects.len(), 3);
}

#[test]
fn a_corrupt_segment_found_by_the_stitch_is_rendered_again_and_the_sequence_succeeds() {
    let mut farm = farm_with(&[Transition::Cut, Transition::Continue], 1);
    // Segment 0, then its continuation 1 (conditioned on 0's recorded handoff frame).
    let (_, first) = assigned(&farm.dispatch())[0].clone();
    let objects = objects_of(&farm, &first, "00000001");
    farm.complete(&first, objects, Vec::new(), 0, 1.0).unwrap();
    let (_, task, _) = segment_assignment(&farm.dispatch());
    assert_eq!(
        task.condition_key,
        "sequences/seq/segments/s000-00.a1.handoff.png"
    );
    assert_eq!(task.condition_crc32c, "00000001");
    let second = farm
        .assignments
        .keys()
        .find(|id| id.contains("s001"))
        .cloned()
        .unwrap();
    let second = pb::AssignmentRef {
        assignment_id: second,
        attempt: 1,
    };
    let objects = objects_of(&farm, &second, "00000002");
    farm.complete(&second, objects, Vec::new(), 0, 2.0).unwrap();
    let (_, stitch) = assigned(&farm.dispatch())[0].clone();
    // The stitch reads segment 0's video and finds it does not match its checksum.
    let corrupt = vec!["sequences/seq/segments/s000-00.a1.mp4".to_string()];
    assert!(
        farm.input_corrupt(&stitch, &corrupt, "crc32c mismatch", 3.0)
            .unwrap()
            .is_empty()
    );
    let record = &farm.sequences["seq"];
    assert_eq!(record.state, SequenceState::Rendering);
    assert_eq!(record.stitch.state, TaskState::Blocked);
    assert_eq!(record.segments[0].state, TaskState::Ready);
    assert_eq!(record.segments[0].repairs, 1);
    assert_eq!(
        record.segments[1].state,
        TaskState::Done,
        "its continuation keeps its result"
    );
    // Segment 0 again, as attempt 2 under its own keys; attempt 1's objects are deleted.
    let (_, repaired) = assigned(&farm.dispatch())[0].clone();
    assert_eq!(repaired.assignment_id, "seq/s000-00/2");
    let objects = objects_of(&farm, &repaired, "00000003");
    let actions = farm
        .complete(&repaired, objects, Vec::new(), 0, 4.0)
        .unwrap();
    assert_eq!(
        actions,
        vec![Action::DeleteObjects {
            keys: vec![
                "sequences/seq/segments/s000-00.a1.mp4".into(),
                "sequences/seq/segments/s000-00.a1.json".into(),
                "sequences/seq/segments/s000-00.a1.handoff.png".into(),
                "sequences/seq/segments/s000-00.checkpoint".into(),
            ]
        }]
    );
    // The stitch runs again on exactly what was accepted, and its earlier attempt is excused.
    let placed = farm.dispatch();
    let stitch_task = placed
        .iter()
        .find_map(|action| match action {
            Action::Assign { assignment, .. } => match &assignment.task {
                Some(pb::assignment::Task::Stitch(task)) => Some(task.clone()),
                _ => None,
            },
            _ => None,
        })
        .expect("the stitch is placed again");
    assert_eq!(
        stitch_task.parts[0].video_key,
        "sequences/seq/segments/s000-00.a2.mp4"
    );
    assert_eq!(stitch_task.parts[0].video_crc32c, "00000003");
    assert_eq!(stitch_task.parts[1].video_crc32c, "00000002");
    let record = &farm.sequences["seq"];
    assert_eq!(record.stitch.excused_attempts, 1);
    let (_, stitch) = assigned(&placed)[0].clone();
    complete(&mut farm, &stitch);
    assert_eq!(farm.sequences["seq"].state, SequenceState::Succeeded);
}

#[test]
fn a_result_corrupt_again_and_again_fails_the_sequence_after_its_repair_budget() {
    let mut farm = farm_with(&[Transition::Cut], 1);
    let (_, mut reference) = assigned(&farm.dispatch())[0].clone();
    for round in 0..=3 {
        let objects = objects_of(&farm, &reference, "00000001");
        let video = objects[0].key.clone();
        farm.complete(&reference, objects, Vec::new(), 0, 1.0)
            .unwrap();
        let (_, stitch) = assigned(&farm.dispatch())[0].clone();
        farm.input_corrupt(&stitch, &[video], "mismatch", 2.0)
            .unwrap();
        if round < 3 {
            reference = assigned(&farm.dispatch())[0].1.clone();
        }
    }
    let record = &farm.sequences["seq"];
    assert_eq!(record.state, SequenceState::Failed);
    assert!(
        record
            .error
            .as_deref()
            .unwrap()
            .contains("failed its checksum 4 times")
    );
    // A corrupt input nobody produced (a reference image) is an ordinary storage failure.
    let mut farm = farm_with(&[Transition::Cut], 1);
    let (_, reference) = assigned(&farm.dispatch())[0].clone();
    farm.input_corrupt(
        &reference,
        &["sequences/seq/refs/shot-000.png".into()],
        "bad",
        1.0,
    )
    .unwrap();
    let task = &farm.sequences["seq"].segments[0];
    assert_eq!(task.state, TaskState::Ready);
    assert!(task.error.as_deref().unwrap().starts_with("storage error"));
}
