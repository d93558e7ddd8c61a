//! Flow-matching Euler as diffusers' `FlowMatchEulerDiscreteScheduler` steps it: one first-order move along the predicted velocity per step, with the latents cast to the model output's dtype afterwards as diffusers does.

use candle_core::{DType, Tensor};

use super::config::FlowMatchEulerConfig;
use super::schedule::{Schedule, flow_match_euler_schedule};
use super::{Sampler, check_step, scale_like_torch};
use crate::error::{Result, WanError};

/// `x_{i+1} = x_i + (σ_{i+1} − σ_i)·v_i`. Stateless between steps, so any step may be taken.
pub struct FlowMatchEulerSampler {
    schedule: Schedule,
    sigmas: Vec<f32>,
}

impl FlowMatchEulerSampler {
    pub fn new(config: FlowMatchEulerConfig, num_inference_steps: usize) -> Result<Self> {
        config.validate().map_err(WanError::InvalidRequest)?;
        if num_inference_steps == 0 {
            return Err(WanError::InvalidRequest(
                "num_inference_steps must be at least 1".into(),
            ));
        }
        let schedule = flow_match_euler_schedule(&config, num_inference_steps);
        let sigmas = schedule.sigmas.iter().map(|&sigma| sigma as f32).collect();
        Ok(FlowMatchEulerSampler { schedule, sigmas })
    }
}

impl Sampler for FlowMatchEulerSampler {
    fn timesteps(&self) -> &[f64] {
        &self.schedule.timesteps
    }

    fn sigmas(&self) -> &[f64] {
        &self.schedule.sigmas
    }

    /// diffusers: `(x.float() + dt·v).to(v.dtype)` with `dt = σ_{i+1} − σ_i` in float32 and the
    /// product in the model output's dtype, so a bf16 model output leaves bf16 latents.
    fn step(&mut self, model_output: &Tensor, step: usize, sample: &Tensor) -> Result<Tensor> {
        check_step("FlowMatchEuler", step, self.num_inference_steps(), None)?;
        let dt = self.sigmas[step + 1] - self.sigmas[step];
        let next = (sample.to_dtype(DType::F32)? + scale_like_torch(model_output, dt)?)?;
        Ok(next.to_dtype(model_output.dtype())?)
    }

    fn reset(&mut self) {}
}
