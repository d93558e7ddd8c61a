//! `WanTransformer3DModel`, the diffusion transformer that predicts the flow velocity of a video latent: patch embedding, timestep and text conditioning, the blocks, and the modulated output head.
//!
//! Token order is that of the reference: latent `[B, C, F, H, W]` cut into (1, 2, 2) patches,
//! token s = (f·H' + h)·W' + w. Timesteps are on the scheduler's 0..1000 scale.

mod block;
pub mod rope;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Linear, Module, VarBuilder};
use serde::Deserialize;

use crate::error::{Result, WanError};

pub use block::layer_norm;

/// `transformer/config.json` (defaults are the diffusers class's, which describe the 14B).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct TransformerConfig {
    #[serde(default = "defaults::patch_size")]
    pub patch_size: [usize; 3],
    #[serde(default = "defaults::heads")]
    pub num_attention_heads: usize,
    #[serde(default = "defaults::head_dim")]
    pub attention_head_dim: usize,
    #[serde(default = "defaults::channels")]
    pub in_channels: usize,
    #[serde(default = "defaults::channels")]
    pub out_channels: usize,
    #[serde(default = "defaults::text_dim")]
    pub text_dim: usize,
    #[serde(default = "defaults::freq_dim")]
    pub freq_dim: usize,
    #[serde(default = "defaults::ffn_dim")]
    pub ffn_dim: usize,
    #[serde(default = "defaults::layers")]
    pub num_layers: usize,
    #[serde(default)]
    pub cross_attn_norm: bool,
    #[serde(default = "defaults::qk_norm")]
    pub qk_norm: Option<String>,
    #[serde(default = "defaults::eps")]
    pub eps: f64,
    #[serde(default)]
    pub image_dim: Option<usize>,
    #[serde(default)]
    pub added_kv_proj_dim: Option<usize>,
    #[serde(default = "defaults::rope_max_seq_len")]
    pub rope_max_seq_len: usize,
}

mod defaults {
    pub fn patch_size() -> [usize; 3] {
        [1, 2, 2]
    }
    pub fn heads() -> usize {
        40
    }
    pub fn head_dim() -> usize {
        128
    }
    pub fn channels() -> usize {
        16
    }
    pub fn text_dim() -> usize {
        4096
    }
    pub fn freq_dim() -> usize {
        256
    }
    pub fn ffn_dim() -> usize {
        13824
    }
    pub fn layers() -> usize {
        40
    }
    pub fn qk_norm() -> Option<String> {
        Some("rms_norm_across_heads".into())
    }
    pub fn eps() -> f64 {
        1e-6
    }
    pub fn rope_max_seq_len() -> usize {
        1024
    }
}

impl TransformerConfig {
    /// The published `Wan-AI/Wan2.1-T2V-1.3B-Diffusers` `transformer/config.json`.
    pub fn wan_2_1_1_3b() -> Self {
        Self {
            num_attention_heads: 12,
            ffn_dim: 8960,
            num_layers: 30,
            cross_attn_norm: true,
            ..Self::wan_2_1_14b()
        }
    }

    /// The published 14B T2V config (the class defaults, with the cross-attention norm).
    pub fn wan_2_1_14b() -> Self {
        Self {
            patch_size: defaults::patch_size(),
            num_attention_heads: 40,
            attention_head_dim: 128,
            in_channels: 16,
            out_channels: 16,
            text_dim: 4096,
            freq_dim: 256,
            ffn_dim: 13824,
            num_layers: 40,
            cross_attn_norm: true,
            qk_norm: defaults::qk_norm(),
            eps: 1e-6,
            image_dim: None,
            added_kv_proj_dim: None,
            rope_max_seq_len: 1024,
        }
    }

    pub fn dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// What this port implements: text-to-video with RMS-normed q/k; anything else is named.
    pub fn check(&self) -> Result<()> {
        let unsupported = |field: &str, reason: String| {
            Err(WanError::InvalidWeights(format!(
                "transformer/config.json: {field}: {reason}"
            )))
        };
        if self.image_dim.is_some() || self.added_kv_proj_dim.is_some() {
            return unsupported(
                "image_dim",
                "image-to-video transformers are not supported; use a T2V checkpoint".into(),
            );
        }
        if self.qk_norm.as_deref() != Some("rms_norm_across_heads") {
            return unsupported(
                "qk_norm",
                format!(
                    "{:?} is not supported; expected \"rms_norm_across_heads\"",
                    self.qk_norm
                ),
            );
        }
        if self.patch_size.contains(&0) {
            return unsupported("patch_size", "every patch side must be at least 1".into());
        }
        if self.num_attention_heads == 0
            || !self.attention_head_dim.is_multiple_of(2)
            || !self.freq_dim.is_multiple_of(2)
        {
            return unsupported(
                "num_attention_heads",
                "heads must be at least 1, and attention_head_dim and freq_dim even".into(),
            );
        }
        Ok(())
    }

