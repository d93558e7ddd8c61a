//! State-machine rules: dependencies, fencing, retries, cancellation, idempotency, memory.

use reelfarm_common::sequence::{Aspect, Pass, Resolution, Shot, Transition};
use reelfarm_models::catalog::reelfarm_tiny;

use super::*;
use crate::planner;

fn sequence(transitions: &[Transition]) -> Sequence {
    Sequence {
        title: Some("test".into()),
        model: "reelfarm-tiny".into(),
        resolution: Resolution::P480,
        aspect: Aspect::Wide16x9,
        fps: 8,
        seed: 1,
        pass: Pass::Draft,
        style: None,
        negative: None,
        color_match: reelfarm_common::sequence::ColorMatch::DEFAULT,
        continuity_blend_seconds: 0.25,
        grade_references: Default::default(),
        owner: None,
        priority: 0,
        seam_qa: None,
        seam_qa_tries: reelfarm_common::sequence::SEAM_QA_TRIES,
        steps: Some(2),
        shots: transitions
            .iter()
            .map(|&transition| Shot {
                prompt: "fog".into(),
                duration_seconds: 2.0,
                transition,
                crossfade_seconds: (transition == Transition::Crossfade).then_some(0.5),
                seed: None,
                negative: None,
                reference: None,
                name: None,
                scene: None,
                variants: 1,
                take: 0,
                model: None,
            })
            .collect(),
    }
}

fn device(index: u32, gib: u64) -> pb::Device {
    pb::Device {
        index,
        kind: "cpu".into(),
        name: "cpu".into(),
        memory_total_bytes: gib << 30,
        memory_free_bytes: gib << 30,
        ..Default::default()
    }
}

fn farm_with(transitions: &[Transition], workers: usize) -> Farm {
    let mut farm = farm_of_workers(workers);
    let sequence = sequence(transitions);
    let plan = planner::plan(&sequence, &reelfarm_tiny());
    farm.submit("seq".into(), Some("key".into()), sequence, plan, 0.0);
    farm
}

/// A farm of `workers` workers with one 16 GiB device each, and no sequence yet.
fn farm_of_workers(workers: usize) -> Farm {
    let mut farm = Farm::new(3);
    for worker in 0..workers {
        farm.register_worker(
            format!("w{worker}"),
            format!("w{worker}"),
            vec![device(0, 16)],
            vec!["reelfarm-tiny".into()],
            &[],
            0.0,
        );
    }
    farm
}

fn assigned(actions: &[Action]) -> Vec<(String, pb::AssignmentRef)> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Assign { worker, assignment } => {
                Some((worker.clone(), assignment.assignment.clone().unwrap()))
            }
            Action::Cancel { .. } | Action::DeleteObjects { .. } | Action::WriteObject { .. } => {
                None
            }
        })
        .collect()
}

fn complete(farm: &mut Farm, reference: &pb::AssignmentRef) {
    farm.complete(reference, Vec::new(), Vec::new(), 0, 1.0)
        .unwrap();
}

#[test]
fn a_continuation_waits_for_its_predecessor_and_the_stitch_for_everything() {
    let mut farm = farm_with(&[Transition::Cut, Transition::Continue, Transition::Cut], 3);
    let first = assigned(&farm.dispatch());
    assert_eq!(first.len(), 2, "the continuing shot must wait");
    assert!(first.iter().all(|(_, r)| !r.assignment_id.contains("s001")));
    assert!(assigned(&farm.dispatch()).is_empty());

    complete(&mut farm, &first[0].1);
    let second = assigned(&farm.dispatch());
    assert_eq!(second.len(), 1);
    assert!(second[0].1.assignment_id.contains("s001-00"));
    complete(&mut farm, &first[1].1);
    complete(&mut farm, &second[0].1);
    assert_eq!(
        farm.sequence("seq").unwrap().state,
        SequenceState::Stitching
    );
    let stitch = assigned(&farm.dispatch());
    assert!(stitch[0].1.assignment_id.ends_with("/stitch/1"));
    complete(&mut farm, &stitch[0].1);
    let record = farm.sequence("seq").unwrap();
    assert_eq!(record.state, SequenceState::Succeeded);
    assert!(farm.workers().all(|worker| {
        worker
            .devices
            .iter()
            .all(|d| d.reserved_bytes == 0 && d.running.is_empty())
    }));
}

