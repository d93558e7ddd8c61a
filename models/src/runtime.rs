//! The seam between the worker and whatever generates pixels: one request type, one error type and one trait, so a model can be swapped without touching scheduling, encoding or stitching.

use std::sync::atomic::AtomicBool;

use reelfarm_media::frame::RgbFrame;

/// Everything a model needs to render one segment.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateRequest {
    /// Already includes any global style text.
    pub prompt: String,
    /// `""` when there is none.
    pub negative: String,
    /// Output frame size; both even.
    pub width: u32,
    pub height: u32,
    /// Output frame rate, 8..=60.
    pub fps: u32,
    /// Output frames to produce, at least 1 (4n+1 fits the latent grid exactly, any count works).
    pub frames: u32,
    /// Denoising steps (e.g. 8 for a draft, 24 for a final render).
    pub steps: u32,
    /// Classifier-free guidance scale; 1.0 turns guidance off (and halves the work).
    pub guidance: f32,
    pub seed: u64,
    /// The clip must start from this picture (the previous segment's last frame or a user
    /// reference); any size, it is resized to cover the output frame.
    pub first_frame: Option<RgbFrame>,
    /// The last rung of the out-of-memory ladder: render in the model's lower-memory mode
    /// (Wan: the tiled VAE decode); models without one ignore it.
    pub low_memory: bool,
}

impl Default for GenerateRequest {
    /// A 5 s 480p draft, the worker's most common job.
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative: String::new(),
            width: 848,
            height: 480,
            fps: 24,
            frames: 121,
            steps: 8,
            guidance: 2.0,
            seed: 0,
            first_frame: None,
            low_memory: false,
        }
    }
}

pub const MIN_SIDE: u32 = 16;
pub const MAX_SIDE: u32 = 8192;
pub const MAX_FRAMES: u32 = 100_000;
pub const MAX_STEPS: u32 = 1000;
pub const MAX_GUIDANCE: f32 = 100.0;

