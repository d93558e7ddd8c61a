//! The stitch task as a worker runs it: fetch the sidecars, run the pure stitch
//! (`reelfarm_stitch`) on a blocking thread that fetches each segment's video from the
//! object store only when it reaches it (one file in memory at a time), and store the video
//! with its report, timeline and contact sheet.

use std::sync::Arc;

use reelfarm_common::blob::BlobStore;
use reelfarm_common::sequence::ColorMatch;
use reelfarm_common::{pb, unix_now_s};
use reelfarm_stitch::grading::SegmentColor;
use reelfarm_stitch::{
    AlternateTake, Join, SequenceStitch, ShotCost, Sidecar, StitchError, StitchInput, TakeReport,
    VideoSource, stitch_with_takes,
};

use crate::task::{Phases, Progress, TaskFailure, fetch_verified, put_recorded};

mod seam_qa;

pub struct StitchResult {
    pub video_key: String,
    pub phases: Phases,
    pub objects: Vec<pb::StoredObject>,
    /// The continuity joins' scores, for seam QA.
    pub seams: Vec<pb::SeamScore>,
}

fn join_of(kind: i32) -> Join {
    match pb::JoinKind::try_from(kind).unwrap_or(pb::JoinKind::Cut) {
        pb::JoinKind::Continue => Join::Continue,
        pb::JoinKind::Crossfade => Join::Crossfade,
        pb::JoinKind::Cut | pb::JoinKind::Unspecified => Join::Cut,
    }
}

fn segment_color(part: &pb::StitchPart, sidecar: &Sidecar) -> SegmentColor {
    SegmentColor {
        scene: part.scene.clone(),
        grade_reference: part.grade_reference,
        continues_previous: join_of(part.join) == Join::Continue,
        first_frame: sidecar.colors.first_frame_lab.to_f64(),
        last_frame: sidecar.colors.last_frame_lab.to_f64(),
        whole: sidecar.colors.segment_lab.to_f64(),
    }
}

/// A part's video, fetched when the stitch reaches it and checked against exactly what was
/// accepted: a mismatch sends the segment back to be rendered again.
fn fetcher(
    store: &Arc<dyn BlobStore>,
    runtime: &tokio::runtime::Handle,
    part: &pb::StitchPart,
) -> VideoSource {
    let (store, runtime) = (store.clone(), runtime.clone());
    let (key, crc32c) = (part.video_key.clone(), part.video_crc32c.clone());
    VideoSource::Fetch(Box::new(move || {
        runtime
            .block_on(fetch_verified(store.as_ref(), &key, &crc32c))
            .map(|bytes| bytes.to_vec())
            .map_err(|failure| StitchError::Fetch {
                key: key.clone(),
                corrupt: failure.reason == pb::FailureReason::CorruptInput,
                message: failure.message,
            })
    }))
}

