//! Wan's text encoder: prompts to the `[B, max_len, d_model]` embeddings the video transformer attends to, as `WanPipeline._get_t5_prompt_embeds` makes them (clean, tokenize, umT5-encode, keep each prompt's real rows and zero the rest).
//!
//! - `tokenizer`: [`WanTokenizer`] and [`prompt_clean`] (with `html`, Python's `html.unescape`);
//! - `encoder`: [`Umt5Encoder`], the umT5 encoder stack;
//! - `config`: [`Umt5Config`], `text_encoder/config.json`.

mod config;
mod encoder;
mod html;
mod html_entities;
mod tokenizer;

use candle_core::{DType, Device, Tensor};

pub use config::Umt5Config;
pub use encoder::Umt5Encoder;
pub use tokenizer::{WanTokenizer, prompt_clean};

use crate::error::{Result, WanError};
use crate::weights::{Checkpoint, Component};

/// The checkpoint's tokenizer and umT5 encoder, for prompts of up to `max_len` tokens
/// (the pipeline's `max_sequence_length`, 512 for Wan 2.1).
pub struct TextEncoder {
    tokenizer: WanTokenizer,
    encoder: Umt5Encoder,
    max_len: usize,
}

impl TextEncoder {
    /// Reads `tokenizer/tokenizer.json`, `text_encoder/config.json` and the text encoder's
    /// weights (converted to `dtype` on `device`).
    pub fn load(
        checkpoint: &Checkpoint,
        max_len: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if max_len == 0 {
            return Err(WanError::InvalidRequest("max_len is 0".into()));
        }
        let tokenizer = WanTokenizer::from_file(checkpoint.tokenizer_file()?)?;
        let config: Umt5Config = checkpoint.config(Component::TextEncoder)?;
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(WanError::InvalidWeights(format!(
                "text_encoder/config.json: vocab_size {} is under the tokenizer's {} tokens",
                config.vocab_size,
                tokenizer.vocab_size()
            )));
        }
        let vb = checkpoint.var_builder(Component::TextEncoder, dtype, device)?;
        let encoder = Umt5Encoder::new(&config, vb)?;
        Ok(Self {
            tokenizer,
            encoder,
            max_len,
        })
    }

    pub fn tokenizer(&self) -> &WanTokenizer {
        &self.tokenizer
    }

    pub fn encoder(&self) -> &Umt5Encoder {
        &self.encoder
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// `[prompts.len(), max_len, d_model]` in the encoder's dtype: each prompt's encoder rows up
    /// to its real length (text tokens and `</s>`), zeros after. The zeros, not the encoder's
    /// outputs at padded positions, are what the transformer sees.
    pub fn prompt_embeds(&self, prompts: &[&str]) -> Result<Tensor> {
        let (ids, mask) = self.tokenizer.encode(prompts, self.max_len)?;
        let lengths: Vec<u32> = mask.sum(1)?.to_vec1()?;
        // Only up to the longest real prompt: padded keys are masked out and the position bias
        // is relative, so the real rows come out the same as over all max_len positions, and
        // the rest are zeros anyway (umT5-XXL over 512 positions is seconds on a CPU).
        let longest = lengths.iter().copied().max().unwrap_or(1).max(1) as usize;
        let device = self.encoder.device();
        let hidden = self.encoder.forward(
            &ids.narrow(1, 0, longest)?.to_device(device)?,
            &mask.narrow(1, 0, longest)?.to_device(device)?,
        )?;
        trim_to_lengths(&hidden, &lengths, self.max_len)
    }
}

/// Row `b` of `hidden` `[B, L, d]` keeps its first `lengths[b]` positions, then zeros up to
/// `len` positions.
fn trim_to_lengths(hidden: &Tensor, lengths: &[u32], len: usize) -> Result<Tensor> {
    let (_, encoded, width) = hidden.dims3()?;
    let rows = lengths
        .iter()
        .enumerate()
        .map(|(row, &kept)| {
            let kept = (kept as usize).min(encoded).min(len);
            let real = hidden.get(row)?.narrow(0, 0, kept)?;
            if kept == len {
                return Ok(real);
            }
            let zeros = Tensor::zeros((len - kept, width), hidden.dtype(), hidden.device())?;
            Tensor::cat(&[&real, &zeros], 0)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::stack(&rows, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_past_each_length_are_zeroed() {
        let hidden = Tensor::arange(1f32, 13., &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 2))
            .unwrap();
        let trimmed = trim_to_lengths(&hidden, &[1, 3], 3).unwrap();
        assert_eq!(
            trimmed.to_vec3::<f32>().unwrap(),
            vec![
                vec![vec![1., 2.], vec![0., 0.], vec![0., 0.]],
                vec![vec![7., 8.], vec![9., 10.], vec![11., 12.]],
            ]
        );
    }
}
