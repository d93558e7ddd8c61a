//! A catalog file as a person writes it: `[[model]]` entries parsed one at a time (so a wrong type names its field), re-declared built-ins applied first, each entry made whole from its base and checked, every refusal naming the file, the entry and the field.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::hosted::{HOSTED_MEMORY, HOSTED_PROGRESS_STEPS, HostedDoc};
use super::{Backend, Catalog, CatalogError, ModelEntry};
use crate::memory::MemoryModel;

impl Catalog {
    /// Adds the `[[model]]` entries of a catalog file's text; `origin` names it in errors.
    /// Re-declared built-ins go first, so an entry on such a `base` copies the re-declared
    /// settings wherever it stands in the file; the others follow in file order.
    pub fn add_toml(&mut self, text: &str, origin: &str) -> Result<(), CatalogError> {
        let docs = entry_docs(text, origin)?;
        let at = |index: usize| {
            move |(field, reason): (String, String)| CatalogError {
                origin: origin.to_string(),
                path: format!("model[{index}].{field}"),
                reason,
            }
        };
        let (redeclarations, others): (Vec<_>, Vec<_>) = docs
            .into_iter()
            .partition(|(_, doc)| doc.redeclares_builtin());
        let mut redeclared = BTreeMap::new();
        for (index, doc) in redeclarations {
            self.redeclare(index, doc, &mut redeclared)
                .map_err(at(index))?;
        }
        for (index, doc) in others {
            self.add_entry(doc, &redeclared).map_err(at(index))?;
        }
        Ok(())
    }

    /// A built-in re-declared (its id, no `base`): the built-in as shipped is its base, its
    /// backend stays, and the entry replaces it. `redeclared`: the index of each built-in's
    /// re-declaration so far (once per file).
    fn redeclare(
        &mut self,
        index: usize,
        doc: EntryDoc,
        redeclared: &mut BTreeMap<String, usize>,
    ) -> Result<(), (String, String)> {
        if let Some(first) = redeclared.get(&doc.id) {
            return Err((
                "id".to_string(),
                format!(
                    "{:?} is re-declared twice (first at model[{first}]); a file re-declares a built-in once",
                    doc.id
                ),
            ));
        }
        let builtin = Catalog::builtin();
        let shipped = builtin
            .get(&doc.id)
            .expect("a re-declaration names a built-in")
            .backend;
        if let Some(name) = &doc.backend
            && parse_backend(name)? != shipped
        {
            return Err((
                "backend".to_string(),
                format!(
                    "{name:?}: a re-declared built-in keeps its backend ({})",
                    shipped.name()
                ),
            ));
        }
        redeclared.insert(doc.id.clone(), index);
        let entry = builtin.resolve(EntryDoc {
            base: Some(doc.id.clone()),
            ..doc
        })?;
        self.entries.insert(entry.id.clone(), entry);
        Ok(())
    }

    /// A new model: an id no entry has, made whole on its `base` (if any).
    fn add_entry(
        &mut self,
        doc: EntryDoc,
        redeclared: &BTreeMap<String, usize>,
    ) -> Result<(), (String, String)> {
        // A built-in's id with a `base` (a re-declaration has none).
        if is_builtin(&doc.id) {
            let reason = match redeclared.get(&doc.id) {
                Some(first) => format!(
                    "{:?} is a built-in re-declared at model[{first}]; a file re-declares a built-in once",
                    doc.id
                ),
                None => format!("{:?} is a built-in: drop `base` to re-declare it", doc.id),
            };
            return Err(("base".to_string(), reason));
        }
        if self.entries.contains_key(&doc.id) {
            return Err((
                "id".to_string(),
                format!("{:?} is already in the catalog", doc.id),
            ));
        }
        let entry = self.resolve(doc)?;
        self.entries.insert(entry.id.clone(), entry);
        Ok(())
    }

