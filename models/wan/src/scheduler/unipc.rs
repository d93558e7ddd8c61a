//! UniPC as diffusers' `UniPCMultistepScheduler` runs it for Wan (flow sigmas, data prediction, B(h) variants): the scalars of each predictor and corrector update in float32 like diffusers' 0-dim tensors, kept apart from the tensor layer so they can be checked as numbers, and the multistep sampler that applies them and keeps the history.
//!
//! Notation (flow sigmas): `α(σ) = 1 − σ`, `λ(σ) = ln α − ln σ`, `m_k` the x0 predictions of
//! earlier steps. An update from anchor sigma `σ_s0` (where `m0` was predicted) to target `σ_t`:
//! `x_t = (σ_t/σ_s0)·x − α_t·(e^{−h} − 1)·m0 − α_t·B(h)·Σ ρ_k·D_k` with `h = λ_t − λ_s0`,
//! `D_k = (m_k − m0)/r_k`, `r_k = (λ(σ_k) − λ_s0)/h`. The predictor (UniP) moves the current
//! sample to the next sigma; the corrector (UniC) redoes the previous step once the model output
//! at its end is known, and adds that output's term with the last ρ.

use std::collections::VecDeque;

use candle_core::{DType, Device, Tensor};

use super::config::{SolverType, UniPcConfig};
use super::schedule::{Schedule, unipc_schedule};
use super::{Sampler, check_step, scale_like_torch};
use crate::error::{Result, WanError};

/// The scalars of one update (float32).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Coefficients {
    /// `σ_t / σ_s0`, the factor on the starting sample.
    pub sample: f32,
    /// `α_t · (e^{−h} − 1)`, subtracted times `m0`.
    pub x0: f32,
    /// `α_t · B(h)`, subtracted times the weighted differences.
    pub residual: f32,
    /// `r_k` of each earlier prediction, newest first.
    pub ratios: Vec<f32>,
    /// The predictor's ρ (one per earlier prediction) or the corrector's (one more, last, for
    /// the new model output).
    pub rhos: Vec<f32>,
}

/// `λ(σ) = ln(1 − σ) − ln σ` (float32, like `torch.log` on 0-dim tensors).
pub(crate) fn lambda(sigma: f32) -> f32 {
    (1.0 - sigma).ln() - sigma.ln()
}

/// diffusers' `multistep_uni_{p,c}_bh_update` scalars. `anchor`, `target` and `history` index
/// `sigmas`; `history` gives the steps of the earlier predictions `m_1, m_2, …` (newest first),
/// so the order of the update is `history.len() + 1`.
pub(crate) fn coefficients(
    sigmas: &[f32],
    anchor: usize,
    target: usize,
    history: &[usize],
    solver: SolverType,
    corrector: bool,
) -> Coefficients {
    let order = history.len() + 1;
    let (sigma_t, sigma_s0) = (sigmas[target], sigmas[anchor]);
    let alpha_t = 1.0 - sigma_t;
    let lambda_s0 = lambda(sigma_s0);
    let h = lambda(sigma_t) - lambda_s0;
    let ratios: Vec<f32> = history
        .iter()
        .map(|&k| (lambda(sigmas[k]) - lambda_s0) / h)
        .collect();
    let hh = -h;
    let h_phi_1 = hh.exp_m1();
    let b_h = match solver {
        SolverType::Bh1 => hh,
        SolverType::Bh2 => hh.exp_m1(),
    };
    let rhos = if corrector && order == 1 {
        vec![0.5]
    } else if !corrector && order == 1 {
        Vec::new()
    } else if !corrector && order == 2 {
        // diffusers hard-codes the order-2 predictor.
        vec![0.5]
    } else {
        // R[i][j] = rks[j]^i with rks = [r_1 … r_{p−1}, 1]; b_i = φ_{i+1}(h)·(i+1)!/B(h).
        let mut rks = ratios.clone();
        rks.push(1.0);
        let mut b = Vec::with_capacity(order);
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial: u64 = 1;
        for i in 1..=order {
            b.push(h_phi_k * factorial as f32 / b_h);
            factorial *= i as u64 + 1;
            h_phi_k = h_phi_k / hh - (1.0 / factorial as f64) as f32;
        }
        let size = if corrector { order } else { order - 1 };
        let matrix: Vec<Vec<f32>> = (0..size)
            .map(|i| rks[..size].iter().map(|&r| power(r, i)).collect())
            .collect();
        solve(matrix, b[..size].to_vec())
    };
    Coefficients {
        sample: sigma_t / sigma_s0,
        x0: alpha_t * h_phi_1,
        residual: alpha_t * b_h,
        ratios,
        rhos,
    }
}

fn power(base: f32, exponent: usize) -> f32 {
    match exponent {
        0 => 1.0,
        _ => (1..exponent).fold(base, |product, _| product * base),
    }
}

