//! Seam QA in the farm: a failing join's continuation (and the chain after it) renders again
//! with a new seed without using up attempts, within the budget; then the best try is kept
//! (rendered back when it was not the last); passing joins and drafts end the sequence.

use super::*;
use crate::records;

/// Shot 0, its continuation (s001-00) and a continuation of that (s002-00).
fn chain_farm(pass: Pass) -> Farm {
    let mut farm = farm_of_workers(1);
    let mut sequence = sequence(&[Transition::Cut, Transition::Continue, Transition::Continue]);
    sequence.pass = pass;
    let plan = planner::plan(&sequence, &reelfarm_tiny());
    farm.submit("seq".into(), None, sequence, plan, 0.0);
    farm
}

/// Runs every ready task until the stitch is assigned; returns its reference and the seeds
/// the segments were assigned with.
fn render_until_stitch(farm: &mut Farm) -> (pb::AssignmentRef, Vec<(String, u64)>) {
    let mut seeds = Vec::new();
    loop {
        let actions = farm.dispatch();
        let mut stitch = None;
        for action in &actions {
            if let Action::Assign { assignment, .. } = action {
                let reference = assignment.assignment.clone().unwrap();
                match &assignment.task {
                    Some(pb::assignment::Task::Segment(task)) => {
                        seeds.push((task.segment_id.clone(), task.seed));
                        complete(farm, &reference);
                    }
                    _ => stitch = Some(reference),
                }
            }
        }
        if let Some(stitch) = stitch {
            return (stitch, seeds);
        }
        assert!(
            !actions.is_empty(),
            "nothing placed: {:?}",
            farm.sequences["seq"].state
        );
    }
}

fn score(segment_id: &str, badness: f64) -> pb::SeamScore {
    pb::SeamScore {
        segment_id: segment_id.into(),
        badness,
        passed: badness <= 1.0,
        delta_e00_after: badness,
        within_p95: 1.0,
        structure_jump: badness,
        structure_within_p95: 1.0,
    }
}

fn stitched(farm: &mut Farm, stitch: &pb::AssignmentRef, scores: Vec<pb::SeamScore>) {
    let completion = Completion {
        seams: scores,
        ..Completion::default()
    };
    farm.complete_with(stitch, completion, 5.0).unwrap();
}

#[test]
fn a_failing_join_renders_its_chain_again_with_new_seeds_then_keeps_the_best_try() {
    let mut farm = chain_farm(Pass::Final);
    let planned = farm.sequences["seq"].plan.segments[1].seed;
    let (stitch, first) = render_until_stitch(&mut farm);
    assert_eq!(first.len(), 3);
    stitched(
        &mut farm,
        &stitch,
        vec![score("s001-00", 1.6), score("s002-00", 0.5)],
    );
    let record = &farm.sequences["seq"];
    assert_eq!(record.state, SequenceState::Rendering);
    assert_eq!(
        record.segments[0].state,
        TaskState::Done,
        "before the join: kept"
    );
    assert_eq!(record.segments[1].state, TaskState::Ready);
    assert_eq!(
        record.segments[2].state,
        TaskState::Blocked,
        "conditioned on it"
    );
    assert_eq!(record.stitch.state, TaskState::Blocked);
    assert_eq!(record.seam_tries.len(), 1, "the passing join is not a try");

    // Try 1: the continuation and its successor, with seam QA's first new seed.
    let (stitch, again) = render_until_stitch(&mut farm);
    let try_one = qa_seed(planned, 1);
    assert_eq!(again[0], ("s001-00".to_string(), try_one));
    assert_eq!(again.len(), 2, "{again:?}");
    stitched(
        &mut farm,
        &stitch,
        vec![score("s001-00", 1.2), score("s002-00", 0.5)],
    );
    // Try 2 (the budget's last), worse than try 1.
    let (stitch, again) = render_until_stitch(&mut farm);
    assert_eq!(again[0], ("s001-00".to_string(), qa_seed(planned, 2)));
    stitched(
        &mut farm,
        &stitch,
        vec![score("s001-00", 1.4), score("s002-00", 0.5)],
    );
    // Out of seeds: try 1 was best, so it renders back.
    let (stitch, again) = render_until_stitch(&mut farm);
    assert_eq!(again[0], ("s001-00".to_string(), try_one));
    stitched(
        &mut farm,
        &stitch,
        vec![score("s001-00", 1.2), score("s002-00", 0.5)],
    );

    let record = &farm.sequences["seq"];
    assert_eq!(record.state, SequenceState::Succeeded);
    let tries: Vec<(u64, f64)> = record
        .seam_tries
        .iter()
        .map(|tried| (tried.seed, tried.badness))
        .collect();
    assert_eq!(
        tries,
        vec![(planned, 1.6), (try_one, 1.2), (qa_seed(planned, 2), 1.4)]
    );
    assert!(
        record
            .segments
            .iter()
            .all(|task| task.error.is_none() || task.state == TaskState::Done)
    );
    // Four renders of s001-00, none of them counted as a failure.
    assert_eq!(record.segments[1].attempt, 4);
    assert_eq!(record.segments[1].excused_attempts, 3);
    // The kept seed survives a new leader: it is in the records.
    let records = records::sequence_records(&farm, "seq");
    let restored = records::restore(
        3,
        &reelfarm_models::Catalog::builtin(),
        &records,
        &BTreeMap::new(),
    )
    .farm;
    let restored = &restored.sequences["seq"];
    assert_eq!(restored.seed_of(1), try_one);
    assert_eq!(restored.seam_tries, record.seam_tries);
}

