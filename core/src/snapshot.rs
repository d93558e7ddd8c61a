//! Farm records → protocol messages: the status snapshots clients watch and the assignment
//! messages workers receive. Pure conversions, kept apart from the transitions in `farm`.

use reelfarm_common::{keys, pb};

use crate::Error;
use crate::farm::{
    Farm, Quarantined, SequenceRecord, SequenceState, TaskRecord, TaskRef, TaskState, WorkerRecord,
};
use crate::planner::Join;

fn task_state(state: TaskState) -> pb::TaskState {
    match state {
        TaskState::Blocked => pb::TaskState::Blocked,
        TaskState::Ready => pb::TaskState::Ready,
        TaskState::Running => pb::TaskState::Running,
        TaskState::Done => pb::TaskState::Done,
        TaskState::Failed => pb::TaskState::Failed,
        TaskState::Cancelled => pb::TaskState::Cancelled,
    }
}

fn sequence_state(state: SequenceState) -> pb::SequenceState {
    match state {
        SequenceState::Queued => pb::SequenceState::Queued,
        SequenceState::Rendering => pb::SequenceState::Rendering,
        SequenceState::Stitching => pb::SequenceState::Stitching,
        SequenceState::Succeeded => pb::SequenceState::Succeeded,
        SequenceState::Failed => pb::SequenceState::Failed,
        SequenceState::Cancelled => pb::SequenceState::Cancelled,
    }
}

fn join_kind(join: Join) -> pb::JoinKind {
    match join {
        Join::Cut => pb::JoinKind::Cut,
        Join::Continue => pb::JoinKind::Continue,
        Join::Crossfade => pb::JoinKind::Crossfade,
    }
}

fn task_status(task: &TaskRecord, done_total: u64) -> pb::TaskStatus {
    let (done, total) = if task.state == TaskState::Done {
        (done_total, done_total)
    } else {
        (task.progress_done, task.progress_total)
    };
    pb::TaskStatus {
        state: task_state(task.state) as i32,
        worker: task.worker.clone().unwrap_or_default(),
        attempt: task.attempt,
        error: task.error.clone().unwrap_or_default(),
        done,
        total,
    }
}

pub fn sequence_status(record: &SequenceRecord) -> pb::SequenceStatus {
    let segments = record
        .plan
        .segments
        .iter()
        .zip(&record.segments)
        .map(|(planned, task)| pb::SegmentStatus {
            segment_id: planned.id.clone(),
            shot_index: planned.shot_index,
            segment_index: planned.segment_index,
            timeline_frames: planned.timeline_frames,
            state: task_state(task.state) as i32,
            // Progress is not durable: a done segment restored by a new leader shows all steps.
            step: if task.state == TaskState::Done {
                planned.steps
            } else {
                task.progress_done as u32
            },
            steps: planned.steps,
            worker: task.worker.clone().unwrap_or_default(),
            attempt: task.attempt,
            error: task.error.clone().unwrap_or_default(),
            continues_from: planned
                .continues_from
                .map(|index| record.plan.segments[index].id.clone())
                .unwrap_or_default(),
            memory_estimate_bytes: if task.reserved_bytes > 0 {
                task.reserved_bytes
            } else {
                planned.memory_estimate_bytes
            },
            device_index: task.device_index.unwrap_or(0),
            peak_memory_bytes: task.peak_memory_bytes,
            oom_count: task.oom_count,
            low_memory: task.low_memory,
            reused: task.reused_from.is_some(),
            resumed_from_step: task.resumed_from_step,
            take: planned.take,
            alternate: !planned.on_timeline,
            model: planned.model.clone(),
            clip_seconds: planned.clip_seconds,
            cost_usd: task.cost_usd,
            remote_job_id: task.remote_job_id.clone().unwrap_or_default(),
        })
        .collect();
    let succeeded = record.state == SequenceState::Succeeded;
    pb::SequenceStatus {
        sequence_id: record.id.clone(),
        title: record.sequence.display_title(),
        state: sequence_state(record.state) as i32,
        width: record.plan.width,
        height: record.plan.height,
        fps: record.plan.fps,
        total_frames: record.plan.total_frames,
        duration_seconds: record.sequence.total_duration_seconds(),
        shot_count: record.sequence.shots.len() as u32,
        estimated_cost_usd: record.plan.estimated_cost_usd(),
        cost_usd: record.segments.iter().map(|task| task.cost_usd).sum(),
        segments,
        stitch: Some(task_status(&record.stitch, record.plan.total_frames)),
        video_key: if succeeded {
            keys::final_video(&record.id)
        } else {
            String::new()
        },
        report_key: if succeeded {
            keys::final_report(&record.id)
        } else {
            String::new()
        },
        error: record.error.clone().unwrap_or_default(),
        submitted_unix_s: record.submitted_unix_s,
        finished_unix_s: record.finished_unix_s.unwrap_or(0.0),
        phases: record.phases.clone(),
        revises: record
            .revision
            .as_ref()
            .map(|revision| revision.of.clone())
            .unwrap_or_default(),
        lineage: record
            .revision
            .as_ref()
            .map_or_else(|| record.id.clone(), |revision| revision.lineage.clone()),
        version: record
            .revision
            .as_ref()
            .map_or(1, |revision| revision.version),
        change: record
            .revision
            .as_ref()
            .map(|revision| revision.change.clone())
            .unwrap_or_default(),
    }
}

