//! Parity of the Wan 2.1 VAE (`reelfarm_wan::vae`) with diffusers' `AutoencoderKLWan` on the tiny random checkpoint: chunked encode, cached decode, tiled decode, and the pipeline's latent (de)normalisation.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use reelfarm_wan::vae::{Tiling, VaeConfig, WanVae};
use reelfarm_wan::weights::{Checkpoint, Component};

use common::{assert_close, load, load_json};

/// `REELFARM_WAN_FIXTURES` may point at another fixture directory with the same layout
/// (`vae.safetensors`, `vae.json`, `tiny/vae/`), e.g. one written from other weights.
fn fixture_dir() -> Option<PathBuf> {
    std::env::var_os("REELFARM_WAN_FIXTURES").map(PathBuf::from)
}

fn tensors() -> std::collections::HashMap<String, Tensor> {
    match fixture_dir() {
        Some(dir) => {
            candle_core::safetensors::load(dir.join("vae.safetensors"), &Device::Cpu).unwrap()
        }
        None => load("vae"),
    }
}

fn json() -> serde_json::Value {
    match fixture_dir() {
        Some(dir) => {
            serde_json::from_str(&std::fs::read_to_string(dir.join("vae.json")).unwrap()).unwrap()
        }
        None => load_json("vae"),
    }
}

fn tiny_vae() -> WanVae {
    let root = fixture_dir()
        .map(|d| d.join("tiny"))
        .unwrap_or_else(common::tiny_checkpoint);
    let checkpoint = Checkpoint::open(root).unwrap();
    let config: VaeConfig = checkpoint.config(Component::Vae).unwrap();
    let vb = checkpoint
        .var_builder(Component::Vae, DType::F32, &Device::Cpu)
        .unwrap();
    WanVae::new(&config, vb).unwrap()
}

fn get<'a>(tensors: &'a std::collections::HashMap<String, Tensor>, name: &str) -> &'a Tensor {
    tensors
        .get(name)
        .unwrap_or_else(|| panic!("vae.safetensors has no tensor {name}"))
}

#[test]
fn encode_video_matches_diffusers() {
    let (vae, t) = (tiny_vae(), tensors());
    let mean = vae.encode(get(&t, "video")).unwrap();
    assert_close(
        "encode(video) posterior mean",
        &mean,
        get(&t, "encoded_mean"),
    );
}

#[test]
fn encode_image_matches_diffusers() {
    let (vae, t) = (tiny_vae(), tensors());
    let mean = vae.encode(get(&t, "image")).unwrap();
    assert_close("encode(image) posterior mean", &mean, get(&t, "image_mean"));
}

#[test]
fn decode_matches_diffusers() {
    let (vae, t) = (tiny_vae(), tensors());
    let latent = get(&t, "latent");
    let start = Instant::now();
    let video = vae.decode(latent).unwrap();
    eprintln!(
        "decode {:?} -> {:?} in {:.1} ms",
        latent.dims(),
        video.dims(),
        start.elapsed().as_secs_f64() * 1e3
    );
    assert_close("decode(latent)", &video, get(&t, "decoded"));

    let mut chunks = Vec::new();
    vae.decode_streaming(latent, |frames| {
        chunks.push(frames.dim(2).unwrap());
        Ok(())
    })
    .unwrap();
    assert_eq!(chunks, [1, 4, 4], "frames per latent frame");

    // A batch of two decodes each latent as alone.
    let pair = Tensor::cat(&[latent, &(latent * 0.5).unwrap()], 0).unwrap();
    let both = vae.decode(&pair).unwrap();
    assert_close(
        "decode of a batch, first",
        &both.get(0).unwrap().unsqueeze(0).unwrap(),
        get(&t, "decoded"),
    );
    let half = vae.decode(&(latent * 0.5).unwrap()).unwrap();
    assert_close(
        "decode of a batch, second",
        &both.get(1).unwrap().unsqueeze(0).unwrap(),
        &half,
    );
}

