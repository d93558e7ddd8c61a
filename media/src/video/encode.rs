//! OpenH264 encoder setup and the translation of its Annex B output into MP4-ready samples.
//!
//! OpenH264 hands back NAL units with start codes and repeats SPS/PPS in front of every IDR.
//! MP4 (`avc1`) wants length-prefixed NAL units with the parameter sets kept once in `avcC`,
//! so this module strips start codes, lifts the first SPS/PPS out, and reports which samples
//! are IDR pictures for the sync sample table.

use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, IntraFramePeriod, Profile, QpRange,
    RateControlMode, SpsPpsStrategy, UsageType, VuiConfig,
};
use openh264::formats::{RgbSliceU8, YUVBuffer};
use openh264::{OpenH264API, Timestamp};

use super::{EncodeSettings, VideoError};
use crate::frame::RgbFrame;

const NAL_TYPE_NON_IDR_SLICE: u8 = 1;
const NAL_TYPE_IDR_SLICE: u8 = 5;
const NAL_TYPE_SPS: u8 = 7;
const NAL_TYPE_PPS: u8 = 8;
const NAL_TYPE_ACCESS_UNIT_DELIMITER: u8 = 9;

/// The sequence and picture parameter sets that go into `avcC`, without start codes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ParameterSets {
    pub(crate) sps: Vec<u8>,
    pub(crate) pps: Vec<u8>,
}

/// Turns RGB frames into H.264 access units, one sample per frame, in display order.
pub(crate) struct H264Encoder {
    encoder: Encoder,
    /// Reused for every frame so pushing a frame does not allocate.
    picture: YUVBuffer,
    dimensions: (usize, usize),
    fps: u64,
    frames_encoded: u64,
    parameter_sets: Option<ParameterSets>,
}

impl H264Encoder {
    pub(crate) fn new(settings: &EncodeSettings) -> Result<Self, VideoError> {
        let encoder =
            Encoder::with_api_config(OpenH264API::from_source(), encoder_config(settings))
                .map_err(|e| VideoError::Encoder(e.to_string()))?;
        Ok(Self {
            encoder,
            picture: YUVBuffer::new(settings.width as usize, settings.height as usize),
            dimensions: (settings.width as usize, settings.height as usize),
            fps: u64::from(settings.fps),
            frames_encoded: 0,
            parameter_sets: None,
        })
    }

    /// The SPS/PPS seen with the first IDR; `None` until a frame has been encoded.
    pub(crate) fn parameter_sets(&self) -> Option<&ParameterSets> {
        self.parameter_sets.as_ref()
    }

    /// Encodes one frame into `sample` (cleared first) as 4-byte length-prefixed NAL units.
    /// Returns whether the sample is an IDR picture, i.e. a sync sample.
    /// The caller has checked that `frame` and its buffer match the configured (even) size,
    /// which the conversion asserts.
    pub(crate) fn encode(
        &mut self,
        frame: &RgbFrame,
        sample: &mut Vec<u8>,
    ) -> Result<bool, VideoError> {
        sample.clear();
        self.picture
            .read_rgb8(RgbSliceU8::new(&frame.data, self.dimensions));
        let timestamp = Timestamp::from_millis(self.frames_encoded * 1000 / self.fps);
        let bitstream = self
            .encoder
            .encode_at(&self.picture, timestamp)
            .map_err(|e| VideoError::Encoder(e.to_string()))?;

        let mut new_sps: Option<Vec<u8>> = None;
        let mut new_pps: Option<Vec<u8>> = None;
        let mut is_idr = false;
        let mut has_picture = false;
        for layer_index in 0..bitstream.num_layers() {
            let Some(layer) = bitstream.layer(layer_index) else {
                continue;
            };
            for nal_index in 0..layer.nal_count() {
                let Some(nal) = layer.nal_unit(nal_index).map(strip_start_code) else {
                    continue;
                };
                let Some(&header) = nal.first() else { continue };
                let nal_type = header & 0x1f;
                match nal_type {
                    NAL_TYPE_ACCESS_UNIT_DELIMITER => continue,
                    NAL_TYPE_SPS | NAL_TYPE_PPS => match &self.parameter_sets {
                        None if nal_type == NAL_TYPE_SPS => {
                            new_sps = Some(nal.to_vec());
                            continue;
                        }
                        None => {
                            new_pps = Some(nal.to_vec());
                            continue;
                        }
                        // Repeats of what avcC already holds add nothing; anything new stays
                        // in-band, where decoders pick it up before the slices that follow.
                        Some(sets) if nal == sets.sps || nal == sets.pps => continue,
                        Some(_) => {}
                    },
                    NAL_TYPE_IDR_SLICE => (is_idr, has_picture) = (true, true),
                    NAL_TYPE_NON_IDR_SLICE => has_picture = true,
                    _ => {}
                }
                let length = u32::try_from(nal.len())
                    .map_err(|_| VideoError::Encoder(format!("nal unit of {} bytes", nal.len())))?;
                sample.extend_from_slice(&length.to_be_bytes());
                sample.extend_from_slice(nal);
            }
        }

        if self.parameter_sets.is_none() {
            match (new_sps, new_pps) {
                (Some(sps), Some(pps)) => self.parameter_sets = Some(ParameterSets { sps, pps }),
                _ => {
                    return Err(VideoError::Encoder(
                        "first frame came without sps/pps".into(),
                    ));
                }
            }
        }
        if !has_picture {
            // Frame skipping is disabled, so this means rate control broke its promise; an
            // MP4 with a missing sample would silently shift every later frame in time.
            return Err(VideoError::Encoder(format!(
                "frame {} produced no picture",
                self.frames_encoded
            )));
        }
        self.frames_encoded += 1;
        Ok(is_idr)
    }
}

