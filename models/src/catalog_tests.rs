//! The catalog as a person writes it: built-ins, file entries on a base, and errors that
//! name the entry, the field and what to do.

use super::*;

fn with(text: &str) -> Result<Catalog, CatalogError> {
    let mut catalog = Catalog::builtin();
    catalog.add_toml(text, "models.toml")?;
    Ok(catalog)
}

fn error_of(text: &str) -> String {
    with(text).unwrap_err().to_string()
}

#[test]
fn the_builtin_catalog_holds_reelfarm_tiny_and_wan() {
    let catalog = Catalog::builtin();
    assert_eq!(catalog.ids(), [REELFARM_TINY, WAN_2_1_T2V_1_3B]);
    let wan = catalog.require(WAN_2_1_T2V_1_3B).unwrap();
    assert_eq!(wan.backend, Backend::Wan);
    assert_eq!(wan.native_fps, Some(16));
    // 81 frames at 16 fps per window, as the reference renders.
    assert_eq!(wan.window_seconds * 16.0 + 1.0, 81.0);
    assert_eq!((wan.final_steps, wan.guidance), (50, 5.0));
    assert_eq!(wan.weights, None);
    // 5 s at 24 fps (121 frames) is 81 frames at its own 16 fps; tiny renders what it is asked.
    assert_eq!(wan.model_frames(121, 24), 81);
    assert_eq!(wan.model_frames(81, 16), 81);
    assert_eq!(
        catalog
            .require(REELFARM_TINY)
            .unwrap()
            .model_frames(121, 24),
        121
    );
    let tiny = catalog.require(REELFARM_TINY).unwrap();
    assert_eq!(tiny.backend, Backend::Tiny);
    assert_eq!(
        (tiny.window_seconds, tiny.draft_steps, tiny.final_steps),
        (20.0, 8, 24)
    );
    let unknown = catalog.require("wan-2.1").unwrap_err();
    assert_eq!(
        unknown.to_string(),
        "unknown model \"wan-2.1\"; available: reelfarm-tiny, wan2.1-t2v-1.3b"
    );
}

#[test]
fn aligned_render_frames_is_stride_n_plus_one_and_minimal() {
    let tiny = reelfarm_tiny();
    for frames in 1..200u64 {
        let aligned = tiny.aligned_render_frames(frames);
        assert_eq!(aligned % 4, 1, "{frames} -> {aligned}");
        assert!(
            aligned >= frames && aligned - frames < 4,
            "{frames} -> {aligned}"
        );
    }
}

#[test]
fn a_file_entry_copies_its_base_and_overrides_what_it_names() {
    let catalog = with(
        r#"
        [[model]]
        id = "coastline-tiny"
        base = "reelfarm-tiny"
        weights = "/models/coastline-tiny.safetensors"
        draft_steps = 12
        "#,
    )
    .unwrap();
    assert_eq!(
        catalog.ids(),
        ["coastline-tiny", "reelfarm-tiny", WAN_2_1_T2V_1_3B]
    );
    let entry = catalog.get("coastline-tiny").unwrap();
    assert_eq!(entry.draft_steps, 12);
    assert_eq!(entry.final_steps, 24);
    assert_eq!(entry.backend, Backend::Tiny);
    assert_eq!(entry.memory, reelfarm_tiny().memory);
    assert_eq!(
        entry.weights.as_deref(),
        Some("/models/coastline-tiny.safetensors")
    );
}

#[test]
fn a_file_redeclares_a_builtin_once_to_say_where_its_weights_are() {
    let catalog = with(
        "[[model]]\nid = \"wan2.1-t2v-1.3b\"\nweights = \"/models/Wan2.1-T2V-1.3B-Diffusers\"\ndraft_steps = 12\n",
    )
    .unwrap();
    let wan = catalog.require(WAN_2_1_T2V_1_3B).unwrap();
    assert_eq!(
        wan.weights.as_deref(),
        Some("/models/Wan2.1-T2V-1.3B-Diffusers")
    );
    assert_eq!(wan.draft_steps, 12);
    assert_eq!(
        (wan.backend, wan.native_fps, wan.final_steps),
        (Backend::Wan, Some(16), 50)
    );
    // A wan entry of its own, on the built-in's settings.
    let catalog = with("[[model]]\nid = \"wan-mine\"\nbase = \"wan2.1-t2v-1.3b\"\nweights = \"/w\"\nnative_fps = 24\n").unwrap();
    assert_eq!(catalog.require("wan-mine").unwrap().native_fps, Some(24));
    assert!(
        error_of("[[model]]\nid = \"w\"\nbase = \"wan2.1-t2v-1.3b\"\nnative_fps = 100\n")
            .contains("model[0].native_fps: must be within 8..=60, got 100")
    );
}

