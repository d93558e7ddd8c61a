//! The real Wan 2.1 1.3B checkpoint without downloading it: each component built from its published config on a recorder asks for exactly the tensor names and shapes the reference's `state_dict` holds (recorded by `tools/wan_parity.py` on torch's meta device), and the parameter count computed from the config is the reference's.

mod common;

use std::collections::BTreeMap;

use candle_core::DType;
use reelfarm_wan::transformer::{TransformerConfig, WanTransformer};
use reelfarm_wan::umt5::{Umt5Config, Umt5Encoder};
use reelfarm_wan::weights::ShapeRecorder;

type Shapes = BTreeMap<String, Vec<usize>>;

fn published(component: &str) -> (Shapes, u64, serde_json::Value) {
    let all = common::load_json("published/shapes");
    let entry = &all[component];
    let shapes = entry["tensors"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, shape)| {
            let shape = shape
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            (name.clone(), shape)
        })
        .collect();
    (
        shapes,
        entry["params"].as_u64().unwrap(),
        entry["tied"].clone(),
    )
}

fn config<T: serde::de::DeserializeOwned>(component: &str) -> T {
    let path = common::fixtures().join(format!("published/{component}_config.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Asked-for shapes equal the published ones, name for name, and add up to `params`.
fn assert_same(component: &str, recorder: &ShapeRecorder, mut expected: Shapes, params: u64) {
    let asked: Shapes = recorder.asked().into_iter().collect();
    let all = common::load_json("published/shapes");
    // A tied alias is one tensor under two names: a checkpoint holds the canonical name.
    if let Some(tied) = all[component]["tied"].as_object() {
        for alias in tied.keys() {
            expected.remove(alias);
        }
    }
    let missing: Vec<_> = expected
        .keys()
        .filter(|name| !asked.contains_key(*name))
        .collect();
    let extra: Vec<_> = asked
        .keys()
        .filter(|name| !expected.contains_key(*name))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{component}: never read {missing:?}; not published {extra:?}"
    );
    for (name, shape) in &expected {
        assert_eq!(&asked[name], shape, "{component}: {name}");
    }
    let count: u64 = asked
        .values()
        .map(|shape| shape.iter().product::<usize>() as u64)
        .sum();
    assert_eq!(count, params, "{component}: parameters read");
}

#[test]
fn the_transformer_reads_the_published_1_3b_tensors() {
    let (shapes, params, _) = published("transformer");
    let config: TransformerConfig = config("transformer");
    assert_eq!(
        config,
        TransformerConfig::wan_2_1_1_3b(),
        "the published config and the built-in one differ"
    );
    assert_eq!(config.parameter_count(), params);
    let recorder = ShapeRecorder::default();
    WanTransformer::new(&config, recorder.var_builder(DType::BF16)).unwrap();
    assert_same("transformer", &recorder, shapes, params);
}

#[test]
fn the_text_encoder_reads_the_published_umt5_xxl_tensors() {
    let (shapes, params, _) = published("text_encoder");
    let config: Umt5Config = config("text_encoder");
    assert_eq!(
        (config.d_model, config.num_layers, config.num_heads),
        (4096, 24, 64)
    );
    assert_eq!(config.parameter_count(), params);
    let recorder = ShapeRecorder::default();
    Umt5Encoder::new(&config, recorder.var_builder(DType::BF16)).unwrap();
    assert_same("text_encoder", &recorder, shapes, params);
}
