//! The sequence spec people write (YAML or JSON) and the API message that mirrors it: both
//! become one raw form, validated once into a `Sequence`, with every error naming the field
//! path and the reason (`shots[2].duration: must be between 1 and 600 seconds, got 0`).

use std::fmt;

use serde::Deserialize;

use crate::pb;
use std::collections::BTreeMap;

use crate::sequence::{
    Aspect, ColorMatch, MAX_VARIANTS, Pass, Reference, Resolution, Sequence, Shot, Transition,
};

/// The model a spec renders with when it names none (the built-in demo model).
pub const DEFAULT_MODEL: &str = "reelfarm-tiny";
pub const MAX_SHOTS: usize = 500;
pub const MAX_TOTAL_SECONDS: f64 = 3600.0;
pub const MAX_PROMPT_CHARS: usize = 2000;
pub const SHOT_SECONDS: (f64, f64) = (1.0, 600.0);
pub const FPS_RANGE: (u32, u32) = (8, 60);
pub const STEPS_RANGE: (u32, u32) = (1, 200);
pub const DEFAULT_CROSSFADE_SECONDS: f64 = 0.5;
pub const DEFAULT_CONTINUITY_BLEND_SECONDS: f64 = 0.5;
pub const MAX_CONTINUITY_BLEND_SECONDS: f64 = 2.0;
pub const PRIORITY_RANGE: (i32, i32) = (-10, 10);
const MAX_LABEL_CHARS: usize = 100;
/// The most pixels a reference image may have (7680x4320, 8K UHD). The worker's PNG decoder
/// (`reelfarm_media::video::MAX_PNG_PIXELS`) enforces the same bound, so what passes here
/// decodes there; the worker's tests hold the two equal.
pub const MAX_REFERENCE_PIXELS: u64 = 7680 * 4320;

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// Everything wrong with a spec, so a person fixes it in one go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub errors: Vec<FieldError>,
}

impl SpecError {
    fn single(path: impl Into<String>, reason: impl Into<String>) -> Self {
        SpecError {
            errors: vec![FieldError {
                path: path.into(),
                reason: reason.into(),
            }],
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.errors.iter().map(ToString::to_string).collect();
        write!(f, "{}", lines.join("; "))
    }
}

impl std::error::Error for SpecError {}

impl From<SpecError> for crate::Error {
    fn from(error: SpecError) -> Self {
        crate::Error::InvalidArgument(error.to_string())
    }
}

/// A value people may write as a number or a word (`25`, `25.5`, `"25s"`, `480p`, `"16:9"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Integer(i64),
    Float(f64),
    Text(String),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Integer(value) => write!(f, "{value}"),
            Scalar::Float(value) => write!(f, "{value}"),
            Scalar::Text(value) => write!(f, "{value}"),
        }
    }
}

/// The spec exactly as written, before validation.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecDoc {
    pub title: Option<String>,
    pub model: Option<String>,
    pub resolution: Option<Scalar>,
    pub aspect: Option<Scalar>,
    pub fps: Option<Scalar>,
    pub seed: Option<u64>,
    pub pass: Option<String>,
    pub style: Option<String>,
    pub negative: Option<String>,
    pub steps: Option<Scalar>,
    pub shots: Option<Vec<ShotDoc>>,
    /// `off`, `hm`, `reinhard`, `mkl` or `hm-mkl-hm`.
    pub color_match: Option<String>,
    /// Seconds blended over every continuity join (`0` for none).
    pub continuity_blend: Option<Scalar>,
    /// Scene label → the shot (name or index) whose look the scene follows.
    pub grade_reference: Option<BTreeMap<String, Scalar>>,
    /// Who the sequence is for; fair share is between owners, then between sequences.
    pub owner: Option<String>,
    /// Higher goes first (-10 to 10, default 0).
    pub priority: Option<Scalar>,
    /// Seam QA: score continuity joins, render failing ones again (default: final pass only).
    pub seam_qa: Option<bool>,
    /// New seeds per failing join (1 to 5, default 2).
    pub seam_qa_tries: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShotDoc {
    pub prompt: Option<String>,
    pub duration: Option<Scalar>,
    pub transition: Option<String>,
    pub crossfade: Option<Scalar>,
    pub seed: Option<u64>,
    pub negative: Option<String>,
    pub name: Option<String>,
    pub scene: Option<String>,
    /// A path relative to the spec file.
    pub reference: Option<String>,
    /// Takes to render of this shot, each from its own seed (1 to 8; default 1).
    pub variants: Option<u32>,
    /// Which take is on the timeline (0-based, below `variants`; default 0).
    pub take: Option<u32>,
    /// The catalog model this shot renders with (default: the sequence's `model`), so one
    /// sequence can mix local and hosted shots.
    pub model: Option<String>,
    /// The image itself, when it came over the API instead of from a file.
    #[serde(skip)]
    pub inline_reference: Option<Reference>,
}

