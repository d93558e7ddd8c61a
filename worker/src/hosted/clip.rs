//! A downloaded hosted clip as the segment encoder reads it: frame `i` at the sequence's
//! rate is the clip's frame nearest in time (`retime`, as for Wan's 16 fps), scaled to
//! cover the sequence's frame and cropped about the centre. Frames are decoded as the
//! encoder asks for them, in order, so a 12 s 720p clip never sits in memory whole.

use std::sync::Mutex;

use reelfarm_common::pb;
use reelfarm_media::frame::RgbFrame;
use reelfarm_media::video::Mp4Reader;
use reelfarm_models::retime::native_index;
use reelfarm_models::{ClipDecoder, GeneratedClip, ModelError};

use crate::task::TaskFailure;

/// The clip of `task` from the MP4 the API delivered: `render_frames` frames at the task's
/// rate and size. A clip up to `SHORT_BY` frames shorter (an encoder that drops the last
/// frame, 29.97 fps called 30) repeats its last frame; a shorter one is refused, naming
/// both lengths.
pub fn from_mp4(bytes: Vec<u8>, task: &pb::SegmentTask) -> Result<GeneratedClip, TaskFailure> {
    let reader = Mp4Reader::open(bytes.clone())?;
    let clip_fps = reader.fps().round().max(1.0) as u32;
    let frames = u32::try_from(task.render_frames)
        .map_err(|_| TaskFailure::invalid("render_frames out of range"))?;
    let last = native_index(frames.saturating_sub(1), task.fps, clip_fps);
    if u64::from(last) >= reader.frame_count() + SHORT_BY || reader.frame_count() == 0 {
        return Err(TaskFailure::new(
            pb::FailureReason::ModelError,
            format!(
                "the hosted clip has {} frames at {clip_fps} fps; segment {} needs {} at {} fps",
                reader.frame_count(),
                task.segment_id,
                frames,
                task.fps
            ),
        ));
    }
    let decoder = Forward {
        last_source: (reader.frame_count() - 1) as u32,
        bytes,
        clip_fps,
        fps: task.fps,
        size: (task.width, task.height),
        state: Mutex::new(State {
            reader,
            next_source: 0,
            current: None,
        }),
    };
    Ok(GeneratedClip::new(
        task.width,
        task.height,
        frames,
        Box::new(decoder),
    ))
}

/// Frames a clip may fall short of the segment by, its last one repeated.
const SHORT_BY: u64 = 2;

struct Forward {
    /// The clip's last frame: later ones repeat it.
    last_source: u32,
    bytes: Vec<u8>,
    clip_fps: u32,
    fps: u32,
    size: (u32, u32),
    state: Mutex<State>,
}

struct State {
    reader: Mp4Reader,
    /// The clip frame `reader` returns next.
    next_source: u32,
    /// The last clip frame read, converted, with its index.
    current: Option<(u32, RgbFrame)>,
}

impl ClipDecoder for Forward {
    fn decode_frame(&self, index: u32) -> Result<RgbFrame, ModelError> {
        let source = native_index(index, self.fps, self.clip_fps).min(self.last_source);
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, frame)) = &state.current
            && *at == source
        {
            return Ok(frame.clone());
        }
        if source < state.next_source {
            // Asked for an earlier frame: read the clip again from its start.
            state.reader = Mp4Reader::open(self.bytes.clone()).map_err(internal)?;
            state.next_source = 0;
        }
        loop {
            let frame = state
                .reader
                .next_frame()
                .map_err(internal)?
                .ok_or_else(|| {
                    ModelError::Internal(format!("the clip ended before frame {source}"))
                })?;
            let at = state.next_source;
            state.next_source += 1;
            if at == source {
                let converted = frame.cover(self.size.0, self.size.1);
                state.current = Some((at, converted.clone()));
                return Ok(converted);
            }
        }
    }

    fn resident_bytes(&self) -> u64 {
        self.bytes.len() as u64
    }
}

fn internal(error: reelfarm_media::video::VideoError) -> ModelError {
    ModelError::Internal(format!("hosted clip: {error}"))
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use reelfarm_media::video::{EncodeSettings, Mp4Writer, Quality};

    use super::*;

    /// A 24 fps 64x36 clip whose frame `i` is filled with grey level `8 * i`.
    fn clip(frames: u32) -> Vec<u8> {
        let settings = EncodeSettings {
            width: 64,
            height: 36,
            fps: 24,
            quality: Quality::Intermediate,
        };
        let mut writer = Mp4Writer::new(Cursor::new(Vec::new()), settings).unwrap();
        for index in 0..frames {
            let level = (index * 8) as u8;
            writer.push(&RgbFrame::filled(64, 36, [level; 3])).unwrap();
        }
        writer.finish().unwrap().into_inner()
    }

    #[test]
    fn a_clip_is_retimed_scaled_and_cropped_to_the_segment() {
        let task = pb::SegmentTask {
            segment_id: "s000-00".into(),
            width: 32,
            height: 32,
            fps: 12,
            render_frames: 12,
            ..Default::default()
        };
        let generated = from_mp4(clip(24), &task).unwrap();
        assert_eq!(generated.len(), 12);
        let levels: Vec<u8> = (0..12)
            .map(|index| generated.try_frame(index).unwrap())
            .map(|frame| {
                assert_eq!((frame.width, frame.height), (32, 32));
                frame.pixel(16, 16)[0]
            })
            .collect();
        // 12 fps from 24: every other clip frame (0, 2, 4, ... at 8 grey levels each).
        for (index, level) in levels.iter().enumerate() {
            let expected = (index * 16) as i32;
            assert!((i32::from(*level) - expected).abs() <= 3, "{levels:?}");
        }
        // Going back re-reads the clip.
        assert!((i32::from(generated.try_frame(1).unwrap().pixel(0, 0)[0]) - 16).abs() <= 3);
    }

    #[test]
    fn a_clip_too_short_for_the_segment_is_refused_with_both_lengths() {
        let task = pb::SegmentTask {
            segment_id: "s000-00".into(),
            width: 32,
            height: 32,
            fps: 24,
            render_frames: 30,
            ..Default::default()
        };
        // Two frames short: the last one repeats.
        let almost = pb::SegmentTask {
            render_frames: 26,
            ..task.clone()
        };
        let generated = from_mp4(clip(24), &almost).unwrap();
        let end = generated.try_frame(25).unwrap().pixel(0, 0)[0];
        assert!((i32::from(end) - 23 * 8).abs() <= 3, "{end}");
        let error = from_mp4(clip(24), &task).err().unwrap();
        assert!(
            error.message.contains("has 24 frames at 24 fps"),
            "{}",
            error.message
        );
        assert!(
            error.message.contains("needs 30 at 24 fps"),
            "{}",
            error.message
        );
    }
}
