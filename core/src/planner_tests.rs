//! Planner properties: exact timeline, window limits, chains, determinism.

use proptest::prelude::*;
use reelfarm_common::sequence::{Aspect, Resolution, Shot};
use reelfarm_models::catalog::reelfarm_tiny;

use super::*;

fn shot(duration_seconds: f64, transition: Transition) -> Shot {
    Shot {
        prompt: "a pine valley at dawn".into(),
        duration_seconds,
        transition,
        crossfade_seconds: (transition == Transition::Crossfade).then_some(0.5),
        seed: None,
        negative: None,
        reference: None,
        name: None,
        scene: None,
        variants: 1,
        take: 0,
        model: None,
    }
}

fn sequence(shots: Vec<Shot>, fps: u32) -> Sequence {
    Sequence {
        title: None,
        model: "reelfarm-tiny".into(),
        resolution: Resolution::P480,
        aspect: Aspect::Wide16x9,
        fps,
        seed: 42,
        pass: Pass::Draft,
        style: Some("35mm film".into()),
        negative: None,
        steps: None,
        shots,
        color_match: reelfarm_common::sequence::ColorMatch::DEFAULT,
        continuity_blend_seconds: 0.25,
        grade_references: Default::default(),
        owner: None,
        priority: 0,
        seam_qa: None,
        seam_qa_tries: reelfarm_common::sequence::SEAM_QA_TRIES,
    }
}

#[test]
fn a_120_second_shot_splits_into_six_20_second_windows_chained() {
    let plan = plan(
        &sequence(vec![shot(120.0, Transition::Cut)], 24),
        &reelfarm_tiny(),
    );
    assert_eq!(plan.segments.len(), 6);
    assert!(
        plan.segments
            .iter()
            .all(|segment| segment.timeline_frames == 480)
    );
    assert_eq!(plan.segments[0].join, Join::Cut);
    for (index, segment) in plan.segments.iter().enumerate().skip(1) {
        assert_eq!(segment.join, Join::Continue);
        assert_eq!(segment.continues_from, Some(index - 1));
        // The handoff frame, then 0.25 s × 24 fps = 6 overlap frames blended over the join.
        assert_eq!(segment.lead_frames, 7);
        assert_eq!(segment.render_frames, 489);
        assert_eq!(plan.segments[index - 1].handoff_back_frames, 6);
    }
    assert_eq!(
        plan.segments[5].handoff_back_frames, 0,
        "nothing continues the last"
    );
}

#[test]
fn without_a_blend_a_continuation_starts_from_the_last_frame() {
    let mut unblended = sequence(
        vec![shot(40.0, Transition::Cut), shot(4.0, Transition::Continue)],
        24,
    );
    unblended.continuity_blend_seconds = 0.0;
    let plan = plan(&unblended, &reelfarm_tiny());
    assert!(plan.segments.iter().skip(1).all(|s| s.lead_frames == 1));
    assert!(plan.segments.iter().all(|s| s.handoff_back_frames == 0));
}

#[test]
fn scenes_follow_labels_continuity_runs_and_grade_references() {
    let mut shots = vec![
        shot(4.0, Transition::Cut),
        shot(4.0, Transition::Continue),
        shot(30.0, Transition::Cut),
        shot(4.0, Transition::Cut),
    ];
    shots[0].scene = Some("street".into());
    shots[2].scene = Some("desert".into());
    shots[3].scene = Some("street".into());
    let mut labelled = sequence(shots, 24);
    labelled.grade_references.insert("street".into(), 3);
    let plan = plan(&labelled, &reelfarm_tiny());
    let scenes: Vec<(&str, bool)> = plan
        .segments
        .iter()
        .map(|s| (s.scene.as_str(), s.grade_reference))
        .collect();
    assert_eq!(
        scenes,
        vec![
            ("scene:street", false),
            ("scene:street", false),
            ("scene:desert", true),
            ("scene:desert", false),
            ("scene:street", true),
        ]
    );
    let unlabelled = plan_of_unlabelled();
    assert_eq!(unlabelled, vec!["shot:0", "shot:0", "shot:2"]);
}

