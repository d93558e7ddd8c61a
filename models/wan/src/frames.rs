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

/// The `crop` window `(x, y, width, height)` of every frame of `video` `[1, 3, F, H, W]` in
/// [-1, 1] as 8-bit RGB (rounded as the reference's `(x / 2 + 0.5)·255`), converted on the
/// video's device.
pub fn video_frames(video: &Tensor, crop: (usize, usize, usize, usize)) -> Result<Vec<RgbFrame>> {
    let (x, y, width, height) = crop;
    let levels = ((video
        .narrow(3, y, height)?
        .narrow(4, x, width)?
        .to_dtype(candle_core::DType::F32)?
        + 1.0)?
        * 127.5)?
        .clamp(0f32, 255f32)?;
    // [1, 3, F, h, w] → [F, h, w, 3], rounded to the nearest level.
    let levels = (levels.squeeze(0)?.permute((1, 2, 3, 0))? + 0.5)?
        .floor()?
        .to_dtype(candle_core::DType::U8)?;
    let levels = levels.to_device(&Device::Cpu)?;
    (0..levels.dim(0)?)
        .map(|f| {
            let data = levels.get(f)?.flatten_all()?.to_vec1::<u8>()?;
            Ok(RgbFrame::new(width as u32, height as u32, data))
        })
        .collect()
}

/// `picture`, exactly the size of the render's crop window, placed at `(x, y)` on a
/// `width`×`height` canvas whose margins repeat its edge pixels: a handoff frame goes back in
/// at 1:1, so a window boundary shows no zoom where the render is taller than the sequence
/// (1080 renders at 1088).
pub fn placed_picture_tensor(
    picture: &RgbFrame,
    width: u32,
    height: u32,
    x: u32,
    y: u32,
    device: &Device,
) -> Result<Tensor> {
    let (pw, ph) = (picture.width as i64, picture.height as i64);
    if pw == 0 || ph == 0 || picture.data.len() != (pw * ph * 3) as usize {
        return Err(WanError::InvalidRequest(
            "first frame buffer does not match its size".into(),
        ));
    }
    let (w, h) = (width as usize, height as usize);
    let mut planes = vec![0f32; 3 * h * w];
    for row in 0..h {
        let sy = (row as i64 - i64::from(y)).clamp(0, ph - 1) as usize;
        for col in 0..w {
            let sx = (col as i64 - i64::from(x)).clamp(0, pw - 1) as usize;
            for c in 0..3 {
                let value = f32::from(picture.data[(sy * pw as usize + sx) * 3 + c]);
                planes[(c * h + row) * w + col] = value / 127.5 - 1.0;
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
    fn a_placed_picture_repeats_its_edges_into_the_margin() {
        let picture = RgbFrame::new(2, 1, vec![0, 0, 0, 255, 255, 255]);
        let tensor = placed_picture_tensor(&picture, 4, 2, 1, 0, &Device::Cpu).unwrap();
        let red = tensor
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(red, [-1.0, -1.0, 1.0, 1.0, -1.0, -1.0, 1.0, 1.0]);
    }

    #[test]
    fn video_frames_round_to_the_nearest_level_and_crop() {
        // One frame 1×2 (h×w), values -1 and a level just under 128.
        let video = Tensor::from_vec(
            vec![-1f32, 0.003, -1.0, 0.003, -1.0, 0.003],
            (1, 3, 1, 1, 2),
            &Device::Cpu,
        )
        .unwrap();
        let frames = video_frames(&video, (1, 0, 1, 1)).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].data, [128, 128, 128]);
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
