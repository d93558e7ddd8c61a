//! Seam metrics on hand-made frames, and the QA verdict on hand-made joins.

use proptest::prelude::*;

use super::*;

fn part(kind: &'static str, shot_index: u32, at_frame: u64) -> MeteredPart {
    MeteredPart {
        segment_id: format!("s{shot_index:03}"),
        shot_index,
        kind,
        at_frame,
        same_scene_as_previous: true,
    }
}

fn flat(lab: Vec3) -> Vec<Vec3> {
    vec![lab; 16]
}

#[test]
fn a_cut_between_two_flat_shots_measures_their_colour_difference() {
    let mut meter = SeamMeter::new(vec![part("cut", 0, 0), part("cut", 1, 2)]);
    for (part, lab) in [
        (0, [50.0, 0.0, 0.0]),
        (0, [50.0, 0.0, 0.0]),
        (1, [60.0, 0.0, 0.0]),
    ] {
        meter.observe(MeteredFrame {
            part,
            blended: false,
            uncorrected: flat(lab),
            corrected: flat([50.0, 0.0, 0.0]),
        });
    }
    let joins = meter.joins();
    assert_eq!(joins.len(), 1);
    let join = &joins[0];
    let expected = ciede2000(&[50.0, 0.0, 0.0], &[60.0, 0.0, 0.0]);
    assert!((join.delta_e00_before - expected).abs() < 1e-9, "{join:?}");
    assert!(join.delta_e00_after.abs() < 1e-9);
    assert!((join.w2_before.unwrap() - 10.0).abs() < 1e-6);
    assert!(join.w2_after.unwrap().abs() < 1e-6);
    assert_eq!(join.within_p95, None);
}

#[test]
fn a_continuity_join_is_compared_with_the_steps_inside_its_segments() {
    let mut meter = SeamMeter::new(vec![part("cut", 0, 0), part("continue", 0, 3)]);
    // Lightness rises by 1 per frame inside each part; the join jumps by 5.
    for (part, lightness) in [(0, 50.0), (0, 51.0), (0, 52.0), (1, 57.0), (1, 58.0)] {
        let lab = flat([lightness, 0.0, 0.0]);
        meter.observe(MeteredFrame {
            part,
            blended: false,
            uncorrected: lab.clone(),
            corrected: lab,
        });
    }
    let join = &meter.joins()[0];
    let step = ciede2000(&[50.0, 0.0, 0.0], &[51.0, 0.0, 0.0]);
    let jump = ciede2000(&[52.0, 0.0, 0.0], &[57.0, 0.0, 0.0]);
    assert!((join.delta_e00_before - jump).abs() < 1e-9);
    assert_eq!(
        join.delta_e00_before, join.delta_e00_after,
        "uncorrected = corrected here"
    );
    assert!((join.within_p95.unwrap() - step).abs() < 0.05, "{join:?}");
    assert!(join.delta_e00_after > join.within_p95.unwrap());
}

#[test]
fn dissolve_frames_do_not_count_towards_a_shots_colour() {
    let mut meter = SeamMeter::new(vec![part("cut", 0, 0), part("cut", 1, 2)]);
    for (part, blended, lab) in [
        (0, false, [50.0, 0.0, 0.0]),
        (0, true, [90.0, 0.0, 0.0]),
        (1, false, [50.0, 0.0, 0.0]),
    ] {
        meter.observe(MeteredFrame {
            part,
            blended,
            uncorrected: flat(lab),
            corrected: flat(lab),
        });
    }
    assert!(meter.joins()[0].delta_e00_before.abs() < 1e-9);
}

#[test]
fn moments_give_the_mean_and_covariance_of_everything_added() {
    let mut moments = Moments::default();
    moments.add(&[[0.0, 0.0, 0.0], [2.0, 4.0, 0.0]]);
    let stats = moments.stats();
    assert_eq!(stats.mean, [1.0, 2.0, 0.0]);
    assert!((stats.covariance[0] - 1.0).abs() < 1e-12);
    assert!((stats.covariance[1] - 2.0).abs() < 1e-12);
    assert!((stats.covariance[4] - 4.0).abs() < 1e-12);
}

/// A lightness pattern across 16 samples, `phase` moving it, `level` and `contrast` the
/// exposure, with a fixed chroma.
fn pattern(phase: f64, level: f64, contrast: f64) -> Vec<Vec3> {
    (0..16)
        .map(|i| {
            let angle = std::f64::consts::TAU * f64::from(i) / 16.0 + phase;
            [level + contrast * 2.0 * angle.sin(), 4.0, -6.0]
        })
        .collect()
}

/// Meters one continuity join: `before` and `after` the frames of the two parts, in order.
fn continuity_join(before: Vec<Vec<Vec3>>, after: Vec<Vec<Vec3>>) -> JoinMetrics {
    let at_frame = before.len() as u64;
    let mut meter = SeamMeter::new(vec![part("cut", 0, 0), part("continue", 0, at_frame)]);
    let frames = before
        .into_iter()
        .map(|frame| (0, frame))
        .chain(after.into_iter().map(|frame| (1, frame)));
    for (part, lab) in frames {
        meter.observe(MeteredFrame {
            part,
            blended: false,
            uncorrected: lab.clone(),
            corrected: lab,
        });
    }
    meter.joins().remove(0)
}