#[test]
fn an_entry_on_a_redeclared_builtin_copies_the_redeclaration_wherever_it_stands() {
    let before = "[[model]]\nid = \"wan-mine\"\nbase = \"wan2.1-t2v-1.3b\"\nfinal_steps = 30\n\n[[model]]\nid = \"wan2.1-t2v-1.3b\"\nweights = \"/models/wan\"\ndraft_steps = 12\n";
    let after = "[[model]]\nid = \"wan2.1-t2v-1.3b\"\nweights = \"/models/wan\"\ndraft_steps = 12\n\n[[model]]\nid = \"wan-mine\"\nbase = \"wan2.1-t2v-1.3b\"\nfinal_steps = 30\n";
    for text in [before, after] {
        let catalog = with(text).unwrap();
        let mine = catalog.require("wan-mine").unwrap();
        assert_eq!(mine.weights.as_deref(), Some("/models/wan"), "{text}");
        assert_eq!((mine.draft_steps, mine.final_steps), (12, 30), "{text}");
        assert_eq!(
            catalog
                .require(WAN_2_1_T2V_1_3B)
                .unwrap()
                .weights
                .as_deref(),
            Some("/models/wan")
        );
    }
    // Errors still name each entry's place in the file, whichever pass finds them.
    let bad_first = "[[model]]\nid = \"x\"\nbase = \"reelfarm-tiny\"\ndraft_steps = 0\n\n[[model]]\nid = \"reelfarm-tiny\"\ndraft_steps = 300\n";
    assert_eq!(
        error_of(bad_first),
        "models.toml: model[1].draft_steps: must be within 1..=200, got 300"
    );
    assert_eq!(
        error_of(&bad_first.replace("draft_steps = 300", "draft_steps = 3")),
        "models.toml: model[0].draft_steps: must be within 1..=200, got 0"
    );
}

#[test]
fn a_redeclared_builtin_keeps_its_backend() {
    assert_eq!(
        error_of("[[model]]\nid = \"reelfarm-tiny\"\nbackend = \"wan\"\nnative_fps = 16\n"),
        "models.toml: model[0].backend: \"wan\": a re-declared built-in keeps its backend (tiny)"
    );
    assert_eq!(
        error_of("[[model]]\nid = \"wan2.1-t2v-1.3b\"\nbackend = \"tiny\"\n"),
        "models.toml: model[0].backend: \"tiny\": a re-declared built-in keeps its backend (wan)"
    );
    assert_eq!(
        error_of("[[model]]\nid = \"reelfarm-tiny\"\nbackend = \"sora\"\n"),
        "models.toml: model[0].backend: unknown backend \"sora\"; available: tiny, wan, openai-videos"
    );
    // Naming the backend it has is allowed.
    let catalog =
        with("[[model]]\nid = \"reelfarm-tiny\"\nbackend = \"tiny\"\ndraft_steps = 4\n").unwrap();
    let tiny = catalog.require(REELFARM_TINY).unwrap();
    assert_eq!((tiny.backend, tiny.draft_steps), (Backend::Tiny, 4));
}

