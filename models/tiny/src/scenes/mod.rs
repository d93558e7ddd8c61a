//! Procedural scenes: parameterised clips (time of day, setting, weather, camera move) with prompts generated from the same parameters, the training data and the ground truth that reelfarm-tiny is trained and judged on.
//!
//! Everything here is a pure function of a seed: `Scene::random(seed)` picks the attributes
//! and the layout, `render::render_frame` draws any frame at any size, `prompts::describe`
//! phrases it, and `measure` reads the attributes back from pixels without any model.

pub mod measure;
pub mod prompts;
pub mod render;

use rand::{Rng, SeedableRng};

use crate::CameraPath;
use rand_chacha::ChaCha8Rng;

/// One attribute of a scene: a closed set of values with stable names.
pub trait Attribute: Copy + Eq + std::fmt::Debug + 'static {
    const ALL: &'static [Self];
    /// The attribute's name in reports (`time_of_day`, `camera`, ...).
    const FIELD: &'static str;
    fn name(self) -> &'static str;
    fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|value| *value == self)
            .unwrap_or_default()
    }
}

macro_rules! attribute {
    ($type:ident, $field:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $type { $($variant),+ }

        impl Attribute for $type {
            const ALL: &'static [Self] = &[$(Self::$variant),+];
            const FIELD: &'static str = $field;
            fn name(self) -> &'static str {
                match self { $(Self::$variant => $name),+ }
            }
        }
    };
}

attribute!(TimeOfDay, "time_of_day", {
    Dawn => "dawn", GoldenHour => "golden hour", Noon => "noon", Dusk => "dusk", Night => "night",
});
attribute!(Setting, "setting", {
    Sea => "sea", Mountains => "mountains", Forest => "forest", Desert => "desert",
    City => "city", Snowfield => "snowfield",
});
attribute!(Weather, "weather", {
    Clear => "clear", Fog => "fog", Rain => "rain", Snow => "snow", Overcast => "overcast",
});
attribute!(Camera, "camera", {
    Static => "static", PanLeft => "pan left", PanRight => "pan right", PushIn => "push in",
    PullOut => "pull out", AerialDescent => "aerial descent", TiltUp => "tilt up",
});

/// A complete scene: the four attributes plus the layout details that make two scenes with
/// the same attributes look different (ridge shapes, horizon, sun position, colour jitter).
#[derive(Clone, Debug, PartialEq)]
pub struct Scene {
    pub time_of_day: TimeOfDay,
    pub setting: Setting,
    pub weather: Weather,
    pub camera: Camera,
    /// Seeds the profiles of every layer.
    pub layout_seed: u64,
    /// Horizon height as a fraction of the frame from the top.
    pub horizon: f32,
    /// Horizontal position of the sun or moon, 0..1.
    pub sun_x: f32,
    /// Camera speed in frame widths (or heights) per second; zoom rate per second for push/pull.
    pub speed: f32,
    /// Multiplies overall brightness, around 1.
    pub exposure_jitter: f32,
    /// Added to the warm/cool balance, around 0.
    pub tint_jitter: f32,
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, values: &[T]) -> T {
    values[rng.random_range(0..values.len())]
}

impl Scene {
    /// What reelfarm-tiny's camera head learns for this scene: its camera move at the scene's speed, as
    /// a rigid window (the generator's far layers move less; this moves everything alike).
    pub fn camera_path(&self) -> CameraPath {
        let speed = self.speed;
        let still = CameraPath::STILL;
        match self.camera {
            Camera::Static => still,
            Camera::PanLeft => CameraPath {
                pan_x: -speed,
                ..still
            },
            Camera::PanRight => CameraPath {
                pan_x: speed,
                ..still
            },
            Camera::TiltUp => CameraPath {
                pan_y: -speed,
                ..still
            },
            Camera::AerialDescent => CameraPath {
                pan_y: speed,
                zoom: 0.3 * speed,
                ..still
            },
            Camera::PushIn => CameraPath {
                zoom: 1.5 * speed,
                ..still
            },
            Camera::PullOut => CameraPath {
                zoom: -1.5 * speed,
                ..still
            },
        }
    }

    /// A scene with every attribute and detail drawn from `seed`.
    pub fn random(seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let time_of_day = pick(&mut rng, TimeOfDay::ALL);
        let setting = pick(&mut rng, Setting::ALL);
        let weather = pick(&mut rng, Weather::ALL);
        let camera = pick(&mut rng, Camera::ALL);
        Self::with_attributes(time_of_day, setting, weather, camera, rng.random())
    }

    /// Given attributes, the remaining details drawn from `seed`.
    pub fn with_attributes(
        time_of_day: TimeOfDay,
        setting: Setting,
        weather: Weather,
        camera: Camera,
        seed: u64,
    ) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5ce7_e5ee_d000_0001);
        let horizon = match setting {
            Setting::Sea | Setting::Snowfield => rng.random_range(0.42..0.56),
            Setting::City => rng.random_range(0.58..0.7),
            _ => rng.random_range(0.5..0.62),
        };
        let sun_x = match time_of_day {
            TimeOfDay::Dawn => rng.random_range(0.15..0.4),
            TimeOfDay::GoldenHour => rng.random_range(0.6..0.85),
            _ => rng.random_range(0.25..0.75),
        };
        let speed = match camera {
            Camera::PushIn | Camera::PullOut => rng.random_range(0.1..0.14),
            _ => rng.random_range(0.06..0.09),
        };
        Self {
            time_of_day,
            setting,
            weather,
            camera,
            layout_seed: rng.random(),
            horizon,
            sun_x,
            speed,
            exposure_jitter: rng.random_range(0.92..1.08),
            tint_jitter: rng.random_range(-0.06..0.06),
        }
    }
}

/// The four attributes of a scene, as the measures report them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attributes {
    pub time_of_day: TimeOfDay,
    pub setting: Setting,
    pub weather: Weather,
    pub camera: Camera,
}

impl From<&Scene> for Attributes {
    fn from(scene: &Scene) -> Self {
        Self {
            time_of_day: scene.time_of_day,
            setting: scene.setting,
            weather: scene.weather,
            camera: scene.camera,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_are_a_function_of_their_seed_and_cover_every_value() {
        assert_eq!(Scene::random(7), Scene::random(7));
        assert_ne!(Scene::random(7), Scene::random(8));
        let scenes: Vec<Scene> = (0..400).map(Scene::random).collect();
        for time in TimeOfDay::ALL {
            assert!(scenes.iter().any(|scene| scene.time_of_day == *time));
        }
        for camera in Camera::ALL {
            assert!(scenes.iter().any(|scene| scene.camera == *camera));
        }
        for setting in Setting::ALL {
            assert!(scenes.iter().any(|scene| scene.setting == *setting));
        }
        for weather in Weather::ALL {
            assert!(scenes.iter().any(|scene| scene.weather == *weather));
        }
        assert_eq!(Camera::TiltUp.index(), 6);
        assert_eq!(Setting::FIELD, "setting");
    }
}
