//! Seam metrics: how visible each join of the stitched video is, before and after colour
//! matching, measured on the frames as they are written (grid-sampled pixels in Lab).
//!
//! - Continuity joins (`continue`, split shots): mean CIEDE2000 between the last frame before
//!   and the first frame after the join, pixel for pixel, next to the p50 and p95 of the same
//!   measure between consecutive frames inside the two segments around it (what motion alone
//!   changes from one frame to the next).
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
        };
        if part.kind == "continue" {
            let (before_uncorrected, before_corrected) = self.traces[index - 1].last.as_ref()?;
            let (after_uncorrected, after_corrected) = self.traces[index].first.as_ref()?;
            metrics.delta_e00_before = mean_delta_e00(before_uncorrected, after_uncorrected);
            metrics.delta_e00_after = mean_delta_e00(before_corrected, after_corrected);
            let within: Vec<f64> = self.traces[index - 1]
                .steps
                .iter()
                .chain(&self.traces[index].steps)
                .copied()
                .collect();
            metrics.within_p50 = percentile(&within, 0.5);
            metrics.within_p95 = percentile(&within, 0.95);
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
mod tests {
    use super::*;

    fn part(kind: &'static str, shot_index: u32, at_frame: u64) -> MeteredPart {
        MeteredPart {
            segment_id: format!("s{shot_index:03}"),
            shot_index,
            kind,
            at_frame,
            same_scene_as_previous: true,
        }
    }

    fn flat(lab: Vec3) -> Vec<Vec3> {
        vec![lab; 16]
    }

    #[test]
    fn a_cut_between_two_flat_shots_measures_their_colour_difference() {
        let mut meter = SeamMeter::new(vec![part("cut", 0, 0), part("cut", 1, 2)]);
        for (part, lab) in [
            (0, [50.0, 0.0, 0.0]),
            (0, [50.0, 0.0, 0.0]),
            (1, [60.0, 0.0, 0.0]),
        ] {
            meter.observe(MeteredFrame {
                part,
                blended: false,
                uncorrected: flat(lab),
                corrected: flat([50.0, 0.0, 0.0]),
            });
        }
        let joins = meter.joins();
        assert_eq!(joins.len(), 1);
        let join = &joins[0];
        let expected = ciede2000(&[50.0, 0.0, 0.0], &[60.0, 0.0, 0.0]);
        assert!((join.delta_e00_before - expected).abs() < 1e-9, "{join:?}");
        assert!(join.delta_e00_after.abs() < 1e-9);
        assert!((join.w2_before.unwrap() - 10.0).abs() < 1e-6);
        assert!(join.w2_after.unwrap().abs() < 1e-6);
        assert_eq!(join.within_p95, None);
    }

    #[test]
    fn a_continuity_join_is_compared_with_the_steps_inside_its_segments() {
        let mut meter = SeamMeter::new(vec![part("cut", 0, 0), part("continue", 0, 3)]);
        // Lightness rises by 1 per frame inside each part; the join jumps by 5.
        for (part, lightness) in [(0, 50.0), (0, 51.0), (0, 52.0), (1, 57.0), (1, 58.0)] {
            let lab = flat([lightness, 0.0, 0.0]);
            meter.observe(MeteredFrame {
                part,
                blended: false,
                uncorrected: lab.clone(),
                corrected: lab,
            });
        }
        let join = &meter.joins()[0];
        let step = ciede2000(&[50.0, 0.0, 0.0], &[51.0, 0.0, 0.0]);
        let jump = ciede2000(&[52.0, 0.0, 0.0], &[57.0, 0.0, 0.0]);
        assert!((join.delta_e00_before - jump).abs() < 1e-9);
        assert_eq!(
            join.delta_e00_before, join.delta_e00_after,
            "uncorrected = corrected here"
        );
        assert!((join.within_p95.unwrap() - step).abs() < 0.05, "{join:?}");
        assert!(join.delta_e00_after > join.within_p95.unwrap());
    }

    #[test]
    fn dissolve_frames_do_not_count_towards_a_shots_colour() {
        let mut meter = SeamMeter::new(vec![part("cut", 0, 0), part("cut", 1, 2)]);
        for (part, blended, lab) in [
            (0, false, [50.0, 0.0, 0.0]),
            (0, true, [90.0, 0.0, 0.0]),
            (1, false, [50.0, 0.0, 0.0]),
        ] {
            meter.observe(MeteredFrame {
                part,
                blended,
                uncorrected: flat(lab),
                corrected: flat(lab),
            });
        }
        assert!(meter.joins()[0].delta_e00_before.abs() < 1e-9);
    }

    #[test]
    fn moments_give_the_mean_and_covariance_of_everything_added() {
        let mut moments = Moments::default();
        moments.add(&[[0.0, 0.0, 0.0], [2.0, 4.0, 0.0]]);
        let stats = moments.stats();
        assert_eq!(stats.mean, [1.0, 2.0, 0.0]);
        assert!((stats.covariance[0] - 1.0).abs() < 1e-12);
        assert!((stats.covariance[1] - 2.0).abs() < 1e-12);
        assert!((stats.covariance[4] - 4.0).abs() < 1e-12);
    }
}
