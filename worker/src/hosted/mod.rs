//! Hosted segments: a worker started with `--hosted` renders the catalog's `openai-videos`
//! models by calling their API instead of a GPU. Its devices are concurrency slots
//! (`slots`), so placement sends it at most that many segments at once, beside the GPU
//! workers and under the same fair share. One segment's life:
//!
//! 1. the conditioning picture (a continuation's handoff frame, a shot's reference) is
//!    scaled and cropped to the clip size and sent as `input_reference`;
//! 2. the job is created, and its id is recorded on the task through the scheduler
//!    (durably) before any polling: a later attempt polls that job and never pays for a
//!    second (`SegmentTask.remote_job_id`);
//! 3. the job is polled with backoff, its `progress` feeding the progress bar;
//! 4. the clip is downloaded and becomes a segment like any other (`clip.rs`: retimed to the
//!    sequence's rate, scaled and cropped to its frame, trimmed; then the shared encoder
//!    writes frames, sidecar and handoff frame).
//!
//! Cancelling deletes the remote job; a worker shutting down leaves it running for the next
//! attempt to collect.

mod api;
mod clip;
mod pace;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reelfarm_common::blob::BlobStore;
use reelfarm_common::{pb, unix_now_s};
use reelfarm_media::video::{decode_png, encode_png};
use reelfarm_models::catalog::hosted::HOSTED_SLOT_BYTES;
use reelfarm_models::{Backend, Catalog, KeySource};

pub use api::{Api, ApiError, Video};

use crate::segment::{SegmentResult, check_shape, encode_clip, store_encoded};
use crate::task::{Phases, Progress, TaskFailure, fetch_verified};

/// The first and the longest wait between two polls of a job.
const FIRST_POLL: Duration = Duration::from_millis(500);
const MAX_POLL: Duration = Duration::from_secs(15);

/// One hosted model this worker calls.
pub struct HostedModel {
    pub id: String,
    pub api: Api,
    /// Its own concurrency limit (the worker's slots are the largest of them).
    jobs: tokio::sync::Semaphore,
}

/// Every `openai-videos` entry of the catalog, with its key read from where the entry says.
/// A key that cannot be read stops the worker, naming the model and the place (never the key).
pub fn load_hosted(catalog: &Catalog) -> Result<Vec<Arc<HostedModel>>, crate::Error> {
    let mut models = Vec::new();
    for entry in catalog.entries() {
        if entry.backend != Backend::OpenAiVideos {
            continue;
        }
        let Some(spec) = entry.hosted.clone() else {
            continue;
        };
        let key = match &spec.key {
            KeySource::Env(name) => std::env::var(name).map_err(|_| {
                crate::Error::InvalidArgument(format!(
                    "model {}: the API key variable {name} is not set (catalog api_key_env)",
                    entry.id
                ))
            })?,
            KeySource::File(path) => std::fs::read_to_string(path)
                .map_err(|error| {
                    crate::Error::InvalidArgument(format!(
                        "model {}: the API key file {path}: {error} (catalog api_key_file)",
                        entry.id
                    ))
                })?
                .trim()
                .to_string(),
        };
        if key.is_empty() || key.chars().any(|c| c.is_control()) {
            return Err(crate::Error::InvalidArgument(format!(
                "model {}: the API key is empty or not one line",
                entry.id
            )));
        }
        let jobs = tokio::sync::Semaphore::new(spec.max_concurrent_jobs as usize);
        let api = Api::new(spec, key)
            .map_err(|error| crate::Error::Internal(format!("model {}: {error}", entry.id)))?;
        models.push(Arc::new(HostedModel {
            id: entry.id.clone(),
            api,
            jobs,
        }));
    }
    Ok(models)
}

/// The devices of a hosted worker: `count` concurrency slots, each holding one segment.
pub fn slots(count: u32) -> Vec<pb::Device> {
    (0..count.max(1))
        .map(|index| pb::Device {
            index,
            kind: "hosted".into(),
            name: format!("hosted slot {index}"),
            memory_total_bytes: HOSTED_SLOT_BYTES,
            memory_free_bytes: HOSTED_SLOT_BYTES,
            class: "hosted".into(),
            speed: 1.0,
            ..Default::default()
        })
        .collect()
}

/// What a hosted segment hands back besides the segment: what it cost.
pub struct HostedResult {
    pub segment: SegmentResult,
    pub cost_usd: f64,
}

/// Records a created job with the scheduler; `Err` when the scheduler refused it (the
/// assignment is no longer current).
pub type RecordJob = Box<
    dyn Fn(String) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

