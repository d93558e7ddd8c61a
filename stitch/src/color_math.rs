//! The pure colour mathematics the stitch stage will grade with (issue 5): symmetric 3×3
//! matrix functions, the Monge–Kantorovich linear transfer (Pitié & Kokaram 2007), the
//! Reinhard mean/deviation transfer, per-channel histogram (CDF) matching, CIEDE2000 and the
//! 2-Wasserstein distance between Gaussian colour fits. No I/O, no frames: vectors in,
//! vectors out, so each formula is tested on its own.

pub type Vec3 = [f64; 3];
/// Row-major 3×3 matrix.
pub type Mat3 = [f64; 9];

pub const IDENTITY: Mat3 = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];

pub fn mat_mul(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut out = [0.0; 9];
    for row in 0..3 {
        for col in 0..3 {
            out[row * 3 + col] = (0..3).map(|k| a[row * 3 + k] * b[k * 3 + col]).sum();
        }
    }
    out
}

pub fn mat_vec(a: &Mat3, v: &Vec3) -> Vec3 {
    [0, 1, 2].map(|row| (0..3).map(|k| a[row * 3 + k] * v[k]).sum())
}

fn trace(a: &Mat3) -> f64 {
    a[0] + a[4] + a[8]
}

/// Eigen-decomposition of a symmetric matrix by cyclic Jacobi rotations:
/// (eigenvalues, eigenvectors as the columns of a row-major matrix).
pub fn symmetric_eigen(matrix: &Mat3) -> (Vec3, Mat3) {
    let mut a = *matrix;
    let mut vectors = IDENTITY;
    for _sweep in 0..50 {
        let off = a[1] * a[1] + a[2] * a[2] + a[5] * a[5];
        if off < 1e-30 {
            break;
        }
        for (p, q) in [(0usize, 1usize), (0, 2), (1, 2)] {
            let apq = a[p * 3 + q];
            if apq.abs() < 1e-300 {
                continue;
            }
            let theta = (a[q * 3 + q] - a[p * 3 + p]) / (2.0 * apq);
            let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
            let t = if theta == 0.0 { 1.0 } else { t };
            let c = 1.0 / (t * t + 1.0).sqrt();
            let s = t * c;
            // a ← Jᵀ a J with the rotation J in the (p, q) plane.
            for k in 0..3 {
                let akp = a[k * 3 + p];
                let akq = a[k * 3 + q];
                a[k * 3 + p] = c * akp - s * akq;
                a[k * 3 + q] = s * akp + c * akq;
            }
            for k in 0..3 {
                let apk = a[p * 3 + k];
                let aqk = a[q * 3 + k];
                a[p * 3 + k] = c * apk - s * aqk;
                a[q * 3 + k] = s * apk + c * aqk;
            }
            for k in 0..3 {
                let vkp = vectors[k * 3 + p];
                let vkq = vectors[k * 3 + q];
                vectors[k * 3 + p] = c * vkp - s * vkq;
                vectors[k * 3 + q] = s * vkp + c * vkq;
            }
        }
    }
    ([a[0], a[4], a[8]], vectors)
}

/// f(A) = V f(Λ) Vᵀ for a symmetric A; eigenvalues are clamped to `floor` first, so a
/// degenerate (flat-colour) covariance stays invertible.
pub fn symmetric_function(matrix: &Mat3, floor: f64, f: impl Fn(f64) -> f64) -> Mat3 {
    let (values, vectors) = symmetric_eigen(matrix);
    let mapped = values.map(|value| f(value.max(floor)));
    let mut out = [0.0; 9];
    for row in 0..3 {
        for col in 0..3 {
            out[row * 3 + col] = (0..3)
                .map(|k| vectors[row * 3 + k] * mapped[k] * vectors[col * 3 + k])
                .sum();
        }
    }
    out
}

/// Smallest eigenvalue kept when taking roots: (0.05 Lab units)² of spread.
const COVARIANCE_FLOOR: f64 = 2.5e-3;

