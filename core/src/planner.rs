//! Sequence → render segments + one stitch task: the pure planner (no async, no I/O, no clock).
//!
//! Phases:
//! 1. **Timeline.** Shot boundaries are rounded once on the cumulative timeline
//!    (`round(fps * seconds so far)`), so the frame total is exactly `round(fps * total)` no
//!    matter how many shots or fractional durations there are.
//! 2. **Windows.** A shot no longer than the model's window is one segment; a longer shot is
//!    split into the fewest equal windows (`ceil(duration / window)`), which for any shot
//!    longer than one window lies between half a window and a window (10–20 s for
//!    reelfarm-tiny). Frames are spread so windows differ by at most one frame.
//! 3. **Joins.** The first segment of a shot joins as the shot's transition says; later
//!    segments of a split shot continue their predecessor. A continuing segment is conditioned
//!    on its predecessor's *handoff frame*, `B` frames before the predecessor's end (`B` =
//!    the continuity blend, 0.5 s by default): it renders that frame (dropped), then `B`
//!    frames that overlap the predecessor's tail in time and are blended over it, then its
//!    own timeline frames. A crossfade renders the dissolve length as lead frames that blend
//!    over the previous shot's tail. Continuity edges therefore form one chain per
//!    continuity run; everything else is independent.
//! 4. **Render size.** Lead + timeline frames rounded up to the model's `stride * n + 1`; the
//!    worker trims the extra frames, so the timeline stays exact. The catalog's estimator
//!    gives each segment its memory (normal and low-memory mode) and compute estimates.
//! 5. **Takes.** A shot with `variants: N` also renders its N-1 other takes, each from its
//!    own seed base (`take_seed`), as alternate segments off the timeline; the stitch shows
//!    them on the contact sheet, and `pick` moves one onto the timeline (`take`).
//! 6. **Seeds.** Derived from (sequence or shot seed, shot index, segment index) by a fixed
//!    mixing function: the same spec always renders the same frames, and re-rendering one
//!    shot does not change any other.

use reelfarm_common::sequence::{Pass, Sequence, Transition};
use reelfarm_models::{ModelEntry, SegmentShape};

/// How a segment's first frame relates to what came before it on the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    Cut,
    Continue,
    Crossfade,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlannedSegment {
    /// `s<shot>-<segment>`, unique within a sequence.
    pub id: String,
    pub shot_index: u32,
    pub segment_index: u32,
    /// Which take of its shot it renders (0 unless the shot asks for `variants`).
    pub take: u32,
    /// On the timeline (the shot's picked take), or an alternate take that only the contact
    /// sheet shows (`s<shot>-<segment>-t<take>`), rendered so `pick` can swap it in.
    pub on_timeline: bool,
    pub timeline_start_frame: u64,
    pub timeline_frames: u64,
    pub lead_frames: u64,
    pub render_frames: u64,
    pub join: Join,
    /// Index (in `Plan::segments`) of the segment this one is conditioned on.
    pub continues_from: Option<usize>,
    pub seed: u64,
    pub prompt: String,
    pub negative: String,
    /// Frames before this segment's end of the frame its continuation is conditioned on
    /// (0: the last frame; the continuation's blend length otherwise).
    pub handoff_back_frames: u64,
    /// The scene this segment is graded in, and whether it sets that scene's look (the
    /// first segment of the scene's reference shot).
    pub scene: String,
    pub grade_reference: bool,
    /// The shot's reference image conditions this segment's first frame.
    pub uses_reference: bool,
    pub steps: u32,
    pub guidance: f32,
    /// Peak memory by the catalog's estimator, and in the model's low-memory mode (tiled
    /// decode), the last rung of the out-of-memory ladder.
    pub memory_estimate_bytes: u64,
    pub low_memory_estimate_bytes: u64,
    /// Compute seconds on a speed-1.0 GPU, by the same estimator: placement's critical path
    /// and expected finish times.
    pub work_seconds: f64,
    /// Compute of the continuity chain that waits for this segment (its successors, in turn).
    pub chain_work_seconds: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub total_frames: u64,
    pub segments: Vec<PlannedSegment>,
    /// Seconds to make the model resident on a device that does not hold it.
    pub load_seconds: f64,
}

