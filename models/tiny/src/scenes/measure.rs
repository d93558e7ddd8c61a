//! Reads a clip's attributes back from its pixels without any help from the model that made it: camera motion from a global motion search between frames, time of day, setting and weather from a small classifier trained on the scene generator's own ground truth.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::render::render_frame;
use super::{Attribute, Attributes, Camera, Scene, Setting, TimeOfDay, Weather};
use reelfarm_media::frame::RgbFrame;

/// Size of the grey pictures the motion search compares.
const MOTION_SIZE: (usize, usize) = (64, 36);
/// Size of the colour thumbnails the classifier reads.
const THUMB_SIZE: (usize, usize) = (32, 18);

/// A frame reduced to what the measures read: a grey motion picture and a colour thumbnail.
#[derive(Clone, Debug)]
pub struct FrameSummary {
    grey: Vec<f32>,
    thumb: Vec<[f32; 3]>,
}

/// Area-average of `frame` into `width`×`height` cells, RGB in 0..1.
fn area_average(frame: &RgbFrame, width: usize, height: usize) -> Vec<[f32; 3]> {
    let (fw, fh) = (frame.width as usize, frame.height as usize);
    let mut cells = Vec::with_capacity(width * height);
    for row in 0..height {
        let (y0, y1) = (
            row * fh / height,
            ((row + 1) * fh / height).max(row * fh / height + 1),
        );
        for column in 0..width {
            let (x0, x1) = (
                column * fw / width,
                ((column + 1) * fw / width).max(column * fw / width + 1),
            );
            let mut sum = [0f32; 3];
            for y in y0..y1.min(fh) {
                let start = (y * fw + x0) * 3;
                for pixel in frame.data[start..(y * fw + x1.min(fw)) * 3].chunks_exact(3) {
                    for channel in 0..3 {
                        sum[channel] += f32::from(pixel[channel]);
                    }
                }
            }
            let count = ((y1.min(fh) - y0) * (x1.min(fw) - x0)).max(1) as f32 * 255.0;
            cells.push(sum.map(|total| total / count));
        }
    }
    cells
}

fn luma(rgb: [f32; 3]) -> f32 {
    0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
}

impl FrameSummary {
    pub fn of(frame: &RgbFrame) -> Self {
        Self {
            grey: area_average(frame, MOTION_SIZE.0, MOTION_SIZE.1)
                .into_iter()
                .map(luma)
                .collect(),
            thumb: area_average(frame, THUMB_SIZE.0, THUMB_SIZE.1),
        }
    }
}

/// Global motion of a clip: content translation in frame widths/heights per second (+x
/// right, +y down) and zoom as log-scale per second (+ = content grows).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Motion {
    pub dx: f32,
    pub dy: f32,
    pub zoom: f32,
}

fn sample(grey: &[f32], x: f32, y: f32) -> Option<f32> {
    let (w, h) = MOTION_SIZE;
    if x < 0.0 || y < 0.0 || x > (w - 1) as f32 || y > (h - 1) as f32 {
        return None;
    }
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (tx, ty) = (x - x0 as f32, y - y0 as f32);
    let top = grey[y0 * w + x0] * (1.0 - tx) + grey[y0 * w + x1] * tx;
    let bottom = grey[y1 * w + x0] * (1.0 - tx) + grey[y1 * w + x1] * tx;
    Some(top * (1.0 - ty) + bottom * ty)
}

/// Mean absolute difference between `later` and `earlier` moved by (dx, dy) pixels and scaled
/// by `scale` about the centre, over the interior of `later`.
fn warp_cost(earlier: &[f32], later: &[f32], dx: f32, dy: f32, scale: f32) -> f32 {
    let (w, h) = MOTION_SIZE;
    let (cx, cy) = ((w - 1) as f32 / 2.0, (h - 1) as f32 / 2.0);
    let margin = 6;
    let (mut total, mut count) = (0f32, 0u32);
    for y in margin..h - margin {
        for x in margin..w - margin {
            let sx = cx + (x as f32 - cx) / scale - dx;
            let sy = cy + (y as f32 - cy) / scale - dy;
            if let Some(value) = sample(earlier, sx, sy) {
                total += (later[y * w + x] - value).abs();
                count += 1;
            }
        }
    }
    if count < 200 {
        f32::INFINITY
    } else {
        total / count as f32
    }
}

