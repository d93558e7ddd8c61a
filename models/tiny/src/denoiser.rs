//! Predicts the clean latent video behind a noisy one (from which the sampler takes the flow velocity): factorised (2+1)D residual blocks with FiLM conditioning, phrased so that every convolution is a handful of matrix products, the one operation candle runs fast on a small CPU.
//!
//! Tokens live in the padded row buffer described in `layout.rs`, where a spatial neighbour
//! is a fixed row offset: a 3×3 convolution is three matmuls over overlapping
//! (stride = hidden) views of the buffer, one per kernel row, the three columns of a kernel
//! row being adjacent rows; the temporal k=3 convolution is three matmuls over views shifted
//! by one frame. candle's own conv2d measured 3-5× slower here (per-image im2col and
//! single-threaded copies), and gemm does not split these narrow (N = hidden) products
//! across cores by itself, so the rows are cut into chunks that our threads share.

use candle_core::{DType, Device, Tensor};

use super::TinyConfig;
use super::camera::PositionMap;
use super::layout::{TokenGrid, map_chunks};
use super::weights::{Init, TensorSpec, TinyWeights};
use reelfarm_models::ModelError;

struct Block {
    modulation_weight: Tensor,
    modulation_bias: Tensor,
    /// (3 kernel rows, 3 kernel columns × hidden in, hidden out).
    spatial: Tensor,
    /// (3 taps t-1, t, t+1, hidden in, hidden out).
    temporal: Tensor,
}

pub(crate) struct Denoiser {
    latent_channels: usize,
    hidden: usize,
    time_dim: usize,
    input_projection: Tensor,
    position_projection: Tensor,
    condition_weight: Tensor,
    condition_bias: Tensor,
    blocks: Vec<Block>,
    output_projection: Tensor,
    output_bias: Tensor,
}

pub(crate) fn tensor_specs(config: &TinyConfig) -> Vec<TensorSpec> {
    let hidden = config.hidden_channels;
    let patch_channels =
        config.latent_channels * config.temporal_patch * config.patch_size * config.patch_size;
    let condition_inputs = config.time_embedding_dim + config.text_dim;
    let condition_dim = config.condition_dim;
    let mut specs = vec![
        // No bias: zero border tokens must stay zero after the projection.
        TensorSpec::he(
            "denoiser.input_projection.weight",
            &[patch_channels, hidden],
            patch_channels,
            1.0,
        ),
        TensorSpec::he(
            "denoiser.position_projection.weight",
            &[POSITION_FEATURES, hidden],
            POSITION_FEATURES,
            1.0,
        ),
        TensorSpec::he(
            "denoiser.condition.weight",
            &[condition_inputs, condition_dim],
            condition_inputs,
            1.0,
        ),
        TensorSpec::new("denoiser.condition.bias", &[condition_dim], Init::Zeros),
    ];
    for block in 0..config.blocks {
        let prefix = format!("denoiser.blocks.{block}");
        // Small, so prompt-driven differences stay moderate once guidance multiplies them
        // (at gain 0.5, guidance 4 drove most pixels of the untrained model to 0 or 255).
        specs.push(TensorSpec::he(
            format!("{prefix}.modulation.weight"),
            &[condition_dim, 3 * hidden],
            condition_dim,
            0.15,
        ));
        // Scale and shift start at 0, the residual gate at 1: every block contributes at once.
        let bias = (0..3 * hidden)
            .map(|index| if index < 2 * hidden { 0.0 } else { 1.0 })
            .collect();
        specs.push(TensorSpec::new(
            format!("{prefix}.modulation.bias"),
            &[3 * hidden],
            Init::Fixed(bias),
        ));
        specs.push(TensorSpec::he(
            format!("{prefix}.spatial.weight"),
            &[3, 3, hidden, hidden],
            9 * hidden,
            1.0,
        ));
        specs.push(TensorSpec::he(
            format!("{prefix}.temporal.weight"),
            &[3, hidden, hidden],
            3 * hidden,
            0.5,
        ));
    }
    specs.push(TensorSpec::he(
        "denoiser.output_projection.weight",
        &[hidden, patch_channels],
        hidden,
        0.5,
    ));
    specs.push(TensorSpec::new(
        "denoiser.output_projection.bias",
        &[patch_channels],
        Init::Zeros,
    ));
    specs
}

/// Features of a token's place in the frame, added to every token: convolutions alone cannot
/// tell the top of a frame (sky) from the bottom (land) once the receptive field is smaller
/// than the frame, and at high noise the input carries no such hint.
pub(crate) const POSITION_FEATURES: usize = 8;