/// Validates the raw spec. `known_models` are the ids of the farm's model catalog (`None`:
/// any id); `read_reference` turns a reference path into its bytes.
pub fn validate(
    doc: SpecDoc,
    known_models: Option<&[String]>,
    read_reference: &dyn Fn(&str) -> Result<Vec<u8>, String>,
) -> Result<Sequence, SpecError> {
    let mut errors = Vec::new();
    let mut fail = |path: String, reason: String| errors.push(FieldError { path, reason });

    let model = doc
        .model
        .clone()
        .unwrap_or_else(|| DEFAULT_MODEL.to_string());
    if let Some(known_models) = known_models
        && !known_models.contains(&model)
    {
        fail(
            "model".into(),
            format!(
                "unknown model {model:?}; available: {}",
                known_models.join(", ")
            ),
        );
    }
    let resolution = match &doc.resolution {
        None => Resolution::P480,
        Some(value) => {
            let word = value.to_string().to_lowercase();
            let word = if word.ends_with('p') {
                word
            } else {
                format!("{word}p")
            };
            Resolution::ALL
                .into_iter()
                .find(|r| r.name() == word)
                .unwrap_or_else(|| {
                    fail(
                        "resolution".into(),
                        format!("must be one of 480p, 720p, 1080p, got {value}"),
                    );
                    Resolution::P480
                })
        }
    };
    let aspect = match &doc.aspect {
        None => Aspect::Wide16x9,
        Some(value) => {
            let word = value.to_string().replace(' ', "");
            Aspect::ALL
                .into_iter()
                .find(|a| a.name() == word)
                .unwrap_or_else(|| {
                    let names: Vec<&str> = Aspect::ALL.iter().map(|a| a.name()).collect();
                    fail(
                        "aspect".into(),
                        format!("must be one of {}, got {value}", names.join(", ")),
                    );
                    Aspect::Wide16x9
                })
        }
    };
    let fps = match &doc.fps {
        None => 24,
        Some(value) => match whole_number(value) {
            Some(fps) if (i64::from(FPS_RANGE.0)..=i64::from(FPS_RANGE.1)).contains(&fps) => {
                fps as u32
            }
            _ => {
                fail(
                    "fps".into(),
                    format!(
                        "must be a whole number between {} and {}, got {value}",
                        FPS_RANGE.0, FPS_RANGE.1
                    ),
                );
                24
            }
        },
    };
    let pass = match doc.pass.as_deref().map(str::to_lowercase).as_deref() {
        None | Some("draft") => Pass::Draft,
        Some("final") => Pass::Final,
        Some(other) => {
            fail(
                "pass".into(),
                format!("must be draft or final, got {other}"),
            );
            Pass::Draft
        }
    };
    let steps = match &doc.steps {
        None => None,
        Some(value) => match whole_number(value) {
            Some(steps)
                if (i64::from(STEPS_RANGE.0)..=i64::from(STEPS_RANGE.1)).contains(&steps) =>
            {
                Some(steps as u32)
            }
            _ => {
                fail(
                    "steps".into(),
                    format!(
                        "must be a whole number between {} and {}, got {value}",
                        STEPS_RANGE.0, STEPS_RANGE.1
                    ),
                );
                None
            }
        },
    };
    check_text(&mut fail, "title", doc.title.as_deref(), 200);
    let owner = label(&mut fail, "owner".into(), doc.owner.clone());
    let priority = match &doc.priority {
        None => 0,
        Some(value) => match whole_number(value) {
            Some(priority)
                if (i64::from(PRIORITY_RANGE.0)..=i64::from(PRIORITY_RANGE.1))
                    .contains(&priority) =>
            {
                priority as i32
            }
            _ => {
                fail(
                    "priority".into(),
                    format!(
                        "must be a whole number between {} and {} (higher goes first), got {value}",
                        PRIORITY_RANGE.0, PRIORITY_RANGE.1
                    ),
                );
                0
            }
        },
    };
    let seam_qa_tries = match doc.seam_qa_tries {
        None => crate::sequence::SEAM_QA_TRIES,
        Some(tries) if (1..=crate::sequence::MAX_SEAM_QA_TRIES).contains(&tries) => tries,
        Some(tries) => {
            fail(
                "seam_qa_tries".into(),
                format!(
                    "must be between 1 and {} (new seeds per failing join), got {tries}",
                    crate::sequence::MAX_SEAM_QA_TRIES
                ),
            );
            crate::sequence::SEAM_QA_TRIES
        }
    };
    check_text(&mut fail, "style", doc.style.as_deref(), MAX_PROMPT_CHARS);
    check_text(
        &mut fail,
        "negative",
        doc.negative.as_deref(),
        MAX_PROMPT_CHARS,
    );

    let color_match = match doc.color_match.as_deref().map(str::to_lowercase) {
        None => ColorMatch::DEFAULT,
        Some(word) => ColorMatch::from_name(&word).unwrap_or_else(|| {
            let names: Vec<&str> = ColorMatch::ALL.iter().map(|m| m.name()).collect();
            fail(
                "color_match".into(),
                format!("must be one of {}, got {word}", names.join(", ")),
            );
            ColorMatch::DEFAULT
        }),
    };
    let continuity_blend_seconds = match &doc.continuity_blend {
        None => DEFAULT_CONTINUITY_BLEND_SECONDS,
        Some(value) => match seconds(value) {
            Some(seconds) if (0.0..=MAX_CONTINUITY_BLEND_SECONDS).contains(&seconds) => seconds,
            _ => {
                fail(
                    "continuity_blend".into(),
                    format!(
                        "must be between 0 and {MAX_CONTINUITY_BLEND_SECONDS} seconds (0 turns the blend off), got {value}"
                    ),
                );
                DEFAULT_CONTINUITY_BLEND_SECONDS
            }
        },
    };

    let shot_docs = doc.shots.unwrap_or_default();
    if shot_docs.is_empty() {
        fail("shots".into(), "must list at least one shot".into());
    } else if shot_docs.len() > MAX_SHOTS {
        fail(
            "shots".into(),
            format!(
                "must list at most {MAX_SHOTS} shots, got {}",
                shot_docs.len()
            ),
        );
        // Checking each of a hostile number of shots would only pile up errors (and the
        // name and scene checks grow with the square of the count).
        return Err(SpecError { errors });
    }

    let mut shots = Vec::with_capacity(shot_docs.len());
    for (index, shot) in shot_docs.into_iter().enumerate() {
        let at = |field: &str| format!("shots[{index}].{field}");
        let prompt = match shot.prompt {
            None => {
                fail(
                    at("prompt"),
                    "required: describe what the shot shows".into(),
                );
                String::new()
            }
            Some(prompt) => {
                let chars = prompt.chars().count();
                if prompt.trim().is_empty() {
                    fail(at("prompt"), "must not be empty".into());
                } else if chars > MAX_PROMPT_CHARS {
                    fail(
                        at("prompt"),
                        format!("must be at most {MAX_PROMPT_CHARS} characters, got {chars}"),
                    );
                }
                prompt.trim().to_string()
            }
        };
        let duration_seconds = match &shot.duration {
            None => {
                fail(
                    at("duration"),
                    "required: seconds, e.g. 12 or \"12s\"".into(),
                );
                SHOT_SECONDS.0
            }
            Some(value) => match seconds(value) {
                Some(seconds) if (SHOT_SECONDS.0..=SHOT_SECONDS.1).contains(&seconds) => seconds,
                Some(_) => {
                    fail(
                        at("duration"),
                        format!("must be between 1 and 600 seconds, got {value}"),
                    );
                    SHOT_SECONDS.0
                }
                None => {
                    fail(
                        at("duration"),
                        format!("must be a number of seconds like 12 or \"12s\", got {value:?}"),
                    );
                    SHOT_SECONDS.0
                }
            },
        };
        let transition = match shot.transition.as_deref().map(str::to_lowercase).as_deref() {
            None | Some("cut") => Transition::Cut,
            Some("continue") => Transition::Continue,
            Some("crossfade") => Transition::Crossfade,
            Some(other) => {
                fail(
                    at("transition"),
                    format!("must be cut, continue or crossfade, got {other}"),
                );
                Transition::Cut
            }
        };
        if index == 0 && transition != Transition::Cut {
            fail(
                at("transition"),
                format!(
                    "the first shot has nothing before it to {}; use cut",
                    transition.name()
                ),
            );
        }
        let crossfade_seconds = match (&shot.crossfade, transition) {
            (Some(_), kind) if kind != Transition::Crossfade => {
                fail(
                    at("crossfade"),
                    format!(
                        "only allowed with transition: crossfade (this shot's transition is {})",
                        kind.name()
                    ),
                );
                None
            }
            (None, Transition::Crossfade) => Some(DEFAULT_CROSSFADE_SECONDS),
            (Some(value), _) => match seconds(value) {
                Some(seconds) if seconds > 0.0 => Some(seconds),
                _ => {
                    fail(
                        at("crossfade"),
                        format!("must be a positive number of seconds, got {value}"),
                    );
                    None
                }
            },
            (None, _) => None,
        };
        check_text(
            &mut fail,
            &at("negative"),
            shot.negative.as_deref(),
            MAX_PROMPT_CHARS,
        );
        let reference = match (shot.inline_reference, shot.reference) {
            (Some(inline), _) => Some(inline),
            (None, Some(name)) => match read_reference(&name) {
                Ok(png) => Some(Reference { name, png }),
                Err(reason) => {
                    fail(at("reference"), reason);
                    None
                }
            },
            (None, None) => None,
        };
        let name = label(&mut fail, at("name"), shot.name);
        let scene = label(&mut fail, at("scene"), shot.scene);
        if let Some(name) = &name
            && let Some(first) = shots
                .iter()
                .position(|other: &Shot| other.name.as_ref() == Some(name))
        {
            fail(
                at("name"),
                format!("{name:?} is already the name of shots[{first}]; names must be unique"),
            );
        }
        if transition == Transition::Continue
            && let (Some(this), Some(previous)) = (&scene, shots.last())
        {
            let inherited = run_scene(&shots, shots.len() - 1);
            if inherited
                .as_ref()
                .is_some_and(|inherited| inherited != this)
            {
                fail(
                    at("scene"),
                    format!(
                        "a continuing shot belongs to the scene of the shot it continues ({:?}, from {}); remove scene or use transition: cut",
                        inherited.unwrap_or_default(),
                        previous.display_name(shots.len() - 1)
                    ),
                );
            }
        }
        if reference.is_some() && transition == Transition::Continue {
            fail(at("reference"), "a continuing shot starts from the previous shot's last frame; remove reference or use transition: cut".into());
        }
        if let Some(reference) = &reference
            && let Err(reason) = check_reference_png(&reference.png)
        {
            fail(
                at("reference"),
                format!("{} is not a usable PNG image: {reason}", reference.name),
            );
        }
        let variants = shot.variants.unwrap_or(1);
        if !(1..=MAX_VARIANTS).contains(&variants) {
            fail(
                at("variants"),
                format!("must be within 1..={MAX_VARIANTS}, got {variants}"),
            );
        }
        let take = shot.take.unwrap_or(0);
        if take >= variants.max(1) {
            fail(
                at("take"),
                format!(
                    "take {take} of {} variants: takes are numbered from 0",
                    variants.max(1)
                ),
            );
        }
        if let (Some(known_models), Some(model)) = (known_models, &shot.model)
            && !known_models.contains(model)
        {
            fail(
                at("model"),
                format!(
                    "unknown model {model:?}; available: {}",
                    known_models.join(", ")
                ),
            );
        }
        shots.push(Shot {
            variants,
            take,
            model: shot.model,
            prompt,
            duration_seconds,
            transition,
            crossfade_seconds,
            seed: shot.seed,
            negative: shot.negative,
            reference,
            name,
            scene,
        });
    }
    let grade_references = grade_references(&mut fail, doc.grade_reference, &shots);

    for index in 1..shots.len() {
        let Some(crossfade) = shots[index].crossfade_seconds else {
            continue;
        };
        let (previous, this) = (
            shots[index - 1].duration_seconds,
            shots[index].duration_seconds,
        );
        if crossfade > previous.min(this) {
            let which = if previous <= this {
                "the previous shot"
            } else {
                "this shot"
            };
            fail(
                format!("shots[{index}].crossfade"),
                format!(
                    "{crossfade} s is longer than {which} ({} s); a dissolve must fit in both shots",
                    previous.min(this)
                ),
            );
        } else if (crossfade * f64::from(fps)).round() < 1.0 {
            fail(
                format!("shots[{index}].crossfade"),
                format!("{crossfade} s is shorter than one frame at {fps} fps"),
            );
        }
    }
    let total: f64 = shots.iter().map(|shot| shot.duration_seconds).sum();
    if total > MAX_TOTAL_SECONDS {
        fail(
            "shots".into(),
            format!("total duration {total} s exceeds the limit of {MAX_TOTAL_SECONDS} s (1 hour)"),
        );
    }

    if !errors.is_empty() {
        return Err(SpecError { errors });
    }
    Ok(Sequence {
        title: doc.title.filter(|title| !title.trim().is_empty()),
        model,
        resolution,
        aspect,
        fps,
        seed: doc.seed.unwrap_or(0),
        pass,
        style: doc.style.filter(|style| !style.trim().is_empty()),
        negative: doc.negative.filter(|negative| !negative.trim().is_empty()),
        steps,
        shots,
        color_match,
        continuity_blend_seconds,
        grade_references,
        owner,
        priority,
        seam_qa: doc.seam_qa,
        seam_qa_tries,
    })
}

