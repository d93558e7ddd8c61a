//! Grading a sequence to one look per scene: which colour transfer each segment gets (fitted
//! from its sidecar's Lab samples, never from pixels decoded twice) and a lookup table that
//! applies it to frames fast enough that matching costs little next to the codec.
//!
//! Strategy, per segment:
//! - **Scene grade** (`base`): the segment's whole-segment colours are matched to the look of
//!   its scene, which is set by the first segment of the scene's reference shot. Across hard
//!   cuts this matches global statistics, not pixels, because the framing changes; along a
//!   continuity run it also pulls back slow drift (darkening, colour creep).
//! - **Join fix** (`join`, continuity joins only): after both scene grades, the start of the
//!   segment is matched to the graded end of the one it continues, and that correction is
//!   eased out over the segment (weight 1 on its first frame, 0 on its last, smoothstep in
//!   between), so there is no jump at the join and no flicker after it.

use reelfarm_common::sequence::ColorMatch;

use crate::color::{LabStats, lab_to_srgb_unit, srgb_unit_to_lab};
use crate::color_math::{AffineTransfer, Vec3, histogram_match_table, mkl, reinhard};
use reelfarm_media::frame::RgbFrame;

/// Histogram bins per Lab channel, and each channel's range.
const BINS: usize = 256;
const CHANNEL_RANGE: [(f64, f64); 3] = [(0.0, 100.0), (-128.0, 128.0), (-128.0, 128.0)];

/// A colour correction in Lab.
#[derive(Debug, Clone, PartialEq)]
pub enum Transfer {
    Identity,
    Affine(AffineTransfer),
    /// Per-channel tone curves: for each channel, source bin → reference bin (fractional).
    Curves(Box<[[f64; BINS]; 3]>),
    Chain(Vec<Transfer>),
}

impl Transfer {
    pub fn apply(&self, lab: Vec3) -> Vec3 {
        match self {
            Transfer::Identity => lab,
            Transfer::Affine(affine) => affine.apply(&lab),
            Transfer::Curves(tables) => {
                std::array::from_fn(|channel| {
                    let (low, high) = CHANNEL_RANGE[channel];
                    let width = (high - low) / BINS as f64;
                    // Bin centres are the table's knots; interpolate between them.
                    let position =
                        ((lab[channel] - low) / width - 0.5).clamp(0.0, (BINS - 1) as f64);
                    let below = position.floor() as usize;
                    let above = (below + 1).min(BINS - 1);
                    let fraction = position - below as f64;
                    let table = &tables[channel];
                    let bin = table[below] + (table[above] - table[below]) * fraction;
                    low + (bin + 0.5) * width
                })
            }
            Transfer::Chain(steps) => steps.iter().fold(lab, |lab, step| step.apply(lab)),
        }
    }

    pub fn apply_all(&self, samples: &[Vec3]) -> Vec<Vec3> {
        samples.iter().map(|&lab| self.apply(lab)).collect()
    }

    pub fn is_identity(&self) -> bool {
        match self {
            Transfer::Identity => true,
            Transfer::Chain(steps) => steps.iter().all(Transfer::is_identity),
            _ => false,
        }
    }
}

/// Fits `method` so that `source` colours take on the distribution of `reference` colours.
pub fn fit(method: ColorMatch, source: &[Vec3], reference: &[Vec3]) -> Transfer {
    if source.is_empty() || reference.is_empty() {
        return Transfer::Identity;
    }
    match method {
        ColorMatch::Off => Transfer::Identity,
        ColorMatch::Hm => fit_curves(source, reference),
        ColorMatch::Reinhard | ColorMatch::Mkl => {
            let (source, reference) = (LabStats::of(source), LabStats::of(reference));
            let transfer = if method == ColorMatch::Mkl {
                mkl
            } else {
                reinhard
            };
            Transfer::Affine(transfer(
                source.mean,
                &source.covariance,
                reference.mean,
                &reference.covariance,
            ))
        }
        ColorMatch::HmMklHm => {
            let first = fit_curves(source, reference);
            let after_first = first.apply_all(source);
            let middle = fit(ColorMatch::Mkl, &after_first, reference);
            let after_middle = middle.apply_all(&after_first);
            let last = fit_curves(&after_middle, reference);
            Transfer::Chain(vec![first, middle, last])
        }
    }
}

