//! Prompts phrased from scene attributes the way people write them for text-to-video ("Aerial drone shot descending slowly over a pine valley at dawn, fog"): synonyms, clause order and filler words vary, so a model trained on them learns the words, not one template.
//!
//! Prompts are split once and for all between training and evaluation by a hash of their
//! text, so a held-out prompt can never have been seen in training.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Attribute, Camera, Scene, Setting, TimeOfDay, Weather};

fn time_phrases(time: TimeOfDay) -> &'static [&'static str] {
    match time {
        TimeOfDay::Dawn => &[
            "at dawn",
            "at sunrise",
            "at daybreak",
            "in the early morning",
            "at first light",
            "dawn",
        ],
        TimeOfDay::GoldenHour => &[
            "at golden hour",
            "under a golden hour sky",
            "in late afternoon sun",
            "in warm golden light",
            "golden hour",
            "at sunset",
        ],
        TimeOfDay::Noon => &[
            "at noon",
            "at midday",
            "in bright daylight",
            "under the midday sun",
            "in broad daylight",
            "noon",
        ],
        TimeOfDay::Dusk => &[
            "at dusk",
            "at twilight",
            "in the blue hour",
            "after sundown",
            "in the evening",
            "dusk",
        ],
        TimeOfDay::Night => &[
            "at night",
            "at midnight",
            "under the stars",
            "by moonlight",
            "in the dark of night",
            "night",
        ],
    }
}

fn setting_phrases(setting: Setting) -> &'static [&'static str] {
    match setting {
        Setting::Sea => &[
            "open sea with slow waves",
            "the open ocean",
            "ocean waves",
            "a calm sea",
            "rolling waves at sea",
            "the sea",
        ],
        Setting::Mountains => &[
            "a mountain range",
            "rocky mountain peaks",
            "alpine ridges",
            "the mountains",
            "jagged peaks",
            "mountains",
        ],
        Setting::Forest => &[
            "a pine valley",
            "a pine forest",
            "dense evergreen woods",
            "the forest",
            "a valley of pines",
            "forest",
        ],
        Setting::Desert => &[
            "desert dunes",
            "sand dunes",
            "the desert",
            "rolling dunes of sand",
            "a dune sea in the desert",
            "desert",
        ],
        Setting::City => &[
            "a city skyline",
            "downtown skyscrapers",
            "the city",
            "an urban skyline",
            "city towers",
            "city",
        ],
        Setting::Snowfield => &[
            "a snowfield",
            "a frozen tundra",
            "an icy plain",
            "a white glacier plain",
            "the frozen tundra",
            "snowfield",
        ],
    }
}

fn weather_phrases(weather: Weather) -> &'static [&'static str] {
    match weather {
        // Clear is also what a prompt without weather words means.
        Weather::Clear => &["clear sky", "cloudless", "crisp clear air", "", "", ""],
        Weather::Fog => &[
            "fog",
            "thick fog",
            "misty",
            "in the mist",
            "foggy haze",
            "fog rolling in",
        ],
        Weather::Rain => &[
            "rain",
            "heavy rain",
            "rainy",
            "in a downpour",
            "drizzle",
            "rainstorm",
        ],
        Weather::Snow => &[
            "falling snow",
            "snowfall",
            "snowing",
            "light snowfall",
            "blizzard",
            "snowflakes falling",
        ],
        Weather::Overcast => &[
            "overcast",
            "cloudy",
            "grey clouds",
            "overcast sky",
            "gloomy clouds",
            "clouded over",
        ],
    }
}

fn camera_phrases(camera: Camera) -> &'static [&'static str] {
    match camera {
        Camera::Static => &[
            "static camera",
            "static shot",
            "locked-off tripod shot",
            "still camera",
            "the camera holds still",
            "static",
        ],
        Camera::PanLeft => &[
            "camera pans left",
            "slow pan left",
            "panning left",
            "the camera pans to the left",
            "pan left",
            "pans left",
        ],
        Camera::PanRight => &[
            "camera pans right",
            "slow pan right",
            "panning right",
            "the camera pans to the right",
            "pan right",
            "pans right",
        ],
        Camera::PushIn => &[
            "slow push in",
            "dolly in",
            "the camera pushes in",
            "zoom in",
            "push in",
            "pushing in",
        ],
        Camera::PullOut => &[
            "slow pull out",
            "dolly out",
            "the camera pulls out",
            "zoom out",
            "pull out",
            "pulling back out",
        ],
        Camera::AerialDescent => &[
            "aerial drone shot descending",
            "drone descending slowly",
            "the drone keeps descending",
            "descending aerial shot",
            "aerial descent",
            "drone descends",
        ],
        Camera::TiltUp => &[
            "camera tilts up",
            "slow tilt up",
            "tilting up",
            "the camera tilts upward",
            "tilt up",
            "tilts up",
        ],
    }
}

const FILLERS: &[&str] = &[
    "cinematic",
    "beautiful",
    "4k",
    "film grain",
    "wide shot",
    "establishing shot",
    "dramatic",
    "photorealistic",
    "35mm film",
    "soft haze",
    "moody",
    "epic",
];

