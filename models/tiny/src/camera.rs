//! reelfarm-tiny's virtual camera: the denoiser paints a plate that holds still (waves, rain and snow still move) and every output frame looks at it through a window that pans, tilts and zooms along a path a trained head reads from the prompt. Trained end to end, the 1.45 M-parameter denoiser never learned camera moves in its CPU budget (19 % of held-out camera prompts followed); a rigid window over a still plate moves the way the prompt says, at the price of parallax.
//!
//! Units: a path moves the window in frame widths (x) and heights (y) per second and zooms
//! by a natural-log factor per second. A plate is the frame's latent grid grown, in whole
//! denoiser patches, by the distance the window travels; a window is a rectangle in plate
//! cells. The window at 0 s is the frame itself (scale 1) except when pulling out, so a
//! continuing segment's first frame lands on whole plate cells.

use candle_core::{Device, Tensor};

use super::TinyConfig;
use super::weights::{Init, TensorSpec, TinyWeights};
use reelfarm_models::ModelError;

/// Values the camera head predicts: pan x, pan y, zoom.
pub(crate) const CAMERA_VALUES: usize = 3;
/// The head predicts path values times this, so its targets are of order one.
const HEAD_SCALE: f32 = 10.0;
/// Most a window travels over one clip, in frame sides summed over both axes: a long shot
/// pans slower rather than leave its subject (past the frame's edges the plate only continues
/// the sky above and the ground below), and a plate stays under `PLATE_GROWTH` × the frame.
const MAX_TRAVEL: f32 = 0.5;
/// Most a window zooms over one clip (natural log): 2×, beyond which the plate's cells show.
const MAX_ZOOM: f32 = std::f32::consts::LN_2;
/// Bound on a plate's area: at most this times (frame width + patch) × (frame height + patch)
/// cells, the worst case being a diagonal move of half the travel on each axis,
/// (1 + MAX_TRAVEL/2)². The catalog's memory coefficients for reelfarm-tiny allow for it.
#[cfg(all(test, feature = "train"))]
pub(crate) const PLATE_GROWTH: f64 =
    (1.0 + MAX_TRAVEL as f64 / 2.0) * (1.0 + MAX_TRAVEL as f64 / 2.0);

/// A camera move as rates per second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CameraPath {
    /// Frame widths per second the view moves right (the picture slides left); < 0 = left.
    pub pan_x: f32,
    /// Frame heights per second the view moves down (the picture rises); < 0 = up.
    pub pan_y: f32,
    /// Natural-log magnification per second: > 0 pushes in, < 0 pulls out.
    pub zoom: f32,
}

impl CameraPath {
    pub const STILL: Self = Self {
        pan_x: 0.0,
        pan_y: 0.0,
        zoom: 0.0,
    };

    #[cfg_attr(not(feature = "train"), allow(dead_code))]
    pub(crate) fn head_target(&self) -> [f32; CAMERA_VALUES] {
        [self.pan_x, self.pan_y, self.zoom].map(|value| value * HEAD_SCALE)
    }

    pub(crate) fn from_head(values: &[f32]) -> Self {
        let value = |index: usize| {
            values
                .get(index)
                .copied()
                .filter(|value| value.is_finite())
                .unwrap_or(0.0)
                / HEAD_SCALE
        };
        Self {
            pan_x: value(0),
            pan_y: value(1),
            zoom: value(2),
        }
    }

    /// The path slowed down where a clip of `seconds` would travel or zoom too far.
    fn limited(self, seconds: f32) -> Self {
        let seconds = seconds.max(1e-3);
        let travel = (self.pan_x.abs() + self.pan_y.abs()) * seconds;
        let pan = if travel > MAX_TRAVEL {
            MAX_TRAVEL / travel
        } else {
            1.0
        };
        Self {
            pan_x: self.pan_x * pan,
            pan_y: self.pan_y * pan,
            zoom: self.zoom.clamp(-MAX_ZOOM / seconds, MAX_ZOOM / seconds),
        }
    }
}

/// A rectangle in plate cells (cell c spans c..c+1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Window {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
}

/// Frame coordinates of token centres for the position features: −1..1 across the frame
/// at 0 s, `offset + (token + 0.5) · step` along each axis.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct PositionMap {
    pub y_offset: f32,
    pub y_step: f32,
    pub x_offset: f32,
    pub x_step: f32,
}