/// A quarantined sequence as clients see it: failed, with the reason, and nothing else
/// known.
pub fn quarantined_status(quarantined: &Quarantined) -> pb::SequenceStatus {
    pb::SequenceStatus {
        sequence_id: quarantined.id.clone(),
        state: pb::SequenceState::Failed as i32,
        error: quarantined.error.clone(),
        submitted_unix_s: quarantined.submitted_unix_s,
        ..Default::default()
    }
}

/// One sequence's status, quarantined ones included; `NotFound` for an unknown id.
pub fn status(farm: &Farm, id: &str) -> Result<pb::SequenceStatus, Error> {
    match farm.quarantined_sequence(id) {
        Some(quarantined) => Ok(quarantined_status(quarantined)),
        None => Ok(sequence_status(farm.sequence(id)?)),
    }
}

/// Up to `limit` statuses in id order after the id `after` ("" from the start), and whether
/// more follow. With `owner`, only that owner's sequences; without, every one, quarantined
/// ones included (their owner is unknown).
pub fn statuses_page(
    farm: &Farm,
    after: &str,
    limit: usize,
    owner: Option<&str>,
) -> (Vec<pb::SequenceStatus>, bool) {
    use std::ops::Bound::{Excluded, Unbounded};
    let start = if after.is_empty() {
        Unbounded
    } else {
        Excluded(after.to_string())
    };
    let mut page: Vec<pb::SequenceStatus> = farm
        .sequences
        .range((start.clone(), Unbounded))
        .filter(|(_, record)| {
            owner.is_none_or(|owner| record.sequence.owner.as_deref() == Some(owner))
        })
        .take(limit + 1)
        .map(|(_, record)| sequence_status(record))
        .chain(
            farm.quarantined
                .range((start, Unbounded))
                .filter(|_| owner.is_none())
                .take(limit + 1)
                .map(|(_, quarantined)| quarantined_status(quarantined)),
        )
        .collect();
    page.sort_by(|a, b| a.sequence_id.cmp(&b.sequence_id));
    let more = page.len() > limit;
    page.truncate(limit);
    (page, more)
}

/// The checksum a finished task of `record` recorded for `key` ("" when none did).
pub fn recorded_crc32c(record: &SequenceRecord, key: &str) -> String {
    record
        .segments
        .iter()
        .chain([&record.stitch])
        .flat_map(|task| &task.objects)
        .find(|object| object.key == key)
        .map(|object| object.crc32c.clone())
        .unwrap_or_default()
}

/// The segments on the timeline (`on_timeline`), or the alternate takes, as stitch parts.
fn stitch_parts(record: &SequenceRecord, on_timeline: bool) -> Vec<pb::StitchPart> {
    record
        .plan
        .segments
        .iter()
        .zip(&record.segments)
        .enumerate()
        .filter(|(_, (planned, _))| planned.on_timeline == on_timeline)
        .map(|(index, (planned, done))| {
            let prefix = record.accepted_prefix(index);
            let video_key = keys::segment_video(&prefix);
            let sidecar_key = keys::segment_sidecar(&prefix);
            let shot_name = record
                .sequence
                .shots
                .get(planned.shot_index as usize)
                .map(|shot| shot.display_name(planned.shot_index as usize))
                .unwrap_or_default();
            pb::StitchPart {
                segment_id: planned.id.clone(),
                shot_index: planned.shot_index,
                video_crc32c: recorded_crc32c(record, &video_key),
                sidecar_crc32c: recorded_crc32c(record, &sidecar_key),
                video_key,
                join: join_kind(planned.join) as i32,
                // A continuation's first rendered frame (the handoff picture) is not in
                // its file.
                lead_frames: match planned.join {
                    Join::Continue => planned.lead_frames.saturating_sub(1),
                    Join::Crossfade | Join::Cut => planned.lead_frames,
                },
                timeline_frames: planned.timeline_frames,
                sidecar_key,
                scene: planned.scene.clone(),
                grade_reference: planned.grade_reference,
                shot_name,
                reused: done.reused_from.is_some(),
                cost_usd: done.cost_usd,
                take: planned.take,
                seed: record.seed_of(index),
            }
        })
        .collect()
}

