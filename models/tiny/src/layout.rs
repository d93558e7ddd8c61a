//! How the denoiser's tokens are laid out in memory and how heavy tensor work is cut into chunks that our own threads share, the two things that make candle fast enough on a 2-core CPU.

use candle_core::{Device, Tensor};

use super::TinyConfig;
use reelfarm_models::ModelError;

/// candle 0.11 sends element-wise ops of at least 64 Ki elements to its worker pool; chunks
/// stay just below so those ops run inline on our threads. (It also keeps each overlapping
/// view far below 2^24 elements, where `unfold`'s f32 size arithmetic would start to round.)
pub(crate) const CHUNK_ELEMENTS: usize = 64 * 1024 - 1;

/// One worker per core; asked once because `available_parallelism` reads cgroup files.
fn worker_count() -> usize {
    static WORKERS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *WORKERS.get_or_init(|| std::thread::available_parallelism().map_or(1, |count| count.get()))
}

/// `work(start_row, rows)` for every chunk, shared round-robin by up to one thread per core;
/// results come back in chunk order, so the output never depends on the thread count.
pub(crate) fn map_chunks<F>(chunks: &[(usize, usize)], work: F) -> candle_core::Result<Vec<Tensor>>
where
    F: Fn(usize, usize) -> candle_core::Result<Tensor> + Sync,
{
    let workers = worker_count().clamp(1, chunks.len().max(1));
    let run = |worker: usize| -> candle_core::Result<Vec<Tensor>> {
        chunks
            .iter()
            .skip(worker)
            .step_by(workers)
            .map(|&(start, rows)| work(start, rows))
            .collect()
    };
    if workers == 1 {
        return run(0);
    }
    let per_worker: Vec<Vec<Tensor>> =
        std::thread::scope(|scope| {
            let helpers: Vec<_> = (1..workers)
                .map(|worker| scope.spawn(move || run(worker)))
                .collect();
            let mut results = vec![run(0)];
            for helper in helpers {
                results.push(helper.join().unwrap_or_else(|_| {
                    Err(candle_core::Error::Msg("chunk worker panicked".into()))
                }));
            }
            results.into_iter().collect::<candle_core::Result<Vec<_>>>()
        })?;
    let mut iterators: Vec<_> = per_worker.into_iter().map(Vec::into_iter).collect();
    (0..chunks.len())
        .map(|index| {
            iterators[index % workers]
                .next()
                .ok_or_else(|| candle_core::Error::Msg("chunk result missing".into()))
        })
        .collect()
}

/// `combine` applied to matching chunks of same-shape tensors (flattened), reassembled into
/// that shape: element-wise latent arithmetic without waking candle's worker pool.
pub(crate) fn map_elementwise<F>(inputs: &[&Tensor], combine: F) -> candle_core::Result<Tensor>
where
    F: Fn(&[Tensor]) -> candle_core::Result<Tensor> + Sync,
{
    let shape = inputs
        .first()
        .ok_or_else(|| candle_core::Error::Msg("no inputs".into()))?
        .shape()
        .clone();
    let flat: Vec<Tensor> = inputs
        .iter()
        .map(|tensor| tensor.flatten_all())
        .collect::<candle_core::Result<_>>()?;
    let total = shape.elem_count();
    let chunks: Vec<(usize, usize)> = (0..total)
        .step_by(CHUNK_ELEMENTS)
        .map(|start| (start, CHUNK_ELEMENTS.min(total - start)))
        .collect();
    let pieces = map_chunks(&chunks, |start, length| {
        let parts = flat
            .iter()
            .map(|tensor| tensor.narrow(0, start, length))
            .collect::<candle_core::Result<Vec<_>>>()?;
        combine(&parts)
    })?;
    Tensor::cat(&pieces, 0)?.reshape(shape)
}