impl PositionMap {
    /// The frame itself: tokens spread evenly over −1..1.
    #[cfg_attr(not(feature = "train"), allow(dead_code))]
    pub(crate) fn frame(grid_height: usize, grid_width: usize) -> Self {
        Self {
            y_offset: -1.0,
            y_step: 2.0 / grid_height.max(1) as f32,
            x_offset: -1.0,
            x_step: 2.0 / grid_width.max(1) as f32,
        }
    }
}

/// One clip's plate and the window path over it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct CameraRig {
    path: CameraPath,
    seconds: f32,
    /// The frame's latent grid (width, height) in cells.
    frame: (usize, usize),
    plate: (usize, usize),
    /// Top-left of the unzoomed window at 0 s, in plate cells.
    start: (f64, f64),
}

impl CameraRig {
    /// A rig for a clip of `seconds` whose frame is `frame_cells` (width, height) latent cells;
    /// plates grow in whole multiples of `patch` cells.
    pub(crate) fn new(
        path: CameraPath,
        seconds: f32,
        frame_cells: (usize, usize),
        patch: usize,
    ) -> Self {
        let path = path.limited(seconds);
        let patch = patch.max(1);
        let extra = |rate: f32, cells: usize| -> usize {
            let travelled = f64::from(rate.abs() * seconds) * cells as f64;
            // A hair of slack so float noise never rounds a whole patch up.
            ((travelled - 1e-6).max(0.0) / patch as f64).ceil() as usize * patch
        };
        let (extra_x, extra_y) = (
            extra(path.pan_x, frame_cells.0),
            extra(path.pan_y, frame_cells.1),
        );
        Self {
            path,
            seconds: seconds.max(0.0),
            frame: frame_cells,
            plate: (frame_cells.0 + extra_x, frame_cells.1 + extra_y),
            start: (
                if path.pan_x < 0.0 {
                    extra_x as f64
                } else {
                    0.0
                },
                if path.pan_y < 0.0 {
                    extra_y as f64
                } else {
                    0.0
                },
            ),
        }
    }

    #[cfg(test)]
    pub(crate) fn still(frame_cells: (usize, usize)) -> Self {
        Self::new(CameraPath::STILL, 0.0, frame_cells, 1)
    }

    #[cfg(test)]
    #[cfg_attr(not(feature = "train"), allow(dead_code))]
    pub(crate) fn path(&self) -> CameraPath {
        self.path
    }

    /// (width, height) of the plate in latent cells.
    pub(crate) fn plate(&self) -> (usize, usize) {
        self.plate
    }

    pub(crate) fn is_still(&self) -> bool {
        self.plate == self.frame && self.path.zoom == 0.0
    }

    /// Where the frame looks at `seconds` into the clip (clamped to the clip).
    pub(crate) fn window(&self, seconds: f32) -> Window {
        let at = f64::from(seconds.clamp(0.0, self.seconds));
        let (frame_width, frame_height) = (self.frame.0 as f64, self.frame.1 as f64);
        let zoom = f64::from(self.path.zoom);
        // Never wider than the frame: pushing in shrinks from 1, pulling out grows to 1.
        let scale = if zoom >= 0.0 {
            (-zoom * at).exp()
        } else {
            (zoom * (f64::from(self.seconds) - at)).exp()
        };
        let (width, height) = (frame_width * scale, frame_height * scale);
        Window {
            left: self.start.0
                + f64::from(self.path.pan_x) * at * frame_width
                + (frame_width - width) / 2.0,
            top: self.start.1
                + f64::from(self.path.pan_y) * at * frame_height
                + (frame_height - height) / 2.0,
            width,
            height,
        }
    }

    /// Frame coordinates of the plate's tokens (`patch` cells each): the frame at 0 s spans
    /// −1..1, the rest of the plate lies beyond.
    pub(crate) fn position_map(&self, patch: usize) -> PositionMap {
        let (frame_width, frame_height) = (self.frame.0 as f32, self.frame.1 as f32);
        let patch = patch as f32;
        PositionMap {
            y_offset: -1.0 - 2.0 * self.start.1 as f32 / frame_height,
            y_step: 2.0 * patch / frame_height,
            x_offset: -1.0 - 2.0 * self.start.0 as f32 / frame_width,
            x_step: 2.0 * patch / frame_width,
        }
    }

