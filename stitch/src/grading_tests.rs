//! The grade of each segment is fitted to the right target, and the offset table applies it
//! to pixels as the exact colour transform would.

use proptest::prelude::*;

use super::*;
use crate::color::srgb_to_lab;
use crate::color_math::ciede2000;

/// Lab samples of a smooth palette (a gradient of blues and greens) under an RGB gain.
fn palette(gain: [f64; 3]) -> Vec<Vec3> {
    let mut samples = Vec::new();
    for i in 0..24 {
        for j in 0..24 {
            let base = [
                40.0 + 4.0 * i as f64,
                80.0 + 3.0 * j as f64,
                200.0 - 2.0 * i as f64,
            ];
            let rgb: [u8; 3] =
                std::array::from_fn(|c| (base[c] * gain[c]).round().clamp(0.0, 255.0) as u8);
            samples.push(srgb_to_lab(rgb));
        }
    }
    samples
}

fn mean_lab(samples: &[Vec3]) -> Vec3 {
    crate::color::LabStats::of(samples).mean
}

#[test]
fn every_method_moves_an_offset_palette_onto_its_reference() {
    let reference = palette([1.0, 1.0, 1.0]);
    let source = palette([0.75, 0.8, 0.95]);
    let before = ciede2000(&mean_lab(&source), &mean_lab(&reference));
    assert!(before > 5.0, "the offset is visible: {before}");
    for method in [
        ColorMatch::Hm,
        ColorMatch::Reinhard,
        ColorMatch::Mkl,
        ColorMatch::HmMklHm,
    ] {
        let transfer = fit(method, &source, &reference);
        let after = ciede2000(
            &mean_lab(&transfer.apply_all(&source)),
            &mean_lab(&reference),
        );
        assert!(after < 1.0, "{}: {before:.2} -> {after:.2}", method.name());
    }
    assert!(fit(ColorMatch::Off, &source, &reference).is_identity());
    assert!(fit(ColorMatch::Mkl, &[], &reference).is_identity());
}

#[test]
fn the_join_weight_eases_from_one_to_zero_without_steps() {
    assert_eq!(join_weight(0, 48), 1.0);
    assert_eq!(join_weight(47, 48), 0.0);
    assert_eq!(join_weight(0, 1), 1.0);
    let weights: Vec<f64> = (0..48).map(|i| join_weight(i, 48)).collect();
    assert!(weights.windows(2).all(|pair| pair[1] <= pair[0]));
    // Smoothstep: the largest step is 1.5 / (n - 1), far from a jump.
    assert!(
        weights
            .windows(2)
            .all(|pair| pair[0] - pair[1] <= 1.5 / 47.0 + 1e-9)
    );
}

fn color(
    scene: &str,
    reference: bool,
    continues: bool,
    gain: [f64; 3],
    end_gain: [f64; 3],
) -> SegmentColor {
    SegmentColor {
        scene: scene.into(),
        grade_reference: reference,
        continues_previous: continues,
        first_frame: palette(gain),
        last_frame: palette(end_gain),
        whole: palette(gain.map(|g| g * 0.98)),
    }
}

#[test]
fn grades_follow_scenes_references_and_continuity() {
    let segments = vec![
        color("coast", true, false, [1.0; 3], [1.0; 3]),
        color("coast", false, false, [0.7, 0.8, 0.9], [0.7, 0.8, 0.9]),
        color("coast", false, true, [0.6, 0.7, 0.8], [0.6, 0.7, 0.8]),
        color("night", false, false, [0.3, 0.3, 0.6], [0.3, 0.3, 0.6]),
    ];
    let grades = plan_grades(ColorMatch::Mkl, &segments);
    assert!(grades[0].is_identity(), "the reference keeps its look");
    assert!(
        !grades[1].base.is_identity() && grades[1].join.is_identity(),
        "a cut gets no join fix"
    );
    assert!(
        !grades[2].join.is_identity(),
        "a continuation gets a join fix"
    );
    // The night scene has no marked reference: its first segment sets its look.
    let night_after = mean_lab(&grades[3].base.apply_all(&segments[3].whole));
    assert!(
        ciede2000(&night_after, &mean_lab(&segments[3].whole)) < 0.5,
        "not pulled to the coast"
    );
    // The continuation's start, after its full join fix, lands on the graded end before it.
    let previous_end = grades[1].base.apply_all(&segments[1].last_frame);
    let start = grades[2]
        .join
        .apply_all(&grades[2].base.apply_all(&segments[2].first_frame));
    assert!(ciede2000(&mean_lab(&start), &mean_lab(&previous_end)) < 0.5);
    assert!(
        plan_grades(ColorMatch::Off, &segments)
            .iter()
            .all(SegmentGrade::is_identity)
    );
}

#[test]
fn an_identity_table_leaves_frames_untouched() {
    let mut table = GradeTable::new(&SegmentGrade::NONE);
    let mut frame = RgbFrame::new(3, 1, vec![0, 10, 20, 128, 128, 128, 250, 255, 7]);
    let original = frame.clone();
    table.apply(&mut frame, 1.0);
    assert_eq!(frame, original);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// The 6-bit offset table agrees with the exact Lab transform everywhere (nearest
    /// bucket of a smooth offset).
    #[test]
    fn the_table_applies_the_exact_transform(
        gain in prop::array::uniform3(0.6f64..1.4),
        weight in 0.0f64..1.0,
        pixels in prop::collection::vec(prop::array::uniform3(any::<u8>()), 1..64),
    ) {
        let source = palette(gain);
        let reference = palette([1.0; 3]);
        let grade = SegmentGrade {
            base: fit(ColorMatch::Mkl, &source, &reference),
            join: fit(ColorMatch::Reinhard, &reference, &palette([1.05, 1.0, 0.95])),
        };
        let mut table = GradeTable::new(&grade);
        let data: Vec<u8> = pixels.iter().flatten().copied().collect();
        let mut frame = RgbFrame::new(pixels.len() as u32, 1, data);
        table.apply(&mut frame, weight);
        let step = (weight * 64.0).round() / 64.0;
        for (pixel, graded) in pixels.iter().zip(frame.data.chunks_exact(3)) {
            let rgb = pixel.map(|c| f64::from(c) / 255.0);
            let lab = srgb_unit_to_lab(rgb);
            let base = lab_to_srgb_unit(grade.base.apply(lab));
            let joined = lab_to_srgb_unit(grade.join.apply(grade.base.apply(lab)));
            let exact: [f64; 3] = std::array::from_fn(|c| base[c] + step * (joined[c] - base[c]));
            let table = srgb_to_lab([graded[0], graded[1], graded[2]]);
            let difference = ciede2000(&table, &srgb_unit_to_lab(exact));
            // Under 2 ΔE00 (the bar the stitch tests set for "matched"); the loosest cases are
            // colours the grade pushes against the gamut, where the exact result clips.
            prop_assert!(
                difference <= 2.0,
                "{pixel:?}: table {graded:?} exact {:?} (ΔE00 {difference:.2})",
                exact.map(|c| (c * 255.0 * 10.0).round() / 10.0)
            );
        }
    }
}
