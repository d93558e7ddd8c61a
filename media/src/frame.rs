//! One RGB picture: the currency between the model, the codecs and the stitcher.

/// An 8-bit RGB frame, rows top to bottom, pixels interleaved `r g b`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbFrame {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl RgbFrame {
    /// Wraps `data`; panics if its length is not `width * height * 3` (a programming error).
    pub fn new(width: u32, height: u32, data: Vec<u8>) -> Self {
        assert_eq!(
            data.len(),
            width as usize * height as usize * 3,
            "rgb buffer size"
        );
        Self {
            width,
            height,
            data,
        }
    }

    pub fn filled(width: u32, height: u32, rgb: [u8; 3]) -> Self {
        let data = rgb
            .iter()
            .copied()
            .cycle()
            .take(width as usize * height as usize * 3)
            .collect();
        Self {
            width,
            height,
            data,
        }
    }

    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    /// This picture scaled (bilinear) to cover `width`x`height` and cropped to it about
    /// the centre: how a hosted model's clip (and a reference sent to it) meets a frame size
    /// it does not render. The same size is returned unchanged.
    pub fn cover(&self, width: u32, height: u32) -> RgbFrame {
        if (self.width, self.height) == (width, height) {
            return self.clone();
        }
        let (sw, sh) = (f64::from(self.width), f64::from(self.height));
        let scale = (f64::from(width) / sw).max(f64::from(height) / sh);
        // The crop's offset inside the scaled picture, in source pixels.
        let x0 = (sw * scale - f64::from(width)) / 2.0 / scale;
        let y0 = (sh * scale - f64::from(height)) / 2.0 / scale;
        let axis = |count: u32, origin: f64, limit: u32| -> Vec<(usize, usize, f32)> {
            (0..count)
                .map(|i| {
                    let at = (origin + (f64::from(i) + 0.5) / scale - 0.5)
                        .clamp(0.0, f64::from(limit - 1));
                    let low = at.floor() as usize;
                    let high = (low + 1).min(limit as usize - 1);
                    (low, high, (at - low as f64) as f32)
                })
                .collect()
        };
        let xs = axis(width, x0, self.width);
        let ys = axis(height, y0, self.height);
        let row = self.width as usize * 3;
        let mut data = Vec::with_capacity(width as usize * height as usize * 3);
        for &(y_low, y_high, fy) in &ys {
            for &(x_low, x_high, fx) in &xs {
                for channel in 0..3 {
                    let at = |y: usize, x: usize| f32::from(self.data[y * row + x * 3 + channel]);
                    let top = at(y_low, x_low) * (1.0 - fx) + at(y_low, x_high) * fx;
                    let bottom = at(y_high, x_low) * (1.0 - fx) + at(y_high, x_high) * fx;
                    data.push((top * (1.0 - fy) + bottom * fy).round() as u8);
                }
            }
        }
        RgbFrame::new(width, height, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cover_scales_to_fill_and_crops_the_centre() {
        // Left half red, right half blue, 64x36 (16:9) covering a 32x32 square: the crop
        // keeps the middle, so the seam between the halves stays in the middle.
        let mut data = Vec::new();
        for _ in 0..36 {
            for x in 0..64 {
                data.extend(if x < 32 { [255, 0, 0] } else { [0, 0, 255] });
            }
        }
        let frame = RgbFrame::new(64, 36, data);
        let square = frame.cover(32, 32);
        assert_eq!((square.width, square.height), (32, 32));
        assert_eq!(square.pixel(0, 16), [255, 0, 0]);
        assert_eq!(square.pixel(31, 16), [0, 0, 255]);
        assert_eq!(square.pixel(12, 0), [255, 0, 0]);
        // Upscaling a flat picture keeps it flat.
        let flat = RgbFrame::filled(8, 6, [10, 20, 30]).cover(20, 14);
        assert!(flat.data.chunks(3).all(|p| p == [10, 20, 30]));
        assert_eq!(frame.cover(64, 36), frame);
    }
}
