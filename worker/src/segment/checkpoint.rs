//! A segment's checkpoint in the object store: read before the render (a lost attempt's
//! progress to resume from, if it belongs to this very task) and written from the render
//! thread every time the model saves. A checkpoint is an optimisation: one that cannot be
//! read or written is logged and the render goes on from noise, never fails.

use std::sync::Arc;

use reelfarm_common::blob::BlobStore;
use reelfarm_common::{Error, pb};
use reelfarm_models::SamplingState;
use reelfarm_models::checkpoint::fingerprint;
use tracing::{info, warn};

pub(crate) struct Store {
    /// Empty: checkpoints are off for this task.
    key: String,
    store: Arc<dyn BlobStore>,
    fingerprint: [u8; 32],
    /// The state to start from, when a valid one was found.
    pub resume: Option<SamplingState>,
    runtime: tokio::runtime::Handle,
    segment_id: String,
}

/// Everything that decides the segment's latents; the attempt, output keys and memory mode
/// do not, so every attempt of the task shares one fingerprint.
fn task_fingerprint(task: &pb::SegmentTask) -> [u8; 32] {
    fingerprint(&[
        task.segment_id.as_bytes(),
        task.model.as_bytes(),
        task.prompt.as_bytes(),
        task.negative.as_bytes(),
        &task.width.to_le_bytes(),
        &task.height.to_le_bytes(),
        &task.fps.to_le_bytes(),
        &task.render_frames.to_le_bytes(),
        &task.steps.to_le_bytes(),
        &task.guidance.to_bits().to_le_bytes(),
        &task.seed.to_le_bytes(),
        task.condition_key.as_bytes(),
        task.condition_crc32c.as_bytes(),
    ])
}

impl Store {
    /// Reads the task's checkpoint when the task has one (called on the async side).
    pub async fn open(task: &pb::SegmentTask, store: Arc<dyn BlobStore>) -> Store {
        let on = task.checkpoint_every > 0 && !task.checkpoint_key.is_empty();
        let mut checkpoint = Store {
            key: if on {
                task.checkpoint_key.clone()
            } else {
                String::new()
            },
            store,
            fingerprint: task_fingerprint(task),
            resume: None,
            runtime: tokio::runtime::Handle::current(),
            segment_id: task.segment_id.clone(),
        };
        if !on {
            return checkpoint;
        }
        let key = &checkpoint.key;
        match checkpoint.store.get(key).await {
            // Hashing and decoding tens of MB: off the runtime's threads.
            Ok(bytes) => match tokio::task::spawn_blocking({
                let fingerprint = checkpoint.fingerprint;
                move || SamplingState::decode(&bytes, &fingerprint)
            })
            .await
            .unwrap_or_else(|error| Err(format!("decoding thread failed: {error}")))
            {
                Ok(state) => {
                    info!(
                        segment = %task.segment_id,
                        step = state.step,
                        steps = state.steps,
                        "an earlier attempt's checkpoint: resuming from its step"
                    );
                    checkpoint.resume = Some(state);
                }
                Err(reason) => warn!(
                    %key, %reason,
                    "checkpoint ignored: rendering from step 0"
                ),
            },
            Err(Error::NotFound(_)) => {}
            Err(error) => warn!(%key, %error, "checkpoint unreadable: rendering from step 0"),
        }
        checkpoint
    }

    /// Writes `state` and waits for the store, on the render thread (a blocking-pool thread,
    /// where waiting on the runtime is allowed): a save that returned is one a later
    /// attempt can find.
    pub fn save(&self, state: &SamplingState) {
        if self.key.is_empty() {
            return;
        }
        let bytes = state.encode(&self.fingerprint);
        let size = bytes.len();
        match self
            .runtime
            .block_on(self.store.put(&self.key, bytes.into()))
        {
            Ok(()) => info!(
                segment = %self.segment_id,
                step = state.step,
                steps = state.steps,
                bytes = size,
                "checkpoint saved"
            ),
            Err(error) => warn!(key = %self.key, %error, "checkpoint not saved; rendering on"),
        }
    }
}