    /// A picture's latent (channels, frame height, frame width) placed where the window is at
    /// 0 s: (values, mask) over the plate, mask 1 on cells whose centre the window covers.
    pub(crate) fn place_first_frame(
        &self,
        picture: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (channels, frame_height, frame_width) = picture.dims3()?;
        let (plate_width, plate_height) = self.plate;
        let window = self.window(0.0);
        let source = picture.flatten_all()?.to_vec1::<f32>()?;
        let mut values = vec![0f32; channels * plate_height * plate_width];
        let mut mask = vec![0f32; plate_height * plate_width];
        let sample = |channel: usize, y: f64, x: f64| -> f32 {
            let y = y.clamp(0.0, (frame_height - 1) as f64);
            let x = x.clamp(0.0, (frame_width - 1) as f64);
            let (y0, x0) = (y.floor() as usize, x.floor() as usize);
            let (y1, x1) = (
                (y0 + 1).min(frame_height - 1),
                (x0 + 1).min(frame_width - 1),
            );
            let (fy, fx) = ((y - y0 as f64) as f32, (x - x0 as f64) as f32);
            let at = |row: usize, column: usize| {
                source[(channel * frame_height + row) * frame_width + column]
            };
            let top = at(y0, x0) + (at(y0, x1) - at(y0, x0)) * fx;
            let bottom = at(y1, x0) + (at(y1, x1) - at(y1, x0)) * fx;
            top + (bottom - top) * fy
        };
        for row in 0..plate_height {
            let v = (row as f64 + 0.5 - window.top) / window.height;
            for column in 0..plate_width {
                let u = (column as f64 + 0.5 - window.left) / window.width;
                if !(0.0..=1.0).contains(&u) || !(0.0..=1.0).contains(&v) {
                    continue;
                }
                mask[row * plate_width + column] = 1.0;
                let (y, x) = (v * frame_height as f64 - 0.5, u * frame_width as f64 - 0.5);
                for channel in 0..channels {
                    values[(channel * plate_height + row) * plate_width + column] =
                        sample(channel, y, x);
                }
            }
        }
        Ok((
            Tensor::from_vec(values, (channels, plate_height, plate_width), &Device::Cpu)?,
            Tensor::from_vec(mask, (1, plate_height, plate_width), &Device::Cpu)?,
        ))
    }
}

pub(crate) fn tensor_specs(config: &TinyConfig) -> Vec<TensorSpec> {
    vec![
        // Small: an untrained head barely moves the camera.
        TensorSpec::he(
            "camera.weight",
            &[config.text_dim, CAMERA_VALUES],
            config.text_dim,
            0.1,
        ),
        TensorSpec::new("camera.bias", &[CAMERA_VALUES], Init::Zeros),
    ]
}

/// Reads the camera path from the pooled prompt vector: one linear layer.
pub(crate) struct CameraHead {
    weight: Tensor,
    bias: Tensor,
}

impl CameraHead {
    pub(crate) fn new(weights: &TinyWeights) -> Result<Self, ModelError> {
        Ok(Self {
            weight: weights.get("camera.weight")?,
            bias: weights.get("camera.bias")?,
        })
    }

    /// Pooled text (1, text_dim) → the path it asks for.
    pub(crate) fn path(&self, text: &Tensor) -> candle_core::Result<CameraPath> {
        let values = text
            .matmul(&self.weight)?
            .broadcast_add(&self.bias)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        Ok(CameraPath::from_head(&values))
    }
}

#[cfg(all(test, feature = "train"))]
mod tests {
    use super::*;
    use crate::scenes::{Attribute, Camera, Scene, Setting, TimeOfDay, Weather};

    fn scene(camera: Camera) -> Scene {
        Scene::with_attributes(TimeOfDay::Noon, Setting::Sea, Weather::Clear, camera, 3)
    }

    fn inside(window: Window, plate: (usize, usize)) -> bool {
        let slack = 1e-6;
        window.left >= -slack
            && window.top >= -slack
            && window.left + window.width <= plate.0 as f64 + slack
            && window.top + window.height <= plate.1 as f64 + slack
    }

    #[test]
    fn a_still_rig_is_the_frame() {
        let rig = CameraRig::still((54, 30));
        assert!(rig.is_still());
        assert_eq!(rig.plate(), (54, 30));
        let expected = Window {
            left: 0.0,
            top: 0.0,
            width: 54.0,
            height: 30.0,
        };
        assert_eq!(rig.window(0.0), expected);
        assert_eq!(rig.window(7.0), expected);
        assert_eq!(rig.position_map(2), PositionMap::frame(15, 27));
    }

