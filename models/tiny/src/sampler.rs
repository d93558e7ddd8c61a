//! Rectified-flow sampling: Euler steps from noise (t = 1) to data (t = 0) with classifier-free guidance, first-frame conditioning by replacement, progress reports and cancellation between steps.

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Tensor};

use super::denoiser::Denoiser;
use super::layout::{TokenGrid, map_elementwise};
use super::weights::GaussianRng;
use reelfarm_models::{Checkpoints, ModelError, SamplingState, StateTensor};

/// `steps + 1` flow times from 1 to 0. `shift` > 1 spends more steps at high noise, where the
/// layout of the picture is decided (the SD3 / Wan "shifted" schedule).
pub(crate) fn flow_times(steps: u32, shift: f32) -> Vec<f32> {
    (0..=steps)
        .map(|index| {
            let linear = 1.0 - index as f32 / steps.max(1) as f32;
            shift * linear / (1.0 + (shift - 1.0) * linear)
        })
        .collect()
}

/// Share of the starting noise's variance that every latent frame of a clip has in common.
pub(crate) const SHARED_NOISE: f32 = 0.6;

/// Starting noise of a latent clip, `dims` = (frames, ...), a pure function of `seed` (never
/// of thread count): each frame is √s·shared + √(1−s)·its own (s = `SHARED_NOISE`), standard
/// normal per element but alike across frames. The denoiser paints plates that hold still;
/// from independent noise per frame they differed frame to frame, which the motion search
/// read as camera motion in most still shots. Training noises its clips the same way.
pub(crate) fn clip_noise(seed: u64, dims: &[usize]) -> candle_core::Result<Tensor> {
    let frames = dims.first().copied().unwrap_or(1);
    let per_frame: usize = dims.iter().skip(1).product();
    let mut values = GaussianRng::new(seed).gaussians((frames + 1) * per_frame, 1.0);
    let (common, apart) = (SHARED_NOISE.sqrt(), (1.0 - SHARED_NOISE).sqrt());
    // Mixed in place, so a long 1080p clip's noise exists once (the shared frame is copied
    // out first and its slot dropped at the end).
    let shared = values[..per_frame].to_vec();
    for frame in values[per_frame..].chunks_exact_mut(per_frame.max(1)) {
        for (own, shared) in frame.iter_mut().zip(&shared) {
            *own = common * shared + apart * *own;
        }
    }
    values.drain(..per_frame);
    Tensor::from_vec(values, dims, &Device::Cpu)
}

/// Everything one sampling run needs, prepared by the model.
pub(crate) struct SamplingPlan<'a> {
    pub denoiser: &'a Denoiser,
    pub grid: &'a TokenGrid,
    /// `Denoiser::position_rows` of the grid.
    pub positions: Tensor,
    /// Pooled text vectors (1, text_dim).
    pub prompt: Tensor,
    pub negative: Tensor,
    pub guidance: f32,
    pub steps: u32,
    pub flow_shift: f32,
    /// (latent_frames, channels, height, width); also fixes the output shape.
    pub noise: Tensor,
    /// (channels, height, width) values and a (1, height, width) mask: where the mask is 1,
    /// latent frame `first_index` is pinned to this picture (`CameraRig::place_first_frame`).
    pub first_latent: Option<(Tensor, Tensor)>,
    /// The first latent frame the caller keeps (frames before it are a margin).
    pub first_index: usize,
}

impl SamplingPlan<'_> {
    /// Guidance 1 is the conditional prediction alone: skip the unconditional half of the work.
    fn guidance_enabled(&self) -> bool {
        (self.guidance - 1.0).abs() > 1e-6
    }

    fn clean(&self, latent: &Tensor, time: f32, text: &Tensor) -> candle_core::Result<Tensor> {
        self.denoiser.predict_clean(
            latent,
            &self.denoiser.condition(time, text)?,
            self.grid,
            &self.positions,
        )
    }

    /// One Euler step from `time` to `next_time` with classifier-free guidance.
    ///
    /// With v = (x_t − x0)/t, the guided velocity v_u + g·(v_c − v_u) is the velocity of the
    /// guided clean latent x0_u + g·(x0_c − x0_u), and x + (t' − t)·v = (t'/t)·x + (1 − t'/t)·x0.
    /// The two predictions run one after the other: each already keeps both cores busy.
    fn step(&self, latent: &Tensor, time: f32, next_time: f32) -> Result<Tensor, ModelError> {
        let keep = f64::from(next_time / time.max(1e-6));
        let conditional = self.clean(latent, time, &self.prompt)?;
        if !self.guidance_enabled() {
            return Ok(map_elementwise(&[latent, &conditional], |parts| {
                parts[0].affine(keep, 0.0)? + parts[1].affine(1.0 - keep, 0.0)?
            })?);
        }
        let unconditional = self.clean(latent, time, &self.negative)?;
        let guidance = f64::from(self.guidance);
        Ok(map_elementwise(
            &[latent, &conditional, &unconditional],
            |parts| {
                let guided = (&parts[2] + ((&parts[1] - &parts[2])? * guidance)?)?;
                parts[0].affine(keep, 0.0)? + guided.affine(1.0 - keep, 0.0)?
            },
        )?)
    }
}