/// What a worker needs to run one task, keys included.
pub fn assignment_message(
    record: &SequenceRecord,
    task: TaskRef,
    reference: pb::AssignmentRef,
    device_index: u32,
    checkpoint_every: u32,
) -> pb::Assignment {
    let task = match task {
        TaskRef::Segment(index) => {
            let planned = &record.plan.segments[index];
            let condition_key = match planned.continues_from {
                // The handoff frame of the predecessor's accepted attempt.
                Some(previous) => keys::segment_handoff_frame(&record.accepted_prefix(previous)),
                None if planned.uses_reference => {
                    keys::reference_image(&record.id, planned.shot_index)
                }
                None => String::new(),
            };
            let condition_crc32c = recorded_crc32c(record, &condition_key);
            pb::assignment::Task::Segment(pb::SegmentTask {
                segment_id: planned.id.clone(),
                shot_index: planned.shot_index,
                segment_index: planned.segment_index,
                model: planned.model.clone(),
                prompt: planned.prompt.clone(),
                negative: planned.negative.clone(),
                width: record.plan.width,
                height: record.plan.height,
                fps: record.plan.fps,
                timeline_frames: planned.timeline_frames,
                lead_frames: planned.lead_frames,
                render_frames: planned.render_frames,
                steps: planned.steps,
                guidance: planned.guidance,
                seed: record.seed_of(index),
                join: join_kind(planned.join) as i32,
                condition_key,
                condition_crc32c,
                output_prefix: record.attempt_prefix(index, record.segments[index].attempt),
                memory_estimate_bytes: record.segments[index].reserved_bytes,
                handoff_back_frames: planned.handoff_back_frames,
                low_memory: record.segments[index].low_memory,
                checkpoint_every,
                checkpoint_key: if checkpoint_every > 0 {
                    keys::segment_checkpoint(&record.segment_prefix(index))
                } else {
                    String::new()
                },
                clip_seconds: planned.clip_seconds,
                remote_job_id: record.segments[index]
                    .remote_job_id
                    .clone()
                    .unwrap_or_default(),
            })
        }
        TaskRef::Stitch => pb::assignment::Task::Stitch(pb::StitchTask {
            title: record.sequence.display_title(),
            width: record.plan.width,
            height: record.plan.height,
            fps: record.plan.fps,
            parts: stitch_parts(record, true),
            alternates: stitch_parts(record, false),
            video_key: keys::final_video(&record.id),
            report_key: keys::final_report(&record.id),
            color_match: record.sequence.color_match.name().to_string(),
            timeline_key: keys::final_timeline(&record.id),
            contact_sheet_key: keys::final_contact_sheet(&record.id),
            seam_qa: record.sequence.seam_qa_enabled(),
            seam_tries: record
                .seam_tries
                .iter()
                .map(|tried| tried.to_pb())
                .collect(),
        }),
    };
    pb::Assignment {
        assignment: Some(reference),
        sequence_id: record.id.clone(),
        device_index,
        task: Some(task),
        traceparent: record.traceparent.clone(),
    }
}

pub fn worker_status(worker: &WorkerRecord) -> pb::WorkerStatus {
    pb::WorkerStatus {
        worker_id: worker.id.clone(),
        name: worker.name.clone(),
        state: if worker.draining {
            "draining"
        } else if worker.stalled {
            "stalled"
        } else if worker.connected {
            "connected"
        } else {
            "reconnecting"
        }
        .to_string(),
        devices: worker
            .devices
            .iter()
            .map(|device| pb::DeviceStatus {
                index: device.device.index,
                kind: device.device.kind.clone(),
                name: device.device.name.clone(),
                memory_total_bytes: device.device.memory_total_bytes,
                reserved_bytes: device.reserved_bytes,
                running: device.running.clone(),
                class: device.device.class.clone(),
                speed: device.device.speed,
                memory_used_bytes: device.device.memory_used_bytes,
                utilization_percent: device.device.utilization_percent,
                temperature_celsius: device.device.temperature_celsius,
                power_milliwatts: device.device.power_milliwatts,
                uuid: device.device.uuid.clone(),
                resident_models: device.resident_models.clone(),
            })
            .collect(),
        models: worker.models.clone(),
    }
}

/// Segments that finished within `window_seconds` before `now`: their seconds of video and
/// the device seconds their successful attempts' phases span. The same sums the scheduler
/// adds to `reelfarm_throughput_*_seconds_total` when each one completes.
pub fn throughput<'a>(
    sequences: impl Iterator<Item = &'a SequenceRecord>,
    now: f64,
    window_seconds: f64,
) -> pb::Throughput {
    let mut total = pb::Throughput {
        window_seconds,
        ..Default::default()
    };
    for record in sequences {
        for (index, task) in record.segments.iter().enumerate() {
            if task.state != TaskState::Done {
                continue;
            }
            let planned = &record.plan.segments[index];
            let phases: Vec<pb::TimedPhase> = record
                .phases
                .iter()
                .filter(|phase| phase.task_id == planned.id)
                .cloned()
                .collect();
            let finished = phases.iter().map(|p| p.end_unix_s).fold(0.0, f64::max);
            if phases.is_empty() || finished < now - window_seconds {
                continue;
            }
            total.segments += 1;
            total.video_seconds += planned.timeline_frames as f64 / f64::from(record.sequence.fps);
            total.device_seconds += reelfarm_common::busy_seconds(&phases);
        }
    }
    total
}