/// (grid_height, grid_width, POSITION_FEATURES): y and x in frame coordinates, −1..1 across
/// the frame (top/left = −1) and a few of their sinusoids, resolution-independent. Tokens of a
/// camera plate beyond the frame (`camera.rs`) read the frame's edge: above it is more of the
/// top of the sky, below it more of the nearest ground.
pub(crate) fn position_features(
    grid_height: usize,
    grid_width: usize,
    map: &PositionMap,
) -> candle_core::Result<Tensor> {
    let mut values = Vec::with_capacity(grid_height * grid_width * POSITION_FEATURES);
    let pi = std::f32::consts::PI;
    let along = |offset: f32, step: f32, index: usize| {
        (offset + (index as f32 + 0.5) * step).clamp(-1.0, 1.0)
    };
    for row in 0..grid_height {
        let y = along(map.y_offset, map.y_step, row);
        for column in 0..grid_width {
            let x = along(map.x_offset, map.x_step, column);
            values.extend([
                y,
                (pi * y).cos(),
                (pi * y).sin(),
                (2.0 * pi * y).cos(),
                (2.0 * pi * y).sin(),
                x,
                (pi * x).cos(),
                (pi * x).sin(),
            ]);
        }
    }
    Tensor::from_vec(
        values,
        (grid_height, grid_width, POSITION_FEATURES),
        &Device::Cpu,
    )
}

/// Sinusoidal embedding of the flow time (0 = data, 1 = noise), as in diffusion transformers.
fn timestep_embedding(time: f32, dim: usize) -> candle_core::Result<Tensor> {
    let half = dim / 2;
    let scaled = f64::from(time) * 1000.0;
    let mut values = vec![0f32; dim];
    for index in 0..half {
        let frequency = (-(10_000f64.ln()) * index as f64 / half as f64).exp();
        values[index] = (scaled * frequency).cos() as f32;
        values[half + index] = (scaled * frequency).sin() as f32;
    }
    Tensor::from_vec(values, (1, dim), &Device::Cpu)
}

/// Sum of same-shape tensors (the per-kernel-row or per-tap matmul results).
fn sum_of(terms: Vec<Tensor>) -> candle_core::Result<Tensor> {
    let mut terms = terms.into_iter();
    let first = terms
        .next()
        .ok_or_else(|| candle_core::Error::Msg("empty kernel".into()))?;
    terms.try_fold(first, |total, term| total + term)
}

