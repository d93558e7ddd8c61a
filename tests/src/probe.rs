//! An independent reader for the videos reelfarm writes: ffprobe (from Debian's ffmpeg).
//! Shared by the integration tests and the CLI's own binary tests.

use std::path::Path;
use std::process::Command;

#[derive(Debug, Clone, PartialEq)]
pub struct VideoProbe {
    pub codec: String,
    pub width: u32,
    pub height: u32,
    /// `r_frame_rate`, e.g. "24/1".
    pub frame_rate: String,
    /// Frames actually decoded (`-count_frames`), not the container's claim.
    pub frames: u64,
    pub duration_seconds: f64,
}

/// Panics with an install hint when ffprobe is missing: a test that cannot check the video
/// must fail, not pass.
pub fn probe(path: &Path) -> VideoProbe {
    let output = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
        ])
        .arg("stream=codec_name,width,height,r_frame_rate,nb_read_frames:format=duration")
        .args(["-of", "default=noprint_wrappers=1"])
        .arg(path)
        .output()
        .unwrap_or_else(|error| {
            panic!("ffprobe is needed to check videos (apt-get install -y ffmpeg): {error}")
        });
    assert!(
        output.status.success(),
        "ffprobe rejected {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("ffprobe printed no {name} for {}:\n{text}", path.display()))
            .to_string()
    };
    VideoProbe {
        codec: field("codec_name"),
        width: field("width").parse().expect("width"),
        height: field("height").parse().expect("height"),
        frame_rate: field("r_frame_rate"),
        frames: field("nb_read_frames").parse().expect("nb_read_frames"),
        duration_seconds: field("duration").parse().expect("duration"),
    }
}

/// The top-level boxes of an MP4 file, in order (`ftyp`, `moov`, ...): a few lines of its
/// own, so the check does not lean on reelfarm's demuxer.
pub fn top_level_boxes(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut boxes = Vec::new();
    let mut at = 0usize;
    while at + 8 <= bytes.len() {
        let size32 = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let size = match size32 {
            1 => u64::from_be_bytes(bytes[at + 8..at + 16].try_into().expect("8 bytes")) as usize,
            0 => bytes.len() - at,
            size => size as usize,
        };
        boxes.push(String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned());
        assert!(
            size >= 8,
            "box of size {size} at byte {at} of {}",
            path.display()
        );
        at += size;
    }
    boxes
}
