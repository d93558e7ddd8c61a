//! The stitch task: decode the segments in timeline order, grade each to its scene's look
//! (see `grading`), blend every join the plan asks for, and write one H.264 MP4 whose frame
//! count is exactly the sum of the segments' timeline frames. Beside the video it writes the
//! report (timings and seam metrics), an OpenTimelineIO timeline and a contact sheet.
//!
//! A part's lead frames (a crossfade's dissolve handle, a continuation's overlap) dissolve
//! over the previous part's tail, so they replace frames instead of adding any. Decoding,
//! grading and metering run on one thread, H.264 encoding on another, so the two overlap.

use std::collections::{BTreeMap, VecDeque};
use std::io::Cursor;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};

use bytes::Bytes;
use reelfarm_common::blob::BlobStore;
use reelfarm_common::sequence::ColorMatch;
use reelfarm_common::{pb, unix_now_s};
use serde::Serialize;

use crate::color::{lab_at, sample_grid, srgb_to_lab};
use crate::color_math::Vec3;
use crate::contact_sheet::{ContactRow, contact_sheet, thumbnail};
use reelfarm_media::frame::RgbFrame;
use crate::grading::{GradeTable, SegmentColor, SegmentGrade, join_weight, plan_grades};
use crate::seams::{JoinMetrics, MeteredFrame, MeteredPart, SeamMeter};
use crate::segment::Sidecar;
use crate::task::{Phases, Progress, TaskFailure};
use crate::timeline::{TimelineJoin, TimelineShot, otio_timeline};
use reelfarm_media::video::{EncodeSettings, Mp4Reader, Mp4Writer, Quality, encode_png};

/// Pixels per frame the seam metrics compare.
const METER_SAMPLES: usize = 1024;
/// Width of a contact-sheet thumbnail.
const THUMB_WIDTH: u32 = 240;

/// One segment as the stitcher sees it.
pub struct StitchInput {
    pub segment_id: String,
    pub shot_index: u32,
    pub shot_name: String,
    pub join: pb::JoinKind,
    /// Frames at the start of the file that blend over the previous part's tail.
    pub lead_frames: u64,
    pub timeline_frames: u64,
    pub video: Bytes,
    pub color: SegmentColor,
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
    pub color_match: &'static str,
    pub joins: Vec<JoinMetrics>,
    pub decode_seconds: f64,
    pub grade_seconds: f64,
    pub encode_seconds: f64,
}

/// What one stitch produced besides the video itself.
pub struct Stitched {
    pub frames: u64,
    pub decode_seconds: f64,
    pub grade_seconds: f64,
    pub encode_seconds: f64,
    pub joins: Vec<JoinMetrics>,
    pub contact_rows: Vec<ContactRow>,
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
    RgbFrame::new(from.width, from.height, mix(&from.data, &to.data, alpha))
}

fn mix(from: &[u8], to: &[u8], alpha: f32) -> Vec<u8> {
    let alpha = alpha.clamp(0.0, 1.0);
    from.iter()
        .zip(to)
        .map(|(&a, &b)| (f32::from(a) + (f32::from(b) - f32::from(a)) * alpha).round() as u8)
        .collect()
}

/// A graded frame waiting to be written, with the uncorrected colours at the meter's grid.
struct Pending {
    part: usize,
    blended: bool,
    frame: RgbFrame,
    uncorrected: Vec<u8>,
}

/// The timeline frames of every shot: (first output frame, frame count), by shot index.
fn shot_ranges(inputs: &[StitchInput]) -> BTreeMap<u32, (u64, u64)> {
    let mut ranges = BTreeMap::new();
    let mut at = 0;
    for input in inputs {
        let range = ranges.entry(input.shot_index).or_insert((at, 0));
        range.1 += input.timeline_frames;
        at += input.timeline_frames;
    }
    ranges
}

/// The contact sheet's row for each shot and the output frames it shows (first, middle, last).
fn contact_picks(inputs: &[StitchInput], fps: u32) -> (Vec<String>, BTreeMap<u64, (usize, usize)>) {
    let mut labels = Vec::new();
    let mut picks = BTreeMap::new();
    for (row, (shot, (start, frames))) in shot_ranges(inputs).into_iter().enumerate() {
        let first = inputs
            .iter()
            .find(|input| input.shot_index == shot)
            .expect("a range comes from an input");
        labels.push(format!(
            "{} | {:.1} s | {}",
            first.shot_name,
            frames as f64 / f64::from(fps.max(1)),
            join_name(first.join)
        ));
        for (slot, offset) in [0, frames / 2, frames.saturating_sub(1)]
            .into_iter()
            .enumerate()
        {
            picks.insert(start + offset, (row, slot));
        }
    }
    (labels, picks)
}

