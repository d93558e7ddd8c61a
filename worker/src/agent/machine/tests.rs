//! Drain, reconnect, failover and cancel, as the agent decides them.

use super::*;

fn assignment(id: &str) -> Box<pb::Assignment> {
    Box::new(pb::Assignment {
        assignment: Some(reference(id)),
        ..Default::default()
    })
}

fn reference(id: &str) -> pb::AssignmentRef {
    pb::AssignmentRef {
        assignment_id: id.into(),
        attempt: 1,
    }
}

fn ended(id: &str) -> Event {
    Event::TaskEnded {
        assignment_id: id.into(),
    }
}

/// An agent serving, with these tasks running; and the time it started.
fn serving(tasks: &[&str]) -> (Agent, Instant) {
    let now = Instant::now();
    let mut agent = Agent::new(Duration::from_secs(25));
    assert_eq!(agent.start(), [Effect::OpenSession { running: vec![] }]);
    assert!(agent.handle(Event::Connected, now).is_empty());
    for task in tasks {
        assert_eq!(
            agent.handle(Event::Assign(assignment(task)), now),
            [Effect::Start(assignment(task))]
        );
    }
    (agent, now)
}

#[test]
fn shutdown_with_nothing_running_stops_at_once() {
    let (mut agent, now) = serving(&[]);
    assert_eq!(agent.handle(Event::ShutdownRequested, now), [Effect::Stop]);
    assert!(agent.is_stopped());
    assert!(agent.handle(Event::Tick, now).is_empty());
}

#[test]
fn a_drain_lets_running_tasks_finish_and_then_stops() {
    let (mut agent, now) = serving(&["a", "b"]);
    assert_eq!(
        agent.handle(Event::ShutdownRequested, now),
        [Effect::DrainSelf]
    );
    assert!(agent.draining());
    // Still connected: heartbeats go on, results can be handed in.
    assert_eq!(
        agent.handle(Event::HeartbeatDue, now),
        [Effect::SendHeartbeat]
    );
    assert!(
        agent
            .handle(Event::Tick, now + Duration::from_secs(10))
            .is_empty()
    );
    assert!(agent.handle(ended("a"), now).is_empty());
    assert_eq!(agent.handle(ended("b"), now), [Effect::Stop]);
}

#[test]
fn a_drain_hands_back_what_outlives_its_deadline() {
    let (mut agent, now) = serving(&["slow"]);
    agent.handle(Event::ShutdownRequested, now);
    assert_eq!(
        agent.handle(Event::Tick, now + Duration::from_secs(25)),
        [Effect::HandBack]
    );
    // Handed back tasks report themselves lost; the worker leaves when they have.
    assert_eq!(agent.handle(ended("slow"), now), [Effect::Stop]);
}

#[test]
fn handing_back_gives_up_waiting_after_its_patience() {
    let (mut agent, now) = serving(&["stuck"]);
    agent.handle(Event::ShutdownRequested, now);
    let deadline = now + Duration::from_secs(25);
    assert_eq!(agent.handle(Event::Tick, deadline), [Effect::HandBack]);
    // Work that arrives while handing back is handed back at once, and waited for.
    assert_eq!(
        agent.handle(Event::Assign(assignment("late")), now),
        [
            Effect::Start(assignment("late")),
            Effect::CancelTask {
                assignment_id: "late".into()
            }
        ]
    );
    assert_eq!(agent.running(), 2);
    assert!(agent.handle(ended("late"), now).is_empty());
    assert!(
        agent
            .handle(Event::Tick, deadline + Duration::from_secs(5))
            .is_empty()
    );
    assert_eq!(
        agent.handle(Event::Tick, deadline + HAND_BACK_PATIENCE),
        [Effect::Stop]
    );
}

#[test]
fn losing_the_stream_while_draining_hands_back_at_once() {
    let (mut agent, now) = serving(&["a"]);
    agent.handle(Event::ShutdownRequested, now);
    assert_eq!(agent.handle(Event::StreamLost, now), [Effect::HandBack]);
}

#[test]
fn a_failover_reconnects_registering_what_still_runs() {
    let (mut agent, now) = serving(&["a", "b"]);
    assert!(agent.handle(ended("a"), now).is_empty());
    assert_eq!(
        agent.handle(Event::StreamLost, now),
        [Effect::OpenSession {
            running: vec![reference("b")]
        }]
    );
    assert!(!agent.connected());
    // No heartbeats without a session.
    assert!(agent.handle(Event::HeartbeatDue, now).is_empty());
    // No leader yet (an election is under way): try again shortly, still with what runs.
    assert_eq!(
        agent.handle(Event::ConnectFailed, now),
        [Effect::RetryAfter(RETRY_AFTER)]
    );
    assert!(agent.handle(ended("b"), now).is_empty());
    assert_eq!(
        agent.handle(Event::RetryDue, now),
        [Effect::OpenSession { running: vec![] }]
    );
    assert!(agent.handle(Event::Connected, now).is_empty());
    assert_eq!(
        agent.handle(Event::HeartbeatDue, now),
        [Effect::SendHeartbeat]
    );
    // The new leader's work starts as before.
    assert_eq!(
        agent.handle(Event::Assign(assignment("c")), now),
        [Effect::Start(assignment("c"))]
    );
}

#[test]
fn shutdown_without_a_leader_hands_back_what_runs() {
    let (mut agent, now) = serving(&["a"]);
    agent.handle(Event::StreamLost, now);
    assert_eq!(
        agent.handle(Event::ShutdownRequested, now),
        [Effect::HandBack]
    );
    assert_eq!(agent.handle(ended("a"), now), [Effect::Stop]);
}

#[test]
fn cancel_stops_only_a_task_that_runs_here() {
    let (mut agent, now) = serving(&["a"]);
    assert_eq!(
        agent.handle(Event::Cancel(reference("a")), now),
        [Effect::CancelTask {
            assignment_id: "a".into()
        }]
    );
    assert!(
        agent
            .handle(Event::Cancel(reference("other")), now)
            .is_empty()
    );
    assert_eq!(agent.running(), 1, "a cancelled task runs until it reports");
    agent.handle(ended("a"), now);
    assert_eq!(agent.running(), 0);
    assert!(agent.handle(Event::Cancel(reference("a")), now).is_empty());
}

#[test]
fn an_assignment_runs_once_and_needs_a_fencing_token() {
    let (mut agent, now) = serving(&["a"]);
    assert!(agent.handle(Event::Assign(assignment("a")), now).is_empty());
    let no_token = Box::new(pb::Assignment::default());
    assert!(agent.handle(Event::Assign(no_token), now).is_empty());
    assert_eq!(agent.running(), 1);
}