/// The linear Monge–Kantorovich map from a source Gaussian to a reference one:
/// T = Σs^-½ (Σs^½ Σr Σs^½)^½ Σs^-½, applied as x' = T(x − μs) + μr.
pub fn mkl_transform(source_covariance: &Mat3, reference_covariance: &Mat3) -> Mat3 {
    let source_root = symmetric_function(source_covariance, COVARIANCE_FLOOR, f64::sqrt);
    let source_inverse_root =
        symmetric_function(source_covariance, COVARIANCE_FLOOR, |v| 1.0 / v.sqrt());
    let middle = mat_mul(&mat_mul(&source_root, reference_covariance), &source_root);
    let middle_root = symmetric_function(&middle, 0.0, f64::sqrt);
    mat_mul(
        &mat_mul(&source_inverse_root, &middle_root),
        &source_inverse_root,
    )
}

/// A colour correction of the form x' = M (x − from) + to, in Lab.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AffineTransfer {
    pub matrix: Mat3,
    pub from: Vec3,
    pub to: Vec3,
}

impl AffineTransfer {
    pub const IDENTITY: AffineTransfer = AffineTransfer {
        matrix: IDENTITY,
        from: [0.0; 3],
        to: [0.0; 3],
    };

    pub fn apply(&self, lab: &Vec3) -> Vec3 {
        let centred = [0, 1, 2].map(|i| lab[i] - self.from[i]);
        let moved = mat_vec(&self.matrix, &centred);
        [0, 1, 2].map(|i| moved[i] + self.to[i])
    }

    /// The correction scaled by `weight` in [0, 1]: 0 is no change, 1 the full transfer.
    /// Used to ease a continuity correction out over a segment.
    pub fn eased(&self, weight: f64) -> AffineTransfer {
        let w = weight.clamp(0.0, 1.0);
        let matrix: Mat3 =
            std::array::from_fn(|i| IDENTITY[i] + w * (self.matrix[i] - IDENTITY[i]));
        let to = [0, 1, 2].map(|i| self.from[i] + w * (self.to[i] - self.from[i]));
        AffineTransfer {
            matrix,
            from: self.from,
            to,
        }
    }
}

pub fn mkl(
    source_mean: Vec3,
    source_cov: &Mat3,
    reference_mean: Vec3,
    reference_cov: &Mat3,
) -> AffineTransfer {
    AffineTransfer {
        matrix: mkl_transform(source_cov, reference_cov),
        from: source_mean,
        to: reference_mean,
    }
}

/// Reinhard et al. (2001): per-channel mean and standard deviation transfer (here in Lab,
/// whose channels are decorrelated enough for the purpose).
pub fn reinhard(
    source_mean: Vec3,
    source_cov: &Mat3,
    reference_mean: Vec3,
    reference_cov: &Mat3,
) -> AffineTransfer {
    let mut matrix = [0.0; 9];
    for channel in 0..3 {
        let source = source_cov[channel * 4].max(COVARIANCE_FLOOR).sqrt();
        let reference = reference_cov[channel * 4].max(0.0).sqrt();
        matrix[channel * 4] = reference / source;
    }
    AffineTransfer {
        matrix,
        from: source_mean,
        to: reference_mean,
    }
}

/// Per-channel histogram matching as a lookup table: for 256 bins of the source channel,
/// the reference value at the same cumulative fraction. `source` and `reference` are bin
/// counts; the result maps a source bin to a (fractional) reference bin.
pub fn histogram_match_table(source: &[u64; 256], reference: &[u64; 256]) -> [f64; 256] {
    let cdf = |histogram: &[u64; 256]| -> [f64; 256] {
        let total = histogram.iter().sum::<u64>().max(1) as f64;
        let mut running = 0u64;
        histogram.map(|count| {
            running += count;
            running as f64 / total
        })
    };
    let (source_cdf, reference_cdf) = (cdf(source), cdf(reference));
    let mut table = [0.0; 256];
    for (bin, slot) in table.iter_mut().enumerate() {
        // The centre of the source bin's probability mass.
        let below = if bin == 0 { 0.0 } else { source_cdf[bin - 1] };
        let target = (below + source_cdf[bin]) / 2.0;
        let position = reference_cdf
            .partition_point(|&value| value < target)
            .min(255);
        let previous = if position == 0 {
            0.0
        } else {
            reference_cdf[position - 1]
        };
        let width = reference_cdf[position] - previous;
        let fraction = if width > 0.0 {
            ((target - previous) / width).clamp(0.0, 1.0)
        } else {
            0.5
        };
        *slot = position as f64 - 0.5 + fraction;
        *slot = slot.clamp(0.0, 255.0);
    }
    table
}