    #[test]
    fn windows_stay_on_the_plate_and_start_on_the_frame() {
        for camera in Camera::ALL.iter().copied() {
            for seconds in [0.5f32, 3.0, 10.0, 20.0] {
                let rig = CameraRig::new(scene(camera).camera_path(), seconds, (54, 30), 2);
                let (width, height) = rig.plate();
                assert_eq!((width % 2, height % 2), (0, 0));
                assert!(
                    (width * height) as f64 <= PLATE_GROWTH * (56.0 * 32.0),
                    "{camera:?} {seconds}s: plate {width}x{height}"
                );
                for step in 0..=20 {
                    let window = rig.window(seconds * step as f32 / 20.0);
                    assert!(
                        inside(window, rig.plate()),
                        "{camera:?} {seconds}s: {window:?}"
                    );
                }
                let first = rig.window(0.0);
                if camera != Camera::PullOut {
                    assert_eq!((first.width, first.height), (54.0, 30.0), "{camera:?}");
                    assert_eq!(first.left.fract(), 0.0);
                    assert_eq!(first.top.fract(), 0.0);
                }
            }
        }
    }

    #[test]
    fn windows_move_the_way_the_camera_does() {
        let moved = |camera: Camera| {
            let rig = CameraRig::new(scene(camera).camera_path(), 3.0, (54, 30), 2);
            let (start, end) = (rig.window(0.0), rig.window(3.0));
            (
                end.left + end.width / 2.0 - start.left - start.width / 2.0,
                end.top + end.height / 2.0 - start.top - start.height / 2.0,
                (end.width / start.width).ln(),
            )
        };
        let (dx, dy, zoom) = moved(Camera::PanLeft);
        assert!(dx < -5.0 && dy == 0.0 && zoom == 0.0);
        assert!(moved(Camera::PanRight).0 > 5.0);
        assert!(moved(Camera::TiltUp).1 < -3.0);
        let (_, dy, zoom) = moved(Camera::AerialDescent);
        assert!(dy > 3.0 && zoom < 0.0 && zoom > -0.2);
        // Pushing in narrows the window; pulling out widens it to the frame.
        assert!(moved(Camera::PushIn).2 < -0.3);
        assert!(moved(Camera::PullOut).2 > 0.3);
        assert_eq!(moved(Camera::Static), (0.0, 0.0, 0.0));
    }

    #[test]
    fn long_clips_slow_down_instead_of_growing_the_plate() {
        let fast = CameraPath {
            pan_x: 0.5,
            pan_y: 0.5,
            zoom: 1.0,
        };
        let rig = CameraRig::new(fast, 20.0, (54, 30), 2);
        let path = rig.path();
        assert!((path.pan_x.abs() + path.pan_y.abs()) * 20.0 <= MAX_TRAVEL + 1e-6);
        assert!((path.zoom * 20.0 - MAX_ZOOM).abs() < 1e-6);
        assert!(CameraPath::from_head(&[f32::NAN, 1.0, f32::INFINITY]).pan_x == 0.0);
        let target = scene(Camera::PanRight).camera_path().head_target();
        assert_eq!(
            CameraPath::from_head(&target),
            scene(Camera::PanRight).camera_path()
        );
    }

    #[test]
    fn the_first_frame_lands_under_the_first_window() -> candle_core::Result<()> {
        let (channels, height, width) = (4, 30, 54);
        let picture = Tensor::arange(0f32, (channels * height * width) as f32, &Device::Cpu)?
            .reshape((channels, height, width))?;
        // Panning left: the frame at 0 s is the plate's right end, copied cell for cell.
        let rig = CameraRig::new(scene(Camera::PanLeft).camera_path(), 3.0, (54, 30), 2);
        let (values, mask) = rig.place_first_frame(&picture)?;
        let left = rig.window(0.0).left as usize;
        assert!(left > 0);
        assert_eq!(
            values
                .narrow(2, left, width)?
                .flatten_all()?
                .to_vec1::<f32>()?,
            picture.flatten_all()?.to_vec1::<f32>()?
        );
        assert_eq!(mask.sum_all()?.to_scalar::<f32>()?, (height * width) as f32);
        assert_eq!(mask.narrow(2, 0, left)?.sum_all()?.to_scalar::<f32>()?, 0.0);
        // Pulling out starts zoomed in: the picture shrinks into the middle of the plate.
        let rig = CameraRig::new(scene(Camera::PullOut).camera_path(), 3.0, (54, 30), 2);
        let (_, mask) = rig.place_first_frame(&picture)?;
        let covered = mask.sum_all()?.to_scalar::<f32>()?;
        assert!(covered > 0.0 && covered < (height * width) as f32 * 0.8);
        Ok(())
    }
}
