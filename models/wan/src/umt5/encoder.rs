//! The umT5 encoder stack (`UMT5EncoderModel`), the text side of Wan: token embedding, then per layer an RMS-normed self-attention with its own relative position bias and no 1/√d scaling, and an RMS-normed gated-GELU feed-forward, then a final RMS norm.
//!
//! The residual stream is kept in f32 whatever the compute dtype, as are the norms' variance and
//! the softmax; the matmuls run in the VarBuilder's dtype (f32 on the CPU, bf16 on CUDA). With
//! f32 weights this is the reference's arithmetic; in bf16 it is at least as close to the f32
//! result as transformers' own bf16 run (whose residual is bf16, or f32 after the first
//! feed-forward in versions that keep `DenseReluDense.wo` in f32).

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder, linear_no_bias};

use super::config::Umt5Config;
use crate::error::{Result, WanError};

/// `UMT5EncoderModel` for a checkpoint in transformers' tensor names.
pub struct Umt5Encoder {
    /// `shared.weight` (or `encoder.embed_tokens.weight`), `[vocab_size, d_model]`.
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    final_layer_norm: RmsNorm,
    num_buckets: usize,
    max_distance: usize,
    dtype: DType,
}

impl Umt5Encoder {
    /// Loads every tensor of the encoder from `vb` (rooted at the text encoder's state dict);
    /// a tensor that is absent or misshapen fails with its name.
    pub fn new(config: &Umt5Config, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let named =
            |error: candle_core::Error| WanError::InvalidWeights(format!("text encoder: {error}"));
        let embed_tokens = embedding(config, &vb)?;
        let layers = (0..config.num_layers)
            .map(|i| Layer::new(config, vb.pp(format!("encoder.block.{i}.layer"))))
            .collect::<candle_core::Result<Vec<_>>>()
            .map_err(named)?;
        let final_layer_norm =
            RmsNorm::new(config, vb.pp("encoder.final_layer_norm")).map_err(named)?;
        Ok(Self {
            embed_tokens,
            layers,
            final_layer_norm,
            num_buckets: config.relative_attention_num_buckets,
            max_distance: config.relative_attention_max_distance,
            dtype: vb.dtype(),
        })
    }

    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// `last_hidden_state` `[B, L, d_model]` in the compute dtype for token ids `[B, L]`
    /// (u32 or i64) and an attention mask `[B, L]` (1 for tokens, 0 for padding; any dtype).
    /// Padded positions are computed too (they attend to the tokens), as the reference does.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (batch, len) = input_ids.dims2().map_err(|_| {
            WanError::InvalidRequest(format!(
                "input_ids: shape {:?}, expected [B, L]",
                input_ids.dims()
            ))
        })?;
        if attention_mask.dims() != [batch, len] {
            return Err(WanError::InvalidRequest(format!(
                "attention_mask: shape {:?}, expected [{batch}, {len}] like input_ids",
                attention_mask.dims()
            )));
        }
        if !matches!(input_ids.dtype(), DType::U32 | DType::I64) {
            return Err(WanError::InvalidRequest(format!(
                "input_ids: dtype {:?}, expected u32 or i64",
                input_ids.dtype()
            )));
        }
        let device = self.device();
        let ids = input_ids.to_device(device)?.flatten_all()?;
        let mut hidden = self
            .embed_tokens
            .index_select(&ids, 0)?
            .reshape((batch, len, ()))?
            .to_dtype(DType::F32)?;
        let mask_bias = mask_bias(&attention_mask.to_device(device)?)?;
        let buckets = bucket_indices(len, self.num_buckets, self.max_distance, device)?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &buckets, &mask_bias)?;
        }
        Ok(self.final_layer_norm.forward(&hidden)?)
    }
}

/// The token embedding, under either name the published layout may use.
fn embedding(config: &Umt5Config, vb: &VarBuilder) -> Result<Tensor> {
    const NAMES: [&str; 2] = ["shared.weight", "encoder.embed_tokens.weight"];
    let name = NAMES
        .into_iter()
        .find(|name| vb.contains_tensor(name))
        .ok_or_else(|| {
            WanError::InvalidWeights(format!(
                "text encoder: no token embedding (looked for {})",
                NAMES.join(" and ")
            ))
        })?;
    vb.get((config.vocab_size, config.d_model), name)
        .map_err(|error| WanError::InvalidWeights(format!("text encoder: {error}")))
}

/// `(1 - mask) * f32::MIN` as `[B, 1, 1, L]`: masked keys get the lowest finite score.
fn mask_bias(attention_mask: &Tensor) -> candle_core::Result<Tensor> {
    let (batch, len) = attention_mask.dims2()?;
    attention_mask
        .to_dtype(DType::F32)?
        .affine(-1.0, 1.0)?
        .affine(f32::MIN as f64, 0.0)?
        .reshape((batch, 1, 1, len))
}