/// The decoding side of the stitch: grades, blends and meters frames in timeline order and
/// hands them to the encoder, keeping the contact sheet's thumbnails on the way.
struct Finisher {
    sender: SyncSender<RgbFrame>,
    meter: SeamMeter,
    grid: Vec<usize>,
    picks: BTreeMap<u64, (usize, usize)>,
    thumbnails: Vec<[Option<RgbFrame>; 3]>,
    written: u64,
    meter_seconds: f64,
}

impl Finisher {
    fn write(&mut self, pending: Pending) -> Result<(), TaskFailure> {
        let start = unix_now_s();
        let uncorrected: Vec<Vec3> = pending
            .uncorrected
            .chunks_exact(3)
            .map(|rgb| srgb_to_lab([rgb[0], rgb[1], rgb[2]]))
            .collect();
        self.meter.observe(MeteredFrame {
            part: pending.part,
            blended: pending.blended,
            uncorrected,
            corrected: lab_at(&pending.frame, &self.grid),
        });
        if let Some(&(row, slot)) = self.picks.get(&self.written) {
            self.thumbnails[row][slot] = Some(thumbnail(&pending.frame, THUMB_WIDTH));
        }
        self.meter_seconds += unix_now_s() - start;
        self.written += 1;
        // A closed channel means the encoder stopped; its error is the one reported.
        self.sender
            .send(pending.frame)
            .map_err(|_| TaskFailure::invalid("the encoder stopped"))
    }
}

/// What the decoding side hands back when every frame is out.
struct Produced {
    meter: SeamMeter,
    thumbnails: Vec<[Option<RgbFrame>; 3]>,
    decode_seconds: f64,
    grade_seconds: f64,
}

fn samples_at(frame: &RgbFrame, grid: &[usize]) -> Vec<u8> {
    grid.iter()
        .flat_map(|&p| {
            [
                frame.data[p * 3],
                frame.data[p * 3 + 1],
                frame.data[p * 3 + 2],
            ]
        })
        .collect()
}

/// Frames in flight between the decoding and the encoding thread.
const PIPELINE_FRAMES: usize = 8;

/// Joins the inputs into `writer` with colour matching `method`. Decoding, grading and
/// metering run on one thread and H.264 encoding on this one, so the two overlap.
pub fn stitch<W: std::io::Write + std::io::Seek>(
    inputs: &[StitchInput],
    method: ColorMatch,
    writer: &mut Mp4Writer<W>,
    progress: &Progress,
) -> Result<Stitched, TaskFailure> {
    let colors: Vec<SegmentColor> = inputs.iter().map(|input| input.color.clone()).collect();
    let grades = plan_grades(method, &colors);
    let mut at_frame = 0;
    let parts = inputs
        .iter()
        .enumerate()
        .map(|(index, input)| {
            let part = MeteredPart {
                segment_id: input.segment_id.clone(),
                shot_index: input.shot_index,
                kind: join_name(input.join),
                at_frame,
                same_scene_as_previous: index > 0
                    && inputs[index - 1].color.scene == input.color.scene,
            };
            at_frame += input.timeline_frames;
            part
        })
        .collect();
    let total = at_frame;
    let settings = *writer.settings();
    let (labels, picks) = contact_picks(inputs, settings.fps);
    let (sender, receiver) = sync_channel(PIPELINE_FRAMES);
    let finisher = Finisher {
        sender,
        meter: SeamMeter::new(parts),
        grid: sample_grid(settings.width, settings.height, METER_SAMPLES),
        picks,
        thumbnails: vec![[None, None, None]; labels.len()],
        written: 0,
        meter_seconds: 0.0,
    };
    std::thread::scope(|scope| {
        let decoding = scope.spawn(|| decode_grade_and_blend(inputs, &grades, finisher, progress));
        let (mut written, mut encode_seconds) = (0u64, 0.0);
        let mut encode_error = None;
        for frame in receiver.iter() {
            let start = unix_now_s();
            if let Err(error) = writer.push(&frame) {
                encode_error = Some(error);
                break;
            }
            encode_seconds += unix_now_s() - start;
            written += 1;
            if written.is_multiple_of(24) || written == total {
                progress.report(written, total);
            }
        }
        drop(receiver);
        let produced = decoding.join().map_err(|_| {
            TaskFailure::new(
                pb::FailureReason::ModelError,
                "the stitch's decoding thread panicked",
            )
        })?;
        if let Some(error) = encode_error {
            return Err(error.into());
        }
        let produced = produced?;
        let contact_rows = labels
            .into_iter()
            .zip(produced.thumbnails)
            .filter_map(|(label, [first, middle, last])| {
                Some(ContactRow {
                    label,
                    frames: [first?, middle?, last?],
                })
            })
            .collect();
        Ok(Stitched {
            frames: written,
            decode_seconds: produced.decode_seconds,
            grade_seconds: produced.grade_seconds,
            encode_seconds,
            joins: produced.meter.joins(),
            contact_rows,
        })
    })
}