#[test]
fn a_builtin_id_is_redeclared_once_and_without_base() {
    assert_eq!(
        error_of("[[model]]\nid = \"reelfarm-tiny\"\nbase = \"reelfarm-tiny\"\n"),
        "models.toml: model[0].base: \"reelfarm-tiny\" is a built-in: drop `base` to re-declare it"
    );
    assert_eq!(
        error_of("[[model]]\nid = \"reelfarm-tiny\"\nbase = \"wan2.1-t2v-1.3b\"\n"),
        "models.toml: model[0].base: \"reelfarm-tiny\" is a built-in: drop `base` to re-declare it"
    );
    let twice = "[[model]]\nid = \"x\"\nbase = \"reelfarm-tiny\"\n\n[[model]]\nid = \"wan2.1-t2v-1.3b\"\nweights = \"/a\"\n\n[[model]]\nid = \"wan2.1-t2v-1.3b\"\nweights = \"/b\"\n";
    assert_eq!(
        error_of(twice),
        "models.toml: model[2].id: \"wan2.1-t2v-1.3b\" is re-declared twice (first at model[1]); a file re-declares a built-in once"
    );
    let then_based = "[[model]]\nid = \"wan2.1-t2v-1.3b\"\nweights = \"/a\"\n\n[[model]]\nid = \"wan2.1-t2v-1.3b\"\nbase = \"wan2.1-t2v-1.3b\"\n";
    assert_eq!(
        error_of(then_based),
        "models.toml: model[1].base: \"wan2.1-t2v-1.3b\" is a built-in re-declared at model[0]; a file re-declares a built-in once"
    );
}

#[test]
fn a_wan_entry_has_a_native_rate_and_the_wan_vae_stride() {
    let full = r#"
        [[model]]
        id = "my-wan"
        backend = "wan"
        native_fps = 16
        window_seconds = 5
        temporal_stride = 4
        draft_steps = 20
        final_steps = 50
        guidance = 5.0
        weights = "/models/my-wan"
        [model.memory]
        fixed_bytes = 2e9
        bytes_per_token = 5e4
        guidance_branches = 2
        downsample = 16
        decode_bytes_per_pixel = 100
        weights_bytes = 3e9
        seconds_per_token_step = 1e-7
        "#;
    let catalog = with(full).unwrap();
    assert_eq!(catalog.require("my-wan").unwrap().native_fps, Some(16));
    assert_eq!(
        error_of(&full.replace("native_fps = 16\n", "")),
        "models.toml: model[0].native_fps: is required: the wan backend renders at its own rate (Wan 2.1: 16)"
    );
    assert_eq!(
        error_of(&full.replace("temporal_stride = 4", "temporal_stride = 8")),
        "models.toml: model[0].temporal_stride: must be 4 for the wan backend (the Wan VAE's), got 8"
    );
    assert_eq!(
        error_of("[[model]]\nid = \"w\"\nbase = \"wan2.1-t2v-1.3b\"\ntemporal_stride = 8\n"),
        "models.toml: model[0].temporal_stride: must be 4 for the wan backend (the Wan VAE's), got 8"
    );
    assert_eq!(
        error_of("[[model]]\nid = \"wan2.1-t2v-1.3b\"\ntemporal_stride = 8\n"),
        "models.toml: model[0].temporal_stride: must be 4 for the wan backend (the Wan VAE's), got 8"
    );
    assert_eq!(
        error_of(&full.replace("native_fps = 16", "native_fps = 61")),
        "models.toml: model[0].native_fps: must be within 8..=60, got 61"
    );
}

#[test]
fn a_full_entry_needs_every_setting_and_memory_coefficients() {
    let full = r#"
        [[model]]
        id = "my-tiny"
        backend = "tiny"
        window_seconds = 12
        temporal_stride = 4
        draft_steps = 6
        final_steps = 20
        guidance = 3.0
        [model.memory]
        fixed_bytes = 2e7
        bytes_per_token = 500
        guidance_branches = 1
        downsample = 16
        extra_latent_frames = 4
        decode_bytes_per_pixel = 12
        weights_bytes = 6e6
        seconds_per_token_step = 1e-6
        "#;
    let catalog = with(full).unwrap();
    let entry = catalog.get("my-tiny").unwrap();
    assert_eq!(entry.window_seconds, 12.0);
    assert_eq!(entry.memory.bytes_per_token, 500.0);
    assert_eq!(entry.memory.margin, 0.0);
    assert!(
        error_of(&full.replace("draft_steps = 6\n", ""))
            .contains("model[0].draft_steps: is required (or give `base`")
    );
}

