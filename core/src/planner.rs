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
//! 6. **Models.** A shot renders with its own `model` when it names one, else the
//!    sequence's. A hosted model (`openai-videos`) renders clips of a few allowed lengths
//!    only: its shot is covered by the fewest clips (the longest allowed, then the shortest
//!    that holds the rest), continuing one another, and each segment names the clip length
//!    it is billed for (`clip_seconds`, `cost_usd`); the worker trims the clip to the
//!    segment's frames.
//! 7. **Seeds.** Derived from (sequence or shot seed, shot index, segment index) by a fixed
//!    mixing function: the same spec always renders the same frames, and re-rendering one
//!    shot does not change any other.

use reelfarm_common::sequence::{Pass, Sequence, Transition};
use reelfarm_models::{Catalog, ModelEntry, SegmentShape, UnknownModel};

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
    /// The catalog model that renders it, and what names its weights (cache keys).
    pub model: String,
    pub weights_identity: String,
    /// A hosted model's billed clip length (0: a local model), and its price.
    pub clip_seconds: u32,
    pub cost_usd: f64,
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
    /// What the hosted segments of this plan are estimated to cost (alternate takes included).
    pub fn estimated_cost_usd(&self) -> f64 {
        self.segments.iter().map(|segment| segment.cost_usd).sum()
    }

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

/// The plan of a sequence whose every shot renders with `model`.
pub fn plan(sequence: &Sequence, model: &ModelEntry) -> Plan {
    plan_shots(sequence, &vec![model; sequence.shots.len()])
}

/// The plan of a sequence with each shot's own model (`Shot::model`) from `catalog`.
pub fn plan_with(sequence: &Sequence, catalog: &Catalog) -> Result<Plan, UnknownModel> {
    let models = shot_models(sequence, catalog)?;
    Ok(plan_shots(sequence, &models))
}

/// Each shot's catalog entry.
pub fn shot_models<'a>(
    sequence: &Sequence,
    catalog: &'a Catalog,
) -> Result<Vec<&'a ModelEntry>, UnknownModel> {
    sequence
        .shots
        .iter()
        .map(|shot| catalog.require(shot.model_id(&sequence.model)))
        .collect()
}

/// `models[shot]` renders that shot.
fn plan_shots(sequence: &Sequence, models: &[&ModelEntry]) -> Plan {
    let (width, height) = sequence.frame_size();
    let fps = f64::from(sequence.fps);
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
        let model = models[shot_index];
        let steps = sequence.steps.unwrap_or(match sequence.pass {
            Pass::Draft => model.draft_steps,
            Pass::Final => model.final_steps,
        });
        let windows = match &model.hosted {
            Some(hosted) => {
                let first_lead = match shot.transition {
                    Transition::Cut => 0,
                    Transition::Continue => 1 + blend_frames,
                    Transition::Crossfade => (shot.crossfade_seconds.unwrap_or(0.0) * fps)
                        .round()
                        .max(1.0) as u64,
                };
                let longest = u64::from(hosted.longest_clip()) * u64::from(sequence.fps);
                clip_windows(shot_frames, longest, first_lead, 1 + blend_frames)
            }
            None => {
                let count = u64::from(window_count(shot.duration_seconds, model.window_seconds))
                    .min(shot_frames.max(1));
                let base = shot_frames / count;
                let remainder = shot_frames % count;
                (0..count)
                    .map(|index| base + u64::from(index < remainder))
                    .collect()
            }
        };
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
            for (segment_index, &timeline_frames) in windows.iter().enumerate() {
                let segment_index = segment_index as u64;
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
                    model: model.id.clone(),
                    weights_identity: model.weights_identity(),
                    clip_seconds: 0,
                    cost_usd: 0.0,
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
                if let Some(hosted) = &model.hosted {
                    // The planner sized the window to fit the longest clip.
                    segment.clip_seconds = hosted
                        .clip_for(segment.render_frames, sequence.fps)
                        .unwrap_or_else(|| hosted.longest_clip());
                    segment.cost_usd = hosted.cost_usd(segment.clip_seconds);
                }
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
        load_seconds: models
            .iter()
            .map(|model| model.load_seconds())
            .fold(0.0, f64::max),
    }
}

