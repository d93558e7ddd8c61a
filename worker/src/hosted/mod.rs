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
//! A cancel that discards the work (its sequence was cancelled or failed) deletes the
//! remote job; one that only fences this attempt off, a take-back and a worker shutting down
//! leave it running for the next attempt to collect. Only a job that can give nothing (it
//! failed, is gone, its clip cannot be read) is reported unusable, so the next attempt
//! creates another.

mod api;
mod clip;
mod pace;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reelfarm_common::blob::BlobStore;
use reelfarm_common::{pb, unix_now_s};
use reelfarm_media::video::{decode_png, encode_png};
use reelfarm_models::catalog::hosted::{HOSTED_DEVICE_KIND, HOSTED_SLOT_BYTES};
use reelfarm_models::{Backend, Catalog, KeySource};

pub use api::{Api, ApiError, Video};

use crate::segment::{SegmentResult, check_shape, encode_clip, store_encoded};
use crate::task::{Phases, Progress, TaskFailure, fetch_verified};

/// The first and the longest wait between two polls of a job.
const FIRST_POLL: Duration = Duration::from_millis(500);
const MAX_POLL: Duration = Duration::from_secs(15);
/// A job not finished after this long is given up (deleted, and created anew by the next
/// attempt).
const MAX_JOB_TIME: Duration = Duration::from_secs(2 * 3600);
/// How often a segment waiting for its model's job limit tells the scheduler it is alive.
const WAITING_REPORT: Duration = Duration::from_secs(5);

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

/// The devices of a hosted worker: `count` concurrency slots, each holding one hosted
/// segment, and `share` of this machine's CPU and memory for the stitches it also takes
/// (placement keeps stitches off the slots and hosted segments off the CPU).
pub fn devices(count: u32, share: f64) -> Vec<pb::Device> {
    let slots = count.max(1);
    let mut devices: Vec<pb::Device> = (0..slots)
        .map(|index| pb::Device {
            index,
            kind: HOSTED_DEVICE_KIND.into(),
            name: format!("hosted slot {index}"),
            memory_total_bytes: HOSTED_SLOT_BYTES,
            memory_free_bytes: HOSTED_SLOT_BYTES,
            class: "hosted".into(),
            speed: 1.0,
            ..Default::default()
        })
        .collect();
    devices.push(pb::Device {
        index: slots,
        name: "cpu (stitching)".into(),
        ..crate::inventory::cpu_device(share)
    });
    devices
}

/// What a hosted segment hands back besides the segment: what it cost.
pub struct HostedResult {
    pub segment: SegmentResult,
    pub cost_usd: f64,
}

/// Why a created job is not on the task's record.
#[derive(Debug)]
pub enum NotRecorded {
    /// The scheduler answered no: the assignment is no longer current (another attempt
    /// owns the segment), or the task already has another job.
    Refused(String),
    /// No scheduler answered in time: the record may or may not have been made.
    Unanswered(String),
}

/// Records a created job with the scheduler.
pub type RecordJob = Box<
    dyn Fn(String) -> std::pin::Pin<Box<dyn Future<Output = Result<(), NotRecorded>> + Send>>
        + Send
        + Sync,
>;