#[test]
fn file_errors_name_the_entry_and_the_field() {
    let cases = [
        (
            "[[model]]\nid = \"x\"\nbase = \"reelfarm-tiny\"\ndraft_steps = 0\n",
            "models.toml: model[0].draft_steps: must be within 1..=200, got 0",
        ),
        (
            "[[model]]\nid = \"x\"\nbase = \"nope\"\n",
            "models.toml: model[0].base: unknown model \"nope\"; available: reelfarm-tiny, wan2.1-t2v-1.3b",
        ),
        (
            "[[model]]\nid = \"x\"\nbackend = \"sora\"\n",
            "models.toml: model[0].backend: unknown backend \"sora\"; available: tiny, wan, openai-videos",
        ),
        (
            "[[model]]\nid = \"x\"\nbase = \"reelfarm-tiny\"\n\n[[model]]\nid = \"x\"\nbase = \"reelfarm-tiny\"\n",
            "models.toml: model[1].id: \"x\" is already in the catalog",
        ),
        (
            "[[model]]\nid = \"Bad Id\"\nbase = \"reelfarm-tiny\"\n",
            "models.toml: model[0].id: \"Bad Id\" must be 1-64 characters",
        ),
        (
            "[[model]]\nid = \"x\"\nbase = \"reelfarm-tiny\"\nweights = \"s3://b/w.safetensors\"\n",
            "models.toml: model[0].weights: s3:// locations are checkpoint directories that workers mirror (Wan)",
        ),
        (
            "[[model]]\nid = \"x\"\nbase = \"reelfarm-tiny\"\nnative_fps = 16\n",
            "models.toml: model[0].native_fps: 16: the tiny backend renders at the sequence's rate",
        ),
        (
            "[[model]]\nid = \"x\"\nbase = \"reelfarm-tiny\"\ndraft_steps = \"12\"\n",
            "models.toml: model[0].draft_steps: ",
        ),
        (
            "[[model]]\nid = \"x\"\nbase = \"reelfarm-tiny\"\n[model.memory]\nmargn = 1\n",
            "models.toml: model[0].memory.margn: unknown field `margn`, expected one of",
        ),
        (
            "[[model]]\nid = \"x\"\nbase = \"reelfarm-tiny\"\n[model.memory]\nfixed_bytes = 0\nbytes_per_token = 0\ndecode_bytes_per_pixel = 0\n",
            "models.toml: model[0].memory.fixed_bytes: must be at least 1000000",
        ),
        (
            "[[model]]\nid = \"x\"\nbackend = \"tiny\"\nwindow_seconds = 10\ntemporal_stride = 4\ndraft_steps = 4\nfinal_steps = 8\nguidance = 2\n[model.memory]\nfixed_bytes = 2e7\n",
            "models.toml: model[0].memory.bytes_per_token: is required",
        ),
        (
            "models = 3\n",
            "models.toml: models: unknown key; a catalog file holds only [[model]] tables",
        ),
        (
            "[[model]]\nid = \"x\"\nbase = \"reelfarm-tiny\"\nwindow = 5\n",
            "models.toml: model[0].window: unknown field `window`",
        ),
        (
            "[[model]]\nid = 5\n",
            "models.toml: model[0].id: invalid type",
        ),
    ];
    for (text, expected) in cases {
        let message = error_of(text);
        assert!(
            message.starts_with(expected),
            "{message}\nexpected: {expected}"
        );
    }
    let bad_memory = "[[model]]\nid = \"x\"\nbase = \"reelfarm-tiny\"\n[model.memory]\nfixed_bytes = -1\nbytes_per_token = 1\nguidance_branches = 1\ndownsample = 16\ndecode_bytes_per_pixel = 1\nweights_bytes = 1\nseconds_per_token_step = 1\n";
    assert!(error_of(bad_memory).starts_with("models.toml: model[0].memory.fixed_bytes:"));
}

#[test]
fn whole_numbers_may_be_written_as_floats_as_helm_renders_them() {
    let catalog = with(
        "[[model]]\nid = \"x\"\nbase = \"reelfarm-tiny\"\ndraft_steps = 12.0\ntemporal_stride = 4\n",
    )
    .unwrap();
    assert_eq!(catalog.get("x").unwrap().draft_steps, 12);
    assert!(
        error_of("[[model]]\nid = \"x\"\nbase = \"reelfarm-tiny\"\ndraft_steps = 12.5\n")
            .contains("12.5 is not a whole number")
    );
    assert!(
        error_of("[[model]]\nid = \"x\"\nbase = \"reelfarm-tiny\"\ndraft_steps = -3\n")
            .contains("-3 is not a count")
    );
}

