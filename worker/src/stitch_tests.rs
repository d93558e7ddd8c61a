//! Stitching keeps the timeline exact and dissolves only where the plan says.

use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::*;

const W: u32 = 64;
const H: u32 = 48;
const FPS: u32 = 8;

fn new_writer() -> Mp4Writer<Cursor<Vec<u8>>> {
    let settings = EncodeSettings {
        width: W,
        height: H,
        fps: FPS,
        quality: Quality::Intermediate,
    };
    Mp4Writer::new(Cursor::new(Vec::new()), settings).unwrap()
}

fn segment(levels: &[u8]) -> Bytes {
    let mut writer = new_writer();
    for &level in levels {
        writer
            .push(&RgbFrame::filled(W, H, [level, level, level]))
            .unwrap();
    }
    Bytes::from(writer.finish().unwrap().into_inner())
}

fn input(
    id: &str,
    join: pb::JoinKind,
    lead: u64,
    timeline: u64,
    level: u8,
    lead_level: u8,
) -> StitchInput {
    let mut levels = vec![lead_level; lead as usize];
    levels.extend(std::iter::repeat_n(level, timeline as usize));
    StitchInput {
        segment_id: id.into(),
        shot_index: 0,
        join,
        lead_frames: lead,
        timeline_frames: timeline,
        video: segment(&levels),
    }
}

fn progress() -> Progress {
    let (sender, _receiver) = tokio::sync::mpsc::unbounded_channel();
    Progress::new(sender, Arc::new(AtomicBool::new(false)))
}

fn mean_level(frame: &RgbFrame) -> f64 {
    frame.data.iter().map(|&v| f64::from(v)).sum::<f64>() / frame.data.len() as f64
}

fn run(inputs: &[StitchInput]) -> Vec<f64> {
    let mut writer = new_writer();
    let (written, _, _) = stitch(inputs, &mut writer, &progress()).unwrap();
    let bytes = writer.finish().unwrap().into_inner();
    let mut reader = Mp4Reader::open(bytes).unwrap();
    assert_eq!(reader.frame_count(), written);
    let mut levels = Vec::new();
    while let Some(frame) = reader.next_frame().unwrap() {
        levels.push(mean_level(&frame));
    }
    levels
}

#[test]
fn cuts_and_continuations_append_every_timeline_frame_once() {
    let levels = run(&[
        input("a", pb::JoinKind::Cut, 0, 10, 40, 0),
        input("b", pb::JoinKind::Continue, 0, 7, 120, 0),
        input("c", pb::JoinKind::Cut, 0, 5, 200, 0),
    ]);
    assert_eq!(levels.len(), 22);
    assert!(
        levels[..10].iter().all(|l| (l - 40.0).abs() < 4.0),
        "{levels:?}"
    );
    assert!(
        levels[10..17].iter().all(|l| (l - 120.0).abs() < 4.0),
        "{levels:?}"
    );
    assert!(
        levels[17..].iter().all(|l| (l - 200.0).abs() < 4.0),
        "{levels:?}"
    );
}

#[test]
fn a_crossfade_dissolves_its_handle_over_the_tail_and_keeps_the_length() {
    // The handle frames (lead) of b are drawn at b's level: the dissolve goes 40 → 200.
    let levels = run(&[
        input("a", pb::JoinKind::Cut, 0, 12, 40, 0),
        input("b", pb::JoinKind::Crossfade, 3, 8, 200, 200),
    ]);
    assert_eq!(levels.len(), 20, "timeline = 12 + 8");
    assert!(
        levels[..9].iter().all(|l| (l - 40.0).abs() < 4.0),
        "{levels:?}"
    );
    for (offset, expected) in [80.0, 120.0, 160.0].into_iter().enumerate() {
        assert!(
            (levels[9 + offset] - expected).abs() < 5.0,
            "frame {}: {levels:?}",
            9 + offset
        );
    }
    assert!(
        levels[12..].iter().all(|l| (l - 200.0).abs() < 4.0),
        "{levels:?}"
    );
}

#[test]
fn a_segment_shorter_than_the_plan_is_an_error_not_a_short_video() {
    let mut short = input("a", pb::JoinKind::Cut, 0, 5, 40, 0);
    short.timeline_frames = 9;
    let mut writer = new_writer();
    let failure = stitch(&[short], &mut writer, &progress()).unwrap_err();
    assert_eq!(failure.reason, pb::FailureReason::InvalidTask);
}

#[test]
fn dissolve_is_linear_between_the_two_frames() {
    let from = RgbFrame::filled(2, 2, [0, 100, 200]);
    let to = RgbFrame::filled(2, 2, [100, 100, 0]);
    assert_eq!(dissolve(&from, &to, 0.25).pixel(1, 1), [25, 100, 150]);
    assert_eq!(dissolve(&from, &to, 0.0), from);
    assert_eq!(dissolve(&from, &to, 1.0), to);
}
