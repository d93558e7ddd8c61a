//! Frames and the files they travel in: RGB frames, H.264 in MP4 (OpenH264 and our own
//! muxer and demuxer) and PNG stills. The bottom of the media side of reelfarm: it uses no
//! other reelfarm crate, so models, the stitch stage and the worker can all build on it.

pub mod frame;
pub mod video;

pub use frame::RgbFrame;