/// Every word the prompt generator can write: what reelfarm-tiny was trained on. Other words
/// are dropped by its tokenizer.
pub fn vocabulary() -> Vec<&'static str> {
    let mut words: Vec<&'static str> = Vec::new();
    let mut add = |phrases: &'static [&'static str]| {
        for phrase in phrases {
            words.extend(
                phrase
                    .split(|c: char| !c.is_alphanumeric())
                    .filter(|w| !w.is_empty()),
            );
        }
    };
    for time in TimeOfDay::ALL {
        add(time_phrases(*time));
    }
    for setting in Setting::ALL {
        add(setting_phrases(*setting));
    }
    for weather in Weather::ALL {
        add(weather_phrases(*weather));
    }
    for camera in Camera::ALL {
        add(camera_phrases(*camera));
    }
    add(FILLERS);
    add(&[
        "over", "of", "with", "a", "the", "and", "shot", "in", "under", "sky",
    ]);
    words.sort_unstable();
    words.dedup();
    words
}

fn choose<'a>(rng: &mut ChaCha8Rng, values: &[&'a str]) -> &'a str {
    values[rng.random_range(0..values.len())]
}

/// One phrasing of the scene, drawn from `seed`.
pub fn describe(scene: &Scene, seed: u64) -> String {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let time = choose(&mut rng, time_phrases(scene.time_of_day));
    let setting = choose(&mut rng, setting_phrases(scene.setting));
    let weather = choose(&mut rng, weather_phrases(scene.weather));
    let camera = choose(&mut rng, camera_phrases(scene.camera));
    let mut text = match rng.random_range(0..5) {
        0 => format!("{camera} over {setting} {time}"),
        1 => format!("{setting} {time}, {camera}"),
        2 => format!("{time}, {setting}; {camera}"),
        3 => format!("{camera} of {setting} {time}"),
        _ => format!("{setting}, {camera}, {time}"),
    };
    if !weather.is_empty() {
        text = if rng.random_bool(0.5) {
            format!("{text}, {weather}")
        } else {
            format!("{weather}. {text}")
        };
    }
    for _ in 0..rng.random_range(0..3) {
        let filler = choose(&mut rng, FILLERS);
        text = if rng.random_bool(0.5) {
            format!("{filler}, {text}")
        } else {
            format!("{text}, {filler}")
        };
    }
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => text,
    }
}

/// True for the prompts kept out of training (about one in eight), decided by their text.
pub fn is_held_out(prompt: &str) -> bool {
    crate::text::fnv1a(prompt.to_lowercase().as_bytes()).is_multiple_of(8)
}

/// A prompt for `scene` on the chosen side of the split: phrasings are redrawn until one lands
/// there (fillers and order give thousands per scene, so few draws are needed).
pub fn describe_for(scene: &Scene, seed: u64, held_out: bool) -> String {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    loop {
        let prompt = describe(scene, rng.random());
        if is_held_out(&prompt) == held_out {
            return prompt;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_vary_and_name_the_attributes() {
        let scene = Scene::with_attributes(
            TimeOfDay::Dawn,
            Setting::Forest,
            Weather::Fog,
            Camera::AerialDescent,
            1,
        );
        let prompts: std::collections::HashSet<String> =
            (0..50).map(|seed| describe(&scene, seed)).collect();
        assert!(prompts.len() > 30, "only {} phrasings", prompts.len());
        let vocabulary = vocabulary();
        for prompt in &prompts {
            for word in prompt.to_lowercase().split(|c: char| !c.is_alphanumeric()) {
                assert!(
                    word.is_empty() || vocabulary.contains(&word),
                    "{word} in {prompt}"
                );
            }
        }
    }

    #[test]
    fn the_split_is_by_text_and_both_sides_are_reachable() {
        let scene = Scene::random(11);
        for seed in 0..20 {
            assert!(is_held_out(&describe_for(&scene, seed, true)));
            assert!(!is_held_out(&describe_for(&scene, seed, false)));
        }
        assert_eq!(is_held_out("Dusk, the sea"), is_held_out("dusk, THE SEA"));
    }

    #[test]
    fn the_readme_lists_every_word_the_model_knows() {
        let readme = include_str!("../../../../README.md").to_lowercase();
        let section = &readme[readme
            .find("## the demo model")
            .expect("demo model section")..];
        let listed: std::collections::HashSet<&str> =
            section.split(|c: char| !c.is_alphanumeric()).collect();
        for word in vocabulary() {
            assert!(listed.contains(word), "README does not list `{word}`");
        }
    }

    #[test]
    fn the_example_prompts_are_in_the_vocabulary() {
        let vocabulary = vocabulary();
        for word in [
            "aerial",
            "drone",
            "descending",
            "pine",
            "valley",
            "dawn",
            "fog",
            "golden",
            "hour",
            "static",
            "dunes",
            "dusk",
            "pans",
            "right",
            "skyline",
            "night",
            "push",
            "in",
        ] {
            assert!(vocabulary.contains(&word), "{word}");
        }
    }
}

#[cfg(test)]
mod vocabulary_tests {
    /// The runtime's tokenizer keeps exactly the words this generator writes.
    #[test]
    fn the_model_vocabulary_is_the_generators() {
        let words = super::vocabulary();
        assert_eq!(crate::text::VOCABULARY, words.as_slice());
    }
}
