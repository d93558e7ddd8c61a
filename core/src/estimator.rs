//! How much GPU memory a segment needs, learned: the catalog's one estimator
//! (`reelfarm_models::memory`) gives the formula's bytes, and the peaks workers measure and
//! the out-of-memory failures they report correct it per model and size class (pure, no I/O).

use std::collections::BTreeMap;

use reelfarm_models::SegmentShape;

/// Estimates are learned per model and size class (resolution bucket, frame bucket, decode mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CorrectionKey {
    pub model_index: u32,
    pub short_side: u32,
    pub frames_bucket: u64,
    pub tiled_decode: bool,
}

impl CorrectionKey {
    pub fn new(model_index: u32, shape: &SegmentShape) -> CorrectionKey {
        CorrectionKey {
            model_index,
            short_side: shape.width.min(shape.height),
            // Frame counts within a factor of two behave alike.
            frames_bucket: shape.frames.max(1).ilog2() as u64,
            tiled_decode: shape.tiled_decode,
        }
    }
}

/// A learned ratio of measured peak to formula estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Correction {
    pub ratio: f64,
    pub observations: u32,
}

/// Before this many peaks of a key are known, estimates carry an extra margin.
pub const TRUSTED_OBSERVATIONS: u32 = 3;
/// Extra margin on estimates no measurement has confirmed yet.
pub const COLD_MARGIN: f64 = 0.25;
/// After an OOM, the reservation grows to this multiple of the one that failed.
pub const OOM_GROWTH: f64 = 1.25;

/// Per-key corrections learned from workers' measured peaks and from OOMs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Corrections {
    learned: BTreeMap<CorrectionKey, Correction>,
}

impl Corrections {
    pub fn get(&self, key: &CorrectionKey) -> Option<Correction> {
        self.learned.get(key).copied()
    }

    /// The bytes to reserve: the formula times the learned ratio, with a cold-start margin
    /// until the key has been measured a few times.
    pub fn reserve_bytes(&self, key: &CorrectionKey, formula_bytes: u64) -> u64 {
        let (trusted, cold_extra) = self.reservation(key, formula_bytes);
        trusted + cold_extra
    }

    /// The reservation in two parts, as placement takes them: the formula times the learned
    /// ratio, and the extra headroom an unconfirmed key gets on top.
    pub fn reservation(&self, key: &CorrectionKey, formula_bytes: u64) -> (u64, u64) {
        let (ratio, cold) = match self.get(key) {
            Some(c) => (c.ratio, c.observations < TRUSTED_OBSERVATIONS),
            None => (1.0, true),
        };
        let trusted = (formula_bytes as f64 * ratio) as u64;
        let cold_extra = if cold {
            (trusted as f64 * COLD_MARGIN) as u64
        } else {
            0
        };
        (trusted, cold_extra)
    }

    /// A measured peak (margin excluded from nothing: `formula_bytes` is the formula's
    /// estimate, margin included, so a ratio of 1 means "the formula was right").
    /// Tracks the maximum recently seen, decaying slowly, so one small peak never shrinks
    /// the reservation below a large one just measured.
    pub fn observe(&mut self, key: CorrectionKey, formula_bytes: u64, measured_peak_bytes: u64) {
        let measured = measured_peak_bytes as f64 / formula_bytes.max(1) as f64;
        let entry = self.learned.entry(key).or_insert(Correction {
            ratio: measured,
            observations: 0,
        });
        entry.ratio = if measured >= entry.ratio {
            measured
        } else {
            // Shrink towards smaller measurements by at most a tenth of the gap each time.
            entry.ratio - 0.1 * (entry.ratio - measured)
        };
        entry.observations = entry.observations.saturating_add(1);
    }

    /// An OOM at `reserved_bytes`: the next reservation for this key is at least
    /// `OOM_GROWTH` times that, and the key counts as unconfirmed again.
    pub fn observe_oom(&mut self, key: CorrectionKey, formula_bytes: u64, reserved_bytes: u64) {
        let needed = reserved_bytes as f64 * OOM_GROWTH / formula_bytes.max(1) as f64;
        let entry = self.learned.entry(key).or_insert(Correction {
            ratio: needed,
            observations: 0,
        });
        entry.ratio = entry.ratio.max(needed);
        entry.observations = 0;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn shape(width: u32, height: u32, frames: u64) -> SegmentShape {
        SegmentShape {
            width,
            height,
            frames,
            tiled_decode: false,
        }
    }

    #[test]
    fn an_oom_raises_the_next_reservation_and_resets_trust() {
        let key = CorrectionKey::new(0, &shape(832, 480, 81));
        let mut corrections = Corrections::default();
        for _ in 0..5 {
            corrections.observe(key, 1000, 1000);
        }
        assert_eq!(corrections.reserve_bytes(&key, 1000), 1000);
        corrections.observe_oom(key, 1000, 1000);
        assert_eq!(
            corrections.reserve_bytes(&key, 1000),
            (1000.0 * 1.25 * 1.25) as u64
        );
    }

    proptest! {
        /// Whatever the formula says, repeated measurements of the same true peak bring the
        /// reservation to that peak (the cold margin gone, the ratio learned).
        #[test]
        fn estimates_converge_to_measured_peaks(
            formula in 1_000_000u64..100_000_000_000,
            true_ratio in 0.5f64..2.0,
            noise in prop::collection::vec(0.97f64..1.0, 40..60),
        ) {
            let key = CorrectionKey::new(1, &shape(1280, 720, 121));
            let mut corrections = Corrections::default();
            for wobble in &noise {
                corrections.observe(key, formula, (formula as f64 * true_ratio * wobble) as u64);
            }
            let reserved = corrections.reserve_bytes(&key, formula) as f64;
            let truth = formula as f64 * true_ratio;
            prop_assert!(reserved >= truth * 0.97 && reserved <= truth * 1.01,
                "reserved {reserved} for a true peak of {truth}");
        }
    }
}