    /// A file entry made whole: the base's settings under the entry's own, then checked.
    fn resolve(&self, mut doc: EntryDoc) -> Result<ModelEntry, (String, String)> {
        let field = |name: &str| name.to_string();
        check_id(&doc.id).map_err(|reason| (field("id"), reason))?;
        let base = match &doc.base {
            Some(base) => Some(self.get(base).cloned().ok_or_else(|| {
                (
                    field("base"),
                    format!(
                        "unknown model {base:?}; available: {}",
                        self.ids().join(", ")
                    ),
                )
            })?),
            None => None,
        };
        let missing = |name: &str| {
            (
                field(name),
                "is required (or give `base` to copy it from a known model)".to_string(),
            )
        };
        let backend = match doc.backend.as_deref() {
            Some(name) => parse_backend(name)?,
            None => base
                .as_ref()
                .map(|b| b.backend)
                .ok_or_else(|| missing("backend"))?,
        };
        if backend == Backend::Simulated {
            return Err((
                field("base"),
                format!("{} models run only in the simulator", backend.name()),
            ));
        }
        let hosted_doc = doc.hosted_doc();
        if backend == Backend::OpenAiVideos {
            return resolve_hosted(doc, hosted_doc, base.as_ref());
        }
        if let Some(name) = hosted_doc.first_given() {
            return Err((
                field(name),
                format!(
                    "is for backend \"openai-videos\" only; this entry's backend is {}",
                    backend.name()
                ),
            ));
        }
        let pick = |value: Option<f64>, of_base: Option<f64>, name: &str| {
            value.or(of_base).ok_or_else(|| missing(name))
        };
        let entry = ModelEntry {
            id: doc.id,
            backend,
            native_fps: doc.native_fps.or(base.as_ref().and_then(|b| b.native_fps)),
            window_seconds: pick(
                doc.window_seconds,
                base.as_ref().map(|b| b.window_seconds),
                "window_seconds",
            )?,
            temporal_stride: doc
                .temporal_stride
                .or(base.as_ref().map(|b| b.temporal_stride))
                .ok_or_else(|| missing("temporal_stride"))?,
            draft_steps: doc
                .draft_steps
                .or(base.as_ref().map(|b| b.draft_steps))
                .ok_or_else(|| missing("draft_steps"))?,
            final_steps: doc
                .final_steps
                .or(base.as_ref().map(|b| b.final_steps))
                .ok_or_else(|| missing("final_steps"))?,
            guidance: doc
                .guidance
                .or(base.as_ref().map(|b| b.guidance))
                .ok_or_else(|| missing("guidance"))?,
            memory: match (doc.memory, base.as_ref()) {
                (Some(memory), base) => memory
                    .over(base.map(|b| b.memory))
                    .map_err(|name| missing(&format!("memory.{name}")))?,
                (None, Some(base)) => base.memory,
                (None, None) => return Err(missing("memory")),
            },
            // A base's digest names the base's weights: new weights need their own.
            weights_digest: match &doc.weights {
                Some(_) => doc.weights_digest,
                None => doc
                    .weights_digest
                    .or(base.as_ref().and_then(|b| b.weights_digest.clone())),
            },
            weights: doc.weights.or(base.and_then(|b| b.weights)),
            hosted: None,
        };
        check_entry(&entry)?;
        Ok(entry)
    }
}

/// A hosted entry: its API fields over its base's, and the farm-side settings every hosted
/// model shares (one frame per latent frame, no steps of its own, `HOSTED_MEMORY`); the
/// settings of a local model are refused by name.
fn resolve_hosted(
    doc: EntryDoc,
    hosted: HostedDoc,
    base: Option<&ModelEntry>,
) -> Result<ModelEntry, (String, String)> {
    let local_only = [
        ("native_fps", doc.native_fps.is_some()),
        ("window_seconds", doc.window_seconds.is_some()),
        ("temporal_stride", doc.temporal_stride.is_some()),
        ("draft_steps", doc.draft_steps.is_some()),
        ("final_steps", doc.final_steps.is_some()),
        ("guidance", doc.guidance.is_some()),
        ("memory", doc.memory.is_some()),
        ("weights", doc.weights.is_some()),
        ("weights_digest", doc.weights_digest.is_some()),
    ];
    if let Some((name, _)) = local_only.iter().find(|(_, given)| *given) {
        return Err((
            name.to_string(),
            "is not used by an openai-videos model (the service picks it); leave it out"
                .to_string(),
        ));
    }
    let spec = hosted.resolve(base.and_then(|b| b.hosted.as_ref()))?;
    Ok(ModelEntry {
        id: doc.id,
        backend: Backend::OpenAiVideos,
        native_fps: None,
        window_seconds: f64::from(spec.longest_clip()),
        temporal_stride: 1,
        // The service's progress is a percentage: a hosted segment's "steps" are its 100.
        draft_steps: HOSTED_PROGRESS_STEPS,
        final_steps: HOSTED_PROGRESS_STEPS,
        guidance: 0.0,
        memory: HOSTED_MEMORY,
        weights: None,
        // What renders is the remote model, at the sizes and lengths it is asked for: cache
        // keys change when any of them does.
        weights_digest: Some(format!(
            "remote {} at {}, sizes {:?}, clips {:?}",
            spec.remote_model, spec.base_url, spec.sizes, spec.clip_seconds
        )),
        hosted: Some(spec),
    })
}

