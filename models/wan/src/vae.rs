//! `AutoencoderKLWan` (the Wan 2.1 causal 3D VAE): chunked causal encoding to the posterior mean, frame-by-frame cached decoding, diffusers' tiled decode, and the pipeline's latent (de)normalisation.
//!
//! Public tensors are channels-first like diffusers (`[B, C, T, H, W]`); inside, activations
//! are frames-major (`[B, T, C, H, W]`, see [`conv3d`]). Encoding runs the first frame alone
//! and then 4 frames at a time; decoding runs one latent frame at a time, so at most the
//! feature cache (two frames per conv site) and one latent frame's activations are alive.

pub mod blocks;
pub mod coders;
pub mod conv3d;
pub mod im2col;
#[cfg(test)]
mod tests;
pub mod tiling;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::error::{Result, WanError};
use coders::{Decoder, Encoder};
use conv3d::{CausalConv3d, FeatCache};
pub use tiling::Tiling;

/// Spatial compression of the published Wan 2.1 VAE (pixels per latent pixel).
pub const SPATIAL_STRIDE: usize = 8;
/// Temporal compression: latent frame `t > 0` covers video frames `4t-3 ..= 4t`.
pub const TEMPORAL_STRIDE: usize = 4;
/// Video frames per encoder chunk after the first frame (diffusers' `_encode`).
const ENCODE_CHUNK: usize = 4;

/// `vae/config.json`; absent keys take `AutoencoderKLWan.__init__`'s defaults.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct VaeConfig {
    pub base_dim: usize,
    pub decoder_base_dim: Option<usize>,
    pub z_dim: usize,
    pub dim_mult: Vec<usize>,
    pub num_res_blocks: usize,
    pub attn_scales: Vec<f64>,
    pub temperal_downsample: Vec<bool>,
    pub dropout: f64,
    pub latents_mean: Vec<f64>,
    pub latents_std: Vec<f64>,
    /// Wan 2.2's residual VAE; refused.
    pub is_residual: bool,
    pub in_channels: usize,
    pub out_channels: usize,
    /// Wan 2.2 patchification; refused unless null or 1.
    pub patch_size: Option<usize>,
    pub scale_factor_temporal: Option<usize>,
    pub scale_factor_spatial: Option<usize>,
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self {
            base_dim: 96,
            decoder_base_dim: None,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            attn_scales: vec![],
            temperal_downsample: vec![false, true, true],
            dropout: 0.0,
            latents_mean: vec![
                -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134,
                -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
            ],
            latents_std: vec![
                2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526,
                2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916,
            ],
            is_residual: false,
            in_channels: 3,
            out_channels: 3,
            patch_size: None,
            scale_factor_temporal: Some(4),
            scale_factor_spatial: Some(8),
        }
    }
}

impl VaeConfig {
    /// Pixels per latent pixel: one halving per level but the last.
    pub fn spatial_stride(&self) -> usize {
        1 << self.dim_mult.len().saturating_sub(1)
    }

    /// Video frames per latent frame after the first.
    pub fn temporal_stride(&self) -> usize {
        let levels = self.dim_mult.len().saturating_sub(1);
        1 << self
            .temperal_downsample
            .iter()
            .take(levels)
            .filter(|&&t| t)
            .count()
    }

    fn check(&self) -> Result<()> {
        let refuse =
            |reason: String| Err(WanError::InvalidWeights(format!("vae config: {reason}")));
        if self.is_residual || self.patch_size.is_some_and(|p| p != 1) {
            return refuse("the Wan 2.2 residual/patchified VAE is not supported".into());
        }
        if self.dim_mult.is_empty() || self.base_dim == 0 || self.z_dim == 0 {
            return refuse("base_dim, z_dim and dim_mult must be non-empty".into());
        }
        if self.temperal_downsample.len() + 1 < self.dim_mult.len() {
            return refuse(format!(
                "temperal_downsample has {} entries for {} levels",
                self.temperal_downsample.len(),
                self.dim_mult.len()
            ));
        }
        if self.latents_mean.len() != self.z_dim || self.latents_std.len() != self.z_dim {
            return refuse(format!(
                "latents_mean/latents_std have {}/{} entries, z_dim is {}",
                self.latents_mean.len(),
                self.latents_std.len(),
                self.z_dim
            ));
        }
        let spatial = self.spatial_stride();
        if self.scale_factor_spatial.is_some_and(|s| s != spatial) {
            return refuse(format!(
                "scale_factor_spatial {:?}, the layers give {spatial}",
                self.scale_factor_spatial
            ));
        }
        let temporal = self.temporal_stride();
        if self.scale_factor_temporal.is_some_and(|s| s != temporal) {
            return refuse(format!(
                "scale_factor_temporal {:?}, the layers give {temporal}",
                self.scale_factor_temporal
            ));
        }
        Ok(())
    }
}

