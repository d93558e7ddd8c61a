//! Pixels in and out of the model: a conditioning picture of any size made into the VAE's input (scaled to cover the render size, centred, [-1, 1]), and rendered frames made back into 8-bit RGB.

use candle_core::{Device, Tensor};
use reelfarm_media::frame::RgbFrame;

use crate::error::{Result, WanError};

/// `picture` scaled (bilinear) to cover `width`×`height`, centre-cropped, as `[1, 3, 1, H, W]`
/// f32 in [-1, 1].
pub fn picture_tensor(
    picture: &RgbFrame,
    width: u32,
    height: u32,
    device: &Device,
) -> Result<Tensor> {
    let (sw, sh) = (picture.width as usize, picture.height as usize);
    if sw == 0 || sh == 0 || picture.data.len() != sw * sh * 3 {
        return Err(WanError::InvalidRequest(format!(
            "first frame {}x{} carries {} bytes",
            picture.width,
            picture.height,
            picture.data.len()
        )));
    }
    let (w, h) = (width as usize, height as usize);
    let scale = (w as f64 / sw as f64).max(h as f64 / sh as f64);
    // Source coordinates of output pixel centres, the crop centred.
    let offset_x = (sw as f64 - w as f64 / scale) / 2.0;
    let offset_y = (sh as f64 - h as f64 / scale) / 2.0;
    let taps = |i: usize, offset: f64, len: usize| {
        let x = (offset + (i as f64 + 0.5) / scale - 0.5).clamp(0.0, (len - 1) as f64);
        let below = x.floor() as usize;
        (below, (below + 1).min(len - 1), (x - below as f64) as f32)
    };
    let columns: Vec<_> = (0..w).map(|x| taps(x, offset_x, sw)).collect();
    let mut planes = vec![0f32; 3 * h * w];
    for y in 0..h {
        let (y0, y1, fy) = taps(y, offset_y, sh);
        for (x, &(x0, x1, fx)) in columns.iter().enumerate() {
            for c in 0..3 {
                let at = |yy: usize, xx: usize| f32::from(picture.data[(yy * sw + xx) * 3 + c]);
                let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
                let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
                let value = top * (1.0 - fy) + bottom * fy;
                planes[(c * h + y) * w + x] = value / 127.5 - 1.0;
            }
        }
    }
    Ok(Tensor::from_vec(planes, (1, 3, 1, h, w), device)?)
}

/// Frame `index` of `video` `[F, H, W, 3]` f32 in [0, 1] as 8-bit RGB.
pub fn rgb_frame(video: &Tensor, index: usize) -> Result<RgbFrame> {
    let (_, height, width, _) = video.dims4()?;
    let values = video.get(index)?.flatten_all()?.to_vec1::<f32>()?;
    let data = values
        .into_iter()
        .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    Ok(RgbFrame::new(width as u32, height as u32, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_picture_of_the_render_size_round_trips() {
        let data: Vec<u8> = (0..4 * 2 * 3).map(|i| (i * 10) as u8).collect();
        let picture = RgbFrame::new(4, 2, data.clone());
        let tensor = picture_tensor(&picture, 4, 2, &Device::Cpu).unwrap();
        assert_eq!(tensor.dims(), [1, 3, 1, 2, 4]);
        let video = ((tensor.squeeze(0).unwrap().permute((1, 2, 3, 0)).unwrap() + 1.0).unwrap()
            / 2.0)
            .unwrap();
        assert_eq!(rgb_frame(&video, 0).unwrap().data, data);
    }

    #[test]
    fn a_wider_picture_is_cropped_to_its_centre() {
        // 8×2: left half black, right half white; covering 2×2 keeps the middle columns.
        let mut data = vec![0u8; 8 * 2 * 3];
        for y in 0..2 {
            for x in 4..8 {
                data[(y * 8 + x) * 3..(y * 8 + x) * 3 + 3].copy_from_slice(&[255, 255, 255]);
            }
        }
        let tensor = picture_tensor(&RgbFrame::new(8, 2, data), 2, 2, &Device::Cpu).unwrap();
        let values = tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(&values[..4], &[-1.0, 1.0, -1.0, 1.0]);
    }
}
