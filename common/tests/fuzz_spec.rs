//! Property (fuzz) targets for what reaches the spec from outside: spec texts (YAML and JSON,
//! which the CLI reads from files) and API messages (`pb::SequenceSpec`, which the scheduler
//! decodes from the wire and converts with `sequence_from_pb`). Whatever they hold, the answer
//! must be a `Sequence` or a `SpecError`, never a panic, and the heap one input takes must stay
//! within a bound the caps imply. Accepted specs must also survive the API round trip.
//!
//! Each target runs `REELFARM_FUZZ_CASES` proptest cases (1,000 unless set: what CI runs,
//! `CI_CASES` in fuzz_support/) and prints one summary line: cases, time, accepted and refused
//! counts, peak heap. Longer runs are by hand:
//!
//! ```text
//! REELFARM_FUZZ_CASES=20000 cargo test --release -p reelfarm-common --test fuzz_spec -- --nocapture
//! ```
//!
//! A failure prints the smallest input proptest shrank it to: pin it as a test of its own. The
//! tests after the targets pin what earlier runs found, and the worst inputs the caps let
//! through (random inputs never get there). `fuzz_support/` is the harness.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use prost::Message;
use reelfarm_common::pb;
use reelfarm_common::sequence::Sequence;
use reelfarm_common::spec::{
    self, MAX_EXPANDED_SPEC_BYTES, SpecError, parse_spec_text, sequence_from_pb, sequence_to_pb,
    validate,
};

mod fuzz_support;

use fuzz_support::{MIB, Verdict, fuzz, heap_peak};

// ---------------------------------------------------------------------------------------------
// Spec texts: trees close to a real spec (so a fair share validate), with anchors and aliases,
// written out as YAML (block or flow) or JSON, then maybe damaged.

#[derive(Clone, Debug)]
enum Node {
    /// Written as is in YAML; in JSON as is where it is JSON, else as a string.
    Raw(&'static str),
    Text(String),
    List(Vec<Node>),
    Map(Vec<(String, Node)>),
    /// `&aN value` in YAML, the value alone in JSON.
    Anchored(u8, Box<Node>),
    /// `*aN` in YAML, `null` in JSON.
    Alias(u8),
}

/// Fields: how often each is there, and values as YAML, valid but the last (the rare ones are
/// never valid).
type Fields = &'static [(&'static str, f64, &'static [&'static str])];

#[rustfmt::skip]
const SHOT_FIELDS: Fields = &[
    ("prompt", 0.98, &["\"a pine valley at dawn\"", "the fog lifts", "\"é🎬\"", "\" \""]),
    ("duration", 0.98, &["1", "5", "12", "2.5", "600", "\"12s\"", "\" 25 s \"", "601"]),
    // Only `cut` is valid on the first shot.
    ("transition", 0.2, &["cut", "continue", "crossfade", "CrossFade", "dissolve"]),
    ("crossfade", 0.03, &["0.25", "2", "0"]),
    ("seed", 0.2, &["0", "7", "18446744073709551615", "18446744073709551616"]),
    ("negative", 0.2, &["blurry", "\"\"", "[x]"]),
    ("name", 0.2, &["a", "b", "c", "\" a \"", "\"\""]),
    ("scene", 0.2, &["street", "desert", "\" \""]),
    ("reference", 0.005, &["ref.png", "../x.png"]),
    ("take", 0.005, &["1", "2"]),
];

#[rustfmt::skip]
const TOP_FIELDS: Fields = &[
    ("title", 0.2, &["dawn", "\"a, b\"", "\"\"", "[x]"]),
    ("model", 0.2, &["reelfarm-tiny", "wan-1.3b", "[x]"]),
    ("resolution", 0.2, &["480p", "720p", "1080p", "720", "4k"]),
    ("aspect", 0.2, &["\"16:9\"", "\"9:16\"", "\" 1 : 1\"", "16:10"]),
    ("fps", 0.2, &["8", "24", "60", "24.0", "61"]),
    ("seed", 0.2, &["0", "42", "18446744073709551615", "-1"]),
    ("pass", 0.2, &["draft", "final", "Final", "rough"]),
    ("style", 0.2, &["\"35mm film\"", "\" \"", "[x]"]),
    ("negative", 0.2, &["text", "[x]"]),
    ("steps", 0.2, &["1", "20", "200", "201"]),
    ("color_match", 0.2, &["off", "hm", "reinhard", "mkl", "hm-mkl-hm", "HM", "lut"]),
    ("continuity_blend", 0.2, &["0", "0.25", "2", "-0", "2.5"]),
    ("grade_reference", 0.1, &["{}", "{\"street\": 0}", "{\"desert\": \"b\"}", "{\"sea\": -1}"]),
    ("owner", 0.2, &["ana", "team-b", "\" \""]),
    ("priority", 0.2, &["-10", "0", "10", "11"]),
    ("shot", 0.005, &["1", "2"]),
];

