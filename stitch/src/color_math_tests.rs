//! Colour-math identities, published reference values, and properties over random inputs.

use proptest::prelude::*;

use super::*;

fn close(a: f64, b: f64, tolerance: f64) -> bool {
    (a - b).abs() <= tolerance * (1.0 + a.abs().max(b.abs()))
}

fn transpose(a: &Mat3) -> Mat3 {
    std::array::from_fn(|i| a[(i % 3) * 3 + i / 3])
}

/// A random symmetric positive-definite matrix: B Bᵀ + εI.
fn spd() -> impl Strategy<Value = Mat3> {
    proptest::array::uniform9(-20.0f64..20.0).prop_map(|b| {
        let mut m = mat_mul(&b, &transpose(&b));
        for i in 0..3 {
            m[i * 4] += 0.5;
        }
        m
    })
}

proptest! {
    #[test]
    fn eigen_decomposition_reconstructs_the_matrix(a in spd()) {
        let rebuilt = symmetric_function(&a, f64::MIN, |v| v);
        for i in 0..9 {
            prop_assert!(close(rebuilt[i], a[i], 1e-9), "{rebuilt:?} vs {a:?}");
        }
        let root = symmetric_function(&a, 0.0, f64::sqrt);
        let squared = mat_mul(&root, &root);
        for i in 0..9 {
            prop_assert!(close(squared[i], a[i], 1e-8));
        }
    }

    /// The defining property of the Monge–Kantorovich map: it carries the source covariance
    /// onto the reference covariance, T Σs Tᵀ = Σr, and T is symmetric.
    #[test]
    fn mkl_carries_the_source_covariance_onto_the_reference(source in spd(), reference in spd()) {
        let t = mkl_transform(&source, &reference);
        let carried = mat_mul(&mat_mul(&t, &source), &transpose(&t));
        for i in 0..9 {
            prop_assert!(close(carried[i], reference[i], 1e-6), "{carried:?} vs {reference:?}");
            prop_assert!(close(t[i], transpose(&t)[i], 1e-9));
        }
    }

    #[test]
    fn easing_goes_from_no_change_to_the_full_transfer(source in spd(), reference in spd(), x in proptest::array::uniform3(-50.0f64..50.0)) {
        let transfer = mkl([50.0, 1.0, -3.0], &source, [40.0, -2.0, 5.0], &reference);
        let none = transfer.eased(0.0).apply(&x);
        let full = transfer.eased(1.0).apply(&x);
        let exact = transfer.apply(&x);
        for i in 0..3 {
            prop_assert!(close(none[i], x[i], 1e-12));
            prop_assert!(close(full[i], exact[i], 1e-12));
        }
    }

    #[test]
    fn ciede2000_is_symmetric_and_zero_only_for_equal_colours(
        a in proptest::array::uniform3(-100.0f64..100.0),
        b in proptest::array::uniform3(-100.0f64..100.0),
    ) {
        let (a, b) = ([a[0].abs(), a[1], a[2]], [b[0].abs(), b[1], b[2]]);
        prop_assert!(close(ciede2000(&a, &b), ciede2000(&b, &a), 1e-9));
        prop_assert!(ciede2000(&a, &a) < 1e-9);
        if a != b {
            prop_assert!(ciede2000(&a, &b) > 0.0);
        }
    }

    #[test]
    fn w2_is_zero_for_equal_gaussians_and_the_mean_distance_for_equal_spreads(cov in spd(), shift in proptest::array::uniform3(-30.0f64..30.0)) {
        let mean = [50.0, 0.0, 0.0];
        prop_assert!(wasserstein2_gaussian(&mean, &cov, &mean, &cov) < 1e-4);
        let moved = [0, 1, 2].map(|i| mean[i] + shift[i]);
        let distance = (shift.iter().map(|s| s * s).sum::<f64>()).sqrt();
        prop_assert!(close(wasserstein2_gaussian(&mean, &cov, &moved, &cov), distance, 1e-4));
    }
}

/// Reference pairs from Sharma, Wu & Dalal (2005), Table 1.
#[test]
fn ciede2000_matches_the_published_test_data() {
    let pairs = [
        ([50.0, 2.6772, -79.7751], [50.0, 0.0, -82.7485], 2.0425),
        ([50.0, 0.0, 0.0], [50.0, -1.0, 2.0], 2.3669),
        ([50.0, 2.5, 0.0], [73.0, 25.0, -18.0], 27.1492),
        (
            [60.2574, -34.0099, 36.2677],
            [60.4626, -34.1751, 39.4387],
            1.2644,
        ),
        (
            [22.7233, 20.0904, -46.6940],
            [23.0331, 14.9730, -42.5619],
            2.0373,
        ),
        (
            [2.0776, 0.0795, -1.1350],
            [0.9033, -0.0636, -0.5514],
            0.9082,
        ),
    ];
    for (first, second, expected) in pairs {
        let got = ciede2000(&first, &second);
        assert!(
            (got - expected).abs() < 1e-4,
            "{first:?} {second:?}: {got} vs {expected}"
        );
    }
}

#[test]
fn w2_of_diagonal_gaussians_is_the_spread_difference() {
    let diag = |s: [f64; 3]| {
        [
            s[0] * s[0],
            0.0,
            0.0,
            0.0,
            s[1] * s[1],
            0.0,
            0.0,
            0.0,
            s[2] * s[2],
        ]
    };
    let got = wasserstein2_gaussian(
        &[0.0; 3],
        &diag([1.0, 2.0, 3.0]),
        &[0.0; 3],
        &diag([2.0, 2.0, 1.0]),
    );
    assert!(close(got, (1.0f64 + 0.0 + 4.0).sqrt(), 1e-9), "{got}");
}

#[test]
fn reinhard_matches_mean_and_deviation_per_channel() {
    let source = [4.0, 0.0, 0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 1.0];
    let reference = [16.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 4.0];
    let transfer = reinhard([50.0, 0.0, 0.0], &source, [60.0, 5.0, -5.0], &reference);
    assert_eq!(transfer.apply(&[50.0, 0.0, 0.0]), [60.0, 5.0, -5.0]);
    // One source deviation maps to one reference deviation.
    let moved = transfer.apply(&[52.0, 3.0, 1.0]);
    assert!(
        close(moved[0], 64.0, 1e-12) && close(moved[1], 6.0, 1e-12) && close(moved[2], -3.0, 1e-12),
        "{moved:?}"
    );
}

#[test]
fn histogram_matching_to_itself_is_the_identity_and_follows_a_shift() {
    let mut source = [0u64; 256];
    for (bin, count) in source.iter_mut().enumerate().take(200).skip(40) {
        *count = 1 + (bin as u64 % 7);
    }
    let same = histogram_match_table(&source, &source);
    for (bin, mapped) in same.iter().enumerate().take(200).skip(40) {
        assert!((mapped - bin as f64).abs() <= 1.0, "bin {bin} → {mapped}");
    }
    let mut shifted = [0u64; 256];
    shifted[70..230].copy_from_slice(&source[40..200]);
    let table = histogram_match_table(&source, &shifted);
    for (bin, mapped) in table.iter().enumerate().take(200).skip(40) {
        assert!(
            (mapped - (bin + 30) as f64).abs() <= 1.0,
            "bin {bin} → {mapped}"
        );
    }
    assert!(
        table.windows(2).all(|pair| pair[0] <= pair[1]),
        "the table must be monotone"
    );
}
