//! Hosted segments in the farm: the remote job is recorded only for the current attempt of a
//! hosted segment, handed to the next attempt whatever ended this one, dropped once the clip
//! is accepted or the worker found the job unusable; what a clip cost is bounded by its
//! price and summed.

use reelfarm_models::ModelEntry;

use super::*;

fn hosted_entry() -> ModelEntry {
    crate::test_catalogs::with_hosted(0.25)
        .require("sora-test")
        .unwrap()
        .clone()
}

/// One 6 s hosted shot (one 8 s clip at $2.00) on a hosted worker with two slots.
fn hosted_farm() -> Farm {
    let mut farm = Farm::new(3);
    farm.register_worker(
        "h0".into(),
        "h0".into(),
        vec![device(0, 2), device(1, 2)],
        vec!["sora-test".into()],
        &[],
        0.0,
    );
    let mut sequence = sequence(&[Transition::Cut]);
    sequence.model = "sora-test".into();
    sequence.steps = None;
    sequence.shots[0].duration_seconds = 6.0;
    let plan = planner::plan(&sequence, &hosted_entry());
    assert_eq!(plan.segments[0].clip_seconds, 8);
    farm.submit("seq".into(), None, sequence, plan, 0.0);
    farm
}

#[test]
fn a_remote_job_is_recorded_for_the_current_attempt_and_handed_to_the_next() {
    let mut farm = hosted_farm();
    let (_, task, _) = segment_assignment(&farm.dispatch());
    assert_eq!((task.clip_seconds, task.remote_job_id.as_str()), (8, ""));
    let reference = farm.sequences["seq"].segments[0]
        .assignment_id
        .clone()
        .unwrap();
    let reference = pb::AssignmentRef {
        assignment_id: reference,
        attempt: 1,
    };
    farm.record_remote_job(&reference, "video_1").unwrap();
    // The same id again is fine (a retried call); another id is refused: poll the first.
    farm.record_remote_job(&reference, "video_1").unwrap();
    let second = farm.record_remote_job(&reference, "video_2");
    assert!(
        matches!(&second, Err(Error::FailedPrecondition(m)) if m.contains("already has remote job video_1")),
        "{second:?}"
    );
    assert!(matches!(
        farm.record_remote_job(&reference, "has space"),
        Err(Error::InvalidArgument(_))
    ));
    // The worker is lost: the next attempt polls the recorded job.
    farm.worker_disconnected("h0");
    farm.worker_lost("h0", 1000.0);
    farm.register_worker(
        "h1".into(),
        "h1".into(),
        vec![device(0, 2)],
        vec!["sora-test".into()],
        &[],
        1000.0,
    );
    let (worker, task, _) = segment_assignment(&farm.dispatch());
    assert_eq!(
        (worker.as_str(), task.remote_job_id.as_str()),
        ("h1", "video_1")
    );
    assert_eq!(farm.sequences["seq"].segments[0].attempt, 2);
    // A stale attempt cannot record a job.
    assert!(matches!(
        farm.record_remote_job(&reference, "video_9"),
        Err(Error::FailedPrecondition(_))
    ));
}

