//! Seam metrics: how visible each join of the stitched video is, before and after colour
//! matching, measured on the frames as they are written (grid-sampled pixels in Lab).
//!
//! - Continuity joins (`continue`, split shots): mean CIEDE2000 between the last frame before
//!   and the first frame after the join, pixel for pixel, next to the p50 and p95 of the same
//!   measure between consecutive frames inside the two segments around it (what motion alone
//!   changes from one frame to the next). Beside it the structure jump, [`structure_difference`]
//!   across the join against its own p95 inside the segments: it ignores any global change of
//!   lightness level or contrast and all of chroma, so it catches a jump in content (pose,
//!   object, camera) that grading cannot close, which ΔE00 mixes up with a colour mismatch.
//!   [`seam_passes`] judges the join on both, [`seam_badness`] ranks two tries of it.
//! - Cuts and crossfades: CIEDE2000 between the mean Lab colours of the two shots and the
//!   2-Wasserstein distance between their Lab Gaussian fits.
//!
//! "Before" is the same stitch with no colour correction (joins blended the same way), so
//! with matching `off` before and after are identical.

use serde::Serialize;

use crate::color::LabStats;
use crate::color_math::{Vec3, ciede2000, wasserstein2_gaussian};

/// One output frame as the meter sees it: which part's timeline it lies in, and its sampled
/// Lab colours without and with colour correction.
pub struct MeteredFrame {
    pub part: usize,
    /// A dissolve of two parts: it counts for the continuity of its part, but not towards
    /// its shot's colours (half of it is the next shot).
    pub blended: bool,
    pub uncorrected: Vec<Vec3>,
    pub corrected: Vec<Vec3>,
}

/// What the meter needs to know of each part (segment) of the timeline.
#[derive(Debug, Clone)]
pub struct MeteredPart {
    pub segment_id: String,
    pub shot_index: u32,
    pub kind: &'static str,
    pub at_frame: u64,
    pub same_scene_as_previous: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JoinMetrics {
    pub index: usize,
    pub kind: &'static str,
    pub shot_index: u32,
    pub segment_id: String,
    pub at_frame: u64,
    /// Both sides belong to one scene, so matching is expected to close the gap.
    pub same_scene: bool,
    pub delta_e00_before: f64,
    pub delta_e00_after: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub w2_before: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub w2_after: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub within_p50: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub within_p95: Option<f64>,
    /// [`structure_difference`] across the join (continuity joins only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub structure_jump: Option<f64>,
    /// The p95 of [`structure_difference`] between consecutive frames inside the two segments.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub structure_within_p95: Option<f64>,
    /// [`seam_passes`]: continuity joins only, cuts and crossfades are meant to jump.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qa_passed: Option<bool>,
}

/// How far past the segments' own p95 a continuity join may go and still pass, as a fraction
/// of that p95: frame-to-frame motion is uneven, and one join is one more sample of it.
pub const SEAM_QA_TOLERANCE: f64 = 0.10;

/// The least ΔE00 limit of a continuity join, so a still shot (p95 near 0) does not fail on
/// encoding noise; 0.5 is half a just-noticeable difference.
pub const SEAM_QA_FLOOR_DELTA_E00: f64 = 0.5;

/// The least structure-jump limit, in L* like [`structure_difference`], for the same reason.
pub const SEAM_QA_FLOOR_STRUCTURE: f64 = 0.5;

/// Below this L* standard deviation a frame is flat: it has no contrast to normalise.
const FLAT_LIGHTNESS_SPREAD: f64 = 1e-6;

/// How far a continuity join is past its limits: the larger of its ΔE00 and its structure jump,
/// each over its limit (the segments' p95 times `1 + SEAM_QA_TOLERANCE`, at least the floor).
/// At most 1.0 exactly when [`seam_passes`]; lower is better, so of two tries of the same join
/// the lower one hides it better. `None` for cuts and crossfades, and for a continuity join
/// with no frame-to-frame steps to compare with (single-frame segments).
pub fn seam_badness(join: &JoinMetrics) -> Option<f64> {
    if join.kind != "continue" {
        return None;
    }
    let ratio =
        |measure: f64, p95: f64, floor: f64| measure / (p95 * (1.0 + SEAM_QA_TOLERANCE)).max(floor);
    let colour = ratio(
        join.delta_e00_after,
        join.within_p95?,
        SEAM_QA_FLOOR_DELTA_E00,
    );
    let structure = ratio(
        join.structure_jump?,
        join.structure_within_p95?,
        SEAM_QA_FLOOR_STRUCTURE,
    );
    Some(colour.max(structure))
}

/// Whether a continuity join hides within the motion of its segments: ΔE00 after matching and
/// the structure jump each at most its limit (see [`seam_badness`]). `None` where
/// [`seam_badness`] is.
pub fn seam_passes(join: &JoinMetrics) -> Option<bool> {
    seam_badness(join).map(|badness| badness <= 1.0)
}

/// Running sums for a Gaussian fit.
#[derive(Debug, Clone, Default)]
struct Moments {
    count: f64,
    sum: [f64; 3],
    products: [f64; 9],
}

impl Moments {
    fn add(&mut self, samples: &[Vec3]) {
        for sample in samples {
            self.count += 1.0;
            for row in 0..3 {
                self.sum[row] += sample[row];
                for column in 0..3 {
                    self.products[row * 3 + column] += sample[row] * sample[column];
                }
            }
        }
    }

