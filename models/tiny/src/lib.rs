//! `reelfarm-tiny`: the built-in text-to-video model, small enough to render a 10 s 480p draft in about two seconds on two CPU cores, trained by this project on procedural scenes (`crate::scenes`, `train.rs`) so that it draws the time of day, setting, weather and camera move a prompt asks for. A demo, not a production model: it knows about 200 words, draws at a 1/16 internal resolution and upsamples, and moves a rigid virtual camera over a still plate.
//!
//! Shape of the model (default `TinyConfig`, ~1.45 M parameters, ~5.8 MB of f32):
//! - Tokenizer: lowercase, split on non-alphanumerics, drop words outside the training
//!   vocabulary (`scenes::prompts::vocabulary`), FNV-1a hash of each word into buckets
//!   1..8192 (0 = pad, the only token of an empty prompt), at most 64 tokens.
//! - Text encoder: 128-d token + position embeddings, 2 pre-norm transformer layers (4 heads,
//!   MLP ×2, GELU), final LayerNorm, mean-pool (each prompt is encoded alone, so that is the
//!   masked mean) → one 128-d vector.
//! - Latent space (`vae.rs`, fixed, not trained): 4 channels, spatial stride ~16 (sides
//!   rounded up to whole denoiser patches: 848×480 → 54×30, 1920×1080 → 120×68), temporal
//!   stride 4 (L = ceil((frames−1)/4)+1 latent frames). Encoder = area pooling + a fixed
//!   orthonormal RGB→latent map; decoder = its exact pseudo-inverse + a zero-initialised conv
//!   refinement at latent resolution, then linear interpolation in time and bilinear upsampling.
//! - Denoiser (`denoiser.rs`): 2×2×2 (time × height × width) latent patches → tokens of 32
//!   channels, 4 residual blocks of [3×3 spatial conv → FiLM scale/shift → ReLU → k=3
//!   temporal conv → FiLM gate], FiLM from SiLU(linear([sinusoidal t; text])). The head
//!   predicts the clean latent x0; the sampler turns it into the velocity (x_t − x0)/t.
//! - Camera (`camera.rs`): a linear head on the pooled prompt vector predicts a camera path
//!   (pan, tilt, zoom per second). The denoiser paints a plate that holds still, grown by the
//!   distance the camera travels; each output frame is upsampled from the window the path
//!   puts over the plate at that moment. No parallax: a demo's trick, said in the README.
//! - Sampler (`sampler.rs`): rectified flow x_t = (1−t)·x0 + t·noise, Euler from t = 1 to 0
//!   on a shifted schedule (shift 3), from noise 60 % shared by all latent frames (so the
//!   plate holds still; training noises its clips the same way), CFG over the conditional and
//!   unconditional (negative or empty prompt) predictions, first-frame conditioning by
//!   replacing the plate cells under the first window in latent frame 0 with the noised
//!   encoding of the picture at every step (and exactly it at the end).
//! - Weights: `TinyModel::shipped()` (built into the binary from `models/tiny/weights/`), made by
//!   `train::train` with its defaults; `eval.rs` measures whether they follow held-out prompts.
//!
//! Speed on the 2-core dev machine is the design constraint (the `#[ignore]`d benchmarks in
//! `tests.rs`, `reelfarm bench tiny`): every convolution is phrased as matmuls, the latent
//! stays at stride 16 while the denoiser's tokens cover 32×32 pixels and 8 frames, and all
//! heavy work runs in small chunks shared by our own threads (`map_chunks`). Training uses a
//! plain batched twin of the same forward pass (`train.rs`), held equal to it by a test.

mod camera;
mod clip;
mod denoiser;
#[cfg(feature = "train")]
pub mod eval;
mod layout;
mod sampler;
#[cfg(feature = "train")]
pub mod scenes;
pub mod text;
#[cfg(feature = "train")]
pub mod train;
mod vae;
mod weights;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::atomic::AtomicBool;

pub use self::camera::CameraPath;
use self::camera::{CameraHead, CameraRig};
use self::denoiser::Denoiser;
use self::layout::TokenGrid;
use self::sampler::SamplingPlan;
use self::text::{TextEncoder, Tokenizer};
use self::vae::{LatentGeometry, Vae};
pub use self::weights::TinyWeights;
use reelfarm_models::{
    Checkpoints, GenerateRequest, GeneratedClip, MemoryModel, ModelError, ModelRuntime,
    SegmentShape,
};

/// Where the shipped weights live in the source tree (`reelfarm train-tiny` rewrites them).
pub const SHIPPED_WEIGHTS_NAME: &str = "models/tiny/weights/reelfarm-tiny.safetensors";
const SHIPPED_WEIGHTS: &[u8] = include_bytes!("../weights/reelfarm-tiny.safetensors");

