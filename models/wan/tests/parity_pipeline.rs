//! The whole sampling pipeline against diffusers' `WanPipeline` on the tiny random checkpoint (prompt to frames in two UniPC steps with guidance), and first-frame conditioning: the first output frame is the VAE's own rendering of the conditioning picture.

mod common;

use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use reelfarm_media::frame::RgbFrame;
use reelfarm_wan::frames::picture_tensor;
use reelfarm_wan::pipeline::{Pipeline, Sampling, WanOptions};

fn tiny(text_len: usize) -> Pipeline {
    let options = WanOptions {
        device: Device::Cpu,
        dtype: DType::F32,
        text_encoder_on_cpu: false,
        text_len,
        native_fps: 16,
    };
    Pipeline::load(&common::tiny_checkpoint(), &options).unwrap()
}

fn sampling(spec: &serde_json::Value) -> Sampling {
    Sampling {
        prompt: spec["prompt"].as_str().unwrap().into(),
        negative: spec["negative_prompt"].as_str().unwrap().into(),
        width: spec["width"].as_u64().unwrap() as u32,
        height: spec["height"].as_u64().unwrap() as u32,
        frames: spec["num_frames"].as_u64().unwrap() as u32,
        steps: spec["num_inference_steps"].as_u64().unwrap() as u32,
        guidance: spec["guidance_scale"].as_f64().unwrap() as f32,
        noise: None,
        seed: 0,
        first_frame: None,
        tiling: None,
    }
}

#[test]
fn two_guided_steps_from_noise_to_frames_match_the_reference() {
    let spec = common::load_json("pipeline");
    let io = common::load("pipeline");
    let pipeline = tiny(spec["max_sequence_length"].as_u64().unwrap() as usize);
    let embeds = pipeline
        .prompt_embeds(&[
            spec["prompt"].as_str().unwrap(),
            spec["negative_prompt"].as_str().unwrap(),
        ])
        .unwrap();
    common::assert_close(
        "prompt embeds",
        &embeds.narrow(0, 0, 1).unwrap(),
        &io["prompt_embeds"],
    );
    common::assert_close(
        "negative embeds",
        &embeds.narrow(0, 1, 1).unwrap(),
        &io["negative_prompt_embeds"],
    );
    // Again, from the cache, in the other order.
    let again = pipeline
        .prompt_embeds(&[
            spec["negative_prompt"].as_str().unwrap(),
            spec["prompt"].as_str().unwrap(),
        ])
        .unwrap();
    common::assert_close(
        "cached negative",
        &again.narrow(0, 0, 1).unwrap(),
        &io["negative_prompt_embeds"],
    );
    common::assert_close(
        "cached prompt",
        &again.narrow(0, 1, 1).unwrap(),
        &io["prompt_embeds"],
    );

    let sampling = Sampling {
        noise: Some(io["latents"].clone()),
        ..sampling(&spec)
    };
    let mut steps = Vec::new();
    let latents = pipeline
        .sample(
            &sampling,
            &mut |done, total| steps.push((done, total)),
            &AtomicBool::new(false),
        )
        .unwrap();
    assert_eq!(steps, [(1, 2), (2, 2)]);
    common::assert_close(
        "latents after the last step",
        &latents,
        &io["latents_step_1"],
    );
    let frames = pipeline.decode(&latents, None).unwrap();
    common::assert_close("frames", &frames, &io["frames"].squeeze(0).unwrap());
}

fn gradient(width: u32, height: u32) -> RgbFrame {
    let mut data = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        for x in 0..width {
            data.extend_from_slice(&[(x * 255 / width) as u8, (y * 255 / height) as u8, 96]);
        }
    }
    RgbFrame::new(width, height, data)
}

