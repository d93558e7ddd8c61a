//! The model catalog: what the planner and placement need to know about a model without
//! loading it (window length, temporal stride, step counts, memory estimate).

/// Static facts about one text-to-video model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelSpec {
    pub id: &'static str,
    /// Longest clip one inference renders.
    pub window_seconds: f64,
    /// Shortest window a split shot may use (a shot shorter than this stays whole).
    pub min_window_seconds: f64,
    /// Frames per latent frame: rendered frame counts are `stride * n + 1`.
    pub temporal_stride: u32,
    pub draft_steps: u32,
    pub final_steps: u32,
    pub guidance: f32,
}

pub const REELFARM_TINY: ModelSpec = ModelSpec {
    id: "reelfarm-tiny",
    window_seconds: 20.0,
    min_window_seconds: 10.0,
    temporal_stride: 4,
    draft_steps: 8,
    final_steps: 24,
    guidance: 2.0,
};

const CATALOG: [ModelSpec; 1] = [REELFARM_TINY];

pub const DEFAULT_MODEL: &str = REELFARM_TINY.id;

pub fn find_model(id: &str) -> Option<&'static ModelSpec> {
    CATALOG.iter().find(|model| model.id == id)
}

pub fn known_model_ids() -> Vec<&'static str> {
    CATALOG.iter().map(|model| model.id).collect()
}

impl ModelSpec {
    /// Smallest `stride * n + 1` frame count that holds `frames`.
    pub fn aligned_render_frames(&self, frames: u64) -> u64 {
        let stride = u64::from(self.temporal_stride);
        if frames <= 1 {
            return 1;
        }
        (frames - 1).div_ceil(stride) * stride + 1
    }

    /// Peak memory of one segment, for placement without loading the model. Conservative: a
    /// worker test checks it covers the model's own estimate (`ModelRuntime::memory_estimate_bytes`);
    /// learning from measured peaks comes with VRAM-aware placement.
    pub fn memory_estimate_bytes(&self, width: u32, height: u32, render_frames: u64) -> u64 {
        tiny_memory_estimate_bytes(width, height, render_frames)
    }
}

/// reelfarm-tiny: weights + the latent video with its CFG batch and hidden activations +
/// the low-resolution decoded clip + one full-size frame + a fixed runtime margin.
pub fn tiny_memory_estimate_bytes(width: u32, height: u32, render_frames: u64) -> u64 {
    const WEIGHTS: u64 = 8 << 20;
    const RUNTIME_MARGIN: u64 = 96 << 20;
    const HIDDEN_CHANNELS: u64 = 48;
    const ACTIVATION_COPIES: u64 = 6;
    let latent_frames = (render_frames.saturating_sub(1)).div_ceil(4) + 1;
    let latent_positions =
        latent_frames * u64::from(width.div_ceil(16)) * u64::from(height.div_ceil(16));
    let activations = latent_positions * HIDDEN_CHANNELS * 4 * 2 * ACTIVATION_COPIES;
    let decoded_low_res =
        render_frames * u64::from(width.div_ceil(4)) * u64::from(height.div_ceil(4)) * 3 * 4;
    let full_frames = u64::from(width) * u64::from(height) * 3 * 4;
    WEIGHTS + activations + decoded_low_res + full_frames + RUNTIME_MARGIN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_render_frames_is_stride_n_plus_one_and_minimal() {
        for frames in 1..200u64 {
            let aligned = REELFARM_TINY.aligned_render_frames(frames);
            assert_eq!(aligned % 4, 1, "{frames} -> {aligned}");
            assert!(
                aligned >= frames && aligned - frames < 4,
                "{frames} -> {aligned}"
            );
        }
    }

    #[test]
    fn unknown_model_is_not_found() {
        assert!(find_model("wan-2.1").is_none());
        assert_eq!(find_model("reelfarm-tiny"), Some(&REELFARM_TINY));
    }
}