    fn stats(&self) -> LabStats {
        let count = self.count.max(1.0);
        let mean = self.sum.map(|s| s / count);
        let covariance =
            std::array::from_fn(|i| self.products[i] / count - mean[i / 3] * mean[i % 3]);
        LabStats { mean, covariance }
    }
}

#[derive(Default)]
struct PartTrace {
    first: Option<(Vec<Vec3>, Vec<Vec3>)>,
    last: Option<(Vec<Vec3>, Vec<Vec3>)>,
    steps: Vec<f64>,
    structure_steps: Vec<f64>,
}

/// Collects the frames of one stitch and turns them into per-join metrics.
pub struct SeamMeter {
    parts: Vec<MeteredPart>,
    traces: Vec<PartTrace>,
    shots: std::collections::BTreeMap<u32, (Moments, Moments)>,
}

/// Mean CIEDE2000 between two equally sampled frames, pixel for pixel.
pub fn mean_delta_e00(first: &[Vec3], second: &[Vec3]) -> f64 {
    let pairs = first.len().min(second.len()).max(1) as f64;
    first
        .iter()
        .zip(second)
        .map(|(a, b)| ciede2000(a, b))
        .sum::<f64>()
        / pairs
}

/// How much the picture's structure changes between two equally sampled frames: the RMS
/// difference of their L* patterns (L* less the frame's mean, each scaled to the pair's mean
/// L* standard deviation), in L*. Equal to `contrast * sqrt(2 * (1 - r))`, with `r` the
/// correlation of the two L* patterns, so a change of exposure (L* offset or gain) or of white
/// balance scores 0. A flat frame is not rescaled: against a textured one it differs by the
/// texture's own spread.
pub fn structure_difference(first: &[Vec3], second: &[Vec3]) -> f64 {
    let pairs = first.len().min(second.len());
    if pairs == 0 {
        return 0.0;
    }
    let lightness_mean_and_spread = |frame: &[Vec3]| {
        let mean = frame[..pairs].iter().map(|lab| lab[0]).sum::<f64>() / pairs as f64;
        let variance = frame[..pairs]
            .iter()
            .map(|lab| (lab[0] - mean).powi(2))
            .sum::<f64>()
            / pairs as f64;
        (mean, variance.sqrt())
    };
    let (first_mean, first_spread) = lightness_mean_and_spread(first);
    let (second_mean, second_spread) = lightness_mean_and_spread(second);
    let (first_gain, second_gain) =
        if first_spread > FLAT_LIGHTNESS_SPREAD && second_spread > FLAT_LIGHTNESS_SPREAD {
            let contrast = 0.5 * (first_spread + second_spread);
            (contrast / first_spread, contrast / second_spread)
        } else {
            (1.0, 1.0)
        };
    let squares = first
        .iter()
        .zip(second)
        .map(|(a, b)| {
            ((a[0] - first_mean) * first_gain - (b[0] - second_mean) * second_gain).powi(2)
        })
        .sum::<f64>();
    (squares / pairs as f64).sqrt()
}

fn percentile(values: &[f64], fraction: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (fraction * (sorted.len() - 1) as f64).round() as usize;
    Some(sorted[rank])
}

impl SeamMeter {
    pub fn new(parts: Vec<MeteredPart>) -> SeamMeter {
        let traces = parts.iter().map(|_| PartTrace::default()).collect();
        SeamMeter {
            parts,
            traces,
            shots: Default::default(),
        }
    }

