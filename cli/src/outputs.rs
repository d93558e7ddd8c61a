//! The files a finished sequence delivers beside its video (`out.mp4` → `out.report.json`,
//! `out.otio`, `out.contact.png`), named once for `render` and `download`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use reelfarm_common::{keys, pb};

/// One delivered file: what it is, where its object lives, where it goes.
pub struct Delivery {
    pub what: &'static str,
    pub kind: pb::OutputKind,
    pub key: String,
    pub path: PathBuf,
}

/// `out.mp4` → `out.report.json`, `out.otio`, `out.contact.png` (`with_extension` keeps
/// any dots earlier in the name).
pub fn sibling(video: &Path, suffix: &str) -> PathBuf {
    video.with_extension(suffix)
}

/// Everything a finished sequence delivers, the video last so its presence means the rest
/// is there.
pub fn deliveries(sequence_id: &str, video: &Path) -> Vec<Delivery> {
    vec![
        Delivery {
            what: "report",
            kind: pb::OutputKind::Report,
            key: keys::final_report(sequence_id),
            path: sibling(video, "report.json"),
        },
        Delivery {
            what: "timeline",
            kind: pb::OutputKind::Timeline,
            key: keys::final_timeline(sequence_id),
            path: sibling(video, "otio"),
        },
        Delivery {
            what: "contact sheet",
            kind: pb::OutputKind::ContactSheet,
            key: keys::final_contact_sheet(sequence_id),
            path: sibling(video, "contact.png"),
        },
        Delivery {
            what: "video",
            kind: pb::OutputKind::Video,
            key: keys::final_video(sequence_id),
            path: video.to_path_buf(),
        },
    ]
}

/// The stored timeline points at the video by its object name; a delivered one points at
/// the delivered video's file name, so an editor opening `out.otio` finds `out.mp4` beside it.
pub fn retarget_timeline(otio: &[u8], video: &Path) -> Result<Vec<u8>> {
    let mut document: serde_json::Value =
        serde_json::from_slice(otio).context("reading the stored timeline")?;
    let name = video
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    fn walk(value: &mut serde_json::Value, name: &str) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    if key == "target_url" {
                        *child = serde_json::Value::String(name.to_string());
                    } else {
                        walk(child, name);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|item| walk(item, name)),
            _ => {}
        }
    }
    walk(&mut document, &name);
    Ok(serde_json::to_vec_pretty(&document)?)
}

/// Writes `bytes` to `to` through `to.partial`, so a reader never sees half a file.
pub fn write_atomically(to: &Path, bytes: &[u8]) -> Result<()> {
    let mut partial = to.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    std::fs::write(&partial, bytes).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, to).with_context(|| format!("moving {} into place", to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siblings_sit_beside_the_video() {
        let names: Vec<PathBuf> = deliveries("abc", Path::new("renders/out.v2.mp4"))
            .into_iter()
            .map(|d| d.path)
            .collect();
        assert_eq!(
            names,
            [
                "renders/out.v2.report.json",
                "renders/out.v2.otio",
                "renders/out.v2.contact.png",
                "renders/out.v2.mp4"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn a_delivered_timeline_points_at_the_delivered_video() {
        let stored = br#"{"tracks": {"children": [{"children": [{"media_references": {"DEFAULT_MEDIA": {"target_url": "final.mp4"}}}]}]}}"#;
        let delivered = retarget_timeline(stored, Path::new("/tmp/coast.mp4")).unwrap();
        let text = String::from_utf8(delivered).unwrap();
        assert!(
            text.contains("\"coast.mp4\"") && !text.contains("final.mp4"),
            "{text}"
        );
    }
}
