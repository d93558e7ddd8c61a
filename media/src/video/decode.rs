//! Streaming MP4 reader: demuxes H.264 samples from memory and decodes them to RGB one frame at a time.
//!
//! OpenH264 may hold pictures back inside the decoder; the reader drains them at the end of the
//! stream so exactly `frame_count()` frames come out, and treats any shortfall as an error
//! rather than a silently shorter video.

use std::collections::VecDeque;

use openh264::OpenH264API;
use openh264::decoder::{DecodedYUV, Decoder, DecoderConfig};
use openh264::formats::YUVSource;

use super::VideoError;
use super::demux::{VideoTrack, read_video_track};
use crate::frame::RgbFrame;

const START_CODE: [u8; 4] = [0, 0, 0, 1];

/// Decodes an H.264 MP4 held in memory, in display order.
pub struct Mp4Reader {
    file: Vec<u8>,
    track: VideoTrack,
    decoder: Decoder,
    next_sample: usize,
    frames_returned: u64,
    decoded: VecDeque<RgbFrame>,
    drained: bool,
    annex_b: Vec<u8>,
}

impl Mp4Reader {
    /// Parses the container; decoding starts with the first `next_frame` call.
    pub fn open(bytes: Vec<u8>) -> Result<Self, VideoError> {
        let track = read_video_track(&bytes)?;
        if track.width == 0 || track.height == 0 || track.width % 2 != 0 || track.height % 2 != 0 {
            let (width, height) = (track.width, track.height);
            return Err(VideoError::UnsupportedMp4(format!(
                "{width}x{height} video; sides must be even"
            )));
        }
        let decoder = Decoder::with_api_config(OpenH264API::from_source(), DecoderConfig::new())
            .map_err(|e| VideoError::Decoder(e.to_string()))?;
        Ok(Self {
            file: bytes,
            track,
            decoder,
            next_sample: 0,
            frames_returned: 0,
            decoded: VecDeque::new(),
            drained: false,
            annex_b: Vec::new(),
        })
    }

    pub fn width(&self) -> u32 {
        self.track.width
    }

    pub fn height(&self) -> u32 {
        self.track.height
    }

    /// Average frame rate over the whole track (exact `fps` for files `Mp4Writer` made).
    pub fn fps(&self) -> f64 {
        let ticks_per_second = f64::from(self.track.timescale);
        self.frame_count() as f64 * ticks_per_second / self.track.total_duration as f64
    }

    pub fn frame_count(&self) -> u64 {
        self.track.samples.len() as u64
    }

    /// The next frame, `Ok(None)` after exactly `frame_count()` frames.
    pub fn next_frame(&mut self) -> Result<Option<RgbFrame>, VideoError> {
        loop {
            if self.frames_returned == self.frame_count() {
                return Ok(None);
            }
            if let Some(frame) = self.decoded.pop_front() {
                self.frames_returned += 1;
                return Ok(Some(frame));
            }
            if self.next_sample < self.track.samples.len() {
                self.decode_next_sample()?;
            } else if !self.drained {
                self.drained = true;
                self.drain_decoder()?;
            } else {
                return Err(VideoError::Decoder(format!(
                    "stream ended after {} of {} frames",
                    self.frames_returned,
                    self.frame_count()
                )));
            }
        }
    }

    fn decode_next_sample(&mut self) -> Result<(), VideoError> {
        let index = self.next_sample;
        self.next_sample += 1;
        self.annex_b.clear();
        if index == 0 {
            let track = &self.track;
            for set in track
                .sequence_parameter_sets
                .iter()
                .chain(&track.picture_parameter_sets)
            {
                self.annex_b.extend_from_slice(&START_CODE);
                self.annex_b.extend_from_slice(set);
            }
        }
        let range = self.track.samples[index];
        let sample = &self.file[range.start..range.start + range.len];
        append_as_annex_b(sample, self.track.nal_length_size, &mut self.annex_b).ok_or_else(
            || VideoError::MalformedMp4(format!("sample {index} has a broken nal unit length")),
        )?;

        let picture = self
            .decoder
            .decode(&self.annex_b)
            .map_err(|e| VideoError::Decoder(format!("sample {index}: {e}")))?;
        if let Some(picture) = picture {
            let frame = picture_to_rgb(&picture, self.track.width, self.track.height)?;
            self.decoded.push_back(frame);
        }
        Ok(())
    }

    fn drain_decoder(&mut self) -> Result<(), VideoError> {
        let (width, height) = (self.track.width, self.track.height);
        let held_back = self
            .decoder
            .flush_remaining()
            .map_err(|e| VideoError::Decoder(format!("flushing: {e}")))?;
        for picture in &held_back {
            self.decoded
                .push_back(picture_to_rgb(picture, width, height)?);
        }
        Ok(())
    }
}

/// Rewrites length-prefixed NAL units as start-code-prefixed ones; `None` if a length overruns.
fn append_as_annex_b(mut sample: &[u8], length_size: usize, out: &mut Vec<u8>) -> Option<()> {
    while !sample.is_empty() {
        let length_bytes = sample.get(..length_size)?;
        let length = length_bytes
            .iter()
            .fold(0usize, |acc, &byte| (acc << 8) | usize::from(byte));
        let nal = sample.get(length_size..length_size.checked_add(length)?)?;
        out.extend_from_slice(&START_CODE);
        out.extend_from_slice(nal);
        sample = &sample[length_size + length..];
    }
    Some(())
}

