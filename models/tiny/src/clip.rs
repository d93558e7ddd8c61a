//! The generated clip as the worker holds it: one small colour image per latent frame, from which each full-size frame is made on demand (linear in time, bilinear in space), so a long 1080p clip never sits in memory at full size.

use candle_core::{DType, Device, Tensor};

use super::camera::CameraRig;
use super::layout::{CHUNK_ELEMENTS, map_chunks};
use super::vae::LatentGeometry;
use reelfarm_media::frame::RgbFrame;
use reelfarm_models::{ClipDecoder, ModelError};

/// Bilinear sampling of the cells under a window (`start`, `len` in cells) onto `target_len`
/// pixels; over the whole grid (0, cells) cell centres sit at (c + 0.5)·target_len/cells, the
/// inverse geometry of `area_matrix`. Edges clamped: for each pixel the cell below it, the
/// cell above it and the weight of the one above.
fn bilinear_taps(
    target_len: usize,
    cells: usize,
    (start, len): (f64, f64),
) -> (Vec<u32>, Vec<u32>, Vec<f32>) {
    let mut below = Vec::with_capacity(target_len);
    let mut above = Vec::with_capacity(target_len);
    let mut fraction = Vec::with_capacity(target_len);
    for pixel in 0..target_len {
        let position = (start + (pixel as f64 + 0.5) * len / target_len as f64 - 0.5)
            .clamp(0.0, (cells - 1) as f64);
        let cell = (position.floor() as usize).min(cells - 1);
        below.push(cell as u32);
        above.push((cell + 1).min(cells - 1) as u32);
        fraction.push((position - cell as f64) as f32);
    }
    (below, above, fraction)
}

/// Linear interpolation along `dim`: low + fraction·(high − low) from two gathers. An order
/// of magnitude cheaper than a dense resampling matmul with K = cells, which gemm runs poorly.
struct Interpolation {
    below: Tensor,
    above: Tensor,
    fraction: Tensor,
    dim: usize,
}

impl Interpolation {
    fn new(
        target_len: usize,
        cells: usize,
        window: (f64, f64),
        dim: usize,
        rank: usize,
    ) -> candle_core::Result<Self> {
        let (below, above, fraction) = bilinear_taps(target_len, cells, window);
        let mut fraction_shape = vec![1; rank];
        fraction_shape[dim] = target_len;
        Ok(Self {
            below: Tensor::from_vec(below, target_len, &Device::Cpu)?,
            above: Tensor::from_vec(above, target_len, &Device::Cpu)?,
            fraction: Tensor::from_vec(fraction, fraction_shape, &Device::Cpu)?,
            dim,
        })
    }

    fn apply(&self, values: &Tensor) -> candle_core::Result<Tensor> {
        self.apply_range(values, 0, self.below.dim(0)?)
    }

    /// Output positions `start..start + count` only; `values` must be contiguous.
    fn apply_range(
        &self,
        values: &Tensor,
        start: usize,
        count: usize,
    ) -> candle_core::Result<Tensor> {
        let low = values.index_select(&self.below.narrow(0, start, count)?, self.dim)?;
        let high = values.index_select(&self.above.narrow(0, start, count)?, self.dim)?;
        let step = (high - &low)?.broadcast_mul(&self.fraction.narrow(self.dim, start, count)?)?;
        low + step
    }
}

/// (start, count) bands of `total` items, `per_band` at a time.
pub(crate) fn bands(total: usize, per_band: usize) -> Vec<(usize, usize)> {
    let per_band = per_band.max(1);
    (0..total)
        .step_by(per_band)
        .map(|start| (start, per_band.min(total - start)))
        .collect()
}

/// A clip as low-resolution colour plates (one per latent frame, already in 0..255 units);
/// each full-size frame is interpolated in time, then upsampled separably from the camera's
/// window over the plate at that moment.
pub(crate) struct TinyClip {
    pub(super) low_resolution: Tensor,
    /// The samplers of a still camera, made once; a moving one makes them per frame.
    still: Option<(Interpolation, Interpolation)>,
    rig: CameraRig,
    fps: f64,
    geometry: LatentGeometry,
}