/// An optional short label (shot name, scene): trimmed, non-empty, at most 100 characters.
fn label(
    fail: &mut impl FnMut(String, String),
    path: String,
    text: Option<String>,
) -> Option<String> {
    let text = text?.trim().to_string();
    let chars = text.chars().count();
    if text.is_empty() {
        fail(path, "must not be empty; leave it out instead".into());
        None
    } else if chars > MAX_LABEL_CHARS {
        fail(
            path,
            format!("must be at most {MAX_LABEL_CHARS} characters, got {chars}"),
        );
        None
    } else {
        Some(text)
    }
}

/// The scene label a shot ends up in: its own, or for a continuing shot its run's.
fn run_scene(shots: &[Shot], index: usize) -> Option<String> {
    let start = (0..=index)
        .rev()
        .find(|&i| shots[i].transition != Transition::Continue || i == 0)
        .unwrap_or(0);
    (start..=index).find_map(|i| shots[i].scene.clone())
}

/// `grade_reference: {street: alley-wide, desert: 4}` → scene label → shot index, checking
/// that the scene exists and the named shot belongs to it.
fn grade_references(
    fail: &mut impl FnMut(String, String),
    written: Option<BTreeMap<String, Scalar>>,
    shots: &[Shot],
) -> BTreeMap<String, usize> {
    let mut resolved = BTreeMap::new();
    let scenes: Vec<Option<String>> = (0..shots.len()).map(|i| run_scene(shots, i)).collect();
    for (scene, shot) in written.unwrap_or_default() {
        let path = format!("grade_reference.{scene}");
        if !scenes
            .iter()
            .any(|label| label.as_deref() == Some(scene.as_str()))
        {
            fail(path, format!("no shot has scene: {scene}"));
            continue;
        }
        let index = match &shot {
            Scalar::Integer(index) => usize::try_from(*index).ok().filter(|&i| i < shots.len()),
            Scalar::Text(name) => shots
                .iter()
                .position(|s| s.name.as_deref() == Some(name.as_str())),
            Scalar::Float(_) => None,
        };
        let Some(index) = index else {
            fail(
                path,
                format!(
                    "{shot} is neither a shot name nor a shot index (0..{})",
                    shots.len()
                ),
            );
            continue;
        };
        if scenes[index].as_deref() != Some(scene.as_str()) {
            fail(
                path,
                format!(
                    "{} is in scene {}, not {scene}",
                    shots[index].display_name(index),
                    scenes[index].as_deref().unwrap_or("(none)")
                ),
            );
            continue;
        }
        resolved.insert(scene, index);
    }
    resolved
}

