//! The stitch task: decode the segments in timeline order and write one H.264 MP4 whose
//! frame count is exactly the sum of the segments' timeline frames. Cuts and continuations
//! append; a crossfade dissolves its handle frames over the previous shot's tail.

use std::collections::VecDeque;
use std::io::Cursor;
use std::sync::Arc;

use bytes::Bytes;
use reelfarm_common::blob::BlobStore;
use reelfarm_common::{pb, unix_now_s};
use serde::Serialize;

use crate::frame::RgbFrame;
use crate::task::{Phases, Progress, TaskFailure};
use crate::video::{EncodeSettings, Mp4Reader, Mp4Writer, Quality};

/// One segment as the stitcher sees it.
pub struct StitchInput {
    pub segment_id: String,
    pub shot_index: u32,
    pub join: pb::JoinKind,
    /// Dissolve frames at the start of the file (crossfade only; zero otherwise).
    pub lead_frames: u64,
    pub timeline_frames: u64,
    pub video: Bytes,
}

#[derive(Debug, Clone, Serialize)]
pub struct JoinReport {
    pub index: usize,
    pub kind: &'static str,
    pub shot_index: u32,
    pub segment_id: String,
    pub at_frame: u64,
}

/// Written beside the video as the sequence report.
#[derive(Debug, Clone, Serialize)]
pub struct StitchReport {
    pub title: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub frames: u64,
    pub duration_seconds: f64,
    pub segments: usize,
    pub joins: Vec<JoinReport>,
    pub decode_seconds: f64,
    pub encode_seconds: f64,
}

pub fn join_name(join: pb::JoinKind) -> &'static str {
    match join {
        pb::JoinKind::Continue => "continue",
        pb::JoinKind::Crossfade => "crossfade",
        pb::JoinKind::Cut | pb::JoinKind::Unspecified => "cut",
    }
}

/// A linear dissolve: `alpha` 0 shows `from`, 1 shows `to`.
pub fn dissolve(from: &RgbFrame, to: &RgbFrame, alpha: f32) -> RgbFrame {
    let alpha = alpha.clamp(0.0, 1.0);
    let data = from
        .data
        .iter()
        .zip(&to.data)
        .map(|(&a, &b)| (f32::from(a) + (f32::from(b) - f32::from(a)) * alpha).round() as u8)
        .collect();
    RgbFrame::new(from.width, from.height, data)
}

/// Joins the inputs into `writer`, reporting frames written; returns (frames, decode s, encode s).
pub fn stitch<W: std::io::Write + std::io::Seek>(
    inputs: &[StitchInput],
    writer: &mut Mp4Writer<W>,
    progress: &Progress,
) -> Result<(u64, f64, f64), TaskFailure> {
    let total: u64 = inputs.iter().map(|input| input.timeline_frames).sum();
    let (mut decode_seconds, mut encode_seconds) = (0.0, 0.0);
    let mut written = 0u64;
    let mut held: VecDeque<RgbFrame> = VecDeque::new();
    let mut write = |frame: &RgbFrame,
                     written: &mut u64,
                     encode_seconds: &mut f64|
     -> Result<(), TaskFailure> {
        let start = unix_now_s();
        writer.push(frame)?;
        *encode_seconds += unix_now_s() - start;
        *written += 1;
        if written.is_multiple_of(24) || *written == total {
            progress.report(*written, total);
        }
        Ok(())
    };
    for (position, input) in inputs.iter().enumerate() {
        progress.check_cancelled()?;
        let decode_start = unix_now_s();
        let mut reader = Mp4Reader::open(input.video.to_vec())?;
        let needed = input.lead_frames + input.timeline_frames;
        if reader.frame_count() < needed {
            return Err(TaskFailure::invalid(format!(
                "segment {} has {} frames, the plan needs {needed}",
                input.segment_id,
                reader.frame_count()
            )));
        }
        decode_seconds += unix_now_s() - decode_start;
        let hold_for_next = match inputs.get(position + 1) {
            Some(next) if next.join == pb::JoinKind::Crossfade => next.lead_frames as usize,
            _ => 0,
        };
        for index in 0..needed {
            let decode_start = unix_now_s();
            let frame = reader.next_frame()?.ok_or_else(|| {
                TaskFailure::invalid(format!("segment {} ended early", input.segment_id))
            })?;
            decode_seconds += unix_now_s() - decode_start;
            if index < input.lead_frames {
                // Dissolve over the held tail; with no tail left (a dissolve longer than the
                // segment before it), the handle frame is dropped so the timeline stays exact.
                if let Some(tail) = held.pop_front() {
                    let alpha = (index + 1) as f32 / (input.lead_frames + 1) as f32;
                    write(
                        &dissolve(&tail, &frame, alpha),
                        &mut written,
                        &mut encode_seconds,
                    )?;
                }
                continue;
            }
            held.push_back(frame);
            while held.len() > hold_for_next {
                let frame = held.pop_front().expect("length checked");
                write(&frame, &mut written, &mut encode_seconds)?;
            }
        }
        // Tail frames the next crossfade could not use (it has fewer lead frames) go out as they are.
        while held.len() > hold_for_next {
            let frame = held.pop_front().expect("length checked");
            write(&frame, &mut written, &mut encode_seconds)?;
        }
    }
    for frame in held.drain(..) {
        write(&frame, &mut written, &mut encode_seconds)?;
    }
    Ok((written, decode_seconds, encode_seconds))
}

