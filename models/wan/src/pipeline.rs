//! Text to video with the loaded components, step for step as diffusers' `WanPipeline`: prompt embeddings, noise, the sampler with classifier-free guidance, the VAE decode — plus first-frame conditioning for windows that continue the previous one.
//!
//! # First-frame conditioning (the continuity method)
//! Wan 2.1 T2V has no image input, but its VAE is causal in time: latent frame 0 encodes output
//! frame 0 alone. A continuing window therefore encodes the previous window's handoff frame
//! with the VAE (normalised like every latent, `z_c`) and holds latent frame 0 at it through
//! sampling: before each step at noise level σᵢ, frame 0 is set to (1 − σᵢ)·z_c + σᵢ·n₀ (n₀ the
//! frame's own initial noise), the level every other frame is at, so the transformer sees a
//! consistent flow state and the later frames are denoised in agreement with the picture; after
//! the last step frame 0 is set to z_c itself. This is the replacement ("inpainting in time")
//! method; models trained for it (Wan 2.2 TI2V) instead give frame 0 timestep 0.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Tensor};

use crate::error::{Result, WanError, weights_error};
use crate::frames::video_frames;
use crate::noise::gaussian;
use crate::scheduler::{SchedulerConfig, new_sampler};
use crate::transformer::WanTransformer;
use crate::umt5::TextEncoder;
use crate::vae::{Tiling, WanVae};
use crate::weights::{Checkpoint, Component};
use reelfarm_media::frame::RgbFrame;
use reelfarm_models::runtime::ModelError;
use reelfarm_models::{Checkpoints, SamplingState, StateTensor};

/// Pixels per latent cell side times the transformer's patch: render sizes are multiples of it.
pub const SIZE_MULTIPLE: u32 = 16;

/// One clip to sample.
#[derive(Clone, Debug)]
pub struct Sampling {
    pub prompt: String,
    pub negative: String,
    pub width: u32,
    pub height: u32,
    /// `4n + 1`.
    pub frames: u32,
    pub steps: u32,
    pub guidance: f32,
    /// Initial noise `[1, z, T, h, w]` (f32, any device); `None`: drawn from `seed`.
    pub noise: Option<Tensor>,
    pub seed: u64,
    /// Output frame 0 starts from this picture, `[1, 3, 1, height, width]` in [-1, 1].
    pub first_frame: Option<Tensor>,
    /// Decode in spatial tiles (the OOM ladder's low-memory step).
    pub tiling: Option<Tiling>,
}

/// How a worker runs the model.
#[derive(Clone, Debug)]
pub struct WanOptions {
    /// Where the transformer and VAE run (and the text encoder unless `text_encoder_on_cpu`).
    pub device: Device,
    /// bf16 on CUDA, f32 on the CPU.
    pub dtype: DType,
    /// Keep umT5-XXL (11 GB in bf16) in host memory and run it there, so 24 GB cards fit.
    pub text_encoder_on_cpu: bool,
    /// Text length the prompts are padded to (the reference's 512).
    pub text_len: usize,
    /// The rate the model renders at.
    pub native_fps: u32,
}

impl WanOptions {
    /// The first CUDA device in bf16 when built with `cuda` and one is there, else the CPU in f32.
    pub fn best_available() -> Self {
        let device = Device::cuda_if_available(0).unwrap_or(Device::Cpu);
        let dtype = if device.is_cuda() {
            DType::BF16
        } else {
            DType::F32
        };
        Self {
            device,
            dtype,
            text_encoder_on_cpu: true,
            text_len: 512,
            native_fps: 16,
        }
    }
}

/// The three models and the scheduler settings, resident between clips.
pub struct Pipeline {
    pub text: TextEncoder,
    pub transformer: WanTransformer,
    pub vae: WanVae,
    pub scheduler: SchedulerConfig,
    pub device: Device,
    /// Recent prompts' embeddings on `device`: the windows of a shot share their prompt and
    /// negative, and umT5-XXL on the CPU takes seconds per prompt.
    embeds: Mutex<Vec<(String, Tensor)>>,
}