/// The bucket of every (query i, key j) pair, row-major `[L * L]` u32, for `j - i`.
fn bucket_indices(
    len: usize,
    num_buckets: usize,
    max_distance: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let buckets: Vec<u32> = (0..len as i64)
        .flat_map(|query| {
            (0..len as i64)
                .map(move |key| relative_position_bucket(key - query, num_buckets, max_distance))
        })
        .collect();
    Tensor::from_vec(buckets, len * len, device)
}

/// T5's bidirectional relative-position bucket of `key - query`: half the buckets for keys to
/// the right; within a half, distances below a quarter of the buckets are exact and the rest
/// are log-spaced up to `max_distance`, the last bucket holding everything beyond. The log is
/// taken in f32 as the reference takes it, so bucket edges fall on the same distances.
pub(crate) fn relative_position_bucket(
    relative_position: i64,
    num_buckets: usize,
    max_distance: usize,
) -> u32 {
    let half = num_buckets / 2;
    let side = if relative_position > 0 { half } else { 0 };
    let distance = relative_position.unsigned_abs() as usize;
    let max_exact = half / 2;
    let within = if distance < max_exact {
        distance
    } else {
        let log_range = (max_distance as f64 / max_exact as f64).ln() as f32;
        let log_ratio = (distance as f32 / max_exact as f32).ln() / log_range;
        let large = max_exact + (log_ratio * (half - max_exact) as f32) as usize;
        large.min(half - 1)
    };
    (side + within) as u32
}

/// One `UMT5Block` of the encoder: self-attention then feed-forward, each pre-normed and
/// added to the f32 residual.
struct Layer {
    attention: SelfAttention,
    feed_forward: GatedGeluFeedForward,
}

impl Layer {
    fn new(config: &Umt5Config, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            attention: SelfAttention::new(config, vb.pp("0"))?,
            feed_forward: GatedGeluFeedForward::new(config, vb.pp("1"))?,
        })
    }

    fn forward(&self, hidden: &Tensor, buckets: &Tensor, mask_bias: &Tensor) -> Result<Tensor> {
        let hidden = (hidden + self.attention.forward(hidden, buckets, mask_bias)?)?;
        Ok((&hidden + self.feed_forward.forward(&hidden)?)?)
    }
}

/// `layer.0`: `layer_norm`, `SelfAttention.{q,k,v,o}` (no biases) and this layer's
/// `SelfAttention.relative_attention_bias` `[num_buckets, num_heads]`.
struct SelfAttention {
    layer_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    relative_attention_bias: Tensor,
    num_heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn new(config: &Umt5Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let inner = config.num_heads * config.d_kv;
        let attention = vb.pp("SelfAttention");
        Ok(Self {
            layer_norm: RmsNorm::new(config, vb.pp("layer_norm"))?,
            q: linear_no_bias(config.d_model, inner, attention.pp("q"))?,
            k: linear_no_bias(config.d_model, inner, attention.pp("k"))?,
            v: linear_no_bias(config.d_model, inner, attention.pp("v"))?,
            o: linear_no_bias(inner, config.d_model, attention.pp("o"))?,
            relative_attention_bias: attention.get(
                (config.relative_attention_num_buckets, config.num_heads),
                "relative_attention_bias.weight",
            )?,
            num_heads: config.num_heads,
            head_dim: config.d_kv,
        })
    }

    /// The attention output (before the residual add), f32 `[B, L, d_model]`.
    fn forward(&self, hidden: &Tensor, buckets: &Tensor, mask_bias: &Tensor) -> Result<Tensor> {
        let (batch, len, _) = hidden.dims3()?;
        let normed = self.layer_norm.forward(hidden)?;
        let q = self.heads(&self.q.forward(&normed)?, batch, len)?;
        let k = self.heads(&self.k.forward(&normed)?, batch, len)?;
        let v = self.heads(&self.v.forward(&normed)?, batch, len)?;
        // umT5 folds the scale into its weights: no 1/sqrt(head_dim) here.
        let scores = q
            .matmul(&k.t()?)?
            .to_dtype(DType::F32)?
            .broadcast_add(&self.position_bias(buckets, len)?)?
            .broadcast_add(mask_bias)?;
        let probabilities = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(normed.dtype())?;
        let context = probabilities.matmul(&v)?.transpose(1, 2)?.reshape((
            batch,
            len,
            self.num_heads * self.head_dim,
        ))?;
        Ok(self.o.forward(&context)?.to_dtype(DType::F32)?)
    }

