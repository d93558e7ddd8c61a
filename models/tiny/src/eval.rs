//! Measures whether reelfarm-tiny draws what the prompt says: held-out generator prompts are rendered by the given weights and by untrained ones (the chance baseline), and each clip's attributes are read back with `scenes::measure`, which never looks at the model.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::Serialize;

use super::TinyModel;
use crate::scenes::measure::{AttributeProbe, FrameSummary};
use crate::scenes::{Attribute, Attributes, Camera, Scene, Setting, TimeOfDay, Weather, prompts};
use reelfarm_models::{GenerateRequest, ModelError, ModelRuntime};

/// What `evaluate` renders; the defaults are what `reelfarm eval-tiny` reports.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalOptions {
    /// Held-out prompts to render (each by both models).
    pub prompts: usize,
    pub seconds: f32,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub steps: u32,
    pub guidance: f32,
    /// Picks the held-out scenes and prompts (and the probe's training scenes).
    pub seed: u64,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            prompts: 70,
            seconds: 3.0,
            width: 848,
            height: 480,
            fps: 24,
            steps: 8,
            guidance: 2.0,
            seed: 7,
        }
    }
}

/// Share of clips whose measured attribute matches the prompt.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct AttributeScore {
    pub trained: f64,
    pub random: f64,
    /// 1 / number of values: what guessing would score.
    pub chance: f64,
}

