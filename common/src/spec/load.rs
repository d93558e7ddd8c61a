//! Turning outside bytes into a raw spec without letting them take the machine: spec files and
//! texts have a size cap, YAML aliases may not expand past a budget, and reference images are
//! read only from regular files of bounded size inside the spec's folder.

use std::cell::Cell;
use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::de::{self, DeserializeSeed, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};

use super::{Sequence, SpecDoc, SpecError, validate};

/// The largest spec file or text we read (4 MiB); images belong in `reference:` files.
pub const MAX_SPEC_BYTES: u64 = 4 << 20;
/// What a spec may add up to once its YAML aliases are expanded (16 MiB of scalars): each alias
/// replays what it points at, so a small file can otherwise expand to gigabytes.
pub const MAX_EXPANDED_SPEC_BYTES: u64 = 16 << 20;
/// How many values (scalars, lists, maps) a spec may hold once its aliases are expanded:
/// a 500-shot spec holds about 15,000, and each value costs a few hundred bytes of heap.
pub const MAX_SPEC_VALUES: u64 = 100_000;
/// The largest reference image file we read (64 MiB).
pub const MAX_REFERENCE_BYTES: u64 = 64 << 20;

const SPEC_TOO_BIG: &str =
    "a spec may be at most 4 MiB (put images in reference: files, not in the spec)";
const WRITE_OUT_ALIASES: &str =
    "(YAML aliases repeat what they point at); write the spec out without aliases";
const STAY_INSIDE: &str = "put the image beside the spec (or in a folder under it)";

/// Parses YAML (a superset of JSON, so `.json` specs parse too) into the raw form.
pub fn parse_spec_text(text: &str) -> Result<SpecDoc, SpecError> {
    if text.len() as u64 > MAX_SPEC_BYTES {
        return Err(SpecError::single(
            "spec",
            format!("{} bytes; {SPEC_TOO_BIG}", text.len()),
        ));
    }
    check_expansion(text)?;
    let deserializer = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|error| {
        let path = error.path().to_string();
        let path = if path == "." || path.is_empty() {
            "spec".to_string()
        } else {
            path
        };
        SpecError::single(path, error.inner().to_string())
    })
}

/// Reads, parses and validates a spec file; reference images resolve relative to it and must
/// stay inside its folder. `known_models` are the ids of the farm's model catalog (`None`: any
/// id, for a client whose scheduler checks it).
pub fn load_spec_file(path: &Path, known_models: Option<&[String]>) -> Result<Sequence, SpecError> {
    let text = read_spec_text(path)?;
    let doc = parse_spec_text(&text)?;
    let base = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let folder = base.canonicalize().map_err(|error| {
        format!(
            "cannot resolve the spec's folder {}: {error}",
            base.display()
        )
    });
    validate(doc, known_models, &|name| match &folder {
        Ok(folder) => read_reference(folder, name),
        Err(reason) => Err(reason.clone()),
    })
}

