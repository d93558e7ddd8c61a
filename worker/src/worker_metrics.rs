//! The worker's metrics: device readings at every heartbeat, and what each finished task
//! took (render seconds, measured peak against its reservation, seam colour differences).

use std::collections::HashMap;

use opentelemetry::KeyValue;
use reelfarm_common::metrics::{self, label};
use reelfarm_common::pb;

use crate::seams::JoinMetrics;
use crate::task::Phases;

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
    let start = phases
        .0
        .iter()
        .map(|p| p.start_unix_s)
        .fold(f64::INFINITY, f64::min);
    let end = phases
        .0
        .iter()
        .map(|p| p.end_unix_s)
        .fold(f64::NEG_INFINITY, f64::max);
    if end > start {
        m.segment_render_seconds.record(end - start, &labels);
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
