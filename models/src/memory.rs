//! The one memory estimator: how many bytes a segment of a model needs at its peak, how long
//! the model takes to load and roughly how long a segment computes, from a handful of
//! coefficients in the model's catalog entry. The planner, placement, the simulator and the
//! worker all call this; the farm corrects it with measured peaks (`farm::estimator`).
//!
//! ```text
//! peak   = (fixed + tokens × bytes_per_token × guidance_branches
//!           + width × height × decode_bytes_per_pixel / decode_tiles
//!           + width × height × frames × clip_bytes_per_pixel_frame) × (1 + margin)
//! tokens = (latent_frames + extra_latent_frames) × ⌈height / downsample⌉ × ⌈width / downsample⌉
//! latent_frames = ⌈(frames − 1) / temporal_stride⌉ + 1
//! load   = weights_bytes / LOAD_BYTES_PER_SECOND
//! work   = tokens × steps × seconds_per_token_step          (on a speed-1.0 GPU)
//! ```
//!
//! Calibration, stated beside each entry: the Wan 2.1 coefficients were solved from the two
//! published points (1.3B at 832×480, 81 frames, text encoder on the CPU ≈ 8.2 GB; 14B at
//! 1280×720, 81 frames, all on one H100 ≈ 69 GB) and land within 2 % of both (tested);
//! reelfarm-tiny's from its own measured peak RSS growth (tested: above every measured peak).

use serde::{Deserialize, Serialize};

/// Tiles a low-memory (tiled) decode splits each frame into.
pub const DECODE_TILES: f64 = 4.0;
/// Weights a device loads per second: safetensors from local NVMe or the page cache, copied to
/// the GPU. One figure for every model, so load times are comparable.
pub const LOAD_BYTES_PER_SECOND: f64 = 1e9;

/// The least `fixed_bytes` a model may claim.
const MIN_FIXED_BYTES: f64 = 1e6;

/// The coefficients of one model in the estimator. Every field is per model; see the module
/// documentation for the formula.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryModel {
    /// Bytes resident whatever the segment: weights on the device, the text encoder when it
    /// stays there, the VAE, the CUDA context and allocator slack.
    pub fixed_bytes: f64,
    /// Activation bytes per latent token for one guidance branch.
    pub bytes_per_token: f64,
    /// Guidance branches alive at once: 2 when conditional and unconditional run batched, 1
    /// when they run one after the other.
    #[serde(deserialize_with = "crate::catalog::whole::number")]
    pub guidance_branches: u32,
    /// Output pixels per latent token along each side (VAE stride × patch size).
    #[serde(deserialize_with = "crate::catalog::whole::number")]
    pub downsample: u32,
    /// Latent frames computed beyond the clip's own (margins the sampler adds).
    #[serde(default, deserialize_with = "crate::catalog::whole::number")]
    pub extra_latent_frames: u32,
    /// Decoder bytes per output pixel of one decoded chunk, untiled.
    pub decode_bytes_per_pixel: f64,
    /// Bytes per output pixel and frame held for the whole clip (0 when frames are produced
    /// one at a time).
    #[serde(default)]
    pub clip_bytes_per_pixel_frame: f64,
    /// Headroom on top of the formula.
    #[serde(default)]
    pub margin: f64,
    /// Bytes read from disk to make the model resident (all components).
    pub weights_bytes: f64,
    /// Compute of one token through one denoising step, guidance included, in seconds on a
    /// speed-1.0 GPU (an L4). Only ratios matter to placement.
    pub seconds_per_token_step: f64,
}

/// One segment's shape, as the estimate sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentShape {
    pub width: u32,
    pub height: u32,
    pub frames: u64,
    /// Decode in tiles (the low-memory mode of the out-of-memory ladder).
    pub tiled_decode: bool,
}