/// Strings that have broken parsers: controls, bidi, BOM, combining marks, astral planes, YAML
/// syntax, and runs around the length caps (100 characters for labels, 2000 for prompts) in
/// multi-byte characters so bytes and characters differ.
fn odd_text() -> BoxedStrategy<String> {
    #[rustfmt::skip]
    const ODD: &[&str] = &[
        "", "\t", "\u{0}", "\u{7}", "\u{202E}rtl", "\u{FEFF}", "e\u{301}", "\u{10FFFF}", "\u{85}",
        "\u{2028}", "\r\n", "\\", "\"", "'", "NaN", " 12 s ", "*a0", "&a0", "#",
    ];
    let long = (
        prop::sample::select(&["x", "é", "🎬", " "][..]),
        90usize..2010,
    );
    prop_oneof![
        1 => prop::sample::select(ODD).prop_map(String::from),
        1 => prop::collection::vec(any::<char>(), 0..24).prop_map(String::from_iter),
        1 => long.prop_map(|(piece, count)| piece.repeat(count)),
    ]
    .boxed()
}

/// What a field gets when the writer got it wrong.
fn wrong_value() -> BoxedStrategy<Node> {
    #[rustfmt::skip]
    const WRONG: &[&str] = &[
        "0", "-0", "-1", "1e999", "-1e999", "4.9e-324", "99999999999999999999", ".nan", ".inf",
        "0x1F", "0o17", "1_000", "+12", "1:30", "~", "null", "true", "no", "[]", "{}", "[1, [2]]",
        "{a: {b: c}}",
    ];
    prop_oneof![
        1 => prop::sample::select(WRONG).prop_map(Node::Raw),
        1 => odd_text().prop_map(Node::Text),
    ]
    .boxed()
}

/// Now and then anchored. Aliases come before their anchor, after it, or have none: all three
/// must be handled.
fn anchored(node: impl Strategy<Value = Node> + 'static) -> BoxedStrategy<Node> {
    (node, prop::option::weighted(0.02, 0u8..3))
        .prop_map(|(node, anchor)| match anchor {
            Some(name) => Node::Anchored(name, Box::new(node)),
            None => node,
        })
        .boxed()
}

/// Some of `table`'s fields, mostly valid, now and then wrong or an alias.
fn fields(table: Fields) -> BoxedStrategy<Node> {
    let picks: Vec<_> = table
        .iter()
        .map(|&(name, present, values)| {
            let (valid, invalid) = values.split_at(values.len() - 1);
            let value = prop_oneof![
                200 => prop::sample::select(valid).prop_map(Node::Raw),
                8 => Just(Node::Raw(invalid[0])),
                4 => wrong_value(),
                1 => (0u8..3).prop_map(Node::Alias),
            ];
            prop::option::weighted(present, anchored(value))
                .prop_map(move |value| value.map(|value| (name.to_string(), value)))
        })
        .collect();
    picks
        .prop_map(|fields| Node::Map(fields.into_iter().flatten().collect()))
        .boxed()
}

fn spec_tree() -> BoxedStrategy<Node> {
    let small = Node::Map(vec![
        ("prompt".into(), Node::Raw("x")),
        ("duration".into(), Node::Raw("1")),
    ]);
    let shot =
        prop_oneof![100 => anchored(fields(SHOT_FIELDS)), 1 => (0u8..3).prop_map(Node::Alias)];
    let shots = prop_oneof![
        20 => prop::collection::vec(shot, 1..4),
        1 => Just(Vec::new()),
        // Either side of MAX_SHOTS.
        1 => (spec::MAX_SHOTS - 1..spec::MAX_SHOTS + 2).prop_map(move |n| vec![small.clone(); n]),
    ];
    (fields(TOP_FIELDS), prop::option::weighted(0.97, shots))
        .prop_map(|(top, shots)| match (top, shots) {
            (Node::Map(mut fields), Some(shots)) => {
                fields.push(("shots".to_string(), Node::List(shots)));
                Node::Map(fields)
            }
            (top, _) => top,
        })
        .boxed()
}

