//! Stitching keeps the timeline exact and dissolves only where the plan says.

use std::io::Cursor;

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

fn input(id: &str, join: Join, lead: u64, timeline: u64, level: u8, lead_level: u8) -> StitchInput {
    let mut levels = vec![lead_level; lead as usize];
    levels.extend(std::iter::repeat_n(level, timeline as usize));
    StitchInput {
        segment_id: id.into(),
        shot_index: 0,
        shot_name: "shot 0".into(),
        join,
        lead_frames: lead,
        timeline_frames: timeline,
        video: segment(&levels).into(),
        color: no_color(),
    }
}

/// No samples: every grade fits to the identity.
fn no_color() -> SegmentColor {
    SegmentColor {
        scene: "one".into(),
        grade_reference: false,
        continues_previous: false,
        first_frame: Vec::new(),
        last_frame: Vec::new(),
        whole: Vec::new(),
    }
}

fn progress() -> Unwatched {
    Unwatched
}

fn mean_level(frame: &RgbFrame) -> f64 {
    frame.data.iter().map(|&v| f64::from(v)).sum::<f64>() / frame.data.len() as f64
}

fn run(inputs: &[StitchInput]) -> Vec<f64> {
    let mut writer = new_writer();
    let written = stitch(inputs, ColorMatch::Mkl, &mut writer, &progress())
        .unwrap()
        .frames;
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
        input("a", Join::Cut, 0, 10, 40, 0),
        input("b", Join::Continue, 0, 7, 120, 0),
        input("c", Join::Cut, 0, 5, 200, 0),
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
        input("a", Join::Cut, 0, 12, 40, 0),
        input("b", Join::Crossfade, 3, 8, 200, 200),
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
fn a_continuity_blend_dissolves_the_overlap_and_keeps_the_length() {
    let levels = run(&[
        input("a", Join::Cut, 0, 10, 40, 0),
        input("b", Join::Continue, 2, 6, 160, 100),
    ]);
    assert_eq!(
        levels.len(),
        16,
        "timeline = 10 + 6, the overlap replaces a's tail"
    );
    assert!(
        levels[..8].iter().all(|l| (l - 40.0).abs() < 4.0),
        "{levels:?}"
    );
    // Overlap frames at b's lead level (100) blend in at 1/3 and 2/3.
    for (offset, expected) in [60.0, 80.0].into_iter().enumerate() {
        assert!((levels[8 + offset] - expected).abs() < 5.0, "{levels:?}");
    }
    assert!(
        levels[10..].iter().all(|l| (l - 160.0).abs() < 4.0),
        "{levels:?}"
    );
}

#[test]
fn the_contact_sheet_gets_first_middle_and_last_frame_of_every_shot() {
    let mut inputs = vec![
        input("a", Join::Cut, 0, 5, 40, 0),
        input("b", Join::Continue, 0, 4, 120, 0),
        input("c", Join::Cut, 0, 3, 200, 0),
    ];
    inputs[2].shot_index = 1;
    inputs[2].shot_name = "harbour".into();
    let (labels, picks) = contact_picks(&inputs, FPS);
    assert_eq!(labels.len(), 2);
    assert_eq!(labels[1], (1, "harbour | 0.4 s | cut".to_string()));
    let frames: Vec<u64> = picks.keys().copied().collect();
    assert_eq!(
        frames,
        vec![0, 4, 8, 9, 10, 11],
        "shot 0 spans 9 frames, shot 1 three"
    );
    let mut writer = new_writer();
    let stitched = stitch(&inputs, ColorMatch::Off, &mut writer, &progress()).unwrap();
    assert_eq!(stitched.contact_rows.len(), 2);
    let last_of_first_shot = &stitched.contact_rows[0].frames[2];
    assert!((mean_level(last_of_first_shot) - 120.0).abs() < 4.0);
    let timeline = timeline_of(&inputs, "t", FPS, "final.mp4");
    assert!(timeline.to_string().contains("harbour"));
}

#[test]
fn a_segment_shorter_than_the_plan_is_an_error_not_a_short_video() {
    let mut short = input("a", Join::Cut, 0, 5, 40, 0);
    short.timeline_frames = 9;
    let mut writer = new_writer();
    let failure = stitch(&[short], ColorMatch::Off, &mut writer, &progress())
        .err()
        .unwrap();
    assert!(matches!(failure, StitchError::InvalidInput(_)), "{failure}");
}

#[test]
fn dissolve_is_linear_between_the_two_frames() {
    let from = RgbFrame::filled(2, 2, [0, 100, 200]);
    let to = RgbFrame::filled(2, 2, [100, 100, 0]);
    assert_eq!(dissolve(&from, &to, 0.25).pixel(1, 1), [25, 100, 150]);
    assert_eq!(dissolve(&from, &to, 0.0), from);
    assert_eq!(dissolve(&from, &to, 1.0), to);
}

#[test]
fn fetched_parts_are_loaded_one_at_a_time_as_the_stitch_reaches_them() {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    struct Recorder(Arc<AtomicU64>);
    impl Progress for Recorder {
        fn report(&self, done: u64, _total: u64) {
            self.0.store(done, Ordering::SeqCst);
        }
        fn is_cancelled(&self) -> bool {
            false
        }
    }
    let done = Arc::new(AtomicU64::new(0));
    let fetched: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let inputs: Vec<StitchInput> = (0..3)
        .map(|index| {
            let mut part = input(&format!("s{index}"), Join::Cut, 0, 24, 100, 100);
            let VideoSource::Bytes(bytes) = std::mem::replace(&mut part.video, Bytes::new().into())
            else {
                unreachable!("built in memory")
            };
            let (done, fetched) = (done.clone(), fetched.clone());
            part.video = VideoSource::Fetch(Box::new(move || {
                fetched
                    .lock()
                    .unwrap()
                    .push((index, done.load(Ordering::SeqCst)));
                Ok(bytes.to_vec())
            }));
            part
        })
        .collect();
    let mut writer = new_writer();
    let stitched = stitch(
        &inputs,
        ColorMatch::Off,
        &mut writer,
        &Recorder(done.clone()),
    )
    .unwrap();
    assert_eq!(stitched.frames, 72);
    let fetched = fetched.lock().unwrap().clone();
    assert_eq!(
        fetched.iter().map(|(index, _)| *index).collect::<Vec<_>>(),
        [0, 1, 2],
        "each part once, in order"
    );
    assert!(
        fetched[2].1 > 0,
        "the last part was fetched only after frames went out: {fetched:?}"
    );
    // A failed fetch is the stitch's error, naming the key.
    let mut inputs = inputs;
    inputs[1].video = VideoSource::Fetch(Box::new(|| {
        Err(StitchError::Fetch {
            key: "segments/s1.a1.mp4".into(),
            message: "crc32c mismatch".into(),
            corrupt: true,
        })
    }));
    let mut writer = new_writer();
    match stitch(&inputs, ColorMatch::Off, &mut writer, &progress()) {
        Err(StitchError::Fetch { key, corrupt, .. }) => {
            assert_eq!(key, "segments/s1.a1.mp4");
            assert!(corrupt);
        }
        other => panic!(
            "expected the fetch error, got {:?}",
            other.map(|s| s.frames)
        ),
    }
}