fn fit_curves(source: &[Vec3], reference: &[Vec3]) -> Transfer {
    let histogram = |samples: &[Vec3], channel: usize| {
        let (low, high) = CHANNEL_RANGE[channel];
        let mut counts = [0u64; BINS];
        for sample in samples {
            let bin = ((sample[channel] - low) / (high - low) * BINS as f64).floor();
            counts[(bin.max(0.0) as usize).min(BINS - 1)] += 1;
        }
        counts
    };
    Transfer::Curves(Box::new(std::array::from_fn(|channel| {
        histogram_match_table(&histogram(source, channel), &histogram(reference, channel))
    })))
}

/// What the grader knows of one segment (from its sidecar and the plan).
#[derive(Debug, Clone)]
pub struct SegmentColor {
    pub scene: String,
    /// This segment sets its scene's look.
    pub grade_reference: bool,
    /// Conditioned on the segment before it (a continue join or a split shot).
    pub continues_previous: bool,
    pub first_frame: Vec<Vec3>,
    pub last_frame: Vec<Vec3>,
    pub whole: Vec<Vec3>,
}

/// The grade of one segment: `base` throughout, then `join` eased out over the segment.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentGrade {
    pub base: Transfer,
    pub join: Transfer,
}

impl SegmentGrade {
    pub const NONE: SegmentGrade = SegmentGrade {
        base: Transfer::Identity,
        join: Transfer::Identity,
    };

    pub fn is_identity(&self) -> bool {
        self.base.is_identity() && self.join.is_identity()
    }
}

/// Weight of the join fix on frame `index` of `frames`: 1 on the first, 0 on the last,
/// smoothstep between (no slope at either end, so no visible kink).
pub fn join_weight(index: u64, frames: u64) -> f64 {
    if frames <= 1 {
        return 1.0;
    }
    let t = (index as f64 / (frames - 1) as f64).clamp(0.0, 1.0);
    1.0 - t * t * (3.0 - 2.0 * t)
}

/// The grade of every segment, in timeline order. Pure: same inputs, same grades.
pub fn plan_grades(method: ColorMatch, segments: &[SegmentColor]) -> Vec<SegmentGrade> {
    if method == ColorMatch::Off {
        return vec![SegmentGrade::NONE; segments.len()];
    }
    let look = |scene: &str| {
        segments
            .iter()
            .find(|segment| segment.scene == scene && segment.grade_reference)
            .or_else(|| segments.iter().find(|segment| segment.scene == scene))
            .map(|segment| segment.whole.as_slice())
            .unwrap_or_default()
    };
    let mut grades: Vec<SegmentGrade> = Vec::with_capacity(segments.len());
    for (index, segment) in segments.iter().enumerate() {
        let base = if segment.grade_reference {
            Transfer::Identity
        } else {
            fit(method, &segment.whole, look(&segment.scene))
        };
        let join = match (segment.continues_previous, index.checked_sub(1)) {
            (true, Some(previous_index)) => {
                let previous = &segments[previous_index];
                // The previous segment's own join fix has eased out by its last frame.
                let previous_end = grades[previous_index].base.apply_all(&previous.last_frame);
                let this_start = base.apply_all(&segment.first_frame);
                fit(method, &this_start, &previous_end)
            }
            _ => Transfer::Identity,
        };
        grades.push(SegmentGrade { base, join });
    }
    grades
}

