//! Every metric the farm exports, named once: `reelfarm_<subsystem>_<what>_<unit>`, counters
//! ending in `_total`. The dashboard, the alert rules and the README list these names; a
//! metric recorded before `telemetry::install` goes nowhere (the CLI's embedded render).

use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::global;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};

/// Latency of one placement decision, in seconds.
const DECISION_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Waits and renders: half a second to two hours.
const LONG_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
];
const STEP_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];
const RATIO_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0];
const DELTA_E_BUCKETS: &[f64] = &[0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0];
const STORAGE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn meter() -> Meter {
    global::meter("reelfarm")
}

fn histogram(
    meter: &Meter,
    name: &'static str,
    help: &'static str,
    buckets: &[f64],
) -> Histogram<f64> {
    meter
        .f64_histogram(name)
        .with_description(help)
        .with_boundaries(buckets.to_vec())
        .build()
}

/// The leading scheduler's view of the farm.
pub struct SchedulerMetrics {
    pub sequences: Gauge<i64>,
    pub tasks: Gauge<i64>,
    pub tasks_completed: Counter<u64>,
    pub tasks_failed: Counter<u64>,
    pub decision_seconds: Histogram<f64>,
    pub queue_wait_seconds: Histogram<f64>,
    pub sequence_seconds: Histogram<f64>,
    pub leader: Gauge<i64>,
    pub workers: Gauge<i64>,
    /// Seconds of finished video, and the device seconds that rendered them: their ratio
    /// is the farm's throughput (video-seconds per GPU-hour × 3600).
    pub video_seconds: Counter<f64>,
    pub device_seconds: Counter<f64>,
    /// US dollars paid for hosted clips, by owner (every finished segment adds, a local
    /// one 0, so each owner who rendered has a series).
    pub cost_usd: Counter<f64>,
}

pub fn scheduler() -> &'static SchedulerMetrics {
    static METRICS: OnceLock<SchedulerMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = meter();
        SchedulerMetrics {
            sequences: meter
                .i64_gauge("reelfarm_scheduler_sequences")
                .with_description("Sequences by state, as the leading scheduler holds them")
                .build(),
            tasks: meter
                .i64_gauge("reelfarm_scheduler_tasks")
                .with_description("Segments and stitches by kind and state (blocked, ready, running, done, failed, cancelled)")
                .build(),
            tasks_completed: meter
                .u64_counter("reelfarm_scheduler_tasks_completed_total")
                .with_description("Tasks that finished, by kind (segment, stitch)")
                .build(),
            tasks_failed: meter
                .u64_counter("reelfarm_scheduler_tasks_failed_total")
                .with_description("Failed task attempts, by kind and reason (retried or not)")
                .build(),
            decision_seconds: histogram(
                &meter,
                "reelfarm_scheduler_placement_decision_seconds",
                "Time of one placement pass over the ready queue",
                DECISION_BUCKETS,
            ),
            queue_wait_seconds: histogram(
                &meter,
                "reelfarm_scheduler_queue_wait_seconds",
                "Seconds a task waited ready before it was placed",
                LONG_BUCKETS,
            ),
            sequence_seconds: histogram(
                &meter,
                "reelfarm_scheduler_sequence_seconds",
                "Submit to end of a sequence, by final state",
                LONG_BUCKETS,
            ),
            leader: meter
                .i64_gauge("reelfarm_scheduler_leader")
                .with_description("1 while this scheduler leads, else 0")
                .build(),
            workers: meter
                .i64_gauge("reelfarm_scheduler_workers")
                .with_description("Registered workers by state (connected, disconnected)")
                .build(),
            video_seconds: meter
                .f64_counter("reelfarm_throughput_video_seconds_total")
                .with_description("Seconds of video in finished segments")
                .build(),
            device_seconds: meter
                .f64_counter("reelfarm_throughput_device_seconds_total")
                .with_description("Device seconds spent rendering finished segments")
                .build(),
            cost_usd: meter
                .f64_counter("reelfarm_cost_usd_total")
                .with_description("US dollars paid for hosted model clips, by owner")
                .build(),
        }
    })
}