#[test]
fn a_join_that_passes_on_a_new_seed_ends_the_sequence() {
    let mut farm = chain_farm(Pass::Final);
    let (stitch, _) = render_until_stitch(&mut farm);
    stitched(
        &mut farm,
        &stitch,
        vec![score("s001-00", 0.9), score("s002-00", 3.0)],
    );
    let (stitch, again) = render_until_stitch(&mut farm);
    assert_eq!(
        again.len(),
        1,
        "only the failing join's continuation: {again:?}"
    );
    stitched(
        &mut farm,
        &stitch,
        vec![score("s001-00", 0.9), score("s002-00", 0.8)],
    );
    let record = &farm.sequences["seq"];
    assert_eq!(record.state, SequenceState::Succeeded);
    assert_eq!(record.seam_tries.len(), 2);
    let status = crate::snapshot::status(&farm, "seq").unwrap();
    assert_eq!(status.state, pb::SequenceState::Succeeded as i32);
}

#[test]
fn drafts_and_a_spec_that_turns_it_off_end_on_the_first_stitch() {
    for (pass, seam_qa) in [(Pass::Draft, None), (Pass::Final, Some(false))] {
        let mut farm = chain_farm(pass);
        farm.sequences.get_mut("seq").unwrap().sequence.seam_qa = seam_qa;
        let (stitch, _) = render_until_stitch(&mut farm);
        stitched(&mut farm, &stitch, vec![score("s001-00", 4.0)]);
        let record = &farm.sequences["seq"];
        assert_eq!(
            record.state,
            SequenceState::Succeeded,
            "{pass:?} {seam_qa:?}"
        );
        assert!(record.seam_tries.is_empty());
    }
}

#[test]
fn scores_that_are_not_numbers_or_name_no_segment_change_nothing() {
    let mut farm = chain_farm(Pass::Final);
    let (stitch, _) = render_until_stitch(&mut farm);
    stitched(
        &mut farm,
        &stitch,
        vec![score("s001-00", f64::NAN), score("s404-00", 9.0)],
    );
    assert_eq!(farm.sequences["seq"].state, SequenceState::Succeeded);
}

