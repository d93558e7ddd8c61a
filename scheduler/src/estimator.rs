//! How much GPU memory a segment needs, before it runs: a per-model formula calibrated on
//! published figures, corrected at run time by the peaks workers measure (pure, no I/O).
//!
//! ```text
//! peak = (weights + text_encoder_if_resident + vae
//!         + tokens × hidden × 2 bytes × ACTIVATION_COPIES × cfg_batch
//!         + decode_pixels_per_chunk × DECODER_BYTES_PER_PIXEL / decode_tiles
//!         + runtime) × (1 + SAFETY_MARGIN)
//! tokens = latent_frames × (height / spatial_stride / patch) × (width / spatial_stride / patch)
//! latent_frames = (frames − 1) / temporal_stride + 1
//! ```
//!
//! The two shared constants were solved from the two published calibration points (and are
//! rounded): Wan 2.1 1.3B at 832×480, 81 frames, text encoder offloaded ≈ 8.2 GB, and Wan 2.1
//! 14B at 1280×720, 81 frames, everything on one H100 ≈ 69 GB. The formula lands within 1 %
//! of both (tested). reelfarm-tiny's profile covers the model's own estimate (tested against
//! `common::models`). Everything else — other resolutions, frame counts, kernels — is what the
//! learned `Corrections` are for: workers report each segment's measured peak, and the
//! estimate converges to it.

use std::collections::BTreeMap;

/// Activation bytes per token and hidden unit, in copies of a bf16 value (attention, MLP
/// intermediates and the residual stream alive at the peak), for one CFG branch.
const ACTIVATION_COPIES: f64 = 12.0;
/// Decoder activation bytes per output pixel of one decoded chunk (4 frames).
const DECODER_BYTES_PER_PIXEL: f64 = 1024.0;
const DECODE_CHUNK_FRAMES: f64 = 4.0;
/// Tiles a low-memory (tiled) decode splits each frame into.
pub const DECODE_TILES: f64 = 4.0;
/// CUDA context, cuBLAS workspaces, allocator slack.
const RUNTIME_BYTES: f64 = 0.5e9;
/// Reserved on top of every estimate.
pub const SAFETY_MARGIN: f64 = 0.10;

/// What the formula needs to know about a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryProfile {
    pub model: &'static str,
    pub parameters: f64,
    pub dtype_bytes: f64,
    /// Text encoder bytes when it stays on the GPU (0 when offloaded to the host).
    pub text_encoder_bytes: f64,
    pub vae_bytes: f64,
    pub hidden: f64,
    pub spatial_stride: u32,
    pub patch: u32,
    pub temporal_stride: u32,
    /// Conditional and unconditional branches batched together.
    pub cfg_batched: bool,
}

pub const WAN_1_3B: MemoryProfile = MemoryProfile {
    model: "wan-2.1-1.3b",
    parameters: 1.3e9,
    dtype_bytes: 2.0,
    text_encoder_bytes: 0.0,
    vae_bytes: 0.25e9,
    hidden: 1536.0,
    spatial_stride: 8,
    patch: 2,
    temporal_stride: 4,
    cfg_batched: true,
};

pub const WAN_2_2_5B: MemoryProfile = MemoryProfile {
    model: "wan-2.2-5b",
    parameters: 5.0e9,
    dtype_bytes: 2.0,
    text_encoder_bytes: 0.0,
    vae_bytes: 0.7e9,
    hidden: 3072.0,
    spatial_stride: 16,
    patch: 2,
    temporal_stride: 4,
    cfg_batched: true,
};

pub const WAN_14B: MemoryProfile = MemoryProfile {
    model: "wan-2.1-14b",
    parameters: 14.0e9,
    dtype_bytes: 2.0,
    // umT5-XXL in bf16, kept on the GPU.
    text_encoder_bytes: 11.4e9,
    vae_bytes: 0.25e9,
    hidden: 5120.0,
    spatial_stride: 8,
    patch: 2,
    temporal_stride: 4,
    cfg_batched: true,
};

const CATALOG: [MemoryProfile; 3] = [WAN_1_3B, WAN_2_2_5B, WAN_14B];

pub fn profile(model: &str) -> Option<&'static MemoryProfile> {
    CATALOG.iter().find(|profile| profile.model == model)
}

