//! End-to-end checks of reelfarm-tiny through the `ModelRuntime` trait, plus the `#[ignore]`d benchmarks that pin its speed and memory estimate on the dev machine.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use super::*;
use reelfarm_media::frame::RgbFrame;
use reelfarm_models::{GenerateRequest, GeneratedClip, SamplingState};

fn model() -> TinyModel {
    TinyModel::from_seed(42).expect("model")
}

fn small_request(prompt: &str, seed: u64) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.into(),
        width: 64,
        height: 48,
        frames: 9,
        steps: 3,
        seed,
        ..GenerateRequest::default()
    }
}

fn run(model: &TinyModel, request: &GenerateRequest) -> GeneratedClip {
    model
        .generate(request, &mut |_, _| {}, &AtomicBool::new(false))
        .expect("generate")
}

fn all_frames(clip: &GeneratedClip) -> Vec<RgbFrame> {
    (0..clip.len()).map(|index| clip.frame(index)).collect()
}

/// Mean colour of the rectangle `xs` × `ys` of a frame.
fn mean_colour(frame: &RgbFrame, xs: std::ops::Range<u32>, ys: std::ops::Range<u32>) -> [f64; 3] {
    let mut sums = [0f64; 3];
    for y in ys.clone() {
        for x in xs.clone() {
            let pixel = frame.pixel(x, y);
            for channel in 0..3 {
                sums[channel] += f64::from(pixel[channel]);
            }
        }
    }
    sums.map(|sum| sum / (xs.len() * ys.len()) as f64)
}

fn halves_picture(width: u32, height: u32, left: [u8; 3], right: [u8; 3]) -> RgbFrame {
    let mut data = Vec::with_capacity((width * height * 3) as usize);
    for _ in 0..height {
        for x in 0..width {
            data.extend_from_slice(if x < width / 2 { &left } else { &right });
        }
    }
    RgbFrame::new(width, height, data)
}

#[test]
fn same_request_same_frames_and_inputs_matter() {
    let model = model();
    let frames_of = |request: &GenerateRequest| all_frames(&run(&model, request));
    let base = small_request("a red fox running through snow", 1);
    let first = frames_of(&base);
    assert_eq!(first, frames_of(&base));
    assert_ne!(
        first,
        frames_of(&small_request("a red fox running through snow", 2))
    );
    assert_ne!(first, frames_of(&small_request("neon city at night", 1)));
    assert_ne!(
        first,
        frames_of(&GenerateRequest {
            guidance: 1.0,
            ..base.clone()
        })
    );
    assert_ne!(
        first,
        frames_of(&GenerateRequest {
            negative: "fog".into(),
            ..base
        })
    );
}

/// The shipped camera head on prompts in the README's words: the path it reads is nearest
/// to the path of the move the prompt names.
#[cfg(feature = "train")]
#[test]
fn the_shipped_camera_head_reads_the_move_a_prompt_names() {
    use crate::scenes::{Attribute, Camera, Scene, Setting, TimeOfDay, Weather};
    let model = TinyModel::shipped().expect("shipped weights");
    let typical = |camera: Camera| {
        Scene::with_attributes(TimeOfDay::Noon, Setting::Sea, Weather::Clear, camera, 1)
            .camera_path()
    };
    let distance = |a: CameraPath, b: CameraPath| {
        (a.pan_x - b.pan_x).powi(2) + (a.pan_y - b.pan_y).powi(2) + (a.zoom - b.zoom).powi(2)
    };
    for (prompt, expected) in [
        (
            "Open sea with slow waves under a golden hour sky, static camera",
            Camera::Static,
        ),
        (
            "mountains at dawn, the camera pans to the left",
            Camera::PanLeft,
        ),
        ("Desert dunes at dusk, camera pans right", Camera::PanRight),
        ("City skyline at night, slow push in", Camera::PushIn),
        ("a snowfield at noon, pulling back out", Camera::PullOut),
        (
            "Aerial drone shot descending slowly over a pine valley at dawn, fog",
            Camera::AerialDescent,
        ),
        ("the forest in the rain, camera tilts up", Camera::TiltUp),
    ] {
        let path = model.camera_path(prompt).expect("camera path");
        let nearest = Camera::ALL
            .iter()
            .copied()
            .min_by(|a, b| distance(path, typical(*a)).total_cmp(&distance(path, typical(*b))))
            .expect("moves");
        assert_eq!(nearest, expected, "{prompt}: {path:?}");
    }
}

