//! The flow-matching samplers Wan 2.1 denoises with, matching diffusers 0.42's `UniPCMultistepScheduler` (flow sigmas, the published default) and `FlowMatchEulerDiscreteScheduler`, behind one [`Sampler`] trait the pipeline drives step by step.
//!
//! The schedule (sigmas and the timesteps the transformer receives) is plain f64 arithmetic in
//! [`schedule`] that reproduces diffusers' numpy/torch rounding; the updates are float32 tensor
//! arithmetic as diffusers does it on the CPU, including its dtype rules when the model output is
//! bf16 (the `σ·v` products are rounded to bf16). Sigmas follow the flow convention
//! `x_σ = (1 − σ)·x0 + σ·noise`, and the model output is the velocity `noise − x0`.
//!
//! ```no_run
//! # use reelfarm_wan::scheduler::{SchedulerConfig, new_sampler};
//! # fn run(model: impl Fn(&candle_core::Tensor, f64) -> candle_core::Tensor, mut x: candle_core::Tensor) -> reelfarm_wan::error::Result<()> {
//! let mut sampler = new_sampler(&SchedulerConfig::wan_default(), 50)?;
//! for step in 0..sampler.num_inference_steps() {
//!     let velocity = model(&x, sampler.timesteps()[step]);
//!     x = sampler.step(&velocity, step, &x)?;
//! }
//! # Ok(()) }
//! ```

mod config;
mod euler;
mod schedule;
mod unipc;

use candle_core::{DType, Tensor};

pub use config::{
    FLOW_MATCH_EULER_CLASS, FinalSigmas, FlowMatchEulerConfig, SchedulerConfig, SolverType,
    UNIPC_CLASS, UniPcConfig,
};
pub use euler::FlowMatchEulerSampler;
pub use schedule::{Schedule, flow_match_euler_schedule, unipc_schedule};
pub use unipc::UniPcSampler;

use crate::error::{Result, WanError};

/// A sampler over one schedule of `num_inference_steps` steps.
pub trait Sampler: Send {
    /// The value the transformer receives at each step, exactly as diffusers produces it
    /// (UniPC: whole numbers; Euler: float32 values).
    fn timesteps(&self) -> &[f64];

    /// N + 1 sigmas (float32 values), strictly decreasing to the final 0.
    fn sigmas(&self) -> &[f64];

    fn num_inference_steps(&self) -> usize {
        self.timesteps().len()
    }

    /// The sigma the sample has before `step` (`step == N` gives the final one).
    ///
    /// # Panics
    /// When `step` is past N.
    fn sigma(&self, step: usize) -> f64 {
        self.sigmas()[step]
    }

    /// Moves `sample` (at `sigma(step)`) to `sigma(step + 1)` given the model's velocity
    /// prediction there. UniPC keeps its multistep history, so its steps must come in order.
    /// The result has the sample's dtype (UniPC) or the model output's (Euler, as diffusers).
    fn step(&mut self, model_output: &Tensor, step: usize, sample: &Tensor) -> Result<Tensor>;

    /// Forgets the history so the schedule can be sampled again from any step.
    fn reset(&mut self);

    /// What the sampler carries from one step to the next (a multistep history, float32),
    /// and its counters: with the latents, all a checkpoint needs to go on exactly.
    fn carried(&self) -> (Vec<Tensor>, Vec<u64>) {
        (Vec::new(), Vec::new())
    }

    /// Takes back what `carried` gave, so the next step is `next_step`.
    fn restore(&mut self, tensors: Vec<Tensor>, counters: &[u64], next_step: usize) -> Result<()> {
        let _ = next_step;
        if tensors.is_empty() && counters.is_empty() {
            Ok(())
        } else {
            Err(WanError::InvalidRequest(
                "this sampler carries nothing between steps".into(),
            ))
        }
    }
}

impl SchedulerConfig {
    /// What `set_timesteps(num_inference_steps)` computes, without a sampler.
    pub fn schedule(&self, num_inference_steps: usize) -> Result<Schedule> {
        self.validate().map_err(WanError::InvalidRequest)?;
        if num_inference_steps == 0 {
            return Err(WanError::InvalidRequest(
                "num_inference_steps must be at least 1".into(),
            ));
        }
        Ok(match self {
            SchedulerConfig::UniPc(config) => unipc_schedule(config, num_inference_steps),
            SchedulerConfig::FlowMatchEuler(config) => {
                flow_match_euler_schedule(config, num_inference_steps)
            }
        })
    }
}

/// The sampler `config` describes, over `num_inference_steps` steps.
pub fn new_sampler(
    config: &SchedulerConfig,
    num_inference_steps: usize,
) -> Result<Box<dyn Sampler>> {
    Ok(match config {
        SchedulerConfig::UniPc(config) => {
            Box::new(UniPcSampler::new(config.clone(), num_inference_steps)?)
        }
        SchedulerConfig::FlowMatchEuler(config) => Box::new(FlowMatchEulerSampler::new(
            config.clone(),
            num_inference_steps,
        )?),
    })
}

/// The flow-matching forward process `(1 − σ)·sample + σ·noise` (diffusers' `scale_noise`,
/// float32 with σ rounded to float32), in the sample's dtype. First-frame conditioning noises
/// the conditioning latent to the current sigma with it.
pub fn scale_noise(sigma: f64, sample: &Tensor, noise: &Tensor) -> Result<Tensor> {
    let sigma = sigma as f32;
    let noise = noise.to_dtype(DType::F32)?.affine(f64::from(sigma), 0.0)?;
    let kept = sample
        .to_dtype(DType::F32)?
        .affine(f64::from(1.0 - sigma), 0.0)?;
    Ok((noise + kept)?.to_dtype(sample.dtype())?)
}

/// Refuses a step past the schedule or, for a stateful sampler, out of order.
fn check_step(sampler: &str, step: usize, steps: usize, expected: Option<usize>) -> Result<()> {
    if step >= steps {
        return Err(WanError::InvalidRequest(format!(
            "{sampler}: step {step} is past the schedule of {steps} steps"
        )));
    }
    match expected {
        Some(expected) if expected != step => Err(WanError::InvalidRequest(format!(
            "{sampler}: step {step} out of order, expected step {expected} (reset the sampler to start over)"
        ))),
        _ => Ok(()),
    }
}

/// `scalar * tensor` the way torch computes it when `scalar` is a 0-dim float32 tensor: in the
/// tensor's dtype, the scalar first rounded to it (so bf16 · bf16 → bf16). Returned in float32.
fn scale_like_torch(tensor: &Tensor, scalar: f32) -> Result<Tensor> {
    Ok(match tensor.dtype() {
        DType::F32 => tensor.affine(f64::from(scalar), 0.0)?,
        DType::F64 => tensor
            .affine(f64::from(scalar), 0.0)?
            .to_dtype(DType::F32)?,
        dtype => {
            // The product of two bf16 (or f16) values is exact in float32, so one rounding to
            // the dtype afterwards is what a native bf16 multiply gives.
            let rounded = Tensor::new(scalar, &candle_core::Device::Cpu)?
                .to_dtype(dtype)?
                .to_dtype(DType::F32)?
                .to_scalar::<f32>()?;
            tensor
                .to_dtype(DType::F32)?
                .affine(f64::from(rounded), 0.0)?
                .to_dtype(dtype)?
                .to_dtype(DType::F32)?
        }
    })
}

#[cfg(test)]
mod tests;