/// One held-out prompt and what was read from each model's clip.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalCase {
    pub prompt: String,
    pub expected: [&'static str; 4],
    pub trained: [&'static str; 4],
    pub random: [&'static str; 4],
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalReport {
    pub time_of_day: AttributeScore,
    pub camera: AttributeScore,
    pub setting: AttributeScore,
    pub weather: AttributeScore,
    pub prompts: usize,
    pub clip_seconds: f32,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    /// The same prompt and seed rendered twice gave identical frames.
    pub same_seed_identical: bool,
    /// Mean absolute pixel difference (0..255) between two seeds of one prompt.
    pub other_seed_difference: f64,
    /// How well the measures read the generator's own clips (their ceiling), per attribute.
    pub ground_truth: GroundTruthScore,
    pub elapsed_seconds: f64,
    pub cases: Vec<EvalCase>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct GroundTruthScore {
    pub time_of_day: f64,
    pub camera: f64,
    pub setting: f64,
    pub weather: f64,
}

fn names(attributes: &Attributes) -> [&'static str; 4] {
    [
        attributes.time_of_day.name(),
        attributes.camera.name(),
        attributes.setting.name(),
        attributes.weather.name(),
    ]
}

/// Held-out scenes with every value of every attribute about equally often (5, 6 and 7
/// values: coprime, so `index mod n` walks through every combination once per 210).
pub fn held_out_scenes(count: usize, seed: u64) -> Vec<(Scene, String)> {
    (0..count)
        .map(|index| {
            let mixed = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ index as u64;
            let base = Scene::random(mixed);
            let scene = Scene::with_attributes(
                TimeOfDay::ALL[index % TimeOfDay::ALL.len()],
                Setting::ALL[index % Setting::ALL.len()],
                base.weather,
                Camera::ALL[index % Camera::ALL.len()],
                mixed,
            );
            let prompt = prompts::describe_for(&scene, mixed ^ 0xe7a1, true);
            (scene, prompt)
        })
        .collect()
}

fn render_summaries(
    model: &TinyModel,
    request: &GenerateRequest,
) -> Result<(Vec<FrameSummary>, Vec<u8>), ModelError> {
    let clip = model.generate(request, &mut |_, _| {}, &AtomicBool::new(false))?;
    let mut summaries = Vec::with_capacity(clip.len() as usize);
    let mut middle = Vec::new();
    for index in 0..clip.len() {
        let frame = clip.try_frame(index)?;
        summaries.push(FrameSummary::of(&frame));
        if index == clip.len() / 2 {
            middle = frame.data;
        }
    }
    Ok((summaries, middle))
}

fn mean_abs_difference(first: &[u8], second: &[u8]) -> f64 {
    let total: u64 = first
        .iter()
        .zip(second)
        .map(|(a, b)| u64::from(a.abs_diff(*b)))
        .sum();
    total as f64 / first.len().max(1) as f64
}

/// Renders every held-out prompt with `trained` and `random` and scores what the measures
/// read; `on_prompt(done, total)` after each prompt.
pub fn evaluate(
    trained: &TinyModel,
    random: &TinyModel,
    options: &EvalOptions,
    on_prompt: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport, ModelError> {
    let started = Instant::now();
    let probe = AttributeProbe::train(600, options.seed ^ 0x9b0b);
    let fps = options.fps as f32;
    let frames = (options.seconds * fps).round() as u32 + 1;
    let request = |prompt: &str, seed: u64| GenerateRequest {
        prompt: prompt.to_string(),
        negative: String::new(),
        width: options.width,
        height: options.height,
        fps: options.fps,
        frames,
        steps: options.steps,
        guidance: options.guidance,
        seed,
        first_frame: None,
        low_memory: false,
    };
    let cases_in = held_out_scenes(options.prompts, options.seed);
    let mut cases = Vec::with_capacity(cases_in.len());
    let mut hits = [[0usize; 4]; 3];
    let mut same_seed_identical = true;
    let mut other_seed_difference = 0.0;
    for (index, (scene, prompt)) in cases_in.iter().enumerate() {
        let seed = options.seed.wrapping_add(index as u64);
        let (trained_frames, trained_middle) = render_summaries(trained, &request(prompt, seed))?;
        let (random_frames, _) = render_summaries(random, &request(prompt, seed))?;
        if index == 0 {
            let (_, again) = render_summaries(trained, &request(prompt, seed))?;
            same_seed_identical = again == trained_middle;
            let (_, other) = render_summaries(trained, &request(prompt, seed + 1000))?;
            other_seed_difference = mean_abs_difference(&trained_middle, &other);
        }
        let truth_frames =
            crate::scenes::measure::summarise_scene(scene, options.seconds, fps, 256, 144);
        let expected = Attributes::from(scene);
        let reads = [
            probe.read(&trained_frames, fps),
            probe.read(&random_frames, fps),
            probe.read(&truth_frames, fps),
        ];
        for (slot, read) in reads.iter().enumerate() {
            let matches = [
                read.time_of_day == expected.time_of_day,
                read.camera == expected.camera,
                read.setting == expected.setting,
                read.weather == expected.weather,
            ];
            for (attribute, matched) in matches.iter().enumerate() {
                hits[slot][attribute] += usize::from(*matched);
            }
        }
        cases.push(EvalCase {
            prompt: prompt.clone(),
            expected: names(&expected),
            trained: names(&reads[0]),
            random: names(&reads[1]),
        });
        on_prompt(index + 1, cases_in.len());
    }
    let total = cases_in.len().max(1) as f64;
    let score = |attribute: usize, values: usize| AttributeScore {
        trained: hits[0][attribute] as f64 / total,
        random: hits[1][attribute] as f64 / total,
        chance: 1.0 / values as f64,
    };
    Ok(EvalReport {
        time_of_day: score(0, TimeOfDay::ALL.len()),
        camera: score(1, Camera::ALL.len()),
        setting: score(2, Setting::ALL.len()),
        weather: score(3, Weather::ALL.len()),
        prompts: cases_in.len(),
        clip_seconds: options.seconds,
        width: options.width,
        height: options.height,
        steps: options.steps,
        same_seed_identical,
        other_seed_difference,
        ground_truth: GroundTruthScore {
            time_of_day: hits[2][0] as f64 / total,
            camera: hits[2][1] as f64 / total,
            setting: hits[2][2] as f64 / total,
            weather: hits[2][3] as f64 / total,
        },
        elapsed_seconds: started.elapsed().as_secs_f64(),
        cases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_out_prompts_are_held_out_and_balanced() {
        let cases = held_out_scenes(35, 7);
        assert!(cases.iter().all(|(_, prompt)| prompts::is_held_out(prompt)));
        for camera in Camera::ALL {
            assert_eq!(
                cases
                    .iter()
                    .filter(|(scene, _)| scene.camera == *camera)
                    .count(),
                5
            );
        }
        for time in TimeOfDay::ALL {
            assert_eq!(
                cases
                    .iter()
                    .filter(|(scene, _)| scene.time_of_day == *time)
                    .count(),
                7
            );
        }
        for setting in Setting::ALL {
            assert!(
                cases
                    .iter()
                    .filter(|(scene, _)| scene.setting == *setting)
                    .count()
                    >= 4
            );
        }
    }
}