#[test]
fn unknown_words_are_ignored() {
    let model = model();
    let frames_of = |prompt: &str| all_frames(&run(&model, &small_request(prompt, 3)));
    let known = frames_of("Desert dunes at dusk, camera pans right");
    assert_eq!(
        known,
        frames_of("Desert dunes at dusk, flamingo sunglasses; camera pans right!")
    );
    assert_eq!(frames_of("zxqv quuxbazzle 東京"), frames_of(""));
    assert_ne!(known, frames_of(""));
}

#[test]
fn frame_counts_and_sizes_are_exact() {
    let model = model();
    for frames in [1, 2, 5, 6, 17, 241] {
        let clip = run(
            &model,
            &GenerateRequest {
                frames,
                steps: 1,
                ..small_request("count", 3)
            },
        );
        assert_eq!(clip.len(), frames);
        for frame in all_frames(&clip) {
            assert_eq!(
                (frame.width, frame.height, frame.data.len()),
                (64, 48, 64 * 48 * 3)
            );
        }
        assert!(clip.try_frame(frames).is_err());
    }
    for (width, height) in [(848, 480), (480, 848), (64, 48), (1920, 1080)] {
        let clip = run(
            &model,
            &GenerateRequest {
                width,
                height,
                frames: 5,
                steps: 1,
                ..small_request("size", 4)
            },
        );
        assert_eq!(
            (clip.width(), clip.height(), clip.len()),
            (width, height, 5)
        );
        let last = clip.frame(4);
        assert_eq!(
            (last.width, last.height, last.data.len()),
            (width, height, (width * height * 3) as usize)
        );
    }
}

#[test]
fn first_frame_reproduces_the_conditioning_picture() {
    let model = model();
    let (left, right) = ([210, 40, 30], [20, 90, 230]);
    // A different size (same aspect) than the output: the encoder resizes it.
    let picture = halves_picture(512, 256, left, right);
    let request = GenerateRequest {
        width: 256,
        height: 128,
        frames: 17,
        steps: 4,
        first_frame: Some(picture),
        ..small_request("a lighthouse in a storm", 5)
    };
    let clip = run(&model, &request);
    let first = clip.frame(0);
    for (measured, expected) in [
        (mean_colour(&first, 0..128, 0..128), left),
        (mean_colour(&first, 128..256, 0..128), right),
    ] {
        for channel in 0..3 {
            let error = (measured[channel] - f64::from(expected[channel])).abs();
            assert!(
                error <= 10.0,
                "channel {channel}: {measured:?} vs {expected:?}"
            );
        }
    }
    // Chaining segments: the next one starts where this one ended, blurred: compare the mean
    // colours of 32×32 regions (an untrained clip has cell-sized detail the round trip softens).
    let last = clip.last_frame().expect("non-empty clip");
    let next = run(
        &model,
        &GenerateRequest {
            first_frame: Some(last.clone()),
            seed: 6,
            ..request
        },
    );
    let start = next.frame(0);
    let mut worst = 0f64;
    let mut total = 0f64;
    for region_y in 0..4 {
        for region_x in 0..8 {
            let (xs, ys) = (
                region_x * 32..region_x * 32 + 32,
                region_y * 32..region_y * 32 + 32,
            );
            let before = mean_colour(&last, xs.clone(), ys.clone());
            let after = mean_colour(&start, xs, ys);
            for channel in 0..3 {
                let error = (before[channel] - after[channel]).abs();
                worst = worst.max(error);
                total += error;
            }
        }
    }
    let mean = total / 96.0;
    println!("segment seam: 32x32 region colour error mean {mean:.2}, worst {worst:.2}");
    assert!(
        mean < 10.0 && worst < 40.0,
        "segment seam region error mean {mean}, worst {worst}"
    );
}

#[test]
fn cancellation_stops_after_the_current_step() {
    let model = model();
    let cancel = AtomicBool::new(false);
    let mut calls = Vec::new();
    let result = model.generate(
        &GenerateRequest {
            steps: 5,
            ..small_request("cancel me", 7)
        },
        &mut |done, total| {
            calls.push((done, total));
            if done == 2 {
                cancel.store(true, Ordering::Relaxed);
            }
        },
        &cancel,
    );
    assert_eq!(result.unwrap_err(), ModelError::Cancelled);
    assert_eq!(calls, vec![(1, 5), (2, 5)]);
}