pub async fn run_stitch(
    task: pb::StitchTask,
    store: Arc<dyn BlobStore>,
    progress: Progress,
) -> Result<StitchResult, TaskFailure> {
    let method = ColorMatch::from_name(&task.color_match).ok_or_else(|| {
        TaskFailure::invalid(format!(
            "color_match: unknown method {:?}",
            task.color_match
        ))
    })?;
    let mut phases = Phases::default();
    let start = unix_now_s();
    let task_start = start;
    let mut inputs = Vec::with_capacity(task.parts.len());
    let runtime = tokio::runtime::Handle::current();
    for part in &task.parts {
        // Sidecars (small) now; each video only when the stitch reaches it, checked against
        // exactly what was accepted: a mismatch sends the segment back to be rendered again.
        let sidecar =
            fetch_verified(store.as_ref(), &part.sidecar_key, &part.sidecar_crc32c).await?;
        let sidecar: Sidecar = serde_json::from_slice(&sidecar).map_err(|error| {
            TaskFailure::invalid(format!("sidecar {}: {error}", part.sidecar_key))
        })?;
        inputs.push(StitchInput {
            segment_id: part.segment_id.clone(),
            shot_index: part.shot_index,
            shot_name: part.shot_name.clone(),
            join: join_of(part.join),
            lead_frames: part.lead_frames,
            timeline_frames: part.timeline_frames,
            video: fetcher(&store, &runtime, part),
            color: segment_color(part, &sidecar),
        });
    }
    phases.record("storage", "stitch", start);
    let alternates: Vec<AlternateTake> = task
        .alternates
        .iter()
        .map(|part| AlternateTake {
            segment_id: part.segment_id.clone(),
            shot_index: part.shot_index,
            shot_name: part.shot_name.clone(),
            take: part.take,
            seed: part.seed,
            lead_frames: part.lead_frames,
            timeline_frames: part.timeline_frames,
            video: fetcher(&store, &runtime, part),
        })
        .collect();
    // Every take of the shots with alternates, by shot and take.
    let with_takes: std::collections::BTreeSet<u32> =
        task.alternates.iter().map(|part| part.shot_index).collect();
    let takes = task
        .parts
        .iter()
        .filter(|part| with_takes.contains(&part.shot_index))
        .map(|part| (part, true))
        .chain(task.alternates.iter().map(|part| (part, false)))
        // A take's first segment names it (its seed base starts there).
        .filter(|(part, _)| part.segment_id.split('-').nth(1) == Some("00"))
        .map(|(part, on_timeline)| TakeReport {
            shot_index: part.shot_index,
            shot_name: part.shot_name.clone(),
            take: part.take,
            seed: part.seed,
            segment_id: part.segment_id.clone(),
            on_timeline,
        })
        .collect::<Vec<_>>();
    let mut takes = takes;
    takes.sort_by_key(|take| (take.shot_index, take.take));

    let mut shot_costs: Vec<ShotCost> = Vec::new();
    for part in task.parts.iter().chain(&task.alternates) {
        if part.cost_usd <= 0.0 {
            continue;
        }
        match shot_costs
            .iter_mut()
            .find(|shot| shot.shot_index == part.shot_index)
        {
            Some(shot) => shot.cost_usd += part.cost_usd,
            None => shot_costs.push(ShotCost {
                shot_index: part.shot_index,
                shot_name: part.shot_name.clone(),
                cost_usd: part.cost_usd,
            }),
        }
    }
    shot_costs.sort_by_key(|shot| shot.shot_index);
    let sequence = SequenceStitch {
        takes,
        shot_costs: shot_costs.clone(),
        reused_segments: task.parts.iter().filter(|part| part.reused).count(),
        title: task.title.clone(),
        width: task.width,
        height: task.height,
        fps: task.fps,
        method,
        media_name: task
            .video_key
            .rsplit('/')
            .next()
            .unwrap_or("final.mp4")
            .to_string(),
    };
    let (outputs, codec_phases) = tokio::task::spawn_blocking(move || {
        let mut phases = Phases::default();
        let codec_start = unix_now_s();
        let outputs = stitch_with_takes(&sequence, &inputs, &alternates, &progress)?;
        // Decode, grading and encode interleave frame by frame: one codec phase.
        phases.record("codec", "stitch", codec_start);
        Ok::<_, TaskFailure>((outputs, phases))
    })
    .await
    .map_err(|error| {
        TaskFailure::new(
            pb::FailureReason::ModelError,
            format!("stitch thread failed: {error}"),
        )
    })??;
    crate::worker_metrics::seams(&outputs.joins);
    let seams = seam_qa::scores(&outputs.joins);
    let report = seam_qa::with_tries(outputs.report, &task, &seams)
        .and_then(|report| with_join_costs(report, &shot_costs))
        .map_err(|error| TaskFailure::invalid(format!("stitch report: {error}")))?;

    let start = unix_now_s();
    let stored = [
        (&task.report_key, report),
        (&task.timeline_key, outputs.timeline),
        (&task.contact_sheet_key, outputs.contact_sheet),
        // The video goes last: its presence means the sequence's outputs are complete.
        (&task.video_key, outputs.video),
    ];
    let mut objects = Vec::with_capacity(stored.len());
    for (key, bytes) in stored {
        if key.is_empty() {
            continue;
        }
        objects.push(put_recorded(store.as_ref(), key, bytes).await?);
    }
    phases.record("storage", "stitch", start);
    let mut all = codec_phases;
    all.extend(phases);
    reelfarm_common::metrics::stitch()
        .seconds
        .record(unix_now_s() - task_start, &[]);
    Ok(StitchResult {
        video_key: task.video_key,
        phases: all,
        objects,
        seams,
    })
}

/// Each join of the report with what its shot's hosted clips cost (`shot_cost_usd`), when
/// any shot cost something: the join's line tells what that shot was paid.
fn with_join_costs(report: Vec<u8>, shot_costs: &[ShotCost]) -> Result<Vec<u8>, serde_json::Error> {
    if shot_costs.is_empty() {
        return Ok(report);
    }
    let mut value: serde_json::Value = serde_json::from_slice(&report)?;
    if let Some(joins) = value
        .get_mut("joins")
        .and_then(|joins| joins.as_array_mut())
    {
        for join in joins {
            let shot = join.get("shot_index").and_then(serde_json::Value::as_u64);
            let cost = shot_costs
                .iter()
                .find(|cost| Some(u64::from(cost.shot_index)) == shot)
                .map_or(0.0, |cost| cost.cost_usd);
            join["shot_cost_usd"] = serde_json::json!(cost);
        }
    }
    serde_json::to_vec_pretty(&value)
}
