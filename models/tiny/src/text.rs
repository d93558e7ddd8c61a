//! Turns a prompt into the single vector the denoiser's FiLM layers read: a hashing tokenizer (no vocabulary file to ship) that keeps only the words the model was trained on, and a two-layer pre-norm transformer.

use candle_core::{Device, Tensor};

use super::TinyConfig;
use super::weights::{Init, TensorSpec, TinyWeights};
use reelfarm_models::ModelError;

/// Token 0 never comes from a word, so an empty prompt still has something to attend to.
pub const PAD_TOKEN: u32 = 0;

/// FNV-1a (64-bit): stable across platforms and releases, which a std `Hasher` does not promise.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokenizer {
    vocab_size: u32,
    max_tokens: usize,
    /// When set, only these (lowercase) words become tokens; others are ignored.
    known_words: Option<std::collections::BTreeSet<String>>,
}

impl Tokenizer {
    pub fn new(vocab_size: u32, max_tokens: usize) -> Self {
        Self {
            vocab_size: vocab_size.max(2),
            max_tokens: max_tokens.max(1),
            known_words: None,
        }
    }

    /// Keeps only `words` (the words the model was trained on): an unknown word would hash to
    /// an embedding training never touched and shift the prompt's meaning at random.
    pub fn with_vocabulary<'a>(mut self, words: impl IntoIterator<Item = &'a str>) -> Self {
        self.known_words = Some(words.into_iter().map(str::to_lowercase).collect());
        self
    }

    pub fn is_known(&self, word: &str) -> bool {
        self.known_words
            .as_ref()
            .is_none_or(|known| known.contains(&word.to_lowercase()))
    }

    /// Lowercases, splits on anything not alphanumeric and hashes each word into buckets
    /// 1..vocab_size; at most `max_tokens` words, and `[PAD_TOKEN]` when there are none.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        let lowered = text.to_lowercase();
        let buckets = u64::from(self.vocab_size - 1);
        let tokens: Vec<u32> = lowered
            .split(|c: char| !c.is_alphanumeric())
            .filter(|word| !word.is_empty() && self.is_known(word))
            .take(self.max_tokens)
            .map(|word| 1 + (fnv1a(word.as_bytes()) % buckets) as u32)
            .collect();
        if tokens.is_empty() {
            vec![PAD_TOKEN]
        } else {
            tokens
        }
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    fn load(weights: &TinyWeights, prefix: &str) -> Result<Self, ModelError> {
        Ok(Self {
            weight: weights.get(&format!("{prefix}.weight"))?,
            bias: weights.get(&format!("{prefix}.bias"))?,
        })
    }

    fn forward(&self, input: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(input, &self.weight, &self.bias, 1e-5)
    }
}

/// Weights stored as (in, out) so the forward pass is a plain `x.matmul(w)`.
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn load(weights: &TinyWeights, prefix: &str) -> Result<Self, ModelError> {
        Ok(Self {
            weight: weights.get(&format!("{prefix}.weight"))?,
            bias: weights.get(&format!("{prefix}.bias"))?,
        })
    }

    fn forward(&self, input: &Tensor) -> candle_core::Result<Tensor> {
        input.matmul(&self.weight)?.broadcast_add(&self.bias)
    }
}

struct TextLayer {
    attention_norm: LayerNorm,
    qkv: Linear,
    attention_out: Linear,
    mlp_norm: LayerNorm,
    mlp_in: Linear,
    mlp_out: Linear,
}

pub(crate) struct TextEncoder {
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<TextLayer>,
    final_norm: LayerNorm,
    heads: usize,
}

fn push_norm(specs: &mut Vec<TensorSpec>, prefix: &str, dim: usize) {
    specs.push(TensorSpec::new(
        format!("{prefix}.weight"),
        &[dim],
        Init::Ones,
    ));
    specs.push(TensorSpec::new(
        format!("{prefix}.bias"),
        &[dim],
        Init::Zeros,
    ));
}

fn push_linear(
    specs: &mut Vec<TensorSpec>,
    prefix: &str,
    inputs: usize,
    outputs: usize,
    gain: f32,
) {
    specs.push(TensorSpec::he(
        format!("{prefix}.weight"),
        &[inputs, outputs],
        inputs,
        gain,
    ));
    specs.push(TensorSpec::new(
        format!("{prefix}.bias"),
        &[outputs],
        Init::Zeros,
    ));
}

