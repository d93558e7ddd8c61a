//! Trains reelfarm-tiny on procedural scenes with the rectified-flow objective: a differentiable, batched twin of the inference forward pass (same weights, same function; a test holds them equal), fed by a thread that renders and encodes generator clips.
//!
//! Each step draws scenes and training-side prompts (`prompts::describe_for`, never a
//! held-out one), renders `latent_frames` frames four video frames apart at a small size with
//! the camera held still (the denoiser paints plates; `camera.rs` moves over them), encodes
//! them with the model's fixed encoder, noises them to a random flow time on the sampler's
//! shifted schedule (with the sampler's frame-shared noise, `sampler::clip_noise`) and
//! regresses the clean latent (mean squared error). The camera head regresses the scene's
//! camera path from the same pooled prompt (mean squared error, weighted by
//! `CAMERA_LOSS_WEIGHT`). One prompt in ten is replaced by the empty prompt, whose camera is
//! still, so classifier-free guidance has an unconditional model to push against. The VAE
//! stays fixed.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Instant;

use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::camera::{CAMERA_VALUES, CameraPath, PositionMap};
use super::denoiser::{POSITION_FEATURES, position_features};
use super::layout::TokenGrid;
use super::sampler::clip_noise;
use super::text::Tokenizer;
use super::vae::{LatentGeometry, Vae};
use super::{TinyConfig, TinyWeights};
use crate::scenes::render::render_frame;
use crate::scenes::{Camera, Scene, prompts};
use reelfarm_models::ModelError;

/// One cosine cycle of training: `steps` steps from a short warm-up to `learning_rate` and a
/// cosine decay to a tenth of it, with a fresh AdamW and its own scenes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cycle {
    pub steps: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
}

/// What `train` does; the defaults reproduce the shipped weights.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOptions {
    /// Seed of the initial weights and of the first cycle's scenes and noise; cycle `i` draws
    /// its scenes from `seed + i`.
    pub seed: u64,
    /// Cycles run one after another on the same weights (warm restarts, each with a fresh
    /// AdamW). Held-out time of day (`eval-tiny` defaults / `--prompts 140 --seed 11`) was
    /// 79 / 75 % after the first default cycle, 84 / 79 % after the second and 86 / 84 % after
    /// the third.
    pub cycles: Vec<Cycle>,
    pub batch: usize,
    /// Latent frames per training clip (each stands for 4 video frames).
    pub latent_frames: usize,
    /// Output geometry the clips are encoded for (the draft 480p frame).
    pub width: u32,
    pub height: u32,
    /// Size the generator renders at before the encoder pools it.
    pub render_width: u32,
    pub render_height: u32,
    /// Share of prompts replaced by the empty prompt.
    pub unconditional_share: f64,
}

impl TrainOptions {
    /// Steps over all cycles.
    pub fn total_steps(&self) -> usize {
        self.cycles.iter().map(|cycle| cycle.steps).sum()
    }
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            seed: 2026,
            cycles: vec![
                Cycle {
                    steps: 1200,
                    learning_rate: 1e-3,
                },
                Cycle {
                    steps: 1000,
                    learning_rate: 5e-4,
                },
                Cycle {
                    steps: 1000,
                    learning_rate: 5e-4,
                },
            ],
            batch: 12,
            latent_frames: 12,
            width: 848,
            height: 480,
            render_width: 108,
            render_height: 60,
            unconditional_share: 0.1,
        }
    }
}

/// Progress of one optimisation step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepReport {
    /// Step counted over all cycles, from 1.
    pub step: usize,
    /// Steps over all cycles.
    pub steps: usize,
    /// Cycle of this step, from 1.
    pub cycle: usize,
    /// Denoising loss (mean squared error of the clean latent).
    pub loss: f32,
    /// Camera head loss (mean squared error of its scaled path values).
    pub camera_loss: f32,
    pub learning_rate: f64,
    pub elapsed_seconds: f64,
}

/// Names of the tensors training updates (everything but the fixed VAE).
fn is_trained(name: &str) -> bool {
    name.starts_with("text.") || name.starts_with("denoiser.") || name.starts_with("camera.")
}

/// Weight of the camera head's loss beside the denoising loss: its targets are of order one,
/// the denoising loss ends near 0.02, and the head needs few steps to learn.
const CAMERA_LOSS_WEIGHT: f64 = 0.05;

