//! What a person typed or wrote, checked before anything runs: the spec (against the model
//! catalog), a `--models` catalog file, the output path. Problems are `InputError`s: printed
//! as they are, one per line, and the command exits with code 2.

use std::path::Path;

use anyhow::Result;
use reelfarm_common::spec;
use reelfarm_models::Catalog;

/// A problem with what the user typed or wrote: printed as is, exit code 2.
#[derive(Debug)]
pub struct InputError(pub Vec<String>);

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.join("\n"))
    }
}

impl std::error::Error for InputError {}

/// The built-in model catalog plus a `--models` file; a bad file is an input error.
pub fn load_catalog(models: Option<&Path>) -> Result<Catalog> {
    match models {
        None => Ok(Catalog::builtin()),
        Some(path) => Catalog::builtin_with_file(path)
            .map_err(|error| InputError(vec![format!("--models: {error}")]).into()),
    }
}

/// Loads and validates the spec, or explains every problem in it. With a catalog the model
/// must be in it; without (a client of a remote farm) the scheduler checks it.
pub fn load_spec(
    path: &Path,
    steps: Option<u32>,
    catalog: Option<&Catalog>,
) -> Result<reelfarm_common::sequence::Sequence> {
    let known = catalog.map(Catalog::ids);
    let mut sequence = spec::load_spec_file(path, known.as_deref()).map_err(|error| {
        InputError(
            error
                .errors
                .iter()
                .map(|e| format!("{}: {e}", path.display()))
                .collect(),
        )
    })?;
    if let Some(steps) = steps {
        if !(spec::STEPS_RANGE.0..=spec::STEPS_RANGE.1).contains(&steps) {
            return Err(InputError(vec![format!(
                "--steps: must be between {} and {}, got {steps}",
                spec::STEPS_RANGE.0,
                spec::STEPS_RANGE.1
            )])
            .into());
        }
        sequence.steps = Some(steps);
    }
    // What the shots' models cannot do (a hosted model's limits), named like spec errors.
    if let Some(catalog) = catalog {
        let problems = reelfarm_core::planner::check_models(&sequence, catalog);
        if !problems.is_empty() {
            return Err(InputError(
                problems
                    .iter()
                    .map(|(field, reason)| format!("{}: {field}: {reason}", path.display()))
                    .collect(),
            )
            .into());
        }
    }
    Ok(sequence)
}

/// The output file's directory must exist, and the output must not be a directory.
pub fn check_output(output: &Path) -> Result<()> {
    let parent = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(InputError(vec![format!(
            "-o/--output: directory {} does not exist; create it first",
            parent.display()
        )])
        .into());
    }
    if output.is_dir() {
        return Err(InputError(vec![format!(
            "-o/--output: {} is a directory; give a file name like out.mp4",
            output.display()
        )])
        .into());
    }
    Ok(())
}