impl GenerateRequest {
    /// Checks the limits every model shares, so each runtime only checks its own.
    pub fn validate(&self) -> Result<(), ModelError> {
        let invalid = |message: String| Err(ModelError::InvalidRequest(message));
        for (name, side) in [("width", self.width), ("height", self.height)] {
            if !(MIN_SIDE..=MAX_SIDE).contains(&side) || side % 2 != 0 {
                return invalid(format!(
                    "{name} {side} must be even and within {MIN_SIDE}..={MAX_SIDE}"
                ));
            }
        }
        if !(8..=60).contains(&self.fps) {
            return invalid(format!("fps {} must be within 8..=60", self.fps));
        }
        if !(1..=MAX_FRAMES).contains(&self.frames) {
            return invalid(format!(
                "frames {} must be within 1..={MAX_FRAMES}",
                self.frames
            ));
        }
        if !(1..=MAX_STEPS).contains(&self.steps) {
            return invalid(format!(
                "steps {} must be within 1..={MAX_STEPS}",
                self.steps
            ));
        }
        if !self.guidance.is_finite() || !(0.0..=MAX_GUIDANCE).contains(&self.guidance) {
            return invalid(format!(
                "guidance {} must be within 0..={MAX_GUIDANCE}",
                self.guidance
            ));
        }
        if let Some(frame) = &self.first_frame {
            let expected = frame.width as usize * frame.height as usize * 3;
            if frame.width == 0 || frame.height == 0 || frame.data.len() != expected {
                return invalid(format!(
                    "first frame {}x{} carries {} bytes, expected {expected}",
                    frame.width,
                    frame.height,
                    frame.data.len()
                ));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error("cancelled")]
    Cancelled,
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    #[error("invalid weights: {0}")]
    InvalidWeights(String),
    #[error("internal model error: {0}")]
    Internal(String),
}

#[cfg(feature = "candle")]
impl From<candle_core::Error> for ModelError {
    fn from(error: candle_core::Error) -> Self {
        ModelError::Internal(format!("tensor operation failed: {error}"))
    }
}

pub trait ModelRuntime: Send + Sync {
    fn id(&self) -> &str;

    /// Renders a clip, saving its sampling state every `checkpoints.every` steps and starting
    /// from `checkpoints.resume` when it fits (a state that does not is ignored: rendering
    /// from noise is always correct, only slower). `on_step(done, total)` follows every
    /// denoising step, and `cancel` is checked before every step (then the result is
    /// `ModelError::Cancelled`).
    fn generate_with_checkpoints(
        &self,
        request: &GenerateRequest,
        checkpoints: &mut crate::checkpoint::Checkpoints,
        on_step: &mut dyn FnMut(u32, u32),
        cancel: &AtomicBool,
    ) -> Result<GeneratedClip, ModelError>;

    /// `generate_with_checkpoints` from noise, saving nothing.
    fn generate(
        &self,
        request: &GenerateRequest,
        on_step: &mut dyn FnMut(u32, u32),
        cancel: &AtomicBool,
    ) -> Result<GeneratedClip, ModelError> {
        let mut save = |_: &crate::checkpoint::SamplingState| Ok(());
        let mut off = crate::checkpoint::Checkpoints::off(&mut save);
        self.generate_with_checkpoints(request, &mut off, on_step, cancel)
    }
}

/// Turns a model's compact clip representation into full-size frames, one at a time.
pub trait ClipDecoder: Send + Sync {
    /// `index` is always below the clip's length (GeneratedClip checks it).
    fn decode_frame(&self, index: u32) -> Result<RgbFrame, ModelError>;
    /// Bytes the compact representation keeps resident.
    fn resident_bytes(&self) -> u64;
}

/// Generated video kept compact (latent or low-res); full-size frames are produced one at a
/// time so a 1080p 20 s clip never sits in memory at full size.
pub struct GeneratedClip {
    width: u32,
    height: u32,
    frames: u32,
    decoder: Box<dyn ClipDecoder>,
}

impl GeneratedClip {
    pub fn new(width: u32, height: u32, frames: u32, decoder: Box<dyn ClipDecoder>) -> Self {
        Self {
            width,
            height,
            frames,
            decoder,
        }
    }

    pub fn len(&self) -> u32 {
        self.frames
    }

    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    pub fn resident_bytes(&self) -> u64 {
        self.decoder.resident_bytes()
    }

    /// Full-size frame `index`.
    ///
    /// Panics when `index >= len()` (like slice indexing) or when the decoder hits an internal
    /// tensor error; use `try_frame` where either must be handled.
    pub fn frame(&self, index: u32) -> RgbFrame {
        match self.try_frame(index) {
            Ok(frame) => frame,
            Err(error) => panic!("GeneratedClip::frame({index}): {error}"),
        }
    }

    pub fn try_frame(&self, index: u32) -> Result<RgbFrame, ModelError> {
        if index >= self.frames {
            return Err(ModelError::InvalidRequest(format!(
                "frame {index} is outside a clip of {} frames",
                self.frames
            )));
        }
        self.decoder.decode_frame(index)
    }

    /// The picture the next segment should start from.
    pub fn last_frame(&self) -> Option<RgbFrame> {
        self.frames.checked_sub(1).map(|index| self.frame(index))
    }
}

impl std::fmt::Debug for GeneratedClip {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("GeneratedClip")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("frames", &self.frames)
            .field("resident_bytes", &self.decoder.resident_bytes())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct SolidDecoder;

    impl ClipDecoder for SolidDecoder {
        fn decode_frame(&self, index: u32) -> Result<RgbFrame, ModelError> {
            Ok(RgbFrame::filled(4, 2, [index as u8, 0, 0]))
        }
        fn resident_bytes(&self) -> u64 {
            0
        }
    }

    #[test]
    fn clip_bounds_are_checked() {
        let clip = GeneratedClip::new(4, 2, 3, Box::new(SolidDecoder));
        assert_eq!(clip.len(), 3);
        assert_eq!(clip.frame(2).pixel(0, 0), [2, 0, 0]);
        assert_eq!(
            clip.last_frame().map(|frame| frame.pixel(1, 1)),
            Some([2, 0, 0])
        );
        assert!(matches!(
            clip.try_frame(3),
            Err(ModelError::InvalidRequest(_))
        ));
    }

    #[test]
    fn validation_rejects_bad_requests() {
        assert_eq!(GenerateRequest::default().validate(), Ok(()));
        let odd = GenerateRequest {
            width: 849,
            ..Default::default()
        };
        assert!(
            matches!(odd.validate(), Err(ModelError::InvalidRequest(m)) if m.contains("width"))
        );
        let no_frames = GenerateRequest {
            frames: 0,
            ..Default::default()
        };
        assert!(no_frames.validate().is_err());
        let nan = GenerateRequest {
            guidance: f32::NAN,
            ..Default::default()
        };
        assert!(nan.validate().is_err());
        let broken = RgbFrame {
            width: 4,
            height: 4,
            data: vec![0; 5],
        };
        let bad_frame = GenerateRequest {
            first_frame: Some(broken),
            ..Default::default()
        };
        assert!(bad_frame.validate().is_err());
        assert_eq!(ModelError::Cancelled.to_string(), "cancelled");
    }
}