/// Best (dx, dy, scale) taking `earlier` to `later`: a joint coarse search over whole-pixel
/// shifts and 3 % zoom steps, then a finer search around the best candidate.
fn align(earlier: &[f32], later: &[f32]) -> (f32, f32, f32) {
    let mut best = (0.0, 0.0, 0.0, warp_cost(earlier, later, 0.0, 0.0, 1.0));
    let consider = |dx: f32, dy: f32, log_scale: f32, best: &mut (f32, f32, f32, f32)| {
        let cost = warp_cost(earlier, later, dx, dy, log_scale.exp());
        if cost < best.3 - 1e-6 {
            *best = (dx, dy, log_scale, cost);
        }
    };
    for zoom_step in -6..=6 {
        for dy in -5..=5 {
            for dx in -5..=5 {
                consider(dx as f32, dy as f32, zoom_step as f32 * 0.03, &mut best);
            }
        }
    }
    let coarse = best;
    for zoom_step in -1..=1 {
        for dy in -1..=1 {
            for dx in -1..=1 {
                consider(
                    coarse.0 + dx as f32 * 0.5,
                    coarse.1 + dy as f32 * 0.5,
                    coarse.2 + zoom_step as f32 * 0.015,
                    &mut best,
                );
            }
        }
    }
    (best.0, best.1, best.2.exp())
}

/// The clip's mean global motion, from frames `gap` apart (half a second).
pub fn measure_motion(frames: &[FrameSummary], fps: f32) -> Motion {
    let gap = ((fps / 2.0).round() as usize).max(1);
    let mut pairs = 0;
    let (mut dx, mut dy, mut zoom) = (0f32, 0f32, 0f32);
    let mut start = 0;
    while start + gap < frames.len() {
        let (x, y, scale) = align(&frames[start].grey, &frames[start + gap].grey);
        dx += x;
        dy += y;
        zoom += scale.ln();
        pairs += 1;
        start += gap;
    }
    if pairs == 0 {
        return Motion {
            dx: 0.0,
            dy: 0.0,
            zoom: 0.0,
        };
    }
    let seconds = pairs as f32 * gap as f32 / fps;
    Motion {
        dx: dx / MOTION_SIZE.0 as f32 / seconds,
        dy: dy / MOTION_SIZE.1 as f32 / seconds,
        zoom: zoom / seconds,
    }
}

/// Below these rates (per second) a clip counts as static.
const PAN_THRESHOLD: f32 = 0.012;
const TILT_THRESHOLD: f32 = 0.016;
const ZOOM_THRESHOLD: f32 = 0.035;

/// Camera move from motion: the largest rate relative to its threshold, by its sign.
pub fn classify_motion(motion: Motion) -> Camera {
    let pan = motion.dx.abs() / PAN_THRESHOLD;
    let tilt = motion.dy.abs() / TILT_THRESHOLD;
    let zoom = motion.zoom.abs() / ZOOM_THRESHOLD;
    if pan.max(tilt).max(zoom) < 1.0 {
        Camera::Static
    } else if pan >= tilt && pan >= zoom {
        if motion.dx > 0.0 {
            Camera::PanLeft
        } else {
            Camera::PanRight
        }
    } else if tilt >= zoom {
        if motion.dy > 0.0 {
            Camera::TiltUp
        } else {
            Camera::AerialDescent
        }
    } else if motion.zoom > 0.0 {
        Camera::PushIn
    } else {
        Camera::PullOut
    }
}

