//! The diffusers checkpoint layout (`model_index.json`; `transformer/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`), read into candle tensors with one clear error per missing or malformed file.
//!
//! A component directory holds `config.json` and either one safetensors file or shards listed
//! by an index (`*.safetensors.index.json`, `{"weight_map": {tensor: file}}`). Tensors stored in
//! bf16, f16 or f32 are converted to the compute dtype as they are read.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::{Result, WanError};

/// What a checkpoint directory must look like, quoted by every missing-file error.
pub const EXPECTED_LAYOUT: &str = "expected the layout of the published Wan2.1-T2V-1.3B-Diffusers \
checkpoint: model_index.json, scheduler/scheduler_config.json, text_encoder/{config.json, \
model.safetensors or model-*-of-*.safetensors with model.safetensors.index.json}, \
tokenizer/tokenizer.json, transformer/{config.json, diffusion_pytorch_model.safetensors or \
shards with diffusion_pytorch_model.safetensors.index.json}, vae/{config.json, \
diffusion_pytorch_model.safetensors} (download it with `huggingface-cli download \
Wan-AI/Wan2.1-T2V-1.3B-Diffusers --local-dir DIR`)";

/// One of the checkpoint's model folders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Transformer,
    Vae,
    TextEncoder,
}

impl Component {
    pub fn dir(self) -> &'static str {
        match self {
            Component::Transformer => "transformer",
            Component::Vae => "vae",
            Component::TextEncoder => "text_encoder",
        }
    }

    /// The single-file name; shards add `-0000k-of-0000n` before the extension.
    fn weights_stem(self) -> &'static str {
        match self {
            Component::Transformer | Component::Vae => "diffusion_pytorch_model",
            Component::TextEncoder => "model",
        }
    }
}

/// A checkpoint directory in the diffusers layout.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    root: PathBuf,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

impl Checkpoint {
    /// Checks that `model_index.json` is there; the components are checked as they load.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        if !root.is_dir() {
            return Err(missing(root));
        }
        let checkpoint = Self { root };
        let index = checkpoint.root.join("model_index.json");
        if !index.is_file() {
            return Err(missing(index));
        }
        Ok(checkpoint)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tokenizer_file(&self) -> Result<PathBuf> {
        existing(self.root.join("tokenizer").join("tokenizer.json"))
    }

    pub fn scheduler_config_file(&self) -> Result<PathBuf> {
        existing(self.root.join("scheduler").join("scheduler_config.json"))
    }

    /// The component's `config.json`, parsed into the component's own config type.
    pub fn config<T: DeserializeOwned>(&self, component: Component) -> Result<T> {
        read_json(&existing(
            self.root.join(component.dir()).join("config.json"),
        )?)
    }

    /// The component's safetensors files: the single file, or every shard its index names.
    pub fn weight_files(&self, component: Component) -> Result<Vec<PathBuf>> {
        let dir = self.root.join(component.dir());
        let stem = component.weights_stem();
        let single = dir.join(format!("{stem}.safetensors"));
        if single.is_file() {
            return Ok(vec![single]);
        }
        let index_path = dir.join(format!("{stem}.safetensors.index.json"));
        if !index_path.is_file() {
            return Err(missing(single));
        }
        let index: ShardIndex = read_json(&index_path)?;
        let shards: BTreeSet<&String> = index.weight_map.values().collect();
        if shards.is_empty() {
            return Err(WanError::InvalidFile {
                path: index_path,
                reason: "weight_map names no shard".into(),
            });
        }
        shards
            .into_iter()
            .map(|shard| {
                if shard.contains('/') || shard.contains('\\') || shard.starts_with('.') {
                    return Err(WanError::InvalidFile {
                        path: index_path.clone(),
                        reason: format!("shard name {shard:?} leaves the component directory"),
                    });
                }
                existing(dir.join(shard))
            })
            .collect()
    }

    /// Every tensor of the component as stored (bf16, f16 or f32), in host memory.
    pub fn tensors(&self, component: Component) -> Result<HashMap<String, Tensor>> {
        let mut all = HashMap::new();
        for file in self.weight_files(component)? {
            let tensors = candle_core::safetensors::load(&file, &Device::Cpu).map_err(|error| {
                WanError::InvalidFile {
                    path: file.clone(),
                    reason: format!("not a readable safetensors file: {error}"),
                }
            })?;
            for (name, tensor) in tensors {
                if !matches!(tensor.dtype(), DType::F32 | DType::F16 | DType::BF16) {
                    return Err(WanError::InvalidFile {
                        path: file.clone(),
                        reason: format!(
                            "tensor {name} is stored as {:?}; expected bf16, f16 or f32",
                            tensor.dtype()
                        ),
                    });
                }
                all.insert(name, tensor);
            }
        }
        Ok(all)
    }

    /// A `VarBuilder` over the component's tensors: each tensor moves to `device` and converts
    /// to the builder's dtype as a layer asks for it (so a GPU never holds the stored and the
    /// converted copy of the whole model at once); a tensor asked for with the wrong shape or
    /// not there fails with its name.
    pub fn var_builder(
        &self,
        component: Component,
        dtype: DType,
        device: &Device,
    ) -> Result<VarBuilder<'static>> {
        Ok(VarBuilder::from_tensors(
            self.tensors(component)?,
            dtype,
            device,
        ))
    }
}

