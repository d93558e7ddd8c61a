//! Hosted models (backend `openai-videos`): a model someone else runs behind the OpenAI
//! videos API (Sora 2 and Sora 2 Pro, Azure AI Foundry, gateways such as LiteLLM). Its catalog
//! entry says where the API is, how to authenticate, which clip lengths and sizes it renders,
//! what a second costs and how hard it may be pushed; the pure rules here (clip lengths for a
//! window, the nearest size, the cost) are what the planner, the worker and `validate` share.
//!
//! ```toml
//! [[model]]
//! id = "sora-2-pro"
//! backend = "openai-videos"
//! remote_model = "sora-2-pro"
//! base_url = "https://api.openai.com/v1"
//! api_key_env = "OPENAI_API_KEY"
//! clip_seconds = [4, 8, 12]
//! sizes = ["1280x720", "720x1280", "1792x1024", "1024x1792"]
//! price_per_second_usd = 0.30
//! max_concurrent_jobs = 4
//! requests_per_minute = 50
//! ```

use crate::memory::MemoryModel;

/// How a hosted API takes its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostedAuth {
    /// `Authorization: Bearer KEY` (OpenAI, most gateways).
    Bearer,
    /// `api-key: KEY` (Azure AI Foundry's key auth).
    ApiKey,
}

/// Where a hosted model's API key is read from. The key itself is never in the catalog, a
/// record or a log: only where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// An environment variable of the worker (a Kubernetes Secret mounted as env).
    Env(String),
    /// A file (a Kubernetes Secret mounted as a volume); surrounding whitespace is dropped.
    File(String),
}

/// Everything about a hosted model the farm needs besides what every entry has.
#[derive(Debug, Clone, PartialEq)]
pub struct HostedSpec {
    /// The API root, up to and including `/v1` (`https://api.openai.com/v1`).
    pub base_url: String,
    pub key: KeySource,
    pub auth: HostedAuth,
    /// The model name the API knows (`sora-2`, `sora-2-pro`, a gateway's alias).
    pub remote_model: String,
    /// Clip lengths one call renders, ascending (`[4, 8, 12]`).
    pub clip_seconds: Vec<u32>,
    /// Frame sizes the model renders, in the catalog's order.
    pub sizes: Vec<(u32, u32)>,
    pub price_per_second_usd: f64,
    /// Jobs this model may have running at once (the account's concurrency limit).
    pub max_concurrent_jobs: u32,
    /// Requests of every kind (create, retrieve, download, delete) per minute.
    pub requests_per_minute: u32,
}

/// Bytes a hosted segment holds on its worker (the downloaded clip and frames in flight), and
/// what one concurrency slot of a hosted worker offers placement: placement's cold-start
/// headroom (a quarter) still fits one segment, and never two.
pub const HOSTED_SEGMENT_BYTES: u64 = 1 << 30;
pub const HOSTED_SLOT_BYTES: u64 = HOSTED_SEGMENT_BYTES * 3 / 2;

/// The device kind of a hosted worker's concurrency slots: placement gives them hosted
/// segments only, and the worker's other device its stitches.
pub const HOSTED_DEVICE_KIND: &str = "hosted";

/// A hosted segment's progress steps: the service reports a percentage.
pub const HOSTED_PROGRESS_STEPS: u32 = 100;

/// The estimator's view of a hosted model: a fixed `HOSTED_SEGMENT_BYTES`, nothing to load,
/// and work that grows with the clip's frames: about two minutes for a 12 s clip at 24 fps
/// over its 100 progress steps (placement only compares it between segments).
pub const HOSTED_MEMORY: MemoryModel = MemoryModel {
    fixed_bytes: HOSTED_SEGMENT_BYTES as f64,
    bytes_per_token: 0.0,
    guidance_branches: 1,
    downsample: 1 << 15,
    extra_latent_frames: 0,
    decode_bytes_per_pixel: 0.0,
    clip_bytes_per_pixel_frame: 0.0,
    margin: 0.0,
    weights_bytes: 0.0,
    seconds_per_token_step: 0.004,
};