/// A hosted shot's windows: clips of at most `longest` frames, the first with `first_lead`
/// frames before its timeline frames and the others with `lead` (a continuation's handoff
/// frame and blend): each takes as much of the shot as fits, so the count is the fewest.
/// A lead that leaves no room keeps one frame per clip (`check_models` refuses such specs).
fn clip_windows(shot_frames: u64, longest: u64, first_lead: u64, lead: u64) -> Vec<u64> {
    if shot_frames == 0 {
        return vec![0];
    }
    let mut windows = Vec::new();
    let mut left = shot_frames;
    let mut this_lead = first_lead;
    while left > 0 {
        let take = left.min(longest.saturating_sub(this_lead).max(1));
        windows.push(take);
        left -= take;
        this_lead = lead;
    }
    windows
}

/// What a spec asks that its shots' models cannot do, as (field path, reason): hosted
/// models take no negative prompt and no step count, upscale at most `MAX_HOSTED_UPSCALE`,
/// and need room in their longest clip for a crossfade or continuation lead. Unknown models
/// are the spec validator's to report.
pub fn check_models(sequence: &Sequence, catalog: &Catalog) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let (width, height) = sequence.frame_size();
    let fps = f64::from(sequence.fps);
    let blend = (sequence.continuity_blend_seconds * fps).round() as u64;
    for (index, shot) in sequence.shots.iter().enumerate() {
        let Some(model) = catalog.get(shot.model_id(&sequence.model)) else {
            continue;
        };
        let Some(hosted) = &model.hosted else {
            continue;
        };
        let whose = format!("model {} (openai-videos, shot {index})", model.id);
        if shot.negative.is_some() {
            problems.push((
                format!("shots[{index}].negative"),
                format!("{whose} takes no negative prompt; remove it"),
            ));
        } else if sequence.negative.is_some() {
            problems.push((
                "negative".to_string(),
                format!(
                    "{whose} takes no negative prompt; remove it or give the shot a local model"
                ),
            ));
        }
        if sequence.steps.is_some() {
            problems.push((
                "steps".to_string(),
                format!("{whose} chooses its own steps; remove steps"),
            ));
        }
        let (w, h) = hosted.nearest_size(width, height);
        let upscale = (f64::from(width) / f64::from(w)).max(f64::from(height) / f64::from(h));
        if upscale > MAX_HOSTED_UPSCALE + 1e-9 {
            problems.push((
                "resolution".to_string(),
                format!(
                    "{whose} renders at most {w}x{h} for a {width}x{height} frame, an upscale of \
                     {upscale:.2}x (at most {MAX_HOSTED_UPSCALE}x); choose a lower resolution"
                ),
            ));
        }
        let longest = u64::from(hosted.longest_clip()) * u64::from(sequence.fps);
        let continuation = 1 + blend;
        let (lead, field) = match shot.transition {
            Transition::Cut => (0, String::new()),
            Transition::Continue => (continuation, "continuity_blend".to_string()),
            Transition::Crossfade => (
                (shot.crossfade_seconds.unwrap_or(0.0) * fps).round() as u64,
                format!("shots[{index}].crossfade"),
            ),
        };
        let shot_frames = (shot.duration_seconds * fps).round() as u64;
        let room = |lead: u64| {
            format!(
                "{whose}: a {lead}-frame lead leaves no room in its longest clip ({} s, {longest} frames)",
                hosted.longest_clip()
            )
        };
        if lead >= longest {
            problems.push((field, room(lead) + "; shorten it"));
        } else if shot_frames + lead > longest && continuation >= longest {
            // The shot takes several clips, each continuing the one before.
            problems.push((
                "continuity_blend".to_string(),
                room(continuation) + "; shorten it",
            ));
        }
    }
    // A sequence-wide field is named once, for the first shot it troubles.
    let mut named = std::collections::BTreeSet::new();
    problems.retain(|(path, _)| named.insert(path.clone()));
    problems
}

/// The most a hosted clip is scaled up to cover the sequence's frame (1.5: 720p to 1080p).
pub const MAX_HOSTED_UPSCALE: f64 = 1.5;

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
