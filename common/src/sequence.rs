//! The validated sequence: plain domain types that the planner, the scheduler and the CLI
//! share once the spec has passed validation (see `spec`).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resolution {
    P480,
    P720,
    P1080,
}

impl Resolution {
    pub const ALL: [Resolution; 3] = [Resolution::P480, Resolution::P720, Resolution::P1080];

    pub fn short_side(self) -> u32 {
        match self {
            Resolution::P480 => 480,
            Resolution::P720 => 720,
            Resolution::P1080 => 1080,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Resolution::P480 => "480p",
            Resolution::P720 => "720p",
            Resolution::P1080 => "1080p",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Aspect {
    Wide16x9,
    Tall9x16,
    Scope239,
    Flat185,
    Classic4x3,
    Square,
}

impl Aspect {
    pub const ALL: [Aspect; 6] = [
        Aspect::Wide16x9,
        Aspect::Tall9x16,
        Aspect::Scope239,
        Aspect::Flat185,
        Aspect::Classic4x3,
        Aspect::Square,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Aspect::Wide16x9 => "16:9",
            Aspect::Tall9x16 => "9:16",
            Aspect::Scope239 => "2.39:1",
            Aspect::Flat185 => "1.85:1",
            Aspect::Classic4x3 => "4:3",
            Aspect::Square => "1:1",
        }
    }

    /// Long side over short side, and whether the picture is taller than wide.
    fn long_over_short(self) -> (f64, bool) {
        match self {
            Aspect::Wide16x9 => (16.0 / 9.0, false),
            Aspect::Tall9x16 => (16.0 / 9.0, true),
            Aspect::Scope239 => (2.39, false),
            Aspect::Flat185 => (1.85, false),
            Aspect::Classic4x3 => (4.0 / 3.0, false),
            Aspect::Square => (1.0, false),
        }
    }
}

/// Frame size: the short side is the resolution's number and the long side is
/// `round(short * ratio / 16) * 16`, so encoders get macroblock-aligned widths.
pub fn frame_size(resolution: Resolution, aspect: Aspect) -> (u32, u32) {
    let short = resolution.short_side();
    let (ratio, portrait) = aspect.long_over_short();
    let long = ((f64::from(short) * ratio / 16.0).round() as u32) * 16;
    if portrait {
        (short, long)
    } else {
        (long, short)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pass {
    Draft,
    Final,
}

impl Pass {
    pub fn name(self) -> &'static str {
        match self {
            Pass::Draft => "draft",
            Pass::Final => "final",
        }
    }
}

/// How a shot starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    Cut,
    Continue,
    Crossfade,
}

impl Transition {
    pub fn name(self) -> &'static str {
        match self {
            Transition::Cut => "cut",
            Transition::Continue => "continue",
            Transition::Crossfade => "crossfade",
        }
    }
}

/// How the stitcher grades shots to one look (see the worker's `grading` module).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColorMatch {
    Off,
    /// Per-channel histogram (CDF) matching in Lab.
    Hm,
    /// Mean and standard deviation per Lab channel (Reinhard et al. 2001).
    Reinhard,
    /// Linear Monge–Kantorovich transfer of the colour covariance (Pitié & Kokaram 2007).
    Mkl,
    /// Histogram matching, then MKL, then histogram matching again.
    HmMklHm,
}

impl ColorMatch {
    pub const ALL: [ColorMatch; 5] = [
        ColorMatch::Off,
        ColorMatch::Hm,
        ColorMatch::Reinhard,
        ColorMatch::Mkl,
        ColorMatch::HmMklHm,
    ];
    /// The method that won the stitcher's comparison on synthetic shots with exposure and
    /// white-balance offsets (worker `stitch_matching_tests`, README "Colour matching").
    pub const DEFAULT: ColorMatch = ColorMatch::Reinhard;

    pub fn name(self) -> &'static str {
        match self {
            ColorMatch::Off => "off",
            ColorMatch::Hm => "hm",
            ColorMatch::Reinhard => "reinhard",
            ColorMatch::Mkl => "mkl",
            ColorMatch::HmMklHm => "hm-mkl-hm",
        }
    }

    pub fn from_name(name: &str) -> Option<ColorMatch> {
        ColorMatch::ALL
            .into_iter()
            .find(|method| method.name() == name)
    }
}

/// A first-frame image the user supplied, carried as PNG bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Reference {
    pub name: String,
    pub png: Vec<u8>,
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({}, {} bytes)", self.name, self.png.len())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Shot {
    pub prompt: String,
    pub duration_seconds: f64,
    pub transition: Transition,
    /// Dissolve length; set only for `Transition::Crossfade`.
    pub crossfade_seconds: Option<f64>,
    pub seed: Option<u64>,
    pub negative: Option<String>,
    pub reference: Option<Reference>,
    /// Shown in reports, the timeline and the contact sheet (default `shot <index>`).
    pub name: Option<String>,
    /// Shots with the same scene label are graded to one look; `None` for a shot that is
    /// its own scene. A continuing shot always belongs to the scene of the shot it continues.
    pub scene: Option<String>,
    /// Takes rendered of this shot, each from its own seed (1: just the one on the timeline).
    pub variants: u32,
    /// The take on the timeline (0-based; the others show on the contact sheet).
    pub take: u32,
    /// Its own catalog model (`None`: the sequence's).
    pub model: Option<String>,
}

