//! The leader's metrics and spans: it turns the farm's events into counters, histograms and
//! trace spans, and reads its state into gauges, so the farm itself stays free of clocks
//! and I/O.

use std::collections::{BTreeMap, HashMap};

use opentelemetry::global::BoxedSpan;
use reelfarm_common::metrics::{self, label};
use reelfarm_common::trace_context;

use reelfarm_core::farm::{FailureClass, Farm, FarmEvent, SequenceId, SequenceState, TaskState};
use reelfarm_core::records::{sequence_state_name, task_state_name};

/// Open `sequence` spans by sequence, ended when the sequence ends.
pub(crate) type SequenceSpans = HashMap<SequenceId, BoxedSpan>;

fn kind(stitch: bool) -> &'static str {
    if stitch { "stitch" } else { "segment" }
}

const SEQUENCE_STATES: [SequenceState; 6] = [
    SequenceState::Queued,
    SequenceState::Rendering,
    SequenceState::Stitching,
    SequenceState::Succeeded,
    SequenceState::Failed,
    SequenceState::Cancelled,
];
const TASK_STATES: [TaskState; 6] = [
    TaskState::Blocked,
    TaskState::Ready,
    TaskState::Running,
    TaskState::Done,
    TaskState::Failed,
    TaskState::Cancelled,
];

/// Every counter series at zero, so rates and alerts have data before the first event.
pub(crate) fn started_leading(models: &[String]) {
    let m = metrics::scheduler();
    m.leader.record(1, &[]);
    for model in models {
        let by_model = [label("model", model.clone())];
        m.video_seconds.add(0.0, &by_model);
        m.device_seconds.add(0.0, &by_model);
    }
    for stitch in [false, true] {
        m.tasks_completed.add(0, &[label("kind", kind(stitch))]);
        for class in FailureClass::ALL {
            m.tasks_failed.add(
                0,
                &[label("kind", kind(stitch)), label("reason", class.label())],
            );
        }
    }
}

pub(crate) fn stopped_leading() {
    metrics::scheduler().leader.record(0, &[]);
}

/// Records what happened in the last transition; `now` is the wall clock.
pub(crate) fn record_events(
    events: Vec<FarmEvent>,
    farm: &Farm,
    spans: &mut SequenceSpans,
    now: f64,
) {
    let m = metrics::scheduler();
    for event in events {
        match event {
            FarmEvent::Placed {
                sequence,
                task,
                stitch,
                ready_since_unix_s,
            } => {
                if ready_since_unix_s > 0.0 {
                    m.queue_wait_seconds.record(
                        (now - ready_since_unix_s).max(0.0),
                        &[label("kind", kind(stitch))],
                    );
                }
                if let Ok(record) = farm.sequence(&sequence) {
                    let start = if ready_since_unix_s > 0.0 {
                        ready_since_unix_s
                    } else {
                        now
                    };
                    trace_context::record_span(
                        "place",
                        &record.traceparent,
                        start,
                        now,
                        vec![label("reelfarm.assignment", task)],
                    );
                }
            }
            FarmEvent::Completed {
                stitch,
                model,
                video_seconds,
                device_seconds,
                owner,
                cost_usd,
            } => {
                m.tasks_completed.add(1, &[label("kind", kind(stitch))]);
                if !stitch {
                    let by_model = [label("model", model)];
                    m.video_seconds.add(video_seconds, &by_model);
                    m.device_seconds.add(device_seconds, &by_model);
                    let owner = owner.unwrap_or_else(|| "unowned".to_string());
                    m.cost_usd.add(cost_usd, &[label("owner", owner)]);
                }
            }
            FarmEvent::Failed { stitch, class } => m.tasks_failed.add(
                1,
                &[label("kind", kind(stitch)), label("reason", class.label())],
            ),
            FarmEvent::SequenceEnded {
                sequence,
                state,
                seconds,
            } => {
                m.sequence_seconds.record(
                    seconds.max(0.0),
                    &[label("state", sequence_state_name(state))],
                );
                if let Some(span) = spans.remove(&sequence) {
                    let error = farm
                        .sequence(&sequence)
                        .ok()
                        .and_then(|record| record.error.clone());
                    trace_context::end_span(span, error.as_deref(), None);
                }
            }
        }
    }
}

/// Sequences, tasks and workers by state, every state present (zero when empty).
pub(crate) fn record_gauges(farm: &Farm) {
    let m = metrics::scheduler();
    let mut sequences: BTreeMap<&str, i64> = SEQUENCE_STATES
        .iter()
        .map(|&state| (sequence_state_name(state), 0))
        .collect();
    let mut tasks: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for stitch in [false, true] {
        for state in TASK_STATES {
            tasks.insert((kind(stitch), task_state_name(state)), 0);
        }
    }
    for record in farm.sequences() {
        *sequences
            .entry(sequence_state_name(record.state))
            .or_default() += 1;
        for task in &record.segments {
            *tasks
                .entry(("segment", task_state_name(task.state)))
                .or_default() += 1;
        }
        *tasks
            .entry(("stitch", task_state_name(record.stitch.state)))
            .or_default() += 1;
    }
    for (state, count) in sequences {
        m.sequences.record(count, &[label("state", state)]);
    }
    for ((kind, state), count) in tasks {
        m.tasks
            .record(count, &[label("kind", kind), label("state", state)]);
    }
    let connected = farm.workers().filter(|worker| worker.connected).count() as i64;
    let total = farm.workers().count() as i64;
    m.workers.record(connected, &[label("state", "connected")]);
    m.workers
        .record(total - connected, &[label("state", "disconnected")]);
}
