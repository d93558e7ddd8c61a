//! `WanEncoder3d` and `WanDecoder3d`: the layer lists of the Wan 2.1 VAE (tensor names as in diffusers) and one chunk's pass through them with the shared feature cache.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::VaeConfig;
use super::blocks::{AttentionBlock, MidBlock, Resample, ResampleMode, ResidualBlock, RmsNorm};
use super::conv3d::{CausalConv3d, FeatCache};
use crate::error::Result;

#[derive(Clone, Debug)]
enum DownLayer {
    Residual(ResidualBlock),
    Attention(AttentionBlock),
    Resample(Resample),
}

/// `encoder.*`: conv_in, the flat `down_blocks` list, mid block, RMS + SiLU, conv_out
/// (2 * z_dim channels: mean and log-variance).
#[derive(Clone, Debug)]
pub struct Encoder {
    conv_in: CausalConv3d,
    down_blocks: Vec<DownLayer>,
    mid_block: MidBlock,
    norm_out: RmsNorm,
    conv_out: CausalConv3d,
}

impl Encoder {
    pub fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        let dim = config.base_dim;
        let dims: Vec<usize> = std::iter::once(1)
            .chain(config.dim_mult.iter().copied())
            .map(|m| dim * m)
            .collect();
        let conv_in = CausalConv3d::new(
            vb.pp("conv_in"),
            config.in_channels,
            dims[0],
            (3, 3, 3),
            1,
            (1, 1, 1),
        )?;
        let mut down_blocks = Vec::new();
        let mut scale = 1.0f64;
        let levels = config.dim_mult.len();
        let vb_down = vb.pp("down_blocks");
        for i in 0..levels {
            let (mut in_dim, out_dim) = (dims[i], dims[i + 1]);
            for _ in 0..config.num_res_blocks {
                let vb = vb_down.pp(down_blocks.len());
                down_blocks.push(DownLayer::Residual(ResidualBlock::new(
                    vb, in_dim, out_dim,
                )?));
                if config.attn_scales.contains(&scale) {
                    let vb = vb_down.pp(down_blocks.len());
                    down_blocks.push(DownLayer::Attention(AttentionBlock::new(vb, out_dim)?));
                }
                in_dim = out_dim;
            }
            if i + 1 != levels {
                let mode = if config.temperal_downsample.get(i).copied().unwrap_or(false) {
                    ResampleMode::Downsample3d
                } else {
                    ResampleMode::Downsample2d
                };
                let vb = vb_down.pp(down_blocks.len());
                down_blocks.push(DownLayer::Resample(Resample::new(vb, out_dim, mode)?));
                scale /= 2.0;
            }
        }
        let top = dims[levels];
        Ok(Self {
            conv_in,
            down_blocks,
            mid_block: MidBlock::new(vb.pp("mid_block"), top)?,
            norm_out: RmsNorm::new(vb.pp("norm_out"), top, false)?,
            conv_out: CausalConv3d::new(
                vb.pp("conv_out"),
                top,
                2 * config.z_dim,
                (3, 3, 3),
                1,
                (1, 1, 1),
            )?,
        })
    }

    /// One chunk `[B, T, C, H, W]` (frames-major); `cache.start_chunk()` is the caller's.
    pub fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let mut x = self.conv_in.forward_cached(x, cache)?;
        for layer in &self.down_blocks {
            x = match layer {
                DownLayer::Residual(block) => block.forward(&x, cache)?,
                DownLayer::Attention(block) => block.forward(&x)?,
                DownLayer::Resample(block) => block.forward(&x, cache)?,
            };
        }
        let x = self.mid_block.forward(&x, cache)?;
        let x = self.norm_out.forward(&x, 2)?.silu()?;
        self.conv_out.forward_cached(&x, cache)
    }
}

#[derive(Clone, Debug)]
struct UpBlock {
    resnets: Vec<ResidualBlock>,
    upsampler: Option<Resample>,
}

/// `decoder.*`: conv_in, mid block, `up_blocks.{i}` (resnets + an optional upsampler),
/// RMS + SiLU, conv_out.
#[derive(Clone, Debug)]
pub struct Decoder {
    conv_in: CausalConv3d,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    norm_out: RmsNorm,
    conv_out: CausalConv3d,
}

impl Decoder {
    pub fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        let dim = config.decoder_base_dim.unwrap_or(config.base_dim);
        let top = *config.dim_mult.last().unwrap_or(&1);
        let dims: Vec<usize> = std::iter::once(top)
            .chain(config.dim_mult.iter().rev().copied())
            .map(|m| dim * m)
            .collect();
        let levels = config.dim_mult.len();
        let temperal_upsample: Vec<bool> =
            config.temperal_downsample.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(levels);
        for i in 0..levels {
            let vb = vb.pp("up_blocks").pp(i);
            let out_dim = dims[i + 1];
            // Each upsampler halves the channels, so later blocks take half the listed width.
            let mut in_dim = if i > 0 { dims[i] / 2 } else { dims[i] };
            let mut resnets = Vec::with_capacity(config.num_res_blocks + 1);
            for j in 0..=config.num_res_blocks {
                resnets.push(ResidualBlock::new(vb.pp("resnets").pp(j), in_dim, out_dim)?);
                in_dim = out_dim;
            }
            let upsampler = if i + 1 != levels {
                let mode = if temperal_upsample.get(i).copied().unwrap_or(false) {
                    ResampleMode::Upsample3d
                } else {
                    ResampleMode::Upsample2d
                };
                Some(Resample::new(vb.pp("upsamplers.0"), out_dim, mode)?)
            } else {
                None
            };
            up_blocks.push(UpBlock { resnets, upsampler });
        }
        let out_dim = dims[levels];
        Ok(Self {
            conv_in: CausalConv3d::new(
                vb.pp("conv_in"),
                config.z_dim,
                dims[0],
                (3, 3, 3),
                1,
                (1, 1, 1),
            )?,
            mid_block: MidBlock::new(vb.pp("mid_block"), dims[0])?,
            up_blocks,
            norm_out: RmsNorm::new(vb.pp("norm_out"), out_dim, false)?,
            conv_out: CausalConv3d::new(
                vb.pp("conv_out"),
                out_dim,
                config.out_channels,
                (3, 3, 3),
                1,
                (1, 1, 1),
            )?,
        })
    }

    /// One chunk (one latent frame in diffusers' loop), frames-major.
    pub fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let x = self.conv_in.forward_cached(x, cache)?;
        let mut x = self.mid_block.forward(&x, cache)?;
        for block in &self.up_blocks {
            for resnet in &block.resnets {
                x = resnet.forward(&x, cache)?;
            }
            if let Some(upsampler) = &block.upsampler {
                x = upsampler.forward(&x, cache)?;
            }
        }
        let x = self.norm_out.forward(&x, 2)?.silu()?;
        self.conv_out.forward_cached(&x, cache)
    }
}