#[test]
fn a_partial_memory_table_changes_only_what_it_names() {
    let catalog =
        with("[[model]]\nid = \"x\"\nbase = \"reelfarm-tiny\"\n[model.memory]\nmargin = 0.5\n")
            .unwrap();
    let memory = catalog.get("x").unwrap().memory;
    assert_eq!(memory.margin, 0.5);
    assert_eq!(
        MemoryModel {
            margin: 0.0,
            ..memory
        },
        reelfarm_tiny().memory
    );
}

#[test]
fn a_later_entry_may_build_on_an_earlier_one() {
    let catalog = with(
        "[[model]]\nid = \"a\"\nbase = \"reelfarm-tiny\"\nfinal_steps = 30\n\n[[model]]\nid = \"b\"\nbase = \"a\"\n",
    )
    .unwrap();
    assert_eq!(catalog.get("b").unwrap().final_steps, 30);
}

#[test]
fn an_empty_file_adds_nothing_and_a_missing_one_says_so() {
    assert_eq!(with("").unwrap(), Catalog::builtin());
    let missing = Catalog::builtin_with_file(Path::new("/nonexistent/models.toml")).unwrap_err();
    assert!(
        missing
            .to_string()
            .starts_with("/nonexistent/models.toml: file: cannot read"),
        "{missing}"
    );
}

#[test]
fn simulated_models_land_on_the_published_figures_and_are_not_served() {
    let catalog = Catalog::from_entries(simulated_models());
    let small = catalog.require("sim-wan2.1-1.3b").unwrap();
    assert_eq!(small.backend, Backend::Simulated);
    let shape = SegmentShape {
        width: 832,
        height: 480,
        frames: small.aligned_render_frames(80),
        tiled_decode: false,
    };
    assert_eq!(shape.frames, 81);
    let gb = small.memory_estimate_bytes(&shape) as f64 / 1e9;
    assert!((gb - 8.2).abs() < 0.2, "{gb} GB");
}

#[test]
fn weights_digests_name_the_weights_an_entry_renders_with() {
    let tiny = Catalog::builtin().require(REELFARM_TINY).unwrap().clone();
    // The shipped weights' SHA-256, from the build script.
    let digest = tiny.weights_digest.clone().unwrap();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 7 + 64,
        "{digest}"
    );
    assert_eq!(tiny.weights_identity(), format!("digest {digest}"));
    let catalog = with(
        r#"
[[model]]
id = "same-weights"
base = "reelfarm-tiny"
draft_steps = 12

[[model]]
id = "own-weights"
base = "reelfarm-tiny"
weights = "/models/own.safetensors"

[[model]]
id = "own-weights-named"
base = "reelfarm-tiny"
weights = "/models/own.safetensors"
weights_digest = "rev-7"
"#,
    )
    .unwrap();
    let identity = |id: &str| catalog.require(id).unwrap().weights_identity();
    assert_eq!(identity("same-weights"), tiny.weights_identity());
    // New weights never inherit the base's digest: their location stands for them.
    assert_eq!(identity("own-weights"), "location /models/own.safetensors");
    assert_eq!(identity("own-weights-named"), "digest rev-7");
    assert!(
        error_of("[[model]]\nid = \"x\"\nbase = \"reelfarm-tiny\"\nweights_digest = \"\"\n")
            .contains("model[0].weights_digest: must be 1-200 printable characters")
    );
}

/// The README's two hosted entries: OpenAI itself and a gateway with its own key file.
const HOSTED: &str = r#"
[[model]]
id = "sora-2-pro"
backend = "openai-videos"
remote_model = "sora-2-pro"
base_url = "https://api.openai.com/v1/"
api_key_env = "OPENAI_API_KEY"
clip_seconds = [12, 4, 8]
sizes = ["1280x720", "720x1280", "1792x1024", "1024x1792"]
price_per_second_usd = 0.5
max_concurrent_jobs = 4
requests_per_minute = 50

