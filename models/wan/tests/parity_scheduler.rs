//! The samplers against diffusers 0.42.1: every schedule in `scheduler.json` (UniPC timesteps exactly, sigmas within 1e-6 relative) and the 4-step trajectories of `scheduler_steps.safetensors` within the parity tolerance.

mod common;

use std::collections::BTreeSet;

use reelfarm_wan::scheduler::{SchedulerConfig, new_sampler};
use reelfarm_wan::weights::Checkpoint;
use serde_json::Value;

const SIGMA_TOLERANCE: f64 = 1e-6;

fn numbers(case: &Value, key: &str, what: &str) -> Vec<f64> {
    case[key]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no \"{key}\" list"))
        .iter()
        .map(|value| {
            value
                .as_f64()
                .unwrap_or_else(|| panic!("{what}: {key} holds {value}"))
        })
        .collect()
}

/// The case's config as a scheduler config file would hold it (`_class_name` from "class").
fn config_of(case: &Value) -> SchedulerConfig {
    let class = case["class"].as_str().expect("a case names its class");
    let mut config = case["config"].clone();
    assert!(
        config.is_object(),
        "{class}: the case's config is not an object"
    );
    match config.get("_class_name") {
        Some(named) => assert_eq!(
            named, class,
            "the case's class and its config's _class_name differ"
        ),
        None => config["_class_name"] = Value::from(class),
    }
    SchedulerConfig::from_value(config).unwrap_or_else(|error| panic!("{class}: {error}"))
}

#[test]
fn every_schedule_in_scheduler_json_matches() {
    let cases = common::load_json("scheduler");
    let cases = cases.as_array().expect("scheduler.json is a list of cases");
    let mut seen = BTreeSet::new();
    for case in cases {
        let config = config_of(case);
        let steps = case["num_inference_steps"]
            .as_u64()
            .expect("num_inference_steps") as usize;
        let what = format!("{} shift {} N {steps}", config.class_name(), config.shift());
        let schedule = config.schedule(steps).unwrap();
        let timesteps = numbers(case, "timesteps", &what);
        let sigmas = numbers(case, "sigmas", &what);
        assert_eq!(timesteps.len(), steps, "{what}: the fixture's timesteps");
        assert_eq!(sigmas.len(), steps + 1, "{what}: the fixture's sigmas");
        match config {
            SchedulerConfig::UniPc(_) => {
                // The fixture's configs are the published ones but for the shift.
                assert_eq!(
                    config,
                    SchedulerConfig::unipc(config.shift()),
                    "{what}: config"
                );
                assert_eq!(schedule.timesteps, timesteps, "{what}: timesteps");
            }
            SchedulerConfig::FlowMatchEuler(_) => {
                for (k, (actual, expected)) in schedule.timesteps.iter().zip(&timesteps).enumerate()
                {
                    let error = (actual - expected).abs();
                    assert!(
                        error <= SIGMA_TOLERANCE * expected.abs(),
                        "{what}: timestep {k} {actual} vs {expected}"
                    );
                }
            }
        }
        for (k, (actual, expected)) in schedule.sigmas.iter().zip(&sigmas).enumerate() {
            let error = (actual - expected).abs();
            assert!(
                error <= SIGMA_TOLERANCE * expected.abs(),
                "{what}: sigma {k} {actual} vs {expected}"
            );
        }
        seen.insert((config.class_name(), config.shift().to_string(), steps));
    }
    // The cases the fixture contract promises.
    let mut missing = Vec::new();
    for (class, counts) in [
        ("UniPCMultistepScheduler", &[2, 8, 50][..]),
        ("FlowMatchEulerDiscreteScheduler", &[2, 50][..]),
    ] {
        for shift in ["3", "5"] {
            for &steps in counts {
                if !seen.contains(&(class, shift.to_string(), steps)) {
                    missing.push(format!("{class} shift {shift} N {steps}"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "scheduler.json lacks the contracted cases {missing:?}"
    );
}

/// Runs the sampler on the fixture's model outputs from its first sample, feeding each step its
/// own result, and holds every step's sample to the reference.
fn trajectory(prefix: &str, config: &SchedulerConfig) {
    let tensors = common::load("scheduler_steps");
    let steps = (0..)
        .take_while(|i| tensors.contains_key(&format!("{prefix}_model_output_{i}")))
        .count();
    assert_eq!(
        steps, 4,
        "{prefix}: the contract's trajectories have 4 steps"
    );
    let get = |name: String| {
        tensors
            .get(&name)
            .unwrap_or_else(|| panic!("scheduler_steps: no {name}"))
    };
    let mut sampler = new_sampler(config, steps).unwrap();
    let as_f64 = |name: String| -> Vec<f64> {
        let tensor = get(name).to_dtype(candle_core::DType::F64).unwrap();
        tensor.to_vec1().unwrap()
    };
    assert_eq!(
        sampler.timesteps(),
        &as_f64(format!("{prefix}_timesteps"))[..],
        "{prefix}: timesteps"
    );
    for (k, (actual, expected)) in sampler
        .sigmas()
        .iter()
        .zip(as_f64(format!("{prefix}_sigmas")))
        .enumerate()
    {
        assert!(
            (actual - expected).abs() <= SIGMA_TOLERANCE * expected.abs(),
            "{prefix}: sigma {k}"
        );
    }
    assert_eq!(sampler.sigmas().len(), steps + 1, "{prefix}: sigmas");
    let mut sample = get(format!("{prefix}_sample_0")).clone();
    for step in 0..steps {
        let model_output = get(format!("{prefix}_model_output_{step}"));
        sample = sampler.step(model_output, step, &sample).unwrap();
        let expected = get(format!("{prefix}_sample_{}", step + 1));
        assert_eq!(
            sample.dtype(),
            expected.dtype(),
            "{prefix} step {step}: dtype"
        );
        common::assert_close(&format!("{prefix} step {step}"), &sample, expected);
    }
}

#[test]
fn the_unipc_trajectory_matches() {
    trajectory("unipc", &SchedulerConfig::wan_default());
}

#[test]
fn the_euler_trajectory_matches() {
    trajectory("euler", &SchedulerConfig::flow_match_euler(3.0));
}

#[test]
fn the_tiny_checkpoint_schedules_with_the_published_default() {
    let checkpoint = Checkpoint::open(common::tiny_checkpoint()).unwrap();
    let config = SchedulerConfig::load(&checkpoint.scheduler_config_file().unwrap()).unwrap();
    assert_eq!(config, SchedulerConfig::wan_default());
}
