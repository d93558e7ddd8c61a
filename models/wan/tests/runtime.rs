//! Wan behind the worker's seam on the tiny checkpoint: exact frame counts at the sequence's rate from 16 fps renders, any even size, a continuing window that starts on its picture, and errors that say what to fix.

mod common;

use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device};
use reelfarm_models::runtime::{GenerateRequest, ModelError, ModelRuntime};
use reelfarm_wan::frames::{picture_tensor, rgb_frame};
use reelfarm_wan::runtime::{WanOptions, WanRuntime};

fn runtime() -> WanRuntime {
    let options = WanOptions {
        device: Device::Cpu,
        dtype: DType::F32,
        text_encoder_on_cpu: true,
        text_len: 16,
        native_fps: 16,
    };
    WanRuntime::load("wan-tiny", &common::tiny_checkpoint(), &options).unwrap()
}

fn request(frames: u32, fps: u32) -> GenerateRequest {
    GenerateRequest {
        prompt: "a lighthouse at dusk".into(),
        width: 32,
        height: 32,
        fps,
        frames,
        steps: 1,
        guidance: 5.0,
        ..GenerateRequest::default()
    }
}

#[test]
fn ten_seconds_at_24_fps_are_240_frames_from_a_16_fps_render() {
    let model = runtime();
    let mut steps = 0;
    let clip = model
        .generate(
            &request(240, 24),
            &mut |_, _| steps += 1,
            &AtomicBool::new(false),
        )
        .unwrap();
    assert_eq!(
        (clip.len(), clip.width(), clip.height(), steps),
        (240, 32, 32, 1)
    );
    // 161 native frames stay resident; output frames 1 and 2 both show native frame 1.
    assert_eq!(clip.resident_bytes(), 161 * 32 * 32 * 3);
    assert_eq!(clip.frame(1), clip.frame(2));
    assert_ne!(clip.frame(0), clip.frame(1));
}

#[test]
fn sizes_off_the_16_pixel_grid_render_larger_and_crop() {
    let model = runtime();
    let clip = model
        .generate(
            &GenerateRequest {
                width: 40,
                height: 26,
                ..request(5, 16)
            },
            &mut |_, _| {},
            &AtomicBool::new(false),
        )
        .unwrap();
    let frame = clip.frame(4);
    assert_eq!((frame.width, frame.height, clip.len()), (40, 26, 5));
}

#[test]
fn an_off_grid_size_is_the_centre_of_the_render_one_size_up() {
    let model = runtime();
    let cancel = AtomicBool::new(false);
    let whole = model
        .generate(
            &GenerateRequest {
                width: 48,
                height: 32,
                ..request(5, 16)
            },
            &mut |_, _| {},
            &cancel,
        )
        .unwrap();
    let cropped = model
        .generate(
            &GenerateRequest {
                width: 40,
                height: 26,
                ..request(5, 16)
            },
            &mut |_, _| {},
            &cancel,
        )
        .unwrap();
    for index in [0, 4] {
        let (big, small) = (whole.frame(index), cropped.frame(index));
        for y in 0..26 {
            for x in 0..40 {
                assert_eq!(
                    small.pixel(x, y),
                    big.pixel(x + 4, y + 3),
                    "frame {index} at {x},{y}"
                );
            }
        }
    }
}

#[test]
fn a_continuing_window_starts_on_its_picture() {
    let model = runtime();
    let first = model
        .generate(&request(9, 16), &mut |_, _| {}, &AtomicBool::new(false))
        .unwrap();
    let handoff = first.last_frame().unwrap();
    let next = GenerateRequest {
        first_frame: Some(handoff.clone()),
        seed: 9,
        ..request(9, 16)
    };
    let continued = model
        .generate(&next, &mut |_, _| {}, &AtomicBool::new(false))
        .unwrap();
    // Frame 0 is the VAE's rendering of the handoff picture (exactly what the pipeline test
    // holds to the reference's tolerance), within one 8-bit level.
    let pipeline = model.pipeline();
    let picture = picture_tensor(&handoff, 32, 32, &Device::Cpu).unwrap();
    let latent = pipeline
        .vae
        .normalize(&pipeline.vae.encode(&picture).unwrap())
        .unwrap();
    let round_trip = rgb_frame(&pipeline.decode(&latent, None).unwrap(), 0).unwrap();
    let frame = continued.frame(0);
    let worst = frame
        .data
        .iter()
        .zip(&round_trip.data)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(
        worst <= 1,
        "frame 0 is {worst} levels off the VAE's rendering of its picture"
    );
    assert_ne!(continued.frame(8), frame);
}