[[model]]
id = "studio-gateway-sora"
base = "sora-2-pro"
base_url = "http://litellm.internal:4000/v1"
api_key_file = "/var/run/secrets/litellm/key"
remote_model = "sora-hd"
"#;

#[test]
fn a_hosted_entry_carries_its_api_limits_and_price_and_a_base_lends_them() {
    let catalog = with(HOSTED).unwrap();
    let pro = catalog.require("sora-2-pro").unwrap();
    assert_eq!(pro.backend, Backend::OpenAiVideos);
    let spec = pro.hosted.as_ref().unwrap();
    assert_eq!(spec.base_url, "https://api.openai.com/v1");
    assert_eq!(spec.key, KeySource::Env("OPENAI_API_KEY".into()));
    assert_eq!(spec.clip_seconds, [4, 8, 12]);
    assert_eq!(spec.sizes[2], (1792, 1024));
    assert_eq!(
        (spec.max_concurrent_jobs, spec.requests_per_minute),
        (4, 50)
    );
    // The longest clip is the window; one output frame per frame; nothing to load.
    assert_eq!((pro.window_seconds, pro.temporal_stride), (12.0, 1));
    assert_eq!(pro.load_seconds(), 0.0);
    let gateway = catalog.require("studio-gateway-sora").unwrap();
    let via = gateway.hosted.as_ref().unwrap();
    assert_eq!(
        via.key,
        KeySource::File("/var/run/secrets/litellm/key".into())
    );
    assert_eq!(
        (via.remote_model.as_str(), via.price_per_second_usd),
        ("sora-hd", 0.5)
    );
    // Another remote model is other pixels: cache keys differ.
    assert_ne!(gateway.weights_identity(), pro.weights_identity());
}

#[test]
fn a_hosted_entry_refuses_what_it_cannot_use_naming_the_field() {
    let entry = |extra: &str| {
        format!(
            "[[model]]\nid = \"h\"\nbackend = \"openai-videos\"\nremote_model = \"sora-2\"\n\
             base_url = \"https://api.openai.com/v1\"\napi_key_env = \"K\"\nclip_seconds = [4]\n\
             sizes = [\"1280x720\"]\nprice_per_second_usd = 0.1\n{extra}"
        )
    };
    assert!(with(&entry("")).is_ok());
    // Helm's toToml writes every number as a float: whole ones are taken.
    let from_helm = entry("").replace("clip_seconds = [4]", "clip_seconds = [4.0, 8.0]");
    let catalog = with(&from_helm).unwrap();
    assert_eq!(
        catalog
            .require("h")
            .unwrap()
            .hosted
            .as_ref()
            .unwrap()
            .clip_seconds,
        [4, 8]
    );
    assert!(
        error_of(&entry("").replace("clip_seconds = [4]", "clip_seconds = [4.5]"))
            .contains("model[0].clip_seconds")
    );
    for (extra, expected) in [
        (
            "final_steps = 4\n",
            "model[0].final_steps: is not used by an openai-videos model",
        ),
        (
            "sizes = [\"1280x721\"]\n",
            "model[0].sizes[0]: \"1280x721\" must be WIDTHxHEIGHT",
        ),
        (
            "api_key_file = \"/k\"\n",
            "model[0].api_key_file: give api_key_env or api_key_file",
        ),
        (
            "auth = \"basic\"\n",
            "model[0].auth: unknown auth \"basic\"",
        ),
        (
            "max_concurrent_jobs = 0\n",
            "model[0].max_concurrent_jobs: must be within 1..=256",
        ),
    ] {
        // A key given twice is a TOML error; replace instead of append for those.
        let text = if extra.starts_with("sizes") {
            entry("").replace("sizes = [\"1280x720\"]\n", extra)
        } else {
            entry(extra)
        };
        let error = error_of(&text);
        assert!(error.contains(expected), "{extra}: {error}");
    }
    assert!(
        error_of("[[model]]\nid = \"x\"\nbase = \"reelfarm-tiny\"\nclip_seconds = [4]\n")
            .contains("model[0].clip_seconds: is for backend \"openai-videos\" only")
    );
    assert!(
        error_of("[[model]]\nid = \"x\"\nbackend = \"openai-videos\"\nremote_model = \"s\"\n")
            .contains("model[0].base_url: is required for an openai-videos model")
    );
}
