//! The real 1.3B transformer shape with random weights, timed for one sampling step at a size a CPU can run: what `reelfarm bench wan --random-weights` prints, and where a GPU node's step time and memory come from before a checkpoint is downloaded.

use std::time::Instant;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use serde::Serialize;

use crate::error::Result;
use crate::noise::gaussian;
use crate::transformer::{TransformerConfig, WanTransformer};

/// A `VarBuilder` backend drawing every tensor from N(0, 0.02²) (norm gains 1), so a model of
/// the real shape runs without its checkpoint.
struct RandomWeights {
    seed: u64,
}

impl candle_nn::var_builder::SimpleBackend for RandomWeights {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        if name.contains("norm") && shape.rank() == 1 {
            return Tensor::ones(shape, dtype, device);
        }
        let seed = name.bytes().fold(self.seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        let noise = gaussian(seed, shape.dims(), device)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        (noise * 0.02)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: random weights need a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// A transformer of `config` with random weights.
pub fn random_transformer(
    config: &TransformerConfig,
    dtype: DType,
    device: &Device,
) -> Result<WanTransformer> {
    let vb = VarBuilder::from_backend(Box::new(RandomWeights { seed: 1 }), dtype, device.clone());
    WanTransformer::new(config, vb)
}

#[derive(Clone, Debug, Serialize)]
pub struct StepBench {
    pub params: u64,
    pub width: u32,
    pub height: u32,
    pub frames: u32,
    pub tokens: usize,
    pub text_len: usize,
    /// Median seconds of one sampling step: both guidance branches (batched) of the transformer.
    pub seconds_per_step: f64,
    pub load_seconds: f64,
    pub device: String,
    pub dtype: String,
}

/// Times `runs` steps (after one untimed warm-up) of a random-weight transformer of `config`
/// at `width`×`height`, `frames` (4n + 1).
pub fn time_step(
    config: &TransformerConfig,
    size: (u32, u32, u32),
    text_len: usize,
    runs: usize,
    device: &Device,
    dtype: DType,
) -> Result<StepBench> {
    let loading = Instant::now();
    let model = random_transformer(config, dtype, device)?;
    let load_seconds = loading.elapsed().as_secs_f64();
    let mut bench = time_model(&model, size, text_len, runs)?;
    bench.load_seconds = load_seconds;
    Ok(bench)
}

/// Times `runs` steps (after one untimed warm-up) of `model`.
pub fn time_model(
    model: &WanTransformer,
    size: (u32, u32, u32),
    text_len: usize,
    runs: usize,
) -> Result<StepBench> {
    let (width, height, frames) = size;
    let config = model.config();
    let device = model.device();
    let shape = [
        2,
        config.in_channels,
        ((frames - 1) / 4 + 1) as usize,
        (height / 8) as usize,
        (width / 8) as usize,
    ];
    let latents = gaussian(2, &shape, device)?;
    let context = gaussian(3, &[2, text_len, config.text_dim], device)?;
    let text = model.project_text(&context)?;
    let timestep = Tensor::new(&[999f32, 999.0], device)?;
    let mut times = Vec::with_capacity(runs);
    for run in 0..=runs {
        let start = Instant::now();
        let out = model.forward_projected(&latents, &timestep, &text)?;
        // Wait for the device before reading the clock.
        out.sum_all()?.to_scalar::<f32>()?;
        if run > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let tokens = shape[2] * shape[3] / config.patch_size[1] * shape[4] / config.patch_size[2];
    Ok(StepBench {
        params: config.parameter_count(),
        width,
        height,
        frames,
        tokens,
        text_len,
        seconds_per_step: times[times.len() / 2],
        load_seconds: 0.0,
        device: format!("{device:?}"),
        dtype: format!("{:?}", model.dtype()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_random_model_runs_a_step() {
        let config = TransformerConfig {
            num_attention_heads: 2,
            attention_head_dim: 12,
            text_dim: 32,
            ffn_dim: 32,
            num_layers: 2,
            ..TransformerConfig::wan_2_1_1_3b()
        };
        let bench = time_step(&config, (32, 32, 5), 8, 1, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(bench.tokens, 2 * 2 * 2);
        assert!(bench.seconds_per_step > 0.0);
        assert_eq!(bench.params, config.parameter_count());
    }
}