/// A continuity join with the given measures, as the verdict sees it.
fn measured(delta_e00: f64, p95: f64, structure: f64, structure_p95: f64) -> JoinMetrics {
    JoinMetrics {
        index: 1,
        kind: "continue",
        shot_index: 0,
        segment_id: "s000".into(),
        at_frame: 16,
        same_scene: true,
        delta_e00_before: delta_e00,
        delta_e00_after: delta_e00,
        w2_before: None,
        w2_after: None,
        within_p50: Some(p95),
        within_p95: Some(p95),
        structure_jump: Some(structure),
        structure_within_p95: Some(structure_p95),
        qa_passed: None,
    }
}

#[test]
fn a_content_jump_with_the_same_colours_fails_on_structure() {
    // Inside each part the exposure flickers by 3 L* a frame over a still picture; at the join
    // the picture turns round: the same samples in reverse order, so the same colours.
    let still = pattern(0.0, 50.0, 1.0);
    let flicker = |frame: &[Vec3], offset: f64| -> Vec<Vec3> {
        frame
            .iter()
            .map(|lab| [lab[0] + offset, lab[1], lab[2]])
            .collect()
    };
    let mut reversed = still.clone();
    reversed.reverse();
    let join = continuity_join(
        vec![
            flicker(&still, 0.0),
            flicker(&still, 3.0),
            flicker(&still, 0.0),
        ],
        vec![flicker(&reversed, 0.0), flicker(&reversed, 3.0)],
    );
    let colours = |frame: &[Vec3]| {
        let mut moments = Moments::default();
        moments.add(frame);
        let stats = moments.stats();
        stats
            .mean
            .into_iter()
            .chain(stats.covariance)
            .collect::<Vec<f64>>()
    };
    for (a, b) in colours(&still).into_iter().zip(colours(&reversed)) {
        assert!((a - b).abs() < 1e-9, "same colour statistics");
    }
    assert!(
        join.delta_e00_after <= join.within_p95.unwrap(),
        "ΔE00 alone would pass it: {join:?}"
    );
    assert!(join.structure_within_p95.unwrap() < 1e-9, "{join:?}");
    assert!(join.structure_jump.unwrap() > 2.0, "{join:?}");
    assert_eq!(join.qa_passed, Some(false), "{join:?}");
    assert!(seam_badness(&join).unwrap() > 4.0, "{join:?}");
}

#[test]
fn an_exposure_and_white_balance_shift_is_no_structure_jump() {
    let picture = pattern(0.3, 50.0, 1.0);
    let shifted: Vec<Vec3> = picture
        .iter()
        .map(|lab| [0.7 * lab[0] + 12.0, lab[1] + 5.0, lab[2] - 3.0])
        .collect();
    assert!(structure_difference(&picture, &shifted) < 1e-9);
    let join = continuity_join(
        vec![picture.clone(), picture.clone()],
        vec![shifted.clone(), shifted],
    );
    assert!(join.structure_jump.unwrap() < 1e-9, "{join:?}");
    assert!(join.delta_e00_after > 3.0, "ΔE00 sees it: {join:?}");
    assert_eq!(
        join.qa_passed,
        Some(false),
        "a colour jump still fails: {join:?}"
    );
}

#[test]
fn structure_difference_is_the_scaled_decorrelation_of_the_lightness_patterns() {
    let picture = pattern(0.0, 50.0, 1.0);
    let spread = 2.0 / 2f64.sqrt();
    assert!(structure_difference(&picture, &picture).abs() < 1e-12);
    // Inverted: correlation -1, so contrast * sqrt(2 * 2).
    let inverted = pattern(std::f64::consts::PI, 50.0, 1.0);
    assert!((structure_difference(&picture, &inverted) - 2.0 * spread).abs() < 1e-9);
    // A flat frame is not rescaled: the difference is the texture's own spread.
    let flat_frame = flat([50.0, 0.0, 0.0]);
    assert!((structure_difference(&flat_frame, &picture) - spread).abs() < 1e-9);
    assert_eq!(structure_difference(&[], &picture), 0.0);
}

#[test]
fn a_smooth_continuation_passes() {
    // The picture moves and darkens a little every frame, across the join as inside the parts.
    let frames: Vec<Vec<Vec3>> = (0..6)
        .map(|i| pattern(0.2 * f64::from(i), 50.0 - 0.5 * f64::from(i), 1.0))
        .collect();
    let join = continuity_join(frames[..3].to_vec(), frames[3..].to_vec());
    let (jump, p95) = (
        join.structure_jump.unwrap(),
        join.structure_within_p95.unwrap(),
    );
    assert!(jump > 0.1 && (jump - p95).abs() < 1e-9, "{join:?}");
    assert_eq!(join.qa_passed, Some(true), "{join:?}");
    assert!(seam_badness(&join).unwrap() <= 1.0, "{join:?}");
}