#[derive(Clone, Debug, PartialEq)]
pub struct TinyConfig {
    pub vocab_size: u32,
    pub max_tokens: usize,
    pub text_dim: usize,
    pub text_layers: usize,
    pub text_heads: usize,
    pub text_mlp_ratio: usize,
    /// A power of two ≥ 4: the fixed colour map uses Hadamard columns.
    pub latent_channels: usize,
    pub spatial_stride: usize,
    pub temporal_stride: usize,
    /// Latent cells per denoiser token along each side.
    pub patch_size: usize,
    /// Latent frames per denoiser token.
    pub temporal_patch: usize,
    pub hidden_channels: usize,
    pub blocks: usize,
    pub time_embedding_dim: usize,
    pub condition_dim: usize,
    pub flow_shift: f32,
}

impl Default for TinyConfig {
    fn default() -> Self {
        Self {
            vocab_size: 8192,
            max_tokens: 64,
            text_dim: 128,
            text_layers: 2,
            text_heads: 4,
            text_mlp_ratio: 2,
            latent_channels: 4,
            spatial_stride: 16,
            temporal_stride: 4,
            patch_size: 2,
            temporal_patch: 2,
            hidden_channels: 32,
            blocks: 4,
            time_embedding_dim: 64,
            condition_dim: 128,
            flow_shift: 3.0,
        }
    }
}

impl TinyConfig {
    pub fn validate(&self) -> Result<(), ModelError> {
        let problem = if self.latent_channels < 4 || !self.latent_channels.is_power_of_two() {
            Some("latent_channels must be a power of two >= 4")
        } else if self.text_heads == 0 || !self.text_dim.is_multiple_of(self.text_heads) {
            Some("text_dim must be a multiple of text_heads")
        } else if self.time_embedding_dim < 2 || !self.time_embedding_dim.is_multiple_of(2) {
            Some("time_embedding_dim must be even")
        } else if self.vocab_size < 2 || self.max_tokens == 0 {
            Some("the vocabulary needs a pad token and at least one word bucket")
        } else if [
            self.text_dim,
            self.text_mlp_ratio,
            self.spatial_stride,
            self.temporal_stride,
            self.patch_size,
            self.temporal_patch,
        ]
        .iter()
        .chain(&[self.hidden_channels, self.blocks, self.condition_dim])
        .any(|&size| size == 0)
        {
            Some("sizes must be positive")
        } else if !self.flow_shift.is_finite() || self.flow_shift <= 0.0 {
            Some("flow_shift must be positive")
        } else {
            None
        };
        problem.map_or(Ok(()), |message| {
            Err(ModelError::InvalidWeights(format!("bad config: {message}")))
        })
    }
}

pub struct TinyModel {
    /// The catalog id it serves (`reelfarm-tiny`, or a catalog file's entry).
    id: String,
    config: TinyConfig,
    weights: TinyWeights,
    tokenizer: Tokenizer,
    text: TextEncoder,
    camera: CameraHead,
    denoiser: Denoiser,
    vae: Vae,
    memory_limit_bytes: Option<u64>,
    /// The catalog's estimator for this model (`reelfarm_models::memory`).
    memory: MemoryModel,
}

impl TinyModel {
    pub const ID: &'static str = "reelfarm-tiny";

    /// Untrained, deterministic weights: the same seed always gives the same model.
    pub fn from_seed(seed: u64) -> Result<Self, ModelError> {
        Self::from_weights(
            TinyConfig::default(),
            TinyWeights::from_seed(&TinyConfig::default(), seed)?,
        )
    }

    /// The weights `reelfarm train-tiny` produces with its defaults, built into the binary.
    pub fn shipped() -> Result<Self, ModelError> {
        let config = TinyConfig::default();
        let weights =
            TinyWeights::from_safetensors_bytes(&config, SHIPPED_WEIGHTS, SHIPPED_WEIGHTS_NAME)?;
        Self::from_weights(config, weights)
    }

    pub fn load(path: &Path) -> Result<Self, ModelError> {
        Self::load_with_config(TinyConfig::default(), path)
    }

    pub fn load_with_config(config: TinyConfig, path: &Path) -> Result<Self, ModelError> {
        let weights = TinyWeights::load_safetensors(&config, path)?;
        Self::from_weights(config, weights)
    }

