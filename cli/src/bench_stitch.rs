//! `reelfarm bench stitch`: what colour matching costs at delivery size. Synthetic segments
//! of a long 1080p sequence (exposure and white-balance offsets per shot, a drifting
//! continuation) are stitched by reelfarm with matching on, by reelfarm with matching off,
//! and re-encoded by `ffmpeg -c:v libx264 -preset veryfast` with no matching; the ratios come
//! from the same run on the same machine.

use std::io::Cursor;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use reelfarm_common::sequence::{Aspect, ColorMatch, Resolution, frame_size};
use reelfarm_media::frame::RgbFrame;
use reelfarm_media::video::{EncodeSettings, Mp4Writer, Quality};
use reelfarm_stitch::color::SegmentSampler;
use reelfarm_stitch::grading::SegmentColor;
use reelfarm_stitch::{Join, StitchInput, Stitched, Unwatched, stitch};
use serde::Serialize;

/// Shots of the synthetic sequence: 15 s each.
const SHOT_SECONDS: f64 = 15.0;

#[derive(Debug, Serialize)]
pub struct StitchBench {
    pub frames: u64,
    pub width: u32,
    pub height: u32,
    pub color_match: &'static str,
    pub reelfarm_s: f64,
    pub reelfarm_off_s: f64,
    pub ffmpeg_s: f64,
    /// ffmpeg's time over reelfarm's with matching on: at least 1 means not slower.
    pub ratio_vs_ffmpeg: f64,
    /// Matching on over matching off: what grading and seam metrics add.
    pub matching_overhead: f64,
    pub decode_s: f64,
    pub grade_s: f64,
    pub encode_s: f64,
}

/// A landscape-like picture: sky gradient, horizon, bands of texture.
fn base_picture(width: u32, height: u32, seed: u32) -> RgbFrame {
    let mut data = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        let t = f64::from(y) / f64::from(height);
        for x in 0..width {
            let stripe = ((x / 24 + y / 16 + seed) % 7) as f64 * 6.0;
            let rgb = if t < 0.55 {
                [
                    70.0 + 110.0 * t + stripe * 0.3,
                    120.0 + 80.0 * t,
                    210.0 + 15.0 * t,
                ]
            } else {
                [60.0 + stripe, 105.0 + stripe, 50.0 + stripe * 0.5]
            };
            data.extend(rgb.map(|v| v.round().clamp(0.0, 255.0) as u8));
        }
    }
    RgbFrame::new(width, height, data)
}

/// `base` panned `shift` pixels left, under an RGB gain.
fn panned(base: &RgbFrame, shift: u32, gain: [f64; 3]) -> RgbFrame {
    let tables: [[u8; 256]; 3] = std::array::from_fn(|c| {
        std::array::from_fn(|v| (v as f64 * gain[c]).round().min(255.0) as u8)
    });
    let (width, row_bytes) = (base.width as usize, base.width as usize * 3);
    let shift = shift as usize % width;
    let mut data = vec![0u8; base.data.len()];
    for (row_out, row_in) in data
        .chunks_exact_mut(row_bytes)
        .zip(base.data.chunks_exact(row_bytes))
    {
        row_out[..row_bytes - shift * 3].copy_from_slice(&row_in[shift * 3..]);
        row_out[row_bytes - shift * 3..].copy_from_slice(&row_in[..shift * 3]);
        for pixel in row_out.chunks_exact_mut(3) {
            for c in 0..3 {
                pixel[c] = tables[c][usize::from(pixel[c])];
            }
        }
    }
    RgbFrame::new(base.width, base.height, data)
}

/// Renders and encodes the synthetic segments (untimed), the way workers write them.
fn synthetic_segments(seconds: f64, width: u32, height: u32, fps: u32) -> Result<Vec<StitchInput>> {
    let shots = (seconds / SHOT_SECONDS).round().max(2.0) as u32;
    let frames_per_shot = (SHOT_SECONDS * f64::from(fps)).round() as u64;
    let blend = u64::from(fps / 4);
    let mut inputs = Vec::new();
    let mut base = base_picture(width, height, 0);
    for shot in 0..shots {
        // Every third shot continues the one before (and drifts darker); every fourth
        // dissolves in; the rest cut. Gains stand for each clip's exposure and white balance.
        let join = match shot {
            0 => Join::Cut,
            s if s % 3 == 1 => Join::Continue,
            s if s % 4 == 3 => Join::Crossfade,
            _ => Join::Cut,
        };
        if join != Join::Continue {
            base = base_picture(width, height, shot * 5);
        }
        let lead = match join {
            Join::Continue => blend,
            Join::Crossfade => u64::from(fps / 2),
            _ => 0,
        };
        let gain = [
            0.8 + 0.06 * f64::from(shot % 5),
            0.9 + 0.03 * f64::from(shot % 3),
            1.05 - 0.05 * f64::from(shot % 4),
        ];
        let settings = EncodeSettings {
            width,
            height,
            fps,
            quality: Quality::Intermediate,
        };
        let mut writer = Mp4Writer::new(Cursor::new(Vec::new()), settings)?;
        let mut sampler = SegmentSampler::new(width, height, lead, frames_per_shot);
        let mut last = None;
        for index in 0..lead + frames_per_shot {
            let drift = if join == Join::Continue {
                1.0 - 0.15 * index as f64 / frames_per_shot as f64
            } else {
                1.0
            };
            let time = u64::from(shot) * frames_per_shot + index;
            let frame = panned(&base, (time * 3) as u32, gain.map(|g| g * drift));
            sampler.observe(index, &frame);
            writer.push(&frame)?;
            last = Some(frame);
        }
        let samples = sampler.finish(&last.context("a segment has frames")?);
        inputs.push(StitchInput {
            segment_id: format!("s{shot:03}-00"),
            shot_index: shot,
            shot_name: format!("shot {shot}"),
            join,
            lead_frames: lead,
            timeline_frames: frames_per_shot,
            video: Bytes::from(writer.finish()?.into_inner()).into(),
            color: SegmentColor {
                scene: "bench".into(),
                grade_reference: shot == 0,
                continues_previous: join == Join::Continue,
                first_frame: samples.first_frame_lab.to_f64(),
                last_frame: samples.last_frame_lab.to_f64(),
                whole: samples.segment_lab.to_f64(),
            },
        });
        eprint!("\rpreparing segments: {}/{shots}", shot + 1);
    }
    eprintln!();
    Ok(inputs)
}