#[test]
fn reports_with_a_stale_fencing_token_are_refused_and_change_nothing() {
    let mut farm = farm_with(&[Transition::Cut], 1);
    let (_, reference) = assigned(&farm.dispatch()).remove(0);
    let stale = pb::AssignmentRef {
        attempt: reference.attempt + 1,
        ..reference.clone()
    };
    assert!(matches!(
        farm.complete(&stale, Vec::new(), Vec::new(), 0, 1.0),
        Err(Error::FailedPrecondition(_))
    ));
    let unknown = pb::AssignmentRef {
        assignment_id: "nope".into(),
        attempt: 1,
    };
    assert!(matches!(
        farm.report_progress(&unknown, 1, 2, 1.0),
        Err(Error::FailedPrecondition(_))
    ));
    assert_eq!(
        farm.sequence("seq").unwrap().segments[0].state,
        TaskState::Running
    );
    complete(&mut farm, &reference);
    assert!(
        matches!(
            farm.complete(&reference, Vec::new(), Vec::new(), 0, 1.0),
            Err(Error::FailedPrecondition(_))
        ),
        "no double acceptance"
    );
}

#[test]
fn a_lost_worker_hands_its_segment_back_with_the_next_attempt() {
    let mut farm = farm_with(&[Transition::Cut], 1);
    let (worker, reference) = assigned(&farm.dispatch()).remove(0);
    farm.worker_lost(&worker, 1.0);
    assert_eq!(
        farm.sequence("seq").unwrap().segments[0].state,
        TaskState::Ready
    );
    assert!(farm.dispatch().is_empty(), "no worker left");
    farm.register_worker(
        "w9".into(),
        "w9".into(),
        vec![device(0, 16)],
        vec!["reelfarm-tiny".into()],
        &[],
        0.0,
    );
    let (_, retried) = assigned(&farm.dispatch()).remove(0);
    assert_eq!(retried.attempt, 2);
    assert!(
        farm.complete(&reference, Vec::new(), Vec::new(), 0, 1.0)
            .is_err(),
        "the lost worker's late result is fenced off"
    );
    complete(&mut farm, &retried);
}

#[test]
fn failures_past_the_budget_fail_the_sequence_naming_segment_and_reason() {
    let mut farm = farm_with(&[Transition::Cut], 1);
    for attempt in 1..=3 {
        let (_, reference) = assigned(&farm.dispatch()).remove(0);
        assert_eq!(reference.attempt, attempt);
        farm.fail(&reference, FailureClass::ModelError, "NaN in latent", 2.0)
            .unwrap();
    }
    assert!(farm.dispatch().is_empty(), "no fourth attempt");
    let record = farm.sequence("seq").unwrap();
    assert_eq!(record.state, SequenceState::Failed);
    assert_eq!(
        record.error.as_deref(),
        Some("segment s000-00 failed after 3 attempt(s); last reason: model error: NaN in latent")
    );
}

fn segment_assignment(actions: &[Action]) -> (String, pb::SegmentTask, u32) {
    actions
        .iter()
        .find_map(|action| match action {
            Action::Assign { worker, assignment } => match &assignment.task {
                Some(pb::assignment::Task::Segment(task)) => {
                    Some((worker.clone(), task.clone(), assignment.device_index))
                }
                _ => None,
            },
            Action::Cancel { .. } | Action::DeleteObjects { .. } | Action::WriteObject { .. } => {
                None
            }
        })
        .expect("a segment was assigned")
}