/// One segment's shape, as the estimate sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentShape {
    pub width: u32,
    pub height: u32,
    pub frames: u64,
    /// Decode in tiles (the low-memory mode of the OOM ladder).
    pub tiled_decode: bool,
}

impl MemoryProfile {
    pub fn tokens(&self, shape: &SegmentShape) -> f64 {
        let step = f64::from(self.spatial_stride * self.patch);
        let latent_frames =
            (shape.frames.saturating_sub(1) / u64::from(self.temporal_stride) + 1) as f64;
        latent_frames
            * (f64::from(shape.height) / step).ceil()
            * (f64::from(shape.width) / step).ceil()
    }

    /// Peak bytes of one segment, margin included.
    pub fn estimate_bytes(&self, shape: &SegmentShape) -> u64 {
        let weights = self.parameters * self.dtype_bytes + self.text_encoder_bytes + self.vae_bytes;
        let cfg = if self.cfg_batched { 2.0 } else { 1.0 };
        let activations = self.tokens(shape) * self.hidden * 2.0 * ACTIVATION_COPIES * cfg;
        let tiles = if shape.tiled_decode {
            DECODE_TILES
        } else {
            1.0
        };
        let decoder = f64::from(shape.width)
            * f64::from(shape.height)
            * DECODE_CHUNK_FRAMES
            * DECODER_BYTES_PER_PIXEL
            / tiles;
        ((weights + activations + decoder + RUNTIME_BYTES) * (1.0 + SAFETY_MARGIN)) as u64
    }
}

/// Estimates are learned per model and size class (resolution bucket, frame bucket, decode mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CorrectionKey {
    pub model_index: u32,
    pub short_side: u32,
    pub frames_bucket: u64,
    pub tiled_decode: bool,
}

impl CorrectionKey {
    pub fn new(model_index: u32, shape: &SegmentShape) -> CorrectionKey {
        CorrectionKey {
            model_index,
            short_side: shape.width.min(shape.height),
            // Frame counts within a factor of two behave alike.
            frames_bucket: shape.frames.max(1).ilog2() as u64,
            tiled_decode: shape.tiled_decode,
        }
    }
}

/// A learned ratio of measured peak to formula estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Correction {
    pub ratio: f64,
    pub observations: u32,
}

/// Before this many peaks of a key are known, estimates carry an extra margin.
pub const TRUSTED_OBSERVATIONS: u32 = 3;
/// Extra margin on estimates no measurement has confirmed yet.
pub const COLD_MARGIN: f64 = 0.25;
/// After an OOM, the reservation grows to this multiple of the one that failed.
pub const OOM_GROWTH: f64 = 1.25;

/// Per-key corrections learned from workers' measured peaks and from OOMs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Corrections {
    learned: BTreeMap<CorrectionKey, Correction>,
}

impl Corrections {
    pub fn get(&self, key: &CorrectionKey) -> Option<Correction> {
        self.learned.get(key).copied()
    }

    /// The bytes to reserve: the formula times the learned ratio, with a cold-start margin
    /// until the key has been measured a few times.
    pub fn reserve_bytes(&self, key: &CorrectionKey, formula_bytes: u64) -> u64 {
        let (trusted, cold_extra) = self.reservation(key, formula_bytes);
        trusted + cold_extra
    }

    /// The reservation in two parts, as placement takes them: the formula times the learned
    /// ratio, and the extra headroom an unconfirmed key gets on top.
    pub fn reservation(&self, key: &CorrectionKey, formula_bytes: u64) -> (u64, u64) {
        let (ratio, cold) = match self.get(key) {
            Some(c) => (c.ratio, c.observations < TRUSTED_OBSERVATIONS),
            None => (1.0, true),
        };
        let trusted = (formula_bytes as f64 * ratio) as u64;
        let cold_extra = if cold {
            (trusted as f64 * COLD_MARGIN) as u64
        } else {
            0
        };
        (trusted, cold_extra)
    }

