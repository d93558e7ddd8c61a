//! The stitch stage: colour science (Lab, CIEDE2000, Reinhard/MKL/histogram transfers),
//! grading every scene to one look, seam metrics, the contact sheet, the OpenTimelineIO
//! timeline and the pure `stitch()` that joins segment videos into one. Bytes in, bytes out:
//! no store, no network, no clock beyond timing its own phases. Uses `media` for frames and
//! codecs and `common` for the spec's colour-match names; never the worker or the farm.

pub mod color;
pub mod color_math;
pub mod contact_sheet;
pub mod grading;
mod pipeline;
pub mod seams;
pub mod sidecar;
pub mod timeline;

pub use pipeline::{
    AlternateTake, Join, Progress, SequenceStitch, ShotCost, StitchError, StitchInput,
    StitchOutputs, StitchReport, Stitched, TakeReport, Unwatched, VideoSource, dissolve, stitch,
    stitch_sequence, stitch_with_takes, timeline_of,
};
pub use sidecar::Sidecar;