fn is_builtin(id: &str) -> bool {
    Catalog::builtin().get(id).is_some()
}

/// A file's `backend`: the ones a file may name (not `simulated`).
fn parse_backend(name: &str) -> Result<Backend, (String, String)> {
    match name {
        "tiny" => Ok(Backend::Tiny),
        "wan" => Ok(Backend::Wan),
        "openai-videos" => Ok(Backend::OpenAiVideos),
        other => Err((
            "backend".to_string(),
            format!("unknown backend {other:?}; available: tiny, wan, openai-videos"),
        )),
    }
}

/// A catalog file's `[[model]]` entries, each with its index in the file.
fn entry_docs(text: &str, origin: &str) -> Result<Vec<(usize, EntryDoc)>, CatalogError> {
    let error = |path: String, reason: String| CatalogError {
        origin: origin.to_string(),
        path,
        reason,
    };
    if text.len() > MAX_FILE_BYTES {
        return Err(error(
            "file".into(),
            format!(
                "is {} bytes; a catalog file is at most {MAX_FILE_BYTES}",
                text.len()
            ),
        ));
    }
    let mut table: toml::Table = toml::from_str(text).map_err(|e| {
        error(
            "file".into(),
            e.message().to_string()
                + &e.span()
                    .map_or(String::new(), |s| format!(" (at byte {})", s.start)),
        )
    })?;
    let models = match table.remove("model") {
        None => Vec::new(),
        Some(toml::Value::Array(models)) => models,
        Some(_) => {
            return Err(error(
                "model".into(),
                "must be a list of [[model]] tables".into(),
            ));
        }
    };
    if let Some(key) = table.keys().next() {
        return Err(error(
            key.clone(),
            "unknown key; a catalog file holds only [[model]] tables".into(),
        ));
    }
    if models.len() > MAX_ENTRIES {
        return Err(error(
            "model".into(),
            format!("{} entries; at most {MAX_ENTRIES}", models.len()),
        ));
    }
    models
        .into_iter()
        .enumerate()
        .map(|(index, value)| {
            // One entry at a time, so a wrong type names its field, not a byte offset.
            let doc: EntryDoc = serde_path_to_error::deserialize(value).map_err(|e| {
                let path = e.path().to_string();
                let field = if path == "." {
                    String::new()
                } else {
                    format!(".{path}")
                };
                let reason = e.into_inner().to_string();
                let reason = reason.lines().next().unwrap_or_default().to_string();
                error(format!("model[{index}]{field}"), reason)
            })?;
            Ok((index, doc))
        })
        .collect()
}

/// Frames per latent frame of the Wan VAE: a wan entry cannot change it.
/// The Wan VAE's frames per latent frame.
pub(crate) const WAN_TEMPORAL_STRIDE: u32 = 4;
const MAX_FILE_BYTES: usize = 1 << 20;
const MAX_ENTRIES: usize = 1000;

fn check_id(id: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
    if id.is_empty() || id.len() > 64 || !id.chars().all(allowed) {
        return Err(format!(
            "{id:?} must be 1-64 characters of a-z, 0-9, '.', '_' and '-'"
        ));
    }
    Ok(())
}