/// A run killed after a checkpoint and resumed from it (the state through its stored form)
/// ends in the same frames as a run never stopped, conditioned or not, and only runs the
/// steps after the checkpoint.
#[test]
fn a_resumed_run_ends_exactly_like_an_uninterrupted_one() {
    let model = model();
    let picture = halves_picture(64, 48, [200, 40, 30], [20, 60, 180]);
    for first_frame in [None, Some(picture)] {
        let request = GenerateRequest {
            steps: 6,
            first_frame,
            ..small_request("waves on a rocky shore", 11)
        };
        let whole = all_frames(&run(&model, &request));
        let fingerprint = [3; 32];
        let mut stored = Vec::new();
        let mut save = |state: &SamplingState| {
            stored.push(state.encode(&fingerprint));
            Ok(())
        };
        let cancel = AtomicBool::new(false);
        let mut checkpoints = Checkpoints {
            every: 2,
            ..Checkpoints::off(&mut save)
        };
        let killed = model.generate_with_checkpoints(
            &request,
            &mut checkpoints,
            &mut |done, _| cancel.store(done == 3, Ordering::Relaxed),
            &cancel,
        );
        assert_eq!(killed.unwrap_err(), ModelError::Cancelled);
        assert_eq!(stored.len(), 1, "one checkpoint, after step 2");
        let state = SamplingState::decode(&stored[0], &fingerprint).expect("reads back");
        assert_eq!((state.step, state.steps), (2, 6));
        let mut nothing = |_: &SamplingState| Ok(());
        let mut resumed = Checkpoints {
            resume: Some(state),
            ..Checkpoints::off(&mut nothing)
        };
        let mut steps_run = Vec::new();
        let clip = model
            .generate_with_checkpoints(
                &request,
                &mut resumed,
                &mut |done, _| steps_run.push(done),
                &AtomicBool::new(false),
            )
            .expect("resumed run");
        assert_eq!(resumed.resumed_from, 2);
        assert_eq!(steps_run, vec![2, 3, 4, 5, 6]);
        assert!(all_frames(&clip) == whole, "resumed frames differ");
    }
}

#[test]
fn safetensors_round_trip_and_errors() {
    let model = model();
    let path = std::env::temp_dir().join(format!(
        "reelfarm-tiny-model-{}.safetensors",
        std::process::id()
    ));
    model.save(&path).expect("save");
    let loaded = TinyModel::load(&path).expect("load");
    let request = small_request("round trip", 8);
    assert_eq!(
        all_frames(&run(&model, &request)),
        all_frames(&run(&loaded, &request))
    );

    let smaller = TinyConfig {
        blocks: 3,
        ..TinyConfig::default()
    };
    let error = TinyModel::load_with_config(smaller, &path)
        .err()
        .expect("config mismatch");
    assert!(error.to_string().contains("denoiser.blocks.3"), "{error}");

    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
    let error = TinyModel::load(&path).err().expect("truncated file");
    assert!(
        matches!(&error, ModelError::InvalidWeights(message) if message.contains("cannot read")),
        "{error}"
    );
    std::fs::remove_file(&path).ok();
}

#[test]
fn limits_are_enforced_before_work_starts() {
    let model = model().with_memory_limit(Some(64 << 20));
    let result = model.generate(
        &GenerateRequest {
            width: 1920,
            height: 1080,
            frames: 241,
            ..GenerateRequest::default()
        },
        &mut |_, _| panic!("no step may run"),
        &AtomicBool::new(false),
    );
    assert!(matches!(result, Err(ModelError::OutOfMemory(_))));
    let odd = model.generate(
        &GenerateRequest {
            height: 47,
            ..small_request("", 0)
        },
        &mut |_, _| {},
        &AtomicBool::new(false),
    );
    assert!(matches!(odd, Err(ModelError::InvalidRequest(_))));
    assert_eq!(model.id(), "reelfarm-tiny");
}

/// CPU seconds (user + system) this process has used, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<f64> = after_name
        .split_whitespace()
        .map(|field| field.parse().unwrap_or(0.0))
        .collect();
    (fields.get(11).unwrap_or(&0.0) + fields.get(12).unwrap_or(&0.0)) / 100.0
}

fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

/// Renders one request with the shipped weights, decodes every frame, prints timings and peak
/// RSS growth, and checks the memory estimate covers the growth without exceeding it more than
/// 3× (the estimate allows for the largest camera plate; the prompts below pan).
fn benchmark(name: &str, request: GenerateRequest) -> f64 {
    let model = TinyModel::shipped().expect("shipped weights");
    // "5" resets VmHWM to the current RSS, so the peak below belongs to this run alone.
    std::fs::write("/proc/self/clear_refs", "5").ok();
    let baseline = proc_status_kib("VmRSS:");
    let cpu_started = cpu_seconds();
    let started = Instant::now();
    let mut step_marks = vec![started];
    let clip = model
        .generate(
            &request,
            &mut |_, _| step_marks.push(Instant::now()),
            &AtomicBool::new(false),
        )
        .expect("generate");
    let sampled = Instant::now();
    let cpu_sampled = cpu_seconds();
    let mut checksum = 0u64;
    for index in 0..clip.len() {
        checksum += u64::from(clip.frame(index).data[0]);
    }
    let finished = Instant::now();
    let cpu_finished = cpu_seconds();
    let steps: Vec<f64> = step_marks
        .windows(2)
        .map(|pair| (pair[1] - pair[0]).as_secs_f64())
        .collect();
    let growth = (proc_status_kib("VmHWM:").saturating_sub(baseline)) << 10;
    let estimate = model.memory_estimate_bytes(&request);
    let total = (finished - started).as_secs_f64();
    println!(
        "{name}: first step {:.3}s (incl. text+noise), later steps {:.3}s avg, generate() {:.2}s, decode {} frames {:.2}s ({:.1} ms/frame), total {:.2}s (cpu {:.2}s + {:.2}s); peak RSS growth {} MiB, estimate {} MiB ({:.2}x) [checksum {checksum}]",
        steps.first().copied().unwrap_or(0.0),
        steps.iter().skip(1).sum::<f64>() / (steps.len().max(2) - 1) as f64,
        (sampled - started).as_secs_f64(),
        clip.len(),
        (finished - sampled).as_secs_f64(),
        (finished - sampled).as_secs_f64() * 1000.0 / f64::from(clip.len()),
        total,
        cpu_sampled - cpu_started,
        cpu_finished - cpu_sampled,
        growth >> 20,
        estimate >> 20,
        estimate as f64 / growth.max(1) as f64,
    );
    assert!(
        estimate >= growth,
        "estimate {estimate} below measured growth {growth}"
    );
    assert!(
        estimate <= 3 * growth,
        "estimate {estimate} more than 3x measured growth {growth}"
    );
    total
}

#[test]
#[ignore = "benchmark: cargo test --lib draft_480p -- --ignored --nocapture --test-threads 1"]
fn benchmark_draft_480p() {
    let request = GenerateRequest {
        prompt: "Desert dunes at dusk, camera pans right".into(),
        frames: 241,
        steps: 8,
        guidance: 4.0,
        ..GenerateRequest::default()
    };
    let total = benchmark("draft 848x480x241, 8 steps, cfg", request);
    assert!(total < 8.0, "draft took {total:.2}s");
}

#[test]
#[ignore = "benchmark: cargo test --lib final_1080p -- --ignored --nocapture --test-threads 1"]
fn benchmark_final_1080p() {
    let request = GenerateRequest {
        prompt: "Desert dunes at dusk, camera pans right".into(),
        width: 1920,
        height: 1080,
        frames: 241,
        steps: 24,
        guidance: 4.0,
        ..GenerateRequest::default()
    };
    benchmark("final 1920x1080x241, 24 steps, cfg", request);
}

#[test]
#[ignore = "benchmark: cargo test --lib long_1080p -- --ignored --nocapture --test-threads 1"]
fn benchmark_long_1080p_memory() {
    // A 20 s segment with few steps: checks the estimate scales with length, not speed.
    let request = GenerateRequest {
        prompt: "Desert dunes at dusk, camera pans right".into(),
        width: 1920,
        height: 1080,
        frames: 481,
        steps: 2,
        ..GenerateRequest::default()
    };
    benchmark("long 1920x1080x481, 2 steps, cfg", request);
}
