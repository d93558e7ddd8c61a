//! PNG stills in and out as RGB8: reference images and keyframes arrive in every PNG flavour, we work in one.
//!
//! Decoding expands palettes and low bit depths, strips 16-bit samples to 8 and drops alpha, so
//! callers always get `RgbFrame`. Encoding uses the `Fast` (fdeflate) level: these PNGs are
//! working files, and it is several times faster than the default for a modest size cost.

use std::io::Cursor;

use png::{BitDepth, ColorType, Compression, Transformations};

use super::VideoError;
use crate::frame::RgbFrame;

/// Caps what a PNG header may make us allocate (7680x4320, 8K UHD); the `png` crate's own
/// limits do not cover the output buffer. Submit refuses larger references with the same
/// bound (`reelfarm_common::spec::MAX_REFERENCE_PIXELS`); neither crate may depend on the
/// other, so the worker's tests hold the two equal.
pub const MAX_PNG_PIXELS: u64 = 7680 * 4320;

/// Encodes `frame` as an 8-bit RGB PNG.
pub fn encode_png(frame: &RgbFrame) -> Result<Vec<u8>, VideoError> {
    let expected_len = frame.width as usize * frame.height as usize * 3;
    if frame.data.len() != expected_len || frame.width == 0 || frame.height == 0 {
        return Err(VideoError::InvalidFrame(format!(
            "{}x{} frame carries {} bytes of rgb, expected {expected_len}",
            frame.width,
            frame.height,
            frame.data.len()
        )));
    }
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, frame.width, frame.height);
    encoder.set_color(ColorType::Rgb);
    encoder.set_depth(BitDepth::Eight);
    encoder.set_compression(Compression::Fast);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&frame.data)?;
    writer.finish()?;
    Ok(bytes)
}