/// Prompts whose embeddings stay cached (8 MB each at 512 × 4096 in f32).
const CACHED_PROMPTS: usize = 16;

/// A tensor as a checkpoint stores it: float32 on the CPU (every dtype the latents take,
/// f32, bf16 or f16, goes there and back exactly).
fn state_tensor(tensor: &Tensor) -> Result<StateTensor> {
    Ok(StateTensor {
        dims: tensor.dims().to_vec(),
        values: tensor
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_device(&Device::Cpu)?
            .to_vec1::<f32>()?,
    })
}

/// The latents' dtype in a checkpoint's counters (the Euler sampler leaves them in the model
/// output's dtype; a resumed run goes on in the same one).
fn dtype_code(dtype: DType) -> Result<u64> {
    match dtype {
        DType::F32 => Ok(0),
        DType::BF16 => Ok(1),
        DType::F16 => Ok(2),
        other => Err(WanError::InvalidRequest(format!(
            "latents of dtype {other:?} cannot be checkpointed"
        ))),
    }
}

fn dtype_from_code(code: u64) -> Result<DType> {
    match code {
        0 => Ok(DType::F32),
        1 => Ok(DType::BF16),
        2 => Ok(DType::F16),
        other => Err(WanError::InvalidRequest(format!(
            "checkpoint names latent dtype {other}, not 0 (f32), 1 (bf16) or 2 (f16)"
        ))),
    }
}

/// What a step reports: `(done, total)`.
pub type OnStep<'a> = &'a mut dyn FnMut(u32, u32);

impl Pipeline {
    /// Loads every component of the checkpoint at `root` (the diffusers layout).
    pub fn load(root: &Path, options: &WanOptions) -> Result<Self> {
        let checkpoint = Checkpoint::open(root)?;
        let (text_device, text_dtype) = if options.text_encoder_on_cpu {
            (Device::Cpu, DType::F32)
        } else {
            (options.device.clone(), options.dtype)
        };
        let text = TextEncoder::load(&checkpoint, options.text_len, text_dtype, &text_device)?;
        let transformer = WanTransformer::new(
            &checkpoint.config(Component::Transformer)?,
            checkpoint.var_builder(Component::Transformer, options.dtype, &options.device)?,
        )
        .map_err(weights_error("transformer"))?;
        // The VAE is small (0.25 GB) and its causal convolutions are sensitive: f32 everywhere.
        let vae = WanVae::new(
            &checkpoint.config(Component::Vae)?,
            checkpoint.var_builder(Component::Vae, DType::F32, &options.device)?,
        )
        .map_err(weights_error("vae"))?;
        let scheduler = SchedulerConfig::load(&checkpoint.scheduler_config_file()?)?;
        Ok(Self {
            text,
            transformer,
            vae,
            scheduler,
            device: options.device.clone(),
            embeds: Mutex::new(Vec::new()),
        })
    }

    /// The latent shape of a clip: `[1, z, (frames − 1)/4 + 1, height/8, width/8]`.
    pub fn latent_shape(&self, sampling: &Sampling) -> Result<[usize; 5]> {
        let (spatial, temporal) = (
            self.vae.spatial_stride() as u32,
            self.vae.temporal_stride() as u32,
        );
        let multiple = spatial * self.transformer.config().patch_size[1] as u32;
        if !sampling.width.is_multiple_of(multiple) || !sampling.height.is_multiple_of(multiple) {
            return Err(WanError::InvalidRequest(format!(
                "{}x{} is not a multiple of {multiple} pixels on each side",
                sampling.width, sampling.height
            )));
        }
        if sampling.frames == 0 || !(sampling.frames - 1).is_multiple_of(temporal) {
            return Err(WanError::InvalidRequest(format!(
                "{} frames is not {temporal}n + 1",
                sampling.frames
            )));
        }
        Ok([
            1,
            self.vae.config().z_dim,
            ((sampling.frames - 1) / temporal + 1) as usize,
            (sampling.height / spatial) as usize,
            (sampling.width / spatial) as usize,
        ])
    }

