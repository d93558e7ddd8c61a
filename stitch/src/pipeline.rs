//! The stitch itself: decode the segments in timeline order, grade each to its scene's look
//! (see `grading`), blend every join the plan asks for, and write one H.264 MP4 whose frame
//! count is exactly the sum of the segments' timeline frames. Beside the video it makes the
//! report (timings and seam metrics), an OpenTimelineIO timeline and a contact sheet.
//!
//! A part's lead frames (a crossfade's dissolve handle, a continuation's overlap) dissolve
//! over the previous part's tail, so they replace frames instead of adding any. Decoding,
//! grading and metering run on one thread, H.264 encoding on another, so the two overlap.
//! Bytes in, bytes out: fetching segments and storing the outputs is the worker's job.

use std::collections::{BTreeMap, VecDeque};
use std::io::Cursor;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::Instant;

use bytes::Bytes;
use reelfarm_common::sequence::ColorMatch;
use reelfarm_media::frame::RgbFrame;
use reelfarm_media::video::{
    EncodeSettings, Mp4Reader, Mp4Writer, Quality, VideoError, encode_png,
};
use serde::Serialize;

use crate::color::{lab_at, sample_grid, srgb_to_lab};
use crate::color_math::Vec3;
use crate::contact_sheet::{ContactRow, contact_sheet, thumbnail};
use crate::grading::{GradeTable, SegmentColor, SegmentGrade, join_weight, plan_grades};
use crate::seams::{JoinMetrics, MeteredFrame, MeteredPart, SeamMeter};
use crate::timeline::{TimelineJoin, TimelineShot, otio_timeline};

/// How a part starts on the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    Cut,
    Continue,
    Crossfade,
}

impl Join {
    pub fn name(self) -> &'static str {
        match self {
            Join::Cut => "cut",
            Join::Continue => "continue",
            Join::Crossfade => "crossfade",
        }
    }
}

