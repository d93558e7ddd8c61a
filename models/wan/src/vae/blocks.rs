//! The VAE's building blocks (channel RMS norm, residual block, single-head spatial attention, the four resamplers) on frames-major `[B, T, C, H, W]` activations, with the diffusers cache semantics of each site.

use candle_core::{D, DType, Tensor};
use candle_nn::VarBuilder;

use super::conv3d::{CausalConv3d, FeatCache, Slot, carry_frames};
use super::im2col::Conv2d;
use crate::error::{Result, WanError};

/// `WanRMS_norm` without bias: `x / max(||x||_2 over channels, 1e-12) * sqrt(C) * gamma`.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    /// `gamma * sqrt(C)`, shape `[C]`.
    gain: Tensor,
}

impl RmsNorm {
    /// `gamma` is stored `[C,1,1,1]` (5-D use) or `[C,1,1]` (attention); both are read as `[C]`.
    pub fn new(vb: VarBuilder, channels: usize, images: bool) -> Result<Self> {
        let gamma = if images {
            vb.get((channels, 1, 1), "gamma")?
        } else {
            vb.get((channels, 1, 1, 1), "gamma")?
        };
        let gain = (gamma.flatten_all()? * (channels as f64).sqrt())?;
        Ok(Self { gain })
    }

    /// Normalises over dimension `channel_dim`, the gain broadcast along it. Half-precision
    /// inputs are normalised in f32 and rounded back before the gain, as diffusers does.
    pub fn forward(&self, x: &Tensor, channel_dim: usize) -> Result<Tensor> {
        let dtype = x.dtype();
        let half = matches!(dtype, DType::BF16 | DType::F16);
        let xf = if half {
            x.to_dtype(DType::F32)?
        } else {
            x.clone()
        };
        let norm = xf.sqr()?.sum_keepdim(channel_dim)?.sqrt()?.maximum(1e-12)?;
        let normalized = xf.broadcast_div(&norm)?.to_dtype(dtype)?;
        let mut shape = vec![1; x.rank()];
        shape[channel_dim] = self.gain.elem_count();
        let gain = self.gain.reshape(shape)?;
        Ok(normalized.broadcast_mul(&gain)?)
    }
}

/// `WanResidualBlock`: RMS, SiLU, causal conv, RMS, SiLU, causal conv, plus the (1x1x1 conv)
/// shortcut. Both convs are cache sites.
#[derive(Clone, Debug)]
pub struct ResidualBlock {
    norm1: RmsNorm,
    conv1: CausalConv3d,
    norm2: RmsNorm,
    conv2: CausalConv3d,
    shortcut: Option<CausalConv3d>,
}

impl ResidualBlock {
    pub fn new(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        let shortcut = if in_dim != out_dim {
            Some(CausalConv3d::new(
                vb.pp("conv_shortcut"),
                in_dim,
                out_dim,
                (1, 1, 1),
                1,
                (0, 0, 0),
            )?)
        } else {
            None
        };
        Ok(Self {
            norm1: RmsNorm::new(vb.pp("norm1"), in_dim, false)?,
            conv1: CausalConv3d::new(vb.pp("conv1"), in_dim, out_dim, (3, 3, 3), 1, (1, 1, 1))?,
            norm2: RmsNorm::new(vb.pp("norm2"), out_dim, false)?,
            conv2: CausalConv3d::new(vb.pp("conv2"), out_dim, out_dim, (3, 3, 3), 1, (1, 1, 1))?,
            shortcut,
        })
    }

    pub fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let h = match &self.shortcut {
            Some(conv) => conv.forward(x, None)?,
            None => x.clone(),
        };
        let y = self.norm1.forward(x, 2)?.silu()?;
        let y = self.conv1.forward_cached(&y, cache)?;
        let y = self.norm2.forward(&y, 2)?.silu()?;
        let y = self.conv2.forward_cached(&y, cache)?;
        Ok((y + h)?)
    }
}

/// Above this many score elements per call (`frames * queries * keys`), attention is done in
/// blocks of queries.
const ATTENTION_SCORE_BUDGET: usize = 1 << 26;