#[test]
fn requests_the_seam_refuses_name_the_field() {
    let model = runtime();
    let error = model
        .generate(
            &GenerateRequest {
                fps: 7,
                ..request(5, 16)
            },
            &mut |_, _| {},
            &AtomicBool::new(false),
        )
        .err()
        .unwrap();
    assert!(
        matches!(&error, ModelError::InvalidRequest(m) if m.contains("fps 7")),
        "{error}"
    );
}

#[test]
fn a_missing_checkpoint_names_the_layout_it_expected() {
    let dir = tempfile::tempdir().unwrap();
    let error = WanRuntime::load("wan", dir.path(), &WanOptions::best_available())
        .err()
        .unwrap();
    let message = ModelError::from(error).to_string();
    assert!(message.contains("model_index.json: missing"), "{message}");
    assert!(message.contains("Wan2.1-T2V-1.3B-Diffusers"), "{message}");
}

/// A window killed after a checkpoint and resumed from it (latents and UniPC's multistep
/// history through the stored form) ends in the same frames as one never stopped, continuing
/// or not, and runs only the steps after the checkpoint.
#[test]
fn a_resumed_window_ends_exactly_like_an_uninterrupted_one() {
    use std::sync::atomic::Ordering;

    use reelfarm_models::{Checkpoints, SamplingState};

    let model = runtime();
    let handoff = model
        .generate(&request(9, 16), &mut |_, _| {}, &AtomicBool::new(false))
        .unwrap()
        .last_frame()
        .unwrap();
    for first_frame in [None, Some(handoff)] {
        let window = GenerateRequest {
            steps: 5,
            first_frame,
            ..request(9, 16)
        };
        let frames = |clip: &reelfarm_models::GeneratedClip| {
            (0..clip.len())
                .map(|index| clip.frame(index))
                .collect::<Vec<_>>()
        };
        let whole = frames(
            &model
                .generate(&window, &mut |_, _| {}, &AtomicBool::new(false))
                .unwrap(),
        );
        let fingerprint = [5; 32];
        let mut stored = Vec::new();
        let mut save = |state: &SamplingState| {
            stored.push(state.encode(&fingerprint));
            Ok(())
        };
        let cancel = AtomicBool::new(false);
        let mut checkpoints = Checkpoints {
            every: 3,
            ..Checkpoints::off(&mut save)
        };
        let killed = model.generate_with_checkpoints(
            &window,
            &mut checkpoints,
            &mut |done, _| cancel.store(done == 4, Ordering::Relaxed),
            &cancel,
        );
        assert_eq!(killed.unwrap_err(), ModelError::Cancelled);
        assert_eq!(stored.len(), 1, "one checkpoint, after step 3");
        let state = SamplingState::decode(&stored[0], &fingerprint).unwrap();
        assert_eq!((state.step, state.steps), (3, 5));
        // A state the sampler cannot take renders from noise, never fails the window.
        let mut broken = state.clone();
        broken.counters.truncate(1);
        let mut nothing = |_: &SamplingState| Ok(());
        let mut refused = Checkpoints {
            resume: Some(broken),
            ..Checkpoints::off(&mut nothing)
        };
        let clip = model
            .generate_with_checkpoints(
                &window,
                &mut refused,
                &mut |_, _| {},
                &AtomicBool::new(false),
            )
            .unwrap();
        assert_eq!(refused.resumed_from, 0);
        assert!(frames(&clip) == whole, "from noise, the same window");
        assert!(
            state.tensors.len() > 1,
            "UniPC's history travels with the latents"
        );
        let mut nothing = |_: &SamplingState| Ok(());
        let mut resumed = Checkpoints {
            resume: Some(state),
            ..Checkpoints::off(&mut nothing)
        };
        let mut steps_run = Vec::new();
        let clip = model
            .generate_with_checkpoints(
                &window,
                &mut resumed,
                &mut |done, _| steps_run.push(done),
                &AtomicBool::new(false),
            )
            .unwrap();
        assert_eq!(resumed.resumed_from, 3);
        assert_eq!(steps_run, vec![3, 4, 5]);
        assert!(frames(&clip) == whole, "resumed frames differ");
    }
}
