//! The worker's metrics and spans: device readings at every heartbeat, and what each
//! finished task took (render seconds, measured peak against its reservation, seam colour
//! differences), with a span per task and a child span per phase in the sequence's trace.

use std::collections::HashMap;

use opentelemetry::KeyValue;
use opentelemetry::global::BoxedSpan;
use reelfarm_common::metrics::{self, label};
use reelfarm_common::pb;
use reelfarm_common::trace_context;

use crate::task::Phases;
use reelfarm_stitch::seams::JoinMetrics;

/// `model` and `resolution` (`480p`: the short side) of a segment.
pub(crate) fn model_labels(task: &pb::SegmentTask) -> [KeyValue; 2] {
    [
        label("model", task.model.clone()),
        label("resolution", format!("{}p", task.width.min(task.height))),
    ]
}

/// Device gauges; `reserved` is (bytes, tasks) this worker runs per device index.
pub(crate) fn record_devices(
    worker: &str,
    devices: &[pb::Device],
    reserved: &HashMap<u32, (u64, usize)>,
) {
    let m = metrics::worker();
    let mut running = 0;
    for device in devices {
        let labels = [
            label("worker", worker.to_string()),
            label("device", device.index.to_string()),
            label("class", device.class.clone()),
        ];
        let (reserved_bytes, tasks) = reserved.get(&device.index).copied().unwrap_or_default();
        running += tasks;
        m.memory_total_bytes
            .record(device.memory_total_bytes, &labels);
        m.memory_reserved_bytes.record(reserved_bytes, &labels);
        m.memory_used_bytes
            .record(device.memory_used_bytes, &labels);
        m.utilization_ratio
            .record(f64::from(device.utilization_percent) / 100.0, &labels);
        m.temperature_celsius
            .record(f64::from(device.temperature_celsius), &labels);
        m.power_watts
            .record(f64::from(device.power_milliwatts) / 1000.0, &labels);
    }
    m.running_tasks
        .record(running as i64, &[label("worker", worker.to_string())]);
}

/// A finished task: for segments, render seconds and peak memory over the reservation.
pub(crate) fn task_done(segment: Option<([KeyValue; 2], u64)>, phases: &Phases, peak_bytes: u64) {
    let Some((labels, reserved_bytes)) = segment else {
        return;
    };
    let m = metrics::worker();
    let seconds = reelfarm_common::busy_seconds(&phases.0);
    if seconds > 0.0 {
        m.segment_render_seconds.record(seconds, &labels);
    }
    if reserved_bytes > 0 && peak_bytes > 0 {
        m.peak_over_estimate_ratio
            .record(peak_bytes as f64 / reserved_bytes as f64, &labels);
    }
}

/// ΔE00 across every seam of a stitched sequence, before and after colour matching.
pub(crate) fn seams(joins: &[JoinMetrics]) {
    let m = metrics::stitch();
    for join in joins {
        let kind = label("join", join.kind);
        m.seam_delta_e00.record(
            join.delta_e00_before,
            &[label("stage", "before"), kind.clone()],
        );
        m.seam_delta_e00
            .record(join.delta_e00_after, &[label("stage", "after"), kind]);
    }
}

/// A task's span, under the sequence's trace that came with the assignment.
pub(crate) struct TaskSpan {
    span: BoxedSpan,
    pub traceparent: String,
    stitch: bool,
}

pub(crate) fn start_task_span(
    assignment: &pb::Assignment,
    reference: &pb::AssignmentRef,
) -> TaskSpan {
    let stitch = matches!(assignment.task, Some(pb::assignment::Task::Stitch(_)));
    let span = trace_context::start_span(
        if stitch { "stitch" } else { "render" },
        &assignment.traceparent,
        None,
        vec![
            label("reelfarm.assignment", reference.assignment_id.clone()),
            label("reelfarm.device", assignment.device_index.to_string()),
        ],
    );
    TaskSpan {
        traceparent: trace_context::traceparent_of(&span),
        span,
        stitch,
    }
}

impl TaskSpan {
    /// One child span per phase (download, denoise, decode, encode, upload; a stitch's
    /// download, codec, upload), then the task's own end.
    pub(crate) fn finish(self, phases: &Phases, error: Option<&str>) {
        let storage: Vec<usize> = phases
            .0
            .iter()
            .enumerate()
            .filter(|(_, p)| p.kind == "storage")
            .map(|(i, _)| i)
            .collect();
        let denoised_at = phases
            .0
            .iter()
            .find(|p| p.kind == "denoise")
            .map(|p| p.end_unix_s);
        for (index, phase) in phases.0.iter().enumerate() {
            let (name, start) = match phase.kind.as_str() {
                "storage" if storage.len() > 1 && storage.first() == Some(&index) => {
                    ("download", phase.start_unix_s)
                }
                "storage" => ("upload", phase.start_unix_s),
                "denoise" => ("denoise", phase.start_unix_s),
                "model" => match denoised_at {
                    Some(end) => ("decode", end),
                    None => ("model", phase.start_unix_s),
                },
                "codec" if self.stitch => ("decode, grade and encode", phase.start_unix_s),
                "encode" => ("encode", phase.start_unix_s),
                _ => ("work", phase.start_unix_s),
            };
            trace_context::record_span(
                name,
                &self.traceparent,
                start,
                phase.end_unix_s,
                Vec::new(),
            );
        }
        trace_context::end_span(self.span, error, None);
    }
}