/// One training example: clean latent clip, the prompt's tokens and its camera head target.
struct Example {
    latent: Tensor,
    tokens: Vec<u32>,
    camera: [f32; CAMERA_VALUES],
}

struct Batch {
    examples: Vec<Example>,
    /// Flow time per example.
    times: Vec<f32>,
    noise: Vec<Tensor>,
}

/// Shifted flow time, distributed like the sampler's steps (more weight at high noise).
fn shifted_time(uniform: f32, shift: f32) -> f32 {
    shift * uniform / (1.0 + (shift - 1.0) * uniform)
}

/// Batch `step` of the cycle whose scenes are drawn from `seed`.
fn make_batch(
    options: &TrainOptions,
    seed: u64,
    config: &TinyConfig,
    vae: &Vae,
    tokenizer: &Tokenizer,
    step: usize,
) -> Result<Batch, ModelError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (step as u64).wrapping_mul(0x9e37_79b9));
    let frames = (options.latent_frames as u32 - 1) * config.temporal_stride as u32 + 1;
    let geometry = LatentGeometry::new(config, options.width, options.height, frames);
    let mut examples = Vec::with_capacity(options.batch);
    let mut times = Vec::with_capacity(options.batch);
    let mut noise = Vec::with_capacity(options.batch);
    for _ in 0..options.batch {
        let scene = Scene::random(rng.random());
        let (prompt, path) = if rng.random_bool(options.unconditional_share) {
            (String::new(), CameraPath::STILL)
        } else {
            (
                prompts::describe_for(&scene, rng.random(), false),
                scene.camera_path(),
            )
        };
        let plate = Scene {
            camera: Camera::Static,
            ..scene
        };
        let start: f32 = rng.random_range(0.0..6.0);
        let latents = (0..options.latent_frames)
            .map(|index| {
                let seconds = start + (index * config.temporal_stride) as f32 / 24.0;
                let frame =
                    render_frame(&plate, seconds, options.render_width, options.render_height);
                vae.encode_picture(&frame, &geometry)
            })
            .collect::<Result<Vec<_>, _>>()?;
        examples.push(Example {
            latent: Tensor::stack(&latents, 0)?,
            tokens: tokenizer.tokenize(&prompt),
            camera: path.head_target(),
        });
        // Half on the sampler's shifted schedule (where its steps are), half uniform, so the
        // low-noise steps that settle details and motion get their share.
        let uniform = rng.random_range(0.02f32..1.0);
        times.push(if rng.random_bool(0.5) {
            shifted_time(uniform, config.flow_shift)
        } else {
            uniform
        });
        let dims = examples[examples.len() - 1].latent.dims().to_vec();
        noise.push(clip_noise(rng.random(), &dims)?);
    }
    Ok(Batch {
        examples,
        times,
        noise,
    })
}

/// The trainable copy of the weights and the differentiable forward pass over it.
pub(crate) struct Trainable {
    config: TinyConfig,
    /// Sorted by name, so sums over the variables (the gradient norm) run in a fixed order.
    vars: BTreeMap<String, Var>,
}