/// `WanAttentionBlock`: single-head self-attention over the pixels of each frame.
#[derive(Clone, Debug)]
pub struct AttentionBlock {
    norm: RmsNorm,
    to_qkv: Conv2d,
    proj: Conv2d,
    channels: usize,
}

impl AttentionBlock {
    pub fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        Ok(Self {
            norm: RmsNorm::new(vb.pp("norm"), channels, true)?,
            to_qkv: Conv2d::new(vb.pp("to_qkv"), channels, 3 * channels, 1, 0, 1)?,
            proj: Conv2d::new(vb.pp("proj"), channels, channels, 1, 0, 1)?,
            channels,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, c, h, w) = x.dims5()?;
        let (n, hw) = (b * t, h * w);
        let frames = x.reshape((n, c, h, w))?;
        let qkv = self.to_qkv.forward(&self.norm.forward(&frames, 1)?)?;
        let qkv = qkv.reshape((n, 3 * c, hw))?;
        // q^T as [n, hw, c]; k and v as [n, c, hw].
        let q = qkv.narrow(1, 0, c)?.transpose(1, 2)?.contiguous()?;
        let k = qkv.narrow(1, c, c)?.contiguous()?;
        let v = qkv.narrow(1, 2 * c, c)?.contiguous()?;
        let scale = 1.0 / (self.channels as f64).sqrt();
        let block = (ATTENTION_SCORE_BUDGET / (n * hw).max(1)).clamp(1, hw);
        let mut outs = Vec::with_capacity(hw.div_ceil(block));
        for start in (0..hw).step_by(block) {
            let len = block.min(hw - start);
            let scores = (q.narrow(1, start, len)?.matmul(&k)? * scale)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            // [n, c, hw] x [n, hw, len] -> [n, c, len]
            outs.push(v.matmul(&probs.transpose(1, 2)?)?);
        }
        let o = if outs.len() == 1 {
            outs.pop().expect("one block")
        } else {
            Tensor::cat(&outs, 2)?
        };
        let o = self.proj.forward(&o.reshape((n, c, h, w))?)?;
        Ok((o.reshape((b, t, c, h, w))? + x)?)
    }
}

/// Which `WanResample` this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResampleMode {
    Upsample2d,
    Upsample3d,
    Downsample2d,
    Downsample3d,
}

/// `WanResample`: a per-frame spatial x2 up/down step, and for the 3d modes a temporal
/// `time_conv` driven by the feature cache.
#[derive(Clone, Debug)]
pub struct Resample {
    mode: ResampleMode,
    conv: Conv2d,
    time_conv: Option<CausalConv3d>,
}

impl Resample {
    pub fn new(vb: VarBuilder, dim: usize, mode: ResampleMode) -> Result<Self> {
        let (conv, time_conv) = match mode {
            ResampleMode::Upsample2d | ResampleMode::Upsample3d => {
                let conv = Conv2d::new(vb.pp("resample.1"), dim, dim / 2, 3, 1, 1)?;
                let time_conv = (mode == ResampleMode::Upsample3d)
                    .then(|| {
                        CausalConv3d::new(vb.pp("time_conv"), dim, 2 * dim, (3, 1, 1), 1, (1, 0, 0))
                    })
                    .transpose()?;
                (conv, time_conv)
            }
            ResampleMode::Downsample2d | ResampleMode::Downsample3d => {
                let conv = Conv2d::new(vb.pp("resample.1"), dim, dim, 3, 0, 2)?;
                let time_conv = (mode == ResampleMode::Downsample3d)
                    .then(|| {
                        CausalConv3d::new(vb.pp("time_conv"), dim, dim, (3, 1, 1), 2, (0, 0, 0))
                    })
                    .transpose()?;
                (conv, time_conv)
            }
        };
        Ok(Self {
            mode,
            conv,
            time_conv,
        })
    }

    pub fn mode(&self) -> ResampleMode {
        self.mode
    }

