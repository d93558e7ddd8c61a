//! What every task run shares: the failure type that maps to the protocol's reason classes,
//! timing of phases, and the progress channel from blocking model code to the reporter.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use reelfarm_common::blob::BlobStore;
use reelfarm_common::{pb, unix_now_s};
use tokio::sync::mpsc;

/// Why a task ended without a result, in the protocol's reason classes.
#[derive(Debug, Clone)]
pub struct TaskFailure {
    pub reason: pb::FailureReason,
    pub message: String,
    /// With `CorruptInput`: the inputs whose bytes failed their checksum.
    pub corrupt_keys: Vec<String>,
    /// A hosted segment's remote job can give nothing (failed, gone, an unusable clip):
    /// the scheduler forgets it, so the next attempt creates another.
    pub remote_job_unusable: bool,
}

impl TaskFailure {
    pub fn new(reason: pb::FailureReason, message: impl Into<String>) -> Self {
        TaskFailure {
            reason,
            message: message.into(),
            corrupt_keys: Vec::new(),
            remote_job_unusable: false,
        }
    }

    pub fn storage(error: reelfarm_common::Error) -> Self {
        TaskFailure::new(pb::FailureReason::StorageError, error.to_string())
    }

    /// An input's stored bytes do not match its checksum: the scheduler renders its producer
    /// again.
    pub fn corrupt(key: &str, message: impl Into<String>) -> Self {
        TaskFailure {
            corrupt_keys: vec![key.to_string()],
            ..TaskFailure::new(pb::FailureReason::CorruptInput, message)
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        TaskFailure::new(pb::FailureReason::InvalidTask, message)
    }

    /// This failure says the attempt's remote job can give nothing.
    pub fn with_unusable_remote_job(self) -> Self {
        TaskFailure {
            remote_job_unusable: true,
            ..self
        }
    }
}

impl From<reelfarm_stitch::StitchError> for TaskFailure {
    fn from(error: reelfarm_stitch::StitchError) -> Self {
        use reelfarm_stitch::StitchError;
        if let StitchError::Fetch {
            key,
            message,
            corrupt,
        } = &error
        {
            return if *corrupt {
                TaskFailure::corrupt(key, message.clone())
            } else {
                TaskFailure::new(pb::FailureReason::StorageError, message.clone())
            };
        }
        let reason = match &error {
            StitchError::Fetch { .. } => pb::FailureReason::StorageError,
            StitchError::Cancelled => pb::FailureReason::Cancelled,
            StitchError::InvalidInput(_) => pb::FailureReason::InvalidTask,
            StitchError::Video(_) | StitchError::Internal(_) => pb::FailureReason::ModelError,
        };
        TaskFailure::new(reason, error.to_string())
    }
}

impl From<reelfarm_media::video::VideoError> for TaskFailure {
    fn from(error: reelfarm_media::video::VideoError) -> Self {
        TaskFailure::new(pb::FailureReason::ModelError, format!("video: {error}"))
    }
}

impl From<reelfarm_models::ModelError> for TaskFailure {
    fn from(error: reelfarm_models::ModelError) -> Self {
        use reelfarm_models::ModelError;
        let reason = match &error {
            ModelError::Cancelled => pb::FailureReason::Cancelled,
            ModelError::OutOfMemory(_) => pb::FailureReason::OutOfMemory,
            ModelError::InvalidRequest(_) => pb::FailureReason::InvalidTask,
            _ => pb::FailureReason::ModelError,
        };
        TaskFailure::new(reason, error.to_string())
    }
}

/// CRC32C as the farm records it: 8 lowercase hex digits.
pub fn crc32c_hex(bytes: &[u8]) -> String {
    format!("{:08x}", crc32c::crc32c(bytes))
}

/// Reads an input and checks it against the checksum its producer recorded (none: a
/// reference image, not checked here). A mismatch, or the store's own checksum failing,
/// is a corrupt input naming the key.
pub async fn fetch_verified(
    store: &dyn BlobStore,
    key: &str,
    recorded_crc32c: &str,
) -> Result<bytes::Bytes, TaskFailure> {
    let bytes = match store.get(key).await {
        Ok(bytes) => bytes,
        Err(reelfarm_common::Error::Corrupt(message)) => {
            return Err(TaskFailure::corrupt(key, message));
        }
        // Recorded when it was written and gone now (a reused segment whose sequence was
        // deleted): as good as corrupt, so its producer renders it again.
        Err(reelfarm_common::Error::NotFound(message)) if !recorded_crc32c.is_empty() => {
            return Err(TaskFailure::corrupt(key, message));
        }
        Err(error) => return Err(TaskFailure::storage(error)),
    };
    if !recorded_crc32c.is_empty() {
        let actual = crc32c_hex(&bytes);
        if actual != recorded_crc32c {
            return Err(TaskFailure::corrupt(
                key,
                format!(
                    "{key}: crc32c {actual} of the {} bytes read differs from the {recorded_crc32c} recorded when it was written",
                    bytes.len()
                ),
            ));
        }
    }
    Ok(bytes)
}

/// Puts an object and describes it for the completion: key, checksum, size.
pub async fn put_recorded(
    store: &dyn BlobStore,
    key: &str,
    bytes: Vec<u8>,
) -> Result<pb::StoredObject, TaskFailure> {
    let object = pb::StoredObject {
        key: key.to_string(),
        crc32c: crc32c_hex(&bytes),
        size: bytes.len() as u64,
    };
    store
        .put(key, bytes.into())
        .await
        .map_err(TaskFailure::storage)?;
    Ok(object)
}

/// Wall-clock stretches of work, reported with the result for throughput accounting.
#[derive(Debug, Default, Clone)]
pub struct Phases(pub Vec<pb::TimedPhase>);

impl Phases {
    /// Runs `work` and records it as a phase of `kind`.
    pub fn time<T>(&mut self, kind: &str, task_id: &str, work: impl FnOnce() -> T) -> T {
        let start = unix_now_s();
        let value = work();
        self.record(kind, task_id, start);
        value
    }

    pub fn record(&mut self, kind: &str, task_id: &str, start_unix_s: f64) {
        self.0.push(pb::TimedPhase {
            kind: kind.into(),
            start_unix_s,
            end_unix_s: unix_now_s(),
            task_id: task_id.into(),
        });
    }

    pub fn extend(&mut self, other: Phases) {
        self.0.extend(other.0);
    }
}

/// Progress from blocking code: non-blocking sends of (done, total), checked cancellation.
#[derive(Clone)]
pub struct Progress {
    sender: mpsc::UnboundedSender<(u64, u64)>,
    cancel: Arc<AtomicBool>,
}

impl Progress {
    pub fn new(sender: mpsc::UnboundedSender<(u64, u64)>, cancel: Arc<AtomicBool>) -> Self {
        Progress { sender, cancel }
    }

    pub fn report(&self, done: u64, total: u64) {
        let _reporter_gone = self.sender.send((done, total));
    }

    pub fn cancel_flag(&self) -> &AtomicBool {
        &self.cancel
    }

    pub fn check_cancelled(&self) -> Result<(), TaskFailure> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(TaskFailure::new(pb::FailureReason::Cancelled, "cancelled"));
        }
        Ok(())
    }
}

impl reelfarm_stitch::Progress for Progress {
    fn report(&self, done: u64, total: u64) {
        Progress::report(self, done, total);
    }

    fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}
