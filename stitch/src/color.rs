//! Colour of frames in CIE Lab (D65): conversions both ways, and the pixel samples a
//! segment's sidecar carries so the stitcher fits its grades without decoding twice.

use serde::{Deserialize, Serialize};

use reelfarm_media::frame::RgbFrame;

fn srgb_decode(c: f64) -> f64 {
    if c <= 0.04045 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

fn srgb_encode(c: f64) -> f64 {
    if c <= 0.003_130_8 {
        c * 12.92
    } else {
        1.055 * c.powf(1.0 / 2.4) - 0.055
    }
}

/// sRGB (8-bit, gamma-encoded) → CIE L*a*b* under D65.
pub fn srgb_to_lab(rgb: [u8; 3]) -> [f64; 3] {
    srgb_unit_to_lab(rgb.map(|c| f64::from(c) / 255.0))
}

/// sRGB with channels in [0, 1] → CIE L*a*b* under D65.
pub fn srgb_unit_to_lab(rgb: [f64; 3]) -> [f64; 3] {
    let [r, g, b] = rgb.map(srgb_decode);
    let x = (0.412_456_4 * r + 0.357_576_1 * g + 0.180_437_5 * b) / 0.950_47;
    let y = 0.212_672_9 * r + 0.715_152_2 * g + 0.072_175_0 * b;
    let z = (0.019_333_9 * r + 0.119_192_0 * g + 0.950_304_1 * b) / 1.088_83;
    fn f(t: f64) -> f64 {
        const DELTA: f64 = 6.0 / 29.0;
        if t > DELTA * DELTA * DELTA {
            t.cbrt()
        } else {
            t / (3.0 * DELTA * DELTA) + 4.0 / 29.0
        }
    }
    let (fx, fy, fz) = (f(x), f(y), f(z));
    [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)]
}

/// CIE L*a*b* (D65) → sRGB with channels in [0, 1], clipped to the gamut.
pub fn lab_to_srgb_unit(lab: [f64; 3]) -> [f64; 3] {
    const DELTA: f64 = 6.0 / 29.0;
    let inverse = |t: f64| {
        if t > DELTA {
            t * t * t
        } else {
            3.0 * DELTA * DELTA * (t - 4.0 / 29.0)
        }
    };
    let fy = (lab[0] + 16.0) / 116.0;
    let x = 0.950_47 * inverse(fy + lab[1] / 500.0);
    let y = inverse(fy);
    let z = 1.088_83 * inverse(fy - lab[2] / 200.0);
    let r = 3.240_454_2 * x - 1.537_138_5 * y - 0.498_531_4 * z;
    let g = -0.969_266_0 * x + 1.876_010_8 * y + 0.041_556_0 * z;
    let b = 0.055_643_4 * x - 0.204_025_9 * y + 1.057_225_2 * z;
    [r, g, b].map(|c| srgb_encode(c.clamp(0.0, 1.0)).clamp(0.0, 1.0))
}

/// Pixel positions on a regular grid of about `target` points, the same for every frame of
/// a size, so consecutive frames are compared pixel for pixel.
pub fn sample_grid(width: u32, height: u32, target: usize) -> Vec<usize> {
    let pixels = width as usize * height as usize;
    let step = ((pixels as f64 / target.max(1) as f64).sqrt().floor() as usize).max(1);
    let (offset_x, offset_y) = (step / 2, step / 2);
    let mut positions = Vec::with_capacity(target + width as usize);
    for y in (offset_y.min(height as usize - 1)..height as usize).step_by(step) {
        for x in (offset_x.min(width as usize - 1)..width as usize).step_by(step) {
            positions.push(y * width as usize + x);
        }
    }
    positions
}

/// The Lab colours of a frame at the grid positions.
pub fn lab_at(frame: &RgbFrame, positions: &[usize]) -> Vec<[f64; 3]> {
    positions
        .iter()
        .map(|&p| {
            srgb_to_lab([
                frame.data[p * 3],
                frame.data[p * 3 + 1],
                frame.data[p * 3 + 2],
            ])
        })
        .collect()
}

/// Lab colours sampled from frames, rounded to 0.01 so sidecars stay small.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LabSamples(pub Vec<[f32; 3]>);

impl LabSamples {
    pub fn from_lab(lab: &[[f64; 3]]) -> Self {
        LabSamples(
            lab.iter()
                .map(|v| v.map(|c| ((c * 100.0).round() / 100.0) as f32))
                .collect(),
        )
    }

    pub fn to_f64(&self) -> Vec<[f64; 3]> {
        self.0.iter().map(|v| v.map(f64::from)).collect()
    }

    pub fn stats(&self) -> LabStats {
        LabStats::of(&self.to_f64())
    }
}

/// Pixels sampled from the first and last frames for a segment's sidecar.
pub const EDGE_FRAME_SAMPLES: usize = 1024;
/// Pixels sampled across a whole segment (spread over its frames) for its sidecar.
pub const SEGMENT_SAMPLES: usize = 3072;
/// Frames the whole-segment samples are drawn from.
const SAMPLED_FRAMES: u64 = 12;

/// Collects a segment's colour samples frame by frame as it is encoded: its first frame in
/// the file, its last timeline frame, and a spread over its timeline frames.
pub struct SegmentSampler {
    edge_grid: Vec<usize>,
    segment_grid: Vec<usize>,
    lead_frames: u64,
    sample_every: u64,
    first: Option<Vec<[f64; 3]>>,
    whole: Vec<[f64; 3]>,
}

/// A segment's colour samples, as its sidecar carries them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SegmentSamples {
    pub first_frame_lab: LabSamples,
    pub last_frame_lab: LabSamples,
    pub segment_lab: LabSamples,
}

