//! Object-store key layout: deterministic per sequence and segment, so a retried task
//! overwrites its own earlier attempt instead of leaving a second copy.
//!
//! ```text
//! sequences/<sequence>/segments/s<shot:03>-<segment:02>.mp4       segment video
//! sequences/<sequence>/segments/s<shot:03>-<segment:02>.json      sidecar (frames, timings, Lab stats)
//! sequences/<sequence>/segments/s<shot:03>-<segment:02>.handoff.png  frame a continuation starts from
//! sequences/<sequence>/refs/shot-<shot:03>.png                    user reference image
//! sequences/<sequence>/final.mp4                                  stitched video
//! sequences/<sequence>/report.json                                stitch report (seam metrics)
//! sequences/<sequence>/final.otio                                 OpenTimelineIO timeline
//! sequences/<sequence>/contact.png                                contact sheet
//! ```

pub fn segment_prefix(sequence_id: &str, shot_index: u32, segment_index: u32) -> String {
    format!("sequences/{sequence_id}/segments/s{shot_index:03}-{segment_index:02}")
}

pub fn segment_video(prefix: &str) -> String {
    format!("{prefix}.mp4")
}

pub fn segment_sidecar(prefix: &str) -> String {
    format!("{prefix}.json")
}

pub fn segment_handoff_frame(prefix: &str) -> String {
    format!("{prefix}.handoff.png")
}

pub fn reference_image(sequence_id: &str, shot_index: u32) -> String {
    format!("sequences/{sequence_id}/refs/shot-{shot_index:03}.png")
}

pub fn final_video(sequence_id: &str) -> String {
    format!("sequences/{sequence_id}/final.mp4")
}

pub fn final_report(sequence_id: &str) -> String {
    format!("sequences/{sequence_id}/report.json")
}

pub fn final_timeline(sequence_id: &str) -> String {
    format!("sequences/{sequence_id}/final.otio")
}

pub fn final_contact_sheet(sequence_id: &str) -> String {
    format!("sequences/{sequence_id}/contact.png")
}