#[test]
fn out_of_memory_climbs_a_larger_reservation_a_larger_gpu_then_the_low_memory_mode() {
    let mut farm = farm_with(&[Transition::Cut], 0);
    farm.register_worker(
        "small".into(),
        "small".into(),
        vec![device(0, 1)],
        vec!["reelfarm-tiny".into()],
        &[],
        0.0,
    );
    farm.register_worker(
        "big".into(),
        "big".into(),
        vec![device(0, 8)],
        vec!["reelfarm-tiny".into()],
        &[],
        0.0,
    );
    let oom = |farm: &mut Farm, actions: &[Action]| {
        let reference = assigned(actions).remove(0).1;
        farm.fail(
            &reference,
            FailureClass::OutOfMemory,
            "CUDA out of memory",
            2.0,
        )
        .unwrap();
    };
    // The first attempt fits the small GPU: placement keeps the big one free.
    let first = farm.dispatch();
    let (worker, task, _) = segment_assignment(&first);
    assert_eq!(worker, "small");
    let first_reserved = task.memory_estimate_bytes;
    oom(&mut farm, &first);
    // Rung 1: the same size class now reserves more.
    let second = farm.dispatch();
    let (_, task, _) = segment_assignment(&second);
    assert!(
        task.memory_estimate_bytes > first_reserved,
        "{} > {first_reserved}",
        task.memory_estimate_bytes
    );
    assert!(!task.low_memory);
    let worker_of_second = segment_assignment(&second).0;
    oom(&mut farm, &second);
    // Rung 2: a GPU larger than the one it failed on.
    let third = farm.dispatch();
    let (worker, task, _) = segment_assignment(&third);
    assert_eq!(worker, "big", "second attempt ran on {worker_of_second}");
    assert!(!task.low_memory);
    oom(&mut farm, &third);
    // Rung 3: the lower-memory mode.
    let fourth = farm.dispatch();
    let (_, task, _) = segment_assignment(&fourth);
    assert!(task.low_memory);
    let status = &crate::snapshot::sequence_status(farm.sequence("seq").unwrap()).segments[0];
    assert_eq!((status.oom_count, status.low_memory), (3, true));
    oom(&mut farm, &fourth);
    // The ladder is done: the sequence fails and says why.
    assert!(farm.dispatch().is_empty());
    let record = farm.sequence("seq").unwrap();
    assert_eq!(record.state, SequenceState::Failed);
    let error = record.error.as_deref().unwrap();
    assert!(
        error.contains("out of memory") && error.contains("4 attempt(s)"),
        "{error}"
    );
}

#[test]
fn segments_share_a_device_while_their_reservations_fit_and_learn_from_measured_peaks() {
    let mut farm = farm_with(&[Transition::Cut, Transition::Cut, Transition::Cut], 1);
    let placed = assigned(&farm.dispatch());
    assert_eq!(
        placed.len(),
        3,
        "three small segments share one 16 GiB device"
    );
    let device = &farm.workers["w0"].devices[0];
    assert_eq!(device.running.len(), 3);
    let reserved: u64 = farm
        .sequence("seq")
        .unwrap()
        .segments
        .iter()
        .map(|t| t.reserved_bytes)
        .sum();
    assert_eq!(device.reserved_bytes, reserved);
    let formula = farm.sequence("seq").unwrap().segments[0].memory_estimate_bytes;
    assert!(
        reserved > 3 * formula,
        "unconfirmed estimates carry cold headroom"
    );
    // Each reports a peak of half the formula: the class's estimate comes down to it.
    for (_, reference) in &placed {
        farm.complete(reference, Vec::new(), Vec::new(), formula / 2, 1.0)
            .unwrap();
    }
    let record = farm.sequences["seq"].clone();
    assert_eq!(record.segments[0].peak_memory_bytes, formula / 2);
    let (trusted, cold) = farm.placement.reservation(&record, 0);
    assert_eq!(cold, 0, "three observations make the estimate trusted");
    assert!(trusted < formula, "{trusted} < {formula}");
    assert_eq!(farm.workers["w0"].devices[0].reserved_bytes, 0);
}

#[test]
fn heartbeats_refresh_device_readings() {
    let mut farm = farm_with(&[Transition::Cut], 1);
    let reading = pb::Device {
        index: 0,
        memory_used_bytes: 5 << 30,
        utilization_percent: 87,
        temperature_celsius: 71,
        power_milliwatts: 310_000,
        ..Default::default()
    };
    assert!(farm.heartbeat("w0", &[reading]));
    let status = crate::snapshot::worker_status(&farm.workers["w0"]);
    let device = &status.devices[0];
    assert_eq!(
        (
            device.memory_used_bytes,
            device.utilization_percent,
            device.temperature_celsius,
            device.power_milliwatts
        ),
        (5 << 30, 87, 71, 310_000)
    );
    assert_eq!(
        device.memory_total_bytes,
        16 << 30,
        "registration figures stay"
    );
    assert!(!farm.heartbeat("stranger", &[]));
}