    /// `[B, L, heads * head_dim]` to `[B, heads, L, head_dim]`.
    fn heads(&self, projected: &Tensor, batch: usize, len: usize) -> candle_core::Result<Tensor> {
        projected
            .reshape((batch, len, self.num_heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// This layer's bias for every (query, key) pair, f32 `[1, heads, L, L]`.
    fn position_bias(&self, buckets: &Tensor, len: usize) -> candle_core::Result<Tensor> {
        self.relative_attention_bias
            .index_select(buckets, 0)?
            .reshape((len, len, self.num_heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .to_dtype(DType::F32)
    }
}

/// `layer.1`: `layer_norm`, then `DenseReluDense.wo(gelu_new(wi_0 x) * wi_1 x)`.
struct GatedGeluFeedForward {
    layer_norm: RmsNorm,
    wi_0: Linear,
    wi_1: Linear,
    wo: Linear,
}

impl GatedGeluFeedForward {
    fn new(config: &Umt5Config, vb: VarBuilder) -> candle_core::Result<Self> {
        let dense = vb.pp("DenseReluDense");
        Ok(Self {
            layer_norm: RmsNorm::new(config, vb.pp("layer_norm"))?,
            wi_0: linear_no_bias(config.d_model, config.d_ff, dense.pp("wi_0"))?,
            wi_1: linear_no_bias(config.d_model, config.d_ff, dense.pp("wi_1"))?,
            wo: linear_no_bias(config.d_ff, config.d_model, dense.pp("wo"))?,
        })
    }

    /// The feed-forward output (before the residual add), f32 `[B, L, d_model]`.
    fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let normed = self.layer_norm.forward(hidden)?;
        // candle's `gelu` is the tanh approximation, i.e. transformers' `gelu_new`.
        let gate = self.wi_0.forward(&normed)?.gelu()?;
        let gated = (gate * self.wi_1.forward(&normed)?)?;
        Ok(self.wo.forward(&gated)?.to_dtype(DType::F32)?)
    }
}

/// T5's LayerNorm: RMS only (no mean, no bias), the variance taken in f32, the result in the
/// gain's dtype times the gain.
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(config: &Umt5Config, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get(config.d_model, "weight")?,
            eps: config.layer_norm_epsilon,
        })
    }

    fn forward(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let hidden = hidden.to_dtype(DType::F32)?;
        let variance = hidden.sqr()?.mean_keepdim(D::Minus1)?;
        let inverse_rms = (variance + self.eps)?.sqrt()?.recip()?;
        hidden
            .broadcast_mul(&inverse_rms)?
            .to_dtype(self.weight.dtype())?
            .broadcast_mul(&self.weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 32 buckets, max distance 128, bidirectional: exact below 8, then log-spaced edges at 8,
    /// 12, 16, 23, 32, 46, 64 and 91 (values printed by transformers'
    /// `UMT5Attention._relative_position_bucket` for every distance in -300..=300).
    #[test]
    fn buckets_match_the_reference_table() {
        let bucket = |rp| relative_position_bucket(rp, 32, 128);
        let left: [(i64, u32); 24] = [
            (0, 0),
            (1, 1),
            (7, 7),
            (8, 8),
            (11, 8),
            (12, 9),
            (15, 9),
            (16, 10),
            (22, 10),
            (23, 11),
            (31, 11),
            (32, 12),
            (45, 12),
            (46, 13),
            (63, 13),
            (64, 14),
            (90, 14),
            (91, 15),
            (127, 15),
            (128, 15),
            (129, 15),
            (300, 15),
            (5000, 15),
            (1 << 40, 15),
        ];
        for (distance, expected) in left {
            assert_eq!(bucket(-distance), expected, "key {distance} to the left");
            if distance > 0 {
                assert_eq!(
                    bucket(distance),
                    expected + 16,
                    "key {distance} to the right"
                );
            }
        }
    }

    #[test]
    fn other_bucket_counts_keep_the_same_shape() {
        // 8 buckets, max distance 16: 4 a side, 2 exact, 2 log-spaced (reference values).
        let got: Vec<u32> = (-20..=20)
            .map(|rp| relative_position_bucket(rp, 8, 16))
            .collect();
        let expected = [
            3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 1, 0, 5, 6, 6, 6, 6, 7, 7, 7,
            7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
        ];
        assert_eq!(got, expected);
    }

    #[test]
    fn the_mask_bias_blocks_only_padding() {
        let mask = Tensor::new(&[[1u32, 1, 0]], &Device::Cpu).unwrap();
        let bias = mask_bias(&mask)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(bias, vec![0.0, 0.0, f32::MIN]);
    }
}