fn strip_start_code(nal: &[u8]) -> &[u8] {
    nal.strip_prefix(&[0, 0, 0, 1])
        .or_else(|| nal.strip_prefix(&[0, 0, 1]))
        .unwrap_or(nal)
}

/// Tuned for throughput, because the farm encodes every render twice on two cores. Measured on
/// 848x480 and 1080p clips: `Complexity::Medium` is ~25% slower for <0.05 dB; scene-change and
/// background detection cost a few percent (hard cuts still get an IDR within two seconds);
/// extra threads do nothing with one slice per frame; OpenH264 emits the same CAVLC stream
/// whichever profile is asked for, so we ask for Baseline, which every player decodes.
/// Rate control: OpenH264's fixed-QP mode (QP 26, its built-in value) for both qualities, like
/// a CRF encode: size follows the content. The bitrate and quality modes print a warning per
/// encoder to stderr ("bitrate can't be controlled ... without enabling skip frame") that only
/// unsafe code could silence, and it tears through the CLI's progress bars; frame skipping would
/// break exact timing. So `Quality` today only sets the bitrate hint OpenH264 derives the H.264
/// level from; a per-quality QP needs the raw encoder API and is left for later.
fn encoder_config(settings: &EncodeSettings) -> EncoderConfig {
    let (min_qp, max_qp) = settings.quality.qp_range();
    EncoderConfig::new()
        .usage_type(UsageType::CameraVideoRealTime)
        .profile(Profile::Baseline)
        .complexity(Complexity::Low)
        .rate_control_mode(RateControlMode::Off)
        .bitrate(BitRate::from_bps(settings.target_bitrate()))
        .max_frame_rate(FrameRate::from_hz(settings.fps as f32))
        .qp(QpRange::new(min_qp, max_qp))
        // Every frame must become a sample, or timing and frame counts drift.
        .skip_frames(false)
        .intra_frame_period(IntraFramePeriod::from_num_frames(
            settings.keyframe_interval(),
        ))
        .scene_change_detect(false)
        .background_detection(false)
        .sps_pps_strategy(SpsPpsStrategy::ConstantId)
        .vui(VuiConfig::bt601())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::Quality;
    use crate::video::test_support::moving_gradient;

    fn nal_types(sample: &[u8]) -> Vec<u8> {
        let mut types = Vec::new();
        let mut rest = sample;
        while rest.len() >= 4 {
            let length = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            types.push(rest[4] & 0x1f);
            rest = &rest[4 + length..];
        }
        assert!(
            rest.is_empty(),
            "sample must be a whole number of nal units"
        );
        types
    }

    #[test]
    fn idr_every_two_seconds_and_parameter_sets_lifted_out() {
        let settings = EncodeSettings {
            width: 160,
            height: 96,
            fps: 8,
            quality: Quality::Delivery,
        };
        let mut encoder = H264Encoder::new(&settings).unwrap();
        let mut sample = Vec::new();
        let mut idr_frames = Vec::new();
        for index in 0..40 {
            let is_idr = encoder
                .encode(&moving_gradient(160, 96, index), &mut sample)
                .unwrap();
            let types = nal_types(&sample);
            assert!(
                !types.contains(&NAL_TYPE_SPS) && !types.contains(&NAL_TYPE_PPS),
                "{types:?}"
            );
            assert_eq!(is_idr, types.contains(&NAL_TYPE_IDR_SLICE));
            if is_idr {
                idr_frames.push(index);
            }
        }
        assert_eq!(idr_frames, vec![0, 16, 32]);
        let sets = encoder.parameter_sets().unwrap();
        assert_eq!(
            (sets.sps[0] & 0x1f, sets.pps[0] & 0x1f),
            (NAL_TYPE_SPS, NAL_TYPE_PPS)
        );
    }

    #[test]
    fn start_codes_of_both_lengths_are_stripped() {
        assert_eq!(strip_start_code(&[0, 0, 0, 1, 0x67, 1]), &[0x67, 1]);
        assert_eq!(strip_start_code(&[0, 0, 1, 0x68]), &[0x68]);
        assert_eq!(strip_start_code(&[0x65, 0]), &[0x65, 0]);
    }
}