/// `torch.linalg.solve` for the small float32 systems above: LU with partial pivoting (the
/// multipliers by the pivot's reciprocal, as LAPACK's `sgetrf2`), then the two triangular solves.
pub(crate) fn solve(mut a: Vec<Vec<f32>>, mut b: Vec<f32>) -> Vec<f32> {
    let n = b.len();
    for column in 0..n {
        let pivot = (column..n)
            .reduce(|best, row| {
                if a[row][column].abs() > a[best][column].abs() {
                    row
                } else {
                    best
                }
            })
            .unwrap_or(column);
        a.swap(column, pivot);
        b.swap(column, pivot);
        let reciprocal = 1.0 / a[column][column];
        let (above, below) = a.split_at_mut(column + 1);
        let pivot_row = &above[column][column + 1..];
        let pivot_b = b[column];
        for (row, b_row) in below.iter_mut().zip(&mut b[column + 1..]) {
            let factor = row[column] * reciprocal;
            for (entry, &upper) in row[column + 1..].iter_mut().zip(pivot_row) {
                *entry -= factor * upper;
            }
            *b_row -= factor * pivot_b;
        }
    }
    for row in (0..n).rev() {
        let mut value = b[row];
        for k in row + 1..n {
            value -= a[row][k] * b[k];
        }
        b[row] = value / a[row][row];
    }
    b
}

/// The multistep UniPC sampler over one schedule. Steps must come in order (the first call may
/// start at any step, as diffusers' `set_begin_index` allows); [`Sampler::reset`] starts over.
pub struct UniPcSampler {
    config: UniPcConfig,
    schedule: Schedule,
    sigmas: Vec<f32>,
    /// The x0 predictions of the last `solver_order` steps, oldest first (diffusers'
    /// `model_outputs`), float32.
    history: VecDeque<Tensor>,
    /// The (corrected) sample the last predictor started from, float32.
    last_sample: Option<Tensor>,
    lower_order_nums: usize,
    this_order: usize,
    next_step: Option<usize>,
}

impl UniPcSampler {
    pub fn new(config: UniPcConfig, num_inference_steps: usize) -> Result<Self> {
        config.validate().map_err(WanError::InvalidRequest)?;
        if num_inference_steps == 0 {
            return Err(WanError::InvalidRequest(
                "num_inference_steps must be at least 1".into(),
            ));
        }
        let schedule = unipc_schedule(&config, num_inference_steps);
        let sigmas = schedule.sigmas.iter().map(|&sigma| sigma as f32).collect();
        Ok(UniPcSampler {
            config,
            schedule,
            sigmas,
            history: VecDeque::new(),
            last_sample: None,
            lower_order_nums: 0,
            this_order: 0,
            next_step: None,
        })
    }

    /// The earlier predictions `m_1 … m_{order−1}` behind the newest one, newest first.
    fn earlier(&self, order: usize) -> Result<Vec<&Tensor>> {
        (1..order)
            .map(|k| {
                self.history
                    .len()
                    .checked_sub(k + 1)
                    .and_then(|index| self.history.get(index))
                    .ok_or_else(|| {
                        WanError::InvalidRequest(format!("UniPC: no x0 prediction {k} steps back"))
                    })
            })
            .collect()
    }

    /// UniC: redo the update from step − 1 to step now that the model output at step is known.
    /// Runs before this step's prediction joins the history, so `m0` is step − 1's.
    fn correct(
        &self,
        step: usize,
        model_t: &Tensor,
        last_sample: &Tensor,
        order: usize,
    ) -> Result<Tensor> {
        let m0 = self.newest()?;
        let history: Vec<usize> = (1..order).map(|k| step - 1 - k).collect();
        let c = coefficients(
            &self.sigmas,
            step - 1,
            step,
            &history,
            self.config.solver_type,
            true,
        );
        let linear =
            (last_sample.affine(f64::from(c.sample), 0.0)? - m0.affine(f64::from(c.x0), 0.0)?)?;
        let device = last_sample.device();
        let residual = self.weighted_differences(order, m0, &c, device)?;
        let new = (model_t - m0)?.affine(f64::from(c.rhos[order - 1]), 0.0)?;
        let residual = match residual {
            None => new,
            Some(sum) => (sum + new)?,
        };
        Ok((linear - residual.affine(f64::from(c.residual), 0.0)?)?)
    }

    /// UniP: from `sample` at step to step + 1, with this step's prediction already the newest.
    fn predict(&self, step: usize, sample: &Tensor, order: usize) -> Result<Tensor> {
        let m0 = self.newest()?;
        if self.sigmas[step + 1] == 0.0 {
            // λ_t = +∞: e^{−h} − 1 = B(h) = −1 and σ_t/σ_s0 = 0, so diffusers' order-1 update
            // is exactly m0 (a higher order would divide by r = 0): the last step returns x0.
            return Ok(m0.clone());
        }
        let history: Vec<usize> = (1..order).map(|k| step - k).collect();
        let c = coefficients(
            &self.sigmas,
            step,
            step + 1,
            &history,
            self.config.solver_type,
            false,
        );
        let linear =
            (sample.affine(f64::from(c.sample), 0.0)? - m0.affine(f64::from(c.x0), 0.0)?)?;
        let device = sample.device();
        let residual = self.weighted_differences(order, m0, &c, device)?;
        match residual {
            None => Ok(linear),
            Some(residual) => Ok((linear - residual.affine(f64::from(c.residual), 0.0)?)?),
        }
    }