/// The spec file as text, refusing more than `MAX_SPEC_BYTES` before reading it (a regular
/// file) or while reading it (a pipe, a device, a file that grows).
fn read_spec_text(path: &Path) -> Result<String, SpecError> {
    let cannot_read = |error: std::io::Error| {
        SpecError::single("spec", format!("cannot read {}: {error}", path.display()))
    };
    let too_big = |size: String| {
        SpecError::single(
            "spec",
            format!("{} is {size} bytes; {SPEC_TOO_BIG}", path.display()),
        )
    };
    let file = File::open(path).map_err(cannot_read)?;
    let metadata = file.metadata().map_err(cannot_read)?;
    if metadata.is_file() && metadata.len() > MAX_SPEC_BYTES {
        return Err(too_big(metadata.len().to_string()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_SPEC_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot_read)?;
    if bytes.len() as u64 > MAX_SPEC_BYTES {
        return Err(too_big(format!("more than {MAX_SPEC_BYTES}")));
    }
    String::from_utf8(bytes).map_err(|error| {
        SpecError::single(
            "spec",
            format!(
                "{} is not UTF-8 text ({error}); save the spec as UTF-8",
                path.display()
            ),
        )
    })
}

/// The bytes of the reference `name`, written relative to the spec's canonical `folder`.
fn read_reference(folder: &Path, name: &str) -> Result<Vec<u8>, String> {
    let written = Path::new(name);
    if written.is_absolute() || written.has_root() {
        return Err(format!(
            "{name:?} is an absolute path; write it relative to the spec's folder and {STAY_INSIDE}"
        ));
    }
    if written
        .components()
        .any(|component| component == Component::ParentDir)
    {
        return Err(format!("{name:?} leaves the spec's folder; {STAY_INSIDE}"));
    }
    let resolved = folder.join(written);
    let cannot_read = |error: std::io::Error| match error.kind() {
        std::io::ErrorKind::NotFound => {
            format!("file not found: {name} (looked for {})", resolved.display())
        }
        _ => format!("cannot read {}: {error}", resolved.display()),
    };
    // Follows every link, so a link that points out of the folder is caught here.
    let canonical: PathBuf = resolved.canonicalize().map_err(cannot_read)?;
    if !canonical.starts_with(folder) {
        return Err(format!(
            "{name:?} leaves the spec's folder (it leads to {}); {STAY_INSIDE}",
            canonical.display()
        ));
    }
    // Checked before opening: opening a fifo would wait for a writer.
    let metadata = std::fs::metadata(&canonical).map_err(cannot_read)?;
    if !metadata.is_file() {
        return Err(format!(
            "{name:?} is {}, not a regular file; a reference must be a PNG file",
            kind_of(&metadata.file_type())
        ));
    }
    let too_big = |size: String| {
        format!(
            "{name:?} is {size} bytes; a reference image may be at most 64 MiB (scale it down or save it with more compression)"
        )
    };
    if metadata.len() > MAX_REFERENCE_BYTES {
        return Err(too_big(metadata.len().to_string()));
    }
    let mut bytes = Vec::new();
    File::open(&canonical)
        .and_then(|file| file.take(MAX_REFERENCE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(cannot_read)?;
    if bytes.len() as u64 > MAX_REFERENCE_BYTES {
        return Err(too_big(format!("more than {MAX_REFERENCE_BYTES}")));
    }
    Ok(bytes)
}

fn kind_of(file_type: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a fifo";
        }
        if file_type.is_socket() {
            return "a socket";
        }
        if file_type.is_char_device() || file_type.is_block_device() {
            return "a device";
        }
    }
    if file_type.is_dir() {
        "a directory"
    } else {
        "not a plain file"
    }
}

/// Walks the document the way the real deserialization will, alias replays included, counting
/// scalar bytes and values without keeping any, and refuses it once it passes a budget. Other
/// errors are left to the real pass, which reports them with their path: it walks the same
/// events in the same order, so it stops no later than this pass did.
fn check_expansion(text: &str) -> Result<(), SpecError> {
    let budget = Budget::default();
    let Err(error) = Count(&budget).deserialize(serde_yaml::Deserializer::from_str(text)) else {
        return Ok(());
    };
    let reason = if budget.bytes.get() > MAX_EXPANDED_SPEC_BYTES {
        format!("expands to more than 16 MiB {WRITE_OUT_ALIASES}")
    } else if budget.values.get() > MAX_SPEC_VALUES {
        format!("expands to more than {MAX_SPEC_VALUES} values {WRITE_OUT_ALIASES}")
    } else if error.to_string() == "repetition limit exceeded" {
        // serde_yaml's own cap on alias replays (100 per event); its error has no kind to match.
        format!("expands its aliases more times than the parser allows {WRITE_OUT_ALIASES}")
    } else {
        return Ok(());
    };
    Err(SpecError::single("spec", reason))
}

#[derive(Default)]
struct Budget {
    bytes: Cell<u64>,
    values: Cell<u64>,
}

/// Visits any value and counts it against the shared budget: `IgnoredAny` with a tally.
#[derive(Clone, Copy)]
struct Count<'a>(&'a Budget);

impl Count<'_> {
    fn value<E: de::Error>(self, scalar_bytes: usize) -> Result<(), E> {
        let bytes = self.0.bytes.get().saturating_add(scalar_bytes as u64);
        let values = self.0.values.get() + 1;
        self.0.bytes.set(bytes);
        self.0.values.set(values);
        if bytes > MAX_EXPANDED_SPEC_BYTES || values > MAX_SPEC_VALUES {
            return Err(E::custom("the spec expands past its budget"));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Count<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Count<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.value(0)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.value(0)
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        self.value(0)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.value(0)
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        self.value(0)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.value(0)
    }

    fn visit_char<E: de::Error>(self, value: char) -> Result<(), E> {
        self.value(value.len_utf8())
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<(), E> {
        self.value(value.len())
    }

    fn visit_borrowed_str<E: de::Error>(self, value: &'de str) -> Result<(), E> {
        self.value(value.len())
    }

    fn visit_bytes<E: de::Error>(self, value: &[u8]) -> Result<(), E> {
        self.value(value.len())
    }

    fn visit_borrowed_bytes<E: de::Error>(self, value: &'de [u8]) -> Result<(), E> {
        self.value(value.len())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.value(0)
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.value(0)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        self.value(0)?;
        self.deserialize(deserializer)
    }

    fn visit_newtype_struct<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<(), D::Error> {
        self.value(0)?;
        self.deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.value(0)?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.value(0)?;
        while map.next_key_seed(self)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }

    /// A tagged value (`!name value`): the tag, then what it tags.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        self.value(0)?;
        let ((), variant) = data.variant_seed(self)?;
        variant.newtype_variant_seed(self)
    }
}