fn layer_norm(input: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    let centred = input.broadcast_sub(&input.mean_keepdim(D::Minus1)?)?;
    let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
    centred
        .broadcast_div(&(variance + 1e-5)?.sqrt()?)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

/// Sinusoidal flow-time embedding (as the inference `timestep_embedding`) for a batch.
fn time_embeddings(times: &[f32], dim: usize) -> candle_core::Result<Tensor> {
    let half = dim / 2;
    let mut values = Vec::with_capacity(times.len() * dim);
    for &time in times {
        let scaled = f64::from(time) * 1000.0;
        let frequencies: Vec<f64> = (0..half)
            .map(|index| (-(10_000f64.ln()) * index as f64 / half as f64).exp())
            .collect();
        values.extend(frequencies.iter().map(|f| (scaled * f).cos() as f32));
        values.extend(frequencies.iter().map(|f| (scaled * f).sin() as f32));
    }
    Tensor::from_vec(values, (times.len(), dim), &Device::Cpu)
}

impl Trainable {
    pub(crate) fn new(config: &TinyConfig, weights: &TinyWeights) -> Result<Self, ModelError> {
        let mut vars = BTreeMap::new();
        for name in weights.names() {
            if is_trained(name) {
                vars.insert(name.to_string(), Var::from_tensor(&weights.get(name)?)?);
            }
        }
        Ok(Self {
            config: config.clone(),
            vars,
        })
    }

    fn get(&self, name: &str) -> candle_core::Result<&Tensor> {
        self.vars
            .get(name)
            .map(|var| var.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg(format!("no trainable `{name}`")))
    }

    fn linear(&self, input: &Tensor, prefix: &str) -> candle_core::Result<Tensor> {
        input
            .matmul(self.get(&format!("{prefix}.weight"))?)?
            .broadcast_add(self.get(&format!("{prefix}.bias"))?)
    }

    fn norm(&self, input: &Tensor, prefix: &str) -> candle_core::Result<Tensor> {
        layer_norm(
            input,
            self.get(&format!("{prefix}.weight"))?,
            self.get(&format!("{prefix}.bias"))?,
        )
    }

    /// Pooled text vector (1, text_dim) of one tokenised prompt.
    pub(crate) fn encode_text(&self, tokens: &[u32]) -> candle_core::Result<Tensor> {
        let config = &self.config;
        let count = tokens.len().min(config.max_tokens);
        let ids = Tensor::new(&tokens[..count], &Device::Cpu)?;
        let mut hidden = self
            .get("text.token_embedding")?
            .index_select(&ids, 0)?
            .add(&self.get("text.position_embedding")?.narrow(0, 0, count)?)?;
        let (dim, heads) = (config.text_dim, config.text_heads);
        let head_dim = dim / heads;
        for layer in 0..config.text_layers {
            let prefix = format!("text.layers.{layer}");
            let normed = self.norm(&hidden, &format!("{prefix}.attention_norm"))?;
            let qkv = self.linear(&normed, &format!("{prefix}.qkv"))?;
            let split = |index: usize| -> candle_core::Result<Tensor> {
                qkv.narrow(1, index * dim, dim)?
                    .reshape((count, heads, head_dim))?
                    .transpose(0, 1)?
                    .contiguous()
            };
            let (query, key, value) = (split(0)?, split(1)?, split(2)?);
            let scores = (query.matmul(&key.transpose(1, 2)?.contiguous()?)?
                * (1.0 / (head_dim as f64).sqrt()))?;
            let weights = scores.exp()?;
            let weights = weights.broadcast_div(&weights.sum_keepdim(D::Minus1)?)?;
            let mixed = weights
                .matmul(&value)?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((count, dim))?;
            hidden = (hidden + self.linear(&mixed, &format!("{prefix}.attention_out"))?)?;
            let normed = self.norm(&hidden, &format!("{prefix}.mlp_norm"))?;
            let expanded = self.linear(&normed, &format!("{prefix}.mlp_in"))?.gelu()?;
            hidden = (hidden + self.linear(&expanded, &format!("{prefix}.mlp_out"))?)?;
        }
        self.norm(&hidden, "text.final_norm")?.mean_keepdim(0)
    }

    /// Clean-latent predictions for a batch: `latents` (batch, frames, channels, h, w),
    /// `times` per example, `text` (batch, text_dim).
    pub(crate) fn predict_clean(
        &self,
        latents: &Tensor,
        times: &[f32],
        text: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let config = &self.config;
        let (batch, frames, channels, height, width) = latents.dims5()?;
        let grid = TokenGrid::for_config(config, frames, height, width)
            .map_err(|error| candle_core::Error::Msg(error.to_string()))?;
        let (tf, gh, gw) = (grid.token_frames, grid.grid_height, grid.grid_width);
        let hidden = config.hidden_channels;
        let tokens = (0..batch)
            .map(|index| grid.patchify(&latents.get(index)?, channels))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let tokens = Tensor::stack(&tokens, 0)?;
        let patch_channels = tokens.dim(D::Minus1)?;
        let rows = batch * tf * gh * gw;
        let mut stream = tokens
            .reshape((rows, patch_channels))?
            .matmul(self.get("denoiser.input_projection.weight")?)?
            .reshape((batch, tf, gh, gw, hidden))?
            .broadcast_add(
                &position_features(gh, gw, &PositionMap::frame(gh, gw))?
                    .reshape((gh * gw, POSITION_FEATURES))?
                    .matmul(self.get("denoiser.position_projection.weight")?)?
                    .reshape((gh, gw, hidden))?,
            )?;
        let condition = Tensor::cat(
            &[&time_embeddings(times, config.time_embedding_dim)?, text],
            1,
        )?
        .matmul(self.get("denoiser.condition.weight")?)?
        .broadcast_add(self.get("denoiser.condition.bias")?)?
        .silu()?;
        let per_example = |values: &Tensor| values.reshape((batch, 1, 1, 1, hidden));
        // Kernel taps side by side along the channels, times the (taps × hidden, hidden)
        // kernel: one convolution as one matmul over all tokens.
        let convolve = |taps: &[Tensor], kernel: &str| -> candle_core::Result<Tensor> {
            let kernel = self.get(kernel)?;
            let inputs = kernel.elem_count() / hidden;
            Tensor::cat(taps, 4)?
                .reshape((rows, inputs))?
                .matmul(&kernel.reshape((inputs, hidden))?)?
                .reshape((batch, tf, gh, gw, hidden))
        };
        for block in 0..config.blocks {
            let prefix = format!("denoiser.blocks.{block}");
            let modulation = self.linear(&condition, &format!("{prefix}.modulation"))?;
            let scale = per_example(&(modulation.narrow(1, 0, hidden)? + 1.0)?)?;
            let shift = per_example(&modulation.narrow(1, hidden, hidden)?)?;
            let gate = per_example(&modulation.narrow(1, 2 * hidden, hidden)?)?;
            let padded = stream.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
            let mut columns = Vec::with_capacity(9);
            for ky in 0..3 {
                for kx in 0..3 {
                    columns.push(padded.narrow(2, ky, gh)?.narrow(3, kx, gw)?);
                }
            }
            let activated = convolve(&columns, &format!("{prefix}.spatial.weight"))?
                .broadcast_mul(&scale)?
                .broadcast_add(&shift)?
                .relu()?;
            let padded = activated.pad_with_zeros(1, 1, 1)?;
            let taps = (0..3)
                .map(|tap| padded.narrow(1, tap, tf))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let update =
                convolve(&taps, &format!("{prefix}.temporal.weight"))?.broadcast_mul(&gate)?;
            stream = (stream + update)?;
        }
        let head = stream
            .reshape((rows, hidden))?
            .matmul(self.get("denoiser.output_projection.weight")?)?
            .broadcast_add(self.get("denoiser.output_projection.bias")?)?
            .reshape((batch, tf, gh, gw, patch_channels))?;
        let clean = (0..batch)
            .map(|index| grid.unpatchify(&head.get(index)?, channels))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::stack(&clean, 0)
    }

    /// Camera head values (batch, CAMERA_VALUES) from pooled text (batch, text_dim).
    pub(crate) fn camera(&self, text: &Tensor) -> candle_core::Result<Tensor> {
        self.linear(text, "camera")
    }

    /// (denoising loss, camera loss) of a batch.
    fn losses(&self, batch: &Batch) -> candle_core::Result<(Tensor, Tensor)> {
        let clean = Tensor::stack(
            &batch
                .examples
                .iter()
                .map(|example| example.latent.clone())
                .collect::<Vec<_>>(),
            0,
        )?;
        let noisy = batch
            .examples
            .iter()
            .zip(&batch.noise)
            .zip(&batch.times)
            .map(|((example, noise), &time)| {
                example.latent.affine(f64::from(1.0 - time), 0.0)?
                    + noise.affine(f64::from(time), 0.0)?
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let text = batch
            .examples
            .iter()
            .map(|example| self.encode_text(&example.tokens))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let text = Tensor::cat(&text, 0)?;
        let predicted = self.predict_clean(&Tensor::stack(&noisy, 0)?, &batch.times, &text)?;
        let targets: Vec<f32> = batch
            .examples
            .iter()
            .flat_map(|example| example.camera)
            .collect();
        let targets =
            Tensor::from_vec(targets, (batch.examples.len(), CAMERA_VALUES), &Device::Cpu)?;
        Ok((
            (predicted - clean)?.sqr()?.mean_all()?,
            (self.camera(&text)? - targets)?.sqr()?.mean_all()?,
        ))
    }

    /// Gradients of `loss`, scaled down together when their global norm exceeds `max_norm`
    /// (one bad batch must not undo the run).
    fn clipped_gradients(
        &self,
        loss: &Tensor,
        max_norm: f64,
    ) -> candle_core::Result<candle_core::backprop::GradStore> {
        let mut gradients = loss.backward()?;
        let mut squared = 0f64;
        for var in self.vars.values() {
            if let Some(gradient) = gradients.get(var.as_tensor()) {
                squared += f64::from(gradient.sqr()?.sum_all()?.to_scalar::<f32>()?);
            }
        }
        let norm = squared.sqrt();
        if norm > max_norm {
            let factor = max_norm / norm;
            for var in self.vars.values() {
                if let Some(gradient) = gradients.remove(var.as_tensor()) {
                    gradients.insert(var.as_tensor(), gradient.affine(factor, 0.0)?);
                }
            }
        }
        Ok(gradients)
    }

    /// The current values as model weights (the fixed tensors taken from `base`).
    pub(crate) fn weights(&self, base: &TinyWeights) -> Result<TinyWeights, ModelError> {
        let mut weights = base.clone();
        for (name, var) in &self.vars {
            weights.replace(name, var.as_tensor().detach())?;
        }
        Ok(weights)
    }
}

const MAX_GRADIENT_NORM: f64 = 1.0;

/// Cosine decay from `peak` to a tenth of it after a short linear warm-up.
fn learning_rate(peak: f64, step: usize, steps: usize) -> f64 {
    let warmup = (steps / 20).max(1);
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (steps - warmup).max(1) as f64;
    peak * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
}

/// Seed of the scenes and noise of cycle `index` (from 0): the first cycle's is the run's seed.
fn cycle_seed(seed: u64, index: usize) -> u64 {
    seed.wrapping_add(index as u64)
}

/// Trains from the untrained weights of `options.seed` through every cycle; `on_step` hears
/// every step.
pub fn train(
    options: &TrainOptions,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<TinyWeights, ModelError> {
    let untrained = TinyWeights::from_seed(&TinyConfig::default(), options.seed)?;
    train_from(&untrained, options, on_step)
}

/// Trains `start` through every cycle of `options` (its seed then picks only the scenes and
/// noise): `train` with cycles A then B equals `train_from` A's result with B alone and the
/// seed moved on by A's cycle count.
pub fn train_from(
    start: &TinyWeights,
    options: &TrainOptions,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<TinyWeights, ModelError> {
    if options.cycles.is_empty()
        || options.cycles.iter().any(|cycle| cycle.steps == 0)
        || options.batch == 0
        || options.latent_frames < 2
    {
        return Err(ModelError::InvalidRequest(
            "at least one cycle, every cycle and batch at least 1 step and clip, and \
             latent_frames at least 2"
                .into(),
        ));
    }
    let config = TinyConfig::default();
    let trainable = Trainable::new(&config, start)?;
    let started = Instant::now();
    let (sender, receiver) = mpsc::sync_channel::<Result<Batch, ModelError>>(2);
    let producer_options = options.clone();
    let producer_config = config.clone();
    let vae = Vae::new(start)?;
    let producer = std::thread::spawn(move || {
        let tokenizer = Tokenizer::new(producer_config.vocab_size, producer_config.max_tokens)
            .with_vocabulary(prompts::vocabulary());
        for (index, cycle) in producer_options.cycles.iter().enumerate() {
            let seed = cycle_seed(producer_options.seed, index);
            for step in 0..cycle.steps {
                let batch = make_batch(
                    &producer_options,
                    seed,
                    &producer_config,
                    &vae,
                    &tokenizer,
                    step,
                );
                if sender.send(batch).is_err() {
                    return;
                }
            }
        }
    });
    let total_steps = options.total_steps();
    let mut done = 0;
    for (index, cycle) in options.cycles.iter().enumerate() {
        let mut optimiser = AdamW::new(
            trainable.vars.values().cloned().collect(),
            ParamsAdamW {
                lr: cycle.learning_rate,
                beta1: 0.9,
                beta2: 0.99,
                eps: 1e-8,
                weight_decay: 0.0,
            },
        )?;
        for step in 0..cycle.steps {
            let batch = receiver
                .recv()
                .map_err(|_| ModelError::Internal("the data thread stopped".into()))??;
            let rate = learning_rate(cycle.learning_rate, step, cycle.steps);
            optimiser.set_learning_rate(rate);
            let (loss, camera_loss) = trainable.losses(&batch)?;
            let total = (&loss + camera_loss.affine(CAMERA_LOSS_WEIGHT, 0.0)?)?;
            let gradients = trainable.clipped_gradients(&total, MAX_GRADIENT_NORM)?;
            optimiser.step(&gradients)?;
            done += 1;
            on_step(&StepReport {
                step: done,
                steps: total_steps,
                cycle: index + 1,
                loss: loss.to_dtype(DType::F32)?.to_scalar::<f32>()?,
                camera_loss: camera_loss.to_dtype(DType::F32)?.to_scalar::<f32>()?,
                learning_rate: rate,
                elapsed_seconds: started.elapsed().as_secs_f64(),
            });
        }
    }
    drop(receiver);
    let _ = producer.join();
    trainable.weights(start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TinyModel;
    use crate::weights::GaussianRng;

    #[test]
    fn the_training_forward_is_the_inference_forward() -> Result<(), ModelError> {
        let config = TinyConfig::default();
        let weights = TinyWeights::from_seed(&config, 5)?;
        let model = TinyModel::from_weights(config.clone(), weights.clone())?;
        let trainable = Trainable::new(&config, &weights)?;
        let tokens = model.tokenizer.tokenize("a pine valley at dawn, fog");
        let inference_text = model.text.encode(&tokens)?;
        let training_text = trainable.encode_text(&tokens)?;
        let text_gap = (&inference_text - &training_text)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(text_gap < 1e-4, "text differs by {text_gap}");

        let (frames, channels, height, width) = (5, config.latent_channels, 8, 12);
        let latent = Tensor::from_vec(
            GaussianRng::new(9).gaussians(frames * channels * height * width, 1.0),
            (frames, channels, height, width),
            &Device::Cpu,
        )?;
        let grid = TokenGrid::for_config(&config, frames, height, width)?;
        let time = 0.7;
        let expected = model.denoiser.predict_clean(
            &latent,
            &model.denoiser.condition(time, &inference_text)?,
            &grid,
            &model
                .denoiser
                .position_rows(&grid, &PositionMap::frame(height / 2, width / 2))?,
        )?;
        let actual = trainable
            .predict_clean(&latent.unsqueeze(0)?, &[time], &training_text)?
            .squeeze(0)?;
        let gap = (&expected - &actual)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(gap < 1e-3, "denoiser differs by {gap}");

        let expected = model.camera.path(&inference_text)?.head_target();
        let actual = trainable
            .camera(&training_text)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for (expected, actual) in expected.iter().zip(&actual) {
            assert!(
                (expected - actual).abs() < 1e-3,
                "camera {expected} vs {actual}"
            );
        }
        Ok(())
    }

    #[test]
    fn a_second_cycle_equals_continuing_from_the_first() -> Result<(), ModelError> {
        let cycle = |steps| Cycle {
            steps,
            learning_rate: 2e-3,
        };
        let options = TrainOptions {
            cycles: vec![cycle(2), cycle(3)],
            batch: 1,
            latent_frames: 2,
            width: 128,
            height: 64,
            render_width: 32,
            render_height: 16,
            ..TrainOptions::default()
        };
        let whole = train(&options, &mut |_| {})?;
        let first = train(
            &TrainOptions {
                cycles: vec![cycle(2)],
                ..options.clone()
            },
            &mut |_| {},
        )?;
        let continued = train_from(
            &first,
            &TrainOptions {
                seed: options.seed + 1,
                cycles: vec![cycle(3)],
                ..options.clone()
            },
            &mut |_| {},
        )?;
        assert_eq!(whole.max_difference(&continued)?, 0.0);
        assert!(whole.max_difference(&first)? > 0.0);
        Ok(())
    }

    #[test]
    fn a_short_run_lowers_the_loss_and_repeats_exactly() -> Result<(), ModelError> {
        let options = TrainOptions {
            cycles: vec![
                Cycle {
                    steps: 8,
                    learning_rate: 3e-3,
                },
                Cycle {
                    steps: 4,
                    learning_rate: 1e-3,
                },
            ],
            batch: 2,
            latent_frames: 4,
            width: 192,
            height: 128,
            render_width: 48,
            render_height: 32,
            ..TrainOptions::default()
        };
        let mut losses = Vec::new();
        let mut cycles = Vec::new();
        let first = train(&options, &mut |report| {
            losses.push(report.loss);
            cycles.push((report.step, report.cycle));
        })?;
        assert_eq!(cycles.len(), 12);
        assert_eq!(cycles[7], (8, 1));
        assert_eq!(cycles[8], (9, 2));
        let second = train(&options, &mut |_| {})?;
        for name in first.names() {
            let gap = (first.get(name)? - second.get(name)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert_eq!(gap, 0.0, "{name} differs between two runs of one seed");
        }
        let early: f32 = losses[..3].iter().sum();
        let late: f32 = losses[losses.len() - 3..].iter().sum();
        assert!(late < early, "loss went from {early} to {late}");
        Ok(())
    }
}