pub async fn run_hosted_segment(
    task: pb::SegmentTask,
    model: Arc<HostedModel>,
    store: Arc<dyn BlobStore>,
    progress: Progress,
    record_job: RecordJob,
    handing_back: Arc<AtomicBool>,
) -> Result<HostedResult, TaskFailure> {
    check_shape(&task)?;
    let spec = model.api.spec().clone();
    let seconds = task.clip_seconds;
    if !spec.clip_seconds.contains(&seconds)
        || u64::from(seconds) * u64::from(task.fps) < task.render_frames
    {
        return Err(TaskFailure::invalid(format!(
            "segment {}: a {seconds} s clip of {} does not hold its {} frames at {} fps",
            task.segment_id, model.id, task.render_frames, task.fps
        )));
    }
    let size = spec.nearest_size(task.width, task.height);
    let _job_slot = model
        .jobs
        .acquire()
        .await
        .map_err(|_| TaskFailure::invalid("the hosted model's job limit closed"))?;
    let mut phases = Phases::default();
    let started = unix_now_s();
    let job_id = if task.remote_job_id.is_empty() {
        let reference = match task.condition_key.is_empty() {
            true => None,
            false => {
                let bytes =
                    fetch_verified(store.as_ref(), &task.condition_key, &task.condition_crc32c)
                        .await?;
                let picture = decode_png(&bytes).map_err(|error| {
                    TaskFailure::invalid(format!(
                        "conditioning frame {}: {error}",
                        task.condition_key
                    ))
                })?;
                Some(encode_png(&picture.cover(size.0, size.1))?)
            }
        };
        progress.check_cancelled()?;
        let video = model
            .api
            .create(&task.prompt, seconds, size, reference.as_deref())
            .await
            .map_err(|error| api_failure(&model.id, "create", &error))?;
        tracing::info!(segment = %task.segment_id, model = %model.id, job = %video.id, "remote job created");
        if let Err(refused) = record_job(video.id.clone()).await {
            // Another attempt owns the segment now: this job would be paid for nothing.
            let _ = model.api.delete(&video.id).await;
            return Err(TaskFailure::new(
                pb::FailureReason::Cancelled,
                format!("remote job {} not recorded ({refused}); deleted", video.id),
            ));
        }
        video.id
    } else {
        tracing::info!(segment = %task.segment_id, job = %task.remote_job_id, "polling the remote job an earlier attempt created");
        task.remote_job_id.clone()
    };
    let polled = poll(&model, &job_id, &progress).await;
    if let Err(failure) = &polled
        && failure.reason == pb::FailureReason::Cancelled
        && !handing_back.load(Ordering::Relaxed)
    {
        // Cancelled for good (not handed back to another attempt): stop paying for it.
        match model.api.delete(&job_id).await {
            Ok(()) => tracing::info!(job = %job_id, "cancelled remote job deleted"),
            Err(error) => tracing::warn!(job = %job_id, %error, "cancelled remote job not deleted"),
        }
    }
    polled?;
    let content = model
        .api
        .content(&job_id)
        .await
        .map_err(|error| api_failure(&model.id, "download", &error))?;
    phases.record("model", &task.segment_id, started);
    let model_seconds = unix_now_s() - started;
    let blocking_task = task.clone();
    let encoded = tokio::task::spawn_blocking(move || {
        let clip = clip::from_mp4(content.to_vec(), &blocking_task)?;
        encode_clip(&blocking_task, &clip, phases, model_seconds, 0)
    })
    .await
    .map_err(|error| {
        TaskFailure::new(
            pb::FailureReason::ModelError,
            format!("clip conversion failed: {error}"),
        )
    })??;
    let segment = store_encoded(&task, encoded, store.as_ref(), Phases::default()).await?;
    Ok(HostedResult {
        segment,
        cost_usd: spec.cost_usd(seconds),
    })
}

/// Polls until the job completes, with backoff; `progress` (0-100) goes to the progress bar.
async fn poll(model: &HostedModel, job_id: &str, progress: &Progress) -> Result<(), TaskFailure> {
    let mut wait = FIRST_POLL;
    loop {
        progress.check_cancelled()?;
        let video = model
            .api
            .retrieve(job_id)
            .await
            .map_err(|error| api_failure(&model.id, "retrieve", &error))?;
        match video.status.as_str() {
            "completed" => {
                progress.report(100, 100);
                return Ok(());
            }
            "failed" => {
                let reason = video
                    .error
                    .map(|error| {
                        format!(
                            "{}: {}",
                            error.code.unwrap_or_default(),
                            error.message.unwrap_or_default()
                        )
                    })
                    .unwrap_or_else(|| "no reason given".into());
                return Err(TaskFailure::new(
                    pb::FailureReason::ModelError,
                    format!("model {}: remote job {job_id} failed: {reason}", model.id),
                ));
            }
            _ => {
                let done = video.progress.unwrap_or(0.0).clamp(0.0, 99.0) as u64;
                progress.report(done, 100);
            }
        }
        // Sleep in short steps so a cancel is seen promptly.
        let until = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < until {
            progress.check_cancelled()?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        wait = (wait * 3 / 2).min(MAX_POLL);
    }
}

fn api_failure(model: &str, what: &str, error: &ApiError) -> TaskFailure {
    let reason = match error {
        ApiError::Refused { .. } => pb::FailureReason::InvalidTask,
        ApiError::Unavailable(_) => pb::FailureReason::ModelError,
    };
    TaskFailure::new(reason, format!("model {model}: {what}: {error}"))
}
