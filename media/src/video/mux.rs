//! Streaming MP4 writer: frames go through the encoder and straight into `mdat`, `moov` is written at the end.
//!
//! Only the per-sample table (size, offset, sync flag: a few bytes per frame) stays in memory,
//! so a 1080p render never holds more than one frame. Layout: `ftyp`, an 8-byte `free` box that
//! can become a 64-bit `mdat` header if the data outgrows 4 GiB, `mdat`, then `moov`.
//! Delivered videos are finished with `finish_faststart` instead, which moves `moov` in front
//! of the media data so browsers and players start before the whole file has arrived.

use std::io::{Read, Seek, SeekFrom, Write};

use super::encode::H264Encoder;
use super::moov::{SampleLog, file_type_box, movie_box};
use super::{EncodeSettings, VideoError};
use crate::frame::RgbFrame;

/// Encodes RGB frames into an H.264 MP4 on `out`, one frame at a time.
///
/// The file is only playable after `finish` (which writes `moov`); dropping the writer early,
/// or carrying on after an I/O error from `out`, leaves an incomplete file.
pub struct Mp4Writer<W: Write + Seek> {
    out: W,
    settings: EncodeSettings,
    encoder: H264Encoder,
    placeholder_position: u64,
    mdat_position: u64,
    next_sample_offset: u64,
    samples: SampleLog,
    sample_buffer: Vec<u8>,
}

impl<W: Write + Seek> Mp4Writer<W> {
    /// Starts an MP4 at the current position of `out`.
    pub fn new(mut out: W, settings: EncodeSettings) -> Result<Self, VideoError> {
        settings.validate()?;
        let encoder = H264Encoder::new(&settings)?;
        let mut header = file_type_box();
        let start = out.stream_position()?;
        let placeholder_position = start + header.len() as u64;
        header.extend_from_slice(&8u32.to_be_bytes());
        header.extend_from_slice(b"free");
        header.extend_from_slice(&0u32.to_be_bytes()); // patched with the real mdat size in `finish`
        header.extend_from_slice(b"mdat");
        out.write_all(&header)?;
        let next_sample_offset = placeholder_position + 16;
        Ok(Self {
            out,
            settings,
            encoder,
            placeholder_position,
            mdat_position: placeholder_position + 8,
            next_sample_offset,
            samples: SampleLog::default(),
            sample_buffer: Vec::new(),
        })
    }

    /// The size every frame must have, the rate and the quality.
    pub fn settings(&self) -> &EncodeSettings {
        &self.settings
    }

    /// Encodes and appends one frame; it must have the size given in the settings.
    pub fn push(&mut self, frame: &RgbFrame) -> Result<(), VideoError> {
        let (width, height) = (self.settings.width, self.settings.height);
        if frame.width != width || frame.height != height {
            return Err(VideoError::FrameSizeMismatch {
                expected_width: width,
                expected_height: height,
                actual_width: frame.width,
                actual_height: frame.height,
            });
        }
        let expected_len = width as usize * height as usize * 3;
        if frame.data.len() != expected_len {
            let actual_len = frame.data.len();
            return Err(VideoError::InvalidFrame(format!(
                "{actual_len} bytes of rgb, expected {expected_len}"
            )));
        }
        let is_sync = self.encoder.encode(frame, &mut self.sample_buffer)?;
        let size = u32::try_from(self.sample_buffer.len())
            .map_err(|_| VideoError::Encoder("sample larger than 4 GiB".into()))?;
        self.out.write_all(&self.sample_buffer)?;
        self.samples.offsets.push(self.next_sample_offset);
        self.samples.sizes.push(size);
        self.next_sample_offset += u64::from(size);
        if is_sync {
            self.samples
                .sync_samples
                .push(self.samples.sizes.len() as u32);
        }
        Ok(())
    }

    pub fn frames_written(&self) -> u64 {
        self.samples.sizes.len() as u64
    }

