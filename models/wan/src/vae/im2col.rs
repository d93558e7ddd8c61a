//! The convolution engine: a stride-1 (in space) convolution over a run of frames as one batched matmul of the folded kernel with an im2col buffer that candle builds by fast contiguous copies, in row bands so the buffer stays within a memory budget.
//!
//! Frames `[Tp, C, H, W]` are zero-padded in space (plus one spare row at the bottom) and
//! flattened per channel; the `kh*kw` shifted windows of `R` padded-width rows
//! (`R * Wp` values each, two junk columns per row included) are concatenated along the last
//! axis, giving rows `(frame, channel, shift)` of a `[Tp*C*kh*kw, R*Wp]` matrix. Temporal taps
//! need no copy: the `kt` consecutive frames of an output frame are consecutive rows, so an
//! overlapping `unfold` view yields the `[T_out, kt*C*kh*kw, R*Wp]` operand, multiplied by
//! the kernel folded in the same `(tap, channel, row, column)` order. Junk columns are cut and
//! the bias added in one pass at the end. On the CPU this runs 2-3x faster than candle's
//! conv2d per tap; on CUDA it is cuBLAS batched GEMM over plain copies.

use candle_core::{D, Device, Tensor};
use candle_nn::VarBuilder;

use crate::error::{Result, WanError};

/// Largest im2col buffer (elements) built at once on the CPU.
pub const CPU_IM2COL_BUDGET: usize = 1 << 25;
/// Largest im2col buffer (elements) built at once on a GPU.
pub const GPU_IM2COL_BUDGET: usize = 1 << 28;

fn default_budget(device: &Device) -> usize {
    match device {
        Device::Cpu => CPU_IM2COL_BUDGET,
        _ => GPU_IM2COL_BUDGET,
    }
}

/// A kernel `[Cout, Cin, kt, kh, kw]` folded to `[Cout, kt*Cin*kh*kw]`, applied with spatial
/// stride 1 and symmetric spatial zero padding.
#[derive(Clone, Debug)]
pub struct FoldedConv {
    weight: Tensor,
    bias: Tensor,
    taps: (usize, usize, usize),
    in_channels: usize,
    out_channels: usize,
    padding: usize,
    budget: usize,
}

impl FoldedConv {
    /// `weight` `[Cout, Cin, kt, kh, kw]`, `bias` `[Cout]`.
    pub fn new(weight: &Tensor, bias: &Tensor, padding: usize) -> Result<Self> {
        let (out_channels, in_channels, kt, kh, kw) = weight.dims5()?;
        if kt == 0 || kh == 0 || kw == 0 {
            return Err(WanError::InvalidWeights(format!(
                "empty kernel {:?}",
                weight.dims()
            )));
        }
        let weight = weight
            .permute((0, 2, 1, 3, 4))?
            .contiguous()?
            .reshape((out_channels, kt * in_channels * kh * kw))?;
        Ok(Self {
            budget: default_budget(weight.device()),
            weight,
            bias: bias.reshape((1, out_channels, 1, 1))?,
            taps: (kt, kh, kw),
            in_channels,
            out_channels,
            padding,
        })
    }