    /// Σ_k ρ_k·D_k over the earlier predictions (none at order 1), summed in order as diffusers.
    fn weighted_differences(
        &self,
        order: usize,
        m0: &Tensor,
        c: &Coefficients,
        device: &Device,
    ) -> Result<Option<Tensor>> {
        let mut sum: Option<Tensor> = None;
        for (k, m_k) in self.earlier(order)?.into_iter().enumerate() {
            let term =
                difference(m_k, m0, c.ratios[k], device)?.affine(f64::from(c.rhos[k]), 0.0)?;
            sum = Some(match sum {
                None => term,
                Some(sum) => (sum + term)?,
            });
        }
        Ok(sum)
    }

    fn newest(&self) -> Result<&Tensor> {
        self.history
            .back()
            .ok_or_else(|| WanError::InvalidRequest("UniPC: no x0 prediction yet".into()))
    }
}

/// `D_k = (m_k − m0) / r_k`, divided (not multiplied by the reciprocal) as torch does.
fn difference(m_k: &Tensor, m0: &Tensor, ratio: f32, device: &Device) -> Result<Tensor> {
    let ratio = Tensor::new(ratio, device)?;
    Ok((m_k - m0)?.broadcast_div(&ratio)?)
}

impl Sampler for UniPcSampler {
    fn timesteps(&self) -> &[f64] {
        &self.schedule.timesteps
    }

    fn sigmas(&self) -> &[f64] {
        &self.schedule.sigmas
    }

    fn step(&mut self, model_output: &Tensor, step: usize, sample: &Tensor) -> Result<Tensor> {
        let steps = self.num_inference_steps();
        check_step("UniPC", step, steps, self.next_step)?;
        let sigma = self.sigmas[step];
        // x0 = x − σ·v, the product in the model output's dtype (bf16 in a bf16 run).
        let sample32 = sample.to_dtype(DType::F32)?;
        let x0 = (&sample32 - scale_like_torch(model_output, sigma)?)?;
        let use_corrector = step > 0 && !self.config.disable_corrector.contains(&(step - 1));
        let sample32 = match (&self.last_sample, use_corrector) {
            (Some(last_sample), true) => self.correct(step, &x0, last_sample, self.this_order)?,
            _ => sample32,
        };
        self.history.push_back(x0);
        while self.history.len() > self.config.solver_order {
            self.history.pop_front();
        }
        let order = if self.config.lower_order_final {
            self.config.solver_order.min(steps - step)
        } else {
            self.config.solver_order
        };
        self.this_order = order.min(self.lower_order_nums + 1);
        let next = self.predict(step, &sample32, self.this_order)?;
        self.last_sample = Some(sample32);
        self.lower_order_nums = (self.lower_order_nums + 1).min(self.config.solver_order);
        self.next_step = Some(step + 1);
        Ok(next.to_dtype(sample.dtype())?)
    }

    /// The history (oldest first) then the last sample; counters: how many predictions, whether
    /// a last sample, `lower_order_nums`, `this_order`.
    fn carried(&self) -> (Vec<Tensor>, Vec<u64>) {
        let mut tensors: Vec<Tensor> = self.history.iter().cloned().collect();
        tensors.extend(self.last_sample.iter().cloned());
        let counters = vec![
            self.history.len() as u64,
            u64::from(self.last_sample.is_some()),
            self.lower_order_nums as u64,
            self.this_order as u64,
        ];
        (tensors, counters)
    }

    fn restore(&mut self, tensors: Vec<Tensor>, counters: &[u64], next_step: usize) -> Result<()> {
        let invalid = |why: String| Err(WanError::InvalidRequest(format!("UniPC state: {why}")));
        let [history, has_last, lower, order] = counters else {
            return invalid(format!("{} counters, expected 4", counters.len()));
        };
        let (history, has_last) = (*history as usize, *has_last as usize);
        if history > self.config.solver_order
            || has_last > 1
            || history + has_last != tensors.len()
            || next_step >= self.num_inference_steps()
        {
            return invalid(format!(
                "{history} predictions, {has_last} samples and {} tensors before step {next_step}",
                tensors.len()
            ));
        }
        let mut tensors = tensors.into_iter();
        self.history = tensors.by_ref().take(history).collect();
        self.last_sample = tensors.next();
        self.lower_order_nums = (*lower as usize).min(self.config.solver_order);
        self.this_order = (*order as usize).min(self.config.solver_order);
        self.next_step = Some(next_step);
        Ok(())
    }

    fn reset(&mut self) {
        self.history.clear();
        self.last_sample = None;
        self.lower_order_nums = 0;
        self.this_order = 0;
        self.next_step = None;
    }
}