    /// A measured peak (margin excluded from nothing: `formula_bytes` is the formula's
    /// estimate, margin included, so a ratio of 1 means "the formula was right").
    /// Tracks the maximum recently seen, decaying slowly, so one small peak never shrinks
    /// the reservation below a large one just measured.
    pub fn observe(&mut self, key: CorrectionKey, formula_bytes: u64, measured_peak_bytes: u64) {
        let measured = measured_peak_bytes as f64 / formula_bytes.max(1) as f64;
        let entry = self.learned.entry(key).or_insert(Correction {
            ratio: measured,
            observations: 0,
        });
        entry.ratio = if measured >= entry.ratio {
            measured
        } else {
            // Shrink towards smaller measurements by at most a tenth of the gap each time.
            entry.ratio - 0.1 * (entry.ratio - measured)
        };
        entry.observations = entry.observations.saturating_add(1);
    }

    /// An OOM at `reserved_bytes`: the next reservation for this key is at least
    /// `OOM_GROWTH` times that, and the key counts as unconfirmed again.
    pub fn observe_oom(&mut self, key: CorrectionKey, formula_bytes: u64, reserved_bytes: u64) {
        let needed = reserved_bytes as f64 * OOM_GROWTH / formula_bytes.max(1) as f64;
        let entry = self.learned.entry(key).or_insert(Correction {
            ratio: needed,
            observations: 0,
        });
        entry.ratio = entry.ratio.max(needed);
        entry.observations = 0;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const GB: f64 = 1e9;

    fn shape(width: u32, height: u32, frames: u64) -> SegmentShape {
        SegmentShape {
            width,
            height,
            frames,
            tiled_decode: false,
        }
    }

    #[test]
    fn the_formula_lands_on_its_published_calibration_points() {
        let small = WAN_1_3B.estimate_bytes(&shape(832, 480, 81)) as f64 / GB;
        assert!(
            (small - 8.2).abs() / 8.2 < 0.02,
            "Wan 1.3B 480p: {small:.2} GB"
        );
        let large = WAN_14B.estimate_bytes(&shape(1280, 720, 81)) as f64 / GB;
        assert!(
            (large - 69.0).abs() / 69.0 < 0.02,
            "Wan 14B 720p: {large:.2} GB"
        );
    }

    #[test]
    fn more_pixels_frames_or_an_untiled_decode_need_more_memory() {
        let base = WAN_1_3B.estimate_bytes(&shape(832, 480, 81));
        assert!(WAN_1_3B.estimate_bytes(&shape(1280, 720, 81)) > base);
        assert!(WAN_1_3B.estimate_bytes(&shape(832, 480, 161)) > base);
        let tiled = SegmentShape {
            tiled_decode: true,
            ..shape(1920, 1080, 81)
        };
        assert!(WAN_1_3B.estimate_bytes(&tiled) < WAN_1_3B.estimate_bytes(&shape(1920, 1080, 81)));
        // A 1080p 1.3B final needs more than an L4's 24 GB, tiled decode brings it under.
        assert!(WAN_1_3B.estimate_bytes(&shape(1920, 1080, 81)) as f64 > 24.0 * GB * 0.95);
    }

    #[test]
    fn an_oom_raises_the_next_reservation_and_resets_trust() {
        let key = CorrectionKey::new(0, &shape(832, 480, 81));
        let mut corrections = Corrections::default();
        for _ in 0..5 {
            corrections.observe(key, 1000, 1000);
        }
        assert_eq!(corrections.reserve_bytes(&key, 1000), 1000);
        corrections.observe_oom(key, 1000, 1000);
        assert_eq!(
            corrections.reserve_bytes(&key, 1000),
            (1000.0 * 1.25 * 1.25) as u64
        );
    }

    proptest! {
        /// Whatever the formula says, repeated measurements of the same true peak bring the
        /// reservation to that peak (the cold margin gone, the ratio learned).
        #[test]
        fn estimates_converge_to_measured_peaks(
            formula in 1_000_000u64..100_000_000_000,
            true_ratio in 0.5f64..2.0,
            noise in prop::collection::vec(0.97f64..1.0, 40..60),
        ) {
            let key = CorrectionKey::new(1, &shape(1280, 720, 121));
            let mut corrections = Corrections::default();
            for wobble in &noise {
                corrections.observe(key, formula, (formula as f64 * true_ratio * wobble) as u64);
            }
            let reserved = corrections.reserve_bytes(&key, formula) as f64;
            let truth = formula as f64 * true_ratio;
            prop_assert!(reserved >= truth * 0.97 && reserved <= truth * 1.01,
                "reserved {reserved} for a true peak of {truth}");
        }
    }
}
