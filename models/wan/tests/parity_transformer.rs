//! The transformer against diffusers' `WanTransformer3DModel`: the tiny random checkpoint's forward pass, plain and with a first-frame-conditioned latent.

mod common;

use candle_core::{DType, Device, Tensor};
use reelfarm_wan::transformer::{TransformerConfig, WanTransformer};
use reelfarm_wan::weights::{Checkpoint, Component};

fn tiny_in(dtype: DType) -> WanTransformer {
    let checkpoint = Checkpoint::open(common::tiny_checkpoint()).unwrap();
    let config: TransformerConfig = checkpoint.config(Component::Transformer).unwrap();
    let vb = checkpoint
        .var_builder(Component::Transformer, dtype, &Device::Cpu)
        .unwrap();
    WanTransformer::new(&config, vb).unwrap()
}

fn tiny() -> WanTransformer {
    tiny_in(DType::F32)
}

#[test]
fn one_forward_matches_the_reference() {
    let model = tiny();
    let io = common::load("transformer");
    let out = model
        .forward(
            &io["hidden_states"],
            &io["timestep"],
            &io["encoder_hidden_states"],
        )
        .unwrap();
    common::assert_close("transformer output", &out, &io["output"]);
}

#[test]
fn a_forward_on_a_first_frame_conditioned_latent_matches_the_reference() {
    let model = tiny();
    let io = common::load("transformer");
    let sigma = common::load_json("transformer")["cond_sigma"]
        .as_f64()
        .unwrap();
    // Latent frame 0 holds the conditioning latent noised to this step's level.
    let held = ((&io["cond_latent"] * (1.0 - sigma)).unwrap()
        + (&io["cond_noise"] * sigma).unwrap())
    .unwrap();
    let first = io["hidden_states"].narrow(0, 0, 1).unwrap();
    let rest = first.narrow(2, 1, first.dim(2).unwrap() - 1).unwrap();
    let conditioned = Tensor::cat(&[&held, &rest], 2).unwrap();
    common::assert_close("conditioned input", &conditioned, &io["hidden_states_cond"]);
    let context = io["encoder_hidden_states"].narrow(0, 0, 1).unwrap();
    let out = model
        .forward(&conditioned, &io["timestep_cond"], &context)
        .unwrap();
    common::assert_close("conditioned transformer output", &out, &io["output_cond"]);
}

#[test]
fn a_bf16_forward_stays_near_the_reference() {
    // bf16 keeps 8 bits of mantissa (relative rounding ~4e-3 per op); through 2 blocks the
    // reference's own bf16 run lands about 1e-2 of scale off its f32 output. This catches a
    // dtype mix-up (an op that fails or a tensor left in the wrong precision), not ulps.
    let model = tiny_in(DType::BF16);
    let io = common::load("transformer");
    let out = model
        .forward(
            &io["hidden_states"],
            &io["timestep"],
            &io["encoder_hidden_states"],
        )
        .unwrap();
    assert_eq!(out.dtype(), DType::F32);
    common::assert_close_within("bf16 transformer output", &out, &io["output"], 2e-2);
}