impl MemoryModel {
    /// Latent tokens of a segment (with the sampler's extra frames).
    pub fn tokens(&self, temporal_stride: u32, shape: &SegmentShape) -> f64 {
        let stride = u64::from(temporal_stride.max(1));
        let latent_frames = shape.frames.saturating_sub(1).div_ceil(stride) + 1;
        let side = |pixels: u32| f64::from(pixels.div_ceil(self.downsample.max(1)));
        (latent_frames + u64::from(self.extra_latent_frames)) as f64
            * side(shape.height)
            * side(shape.width)
    }

    /// Peak bytes of one segment, margin included.
    pub fn estimate_bytes(&self, temporal_stride: u32, shape: &SegmentShape) -> u64 {
        let pixels = f64::from(shape.width) * f64::from(shape.height);
        let activations = self.tokens(temporal_stride, shape)
            * self.bytes_per_token
            * f64::from(self.guidance_branches.max(1));
        let tiles = if shape.tiled_decode {
            DECODE_TILES
        } else {
            1.0
        };
        let decoder = pixels * self.decode_bytes_per_pixel / tiles;
        let clip = pixels * shape.frames as f64 * self.clip_bytes_per_pixel_frame;
        ((self.fixed_bytes + activations + decoder + clip) * (1.0 + self.margin)) as u64
    }

    /// Seconds to make the model resident on a device where it is not.
    pub fn load_seconds(&self) -> f64 {
        self.weights_bytes / LOAD_BYTES_PER_SECOND
    }

    /// Compute seconds of one segment on a speed-1.0 GPU.
    pub fn work_seconds(&self, temporal_stride: u32, shape: &SegmentShape, steps: u32) -> f64 {
        self.tokens(temporal_stride, shape) * f64::from(steps) * self.seconds_per_token_step
    }

    /// Checks what a catalog file may get wrong; `Err` names the coefficient.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        // Every model holds its weights: an estimate of nothing would let placement stack
        // segments on a GPU without limit, and no measured peak could correct a zero.
        if self.fixed_bytes.is_nan() || self.fixed_bytes < MIN_FIXED_BYTES {
            return Err((
                "fixed_bytes",
                format!(
                    "must be at least {MIN_FIXED_BYTES:.0} (the weights alone), got {}",
                    self.fixed_bytes
                ),
            ));
        }
        let finite_non_negative = [
            ("fixed_bytes", self.fixed_bytes),
            ("bytes_per_token", self.bytes_per_token),
            ("decode_bytes_per_pixel", self.decode_bytes_per_pixel),
            (
                "clip_bytes_per_pixel_frame",
                self.clip_bytes_per_pixel_frame,
            ),
            ("weights_bytes", self.weights_bytes),
            ("seconds_per_token_step", self.seconds_per_token_step),
        ];
        for (name, value) in finite_non_negative {
            if !value.is_finite() || !(0.0..=1e15).contains(&value) {
                return Err((
                    name,
                    format!("must be a number within 0..=1e15, got {value}"),
                ));
            }
        }
        if !self.margin.is_finite() || !(0.0..=10.0).contains(&self.margin) {
            return Err((
                "margin",
                format!("must be within 0..=10, got {}", self.margin),
            ));
        }
        if !(1..=2).contains(&self.guidance_branches) {
            return Err((
                "guidance_branches",
                format!("must be 1 or 2, got {}", self.guidance_branches),
            ));
        }
        if !(1..=1024).contains(&self.downsample) {
            return Err((
                "downsample",
                format!("must be within 1..=1024, got {}", self.downsample),
            ));
        }
        if self.extra_latent_frames > 1024 {
            return Err((
                "extra_latent_frames",
                format!("must be at most 1024, got {}", self.extra_latent_frames),
            ));
        }
        Ok(())
    }
}

