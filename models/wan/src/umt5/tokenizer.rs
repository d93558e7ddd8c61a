//! The umT5 tokenizer as `WanPipeline` calls it: each prompt cleaned as `prompt_clean` cleans it, then `tokenizer(texts, padding="max_length", max_length=L, truncation=True, add_special_tokens=True)`, so the ids and masks equal the reference's.
//!
//! The `tokenizers` crate reads the checkpoint's `tokenizer/tokenizer.json` (the same library
//! backs transformers' fast tokenizer); the truncation and padding that transformers sets for
//! that call are set here per call, so the library truncates before appending `</s>` (the EOS
//! survives truncation) and pads on the right with `<pad>`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use candle_core::{Device, Tensor};
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

use super::html;
use crate::error::{Result, WanError};

/// The pad token `T5Tokenizer` is built with (id 0 in umT5's vocabulary).
const PAD_TOKEN: &str = "<pad>";

/// umT5's tokenizer with the pipeline's prompt cleaning, truncation and padding.
pub struct WanTokenizer {
    /// Reconfigured (truncation, padding) on every call, hence the lock.
    tokenizer: Mutex<Tokenizer>,
    pad_id: u32,
    /// Special tokens the post-processor adds to one sequence (`</s>`: 1).
    added_tokens: usize,
}

impl WanTokenizer {
    /// Reads a `tokenizer.json`; a missing file or one without `<pad>` is named in the error.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(WanError::MissingFile {
                path: path.to_path_buf(),
                expected: "the umT5 tokenizer of the checkpoint (tokenizer/tokenizer.json, as \
                           google/umt5-xxl publishes it)"
                    .into(),
            });
        }
        let invalid = |reason: String| WanError::InvalidFile {
            path: PathBuf::from(path),
            reason,
        };
        let tokenizer = Tokenizer::from_file(path)
            .map_err(|error| invalid(format!("not a tokenizers JSON file: {error}")))?;
        let pad_id = tokenizer
            .token_to_id(PAD_TOKEN)
            .ok_or_else(|| invalid(format!("the vocabulary has no {PAD_TOKEN} token")))?;
        let added_tokens = tokenizer.get_post_processor().map_or(0, |processor| {
            tokenizers::PostProcessor::added_tokens(processor, false)
        });
        Ok(Self {
            tokenizer: Mutex::new(tokenizer),
            pad_id,
            added_tokens,
        })
    }

    /// Tokens in the vocabulary, added tokens included; ids are below this.
    pub fn vocab_size(&self) -> usize {
        self.lock().get_vocab_size(true)
    }

    /// Token ids and attention masks, both `[prompts.len(), max_len]` u32 on the CPU, of the
    /// cleaned prompts: at most `max_len - 1` tokens of text, `</s>`, then `<pad>` (mask 0).
    pub fn encode(&self, prompts: &[&str], max_len: usize) -> Result<(Tensor, Tensor)> {
        if prompts.is_empty() {
            return Err(WanError::InvalidRequest("no prompt to tokenize".into()));
        }
        if max_len == 0 || max_len < self.added_tokens {
            return Err(WanError::InvalidRequest(format!(
                "max_len {max_len} has no room for the {} special token(s)",
                self.added_tokens
            )));
        }
        let texts: Vec<String> = prompts.iter().map(|prompt| prompt_clean(prompt)).collect();
        let encodings = {
            let mut tokenizer = self.lock();
            tokenizer
                .with_truncation(Some(TruncationParams {
                    direction: TruncationDirection::Right,
                    max_length: max_len,
                    strategy: TruncationStrategy::LongestFirst,
                    stride: 0,
                }))
                .map_err(|error| WanError::InvalidRequest(format!("truncation: {error}")))?;
            tokenizer.with_padding(Some(PaddingParams {
                strategy: PaddingStrategy::Fixed(max_len),
                direction: PaddingDirection::Right,
                pad_to_multiple_of: None,
                pad_id: self.pad_id,
                pad_type_id: 0,
                pad_token: PAD_TOKEN.into(),
            }));
            tokenizer.encode_batch(texts, true).map_err(|error| {
                WanError::InvalidRequest(format!("tokenizing a prompt: {error}"))
            })?
        };
        let rows = encodings.len();
        let ids: Vec<u32> = encodings
            .iter()
            .flat_map(|e| e.get_ids().to_vec())
            .collect();
        let mask: Vec<u32> = encodings
            .iter()
            .flat_map(|e| e.get_attention_mask().to_vec())
            .collect();
        Ok((
            Tensor::from_vec(ids, (rows, max_len), &Device::Cpu)?,
            Tensor::from_vec(mask, (rows, max_len), &Device::Cpu)?,
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tokenizer> {
        // Every call sets what it needs, so a panic elsewhere leaves nothing half-configured.
        self.tokenizer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// diffusers' Wan `prompt_clean`: `html.unescape` twice, strip, every run of whitespace to one
/// space, strip. (`ftfy.fix_text` runs first only where ftfy is installed; the reference
/// environment has none, so neither does this.)
pub fn prompt_clean(prompt: &str) -> String {
    let unescaped = html::unescape(&html::unescape(prompt));
    let mut collapsed = String::with_capacity(unescaped.len());
    let mut in_whitespace = false;
    for c in unescaped.trim_matches(is_python_space).chars() {
        // Python's `regex` `\s` is exactly Unicode White_Space, as is `char::is_whitespace`.
        if c.is_whitespace() {
            if !in_whitespace {
                collapsed.push(' ');
            }
            in_whitespace = true;
        } else {
            collapsed.push(c);
            in_whitespace = false;
        }
    }
    collapsed.trim_matches(is_python_space).to_string()
}

/// What `str.strip()` removes: White_Space plus the separators U+001C..U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1C}'..='\u{1F}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected values printed by `diffusers.pipelines.wan.pipeline_wan.prompt_clean` in the
    /// reference environment (no ftfy).
    #[test]
    fn prompts_are_cleaned_as_the_pipeline_cleans_them() {
        let cases = [
            ("A cat walks on the grass", "A cat walks on the grass"),
            ("  A  cat\t\twalks\n\non   grass  ", "A cat walks on grass"),
            ("Tom &amp; Jerry &lt;3", "Tom & Jerry <3"),
            (
                "double &amp;amp; escaped &amp;quot;x&amp;quot;",
                "double & escaped \"x\"",
            ),
            (
                "non&nbsp;breaking\u{3000}ideographic\u{2009}thin",
                "non breaking ideographic thin",
            ),
            ("\u{1c}edge\u{1f}inside\u{1d} ", "edge\u{1f}inside"),
            ("zero\u{200b}width stays", "zero\u{200b}width stays"),
            ("&#10;&#9; padded &NewLine;", "padded"),
            ("", ""),
            ("   ", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(prompt_clean(input), expected, "{input:?}");
        }
    }

    #[test]
    fn a_missing_tokenizer_names_its_path() {
        let error = match WanTokenizer::from_file("/nonexistent/tokenizer/tokenizer.json") {
            Err(error) => error.to_string(),
            Ok(_) => panic!("a missing file loaded"),
        };
        assert!(
            error.contains("/nonexistent/tokenizer/tokenizer.json: missing"),
            "{error}"
        );
    }
}