/// Alias-heavy texts of a few KiB that meet serde_yaml's repetition limit and the spec's
/// expansion budgets: a ladder (each level a list of aliases to the one below, over a leaf of
/// up to 4000 bytes), or one anchored shot repeated as every element of `shots`.
fn alias_bomb() -> BoxedStrategy<String> {
    let ladder = (1usize..8, 2usize..80, 0usize..4000, any::<bool>()).prop_map(
        |(levels, width, leaf, in_shots)| {
            let mut text = format!("style: &l0 \"{}\"\n", "x".repeat(leaf));
            for level in 1..=levels {
                let row = vec![format!("*l{}", level - 1); width].join(", ");
                text.push_str(&format!("k{level}: &l{level} [{row}]\n"));
            }
            let row = vec![format!("*l{levels}"); width].join(", ");
            text + &if in_shots {
                format!("shots: [{row}]\n")
            } else {
                String::new()
            }
        },
    );
    let repeated_shot = (0usize..2100, 1usize..700, 0usize..4).prop_map(|(len, count, extra)| {
        let extra = &["negative", "name", "scene", "transition"][..extra];
        let shot: String = extra.iter().map(|name| format!(", {name}: *p")).collect();
        let shots = vec!["*s"; count].join(", ");
        let style = "é".repeat(len);
        format!("style: &p \"{style}\"\nshots: [&s {{prompt: *p, duration: 5{shot}}}, {shots}]\n")
    });
    prop_oneof![ladder, repeated_shot].boxed()
}

fn render(node: &Node, json: bool, out: &mut String) {
    let quoted = |text: &str| serde_json::to_string(text).expect("a string serializes");
    let (comma, colon) = if json { (",", ":") } else { (", ", ": ") };
    match node {
        Node::Raw(token) if json && serde_json::from_str::<serde_json::Value>(token).is_err() => {
            out.push_str(&quoted(token))
        }
        Node::Raw(token) => out.push_str(token),
        Node::Text(text) => out.push_str(&quoted(text)),
        Node::List(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                out.push_str(if index > 0 { comma } else { "" });
                render(item, json, out);
            }
            out.push(']');
        }
        Node::Map(entries) => {
            out.push('{');
            for (index, (key, value)) in entries.iter().enumerate() {
                out.push_str(if index > 0 { comma } else { "" });
                out.push_str(&quoted(key));
                out.push_str(colon);
                render(value, json, out);
            }
            out.push('}');
        }
        Node::Anchored(_, value) if json => render(value, json, out),
        Node::Anchored(name, value) => {
            out.push_str(&format!("&a{name} "));
            render(value, json, out);
        }
        Node::Alias(_) if json => out.push_str("null"),
        Node::Alias(name) => out.push_str(&format!("*a{name}")),
    }
}

/// YAML (as people write it, one top-level key a line, when `block`) or JSON.
fn rendered(json: bool) -> BoxedStrategy<String> {
    (spec_tree(), any::<bool>())
        .prop_map(move |(tree, block)| {
            let mut out = String::new();
            match &tree {
                Node::Map(entries) if block && !json => {
                    for (key, value) in entries {
                        out.push_str(&format!("{key}: "));
                        render(value, false, &mut out);
                        out.push('\n');
                    }
                }
                tree => render(tree, json, &mut out),
            }
            out
        })
        .boxed()
}

/// Up to seven edits of `base`: overwrite a byte, insert one of `pieces`, delete a run, repeat
/// one, cut the rest off.
fn mutated(base: BoxedStrategy<Vec<u8>>, pieces: BoxedStrategy<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    let edit = (0u8..5, any::<prop::sample::Index>(), 1usize..40, pieces);
    (base, prop::collection::vec(edit, 1..8))
        .prop_map(|(mut bytes, edits)| {
            for (kind, at, len, piece) in edits {
                let at = at.index(bytes.len() + 1);
                let end = (at + len).min(bytes.len());
                match kind {
                    0 if at < bytes.len() => bytes[at] = piece[0],
                    1 => drop(bytes.splice(at..at, piece)),
                    2 => drop(bytes.drain(at..end)),
                    3 => drop(bytes.splice(end..end, bytes[at..end].to_vec())),
                    4 => bytes.truncate(at),
                    _ => {}
                }
            }
            bytes
        })
        .boxed()
}