    /// Parameters the config implies, counted as the reference's `state_dict` holds them.
    pub fn parameter_count(&self) -> u64 {
        let d = self.dim() as u64;
        let [pt, ph, pw] = self.patch_size.map(|p| p as u64);
        let patch = pt * ph * pw;
        let linear = |i: u64, o: u64| i * o + o;
        let attention = 4 * linear(d, d) + 2 * d;
        let block = 2 * attention
            + if self.cross_attn_norm { 2 * d } else { 0 }
            + linear(d, self.ffn_dim as u64)
            + linear(self.ffn_dim as u64, d)
            + 6 * d;
        self.in_channels as u64 * patch * d
            + d
            + linear(self.freq_dim as u64, d)
            + linear(d, d)
            + linear(d, 6 * d)
            + linear(self.text_dim as u64, d)
            + linear(d, d)
            + self.num_layers as u64 * block
            + linear(d, self.out_channels as u64 * patch)
            + 2 * d
    }
}

/// Text embeddings projected into the transformer's width, computed once per prompt and
/// reused at every step.
pub struct ProjectedText(Tensor);

pub struct WanTransformer {
    config: TransformerConfig,
    /// Patch embedding as a matrix `[dim, C·pt·ph·pw]` (the Conv3d with kernel = stride).
    patch_weight: Tensor,
    patch_bias: Tensor,
    time_1: Linear,
    time_2: Linear,
    time_proj: Linear,
    text_1: Linear,
    text_2: Linear,
    blocks: Vec<block::Block>,
    /// `[1, 2, dim]` f32: shift and scale of the output head.
    scale_shift_table: Tensor,
    proj_out: Linear,
    dtype: DType,
    device: Device,
    /// The RoPE tables of the last latent grid (every step of a clip uses the same).
    rope: std::sync::Mutex<Option<([usize; 3], Tensor, Tensor)>>,
}