impl TinyClip {
    /// `low_resolution`: (latent frames, 3, plate height, plate width) colours in 0..255 units
    /// (+0.5 for rounding), the plate of `rig`; `fps` places output frames on its path.
    pub(crate) fn new(
        low_resolution: Tensor,
        geometry: &LatentGeometry,
        rig: CameraRig,
        fps: u32,
    ) -> candle_core::Result<Self> {
        let mut clip = Self {
            low_resolution,
            still: None,
            rig,
            fps: f64::from(fps.max(1)),
            geometry: *geometry,
        };
        if clip.rig.is_still() {
            clip.still = Some(clip.samplers(0)?);
        }
        Ok(clip)
    }

    /// (rows, columns) samplers of output frame `index`.
    fn samplers(&self, index: u32) -> candle_core::Result<(Interpolation, Interpolation)> {
        let (plate_width, plate_height) = self.rig.plate();
        let window = self.rig.window((f64::from(index) / self.fps) as f32);
        Ok((
            Interpolation::new(
                self.geometry.height as usize,
                plate_height,
                (window.top, window.height),
                0,
                2,
            )?,
            Interpolation::new(
                self.geometry.width as usize,
                plate_width,
                (window.left, window.width),
                2,
                3,
            )?,
        ))
    }

    fn decode(&self, index: u32) -> candle_core::Result<RgbFrame> {
        let stride = self.geometry.temporal_stride;
        let (base, phase) = ((index / stride) as usize, index % stride);
        let colour = if phase == 0 {
            self.low_resolution.get(base)?
        } else {
            let fraction = f64::from(phase) / f64::from(stride);
            let before = self.low_resolution.get(base)?.affine(1.0 - fraction, 0.0)?;
            (before + self.low_resolution.get(base + 1)?.affine(fraction, 0.0)?)?
        };
        let moving;
        let (rows, columns) = match &self.still {
            Some((rows, columns)) => (rows, columns),
            None => {
                moving = self.samplers(index)?;
                (&moving.0, &moving.1)
            }
        };
        let (lh, width, height) = (
            self.rig.plate().1,
            self.geometry.width as usize,
            self.geometry.height as usize,
        );
        // Everything in bands that stay in cache and below candle's worker-pool threshold,
        // shared by our threads: fresh multi-megabyte tensors per frame cost more in page
        // faults than the arithmetic. First widen while the frame is only lh rows tall and
        // interleave the channels, then interpolate whole rows of the (height, width·3) picture.
        let widened = map_chunks(&bands(lh, CHUNK_ELEMENTS / (3 * width)), |start, count| {
            let slab = colour.narrow(1, start, count)?.contiguous()?;
            columns
                .apply(&slab)?
                .permute((1, 2, 0))?
                .contiguous()?
                .reshape((count, width * 3))
        })?;
        let interleaved = Tensor::cat(&widened, 0)?;
        // f32→u8 saturates (Rust `as`), which is the clamp to 0..255; a test pins this down.
        let pieces = map_chunks(
            &bands(height, CHUNK_ELEMENTS / (3 * width)),
            |start, count| {
                rows.apply_range(&interleaved, start, count)?
                    .to_dtype(DType::U8)
            },
        )?;
        let mut bytes = Vec::with_capacity(height * width * 3);
        for piece in pieces {
            bytes.extend_from_slice(&piece.flatten_all()?.to_vec1::<u8>()?);
        }
        Ok(RgbFrame::new(
            self.geometry.width,
            self.geometry.height,
            bytes,
        ))
    }
}

impl ClipDecoder for TinyClip {
    fn decode_frame(&self, index: u32) -> Result<RgbFrame, ModelError> {
        Ok(self.decode(index)?)
    }