fn plan_of_unlabelled() -> Vec<String> {
    let shots = vec![
        shot(4.0, Transition::Cut),
        shot(4.0, Transition::Continue),
        shot(4.0, Transition::Cut),
    ];
    plan(&sequence(shots, 24), &reelfarm_tiny())
        .segments
        .into_iter()
        .map(|s| s.scene)
        .collect()
}

#[test]
fn a_25_second_shot_splits_into_two_windows_of_12_and_a_half_seconds() {
    let plan = plan(
        &sequence(vec![shot(25.0, Transition::Cut)], 24),
        &reelfarm_tiny(),
    );
    let frames: Vec<u64> = plan
        .segments
        .iter()
        .map(|segment| segment.timeline_frames)
        .collect();
    assert_eq!(frames, [300, 300]);
}

#[test]
fn style_is_appended_and_crossfades_get_handles() {
    let plan = plan(
        &sequence(
            vec![
                shot(10.0, Transition::Cut),
                shot(10.0, Transition::Crossfade),
            ],
            24,
        ),
        &reelfarm_tiny(),
    );
    assert_eq!(plan.segments[0].prompt, "a pine valley at dawn, 35mm film");
    assert_eq!(plan.segments[1].join, Join::Crossfade);
    assert_eq!(plan.segments[1].lead_frames, 12);
    assert_eq!(
        plan.segments[1].continues_from, None,
        "a dissolve renders in parallel"
    );
    assert_eq!(plan.segments[1].render_frames, 253);
}

fn arbitrary_sequence() -> impl Strategy<Value = Sequence> {
    let shot_strategy = (1.0f64..150.0, 0u8..3).prop_map(|(duration, transition)| {
        let transition =
            [Transition::Cut, Transition::Continue, Transition::Crossfade][transition as usize];
        let mut shot = shot((duration * 4.0).round() / 4.0, transition);
        shot.crossfade_seconds = (transition == Transition::Crossfade).then_some(0.5);
        shot
    });
    (prop::collection::vec(shot_strategy, 1..8), 8u32..=60).prop_map(|(mut shots, fps)| {
        shots[0].transition = Transition::Cut;
        shots[0].crossfade_seconds = None;
        sequence(shots, fps)
    })
}

proptest! {
    #[test]
    fn timeline_frames_add_up_to_fps_times_duration(sequence in arbitrary_sequence()) {
        let plan = plan(&sequence, &reelfarm_tiny());
        let total: u64 = plan.segments.iter().map(|segment| segment.timeline_frames).sum();
        prop_assert_eq!(total, (sequence.total_duration_seconds() * f64::from(sequence.fps)).round() as u64);
        let mut next_start = 0;
        for segment in &plan.segments {
            prop_assert_eq!(segment.timeline_start_frame, next_start);
            next_start += segment.timeline_frames;
        }
    }

    #[test]
    fn every_segment_lies_within_the_window_limits(sequence in arbitrary_sequence()) {
        let plan = plan(&sequence, &reelfarm_tiny());
        let fps = f64::from(sequence.fps);
        for segment in &plan.segments {
            let seconds = segment.timeline_frames as f64 / fps;
            prop_assert!(seconds <= reelfarm_tiny().window_seconds + 1.0 / fps, "{} s", seconds);
            let shot = &sequence.shots[segment.shot_index as usize];
            if shot.duration_seconds > reelfarm_tiny().window_seconds {
                prop_assert!(seconds >= reelfarm_tiny().window_seconds / 2.0 - 1.0 / fps, "{} s", seconds);
            }
            prop_assert_eq!(segment.render_frames % 4, 1);
            prop_assert!(segment.render_frames >= segment.lead_frames + segment.timeline_frames);
            prop_assert!(segment.render_frames - (segment.lead_frames + segment.timeline_frames) < 4);
        }
    }

    #[test]
    fn continuity_edges_form_one_chain_per_run(sequence in arbitrary_sequence()) {
        let plan = plan(&sequence, &reelfarm_tiny());
        let mut successors = vec![0; plan.segments.len()];
        for (index, segment) in plan.segments.iter().enumerate() {
            match segment.join {
                Join::Continue => {
                    prop_assert_eq!(segment.continues_from, Some(index - 1));
                    successors[index - 1] += 1;
                }
                Join::Cut | Join::Crossfade => prop_assert_eq!(segment.continues_from, None),
            }
            let shot = &sequence.shots[segment.shot_index as usize];
            let expected = if segment.segment_index > 0 { Join::Continue } else {
                match shot.transition { Transition::Cut => Join::Cut, Transition::Continue => Join::Continue, Transition::Crossfade => Join::Crossfade }
            };
            prop_assert_eq!(segment.join, expected);
        }
        prop_assert!(successors.iter().all(|&count| count <= 1));
    }

    #[test]
    fn the_plan_is_deterministic_and_seeds_differ(sequence in arbitrary_sequence()) {
        let first = plan(&sequence, &reelfarm_tiny());
        prop_assert_eq!(&first, &plan(&sequence, &reelfarm_tiny()));
        let mut seeds: Vec<u64> = first.segments.iter().map(|segment| segment.seed).collect();
        seeds.sort_unstable();
        seeds.dedup();
        prop_assert_eq!(seeds.len(), first.segments.len());
    }
}