#[test]
fn an_accepted_clip_drops_its_job_and_adds_its_cost_an_unusable_job_is_not_polled_again() {
    let mut farm = hosted_farm();
    let (_, reference) = assigned(&farm.dispatch())[0].clone();
    farm.record_remote_job(&reference, "video_1").unwrap();
    // A failure that says nothing about the job (storage, a stall) keeps it for the next
    // attempt.
    farm.fail(&reference, FailureClass::StorageError, "S3 said 503", 1.0)
        .unwrap();
    let (_, task, _) = segment_assignment(&farm.dispatch());
    assert_eq!(task.remote_job_id, "video_1");
    let current = |farm: &Farm, attempt| pb::AssignmentRef {
        assignment_id: farm.sequences["seq"].segments[0]
            .assignment_id
            .clone()
            .unwrap(),
        attempt,
    };
    // The job failed remotely: forgotten, so the next attempt creates a new one.
    let reference = current(&farm, 2);
    farm.forget_remote_job(&reference).unwrap();
    farm.fail(
        &reference,
        FailureClass::ModelError,
        "remote job failed",
        1.0,
    )
    .unwrap();
    assert_eq!(farm.sequences["seq"].segments[0].remote_job_id, None);
    let (_, task, _) = segment_assignment(&farm.dispatch());
    assert_eq!(
        task.remote_job_id, "",
        "an unusable job is not polled again"
    );
    let reference = current(&farm, 3);
    farm.record_remote_job(&reference, "video_2").unwrap();
    // A worker pricing higher than the plan is recorded at the plan's price: the paid clip
    // is not thrown away over it.
    let over = Completion {
        cost_usd: 2.5,
        ..Completion::default()
    };
    farm.complete_with(&reference, over, 2.0).unwrap();
    let task = &farm.sequences["seq"].segments[0];
    assert_eq!((task.remote_job_id.as_deref(), task.cost_usd), (None, 2.0));
    let status = crate::snapshot::status(&farm, "seq").unwrap();
    assert_eq!((status.cost_usd, status.estimated_cost_usd), (2.0, 2.0));
    assert_eq!(status.segments[0].model, "sora-test");
}

#[test]
fn a_local_segment_has_no_remote_job_and_costs_nothing() {
    let mut farm = farm_with(&[Transition::Cut], 1);
    let (_, reference) = assigned(&farm.dispatch())[0].clone();
    let refused = farm.record_remote_job(&reference, "video_1");
    assert!(
        matches!(&refused, Err(Error::InvalidArgument(m)) if m.contains("local model")),
        "{refused:?}"
    );
    let charged = Completion {
        cost_usd: 0.01,
        ..Completion::default()
    };
    farm.complete_with(&reference, charged, 1.0).unwrap();
    assert_eq!(farm.sequences["seq"].segments[0].cost_usd, 0.0);
}

#[test]
fn hosted_slots_take_hosted_segments_only_and_the_worker_s_cpu_takes_its_stitches() {
    use reelfarm_models::catalog::hosted::{HOSTED_DEVICE_KIND, HOSTED_SLOT_BYTES};
    let slot = |index| pb::Device {
        index,
        kind: HOSTED_DEVICE_KIND.into(),
        name: format!("hosted slot {index}"),
        memory_total_bytes: HOSTED_SLOT_BYTES,
        memory_free_bytes: HOSTED_SLOT_BYTES,
        ..Default::default()
    };
    let mut farm = Farm::new(3);
    farm.register_worker(
        "h0".into(),
        "h0".into(),
        vec![slot(0), slot(1), device(2, 16)],
        vec!["sora-test".into()],
        &[],
        0.0,
    );
    let mut sequence = sequence(&[Transition::Cut, Transition::Cut, Transition::Cut]);
    sequence.model = "sora-test".into();
    sequence.steps = None;
    let plan = planner::plan(&sequence, &hosted_entry());
    farm.submit("seq".into(), None, sequence, plan, 0.0);
    let devices = |actions: &[Action]| -> Vec<u32> {
        actions
            .iter()
            .filter_map(|action| match action {
                Action::Assign { assignment, .. } => Some(assignment.device_index),
                _ => None,
            })
            .collect()
    };
    // Two slots, three hosted segments: two run, on the slots; the CPU takes none.
    let first = farm.dispatch();
    let mut on = devices(&first);
    on.sort_unstable();
    assert_eq!(on, [0, 1]);
    for (_, reference) in assigned(&first) {
        complete(&mut farm, &reference);
    }
    let second = farm.dispatch();
    assert_eq!(devices(&second).len(), 1);
    assert!(devices(&second)[0] < 2);
    complete(&mut farm, &assigned(&second)[0].1);
    // The stitch goes to the CPU, never to a slot.
    assert_eq!(devices(&farm.dispatch()), [2]);
}