/// The decoding thread: every part's frames in order, graded, with lead frames blended over
/// the held tail of the part before.
fn decode_grade_and_blend(
    inputs: &[StitchInput],
    grades: &[SegmentGrade],
    mut out: Finisher,
    progress: &Progress,
) -> Result<Produced, TaskFailure> {
    let (mut decode_seconds, mut grade_seconds) = (0.0, 0.0);
    let mut held: VecDeque<Pending> = VecDeque::new();
    for (position, (input, grade)) in inputs.iter().zip(grades).enumerate() {
        progress.check_cancelled()?;
        let start = unix_now_s();
        let mut reader = Mp4Reader::open(input.video.to_vec())?;
        let in_file = input.lead_frames + input.timeline_frames;
        if reader.frame_count() < in_file {
            return Err(TaskFailure::invalid(format!(
                "segment {} has {} frames, the plan needs {in_file}",
                input.segment_id,
                reader.frame_count()
            )));
        }
        decode_seconds += unix_now_s() - start;
        let start = unix_now_s();
        let mut table = GradeTable::new(grade);
        grade_seconds += unix_now_s() - start;
        let hold_for_next = inputs
            .get(position + 1)
            .map_or(0, |next| next.lead_frames as usize);
        for index in 0..in_file {
            let start = unix_now_s();
            let mut frame = reader.next_frame()?.ok_or_else(|| {
                TaskFailure::invalid(format!("segment {} ended early", input.segment_id))
            })?;
            decode_seconds += unix_now_s() - start;
            let start = unix_now_s();
            let uncorrected = samples_at(&frame, &out.grid);
            table.apply(&mut frame, join_weight(index, in_file));
            grade_seconds += unix_now_s() - start;
            if index < input.lead_frames {
                // Blend over the held tail; with no tail left (a dissolve longer than the
                // part before it), the lead frame is dropped so the timeline stays exact.
                if let Some(tail) = held.pop_front() {
                    let alpha = (index + 1) as f32 / (input.lead_frames + 1) as f32;
                    out.write(Pending {
                        part: tail.part,
                        blended: true,
                        frame: dissolve(&tail.frame, &frame, alpha),
                        uncorrected: mix(&tail.uncorrected, &uncorrected, alpha),
                    })?;
                }
                continue;
            }
            held.push_back(Pending {
                part: position,
                blended: false,
                frame,
                uncorrected,
            });
            while held.len() > hold_for_next {
                out.write(held.pop_front().expect("length checked"))?;
            }
        }
        // Tail frames the next part cannot blend over (it has fewer lead frames) go out as they are.
        while held.len() > hold_for_next {
            out.write(held.pop_front().expect("length checked"))?;
        }
    }
    for pending in held.drain(..) {
        out.write(pending)?;
    }
    Ok(Produced {
        grade_seconds: grade_seconds + out.meter_seconds,
        meter: out.meter,
        thumbnails: out.thumbnails,
        decode_seconds,
    })
}

/// The shots of the stitched video as an OpenTimelineIO timeline pointing at `media_url`.
pub fn timeline_of(
    inputs: &[StitchInput],
    title: &str,
    fps: u32,
    media_url: &str,
) -> serde_json::Value {
    let ranges = shot_ranges(inputs);
    let total = inputs.iter().map(|input| input.timeline_frames).sum();
    let shots: Vec<TimelineShot> = ranges
        .iter()
        .map(|(&shot, &(start_frame, frames))| {
            let first = inputs
                .iter()
                .find(|input| input.shot_index == shot)
                .expect("a range comes from an input");
            TimelineShot {
                name: first.shot_name.clone(),
                start_frame,
                frames,
                transition_in: match first.join {
                    pb::JoinKind::Crossfade => TimelineJoin::Crossfade {
                        frames: first.lead_frames,
                    },
                    pb::JoinKind::Continue => TimelineJoin::Continue,
                    pb::JoinKind::Cut | pb::JoinKind::Unspecified => TimelineJoin::Cut,
                },
            }
        })
        .collect();
    otio_timeline(title, fps, media_url, total, &shots)
}

