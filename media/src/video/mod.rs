//! Video codecs for the worker: RGB frames to H.264 MP4 and back, plus PNG stills, with no system libraries.
//!
//! Encoding and decoding use OpenH264 (compiled from source by the `openh264` crate); the MP4
//! container is written and read by our own small muxer/demuxer (`mux`, `demux`), because the
//! `mp4` crate's reader trusts file-supplied sizes and counts and can panic or over-allocate on
//! malformed input, while we need `Err` for any bad bytes and exact control over timing boxes.
//!
//! Timing model: the track timescale is `fps * 1000` and every sample lasts exactly 1000 ticks, so
//! the movie duration is `frames / fps` with no rounding and readers see a constant `fps/1` rate.
//!
//! Colour: BT.601 limited range, signalled in the SPS VUI and the `colr` box so players invert it
//! correctly. RGB<->YUV uses OpenH264's own converters (AVX2 when available): as a dependency they
//! are optimised even in dev builds, where a conversion loop in this crate would run ~100x slower.

mod boxes;
mod decode;
mod demux;
mod encode;
mod moov;
mod mux;
mod png;

pub use self::decode::Mp4Reader;
pub use self::mux::Mp4Writer;
pub use self::png::{MAX_PNG_PIXELS, decode_png, encode_png};

/// Largest side OpenH264 accepts; the smaller side is capped at `MAX_SHORT_SIDE`.
const MAX_LONG_SIDE: u32 = 3840;
const MAX_SHORT_SIDE: u32 = 2160;
const MIN_SIDE: u32 = 16;
const MAX_FPS: u32 = 240;

/// Everything that can go wrong in this module; bad input bytes always end up here, never in a panic.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    #[error("invalid encode settings: {0}")]
    InvalidSettings(String),
    #[error(
        "frame is {actual_width}x{actual_height} but the stream is {expected_width}x{expected_height}"
    )]
    FrameSizeMismatch {
        expected_width: u32,
        expected_height: u32,
        actual_width: u32,
        actual_height: u32,
    },
    #[error("invalid frame: {0}")]
    InvalidFrame(String),
    #[error("an mp4 needs at least one frame")]
    NoFrames,
    #[error("h264 encoder failed: {0}")]
    Encoder(String),
    #[error("h264 decoder failed: {0}")]
    Decoder(String),
    #[error("malformed mp4: {0}")]
    MalformedMp4(String),
    #[error("unsupported mp4: {0}")]
    UnsupportedMp4(String),
    #[error("png encoding failed: {0}")]
    PngEncode(#[from] ::png::EncodingError),
    #[error("png decoding failed: {0}")]
    PngDecode(#[from] ::png::DecodingError),
    #[error("unsupported png: {0}")]
    UnsupportedPng(String),
    #[error("video i/o failed: {0}")]
    Io(#[from] std::io::Error),
}

/// How hard the encoder may squeeze. Both aim at a bits-per-pixel-per-frame budget, so the bitrate
/// scales with width, height and fps; the QP bounds stop rate control from starving or wasting bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quality {
    /// Segments that are decoded again for the final stitch: ~0.35 bit/pixel/frame (about 3.4 Mbit/s
    /// at 848x480@24) and QP never above 24, so a decode/re-encode generation costs little. The QP
    /// cap wins over the bitrate: very noisy content overshoots rather than degrades.
    Intermediate,
    /// The file people watch: ~0.1 bit/pixel/frame (about 1 Mbit/s at 848x480@24, 5 Mbit/s at
    /// 1920x1080@24). QP is capped at 36: on very hard scenes the bitrate overshoots rather than
    /// the picture falling apart.
    Delivery,
}

impl Quality {
    fn millibits_per_pixel_per_frame(self) -> u64 {
        match self {
            Quality::Intermediate => 350,
            Quality::Delivery => 100,
        }
    }

    /// (min, max) quantiser. OpenH264 raises any minimum below 12 to 12 anyway; lower would
    /// only spend bits on noise nobody sees.
    pub(crate) fn qp_range(self) -> (u8, u8) {
        match self {
            Quality::Intermediate => (12, 24),
            Quality::Delivery => (16, 36),
        }
    }
}

/// What `Mp4Writer` produces; all frames pushed must be `width x height`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodeSettings {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub quality: Quality,
}

impl EncodeSettings {
    /// Target bitrate in bits per second for this size, rate and quality.
    pub fn target_bitrate(&self) -> u32 {
        let pixels_per_second =
            u64::from(self.width) * u64::from(self.height) * u64::from(self.fps);
        let bits = pixels_per_second * self.quality.millibits_per_pixel_per_frame() / 1000;
        u32::try_from(bits).unwrap_or(u32::MAX)
    }

    /// Frames between IDR pictures: two seconds, so a seek never has to decode more than that.
    pub fn keyframe_interval(&self) -> u32 {
        self.fps * 2
    }