#[test]
fn cancel_stops_running_tasks_and_keeps_memory_until_they_report() {
    let mut farm = farm_with(&[Transition::Cut, Transition::Cut], 2);
    let running = assigned(&farm.dispatch());
    let actions = farm.cancel("seq", 1.0).unwrap();
    assert_eq!(
        actions
            .iter()
            .filter(|a| matches!(a, Action::Cancel { discard: true, .. }))
            .count(),
        2,
        "a cancelled sequence's work is discarded (a hosted job deleted)"
    );
    assert!(
        farm.workers()
            .all(|worker| !worker.devices[0].running.is_empty())
    );
    assert!(
        farm.report_progress(&running[0].1, 1, 2, 1.0).unwrap(),
        "progress after cancel says stop"
    );
    for (_, reference) in &running {
        farm.fail(reference, FailureClass::Cancelled, "cancelled", 2.0)
            .unwrap();
    }
    assert!(farm.workers().all(
        |worker| worker.devices[0].running.is_empty() && worker.devices[0].reserved_bytes == 0
    ));
    assert_eq!(
        farm.sequence("seq").unwrap().state,
        SequenceState::Cancelled
    );
    assert!(
        farm.cancel("seq", 3.0).unwrap().is_empty(),
        "cancel is idempotent"
    );
}

#[test]
fn the_same_idempotency_key_returns_the_first_sequence() {
    let mut farm = farm_with(&[Transition::Cut], 1);
    let sequence = sequence(&[Transition::Cut]);
    let plan = planner::plan(&sequence, &reelfarm_tiny());
    let (id, created) = farm.submit("other".into(), Some("key".into()), sequence, plan, 0.0);
    assert_eq!((id.as_str(), created), ("seq", false));
    assert_eq!(farm.sequences().count(), 1);
}

#[test]
fn tasks_wait_for_a_device_with_enough_memory() {
    let mut farm = Farm::new(3);
    farm.register_worker(
        "small".into(),
        "small".into(),
        vec![device(0, 0)],
        vec!["reelfarm-tiny".into()],
        &[],
        0.0,
    );
    let sequence = sequence(&[Transition::Cut]);
    let plan = planner::plan(&sequence, &reelfarm_tiny());
    farm.submit("seq".into(), None, sequence, plan, 0.0);
    assert!(farm.dispatch().is_empty());
    let waiting = &farm.sequence("seq").unwrap().segments[0];
    assert_eq!(waiting.state, TaskState::Ready);
    assert!(
        waiting
            .error
            .as_deref()
            .unwrap()
            .ends_with("GiB, largest GPU has 0.0 GiB"),
        "{:?}",
        waiting.error
    );
    farm.register_worker(
        "big".into(),
        "big".into(),
        vec![device(0, 16)],
        vec!["reelfarm-tiny".into()],
        &[],
        0.0,
    );
    let placed = assigned(&farm.dispatch());
    assert_eq!(placed[0].0, "big");
}

#[test]
fn a_reconnecting_worker_keeps_what_it_runs_and_loses_what_it_does_not() {
    let mut farm = farm_with(&[Transition::Cut, Transition::Cut], 1);
    farm.workers
        .get_mut("w0")
        .unwrap()
        .devices
        .push(DeviceRecord {
            device: device(1, 16),
            reserved_bytes: 0,
            running: Vec::new(),
            resident_models: Vec::new(),
        });
    let placed = assigned(&farm.dispatch());
    assert_eq!(placed.len(), 2, "one segment per device");
    farm.worker_disconnected("w0");
    assert!(
        farm.dispatch().is_empty(),
        "a disconnected worker gets no new work"
    );
    // It comes back still running the first segment only.
    let stale = pb::AssignmentRef {
        assignment_id: "seq/s999-00/1".into(),
        attempt: 1,
    };
    let actions = farm.register_worker(
        "w0".into(),
        "w0".into(),
        vec![device(0, 16), device(1, 16)],
        vec!["reelfarm-tiny".into()],
        &[placed[0].1.clone(), stale.clone()],
        1.0,
    );
    assert!(
        actions.contains(&Action::Cancel {
            worker: "w0".into(),
            assignment: stale,
            discard: false,
        }),
        "an assignment that is not current is cancelled: {actions:?}"
    );
    let record = farm.sequence("seq").unwrap();
    assert_eq!(record.segments[0].state, TaskState::Running);
    assert_eq!(
        record.segments[1].state,
        TaskState::Ready,
        "the forgotten one is lost"
    );
    assert!(
        farm.report_progress(&placed[0].1, 1, 2, 1.0).is_ok(),
        "still current"
    );
    let again = assigned(&farm.dispatch());
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1.attempt, 2);
}