/// Converts with OpenH264's own BT.601 limited-range converter: AVX2 where available, and built
/// optimised even in dev profiles (dependencies are), where a loop in this crate would not be.
fn picture_to_rgb(
    picture: &DecodedYUV<'_>,
    width: u32,
    height: u32,
) -> Result<RgbFrame, VideoError> {
    let (decoded_width, decoded_height) = picture.dimensions();
    if (decoded_width, decoded_height) != (width as usize, height as usize) {
        return Err(VideoError::Decoder(format!(
            "decoded a {decoded_width}x{decoded_height} picture in a {width}x{height} track"
        )));
    }
    // Sized exactly as `write_rgb8` asserts.
    let mut rgb = vec![0; picture.rgb8_len()];
    picture.write_rgb8(&mut rgb);
    Ok(RgbFrame::new(width, height, rgb))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::test_support::{encode_gradient, moving_gradient, psnr};
    use crate::video::{EncodeSettings, Mp4Writer, Quality};

    fn decode_all(mp4: Vec<u8>) -> (Mp4Reader, Vec<RgbFrame>) {
        let mut reader = Mp4Reader::open(mp4).unwrap();
        let mut frames = Vec::new();
        while let Some(frame) = reader.next_frame().unwrap() {
            frames.push(frame);
        }
        (reader, frames)
    }

    fn assert_round_trip(quality: Quality, minimum_psnr: f64) {
        let (width, height) = (848, 480);
        let (reader, frames) = decode_all(encode_gradient(width, height, 24, 48, quality));
        assert_eq!(
            (reader.width(), reader.height(), reader.frame_count()),
            (width, height, 48)
        );
        assert_eq!(reader.fps(), 24.0);
        assert_eq!(frames.len(), 48);
        let scores: Vec<f64> = (0..48)
            .map(|i| psnr(&moving_gradient(width, height, i), &frames[i as usize]))
            .collect();
        let worst = scores.iter().copied().fold(f64::INFINITY, f64::min);
        let mean = scores.iter().sum::<f64>() / scores.len() as f64;
        eprintln!("{quality:?}: mean psnr {mean:.2} dB, worst {worst:.2} dB");
        assert!(
            worst >= minimum_psnr,
            "{quality:?}: worst frame psnr {worst:.2} dB < {minimum_psnr} dB"
        );
    }

    #[test]
    fn intermediate_round_trip_is_near_lossless() {
        assert_round_trip(Quality::Intermediate, 35.0);
    }

    #[test]
    fn delivery_round_trip_looks_good() {
        assert_round_trip(Quality::Delivery, 28.0);
    }

    #[test]
    fn sizes_that_are_not_multiples_of_16_decode_to_the_exact_size() {
        let sizes = [
            (1152, 480),
            (480, 848),
            (1920, 1080),
            (848, 480),
            (896, 480),
            (2576, 1080),
            (640, 480),
            (480, 480),
        ];
        for (width, height) in sizes {
            let (reader, frames) =
                decode_all(encode_gradient(width, height, 30, 3, Quality::Delivery));
            assert_eq!((reader.width(), reader.height()), (width, height));
            assert_eq!(frames.len(), 3, "{width}x{height}");
            for (index, frame) in frames.iter().enumerate() {
                assert_eq!((frame.width, frame.height), (width, height));
                let score = psnr(&moving_gradient(width, height, index as u32), frame);
                assert!(
                    score > 28.0,
                    "{width}x{height} frame {index}: {score:.2} dB, cropping wrong?"
                );
            }
        }
    }

    #[test]
    fn flat_colours_keep_their_levels() {
        // Catches range or matrix mix-ups (full vs limited, BT.601 vs BT.709) between the two sides.
        let colours = [
            [0, 0, 0],
            [255, 255, 255],
            [255, 0, 0],
            [0, 255, 0],
            [0, 0, 255],
            [128, 128, 128],
            [200, 120, 40],
        ];
        let settings = EncodeSettings {
            width: 64,
            height: 48,
            fps: 8,
            quality: Quality::Intermediate,
        };
        let mut writer = Mp4Writer::new(std::io::Cursor::new(Vec::new()), settings).unwrap();
        for colour in colours {
            writer.push(&RgbFrame::filled(64, 48, colour)).unwrap();
        }
        let (_, frames) = decode_all(writer.finish().unwrap().into_inner());
        for (colour, frame) in colours.iter().zip(&frames) {
            let centre = frame.pixel(32, 24);
            let worst = colour
                .iter()
                .zip(centre)
                .map(|(a, b)| a.abs_diff(b))
                .max()
                .unwrap_or(0);
            assert!(worst <= 4, "{colour:?} came back as {centre:?}");
        }
    }

    #[test]
    fn next_frame_keeps_returning_none_after_the_end() {
        let (mut reader, frames) = decode_all(encode_gradient(64, 48, 8, 5, Quality::Delivery));
        assert_eq!(frames.len(), 5);
        assert!(reader.next_frame().unwrap().is_none());
    }

    #[test]
    fn annex_b_rewrite_rejects_overrunning_lengths() {
        let mut out = Vec::new();
        assert_eq!(
            append_as_annex_b(&[0, 0, 0, 2, 0x65, 1], 4, &mut out),
            Some(())
        );
        assert_eq!(out, [0, 0, 0, 1, 0x65, 1]);
        assert_eq!(append_as_annex_b(&[0, 0, 0, 9, 0x65], 4, &mut out), None);
        assert_eq!(append_as_annex_b(&[0, 0], 4, &mut out), None);
    }
}
