//! Draws one frame of a procedural scene at any size: a sky lit by the time of day, the setting's silhouette layers at different depths (so camera moves show parallax), a textured ground plane, and the weather on top.
//!
//! Coordinates: `u` runs 0..1 left to right, `v` 0..1 top to bottom. Every layer has a
//! parallax factor (0 = at infinity, 1 = nearest) and sees the frame through its own view
//! (offset and zoom), which is how pans, tilts, push-ins and descents move the layers.

use super::{Camera, Scene, Setting, TimeOfDay, Weather};
use reelfarm_media::frame::RgbFrame;

type Rgb = [f32; 3];

fn splitmix(mut state: u64) -> u64 {
    state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    state = (state ^ (state >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    state = (state ^ (state >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    state ^ (state >> 31)
}

/// Uniform 0..1 from a seed and a lattice point.
fn hash(seed: u64, a: i64, b: i64) -> f32 {
    let mixed = splitmix(seed ^ splitmix((a as u64) ^ splitmix(b as u64).rotate_left(17)));
    (mixed >> 40) as f32 / (1u64 << 24) as f32
}

fn smooth(t: f32) -> f32 {
    t * t * (3.0 - 2.0 * t)
}

fn lerp(a: f32, b: f32, t: f32) -> f32 {
    a + (b - a) * t
}

fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [
        lerp(a[0], b[0], t),
        lerp(a[1], b[1], t),
        lerp(a[2], b[2], t),
    ]
}

fn scale(color: Rgb, factor: f32) -> Rgb {
    color.map(|channel| channel * factor)
}

fn times(color: Rgb, tint: Rgb) -> Rgb {
    [color[0] * tint[0], color[1] * tint[1], color[2] * tint[2]]
}

/// Smooth 1-D value noise in 0..1.
fn noise(seed: u64, x: f32) -> f32 {
    let cell = x.floor();
    let t = smooth(x - cell);
    lerp(
        hash(seed, cell as i64, 0),
        hash(seed, cell as i64 + 1, 0),
        t,
    )
}

/// Three octaves of value noise, 0..1.
fn fractal(seed: u64, x: f32) -> f32 {
    (noise(seed, x) * 0.57 + noise(seed ^ 1, x * 2.1) * 0.29 + noise(seed ^ 2, x * 4.3) * 0.14)
        .clamp(0.0, 1.0)
}

/// Smooth 2-D value noise in 0..1 (clouds).
fn noise2(seed: u64, x: f32, y: f32) -> f32 {
    let (cx, cy) = (x.floor(), y.floor());
    let (tx, ty) = (smooth(x - cx), smooth(y - cy));
    let (ix, iy) = (cx as i64, cy as i64);
    let top = lerp(hash(seed, ix, iy), hash(seed, ix + 1, iy), tx);
    let bottom = lerp(hash(seed, ix, iy + 1), hash(seed, ix + 1, iy + 1), tx);
    lerp(top, bottom, ty)
}

/// How the light of the scene looks: sky colours, the sun or moon, and what the light does
/// to the colours of the land.
struct Light {
    zenith: Rgb,
    horizon: Rgb,
    /// Colour, elevation above the horizon (fraction of frame height), radius; None when hidden.
    disc: Option<(Rgb, f32, f32)>,
    /// Multiplies land colours (colour temperature and exposure together).
    land: Rgb,
    stars: bool,
    /// Lit windows in cities: probability a window is lit.
    windows_lit: f32,
}

fn light(scene: &Scene) -> Light {
    let warm = scene.tint_jitter;
    let (zenith, horizon, disc, land, stars, windows_lit) = match scene.time_of_day {
        TimeOfDay::Dawn => (
            [0.28, 0.33, 0.55],
            [0.98, 0.66, 0.6],
            Some(([1.0, 0.86, 0.7], 0.06, 0.04)),
            [0.78, 0.62, 0.62],
            false,
            0.15,
        ),
        TimeOfDay::GoldenHour => (
            [0.36, 0.52, 0.78],
            [1.0, 0.74, 0.38],
            Some(([1.0, 0.9, 0.6], 0.14, 0.04)),
            [1.05, 0.8, 0.5],
            false,
            0.0,
        ),
        TimeOfDay::Noon => (
            [0.18, 0.44, 0.86],
            [0.7, 0.83, 0.96],
            Some(([1.0, 1.0, 0.95], 0.42, 0.035)),
            [1.0, 1.0, 0.98],
            false,
            0.0,
        ),
        TimeOfDay::Dusk => (
            [0.1, 0.1, 0.3],
            [0.72, 0.38, 0.48],
            None,
            [0.42, 0.36, 0.55],
            false,
            0.35,
        ),
        TimeOfDay::Night => (
            [0.01, 0.02, 0.06],
            [0.05, 0.08, 0.17],
            Some(([0.85, 0.88, 0.8], 0.3, 0.025)),
            [0.16, 0.2, 0.34],
            true,
            0.5,
        ),
    };
    let tint = [1.0 + warm, 1.0, 1.0 - warm];
    let exposure = scene.exposure_jitter;
    let mut light = Light {
        zenith: scale(times(zenith, tint), exposure),
        horizon: scale(times(horizon, tint), exposure),
        disc,
        land: scale(times(land, tint), exposure),
        stars,
        windows_lit,
    };
    if matches!(
        scene.weather,
        Weather::Overcast | Weather::Rain | Weather::Snow
    ) {
        // Cloud cover: a grey sky as bright as the clear one, flat light, no sun or stars.
        let grey = |color: Rgb, level: f32| {
            let luma = 0.3 * color[0] + 0.55 * color[1] + 0.15 * color[2];
            mix(color, [luma * level; 3], 0.8)
        };
        let dim = if scene.weather == Weather::Rain {
            0.6
        } else {
            0.85
        };
        light.zenith = grey(light.zenith, dim);
        light.horizon = grey(light.horizon, dim);
        light.land = scale(grey(light.land, 1.0), dim);
        light.disc = None;
        light.stars = false;
    }
    light
}

#[derive(Clone, Copy)]
enum Profile {
    Ridge,
    Hills,
    Pines,
    Towers,
    Dunes,
}

/// A silhouette at one depth: everything below its profile line belongs to it.
#[derive(Clone, Copy)]
struct Layer {
    parallax: f32,
    profile: Profile,
    /// Height scale above the horizon (fraction of frame height).
    height: f32,
    color: Rgb,
    seed: u64,
}

fn layers(scene: &Scene) -> Vec<Layer> {
    let seed = scene.layout_seed;
    let layer = |parallax, profile, height, color, index: u64| Layer {
        parallax,
        profile,
        height,
        color,
        seed: splitmix(seed ^ index),
    };
    match scene.setting {
        Setting::Sea => vec![],
        Setting::Mountains => vec![
            layer(0.2, Profile::Ridge, 0.34, [0.45, 0.5, 0.6], 1),
            layer(0.45, Profile::Ridge, 0.24, [0.28, 0.3, 0.32], 2),
            layer(0.8, Profile::Ridge, 0.12, [0.16, 0.17, 0.14], 3),
        ],
        Setting::Forest => vec![
            layer(0.25, Profile::Hills, 0.16, [0.16, 0.3, 0.22], 1),
            layer(0.55, Profile::Pines, 0.2, [0.06, 0.2, 0.1], 2),
            layer(0.9, Profile::Pines, 0.3, [0.03, 0.12, 0.05], 3),
        ],
        Setting::Desert => vec![
            layer(0.3, Profile::Dunes, 0.2, [0.85, 0.62, 0.4], 1),
            layer(0.6, Profile::Dunes, 0.13, [0.9, 0.66, 0.42], 2),
            layer(1.0, Profile::Dunes, 0.08, [0.95, 0.72, 0.47], 3),
        ],
        Setting::City => vec![
            layer(0.35, Profile::Towers, 0.45, [0.3, 0.33, 0.4], 1),
            layer(0.7, Profile::Towers, 0.3, [0.16, 0.17, 0.22], 2),
        ],
        Setting::Snowfield => vec![layer(0.3, Profile::Hills, 0.08, [0.82, 0.86, 0.94], 1)],
    }
}

/// Height of a layer's skyline above the horizon at world position `x`.
fn profile_height(layer: &Layer, x: f32) -> f32 {
    let seed = layer.seed;
    match layer.profile {
        Profile::Ridge => {
            let ridged = 1.0 - (2.0 * fractal(seed, x * 3.0) - 1.0).abs();
            layer.height * (0.25 + 0.75 * ridged * ridged)
        }
        Profile::Hills => layer.height * (0.3 + 0.7 * fractal(seed, x * 2.0)),
        Profile::Pines => {
            let spacing = 0.035;
            let cell = (x / spacing).floor();
            let within = x / spacing - cell;
            let tree = 0.55 + 0.45 * hash(seed, cell as i64, 1);
            let cone = 1.0 - (2.0 * within - 1.0).abs();
            let base = 0.25 * fractal(seed, x * 2.0);
            layer.height * (base + 0.75 * tree * cone).max(base)
        }
        Profile::Towers => {
            let spacing = 0.055;
            let cell = (x / spacing).floor();
            let tall = hash(seed, cell as i64, 2);
            let gap = hash(seed, cell as i64, 3) < 0.12;
            if gap {
                layer.height * 0.08
            } else {
                layer.height * (0.2 + 0.8 * tall * tall)
            }
        }
        Profile::Dunes => {
            let phase = x * 5.0 + 3.0 * fractal(seed, x * 1.3);
            let wave = 0.5 + 0.5 * phase.sin();
            layer.height * (0.3 + 0.7 * wave * wave)
        }
    }
}

/// The view one layer has of the frame at time `t`: world = 0.5 + (image − 0.5)/zoom + offset.
#[derive(Clone, Copy, Debug)]
struct View {
    dx: f32,
    dy: f32,
    zoom: f32,
}

fn view(scene: &Scene, seconds: f32, parallax: f32) -> View {
    let travel = scene.speed * seconds;
    // Pans and zooms turn or move the camera a lot: even the far layers follow partly.
    let strong = 0.4 + 0.6 * parallax;
    let still = View {
        dx: 0.0,
        dy: 0.0,
        zoom: 1.0,
    };
    match scene.camera {
        Camera::Static => still,
        // Panning left moves the content right: the world under a pixel moves left.
        Camera::PanLeft => View {
            dx: -travel * strong,
            ..still
        },
        Camera::PanRight => View {
            dx: travel * strong,
            ..still
        },
        // A tilt turns the camera: everything, sky included, slides down the frame.
        Camera::TiltUp => View {
            dy: -travel,
            ..still
        },
        // A descent lowers the camera: the land rises towards the fixed horizon, near land
        // faster, with a slight magnification.
        Camera::AerialDescent => View {
            dy: travel * (0.5 + 0.5 * parallax),
            zoom: 1.0 + 0.15 * travel * parallax,
            ..still
        },
        Camera::PushIn => View {
            zoom: (travel * strong * 2.5).exp(),
            ..still
        },
        Camera::PullOut => View {
            zoom: (-travel * strong * 2.5).exp(),
            ..still
        },
    }
}

impl View {
    fn x(&self, u: f32) -> f32 {
        0.5 + (u - 0.5) / self.zoom + self.dx
    }
    fn y(&self, v: f32) -> f32 {
        0.5 + (v - 0.5) / self.zoom + self.dy
    }
}

/// Parallax of the sky (at infinity, but a little motion keeps pans readable in an empty sky).
const SKY_PARALLAX: f32 = 0.12;
/// Parallax of the ground plane.
const GROUND_PARALLAX: f32 = 1.0;

fn sky_color(scene: &Scene, light: &Light, x: f32, y: f32, aspect: f32, seconds: f32) -> Rgb {
    let elevation = scene.horizon - y;
    let height = (elevation / 0.6).clamp(0.0, 1.0).powf(0.7);
    let mut color = mix(light.horizon, light.zenith, height);
    if let Some((disc_color, disc_elevation, radius)) = light.disc {
        let dx = (x - scene.sun_x) * aspect;
        let dy = elevation - disc_elevation;
        let distance = (dx * dx + dy * dy).sqrt();
        let glow = 0.35 * (-distance / 0.1).exp();
        color = mix(color, disc_color, glow);
        if distance < radius {
            color = disc_color;
        }
    }
    if light.stars && elevation > 0.05 {
        let (cx, cy) = ((x * 90.0).floor(), (y * 50.0).floor());
        if hash(scene.layout_seed, cx as i64, cy as i64) < 0.012 {
            color = mix(color, [0.9, 0.9, 1.0], 0.8);
        }
    }
    match scene.weather {
        Weather::Overcast | Weather::Rain | Weather::Snow => {
            let cloud = noise2(scene.layout_seed, x * 6.0 + seconds * 0.02, y * 9.0);
            scale(color, 0.85 + 0.3 * cloud)
        }
        _ => color,
    }
}

fn ground_color(scene: &Scene, light: &Light, x: f32, y: f32, seconds: f32) -> Rgb {
    let depth = (y - scene.horizon).max(0.002);
    let seed = scene.layout_seed ^ 0x9d;
    let land = |color: Rgb| times(color, light.land);
    match scene.setting {
        Setting::Sea => {
            let ripple = (0.9 / depth + 5.0 * noise(seed, x * 30.0 / (depth * 6.0 + 0.5))).sin();
            // A standing swell: it rises and falls in place, because a travelling one reads as
            // camera motion (the model trained on it drifted every static shot sideways).
            let swell = 0.85 + 0.15 * (x * 7.0).sin() * (seconds * 1.1).cos();
            let water = land([0.05, 0.2, 0.32]);
            let reflection = scale(light.horizon, 0.8);
            let near = (depth * 4.0).clamp(0.0, 1.0);
            let base = mix(reflection, water, near);
            scale(base, 0.85 + 0.18 * ripple * swell)
        }
        Setting::Mountains => land(scale([0.14, 0.18, 0.09], 0.8 + 0.3 * noise(seed, x * 20.0))),
        Setting::Forest => land(scale([0.05, 0.14, 0.06], 0.8 + 0.3 * noise(seed, x * 30.0))),
        Setting::Desert => {
            let ripple = 0.9 + 0.1 * (x * 60.0 + 3.0 * noise(seed, x * 4.0) + 0.5 / depth).sin();
            land(scale([0.93, 0.7, 0.45], ripple))
        }
        Setting::City => {
            let street = land([0.12, 0.12, 0.14]);
            let lamp = hash(
                seed,
                (x * 80.0).floor() as i64,
                (0.3 / depth).floor() as i64,
            );
            if lamp < light.windows_lit * 0.3 {
                mix(street, [1.0, 0.8, 0.5], 0.6)
            } else {
                street
            }
        }
        Setting::Snowfield => {
            let drift = 0.92 + 0.08 * (x * 25.0 + 4.0 * noise(seed, x * 3.0) + 0.4 / depth).sin();
            land(scale([0.95, 0.96, 1.0], drift))
        }
    }
}

/// A layer pixel: its colour with shading details (windows, snow caps, dune faces).
fn layer_color(scene: &Scene, light: &Light, layer: &Layer, x: f32, y: f32, top: f32) -> Rgb {
    let base = times(layer.color, light.land);
    match layer.profile {
        Profile::Towers => {
            let (wx, wy) = (x * 160.0, y * 70.0);
            let window = wx.fract() > 0.35 && wy.fract() > 0.4;
            let lit = hash(layer.seed, wx.floor() as i64, wy.floor() as i64) < light.windows_lit;
            if window && lit {
                [1.0, 0.82, 0.45]
            } else if window {
                mix(base, light.horizon, 0.25)
            } else {
                base
            }
        }
        Profile::Ridge if layer.parallax < 0.3 && y < top + 0.04 => {
            times([0.92, 0.94, 1.0], light.land)
        }
        Profile::Dunes => {
            let slope = (profile_height(layer, x + 0.004) - profile_height(layer, x)) / 0.004;
            let toward_sun = if scene.sun_x > 0.5 { slope } else { -slope };
            let crest = 1.0 - ((y - top) / 0.12).clamp(0.0, 1.0);
            scale(
                base,
                0.85 + 0.2 * toward_sun.clamp(-1.0, 1.0) + 0.15 * crest,
            )
        }
        _ => base,
    }
}

/// How strongly haze covers something at this parallax (0 = clear).
fn haze(scene: &Scene, parallax: f32) -> f32 {
    let depth = 1.0 - parallax.clamp(0.0, 1.0);
    match scene.weather {
        Weather::Fog => 0.45 + 0.45 * depth,
        Weather::Snow | Weather::Rain => 0.15 + 0.35 * depth,
        _ => 0.3 * depth * depth,
    }
}

fn fog_color(scene: &Scene, light: &Light) -> Rgb {
    match scene.weather {
        Weather::Fog => mix(light.horizon, [0.78, 0.8, 0.82], 0.55),
        _ => light.horizon,
    }
}

/// Falling rain streaks and snowflakes, in screen space.
fn precipitation(scene: &Scene, color: Rgb, u: f32, v: f32, aspect: f32, seconds: f32) -> Rgb {
    let seed = scene.layout_seed ^ 0x77;
    match scene.weather {
        Weather::Rain => {
            let column = (u * 140.0).floor();
            let fall = v * 14.0 - seconds * 30.0 + hash(seed, column as i64, 0) * 14.0;
            let streak =
                fall.fract() < 0.45 && hash(seed, column as i64, fall.floor() as i64) < 0.08;
            if streak {
                mix(color, [0.75, 0.78, 0.82], 0.25)
            } else {
                color
            }
        }
        Weather::Snow => {
            let cells = 40.0;
            let fy = v - seconds * 0.4;
            let (cx, cy) = ((u * cells).floor(), (fy * cells / aspect).floor());
            let jitter_x = hash(seed, cx as i64, cy as i64 + 7) - 0.5;
            let jitter_y = hash(seed, cx as i64 + 7, cy as i64) - 0.5;
            let within_x = u * cells - cx - 0.5 - 0.5 * jitter_x;
            let within_y = fy * cells / aspect - cy - 0.5 - 0.5 * jitter_y;
            let present = hash(seed, cx as i64, cy as i64) < 0.08;
            if present && within_x * within_x + within_y * within_y < 0.04 {
                mix(color, [0.95, 0.95, 0.97], 0.6)
            } else {
                color
            }
        }
        _ => color,
    }
}

fn to_byte(value: f32) -> u8 {
    (value.clamp(0.0, 1.0) * 255.0 + 0.5) as u8
}

/// Frame at `seconds` into the clip, `width`×`height` pixels.
pub fn render_frame(scene: &Scene, seconds: f32, width: u32, height: u32) -> RgbFrame {
    let (w, h) = (width.max(1) as usize, height.max(1) as usize);
    let aspect = w as f32 / h as f32;
    let light = light(scene);
    let layers = layers(scene);
    let sky_view = view(scene, seconds, SKY_PARALLAX);
    let ground_view = view(scene, seconds, GROUND_PARALLAX);
    let fog = fog_color(scene, &light);
    let column_u = |column: usize| (column as f32 + 0.5) / w as f32;
    // Per layer and column: world x and skyline; per layer and row: world y.
    let layer_columns: Vec<(View, Vec<f32>, Vec<f32>)> = layers
        .iter()
        .map(|layer| {
            let layer_view = view(scene, seconds, layer.parallax);
            let xs: Vec<f32> = (0..w).map(|c| layer_view.x(column_u(c))).collect();
            let tops = xs
                .iter()
                .map(|&x| scene.horizon - profile_height(layer, x))
                .collect();
            (layer_view, xs, tops)
        })
        .collect();
    let mut data = Vec::with_capacity(w * h * 3);
    for row in 0..h {
        let v = (row as f32 + 0.5) / h as f32;
        let layer_rows: Vec<f32> = layer_columns.iter().map(|(lv, _, _)| lv.y(v)).collect();
        for column in 0..w {
            let u = column_u(column);
            let mut color = None;
            for (index, layer) in layers.iter().enumerate().rev() {
                let (_, xs, tops) = &layer_columns[index];
                let y = layer_rows[index];
                if y >= tops[column] {
                    let own = layer_color(scene, &light, layer, xs[column], y, tops[column]);
                    color = Some(mix(own, fog, haze(scene, layer.parallax)));
                    break;
                }
            }
            let color = color.unwrap_or_else(|| {
                let (gx, gy) = (ground_view.x(u), ground_view.y(v));
                if gy >= scene.horizon {
                    let depth = (gy - scene.horizon).clamp(0.0, 0.5) * 2.0;
                    let own = ground_color(scene, &light, gx, gy, seconds);
                    mix(own, fog, haze(scene, depth))
                } else {
                    let own =
                        sky_color(scene, &light, sky_view.x(u), sky_view.y(v), aspect, seconds);
                    if scene.weather == Weather::Fog {
                        mix(own, fog, 0.6)
                    } else {
                        own
                    }
                }
            });
            let color = precipitation(scene, color, u, v, aspect, seconds);
            data.extend(color.map(to_byte));
        }
    }
    RgbFrame::new(w as u32, h as u32, data)
}

#[cfg(test)]
mod tests {
    use super::super::{Camera, Scene, Setting, TimeOfDay, Weather};
    use super::*;

    fn mean_luma(frame: &RgbFrame) -> f32 {
        let total: u64 = frame.data.iter().map(|&b| u64::from(b)).sum();
        total as f32 / frame.data.len() as f32
    }

    #[test]
    fn frames_are_deterministic_and_sized() {
        let scene = Scene::random(3);
        let first = render_frame(&scene, 1.0, 64, 36);
        assert_eq!(
            (first.width, first.height, first.data.len()),
            (64, 36, 64 * 36 * 3)
        );
        assert_eq!(first, render_frame(&scene, 1.0, 64, 36));
    }

    #[test]
    fn night_is_darker_than_noon() {
        let at = |time| {
            let scene =
                Scene::with_attributes(time, Setting::Sea, Weather::Clear, Camera::Static, 1);
            mean_luma(&render_frame(&scene, 0.0, 96, 54))
        };
        assert!(at(TimeOfDay::Night) * 3.0 < at(TimeOfDay::Noon));
    }

    #[test]
    fn a_static_camera_keeps_the_land_still_and_a_pan_moves_it() {
        let frames = |camera| {
            let scene = Scene::with_attributes(
                TimeOfDay::Noon,
                Setting::Mountains,
                Weather::Clear,
                camera,
                5,
            );
            (
                render_frame(&scene, 0.0, 96, 54),
                render_frame(&scene, 2.0, 96, 54),
            )
        };
        let (a, b) = frames(Camera::Static);
        assert_eq!(a, b);
        let (a, b) = frames(Camera::PanLeft);
        assert_ne!(a, b);
    }
}