pub(crate) fn tensor_specs(config: &TinyConfig) -> Vec<TensorSpec> {
    let dim = config.text_dim;
    let mut specs = vec![
        TensorSpec::new(
            "text.token_embedding",
            &[config.vocab_size as usize, dim],
            Init::Normal { std: 1.0 },
        ),
        TensorSpec::new(
            "text.position_embedding",
            &[config.max_tokens, dim],
            Init::Normal { std: 0.1 },
        ),
    ];
    for layer in 0..config.text_layers {
        let prefix = format!("text.layers.{layer}");
        push_norm(&mut specs, &format!("{prefix}.attention_norm"), dim);
        push_linear(&mut specs, &format!("{prefix}.qkv"), dim, 3 * dim, 0.7);
        // Residual branches start small so the embedding (the word identity) dominates.
        push_linear(
            &mut specs,
            &format!("{prefix}.attention_out"),
            dim,
            dim,
            0.3,
        );
        push_norm(&mut specs, &format!("{prefix}.mlp_norm"), dim);
        push_linear(
            &mut specs,
            &format!("{prefix}.mlp_in"),
            dim,
            config.text_mlp_ratio * dim,
            1.0,
        );
        push_linear(
            &mut specs,
            &format!("{prefix}.mlp_out"),
            config.text_mlp_ratio * dim,
            dim,
            0.3,
        );
    }
    push_norm(&mut specs, "text.final_norm", dim);
    specs
}