pub struct StitchResult {
    pub video_key: String,
    pub phases: Phases,
}

pub async fn run_stitch(
    task: pb::StitchTask,
    store: Arc<dyn BlobStore>,
    progress: Progress,
) -> Result<StitchResult, TaskFailure> {
    let mut phases = Phases::default();
    let start = unix_now_s();
    let mut inputs = Vec::with_capacity(task.parts.len());
    for part in &task.parts {
        let video = store
            .get(&part.video_key)
            .await
            .map_err(TaskFailure::storage)?;
        let join = pb::JoinKind::try_from(part.join).unwrap_or(pb::JoinKind::Cut);
        let lead_frames = if join == pb::JoinKind::Crossfade {
            part.lead_frames
        } else {
            0
        };
        inputs.push(StitchInput {
            segment_id: part.segment_id.clone(),
            shot_index: part.shot_index,
            join,
            lead_frames,
            timeline_frames: part.timeline_frames,
            video,
        });
    }
    phases.record("storage", "stitch", start);

    let blocking_task = task.clone();
    let (video, report, mut codec_phases) =
        tokio::task::spawn_blocking(move || -> Result<_, TaskFailure> {
            let settings = EncodeSettings {
                width: blocking_task.width,
                height: blocking_task.height,
                fps: blocking_task.fps,
                quality: Quality::Delivery,
            };
            let mut phases = Phases::default();
            let codec_start = unix_now_s();
            let mut writer = Mp4Writer::new(Cursor::new(Vec::new()), settings)?;
            let (frames, decode_seconds, encode_seconds) = stitch(&inputs, &mut writer, &progress)?;
            let video = writer.finish()?.into_inner();
            // Decode and encode interleave frame by frame: the stitch counts as one codec phase.
            phases.record("codec", "stitch", codec_start);
            let mut at_frame = 0;
            let joins = inputs
                .iter()
                .enumerate()
                .map(|(index, input)| {
                    let join = JoinReport {
                        index,
                        kind: join_name(input.join),
                        shot_index: input.shot_index,
                        segment_id: input.segment_id.clone(),
                        at_frame,
                    };
                    at_frame += input.timeline_frames;
                    join
                })
                .skip(1)
                .collect();
            let report = StitchReport {
                title: blocking_task.title.clone(),
                width: blocking_task.width,
                height: blocking_task.height,
                fps: blocking_task.fps,
                frames,
                duration_seconds: frames as f64 / f64::from(blocking_task.fps.max(1)),
                segments: inputs.len(),
                joins,
                decode_seconds,
                encode_seconds,
            };
            Ok((video, report, phases))
        })
        .await
        .map_err(|error| {
            TaskFailure::new(
                pb::FailureReason::ModelError,
                format!("stitch thread failed: {error}"),
            )
        })??;

    let start = unix_now_s();
    let report_json = serde_json::to_vec_pretty(&report)
        .map_err(|error| TaskFailure::invalid(error.to_string()))?;
    store
        .put(&task.report_key, report_json.into())
        .await
        .map_err(TaskFailure::storage)?;
    store
        .put(&task.video_key, video.into())
        .await
        .map_err(TaskFailure::storage)?;
    phases.record("storage", "stitch", start);
    codec_phases.extend(phases);
    Ok(StitchResult {
        video_key: task.video_key,
        phases: codec_phases,
    })
}

#[cfg(test)]
#[path = "stitch_tests.rs"]
mod tests;
