//! Sampling checkpoints: a denoising run's latent after some of its steps, stored so that a
//! segment whose worker dies (or whose spot GPU is taken back) finishes on another worker
//! from that step instead of from noise. The Euler sampler's next step depends only on the
//! latent, the step index and the request, so a resumed run ends in the same clip.
//!
//! The stored form is self-checking: a magic, the fingerprint of the task it belongs to (the
//! caller hashes whatever decides the pixels), the step, the tensor, and a SHA-256 of all of
//! it. A checkpoint that fails any check is refused with the reason, never half-used.

use sha2::{Digest, Sha256};

use crate::runtime::ModelError;

const MAGIC: &[u8; 8] = b"RFCKPT01";
/// More dimensions than any latent has: a header claiming more is hostile or broken.
const MAX_RANK: usize = 8;

/// A run's latent after `step` of its `steps` denoising steps.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingState {
    pub step: u32,
    pub steps: u32,
    pub dims: Vec<usize>,
    pub values: Vec<f32>,
}

impl SamplingState {
    /// The stored form, bound to `fingerprint` (the task's).
    pub fn encode(&self, fingerprint: &[u8; 32]) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(64 + 8 * self.dims.len() + 4 * self.values.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(fingerprint);
        bytes.extend_from_slice(&self.step.to_le_bytes());
        bytes.extend_from_slice(&self.steps.to_le_bytes());
        bytes.extend_from_slice(&(self.dims.len() as u32).to_le_bytes());
        for dim in &self.dims {
            bytes.extend_from_slice(&(*dim as u64).to_le_bytes());
        }
        for value in &self.values {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        let digest = Sha256::digest(&bytes);
        bytes.extend_from_slice(&digest);
        bytes
    }

    /// Reads a stored checkpoint; refuses one that is damaged, made for another task
    /// (`fingerprint`), or not a state partway through a run.
    pub fn decode(bytes: &[u8], fingerprint: &[u8; 32]) -> Result<SamplingState, String> {
        let header = MAGIC.len() + 32 + 12;
        if bytes.len() < header + 32 {
            return Err(format!(
                "{} bytes is too short for a checkpoint",
                bytes.len()
            ));
        }
        let (body, digest) = bytes.split_at(bytes.len() - 32);
        if Sha256::digest(body).as_slice() != digest {
            return Err("its SHA-256 does not match its contents (damaged)".into());
        }
        if &body[..MAGIC.len()] != MAGIC {
            return Err("it does not start with a reelfarm checkpoint header".into());
        }
        if &body[MAGIC.len()..MAGIC.len() + 32] != fingerprint {
            return Err("it was made for another task (its fingerprint differs)".into());
        }
        let word = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
        let at = MAGIC.len() + 32;
        let (step, steps, rank) = (word(at), word(at + 4), word(at + 8) as usize);
        if rank == 0 || rank > MAX_RANK {
            return Err(format!("rank {rank} is outside 1..={MAX_RANK}"));
        }
        if step == 0 || step >= steps {
            return Err(format!(
                "step {step} of {steps} is not partway through a run"
            ));
        }
        let mut rest = &body[header..];
        if rest.len() < 8 * rank {
            return Err("the header is cut short".into());
        }
        let mut dims = Vec::with_capacity(rank);
        let mut count: usize = 1;
        for _ in 0..rank {
            let dim = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
            rest = &rest[8..];
            let dim = usize::try_from(dim).map_err(|_| format!("dimension {dim} is too large"))?;
            count = count
                .checked_mul(dim)
                .ok_or_else(|| "its dimensions overflow".to_string())?;
            dims.push(dim);
        }
        if Some(rest.len()) != count.checked_mul(4) {
            return Err(format!(
                "it holds {} bytes of values, its dimensions {dims:?} need {}",
                rest.len(),
                count.saturating_mul(4)
            ));
        }
        let values = rest
            .chunks_exact(4)
            .map(|chunk| f32::from_le_bytes(chunk.try_into().expect("4 bytes")))
            .collect();
        Ok(SamplingState {
            step,
            steps,
            dims,
            values,
        })
    }
}

/// The fingerprint of whatever decides a run's latents: SHA-256 over the length-prefixed
/// `fields`, so ("ab", "c") and ("a", "bc") differ.
pub fn fingerprint(fields: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for field in fields {
        hasher.update((field.len() as u64).to_le_bytes());
        hasher.update(field);
    }
    hasher.finalize().into()
}

/// What a run does about checkpoints: where it may resume from, how often it saves, and the
/// step it really resumed from (set by the model: a state that does not fit the request is
/// ignored and the run starts from noise).
pub struct Checkpoints<'a> {
    /// Save after every `every` steps (0: never). Never after the last step: the clip follows.
    pub every: u32,
    pub resume: Option<SamplingState>,
    pub save: &'a mut dyn FnMut(&SamplingState) -> Result<(), ModelError>,
    /// 0: the run started from noise.
    pub resumed_from: u32,
}