impl Plan {
    /// Memory the stitch of this plan holds at its peak: the largest segment's file (the
    /// stitch fetches one at a time; encoded at most ~1 bit per pixel per frame, three times
    /// the intermediate budget, held twice while it is opened), the final video (three times
    /// the delivery budget), frames in flight through decode, blend, grading and encode (24
    /// frames as f32 RGB), and the process's own 256 MiB. Rounded up to MiB. The stitch is
    /// placed with this reservation, so a two-hour 4K sequence is not squeezed onto a device
    /// sized for a one-minute draft.
    pub fn stitch_memory_bytes(&self) -> u64 {
        let pixels = u64::from(self.width) * u64::from(self.height);
        let largest = self
            .segments
            .iter()
            .map(|segment| segment.lead_frames + segment.timeline_frames)
            .max()
            .unwrap_or(0);
        let inputs = 2 * largest * pixels / 8;
        let output = self.total_frames * pixels * 3 / 80;
        let in_flight = 24 * pixels * 3 * 4;
        let total = (256 << 20) + inputs + output + in_flight;
        total.div_ceil(1 << 20) << 20
    }
}

pub fn plan(sequence: &Sequence, model: &ModelEntry) -> Plan {
    let (width, height) = sequence.frame_size();
    let fps = f64::from(sequence.fps);
    let steps = sequence.steps.unwrap_or(match sequence.pass {
        Pass::Draft => model.draft_steps,
        Pass::Final => model.final_steps,
    });
    let mut segments: Vec<PlannedSegment> = Vec::new();
    let mut seconds_so_far = 0.0;
    let scenes = sequence.scenes();
    let blend_frames = (sequence.continuity_blend_seconds * fps).round() as u64;
    // The last segment on the timeline so far: what a continuing shot continues.
    let mut last_on_timeline: Option<usize> = None;
    // Alternate takes, each with its counterpart on the timeline.
    let mut alternates: Vec<(usize, usize)> = Vec::new();
    for (shot_index, shot) in sequence.shots.iter().enumerate() {
        let shot_start = (seconds_so_far * fps).round() as u64;
        seconds_so_far += shot.duration_seconds;
        let shot_end = (seconds_so_far * fps).round() as u64;
        let shot_frames = shot_end - shot_start;

        let windows = u64::from(window_count(shot.duration_seconds, model.window_seconds))
            .min(shot_frames.max(1));
        let base = shot_frames / windows;
        let remainder = shot_frames % windows;
        let prompt = match &sequence.style {
            Some(style) => format!("{}, {style}", shot.prompt),
            None => shot.prompt.clone(),
        };
        let negative = shot
            .negative
            .clone()
            .or_else(|| sequence.negative.clone())
            .unwrap_or_default();
        let first_base = shot.seed.unwrap_or(sequence.seed);
        let before_shot = last_on_timeline;
        // The picked take first (on the timeline), then the alternates in order.
        let takes = std::iter::once(shot.take)
            .chain((0..shot.variants.max(1)).filter(|&take| take != shot.take));
        let mut on_timeline_indices: Vec<usize> = Vec::new();
        for (order, take) in takes.enumerate() {
            let on_timeline = order == 0;
            let base_seed = take_seed(first_base, shot_index as u64, take);
            let mut previous = before_shot;
            let mut start = shot_start;
            for segment_index in 0..windows {
                let timeline_frames = base + u64::from(segment_index < remainder);
                let join = match (segment_index, shot.transition) {
                    (0, Transition::Cut) => Join::Cut,
                    (0, Transition::Crossfade) => Join::Crossfade,
                    _ => Join::Continue,
                };
                // The blend never reaches back past the predecessor's first frame.
                let blend = match (join, previous) {
                    (Join::Continue, Some(previous)) => {
                        blend_frames.min(segments[previous].timeline_frames.saturating_sub(1))
                    }
                    _ => 0,
                };
                if let (Join::Continue, Some(previous), true) = (join, previous, on_timeline) {
                    segments[previous].handoff_back_frames = blend;
                }
                let lead_frames = match join {
                    Join::Cut => 0,
                    Join::Continue => 1 + blend,
                    Join::Crossfade => (shot.crossfade_seconds.unwrap_or(0.0) * fps)
                        .round()
                        .max(1.0) as u64,
                };
                let continues_from = if join == Join::Continue {
                    previous
                } else {
                    None
                };
                segments.push(PlannedSegment {
                    id: if on_timeline {
                        format!("s{shot_index:03}-{segment_index:02}")
                    } else {
                        format!("s{shot_index:03}-{segment_index:02}-t{take}")
                    },
                    shot_index: shot_index as u32,
                    segment_index: segment_index as u32,
                    take,
                    on_timeline,
                    timeline_start_frame: start,
                    timeline_frames,
                    lead_frames,
                    render_frames: model.aligned_render_frames(lead_frames + timeline_frames),
                    join,
                    continues_from,
                    seed: derive_seed(base_seed, shot_index as u64, segment_index),
                    prompt: prompt.clone(),
                    negative: negative.clone(),
                    handoff_back_frames: 0,
                    scene: scenes[shot_index].0.clone(),
                    grade_reference: on_timeline
                        && segment_index == 0
                        && scenes[shot_index].1 == shot_index,
                    uses_reference: segment_index == 0 && shot.reference.is_some(),
                    steps,
                    guidance: model.guidance,
                    memory_estimate_bytes: 0,
                    low_memory_estimate_bytes: 0,
                    work_seconds: 0.0,
                    chain_work_seconds: 0.0,
                });
                let index = segments.len() - 1;
                let segment = &mut segments[index];
                // A model with its own rate renders (and holds in memory) its native frames.
                let shape = SegmentShape {
                    width,
                    height,
                    frames: model.model_frames(segment.render_frames, sequence.fps),
                    tiled_decode: false,
                };
                segment.memory_estimate_bytes = model.memory_estimate_bytes(&shape);
                segment.low_memory_estimate_bytes = model.memory_estimate_bytes(&SegmentShape {
                    tiled_decode: true,
                    ..shape
                });
                segment.work_seconds = model.work_seconds(&shape, steps);
                start += timeline_frames;
                previous = Some(index);
                if on_timeline {
                    on_timeline_indices.push(index);
                } else {
                    alternates.push((index, on_timeline_indices[segment_index as usize]));
                }
            }
            if on_timeline {
                last_on_timeline = previous;
            }
        }
    }
    // An alternate hands off where its counterpart does, so once picked (`take`) it is the
    // same segment, and the segment cache finds it.
    for (alternate, counterpart) in alternates {
        segments[alternate].handoff_back_frames = segments[counterpart].handoff_back_frames;
    }
    // Chains are linear (a segment continues at most the one before it): sum them backwards.
    for index in (0..segments.len()).rev() {
        if let Some(previous) = segments[index].continues_from {
            segments[previous].chain_work_seconds =
                segments[index].work_seconds + segments[index].chain_work_seconds;
        }
    }
    Plan {
        width,
        height,
        fps: sequence.fps,
        total_frames: sequence.total_frames(),
        segments,
        load_seconds: model.load_seconds(),
    }
}