fn time_reelfarm(
    inputs: &[StitchInput],
    method: ColorMatch,
    width: u32,
    height: u32,
    fps: u32,
) -> Result<(f64, Stitched)> {
    let settings = EncodeSettings {
        width,
        height,
        fps,
        quality: Quality::Delivery,
    };
    let started = Instant::now();
    let mut writer = Mp4Writer::new(Cursor::new(Vec::new()), settings)?;
    let stitched = stitch(inputs, method, &mut writer, &Unwatched)?;
    let video = writer.finish()?.into_inner();
    let seconds = started.elapsed().as_secs_f64();
    if video.is_empty() {
        bail!("the stitch wrote nothing");
    }
    Ok((seconds, stitched))
}

/// ffmpeg decodes the same segment files and re-encodes them with libx264, no matching.
fn time_ffmpeg(inputs: &[StitchInput], dir: &Path) -> Result<f64> {
    let mut list = String::new();
    for input in inputs {
        let path = dir.join(format!("{}.mp4", input.segment_id));
        std::fs::write(&path, input.video.load()?)?;
        list.push_str(&format!("file '{}'\n", path.display()));
    }
    let list_path = dir.join("segments.txt");
    std::fs::write(&list_path, list)?;
    let started = Instant::now();
    let output = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "concat", "-safe", "0", "-i"])
        .arg(&list_path)
        .args([
            "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-an",
        ])
        .arg(dir.join("ffmpeg.mp4"))
        .output()
        .context("running ffmpeg (apt-get install ffmpeg; only this benchmark needs it)")?;
    let seconds = started.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!("ffmpeg failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(seconds)
}

pub fn run(seconds: f64, resolution: &str) -> Result<StitchBench> {
    let Some(resolution) = Resolution::ALL.into_iter().find(|r| r.name() == resolution) else {
        bail!("--resolution: must be 480p, 720p or 1080p, got {resolution}");
    };
    if !(30.0..=3600.0).contains(&seconds) {
        bail!("--seconds: must be between 30 and 3600, got {seconds}");
    }
    let (width, height) = frame_size(resolution, Aspect::Wide16x9);
    let fps = 24;
    let inputs = synthetic_segments(seconds, width, height, fps)?;
    let dir = tempfile::tempdir()?;
    eprintln!("timing ffmpeg libx264 veryfast ...");
    let ffmpeg_s = time_ffmpeg(&inputs, dir.path())?;
    eprintln!("timing reelfarm stitch, matching off ...");
    let (reelfarm_off_s, _) = time_reelfarm(&inputs, ColorMatch::Off, width, height, fps)?;
    eprintln!(
        "timing reelfarm stitch, matching {} ...",
        ColorMatch::DEFAULT.name()
    );
    let (reelfarm_s, stitched) = time_reelfarm(&inputs, ColorMatch::DEFAULT, width, height, fps)?;
    Ok(StitchBench {
        frames: stitched.frames,
        width,
        height,
        color_match: ColorMatch::DEFAULT.name(),
        reelfarm_s,
        reelfarm_off_s,
        ffmpeg_s,
        ratio_vs_ffmpeg: ffmpeg_s / reelfarm_s,
        matching_overhead: reelfarm_s / reelfarm_off_s,
        decode_s: stitched.decode_seconds,
        grade_s: stitched.grade_seconds,
        encode_s: stitched.encode_seconds,
    })
}

pub fn print(bench: &StitchBench) {
    println!(
        "stitch of {} frames at {}x{} (24 fps, {:.0} s), colour matching {}:",
        bench.frames,
        bench.width,
        bench.height,
        bench.frames as f64 / 24.0,
        bench.color_match
    );
    println!(
        "  reelfarm, matching on   {:7.1} s  ({:.1} fps; decode {:.1} s, grade+metrics {:.1} s, encode {:.1} s)",
        bench.reelfarm_s,
        bench.frames as f64 / bench.reelfarm_s,
        bench.decode_s,
        bench.grade_s,
        bench.encode_s
    );
    println!("  reelfarm, matching off  {:7.1} s", bench.reelfarm_off_s);
    println!(
        "  ffmpeg libx264 veryfast {:7.1} s  (re-encode only, no matching)",
        bench.ffmpeg_s
    );
    println!(
        "  ratio ffmpeg / reelfarm {:7.2}  (goal: at least 1.00, not slower)",
        bench.ratio_vs_ffmpeg
    );
    println!(
        "  matching overhead       {:7.2}x (matching on / off)",
        bench.matching_overhead
    );
}
