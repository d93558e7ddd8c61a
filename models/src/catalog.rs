//! The model catalog: one entry per model with everything the farm needs to know without
//! loading it — backend, native rate, window, temporal stride, default steps and guidance,
//! the coefficients of the one memory estimator, and where the weights live. Built-in entries
//! plus a TOML file given by configuration (`--models FILE`) that adds models.
//!
//! ```toml
//! # A model of the built-in kind with other weights: every setting not given is the base's.
//! [[model]]
//! id = "coastline-tiny"
//! base = "reelfarm-tiny"
//! weights = "/models/coastline-tiny.safetensors"
//! draft_steps = 12
//!
//! # A built-in re-declared (once, without `base`): its settings under these, same backend.
//! [[model]]
//! id = "wan2.1-t2v-1.3b"
//! weights = "/models/Wan2.1-T2V-1.3B-Diffusers"
//! ```

use std::collections::BTreeMap;
use std::path::Path;

mod file;
pub mod hosted;

pub(crate) use file::{WAN_TEMPORAL_STRIDE, whole};
pub use hosted::{HostedAuth, HostedSpec, KeySource};

use crate::memory::{
    MemoryModel, REELFARM_TINY_MEMORY, SegmentShape, WAN_2_1_1_3B_MEMORY, WAN_2_1_14B_MEMORY,
    WAN_2_2_5B_MEMORY,
};

/// The built-in demo model every worker can run.
pub const REELFARM_TINY: &str = "reelfarm-tiny";

/// How a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Backend {
    /// reelfarm-tiny's candle runtime, on CPU or GPU workers.
    Tiny,
    /// Wan 2.1 text-to-video (reelfarm-wan, candle) from a diffusers checkpoint directory.
    Wan,
    /// A published model the placement simulator renders; no worker serves it.
    Simulated,
    /// A hosted model behind the OpenAI videos API (`hosted`): a worker started with
    /// `--hosted` calls it.
    OpenAiVideos,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Tiny => "tiny",
            Backend::Wan => "wan",
            Backend::Simulated => "simulated",
            Backend::OpenAiVideos => "openai-videos",
        }
    }
}

/// Everything about one model that planning, placement and workers need.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    pub id: String,
    pub backend: Backend,
    /// The frame rate the model renders at; `None`: any rate (the sequence's).
    pub native_fps: Option<u32>,
    /// Longest clip one inference renders. A longer shot splits into the fewest equal
    /// windows, so each is longer than half of this.
    pub window_seconds: f64,
    /// Frames per latent frame: rendered frame counts are `stride * n + 1`.
    pub temporal_stride: u32,
    pub draft_steps: u32,
    pub final_steps: u32,
    pub guidance: f32,
    pub memory: MemoryModel,
    /// Where the weights live (a local file or directory); `None`: the backend's own
    /// (reelfarm-tiny's are built into the binary).
    pub weights: Option<String>,
    /// What names this exact set of weights (a checksum or a revision): segment cache keys
    /// include it, so new weights never reuse a segment the old ones rendered. Without it
    /// the `weights` location stands for them (`weights_identity`).
    pub weights_digest: Option<String>,
    /// The API, limits and price of a hosted model (`Backend::OpenAiVideos` only).
    pub hosted: Option<HostedSpec>,
}

impl ModelEntry {
    /// What the segment cache keys on for this model's weights: the digest when known, else
    /// their location, else the fact that none is configured.
    pub fn weights_identity(&self) -> String {
        match (&self.weights_digest, &self.weights) {
            (Some(digest), _) => format!("digest {digest}"),
            (None, Some(location)) => format!("location {location}"),
            (None, None) => "unversioned".to_string(),
        }
    }

    /// Smallest `stride * n + 1` frame count that holds `frames`.
    pub fn aligned_render_frames(&self, frames: u64) -> u64 {
        let stride = u64::from(self.temporal_stride.max(1));
        if frames <= 1 {
            return 1;
        }
        (frames - 1).div_ceil(stride) * stride + 1
    }

    /// Frames the model renders for `frames` at the sequence's `fps`: its native-rate count
    /// when it has one (`retime`), else `frames`.
    pub fn model_frames(&self, frames: u64, fps: u32) -> u64 {
        match self.native_fps {
            Some(native) if native != fps && fps > 0 => {
                let frames = u32::try_from(frames).unwrap_or(u32::MAX);
                u64::from(crate::retime::native_frames(
                    frames,
                    fps,
                    native,
                    self.temporal_stride,
                ))
            }
            _ => frames,
        }
    }

    /// Peak bytes of one segment: the one estimator (`memory`), margin included.
    pub fn memory_estimate_bytes(&self, shape: &SegmentShape) -> u64 {
        self.memory.estimate_bytes(self.temporal_stride, shape)
    }

    /// Compute seconds of one segment on a speed-1.0 GPU.
    pub fn work_seconds(&self, shape: &SegmentShape, steps: u32) -> f64 {
        self.memory.work_seconds(self.temporal_stride, shape, steps)
    }