/// Text edited as bytes, so a cut may split a character (which the lossy decoding marks).
fn mutated_text(base: BoxedStrategy<String>) -> BoxedStrategy<String> {
    #[rustfmt::skip]
    const SYNTAX: &[&str] = &[
        "{", "}", "[", "]", ":", ": ", ",", "&a0 ", "*a0", "!t ", "!!binary ", "!!str ", "|", ">",
        "'", "\"", "#", "\n", "\n  ", "\t", "- ", "---\n", "...\n", "%YAML 1.2\n", "<<: ", "? ",
        "\\u0000", "\\", "\u{FEFF}", "\r", "é",
    ];
    let pieces = prop::sample::select(SYNTAX).prop_map(|piece| piece.as_bytes().to_vec());
    mutated(base.prop_map(String::into_bytes).boxed(), pieces.boxed())
        .prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .boxed()
}

fn yaml_text() -> BoxedStrategy<String> {
    prop_oneof![
        8 => rendered(false),
        3 => mutated_text(rendered(false)),
        1 => alias_bomb(),
        1 => mutated_text(alias_bomb()),
        1 => prop::collection::vec(any::<char>(), 0..512).prop_map(String::from_iter),
    ]
    .boxed()
}

fn json_text() -> BoxedStrategy<String> {
    prop_oneof![
        8 => rendered(true),
        3 => mutated_text(rendered(true)),
        1 => "[\\[\\]{}\",:0-9a-z .eE+\\-\\\\]{0,200}",
    ]
    .boxed()
}

/// Refusals grouped by the first field named (`shots[12].prompt` as `shots[].prompt`), and
/// for the document as a whole by the first words of the reason.
fn refusal(stage: &str, error: &SpecError) -> Verdict {
    let first = error.errors.first().expect("a SpecError names a field");
    let words = first.reason.split_whitespace();
    let why: Vec<&str> = words.take(4 * usize::from(first.path == "spec")).collect();
    let field = first.path.replace(|c: char| c.is_ascii_digit(), "");
    Verdict::Refused(
        format!("{stage} {field} {}", why.join(" "))
            .trim_end()
            .to_string(),
    )
}

/// An accepted sequence written as an API message reads back as the same sequence (what the
/// CLI sends is what the scheduler runs).
fn accepted(sequence: Sequence) -> Verdict {
    match sequence_from_pb(
        sequence_to_pb(&sequence),
        std::slice::from_ref(&sequence.model),
    ) {
        Ok(again) if again == sequence => Verdict::Accepted,
        Ok(again) => Verdict::Broken(format!("reads back as another:\n{sequence:?}\n{again:?}")),
        Err(error) => Verdict::Broken(format!("accepted, but its message is refused: {error}")),
    }
}

fn parse_and_validate(text: &str) -> Verdict {
    match parse_spec_text(text) {
        Err(error) => refusal("parse", &error),
        Ok(doc) => match validate(doc, None, &|_| Err("no files".into())) {
            Ok(sequence) => accepted(sequence),
            Err(error) => refusal("invalid", &error),
        },
    }
}

/// Loose on purpose (these texts are a few KiB): serde_yaml's events for the text, the
/// expansion budget's worth of scalars and the errors that echo them. It catches an expansion
/// the budgets failed to stop, not a few bytes more.
fn spec_heap_bound(text: &str) -> usize {
    3 * MAX_EXPANDED_SPEC_BYTES as usize + 512 * text.len() + 4 * MIB
}

#[test]
fn yaml_specs_parse_or_are_refused() {
    fuzz(
        "spec yaml",
        yaml_text(),
        |text| spec_heap_bound(text),
        |text| parse_and_validate(&text),
    );
}

#[test]
fn json_specs_parse_or_are_refused() {
    fuzz(
        "spec json",
        json_text(),
        |text| spec_heap_bound(text),
        |text| parse_and_validate(&text),
    );
}

// ---------------------------------------------------------------------------------------------
// API messages: built field by field, and raw or damaged wire bytes.