    /// Samples and decodes one clip: `[frames, height, width, 3]` f32 in [0, 1] on the CPU.
    pub fn generate(
        &self,
        sampling: &Sampling,
        on_step: OnStep,
        cancel: &AtomicBool,
    ) -> Result<Tensor> {
        let latents = self.sample(sampling, on_step, cancel)?;
        self.decode(&latents, sampling.tiling.as_ref())
    }

    /// The denoised, still normalised latents.
    pub fn sample(
        &self,
        sampling: &Sampling,
        on_step: OnStep,
        cancel: &AtomicBool,
    ) -> Result<Tensor> {
        self.sample_observed(sampling, on_step, cancel, &mut |_, _| {})
    }

    /// `sample`, showing `observe(step, latents)` the latents each step's transformer input is
    /// made of (after first-frame conditioning).
    pub fn sample_observed(
        &self,
        sampling: &Sampling,
        on_step: OnStep,
        cancel: &AtomicBool,
        observe: &mut dyn FnMut(usize, &Tensor),
    ) -> Result<Tensor> {
        let mut save = |_: &SamplingState| Ok(());
        let mut off = Checkpoints::off(&mut save);
        self.sample_with(sampling, &mut off, on_step, cancel, observe)
    }

    /// `sample` that starts from `checkpoints.resume` when it fits this run (the latents and
    /// the sampler's carried history, at its step) and saves both when a save is due. The
    /// conditioning and the initial noise are recomputed from the request, so a resumed run
    /// takes exactly the steps an uninterrupted one would.
    pub fn sample_checkpointed(
        &self,
        sampling: &Sampling,
        checkpoints: &mut Checkpoints,
        on_step: OnStep,
        cancel: &AtomicBool,
    ) -> Result<Tensor> {
        self.sample_with(sampling, checkpoints, on_step, cancel, &mut |_, _| {})
    }

    fn sample_with(
        &self,
        sampling: &Sampling,
        checkpoints: &mut Checkpoints,
        on_step: OnStep,
        cancel: &AtomicBool,
        observe: &mut dyn FnMut(usize, &Tensor),
    ) -> Result<Tensor> {
        let shape = self.latent_shape(sampling)?;
        // As the reference: guidance at or below 1 runs the conditional branch alone.
        let guided = sampling.guidance > 1.0;
        let prompts: Vec<&str> = if guided {
            vec![sampling.prompt.as_str(), sampling.negative.as_str()]
        } else {
            vec![sampling.prompt.as_str()]
        };
        let embeds = self.prompt_embeds(&prompts)?;
        if cancel.load(Ordering::Relaxed) {
            return Err(WanError::Cancelled);
        }
        let text = self.transformer.project_text(&embeds)?;
        let noise = match &sampling.noise {
            Some(noise) => {
                if noise.dims() != shape {
                    return Err(WanError::InvalidRequest(format!(
                        "noise {:?}, expected {shape:?}",
                        noise.dims()
                    )));
                }
                noise.to_dtype(DType::F32)?.to_device(&self.device)?
            }
            None => gaussian(sampling.seed, &shape, &self.device)?,
        };
        let condition = match &sampling.first_frame {
            Some(picture) => {
                let encoded = self.vae.encode(
                    &picture
                        .to_device(&self.device)?
                        .to_dtype(self.vae.dtype())?,
                )?;
                Some(self.vae.normalize(&encoded)?.to_dtype(DType::F32)?)
            }
            None => None,
        };
        let mut sampler = new_sampler(&self.scheduler, sampling.steps as usize)?;
        let mut latents = noise.clone();
        let total = sampling.steps;
        let mut start = 0;
        if let Some(state) = checkpoints.take_resume(total, &shape) {
            let step = state.step;
            match self.resume(state, &shape, sampler.as_mut()) {
                Ok(resumed) => {
                    latents = resumed;
                    start = step as usize;
                    on_step(step, total);
                }
                // A state this sampler cannot take (another scheduler configuration, a
                // damaged history): rendering from noise is always right, only slower.
                Err(_) => {
                    sampler.reset();
                    checkpoints.resumed_from = 0;
                }
            }
        }
        for step in start..sampling.steps as usize {
            if cancel.load(Ordering::Relaxed) {
                return Err(WanError::Cancelled);
            }
            if let Some(condition) = &condition {
                let sigma = sampler.sigmas()[step];
                latents = hold_first_frame(&latents, condition, &noise, sigma)?;
            }
            observe(step, &latents);
            let t = sampler.timesteps()[step];
            let batch = prompts.len();
            let input = if guided {
                Tensor::cat(&[&latents, &latents], 0)?
            } else {
                latents.clone()
            };
            let timestep = Tensor::full(t as f32, batch, &self.device)?;
            let velocity = self
                .transformer
                .forward_projected(&input, &timestep, &text)?;
            let velocity = if guided {
                let conditional = velocity.narrow(0, 0, 1)?;
                let unconditional = velocity.narrow(0, 1, 1)?;
                (&unconditional
                    + ((conditional - &unconditional)? * f64::from(sampling.guidance))?)?
            } else {
                velocity
            };
            latents = sampler.step(&velocity, step, &latents)?;
            if checkpoints.due(step as u32 + 1, total) {
                let (carried, counters) = sampler.carried();
                let mut tensors = vec![state_tensor(&latents)?];
                for tensor in &carried {
                    tensors.push(state_tensor(tensor)?);
                }
                let state = SamplingState {
                    step: step as u32 + 1,
                    steps: total,
                    tensors,
                    counters: std::iter::once(dtype_code(latents.dtype())?)
                        .chain(counters)
                        .collect(),
                };
                (checkpoints.save)(&state).map_err(|error| match error {
                    ModelError::Cancelled => WanError::Cancelled,
                    other => WanError::InvalidRequest(format!("saving a checkpoint: {other}")),
                })?;
            }
            on_step(step as u32 + 1, total);
        }
        if let Some(condition) = &condition {
            latents = hold_first_frame(&latents, condition, &noise, 0.0)?;
        }
        Ok(latents)
    }