fn check_entry(entry: &ModelEntry) -> Result<(), (String, String)> {
    let fail = |name: &str, reason: String| Err((name.to_string(), reason));
    match (entry.backend, entry.native_fps) {
        (Backend::Tiny, Some(fps)) => {
            return fail(
                "native_fps",
                format!(
                    "{fps}: the {} backend renders at the sequence's rate; leave it out",
                    entry.backend.name()
                ),
            );
        }
        (Backend::Wan, None) => {
            return fail(
                "native_fps",
                "is required: the wan backend renders at its own rate (Wan 2.1: 16)".to_string(),
            );
        }
        (_, Some(fps)) if !(8..=60).contains(&fps) => {
            return fail("native_fps", format!("must be within 8..=60, got {fps}"));
        }
        _ => {}
    }
    if entry.backend == Backend::Wan && entry.temporal_stride != WAN_TEMPORAL_STRIDE {
        return fail(
            "temporal_stride",
            format!(
                "must be {WAN_TEMPORAL_STRIDE} for the wan backend (the Wan VAE's), got {}",
                entry.temporal_stride
            ),
        );
    }
    if !(entry.window_seconds.is_finite() && (1.0..=600.0).contains(&entry.window_seconds)) {
        return fail(
            "window_seconds",
            format!("must be within 1..=600, got {}", entry.window_seconds),
        );
    }
    if !(1..=64).contains(&entry.temporal_stride) {
        return fail(
            "temporal_stride",
            format!("must be within 1..=64, got {}", entry.temporal_stride),
        );
    }
    for (name, steps) in [
        ("draft_steps", entry.draft_steps),
        ("final_steps", entry.final_steps),
    ] {
        if !(1..=200).contains(&steps) {
            return fail(name, format!("must be within 1..=200, got {steps}"));
        }
    }
    if !(entry.guidance.is_finite() && (0.0..=100.0).contains(&entry.guidance)) {
        return fail(
            "guidance",
            format!("must be within 0..=100, got {}", entry.guidance),
        );
    }
    if let Some(weights) = &entry.weights {
        if let Some(rest) = weights.strip_prefix("s3://") {
            if entry.backend != Backend::Wan {
                return fail(
                    "weights",
                    "s3:// locations are checkpoint directories that workers mirror (Wan); \
                     copy a tiny weights file to the workers and give its path"
                        .to_string(),
                );
            }
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() || prefix.trim_matches('/').is_empty() {
                return fail(
                    "weights",
                    format!(
                        "{weights:?}: give s3://BUCKET/PREFIX, the folder that holds model_index.json"
                    ),
                );
            }
        }
        if weights.is_empty() || weights.len() > 4096 {
            return fail("weights", "must be a path of 1-4096 characters".to_string());
        }
    }
    if let Some(digest) = &entry.weights_digest
        && (digest.is_empty() || digest.len() > 200 || digest.chars().any(char::is_control))
    {
        return fail(
            "weights_digest",
            "must be 1-200 printable characters (a checksum or revision of the weights)"
                .to_string(),
        );
    }
    entry
        .memory
        .validate()
        .map_err(|(name, reason)| (format!("memory.{name}"), reason))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryDoc {
    id: String,
    base: Option<String>,
    backend: Option<String>,
    #[serde(default, deserialize_with = "whole::optional")]
    native_fps: Option<u32>,
    window_seconds: Option<f64>,
    #[serde(default, deserialize_with = "whole::optional")]
    temporal_stride: Option<u32>,
    #[serde(default, deserialize_with = "whole::optional")]
    draft_steps: Option<u32>,
    #[serde(default, deserialize_with = "whole::optional")]
    final_steps: Option<u32>,
    guidance: Option<f32>,
    memory: Option<MemoryDoc>,
    weights: Option<String>,
    weights_digest: Option<String>,
    // openai-videos (`hosted.rs`).
    base_url: Option<String>,
    api_key_env: Option<String>,
    api_key_file: Option<String>,
    auth: Option<String>,
    remote_model: Option<String>,
    #[serde(default, deserialize_with = "whole::optional_list")]
    clip_seconds: Option<Vec<u32>>,
    sizes: Option<Vec<String>>,
    price_per_second_usd: Option<f64>,
    #[serde(default, deserialize_with = "whole::optional")]
    max_concurrent_jobs: Option<u32>,
    #[serde(default, deserialize_with = "whole::optional")]
    requests_per_minute: Option<u32>,
}

impl EntryDoc {
    /// The openai-videos fields, taken out of the entry.
    fn hosted_doc(&mut self) -> HostedDoc {
        HostedDoc {
            base_url: self.base_url.take(),
            api_key_env: self.api_key_env.take(),
            api_key_file: self.api_key_file.take(),
            auth: self.auth.take(),
            remote_model: self.remote_model.take(),
            clip_seconds: self.clip_seconds.take(),
            sizes: self.sizes.take(),
            price_per_second_usd: self.price_per_second_usd.take(),
            max_concurrent_jobs: self.max_concurrent_jobs.take(),
            requests_per_minute: self.requests_per_minute.take(),
        }
    }

    /// A built-in's id without `base`: the file re-declares that built-in.
    fn redeclares_builtin(&self) -> bool {
        self.base.is_none() && is_builtin(&self.id)
    }
}

/// A `[model.memory]` table: the coefficients it gives, over the base's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemoryDoc {
    fixed_bytes: Option<f64>,
    bytes_per_token: Option<f64>,
    #[serde(default, deserialize_with = "whole::optional")]
    guidance_branches: Option<u32>,
    #[serde(default, deserialize_with = "whole::optional")]
    downsample: Option<u32>,
    #[serde(default, deserialize_with = "whole::optional")]
    extra_latent_frames: Option<u32>,
    decode_bytes_per_pixel: Option<f64>,
    clip_bytes_per_pixel_frame: Option<f64>,
    margin: Option<f64>,
    weights_bytes: Option<f64>,
    seconds_per_token_step: Option<f64>,
}

