//! The stitched sequence as an OpenTimelineIO timeline (`.otio`, OTIO's JSON format), so an
//! editor opens the cut with every shot as a clip and every dissolve as a transition.
//!
//! The clips point at the stitched video itself, each with its shot's range; grading and
//! dissolves are already in that media, which the transitions' metadata says (`baked`).

use serde_json::{Value, json};

/// How a shot starts on the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineJoin {
    Cut,
    Continue,
    /// The dissolve occupies the last `frames` of the shot before.
    Crossfade {
        frames: u64,
    },
}

/// One shot: contiguous with the one before it.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelineShot {
    pub name: String,
    pub start_frame: u64,
    pub frames: u64,
    pub transition_in: TimelineJoin,
}

fn time(frames: u64, fps: u32) -> Value {
    json!({"OTIO_SCHEMA": "RationalTime.1", "rate": f64::from(fps), "value": frames as f64})
}

fn range(start: u64, frames: u64, fps: u32) -> Value {
    json!({"OTIO_SCHEMA": "TimeRange.1", "start_time": time(start, fps), "duration": time(frames, fps)})
}

fn join_name(join: TimelineJoin) -> &'static str {
    match join {
        TimelineJoin::Cut => "cut",
        TimelineJoin::Continue => "continue",
        TimelineJoin::Crossfade { .. } => "crossfade",
    }
}

/// The OTIO document: one video track, a clip per shot, a dissolve before each crossfade.
pub fn otio_timeline(
    title: &str,
    fps: u32,
    media_url: &str,
    total_frames: u64,
    shots: &[TimelineShot],
) -> Value {
    let mut children = Vec::with_capacity(shots.len() * 2);
    for (index, shot) in shots.iter().enumerate() {
        if let (TimelineJoin::Crossfade { frames }, true) = (shot.transition_in, index > 0) {
            children.push(json!({
                "OTIO_SCHEMA": "Transition.1",
                "metadata": {"reelfarm": {"baked": true}},
                "name": format!("dissolve into {}", shot.name),
                "transition_type": "SMPTE_Dissolve",
                "in_offset": time(frames, fps),
                "out_offset": time(0, fps),
            }));
        }
        children.push(json!({
            "OTIO_SCHEMA": "Clip.2",
            "metadata": {"reelfarm": {"join": join_name(shot.transition_in), "shot_index": index}},
            "name": shot.name,
            "source_range": range(shot.start_frame, shot.frames, fps),
            "effects": [],
            "markers": [],
            "enabled": true,
            "media_references": {
                "DEFAULT_MEDIA": {
                    "OTIO_SCHEMA": "ExternalReference.1",
                    "metadata": {},
                    "name": media_url,
                    "available_range": range(0, total_frames, fps),
                    "available_image_bounds": null,
                    "target_url": media_url,
                }
            },
            "active_media_reference_key": "DEFAULT_MEDIA",
        }));
    }
    let track = json!({
        "OTIO_SCHEMA": "Track.1",
        "metadata": {},
        "name": "Video",
        "source_range": null,
        "effects": [],
        "markers": [],
        "enabled": true,
        "children": children,
        "kind": "Video",
    });
    json!({
        "OTIO_SCHEMA": "Timeline.1",
        "metadata": {"reelfarm": {"fps": fps, "frames": total_frames}},
        "name": title,
        "global_start_time": null,
        "tracks": {
            "OTIO_SCHEMA": "Stack.1",
            "metadata": {},
            "name": "tracks",
            "source_range": null,
            "effects": [],
            "markers": [],
            "enabled": true,
            "children": [track],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shots() -> Vec<TimelineShot> {
        vec![
            TimelineShot {
                name: "valley".into(),
                start_frame: 0,
                frames: 48,
                transition_in: TimelineJoin::Cut,
            },
            TimelineShot {
                name: "fog lifts".into(),
                start_frame: 48,
                frames: 24,
                transition_in: TimelineJoin::Continue,
            },
            TimelineShot {
                name: "lighthouse".into(),
                start_frame: 72,
                frames: 30,
                transition_in: TimelineJoin::Crossfade { frames: 12 },
            },
        ]
    }

    #[test]
    fn one_clip_per_shot_and_a_transition_per_dissolve() {
        let document = otio_timeline("coast", 24, "coast.mp4", 102, &shots());
        let items = document["tracks"]["children"][0]["children"]
            .as_array()
            .unwrap();
        let schemas: Vec<&str> = items
            .iter()
            .map(|i| i["OTIO_SCHEMA"].as_str().unwrap())
            .collect();
        assert_eq!(schemas, ["Clip.2", "Clip.2", "Transition.1", "Clip.2"]);
        let clip = &items[3];
        assert_eq!(clip["name"], "lighthouse");
        assert_eq!(clip["source_range"]["start_time"]["value"], 72.0);
        assert_eq!(clip["source_range"]["duration"]["value"], 30.0);
        assert_eq!(clip["source_range"]["duration"]["rate"], 24.0);
        assert_eq!(
            clip["media_references"]["DEFAULT_MEDIA"]["target_url"],
            "coast.mp4"
        );
        assert_eq!(items[2]["in_offset"]["value"], 12.0);
        let durations: f64 = items
            .iter()
            .filter(|i| i["OTIO_SCHEMA"] == "Clip.2")
            .map(|i| i["source_range"]["duration"]["value"].as_f64().unwrap())
            .sum();
        assert_eq!(durations, 102.0, "the clips tile the video");
    }

    /// Loads the document with the real `opentimelineio` package when it is installed (CI
    /// installs it; the integration test in tests/ requires it).
    #[test]
    fn opentimelineio_reads_it_when_installed() {
        let probe = std::process::Command::new("python3")
            .args(["-c", "import opentimelineio"])
            .status();
        if !probe.is_ok_and(|status| status.success()) {
            eprintln!("SKIPPED: python3 with opentimelineio is not installed here");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.otio");
        let document = otio_timeline("coast", 24, "coast.mp4", 102, &shots());
        std::fs::write(&path, serde_json::to_vec(&document).unwrap()).unwrap();
        let script = r#"
import sys, opentimelineio as otio
t = otio.adapters.read_from_file(sys.argv[1])
clips = list(t.find_clips())
print(len(clips), [c.name for c in clips], [c.duration().value for c in clips],
      len([i for i in t.tracks[0] if isinstance(i, otio.schema.Transition)]), t.duration().value)
"#;
        let output = std::process::Command::new("python3")
            .args(["-c", script, path.to_str().unwrap()])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            stdout.trim(),
            "3 ['valley', 'fog lifts', 'lighthouse'] [48.0, 24.0, 30.0] 1 102.0"
        );
    }
}
