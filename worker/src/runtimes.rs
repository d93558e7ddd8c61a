//! The model runtimes a worker serves, made from its catalog: every entry whose backend this
//! worker runs, loaded once at start and kept resident between segments. The worker registers
//! their ids, so placement sends it only what it can render. A Wan entry without weights is
//! not served (the built-in catalog names Wan 2.1 before anyone has downloaded it); one whose
//! weights are named but unreadable stops the worker with the files it expected.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use reelfarm_common::metrics;
use reelfarm_models::{Backend, Catalog, ModelEntry, ModelRuntime, REELFARM_TINY};
use reelfarm_tiny::TinyModel;
pub use reelfarm_wan::runtime::WanOptions;
use reelfarm_wan::runtime::WanRuntime;

use crate::Error;

/// Loads a runtime for every catalog entry this worker can run. `tiny_weights` replaces the
/// built-in reelfarm-tiny weights (`--weights`); other tiny entries name their own file.
pub fn load_runtimes(
    catalog: &Catalog,
    tiny_weights: Option<&Path>,
) -> Result<Vec<Arc<dyn ModelRuntime>>, Error> {
    load_runtimes_with(catalog, tiny_weights, &WanOptions::best_available())
}

/// `load_runtimes` with the device and memory options Wan models run with.
pub fn load_runtimes_with(
    catalog: &Catalog,
    tiny_weights: Option<&Path>,
    wan: &WanOptions,
) -> Result<Vec<Arc<dyn ModelRuntime>>, Error> {
    let mut runtimes: Vec<Arc<dyn ModelRuntime>> = Vec::new();
    for entry in catalog.entries() {
        match entry.backend {
            Backend::Tiny => {
                let loading = Instant::now();
                let weights = match (entry.id.as_str(), tiny_weights) {
                    (REELFARM_TINY, Some(path)) => Some(path.to_path_buf()),
                    _ => entry.weights.as_ref().map(Into::into),
                };
                let model = match &weights {
                    Some(path) => TinyModel::load(path).map_err(|error| {
                        Error::InvalidArgument(format!(
                            "model {}: weights {}: {error}",
                            entry.id,
                            path.display()
                        ))
                    })?,
                    None => TinyModel::shipped().map_err(|error| {
                        Error::Internal(format!("the built-in reelfarm-tiny weights: {error}"))
                    })?,
                };
                let model = model
                    .with_id(entry.id.clone())
                    .with_memory_model(entry.memory);
                metrics::worker().model_load_seconds.record(
                    loading.elapsed().as_secs_f64(),
                    &[metrics::label("model", entry.id.clone())],
                );
                runtimes.push(Arc::new(model));
            }
            Backend::Wan => {
                if let Some(runtime) = load_wan(entry, wan)? {
                    runtimes.push(runtime);
                }
            }
            // Only the placement simulator renders these; hosted models are called by a
            // worker started with `--hosted` (`crate::hosted`).
            Backend::Simulated | Backend::OpenAiVideos => {}
        }
    }
    Ok(runtimes)
}

fn load_wan(
    entry: &ModelEntry,
    options: &WanOptions,
) -> Result<Option<Arc<dyn ModelRuntime>>, Error> {
    let Some(weights) = &entry.weights else {
        tracing::info!(model = %entry.id, "not served: no weights configured (see README \"Running Wan 2.1\")");
        return Ok(None);
    };
    if weights.starts_with("s3://") {
        return Err(Error::InvalidArgument(format!(
            "model {}: weights {weights}: s3:// checkpoints are mirrored by `reelfarm worker` \
             (with its S3 store settings); here, download it to a directory and give that path",
            entry.id
        )));
    }
    let loading = Instant::now();
    let options = WanOptions {
        native_fps: entry.native_fps.unwrap_or(options.native_fps),
        ..options.clone()
    };
    let runtime =
        WanRuntime::load(entry.id.clone(), Path::new(weights), &options).map_err(|error| {
            Error::InvalidArgument(format!("model {}: weights {weights}: {error}", entry.id))
        })?;
    metrics::worker().model_load_seconds.record(
        loading.elapsed().as_secs_f64(),
        &[metrics::label("model", entry.id.clone())],
    );
    tracing::info!(model = %entry.id, seconds = loading.elapsed().as_secs_f64(), "model loaded");
    Ok(Some(Arc::new(runtime)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tiny_entry_gets_a_runtime_under_its_own_id() {
        let dir = tempfile::tempdir().unwrap();
        let weights = dir.path().join("other.safetensors");
        TinyModel::from_seed(3).unwrap().save(&weights).unwrap();
        let mut catalog = Catalog::builtin();
        catalog
            .add_toml(
                &format!(
                    "[[model]]\nid = \"other-tiny\"\nbase = \"reelfarm-tiny\"\nweights = {:?}\n",
                    weights.display().to_string()
                ),
                "models.toml",
            )
            .unwrap();
        let runtimes = load_runtimes(&catalog, None).unwrap();
        let ids: Vec<&str> = runtimes.iter().map(|r| r.id()).collect();
        assert_eq!(ids, ["other-tiny", REELFARM_TINY]);
    }

    #[test]
    fn missing_weights_name_the_model_and_the_file() {
        let mut catalog = Catalog::builtin();
        catalog
            .add_toml(
                "[[model]]\nid = \"lost\"\nbase = \"reelfarm-tiny\"\nweights = \"/nonexistent/w.safetensors\"\n",
                "models.toml",
            )
            .unwrap();
        let error = load_runtimes(&catalog, None).err().unwrap().to_string();
        assert!(
            error.starts_with("model lost: weights /nonexistent/w.safetensors:"),
            "{error}"
        );
    }
}
