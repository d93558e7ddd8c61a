//! Moves between pixels and the latent grid. Built so that decode(encode(x)) is a blurred x even with untrained weights (area pooling + an orthonormal colour map, inverted exactly on the way back), which is what lets a continuing segment start visibly where the previous one ended.

use candle_core::{DType, Device, Tensor};

use super::TinyConfig;
use super::camera::CameraRig;
use super::clip::{TinyClip, bands};
use super::layout::{CHUNK_ELEMENTS, map_chunks};
use super::weights::{Init, TensorSpec, TinyWeights};
use reelfarm_media::frame::RgbFrame;
use reelfarm_models::ModelError;

/// Hidden channels of the decoder's learned refinement (zero-initialised, so a no-op until trained).
const REFINE_CHANNELS: usize = 16;

/// The latent grid of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LatentGeometry {
    pub width: u32,
    pub height: u32,
    pub frames: u32,
    pub temporal_stride: u32,
    pub latent_frames: usize,
    pub latent_height: usize,
    pub latent_width: usize,
}

impl LatentGeometry {
    /// Latent sides are rounded up to whole denoiser patches; each latent cell then spans
    /// about `spatial_stride` pixels (exactly, when the side divides evenly) and the pooling
    /// and upsampling matrices handle the fractional cells.
    pub(crate) fn new(config: &TinyConfig, width: u32, height: u32, frames: u32) -> Self {
        let patch_pixels = config.spatial_stride * config.patch_size;
        let side =
            |pixels: u32| (pixels as usize).div_ceil(patch_pixels).max(1) * config.patch_size;
        let temporal_stride = config.temporal_stride as u32;
        Self {
            width,
            height,
            frames,
            temporal_stride,
            latent_frames: (frames.max(1) - 1).div_ceil(temporal_stride) as usize + 1,
            latent_height: side(height),
            latent_width: side(width),
        }
    }

    /// (width, height) of the frame's latent grid.
    pub(crate) fn cells(&self) -> (usize, usize) {
        (self.latent_width, self.latent_height)
    }
}

/// Sylvester–Hadamard sign, (-1)^popcount(row & column): rows of a Hadamard matrix are orthogonal.
fn hadamard_sign(row: usize, column: usize) -> f32 {
    if (row & column).count_ones().is_multiple_of(2) {
        1.0
    } else {
        -1.0
    }
}

pub(crate) fn tensor_specs(config: &TinyConfig) -> Vec<TensorSpec> {
    let channels = config.latent_channels;
    let norm = (channels as f32).sqrt();
    // Three columns of a normalised Hadamard matrix: orthonormal, so the transpose is the exact
    // pseudo-inverse and colours survive the round trip.
    let encode: Vec<f32> = (0..channels)
        .flat_map(|row| (0..3).map(move |column| hadamard_sign(row, column) / norm))
        .collect();
    let decode: Vec<f32> = (0..3)
        .flat_map(|row| (0..channels).map(move |column| hadamard_sign(column, row) / norm))
        .collect();
    vec![
        TensorSpec::new(
            "vae.encoder.rgb_to_latent",
            &[channels, 3],
            Init::Fixed(encode),
        ),
        TensorSpec::new(
            "vae.decoder.latent_to_rgb",
            &[3, channels],
            Init::Fixed(decode),
        ),
        TensorSpec::he(
            "vae.decoder.refine.0.weight",
            &[REFINE_CHANNELS, channels, 3, 3],
            9 * channels,
            1.0,
        ),
        TensorSpec::new("vae.decoder.refine.0.bias", &[REFINE_CHANNELS], Init::Zeros),
        TensorSpec::new(
            "vae.decoder.refine.1.weight",
            &[3, REFINE_CHANNELS, 3, 3],
            Init::Zeros,
        ),
        TensorSpec::new("vae.decoder.refine.1.bias", &[3], Init::Zeros),
    ]
}

