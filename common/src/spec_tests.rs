//! Spec validation: every bad input named in the spec reference, and the happy paths.

use std::path::Path;

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

#[test]
fn seam_qa_defaults_by_pass_is_bounded_and_round_trips_through_the_api() {
    let draft = check(GOOD).unwrap();
    assert_eq!((draft.seam_qa, draft.seam_qa_tries), (None, 2));
    assert!(!draft.seam_qa_enabled(), "off for drafts by default");
    let final_pass = check(&format!("pass: final\n{GOOD}")).unwrap();
    assert!(final_pass.seam_qa_enabled(), "on for finals by default");
    let told = check(&format!(
        "pass: final\nseam_qa: false\nseam_qa_tries: 4\n{GOOD}"
    ))
    .unwrap();
    assert!(!told.seam_qa_enabled());
    assert_eq!(told.seam_qa_tries, 4);
    let back = sequence_from_pb(sequence_to_pb(&told), &models()).unwrap();
    assert_eq!(back, told);
    for tries in [0, 6] {
        let error = error_of(&format!("seam_qa_tries: {tries}\n{GOOD}"));
        assert!(
            error.contains("seam_qa_tries: must be between 1 and 5"),
            "{error}"
        );
    }
}

/// A 1-bit grayscale PNG of `width`x`height`, all black: a few KB even at 8K.
fn blank_png(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::One);
    let mut writer = encoder.write_header().unwrap();
    writer
        .write_image_data(&vec![0u8; width.div_ceil(8) as usize * height as usize])
        .unwrap();
    writer.finish().unwrap();
    bytes
}

#[test]
fn references_larger_than_8k_uhd_are_refused_by_pixel_count() {
    assert_eq!(check_reference_png(&blank_png(7680, 4320)), Ok(()));
    assert_eq!(check_reference_png(&blank_png(4320, 7680)), Ok(()));
    assert_eq!(
        check_reference_png(&blank_png(8000, 8000)),
        Err(
            "8000x8000 is 64000000 pixels; references may have at most 33177600 (7680x4320, 8K UHD)"
                .to_string()
        )
    );
    // Within the old 8192-per-side rule, still too many pixels for the worker's decoder.
    assert!(check_reference_png(&blank_png(7681, 4320)).is_err());
}

#[test]
fn a_spec_text_over_the_size_cap_is_refused() {
    let text = format!("# {}\n", "x".repeat(MAX_SPEC_BYTES as usize));
    assert_eq!(
        parse_spec_text(&text).unwrap_err().to_string(),
        format!(
            "spec: {} bytes; a spec may be at most 4 MiB (put images in reference: files, not in the spec)",
            text.len()
        )
    );
}

#[test]
fn a_spec_file_over_the_size_cap_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.yaml");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(MAX_SPEC_BYTES + 1)
        .unwrap();
    let error = load_spec_file(&path, Some(&models()))
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        format!(
            "spec: {} is 4194305 bytes; a spec may be at most 4 MiB (put images in reference: files, not in the spec)",
            path.display()
        )
    );
}

#[cfg(unix)]
#[test]
fn an_endless_spec_stream_is_cut_off_at_the_cap() {
    let error = load_spec_file(Path::new("/dev/zero"), Some(&models()))
        .unwrap_err()
        .to_string();
    assert!(
        error
            .starts_with("spec: /dev/zero is more than 4194304 bytes; a spec may be at most 4 MiB"),
        "{error}"
    );
}

/// `levels` lists of `width` aliases, each pointing at the list before; level 0 is `leaf`.
fn laughs(leaf: &str, levels: usize, width: usize) -> String {
    let mut yaml = format!("l0: &l0 {leaf}\n");
    for level in 1..=levels {
        let aliases = vec![format!("*l{}", level - 1); width].join(", ");
        yaml.push_str(&format!("l{level}: &l{level} [{aliases}]\n"));
    }
    yaml
}

/// Parses `yaml`, which must be refused within `limit`, and returns the error.
fn refused_within(limit: std::time::Duration, yaml: &str) -> String {
    let start = std::time::Instant::now();
    let error = parse_spec_text(yaml).unwrap_err().to_string();
    let elapsed = start.elapsed();
    println!("{} byte bomb refused in {elapsed:?}: {error}", yaml.len());
    assert!(elapsed < limit, "{elapsed:?}");
    error
}