impl<'a> Checkpoints<'a> {
    /// Neither resume nor save.
    pub fn off(save: &'a mut dyn FnMut(&SamplingState) -> Result<(), ModelError>) -> Self {
        Checkpoints {
            every: 0,
            resume: None,
            save,
            resumed_from: 0,
        }
    }

    /// Whether the state after `done` of `steps` steps is saved.
    pub fn due(&self, done: u32, steps: u32) -> bool {
        self.every > 0 && done < steps && done.is_multiple_of(self.every)
    }

    /// The state to start from, if it fits a run of `steps` steps on a latent of `dims`.
    pub fn take_resume(&mut self, steps: u32, dims: &[usize]) -> Option<SamplingState> {
        let state = self.resume.take()?;
        (state.steps == steps && state.dims == dims && state.step < steps).then(|| {
            self.resumed_from = state.step;
            state
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> SamplingState {
        SamplingState {
            step: 4,
            steps: 10,
            dims: vec![2, 1, 3],
            values: vec![0.5, -1.0, 2.0, 3.25, f32::MIN_POSITIVE, -0.0],
        }
    }

    #[test]
    fn a_checkpoint_reads_back_exactly() {
        let fingerprint = [7; 32];
        let bytes = state().encode(&fingerprint);
        assert_eq!(SamplingState::decode(&bytes, &fingerprint), Ok(state()));
    }

    #[test]
    fn damaged_foreign_and_finished_checkpoints_are_refused() {
        let fingerprint = [7; 32];
        let bytes = state().encode(&fingerprint);
        let mut flipped = bytes.clone();
        flipped[60] ^= 1;
        assert!(
            SamplingState::decode(&flipped, &fingerprint)
                .unwrap_err()
                .contains("damaged")
        );
        assert!(
            SamplingState::decode(&bytes, &[8; 32])
                .unwrap_err()
                .contains("another task")
        );
        assert!(SamplingState::decode(&bytes[..40], &fingerprint).is_err());
        let done = SamplingState {
            step: 10,
            ..state()
        };
        assert!(
            SamplingState::decode(&done.encode(&fingerprint), &fingerprint)
                .unwrap_err()
                .contains("partway")
        );
        let lying = SamplingState {
            dims: vec![2, 1, 4],
            ..state()
        };
        assert!(
            SamplingState::decode(&lying.encode(&fingerprint), &fingerprint)
                .unwrap_err()
                .contains("need 32")
        );
        let huge = SamplingState {
            dims: vec![usize::MAX, 2],
            ..state()
        };
        assert!(SamplingState::decode(&huge.encode(&fingerprint), &fingerprint).is_err());
    }

    #[test]
    fn fingerprints_separate_fields() {
        assert_ne!(fingerprint(&[b"ab", b"c"]), fingerprint(&[b"a", b"bc"]));
        assert_eq!(fingerprint(&[b"ab", b"c"]), fingerprint(&[b"ab", b"c"]));
    }

    #[test]
    fn saves_fall_on_multiples_and_never_on_the_last_step() {
        let mut save = |_: &SamplingState| Ok(());
        let mut checkpoints = Checkpoints {
            every: 4,
            ..Checkpoints::off(&mut save)
        };
        let due: Vec<u32> = (1..=8).filter(|done| checkpoints.due(*done, 8)).collect();
        assert_eq!(due, vec![4]);
        checkpoints.every = 0;
        assert!(!checkpoints.due(4, 8));
    }

    #[test]
    fn a_state_that_does_not_fit_the_run_is_ignored() {
        let mut save = |_: &SamplingState| Ok(());
        let mut checkpoints = Checkpoints {
            resume: Some(state()),
            ..Checkpoints::off(&mut save)
        };
        assert_eq!(checkpoints.take_resume(12, &[2, 1, 3]), None);
        assert_eq!(checkpoints.resumed_from, 0);
        checkpoints.resume = Some(state());
        assert_eq!(checkpoints.take_resume(10, &[2, 1, 3]), Some(state()));
        assert_eq!(checkpoints.resumed_from, 4);
    }
}