/// reelfarm-tiny. Fitted to the model's measured peak RSS growth (the `#[ignore]`d benchmarks
/// in reelfarm-tiny: 35 MiB at 848×480×241, 173 MiB at 1920×1080×241, 276 MiB at
/// 1920×1080×481; glibc malloc, 2 cores) with the largest camera plate allowed for:
/// 63 / 267 / 478 MB. The sampler adds a token frame (2 latent frames) of margin at each end,
/// guidance runs its two branches one after the other, and frames are decoded one at a time.
pub const REELFARM_TINY_MEMORY: MemoryModel = MemoryModel {
    fixed_bytes: 14e6,
    bytes_per_token: 430.0,
    guidance_branches: 1,
    downsample: 16,
    extra_latent_frames: 4,
    decode_bytes_per_pixel: 12.0,
    clip_bytes_per_pixel_frame: 0.0,
    margin: 0.0,
    weights_bytes: 5.8e6,
    // 0.091 s per denoising step of a 480p 10 s draft (~103,000 tokens) on 2 CPU cores.
    seconds_per_token_step: 9e-7,
};

/// Calibrated on the published peak: 8.2 GB at 480p (832×480), 81 frames, on an RTX 4090 with
/// the text encoder on the CPU (the test below holds this formula within 2 % of it).
/// Wan 2.1 T2V 1.3B (bf16, text encoder kept on the CPU): 1.3e9 × 2 bytes of transformer,
/// 0.25 GB of VAE, 0.5 GB of runtime; hidden 1536 × 2 bytes × 12 live copies per token per
/// branch, both branches batched; the VAE decodes 4-frame chunks at 1 KiB per pixel and
/// frame. Weights on disk include umT5-XXL (11.4 GB). About 12 s per step at 480p, 81 frames
/// on an L4 (published: ~5 s on a 4090).
pub const WAN_2_1_1_3B_MEMORY: MemoryModel = MemoryModel {
    fixed_bytes: 2.6e9 + 0.25e9 + 0.5e9,
    bytes_per_token: 1536.0 * 2.0 * 12.0,
    guidance_branches: 2,
    downsample: 16,
    extra_latent_frames: 0,
    decode_bytes_per_pixel: 4.0 * 1024.0,
    clip_bytes_per_pixel_frame: 0.0,
    margin: 0.10,
    weights_bytes: 2.6e9 + 0.25e9 + 11.4e9,
    seconds_per_token_step: 3.7e-4,
};

/// Wan 2.2 TI2V 5B (bf16, text encoder on the CPU, a 16× VAE).
pub const WAN_2_2_5B_MEMORY: MemoryModel = MemoryModel {
    fixed_bytes: 10.0e9 + 0.7e9 + 0.5e9,
    bytes_per_token: 3072.0 * 2.0 * 12.0,
    guidance_branches: 2,
    downsample: 32,
    extra_latent_frames: 0,
    decode_bytes_per_pixel: 4.0 * 1024.0,
    clip_bytes_per_pixel_frame: 0.0,
    margin: 0.10,
    weights_bytes: 10.0e9 + 0.7e9 + 11.4e9,
    seconds_per_token_step: 1.4e-3,
};

/// Wan 2.1 T2V 14B (bf16, umT5-XXL kept on the GPU). Calibrated on the published peak:
/// 69.1 GB at 720p (1280×720), 81 frames, on one H100 (the test below holds it within 2 %).
pub const WAN_2_1_14B_MEMORY: MemoryModel = MemoryModel {
    fixed_bytes: 14.0e9 * 2.0 + 11.4e9 + 0.25e9 + 0.5e9,
    bytes_per_token: 5120.0 * 2.0 * 12.0,
    guidance_branches: 2,
    downsample: 16,
    extra_latent_frames: 0,
    decode_bytes_per_pixel: 4.0 * 1024.0,
    clip_bytes_per_pixel_frame: 0.0,
    margin: 0.10,
    weights_bytes: 14.0e9 * 2.0 + 11.4e9 + 0.25e9,
    seconds_per_token_step: 4.0e-3,
};