    pub fn from_weights(config: TinyConfig, weights: TinyWeights) -> Result<Self, ModelError> {
        config.validate()?;
        Ok(Self {
            id: Self::ID.to_string(),
            tokenizer: Tokenizer::new(config.vocab_size, config.max_tokens)
                .with_vocabulary(text::VOCABULARY.to_vec()),
            text: TextEncoder::new(&weights, &config)?,
            camera: CameraHead::new(&weights)?,
            denoiser: Denoiser::new(&weights, &config)?,
            vae: Vae::new(&weights)?,
            config,
            weights,
            memory_limit_bytes: None,
            memory: reelfarm_models::memory::REELFARM_TINY_MEMORY,
        })
    }

    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        self.weights.save_safetensors(path)
    }

    /// Requests whose estimate (the catalog's estimator) exceeds `limit` fail with
    /// `OutOfMemory` up front instead of being killed half-way.
    pub fn with_memory_limit(mut self, limit: Option<u64>) -> Self {
        self.memory_limit_bytes = limit;
        self
    }

    /// Serves catalog entry `id` (a tiny model with its own weights) instead of reelfarm-tiny.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Estimates with the coefficients of this model's catalog entry (a catalog file may
    /// give a tiny model of another size its own).
    pub fn with_memory_model(mut self, memory: MemoryModel) -> Self {
        self.memory = memory;
        self
    }

    /// Peak bytes `request` needs by the catalog's estimator.
    pub fn memory_estimate_bytes(&self, request: &GenerateRequest) -> u64 {
        self.memory.estimate_bytes(
            self.config.temporal_stride as u32,
            &SegmentShape {
                width: request.width,
                height: request.height,
                frames: u64::from(request.frames),
                tiled_decode: false,
            },
        )
    }

    /// The camera move the model reads from `prompt` (before a clip's length limits it).
    pub fn camera_path(&self, prompt: &str) -> Result<CameraPath, ModelError> {
        let text = self.text.encode(&self.tokenizer.tokenize(prompt))?;
        Ok(self.camera.path(&text)?)
    }

    /// The plate and window path of one request, from its pooled prompt vector.
    fn camera_rig(
        &self,
        prompt: &candle_core::Tensor,
        request: &GenerateRequest,
        geometry: &LatentGeometry,
    ) -> Result<CameraRig, ModelError> {
        let seconds = request.frames.saturating_sub(1) as f32 / request.fps.max(1) as f32;
        Ok(CameraRig::new(
            self.camera.path(prompt)?,
            seconds,
            geometry.cells(),
            self.config.patch_size,
        ))
    }

    pub fn config(&self) -> &TinyConfig {
        &self.config
    }

    pub fn weights(&self) -> &TinyWeights {
        &self.weights
    }
}

/// Latent frames sampled before and after the clip and then dropped: one token frame each
/// side. The denoiser's temporal convolutions see zeros past the ends, and the trained model's
/// first and last token frames came out washed out towards grey; with the margin those frames
/// are interior ones.
const TEMPORAL_MARGIN: usize = 2;
impl ModelRuntime for TinyModel {
    fn id(&self) -> &str {
        &self.id
    }

    fn generate_with_checkpoints(
        &self,
        request: &GenerateRequest,
        checkpoints: &mut Checkpoints,
        on_step: &mut dyn FnMut(u32, u32),
        cancel: &AtomicBool,
    ) -> Result<GeneratedClip, ModelError> {
        request.validate()?;
        if let Some(limit) = self.memory_limit_bytes {
            let needed = self.memory_estimate_bytes(request);
            if needed > limit {
                return Err(ModelError::OutOfMemory(format!(
                    "{}x{}x{} needs about {} MiB, the limit is {} MiB",
                    request.width,
                    request.height,
                    request.frames,
                    needed >> 20,
                    limit >> 20
                )));
            }
        }
        let geometry =
            LatentGeometry::new(&self.config, request.width, request.height, request.frames);
        let prompt = self
            .text
            .encode(&self.tokenizer.tokenize(&request.prompt))?;
        let rig = self.camera_rig(&prompt, request, &geometry)?;
        let (plate_width, plate_height) = rig.plate();
        let sampled_frames = geometry.latent_frames + 2 * TEMPORAL_MARGIN;
        let grid = TokenGrid::for_config(&self.config, sampled_frames, plate_height, plate_width)?;
        let first_latent = match &request.first_frame {
            Some(picture) => {
                Some(rig.place_first_frame(&self.vae.encode_picture(picture, &geometry)?)?)
            }
            None => None,
        };
        let noise_dims = [
            sampled_frames,
            self.config.latent_channels,
            plate_height,
            plate_width,
        ];
        let plan = SamplingPlan {
            denoiser: &self.denoiser,
            grid: &grid,
            positions: self
                .denoiser
                .position_rows(&grid, &rig.position_map(self.config.patch_size))?,
            prompt,
            negative: self
                .text
                .encode(&self.tokenizer.tokenize(&request.negative))?,
            guidance: request.guidance,
            steps: request.steps,
            flow_shift: self.config.flow_shift,
            noise: sampler::clip_noise(request.seed, &noise_dims)?,
            first_latent,
            first_index: TEMPORAL_MARGIN,
        };
        let latent = sampler::sample(&plan, checkpoints, on_step, cancel)?.narrow(
            0,
            TEMPORAL_MARGIN,
            geometry.latent_frames,
        )?;
        let clip = self.vae.decode(&latent, &geometry, rig, request.fps)?;
        Ok(GeneratedClip::new(
            request.width,
            request.height,
            request.frames,
            Box::new(clip),
        ))
    }
}