#[test]
fn the_stitch_reservation_follows_the_sequence_s_size() {
    let model = reelfarm_tiny();
    let one_minute = |resolution: Resolution, shots: usize| {
        let mut sequence = sequence(vec![shot(12.0, Transition::Cut); shots], 24);
        sequence.resolution = resolution;
        plan(&sequence, &model).stitch_memory_bytes()
    };
    let draft = one_minute(Resolution::P480, 5);
    let long = one_minute(Resolution::P480, 10);
    let sharp = one_minute(Resolution::P1080, 10);
    // The README's one-minute 480p draft keeps about the fixed 512 MiB it used to get.
    assert!((384 << 20..=640 << 20).contains(&draft), "{draft}");
    assert!(long > draft && sharp > 2 * long, "{draft} {long} {sharp}");
    assert!(sharp < 4 << 30, "two minutes at 1080p: {sharp}");
    assert_eq!(draft % (1 << 20), 0);
}

#[test]
fn variants_add_alternate_takes_off_the_timeline_that_pick_can_swap_in() {
    let shots = vec![
        Shot {
            variants: 3,
            ..shot(30.0, Transition::Cut)
        },
        shot(4.0, Transition::Continue),
    ];
    let plain = plan(
        &sequence(
            vec![shot(30.0, Transition::Cut), shot(4.0, Transition::Continue)],
            8,
        ),
        &reelfarm_tiny(),
    );
    let with_takes = plan(&sequence(shots.clone(), 8), &reelfarm_tiny());
    let on: Vec<&PlannedSegment> = with_takes
        .segments
        .iter()
        .filter(|s| s.on_timeline)
        .collect();
    // Asking for variants changes nothing on the timeline: take 0 is the shot's own seed.
    assert_eq!(on.len(), plain.segments.len());
    for (a, b) in on.iter().zip(&plain.segments) {
        assert_eq!(
            (&a.id, a.seed, a.handoff_back_frames),
            (&b.id, b.seed, b.handoff_back_frames)
        );
    }
    // 30 s is two windows: each alternate take is its own chain of two.
    let alternates: Vec<&PlannedSegment> = with_takes
        .segments
        .iter()
        .filter(|s| !s.on_timeline)
        .collect();
    let ids: Vec<&str> = alternates.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        ["s000-00-t1", "s000-01-t1", "s000-00-t2", "s000-01-t2"]
    );
    let index_of = |id: &str| with_takes.segments.iter().position(|s| s.id == id).unwrap();
    assert_eq!(
        with_takes.segments[index_of("s000-01-t2")].continues_from,
        Some(index_of("s000-00-t2"))
    );
    assert_eq!(
        with_takes.segments[index_of("s001-00")].continues_from,
        Some(index_of("s000-01")),
        "the next shot continues the take on the timeline"
    );
    let mut seeds: Vec<u64> = with_takes.segments.iter().map(|s| s.seed).collect();
    seeds.sort();
    seeds.dedup();
    assert_eq!(
        seeds.len(),
        with_takes.segments.len(),
        "every take has its own seeds"
    );

    // Picking take 2 puts exactly take 2's segments on the timeline, handoffs included, so
    // the segment cache finds them; take 0 becomes an alternate.
    let mut picked = shots;
    picked[0].take = 2;
    let swapped = plan(&sequence(picked, 8), &reelfarm_tiny());
    let key = |s: &PlannedSegment| {
        (
            s.seed,
            s.render_frames,
            s.lead_frames,
            s.handoff_back_frames,
            s.continues_from.is_some(),
        )
    };
    assert_eq!(
        key(&swapped.segments[index_of("s000-00")]),
        key(&with_takes.segments[index_of("s000-00-t2")])
    );
    assert_eq!(
        key(&swapped.segments[index_of("s000-01")]),
        key(&with_takes.segments[index_of("s000-01-t2")])
    );
    let take_zero = swapped
        .segments
        .iter()
        .find(|s| s.id == "s000-01-t0")
        .unwrap();
    assert_eq!(
        key(take_zero),
        key(&with_takes.segments[index_of("s000-01")])
    );
}

