//! Wan's 3-axis rotary position embedding: the head dimension split into time, height and width parts, each rotated by its token's post-patch position.
//!
//! For head dim d the split is t = d − 2·2⌊d/6⌋, h = w = 2⌊d/6⌋ (44/42/42 for d = 128).
//! Axis part of n features rotates n/2 interleaved pairs (x[2i], x[2i+1]) by p·θ^(−2i/n),
//! θ = 10000, with the angles computed in f64 and the cos/sin kept in f32, as the reference
//! builds its tables. Only self-attention rotates q and k.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

const THETA: f64 = 10_000.0;

/// The (t, h, w) sizes of the head-dimension split.
pub fn axis_dims(head_dim: usize) -> [usize; 3] {
    let hw = 2 * (head_dim / 6);
    [head_dim - 2 * hw, hw, hw]
}

/// cos and sin per token and rotated pair, `[frames·height·width, head_dim/2]` each, for a
/// post-patch grid, in the token order of the flattened patches ((f·H + h)·W + w).
pub fn tables(head_dim: usize, grid: [usize; 3], device: &Device) -> Result<(Tensor, Tensor)> {
    let dims = axis_dims(head_dim);
    let [frames, height, width] = grid;
    let pairs = head_dim / 2;
    let tokens = frames * height * width;
    let mut cos = Vec::with_capacity(tokens * pairs);
    let mut sin = Vec::with_capacity(tokens * pairs);
    for f in 0..frames {
        for h in 0..height {
            for w in 0..width {
                for (axis, position) in [f, h, w].into_iter().enumerate() {
                    let n = dims[axis];
                    for i in 0..n / 2 {
                        let inv_freq = 1.0 / THETA.powf((2 * i) as f64 / n as f64);
                        let angle = position as f64 * inv_freq;
                        cos.push(angle.cos() as f32);
                        sin.push(angle.sin() as f32);
                    }
                }
            }
        }
    }
    let cos = Tensor::from_vec(cos, (tokens, pairs), device)?;
    let sin = Tensor::from_vec(sin, (tokens, pairs), device)?;
    Ok((cos, sin))
}

/// Rotates `x` `[B, heads, tokens, head_dim]` pairwise; the math runs in f32 and the result
/// comes back in `x`'s dtype.
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?.contiguous()?;
    Ok(candle_nn::rotary_emb::rope_i(&x, cos, sin)?.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_dimension_splits_as_the_reference_does() {
        assert_eq!(axis_dims(128), [44, 42, 42]);
        assert_eq!(axis_dims(12), [4, 4, 4]);
        assert_eq!(axis_dims(64), [24, 20, 20]);
    }

    #[test]
    fn rotation_matches_the_complex_product_per_pair() {
        let device = Device::Cpu;
        let head_dim = 12;
        let (cos, sin) = tables(head_dim, [2, 3, 2], &device).unwrap();
        let tokens = 12;
        let values: Vec<f32> = (0..tokens * head_dim)
            .map(|i| ((i * 37 % 11) as f32) - 5.0)
            .collect();
        let x = Tensor::from_vec(values.clone(), (1, 1, tokens, head_dim), &device).unwrap();
        let rotated = apply(&x, &cos, &sin)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let dims = axis_dims(head_dim);
        for token in 0..tokens {
            let position = [token / 6, token / 2 % 3, token % 2];
            let mut pair = 0;
            for (axis, n) in dims.into_iter().enumerate() {
                for i in 0..n / 2 {
                    let angle = position[axis] as f64 / THETA.powf((2 * i) as f64 / n as f64);
                    let (a, b) = (
                        values[token * head_dim + 2 * pair],
                        values[token * head_dim + 2 * pair + 1],
                    );
                    let (c, s) = (angle.cos() as f32, angle.sin() as f32);
                    let got = (
                        rotated[token * head_dim + 2 * pair],
                        rotated[token * head_dim + 2 * pair + 1],
                    );
                    assert!(
                        (got.0 - (a * c - b * s)).abs() < 1e-5,
                        "token {token} pair {pair}"
                    );
                    assert!(
                        (got.1 - (a * s + b * c)).abs() < 1e-5,
                        "token {token} pair {pair}"
                    );
                    pair += 1;
                }
            }
        }
    }
}