/// One worker process and its devices.
pub struct WorkerMetrics {
    pub memory_total_bytes: Gauge<u64>,
    pub memory_reserved_bytes: Gauge<u64>,
    pub memory_used_bytes: Gauge<u64>,
    pub utilization_ratio: Gauge<f64>,
    pub temperature_celsius: Gauge<f64>,
    pub power_watts: Gauge<f64>,
    pub model_load_seconds: Histogram<f64>,
    pub denoise_step_seconds: Histogram<f64>,
    pub segment_render_seconds: Histogram<f64>,
    pub peak_over_estimate_ratio: Histogram<f64>,
    pub running_tasks: Gauge<i64>,
}

pub fn worker() -> &'static WorkerMetrics {
    static METRICS: OnceLock<WorkerMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = meter();
        WorkerMetrics {
            memory_total_bytes: meter
                .u64_gauge("reelfarm_worker_device_memory_total_bytes")
                .with_description("Device memory (NVML, or the simulated inventory)")
                .build(),
            memory_reserved_bytes: meter
                .u64_gauge("reelfarm_worker_device_memory_reserved_bytes")
                .with_description("Memory the scheduler reserved for the tasks running on the device")
                .build(),
            memory_used_bytes: meter
                .u64_gauge("reelfarm_worker_device_memory_used_bytes")
                .with_description("Memory in use on the device (NVML; on the CPU the running tasks' measured heap)")
                .build(),
            utilization_ratio: meter
                .f64_gauge("reelfarm_worker_device_utilization_ratio")
                .with_description("Device busy fraction, 0 to 1 (NVML; 0 without a driver)")
                .build(),
            temperature_celsius: meter
                .f64_gauge("reelfarm_worker_device_temperature_celsius")
                .with_description("Device temperature (NVML; 0 without a driver)")
                .build(),
            power_watts: meter
                .f64_gauge("reelfarm_worker_device_power_watts")
                .with_description("Device power draw (NVML; 0 without a driver)")
                .build(),
            model_load_seconds: histogram(
                &meter,
                "reelfarm_worker_model_load_seconds",
                "Seconds to load a model's weights",
                STEP_BUCKETS,
            ),
            denoise_step_seconds: histogram(
                &meter,
                "reelfarm_worker_denoise_step_seconds",
                "Seconds per denoising step, by model and resolution",
                STEP_BUCKETS,
            ),
            segment_render_seconds: histogram(
                &meter,
                "reelfarm_worker_segment_render_seconds",
                "Seconds from start to upload of one segment, by model and resolution",
                LONG_BUCKETS,
            ),
            peak_over_estimate_ratio: histogram(
                &meter,
                "reelfarm_worker_peak_over_estimate_ratio",
                "A segment's measured peak memory divided by what was reserved for it",
                RATIO_BUCKETS,
            ),
            running_tasks: meter
                .i64_gauge("reelfarm_worker_running_tasks")
                .with_description("Tasks running on this worker")
                .build(),
        }
    })
}

/// Object-store traffic of any process.
pub struct StorageMetrics {
    pub bytes: Counter<u64>,
    pub seconds: Histogram<f64>,
    pub errors: Counter<u64>,
}

pub fn storage() -> &'static StorageMetrics {
    static METRICS: OnceLock<StorageMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = meter();
        StorageMetrics {
            bytes: meter
                .u64_counter("reelfarm_storage_bytes_total")
                .with_description(
                    "Bytes moved to and from the object store, by operation (put, get)",
                )
                .build(),
            seconds: histogram(
                &meter,
                "reelfarm_storage_operation_seconds",
                "Latency of object-store operations, by operation",
                STORAGE_BUCKETS,
            ),
            errors: meter
                .u64_counter("reelfarm_storage_errors_total")
                .with_description("Failed object-store operations, by operation and class")
                .build(),
        }
    })
}

/// The stitch stage.
pub struct StitchMetrics {
    pub seconds: Histogram<f64>,
    pub seam_delta_e00: Histogram<f64>,
}

pub fn stitch() -> &'static StitchMetrics {
    static METRICS: OnceLock<StitchMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = meter();
        StitchMetrics {
            seconds: histogram(
                &meter,
                "reelfarm_stitch_seconds",
                "Seconds to stitch one sequence",
                LONG_BUCKETS,
            ),
            seam_delta_e00: histogram(
                &meter,
                "reelfarm_stitch_seam_delta_e00",
                "Colour difference (CIEDE2000) across each seam, before and after matching (stage)",
                DELTA_E_BUCKETS,
            ),
        }
    })
}

/// Label shorthand.
pub fn label(key: &'static str, value: impl Into<String>) -> KeyValue {
    KeyValue::new(key, value.into())
}