fn hosted_catalog() -> Catalog {
    crate::test_catalogs::with_hosted(0.5)
}

fn hosted(mut shot: Shot) -> Shot {
    shot.model = Some("sora-test".into());
    shot
}

#[test]
fn a_hosted_shot_takes_the_fewest_clips_each_billed_at_the_shortest_length_that_holds_it() {
    let catalog = hosted_catalog();
    // 14 s at 24 fps: a 12 s clip (288 frames), then the rest (48) after its 7-frame lead
    // (the handoff frame and a 0.25 s blend): a 4 s clip.
    let mut spec = sequence(
        vec![
            hosted(shot(14.0, Transition::Cut)),
            shot(6.0, Transition::Continue),
            hosted(shot(3.0, Transition::Cut)),
        ],
        24,
    );
    spec.steps = None;
    let plan = plan_with(&spec, &catalog).unwrap();
    let summary: Vec<(&str, u64, u64, u32)> = plan
        .segments
        .iter()
        .map(|s| {
            (
                s.model.as_str(),
                s.timeline_frames,
                s.render_frames,
                s.clip_seconds,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("sora-test", 288, 288, 12),
            ("sora-test", 48, 55, 4),
            // A local shot continuing a hosted one: its model's window and stride.
            ("reelfarm-tiny", 144, 153, 0),
            ("sora-test", 72, 72, 4),
        ]
    );
    assert_eq!(plan.segments[2].continues_from, Some(1));
    assert!((plan.estimated_cost_usd() - 10.0).abs() < 1e-9);
    // A hosted segment's steps are its progress percentage; a local one keeps its own.
    assert_eq!((plan.segments[0].steps, plan.segments[2].steps), (100, 8));
    assert_eq!(
        plan.total_frames,
        plan.segments.iter().map(|s| s.timeline_frames).sum::<u64>()
    );
    // The whole sequence on the hosted model: the sequence's model covers every shot.
    spec.model = "sora-test".into();
    let all = plan_with(&spec, &catalog).unwrap();
    assert!(
        all.segments
            .iter()
            .all(|s| s.model == "sora-test" && s.clip_seconds > 0)
    );
}

proptest! {
    /// Every hosted window fits its clip, the timeline stays exact, and no fewer clips could
    /// cover the shot.
    #[test]
    fn hosted_windows_fit_their_clips_and_are_fewest(
        seconds in proptest::collection::vec(1.0f64..40.0, 1..6),
        fps in prop_oneof![Just(8u32), Just(24), Just(30)],
        continuing in any::<bool>(),
    ) {
        let catalog = hosted_catalog();
        let shots = seconds
            .iter()
            .enumerate()
            .map(|(index, &s)| {
                let transition = if continuing && index > 0 { Transition::Continue } else { Transition::Cut };
                hosted(shot((s * 8.0).round() / 8.0, transition))
            })
            .collect();
        let mut spec = sequence(shots, fps);
        spec.steps = None;
        let plan = plan_with(&spec, &catalog).unwrap();
        prop_assert_eq!(plan.segments.iter().map(|s| s.timeline_frames).sum::<u64>(), spec.total_frames());
        let longest = 12 * u64::from(fps);
        for segment in &plan.segments {
            prop_assert!(segment.render_frames == segment.lead_frames + segment.timeline_frames);
            prop_assert!(u64::from(segment.clip_seconds) * u64::from(fps) >= segment.render_frames);
            prop_assert!(segment.render_frames <= longest);
        }
        // Fewest: n clips hold the first's room plus n - 1 continuations' (each after a lead
        // of the handoff frame and the blend); no smaller n holds the shot.
        let lead = 1 + (spec.continuity_blend_seconds * f64::from(fps)).round() as u64;
        for (shot_index, shot) in spec.shots.iter().enumerate() {
            let windows: Vec<_> = plan.segments.iter().filter(|s| s.shot_index == shot_index as u32).collect();
            let frames: u64 = windows.iter().map(|s| s.timeline_frames).sum();
            let first_lead = if shot.transition == Transition::Continue { lead } else { 0 };
            let room = |n: u64| (longest - first_lead) + (n - 1) * (longest - lead);
            let fewest = (1..).find(|&n| room(n) >= frames).unwrap();
            prop_assert_eq!(windows.len() as u64, fewest, "{} frames", frames);
        }
    }
}

#[test]
fn what_a_hosted_model_cannot_do_is_refused_naming_the_field() {
    let mut catalog = hosted_catalog();
    catalog
        .add_toml(
            "[[model]]\nid = \"small\"\nbase = \"sora-test\"\nsizes = [\"640x360\"]\n",
            "small.toml",
        )
        .unwrap();
    let mut spec = sequence(vec![hosted(shot(6.0, Transition::Cut))], 24);
    spec.steps = Some(20);
    spec.negative = Some("text".into());
    spec.resolution = Resolution::P1080;
    let problems = check_models(&spec, &catalog);
    let fields: Vec<&str> = problems.iter().map(|(field, _)| field.as_str()).collect();
    // 1080p from 1280x720 is the 1.5x allowed.
    assert_eq!(fields, ["negative", "steps"]);
    spec.steps = None;
    spec.negative = None;
    assert!(check_models(&spec, &catalog).is_empty());
    spec.shots[0].model = Some("small".into());
    let problems = check_models(&spec, &catalog);
    assert_eq!(problems[0].0, "resolution");
    assert!(
        problems[0]
            .1
            .contains("renders at most 640x360 for a 1920x1080 frame, an upscale of 3.00x"),
        "{problems:?}"
    );
    // A crossfade as long as the longest clip leaves no room.
    let mut crossfading = sequence(
        vec![
            shot(4.0, Transition::Cut),
            hosted(shot(20.0, Transition::Crossfade)),
        ],
        24,
    );
    crossfading.steps = None;
    crossfading.shots[1].crossfade_seconds = Some(12.0);
    let problems = check_models(&crossfading, &catalog);
    assert_eq!(problems[0].0, "shots[1].crossfade", "{problems:?}");
    // A continuity blend as long as the clip leaves a continuing shot no room.
    let mut blended = sequence(
        vec![
            shot(4.0, Transition::Cut),
            hosted(shot(3.0, Transition::Continue)),
        ],
        24,
    );
    blended.steps = None;
    blended.continuity_blend_seconds = 12.0;
    assert_eq!(check_models(&blended, &catalog)[0].0, "continuity_blend");
    // A cut shot that fits one clip needs no room for a continuation.
    blended.shots[1].transition = Transition::Cut;
    assert!(check_models(&blended, &catalog).is_empty());
    // Local shots are the spec validator's business.
    assert!(check_models(&sequence(vec![shot(6.0, Transition::Cut)], 24), &catalog).is_empty());
}