impl HostedSpec {
    /// The longest clip one call renders.
    pub fn longest_clip(&self) -> u32 {
        self.clip_seconds.iter().copied().max().unwrap_or(0)
    }

    /// The shortest allowed clip that holds `frames` at `fps`; `None`: longer than any.
    pub fn clip_for(&self, frames: u64, fps: u32) -> Option<u32> {
        self.clip_seconds
            .iter()
            .copied()
            .filter(|&seconds| u64::from(seconds) * u64::from(fps) >= frames)
            .min()
    }

    /// What `seconds` of clip cost.
    pub fn cost_usd(&self, seconds: u32) -> f64 {
        f64::from(seconds) * self.price_per_second_usd
    }

    /// The allowed size a `width`x`height` frame is rendered at, then scaled to cover the
    /// frame and cropped to it: among the sizes of the frame's orientation (all of them when
    /// none shares it), the one needing the least upscaling, then the least cropping, then
    /// the first listed.
    pub fn nearest_size(&self, width: u32, height: u32) -> (u32, u32) {
        let orientation = |(w, h): (u32, u32)| w.cmp(&h);
        let same: Vec<(u32, u32)> = self
            .sizes
            .iter()
            .copied()
            .filter(|&size| orientation(size) == orientation((width, height)))
            .collect();
        let candidates = if same.is_empty() {
            self.sizes.clone()
        } else {
            same
        };
        let (w, h) = (f64::from(width), f64::from(height));
        let score = |&(cw, ch): &(u32, u32)| {
            let scale = (w / f64::from(cw)).max(h / f64::from(ch));
            let upscale = scale.max(1.0);
            let covered = f64::from(cw) * scale * f64::from(ch) * scale;
            let cropped = 1.0 - (w * h) / covered;
            (upscale, cropped)
        };
        let mut best = candidates[0];
        let mut best_score = score(&best);
        for candidate in candidates.iter().skip(1) {
            let candidate_score = score(candidate);
            let better = candidate_score.0 < best_score.0 - 1e-9
                || ((candidate_score.0 - best_score.0).abs() <= 1e-9
                    && candidate_score.1 < best_score.1 - 1e-9);
            if better {
                best = *candidate;
                best_score = candidate_score;
            }
        }
        best
    }
}

/// The hosted fields of a catalog file's entry (all optional there; a hosted entry checks
/// that its required ones are given).
#[derive(Debug, Default)]
pub(crate) struct HostedDoc {
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    pub api_key_file: Option<String>,
    pub auth: Option<String>,
    pub remote_model: Option<String>,
    pub clip_seconds: Option<Vec<u32>>,
    pub sizes: Option<Vec<String>>,
    pub price_per_second_usd: Option<f64>,
    pub max_concurrent_jobs: Option<u32>,
    pub requests_per_minute: Option<u32>,
}