    pub fn with_budget(mut self, budget: usize) -> Self {
        self.budget = budget.max(1);
        self
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    pub fn temporal_taps(&self) -> usize {
        self.taps.0
    }

    /// `x` `[Tp, Cin, H, W]` (time padding already in place) to `[T_out, Cout, Ho, Wo]`, output
    /// frame `j` reading input frames `j*stride_t .. j*stride_t + kt`.
    pub fn forward_frames(&self, x: &Tensor, stride_t: usize) -> Result<Tensor> {
        let (kt, kh, kw) = self.taps;
        let (tp, c, h, w) = x.dims4()?;
        if c != self.in_channels || tp < kt || stride_t == 0 {
            return Err(WanError::InvalidRequest(format!(
                "conv over {:?} with {kt} taps, {} input channels, time stride {stride_t}",
                x.dims(),
                self.in_channels
            )));
        }
        let p = self.padding;
        let (hp, wp) = (h + 2 * p, w + 2 * p);
        if hp < kh || wp < kw {
            return Err(WanError::InvalidRequest(format!(
                "{h}x{w} frames are smaller than the kernel"
            )));
        }
        let (ho, wo) = (hp - kh + 1, wp - kw + 1);
        let t_out = (tp - kt) / stride_t + 1;
        // One spare zero row keeps the last window of a column shift inside the buffer.
        let spare = usize::from(kw > 1);
        let mut padded = x.clone();
        if p > 0 {
            padded = padded.pad_with_zeros(D::Minus1, p, p)?;
        }
        if p + spare > 0 {
            padded = padded.pad_with_zeros(D::Minus2, p, p + spare)?;
        }
        let flat = padded.reshape((tp, c, (hp + spare) * wp))?;
        let shifts = kh * kw;
        let rows_per_band = (self.budget / (tp * c * shifts * wp).max(1)).clamp(1, ho);
        let window = kt * c * shifts;
        let mut bands = Vec::with_capacity(ho.div_ceil(rows_per_band));
        for r0 in (0..ho).step_by(rows_per_band) {
            let rows = rows_per_band.min(ho - r0);
            let len = rows * wp;
            let cols = if shifts == 1 {
                flat.narrow(2, r0 * wp, len)?.contiguous()?
            } else {
                let pieces = (0..shifts)
                    .map(|s| flat.narrow(2, (r0 + s / kw) * wp + s % kw, len))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Tensor::cat(&pieces, 2)?
            };
            let operand = cols
                .reshape((tp * c * shifts, len))?
                .unfold(0, window, stride_t * c * shifts)?
                .transpose(1, 2)?;
            let y = self.weight.broadcast_left(t_out)?.matmul(&operand)?;
            bands.push(y.reshape((t_out, self.out_channels, rows, wp))?);
        }
        let y = if bands.len() == 1 {
            bands.pop().expect("one band")
        } else {
            Tensor::cat(&bands, 2)?
        };
        Ok(y.narrow(3, 0, wo)?.broadcast_add(&self.bias)?)
    }
}

/// conv2d over `[N, C, H, W]` through candle, split over N and then over output rows when the
/// im2col buffer of one call would exceed `budget` elements (the strided downsampling convs).
pub fn conv2d_bounded(
    x: &Tensor,
    kernel: &Tensor,
    padding: usize,
    stride: usize,
    budget: usize,
) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (_, _, kh, kw) = kernel.dims4()?;
    let (ho, wo) = (
        (h + 2 * padding - kh) / stride + 1,
        (w + 2 * padding - kw) / stride + 1,
    );
    let row_cost = wo * c * kh * kw;
    let frame_cost = ho * row_cost;
    if n * frame_cost <= budget {
        return Ok(x.conv2d(kernel, padding, stride, 1, 1)?);
    }
    if frame_cost <= budget {
        let per_call = (budget / frame_cost).max(1);
        let parts = (0..n)
            .step_by(per_call)
            .map(|start| {
                x.narrow(0, start, per_call.min(n - start))?
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

/// A 2-D convolution with bias over `[N, C, H, W]`: the folded engine for stride 1, candle's
/// conv2d for the stride-2 downsampling convs.
#[derive(Clone, Debug)]
pub struct Conv2d {
    engine: Conv2dEngine,
}

#[derive(Clone, Debug)]
enum Conv2dEngine {
    Folded(FoldedConv),
    Strided {
        weight: Tensor,
        bias: Tensor,
        padding: usize,
        stride: usize,
        budget: usize,
    },
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
        let bias = vb.get(out_channels, "bias")?;
        Self::from_weights(&weight, &bias, padding, stride)
    }

    pub fn from_weights(
        weight: &Tensor,
        bias: &Tensor,
        padding: usize,
        stride: usize,
    ) -> Result<Self> {
        let engine = if stride == 1 {
            Conv2dEngine::Folded(FoldedConv::new(&weight.unsqueeze(2)?, bias, padding)?)
        } else {
            let out_channels = weight.dim(0)?;
            Conv2dEngine::Strided {
                budget: default_budget(weight.device()),
                weight: weight.clone(),
                bias: bias.reshape((1, out_channels, 1, 1))?,
                padding,
                stride,
            }
        };
        Ok(Self { engine })
    }

    pub fn with_budget(self, budget: usize) -> Self {
        let engine = match self.engine {
            Conv2dEngine::Folded(conv) => Conv2dEngine::Folded(conv.with_budget(budget)),
            Conv2dEngine::Strided {
                weight,
                bias,
                padding,
                stride,
                ..
            } => Conv2dEngine::Strided {
                weight,
                bias,
                padding,
                stride,
                budget: budget.max(1),
            },
        };
        Self { engine }
    }

    /// `x` `[N, Cin, H, W]` to `[N, Cout, Ho, Wo]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.engine {
            Conv2dEngine::Folded(conv) => conv.forward_frames(x, 1),
            Conv2dEngine::Strided {
                weight,
                bias,
                padding,
                stride,
                budget,
            } => Ok(conv2d_bounded(x, weight, *padding, *stride, *budget)?.broadcast_add(bias)?),
        }
    }
}