#[test]
fn a_conditioned_clip_starts_on_the_vae_rendering_of_its_picture() {
    let spec = common::load_json("pipeline");
    let pipeline = tiny(spec["max_sequence_length"].as_u64().unwrap() as usize);
    let plain = sampling(&spec);
    let picture =
        picture_tensor(&gradient(48, 32), plain.width, plain.height, &Device::Cpu).unwrap();
    // What the VAE makes of the picture alone: the best any latent can give back.
    let encoded = pipeline.vae.encode(&picture).unwrap();
    let round_trip = pipeline
        .decode(&pipeline.vae.normalize(&encoded).unwrap(), None)
        .unwrap();

    let conditioned = Sampling {
        first_frame: Some(picture.clone()),
        ..plain.clone()
    };
    let cancel = AtomicBool::new(false);
    let difference = |a: &Tensor, b: &Tensor| {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let frames = pipeline
        .generate(&conditioned, &mut |_, _| {}, &cancel)
        .unwrap();
    let first = frames.narrow(0, 0, 1).unwrap();
    common::assert_close("first conditioned frame", &first, &round_trip);

    // The hold is in the loop, not only at the end: every step's transformer input has latent
    // frame 0 at (1 − σᵢ)·z + σᵢ·n₀, the level of the other frames.
    let noise =
        reelfarm_wan::noise::gaussian(5, &pipeline.latent_shape(&plain).unwrap(), &Device::Cpu)
            .unwrap();
    let held = Sampling {
        noise: Some(noise.clone()),
        ..conditioned.clone()
    };
    let z = pipeline.vae.normalize(&encoded).unwrap();
    let sigmas = reelfarm_wan::scheduler::new_sampler(&pipeline.scheduler, held.steps as usize)
        .unwrap()
        .sigmas()
        .to_vec();
    let mut observed = 0;
    pipeline
        .sample_observed(&held, &mut |_, _| {}, &cancel, &mut |step, latents| {
            let sigma = sigmas[step];
            let expected = ((&z * (1.0 - sigma)).unwrap()
                + (noise.narrow(2, 0, 1).unwrap() * sigma).unwrap())
            .unwrap();
            common::assert_close(
                &format!("frame 0 entering step {step}"),
                &latents.narrow(2, 0, 1).unwrap(),
                &expected,
            );
            // The other frames are the sampler's, not the picture's.
            assert!(difference(&latents.narrow(2, 1, 1).unwrap(), &expected) > 0.01);
            observed += 1;
        })
        .unwrap();
    assert_eq!(observed, held.steps);

    // Without the picture the clip starts elsewhere, and with it the rest still moves on.
    let free = pipeline.generate(&plain, &mut |_, _| {}, &cancel).unwrap();
    assert!(difference(&free.narrow(0, 0, 1).unwrap(), &round_trip) > 0.05);
    assert!(difference(&frames.narrow(0, 8, 1).unwrap(), &round_trip) > 0.05);
}

#[test]
fn a_set_cancel_flag_stops_before_the_first_step() {
    let spec = common::load_json("pipeline");
    let pipeline = tiny(16);
    let error = pipeline
        .sample(
            &sampling(&spec),
            &mut |_, _| panic!("no step may run"),
            &AtomicBool::new(true),
        )
        .unwrap_err();
    assert!(matches!(error, reelfarm_wan::WanError::Cancelled));
}

#[test]
fn the_prompt_cache_keeps_the_sixteen_most_recent() {
    let pipeline = tiny(16);
    let prompts: Vec<String> = (0..18).map(|i| format!("prompt number {i}")).collect();
    for prompt in &prompts {
        pipeline.prompt_embeds(&[prompt]).unwrap();
    }
    // 0 and 1 were evicted; using 2 again makes it the most recent, so the next new prompt
    // evicts 3, not 2.
    let again = pipeline.prompt_embeds(&[&prompts[2]]).unwrap();
    pipeline.prompt_embeds(&["one more"]).unwrap();
    let cached = pipeline.cached_prompts();
    assert_eq!(cached.len(), 16);
    assert_eq!(cached.last().map(String::as_str), Some("one more"));
    assert!(cached.contains(&prompts[2]) && cached.contains(&prompts[4]));
    assert!(
        !cached.contains(&prompts[0])
            && !cached.contains(&prompts[1])
            && !cached.contains(&prompts[3])
    );
    let fresh = pipeline.text.prompt_embeds(&[&prompts[2]]).unwrap();
    common::assert_close("cached row", &again, &fresh);
}