pub struct StitchResult {
    pub video_key: String,
    pub phases: Phases,
}

fn segment_color(part: &pb::StitchPart, sidecar: &Sidecar) -> SegmentColor {
    SegmentColor {
        scene: part.scene.clone(),
        grade_reference: part.grade_reference,
        continues_previous: part.join == pb::JoinKind::Continue as i32,
        first_frame: sidecar.colors.first_frame_lab.to_f64(),
        last_frame: sidecar.colors.last_frame_lab.to_f64(),
        whole: sidecar.colors.segment_lab.to_f64(),
    }
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
    for part in &task.parts {
        let video = store
            .get(&part.video_key)
            .await
            .map_err(TaskFailure::storage)?;
        let sidecar = store
            .get(&part.sidecar_key)
            .await
            .map_err(TaskFailure::storage)?;
        let sidecar: Sidecar = serde_json::from_slice(&sidecar).map_err(|error| {
            TaskFailure::invalid(format!("sidecar {}: {error}", part.sidecar_key))
        })?;
        inputs.push(StitchInput {
            segment_id: part.segment_id.clone(),
            shot_index: part.shot_index,
            shot_name: part.shot_name.clone(),
            join: pb::JoinKind::try_from(part.join).unwrap_or(pb::JoinKind::Cut),
            lead_frames: part.lead_frames,
            timeline_frames: part.timeline_frames,
            video,
            color: segment_color(part, &sidecar),
        });
    }
    phases.record("storage", "stitch", start);

    let blocking_task = task.clone();
    let (outputs, mut codec_phases) =
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
            let stitched = stitch(&inputs, method, &mut writer, &progress)?;
            let video = writer.finish_faststart()?.into_inner();
            // Decode, grading and encode interleave frame by frame: one codec phase.
            phases.record("codec", "stitch", codec_start);
            crate::worker_metrics::seams(&stitched.joins);
            let report = StitchReport {
                title: blocking_task.title.clone(),
                width: blocking_task.width,
                height: blocking_task.height,
                fps: blocking_task.fps,
                frames: stitched.frames,
                duration_seconds: stitched.frames as f64 / f64::from(blocking_task.fps.max(1)),
                segments: inputs.len(),
                color_match: method.name(),
                joins: stitched.joins,
                decode_seconds: stitched.decode_seconds,
                grade_seconds: stitched.grade_seconds,
                encode_seconds: stitched.encode_seconds,
            };
            let media_name = blocking_task
                .video_key
                .rsplit('/')
                .next()
                .unwrap_or("final.mp4")
                .to_string();
            let timeline = timeline_of(
                &inputs,
                &blocking_task.title,
                blocking_task.fps,
                &media_name,
            );
            let sheet = encode_png(&contact_sheet(
                &blocking_task.title,
                &stitched.contact_rows,
                THUMB_WIDTH,
            ))?;
            let outputs = vec![
                (blocking_task.report_key.clone(), pretty_json(&report)?),
                (blocking_task.timeline_key.clone(), pretty_json(&timeline)?),
                (blocking_task.contact_sheet_key.clone(), sheet),
                // The video goes last: its presence means the sequence's outputs are complete.
                (blocking_task.video_key.clone(), video),
            ];
            Ok((outputs, phases))
        })
        .await
        .map_err(|error| {
            TaskFailure::new(
                pb::FailureReason::ModelError,
                format!("stitch thread failed: {error}"),
            )
        })??;

    let start = unix_now_s();
    for (key, bytes) in outputs {
        if key.is_empty() {
            continue;
        }
        store
            .put(&key, bytes.into())
            .await
            .map_err(TaskFailure::storage)?;
    }
    phases.record("storage", "stitch", start);
    codec_phases.extend(phases);
    reelfarm_common::metrics::stitch()
        .seconds
        .record(unix_now_s() - task_start, &[]);
    Ok(StitchResult {
        video_key: task.video_key,
        phases: codec_phases,
    })
}

fn pretty_json(value: &impl Serialize) -> Result<Vec<u8>, TaskFailure> {
    serde_json::to_vec_pretty(value).map_err(|error| TaskFailure::invalid(error.to_string()))
}

#[cfg(test)]
#[path = "stitch_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "stitch_matching_tests.rs"]
mod matching_tests;
