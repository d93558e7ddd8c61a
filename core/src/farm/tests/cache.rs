//! Submissions with segment cache hits: hits are done at once, a continuation of a hit is
//! ready, stitch parts and conditions point at the reused objects, and an accepted segment
//! leaves a cache entry.

use super::*;
use crate::cache::tests::entry;
use crate::cache::{CacheEntry, entry_key};

fn cached_farm(transitions: &[Transition], hits: Vec<Option<CacheEntry>>) -> Farm {
    let mut farm = farm_of_workers(2);
    let sequence = sequence(transitions);
    let plan = planner::plan(&sequence, &reelfarm_tiny());
    let keys = (0..plan.segments.len())
        .map(|i| format!("key{i}"))
        .collect();
    let cached = Cached { keys, hits };
    farm.submit_cached("cached".into(), None, sequence, plan, cached, 0.0);
    farm
}

#[test]
fn a_continuation_of_a_hit_starts_from_the_reused_handoff_frame() {
    let old = "sequences/old/segments/s000-00.a2";
    let mut farm = cached_farm(
        &[Transition::Cut, Transition::Continue],
        vec![Some(entry("key0", old)), None],
    );
    let record = farm.sequence("cached").unwrap();
    assert_eq!(record.segments[0].state, TaskState::Done);
    assert_eq!(record.segments[0].attempt, 0);
    assert_eq!(record.reused_segments(), 1);
    assert_eq!(record.segments[1].state, TaskState::Ready);
    let (_, task, _) = segment_assignment(&farm.dispatch());
    assert_eq!(task.condition_key, format!("{old}.handoff.png"));
    assert_eq!(task.condition_crc32c, "0badc0de");
}

#[test]
fn an_accepted_segment_leaves_an_entry_and_a_fully_cached_sequence_only_stitches() {
    let mut farm = cached_farm(&[Transition::Cut, Transition::Cut], vec![]);
    let placed = assigned(&farm.dispatch());
    let actions = farm
        .complete(&placed[0].1, Vec::new(), Vec::new(), 0, 1.0)
        .unwrap();
    let written: Vec<&String> = actions
        .iter()
        .filter_map(|action| match action {
            Action::WriteObject { key, .. } => Some(key),
            _ => None,
        })
        .collect();
    assert_eq!(written.len(), 1);
    assert!(written[0] == &entry_key("key0") || written[0] == &entry_key("key1"));

    let a = "sequences/old/segments/s000-00.a1";
    let b = "sequences/old/segments/s001-00.a3";
    let mut farm = cached_farm(
        &[Transition::Cut, Transition::Cut],
        vec![Some(entry("key0", a)), Some(entry("key1", b))],
    );
    assert_eq!(
        farm.sequence("cached").unwrap().state,
        SequenceState::Stitching
    );
    let placed = farm.dispatch();
    let stitch = placed
        .iter()
        .find_map(|action| match action {
            Action::Assign { assignment, .. } => match &assignment.task {
                Some(pb::assignment::Task::Stitch(stitch)) => Some(stitch.clone()),
                _ => None,
            },
            _ => None,
        })
        .expect("the stitch is placed at once");
    let videos: Vec<&str> = stitch.parts.iter().map(|p| p.video_key.as_str()).collect();
    assert_eq!(videos, [format!("{a}.mp4"), format!("{b}.mp4")]);
    assert!(stitch.parts.iter().all(|part| part.reused));
    assert!(
        stitch
            .parts
            .iter()
            .all(|part| part.video_crc32c == "0badc0de")
    );
}
