//! `text_encoder/config.json`: the umT5 sizes the encoder is built from, with transformers' `UMT5Config` defaults for whatever a file leaves out.

use serde::Deserialize;

use crate::error::{Result, WanError};

/// The fields of transformers' `UMT5Config` that the encoder reads. The published Wan file
/// (umT5-XXL) has vocab 256384, d_model 4096, d_kv 64, d_ff 10240, 64 heads, 24 layers.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct Umt5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    /// Width of one attention head.
    pub d_kv: usize,
    pub d_ff: usize,
    /// Encoder layers.
    pub num_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    /// Only `"gated-gelu"` (gelu_new, the tanh approximation, times a linear branch).
    pub feed_forward_proj: String,
}

impl Default for Umt5Config {
    /// transformers' `UMT5Config()` (the google/umt5-small sizes).
    fn default() -> Self {
        Self {
            vocab_size: 250_112,
            d_model: 512,
            d_kv: 64,
            d_ff: 1024,
            num_layers: 8,
            num_heads: 6,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "gated-gelu".into(),
        }
    }
}

impl Umt5Config {
    /// Parameters of the encoder stack the config implies (the embedding counted once).
    pub fn parameter_count(&self) -> u64 {
        let (d, inner, ff) = (
            self.d_model as u64,
            (self.num_heads * self.d_kv) as u64,
            self.d_ff as u64,
        );
        let attention =
            4 * d * inner + (self.relative_attention_num_buckets * self.num_heads) as u64 + d;
        let feed_forward = 3 * d * ff + d;
        self.vocab_size as u64 * d + self.num_layers as u64 * (attention + feed_forward) + d
    }

    /// Refuses what the encoder cannot run, naming the field.
    pub fn validate(&self) -> Result<()> {
        let invalid = |field: &str, reason: String| {
            Err(WanError::InvalidWeights(format!(
                "text_encoder/config.json: {field} {reason}"
            )))
        };
        if self.feed_forward_proj != "gated-gelu" {
            return invalid(
                "feed_forward_proj",
                format!(
                    "{:?} is not supported; umT5 uses \"gated-gelu\"",
                    self.feed_forward_proj
                ),
            );
        }
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_heads", self.num_heads),
            (
                "relative_attention_max_distance",
                self.relative_attention_max_distance,
            ),
        ] {
            if value == 0 {
                return invalid(field, "is 0".into());
            }
        }
        // Half the buckets per direction, half of those exact: at least one exact bucket.
        if self.relative_attention_num_buckets < 4 {
            return invalid(
                "relative_attention_num_buckets",
                format!("{} is under 4", self.relative_attention_num_buckets),
            );
        }
        if self.layer_norm_epsilon.is_nan() || self.layer_norm_epsilon <= 0.0 {
            return invalid(
                "layer_norm_epsilon",
                format!("{} is not positive", self.layer_norm_epsilon),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn omitted_fields_take_transformers_defaults() {
        let config: Umt5Config =
            serde_json::from_str(r#"{"d_model": 32, "num_layers": 2, "dense_act_fn": "gelu_new"}"#)
                .unwrap();
        assert_eq!(config.d_model, 32);
        assert_eq!(config.num_layers, 2);
        assert_eq!(config.relative_attention_num_buckets, 32);
        assert_eq!(config.relative_attention_max_distance, 128);
        assert_eq!(config.layer_norm_epsilon, 1e-6);
        config.validate().unwrap();
    }

    #[test]
    fn an_unsupported_feed_forward_is_named() {
        let config = Umt5Config {
            feed_forward_proj: "relu".into(),
            ..Umt5Config::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("feed_forward_proj \"relu\""), "{error}");
    }
}