/// Both joins of a chain fail in one stitch: only the upstream one renders again (with the
/// segment after it waiting for it), and the downstream join is judged afresh afterwards,
/// against its new picture. The renders' cache entries are deleted.
#[test]
fn the_upstream_join_of_a_chain_goes_first_and_the_one_after_is_judged_afresh() {
    let mut farm = chain_farm(Pass::Final);
    let planned_two = farm.sequences["seq"].plan.segments[2].seed;
    let (stitch, _) = render_until_stitch(&mut farm);
    for (index, key) in [(1, "k1"), (2, "k2")] {
        farm.sequences.get_mut("seq").unwrap().segments[index].cache_key = Some(key.into());
    }
    let completion = Completion {
        seams: vec![score("s001-00", 2.0), score("s002-00", 3.0)],
        ..Completion::default()
    };
    let actions = farm.complete_with(&stitch, completion, 5.0).unwrap();
    assert!(
        actions.iter().any(|action| matches!(
            action,
            Action::DeleteObjects { keys } if keys == &[
                "cache/segments/k1.json".to_string(),
                "cache/segments/k2.json".to_string(),
            ]
        )),
        "{actions:?}"
    );
    let record = &farm.sequences["seq"];
    let tries: Vec<&str> = record
        .seam_tries
        .iter()
        .map(|tried| tried.segment_id.as_str())
        .collect();
    assert_eq!(
        tries,
        ["s001-00"],
        "the downstream join waits for its new picture"
    );
    assert_eq!(record.segments[1].state, TaskState::Ready);
    assert_eq!(record.segments[2].state, TaskState::Blocked);
    let placed = assigned(&farm.dispatch());
    assert_eq!(
        placed.len(),
        1,
        "only the upstream continuation: {placed:?}"
    );
    assert!(placed[0].1.assignment_id.contains("s001-00"));
    complete(&mut farm, &placed[0].1);
    assert_eq!(farm.sequences["seq"].segments[2].state, TaskState::Ready);

    let (stitch, again) = render_until_stitch(&mut farm);
    assert_eq!(
        again,
        vec![("s002-00".to_string(), planned_two)],
        "its own seed, afresh"
    );
    stitched(
        &mut farm,
        &stitch,
        vec![score("s001-00", 0.5), score("s002-00", 3.0)],
    );
    let record = &farm.sequences["seq"];
    assert_eq!(record.segments[2].qa_seed, Some(qa_seed(planned_two, 1)));
    assert_eq!(
        record.segments[1].state,
        TaskState::Done,
        "the passing join stays"
    );
    let judged: Vec<(&str, u64)> = record
        .seam_tries
        .iter()
        .map(|tried| (tried.segment_id.as_str(), tried.seed))
        .collect();
    assert_eq!(judged.len(), 3, "{judged:?}");
}

#[test]
fn a_worker_saying_passed_does_not_make_a_bad_join_pass() {
    let mut farm = chain_farm(Pass::Final);
    let (stitch, _) = render_until_stitch(&mut farm);
    let lying = pb::SeamScore {
        passed: true,
        ..score("s001-00", 1.5)
    };
    stitched(&mut farm, &stitch, vec![lying]);
    assert_eq!(farm.sequences["seq"].state, SequenceState::Rendering);
    assert!(!farm.sequences["seq"].seam_tries[0].passed);
}

#[test]
fn the_spec_s_seam_qa_settings_survive_a_new_leader() {
    let mut farm = farm_of_workers(1);
    let mut sequence = sequence(&[Transition::Cut, Transition::Continue]);
    sequence.seam_qa = Some(false);
    sequence.seam_qa_tries = 4;
    let plan = planner::plan(&sequence, &reelfarm_tiny());
    farm.submit("seq".into(), None, sequence, plan, 0.0);
    let records = records::sequence_records(&farm, "seq");
    let restored = records::restore(
        3,
        &reelfarm_models::Catalog::builtin(),
        &records,
        &BTreeMap::new(),
    )
    .farm;
    let restored = &restored.sequences["seq"].sequence;
    assert_eq!((restored.seam_qa, restored.seam_qa_tries), (Some(false), 4));
}