/// Fewest windows of at most `window` seconds; a float tolerance keeps 40.0 s at 2 windows.
fn window_count(duration_seconds: f64, window_seconds: f64) -> u32 {
    ((duration_seconds / window_seconds) - 1e-9).ceil().max(1.0) as u32
}

/// The seed base of take `take` of a shot whose first take starts from `first_base`: take 0
/// is the shot's own, so asking for variants never changes the take a spec rendered before.
pub fn take_seed(first_base: u64, shot_index: u64, take: u32) -> u64 {
    match take {
        0 => first_base,
        take => derive_seed(first_base, shot_index, TAKE_SALT + u64::from(take)),
    }
}

/// Keeps take seeds apart from segment seeds (segment indices are far below it).
const TAKE_SALT: u64 = 0x7A4E_0000_0000;

/// splitmix64 finaliser over the three inputs: cheap, stable across platforms and versions.
pub fn derive_seed(base: u64, shot_index: u64, segment_index: u64) -> u64 {
    splitmix64(splitmix64(splitmix64(base) ^ shot_index) ^ segment_index)
}

/// One splitmix64 step: the output for state `z` (the state then advances by the
/// golden-ratio increment).
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(SPLITMIX64_INCREMENT);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub const SPLITMIX64_INCREMENT: u64 = 0x9E37_79B9_7F4A_7C15;

#[cfg(test)]
#[path = "planner_tests.rs"]
mod tests;
