//! Shared by the parity tests: where the fixtures are, reading them, and the one tolerance every component is held to.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

/// `tests/fixtures/wan/` at the workspace root, written by `tools/wan_parity.py`.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/wan")
}

/// The tiny random checkpoint in the published diffusers layout.
pub fn tiny_checkpoint() -> PathBuf {
    fixtures().join("tiny")
}

/// Every tensor of `tests/fixtures/wan/{name}.safetensors`, as stored.
pub fn load(name: &str) -> HashMap<String, Tensor> {
    let path = fixtures().join(format!("{name}.safetensors"));
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// `tests/fixtures/wan/{name}.json`.
pub fn load_json(name: &str) -> serde_json::Value {
    let path = fixtures().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The bar: max |actual − expected| ≤ 1e-4 × max |expected| (f32, CPU).
pub const RELATIVE_TOLERANCE: f32 = 1e-4;

/// Panics naming `what`, the error, the scale and the worst element unless `actual` matches
/// `expected` (same shape) within `RELATIVE_TOLERANCE` of the expected output's scale.
pub fn assert_close(what: &str, actual: &Tensor, expected: &Tensor) {
    assert_close_within(what, actual, expected, RELATIVE_TOLERANCE)
}

pub fn assert_close_within(what: &str, actual: &Tensor, expected: &Tensor, relative: f32) {
    assert_eq!(
        actual.dims(),
        expected.dims(),
        "{what}: shape {:?}, expected {:?}",
        actual.dims(),
        expected.dims()
    );
    let values = |t: &Tensor| {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (a, e) = (values(actual), values(expected));
    let scale = e.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (worst, error) = a
        .iter()
        .zip(&e)
        .map(|(a, e)| (a - e).abs())
        .enumerate()
        .fold((0, 0f32), |(wi, we), (i, d)| {
            if d > we || d.is_nan() {
                (i, d)
            } else {
                (wi, we)
            }
        });
    assert!(
        scale > 0.0,
        "{what}: the reference output is all zeros, which proves nothing"
    );
    assert!(
        error <= relative * scale,
        "{what}: max abs error {error:.3e} at element {worst} ({} vs {}) exceeds {relative:e} × scale {scale:.3e}",
        a[worst],
        e[worst]
    );
    eprintln!(
        "{what}: max abs error {error:.3e} = {:.2e} of scale {scale:.3e}",
        error / scale
    );
}