/// Latent frame `index` := `frame` where `mask` (1, height, width) is 1, the rest unchanged.
fn replace_masked(
    latent: &Tensor,
    index: usize,
    frame: &Tensor,
    mask: &Tensor,
) -> candle_core::Result<Tensor> {
    let kept = latent.get(index)?.broadcast_mul(&mask.affine(-1.0, 1.0)?)?;
    replace_frame(latent, index, &(frame.broadcast_mul(mask)? + kept)?)
}

/// Latent frame `index` := `frame` (channels, height, width), the rest unchanged.
fn replace_frame(latent: &Tensor, index: usize, frame: &Tensor) -> candle_core::Result<Tensor> {
    let frames = latent.dim(0)?;
    let mut parts = Vec::with_capacity(3);
    if index > 0 {
        parts.push(latent.narrow(0, 0, index)?);
    }
    parts.push(frame.unsqueeze(0)?);
    if index + 1 < frames {
        parts.push(latent.narrow(0, index + 1, frames - index - 1)?);
    }
    Tensor::cat(&parts, 0)
}

/// Runs the Euler sampler on x_t = (1 − t)·x0 + t·noise, whose velocity is dx/dt = noise − x0.
/// `cancel` is read before every step; `on_step(done, total)` follows every step. The run
/// starts from `checkpoints.resume` when it fits, and saves the latent when one is due: a
/// step depends only on the latent, its index and the plan, so a resumed run ends the same.
pub(crate) fn sample(
    plan: &SamplingPlan,
    checkpoints: &mut Checkpoints,
    on_step: &mut dyn FnMut(u32, u32),
    cancel: &AtomicBool,
) -> Result<Tensor, ModelError> {
    let times = flow_times(plan.steps, plan.flow_shift);
    let first_noise = plan.noise.get(plan.first_index)?;
    let (mut latent, start) = match checkpoints.take_resume(plan.steps, plan.noise.dims()) {
        Some(mut state) => {
            let latent = state.tensors.swap_remove(0);
            (
                Tensor::from_vec(latent.values, latent.dims, &Device::Cpu)?,
                state.step,
            )
        }
        None => (plan.noise.clone(), 0),
    };
    if start > 0 {
        on_step(start, plan.steps);
    }
    for step in start..plan.steps {
        if cancel.load(Ordering::Relaxed) {
            return Err(ModelError::Cancelled);
        }
        let (time, next_time) = (times[step as usize], times[step as usize + 1]);
        if let Some((first, mask)) = &plan.first_latent {
            // Conditioning by replacement: frame 0 sits exactly on the noisy path of the
            // given picture, so the model only has to continue it.
            let noisy_first = (first.affine(f64::from(1.0 - time), 0.0)?
                + first_noise.affine(f64::from(time), 0.0)?)?;
            latent = replace_masked(&latent, plan.first_index, &noisy_first, mask)?;
        }
        latent = plan.step(&latent, time, next_time)?;
        if checkpoints.due(step + 1, plan.steps) {
            (checkpoints.save)(&SamplingState {
                step: step + 1,
                steps: plan.steps,
                tensors: vec![StateTensor {
                    dims: latent.dims().to_vec(),
                    values: latent.flatten_all()?.to_vec1::<f32>()?,
                }],
                // Euler carries nothing from one step to the next.
                counters: Vec::new(),
            })?;
        }
        on_step(step + 1, plan.steps);
    }
    if let Some((first, mask)) = &plan.first_latent {
        latent = replace_masked(&latent, plan.first_index, first, mask)?;
    }
    Ok(latent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_times_run_from_noise_to_data() {
        let times = flow_times(8, 3.0);
        assert_eq!(times.len(), 9);
        assert_eq!((times[0], times[8]), (1.0, 0.0));
        assert!(times.windows(2).all(|pair| pair[0] > pair[1]));
        // The shift spends more of the schedule at high noise than a uniform one.
        assert!(times[4] > 0.5);
        assert_eq!(flow_times(4, 1.0), vec![1.0, 0.75, 0.5, 0.25, 0.0]);
    }

    #[test]
    fn noise_depends_only_on_the_seed() -> candle_core::Result<()> {
        let dims = [3, 4, 2, 2];
        let first = clip_noise(9, &dims)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(
            first,
            clip_noise(9, &dims)?.flatten_all()?.to_vec1::<f32>()?
        );
        assert_ne!(
            first,
            clip_noise(10, &dims)?.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }

    /// The layout the shipped weights were trained with: the seed's first frame of draws is
    /// the shared part, the frames after it each frame's own.
    #[test]
    fn the_first_draws_are_shared_by_every_frame() -> candle_core::Result<()> {
        let dims = [3, 2, 2, 3];
        let per_frame = 12;
        let draws = GaussianRng::new(4).gaussians(4 * per_frame, 1.0);
        let noise = clip_noise(4, &dims)?.flatten_all()?.to_vec1::<f32>()?;
        let (common, apart) = (SHARED_NOISE.sqrt(), (1.0 - SHARED_NOISE).sqrt());
        for (index, value) in noise.iter().enumerate() {
            let expected = common * draws[index % per_frame] + apart * draws[per_frame + index];
            assert_eq!(*value, expected, "element {index}");
        }
        Ok(())
    }

    /// Unit variance per element, and frames correlated by the shared share.
    #[test]
    fn frames_share_part_of_their_noise() -> candle_core::Result<()> {
        let noise = clip_noise(3, &[4, 4, 50, 50])?;
        let frame = |index: usize| noise.get(index)?.flatten_all()?.to_vec1::<f32>();
        let (first, second) = (frame(0)?, frame(3)?);
        let count = first.len() as f32;
        let variance = first.iter().map(|value| value * value).sum::<f32>() / count;
        let covariance = first.iter().zip(&second).map(|(a, b)| a * b).sum::<f32>() / count;
        assert!((variance - 1.0).abs() < 0.05, "variance {variance}");
        assert!(
            (covariance - SHARED_NOISE).abs() < 0.05,
            "covariance {covariance}"
        );
        Ok(())
    }

    #[test]
    fn first_frame_replacement_keeps_the_rest() -> candle_core::Result<()> {
        let latent = Tensor::arange(0f32, 24.0, &Device::Cpu)?.reshape((3, 2, 2, 2))?;
        let frame = Tensor::full(-1f32, (2, 2, 2), &Device::Cpu)?;
        let replaced = replace_frame(&latent, 0, &frame)?;
        assert_eq!(
            replaced.get(0)?.flatten_all()?.to_vec1::<f32>()?,
            vec![-1.0; 8]
        );
        assert_eq!(
            replaced.narrow(0, 1, 2)?.flatten_all()?.to_vec1::<f32>()?,
            (8..24).map(|v| v as f32).collect::<Vec<_>>()
        );
        assert_eq!(
            replace_frame(&latent.narrow(0, 0, 1)?, 0, &frame)?.dims(),
            &[1, 2, 2, 2]
        );
        let mut mask = vec![1f32, 0.0, 0.0, 1.0];
        let masked = replace_masked(
            &latent,
            2,
            &frame,
            &Tensor::from_vec(std::mem::take(&mut mask), (1, 2, 2), &Device::Cpu)?,
        )?;
        assert_eq!(
            masked.get(2)?.flatten_all()?.to_vec1::<f32>()?,
            vec![-1.0, 17.0, 18.0, -1.0, -1.0, 21.0, 22.0, -1.0]
        );
        let middle = replace_frame(&latent, 1, &frame)?;
        assert_eq!(
            middle.get(1)?.flatten_all()?.to_vec1::<f32>()?,
            vec![-1.0; 8]
        );
        assert_eq!(
            middle.get(2)?.flatten_all()?.to_vec1::<f32>()?,
            (16..24).map(|v| v as f32).collect::<Vec<_>>()
        );
        Ok(())
    }
}