/// The most takes one shot may ask for.
pub const MAX_VARIANTS: u32 = 8;

impl Shot {
    /// The catalog model this shot renders with.
    pub fn model_id<'a>(&'a self, sequence_model: &'a str) -> &'a str {
        self.model.as_deref().unwrap_or(sequence_model)
    }

    pub fn display_name(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| format!("shot {index}"))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    pub title: Option<String>,
    pub model: String,
    pub resolution: Resolution,
    pub aspect: Aspect,
    pub fps: u32,
    pub seed: u64,
    pub pass: Pass,
    pub style: Option<String>,
    pub negative: Option<String>,
    pub steps: Option<u32>,
    pub shots: Vec<Shot>,
    pub color_match: ColorMatch,
    /// Seconds of overlap blended at every continuity join (0 turns the blend off).
    pub continuity_blend_seconds: f64,
    /// Scene label → index of the shot whose look that scene follows (default: its first shot).
    pub grade_references: std::collections::BTreeMap<String, usize>,
    /// Who the sequence is for (a person, team or show); fair share is between owners first,
    /// then between sequences. `None`: the sequence is an owner of its own.
    pub owner: Option<String>,
    /// Higher goes first among ready segments; default 0, between -10 and 10.
    pub priority: i32,
    /// Seam QA (`None`: on for the final pass, off for drafts).
    pub seam_qa: Option<bool>,
    /// New seeds seam QA may try per failing join.
    pub seam_qa_tries: u32,
}

/// Seam QA's default budget: new seeds per failing join.
pub const SEAM_QA_TRIES: u32 = 2;
/// The most new seeds a spec may give seam QA per join.
pub const MAX_SEAM_QA_TRIES: u32 = 5;

impl Sequence {
    /// Whether seam QA scores this sequence's joins and renders failing ones again.
    pub fn seam_qa_enabled(&self) -> bool {
        self.seam_qa.unwrap_or(self.pass == Pass::Final)
    }

    pub fn frame_size(&self) -> (u32, u32) {
        frame_size(self.resolution, self.aspect)
    }

    pub fn total_duration_seconds(&self) -> f64 {
        self.shots.iter().map(|shot| shot.duration_seconds).sum()
    }

    /// Frames of the whole timeline: `round(fps * total duration)`.
    pub fn total_frames(&self) -> u64 {
        (self.total_duration_seconds() * f64::from(self.fps)).round() as u64
    }

    /// Each shot's scene key and the index of the shot whose look that scene follows.
    /// Continuing shots inherit the scene of the shot they continue; an unlabelled shot
    /// that starts a new run is a scene of its own.
    pub fn scenes(&self) -> Vec<(String, usize)> {
        let mut keys: Vec<String> = Vec::with_capacity(self.shots.len());
        for (index, shot) in self.shots.iter().enumerate() {
            let key = match (&shot.scene, shot.transition, keys.last()) {
                (_, Transition::Continue, Some(previous)) => previous.clone(),
                (Some(label), _, _) => format!("scene:{label}"),
                (None, _, _) => format!("shot:{index}"),
            };
            keys.push(key);
        }
        keys.iter()
            .map(|key| {
                let label = key.strip_prefix("scene:");
                let first = keys.iter().position(|other| other == key).unwrap_or(0);
                let reference = label
                    .and_then(|label| self.grade_references.get(label).copied())
                    .unwrap_or(first);
                (key.clone(), reference)
            })
            .collect()
    }

    pub fn display_title(&self) -> String {
        self.title
            .clone()
            .unwrap_or_else(|| format!("{} shots", self.shots.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes_follow_the_documented_rule() {
        assert_eq!(frame_size(Resolution::P480, Aspect::Wide16x9), (848, 480));
        assert_eq!(frame_size(Resolution::P480, Aspect::Tall9x16), (480, 848));
        assert_eq!(
            frame_size(Resolution::P1080, Aspect::Wide16x9),
            (1920, 1080)
        );
        assert_eq!(frame_size(Resolution::P720, Aspect::Wide16x9), (1280, 720));
        assert_eq!(frame_size(Resolution::P480, Aspect::Square), (480, 480));
        assert_eq!(frame_size(Resolution::P480, Aspect::Classic4x3), (640, 480));
        assert_eq!(frame_size(Resolution::P480, Aspect::Scope239), (1152, 480));
    }

    #[test]
    fn every_frame_size_is_even() {
        for resolution in Resolution::ALL {
            for aspect in Aspect::ALL {
                let (width, height) = frame_size(resolution, aspect);
                assert!(width % 2 == 0 && height % 2 == 0, "{width}x{height}");
            }
        }
    }
}