/// Decodes any PNG (gray, gray+alpha, RGB, RGBA, palette; 1 to 16 bits) to RGB8, dropping alpha.
/// Animated PNGs yield their first frame.
pub fn decode_png(bytes: &[u8]) -> Result<RgbFrame, VideoError> {
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    decoder.set_transformations(Transformations::normalize_to_color8());
    let mut reader = decoder.read_info()?;
    let (width, height) = reader.info().size();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > MAX_PNG_PIXELS {
        return Err(VideoError::UnsupportedPng(format!(
            "{width}x{height} is {pixels} pixels; at most {MAX_PNG_PIXELS} (7680x4320, 8K UHD)"
        )));
    }
    // png 0.18.1 panics expanding a palette of partial entries (found by fuzzing; upstream
    // image-png#694): refuse it before it expands.
    if let Some(palette) = &reader.info().palette
        && (palette.is_empty() || palette.len() % 3 != 0 || palette.len() > 256 * 3)
    {
        return Err(VideoError::UnsupportedPng(format!(
            "a {}-byte palette (PLTE holds 1 to 256 three-byte entries)",
            palette.len()
        )));
    }
    let buffer_len = reader.output_buffer_size().ok_or_else(|| {
        VideoError::UnsupportedPng(format!("{width}x{height} does not fit in memory"))
    })?;
    let mut buffer = vec![0; buffer_len];
    let output = reader.next_frame(&mut buffer)?;
    if output.bit_depth != BitDepth::Eight {
        return Err(VideoError::UnsupportedPng(format!(
            "{:?} bit samples after expansion",
            output.bit_depth
        )));
    }
    let channels = match output.color_type {
        ColorType::Grayscale => 1,
        ColorType::GrayscaleAlpha => 2,
        ColorType::Rgb => 3,
        ColorType::Rgba => 4,
        ColorType::Indexed => {
            return Err(VideoError::UnsupportedPng(
                "palette survived expansion".into(),
            ));
        }
    };
    let (width, height) = (output.width, output.height);
    let row_len = width as usize * channels;
    if output.line_size < row_len || buffer.len() < output.line_size * height as usize {
        return Err(VideoError::UnsupportedPng(
            "decoder returned short rows".into(),
        ));
    }
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    for row in buffer.chunks_exact(output.line_size).take(height as usize) {
        for pixel in row[..row_len].chunks_exact(channels) {
            match channels {
                1 | 2 => rgb.extend_from_slice(&[pixel[0]; 3]),
                _ => rgb.extend_from_slice(&pixel[..3]),
            }
        }
    }
    Ok(RgbFrame::new(width, height, rgb))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::test_support::moving_gradient;

    fn png_with(
        width: u32,
        height: u32,
        color: ColorType,
        depth: BitDepth,
        data: &[u8],
    ) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut encoder = png::Encoder::new(&mut bytes, width, height);
        encoder.set_color(color);
        encoder.set_depth(depth);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(data).unwrap();
        writer.finish().unwrap();
        bytes
    }

    #[test]
    fn rgb_round_trip_is_exact() {
        let frame = moving_gradient(97, 31, 5);
        let decoded = decode_png(&encode_png(&frame).unwrap()).unwrap();
        assert_eq!(decoded, frame);
    }

    #[test]
    fn rgba_drops_alpha() {
        let rgba = [10, 20, 30, 0, 40, 50, 60, 255];
        let decoded = decode_png(&png_with(2, 1, ColorType::Rgba, BitDepth::Eight, &rgba)).unwrap();
        assert_eq!(decoded, RgbFrame::new(2, 1, vec![10, 20, 30, 40, 50, 60]));
    }

    #[test]
    fn sixteen_bit_rgb_keeps_the_high_byte() {
        let samples: [u16; 6] = [0xffff, 0x8000, 0x0000, 0x1234, 0xabcd, 0x00ff];
        let data: Vec<u8> = samples.iter().flat_map(|s| s.to_be_bytes()).collect();
        let decoded =
            decode_png(&png_with(2, 1, ColorType::Rgb, BitDepth::Sixteen, &data)).unwrap();
        assert_eq!(decoded.data, vec![0xff, 0x80, 0x00, 0x12, 0xab, 0x00]);
    }

    #[test]
    fn sixteen_bit_rgba_and_gray_become_rgb8() {
        let rgba16: Vec<u8> = [0x1100u16, 0x2200, 0x3300, 0x0000]
            .iter()
            .flat_map(|s| s.to_be_bytes())
            .collect();
        let decoded =
            decode_png(&png_with(1, 1, ColorType::Rgba, BitDepth::Sixteen, &rgba16)).unwrap();
        assert_eq!(decoded.data, vec![0x11, 0x22, 0x33]);

        let gray = decode_png(&png_with(
            3,
            1,
            ColorType::Grayscale,
            BitDepth::Eight,
            &[0, 128, 255],
        ))
        .unwrap();
        assert_eq!(gray.data, vec![0, 0, 0, 128, 128, 128, 255, 255, 255]);

        let gray_alpha = decode_png(&png_with(
            1,
            1,
            ColorType::GrayscaleAlpha,
            BitDepth::Eight,
            &[77, 9],
        ))
        .unwrap();
        assert_eq!(gray_alpha.data, vec![77, 77, 77]);

        // 1-bit gray: 0b1010_0000 is white, black, white, black.
        let one_bit = decode_png(&png_with(
            4,
            1,
            ColorType::Grayscale,
            BitDepth::One,
            &[0b1010_0000],
        ))
        .unwrap();
        assert_eq!(one_bit.data, [[255; 3], [0; 3], [255; 3], [0; 3]].concat());
    }

    #[test]
    fn garbage_and_truncated_pngs_are_errors() {
        assert!(decode_png(b"").is_err());
        assert!(decode_png(b"definitely not a png").is_err());
        let good = encode_png(&moving_gradient(40, 30, 0)).unwrap();
        for cut in [8, 20, 33, good.len() / 2, good.len() - 13] {
            assert!(decode_png(&good[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn frame_with_inconsistent_buffer_is_rejected() {
        let frame = RgbFrame {
            width: 4,
            height: 4,
            data: vec![0; 10],
        };
        assert!(matches!(
            encode_png(&frame),
            Err(VideoError::InvalidFrame(_))
        ));
    }
}
