//! Spec validation: every bad input named in the spec reference, and the happy paths.

use super::*;

/// The catalog the tests validate against: the default model and one more.
fn models() -> Vec<String> {
    vec![DEFAULT_MODEL.to_string(), "coastline-tiny".to_string()]
}

fn no_files(name: &str) -> Result<Vec<u8>, String> {
    Err(format!("file not found: {name}"))
}

fn check(yaml: &str) -> Result<Sequence, SpecError> {
    validate(parse_spec_text(yaml)?, Some(&models()), &no_files)
}

fn error_of(yaml: &str) -> String {
    check(yaml)
        .expect_err("spec should be rejected")
        .to_string()
}

const GOOD: &str = r#"
title: Coastline at dawn
resolution: 480p
aspect: "16:9"
fps: 24
seed: 42
style: "35mm film"
shots:
  - prompt: "Aerial drone shot over a pine valley at dawn, fog"
    duration: 25
  - prompt: "The fog lifts"
    duration: "12s"
    transition: continue
  - prompt: "A lighthouse at dusk"
    duration: 10.5
    transition: crossfade
    crossfade: 1
"#;

#[test]
fn a_good_spec_validates_with_defaults() {
    let sequence = check(GOOD).unwrap();
    assert_eq!(sequence.frame_size(), (848, 480));
    assert_eq!(sequence.model, "reelfarm-tiny");
    assert_eq!(sequence.pass, Pass::Draft);
    assert_eq!(sequence.shots[1].duration_seconds, 12.0);
    assert_eq!(sequence.shots[1].transition, Transition::Continue);
    assert_eq!(sequence.shots[2].crossfade_seconds, Some(1.0));
    assert_eq!(sequence.total_frames(), (47.5f64 * 24.0).round() as u64);
}

#[test]
fn the_model_must_be_in_the_catalog_and_errors_list_the_known_ids() {
    let named = |model: &str| {
        format!("model: {model}\nshots:\n  - prompt: a desert at noon\n    duration: 5\n")
    };
    assert_eq!(
        check(&named("coastline-tiny")).unwrap().model,
        "coastline-tiny"
    );
    assert_eq!(
        error_of(&named("wan-9")),
        "model: unknown model \"wan-9\"; available: reelfarm-tiny, coastline-tiny"
    );
    // A client without the farm's catalog leaves the model to the scheduler.
    let doc = parse_spec_text(&named("wan-9")).unwrap();
    assert_eq!(validate(doc, None, &no_files).unwrap().model, "wan-9");
}

#[test]
fn json_specs_parse_too() {
    let json = r#"{"shots": [{"prompt": "a desert at noon", "duration": 5}], "aspect": "9:16"}"#;
    assert_eq!(check(json).unwrap().frame_size(), (480, 848));
}

#[test]
fn crossfade_defaults_to_half_a_second() {
    let yaml = "shots:\n  - {prompt: a, duration: 5}\n  - {prompt: b, duration: 5, transition: crossfade}\n";
    assert_eq!(check(yaml).unwrap().shots[1].crossfade_seconds, Some(0.5));
}

#[test]
fn missing_prompt_is_named() {
    assert_eq!(
        error_of("shots:\n  - duration: 5\n"),
        "shots[0].prompt: required: describe what the shot shows"
    );
}

#[test]
fn duration_out_of_range_is_named_with_the_value() {
    let yaml = "shots:\n  - {prompt: a, duration: 5}\n  - {prompt: b, duration: 5}\n  - {prompt: c, duration: 0}\n";
    assert_eq!(
        error_of(yaml),
        "shots[2].duration: must be between 1 and 600 seconds, got 0"
    );
    assert_eq!(
        error_of("shots:\n  - {prompt: a, duration: 601}\n"),
        "shots[0].duration: must be between 1 and 600 seconds, got 601"
    );
    assert!(
        error_of("shots:\n  - {prompt: a, duration: soon}\n")
            .starts_with("shots[0].duration: must be a number of seconds")
    );
}

#[test]
fn fps_resolution_and_aspect_outside_the_vocabulary_are_rejected() {
    let shots = "shots:\n  - {prompt: a, duration: 5}\n";
    assert_eq!(
        error_of(&format!("fps: 7\n{shots}")),
        "fps: must be a whole number between 8 and 60, got 7"
    );
    assert_eq!(
        error_of(&format!("resolution: 4k\n{shots}")),
        "resolution: must be one of 480p, 720p, 1080p, got 4k"
    );
    assert_eq!(
        error_of(&format!("aspect: \"5:4\"\n{shots}")),
        "aspect: must be one of 16:9, 9:16, 2.39:1, 1.85:1, 4:3, 1:1, got 5:4"
    );
}

