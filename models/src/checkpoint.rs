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

const MAGIC: &[u8; 8] = b"RFCKPT02";
/// More dimensions than any latent has: a header claiming more is hostile or broken.
const MAX_RANK: usize = 8;
/// More tensors or counters than any sampler carries (Wan's UniPC: the latent, two
/// predictions and a sample).
const MAX_PARTS: usize = 16;

/// One float32 tensor of a sampling state.
#[derive(Clone, Debug, PartialEq)]
pub struct StateTensor {
    pub dims: Vec<usize>,
    pub values: Vec<f32>,
}

/// A run's state after `step` of its `steps` denoising steps: the latent first, then what the
/// sampler carries from one step to the next (a multistep sampler's history), and the
/// sampler's small counters.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingState {
    pub step: u32,
    pub steps: u32,
    pub tensors: Vec<StateTensor>,
    pub counters: Vec<u64>,
}

/// Reads the stored form front to back, refusing anything short.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, count: usize) -> Result<&[u8], String> {
        if self.0.len() < count {
            return Err("it is cut short".into());
        }
        let (head, rest) = self.0.split_at(count);
        self.0 = rest;
        Ok(head)
    }

    fn word(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn long(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn count(&mut self, what: &str, max: usize) -> Result<usize, String> {
        let count = self.word()? as usize;
        if count > max {
            return Err(format!("{count} {what} is more than {max}"));
        }
        Ok(count)
    }
}

impl SamplingState {
    /// The stored form, bound to `fingerprint` (the task's).
    pub fn encode(&self, fingerprint: &[u8; 32]) -> Vec<u8> {
        let values: usize = self.tensors.iter().map(|tensor| tensor.values.len()).sum();
        let mut bytes = Vec::with_capacity(128 + 4 * values);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(fingerprint);
        bytes.extend_from_slice(&self.step.to_le_bytes());
        bytes.extend_from_slice(&self.steps.to_le_bytes());
        bytes.extend_from_slice(&(self.counters.len() as u32).to_le_bytes());
        for counter in &self.counters {
            bytes.extend_from_slice(&counter.to_le_bytes());
        }
        bytes.extend_from_slice(&(self.tensors.len() as u32).to_le_bytes());
        for tensor in &self.tensors {
            bytes.extend_from_slice(&(tensor.dims.len() as u32).to_le_bytes());
            for dim in &tensor.dims {
                bytes.extend_from_slice(&(*dim as u64).to_le_bytes());
            }
            for value in &tensor.values {
                bytes.extend_from_slice(&value.to_le_bytes());
            }
        }
        let digest = Sha256::digest(&bytes);
        bytes.extend_from_slice(&digest);
        bytes
    }

    /// Reads a stored checkpoint; refuses one that is damaged, made for another task
    /// (`fingerprint`), or not a state partway through a run.
    pub fn decode(bytes: &[u8], fingerprint: &[u8; 32]) -> Result<SamplingState, String> {
        if bytes.len() < MAGIC.len() + 32 + 32 {
            return Err(format!(
                "{} bytes is too short for a checkpoint",
                bytes.len()
            ));
        }
        let (body, digest) = bytes.split_at(bytes.len() - 32);
        if Sha256::digest(body).as_slice() != digest {
            return Err("its SHA-256 does not match its contents (damaged)".into());
        }
        let mut reader = Reader(body);
        if reader.take(MAGIC.len())? != MAGIC {
            return Err("it does not start with a reelfarm checkpoint header".into());
        }
        if reader.take(32)? != fingerprint {
            return Err("it was made for another task (its fingerprint differs)".into());
        }
        let (step, steps) = (reader.word()?, reader.word()?);
        if step == 0 || step >= steps {
            return Err(format!(
                "step {step} of {steps} is not partway through a run"
            ));
        }
        let counters = (0..reader.count("counters", MAX_PARTS)?)
            .map(|_| reader.long())
            .collect::<Result<Vec<_>, _>>()?;
        let tensor_count = reader.count("tensors", MAX_PARTS)?;
        if tensor_count == 0 {
            return Err("it holds no latent".into());
        }
        let mut tensors = Vec::with_capacity(tensor_count);
        for _ in 0..tensor_count {
            let rank = reader.count("dimensions", MAX_RANK)?;
            if rank == 0 {
                return Err("a tensor of rank 0".into());
            }
            let mut dims = Vec::with_capacity(rank);
            let mut count: usize = 1;
            for _ in 0..rank {
                let dim = reader.long()?;
                let dim =
                    usize::try_from(dim).map_err(|_| format!("dimension {dim} is too large"))?;
                count = count
                    .checked_mul(dim)
                    .ok_or_else(|| "its dimensions overflow".to_string())?;
                dims.push(dim);
            }
            let length = count
                .checked_mul(4)
                .filter(|length| *length <= reader.0.len())
                .ok_or_else(|| {
                    format!(
                        "its dimensions {dims:?} need more bytes than the {} left",
                        reader.0.len()
                    )
                })?;
            let values = reader
                .take(length)?
                .chunks_exact(4)
                .map(|chunk| f32::from_le_bytes(chunk.try_into().expect("4 bytes")))
                .collect();
            tensors.push(StateTensor { dims, values });
        }
        if !reader.0.is_empty() {
            return Err(format!("{} bytes follow the last tensor", reader.0.len()));
        }
        Ok(SamplingState {
            step,
            steps,
            tensors,
            counters,
        })
    }

    /// The latent (the first tensor).
    pub fn latent(&self) -> &StateTensor {
        &self.tensors[0]
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
        let fits = state
            .tensors
            .first()
            .is_some_and(|latent| latent.dims == dims);
        (fits && state.steps == steps && state.step < steps).then(|| {
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
            tensors: vec![
                StateTensor {
                    dims: vec![2, 1, 3],
                    values: vec![0.5, -1.0, 2.0, 3.25, f32::MIN_POSITIVE, -0.0],
                },
                StateTensor {
                    dims: vec![1],
                    values: vec![7.0],
                },
            ],
            counters: vec![2, 0, u64::MAX],
        }
    }

    fn with_latent(dims: Vec<usize>) -> SamplingState {
        let count = dims
            .iter()
            .try_fold(1usize, |count, dim| count.checked_mul(*dim))
            .unwrap_or(64)
            .min(64);
        SamplingState {
            tensors: vec![StateTensor {
                dims,
                values: vec![0.0; count],
            }],
            ..state()
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
        let lying = with_latent(vec![2, 1, 40]);
        assert!(
            SamplingState::decode(&lying.encode(&fingerprint), &fingerprint)
                .unwrap_err()
                .contains("need more bytes")
        );
        let huge = with_latent(vec![usize::MAX, 2]);
        assert!(SamplingState::decode(&huge.encode(&fingerprint), &fingerprint).is_err());
        let empty = SamplingState {
            tensors: Vec::new(),
            ..state()
        };
        assert!(
            SamplingState::decode(&empty.encode(&fingerprint), &fingerprint)
                .unwrap_err()
                .contains("no latent")
        );
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
        checkpoints.resume = Some(state());
        assert_eq!(
            checkpoints.take_resume(10, &[2, 1, 4]),
            None,
            "another latent shape"
        );
        assert_eq!(checkpoints.resumed_from, 0);
        checkpoints.resume = Some(state());
        assert_eq!(checkpoints.take_resume(10, &[2, 1, 3]), Some(state()));
        assert_eq!(checkpoints.resumed_from, 4);
    }
}