/// (cells × source_len) box-filter weights: cell `c` averages source pixels over
/// [start + c·len/cells, start + (c+1)·len/cells), pixels counted by their overlap.
fn area_matrix(cells: usize, source_len: usize, window_start: f64, window_len: f64) -> Vec<f32> {
    let mut weights = vec![0f32; cells * source_len];
    let cell_len = window_len / cells as f64;
    for cell in 0..cells {
        let low = window_start + cell as f64 * cell_len;
        let high = low + cell_len;
        let first = (low.floor().max(0.0) as usize).min(source_len - 1);
        let last = (high.ceil() as usize).clamp(first + 1, source_len);
        for pixel in first..last {
            let overlap = high.min(pixel as f64 + 1.0) - low.max(pixel as f64);
            if overlap > 0.0 {
                weights[cell * source_len + pixel] = (overlap / cell_len) as f32;
            }
        }
    }
    weights
}

pub(crate) struct Vae {
    rgb_to_latent: Tensor,
    latent_to_rgb: Tensor,
    refine_in: (Tensor, Tensor),
    refine_out: (Tensor, Tensor),
    /// False while the refinement's output conv is all zeros (untrained): the branch is then
    /// just its bias, and its 16-channel hidden activations need not be computed.
    refine_active: bool,
}

impl Vae {
    pub(crate) fn new(weights: &TinyWeights) -> Result<Self, ModelError> {
        Ok(Self {
            rgb_to_latent: weights.get("vae.encoder.rgb_to_latent")?,
            latent_to_rgb: weights.get("vae.decoder.latent_to_rgb")?,
            refine_in: (
                weights.get("vae.decoder.refine.0.weight")?,
                weights.get("vae.decoder.refine.0.bias")?,
            ),
            refine_out: (
                weights.get("vae.decoder.refine.1.weight")?,
                weights.get("vae.decoder.refine.1.bias")?,
            ),
            refine_active: weights
                .get("vae.decoder.refine.1.weight")?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?
                > 0.0,
        })
    }

    /// One picture of any size → (latent_channels, latent_height, latent_width). The picture
    /// is scaled to cover the output frame and centre-cropped, so nothing is stretched.
    pub(crate) fn encode_picture(
        &self,
        picture: &RgbFrame,
        geometry: &LatentGeometry,
    ) -> Result<Tensor, ModelError> {
        let (source_width, source_height) = (picture.width as usize, picture.height as usize);
        if source_width == 0
            || source_height == 0
            || picture.data.len() != source_width * source_height * 3
        {
            return Err(ModelError::InvalidRequest(
                "first frame buffer does not match its size".into(),
            ));
        }
        let (lh, lw) = (geometry.latent_height, geometry.latent_width);
        let scale = (f64::from(geometry.width) / source_width as f64)
            .max(f64::from(geometry.height) / source_height as f64);
        let (window_width, window_height) = (
            f64::from(geometry.width) / scale,
            f64::from(geometry.height) / scale,
        );
        let device = Device::Cpu;
        let rows = Tensor::from_vec(
            area_matrix(
                lh,
                source_height,
                (source_height as f64 - window_height) / 2.0,
                window_height,
            ),
            (lh, source_height),
            &device,
        )?;
        let columns = Tensor::from_vec(
            area_matrix(
                lw,
                source_width,
                (source_width as f64 - window_width) / 2.0,
                window_width,
            ),
            (lw, source_width),
            &device,
        )?;
        // Pool rows band by band, so a 4K reference picture never exists as one f32 copy
        // (the memory estimate does not know the picture's size).
        let row_bytes = source_width * 3;
        let band_rows = (CHUNK_ELEMENTS / row_bytes).max(1);
        let mut pooled_rows: Option<Tensor> = None;
        for (start, count) in bands(source_height, band_rows) {
            let band = Tensor::from_slice(
                &picture.data[start * row_bytes..(start + count) * row_bytes],
                (count, row_bytes),
                &device,
            )?
            .to_dtype(DType::F32)?;
            let partial = rows.narrow(1, start, count)?.matmul(&band)?;
            pooled_rows = Some(match pooled_rows {
                Some(total) => (total + partial)?,
                None => partial,
            });
        }
        let pooled_rows = pooled_rows
            .ok_or_else(|| ModelError::InvalidRequest("first frame has no rows".into()))?;
        let pooled_rows = pooled_rows
            .reshape((lh, source_width, 3))?
            .transpose(1, 2)?
            .contiguous()?;
        let pooled = pooled_rows
            .reshape((lh * 3, source_width))?
            .matmul(&columns.t()?)?;
        // Area weights sum to one, so mapping 0..255 to −1..1 after pooling is exact and cheap.
        let rgb = pooled
            .affine(1.0 / 127.5, -1.0)?
            .reshape((lh, 3, lw))?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((3, lh * lw))?;
        Ok(self
            .rgb_to_latent
            .matmul(&rgb)?
            .reshape((self.rgb_to_latent.dim(0)?, lh, lw))?)
    }