#[test]
fn decoder_only_vae_decodes_the_same() {
    let t = tensors();
    let root = fixture_dir()
        .map(|d| d.join("tiny"))
        .unwrap_or_else(common::tiny_checkpoint);
    let checkpoint = Checkpoint::open(root).unwrap();
    let config: VaeConfig = checkpoint.config(Component::Vae).unwrap();
    let vb = checkpoint
        .var_builder(Component::Vae, DType::F32, &Device::Cpu)
        .unwrap();
    let vae = WanVae::new_decoder_only(&config, vb).unwrap();
    let video = vae.decode(get(&t, "latent")).unwrap();
    assert_close("decoder-only decode(latent)", &video, get(&t, "decoded"));
    let error = vae.encode(get(&t, "image")).unwrap_err().to_string();
    assert!(error.contains("without its encoder"), "{error}");
    assert_eq!((vae.latent_frames(81), vae.video_frames(21)), (21, 81));
}

#[test]
fn tiled_decode_matches_diffusers() {
    let (vae, t) = (tiny_vae(), tensors());
    let settings = &json()["tiling"];
    let size = |key: &str| {
        settings[key]
            .as_u64()
            .unwrap_or_else(|| panic!("vae.json tiling.{key}")) as usize
    };
    let tiling = Tiling {
        tile_sample_min_height: size("tile_sample_min_height"),
        tile_sample_min_width: size("tile_sample_min_width"),
        tile_sample_stride_height: size("tile_sample_stride_height"),
        tile_sample_stride_width: size("tile_sample_stride_width"),
    };
    let latent = get(&t, "latent_tiled");
    let start = Instant::now();
    let tiled = vae.decode_tiled(latent, &tiling).unwrap();
    eprintln!(
        "tiled decode {:?} in {:.1} ms",
        latent.dims(),
        start.elapsed().as_secs_f64() * 1e3
    );
    assert_close(
        "decode_tiled(latent_tiled)",
        &tiled,
        get(&t, "decoded_tiled"),
    );
    let untiled = vae.decode(latent).unwrap();
    assert_close("decode(latent_tiled)", &untiled, get(&t, "decoded_untiled"));
    // A latent no bigger than one tile is decoded whole, as diffusers does.
    let whole = vae.decode_tiled(latent, &Tiling::default()).unwrap();
    assert_close(
        "decode_tiled with one tile",
        &whole,
        get(&t, "decoded_untiled"),
    );
}

#[test]
fn latent_normalisation_is_the_pipelines() {
    let vae = tiny_vae();
    let config = vae.config().clone();
    let z = Tensor::randn(0f32, 1f32, (2, config.z_dim, 3, 2, 2), &Device::Cpu).unwrap();
    let normalised = vae.normalize(&z).unwrap();
    let back = vae.denormalize(&normalised).unwrap();
    assert_close("denormalize(normalize(z))", &back, &z);
    let zs = z.flatten_from(2).unwrap().to_vec3::<f32>().unwrap();
    let ns = normalised
        .flatten_from(2)
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    let ds = vae
        .denormalize(&z)
        .unwrap()
        .flatten_from(2)
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    for b in 0..2 {
        for c in 0..config.z_dim {
            let (mean, inv) = (
                config.latents_mean[c] as f32,
                1.0 / config.latents_std[c] as f32,
            );
            for i in 0..zs[b][c].len() {
                let x = zs[b][c][i];
                assert_eq!(ns[b][c][i], (x - mean) * inv, "normalize b{b} c{c}");
                assert_eq!(ds[b][c][i], x / inv + mean, "denormalize b{b} c{c}");
            }
        }
    }
    // The config's lists are the class's (the fixture json repeats them).
    let listed = json();
    let list = |key: &str| -> Vec<f64> {
        listed[key]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_f64().unwrap()).collect())
            .unwrap_or_default()
    };
    if listed.get("latents_mean").is_some() {
        assert_eq!(list("latents_mean"), config.latents_mean);
        assert_eq!(list("latents_std"), config.latents_std);
    }
    assert_eq!(config.latents_mean, VaeConfig::default().latents_mean);
    assert_eq!(config.latents_std, VaeConfig::default().latents_std);
}

