//! Parity of the Wan 2.1 VAE (`reelfarm_wan::vae`) with diffusers' `AutoencoderKLWan` on the tiny random checkpoint: chunked encode, cached decode, tiled decode, and the pipeline's latent (de)normalisation.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
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
    let values = z.to_vec3::<f32>().ok();
    assert!(values.is_none(), "5-D");
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

#[test]
fn published_config_parses_to_the_defaults() {
    let path = common::fixtures().join("published/vae_config.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let config: VaeConfig = serde_json::from_str(&text).unwrap();
    assert_eq!(config, VaeConfig::default());
    assert_eq!((config.spatial_stride(), config.temporal_stride()), (8, 4));
}