    pub(crate) fn validate(&self) -> Result<(), VideoError> {
        let invalid = |message: String| Err(VideoError::InvalidSettings(message));
        let (width, height) = (self.width, self.height);
        if width % 2 != 0 || height % 2 != 0 {
            return invalid(format!(
                "{width}x{height} is odd; 4:2:0 video needs even sides"
            ));
        }
        if width.min(height) < MIN_SIDE {
            return invalid(format!(
                "{width}x{height} is smaller than {MIN_SIDE} pixels on a side"
            ));
        }
        if width.max(height) > MAX_LONG_SIDE || width.min(height) > MAX_SHORT_SIDE {
            return invalid(format!(
                "{width}x{height} is larger than {MAX_LONG_SIDE}x{MAX_SHORT_SIDE}"
            ));
        }
        if self.fps == 0 || self.fps > MAX_FPS {
            return invalid(format!("{} fps is outside 1..={MAX_FPS}", self.fps));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Synthetic frames and quality metrics shared by the codec tests.
    use super::{EncodeSettings, Mp4Writer, Quality};
    use crate::frame::RgbFrame;

    pub fn delivery_settings(width: u32, height: u32, fps: u32) -> EncodeSettings {
        EncodeSettings {
            width,
            height,
            fps,
            quality: Quality::Delivery,
        }
    }

    /// A diagonal gradient with a soft moving blob: smooth enough to compress, moving enough that
    /// P frames have real work to do.
    pub(crate) fn moving_gradient(width: u32, height: u32, index: u32) -> RgbFrame {
        let mut data = Vec::with_capacity(width as usize * height as usize * 3);
        let (blob_x, blob_y) = ((index * 7) % width, (index * 3) % height);
        for y in 0..height {
            for x in 0..width {
                let dx = x.abs_diff(blob_x);
                let dy = y.abs_diff(blob_y);
                let near_blob = 255u32.saturating_sub((dx * dx + dy * dy) / 64);
                data.push(((x + index * 4) * 255 / width.max(1)) as u8);
                data.push(((y * 255) / height.max(1)) as u8);
                data.push(((near_blob + (x + y) / 4) / 2).min(255) as u8);
            }
        }
        RgbFrame::new(width, height, data)
    }

    pub(crate) fn psnr(original: &RgbFrame, decoded: &RgbFrame) -> f64 {
        assert_eq!(
            (original.width, original.height),
            (decoded.width, decoded.height)
        );
        let squared_error: f64 = original
            .data
            .iter()
            .zip(&decoded.data)
            .map(|(a, b)| {
                let d = f64::from(*a) - f64::from(*b);
                d * d
            })
            .sum();
        let mse = squared_error / original.data.len() as f64;
        if mse == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (255.0 * 255.0 / mse).log10()
        }
    }

    pub(crate) fn encode_gradient(
        width: u32,
        height: u32,
        fps: u32,
        frames: u32,
        quality: Quality,
    ) -> Vec<u8> {
        let settings = EncodeSettings {
            width,
            height,
            fps,
            quality,
        };
        let mut writer = Mp4Writer::new(std::io::Cursor::new(Vec::new()), settings).unwrap();
        for index in 0..frames {
            writer.push(&moving_gradient(width, height, index)).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::delivery_settings as settings;
    use super::*;

    #[test]
    fn bitrate_follows_pixels_and_fps() {
        let base = settings(848, 480, 24);
        assert_eq!(base.target_bitrate(), 976_896);
        assert_eq!(
            settings(848, 480, 48).target_bitrate(),
            2 * base.target_bitrate()
        );
        let intermediate = EncodeSettings {
            quality: Quality::Intermediate,
            ..base
        };
        assert!(intermediate.target_bitrate() > 3 * base.target_bitrate());
    }

    #[test]
    fn validation_rejects_what_the_codec_cannot_take() {
        assert!(settings(848, 480, 24).validate().is_ok());
        assert!(settings(2576, 1080, 60).validate().is_ok());
        for bad in [
            settings(847, 480, 24),
            settings(848, 481, 24),
            settings(8, 480, 24),
            settings(4000, 480, 24),
        ] {
            assert!(
                matches!(bad.validate(), Err(VideoError::InvalidSettings(_))),
                "{bad:?}"
            );
        }
        assert!(settings(848, 480, 0).validate().is_err());
        assert!(settings(848, 480, 1000).validate().is_err());
    }

    #[test]
    fn errors_read_as_lowercase_phrases() {
        let error = VideoError::FrameSizeMismatch {
            expected_width: 848,
            expected_height: 480,
            actual_width: 640,
            actual_height: 480,
        };
        assert_eq!(
            error.to_string(),
            "frame is 640x480 but the stream is 848x480"
        );
    }
}