/// Mostly within `usual`, otherwise the values that break arithmetic.
fn odd_f64(usual: std::ops::Range<f64>) -> BoxedStrategy<f64> {
    #[rustfmt::skip]
    const ODD: &[f64] = &[
        f64::NAN, -f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, 0.0, f64::MAX, f64::MIN,
        f64::MIN_POSITIVE, 5e-324, -1.0, 0.5, 1.0, 2.0, 600.0, 600.000_000_1, 3600.0, 1e300,
    ];
    prop_oneof![20 => usual, 1 => prop::sample::select(ODD), 1 => any::<f64>()].boxed()
}

fn odd_u32(usual: std::ops::RangeInclusive<u32>) -> BoxedStrategy<u32> {
    let odd = vec![0, 1, 7, 61, 201, u32::MAX, i32::MAX as u32, 1 << 31];
    prop_oneof![20 => usual, 1 => prop::sample::select(odd), 1 => any::<u32>()].boxed()
}

/// Absent mostly; when there, one of `usual` mostly.
fn text(usual: &'static [&'static str]) -> BoxedStrategy<Option<String>> {
    let text =
        prop_oneof![20 => prop::sample::select(usual).prop_map(String::from), 1 => odd_text()];
    prop::option::weighted(0.25, text).boxed()
}

fn maybe<T: std::fmt::Debug>(value: impl Strategy<Value = T>) -> impl Strategy<Value = Option<T>> {
    prop::option::weighted(0.25, value)
}

/// 4x3 RGB from the `png` crate; with `claim`, its IHDR says another size (CRC fixed).
fn tiny_png(claim: Option<(u32, u32)>) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, 4, 3);
    encoder.set_color(png::ColorType::Rgb);
    let mut writer = encoder.write_header().expect("a png header");
    writer.write_image_data(&[90; 4 * 3 * 3]).expect("png data");
    writer.finish().expect("a finished png");
    if let Some((width, height)) = claim {
        // Signature (8), length (4), "IHDR" (4), width, height; the CRC covers type and data.
        bytes[16..20].copy_from_slice(&width.to_be_bytes());
        bytes[20..24].copy_from_slice(&height.to_be_bytes());
        let crc = fuzz_support::crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
    }
    bytes
}