    /// Closes `mdat`, writes `moov` and hands back the writer, positioned at the end of the file.
    pub fn finish(mut self) -> Result<W, VideoError> {
        let mdat_end = self.close_media_data()?;
        let Some(parameter_sets) = self.encoder.parameter_sets() else {
            return Err(VideoError::NoFrames);
        };
        self.out.seek(SeekFrom::Start(mdat_end))?;
        let moov = movie_box(&self.settings, &self.samples, parameter_sets);
        self.out.write_all(&moov)?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Like `finish`, with `moov` moved in front of the media data ("faststart"): the layout
    /// becomes `ftyp`, `moov`, `free`, `mdat`. The media data is shifted forward by the size of
    /// `moov` in place, one bounded chunk at a time from the end, so nothing is held twice.
    pub fn finish_faststart(mut self) -> Result<W, VideoError>
    where
        W: Read,
    {
        let mdat_end = self.close_media_data()?;
        let Some(parameter_sets) = self.encoder.parameter_sets() else {
            return Err(VideoError::NoFrames);
        };
        // Every sample moves by the size of `moov`, which depends on whether the moved offsets
        // still fit 32 bits (`stco`) or need `co64`: settle it (two rounds at most).
        let mut shift = 0u64;
        let moov = loop {
            let shifted = SampleLog {
                sizes: self.samples.sizes.clone(),
                offsets: self.samples.offsets.iter().map(|o| o + shift).collect(),
                sync_samples: self.samples.sync_samples.clone(),
            };
            let moov = movie_box(&self.settings, &shifted, parameter_sets);
            if moov.len() as u64 == shift {
                break moov;
            }
            shift = moov.len() as u64;
        };
        shift_forward(&mut self.out, self.placeholder_position, mdat_end, shift)?;
        self.out.seek(SeekFrom::Start(self.placeholder_position))?;
        self.out.write_all(&moov)?;
        self.out.seek(SeekFrom::Start(mdat_end + shift))?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Writes the final `mdat` size; returns where the media data ends.
    fn close_media_data(&mut self) -> Result<u64, VideoError> {
        if self.encoder.parameter_sets().is_none() {
            return Err(VideoError::NoFrames);
        }
        let mdat_end = self.next_sample_offset;
        let mdat_size = mdat_end - self.mdat_position;
        if let Ok(size) = u32::try_from(mdat_size) {
            self.out.seek(SeekFrom::Start(self.mdat_position))?;
            self.out.write_all(&size.to_be_bytes())?;
        } else {
            // Too big for a 32-bit size: swallow the `free` box into a 64-bit `mdat` header.
            self.out.seek(SeekFrom::Start(self.placeholder_position))?;
            self.out.write_all(&1u32.to_be_bytes())?;
            self.out.write_all(b"mdat")?;
            self.out
                .write_all(&(mdat_end - self.placeholder_position).to_be_bytes())?;
        }
        Ok(mdat_end)
    }
}

/// Bytes moved per read and write while shifting the media data.
const SHIFT_CHUNK: u64 = 1 << 20;

/// Moves the bytes `[start, end)` of `out` to `[start + by, end + by)`, last chunk first so
/// nothing is overwritten before it has been read.
fn shift_forward<W: Read + Write + Seek>(
    out: &mut W,
    start: u64,
    end: u64,
    by: u64,
) -> Result<(), VideoError> {
    let mut buffer = vec![0u8; SHIFT_CHUNK.min(end - start) as usize];
    let mut chunk_end = end;
    while chunk_end > start {
        let len = SHIFT_CHUNK.min(chunk_end - start);
        let chunk = &mut buffer[..len as usize];
        out.seek(SeekFrom::Start(chunk_end - len))?;
        out.read_exact(chunk)?;
        out.seek(SeekFrom::Start(chunk_end - len + by))?;
        out.write_all(chunk)?;
        chunk_end -= len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;
    use std::process::Command;

    use super::*;
    use crate::video::Quality;
    use crate::video::test_support::{
        delivery_settings as settings, encode_gradient, moving_gradient, psnr,
    };

    #[test]
    fn frames_of_the_wrong_size_are_rejected_and_the_writer_carries_on() {
        let mut writer = Mp4Writer::new(Cursor::new(Vec::new()), settings(64, 48, 8)).unwrap();
        let error = writer
            .push(&RgbFrame::filled(48, 64, [0, 0, 0]))
            .unwrap_err();
        assert!(
            matches!(
                error,
                VideoError::FrameSizeMismatch {
                    actual_width: 48,
                    ..
                }
            ),
            "{error}"
        );
        let short_buffer = RgbFrame {
            width: 64,
            height: 48,
            data: vec![0; 5],
        };
        assert!(matches!(
            writer.push(&short_buffer),
            Err(VideoError::InvalidFrame(_))
        ));
        writer.push(&moving_gradient(64, 48, 0)).unwrap();
        assert_eq!(writer.frames_written(), 1);
        assert!(writer.finish().is_ok());
    }

    #[test]
    fn finishing_without_frames_is_an_error() {
        let writer = Mp4Writer::new(Cursor::new(Vec::new()), settings(64, 48, 8)).unwrap();
        assert!(matches!(writer.finish(), Err(VideoError::NoFrames)));
    }

    #[test]
    fn invalid_settings_fail_before_writing() {
        assert!(matches!(
            Mp4Writer::new(Cursor::new(Vec::new()), settings(63, 48, 8)),
            Err(VideoError::InvalidSettings(_))
        ));
    }

    /// Top-level boxes of a file, in order.
    fn top_level_boxes(bytes: &[u8]) -> Vec<String> {
        let mut boxes = Vec::new();
        let mut at = 0;
        while at + 8 <= bytes.len() {
            let size = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            boxes.push(String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned());
            assert!(size >= 8, "box of size {size} at {at}");
            at += size;
        }
        assert_eq!(at, bytes.len(), "boxes cover the file exactly");
        boxes
    }

    fn written(frames: u32, faststart: bool, prefix: &[u8]) -> Vec<u8> {
        let mut out = Cursor::new(prefix.to_vec());
        out.set_position(prefix.len() as u64);
        let mut writer = Mp4Writer::new(out, settings(96, 64, 8)).unwrap();
        for index in 0..frames {
            writer.push(&moving_gradient(96, 64, index)).unwrap();
        }
        let out = if faststart {
            writer.finish_faststart()
        } else {
            writer.finish()
        };
        out.unwrap().into_inner()
    }

    #[test]
    fn faststart_puts_moov_first_and_decodes_to_the_same_frames() {
        let plain = written(30, false, b"");
        let fast = written(30, true, b"");
        assert_eq!(top_level_boxes(&plain), ["ftyp", "free", "mdat", "moov"]);
        assert_eq!(top_level_boxes(&fast), ["ftyp", "moov", "free", "mdat"]);
        assert_eq!(plain.len(), fast.len());
        let mut a = crate::video::Mp4Reader::open(plain).unwrap();
        let mut b = crate::video::Mp4Reader::open(fast).unwrap();
        assert_eq!(a.frame_count(), 30);
        assert_eq!(b.frame_count(), 30);
        while let Some(frame) = a.next_frame().unwrap() {
            assert_eq!(Some(frame), b.next_frame().unwrap());
        }
        assert_eq!(b.next_frame().unwrap(), None);
    }

    #[test]
    fn faststart_keeps_offsets_absolute_after_existing_bytes() {
        let fast = written(5, true, b"prefix");
        assert_eq!(&fast[..6], b"prefix");
        assert_eq!(
            top_level_boxes(&fast[6..]),
            ["ftyp", "moov", "free", "mdat"]
        );
        let find = |needle: &[u8]| {
            fast.windows(needle.len())
                .position(|w| w == needle)
                .unwrap()
        };
        // The first chunk offset points just past the moved `mdat` header, counted from the
        // start of the whole stream (the prefix included), as `finish` counts it.
        let stco = find(b"stco");
        let first_offset = u32::from_be_bytes(fast[stco + 12..stco + 16].try_into().unwrap());
        assert_eq!(first_offset as usize, find(b"mdat") + 4);
    }

    #[test]
    fn ffprobe_reads_a_faststart_file() {
        let fast = written(16, true, b"");
        let file = tempfile::Builder::new().suffix(".mp4").tempfile().unwrap();
        std::fs::write(file.path(), &fast).unwrap();
        let Some(report) = ffprobe(
            file.path(),
            &[
                "-count_frames",
                "-show_entries",
                "stream=nb_read_frames,width,height",
            ],
        ) else {
            return;
        };
        for expected in ["width=96", "height=64", "nb_read_frames=16"] {
            assert!(report.lines().any(|line| line == expected), "{report}");
        }
    }

    #[test]
    fn writes_after_existing_bytes_with_absolute_offsets() {
        let mut out = Cursor::new(b"prefix".to_vec());
        out.set_position(6);
        let mut writer = Mp4Writer::new(out, settings(64, 48, 8)).unwrap();
        writer.push(&moving_gradient(64, 48, 0)).unwrap();
        let bytes = writer.finish().unwrap().into_inner();
        assert_eq!(&bytes[..6], b"prefix");
        assert_eq!(&bytes[10..14], b"ftyp");
    }

    /// Runs ffprobe if installed; a missing ffprobe fails the test unless explicitly skipped,
    /// so the independent check can never pass by accident.
    fn ffprobe(path: &std::path::Path, extra: &[&str]) -> Option<String> {
        let result = Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v:0"])
            .args(extra)
            .args(["-of", "default=noprint_wrappers=1"])
            .arg(path)
            .output();
        match result {
            Ok(output) => {
                assert!(
                    output.status.success(),
                    "ffprobe: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                Some(String::from_utf8_lossy(&output.stdout).into_owned())
            }
            Err(_) if std::env::var("REELFARM_SKIP_FFPROBE").as_deref() == Ok("1") => None,
            Err(error) => panic!(
                "ffprobe is not on PATH ({error}); install ffmpeg (apt-get install -y ffmpeg) \
                 or set REELFARM_SKIP_FFPROBE=1 to skip this check"
            ),
        }
    }

    #[test]
    fn ffprobe_agrees_on_timing_size_and_codec() {
        let cases = [
            (848, 480, 24, 48),
            (480, 848, 30, 17),
            (1152, 480, 8, 9),
            (640, 480, 60, 61),
            (160, 96, 8, 40),
        ];
        for (width, height, fps, frames) in cases {
            let mp4 = encode_gradient(width, height, fps, frames, Quality::Delivery);
            let file = tempfile::Builder::new().suffix(".mp4").tempfile().unwrap();
            std::fs::write(file.path(), &mp4).unwrap();
            let entries = "stream=codec_name,profile,width,height,pix_fmt,r_frame_rate,avg_frame_rate,nb_frames,\
                           nb_read_frames,duration:format=duration";
            let Some(report) = ffprobe(file.path(), &["-count_frames", "-show_entries", entries])
            else {
                return;
            };
            let duration = format!("{:.6}", f64::from(frames) / f64::from(fps));
            for expected in [
                "codec_name=h264".to_string(),
                format!("width={width}"),
                format!("height={height}"),
                "pix_fmt=yuv420p".to_string(),
                format!("r_frame_rate={fps}/1"),
                format!("avg_frame_rate={fps}/1"),
                format!("nb_frames={frames}"),
                format!("nb_read_frames={frames}"),
                format!("duration={duration}"),
            ] {
                assert!(
                    report.lines().any(|line| line == expected),
                    "{width}x{height}: missing {expected} in\n{report}"
                );
            }
            // Seeking relies on the sync sample table: one keyframe every two seconds.
            let packets =
                ffprobe(file.path(), &["-show_entries", "packet=flags"]).unwrap_or_default();
            let keyframes = packets
                .lines()
                .filter(|line| line.starts_with("flags=K"))
                .count() as u32;
            assert_eq!(
                keyframes,
                frames.div_ceil(2 * fps),
                "{width}x{height}@{fps} keyframes\n{packets}"
            );
        }
    }

    #[test]
    fn ffmpeg_decodes_our_file_to_the_same_picture() {
        let (width, height, frames) = (848, 480, 12);
        let mp4 = encode_gradient(width, height, 24, frames, Quality::Intermediate);
        let file = tempfile::Builder::new().suffix(".mp4").tempfile().unwrap();
        std::fs::write(file.path(), &mp4).unwrap();
        if ffprobe(file.path(), &["-show_entries", "stream=codec_name"]).is_none() {
            return;
        }
        let output = Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(file.path())
            .args(["-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
            .output()
            .expect("ffprobe is installed, so ffmpeg should be too");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let frame_len = (width * height * 3) as usize;
        assert_eq!(output.stdout.len(), frame_len * frames as usize);
        for (index, rgb) in output.stdout.chunks_exact(frame_len).enumerate() {
            let decoded = RgbFrame::new(width, height, rgb.to_vec());
            let score = psnr(&moving_gradient(width, height, index as u32), &decoded);
            assert!(
                score > 33.0,
                "ffmpeg's frame {index}: {score:.2} dB; colour signalling or cropping off?"
            );
        }
    }
}
