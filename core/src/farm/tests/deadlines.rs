//! Deadlines: attempts without progress are taken back, fenced off and placed again.

use reelfarm_common::sequence::Transition;

use super::*;
#[test]
fn a_task_without_progress_past_its_deadline_is_taken_back_and_placed_again() {
    let mut farm = farm_with(&[Transition::Cut], 1);
    farm.set_stall_policy(StallPolicy {
        floor_seconds: 30.0,
        factor: 10.0,
    });
    let placed = assigned(&farm.dispatch());
    let (worker, first) = placed[0].clone();
    let deadline = farm.stall_deadline_seconds(&farm.assignments[&first.assignment_id]);
    assert!(deadline >= 30.0);
    // The clock starts at the first check; progress restarts it.
    assert!(!farm.check_stalls(100.0));
    assert!(
        !farm
            .report_progress(&first, 1, 2, 100.0 + deadline - 1.0)
            .unwrap()
    );
    assert!(!farm.check_stalls(100.0 + deadline + 1.0));
    assert!(farm.take_back_stalled(100.0 + deadline + 1.0).is_empty());
    let late = 100.0 + 2.0 * deadline + 1.0;
    assert!(farm.check_stalls(late));
    let actions = farm.take_back_stalled(late);
    assert_eq!(
        actions,
        vec![Action::Cancel {
            worker: worker.clone(),
            assignment: first.clone(),
            discard: false,
        }]
    );
    let record = &farm.sequences["seq"];
    assert_eq!(record.segments[0].state, TaskState::Ready);
    assert!(
        record.segments[0]
            .error
            .as_deref()
            .unwrap()
            .starts_with("stalled: no progress")
    );
    // The stalled attempt keeps its device's memory until the worker reports back.
    let reserved = farm.workers[&worker].devices[0].reserved_bytes;
    assert!(reserved > 0);
    // The hung worker gets no new work until it shows life.
    assert!(farm.dispatch().is_empty());
    assert!(!farm.workers[&worker].takes_work());
    farm.register_worker(
        "w-new".into(),
        "w-new".into(),
        vec![device(0, 16)],
        vec!["reelfarm-tiny".into()],
        &[],
        late,
    );
    let again = assigned(&farm.dispatch());
    assert_eq!(again[0].0, "w-new");
    assert_eq!(again[0].1.attempt, 2);

    // The late attempt is fenced off: its progress and result are refused, and its report
    // frees the device it held.
    assert!(farm.report_progress(&first, 2, 2, late).is_err());
    assert!(matches!(
        farm.complete(&first, Vec::new(), Vec::new(), 1, late),
        Err(Error::FailedPrecondition(_))
    ));
    assert!(!farm.assignments.contains_key(&first.assignment_id));
    assert_eq!(farm.workers[&worker].devices[0].reserved_bytes, 0);
    assert!(
        farm.workers[&worker].takes_work(),
        "it answered: it takes work again"
    );
    complete(&mut farm, &again[0].1);
    assert_eq!(farm.sequences["seq"].segments[0].state, TaskState::Done);
    assert_eq!(farm.sequences["seq"].segments[0].attempt, 2);
}

#[test]
fn a_stalled_attempt_on_a_lost_worker_does_not_end_the_attempt_that_replaced_it() {
    let mut farm = farm_with(&[Transition::Cut], 2);
    farm.set_stall_policy(StallPolicy {
        floor_seconds: 10.0,
        factor: 1.0,
    });
    let (hung, first) = assigned(&farm.dispatch())[0].clone();
    farm.check_stalls(1.0);
    farm.take_back_stalled(100.0);
    let (other, second) = assigned(&farm.dispatch())
        .into_iter()
        .next()
        .expect("placed again");
    assert_ne!(second.assignment_id, first.assignment_id);
    farm.worker_lost(&hung, 101.0);
    let task = &farm.sequences["seq"].segments[0];
    assert_eq!(task.state, TaskState::Running);
    assert_eq!(task.worker.as_deref(), Some(other.as_str()));
    assert_eq!(task.attempt, 2);
}

#[test]
fn deadlines_off_take_nothing_back() {
    let mut farm = farm_with(&[Transition::Cut], 1);
    farm.set_stall_policy(StallPolicy {
        floor_seconds: 0.0,
        factor: 10.0,
    });
    farm.dispatch();
    assert!(!farm.check_stalls(1.0));
    assert!(farm.take_back_stalled(1e9).is_empty());
}