/// Where the tokens of one latent video live: 2×2×2 (time × height × width) latent patches
/// become tokens, stored channels-last as the rows of one (rows, hidden) matrix that holds
/// every token frame with a one-token zero border, plus one zero frame before and after the
/// clip. A neighbour in space or time is then a fixed row offset, which is what lets the
/// denoiser's convolutions be matmuls over shifted views.
pub(crate) struct TokenGrid {
    pub(crate) latent_frames: usize,
    /// Latent frames rounded up to whole temporal patches.
    pub(crate) token_frames: usize,
    pub(crate) temporal_patch: usize,
    pub(crate) patch: usize,
    pub(crate) grid_height: usize,
    pub(crate) grid_width: usize,
    pub(crate) padded_width: usize,
    pub(crate) frame_rows: usize,
    /// (total_rows, 1): 1 on real tokens, 0 on borders and zero frames, so those stay zero.
    pub(crate) row_mask: Tensor,
}

impl TokenGrid {
    pub(crate) fn new(
        latent_frames: usize,
        latent_height: usize,
        latent_width: usize,
        temporal_patch: usize,
        patch: usize,
    ) -> Result<Self, ModelError> {
        if !latent_height.is_multiple_of(patch)
            || !latent_width.is_multiple_of(patch)
            || latent_frames == 0
            || temporal_patch == 0
        {
            return Err(ModelError::Internal(format!(
                "latent grid {latent_frames}x{latent_height}x{latent_width} does not tile into {patch}x{patch} patches"
            )));
        }
        let token_frames = latent_frames.div_ceil(temporal_patch);
        let (grid_height, grid_width) = (latent_height / patch, latent_width / patch);
        let padded_width = grid_width + 2;
        let frame_rows = (grid_height + 2) * padded_width;
        let frame_mask: Vec<f32> = (0..frame_rows)
            .map(|row| {
                let (y, x) = (row / padded_width, row % padded_width);
                if (1..=grid_height).contains(&y) && (1..=grid_width).contains(&x) {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        let mut mask = vec![0f32; frame_rows];
        for _ in 0..token_frames {
            mask.extend_from_slice(&frame_mask);
        }
        mask.extend(std::iter::repeat_n(0f32, frame_rows));
        let row_mask = Tensor::from_vec(mask, ((token_frames + 2) * frame_rows, 1), &Device::Cpu)?;
        Ok(Self {
            latent_frames,
            token_frames,
            temporal_patch,
            patch,
            grid_height,
            grid_width,
            padded_width,
            frame_rows,
            row_mask,
        })
    }

    /// The grid the denoiser of `config` tiles a latent of this size into.
    pub(crate) fn for_config(
        config: &TinyConfig,
        latent_frames: usize,
        latent_height: usize,
        latent_width: usize,
    ) -> Result<Self, ModelError> {
        Self::new(
            latent_frames,
            latent_height,
            latent_width,
            config.temporal_patch,
            config.patch_size,
        )
    }

    /// Rows of the whole buffer, both zero frames included.
    pub(crate) fn total_rows(&self) -> usize {
        (self.token_frames + 2) * self.frame_rows
    }

    /// (first row, row count) pieces covering the rows of the real frames (the zero frames
    /// before and after are never computed, only read).
    pub(crate) fn row_chunks(&self, channels: usize) -> Vec<(usize, usize)> {
        let per_chunk = (CHUNK_ELEMENTS / channels.max(1)).max(1);
        let (first, end) = (self.frame_rows, self.total_rows() - self.frame_rows);
        (first..end)
            .step_by(per_chunk)
            .map(|start| (start, per_chunk.min(end - start)))
            .collect()
    }

    /// (frames, channels, H, W) → (frames/pt, H/p, W/p, pt·channels·p·p), channels last.
    /// A trailing partial temporal patch repeats the last frame rather than inventing zeros.
    pub(crate) fn patchify(&self, latent: &Tensor, channels: usize) -> candle_core::Result<Tensor> {
        let (patch, temporal) = (self.patch, self.temporal_patch);
        let missing = self.token_frames * temporal - self.latent_frames;
        let latent = if missing > 0 {
            latent.pad_with_same(0, 0, missing)?
        } else {
            latent.clone()
        };
        let dims = [
            self.token_frames,
            temporal,
            channels,
            self.grid_height,
            patch,
            self.grid_width,
            patch,
        ];
        latent
            .reshape(dims.as_slice())?
            .permute(vec![0, 3, 5, 1, 2, 4, 6])?
            .contiguous()?
            .reshape((
                self.token_frames,
                self.grid_height,
                self.grid_width,
                temporal * channels * patch * patch,
            ))
    }

    pub(crate) fn unpatchify(
        &self,
        tokens: &Tensor,
        channels: usize,
    ) -> candle_core::Result<Tensor> {
        let (patch, temporal) = (self.patch, self.temporal_patch);
        let dims = [
            self.token_frames,
            self.grid_height,
            self.grid_width,
            temporal,
            channels,
            patch,
            patch,
        ];
        tokens
            .contiguous()?
            .reshape(dims.as_slice())?
            .permute(vec![0, 3, 4, 1, 5, 2, 6])?
            .contiguous()?
            .reshape((
                self.token_frames * temporal,
                channels,
                self.grid_height * patch,
                self.grid_width * patch,
            ))?
            .narrow(0, 0, self.latent_frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::GaussianRng;

    #[test]
    fn patchify_round_trips_odd_frame_counts() -> Result<(), ModelError> {
        for frames in [1, 2, 5] {
            let grid = TokenGrid::new(frames, 4, 6, 2, 2)?;
            let count = frames * 4 * 4 * 6;
            let values = GaussianRng::new(frames as u64).gaussians(count, 1.0);
            let latent = Tensor::from_vec(values, (frames, 4, 4, 6), &Device::Cpu)?;
            let tokens = grid.patchify(&latent, 4)?;
            assert_eq!(tokens.dims(), &[frames.div_ceil(2), 2, 3, 32]);
            let back = grid.unpatchify(&tokens, 4)?;
            let difference = (back - &latent)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(difference, 0.0);
        }
        Ok(())
    }

    #[test]
    fn chunks_cover_every_real_row_once() -> Result<(), ModelError> {
        let grid = TokenGrid::new(121, 68, 120, 2, 2)?;
        let chunks = grid.row_chunks(32);
        assert!(chunks.len() > 1);
        assert_eq!(chunks[0].0, grid.frame_rows);
        let covered: usize = chunks.iter().map(|&(_, rows)| rows).sum();
        assert_eq!(covered, 61 * grid.frame_rows);
        assert!(
            chunks
                .windows(2)
                .all(|pair| pair[0].0 + pair[0].1 == pair[1].0)
        );
        assert!(chunks.iter().all(|&(_, rows)| rows * 32 < 64 * 1024));
        Ok(())
    }

    #[test]
    fn chunk_results_keep_their_order() -> candle_core::Result<()> {
        let chunks: Vec<(usize, usize)> = (0..37).map(|index| (index * 10, index + 1)).collect();
        let results = map_chunks(&chunks, |start, rows| {
            Tensor::new(&[(start * rows) as f32], &Device::Cpu)
        })?;
        let values: Vec<f32> = results
            .iter()
            .map(|tensor| tensor.to_vec1::<f32>().map(|values| values[0]))
            .collect::<candle_core::Result<_>>()?;
        let expected: Vec<f32> = chunks
            .iter()
            .map(|&(start, rows)| (start * rows) as f32)
            .collect();
        assert_eq!(values, expected);
        let left = Tensor::arange(0f32, 200_000.0, &Device::Cpu)?;
        let right = left.affine(2.0, 1.0)?;
        let sum = map_elementwise(&[&left, &right], |parts| &parts[0] + &parts[1])?;
        assert_eq!(sum.to_vec1::<f32>()?[199_999], 3.0 * 199_999.0 + 1.0);
        Ok(())
    }
}