#[cfg(test)]
mod tests {
    use super::*;

    const GB: f64 = 1e9;
    const MIB: f64 = (1u64 << 20) as f64;

    fn shape(width: u32, height: u32, frames: u64) -> SegmentShape {
        SegmentShape {
            width,
            height,
            frames,
            tiled_decode: false,
        }
    }

    #[test]
    fn the_wan_coefficients_land_on_their_published_calibration_points() {
        let small = WAN_2_1_1_3B_MEMORY.estimate_bytes(4, &shape(832, 480, 81)) as f64 / GB;
        assert!(
            (small - 8.2).abs() / 8.2 < 0.02,
            "Wan 1.3B 480p: {small:.2} GB"
        );
        let large = WAN_2_1_14B_MEMORY.estimate_bytes(4, &shape(1280, 720, 81)) as f64 / GB;
        assert!(
            (large - 69.0).abs() / 69.0 < 0.02,
            "Wan 14B 720p: {large:.2} GB"
        );
    }

    #[test]
    fn the_tiny_coefficients_cover_its_measured_peaks_within_two_times() {
        for (width, height, frames, measured_mib) in [
            (848, 480, 241, 35.0),
            (1920, 1080, 241, 173.0),
            (1920, 1080, 481, 276.0),
        ] {
            let estimate =
                REELFARM_TINY_MEMORY.estimate_bytes(4, &shape(width, height, frames)) as f64 / MIB;
            assert!(
                estimate >= measured_mib && estimate <= 2.0 * measured_mib,
                "{width}x{height}x{frames}: estimate {estimate:.0} MiB, measured {measured_mib} MiB"
            );
        }
    }

    #[test]
    fn more_pixels_frames_or_an_untiled_decode_need_more_memory() {
        let model = WAN_2_1_1_3B_MEMORY;
        let base = model.estimate_bytes(4, &shape(832, 480, 81));
        assert!(model.estimate_bytes(4, &shape(1280, 720, 81)) > base);
        assert!(model.estimate_bytes(4, &shape(832, 480, 161)) > base);
        let tiled = SegmentShape {
            tiled_decode: true,
            ..shape(1920, 1080, 81)
        };
        assert!(model.estimate_bytes(4, &tiled) < model.estimate_bytes(4, &shape(1920, 1080, 81)));
        // A 1080p 1.3B final needs more than an L4's 24 GB, tiled decode brings it under.
        assert!(model.estimate_bytes(4, &shape(1920, 1080, 81)) as f64 > 24.0 * GB * 0.95);
        assert!((model.estimate_bytes(4, &tiled) as f64) < 24.0 * GB);
    }

    #[test]
    fn loads_and_work_follow_size() {
        assert!(REELFARM_TINY_MEMORY.load_seconds() < 0.1);
        assert!(WAN_2_1_1_3B_MEMORY.load_seconds() < WAN_2_1_14B_MEMORY.load_seconds());
        let draft = WAN_2_1_1_3B_MEMORY.work_seconds(4, &shape(832, 480, 81), 1);
        assert!((draft - 12.0).abs() < 1.0, "{draft} s per step");
        assert!(WAN_2_1_14B_MEMORY.work_seconds(4, &shape(1280, 720, 81), 1) > 10.0 * draft);
    }

    #[test]
    fn bad_coefficients_are_named() {
        let mut model = REELFARM_TINY_MEMORY;
        model.margin = f64::NAN;
        assert_eq!(model.validate().unwrap_err().0, "margin");
        let mut model = REELFARM_TINY_MEMORY;
        model.bytes_per_token = -1.0;
        assert_eq!(model.validate().unwrap_err().0, "bytes_per_token");
        let mut model = REELFARM_TINY_MEMORY;
        model.guidance_branches = 3;
        assert_eq!(model.validate().unwrap_err().0, "guidance_branches");
        assert!(REELFARM_TINY_MEMORY.validate().is_ok());
    }
}