/// Generous: these take milliseconds; expanding them would take minutes and gigabytes.
fn refused_quickly(yaml: &str) -> String {
    refused_within(std::time::Duration::from_secs(1), yaml)
}

#[test]
fn an_alias_bomb_of_one_large_scalar_is_refused_quickly() {
    // 1 MiB, aliased through 10 levels of 10: 10^10 MiB if expanded.
    let yaml = laughs(&"x".repeat(1 << 20), 10, 10);
    assert_eq!(
        refused_quickly(&yaml),
        "spec: expands to more than 16 MiB (YAML aliases repeat what they point at); write the spec out without aliases"
    );
    // The same through fields the spec really has: every shot's prompt is the large scalar.
    let shots = vec!["{prompt: *p, duration: 5}"; 400].join(", ");
    let yaml = format!("style: &p {}\nshots: [{shots}]\n", "x".repeat(1 << 20));
    assert!(refused_quickly(&yaml).starts_with("spec: expands to more than 16 MiB"));
}

#[test]
fn a_classic_billion_laughs_is_refused_quickly() {
    let leaf = format!("[{}]", ["lol"; 10].join(", "));
    let error = refused_quickly(&laughs(&leaf, 9, 10));
    assert!(error.starts_with("spec: expands"), "{error}");
    assert!(
        error.ends_with("write the spec out without aliases"),
        "{error}"
    );
}

#[test]
fn an_alias_bomb_of_many_small_values_trips_the_value_budget() {
    // Wide leaves reach the value budget before serde_yaml's repetition limit. Counting
    // the budget's values takes well under a second in this unoptimised test build, so the
    // bound leaves room for a loaded machine.
    let leaf = format!("[{}]", vec!["a"; 1000].join(", "));
    assert_eq!(
        refused_within(std::time::Duration::from_secs(5), &laughs(&leaf, 4, 10)),
        "spec: expands to more than 100000 values (YAML aliases repeat what they point at); write the spec out without aliases"
    );
}

#[test]
fn a_spec_with_a_few_aliases_still_parses() {
    let yaml = r#"
style: &look "35mm film, golden hour"
shots:
  - {prompt: *look, duration: &d 5}
  - {prompt: "the same look, closer", negative: *look, duration: *d}
"#;
    let sequence = check(yaml).unwrap();
    assert_eq!(sequence.shots[0].prompt, "35mm film, golden hour");
    assert_eq!(sequence.shots[1].duration_seconds, 5.0);
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    for depth in [100, 127, 200, 10_000] {
        let yaml = format!("title: {}{}\n", "[".repeat(depth), "]".repeat(depth));
        let error = error_of(&yaml);
        assert!(error.starts_with("title"), "{depth}: {error}");
    }
}

/// A temp dir holding `spec/seq.yaml` (one shot with `reference`), `spec/frames/start.png` and,
/// outside the spec's folder, `outside.png`.
fn spec_folder(reference: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("spec");
    std::fs::create_dir_all(folder.join("frames")).unwrap();
    std::fs::write(folder.join("frames/start.png"), blank_png(4, 4)).unwrap();
    std::fs::write(dir.path().join("outside.png"), blank_png(4, 4)).unwrap();
    let spec = folder.join("seq.yaml");
    std::fs::write(
        &spec,
        format!("shots:\n  - {{prompt: a, duration: 5, reference: {reference:?}}}\n"),
    )
    .unwrap();
    (dir, spec)
}

fn reference_error(spec: &Path) -> String {
    load_spec_file(spec, Some(&models()))
        .expect_err("the reference should be refused")
        .to_string()
}

#[test]
fn references_must_stay_inside_the_spec_folder() {
    let (dir, spec) = spec_folder("../outside.png");
    assert_eq!(
        reference_error(&spec),
        "shots[0].reference: \"../outside.png\" leaves the spec's folder; put the image beside the spec (or in a folder under it)"
    );
    let (_dir, spec) = spec_folder("frames/../../outside.png");
    assert!(reference_error(&spec).contains("leaves the spec's folder"));

    let absolute = dir.path().join("outside.png").display().to_string();
    let (_dir, spec) = spec_folder(&absolute);
    assert_eq!(
        reference_error(&spec),
        format!(
            "shots[0].reference: {absolute:?} is an absolute path; write it relative to the spec's folder and put the image beside the spec (or in a folder under it)"
        )
    );

    // A path written plainly inside the folder, and `./`, still work.
    let (_dir, spec) = spec_folder("./frames/start.png");
    let sequence = load_spec_file(&spec, Some(&models())).unwrap();
    assert_eq!(
        sequence.shots[0].reference.as_ref().unwrap().png,
        blank_png(4, 4)
    );
}