    /// The latents of a checkpointed state, with the sampler set to go on from its step;
    /// every tensor must have the latents' shape.
    fn resume(
        &self,
        state: SamplingState,
        shape: &[usize],
        sampler: &mut dyn crate::scheduler::Sampler,
    ) -> Result<Tensor> {
        if state.tensors.iter().any(|part| part.dims != shape) {
            return Err(WanError::InvalidRequest(
                "checkpoint tensors of another shape".into(),
            ));
        }
        let mut tensors = state
            .tensors
            .into_iter()
            .map(|part| Tensor::from_vec(part.values, part.dims, &self.device))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let (dtype, counters) = state
            .counters
            .split_first()
            .ok_or_else(|| WanError::InvalidRequest("checkpoint without a dtype".into()))?;
        let latents = tensors.remove(0).to_dtype(dtype_from_code(*dtype)?)?;
        sampler.restore(tensors, counters, state.step as usize)?;
        Ok(latents)
    }

    /// `[B, text_len, d]` on the pipeline's device, from the cache where it can. The lock is
    /// not held while encoding, so one segment's new prompt does not stall another's.
    pub fn prompt_embeds(&self, prompts: &[&str]) -> Result<Tensor> {
        let cached = |prompt: &str| -> Option<Tensor> {
            let cache = self
                .embeds
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            cache
                .iter()
                .find(|(p, _)| p == prompt)
                .map(|(_, t)| t.clone())
        };
        let missing: Vec<&str> = prompts
            .iter()
            .copied()
            .filter(|p| cached(p).is_none())
            .collect();
        let mut fresh = Vec::new();
        if !missing.is_empty() {
            let encoded = self.text.prompt_embeds(&missing)?.to_device(&self.device)?;
            for (index, prompt) in missing.iter().enumerate() {
                fresh.push((prompt.to_string(), encoded.narrow(0, index, 1)?));
            }
        }
        let mut cache = self
            .embeds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut rows = Vec::with_capacity(prompts.len());
        for prompt in prompts {
            let row = match fresh.iter().find(|(p, _)| p == prompt) {
                Some((_, row)) => row.clone(),
                None => match cache.iter().find(|(p, _)| p == prompt) {
                    Some((_, row)) => row.clone(),
                    // Evicted by another segment meanwhile: encode it again.
                    None => self
                        .text
                        .prompt_embeds(&[prompt])?
                        .to_device(&self.device)?,
                },
            };
            // Most recently used last; the oldest go first.
            cache.retain(|(p, _)| p != prompt);
            cache.push((prompt.to_string(), row.clone()));
            rows.push(row);
        }
        let excess = cache
            .len()
            .saturating_sub(CACHED_PROMPTS.max(prompts.len()));
        cache.drain(..excess);
        Ok(Tensor::cat(&rows, 0)?)
    }