    pub fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let mut x = x.clone();
        if let (ResampleMode::Upsample3d, Some(time_conv)) = (self.mode, &self.time_conv) {
            x = upsample_in_time(time_conv, &x, cache)?;
        }
        let (b, t, c, h, w) = x.dims5()?;
        let frames = x.reshape((b * t, c, h, w))?;
        let y = match self.mode {
            ResampleMode::Upsample2d | ResampleMode::Upsample3d => self
                .conv
                .forward(&frames.upsample_nearest2d(2 * h, 2 * w)?)?,
            ResampleMode::Downsample2d | ResampleMode::Downsample3d => {
                // ZeroPad2d((0, 1, 0, 1)): one column right, one row at the bottom.
                let padded =
                    frames
                        .pad_with_zeros(D::Minus1, 0, 1)?
                        .pad_with_zeros(D::Minus2, 0, 1)?;
                self.conv.forward(&padded)?
            }
        };
        let (_, co, ho, wo) = y.dims4()?;
        let y = y.reshape((b, t, co, ho, wo))?;
        match (self.mode, &self.time_conv) {
            (ResampleMode::Downsample3d, Some(time_conv)) => {
                downsample_in_time(time_conv, &y, cache)
            }
            _ => Ok(y),
        }
    }
}

/// `upsample3d`'s temporal step: the first chunk passes through (the site becomes `Rep`);
/// later chunks run `time_conv` (2x channels) with the carried frames (zeros behind the
/// first chunk after `Rep`) and interleave the two channel halves into 2x frames.
fn upsample_in_time(time_conv: &CausalConv3d, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
    let slot = cache.next_slot();
    let (y, keep) = match slot {
        Slot::Empty => {
            *slot = Slot::Rep;
            return Ok(x.clone());
        }
        Slot::Rep => {
            let mut keep = carry_frames(x, None)?;
            if keep.dim(1)? < 2 {
                keep = Tensor::cat(&[&keep.zeros_like()?, &keep], 1)?;
            }
            (time_conv.forward(x, None)?, keep)
        }
        Slot::Frames(previous) => {
            let keep = carry_frames(x, Some(previous))?;
            (time_conv.forward(x, Some(previous))?, keep)
        }
    };
    *slot = Slot::Frames(keep);
    let (b, t, c2, h, w) = y.dims5()?;
    // [B, T, 2C, H, W] -> [B, T, 2, C, H, W] -> [B, 2T, C, H, W]: frame 2t holds channels
    // 0..C of step t, frame 2t+1 channels C..2C.
    Ok(y.reshape((b, 2 * t, c2 / 2, h, w))?)
}

/// `downsample3d`'s temporal step: the first chunk's frames are remembered and pass through;
/// later chunks are prefixed with the last remembered frame and go through `time_conv`
/// (kernel 3, stride 2, no padding).
fn downsample_in_time(
    time_conv: &CausalConv3d,
    x: &Tensor,
    cache: &mut FeatCache,
) -> Result<Tensor> {
    let slot = cache.next_slot();
    let t = x.dim(1)?;
    let keep = x.narrow(1, t - 1, 1)?.force_contiguous()?;
    let y = match slot {
        Slot::Frames(previous) => {
            let last = previous.narrow(1, previous.dim(1)? - 1, 1)?;
            time_conv.forward(&Tensor::cat(&[&last, x], 1)?, None)?
        }
        Slot::Empty => x.clone(),
        Slot::Rep => {
            return Err(WanError::InvalidRequest(
                "downsample3d cache slot holds Rep".into(),
            ));
        }
    };
    *slot = Slot::Frames(keep);
    Ok(y)
}

/// `WanMidBlock` with one attention layer: `resnets.0`, `attentions.0`, `resnets.1`.
#[derive(Clone, Debug)]
pub struct MidBlock {
    resnet0: ResidualBlock,
    attention: AttentionBlock,
    resnet1: ResidualBlock,
}

impl MidBlock {
    pub fn new(vb: VarBuilder, dim: usize) -> Result<Self> {
        Ok(Self {
            resnet0: ResidualBlock::new(vb.pp("resnets.0"), dim, dim)?,
            attention: AttentionBlock::new(vb.pp("attentions.0"), dim)?,
            resnet1: ResidualBlock::new(vb.pp("resnets.1"), dim, dim)?,
        })
    }

    pub fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let x = self.resnet0.forward(x, cache)?;
        let x = self.attention.forward(&x)?;
        self.resnet1.forward(&x, cache)
    }
}
