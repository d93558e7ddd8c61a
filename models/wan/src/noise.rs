//! Seeded Gaussian noise drawn on the CPU, so a segment's seed gives the same clip on every device and every run.

use candle_core::{Device, Tensor};

use crate::error::Result;

/// Standard normal noise from a seed, drawn on the CPU so every device gets the same clip.
pub fn gaussian(seed: u64, shape: &[usize], device: &Device) -> Result<Tensor> {
    let count: usize = shape.iter().product();
    // SplitMix64 → uniform → Box–Muller: deterministic, portable, no extra dependency.
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let mut values = Vec::with_capacity(count + 1);
    while values.len() < count {
        let (u, v) = (next(), next());
        let radius = (-2.0 * u.ln()).sqrt();
        let angle = std::f64::consts::TAU * v;
        values.push((radius * angle.cos()) as f32);
        values.push((radius * angle.sin()) as f32);
    }
    values.truncate(count);
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?.to_device(device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_noise_is_standard_normal_and_repeatable() {
        let a = gaussian(7, &[1, 16, 3, 8, 8], &Device::Cpu).unwrap();
        let b = gaussian(7, &[1, 16, 3, 8, 8], &Device::Cpu).unwrap();
        let c = gaussian(8, &[1, 16, 3, 8, 8], &Device::Cpu).unwrap();
        let values = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values, b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        assert_ne!(values, c.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = values
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(
            mean.abs() < 0.05 && (var - 1.0).abs() < 0.08,
            "mean {mean} var {var}"
        );
    }
}