    /// Prompts whose embeddings are cached, oldest first.
    pub fn cached_prompts(&self) -> Vec<String> {
        let cache = self
            .embeds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.iter().map(|(p, _)| p.clone()).collect()
    }

    /// Normalised latents to 8-bit frames, the `crop` window `(x, y, width, height)` of each,
    /// decoded latent frame by latent frame (`cancel` is checked between them; the tiled
    /// decode runs whole) and kept at 8 bits, never as a full-size float clip.
    pub fn decode_frames(
        &self,
        latents: &Tensor,
        tiling: Option<&Tiling>,
        crop: (usize, usize, usize, usize),
        cancel: &AtomicBool,
    ) -> Result<Vec<RgbFrame>> {
        let z = self.vae.denormalize(&latents.to_dtype(self.vae.dtype())?)?;
        let mut frames = Vec::new();
        match tiling {
            Some(tiling) => frames.extend(video_frames(&self.vae.decode_tiled(&z, tiling)?, crop)?),
            None => self.vae.decode_streaming(&z, |chunk| {
                if cancel.load(Ordering::Relaxed) {
                    return Err(WanError::Cancelled);
                }
                frames.extend(video_frames(&chunk, crop)?);
                Ok(())
            })?,
        }
        Ok(frames)
    }

    /// Normalised latents to frames `[F, H, W, 3]` in [0, 1] (f32, CPU).
    pub fn decode(&self, latents: &Tensor, tiling: Option<&Tiling>) -> Result<Tensor> {
        let z = self.vae.denormalize(&latents.to_dtype(self.vae.dtype())?)?;
        let video = match tiling {
            Some(tiling) => self.vae.decode_tiled(&z, tiling)?,
            None => self.vae.decode(&z)?,
        };
        // [1, 3, F, H, W] in [-1, 1] → [F, H, W, 3] in [0, 1], as the reference's postprocess.
        let video = ((video.to_dtype(DType::F32)? * 0.5)? + 0.5)?.clamp(0f32, 1f32)?;
        Ok(video
            .squeeze(0)?
            .permute((1, 2, 3, 0))?
            .contiguous()?
            .to_device(&Device::Cpu)?)
    }
}

/// Latent frame 0 replaced by the conditioning latent noised to level σ.
fn hold_first_frame(
    latents: &Tensor,
    condition: &Tensor,
    noise: &Tensor,
    sigma: f64,
) -> Result<Tensor> {
    let frames = latents.dim(2)?;
    let first = ((condition * (1.0 - sigma))? + (noise.narrow(2, 0, 1)? * sigma)?)?;
    if frames == 1 {
        return Ok(first);
    }
    Ok(Tensor::cat(
        &[&first, &latents.narrow(2, 1, frames - 1)?],
        2,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holding_the_first_frame_touches_only_frame_zero() {
        let latents = Tensor::ones((1, 2, 3, 1, 1), DType::F32, &Device::Cpu).unwrap();
        let noise = Tensor::full(4f32, (1, 2, 3, 1, 1), &Device::Cpu).unwrap();
        let condition = Tensor::full(2f32, (1, 2, 1, 1, 1), &Device::Cpu).unwrap();
        let held = hold_first_frame(&latents, &condition, &noise, 0.25).unwrap();
        let values = held.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // 0.75·2 + 0.25·4 = 2.5 in frame 0 of each channel; frames 1, 2 untouched.
        assert_eq!(values, [2.5, 1.0, 1.0, 2.5, 1.0, 1.0]);
    }
}