fn check_text(
    fail: &mut impl FnMut(String, String),
    path: &str,
    text: Option<&str>,
    max_chars: usize,
) {
    if let Some(text) = text {
        let chars = text.chars().count();
        if chars > max_chars {
            fail(
                path.to_string(),
                format!("must be at most {max_chars} characters, got {chars}"),
            );
        }
    }
}

fn whole_number(value: &Scalar) -> Option<i64> {
    match value {
        Scalar::Integer(number) => Some(*number),
        Scalar::Float(number) if number.fract() == 0.0 => Some(*number as i64),
        Scalar::Text(text) => text.trim().parse().ok(),
        Scalar::Float(_) => None,
    }
}

/// `25`, `2.5`, `"25s"`, `"25 s"` → seconds.
fn seconds(value: &Scalar) -> Option<f64> {
    let seconds = match value {
        Scalar::Integer(number) => *number as f64,
        Scalar::Float(number) => *number,
        Scalar::Text(text) => text.trim().trim_end_matches('s').trim().parse().ok()?,
    };
    seconds.is_finite().then_some(seconds)
}

/// Whether `bytes` are a PNG the worker can use as a reference: a readable header and between
/// 1 and `MAX_REFERENCE_PIXELS` pixels.
pub fn check_reference_png(bytes: &[u8]) -> Result<(), String> {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = decoder.read_info().map_err(|error| error.to_string())?;
    let (width, height) = reader.info().size();
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 {
        return Err(format!("{width}x{height} has no pixels"));
    }
    if pixels > MAX_REFERENCE_PIXELS {
        return Err(format!(
            "{width}x{height} is {pixels} pixels; references may have at most {MAX_REFERENCE_PIXELS} (7680x4320, 8K UHD)"
        ));
    }
    // The worker's decoder refuses the same (a palette of partial entries).
    if let Some(palette) = &reader.info().palette
        && (palette.is_empty() || palette.len() % 3 != 0 || palette.len() > 256 * 3)
    {
        return Err(format!(
            "a {}-byte palette (PLTE holds 1 to 256 three-byte entries)",
            palette.len()
        ));
    }
    Ok(())
}

mod api;
mod load;
pub use api::{sequence_from_pb, sequence_to_pb};
pub use load::{
    MAX_EXPANDED_SPEC_BYTES, MAX_REFERENCE_BYTES, MAX_SPEC_BYTES, MAX_SPEC_VALUES, load_spec_file,
    parse_spec_text,
};

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
