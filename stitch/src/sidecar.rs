//! What a segment leaves beside its video for the stitch: its size, timing and the colours it
//! was sampled to have, so the stitch grades without decoding anything twice.

use serde::{Deserialize, Serialize};

use crate::color::SegmentSamples;

/// Written beside every segment video as `<prefix>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sidecar {
    pub segment_id: String,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Frames in the file: the timeline frames, preceded by the dissolve handle for a crossfade.
    pub frames: u64,
    pub lead_frames_in_file: u64,
    pub timeline_frames: u64,
    pub seed: u64,
    pub steps: u32,
    pub model_seconds: f64,
    pub encode_seconds: f64,
    /// Lab colours of the first frame in the file, of the last timeline frame, and sampled
    /// across the timeline frames (the segment's look): what the stitcher grades with.
    #[serde(flatten)]
    pub colors: SegmentSamples,
}
