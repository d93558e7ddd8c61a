//! Properties of the samplers that hold for any schedule (exact flows are followed exactly, the last UniPC step is the x0 prediction, steps are refused out of order), checked over many step counts and shifts without fixtures.

use candle_core::{DType, Device, Tensor};

use super::unipc::{coefficients, lambda, solve};
use super::*;

const SHIFTS: [f64; 7] = [0.7, 1.0, 2.0, 3.0, 5.0, 8.0, 12.0];
const SHAPE: [usize; 5] = [1, 4, 2, 3, 3];

/// Deterministic values in [−2, 2) (a 64-bit LCG), as a float32 tensor of `SHAPE`.
fn pseudo_random(seed: u64) -> Tensor {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let count: usize = SHAPE.iter().product();
    let values: Vec<f32> = (0..count)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    Tensor::from_vec(values, &SHAPE[..], &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// UniPC variants the straight-flow property must hold for.
fn unipc_variants(shift: f64) -> Vec<(String, UniPcConfig)> {
    let base = UniPcConfig::wan(shift);
    vec![
        ("published".into(), base.clone()),
        (
            "order 1".into(),
            UniPcConfig {
                solver_order: 1,
                ..base.clone()
            },
        ),
        (
            "order 3".into(),
            UniPcConfig {
                solver_order: 3,
                ..base.clone()
            },
        ),
        (
            "bh1".into(),
            UniPcConfig {
                solver_type: SolverType::Bh1,
                ..base.clone()
            },
        ),
        (
            "no lower_order_final".into(),
            UniPcConfig {
                lower_order_final: false,
                ..base.clone()
            },
        ),
        (
            "corrector off at 0 and 2".into(),
            UniPcConfig {
                disable_corrector: vec![0, 2],
                ..base
            },
        ),
    ]
}

#[test]
fn euler_on_a_constant_velocity_lands_at_sample_minus_velocity_times_sigma0() {
    let sample = pseudo_random(1);
    let velocity = pseudo_random(2);
    for shift in SHIFTS {
        for steps in 1..=60 {
            let mut sampler =
                new_sampler(&SchedulerConfig::flow_match_euler(shift), steps).unwrap();
            let sigma0 = sampler.sigma(0);
            assert_eq!(sigma0, 1.0);
            let mut x = sample.clone();
            for step in 0..steps {
                x = sampler.step(&velocity, step, &x).unwrap();
                assert_eq!(x.dtype(), DType::F32);
            }
            let expected = (&sample - velocity.affine(sigma0, 0.0).unwrap()).unwrap();
            // Telescoping Σ dt = −σ0 holds up to one float32 rounding per step (values ≤ 4).
            let error = max_abs_diff(&x, &expected);
            let bound = 2.5e-7 * (steps as f32 + 1.0);
            assert!(
                error <= bound,
                "shift {shift} N {steps}: off by {error} > {bound}"
            );
        }
    }
}

#[test]
fn unipc_with_the_exact_velocity_of_a_straight_flow_stays_on_it_and_recovers_x0() {
    let x0 = pseudo_random(3);
    let noise = pseudo_random(4);
    let velocity = (&noise - &x0).unwrap();
    for shift in SHIFTS {
        for (name, config) in unipc_variants(shift) {
            for steps in 1..=40 {
                let mut sampler =
                    new_sampler(&SchedulerConfig::UniPc(config.clone()), steps).unwrap();
                let mut x = scale_noise(sampler.sigma(0), &x0, &noise).unwrap();
                for step in 0..steps {
                    x = sampler.step(&velocity, step, &x).unwrap();
                    let on_flow = scale_noise(sampler.sigma(step + 1), &x0, &noise).unwrap();
                    let error = max_abs_diff(&x, &on_flow);
                    assert!(
                        error <= 2e-5,
                        "{name}, shift {shift}, N {steps}, step {step}: off the flow by {error}"
                    );
                }
                let error = max_abs_diff(&x, &x0);
                assert!(
                    error <= 2e-5,
                    "{name}, shift {shift}, N {steps}: x0 off by {error}"
                );
            }
        }
    }
}

#[test]
fn the_last_unipc_step_returns_the_x0_prediction_exactly() {
    for steps in 1..=12 {
        let mut sampler = new_sampler(&SchedulerConfig::wan_default(), steps).unwrap();
        let mut x = pseudo_random(5);
        for step in 0..steps {
            let velocity = pseudo_random(100 + step as u64);
            let next = sampler.step(&velocity, step, &x).unwrap();
            if step + 1 == steps {
                let sigma = sampler.sigma(step) as f32;
                let x0 = (&x - velocity.affine(f64::from(sigma), 0.0).unwrap()).unwrap();
                assert_eq!(values(&next), values(&x0), "N {steps}");
            }
            x = next;
        }
    }
}

#[test]
fn update_coefficients_keep_straight_flows_and_solve_their_systems() {
    for shift in SHIFTS {
        for steps in 2..=80 {
            let schedule = unipc_schedule(&UniPcConfig::wan(shift), steps);
            let sigmas: Vec<f32> = schedule.sigmas.iter().map(|&s| s as f32).collect();
            for step in 0..steps - 1 {
                let (s, t) = (sigmas[step], sigmas[step + 1]);
                let history: Vec<usize> = if step > 0 { vec![step - 1] } else { vec![] };
                for corrector in [false, true] {
                    let c = coefficients(
                        &sigmas,
                        step,
                        step + 1,
                        &history,
                        SolverType::Bh2,
                        corrector,
                    );
                    // On x = (1−σ)x0 + σ·ε with every prediction x0: σ_t ε + (1−σ_t) x0.
                    let x0_weight = c.sample * (1.0 - s) - c.x0;
                    let what = format!("shift {shift} N {steps} step {step} corrector {corrector}");
                    assert!(
                        (x0_weight - (1.0 - t)).abs() <= 2e-5,
                        "{what}: {x0_weight} vs {}",
                        1.0 - t
                    );
                    assert!((c.sample - t / s).abs() <= f32::EPSILON, "{what}");
                    assert!(
                        c.residual.is_finite() && c.rhos.iter().all(|r| r.is_finite()),
                        "{what}"
                    );
                    if let [r1] = c.ratios[..] {
                        let expected =
                            (lambda(sigmas[step - 1]) - lambda(s)) / (lambda(t) - lambda(s));
                        assert_eq!(r1, expected, "{what}");
                        assert!(r1 < 0.0, "{what}: earlier sigmas have a lower λ");
                    }
                    if corrector && history.len() == 1 {
                        // The closed form of the 2×2 corrector system.
                        let h = lambda(t) - lambda(s);
                        let hh = -h;
                        let (phi, b_h) = (hh.exp_m1(), hh.exp_m1());
                        let g1 = phi / hh - 1.0;
                        let b0 = g1 / b_h;
                        let b1 = 2.0 * (g1 / hh - 0.5) / b_h;
                        let r1 = c.ratios[0];
                        let rho0 = (b0 - b1) / (1.0 - r1);
                        let rho1 = b0 - rho0;
                        assert!(
                            (c.rhos[0] - rho0).abs() <= 1e-5 * rho0.abs().max(1.0),
                            "{what}"
                        );
                        assert!(
                            (c.rhos[1] - rho1).abs() <= 1e-5 * rho1.abs().max(1.0),
                            "{what}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn the_small_solver_solves_with_pivoting() {
    let a = vec![
        vec![1e-8, 1.0, 2.0],
        vec![3.0, -1.0, 0.5],
        vec![0.25, 4.0, -2.0],
    ];
    let x = [0.5f32, -1.5, 2.0];
    let b: Vec<f32> = a
        .iter()
        .map(|row| row.iter().zip(&x).map(|(a, x)| a * x).sum())
        .collect();
    let solved = solve(a, b);
    for (s, x) in solved.iter().zip(x) {
        assert!((s - x).abs() < 1e-5, "{solved:?}");
    }
}

#[test]
fn unipc_steps_must_come_in_order_and_reset_starts_over() {
    let mut sampler = new_sampler(&SchedulerConfig::wan_default(), 4).unwrap();
    let (x, v) = (pseudo_random(6), pseudo_random(7));
    let first = sampler.step(&v, 0, &x).unwrap();
    let error = sampler.step(&v, 2, &first).unwrap_err().to_string();
    assert!(
        error.contains("step 2 out of order, expected step 1"),
        "{error}"
    );
    let error = sampler.step(&v, 4, &first).unwrap_err().to_string();
    assert!(error.contains("past the schedule of 4 steps"), "{error}");
    sampler.reset();
    assert_eq!(values(&sampler.step(&v, 0, &x).unwrap()), values(&first));
    // A run may begin later in the schedule (diffusers' set_begin_index): first order there.
    sampler.reset();
    sampler.step(&v, 2, &x).unwrap();
    sampler.step(&v, 3, &x).unwrap();
    assert!(new_sampler(&SchedulerConfig::wan_default(), 0).is_err());
}

#[test]
fn schedules_and_samplers_agree() {
    for config in [
        SchedulerConfig::wan_default(),
        SchedulerConfig::flow_match_euler(5.0),
    ] {
        let sampler = new_sampler(&config, 7).unwrap();
        let schedule = config.schedule(7).unwrap();
        assert_eq!(sampler.timesteps(), &schedule.timesteps[..]);
        assert_eq!(sampler.sigmas(), &schedule.sigmas[..]);
        assert_eq!(sampler.num_inference_steps(), 7);
        assert_eq!(sampler.sigma(7), 0.0);
    }
}

/// Values from diffusers 0.42.1 / torch 2.15.0 on the CPU: a bf16 model output makes `σ·v` a bf16
/// product (σ rounded to bf16 first), and Euler returns latents in the output's dtype.
#[test]
fn bf16_model_outputs_round_like_torch() {
    let x = Tensor::new(&[0.1f32, -2.5, 3.7, 0.0123, -0.77], &Device::Cpu).unwrap();
    let v = Tensor::new(&[1.2f32, -0.7, 2.9, -1.234, 0.0456], &Device::Cpu)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    let mut euler = new_sampler(&SchedulerConfig::flow_match_euler(3.0), 4).unwrap();
    let next = euler.step(&v, 0, &x).unwrap();
    assert_eq!(next.dtype(), DType::BF16);
    let expected = [
        -0.071_777_343_75,
        -2.40625,
        3.28125,
        0.188_476_562_5,
        -0.777_343_75,
    ];
    assert_eq!(values(&next), expected.map(|v: f64| v as f32));
    let mut unipc = new_sampler(&SchedulerConfig::wan_default(), 1).unwrap();
    let next = unipc.step(&v, 0, &x).unwrap();
    assert_eq!(next.dtype(), DType::F32);
    let expected = [
        -1.103_124_976_158_142,
        -1.80078125,
        0.793_750_047_683_715_8,
        1.246_675_014_495_849_6,
        -0.815_654_277_801_513_7,
    ];
    assert_eq!(values(&next), expected.map(|v: f64| v as f32));
}

#[test]
fn scale_noise_mixes_sample_and_noise() {
    let (sample, noise) = (pseudo_random(8), pseudo_random(9));
    assert_eq!(
        values(&scale_noise(0.0, &sample, &noise).unwrap()),
        values(&sample)
    );
    assert_eq!(
        values(&scale_noise(1.0, &sample, &noise).unwrap()),
        values(&noise)
    );
    let half = scale_noise(0.25, &sample, &noise).unwrap();
    let expected =
        ((sample.affine(0.75, 0.0).unwrap()) + noise.affine(0.25, 0.0).unwrap()).unwrap();
    assert!(max_abs_diff(&half, &expected) < 1e-6);
    let bf16 = scale_noise(0.5, &sample.to_dtype(DType::BF16).unwrap(), &noise).unwrap();
    assert_eq!(bf16.dtype(), DType::BF16);
}
