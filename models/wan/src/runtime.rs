//! Wan behind the worker's `ModelRuntime` seam: loads a checkpoint once and keeps it resident, renders at the model's native 16 fps and size multiple, and hands back exactly the frames, rate and size the segment asked for.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::Device;
use reelfarm_media::frame::RgbFrame;
use reelfarm_models::Checkpoints;
use reelfarm_models::retime;
use reelfarm_models::runtime::{
    ClipDecoder, GenerateRequest, GeneratedClip, ModelError, ModelRuntime,
};

use crate::error::Result;
use crate::frames::{picture_tensor, placed_picture_tensor};
pub use crate::pipeline::WanOptions;
use crate::pipeline::{Pipeline, SIZE_MULTIPLE, Sampling};
use crate::vae::Tiling;

pub struct WanRuntime {
    id: String,
    pipeline: Pipeline,
    native_fps: u32,
}

impl WanRuntime {
    /// Loads every component of the checkpoint at `root` (the diffusers layout).
    pub fn load(id: impl Into<String>, root: &Path, options: &WanOptions) -> Result<Self> {
        Ok(Self {
            id: id.into(),
            pipeline: Pipeline::load(root, options)?,
            native_fps: options.native_fps,
        })
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    fn render(
        &self,
        request: &GenerateRequest,
        checkpoints: &mut Checkpoints,
        on_step: &mut dyn FnMut(u32, u32),
        cancel: &AtomicBool,
    ) -> Result<GeneratedClip> {
        // Render at the next size multiple up and crop the centre back.
        let up = |side: u32| side.div_ceil(SIZE_MULTIPLE) * SIZE_MULTIPLE;
        let (width, height) = (up(request.width), up(request.height));
        let (x, y) = ((width - request.width) / 2, (height - request.height) / 2);
        let frames = retime::native_frames(
            request.frames,
            request.fps,
            self.native_fps,
            self.pipeline.vae.temporal_stride() as u32,
        );
        let first_frame = match &request.first_frame {
            // A handoff frame of this sequence goes back in 1:1 where it came from.
            Some(picture) if (picture.width, picture.height) == (request.width, request.height) => {
                Some(placed_picture_tensor(
                    picture,
                    width,
                    height,
                    x,
                    y,
                    &Device::Cpu,
                )?)
            }
            Some(picture) => Some(picture_tensor(picture, width, height, &Device::Cpu)?),
            None => None,
        };
        let sampling = Sampling {
            prompt: request.prompt.clone(),
            negative: request.negative.clone(),
            width,
            height,
            frames,
            steps: request.steps,
            guidance: request.guidance,
            noise: None,
            seed: request.seed,
            first_frame,
            tiling: request.low_memory.then(Tiling::default),
        };
        let latents = self
            .pipeline
            .sample_checkpointed(&sampling, checkpoints, on_step, cancel)?;
        let crop = (
            x as usize,
            y as usize,
            request.width as usize,
            request.height as usize,
        );
        let frames =
            self.pipeline
                .decode_frames(&latents, sampling.tiling.as_ref(), crop, cancel)?;
        let decoder = RenderedFrames {
            frames,
            fps: request.fps,
            native_fps: self.native_fps,
        };
        Ok(GeneratedClip::new(
            request.width,
            request.height,
            request.frames,
            Box::new(decoder),
        ))
    }
}

impl ModelRuntime for WanRuntime {
    fn id(&self) -> &str {
        &self.id
    }

    fn generate_with_checkpoints(
        &self,
        request: &GenerateRequest,
        checkpoints: &mut Checkpoints,
        on_step: &mut dyn FnMut(u32, u32),
        cancel: &AtomicBool,
    ) -> Result<GeneratedClip, ModelError> {
        request.validate()?;
        Ok(self.render(request, checkpoints, on_step, cancel)?)
    }
}

/// The decoded clip at the native rate, 8-bit; output frame j shows the native frame nearest
/// in time.
struct RenderedFrames {
    frames: Vec<RgbFrame>,
    fps: u32,
    native_fps: u32,
}

impl ClipDecoder for RenderedFrames {
    fn decode_frame(&self, index: u32) -> Result<RgbFrame, ModelError> {
        let native = retime::native_index(index, self.fps, self.native_fps) as usize;
        self.frames.get(native).cloned().ok_or_else(|| {
            ModelError::Internal(format!(
                "native frame {native} of {} rendered",
                self.frames.len()
            ))
        })
    }

    fn resident_bytes(&self) -> u64 {
        self.frames
            .iter()
            .map(|frame| frame.data.len() as u64)
            .sum()
    }
}
