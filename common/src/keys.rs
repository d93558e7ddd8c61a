//! Object-store key layout: deterministic per sequence, segment and attempt, so an attempt
//! that was fenced off can never overwrite the one that was accepted; the scheduler derives
//! every key and deletes a segment's superseded attempts once one is accepted.
//!
//! ```text
//! sequences/<sequence>/segments/s<shot:03>-<segment:02>[-t<take>].a<attempt>.mp4  segment video
//! sequences/<sequence>/segments/s<shot:03>-<segment:02>.a<attempt>.json      sidecar (frames, timings, Lab stats)
//! sequences/<sequence>/segments/s<shot:03>-<segment:02>.a<attempt>.handoff.png  frame a continuation starts from
//! sequences/<sequence>/segments/s<shot:03>-<segment:02>.checkpoint  sampling state saved mid-render
//! sequences/<sequence>/refs/shot-<shot:03>.png                    user reference image
//! sequences/<sequence>/final.mp4                                  stitched video
//! sequences/<sequence>/report.json                                stitch report (seam metrics)
//! sequences/<sequence>/final.otio                                 OpenTimelineIO timeline
//! sequences/<sequence>/contact.png                                contact sheet
//! cache/segments/<key>.json                                       segment cache entry
//! ```

/// `segment_id` is the planner's: `s<shot:03>-<segment:02>`, with `-t<take>` for an
/// alternate take.
pub fn segment_prefix(sequence_id: &str, segment_id: &str) -> String {
    format!("sequences/{sequence_id}/segments/{segment_id}")
}

/// Where one attempt of a segment writes: `<segment prefix>.a<attempt>`.
pub fn attempt_prefix(segment_prefix: &str, attempt: u32) -> String {
    format!("{segment_prefix}.a{attempt}")
}

/// Every object one attempt of a segment writes.
pub fn attempt_objects(attempt_prefix: &str) -> [String; 3] {
    [
        segment_video(attempt_prefix),
        segment_sidecar(attempt_prefix),
        segment_handoff_frame(attempt_prefix),
    ]
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

/// A segment's sampling checkpoint: one per segment, shared by its attempts (a new attempt
/// resumes from what a lost one saved), deleted once an attempt is accepted.
pub fn segment_checkpoint(segment_prefix: &str) -> String {
    format!("{segment_prefix}.checkpoint")
}

pub fn reference_image(sequence_id: &str, shot_index: u32) -> String {
    format!("sequences/{sequence_id}/refs/shot-{shot_index:03}.png")
}

/// The folder of uploads no submission has claimed yet (swept after a while).
pub const UPLOADS: &str = "uploads";

/// A reference image uploaded ahead of the submission that names it.
pub fn reference_upload(upload_id: &str) -> String {
    format!("{UPLOADS}/{upload_id}.png")
}

/// The folder of segment cache entries.
pub const SEGMENT_CACHE: &str = "cache/segments";

/// The cache entry of segment cache key `key` (a SHA-256 in hex).
pub fn segment_cache_entry(key: &str) -> String {
    format!("{SEGMENT_CACHE}/{key}.json")
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