    /// Frames must arrive in timeline order.
    pub fn observe(&mut self, frame: MeteredFrame) {
        if !frame.blended {
            let shot = self.parts[frame.part].shot_index;
            let (uncorrected, corrected) = self.shots.entry(shot).or_default();
            uncorrected.add(&frame.uncorrected);
            corrected.add(&frame.corrected);
        }
        let trace = &mut self.traces[frame.part];
        if let Some((_, previous)) = &trace.last {
            trace.steps.push(mean_delta_e00(previous, &frame.corrected));
            trace
                .structure_steps
                .push(structure_difference(previous, &frame.corrected));
        }
        let pair = (frame.uncorrected, frame.corrected);
        if trace.first.is_none() {
            trace.first = Some(pair.clone());
        }
        trace.last = Some(pair);
    }

    pub fn joins(&self) -> Vec<JoinMetrics> {
        (1..self.parts.len())
            .filter_map(|index| self.join(index))
            .collect()
    }

    fn join(&self, index: usize) -> Option<JoinMetrics> {
        let part = &self.parts[index];
        let mut metrics = JoinMetrics {
            index,
            kind: part.kind,
            shot_index: part.shot_index,
            segment_id: part.segment_id.clone(),
            at_frame: part.at_frame,
            same_scene: part.same_scene_as_previous,
            delta_e00_before: 0.0,
            delta_e00_after: 0.0,
            w2_before: None,
            w2_after: None,
            within_p50: None,
            within_p95: None,
            structure_jump: None,
            structure_within_p95: None,
            qa_passed: None,
        };
        if part.kind == "continue" {
            let (before_uncorrected, before_corrected) = self.traces[index - 1].last.as_ref()?;
            let (after_uncorrected, after_corrected) = self.traces[index].first.as_ref()?;
            metrics.delta_e00_before = mean_delta_e00(before_uncorrected, after_uncorrected);
            metrics.delta_e00_after = mean_delta_e00(before_corrected, after_corrected);
            let (previous, next) = (&self.traces[index - 1], &self.traces[index]);
            let within: Vec<f64> = previous.steps.iter().chain(&next.steps).copied().collect();
            metrics.within_p50 = percentile(&within, 0.5);
            metrics.within_p95 = percentile(&within, 0.95);
            metrics.structure_jump = Some(structure_difference(before_corrected, after_corrected));
            let structure_within: Vec<f64> = previous
                .structure_steps
                .iter()
                .chain(&next.structure_steps)
                .copied()
                .collect();
            metrics.structure_within_p95 = percentile(&structure_within, 0.95);
            metrics.qa_passed = seam_passes(&metrics);
        } else {
            let previous_shot = self.parts[index - 1].shot_index;
            let (a_uncorrected, a_corrected) = self.shots.get(&previous_shot)?;
            let (b_uncorrected, b_corrected) = self.shots.get(&part.shot_index)?;
            let compare = |a: &Moments, b: &Moments| {
                let (a, b) = (a.stats(), b.stats());
                (
                    ciede2000(&a.mean, &b.mean),
                    wasserstein2_gaussian(&a.mean, &a.covariance, &b.mean, &b.covariance),
                )
            };
            let (before, w2_before) = compare(a_uncorrected, b_uncorrected);
            let (after, w2_after) = compare(a_corrected, b_corrected);
            metrics.delta_e00_before = before;
            metrics.delta_e00_after = after;
            metrics.w2_before = Some(w2_before);
            metrics.w2_after = Some(w2_after);
        }
        Some(metrics)
    }
}

#[cfg(test)]
#[path = "seams_tests.rs"]
mod tests;