/// Colour, brightness and texture statistics of a clip (averaged over its summaries).
pub fn appearance_features(frames: &[FrameSummary]) -> Vec<f32> {
    let (w, h) = THUMB_SIZE;
    let mut features = Vec::new();
    for frame in frames {
        let band = |rows: std::ops::Range<usize>| -> Vec<[f32; 3]> {
            rows.flat_map(|row| frame.thumb[row * w..(row + 1) * w].iter().copied())
                .collect()
        };
        let mut values = Vec::new();
        let bands = 6;
        for index in 0..bands {
            let cells = band(index * h / bands..(index + 1) * h / bands);
            let count = cells.len().max(1) as f32;
            let mean = cells.iter().fold([0f32; 3], |sum, cell| {
                [sum[0] + cell[0], sum[1] + cell[1], sum[2] + cell[2]]
            });
            let mean = mean.map(|total| total / count);
            let lumas: Vec<f32> = cells.iter().copied().map(luma).collect();
            let average = lumas.iter().sum::<f32>() / count;
            let spread = (lumas.iter().map(|l| (l - average).powi(2)).sum::<f32>() / count).sqrt();
            let saturation = cells
                .iter()
                .map(|cell| {
                    cell.iter().copied().fold(0f32, f32::max)
                        - cell.iter().copied().fold(1f32, f32::min)
                })
                .sum::<f32>()
                / count;
            values.extend([mean[0], mean[1], mean[2], average, spread, saturation]);
        }
        let (mut horizontal, mut vertical) = (0f32, 0f32);
        for row in h / 2..h - 1 {
            for column in 0..w - 1 {
                let here = luma(frame.thumb[row * w + column]);
                horizontal += (luma(frame.thumb[row * w + column + 1]) - here).abs();
                vertical += (luma(frame.thumb[(row + 1) * w + column]) - here).abs();
            }
        }
        let cells = ((h - 1 - h / 2) * (w - 1)) as f32;
        let all: Vec<f32> = frame.thumb.iter().copied().map(luma).collect();
        let bright = all.iter().filter(|&&l| l > 0.8).count() as f32 / all.len() as f32;
        let dark = all.iter().filter(|&&l| l < 0.12).count() as f32 / all.len() as f32;
        values.extend([horizontal / cells, vertical / cells, bright, dark]);
        if features.is_empty() {
            features = values;
        } else {
            for (total, value) in features.iter_mut().zip(values) {
                *total += value;
            }
        }
    }
    let count = frames.len().max(1) as f32;
    features.iter_mut().for_each(|value| *value /= count);
    features
}

/// Multinomial logistic regression on standardised features.
#[derive(Clone, Debug)]
struct SoftmaxClassifier {
    weights: Vec<Vec<f32>>,
    bias: Vec<f32>,
}

impl SoftmaxClassifier {
    fn train(inputs: &[Vec<f32>], labels: &[usize], classes: usize) -> Self {
        let dims = inputs.first().map_or(0, Vec::len);
        let mut model = Self {
            weights: vec![vec![0.0; dims]; classes],
            bias: vec![0.0; classes],
        };
        let (rate, decay) = (0.5f32, 1e-3f32);
        for _ in 0..400 {
            let mut weight_grad = vec![vec![0f32; dims]; classes];
            let mut bias_grad = vec![0f32; classes];
            for (input, &label) in inputs.iter().zip(labels) {
                let probabilities = model.probabilities(input);
                for class in 0..classes {
                    let error = probabilities[class] - if class == label { 1.0 } else { 0.0 };
                    bias_grad[class] += error;
                    for (grad, value) in weight_grad[class].iter_mut().zip(input) {
                        *grad += error * value;
                    }
                }
            }
            let count = inputs.len().max(1) as f32;
            for class in 0..classes {
                model.bias[class] -= rate * bias_grad[class] / count;
                for (weight, grad) in model.weights[class].iter_mut().zip(&weight_grad[class]) {
                    *weight -= rate * (grad / count + decay * *weight);
                }
            }
        }
        model
    }

    fn probabilities(&self, input: &[f32]) -> Vec<f32> {
        let logits: Vec<f32> = self
            .weights
            .iter()
            .zip(&self.bias)
            .map(|(row, bias)| bias + row.iter().zip(input).map(|(w, x)| w * x).sum::<f32>())
            .collect();
        let top = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f32> = logits.iter().map(|logit| (logit - top).exp()).collect();
        let total: f32 = exps.iter().sum();
        exps.iter().map(|value| value / total).collect()
    }

    fn predict(&self, input: &[f32]) -> usize {
        let probabilities = self.probabilities(input);
        (0..probabilities.len())
            .max_by(|a, b| probabilities[*a].total_cmp(&probabilities[*b]))
            .unwrap_or(0)
    }
}

/// Attribute classifiers trained on rendered ground truth, plus the rule-based camera reader.
#[derive(Clone, Debug)]
pub struct AttributeProbe {
    mean: Vec<f32>,
    spread: Vec<f32>,
    time_of_day: SoftmaxClassifier,
    setting: SoftmaxClassifier,
    weather: SoftmaxClassifier,
}

/// Seconds into a clip at which the probe's training frames are rendered.
const PROBE_TIMES: [f32; 3] = [0.0, 1.5, 3.0];

