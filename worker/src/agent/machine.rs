//! The worker agent's decisions as a state machine: events in (a session opened or broke, a
//! command arrived, a task ended, SIGTERM, a tick), effects out (open a session registering
//! what still runs, start or cancel a task, heartbeat, drain, hand work back, stop). No I/O
//! and no clock reads (`now` is passed in), so drain, reconnect, failover and cancel are
//! unit-tested here; `agent::run` carries the effects out.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reelfarm_common::pb;

/// How long to wait before trying to reach a leader again.
pub const RETRY_AFTER: Duration = Duration::from_millis(500);
/// After handing work back, how long running tasks get to report it before the worker exits.
pub const HAND_BACK_PATIENCE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A session is open on the leader: registered, the command stream live.
    Connected,
    /// Opening a session failed (no leader yet, or it refused).
    ConnectFailed,
    /// Time to try opening a session again.
    RetryDue,
    /// The command stream ended or broke (the leader died, stepped down, or the network).
    StreamLost,
    Assign(Box<pb::Assignment>),
    Cancel(pb::AssignmentRef),
    /// A task is over: its result or failure was handed in (or given up on).
    TaskEnded {
        assignment_id: String,
    },
    HeartbeatDue,
    /// SIGTERM (Kubernetes evicting the pod) or the embedded farm stopping.
    ShutdownRequested,
    /// The periodic tick that checks deadlines.
    Tick,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Register (with the assignments still running, so the leader keeps them) and open the
    /// command stream; answers with `Connected` or `ConnectFailed`.
    OpenSession {
        running: Vec<pb::AssignmentRef>,
    },
    /// Answers with `RetryDue` after the delay.
    RetryAfter(Duration),
    Start(Box<pb::Assignment>),
    /// Tell a running task to stop (it reports itself cancelled).
    CancelTask {
        assignment_id: String,
    },
    SendHeartbeat,
    /// Ask the leader to place nothing more on this worker.
    DrainSelf,
    /// Stop every running task and report each as lost, so it is placed again at once
    /// rather than when this worker's lease runs out.
    HandBack,
    /// Leave: nothing left to wait for.
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Opening a session, or waiting to retry.
    Connecting,
    Serving,
    /// Shutting down: no new work asked for, running tasks finish until the deadline.
    Draining {
        deadline: Instant,
    },
    /// Running tasks were told to stop and report back; exits when they have or at the deadline.
    HandingBack {
        deadline: Instant,
    },
    Stopped,
}

#[derive(Debug)]
pub struct Agent {
    phase: Phase,
    /// Whether a session is open (commands arrive, heartbeats go out).
    connected: bool,
    running: BTreeMap<String, pb::AssignmentRef>,
    drain_timeout: Duration,
}

impl Agent {
    pub fn new(drain_timeout: Duration) -> Self {
        Agent {
            phase: Phase::Connecting,
            connected: false,
            running: BTreeMap::new(),
            drain_timeout,
        }
    }

    /// The first effects: open a session.
    pub fn start(&mut self) -> Vec<Effect> {
        vec![self.open_session()]
    }

    pub fn is_stopped(&self) -> bool {
        self.phase == Phase::Stopped
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Whether heartbeats should go out now.
    pub fn connected(&self) -> bool {
        self.connected
    }

    /// Whether the agent is winding down (draining or handing back).
    pub fn draining(&self) -> bool {
        matches!(
            self.phase,
            Phase::Draining { .. } | Phase::HandingBack { .. }
        )
    }

    fn open_session(&self) -> Effect {
        Effect::OpenSession {
            running: self.running.values().cloned().collect(),
        }
    }

    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Effect> {
        if self.phase == Phase::Stopped {
            return Vec::new();
        }
        match event {
            Event::Connected => {
                self.connected = true;
                if self.phase == Phase::Connecting {
                    self.phase = Phase::Serving;
                }
                Vec::new()
            }
            Event::ConnectFailed => {
                self.connected = false;
                vec![Effect::RetryAfter(RETRY_AFTER)]
            }
            Event::RetryDue => match self.phase {
                Phase::Connecting => vec![self.open_session()],
                _ => Vec::new(),
            },
            Event::StreamLost => {
                self.connected = false;
                match self.phase {
                    // A failover: find the leader again, keeping what runs.
                    Phase::Serving | Phase::Connecting => {
                        self.phase = Phase::Connecting;
                        vec![self.open_session()]
                    }
                    // Draining keeps the session so the leader sends no new work and the
                    // worker's lease stays alive; without it the leader may already count this
                    // worker gone, so hand back now rather than finish work it re-placed.
                    Phase::Draining { .. } => self.hand_back(now),
                    Phase::HandingBack { .. } | Phase::Stopped => Vec::new(),
                }
            }
            Event::Assign(assignment) => {
                let Some(reference) = assignment.assignment.clone() else {
                    return Vec::new();
                };
                if self.running.contains_key(&reference.assignment_id) {
                    return Vec::new();
                }
                let id = reference.assignment_id.clone();
                self.running.insert(id.clone(), reference);
                match self.phase {
                    // Too late to render: start it stopped, so it reports itself handed back
                    // at once instead of waiting for this worker's lease to run out.
                    Phase::HandingBack { .. } => vec![
                        Effect::Start(assignment),
                        Effect::CancelTask { assignment_id: id },
                    ],
                    _ => vec![Effect::Start(assignment)],
                }
            }
            Event::Cancel(reference) => {
                if self.running.contains_key(&reference.assignment_id) {
                    vec![Effect::CancelTask {
                        assignment_id: reference.assignment_id,
                    }]
                } else {
                    Vec::new()
                }
            }
            Event::TaskEnded { assignment_id } => {
                self.running.remove(&assignment_id);
                match self.phase {
                    Phase::Draining { .. } | Phase::HandingBack { .. }
                        if self.running.is_empty() =>
                    {
                        self.stop()
                    }
                    _ => Vec::new(),
                }
            }
            Event::HeartbeatDue => {
                if self.connected {
                    vec![Effect::SendHeartbeat]
                } else {
                    Vec::new()
                }
            }
            Event::ShutdownRequested => match self.phase {
                _ if self.running.is_empty() => self.stop(),
                Phase::Serving if self.connected => {
                    self.phase = Phase::Draining {
                        deadline: now + self.drain_timeout,
                    };
                    vec![Effect::DrainSelf]
                }
                // No leader to hand results to: hand back what runs.
                Phase::Serving | Phase::Connecting => self.hand_back(now),
                Phase::Draining { .. } | Phase::HandingBack { .. } | Phase::Stopped => Vec::new(),
            },
            Event::Tick => match self.phase {
                Phase::Draining { deadline } if now >= deadline => self.hand_back(now),
                Phase::HandingBack { deadline } if now >= deadline => self.stop(),
                _ => Vec::new(),
            },
        }
    }

    fn hand_back(&mut self, now: Instant) -> Vec<Effect> {
        if self.running.is_empty() {
            return self.stop();
        }
        self.phase = Phase::HandingBack {
            deadline: now + HAND_BACK_PATIENCE,
        };
        vec![Effect::HandBack]
    }

    fn stop(&mut self) -> Vec<Effect> {
        self.phase = Phase::Stopped;
        vec![Effect::Stop]
    }
}

#[cfg(test)]
mod tests;