    fn resident_bytes(&self) -> u64 {
        let geometry = &self.geometry;
        4 * (self.low_resolution.elem_count() + 2 * (geometry.width + geometry.height) as usize)
            as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TinyConfig;

    #[test]
    fn taps_stay_inside_the_grid() {
        for (cells, target) in [(30, 480), (27, 848), (4, 1000), (5, 3), (1, 7)] {
            let (below, above, fraction) = bilinear_taps(target, cells, (0.0, cells as f64));
            assert_eq!(below.len(), target);
            assert!(
                below
                    .iter()
                    .zip(&above)
                    .all(|(&low, &high)| low <= high && (high as usize) < cells)
            );
            assert!(fraction.iter().all(|&f| (0.0..1.0).contains(&f)));
        }
    }

    #[test]
    fn interpolation_matches_the_formula() -> candle_core::Result<()> {
        let values = Tensor::new(&[[0f32, 10.0, 40.0]], &Device::Cpu)?;
        let widened = Interpolation::new(6, 3, (0.0, 3.0), 1, 2)?
            .apply(&values)?
            .to_vec2::<f32>()?;
        // 3 cells over 6 pixels: pixel p samples cell position (p + 0.5)/2 − 0.5, clamped.
        assert_eq!(widened, vec![vec![0.0, 2.5, 7.5, 17.5, 32.5, 40.0]]);
        Ok(())
    }

    #[test]
    fn frames_between_latent_frames_are_blended_in_time() -> Result<(), ModelError> {
        let geometry = LatentGeometry::new(&TinyConfig::default(), 64, 32, 5);
        assert_eq!(geometry.latent_frames, 2);
        let (lh, lw) = (geometry.latent_height, geometry.latent_width);
        let dark = Tensor::full(40.5f32, (1, 3, lh, lw), &Device::Cpu)?;
        let light = Tensor::full(200.5f32, (1, 3, lh, lw), &Device::Cpu)?;
        let clip = TinyClip::new(
            Tensor::cat(&[&dark, &light], 0)?,
            &geometry,
            CameraRig::still((lw, lh)),
            24,
        )?;
        let levels: Vec<u8> = (0..5)
            .map(|index| clip.decode_frame(index).map(|frame| frame.pixel(10, 10)[0]))
            .collect::<Result<_, _>>()?;
        assert_eq!(levels, vec![40, 80, 120, 160, 200]);
        let frame = clip.decode_frame(4)?;
        assert_eq!((frame.width, frame.height), (64, 32));
        assert!(frame.data.iter().all(|&value| value == 200));
        Ok(())
    }

    #[test]
    fn a_moving_camera_films_the_plate_through_its_window() -> Result<(), ModelError> {
        use crate::CameraPath;
        // A plate whose brightness grows to the right, filmed by a camera panning right for
        // 2 s: the middle of the frame brightens as the window slides over the plate.
        let geometry = LatentGeometry::new(&TinyConfig::default(), 128, 64, 49);
        let pan = CameraPath {
            pan_x: 0.25,
            ..CameraPath::STILL
        };
        let rig = CameraRig::new(pan, 2.0, geometry.cells(), 2);
        let (plate_width, plate_height) = rig.plate();
        assert_eq!((plate_width, plate_height), (12, 4));
        let ramp: Vec<f32> = (0..geometry.latent_frames * 3 * plate_height)
            .flat_map(|_| (0..plate_width).map(|column| column as f32 * 20.0 + 0.5))
            .collect();
        let plate = Tensor::from_vec(
            ramp,
            (geometry.latent_frames, 3, plate_height, plate_width),
            &Device::Cpu,
        )?;
        let clip = TinyClip::new(plate, &geometry, rig, 24)?;
        let middle = |index: u32| clip.decode_frame(index).map(|frame| frame.pixel(64, 32)[0]);
        // Pixel 64 samples plate position 3.53 cells at 0 s; 2 s later the window moved 4 cells.
        assert_eq!(middle(0)?, 71);
        assert_eq!(middle(48)?, 151);
        assert!(middle(12)? > middle(0)? && middle(36)? > middle(12)?);
        Ok(())
    }

    #[test]
    fn float_to_byte_cast_saturates() -> candle_core::Result<()> {
        let values = Tensor::new(&[-40.0f32, 0.7, 127.9, 255.4, 900.0], &Device::Cpu)?;
        assert_eq!(
            values.to_dtype(DType::U8)?.to_vec1::<u8>()?,
            vec![0, 0, 127, 255, 255]
        );
        Ok(())
    }
}
