//! The two samplers' `set_timesteps`: sigmas and timesteps as plain numbers, reproduced operation for operation from diffusers 0.42 (numpy float64, torch float32), so they can be compared exactly and property-tested without tensors.

use super::config::{FinalSigmas, FlowMatchEulerConfig, UniPcConfig};

/// What `set_timesteps(N)` leaves in a scheduler.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// The N values the transformer receives, in order: UniPC's are whole numbers (diffusers
    /// truncates to int64), Euler's are float32 values, both widened to f64.
    pub timesteps: Vec<f64>,
    /// N + 1 float32 values widened to f64: the sigma of every step, then the final one (0).
    pub sigmas: Vec<f64>,
}

impl Schedule {
    pub fn num_inference_steps(&self) -> usize {
        self.timesteps.len()
    }
}

/// `numpy.linspace(start, stop, num)` (endpoint included), rounding as numpy does: `k·step`,
/// then `+ start`, the last element set to `stop`.
pub(crate) fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    if num == 1 {
        return vec![start];
    }
    let div = (num - 1) as f64;
    let delta = stop - start;
    let step = delta / div;
    let mut values: Vec<f64> = if step == 0.0 {
        (0..num).map(|k| k as f64 / div * delta + start).collect()
    } else {
        (0..num).map(|k| k as f64 * step + start).collect()
    };
    values[num - 1] = stop;
    values
}

/// The flow shift `shift·s / (1 + (shift − 1)·s)` in float64, evaluated in numpy's order.
pub(crate) fn shift_f64(shift: f64, sigma: f64) -> f64 {
    (shift * sigma) / (1.0 + (shift - 1.0) * sigma)
}

/// The same in float32 (torch on a float32 tensor, the Python scalar rounded to float32).
fn shift_f32(shift: f64, sigma: f32) -> f32 {
    let shift32 = shift as f32;
    let minus_one = (shift - 1.0) as f32;
    (shift32 * sigma) / (1.0 + minus_one * sigma)
}

/// `UniPCMultistepScheduler.set_timesteps(N)` with `use_flow_sigmas` (diffusers ≥ 0.37, whose
/// unshifted sigmas run from 1 down to just above 1/num_train_timesteps):
/// `s_k = shift(linspace(1, 1/T, N+1)[k])` for k < N, `s_0` nudged 1e-6 below 1, timesteps
/// `int64(s_k·T)`, sigmas `float32([s…, final])`.
pub fn unipc_schedule(config: &UniPcConfig, num_inference_steps: usize) -> Schedule {
    let train = config.num_train_timesteps as f64;
    let mut sigmas: Vec<f64> = linspace(1.0, 1.0 / train, num_inference_steps + 1)
        .into_iter()
        .take(num_inference_steps)
        .map(|sigma| shift_f64(config.flow_shift, sigma))
        .collect();
    const EPS: f64 = 1e-6;
    if let Some(first) = sigmas.first_mut()
        && (*first - 1.0).abs() < EPS
    {
        // diffusers keeps log(1 − σ) finite in the first updates this way.
        *first -= EPS;
    }
    // `torch.from_numpy(float64).to(int64)` truncates toward zero.
    let timesteps = sigmas.iter().map(|sigma| (sigma * train).trunc()).collect();
    let last = match config.final_sigmas_type {
        FinalSigmas::Zero => 0.0,
        FinalSigmas::SigmaMin => sigmas.last().copied().unwrap_or(0.0),
    };
    sigmas.push(last);
    let sigmas = sigmas
        .into_iter()
        .map(|sigma| f64::from(sigma as f32))
        .collect();
    Schedule { timesteps, sigmas }
}