fn reference_png() -> BoxedStrategy<Vec<u8>> {
    let sides = || prop::sample::select(vec![0, 1, 4320, 4321, 7680, 7681, 100_000, u32::MAX]);
    prop_oneof![
        2 => Just(tiny_png(None)),
        1 => Just(FOUR_BYTE_PALETTE_PNG.to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => (sides(), sides()).prop_map(|claim| tiny_png(Some(claim))),
    ]
    .boxed()
}

fn shot_message() -> BoxedStrategy<pb::ShotSpec> {
    let prompt = prop_oneof![
        20 => prop::sample::select(&["a pine valley", "x"][..]).prop_map(String::from),
        1 => odd_text(),
    ];
    let fields = (
        (
            text(&["cut", "continue", "crossfade"]),
            prop::option::weighted(0.05, odd_f64(0.1..1.0)),
            maybe(any::<u64>()),
        ),
        (
            text(&["blurry", "text"]),
            prop::option::weighted(0.05, reference_png()),
        ),
        (
            text(&["ref.png", ""]),
            text(&["a", "b", "c"]),
            text(&["street", "desert"]),
        ),
    );
    (prompt, odd_f64(1.0..600.0), fields)
        .prop_map(|(prompt, duration_seconds, fields)| {
            // Fields added to the message since stay unset: the raw wire bytes reach them.
            let mut m = pb::ShotSpec {
                prompt,
                duration_seconds,
                ..Default::default()
            };
            (
                (m.transition, m.crossfade_seconds, m.seed),
                (m.negative, m.reference_png),
                (m.reference_name, m.name, m.scene),
            ) = fields;
            m
        })
        .boxed()
}

fn sequence_message() -> BoxedStrategy<pb::SequenceSpec> {
    let shots = prop_oneof![
        20 => prop::collection::vec(shot_message(), 1..5),
        1 => Just(Vec::new()),
        1 => prop::collection::vec(shot_message(), spec::MAX_SHOTS - 2..spec::MAX_SHOTS + 40),
    ];
    let head = (
        (
            text(&["dawn", ""]),
            text(&["reelfarm-tiny", "wan-1.3b", "sora"]),
        ),
        (
            text(&["480p", "720p", "1080p", "720"]),
            text(&["16:9", "9:16", "1:1"]),
        ),
        (
            maybe(odd_u32(8..=60)),
            maybe(any::<u64>()),
            text(&["draft", "final"]),
        ),
        (text(&["35mm film", " "]), text(&["blurry", ""])),
    );
    let grade_reference = prop::collection::hash_map(
        prop::sample::select(vec!["street".to_string(), "desert".into(), "".into()]),
        prop::sample::select(vec![
            "0".to_string(),
            "-1".into(),
            "b".into(),
            "1e99".into(),
        ]),
        0..2,
    );
    let tail = (
        (shots, maybe(odd_u32(1..=200))),
        (
            text(&["off", "hm", "reinhard", "mkl", "hm-mkl-hm"]),
            maybe(odd_f64(0.0..2.0)),
        ),
        (grade_reference, text(&["ana", "team-b"])),
        maybe(prop_oneof![20 => -10i32..=10, 1 => any::<i32>()]),
    );
    (head, tail)
        .prop_map(|(head, tail)| {
            let mut m = pb::SequenceSpec::default();
            (
                (m.title, m.model),
                (m.resolution, m.aspect),
                (m.fps, m.seed, m.pass),
                (m.style, m.negative),
            ) = head;
            (
                (m.shots, m.steps),
                (m.color_match, m.continuity_blend_seconds),
                (m.grade_reference, m.owner),
                m.priority,
            ) = tail;
            m
        })
        .boxed()
}

fn convert(message: pb::SequenceSpec) -> Verdict {
    let models = ["reelfarm-tiny".to_string(), "wan-1.3b".to_string()];
    match sequence_from_pb(message, &models) {
        Ok(sequence) => accepted(sequence),
        Err(error) => refusal("invalid", &error),
    }
}

/// A message's own heap (strings, images, shots) is a small multiple of its encoded size, apart
/// from what each shot costs however few bytes it took on the wire.
fn message_heap_bound(encoded_len: usize, shots: usize) -> usize {
    8 * encoded_len + 1024 * shots + 4 * MIB
}

#[test]
fn api_messages_convert_or_are_refused() {
    let bound =
        |message: &pb::SequenceSpec| message_heap_bound(message.encoded_len(), message.shots.len());
    fuzz("proto spec", sequence_message(), bound, convert);
}

/// Bytes off the wire, decoded as the scheduler's gRPC layer does, then converted.
#[test]
fn wire_bytes_decode_and_convert_or_are_refused() {
    let encoded = sequence_message()
        .prop_map(|message| message.encode_to_vec())
        .boxed();
    let bytes = prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..4096),
        2 => encoded.clone(),
        3 => mutated(encoded, prop::collection::vec(any::<u8>(), 1..8).boxed()),
    ];
    // Every two bytes on the wire can be an empty shot.
    let bound = |bytes: &Vec<u8>| message_heap_bound(bytes.len(), bytes.len() / 2);
    fuzz(
        "proto bytes",
        bytes,
        bound,
        |bytes| match pb::SequenceSpec::decode(&bytes[..]) {
            Ok(message) => convert(message),
            Err(_) => Verdict::Refused("decode".into()),
        },
    );
}

// ---------------------------------------------------------------------------------------------
// What earlier runs found, pinned, and the worst inputs the caps let through.

use fuzz_support::FOUR_BYTE_PALETTE_PNG;

#[test]
fn a_reference_with_a_four_byte_palette_is_refused_at_submission() {
    let reason = spec::check_reference_png(FOUR_BYTE_PALETTE_PNG).expect_err("was accepted");
    assert!(reason.contains("palette"), "{reason}");
}

/// The most heap reading one spec may take once its values are within MAX_SPEC_VALUES. The
/// densest such spec (below, 99,990 empty shots) measured 72 MiB. Before MAX_SPEC_VALUES went
/// from 1,000,000 to 100,000, 999,000 empty shots (3 MB) passed both caps and took ~665 MiB.
const SPEC_HEAP_BUDGET: usize = 128 * MIB;

#[test]
fn the_densest_spec_within_the_caps_stays_within_the_heap_budget() {
    // `{}` is one value in three bytes: as many empty shots as both caps allow.
    let shots = (spec::MAX_SPEC_VALUES as usize - 10).min(spec::MAX_SPEC_BYTES as usize / 3 - 10);
    let text = format!("shots: [{}]\n", vec!["{}"; shots].join(","));
    let (verdict, peak) = heap_peak(|| parse_and_validate(&text));
    assert!(matches!(verdict, Verdict::Refused(_)), "{shots} shots");
    assert!(
        peak <= SPEC_HEAP_BUDGET,
        "{shots} shots: {} MiB",
        peak / MIB
    );
}