/// Why a stitch stopped.
#[derive(Debug, thiserror::Error)]
pub enum StitchError {
    #[error("cancelled")]
    Cancelled,
    /// The inputs do not fit the plan (a short segment, an unknown method).
    #[error("{0}")]
    InvalidInput(String),
    #[error("video: {0}")]
    Video(#[from] VideoError),
    #[error("{0}")]
    Internal(String),
    /// A part's file could not be fetched; `corrupt` when its bytes failed their checksum.
    #[error("{message}")]
    Fetch {
        key: String,
        message: String,
        corrupt: bool,
    },
}

/// Where a stitch reports how far it got, and learns that it should stop.
pub trait Progress: Sync {
    fn report(&self, done: u64, total: u64);
    fn is_cancelled(&self) -> bool;
}

/// Progress nobody watches.
pub struct Unwatched;

impl Progress for Unwatched {
    fn report(&self, _done: u64, _total: u64) {}
    fn is_cancelled(&self) -> bool {
        false
    }
}

fn seconds_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

/// Pixels per frame the seam metrics compare.
const METER_SAMPLES: usize = 1024;
/// Width of a contact-sheet thumbnail.
const THUMB_WIDTH: u32 = 240;

/// One segment as the stitcher sees it.
pub struct StitchInput {
    pub segment_id: String,
    pub shot_index: u32,
    pub shot_name: String,
    pub join: Join,
    /// Frames at the start of the file that blend over the previous part's tail.
    pub lead_frames: u64,
    pub timeline_frames: u64,
    pub video: VideoSource,
    pub color: SegmentColor,
}

/// An alternate take of a shot (`variants`): off the timeline, shown on the contact sheet
/// under its shot and listed in the report.
pub struct AlternateTake {
    pub segment_id: String,
    pub shot_index: u32,
    pub shot_name: String,
    pub take: u32,
    pub seed: u64,
    pub lead_frames: u64,
    pub timeline_frames: u64,
    pub video: VideoSource,
}

/// One take of a shot that has several, as the report lists it.
#[derive(Debug, Clone, Serialize)]
pub struct TakeReport {
    pub shot_index: u32,
    pub shot_name: String,
    pub take: u32,
    pub seed: u64,
    pub segment_id: String,
    pub on_timeline: bool,
}

/// What one shot's hosted clips cost (every take and every paid render).
#[derive(Debug, Clone, Serialize)]
pub struct ShotCost {
    pub shot_index: u32,
    pub shot_name: String,
    pub cost_usd: f64,
}

/// Where a part's file comes from: already in memory, or fetched only when the stitch
/// reaches that part, so a long sequence holds one segment file at a time.
pub enum VideoSource {
    Bytes(Bytes),
    Fetch(Box<dyn Fn() -> Result<Vec<u8>, StitchError> + Send + Sync>),
}

impl VideoSource {
    pub fn load(&self) -> Result<Vec<u8>, StitchError> {
        match self {
            VideoSource::Bytes(bytes) => Ok(bytes.to_vec()),
            VideoSource::Fetch(fetch) => fetch(),
        }
    }
}

impl From<Bytes> for VideoSource {
    fn from(bytes: Bytes) -> Self {
        VideoSource::Bytes(bytes)
    }
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
    /// Of `segments`, those reused from the segment cache (rendered for an earlier
    /// submission with exactly the same inputs).
    pub reused_segments: usize,
    /// Every take of the shots that asked for variants; `reelfarm pick` swaps one in.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub takes: Vec<TakeReport>,
    /// What the hosted clips cost, in total and per shot (absent when nothing was paid).
    #[serde(skip_serializing_if = "is_free")]
    pub cost_usd: f64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shot_costs: Vec<ShotCost>,
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
/// Each contact row's shot and label, and the output frames picked for it: frame → (row, slot).
type ContactPicks = (Vec<(u32, String)>, BTreeMap<u64, (usize, usize)>);

fn contact_picks(inputs: &[StitchInput], fps: u32) -> ContactPicks {
    let mut labels = Vec::new();
    let mut picks = BTreeMap::new();
    for (row, (shot, (start, frames))) in shot_ranges(inputs).into_iter().enumerate() {
        let first = inputs
            .iter()
            .find(|input| input.shot_index == shot)
            .expect("a range comes from an input");
        labels.push((
            shot,
            format!(
                "{} | {:.1} s | {}",
                first.shot_name,
                frames as f64 / f64::from(fps.max(1)),
                first.join.name()
            ),
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
    fn write(&mut self, pending: Pending) -> Result<(), StitchError> {
        let start = Instant::now();
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
        self.meter_seconds += seconds_since(start);
        self.written += 1;
        // A closed channel means the encoder stopped; its error is the one reported.
        self.sender
            .send(pending.frame)
            .map_err(|_| StitchError::Internal("the encoder stopped".into()))
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
    progress: &dyn Progress,
) -> Result<Stitched, StitchError> {
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
                kind: input.join.name(),
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
            let start = Instant::now();
            if let Err(error) = writer.push(&frame) {
                encode_error = Some(error);
                break;
            }
            encode_seconds += seconds_since(start);
            written += 1;
            if written.is_multiple_of(24) || written == total {
                progress.report(written, total);
            }
        }
        drop(receiver);
        let produced = decoding
            .join()
            .map_err(|_| StitchError::Internal("the stitch's decoding thread panicked".into()))?;
        if let Some(error) = encode_error {
            return Err(error.into());
        }
        let produced = produced?;
        let contact_rows = labels
            .into_iter()
            .zip(produced.thumbnails)
            .filter_map(|((shot_index, label), [first, middle, last])| {
                Some(ContactRow {
                    shot_index,
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
    progress: &dyn Progress,
) -> Result<Produced, StitchError> {
    let (mut decode_seconds, mut grade_seconds) = (0.0, 0.0);
    let mut held: VecDeque<Pending> = VecDeque::new();
    for (position, (input, grade)) in inputs.iter().zip(grades).enumerate() {
        if progress.is_cancelled() {
            return Err(StitchError::Cancelled);
        }
        let start = Instant::now();
        let mut reader = Mp4Reader::open(input.video.load()?)?;
        let in_file = input.lead_frames + input.timeline_frames;
        if reader.frame_count() < in_file {
            return Err(StitchError::InvalidInput(format!(
                "segment {} has {} frames, the plan needs {in_file}",
                input.segment_id,
                reader.frame_count()
            )));
        }
        decode_seconds += seconds_since(start);
        let start = Instant::now();
        let mut table = GradeTable::new(grade);
        grade_seconds += seconds_since(start);
        let hold_for_next = inputs
            .get(position + 1)
            .map_or(0, |next| next.lead_frames as usize);
        for index in 0..in_file {
            let start = Instant::now();
            let mut frame = reader.next_frame()?.ok_or_else(|| {
                StitchError::InvalidInput(format!("segment {} ended early", input.segment_id))
            })?;
            decode_seconds += seconds_since(start);
            let start = Instant::now();
            let uncorrected = samples_at(&frame, &out.grid);
            table.apply(&mut frame, join_weight(index, in_file));
            grade_seconds += seconds_since(start);
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
                    Join::Crossfade => TimelineJoin::Crossfade {
                        frames: first.lead_frames,
                    },
                    Join::Continue => TimelineJoin::Continue,
                    Join::Cut => TimelineJoin::Cut,
                },
            }
        })
        .collect();
    otio_timeline(title, fps, media_url, total, &shots)
}

/// What a sequence's stitch is asked for, besides its inputs.
#[derive(Debug, Clone)]
pub struct SequenceStitch {
    pub title: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub method: ColorMatch,
    /// The video's file name, as the timeline refers to it (`final.mp4`).
    pub media_name: String,
    /// Segments reused from the segment cache rather than rendered for this sequence.
    pub reused_segments: usize,
    /// Every take of the shots that have several (`variants`), the picked ones included.
    pub takes: Vec<TakeReport>,
    /// The shots whose hosted clips cost something.
    pub shot_costs: Vec<ShotCost>,
}

fn is_free(cost_usd: &f64) -> bool {
    *cost_usd == 0.0
}

/// Everything a sequence's stitch delivers, as bytes ready to store.
pub struct StitchOutputs {
    /// The H.264 MP4, faststart.
    pub video: Vec<u8>,
    /// `StitchReport` as pretty JSON.
    pub report: Vec<u8>,
    /// The OpenTimelineIO timeline as JSON.
    pub timeline: Vec<u8>,
    /// The contact sheet as PNG.
    pub contact_sheet: Vec<u8>,
    pub joins: Vec<JoinMetrics>,
}

/// Stitches a whole sequence: the video, its report, timeline and contact sheet.
pub fn stitch_sequence(
    sequence: &SequenceStitch,
    inputs: &[StitchInput],
    progress: &dyn Progress,
) -> Result<StitchOutputs, StitchError> {
    stitch_with_takes(sequence, inputs, &[], progress)
}

/// `stitch_sequence`, with alternate takes added to the contact sheet, each in a row under
/// its shot's (as rendered: the scene grade is the timeline's).
pub fn stitch_with_takes(
    sequence: &SequenceStitch,
    inputs: &[StitchInput],
    alternates: &[AlternateTake],
    progress: &dyn Progress,
) -> Result<StitchOutputs, StitchError> {
    let settings = EncodeSettings {
        width: sequence.width,
        height: sequence.height,
        fps: sequence.fps,
        quality: Quality::Delivery,
    };
    let mut writer = Mp4Writer::new(Cursor::new(Vec::new()), settings)?;
    let stitched = stitch(inputs, sequence.method, &mut writer, progress)?;
    let video = writer.finish_faststart()?.into_inner();
    let report = StitchReport {
        title: sequence.title.clone(),
        width: sequence.width,
        height: sequence.height,
        fps: sequence.fps,
        frames: stitched.frames,
        duration_seconds: stitched.frames as f64 / f64::from(sequence.fps.max(1)),
        segments: inputs.len(),
        reused_segments: sequence.reused_segments,
        takes: sequence.takes.clone(),
        cost_usd: sequence.shot_costs.iter().map(|shot| shot.cost_usd).sum(),
        shot_costs: sequence.shot_costs.clone(),
        color_match: sequence.method.name(),
        joins: stitched.joins.clone(),
        decode_seconds: stitched.decode_seconds,
        grade_seconds: stitched.grade_seconds,
        encode_seconds: stitched.encode_seconds,
    };
    let timeline = timeline_of(inputs, &sequence.title, sequence.fps, &sequence.media_name);
    let mut rows = stitched.contact_rows.clone();
    for alternate in alternates {
        let row = take_row(alternate)?;
        let after = rows
            .iter()
            .rposition(|other| other.shot_index <= alternate.shot_index)
            .map_or(0, |position| position + 1);
        rows.insert(after, row);
    }
    let contact_sheet = encode_png(&contact_sheet(&sequence.title, &rows, THUMB_WIDTH))?;
    Ok(StitchOutputs {
        video,
        report: pretty_json(&report)?,
        timeline: pretty_json(&timeline)?,
        contact_sheet,
        joins: stitched.joins,
    })
}

/// The first, middle and last frame of an alternate take's own frames.
fn take_row(take: &AlternateTake) -> Result<ContactRow, StitchError> {
    let mut reader = Mp4Reader::open(take.video.load()?)?;
    let frames = take.timeline_frames.max(1);
    let wanted = [
        take.lead_frames,
        take.lead_frames + frames / 2,
        take.lead_frames + frames - 1,
    ];
    let mut picked: Vec<RgbFrame> = Vec::with_capacity(3);
    let mut index = 0;
    while picked.len() < 3 {
        let frame = reader.next_frame()?.ok_or_else(|| {
            StitchError::InvalidInput(format!("take {} ended early", take.segment_id))
        })?;
        while picked.len() < 3 && wanted[picked.len()] == index {
            picked.push(frame.clone());
        }
        index += 1;
    }
    let [first, middle, last]: [RgbFrame; 3] = picked
        .try_into()
        .map_err(|_| StitchError::Internal("three frames".into()))?;
    Ok(ContactRow {
        shot_index: take.shot_index,
        label: format!(
            "{} | take {} | seed {}",
            take.shot_name, take.take, take.seed
        ),
        frames: [first, middle, last],
    })
}

fn pretty_json(value: &impl Serialize) -> Result<Vec<u8>, StitchError> {
    serde_json::to_vec_pretty(value).map_err(|error| StitchError::Internal(error.to_string()))
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "pipeline_matching_tests.rs"]
mod matching_tests;