    /// The learned residual (without its output bias) for latent frames (n, channels, lh, lw).
    fn refinement(&self, latent: &Tensor) -> candle_core::Result<Tensor> {
        latent
            .conv2d(&self.refine_in.0, 1, 1, 1, 1)?
            .broadcast_add(&self.refine_in.1.reshape((1, REFINE_CHANNELS, 1, 1))?)?
            .silu()?
            .conv2d(&self.refine_out.0, 1, 1, 1, 1)
    }

    /// Latent video (frames, channels, plate height, plate width) → a clip that keeps only
    /// low-resolution colour and films it through `rig` at `fps`.
    pub(crate) fn decode(
        &self,
        latent: &Tensor,
        geometry: &LatentGeometry,
        rig: CameraRig,
        fps: u32,
    ) -> Result<TinyClip, ModelError> {
        let (frames, channels, lh, lw) = latent.dims4()?;
        let colour = self
            .latent_to_rgb
            .broadcast_matmul(&latent.reshape((frames, channels, lh * lw))?)?
            .reshape((frames, 3, lh, lw))?;
        let output_bias = self.refine_out.1.reshape((1, 3, 1, 1))?;
        let refined = if self.refine_active {
            // One latent frame at a time: the hidden activations of a whole 1080p clip would be
            // 16 channels × 61 frames × 68 × 120 floats.
            let refinements = map_chunks(&bands(frames, 1), |start, count| {
                self.refinement(&latent.narrow(0, start, count)?)
            })?;
            (colour + Tensor::cat(&refinements, 0)?.broadcast_add(&output_bias)?)?
        } else {
            colour.broadcast_add(&output_bias)?
        };
        // −1..1 → 0..255, plus 0.5 because the final f32→u8 cast truncates.
        let low_resolution = refined.affine(127.5, 128.0)?;
        Ok(TinyClip::new(low_resolution, geometry, rig, fps)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reelfarm_models::ClipDecoder;

    #[test]
    fn area_rows_sum_to_one() {
        for (cells, source) in [(30, 480), (27, 848), (4, 1000), (5, 3), (1, 7)] {
            let weights = area_matrix(cells, source, 0.0, source as f64);
            for cell in 0..cells {
                let sum: f32 = weights[cell * source..(cell + 1) * source].iter().sum();
                assert!(
                    (sum - 1.0).abs() < 1e-4,
                    "area {cells}x{source} row {cell}: {sum}"
                );
            }
        }
    }

    #[test]
    fn trained_refinement_is_applied_per_frame() -> Result<(), ModelError> {
        let config = TinyConfig::default();
        let mut weights = TinyWeights::from_seed(&config, 2)?;
        let kernel = Tensor::full(0.01f32, (3, REFINE_CHANNELS, 3, 3), &Device::Cpu)?;
        weights.replace("vae.decoder.refine.1.weight", kernel)?;
        let vae = Vae::new(&weights)?;
        assert!(vae.refine_active);
        let geometry = LatentGeometry::new(&config, 64, 64, 9);
        let latent = Tensor::from_vec(
            crate::weights::GaussianRng::new(4).gaussians(
                geometry.latent_frames * 4 * geometry.latent_height * geometry.latent_width,
                1.0,
            ),
            (
                geometry.latent_frames,
                4,
                geometry.latent_height,
                geometry.latent_width,
            ),
            &Device::Cpu,
        )?;
        let clip = vae.decode(&latent, &geometry, CameraRig::still(geometry.cells()), 24)?;
        let colour = vae
            .latent_to_rgb
            .broadcast_matmul(&latent.reshape((3, 4, 16))?)?
            .reshape((3, 3, 4, 4))?;
        let expected = (colour + vae.refinement(&latent)?)?.affine(127.5, 128.0)?;
        let difference = (clip.low_resolution - expected)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(difference < 1e-3, "difference {difference}");
        Ok(())
    }

    #[test]
    fn a_wider_picture_is_cropped_not_squeezed() -> Result<(), ModelError> {
        let config = TinyConfig::default();
        let vae = Vae::new(&TinyWeights::from_seed(&config, 2)?)?;
        // 300×100: blue | red square | blue. A square output keeps only the red centre.
        let mut data = Vec::new();
        for _ in 0..100 {
            for x in 0..300 {
                data.extend_from_slice(if (100..200).contains(&x) {
                    &[220, 30, 30]
                } else {
                    &[30, 30, 220]
                });
            }
        }
        let geometry = LatentGeometry::new(&config, 128, 128, 1);
        let latent = vae
            .encode_picture(&RgbFrame::new(300, 100, data), &geometry)?
            .unsqueeze(0)?;
        let frame = vae
            .decode(&latent, &geometry, CameraRig::still(geometry.cells()), 24)?
            .decode_frame(0)?;
        for (x, y) in [(2, 2), (64, 64), (125, 120)] {
            let pixel = frame.pixel(x, y);
            assert!(
                pixel[0] > 200 && pixel[2] < 50,
                "pixel ({x}, {y}) = {pixel:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn round_trip_reproduces_a_blurred_picture() -> Result<(), ModelError> {
        let config = TinyConfig::default();
        let vae = Vae::new(&TinyWeights::from_seed(&config, 2)?)?;
        let geometry = LatentGeometry::new(&config, 128, 64, 1);
        // Smooth gradient: blurring barely changes it, so the round trip must be near exact.
        let mut data = Vec::new();
        for y in 0..64u32 {
            for x in 0..128u32 {
                data.extend_from_slice(&[(x * 2) as u8, (y * 4) as u8, 200]);
            }
        }
        let picture = RgbFrame::new(128, 64, data);
        let latent = vae.encode_picture(&picture, &geometry)?.unsqueeze(0)?;
        let decoded = vae
            .decode(&latent, &geometry, CameraRig::still(geometry.cells()), 24)?
            .decode_frame(0)?;
        // Edge pixels clamp to the nearest cell centre (half a cell away on a slope), so judge
        // the mean error and the interior.
        let errors: Vec<u8> = decoded
            .data
            .iter()
            .zip(&picture.data)
            .map(|(a, b)| a.abs_diff(*b))
            .collect();
        let mean = errors.iter().map(|&e| f64::from(e)).sum::<f64>() / errors.len() as f64;
        assert!(mean < 3.0, "mean channel error {mean}");
        let (x, y) = (64, 32);
        let centre = decoded
            .pixel(x, y)
            .iter()
            .zip(picture.pixel(x, y))
            .map(|(a, b)| a.abs_diff(b))
            .max();
        assert!(centre <= Some(2), "centre pixel error {centre:?}");
        Ok(())
    }
}