impl TextEncoder {
    pub(crate) fn new(weights: &TinyWeights, config: &TinyConfig) -> Result<Self, ModelError> {
        let layers = (0..config.text_layers)
            .map(|layer| {
                let prefix = format!("text.layers.{layer}");
                Ok(TextLayer {
                    attention_norm: LayerNorm::load(weights, &format!("{prefix}.attention_norm"))?,
                    qkv: Linear::load(weights, &format!("{prefix}.qkv"))?,
                    attention_out: Linear::load(weights, &format!("{prefix}.attention_out"))?,
                    mlp_norm: LayerNorm::load(weights, &format!("{prefix}.mlp_norm"))?,
                    mlp_in: Linear::load(weights, &format!("{prefix}.mlp_in"))?,
                    mlp_out: Linear::load(weights, &format!("{prefix}.mlp_out"))?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Self {
            token_embedding: weights.get("text.token_embedding")?,
            position_embedding: weights.get("text.position_embedding")?,
            layers,
            final_norm: LayerNorm::load(weights, "text.final_norm")?,
            heads: config.text_heads,
        })
    }

    /// One prompt at a time: with a single sequence there is no padding, so the mean over
    /// all positions is the masked mean-pool. Returns (1, text_dim).
    pub(crate) fn encode(&self, tokens: &[u32]) -> candle_core::Result<Tensor> {
        let count = tokens.len().min(self.position_embedding.dim(0)?);
        let ids = Tensor::new(&tokens[..count], &Device::Cpu)?;
        let mut hidden = self
            .token_embedding
            .index_select(&ids, 0)?
            .add(&self.position_embedding.narrow(0, 0, count)?)?;
        for layer in &self.layers {
            let attended = self.attention(layer, &layer.attention_norm.forward(&hidden)?)?;
            hidden = (hidden + layer.attention_out.forward(&attended)?)?;
            let expanded = layer
                .mlp_in
                .forward(&layer.mlp_norm.forward(&hidden)?)?
                .gelu()?;
            hidden = (hidden + layer.mlp_out.forward(&expanded)?)?;
        }
        self.final_norm.forward(&hidden)?.mean_keepdim(0)
    }

    fn attention(&self, layer: &TextLayer, normed: &Tensor) -> candle_core::Result<Tensor> {
        let (count, dim) = normed.dims2()?;
        let head_dim = dim / self.heads;
        let qkv = layer.qkv.forward(normed)?;
        let split = |index: usize| -> candle_core::Result<Tensor> {
            qkv.narrow(1, index * dim, dim)?
                .reshape((count, self.heads, head_dim))?
                .transpose(0, 1)?
                .contiguous()
        };
        let (query, key, value) = (split(0)?, split(1)?, split(2)?);
        let scores = (query.matmul(&key.transpose(1, 2)?)? * (1.0 / (head_dim as f64).sqrt()))?;
        let mixed = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&value)?;
        mixed.transpose(0, 1)?.contiguous()?.reshape((count, dim))
    }
}

/// Every word reelfarm-tiny was trained on (what `scenes::prompts` can write), sorted; its
/// tokenizer drops any other word. A test holds it equal to the generator's vocabulary.
pub const VOCABULARY: &[&str] = &[
    "35mm",
    "4k",
    "a",
    "aerial",
    "after",
    "afternoon",
    "air",
    "alpine",
    "an",
    "and",
    "at",
    "back",
    "beautiful",
    "blizzard",
    "blue",
    "bright",
    "broad",
    "by",
    "calm",
    "camera",
    "cinematic",
    "city",
    "clear",
    "clouded",
    "cloudless",
    "clouds",
    "cloudy",
    "crisp",
    "dark",
    "dawn",
    "daybreak",
    "daylight",
    "dense",
    "descending",
    "descends",
    "descent",
    "desert",
    "dolly",
    "downpour",
    "downtown",
    "dramatic",
    "drizzle",
    "drone",
    "dune",
    "dunes",
    "dusk",
    "early",
    "epic",
    "establishing",
    "evening",
    "evergreen",
    "falling",
    "film",
    "first",
    "fog",
    "foggy",
    "forest",
    "frozen",
    "glacier",
    "gloomy",
    "golden",
    "grain",
    "grey",
    "haze",
    "heavy",
    "holds",
    "hour",
    "icy",
    "in",
    "jagged",
    "keeps",
    "late",
    "left",
    "light",
    "locked",
    "midday",
    "midnight",
    "mist",
    "misty",
    "moody",
    "moonlight",
    "morning",
    "mountain",
    "mountains",
    "night",
    "noon",
    "ocean",
    "of",
    "off",
    "open",
    "out",
    "over",
    "overcast",
    "pan",
    "panning",
    "pans",
    "peaks",
    "photorealistic",
    "pine",
    "pines",
    "plain",
    "pull",
    "pulling",
    "pulls",
    "push",
    "pushes",
    "pushing",
    "rain",
    "rainstorm",
    "rainy",
    "range",
    "ridges",
    "right",
    "rocky",
    "rolling",
    "sand",
    "sea",
    "shot",
    "sky",
    "skyline",
    "skyscrapers",
    "slow",
    "slowly",
    "snow",
    "snowfall",
    "snowfield",
    "snowflakes",
    "snowing",
    "soft",
    "stars",
    "static",
    "still",
    "sun",
    "sundown",
    "sunrise",
    "sunset",
    "the",
    "thick",
    "tilt",
    "tilting",
    "tilts",
    "to",
    "towers",
    "tripod",
    "tundra",
    "twilight",
    "under",
    "up",
    "upward",
    "urban",
    "valley",
    "warm",
    "waves",
    "white",
    "wide",
    "with",
    "woods",
    "zoom",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn distance(first: &Tensor, second: &Tensor) -> candle_core::Result<f32> {
        (first - second)?.sqr()?.sum_all()?.to_scalar::<f32>()
    }

    fn tokenizer() -> Tokenizer {
        let config = TinyConfig::default();
        Tokenizer::new(config.vocab_size, config.max_tokens)
    }

    #[test]
    fn tokenizer_is_case_insensitive_and_total() {
        let tokenizer = tokenizer();
        assert_eq!(
            tokenizer.tokenize("A Red FOX"),
            tokenizer.tokenize("a red fox")
        );
        assert_eq!(
            tokenizer.tokenize("red, fox!"),
            tokenizer.tokenize("red fox")
        );
        assert_eq!(tokenizer.tokenize(""), vec![PAD_TOKEN]);
        assert_eq!(tokenizer.tokenize("  ,;  "), vec![PAD_TOKEN]);
        let odd = tokenizer.tokenize("zxqv-ünïcødé 東京 🦊 quuxbazzle");
        assert_eq!(odd.len(), 4);
        assert!(odd.iter().all(|token| (1..8192).contains(token)));
        assert_ne!(
            tokenizer.tokenize("red fox"),
            tokenizer.tokenize("blue fox")
        );
        let long = "word ".repeat(500);
        assert_eq!(tokenizer.tokenize(&long).len(), 64);
    }

    #[test]
    fn encoder_separates_prompts() -> Result<(), ModelError> {
        let config = TinyConfig::default();
        let weights = TinyWeights::from_seed(&config, 11)?;
        let encoder = TextEncoder::new(&weights, &config)?;
        let tokenizer = tokenizer();
        let fox = encoder.encode(&tokenizer.tokenize("a red fox in the snow"))?;
        let same = encoder.encode(&tokenizer.tokenize("A RED FOX IN THE SNOW"))?;
        let city = encoder.encode(&tokenizer.tokenize("night city, neon rain"))?;
        let empty = encoder.encode(&tokenizer.tokenize(""))?;
        assert_eq!(fox.dims(), &[1, config.text_dim]);
        assert_eq!(distance(&fox, &same)?, 0.0);
        assert!(distance(&fox, &city)? > 1.0);
        assert!(distance(&fox, &empty)? > 1.0);
        Ok(())
    }
}