#[test]
fn a_worker_whose_lease_ran_out_while_nobody_led_is_found_as_an_orphan() {
    let mut farm = farm_with(&[Transition::Cut], 1);
    let (worker, _) = assigned(&farm.dispatch()).remove(0);
    farm.workers.remove(&worker);
    assert_eq!(
        farm.orphaned_workers().into_iter().collect::<Vec<_>>(),
        vec![worker.clone()]
    );
    farm.worker_lost(&worker, 1.0);
    assert!(farm.orphaned_workers().is_empty());
    assert_eq!(
        farm.sequence("seq").unwrap().segments[0].state,
        TaskState::Ready
    );
}

/// A farm of one worker whose one device holds `segments` of these small segments at once.
fn farm_fitting(segments: f64) -> Farm {
    let mut probe = farm_with(&[Transition::Cut], 1);
    probe.dispatch();
    let one = probe.sequence("seq").unwrap().segments[0].reserved_bytes;
    let mut farm = Farm::new(3);
    let mut small = device(0, 0);
    small.memory_total_bytes = (one as f64 * segments) as u64;
    small.memory_free_bytes = small.memory_total_bytes;
    farm.register_worker(
        "w0".into(),
        "w0".into(),
        vec![small],
        vec!["reelfarm-tiny".into()],
        &[],
        0.0,
    );
    farm
}

fn submit_as(farm: &mut Farm, id: &str, owner: Option<&str>, priority: i32) {
    let mut sequence = sequence(&[Transition::Cut, Transition::Cut]);
    sequence.owner = owner.map(str::to_string);
    sequence.priority = priority;
    let plan = planner::plan(&sequence, &reelfarm_tiny());
    farm.submit(id.into(), None, sequence, plan, 0.0);
}

fn sequences_of(placed: &[(String, pb::AssignmentRef)]) -> Vec<String> {
    placed
        .iter()
        .map(|(_, r)| r.assignment_id.split('/').next().unwrap().to_string())
        .collect()
}

#[test]
fn a_higher_priority_sequence_goes_first_even_when_submitted_later() {
    let mut farm = farm_fitting(1.5);
    submit_as(&mut farm, "early", None, 0);
    submit_as(&mut farm, "urgent", None, 5);
    assert_eq!(sequences_of(&assigned(&farm.dispatch())), ["urgent"]);
}

#[test]
fn fair_share_is_between_owners_before_sequences() {
    let mut farm = farm_fitting(2.5);
    submit_as(&mut farm, "a1", Some("studio-a"), 0);
    submit_as(&mut farm, "a2", Some("studio-a"), 0);
    submit_as(&mut farm, "b1", Some("studio-b"), 0);
    let mut placed = sequences_of(&assigned(&farm.dispatch()));
    placed.sort();
    assert_eq!(
        placed,
        ["a1", "b1"],
        "studio-b's only sequence shares the GPU"
    );

    // Without owners each sequence is its own: the earlier a2 gets the second slot.
    let mut farm = farm_fitting(2.5);
    submit_as(&mut farm, "a1", None, 0);
    submit_as(&mut farm, "a2", None, 0);
    submit_as(&mut farm, "b1", None, 0);
    let mut placed = sequences_of(&assigned(&farm.dispatch()));
    placed.sort();
    assert_eq!(placed, ["a1", "a2"]);
}

#[test]
fn a_drained_worker_gets_no_new_work_and_keeps_what_it_runs() {
    let mut farm = farm_with(&[Transition::Cut], 2);
    let first = assigned(&farm.dispatch());
    assert_eq!(first.len(), 1);
    let busy = first[0].0.clone();
    assert_eq!(farm.drain_worker(&busy).unwrap(), vec![busy.clone()]);
    // Its segment keeps running there; new work goes to the other worker only.
    assert_eq!(farm.workers[&busy].devices[0].running.len(), 1);
    let sequence = sequence(&[Transition::Cut, Transition::Cut]);
    let plan = planner::plan(&sequence, &reelfarm_tiny());
    farm.submit("more".into(), None, sequence, plan, 0.0);
    let placed = assigned(&farm.dispatch());
    assert_eq!(placed.len(), 2);
    assert!(
        placed.iter().all(|(worker, _)| *worker != busy),
        "{placed:?}"
    );
    let error = farm.drain_worker("nobody").unwrap_err().to_string();
    assert!(error.contains("no worker named \"nobody\""), "{error}");
}

mod cache;
mod checkpoints;
mod deadlines;
mod hosted;
mod repair;
mod seam_qa;