/// The Wan 2.1 VAE. Tensor names under `encoder.`, `decoder.`, `quant_conv.`,
/// `post_quant_conv.` as in `vae/diffusion_pytorch_model.safetensors`.
#[derive(Clone, Debug)]
pub struct WanVae {
    config: VaeConfig,
    encoder: Option<Encoder>,
    decoder: Decoder,
    quant_conv: Option<CausalConv3d>,
    post_quant_conv: CausalConv3d,
    /// `[1, z, 1, 1, 1]`, the compute dtype.
    latents_mean: Tensor,
    /// `1 / latents_std` (f32 as torch computes it), `[1, z, 1, 1, 1]`.
    latents_inv_std: Tensor,
    dtype: DType,
    device: Device,
}

impl WanVae {
    /// Computes in `vb`'s dtype on `vb`'s device (the published VAE runs in f32).
    pub fn new(config: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        Self::build(config, vb, true)
    }

    /// Without the encoder (text-to-video only decodes): about half the weights.
    pub fn new_decoder_only(config: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        Self::build(config, vb, false)
    }

    fn build(config: &VaeConfig, vb: VarBuilder, with_encoder: bool) -> Result<Self> {
        config.check()?;
        let z = config.z_dim;
        let (encoder, quant_conv) = if with_encoder {
            (
                Some(Encoder::new(vb.pp("encoder"), config)?),
                Some(CausalConv3d::new(
                    vb.pp("quant_conv"),
                    2 * z,
                    2 * z,
                    (1, 1, 1),
                    1,
                    (0, 0, 0),
                )?),
            )
        } else {
            (None, None)
        };
        let device = vb.device().clone();
        let dtype = vb.dtype();
        let per_channel = |values: Vec<f32>| -> Result<Tensor> {
            Ok(Tensor::from_vec(values, (1, z, 1, 1, 1), &device)?.to_dtype(dtype)?)
        };
        let latents_mean = per_channel(config.latents_mean.iter().map(|&m| m as f32).collect())?;
        let latents_inv_std =
            per_channel(config.latents_std.iter().map(|&s| 1.0 / s as f32).collect())?;
        Ok(Self {
            config: config.clone(),
            encoder,
            decoder: Decoder::new(vb.pp("decoder"), config)?,
            quant_conv,
            post_quant_conv: CausalConv3d::new(
                vb.pp("post_quant_conv"),
                z,
                z,
                (1, 1, 1),
                1,
                (0, 0, 0),
            )?,
            latents_mean,
            latents_inv_std,
            dtype,
            device,
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Pixels per latent pixel (8).
    pub fn spatial_stride(&self) -> usize {
        self.config.spatial_stride()
    }

    /// Video frames per latent frame after the first (4).
    pub fn temporal_stride(&self) -> usize {
        self.config.temporal_stride()
    }

    /// Latent frames for `frames` video frames (`1 + (frames - 1) / 4`).
    pub fn latent_frames(&self, frames: usize) -> usize {
        1 + frames.saturating_sub(1) / self.temporal_stride()
    }

    /// Video frames decoded from `latent_frames` (`1 + 4 (T - 1)`).
    pub fn video_frames(&self, latent_frames: usize) -> usize {
        1 + latent_frames.saturating_sub(1) * self.temporal_stride()
    }

    /// `video` `[B, 3, F, H, W]` in [-1, 1], `F = 1 + 4k`, to the posterior mean
    /// `[B, z, 1 + k, H/8, W/8]` (un-normalised): the first frame alone, then 4 frames at a
    /// time through the encoder with its cache, then `quant_conv`; the mean is its first z
    /// channels.
    pub fn encode(&self, video: &Tensor) -> Result<Tensor> {
        let (Some(encoder), Some(quant_conv)) = (&self.encoder, &self.quant_conv) else {
            return Err(WanError::InvalidRequest(
                "this VAE was loaded without its encoder".into(),
            ));
        };
        let (_, channels, frames, _, _) = video.dims5()?;
        if channels != self.config.in_channels || frames == 0 || (frames - 1) % ENCODE_CHUNK != 0 {
            return Err(WanError::InvalidRequest(format!(
                "encode takes [B, {}, 1 + 4k, H, W] video, got {:?}",
                self.config.in_channels,
                video.dims()
            )));
        }
        let x = self.frames_major(video)?;
        let mut cache = FeatCache::new();
        let mut outs = Vec::with_capacity(1 + (frames - 1) / ENCODE_CHUNK);
        let chunks = std::iter::once((0, 1)).chain(
            (1..frames)
                .step_by(ENCODE_CHUNK)
                .map(|start| (start, ENCODE_CHUNK)),
        );
        for (start, len) in chunks {
            cache.start_chunk();
            outs.push(encoder.forward(&x.narrow(1, start, len)?, &mut cache)?);
        }
        drop(cache);
        let h = quant_conv.forward(&Tensor::cat(&outs, 1)?, None)?;
        let mean = h.narrow(2, 0, self.config.z_dim)?;
        Ok(mean.permute((0, 2, 1, 3, 4))?.contiguous()?)
    }

    /// `latent` `[B, z, T, h, w]` (un-normalised) to video `[B, 3, 1 + 4 (T - 1), 8h, 8w]`
    /// clamped to [-1, 1], one latent frame at a time.
    pub fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        let mut chunks = Vec::new();
        self.decode_streaming(latent, |frames| {
            chunks.push(frames);
            Ok(())
        })?;
        Ok(Tensor::cat(&chunks, 2)?)
    }

    /// The cached decode, handing each latent frame's video frames (`[B, 3, t, H, W]`, 1 for
    /// the first latent frame and 4 after, clamped) to `sink` as soon as they exist; an error
    /// from `sink` (e.g. `WanError::Cancelled`) stops the decode.
    pub fn decode_streaming(
        &self,
        latent: &Tensor,
        mut sink: impl FnMut(Tensor) -> Result<()>,
    ) -> Result<()> {
        let z = self.latent_frames_major(latent)?;
        let x = self.post_quant_conv.forward(&z, None)?;
        let mut cache = FeatCache::new();
        for i in 0..x.dim(1)? {
            cache.start_chunk();
            let frames = self.decoder.forward(&x.narrow(1, i, 1)?, &mut cache)?;
            sink(
                frames
                    .clamp(-1f32, 1f32)?
                    .permute((0, 2, 1, 3, 4))?
                    .contiguous()?,
            )?;
        }
        Ok(())
    }

    /// diffusers' `tiled_decode` (`enable_tiling` with `tiling`'s sizes): used when the latent
    /// is wider or taller than one tile, otherwise the same as [`WanVae::decode`].
    pub fn decode_tiled(&self, latent: &Tensor, tiling: &Tiling) -> Result<Tensor> {
        let (_, _, _, h, w) = latent.dims5()?;
        if !tiling.applies(h, w, self.spatial_stride()) {
            return self.decode(latent);
        }
        let z = self.latent_frames_major(latent)?;
        let out = tiling::decode_tiles(self, &z, tiling)?;
        Ok(out
            .clamp(-1f32, 1f32)?
            .permute((0, 2, 1, 3, 4))?
            .contiguous()?)
    }

    /// `(z - mean) * (1 / std)` per channel, as the Wan pipelines normalise encoded latents.
    pub fn normalize(&self, z: &Tensor) -> Result<Tensor> {
        let z = self.checked_latent(z)?;
        Ok(z.broadcast_sub(&self.latents_mean)?
            .broadcast_mul(&self.latents_inv_std)?)
    }

    /// `z / (1 / std) + mean` per channel, as `WanPipeline` does before decoding.
    pub fn denormalize(&self, z: &Tensor) -> Result<Tensor> {
        let z = self.checked_latent(z)?;
        Ok(z.broadcast_div(&self.latents_inv_std)?
            .broadcast_add(&self.latents_mean)?)
    }

    /// Unclamped frames-major decode of a frames-major latent, with a fresh cache.
    pub(crate) fn decode_raw(&self, z: &Tensor) -> Result<Tensor> {
        let x = self.post_quant_conv.forward(z, None)?;
        let mut cache = FeatCache::new();
        let mut outs = Vec::with_capacity(x.dim(1)?);
        for i in 0..x.dim(1)? {
            cache.start_chunk();
            outs.push(self.decoder.forward(&x.narrow(1, i, 1)?, &mut cache)?);
        }
        Ok(Tensor::cat(&outs, 1)?)
    }

    fn checked_latent(&self, z: &Tensor) -> Result<Tensor> {
        let (_, channels, frames, _, _) = z.dims5()?;
        if channels != self.config.z_dim || frames == 0 {
            return Err(WanError::InvalidRequest(format!(
                "latent must be [B, {}, T, h, w], got {:?}",
                self.config.z_dim,
                z.dims()
            )));
        }
        Ok(z.to_device(&self.device)?.to_dtype(self.dtype)?)
    }

    fn latent_frames_major(&self, latent: &Tensor) -> Result<Tensor> {
        let z = self.checked_latent(latent)?;
        Ok(z.permute((0, 2, 1, 3, 4))?.contiguous()?)
    }

    fn frames_major(&self, video: &Tensor) -> Result<Tensor> {
        let x = video.to_device(&self.device)?.to_dtype(self.dtype)?;
        Ok(x.permute((0, 2, 1, 3, 4))?.contiguous()?)
    }
}