impl HostedDoc {
    /// The first field given (an entry of another backend names it in its refusal).
    pub(crate) fn first_given(&self) -> Option<&'static str> {
        [
            ("base_url", self.base_url.is_some()),
            ("api_key_env", self.api_key_env.is_some()),
            ("api_key_file", self.api_key_file.is_some()),
            ("auth", self.auth.is_some()),
            ("remote_model", self.remote_model.is_some()),
            ("clip_seconds", self.clip_seconds.is_some()),
            ("sizes", self.sizes.is_some()),
            ("price_per_second_usd", self.price_per_second_usd.is_some()),
            ("max_concurrent_jobs", self.max_concurrent_jobs.is_some()),
            ("requests_per_minute", self.requests_per_minute.is_some()),
        ]
        .into_iter()
        .find_map(|(name, given)| given.then_some(name))
    }

    /// The spec these fields make over `base`'s (an entry on a hosted base), checked; `Err`
    /// is (field, reason).
    pub(crate) fn resolve(self, base: Option<&HostedSpec>) -> Result<HostedSpec, (String, String)> {
        let fail = |name: &str, reason: String| (name.to_string(), reason);
        let missing = |name: &str| fail(name, "is required for an openai-videos model".into());
        let base_url = self
            .base_url
            .or(base.map(|b| b.base_url.clone()))
            .ok_or_else(|| missing("base_url"))?;
        let base_url = base_url.trim_end_matches('/').to_string();
        let scheme_ok = base_url.starts_with("https://") || base_url.starts_with("http://");
        if !scheme_ok || base_url.len() > 2048 || base_url.chars().any(char::is_whitespace) {
            return Err(fail(
                "base_url",
                format!(
                    "{base_url:?} must be an http(s) URL up to /v1 (https://api.openai.com/v1)"
                ),
            ));
        }
        let key = match (self.api_key_env, self.api_key_file) {
            (Some(_), Some(_)) => {
                return Err(fail(
                    "api_key_file",
                    "give api_key_env or api_key_file, not both".into(),
                ));
            }
            (Some(name), None) => {
                let valid = !name.is_empty()
                    && name.len() <= 128
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    return Err(fail(
                        "api_key_env",
                        format!("{name:?} must be an environment variable name (A-Z, 0-9, _)"),
                    ));
                }
                KeySource::Env(name)
            }
            (None, Some(path)) => {
                if path.is_empty() || path.len() > 4096 {
                    return Err(fail(
                        "api_key_file",
                        "must be a path of 1-4096 characters".into(),
                    ));
                }
                KeySource::File(path)
            }
            (None, None) => base.map(|b| b.key.clone()).ok_or_else(|| {
                fail(
                    "api_key_env",
                    "is required (or api_key_file): where the worker reads the API key".into(),
                )
            })?,
        };
        let auth = match self.auth.as_deref() {
            Some("bearer") => HostedAuth::Bearer,
            Some("api-key") => HostedAuth::ApiKey,
            Some(other) => {
                return Err(fail(
                    "auth",
                    format!("unknown auth {other:?}; available: bearer, api-key (Azure)"),
                ));
            }
            None => base.map_or(HostedAuth::Bearer, |b| b.auth),
        };
        let remote_model = self
            .remote_model
            .or(base.map(|b| b.remote_model.clone()))
            .ok_or_else(|| missing("remote_model"))?;
        if remote_model.is_empty()
            || remote_model.len() > 200
            || remote_model.chars().any(char::is_control)
        {
            return Err(fail(
                "remote_model",
                "must be 1-200 printable characters".into(),
            ));
        }
        let mut clip_seconds = self
            .clip_seconds
            .or(base.map(|b| b.clip_seconds.clone()))
            .ok_or_else(|| missing("clip_seconds"))?;
        clip_seconds.sort_unstable();
        clip_seconds.dedup();
        if clip_seconds.is_empty()
            || clip_seconds.len() > 16
            || clip_seconds.iter().any(|s| !(1..=120).contains(s))
        {
            return Err(fail(
                "clip_seconds",
                format!("{clip_seconds:?} must list 1-16 clip lengths within 1..=120 seconds"),
            ));
        }
        let sizes = match self.sizes {
            Some(sizes) => {
                if sizes.is_empty() || sizes.len() > 16 {
                    return Err(fail(
                        "sizes",
                        "must list 1-16 sizes such as \"1280x720\"".into(),
                    ));
                }
                sizes
                    .iter()
                    .enumerate()
                    .map(|(index, size)| {
                        parse_size(size).ok_or_else(|| {
                            fail(
                                &format!("sizes[{index}]"),
                                format!(
                                    "{size:?} must be WIDTHxHEIGHT, even sides within 16..=8192"
                                ),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
            None => base
                .map(|b| b.sizes.clone())
                .ok_or_else(|| missing("sizes"))?,
        };
        let price = self
            .price_per_second_usd
            .or(base.map(|b| b.price_per_second_usd))
            .ok_or_else(|| missing("price_per_second_usd"))?;
        if !price.is_finite() || !(0.0..=1000.0).contains(&price) {
            return Err(fail(
                "price_per_second_usd",
                format!("must be within 0..=1000, got {price}"),
            ));
        }
        let max_concurrent_jobs = self
            .max_concurrent_jobs
            .or(base.map(|b| b.max_concurrent_jobs))
            .unwrap_or(2);
        if !(1..=256).contains(&max_concurrent_jobs) {
            return Err(fail(
                "max_concurrent_jobs",
                format!("must be within 1..=256, got {max_concurrent_jobs}"),
            ));
        }
        let requests_per_minute = self
            .requests_per_minute
            .or(base.map(|b| b.requests_per_minute))
            .unwrap_or(60);
        if !(1..=100_000).contains(&requests_per_minute) {
            return Err(fail(
                "requests_per_minute",
                format!("must be within 1..=100000, got {requests_per_minute}"),
            ));
        }
        Ok(HostedSpec {
            base_url,
            key,
            auth,
            remote_model,
            clip_seconds,
            sizes,
            price_per_second_usd: price,
            max_concurrent_jobs,
            requests_per_minute,
        })
    }
}

/// `"1280x720"` → (1280, 720): even sides within 16..=8192.
pub fn parse_size(size: &str) -> Option<(u32, u32)> {
    let (width, height) = size.split_once('x')?;
    let side = |text: &str| {
        text.parse::<u32>()
            .ok()
            .filter(|side| (16..=8192).contains(side) && side % 2 == 0)
    };
    Some((side(width)?, side(height)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sora(sizes: &[(u32, u32)]) -> HostedSpec {
        HostedSpec {
            base_url: "https://api.openai.com/v1".into(),
            key: KeySource::Env("OPENAI_API_KEY".into()),
            auth: HostedAuth::Bearer,
            remote_model: "sora-2-pro".into(),
            clip_seconds: vec![4, 8, 12],
            sizes: sizes.to_vec(),
            price_per_second_usd: 0.3,
            max_concurrent_jobs: 2,
            requests_per_minute: 60,
        }
    }

    const PRO: [(u32, u32); 4] = [(720, 1280), (1280, 720), (1024, 1792), (1792, 1024)];

    #[test]
    fn the_nearest_size_keeps_orientation_then_avoids_upscaling_then_cropping() {
        let pro = sora(&PRO);
        // 480p 16:9 fits 1280x720 with no upscale and the least crop.
        assert_eq!(pro.nearest_size(848, 480), (1280, 720));
        // 1080p would need 1.5x from 1280x720 and only 1.07x from 1792x1024.
        assert_eq!(pro.nearest_size(1920, 1080), (1792, 1024));
        assert_eq!(pro.nearest_size(480, 848), (720, 1280));
        // Square: no size shares the orientation; 1024x1792 (4:7) is nearer square than 9:16.
        assert_eq!(pro.nearest_size(480, 480), (1024, 1792));
        let standard = sora(&PRO[..2]);
        assert_eq!(standard.nearest_size(1920, 1080), (1280, 720));
    }

    #[test]
    fn clip_lengths_hold_a_window_with_the_shortest_that_fits() {
        let pro = sora(&PRO);
        assert_eq!(pro.clip_for(96, 24), Some(4));
        assert_eq!(pro.clip_for(97, 24), Some(8));
        assert_eq!(pro.clip_for(288, 24), Some(12));
        assert_eq!(pro.clip_for(289, 24), None);
        assert_eq!(pro.longest_clip(), 12);
        assert!((pro.cost_usd(12) - 3.6).abs() < 1e-9);
    }

    #[test]
    fn sizes_parse_even_sides_only() {
        assert_eq!(parse_size("1280x720"), Some((1280, 720)));
        for bad in [
            "1280",
            "1281x720",
            "x720",
            "8194x720",
            "12x720",
            "1280x720x2",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }
}