    /// Seconds to make the model resident on a device.
    pub fn load_seconds(&self) -> f64 {
        self.memory.load_seconds()
    }
}

/// reelfarm-tiny as built in: 20 s windows of any frame rate, 8 draft and 24 final steps.
pub fn reelfarm_tiny() -> ModelEntry {
    ModelEntry {
        id: REELFARM_TINY.to_string(),
        backend: Backend::Tiny,
        native_fps: None,
        window_seconds: 20.0,
        temporal_stride: 4,
        draft_steps: 8,
        final_steps: 24,
        guidance: 2.0,
        memory: REELFARM_TINY_MEMORY,
        weights: None,
        weights_digest: Some(format!("sha256:{}", env!("REELFARM_TINY_WEIGHTS_SHA256"))),
        hosted: None,
    }
}

/// Catalog id of Wan 2.1 T2V 1.3B.
pub const WAN_2_1_T2V_1_3B: &str = "wan2.1-t2v-1.3b";

/// Wan 2.1 T2V 1.3B as the reference runs it: 16 fps, 81-frame (5 s) windows, 50 final steps
/// at guidance 5. Draft: 20 steps, 2.5× less work than a final; the order-2 UniPC sampler
/// keeps composition and motion there, which is what a draft is looked at for. No weights
/// until configured (a catalog file re-declaring this id with `weights = "DIR"`): workers
/// without them do not serve it.
pub fn wan_2_1_t2v_1_3b() -> ModelEntry {
    ModelEntry {
        id: WAN_2_1_T2V_1_3B.to_string(),
        backend: Backend::Wan,
        native_fps: Some(16),
        window_seconds: 5.0,
        temporal_stride: WAN_TEMPORAL_STRIDE,
        draft_steps: 20,
        final_steps: 50,
        guidance: 5.0,
        memory: WAN_2_1_1_3B_MEMORY,
        weights: None,
        weights_digest: None,
        hosted: None,
    }
}

/// The published models the placement simulator's pool renders (`Backend::Simulated`): Wan
/// 2.1 1.3B and 14B, Wan 2.2 5B, in 5 s windows (81 frames at 16 fps), 20 draft and 50 final
/// steps (the reference's), guidance 5.
pub fn simulated_models() -> Vec<ModelEntry> {
    let wan = |id: &str, memory: MemoryModel| ModelEntry {
        id: id.to_string(),
        backend: Backend::Simulated,
        native_fps: None,
        window_seconds: 5.0,
        temporal_stride: 4,
        draft_steps: 20,
        final_steps: 50,
        guidance: 5.0,
        memory,
        weights: None,
        weights_digest: None,
        hosted: None,
    };
    vec![
        wan("sim-wan2.1-1.3b", WAN_2_1_1_3B_MEMORY),
        wan("sim-wan2.2-5b", WAN_2_2_5B_MEMORY),
        wan("sim-wan2.1-14b", WAN_2_1_14B_MEMORY),
    ]
}

/// One problem in a catalog file, naming the entry and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {path}: {reason}")]
pub struct CatalogError {
    pub origin: String,
    pub path: String,
    pub reason: String,
}

/// A model id the catalog does not hold, with the ones it does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown model {id:?}; available: {}", known.join(", "))]
pub struct UnknownModel {
    pub id: String,
    pub known: Vec<String>,
}

/// The models a farm knows, by id.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    entries: BTreeMap<String, ModelEntry>,
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog::builtin()
    }
}

impl Catalog {
    /// The built-in entries: reelfarm-tiny and Wan 2.1 T2V 1.3B.
    pub fn builtin() -> Catalog {
        Catalog::from_entries([reelfarm_tiny(), wan_2_1_t2v_1_3b()])
    }

    pub fn from_entries(entries: impl IntoIterator<Item = ModelEntry>) -> Catalog {
        Catalog {
            entries: entries
                .into_iter()
                .map(|entry| (entry.id.clone(), entry))
                .collect(),
        }
    }

    /// The built-in entries plus those of a catalog file.
    pub fn builtin_with_file(path: &Path) -> Result<Catalog, CatalogError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| CatalogError {
            origin: origin.clone(),
            path: "file".into(),
            reason: format!("cannot read: {error}"),
        })?;
        let mut catalog = Catalog::builtin();
        catalog.add_toml(&text, &origin)?;
        Ok(catalog)
    }

    pub fn get(&self, id: &str) -> Option<&ModelEntry> {
        self.entries.get(id)
    }

    /// The entry for `id`, or an error listing the known ids.
    pub fn require(&self, id: &str) -> Result<&ModelEntry, UnknownModel> {
        self.get(id).ok_or_else(|| UnknownModel {
            id: id.to_string(),
            known: self.ids(),
        })
    }

    /// Known ids, sorted.
    pub fn ids(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    pub fn entries(&self) -> impl Iterator<Item = &ModelEntry> {
        self.entries.values()
    }
}

#[cfg(test)]
#[path = "catalog_tests.rs"]
mod tests;