impl MemoryDoc {
    /// The coefficients given here over `base`'s; without a base, the ones that have no
    /// default must be given (`Err` names the first missing).
    fn over(self, base: Option<MemoryModel>) -> Result<MemoryModel, &'static str> {
        macro_rules! field {
            ($name:ident) => {
                self.$name
                    .or(base.map(|b| b.$name))
                    .ok_or(stringify!($name))?
            };
            ($name:ident, $default:expr) => {
                self.$name.or(base.map(|b| b.$name)).unwrap_or($default)
            };
        }
        Ok(MemoryModel {
            fixed_bytes: field!(fixed_bytes),
            bytes_per_token: field!(bytes_per_token),
            guidance_branches: field!(guidance_branches),
            downsample: field!(downsample),
            extra_latent_frames: field!(extra_latent_frames, 0),
            decode_bytes_per_pixel: field!(decode_bytes_per_pixel),
            clip_bytes_per_pixel_frame: field!(clip_bytes_per_pixel_frame, 0.0),
            margin: field!(margin, 0.0),
            weights_bytes: field!(weights_bytes),
            seconds_per_token_step: field!(seconds_per_token_step),
        })
    }
}

/// Whole numbers written as `12` or `12.0`: Helm's `toToml` turns every number of a chart's
/// values into a float.
pub(crate) mod whole {
    use serde::{Deserialize, Deserializer, de::Error};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Number {
        Integer(i64),
        Float(f64),
    }

    pub(crate) fn number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
        match Number::deserialize(deserializer)? {
            Number::Integer(value) => u32::try_from(value)
                .map_err(|_| D::Error::custom(format!("{value} is not a count (0..=4294967295)"))),
            Number::Float(value)
                if value.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&value) =>
            {
                Ok(value as u32)
            }
            Number::Float(value) => Err(D::Error::custom(format!("{value} is not a whole number"))),
        }
    }

    pub(crate) fn optional<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<u32>, D::Error> {
        number(deserializer).map(Some)
    }

    /// A list of whole numbers (`[4, 8, 12]`, or `[4.0, 8.0, 12.0]` from Helm).
    pub(crate) fn optional_list<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u32>>, D::Error> {
        #[derive(Deserialize)]
        struct Whole(#[serde(deserialize_with = "number")] u32);
        Vec::<Whole>::deserialize(deserializer)
            .map(|list| Some(list.into_iter().map(|Whole(value)| value).collect()))
    }
}