#[cfg(unix)]
#[test]
fn links_are_followed_and_must_end_inside_the_spec_folder() {
    use std::os::unix::fs::symlink;

    let (dir, spec) = spec_folder("link.png");
    let folder = spec.parent().unwrap();
    symlink(dir.path().join("outside.png"), folder.join("link.png")).unwrap();
    let error = reference_error(&spec);
    assert!(
        error
            .starts_with("shots[0].reference: \"link.png\" leaves the spec's folder (it leads to "),
        "{error}"
    );
    assert!(
        error.ends_with("; put the image beside the spec (or in a folder under it)"),
        "{error}"
    );

    let (_dir, spec) = spec_folder("inside.png");
    let folder = spec.parent().unwrap();
    symlink("frames/start.png", folder.join("inside.png")).unwrap();
    let sequence = load_spec_file(&spec, Some(&models())).unwrap();
    assert_eq!(
        sequence.shots[0].reference.as_ref().unwrap().name,
        "inside.png"
    );
    assert_eq!(
        sequence.shots[0].reference.as_ref().unwrap().png,
        blank_png(4, 4)
    );

    let (_dir, spec) = spec_folder("zero.png");
    symlink("/dev/zero", spec.parent().unwrap().join("zero.png")).unwrap();
    assert!(reference_error(&spec).contains("leaves the spec's folder (it leads to /dev/zero)"));

    // A whole folder linked in: the spec's own folder is resolved too, so this stays inside.
    let (_dir, spec) = spec_folder("frames-link/start.png");
    symlink("frames", spec.parent().unwrap().join("frames-link")).unwrap();
    assert!(load_spec_file(&spec, Some(&models())).is_ok());
}

#[test]
fn references_must_be_regular_files() {
    let (_dir, spec) = spec_folder("frames");
    assert_eq!(
        reference_error(&spec),
        "shots[0].reference: \"frames\" is a directory, not a regular file; a reference must be a PNG file"
    );
    #[cfg(unix)]
    {
        let (_dir, spec) = spec_folder("socket.png");
        let _listener =
            std::os::unix::net::UnixListener::bind(spec.parent().unwrap().join("socket.png"))
                .unwrap();
        assert!(reference_error(&spec).contains("\"socket.png\" is a socket, not a regular file"));
    }
}

#[test]
fn a_reference_over_the_size_cap_is_refused_before_it_is_read() {
    let (_dir, spec) = spec_folder("huge.png");
    std::fs::File::create(spec.parent().unwrap().join("huge.png"))
        .unwrap()
        .set_len(MAX_REFERENCE_BYTES + 1)
        .unwrap();
    assert_eq!(
        reference_error(&spec),
        "shots[0].reference: \"huge.png\" is 67108865 bytes; a reference image may be at most 64 MiB (scale it down or save it with more compression)"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Arbitrary text heavy in anchors, aliases, tags and nesting: both passes give an
    /// answer, never a panic.
    #[test]
    fn arbitrary_yaml_ish_text_never_panics(text in "[&*ab01\\[\\]{}:, \\-\\n\"!]{0,300}") {
        if let Err(error) = parse_spec_text(&text) {
            proptest::prop_assert!(!error.errors.is_empty());
        }
    }
}

#[test]
fn variants_and_the_take_on_the_timeline_are_bounded_and_round_trip() {
    let sequence = check(
        "shots:\n  - {prompt: a, duration: 2, variants: 3, take: 2}\n  - {prompt: b, duration: 2}\n",
    )
    .unwrap();
    assert_eq!((sequence.shots[0].variants, sequence.shots[0].take), (3, 2));
    assert_eq!((sequence.shots[1].variants, sequence.shots[1].take), (1, 0));
    let back = sequence_from_pb(sequence_to_pb(&sequence), &models()).unwrap();
    assert_eq!(back.shots, sequence.shots);
    let error = error_of("shots:\n  - {prompt: a, duration: 2, variants: 9}\n");
    assert!(
        error.contains("shots[0].variants: must be within 1..=8, got 9"),
        "{error}"
    );
    let error = error_of("shots:\n  - {prompt: a, duration: 2, variants: 2, take: 2}\n");
    assert!(
        error.contains("shots[0].take: take 2 of 2 variants"),
        "{error}"
    );
}