#[test]
fn cuts_and_crossfades_get_no_verdict_and_no_new_fields() {
    let mut meter = SeamMeter::new(vec![
        part("cut", 0, 0),
        part("cut", 1, 2),
        part("crossfade", 2, 4),
    ]);
    for (part, level) in [(0, 40.0), (0, 41.0), (1, 60.0), (1, 61.0), (2, 30.0)] {
        let frame = pattern(0.0, level, 1.0);
        meter.observe(MeteredFrame {
            part,
            blended: false,
            uncorrected: frame.clone(),
            corrected: frame,
        });
    }
    let joins = meter.joins();
    assert_eq!(joins.len(), 2);
    for join in &joins {
        assert_eq!(
            (
                join.structure_jump,
                join.structure_within_p95,
                join.qa_passed
            ),
            (None, None, None),
            "{join:?}"
        );
        assert_eq!(seam_passes(join), None);
        assert_eq!(seam_badness(join), None);
        let json = serde_json::to_value(join).unwrap();
        for absent in ["structure_jump", "structure_within_p95", "qa_passed"] {
            assert!(json.get(absent).is_none(), "{json}");
        }
    }
}

#[test]
fn a_continuity_join_reports_the_new_fields() {
    let frames: Vec<Vec<Vec3>> = (0..4)
        .map(|i| pattern(0.2 * f64::from(i), 50.0, 1.0))
        .collect();
    let join = continuity_join(frames[..2].to_vec(), frames[2..].to_vec());
    let json = serde_json::to_value(&join).unwrap();
    assert!(json["structure_jump"].is_number(), "{json}");
    assert!(json["structure_within_p95"].is_number(), "{json}");
    assert_eq!(json["qa_passed"], serde_json::Value::Bool(true), "{json}");
}

#[test]
fn a_still_shot_is_judged_against_the_floors() {
    assert_eq!(seam_passes(&measured(0.3, 0.0, 0.3, 0.0)), Some(true));
    assert_eq!(seam_passes(&measured(0.8, 0.0, 0.3, 0.0)), Some(false));
    assert_eq!(seam_passes(&measured(0.3, 0.0, 0.8, 0.0)), Some(false));
    let badness = seam_badness(&measured(0.8, 0.0, 0.3, 0.0)).unwrap();
    assert!((badness - 0.8 / SEAM_QA_FLOOR_DELTA_E00).abs() < 1e-12);
}

#[test]
fn the_tolerance_lets_a_join_go_a_little_past_the_p95() {
    assert_eq!(seam_passes(&measured(2.15, 2.0, 1.0, 1.0)), Some(true));
    assert_eq!(seam_passes(&measured(2.25, 2.0, 1.0, 1.0)), Some(false));
    assert_eq!(seam_passes(&measured(2.0, 2.0, 1.05, 1.0)), Some(true));
    assert_eq!(seam_passes(&measured(2.0, 2.0, 1.15, 1.0)), Some(false));
}

#[test]
fn badness_ranks_two_tries_of_one_join_by_their_worse_measure() {
    let limit = 1.0 + SEAM_QA_TOLERANCE;
    let colour_off = measured(4.0, 2.0, 1.0, 1.0);
    let content_off = measured(2.0, 2.0, 3.0, 1.0);
    let (colour, content) = (
        seam_badness(&colour_off).unwrap(),
        seam_badness(&content_off).unwrap(),
    );
    assert!((colour - 2.0 / limit).abs() < 1e-12);
    assert!((content - 3.0 / limit).abs() < 1e-12);
    assert!(colour < content, "the colour try hides the join better");
    let no_steps = JoinMetrics {
        within_p95: None,
        ..measured(1.0, 1.0, 1.0, 1.0)
    };
    assert_eq!(seam_badness(&no_steps), None);
}

proptest! {
    #[test]
    fn structure_difference_ignores_exposure_and_is_symmetric(
        lightness in prop::collection::vec(0.0f64..100.0, 2..40),
        other in prop::collection::vec(0.0f64..100.0, 2..40),
        gain in 0.2f64..3.0,
        offset in -30.0f64..30.0,
    ) {
        let frame: Vec<Vec3> = lightness.iter().map(|&l| [l, 1.0, 2.0]).collect();
        let second: Vec<Vec3> = other.iter().map(|&l| [l, -3.0, 0.5]).collect();
        let exposed: Vec<Vec3> = frame.iter().map(|lab| [gain * lab[0] + offset, lab[1], lab[2]]).collect();
        let difference = structure_difference(&frame, &second);
        prop_assert!(difference >= 0.0);
        prop_assert!((difference - structure_difference(&second, &frame)).abs() < 1e-9);
        prop_assert!(structure_difference(&frame, &exposed) < 1e-6 * (1.0 + gain));
    }
}
