//! Wan behind the worker's `ModelRuntime` seam: loads a checkpoint once and keeps it resident, renders at the model's native 16 fps and size multiple, and hands back exactly the frames, rate and size the segment asked for.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use reelfarm_media::frame::RgbFrame;
use reelfarm_models::retime;
use reelfarm_models::runtime::{
    ClipDecoder, GenerateRequest, GeneratedClip, ModelError, ModelRuntime,
};

use crate::error::Result;
use crate::frames::{picture_tensor, rgb_frame};
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
        on_step: &mut dyn FnMut(u32, u32),
        cancel: &AtomicBool,
    ) -> Result<GeneratedClip> {
        // Render at the next size multiple up and crop the centre back.
        let up = |side: u32| side.div_ceil(SIZE_MULTIPLE) * SIZE_MULTIPLE;
        let (width, height) = (up(request.width), up(request.height));
        let frames = retime::native_frames(
            request.frames,
            request.fps,
            self.native_fps,
            self.pipeline.vae.temporal_stride() as u32,
        );
        let first_frame = match &request.first_frame {
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
        let video = self.pipeline.generate(&sampling, on_step, cancel)?;
        let video = video
            .narrow(
                1,
                ((height - request.height) / 2) as usize,
                request.height as usize,
            )?
            .narrow(
                2,
                ((width - request.width) / 2) as usize,
                request.width as usize,
            )?
            .contiguous()?;
        let decoder = RenderedFrames {
            video,
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

    fn generate(
        &self,
        request: &GenerateRequest,
        on_step: &mut dyn FnMut(u32, u32),
        cancel: &AtomicBool,
    ) -> Result<GeneratedClip, ModelError> {
        request.validate()?;
        Ok(self.render(request, on_step, cancel)?)
    }
}

/// The decoded clip at the native rate; output frame j shows the native frame nearest in time.
struct RenderedFrames {
    /// `[native frames, H, W, 3]` f32 in [0, 1], host memory.
    video: Tensor,
    fps: u32,
    native_fps: u32,
}

impl ClipDecoder for RenderedFrames {
    fn decode_frame(&self, index: u32) -> Result<RgbFrame, ModelError> {
        let native = retime::native_index(index, self.fps, self.native_fps) as usize;
        Ok(rgb_frame(&self.video, native)?)
    }

    fn resident_bytes(&self) -> u64 {
        self.video.elem_count() as u64 * 4
    }
}