#[test]
fn crossfade_longer_than_a_neighbour_is_rejected() {
    let yaml = "shots:\n  - {prompt: a, duration: 2}\n  - {prompt: b, duration: 10, transition: crossfade, crossfade: 3}\n";
    assert_eq!(
        error_of(yaml),
        "shots[1].crossfade: 3 s is longer than the previous shot (2 s); a dissolve must fit in both shots"
    );
    let yaml = "shots:\n  - {prompt: a, duration: 10}\n  - {prompt: b, duration: 2, transition: crossfade, crossfade: 3}\n";
    assert!(error_of(yaml).contains("longer than this shot (2 s)"));
}

#[test]
fn crossfade_without_crossfade_transition_is_rejected() {
    let yaml = "shots:\n  - {prompt: a, duration: 5}\n  - {prompt: b, duration: 5, crossfade: 1}\n";
    assert!(
        error_of(yaml).starts_with("shots[1].crossfade: only allowed with transition: crossfade")
    );
}

#[test]
fn first_shot_cannot_continue() {
    let yaml = "shots:\n  - {prompt: a, duration: 5, transition: continue}\n";
    assert!(
        error_of(yaml).starts_with("shots[0].transition: the first shot has nothing before it")
    );
}

#[test]
fn missing_reference_file_is_named() {
    let yaml = "shots:\n  - {prompt: a, duration: 5, reference: frames/start.png}\n";
    assert_eq!(
        error_of(yaml),
        "shots[0].reference: file not found: frames/start.png"
    );
}

#[test]
fn a_reference_that_is_not_a_png_is_rejected() {
    let doc = parse_spec_text("shots:\n  - {prompt: a, duration: 5, reference: x.png}\n").unwrap();
    let error = validate(doc, Some(&models()), &|_| Ok(b"GIF89a not a png".to_vec()))
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("shots[0].reference: x.png is not a usable PNG image"),
        "{error}"
    );
}

#[test]
fn malformed_yaml_is_reported_with_its_position() {
    let error = error_of("shots: [\n  - prompt: a\n");
    assert!(error.contains("at line 2 column 3"), "{error}");
    let error = error_of("title: [unclosed\n");
    assert!(error.contains("line"), "{error}");
}

#[test]
fn unknown_fields_are_rejected_with_their_path() {
    let error = error_of("shots:\n  - {prompt: a, duration: 5, colour: red}\n");
    assert!(error.starts_with("shots[0]"), "{error}");
    assert!(error.contains("unknown field `colour`"), "{error}");
    let error = error_of("framerate: 24\nshots:\n  - {prompt: a, duration: 5}\n");
    assert!(error.contains("unknown field `framerate`"), "{error}");
}

#[test]
fn limits_on_shot_count_total_length_and_prompt_length() {
    let many: String = (0..501).map(|_| "  - {prompt: a, duration: 1}\n").collect();
    assert!(
        error_of(&format!("shots:\n{many}"))
            .contains("shots: must list at most 500 shots, got 501")
    );
    let long: String = (0..7).map(|_| "  - {prompt: a, duration: 600}\n").collect();
    assert!(error_of(&format!("shots:\n{long}")).contains("exceeds the limit of 3600 s"));
    let prompt = "x".repeat(2001);
    assert_eq!(
        error_of(&format!("shots:\n  - {{prompt: {prompt}, duration: 5}}\n")),
        "shots[0].prompt: must be at most 2000 characters, got 2001"
    );
    assert_eq!(
        error_of("shots: []\n"),
        "shots: must list at least one shot"
    );
}

#[test]
fn several_errors_are_reported_together() {
    let spec_error = check("fps: 7\nshots:\n  - {duration: 0}\n").unwrap_err();
    let paths: Vec<&str> = spec_error
        .errors
        .iter()
        .map(|error| error.path.as_str())
        .collect();
    assert_eq!(paths, ["fps", "shots[0].prompt", "shots[0].duration"]);
}

#[test]
fn the_api_message_round_trips_and_is_validated_the_same_way() {
    let sequence = check(GOOD).unwrap();
    let back = sequence_from_pb(sequence_to_pb(&sequence), &models()).unwrap();
    assert_eq!(back, sequence);

    let mut bad = sequence_to_pb(&sequence);
    bad.shots[2].duration_seconds = 0.0;
    bad.fps = Some(7);
    let error = sequence_from_pb(bad, &models()).unwrap_err().to_string();
    assert_eq!(
        error,
        "fps: must be a whole number between 8 and 60, got 7; shots[2].duration: must be between 1 and 600 seconds, got 0"
    );
}

#[test]
fn spec_files_resolve_references_next_to_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut png_bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png_bytes, 2, 2);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&[0u8; 12]).unwrap();
    }
    std::fs::create_dir(dir.path().join("frames")).unwrap();
    std::fs::write(dir.path().join("frames/start.png"), &png_bytes).unwrap();
    let spec_path = dir.path().join("seq.yaml");
    std::fs::write(
        &spec_path,
        "shots:\n  - {prompt: a, duration: 5, reference: frames/start.png}\n",
    )
    .unwrap();
    let sequence = load_spec_file(&spec_path, Some(&models())).unwrap();
    assert_eq!(sequence.shots[0].reference.as_ref().unwrap().png, png_bytes);

    let missing = load_spec_file(&dir.path().join("nope.yaml"), Some(&models()))
        .unwrap_err()
        .to_string();
    assert!(missing.starts_with("spec: cannot read"), "{missing}");
}

