//! The causal 3D convolution candle lacks (`WanCausalConv3d`), over frames-major activations, and the per-site feature cache that carries the last frames of one chunk into the next.
//!
//! Activations inside the VAE are kept frames-major, `[B, T, C, H, W]`, so a run of frames is
//! a plain batch for the im2col engine ([`super::im2col`]) without a transpose.
//!
//! Causality follows `WanCausalConv3d`: a conv built with padding `(pt, ph, pw)` pads `ph`/`pw`
//! symmetrically in space and `2*pt` zero frames in front in time (none behind). Frames cached
//! from the previous chunk replace that many of the front zeros.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::im2col::FoldedConv;
use crate::error::{Result, WanError};

/// How many trailing frames a conv site keeps for the next chunk (diffusers' `CACHE_T`).
pub const CACHE_T: usize = 2;

/// A `WanCausalConv3d`: time stride `stride_t`, spatial stride 1.
#[derive(Clone, Debug)]
pub struct CausalConv3d {
    conv: FoldedConv,
    front_pad: usize,
    stride_t: usize,
}

impl CausalConv3d {
    /// Loads `weight [out, in, kt, kh, kw]` and `bias [out]`; `padding` is the module's
    /// constructor padding `(pt, ph, pw)` (ph must equal pw, as in every Wan conv).
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: (usize, usize, usize),
        stride_t: usize,
        padding: (usize, usize, usize),
    ) -> Result<Self> {
        let (kt, kh, kw) = kernel;
        let weight = vb.get((out_channels, in_channels, kt, kh, kw), "weight")?;
        let bias = vb.get(out_channels, "bias")?;
        Self::from_weights(&weight, &bias, stride_t, padding)
    }

    pub fn from_weights(
        weight: &Tensor,
        bias: &Tensor,
        stride_t: usize,
        padding: (usize, usize, usize),
    ) -> Result<Self> {
        let (pt, ph, pw) = padding;
        if ph != pw || stride_t == 0 {
            return Err(WanError::InvalidWeights(format!(
                "causal conv3d with padding {padding:?} and time stride {stride_t} is not supported"
            )));
        }
        Ok(Self {
            conv: FoldedConv::new(weight, bias, ph)?,
            front_pad: 2 * pt,
            stride_t,
        })
    }

    /// Bounds the im2col buffer (elements); tests force small budgets to exercise the bands.
    pub fn with_im2col_budget(mut self, budget: usize) -> Self {
        self.conv = self.conv.with_budget(budget);
        self
    }

    pub fn out_channels(&self) -> usize {
        self.conv.out_channels()
    }

    /// Number of zero frames a chunk without cache gets in front.
    pub fn front_pad(&self) -> usize {
        self.front_pad
    }

    /// `x`: `[B, T, Cin, H, W]`; `cache`: up to `front_pad` frames that precede `x`.
    /// Returns `[B, T', Cout, H', W']` with `T' = (cache + pad + T - kt) / stride + 1`.
    pub fn forward(&self, x: &Tensor, cache: Option<&Tensor>) -> Result<Tensor> {
        let mut front = self.front_pad;
        let mut x = x.clone();
        if let (Some(cache), true) = (cache, front > 0) {
            let cached = cache.dim(1)?.min(front);
            let cache = cache.narrow(1, cache.dim(1)? - cached, cached)?;
            x = Tensor::cat(&[&cache, &x], 1)?;
            front -= cached;
        }
        if front > 0 {
            x = x.pad_with_zeros(1, front, 0)?;
        }
        let (b, t, _, _, _) = x.dims5()?;
        if t < self.conv.temporal_taps() {
            return Err(WanError::InvalidRequest(format!(
                "causal conv3d over {t} frames (with padding) needs at least {}",
                self.conv.temporal_taps()
            )));
        }
        let outs = (0..b)
            .map(|i| self.conv.forward_frames(&x.get(i)?, self.stride_t))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::stack(&outs, 0)?)
    }

    /// The diffusers cached call at a conv site: runs with the site's cached frames and
    /// stores the last `CACHE_T` input frames (topped up from the old cache when the chunk
    /// has a single frame) for the next chunk.
    pub fn forward_cached(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let slot = cache.next_slot();
        let previous = match slot {
            Slot::Frames(frames) => Some(frames.clone()),
            _ => None,
        };
        let keep = carry_frames(x, previous.as_ref())?;
        let y = self.forward(x, previous.as_ref())?;
        *slot = Slot::Frames(keep);
        Ok(y)
    }
}

/// The last `CACHE_T` frames of `x` as a fresh tensor (not a view that would pin the whole
/// chunk), with the previous cache's last frame in front when `x` has fewer.
pub fn carry_frames(x: &Tensor, previous: Option<&Tensor>) -> Result<Tensor> {
    let t = x.dim(1)?;
    let n = t.min(CACHE_T);
    let tail = x.narrow(1, t - n, n)?;
    let keep = match previous {
        Some(prev) if n < CACHE_T => {
            let last = prev.narrow(1, prev.dim(1)? - 1, 1)?;
            Tensor::cat(&[&last, &tail], 1)?
        }
        _ => tail,
    };
    Ok(keep.force_contiguous()?)
}

/// One diffusers `feat_cache` entry.
#[derive(Clone, Debug, Default)]
pub enum Slot {
    /// Never visited (`None`).
    #[default]
    Empty,
    /// An `upsample3d` site that has seen its first chunk (the `"Rep"` sentinel).
    Rep,
    /// Frames carried to the next chunk, frames-major.
    Frames(Tensor),
}

/// The feature cache of one encode or decode pass: one slot per cached site, visited in
/// forward order; `start_chunk` rewinds the running index (diffusers' `feat_idx = [0]`).
#[derive(Debug, Default)]
pub struct FeatCache {
    slots: Vec<Slot>,
    index: usize,
}

impl FeatCache {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn start_chunk(&mut self) {
        self.index = 0;
    }

    pub fn next_slot(&mut self) -> &mut Slot {
        if self.index == self.slots.len() {
            self.slots.push(Slot::Empty);
        }
        self.index += 1;
        &mut self.slots[self.index - 1]
    }

    /// Sites visited so far in this pass.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Bytes held by the cached frames.
    pub fn bytes(&self) -> usize {
        self.slots
            .iter()
            .map(|slot| match slot {
                Slot::Frames(t) => t.elem_count() * t.dtype().size_in_bytes(),
                _ => 0,
            })
            .sum()
    }
}