/// CIEDE2000 colour difference between two Lab colours (Sharma, Wu & Dalal 2005).
pub fn ciede2000(first: &Vec3, second: &Vec3) -> f64 {
    let (l1, a1, b1) = (first[0], first[1], first[2]);
    let (l2, a2, b2) = (second[0], second[1], second[2]);
    let c1 = a1.hypot(b1);
    let c2 = a2.hypot(b2);
    let c_mean = (c1 + c2) / 2.0;
    let c7 = c_mean.powi(7);
    let g = 0.5 * (1.0 - (c7 / (c7 + 25f64.powi(7))).sqrt());
    let a1p = (1.0 + g) * a1;
    let a2p = (1.0 + g) * a2;
    let c1p = a1p.hypot(b1);
    let c2p = a2p.hypot(b2);
    let hue = |b: f64, a: f64| {
        if a == 0.0 && b == 0.0 {
            0.0
        } else {
            b.atan2(a).to_degrees().rem_euclid(360.0)
        }
    };
    let h1p = hue(b1, a1p);
    let h2p = hue(b2, a2p);
    let delta_l = l2 - l1;
    let delta_c = c2p - c1p;
    let delta_h_angle = if c1p * c2p == 0.0 {
        0.0
    } else if (h2p - h1p).abs() <= 180.0 {
        h2p - h1p
    } else if h2p - h1p > 180.0 {
        h2p - h1p - 360.0
    } else {
        h2p - h1p + 360.0
    };
    let delta_h = 2.0 * (c1p * c2p).sqrt() * (delta_h_angle.to_radians() / 2.0).sin();
    let l_mean = (l1 + l2) / 2.0;
    let cp_mean = (c1p + c2p) / 2.0;
    let h_mean = if c1p * c2p == 0.0 {
        h1p + h2p
    } else if (h1p - h2p).abs() <= 180.0 {
        (h1p + h2p) / 2.0
    } else if h1p + h2p < 360.0 {
        (h1p + h2p + 360.0) / 2.0
    } else {
        (h1p + h2p - 360.0) / 2.0
    };
    let t = 1.0 - 0.17 * (h_mean - 30.0).to_radians().cos()
        + 0.24 * (2.0 * h_mean).to_radians().cos()
        + 0.32 * (3.0 * h_mean + 6.0).to_radians().cos()
        - 0.20 * (4.0 * h_mean - 63.0).to_radians().cos();
    let delta_theta = 30.0 * (-((h_mean - 275.0) / 25.0).powi(2)).exp();
    let cp7 = cp_mean.powi(7);
    let r_c = 2.0 * (cp7 / (cp7 + 25f64.powi(7))).sqrt();
    let s_l = 1.0 + 0.015 * (l_mean - 50.0).powi(2) / (20.0 + (l_mean - 50.0).powi(2)).sqrt();
    let s_c = 1.0 + 0.045 * cp_mean;
    let s_h = 1.0 + 0.015 * cp_mean * t;
    let r_t = -(2.0 * delta_theta).to_radians().sin() * r_c;
    let (l_term, c_term, h_term) = (delta_l / s_l, delta_c / s_c, delta_h / s_h);
    (l_term * l_term + c_term * c_term + h_term * h_term + r_t * c_term * h_term).sqrt()
}

/// 2-Wasserstein distance between two Gaussians:
/// W2² = |μ1 − μ2|² + tr(Σ1 + Σ2 − 2 (Σ2^½ Σ1 Σ2^½)^½).
pub fn wasserstein2_gaussian(mean1: &Vec3, cov1: &Mat3, mean2: &Vec3, cov2: &Mat3) -> f64 {
    let mean_term: f64 = (0..3).map(|i| (mean1[i] - mean2[i]).powi(2)).sum();
    let root2 = symmetric_function(cov2, 0.0, f64::sqrt);
    let cross = symmetric_function(&mat_mul(&mat_mul(&root2, cov1), &root2), 0.0, f64::sqrt);
    let covariance_term = trace(cov1) + trace(cov2) - 2.0 * trace(&cross);
    (mean_term + covariance_term.max(0.0)).sqrt()
}

#[cfg(test)]
#[path = "color_math_tests.rs"]
mod tests;