/// Found, and still so: serde_yaml loads every event of a text before the expansion budget
/// counts them, ~144 bytes of heap per byte of `[],`, so the densest text at MAX_SPEC_BYTES
/// (4 MiB of empty lists) measured 576 MiB before it is refused. Only the CLI reads spec texts
/// (on its user's machine); this keeps it from growing.
const SPEC_TEXT_HEAP_BUDGET: usize = 640 * MIB;

#[test]
fn the_densest_text_at_the_size_cap_stays_within_its_heap_budget() {
    let lists = (spec::MAX_SPEC_BYTES as usize - 4) / 3;
    let text = format!("[{}]\n", vec!["[]"; lists].join(","));
    let (verdict, peak) = heap_peak(|| parse_and_validate(&text));
    assert!(matches!(verdict, Verdict::Refused(_)), "a list is no spec");
    assert!(
        peak <= SPEC_TEXT_HEAP_BUDGET,
        "{lists} lists: {} MiB",
        peak / MIB
    );
}

/// Before validate stopped at "at most 500 shots" it went on to check every shot, piling up
/// errors, with name and scene checks that grow with the square of the count: these 40,000
/// named, continuing shots took 37 s in a debug build. Now ~35 ms; the 1 s bound leaves a
/// loaded CI machine room.
#[test]
fn forty_thousand_shots_are_refused_quickly() {
    let shot = |index: usize| pb::ShotSpec {
        transition: Some("continue".into()),
        name: Some(format!("shot-{index}")),
        scene: Some(["street", "desert"][index % 2].into()),
        ..Default::default()
    };
    let shots = (0..40_000).map(shot).collect();
    let started = Instant::now();
    let refused = sequence_from_pb(
        pb::SequenceSpec {
            shots,
            ..Default::default()
        },
        &[],
    );
    let took = started.elapsed();
    let errors = refused.expect_err("40,000 shots were accepted").errors;
    assert!(
        took < Duration::from_secs(1),
        "refusing 40,000 shots took {took:?}"
    );
    assert!(errors.len() < 10, "{} errors for one spec", errors.len());
    let reasons: Vec<&str> = errors.iter().map(|error| error.reason.as_str()).collect();
    let too_many = |reason: &&str| reason.contains("must list at most 500 shots");
    assert!(reasons.iter().any(too_many), "{reasons:?}");
}

/// The most heap decoding one SubmitSequenceRequest at the sequence API's decoding cap may take.
/// The densest request (below, all empty shots) measured 696 MiB at MAX_REQUEST_BYTES (4 MiB)
/// when an empty ShotSpec was 2 bytes on the wire and 232 in memory (the shots Vec grows by
/// doubling, 174 bytes of heap per wire byte); a shot's own `model` (issue 24) made it 256
/// bytes and 816 MiB. At the old cap (MAX_MESSAGE_BYTES, 16 MiB) that is over 3 GiB, held
/// before any check or authentication. The budget leaves room for one more optional field.
const REQUEST_HEAP_BUDGET: usize = 880 * MIB;

#[test]
fn decoding_the_densest_request_at_the_cap_stays_within_the_heap_budget() {
    let cap = reelfarm_common::limits::MAX_REQUEST_BYTES;
    let shots = (cap - 6) / 2;
    let mut request = vec![0x0A]; // spec (field 1), then its length
    prost::encoding::encode_varint(2 * shots as u64, &mut request);
    for _ in 0..shots {
        request.extend_from_slice(&[0x52, 0x00]); // shots (field 10): an empty ShotSpec
    }
    assert!(request.len() <= cap && request.len() + 8 > cap);
    let (decoded, peak) = heap_peak(|| pb::SubmitSequenceRequest::decode(&request[..]));
    let spec = decoded.expect("the request decodes").spec;
    assert_eq!(spec.map_or(0, |spec| spec.shots.len()), shots);
    let bytes = request.len();
    println!(
        "densest request: {bytes} bytes, {shots} shots, {} MiB of heap",
        peak / MIB
    );
    assert!(
        peak <= REQUEST_HEAP_BUDGET,
        "{bytes} bytes: {} MiB",
        peak / MIB
    );
}