fn missing(path: PathBuf) -> WanError {
    WanError::MissingFile {
        path,
        expected: EXPECTED_LAYOUT.to_string(),
    }
}

fn existing(path: PathBuf) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(missing(path))
    }
}

/// Config files are small; anything over 1 MiB is refused before parsing.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    const LIMIT: u64 = 1 << 20;
    let invalid = |reason: String| WanError::InvalidFile {
        path: path.to_path_buf(),
        reason,
    };
    let length = std::fs::metadata(path)
        .map_err(|error| invalid(error.to_string()))?
        .len();
    if length > LIMIT {
        return Err(invalid(format!(
            "{length} bytes; a config is at most {LIMIT}"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|error| invalid(error.to_string()))?;
    serde_json::from_str(&text).map_err(|error| invalid(format!("not the expected JSON: {error}")))
}

/// A `VarBuilder` backend that hands out zero-cost broadcast zeros and records every tensor a
/// model asks for, so the real 1.3B or 14B shape can be built and checked against the published
/// checkpoint's names and shapes without its memory.
#[derive(Clone, Default)]
pub struct ShapeRecorder {
    asked: std::sync::Arc<std::sync::Mutex<Vec<NamedShape>>>,
}

/// A tensor's name and dims.
pub type NamedShape = (String, Vec<usize>);

impl ShapeRecorder {
    pub fn var_builder(&self, dtype: DType) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, Device::Cpu)
    }

    /// Every (name, shape) asked for so far, in order.
    pub fn asked(&self) -> Vec<NamedShape> {
        self.asked.lock().expect("recorder lock").clone()
    }
}

impl candle_nn::var_builder::SimpleBackend for ShapeRecorder {
    fn get(
        &self,
        shape: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        self.asked
            .lock()
            .expect("recorder lock")
            .push((name.to_string(), shape.dims().to_vec()));
        Tensor::zeros((), dtype, device)?.broadcast_as(shape)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: a shape recorder only answers requests that give a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn a_missing_checkpoint_names_the_file_and_the_layout() {
        let dir = tempfile::tempdir().unwrap();
        let error = Checkpoint::open(dir.path()).unwrap_err().to_string();
        assert!(error.contains("model_index.json: missing"), "{error}");
        assert!(error.contains("Wan2.1-T2V-1.3B-Diffusers"), "{error}");
        write(&dir.path().join("model_index.json"), "{}");
        let checkpoint = Checkpoint::open(dir.path()).unwrap();
        let error = checkpoint
            .weight_files(Component::Transformer)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("transformer/diffusion_pytorch_model.safetensors: missing"),
            "{error}"
        );
    }

    #[test]
    fn shards_come_from_the_index_and_may_not_escape() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("model_index.json"), "{}");
        let te = dir.path().join("text_encoder");
        write(
            &te.join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "model-00002-of-00002.safetensors", "b": "model-00001-of-00002.safetensors", "c": "model-00001-of-00002.safetensors"}}"#,
        );
        let checkpoint = Checkpoint::open(dir.path()).unwrap();
        let error = checkpoint
            .weight_files(Component::TextEncoder)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("model-00001-of-00002.safetensors: missing"),
            "{error}"
        );
        write(&te.join("model-00001-of-00002.safetensors"), "");
        write(&te.join("model-00002-of-00002.safetensors"), "");
        let files = checkpoint.weight_files(Component::TextEncoder).unwrap();
        assert_eq!(files.len(), 2);
        assert!(files[0].ends_with("model-00001-of-00002.safetensors"));
        write(
            &te.join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "../../etc/passwd"}}"#,
        );
        let error = checkpoint
            .weight_files(Component::TextEncoder)
            .unwrap_err()
            .to_string();
        assert!(error.contains("leaves the component directory"), "{error}");
    }

    #[test]
    fn half_precision_weights_load_as_the_compute_dtype() {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("model_index.json"), "{}");
        let vae = dir.path().join("vae");
        std::fs::create_dir_all(&vae).unwrap();
        let values = Tensor::new(&[1.5f32, -2.25, 3.0], &Device::Cpu).unwrap();
        let stored: HashMap<String, Tensor> = [
            ("a".to_string(), values.to_dtype(DType::BF16).unwrap()),
            ("b".to_string(), values.to_dtype(DType::F16).unwrap()),
        ]
        .into();
        candle_core::safetensors::save(&stored, vae.join("diffusion_pytorch_model.safetensors"))
            .unwrap();
        let checkpoint = Checkpoint::open(dir.path()).unwrap();
        let vb = checkpoint
            .var_builder(Component::Vae, DType::F32, &Device::Cpu)
            .unwrap();
        for name in ["a", "b"] {
            let loaded = vb.get(3, name).unwrap();
            assert_eq!(loaded.dtype(), DType::F32);
            assert_eq!(loaded.to_vec1::<f32>().unwrap(), vec![1.5, -2.25, 3.0]);
        }
        assert!(
            vb.get(4, "a")
                .unwrap_err()
                .to_string()
                .contains("shape mismatch for a")
        );
    }
}