impl Denoiser {
    pub(crate) fn new(weights: &TinyWeights, config: &TinyConfig) -> Result<Self, ModelError> {
        let hidden = config.hidden_channels;
        let blocks = (0..config.blocks)
            .map(|block| {
                let prefix = format!("denoiser.blocks.{block}");
                Ok(Block {
                    modulation_weight: weights.get(&format!("{prefix}.modulation.weight"))?,
                    modulation_bias: weights.get(&format!("{prefix}.modulation.bias"))?,
                    spatial: weights.get(&format!("{prefix}.spatial.weight"))?.reshape((
                        3,
                        3 * hidden,
                        hidden,
                    ))?,
                    temporal: weights.get(&format!("{prefix}.temporal.weight"))?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Self {
            latent_channels: config.latent_channels,
            hidden,
            time_dim: config.time_embedding_dim,
            input_projection: weights.get("denoiser.input_projection.weight")?,
            position_projection: weights.get("denoiser.position_projection.weight")?,
            condition_weight: weights.get("denoiser.condition.weight")?,
            condition_bias: weights.get("denoiser.condition.bias")?,
            blocks,
            output_projection: weights.get("denoiser.output_projection.weight")?,
            output_bias: weights.get("denoiser.output_projection.bias")?,
        })
    }

    /// The per-step conditioning vector (1, condition_dim) from flow time and pooled text.
    pub(crate) fn condition(&self, time: f32, text: &Tensor) -> candle_core::Result<Tensor> {
        let inputs = Tensor::cat(&[&timestep_embedding(time, self.time_dim)?, text], 1)?;
        inputs
            .matmul(&self.condition_weight)?
            .broadcast_add(&self.condition_bias)?
            .silu()
    }

    /// The clean latent x0 the network sees in `latent` (frames, channels, height, width).
    ///
    /// The head predicts x0 and the sampler derives the flow velocity v = (x_t − x0)/t from
    /// it. Trained, this is the same model class as predicting v directly; untrained, it keeps
    /// the output near the head's small, in-range prediction instead of letting random
    /// velocities push colours far out of range. (EDM's preconditioning, x0 = skip(t)·x_t +
    /// output(t)·head, was tried to sharpen the soft pictures: the 32-channel stream could not
    /// cancel the noise the skip passes through, and clips came out as coloured grain, setting
    /// read right 27 % of the time against 66 %.)
    pub(crate) fn predict_clean(
        &self,
        latent: &Tensor,
        condition: &Tensor,
        grid: &TokenGrid,
        positions: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let patch_channels = self.input_projection.dim(0)?;
        // A block expression, so the patch copies are freed before the blocks run.
        let mut stream = {
            let tokens = grid.patchify(latent, self.latent_channels)?;
            let padded = tokens
                .pad_with_zeros(0, 1, 1)?
                .pad_with_zeros(1, 1, 1)?
                .pad_with_zeros(2, 1, 1)?;
            let projected = padded
                .reshape((grid.total_rows(), patch_channels))?
                .matmul(&self.input_projection)?;
            (projected + positions)?
        };
        for block in &self.blocks {
            stream = self.block_forward(block, &stream, condition, grid)?;
        }
        let chunks = grid.row_chunks(self.hidden.max(patch_channels));
        let head = map_chunks(&chunks, |start, rows| {
            // Linear head: a ReLU here let training collapse into predicting one constant
            // latent once every channel of the stream went negative.
            stream
                .narrow(0, start, rows)?
                .matmul(&self.output_projection)?
                .broadcast_add(&self.output_bias)
        })?;
        let output = Tensor::cat(&head, 0)?
            .reshape((
                grid.token_frames,
                grid.grid_height + 2,
                grid.padded_width,
                patch_channels,
            ))?
            .narrow(1, 1, grid.grid_height)?
            .narrow(2, 1, grid.grid_width)?;
        grid.unpatchify(&output, self.latent_channels)
    }

    /// The projected position features laid out like the token buffer: zero on borders and
    /// on the zero frames, the same for every token frame (`predict_clean` adds them; one
    /// sampling run computes them once).
    pub(crate) fn position_rows(
        &self,
        grid: &TokenGrid,
        map: &PositionMap,
    ) -> candle_core::Result<Tensor> {
        let (height, width) = (grid.grid_height, grid.grid_width);
        let frame = position_features(height, width, map)?
            .reshape((height * width, POSITION_FEATURES))?
            .matmul(&self.position_projection)?
            .reshape((height, width, self.hidden))?
            .pad_with_zeros(0, 1, 1)?
            .pad_with_zeros(1, 1, 1)?
            .reshape((grid.frame_rows, self.hidden))?;
        let zero = Tensor::zeros((grid.frame_rows, self.hidden), DType::F32, &Device::Cpu)?;
        let mut frames = Vec::with_capacity(grid.token_frames + 2);
        frames.push(zero.clone());
        frames.extend(std::iter::repeat_n(frame, grid.token_frames));
        frames.push(zero);
        Tensor::cat(&frames, 0)
    }

    /// x + gate · temporal(relu(scale · spatial(x) + shift)), with the FiLM scale and the gate
    /// folded into the (tiny) weight matrices instead of costing passes over the activations.
    /// ReLU rather than SiLU: candle's CPU SiLU is a scalar `exp` per element and cost as much
    /// as the block's matmuls.
    fn block_forward(
        &self,
        block: &Block,
        stream: &Tensor,
        condition: &Tensor,
        grid: &TokenGrid,
    ) -> candle_core::Result<Tensor> {
        let hidden = self.hidden;
        let modulation = condition
            .matmul(&block.modulation_weight)?
            .broadcast_add(&block.modulation_bias)?;
        let scale = (modulation.narrow(1, 0, hidden)? + 1.0)?;
        let shift = modulation.narrow(1, hidden, hidden)?;
        let gate = modulation.narrow(1, 2 * hidden, hidden)?;
        let spatial = (0..3)
            .map(|row| block.spatial.get(row)?.broadcast_mul(&scale))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let temporal = (0..3)
            .map(|tap| block.temporal.get(tap)?.broadcast_mul(&gate))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let border = Tensor::zeros((grid.frame_rows, hidden), DType::F32, &Device::Cpu)?;
        let chunks = grid.row_chunks(hidden);

        let reach = grid.padded_width + 1;
        let activated = map_chunks(&chunks, |start, rows| {
            let window = stream
                .narrow(0, start - reach, rows + 2 * reach)?
                .flatten_all()?;
            let terms = spatial
                .iter()
                .enumerate()
                .map(|(row, weight)| {
                    let offset = row * grid.padded_width * hidden;
                    window
                        .narrow(0, offset, (rows + 2) * hidden)?
                        .unfold(0, 3 * hidden, hidden)?
                        .matmul(weight)
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            sum_of(terms)?.broadcast_add(&shift)?.relu()
        })?;
        let activated = Tensor::cat(
            &[vec![border.clone()], activated, vec![border.clone()]].concat(),
            0,
        )?;

        let next = map_chunks(&chunks, |start, rows| {
            let terms = temporal
                .iter()
                .enumerate()
                .map(|(tap, weight)| {
                    let first = start + tap * grid.frame_rows - grid.frame_rows;
                    activated.narrow(0, first, rows)?.matmul(weight)
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let update = sum_of(terms)?.broadcast_mul(&grid.row_mask.narrow(0, start, rows)?)?;
            stream.narrow(0, start, rows)? + update
        })?;
        Tensor::cat(&[vec![border.clone()], next, vec![border]].concat(), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::GaussianRng;

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let count = shape.iter().product();
        let values = GaussianRng::new(seed).gaussians(count, 1.0);
        Tensor::from_vec(values, shape, &Device::Cpu).expect("tensor")
    }

    /// The row-buffer convolution must agree with candle's reference conv2d/conv1d, both for
    /// a grid that fits one chunk and for one whose chunks split frames.
    #[test]
    fn block_matches_reference_convolutions() -> Result<(), ModelError> {
        let config = TinyConfig {
            hidden_channels: 8,
            blocks: 1,
            ..TinyConfig::default()
        };
        let weights = TinyWeights::from_seed(&config, 5)?;
        let denoiser = Denoiser::new(&weights, &config)?;
        let block = &denoiser.blocks[0];
        let hidden = 8;
        for (frames, height, width) in [(3, 4, 5), (3, 60, 80)] {
            let grid = TokenGrid::new(frames, height * 2, width * 2, 1, 2)?;
            let expected_chunks = if height > 10 { 2 } else { 1 };
            assert_eq!(grid.row_chunks(hidden).len(), expected_chunks);
            let input = random(&[frames, hidden, height, width], 9);
            // Any conditioning vector will do: both paths read the same modulation.
            let condition = random(&[1, config.condition_dim], 10);

            let stream = input
                .permute((0, 2, 3, 1))?
                .contiguous()?
                .pad_with_zeros(0, 1, 1)?
                .pad_with_zeros(1, 1, 1)?
                .pad_with_zeros(2, 1, 1)?
                .reshape((grid.total_rows(), hidden))?;
            let output = denoiser.block_forward(block, &stream, &condition, &grid)?;
            let outside = output
                .broadcast_mul(&grid.row_mask.affine(-1.0, 1.0)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert_eq!(outside, 0.0, "borders and zero frames must stay zero");
            let output = output
                .reshape((frames + 2, height + 2, width + 2, hidden))?
                .narrow(0, 1, frames)?
                .narrow(1, 1, height)?
                .narrow(2, 1, width)?
                .permute((0, 3, 1, 2))?
                .contiguous()?;

            let modulation = condition
                .matmul(&block.modulation_weight)?
                .broadcast_add(&block.modulation_bias)?;
            let channel = |index: usize| {
                modulation
                    .narrow(1, index * hidden, hidden)?
                    .reshape((1, hidden, 1, 1))
            };
            let (scale, shift, gate) = ((channel(0)? + 1.0)?, channel(1)?, channel(2)?);
            // (dy, dx, in, out) → (out, in, dy, dx)
            let kernel2d = block
                .spatial
                .reshape((3, 3, hidden, hidden))?
                .permute((3, 2, 0, 1))?
                .contiguous()?;
            let activated = input
                .conv2d(&kernel2d, 1, 1, 1, 1)?
                .broadcast_mul(&scale)?
                .broadcast_add(&shift)?
                .relu()?;
            // (tap, in, out) → (out, in, tap); sequences are (height·width, hidden, frames)
            let kernel1d = block.temporal.permute((2, 1, 0))?.contiguous()?;
            let temporal = activated
                .permute((2, 3, 1, 0))?
                .contiguous()?
                .reshape((height * width, hidden, frames))?
                .conv1d(&kernel1d, 1, 1, 1, 1)?
                .reshape((height, width, hidden, frames))?
                .permute((3, 2, 0, 1))?;
            let expected = (input + temporal.broadcast_mul(&gate)?)?;
            let difference = (output - expected)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                difference < 1e-4,
                "{height}x{width}: max difference {difference}"
            );
        }
        Ok(())
    }
}