impl WanTransformer {
    pub fn new(config: &TransformerConfig, vb: VarBuilder) -> Result<Self> {
        config.check()?;
        let d = config.dim();
        let [pt, ph, pw] = config.patch_size;
        let patch = config.in_channels * pt * ph * pw;
        let f32_vb = vb.clone().set_dtype(DType::F32);
        let patch_weight = vb
            .pp("patch_embedding")
            .get((d, config.in_channels, pt, ph, pw), "weight")?
            .reshape((d, patch))?;
        let cond = vb.pp("condition_embedder");
        let time = f32_vb.pp("condition_embedder.time_embedder");
        let blocks = (0..config.num_layers)
            .map(|i| {
                block::Block::new(
                    d,
                    config.ffn_dim,
                    config.num_attention_heads,
                    config.cross_attn_norm,
                    config.eps,
                    vb.pp(format!("blocks.{i}")),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch_weight,
            patch_bias: vb.pp("patch_embedding").get(d, "bias")?,
            time_1: candle_nn::linear(config.freq_dim, d, time.pp("linear_1"))?,
            time_2: candle_nn::linear(d, d, time.pp("linear_2"))?,
            time_proj: candle_nn::linear(d, 6 * d, cond.pp("time_proj"))?,
            text_1: candle_nn::linear(config.text_dim, d, cond.pp("text_embedder.linear_1"))?,
            text_2: candle_nn::linear(d, d, cond.pp("text_embedder.linear_2"))?,
            blocks,
            scale_shift_table: f32_vb.get((1, 2, d), "scale_shift_table")?,
            proj_out: candle_nn::linear(d, config.out_channels * pt * ph * pw, vb.pp("proj_out"))?,
            dtype: vb.dtype(),
            device: vb.device().clone(),
            config: config.clone(),
            rope: std::sync::Mutex::new(None),
        })
    }

    pub fn config(&self) -> &TransformerConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The compute dtype of the projections.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// `context` `[B, L, text_dim]` (the text encoder's embeddings, padded rows included).
    pub fn project_text(&self, context: &Tensor) -> Result<ProjectedText> {
        let x = self
            .text_1
            .forward(&context.to_dtype(self.dtype)?)?
            .gelu()?;
        Ok(ProjectedText(self.text_2.forward(&x)?))
    }

    /// The velocity for `latents` `[B, C, F, H, W]` at `timestep` `[B]` (0..1000 scale), as f32.
    pub fn forward(&self, latents: &Tensor, timestep: &Tensor, context: &Tensor) -> Result<Tensor> {
        self.forward_projected(latents, timestep, &self.project_text(context)?)
    }

    pub fn forward_projected(
        &self,
        latents: &Tensor,
        timestep: &Tensor,
        text: &ProjectedText,
    ) -> Result<Tensor> {
        let (batch, channels, frames, height, width) = latents.dims5()?;
        let [pt, ph, pw] = self.config.patch_size;
        if channels != self.config.in_channels
            || frames % pt != 0
            || height % ph != 0
            || width % pw != 0
        {
            return Err(WanError::InvalidRequest(format!(
                "latent {:?} does not fit the transformer ({} channels, patches {:?})",
                latents.dims(),
                self.config.in_channels,
                self.config.patch_size
            )));
        }
        let grid = [frames / pt, height / ph, width / pw];
        let tokens = grid.iter().product::<usize>();
        let d = self.config.dim();

        let patches = latents
            .to_dtype(self.dtype)?
            .reshape(&[batch, channels, grid[0], pt, grid[1], ph, grid[2], pw][..])?
            .permute(vec![0, 2, 4, 6, 1, 3, 5, 7])?
            .contiguous()?
            .reshape((batch, tokens, channels * pt * ph * pw))?;
        let x = patches
            .broadcast_matmul(&self.patch_weight.t()?)?
            .broadcast_add(&self.patch_bias)?
            .to_dtype(DType::F32)?;

        let temb = self.time_embedding(timestep)?;
        let time = self
            .time_proj
            .forward(&candle_nn::ops::silu(&temb.to_dtype(self.dtype)?)?)?
            .to_dtype(DType::F32)?
            .reshape((batch, 6, d))?;
        let (cos, sin) = self.rope_tables(grid)?;
        let mut x = x;
        for block in &self.blocks {
            x = block.forward(&x, &text.0, &time, (&cos, &sin))?;
        }

        let table = self.scale_shift_table.broadcast_add(&temb.unsqueeze(1)?)?;
        let (shift, scale) = (table.narrow(1, 0, 1)?, table.narrow(1, 1, 1)?);
        let y = block::modulate(&x, &shift, &scale, self.config.eps)?.to_dtype(self.dtype)?;
        let y = self.proj_out.forward(&y)?.to_dtype(DType::F32)?;
        let out = self.config.out_channels;
        Ok(
            y.reshape(&[batch, grid[0], grid[1], grid[2], pt, ph, pw, out][..])?
                .permute(vec![0, 7, 1, 4, 2, 5, 3, 6])?
                .contiguous()?
                .reshape((batch, out, frames, height, width))?,
        )
    }

    fn rope_tables(&self, grid: [usize; 3]) -> Result<(Tensor, Tensor)> {
        let mut cached = self
            .rope
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((at, cos, sin)) = cached.as_ref()
            && *at == grid
        {
            return Ok((cos.clone(), sin.clone()));
        }
        let (cos, sin) = rope::tables(self.config.attention_head_dim, grid, &self.device)?;
        *cached = Some((grid, cos.clone(), sin.clone()));
        Ok((cos, sin))
    }

    /// `time_embedder(sinusoid(t))` in f32, `[B, dim]`; the sinusoid puts cosines first.
    fn time_embedding(&self, timestep: &Tensor) -> Result<Tensor> {
        let half = self.config.freq_dim / 2;
        let freqs: Vec<f32> = (0..half)
            .map(|k| (-(10_000f32.ln()) * k as f32 / half as f32).exp())
            .collect();
        let freqs = Tensor::from_vec(freqs, (1, half), &self.device)?;
        let args = timestep
            .to_dtype(DType::F32)?
            .to_device(&self.device)?
            .unsqueeze(1)?
            .broadcast_mul(&freqs)?;
        let embedding = Tensor::cat(&[args.cos()?, args.sin()?], 1)?;
        let hidden = candle_nn::ops::silu(&self.time_1.forward(&embedding)?)?;
        Ok(self.time_2.forward(&hidden)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_configs_count_their_parameters() {
        assert_eq!(
            TransformerConfig::wan_2_1_1_3b().parameter_count(),
            1_418_996_800
        );
    }

    #[test]
    fn image_to_video_and_other_norms_are_refused_by_name() {
        let mut config = TransformerConfig::wan_2_1_1_3b();
        config.image_dim = Some(1280);
        assert!(
            config
                .check()
                .unwrap_err()
                .to_string()
                .contains("image-to-video")
        );
        let mut config = TransformerConfig::wan_2_1_1_3b();
        config.qk_norm = None;
        assert!(config.check().unwrap_err().to_string().contains("qk_norm"));
    }
}
