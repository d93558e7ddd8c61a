//! Catalogs the core's tests share: one place for the hosted model they plan and place.

use reelfarm_models::Catalog;

/// The built-in catalog plus `sora-test`, a hosted model of OpenAI's clip lengths and
/// landscape/portrait sizes at `price_per_second_usd`.
pub(crate) fn with_hosted(price_per_second_usd: f64) -> Catalog {
    let mut catalog = Catalog::builtin();
    catalog
        .add_toml(
            &format!(
                r#"
[[model]]
id = "sora-test"
backend = "openai-videos"
remote_model = "sora-2"
base_url = "https://api.example.com/v1"
api_key_env = "KEY"
clip_seconds = [4, 8, 12]
sizes = ["1280x720", "720x1280"]
price_per_second_usd = {price_per_second_usd}
"#
            ),
            "hosted.toml",
        )
        .unwrap();
    catalog
}