/// A `VarBuilder` backend over `published/shapes.json` that hands out zeros of the listed
/// shape (a name or shape not listed is an error) and records what was asked for.
struct PublishedShapes {
    shapes: BTreeMap<String, Vec<usize>>,
    requested: Arc<Mutex<BTreeSet<String>>>,
}

impl SimpleBackend for PublishedShapes {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let Some(shape) = self.shapes.get(name) else {
            candle_core::bail!("{name} is not a tensor of the published VAE")
        };
        if shape.as_slice() != s.dims() {
            candle_core::bail!("{name}: asked for {:?}, published {shape:?}", s.dims())
        }
        self.requested.lock().unwrap().insert(name.to_string());
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: unchecked access")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }
}

#[test]
fn published_layout_is_read_tensor_for_tensor() {
    let path = common::fixtures().join("published/shapes.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let all: serde_json::Value = serde_json::from_str(&text).unwrap();
    let shapes: BTreeMap<String, Vec<usize>> =
        serde_json::from_value(all["vae"]["tensors"].clone()).unwrap();
    let params: usize = shapes.values().map(|s| s.iter().product::<usize>()).sum();
    assert_eq!(Some(params as u64), all["vae"]["params"].as_u64());
    let requested = Arc::new(Mutex::new(BTreeSet::new()));
    let backend = PublishedShapes {
        shapes: shapes.clone(),
        requested: requested.clone(),
    };
    let vb = VarBuilder::from_backend(Box::new(backend), DType::BF16, Device::Cpu);
    let config: VaeConfig = serde_json::from_str(
        &std::fs::read_to_string(common::fixtures().join("published/vae_config.json")).unwrap(),
    )
    .unwrap();
    WanVae::new(&config, vb).unwrap();
    let requested = requested.lock().unwrap();
    let unread: Vec<&String> = shapes
        .keys()
        .filter(|name| !requested.contains(*name))
        .collect();
    assert!(
        unread.is_empty(),
        "published tensors never read: {unread:?}"
    );
    eprintln!(
        "published VAE: {} tensors, {params} parameters, all read with their shapes",
        shapes.len()
    );
}

#[test]
fn published_config_parses_to_the_defaults() {
    let path = common::fixtures().join("published/vae_config.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let config: VaeConfig = serde_json::from_str(&text).unwrap();
    assert_eq!(config, VaeConfig::default());
    assert_eq!((config.spatial_stride(), config.temporal_stride()), (8, 4));
}

/// `VAE_BENCH=T,h,w` (default 2,16,16): decode a random latent of that size with the fixture
/// checkpoint (or `REELFARM_WAN_FIXTURES`'s) and print the time per latent frame.
#[test]
#[ignore = "timing; run with --ignored --nocapture"]
fn bench_decode() {
    let size: Vec<usize> = std::env::var("VAE_BENCH")
        .unwrap_or_else(|_| "2,16,16".into())
        .split(',')
        .map(|v| v.parse().unwrap())
        .collect();
    let vae = tiny_vae();
    let latent =
        Tensor::randn(0f32, 1f32, (1, 16, size[0], size[1], size[2]), &Device::Cpu).unwrap();
    let start = Instant::now();
    let mut last = start;
    vae.decode_streaming(&latent, |frames| {
        eprintln!(
            "{:?} after {:.2}s",
            frames.dims(),
            last.elapsed().as_secs_f64()
        );
        last = Instant::now();
        Ok(())
    })
    .unwrap();
    eprintln!(
        "decode {:?}: {:.2}s",
        latent.dims(),
        start.elapsed().as_secs_f64()
    );
}
