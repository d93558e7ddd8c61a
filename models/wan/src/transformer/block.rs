//! One Wan transformer block: AdaLN-modulated self-attention with RoPE, cross-attention to the text, and a gated tanh-GELU feed-forward.
//!
//! The residual stream stays in f32 (the reference rounds it to bf16 after every add; keeping
//! f32 is at least as accurate), the modulation table and the cross-attention LayerNorm are
//! f32 as the reference keeps them (`_keep_in_fp32_modules`), and every projection runs in the
//! compute dtype (bf16 on CUDA, f32 on CPU).

use candle_core::{D, DType, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

use super::rope;
use crate::error::Result;

/// Bytes of attention scores one chunk of queries may hold (all heads together); long
/// sequences attend in query chunks so a 480p 81-frame window (32,760 tokens) never builds
/// the whole 32,760² score matrix.
const SCORE_BUDGET_BYTES: usize = 512 << 20;

pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    norm_q: Tensor,
    norm_k: Tensor,
    heads: usize,
    eps: f32,
}

impl Attention {
    pub fn new(dim: usize, heads: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let linear = |name: &str| candle_nn::linear(dim, dim, vb.pp(name));
        Ok(Self {
            to_q: linear("to_q")?,
            to_k: linear("to_k")?,
            to_v: linear("to_v")?,
            to_out: linear("to_out.0")?,
            norm_q: vb.pp("norm_q").get(dim, "weight")?,
            norm_k: vb.pp("norm_k").get(dim, "weight")?,
            heads,
            eps: eps as f32,
        })
    }