/// Bits of each channel that index the table frames are graded through.
const TABLE_BITS: u32 = 6;
const TABLE_NODES: usize = 1 << TABLE_BITS;
/// Join weights are quantised to this many steps, so a frame's table is rebuilt only when
/// its weight moves by a visible amount (1/64 of the correction).
const WEIGHT_STEPS: f64 = 64.0;

/// A segment's grade as RGB offset tables: `out = in + base + w·(joined − base)`, indexed by
/// the top six bits of each channel (the offsets of a smooth grade change little within a
/// 4-level bucket, so the nearest node is enough).
pub struct GradeTable {
    base: Vec<[f32; 3]>,
    joined: Option<Vec<[f32; 3]>>,
    current: Vec<[i16; 3]>,
    current_weight: Option<i64>,
    identity: bool,
}

impl GradeTable {
    pub fn new(grade: &SegmentGrade) -> GradeTable {
        let identity = grade.is_identity();
        let (base, joined) = if identity {
            (Vec::new(), None)
        } else {
            let base = offsets(&|lab| grade.base.apply(lab));
            let joined = (!grade.join.is_identity())
                .then(|| offsets(&|lab| grade.join.apply(grade.base.apply(lab))));
            (base, joined)
        };
        GradeTable {
            base,
            joined,
            current: Vec::new(),
            current_weight: None,
            identity,
        }
    }

    pub fn is_identity(&self) -> bool {
        self.identity
    }

    /// Grades `frame` in place with the join fix at `weight` (0..1).
    pub fn apply(&mut self, frame: &mut RgbFrame, weight: f64) {
        if self.identity {
            return;
        }
        let step = if self.joined.is_some() {
            (weight.clamp(0.0, 1.0) * WEIGHT_STEPS).round() as i64
        } else {
            0
        };
        if self.current_weight != Some(step) {
            let w = step as f32 / WEIGHT_STEPS as f32;
            self.current = match &self.joined {
                Some(joined) => self
                    .base
                    .iter()
                    .zip(joined)
                    .map(|(b, j)| {
                        std::array::from_fn(|c| (b[c] + w * (j[c] - b[c])).round() as i16)
                    })
                    .collect(),
                None => self
                    .base
                    .iter()
                    .map(|b| b.map(|v| v.round() as i16))
                    .collect(),
            };
            self.current_weight = Some(step);
        }
        let shift = 8 - TABLE_BITS;
        for pixel in frame.data.chunks_exact_mut(3) {
            let index = ((usize::from(pixel[0]) >> shift) << (2 * TABLE_BITS))
                | ((usize::from(pixel[1]) >> shift) << TABLE_BITS)
                | (usize::from(pixel[2]) >> shift);
            let offset = self.current[index];
            for channel in 0..3 {
                pixel[channel] = (i16::from(pixel[channel]) + offset[channel]).clamp(0, 255) as u8;
            }
        }
    }
}

/// RGB offsets (in 8-bit levels) of a Lab correction, evaluated exactly at the centre of
/// every table bucket (no interpolation, so colours the grade pushes against the gamut,
/// where the exact result clips, stay exact at the centres too).
fn offsets(correction: &dyn Fn(Vec3) -> Vec3) -> Vec<[f32; 3]> {
    let bucket = f64::from(1u32 << (8 - TABLE_BITS));
    let centres: Vec<f64> = (0..TABLE_NODES)
        .map(|node| (node as f64 * bucket + (bucket - 1.0) / 2.0) / 255.0)
        .collect();
    let mut table = Vec::with_capacity(TABLE_NODES * TABLE_NODES * TABLE_NODES);
    for &r in &centres {
        for &g in &centres {
            for &b in &centres {
                let rgb = [r, g, b];
                let graded = lab_to_srgb_unit(correction(srgb_unit_to_lab(rgb)));
                table.push(std::array::from_fn(|c| {
                    ((graded[c] - rgb[c]) * 255.0) as f32
                }));
            }
        }
    }
    table
}

#[cfg(test)]
#[path = "grading_tests.rs"]
mod tests;
