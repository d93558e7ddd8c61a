//! Every reelfarm-tiny tensor has one name, one shape and one deterministic initial value, so a seed alone reproduces a model and a safetensors file round-trips it exactly.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::text::fnv1a;
use super::{TinyConfig, camera, denoiser, text, vae};
use reelfarm_models::ModelError;

/// splitmix64 + Box–Muller. Our own generator rather than candle's (unseedable) or a crate's
/// (whose streams may change between versions): `from_seed(s)` and a request's noise must stay
/// bit-identical across dependency upgrades and thread counts.
pub(crate) struct GaussianRng {
    state: u64,
    spare: Option<f32>,
}

impl GaussianRng {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            state: seed,
            spare: None,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.state;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^ (mixed >> 31)
    }

    /// Uniform in the open interval (0, 1), so `ln` below never sees zero.
    fn next_open_unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    pub(crate) fn next_gaussian(&mut self) -> f32 {
        if let Some(spare) = self.spare.take() {
            return spare;
        }
        let radius = (-2.0 * self.next_open_unit().ln()).sqrt();
        let angle = std::f64::consts::TAU * self.next_open_unit();
        self.spare = Some((radius * angle.sin()) as f32);
        (radius * angle.cos()) as f32
    }

    pub(crate) fn gaussians(&mut self, count: usize, std: f32) -> Vec<f32> {
        (0..count).map(|_| self.next_gaussian() * std).collect()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Init {
    Normal {
        std: f32,
    },
    Zeros,
    Ones,
    /// Structural values that must not be random (the VAE's colour maps).
    Fixed(Vec<f32>),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl TensorSpec {
    pub(crate) fn new(name: impl Into<String>, shape: &[usize], init: Init) -> Self {
        Self {
            name: name.into(),
            shape: shape.to_vec(),
            init,
        }
    }

    /// He-style scale: keeps activation variance roughly constant through a layer with `fan_in` inputs.
    pub(crate) fn he(name: impl Into<String>, shape: &[usize], fan_in: usize, gain: f32) -> Self {
        let std = gain * (2.0 / fan_in.max(1) as f32).sqrt();
        Self::new(name, shape, Init::Normal { std })
    }

    fn element_count(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Every tensor the model has, in a fixed order.
pub(crate) fn all_specs(config: &TinyConfig) -> Vec<TensorSpec> {
    let mut specs = text::tensor_specs(config);
    specs.extend(denoiser::tensor_specs(config));
    specs.extend(camera::tensor_specs(config));
    specs.extend(vae::tensor_specs(config));
    specs
}

/// The named, shape-checked tensors of one reelfarm-tiny model (f32, CPU).
#[derive(Clone, Debug)]
pub struct TinyWeights {
    tensors: HashMap<String, Tensor>,
}

impl TinyWeights {
    /// Deterministic initial weights. Each tensor draws from its own stream (seed mixed with
    /// its name), so adding a tensor to the model never changes the others.
    pub fn from_seed(config: &TinyConfig, seed: u64) -> Result<Self, ModelError> {
        config.validate()?;
        let device = Device::Cpu;
        let mut tensors = HashMap::new();
        for spec in all_specs(config) {
            let count = spec.element_count();
            let values = match &spec.init {
                Init::Normal { std } => {
                    let stream = GaussianRng::new(seed).next_u64() ^ fnv1a(spec.name.as_bytes());
                    GaussianRng::new(stream).gaussians(count, *std)
                }
                Init::Zeros => vec![0.0; count],
                Init::Ones => vec![1.0; count],
                Init::Fixed(values) => values.clone(),
            };
            if values.len() != count {
                return Err(ModelError::Internal(format!(
                    "fixed init of `{}` has the wrong length",
                    spec.name
                )));
            }
            let tensor = Tensor::from_vec(values, spec.shape.as_slice(), &device)?;
            tensors.insert(spec.name, tensor);
        }
        Ok(Self { tensors })
    }

    /// Loads and checks every tensor `config` needs: a missing, extra, misshapen or
    /// non-finite tensor is an error naming it. Half-precision files are widened to f32.
    pub fn load_safetensors(config: &TinyConfig, path: &Path) -> Result<Self, ModelError> {
        let shown = path.display();
        let loaded = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|error| ModelError::InvalidWeights(format!("cannot read {shown}: {error}")))?;
        Self::checked(config, loaded, &shown.to_string())
    }

    /// As `load_safetensors`, from the bytes of a safetensors file (the shipped weights).
    pub fn from_safetensors_bytes(
        config: &TinyConfig,
        bytes: &[u8],
        shown: &str,
    ) -> Result<Self, ModelError> {
        let loaded = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|error| ModelError::InvalidWeights(format!("cannot read {shown}: {error}")))?;
        Self::checked(config, loaded, shown)
    }

    fn checked(
        config: &TinyConfig,
        mut loaded: HashMap<String, Tensor>,
        shown: &str,
    ) -> Result<Self, ModelError> {
        config.validate()?;
        let mut tensors = HashMap::new();
        for spec in all_specs(config) {
            let tensor = loaded.remove(&spec.name).ok_or_else(|| {
                ModelError::InvalidWeights(format!("{shown}: tensor `{}` is missing", spec.name))
            })?;
            if tensor.dims() != spec.shape.as_slice() {
                return Err(ModelError::InvalidWeights(format!(
                    "{shown}: tensor `{}` has shape {:?}, expected {:?}",
                    spec.name,
                    tensor.dims(),
                    spec.shape
                )));
            }
            let tensor = match tensor.dtype() {
                DType::F32 => tensor,
                DType::F16 | DType::BF16 | DType::F64 => tensor.to_dtype(DType::F32)?,
                other => {
                    return Err(ModelError::InvalidWeights(format!(
                        "{shown}: tensor `{}` has dtype {other:?}, expected a float type",
                        spec.name
                    )));
                }
            };
            let finite = tensor
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .all(|value| value.is_finite());
            if !finite {
                return Err(ModelError::InvalidWeights(format!(
                    "{shown}: tensor `{}` contains NaN or infinite values",
                    spec.name
                )));
            }
            tensors.insert(spec.name, tensor);
        }
        // Extra tensors mean the file was made for another configuration; running with a
        // silently ignored part of it would produce wrong pictures rather than an error.
        let mut extra: Vec<&String> = loaded.keys().collect();
        if !extra.is_empty() {
            extra.sort();
            return Err(ModelError::InvalidWeights(format!(
                "{shown}: unexpected tensor `{}` (the file was made for another configuration)",
                extra[0]
            )));
        }
        Ok(Self { tensors })
    }

    pub fn save_safetensors(&self, path: &Path) -> Result<(), ModelError> {
        candle_core::safetensors::save(&self.tensors, path).map_err(|error| {
            ModelError::InvalidWeights(format!("cannot write {}: {error}", path.display()))
        })
    }

    /// Largest absolute difference between matching tensors (0 = identical weights).
    pub fn max_difference(&self, other: &TinyWeights) -> Result<f32, ModelError> {
        let mut largest = 0f32;
        for (name, tensor) in &self.tensors {
            let gap = (tensor - other.get(name)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            largest = largest.max(gap);
        }
        Ok(largest)
    }

    pub fn parameter_count(&self) -> usize {
        self.tensors
            .values()
            .map(|tensor| tensor.elem_count())
            .sum()
    }

    pub fn byte_size(&self) -> u64 {
        self.parameter_count() as u64 * 4
    }

    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Swaps one tensor for another of the same shape (training writes its results back so).
    #[cfg_attr(not(feature = "train"), allow(dead_code))]
    pub(crate) fn replace(&mut self, name: &str, tensor: Tensor) -> Result<(), ModelError> {
        let current = self.get(name)?;
        if current.dims() != tensor.dims() {
            return Err(ModelError::InvalidWeights(format!(
                "`{name}` must keep shape {:?}",
                current.dims()
            )));
        }
        self.tensors.insert(name.to_string(), tensor);
        Ok(())
    }

    /// A tensor the specs guarantee; missing means the model code and its specs disagree.
    pub(crate) fn get(&self, name: &str) -> Result<Tensor, ModelError> {
        self.tensors
            .get(name)
            .cloned()
            .ok_or_else(|| ModelError::Internal(format!("weights lack `{name}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("reelfarm-tiny-{}-{name}", std::process::id()))
    }

    #[test]
    fn gaussian_stream_is_stable_and_standard() {
        let mut first = GaussianRng::new(7);
        let mut second = GaussianRng::new(7);
        let values = first.gaussians(20_000, 1.0);
        assert_eq!(values, second.gaussians(20_000, 1.0));
        let mean = values.iter().sum::<f32>() / values.len() as f32;
        let variance =
            values.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / values.len() as f32;
        assert!(
            mean.abs() < 0.03 && (variance - 1.0).abs() < 0.05,
            "mean {mean} variance {variance}"
        );
    }

    #[test]
    fn same_seed_same_weights() -> Result<(), ModelError> {
        let config = TinyConfig::default();
        let first = TinyWeights::from_seed(&config, 3)?;
        let second = TinyWeights::from_seed(&config, 3)?;
        let other = TinyWeights::from_seed(&config, 4)?;
        let name = "denoiser.blocks.0.spatial.weight";
        let values = |weights: &TinyWeights| {
            weights
                .get(name)?
                .flatten_all()?
                .to_vec1::<f32>()
                .map_err(ModelError::from)
        };
        assert_eq!(values(&first)?, values(&second)?);
        assert_ne!(values(&first)?, values(&other)?);
        // "A few MB": the whole model stays small enough to ship inside the worker.
        assert!(first.byte_size() < 12 << 20, "{} bytes", first.byte_size());
        Ok(())
    }

    #[test]
    fn missing_or_misshapen_tensors_are_named() -> Result<(), ModelError> {
        let config = TinyConfig::default();
        let weights = TinyWeights::from_seed(&config, 1)?;
        let victim = "denoiser.blocks.1.temporal.weight";

        let mut missing = weights.tensors.clone();
        missing.remove(victim);
        let path = temp_path("missing.safetensors");
        TinyWeights { tensors: missing }.save_safetensors(&path)?;
        let error = TinyWeights::load_safetensors(&config, &path).unwrap_err();
        assert!(
            error.to_string().contains(victim) && error.to_string().contains("missing"),
            "{error}"
        );

        let mut misshapen = weights.tensors.clone();
        misshapen.insert(
            victim.to_string(),
            Tensor::zeros((2, 2), DType::F32, &Device::Cpu)?,
        );
        TinyWeights { tensors: misshapen }.save_safetensors(&path)?;
        let error = TinyWeights::load_safetensors(&config, &path).unwrap_err();
        assert!(
            error.to_string().contains(victim) && error.to_string().contains("shape"),
            "{error}"
        );

        std::fs::write(&path, b"definitely not a safetensors file").expect("write temp file");
        let error = TinyWeights::load_safetensors(&config, &path).unwrap_err();
        assert!(
            matches!(&error, ModelError::InvalidWeights(m) if m.contains("cannot read")),
            "{error}"
        );

        let error =
            TinyWeights::load_safetensors(&config, &temp_path("absent.safetensors")).unwrap_err();
        assert!(matches!(error, ModelError::InvalidWeights(_)));
        std::fs::remove_file(&path).ok();
        Ok(())
    }
}
