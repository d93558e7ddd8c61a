//! diffusers' `tiled_decode`: overlapping spatial tiles of the latent, each decoded with its own fresh cache over all frames, blended with linear ramps into the tile above and to the left, cropped to the stride and stitched, so peak memory follows the tile rather than the frame.

use candle_core::{D, Tensor};

use super::WanVae;
use crate::error::{Result, WanError};

/// Tile sizes in output pixels, as `AutoencoderKLWan.enable_tiling` takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiling {
    pub tile_sample_min_height: usize,
    pub tile_sample_min_width: usize,
    pub tile_sample_stride_height: usize,
    pub tile_sample_stride_width: usize,
}

impl Default for Tiling {
    /// diffusers' defaults: 256x256 pixel tiles every 192 pixels (64 pixels blended).
    fn default() -> Self {
        Self {
            tile_sample_min_height: 256,
            tile_sample_min_width: 256,
            tile_sample_stride_height: 192,
            tile_sample_stride_width: 192,
        }
    }
}

impl Tiling {
    fn check(&self, spatial: usize) -> Result<()> {
        let ok = |min: usize, stride: usize| stride >= spatial && min >= stride;
        if ok(self.tile_sample_min_height, self.tile_sample_stride_height)
            && ok(self.tile_sample_min_width, self.tile_sample_stride_width)
        {
            Ok(())
        } else {
            Err(WanError::InvalidRequest(format!(
                "tiling {self:?}: strides must be at least {spatial} pixels and tiles at least a stride"
            )))
        }
    }

    /// Whether a latent of `height x width` is decoded in tiles (diffusers' test in `_decode`).
    pub fn applies(&self, height: usize, width: usize, spatial: usize) -> bool {
        width > self.tile_sample_min_width / spatial
            || height > self.tile_sample_min_height / spatial
    }
}

/// `b`'s first `extent` rows (dim `dim`) become `a`'s last rows weighted `1 - y/extent` plus
/// `b`'s weighted `y/extent` (diffusers' `blend_v` on dim 3, `blend_h` on dim 4).
pub fn blend(a: &Tensor, b: &Tensor, extent: usize, dim: usize) -> Result<Tensor> {
    let (len_a, len_b) = (a.dim(dim)?, b.dim(dim)?);
    let extent = extent.min(len_a).min(len_b);
    if extent == 0 {
        return Ok(b.clone());
    }
    let mut shape = vec![1; b.rank()];
    shape[dim] = extent;
    let ramp: Vec<f32> = (0..extent)
        .map(|y| (y as f64 / extent as f64) as f32)
        .collect();
    let rest: Vec<f32> = (0..extent)
        .map(|y| (1.0 - y as f64 / extent as f64) as f32)
        .collect();
    let device = b.device();
    let ramp = Tensor::from_vec(ramp, shape.as_slice(), device)?.to_dtype(b.dtype())?;
    let rest = Tensor::from_vec(rest, shape.as_slice(), device)?.to_dtype(b.dtype())?;
    let head = (a
        .narrow(dim, len_a - extent, extent)?
        .broadcast_mul(&rest)?
        + b.narrow(dim, 0, extent)?.broadcast_mul(&ramp)?)?;
    if extent == len_b {
        return Ok(head);
    }
    Ok(Tensor::cat(
        &[&head, &b.narrow(dim, extent, len_b - extent)?],
        dim,
    )?)
}

/// The tiled decode of a frames-major latent `[B, T, z, h, w]`, unclamped, frames-major.
/// Only the previous row of tiles is kept (diffusers keeps all; the arithmetic is the same,
/// including blending with the already-blended neighbours).
pub(super) fn decode_tiles(vae: &WanVae, z: &Tensor, tiling: &Tiling) -> Result<Tensor> {
    let spatial = vae.spatial_stride();
    tiling.check(spatial)?;
    let (_, _, _, height, width) = z.dims5()?;
    let (tile_h, tile_w) = (
        tiling.tile_sample_min_height / spatial,
        tiling.tile_sample_min_width / spatial,
    );
    let (step_h, step_w) = (
        tiling.tile_sample_stride_height / spatial,
        tiling.tile_sample_stride_width / spatial,
    );
    let (stride_h, stride_w) = (
        tiling.tile_sample_stride_height,
        tiling.tile_sample_stride_width,
    );
    let blend_h = tiling.tile_sample_min_height - stride_h;
    let blend_w = tiling.tile_sample_min_width - stride_w;

    let mut previous_row: Vec<Tensor> = Vec::new();
    let mut rows = Vec::new();
    for i in (0..height).step_by(step_h) {
        let mut row: Vec<Tensor> = Vec::new();
        for (j_index, j) in (0..width).step_by(step_w).enumerate() {
            let tile =
                z.narrow(3, i, tile_h.min(height - i))?
                    .narrow(4, j, tile_w.min(width - j))?;
            let mut tile = vae.decode_raw(&tile)?;
            if let Some(above) = previous_row.get(j_index) {
                tile = blend(above, &tile, blend_h, 3)?;
            }
            if let Some(left) = row.last() {
                tile = blend(left, &tile, blend_w, 4)?;
            }
            row.push(tile);
        }
        let cropped = row
            .iter()
            .map(|tile| {
                let (h, w) = (tile.dim(D::Minus2)?, tile.dim(D::Minus1)?);
                tile.narrow(3, 0, stride_h.min(h))?
                    .narrow(4, 0, stride_w.min(w))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        rows.push(Tensor::cat(&cropped, 4)?);
        previous_row = row;
    }
    let out = Tensor::cat(&rows, 3)?;
    let (sample_h, sample_w) = (height * spatial, width * spatial);
    let (h, w) = (out.dim(3)?, out.dim(4)?);
    Ok(out
        .narrow(3, 0, sample_h.min(h))?
        .narrow(4, 0, sample_w.min(w))?)
}