/// `FlowMatchEulerDiscreteScheduler.set_timesteps(N)` without dynamic shifting: the training
/// sigmas' ends are shifted once in float32 (`__init__`), spaced linearly in float64, shifted
/// AGAIN in float64, rounded to float32; timesteps are `σ·T` in float32; a 0 is appended.
pub fn flow_match_euler_schedule(
    config: &FlowMatchEulerConfig,
    num_inference_steps: usize,
) -> Schedule {
    let train = config.num_train_timesteps;
    // __init__: timesteps = linspace(1, T, T) as float32, reversed; sigmas = timesteps / T.
    let train32 = train as f32;
    // The largest training sigma is T/T = 1 exactly; the smallest 1/T.
    let sigma_max = f64::from(shift_f32(config.shift, 1.0));
    let sigma_min = f64::from(shift_f32(config.shift, 1.0 / train32));
    let train = train as f64;
    let sigmas32: Vec<f32> = linspace(sigma_max * train, sigma_min * train, num_inference_steps)
        .into_iter()
        .map(|timestep| shift_f64(config.shift, timestep / train) as f32)
        .collect();
    let timesteps = sigmas32
        .iter()
        .map(|&sigma| f64::from(sigma * train32))
        .collect();
    let sigmas = sigmas32
        .iter()
        .map(|&sigma| f64::from(sigma))
        .chain([0.0])
        .collect();
    Schedule { timesteps, sigmas }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIFTS: [f64; 9] = [0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 7.0, 8.0, 12.0];

    fn check(schedule: &Schedule, steps: usize, what: &str) {
        let Schedule { timesteps, sigmas } = schedule;
        assert_eq!(timesteps.len(), steps, "{what}");
        assert_eq!(sigmas.len(), steps + 1, "{what}");
        assert!(sigmas[0] <= 1.0, "{what}: first sigma {}", sigmas[0]);
        assert_eq!(sigmas[steps], 0.0, "{what}");
        for (k, pair) in sigmas.windows(2).enumerate() {
            assert!(
                pair[0] > pair[1],
                "{what}: sigma {k} {} is not above {}",
                pair[0],
                pair[1]
            );
        }
        for (k, pair) in timesteps.windows(2).enumerate() {
            assert!(
                pair[0] >= pair[1],
                "{what}: timestep {k} {} below {}",
                pair[0],
                pair[1]
            );
        }
        for &timestep in timesteps {
            assert!(
                (0.0..=1000.0).contains(&timestep),
                "{what}: timestep {timestep}"
            );
        }
    }

    #[test]
    fn unipc_sigmas_fall_strictly_to_zero_and_timesteps_are_truncated() {
        for shift in SHIFTS {
            for steps in 1..=120 {
                let schedule = unipc_schedule(&UniPcConfig::wan(shift), steps);
                let what = format!("UniPC shift {shift} N {steps}");
                check(&schedule, steps, &what);
                assert!(schedule.sigmas[0] < 1.0, "{what}: sigma 0 is 1");
                for (k, &timestep) in schedule.timesteps.iter().enumerate() {
                    assert_eq!(timestep.fract(), 0.0, "{what}");
                    // Truncation of σ·1000: at most one below, never above (σ rounded to f32
                    // may land either side of the float64 value the timestep came from).
                    let scaled = schedule.sigmas[k] * 1000.0;
                    assert!(
                        timestep <= scaled + 1e-3 && timestep > scaled - 1.0 - 1e-3,
                        "{what}"
                    );
                }
            }
        }
    }

    #[test]
    fn euler_sigmas_fall_strictly_to_zero() {
        for shift in SHIFTS {
            for steps in 1..=120 {
                let schedule =
                    flow_match_euler_schedule(&FlowMatchEulerConfig::with_shift(shift), steps);
                let what = format!("Euler shift {shift} N {steps}");
                check(&schedule, steps, &what);
                assert_eq!(schedule.sigmas[0], 1.0, "{what}");
                assert_eq!(schedule.timesteps[0], 1000.0, "{what}");
                for (k, &timestep) in schedule.timesteps.iter().enumerate() {
                    assert_eq!(
                        timestep,
                        f64::from(schedule.sigmas[k] as f32 * 1000.0),
                        "{what}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_spec_values_for_50_steps_at_shift_3() {
        let unipc = unipc_schedule(&UniPcConfig::wan(3.0), 50);
        let head: Vec<f64> = unipc.timesteps[..5].to_vec();
        assert_eq!(head, [999.0, 993.0, 986.0, 979.0, 971.0]);
        let tail: Vec<f64> = unipc.timesteps[45..].to_vec();
        assert_eq!(tail, [251.0, 208.0, 162.0, 113.0, 60.0]);
        assert_eq!(unipc.sigmas[0], f64::from(0.999999f32));
        assert!((unipc.sigmas[49] - 0.0604054).abs() < 1e-7);
        let euler = flow_match_euler_schedule(&FlowMatchEulerConfig::with_shift(3.0), 50);
        for (k, expected) in [
            (0, 1000.0),
            (1, 993.1244),
            (2, 986.0571),
            (3, 978.7898),
            (49, 8.9286),
        ] {
            assert!(
                (euler.timesteps[k] - expected).abs() < 1e-3,
                "{k}: {}",
                euler.timesteps[k]
            );
        }
    }

    #[test]
    fn shift_one_is_the_identity_and_shifts_keep_the_ends() {
        for k in 0..=1000 {
            let sigma = k as f64 / 1000.0;
            assert!((shift_f64(1.0, sigma) - sigma).abs() < 1e-15);
            for shift in SHIFTS {
                let shifted = shift_f64(shift, sigma);
                assert!((0.0..=1.0).contains(&shifted));
                if k > 0 && k < 1000 && shift != 1.0 {
                    assert_eq!(shifted > sigma, shift > 1.0, "shift {shift} at {sigma}");
                }
            }
        }
        // numpy 2 prints these (its rounding, not the decimal values).
        assert_eq!(
            linspace(1.0, 0.001, 5),
            [1.0, 0.75025, 0.5005, 0.25075000000000003, 0.001]
        );
        let expected = [
            1000.0,
            833.4999833333334,
            666.9999666666668,
            500.49995,
            333.9999333333334,
            167.49991666666676,
            0.9999,
        ];
        assert_eq!(linspace(1000.0, 0.9999, 7), expected);
        assert_eq!(linspace(2.0, 3.0, 1), [2.0]);
    }
}