pub async fn run_hosted_segment(
    task: pb::SegmentTask,
    model: Arc<HostedModel>,
    store: Arc<dyn BlobStore>,
    progress: Progress,
    record_job: RecordJob,
    discard: Arc<AtomicBool>,
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
    // The model's own job limit may be below the worker's slots: wait for a turn, saying
    // so, so the scheduler does not take the segment back as stalled.
    let _job_slot = loop {
        progress.check_cancelled()?;
        match tokio::time::timeout(WAITING_REPORT, model.jobs.acquire()).await {
            Ok(permit) => {
                break permit
                    .map_err(|_| TaskFailure::invalid("the hosted model's job limit closed"))?;
            }
            Err(_) => progress.report(0, 100),
        }
    };
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
        // The same key for every try of this attempt's create: a service that honours it
        // answers a retried create with the job it already made.
        let idempotency_key = format!("{}-{}", task.output_prefix, seconds);
        let video = model
            .api
            .create(
                &task.prompt,
                seconds,
                size,
                reference.as_deref(),
                &idempotency_key,
            )
            .await
            .map_err(|error| api_failure(&model.id, "create", &error))?;
        tracing::info!(segment = %task.segment_id, model = %model.id, job = %video.id, "remote job created");
        match record_job(video.id.clone()).await {
            Ok(()) => {}
            Err(NotRecorded::Refused(reason)) => {
                // Another attempt owns the segment now: this job would be paid for nothing.
                let _ = model.api.delete(&video.id).await;
                return Err(TaskFailure::new(
                    pb::FailureReason::Cancelled,
                    format!("remote job {} not recorded ({reason}); deleted", video.id),
                ));
            }
            Err(NotRecorded::Unanswered(reason)) => {
                // It may be on the record: left running for the next attempt to collect.
                return Err(TaskFailure::new(
                    pb::FailureReason::WorkerLost,
                    format!(
                        "remote job {} created but no scheduler answered ({reason})",
                        video.id
                    ),
                ));
            }
        }
        video.id
    } else {
        tracing::info!(segment = %task.segment_id, job = %task.remote_job_id, "polling the remote job an earlier attempt created");
        task.remote_job_id.clone()
    };
    let polled = poll(&model, &job_id, &progress).await;
    let discarded = discard.load(Ordering::Relaxed);
    if let Err(failure) = &polled
        && (failure.remote_job_unusable
            || (failure.reason == pb::FailureReason::Cancelled && discarded))
    {
        // Not wanted any more, or it can give nothing: stop paying for it.
        match model.api.delete(&job_id).await {
            Ok(()) => tracing::info!(job = %job_id, "remote job deleted"),
            Err(error) => tracing::warn!(job = %job_id, %error, "remote job not deleted"),
        }
    }
    polled?;
    let content = or_cancelled(&progress, model.api.content(&job_id))
        .await?
        .map_err(|error| api_failure(&model.id, "download", &error))?;
    phases.record("model", &task.segment_id, started);
    let model_seconds = unix_now_s() - started;
    let blocking_task = task.clone();
    let encoded = tokio::task::spawn_blocking(move || {
        // A clip that cannot be read or is too short is unusable: the next attempt makes
        // another (the store and the encoder fail other ways).
        let clip = clip::from_mp4(content.to_vec(), &blocking_task)
            .map_err(TaskFailure::with_unusable_remote_job)?;
        encode_clip(&blocking_task, &clip, phases, model_seconds, 0)
            .map_err(TaskFailure::with_unusable_remote_job)
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
    let started = tokio::time::Instant::now();
    loop {
        progress.check_cancelled()?;
        if started.elapsed() > MAX_JOB_TIME {
            return Err(TaskFailure::new(
                pb::FailureReason::ModelError,
                format!(
                    "model {}: remote job {job_id} unfinished after {} minutes; given up",
                    model.id,
                    MAX_JOB_TIME.as_secs() / 60
                ),
            )
            .with_unusable_remote_job());
        }
        let video = or_cancelled(progress, model.api.retrieve(job_id))
            .await?
            .map_err(|error| api_failure(&model.id, "retrieve", &error))?;
        match video.status.as_str() {
            // OpenAI's word, and Azure's older jobs API's.
            "completed" | "succeeded" => {
                progress.report(100, 100);
                return Ok(());
            }
            "queued" | "in_progress" | "pending" | "preprocessing" | "running" | "processing" => {
                let done = video.progress.unwrap_or(0.0).clamp(0.0, 99.0) as u64;
                progress.report(done, 100);
            }
            "failed" | "cancelled" | "canceled" | "expired" => {
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
                    format!(
                        "model {}: remote job {job_id} {}: {reason}",
                        model.id, video.status
                    ),
                )
                .with_unusable_remote_job());
            }
            other => {
                // A status this client does not know: not polled for ever. The job is kept
                // for the next attempt, which may know better after an upgrade.
                return Err(TaskFailure::new(
                    pb::FailureReason::ModelError,
                    format!(
                        "model {}: remote job {job_id} has status {other:?}, which reelfarm does not know",
                        model.id
                    ),
                ));
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

/// `call`'s answer, or the attempt's cancellation while it waits (its retries and their
/// sleeps included). Only for calls that are safe to walk away from: never a create, whose
/// job would then be paid for and unknown.
async fn or_cancelled<T>(
    progress: &Progress,
    call: impl Future<Output = T>,
) -> Result<T, TaskFailure> {
    tokio::pin!(call);
    loop {
        tokio::select! {
            answer = &mut call => return Ok(answer),
            () = tokio::time::sleep(Duration::from_millis(100)) => progress.check_cancelled()?,
        }
    }
}

/// How an API error ends the attempt: a refused request (400, 422) is the task's fault and
/// not retried; a job that is gone (404, 410) is unusable; a refused key (401, 403) and an
/// unavailable service are retried on the next attempt with the job kept.
fn api_failure(model: &str, what: &str, error: &ApiError) -> TaskFailure {
    let message = format!("model {model}: {what}: {error}");
    match error {
        ApiError::Refused {
            status: 404 | 410, ..
        } => TaskFailure::new(pb::FailureReason::ModelError, message).with_unusable_remote_job(),
        ApiError::Refused {
            status: 401 | 403, ..
        } => TaskFailure::new(
            pb::FailureReason::ModelError,
            message + " (check the worker's API key)",
        ),
        ApiError::Refused { .. } => TaskFailure::new(pb::FailureReason::InvalidTask, message),
        ApiError::Unavailable(_) => TaskFailure::new(pb::FailureReason::ModelError, message),
    }
}