    /// `x` `[B, Lq, dim]` attends to `context` `[B, Lk, dim]` (itself for self-attention,
    /// which passes the RoPE tables).
    pub fn forward(
        &self,
        x: &Tensor,
        context: &Tensor,
        rope: Option<(&Tensor, &Tensor)>,
    ) -> Result<Tensor> {
        let (batch, queries, dim) = x.dims3()?;
        let keys = context.dim(1)?;
        let head_dim = dim / self.heads;
        // RMS norm across all heads, normalised in f32, then the gain.
        let normed = |t: Tensor, gain: &Tensor| -> Result<Tensor> {
            let dtype = t.dtype();
            let t = candle_nn::ops::rms_norm(
                &t.to_dtype(DType::F32)?,
                &gain.to_dtype(DType::F32)?,
                self.eps,
            )?;
            Ok(t.to_dtype(dtype)?)
        };
        let q = normed(self.to_q.forward(x)?, &self.norm_q)?;
        let k = normed(self.to_k.forward(context)?, &self.norm_k)?;
        let v = self.to_v.forward(context)?;
        let split = |t: Tensor, length: usize| -> Result<Tensor> {
            Ok(t.reshape((batch, length, self.heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (mut q, mut k, v) = (split(q, queries)?, split(k, keys)?, split(v, keys)?);
        if let Some((cos, sin)) = rope {
            q = rope::apply(&q, cos, sin)?;
            k = rope::apply(&k, cos, sin)?;
        }
        let out = attend(&q, &k, &v)?;
        let out = out.transpose(1, 2)?.reshape((batch, queries, dim))?;
        Ok(self.to_out.forward(&out)?)
    }
}

/// softmax(q kᵀ / √d) v over `[B, heads, L, d]`, in query chunks within `SCORE_BUDGET_BYTES`;
/// the softmax runs in f32.
fn attend(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (batch, heads, queries, head_dim) = q.dims4()?;
    let keys = k.dim(2)?;
    // The scale goes on q ([L, d]) rather than on the scores ([L, L]).
    let q = (q * (1.0 / (head_dim as f64).sqrt()))?;
    let kt = k.transpose(2, 3)?.contiguous()?;
    let per_query = batch * heads * keys * 4;
    let chunk = (SCORE_BUDGET_BYTES / per_query.max(1)).clamp(1, queries);
    // CUDA's softmax accumulates half-precision rows in f32 itself; elsewhere, convert.
    let in_f32 = !q.device().is_cuda();
    let mut outputs = Vec::with_capacity(queries.div_ceil(chunk));
    for start in (0..queries).step_by(chunk) {
        let length = chunk.min(queries - start);
        let scores = q.narrow(2, start, length)?.matmul(&kt)?;
        let weights = if in_f32 {
            candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(v.dtype())?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        };
        outputs.push(weights.matmul(v)?);
    }
    Ok(Tensor::cat(&outputs, 2)?)
}

/// LayerNorm without affine parameters, in f32.
pub fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(centred.broadcast_div(&(variance + eps)?.sqrt()?)?)
}

/// `layer_norm(x) · (1 + scale) + shift`, with `shift`/`scale` `[B, 1, dim]` in f32.
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(layer_norm(x, eps)?
        .broadcast_mul(&(scale + 1.0)?)?
        .broadcast_add(shift)?)
}

pub struct Block {
    attn1: Attention,
    attn2: Attention,
    /// Affine f32 LayerNorm before cross-attention (`cross_attn_norm`), or none.
    norm2: Option<(Tensor, Tensor)>,
    ffn_in: Linear,
    ffn_out: Linear,
    /// `[1, 6, dim]` f32: shift, scale, gate for attention, then for the feed-forward.
    scale_shift_table: Tensor,
    eps: f64,
}

impl Block {
    pub fn new(
        dim: usize,
        ffn_dim: usize,
        heads: usize,
        cross_attn_norm: bool,
        eps: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let f32_vb = vb.clone().set_dtype(DType::F32);
        let norm2 = if cross_attn_norm {
            let norm = f32_vb.pp("norm2");
            Some((norm.get(dim, "weight")?, norm.get(dim, "bias")?))
        } else {
            None
        };
        Ok(Self {
            attn1: Attention::new(dim, heads, eps, vb.pp("attn1"))?,
            attn2: Attention::new(dim, heads, eps, vb.pp("attn2"))?,
            norm2,
            ffn_in: candle_nn::linear(dim, ffn_dim, vb.pp("ffn.net.0.proj"))?,
            ffn_out: candle_nn::linear(ffn_dim, dim, vb.pp("ffn.net.2"))?,
            scale_shift_table: f32_vb.get((1, 6, dim), "scale_shift_table")?,
            eps,
        })
    }

    /// `x` `[B, S, dim]` f32 residual stream; `context` `[B, L, dim]` projected text in the
    /// compute dtype; `time` `[B, 6, dim]` f32 projected timestep.
    pub fn forward(
        &self,
        x: &Tensor,
        context: &Tensor,
        time: &Tensor,
        rope: (&Tensor, &Tensor),
    ) -> Result<Tensor> {
        let dtype = context.dtype();
        let m = self.scale_shift_table.broadcast_add(time)?;
        let part = |i: usize| m.narrow(1, i, 1);
        let (shift, scale, gate) = (part(0)?, part(1)?, part(2)?);
        let (c_shift, c_scale, c_gate) = (part(3)?, part(4)?, part(5)?);

        let n = modulate(x, &shift, &scale, self.eps)?.to_dtype(dtype)?;
        let a = self.attn1.forward(&n, &n, Some(rope))?;
        let x = (x + a.to_dtype(DType::F32)?.broadcast_mul(&gate)?)?;

        let n = match &self.norm2 {
            Some((weight, bias)) => layer_norm(&x, self.eps)?
                .broadcast_mul(weight)?
                .broadcast_add(bias)?,
            None => x.clone(),
        };
        let a = self.attn2.forward(&n.to_dtype(dtype)?, context, None)?;
        let x = (x + a.to_dtype(DType::F32)?)?;

        let n = modulate(&x, &c_shift, &c_scale, self.eps)?.to_dtype(dtype)?;
        let f = self.ffn_out.forward(&self.ffn_in.forward(&n)?.gelu()?)?;
        Ok((x + f.to_dtype(DType::F32)?.broadcast_mul(&c_gate)?)?)
    }
}
