//! The causal 3D convolution candle lacks, built from conv2d calls (one per temporal tap) over frames-major activations, plus the per-site feature cache that carries the last frames of one chunk into the next.
//!
//! Activations inside the VAE are kept frames-major, `[B, T, C, H, W]`, so that a run of frames
//! is a plain `[B*T, C, H, W]` batch for conv2d without a transpose. A kernel
//! `[Cout, Cin, kt, kh, kw]` applied to a time-padded input is the sum over its `kt` taps of a
//! conv2d of the frames `k, k+s, k+2s, ...` with the tap's `[Cout, Cin, kh, kw]` slice.
//!
//! Causality follows `WanCausalConv3d`: a conv built with padding `(pt, ph, pw)` pads `ph`/`pw`
//! symmetrically in space and `2*pt` zero frames in front in time (none behind). Frames cached
//! from the previous chunk replace that many of the front zeros.

use candle_core::{D, Device, Tensor};
use candle_nn::VarBuilder;

use crate::error::{Result, WanError};

/// How many trailing frames a conv site keeps for the next chunk (diffusers' `CACHE_T`).
pub const CACHE_T: usize = 2;

/// Upper bound on the im2col buffer of one conv2d call on a GPU (elements). candle's CUDA
/// conv2d materialises `N*Hout*Wout*Cin*kh*kw` values; bigger calls are split over frames and
/// then over output rows. The CPU conv2d tiles its im2col itself and is never split.
pub const GPU_IM2COL_BUDGET: usize = 1 << 28;

/// A `WanCausalConv3d`: weights split per temporal tap, time stride `stride_t`, spatial stride 1.
#[derive(Clone, Debug)]
pub struct CausalConv3d {
    taps: Vec<Tensor>,
    bias: Tensor,
    out_channels: usize,
    front_pad: usize,
    spatial_pad: usize,
    stride_t: usize,
    im2col_budget: Option<usize>,
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
        let (out_channels, _, kt, _, _) = weight.dims5()?;
        let (pt, ph, pw) = padding;
        if ph != pw || stride_t == 0 || kt == 0 {
            return Err(WanError::InvalidWeights(format!(
                "causal conv3d with padding {padding:?}, stride {stride_t}, {kt} taps is not supported"
            )));
        }
        let taps = (0..kt)
            .map(|k| weight.narrow(2, k, 1)?.squeeze(2)?.contiguous())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let im2col_budget = match weight.device() {
            Device::Cpu => None,
            _ => Some(GPU_IM2COL_BUDGET),
        };
        Ok(Self {
            taps,
            bias: bias.reshape((1, out_channels, 1, 1))?,
            out_channels,
            front_pad: 2 * pt,
            spatial_pad: ph,
            stride_t,
            im2col_budget,
        })
    }

    /// Splits conv2d calls whose im2col buffer would exceed `budget` elements (tests force
    /// small budgets on the CPU to exercise the split).
    pub fn with_im2col_budget(mut self, budget: Option<usize>) -> Self {
        self.im2col_budget = budget;
        self
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels
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
        let (b, t, c, h, w) = x.dims5()?;
        let kt = self.taps.len();
        if t < kt {
            return Err(WanError::InvalidRequest(format!(
                "causal conv3d over {t} frames (with padding) needs at least {kt}"
            )));
        }
        let t_out = (t - kt) / self.stride_t + 1;
        let mut acc: Option<Tensor> = None;
        for (k, tap) in self.taps.iter().enumerate() {
            let frames = if self.stride_t == 1 {
                x.narrow(1, k, t_out)?
            } else {
                let picked = (0..t_out)
                    .map(|j| x.narrow(1, k + j * self.stride_t, 1))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&picked, 1)?
            };
            let frames = frames.reshape((b * t_out, c, h, w))?;
            let y = conv2d_bounded(&frames, tap, self.spatial_pad, 1, self.im2col_budget)?;
            acc = Some(match acc {
                None => y,
                Some(acc) => (acc + y)?,
            });
        }
        let y = acc.expect("at least one tap").broadcast_add(&self.bias)?;
        let (_, co, ho, wo) = y.dims4()?;
        Ok(y.reshape((b, t_out, co, ho, wo))?)
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

/// conv2d over `[N, C, H, W]`, split over N and then over output rows when the im2col buffer
/// of one call would exceed `budget` elements.
pub fn conv2d_bounded(
    x: &Tensor,
    kernel: &Tensor,
    padding: usize,
    stride: usize,
    budget: Option<usize>,
) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (_, _, kh, kw) = kernel.dims4()?;
    let (ho, wo) = (
        (h + 2 * padding - kh) / stride + 1,
        (w + 2 * padding - kw) / stride + 1,
    );
    let row_cost = wo * c * kh * kw;
    let frame_cost = ho * row_cost;
    let budget = match budget {
        Some(budget) if n * frame_cost > budget && kh * kw > 1 => budget,
        _ => return Ok(x.conv2d(kernel, padding, stride, 1, 1)?),
    };
    if frame_cost <= budget {
        let per_call = (budget / frame_cost).max(1);
        let parts = (0..n)
            .step_by(per_call)
            .map(|start| {
                let len = per_call.min(n - start);
                x.narrow(0, start, len)?
                    .conv2d(kernel, padding, stride, 1, 1)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        return Ok(Tensor::cat(&parts, 0)?);
    }
    // One frame is already too big: pad once, then convolve bands of output rows.
    let rows_per_call = (budget / row_cost).max(1);
    let padded = x
        .pad_with_zeros(D::Minus2, padding, padding)?
        .pad_with_zeros(D::Minus1, padding, padding)?;
    let mut frames = Vec::with_capacity(n);
    for i in 0..n {
        let frame = padded.narrow(0, i, 1)?;
        let bands = (0..ho)
            .step_by(rows_per_call)
            .map(|r0| {
                let rows = rows_per_call.min(ho - r0);
                let in_rows = (rows - 1) * stride + kh;
                frame
                    .narrow(2, r0 * stride, in_rows)?
                    .contiguous()?
                    .conv2d(kernel, 0, stride, 1, 1)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        frames.push(Tensor::cat(&bands, 2)?);
    }
    Ok(Tensor::cat(&frames, 0)?)
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

/// A plain conv2d with bias (the spatial convs of the resamplers, the attention projections).
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    padding: usize,
    stride: usize,
    im2col_budget: Option<usize>,
}

impl Conv2d {
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        padding: usize,
        stride: usize,
    ) -> Result<Self> {
        let weight = vb.get((out_channels, in_channels, kernel, kernel), "weight")?;
        let bias = vb
            .get(out_channels, "bias")?
            .reshape((1, out_channels, 1, 1))?;
        let im2col_budget = match weight.device() {
            Device::Cpu => None,
            _ => Some(GPU_IM2COL_BUDGET),
        };
        Ok(Self {
            weight,
            bias,
            padding,
            stride,
            im2col_budget,
        })
    }
}

impl Conv2d {
    /// `x`: `[N, Cin, H, W]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = conv2d_bounded(
            x,
            &self.weight,
            self.padding,
            self.stride,
            self.im2col_budget,
        )?;
        Ok(y.broadcast_add(&self.bias)?)
    }
}
