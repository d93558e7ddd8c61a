//! `reelfarm-wan`: Wan 2.1 text-to-video (T2V-1.3B, and the 14B of the same family) written with candle, so a GPU worker renders with a real open model instead of the 8 MB demo.
//!
//! The components follow the published diffusers checkpoint (`Wan-AI/Wan2.1-T2V-1.3B-Diffusers`)
//! tensor for tensor, and each is held to the reference implementation (diffusers and
//! transformers on the CPU) by the parity fixtures under `tests/fixtures/wan/`, which
//! `tools/wan_parity.py` writes:
//! - `umt5`: the text encoder (umT5 encoder stack, a relative position bias in every layer,
//!   gated-GELU feed-forward) and its tokenizer (`tokenizer/tokenizer.json`);
//! - `transformer`: `WanTransformer3DModel` (patch embedding, 3-axis RoPE, AdaLN modulation,
//!   RMS-normed q/k, cross-attention to the text, tanh-GELU feed-forward, output head);
//! - `vae`: `AutoencoderKLWan` (causal 3D convolutions, chunked encoding, frame-by-frame
//!   cached decoding, a tiled low-memory decode);
//! - `scheduler`: flow-matching Euler with shift and UniPC (order 2, bh2, flow sigmas);
//! - `weights`: the diffusers layout (`model_index.json`, sharded safetensors, bf16/f16/f32);
//! - `pipeline` and `runtime`: sampling with classifier-free guidance and first-frame
//!   conditioning, behind the worker's `ModelRuntime` seam.

pub mod bench;
pub mod error;
pub mod frames;
pub mod noise;
pub mod pipeline;
pub mod runtime;
pub mod scheduler;
pub mod transformer;
pub mod umt5;
pub mod vae;
pub mod weights;

pub use error::WanError;