impl AttributeProbe {
    /// Trains on `scenes` generator scenes drawn from `seed`, rendered at a small size (the
    /// features are read from 32×18 thumbnails, so detail beyond that does not matter).
    pub fn train(scenes: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut inputs = Vec::with_capacity(scenes);
        let mut truth = Vec::with_capacity(scenes);
        for _ in 0..scenes {
            let scene = Scene::random(rng.random());
            let summaries: Vec<FrameSummary> = PROBE_TIMES
                .iter()
                .map(|&seconds| FrameSummary::of(&render_frame(&scene, seconds, 128, 72)))
                .collect();
            inputs.push(appearance_features(&summaries));
            truth.push(Attributes::from(&scene));
        }
        let dims = inputs.first().map_or(0, Vec::len);
        let count = inputs.len().max(1) as f32;
        let mean: Vec<f32> = (0..dims)
            .map(|d| inputs.iter().map(|input| input[d]).sum::<f32>() / count)
            .collect();
        let spread: Vec<f32> = (0..dims)
            .map(|d| {
                let variance = inputs
                    .iter()
                    .map(|input| (input[d] - mean[d]).powi(2))
                    .sum::<f32>()
                    / count;
                variance.sqrt().max(1e-4)
            })
            .collect();
        let standardised: Vec<Vec<f32>> = inputs
            .iter()
            .map(|input| standardise(input, &mean, &spread))
            .collect();
        let labels =
            |index: fn(&Attributes) -> usize| -> Vec<usize> { truth.iter().map(index).collect() };
        Self {
            time_of_day: SoftmaxClassifier::train(
                &standardised,
                &labels(|a| a.time_of_day.index()),
                TimeOfDay::ALL.len(),
            ),
            setting: SoftmaxClassifier::train(
                &standardised,
                &labels(|a| a.setting.index()),
                Setting::ALL.len(),
            ),
            weather: SoftmaxClassifier::train(
                &standardised,
                &labels(|a| a.weather.index()),
                Weather::ALL.len(),
            ),
            mean,
            spread,
        }
    }

    /// The attributes a clip shows; `frames` are summaries of consecutive frames at `fps`.
    pub fn read(&self, frames: &[FrameSummary], fps: f32) -> Attributes {
        let stills: Vec<FrameSummary> = [0, frames.len() / 2, frames.len().saturating_sub(1)]
            .iter()
            .filter_map(|&index| frames.get(index).cloned())
            .collect();
        let input = standardise(&appearance_features(&stills), &self.mean, &self.spread);
        Attributes {
            time_of_day: TimeOfDay::ALL[self.time_of_day.predict(&input)],
            setting: Setting::ALL[self.setting.predict(&input)],
            weather: Weather::ALL[self.weather.predict(&input)],
            camera: classify_motion(measure_motion(frames, fps)),
        }
    }
}

fn standardise(input: &[f32], mean: &[f32], spread: &[f32]) -> Vec<f32> {
    input
        .iter()
        .zip(mean.iter().zip(spread))
        .map(|(value, (mean, spread))| (value - mean) / spread)
        .collect()
}

/// Summaries of a generator clip of `seconds` at `fps`, rendered at `width`×`height`.
pub fn summarise_scene(
    scene: &Scene,
    seconds: f32,
    fps: f32,
    width: u32,
    height: u32,
) -> Vec<FrameSummary> {
    let frames = (seconds * fps).round() as usize + 1;
    (0..frames)
        .map(|index| FrameSummary::of(&render_frame(scene, index as f32 / fps, width, height)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camera_moves_are_read_from_generator_clips() {
        let mut correct = 0;
        let mut total = 0;
        for (index, camera) in Camera::ALL.iter().enumerate() {
            for seed in 0..3u64 {
                let base = Scene::random(seed * 31 + index as u64);
                let scene = Scene::with_attributes(
                    base.time_of_day,
                    base.setting,
                    base.weather,
                    *camera,
                    seed,
                );
                let frames = summarise_scene(&scene, 2.0, 12.0, 128, 72);
                let read = classify_motion(measure_motion(&frames, 12.0));
                total += 1;
                if read == *camera {
                    correct += 1;
                } else {
                    eprintln!("{camera:?} read as {read:?} in {scene:?}");
                }
            }
        }
        assert!(correct * 10 >= total * 8, "{correct}/{total}");
    }
}