impl SegmentSampler {
    pub fn new(width: u32, height: u32, lead_frames: u64, timeline_frames: u64) -> Self {
        let frames = SAMPLED_FRAMES.min(timeline_frames).max(1);
        SegmentSampler {
            edge_grid: sample_grid(width, height, EDGE_FRAME_SAMPLES),
            segment_grid: sample_grid(width, height, SEGMENT_SAMPLES / frames as usize),
            lead_frames,
            sample_every: timeline_frames.div_ceil(frames).max(1),
            first: None,
            whole: Vec::new(),
        }
    }

    /// `index` counts frames in the file, lead frames first.
    pub fn observe(&mut self, index: u64, frame: &RgbFrame) {
        if self.first.is_none() {
            self.first = Some(lab_at(frame, &self.edge_grid));
        }
        if index
            .checked_sub(self.lead_frames)
            .is_some_and(|i| i % self.sample_every == 0)
        {
            self.whole.extend(lab_at(frame, &self.segment_grid));
        }
    }

    pub fn finish(self, last_frame: &RgbFrame) -> SegmentSamples {
        SegmentSamples {
            first_frame_lab: LabSamples::from_lab(&self.first.unwrap_or_default()),
            last_frame_lab: LabSamples::from_lab(&lab_at(last_frame, &self.edge_grid)),
            segment_lab: LabSamples::from_lab(&self.whole),
        }
    }
}

/// Mean and covariance (row-major 3×3) of a frame's Lab colours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabStats {
    pub mean: [f64; 3],
    pub covariance: [f64; 9],
}

/// Samples a grid of about `target_samples` pixels: statistics of a 480p frame settle well
/// before every pixel is visited, and this runs on every segment's first and last frame.
pub fn lab_stats(frame: &RgbFrame, target_samples: usize) -> LabStats {
    let positions = sample_grid(frame.width, frame.height, target_samples);
    LabStats::of(&lab_at(frame, &positions))
}

impl LabStats {
    pub fn of(samples: &[[f64; 3]]) -> LabStats {
        let count = samples.len().max(1) as f64;
        let mut mean = [0.0; 3];
        for sample in samples {
            for channel in 0..3 {
                mean[channel] += sample[channel] / count;
            }
        }
        let mut covariance = [0.0; 9];
        for sample in samples {
            for row in 0..3 {
                for column in 0..3 {
                    covariance[row * 3 + column] +=
                        (sample[row] - mean[row]) * (sample[column] - mean[column]) / count;
                }
            }
        }
        LabStats { mean, covariance }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_colours_land_where_the_standard_puts_them() {
        let white = srgb_to_lab([255, 255, 255]);
        assert!(
            (white[0] - 100.0).abs() < 0.01 && white[1].abs() < 0.01 && white[2].abs() < 0.01,
            "{white:?}"
        );
        let black = srgb_to_lab([0, 0, 0]);
        assert!(black.iter().all(|v| v.abs() < 1e-9), "{black:?}");
        let red = srgb_to_lab([255, 0, 0]);
        assert!(
            (red[0] - 53.24).abs() < 0.05
                && (red[1] - 80.09).abs() < 0.1
                && (red[2] - 67.20).abs() < 0.1,
            "{red:?}"
        );
        let grey = srgb_to_lab([119, 119, 119]);
        assert!((grey[0] - 50.0).abs() < 0.5, "{grey:?}");
    }

    #[test]
    fn lab_to_srgb_inverts_srgb_to_lab_on_the_whole_cube() {
        for r in (0..=255u8).step_by(15) {
            for g in (0..=255u8).step_by(15) {
                for b in (0..=255u8).step_by(15) {
                    let back = lab_to_srgb_unit(srgb_to_lab([r, g, b]));
                    for (channel, original) in back.iter().zip([r, g, b]) {
                        assert!(
                            (channel * 255.0 - f64::from(original)).abs() < 0.01,
                            "{r} {g} {b} -> {back:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_sample_grid_stays_inside_the_frame_and_near_its_target() {
        for (width, height, target) in [(848, 480, 1024), (17, 9, 4096), (1920, 1080, 1500)] {
            let grid = sample_grid(width, height, target);
            assert!(grid.iter().all(|&p| p < (width * height) as usize));
            let wanted = target.min((width * height) as usize);
            assert!(
                grid.len() >= wanted / 2 && grid.len() <= wanted * 2,
                "{width}x{height}: {}",
                grid.len()
            );
        }
    }

    #[test]
    fn a_flat_frame_has_its_colour_as_mean_and_no_spread() {
        let stats = lab_stats(&RgbFrame::filled(64, 48, [200, 100, 50]), 500);
        let expected = srgb_to_lab([200, 100, 50]);
        for (mean, expected) in stats.mean.iter().zip(expected) {
            assert!((mean - expected).abs() < 1e-9);
        }
        assert!(stats.covariance.iter().all(|v| v.abs() < 1e-9));
    }

    #[test]
    fn two_halves_give_the_expected_lightness_variance() {
        let mut frame = RgbFrame::filled(64, 64, [0, 0, 0]);
        for y in 0..64 {
            for x in 32..64 {
                let i = (y * 64 + x) * 3;
                frame.data[i..i + 3].copy_from_slice(&[255, 255, 255]);
            }
        }
        let stats = lab_stats(&frame, 4096);
        assert!((stats.mean[0] - 50.0).abs() < 0.01, "{:?}", stats.mean);
        assert!(
            (stats.covariance[0] - 2500.0).abs() < 1.0,
            "{:?}",
            stats.covariance
        );
    }
}