const GRADED: &str = r#"
color_match: hm-mkl-hm
continuity_blend: 0.5s
grade_reference: {street: alley}
shots:
  - {prompt: "a street at night", duration: 5, scene: street}
  - {prompt: "the street, closer", duration: 5, transition: continue}
  - {prompt: "a desert at noon", duration: 5, scene: desert}
  - {prompt: "an alley off the street", duration: 5, scene: street, name: alley}
"#;

#[test]
fn colour_fields_validate_and_resolve_scenes() {
    let sequence = check(GRADED).unwrap();
    assert_eq!(sequence.color_match, ColorMatch::HmMklHm);
    assert_eq!(sequence.continuity_blend_seconds, 0.5);
    assert_eq!(sequence.grade_references.get("street"), Some(&3));
    let scenes = sequence.scenes();
    assert_eq!(
        scenes[1],
        ("scene:street".to_string(), 3),
        "a continuation inherits its run's scene"
    );
    assert_eq!(
        scenes[2],
        ("scene:desert".to_string(), 2),
        "a scene defaults to its first shot"
    );
    assert_eq!(sequence.shots[3].display_name(3), "alley");
    assert_eq!(sequence.shots[0].display_name(0), "shot 0");
    let defaults = check(GOOD).unwrap();
    assert_eq!(defaults.color_match, ColorMatch::DEFAULT);
    assert_eq!(
        defaults.continuity_blend_seconds,
        DEFAULT_CONTINUITY_BLEND_SECONDS
    );
    // The API message carries the same fields.
    let round_trip = sequence_from_pb(sequence_to_pb(&sequence), &models()).unwrap();
    assert_eq!(round_trip, sequence);
}

#[test]
fn bad_colour_fields_are_named_with_the_reason() {
    let cases = [
        (
            "color_match: lut\nshots: [{prompt: a, duration: 5}]",
            "color_match: must be one of off, hm, reinhard, mkl, hm-mkl-hm, got lut",
        ),
        (
            "continuity_blend: 3\nshots: [{prompt: a, duration: 5}]",
            "continuity_blend: must be between 0 and 2 seconds",
        ),
        (
            "grade_reference: {dock: 0}\nshots: [{prompt: a, duration: 5, scene: street}]",
            "grade_reference.dock: no shot has scene: dock",
        ),
        (
            "grade_reference: {street: 7}\nshots: [{prompt: a, duration: 5, scene: street}]",
            "grade_reference.street: 7 is neither a shot name nor a shot index (0..1)",
        ),
        (
            "grade_reference: {street: 1}\nshots: [{prompt: a, duration: 5, scene: street}, {prompt: b, duration: 5, scene: desert}]",
            "grade_reference.street: shot 1 is in scene desert, not street",
        ),
        (
            "shots: [{prompt: a, duration: 5, scene: street}, {prompt: b, duration: 5, transition: continue, scene: desert}]",
            "shots[1].scene: a continuing shot belongs to the scene of the shot it continues (\"street\", from shot 0)",
        ),
        (
            "shots: [{prompt: a, duration: 5, name: x}, {prompt: b, duration: 5, name: x}]",
            "shots[1].name: \"x\" is already the name of shots[0]; names must be unique",
        ),
        (
            "shots: [{prompt: a, duration: 5, scene: \" \"}]",
            "shots[0].scene: must not be empty",
        ),
    ];
    for (yaml, expected) in cases {
        let error = error_of(yaml);
        assert!(
            error.contains(expected),
            "{yaml}\n  gave: {error}\n  want: {expected}"
        );
    }
}

#[test]
fn owner_and_priority_default_and_round_trip_through_the_api() {
    let plain = check(GOOD).unwrap();
    assert_eq!((plain.owner.as_deref(), plain.priority), (None, 0));
    let yaml = format!("owner: commercials team\npriority: 5\n{GOOD}");
    let sequence = check(&yaml).unwrap();
    assert_eq!(sequence.owner.as_deref(), Some("commercials team"));
    assert_eq!(sequence.priority, 5);
    let back = sequence_from_pb(sequence_to_pb(&sequence), &models()).unwrap();
    assert_eq!(back, sequence);
}

#[test]
fn priority_out_of_range_and_empty_owner_are_named() {
    let error = error_of(&format!("priority: 11\n{GOOD}"));
    assert!(
        error.contains("priority: must be a whole number between -10 and 10"),
        "{error}"
    );
    assert!(error.contains("got 11"), "{error}");
    let error = error_of(&format!("owner: \"  \"\n{GOOD}"));
    assert!(error.contains("owner: must not be empty"), "{error}");
}
