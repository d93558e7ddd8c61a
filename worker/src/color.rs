//! Colour statistics of frames in CIE Lab (D65): the sidecar numbers the stitcher matches
//! colour with, computed once at render time so the stitcher need not decode twice.

use serde::{Deserialize, Serialize};

use crate::frame::RgbFrame;

/// sRGB (8-bit, gamma-encoded) → CIE L*a*b* under D65.
pub fn srgb_to_lab(rgb: [u8; 3]) -> [f64; 3] {
    fn linear(channel: u8) -> f64 {
        let c = f64::from(channel) / 255.0;
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    }
    let (r, g, b) = (linear(rgb[0]), linear(rgb[1]), linear(rgb[2]));
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

/// Mean and covariance (row-major 3×3) of a frame's Lab colours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabStats {
    pub mean: [f64; 3],
    pub covariance: [f64; 9],
}

/// Samples a grid of about `target_samples` pixels: statistics of a 480p frame settle well
/// before every pixel is visited, and this runs on every segment's first and last frame.
pub fn lab_stats(frame: &RgbFrame, target_samples: usize) -> LabStats {
    let pixels = frame.width as usize * frame.height as usize;
    let step = ((pixels as f64 / target_samples.max(1) as f64)
        .sqrt()
        .floor() as usize)
        .max(1);
    let mut samples = Vec::new();
    for y in (0..frame.height as usize).step_by(step) {
        for x in (0..frame.width as usize).step_by(step) {
            samples.push(srgb_to_lab(frame.pixel(x as u32, y as u32)));
        }
    }
    let count = samples.len().max(1) as f64;
    let mut mean = [0.0; 3];
    for sample in &samples {
        for channel in 0..3 {
            mean[channel] += sample[channel] / count;
        }
    }
    let mut covariance = [0.0; 9];
    for sample in &samples {
        for row in 0..3 {
            for column in 0..3 {
                covariance[row * 3 + column] +=
                    (sample[row] - mean[row]) * (sample[column] - mean[column]) / count;
            }
        }
    }
    LabStats { mean, covariance }
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
