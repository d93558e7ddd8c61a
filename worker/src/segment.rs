//! One render task: generate a segment with the model, encode it as H.264 MP4, and write
//! the video, its sidecar (frame counts, timings, Lab colour samples for the stitcher's
//! grading) and its handoff frame (the picture the segment that continues it starts from).

use std::io::Cursor;
use std::sync::Arc;

use reelfarm_common::blob::BlobStore;
use reelfarm_common::{keys, pb, unix_now_s};

mod checkpoint;

use crate::task::{Phases, Progress, TaskFailure, fetch_verified, put_recorded};
use reelfarm_media::frame::RgbFrame;
use reelfarm_media::video::{EncodeSettings, Mp4Writer, Quality, decode_png, encode_png};
use reelfarm_models::{GenerateRequest, ModelRuntime};
use reelfarm_stitch::Sidecar;
use reelfarm_stitch::color::SegmentSampler;

pub struct SegmentResult {
    pub video_key: String,
    pub phases: Phases,
    /// The sidecar, handoff frame and video, with their checksums.
    pub objects: Vec<pb::StoredObject>,
    /// The step the render started from (an earlier attempt's checkpoint; 0: from noise).
    pub resumed_from_step: u32,
}

pub(crate) struct Encoded {
    video: Vec<u8>,
    sidecar: Sidecar,
    handoff_frame_png: Vec<u8>,
    phases: Phases,
    resumed_from_step: u32,
}

pub async fn run_segment(
    task: pb::SegmentTask,
    model: Arc<dyn ModelRuntime>,
    store: Arc<dyn BlobStore>,
    progress: Progress,
) -> Result<SegmentResult, TaskFailure> {
    let mut phases = Phases::default();
    let first_frame = if task.condition_key.is_empty() {
        None
    } else {
        let start = unix_now_s();
        let bytes =
            fetch_verified(store.as_ref(), &task.condition_key, &task.condition_crc32c).await?;
        phases.record("storage", &task.segment_id, start);
        Some(decode_png(&bytes).map_err(|error| {
            TaskFailure::invalid(format!(
                "conditioning frame {}: {error}",
                task.condition_key
            ))
        })?)
    };
    let checkpoint = checkpoint::Store::open(&task, store.clone()).await;
    let blocking_task = task.clone();
    let encoded = tokio::task::spawn_blocking(move || {
        render_and_encode(
            &blocking_task,
            model.as_ref(),
            first_frame,
            checkpoint,
            &progress,
        )
    })
    .await
    .map_err(|error| {
        TaskFailure::new(
            pb::FailureReason::ModelError,
            format!("render thread failed: {error}"),
        )
    })??;
    store_encoded(&task, encoded, store.as_ref(), phases).await
}

/// Writes an encoded segment: sidecar, handoff frame, then the video (its presence means the
/// whole segment is in the store).
pub(crate) async fn store_encoded(
    task: &pb::SegmentTask,
    mut encoded: Encoded,
    store: &dyn BlobStore,
    mut phases: Phases,
) -> Result<SegmentResult, TaskFailure> {
    // The render's own phases (model, encode) go with the ones before it.
    phases.extend(std::mem::take(&mut encoded.phases));
    let start = unix_now_s();
    let video_key = keys::segment_video(&task.output_prefix);
    let sidecar = serde_json::to_vec_pretty(&encoded.sidecar)
        .map_err(|error| TaskFailure::invalid(error.to_string()))?;
    let objects = vec![
        put_recorded(store, &keys::segment_sidecar(&task.output_prefix), sidecar).await?,
        put_recorded(
            store,
            &keys::segment_handoff_frame(&task.output_prefix),
            encoded.handoff_frame_png,
        )
        .await?,
        // The video goes last: its presence means the whole segment is in the store.
        put_recorded(store, &video_key, encoded.video).await?,
    ];
    phases.record("storage", &task.segment_id, start);
    Ok(SegmentResult {
        video_key,
        phases,
        objects,
        resumed_from_step: encoded.resumed_from_step,
    })
}

fn render_and_encode(
    task: &pb::SegmentTask,
    model: &dyn ModelRuntime,
    first_frame: Option<RgbFrame>,
    mut checkpoint: checkpoint::Store,
    progress: &Progress,
) -> Result<Encoded, TaskFailure> {
    check_shape(task)?;
    let mut phases = Phases::default();
    let request = GenerateRequest {
        prompt: task.prompt.clone(),
        negative: task.negative.clone(),
        width: task.width,
        height: task.height,
        fps: task.fps,
        frames: u32::try_from(task.render_frames)
            .map_err(|_| TaskFailure::invalid("render_frames out of range"))?,
        steps: task.steps.max(1),
        guidance: task.guidance,
        seed: task.seed,
        first_frame,
        low_memory: task.low_memory,
    };
    let steps = u64::from(request.steps);
    let model_start = unix_now_s();
    let step_labels = crate::worker_metrics::model_labels(task);
    let mut last_step = std::time::Instant::now();
    let mut denoised_at = model_start;
    let resume = checkpoint.resume.take();
    let mut save = |state: &reelfarm_models::SamplingState| {
        checkpoint.save(state);
        Ok(())
    };
    let mut checkpoints = reelfarm_models::Checkpoints {
        every: task.checkpoint_every,
        resume,
        ..reelfarm_models::Checkpoints::off(&mut save)
    };
    let clip = model.generate_with_checkpoints(
        &request,
        &mut checkpoints,
        &mut |done, _| {
            reelfarm_common::metrics::worker()
                .denoise_step_seconds
                .record(last_step.elapsed().as_secs_f64(), &step_labels);
            last_step = std::time::Instant::now();
            denoised_at = unix_now_s();
            progress.report(u64::from(done), steps);
            hang_if_told(done);
        },
        progress.cancel_flag(),
    )?;
    // The model phase is denoising then decoding latents to frames; the first part is
    // recorded on its own for traces (reports count the model phase only).
    phases.0.push(pb::TimedPhase {
        kind: "denoise".into(),
        start_unix_s: model_start,
        end_unix_s: denoised_at,
        task_id: task.segment_id.clone(),
    });
    phases.record("model", &task.segment_id, model_start);
    let model_seconds = unix_now_s() - model_start;
    progress.check_cancelled()?;
    encode_clip(task, &clip, phases, model_seconds, checkpoints.resumed_from)
}

/// Checks a segment task's frame counts before anything renders.
pub(crate) fn check_shape(task: &pb::SegmentTask) -> Result<(), TaskFailure> {
    if task.width == 0 || task.height == 0 || task.fps == 0 || task.timeline_frames == 0 {
        return Err(TaskFailure::invalid(format!(
            "segment {} has an empty size, rate or length",
            task.segment_id
        )));
    }
    if task.render_frames < task.lead_frames + task.timeline_frames {
        return Err(TaskFailure::invalid(format!(
            "segment {} renders fewer frames than it keeps",
            task.segment_id
        )));
    }
    Ok(())
}

/// Encodes a rendered clip as the segment: drops a continuation's conditioning frame, keeps
/// the lead and timeline frames, samples colours for the sidecar and picks the handoff frame.
pub(crate) fn encode_clip(
    task: &pb::SegmentTask,
    clip: &reelfarm_models::GeneratedClip,
    mut phases: Phases,
    model_seconds: f64,
    resumed_from_step: u32,
) -> Result<Encoded, TaskFailure> {
    // A continuation's first lead frame is the conditioning picture itself: drop it; its
    // other lead frames (the continuity blend) stay, like a crossfade's dissolve handle.
    let first = u64::from(task.join == pb::JoinKind::Continue as i32).min(task.lead_frames);
    let lead_in_file = task.lead_frames - first;
    let end = task.lead_frames + task.timeline_frames;
    let handoff_index = end - 1 - task.handoff_back_frames.min(task.timeline_frames - 1);
    let encode_start = unix_now_s();
    let settings = EncodeSettings {
        width: task.width,
        height: task.height,
        fps: task.fps,
        quality: Quality::Intermediate,
    };
    let mut writer = Mp4Writer::new(Cursor::new(Vec::new()), settings)?;
    let mut sampler =
        SegmentSampler::new(task.width, task.height, lead_in_file, task.timeline_frames);
    let (mut last_frame, mut handoff_frame) = (None, None);
    let mirrored = mirror_if_told(&task.segment_id);
    for index in first..end {
        let mut frame = clip.try_frame(index as u32)?;
        if mirrored && index >= task.lead_frames {
            mirror(&mut frame);
        }
        sampler.observe(index - first, &frame);
        writer.push(&frame)?;
        if index == handoff_index {
            handoff_frame = Some(frame.clone());
        }
        last_frame = Some(frame);
    }
    let video = writer.finish()?.into_inner();
    let last_frame = last_frame.ok_or_else(|| TaskFailure::invalid("segment kept no frames"))?;
    let handoff_frame_png = encode_png(handoff_frame.as_ref().unwrap_or(&last_frame))?;
    phases.record("encode", &task.segment_id, encode_start);
    let sidecar = Sidecar {
        segment_id: task.segment_id.clone(),
        width: task.width,
        height: task.height,
        fps: task.fps,
        frames: end - first,
        lead_frames_in_file: lead_in_file,
        timeline_frames: task.timeline_frames,
        seed: task.seed,
        steps: task.steps,
        model_seconds,
        encode_seconds: unix_now_s() - encode_start,
        colors: sampler.finish(&last_frame),
    };
    Ok(Encoded {
        video,
        sidecar,
        handoff_frame_png,
        phases,
        resumed_from_step,
    })
}

/// Test harness fault point (`REELFARM_FAULT_HANG_AFTER_STEPS=N`): the render stops for
/// good after N denoising steps, while the worker stays connected and keeps heartbeating:
/// a hung process as the scheduler sees it (its progress deadline takes the segment back).
fn hang_if_told(done: u32) {
    static AFTER: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    let after = AFTER.get_or_init(|| {
        std::env::var("REELFARM_FAULT_HANG_AFTER_STEPS")
            .ok()
            .and_then(|value| value.parse().ok())
    });
    if after.is_some_and(|after| done >= after) {
        tracing::warn!(
            done,
            "fault injection: this segment's render hangs for good"
        );
        loop {
            std::thread::park();
        }
    }
}

/// Test harness fault point (`REELFARM_FAULT_MIRROR_SEGMENT=ID`): the first render of
/// segment ID in this process comes out mirrored left to right from its first timeline frame
/// on (its continuity blend is left alone), a continuation whose picture jumps at its join
/// while its colours stay the same: what seam QA must catch and render again (the next
/// render, with seam QA's new seed, is left alone).
fn mirror_if_told(segment_id: &str) -> bool {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let told = std::env::var("REELFARM_FAULT_MIRROR_SEGMENT").is_ok_and(|id| id == segment_id);
    if told && !DONE.swap(true, std::sync::atomic::Ordering::SeqCst) {
        tracing::warn!(
            segment = segment_id,
            "fault injection: this render is mirrored"
        );
        return true;
    }
    false
}

fn mirror(frame: &mut RgbFrame) {
    let row_bytes = frame.width as usize * 3;
    for row in frame.data.chunks_exact_mut(row_bytes) {
        let pixels = frame.width as usize;
        for x in 0..pixels / 2 {
            let (left, right) = (x * 3, (pixels - 1 - x) * 3);
            for channel in 0..3 {
                row.swap(left + channel, right + channel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use reelfarm_common::blob::LocalBlobStore;

    use super::*;
    use reelfarm_media::video::Mp4Reader;
    use reelfarm_stitch::color::{EDGE_FRAME_SAMPLES, LabSamples, lab_at, sample_grid};
    use reelfarm_tiny::TinyModel;

    fn task(join: pb::JoinKind, lead_frames: u64, condition_key: &str) -> pb::SegmentTask {
        pb::SegmentTask {
            segment_id: "s001-00".into(),
            model: "reelfarm-tiny".into(),
            prompt: "fog over pines".into(),
            width: 64,
            height: 48,
            fps: 8,
            timeline_frames: 9,
            lead_frames,
            render_frames: reelfarm_models::catalog::reelfarm_tiny()
                .aligned_render_frames(lead_frames + 9),
            steps: 2,
            guidance: 4.0,
            seed: 5,
            join: join as i32,
            condition_key: condition_key.into(),
            output_prefix: "sequences/test/segments/s001-00".into(),
            ..Default::default()
        }
    }

    async fn render(
        task: pb::SegmentTask,
        store: Arc<LocalBlobStore>,
    ) -> (Sidecar, Vec<RgbFrame>, RgbFrame) {
        let (sender, _receiver) = tokio::sync::mpsc::unbounded_channel();
        let progress = Progress::new(sender, Arc::new(AtomicBool::new(false)));
        let model: Arc<dyn ModelRuntime> = Arc::new(TinyModel::from_seed(0).unwrap());
        let prefix = task.output_prefix.clone();
        let done = run_segment(task, model, store.clone(), progress)
            .await
            .unwrap();
        assert_eq!(done.video_key, keys::segment_video(&prefix));
        assert!(done.phases.0.iter().any(|phase| phase.kind == "model"));
        let sidecar: Sidecar =
            serde_json::from_slice(&store.get(&keys::segment_sidecar(&prefix)).await.unwrap())
                .unwrap();
        let mut reader =
            Mp4Reader::open(store.get(&done.video_key).await.unwrap().to_vec()).unwrap();
        let mut frames = Vec::new();
        while let Some(frame) = reader.next_frame().unwrap() {
            frames.push(frame);
        }
        let handoff = decode_png(
            &store
                .get(&keys::segment_handoff_frame(&prefix))
                .await
                .unwrap(),
        )
        .unwrap();
        (sidecar, frames, handoff)
    }

    /// A store holding the picture a continuation starts from, as `previous.handoff.png`.
    async fn store_with_previous_handoff() -> (tempfile::TempDir, Arc<LocalBlobStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalBlobStore::new(dir.path()).unwrap());
        let previous = encode_png(&RgbFrame::filled(64, 48, [30, 160, 90])).unwrap();
        store
            .put("previous.handoff.png", previous.into())
            .await
            .unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn a_continuation_drops_its_conditioned_frame_and_records_its_colours() {
        let (_dir, store) = store_with_previous_handoff().await;
        let (sidecar, frames, handoff) = render(
            task(pb::JoinKind::Continue, 1, "previous.handoff.png"),
            store,
        )
        .await;
        assert_eq!(frames.len(), 9, "timeline frames only");
        assert_eq!(
            (
                sidecar.frames,
                sidecar.lead_frames_in_file,
                sidecar.timeline_frames
            ),
            (9, 0, 9)
        );
        assert_eq!((handoff.width, handoff.height), (64, 48));
        // With no blend behind it the handoff is the last frame, which the PNG keeps
        // losslessly: the sidecar's last-frame samples are of exactly that picture.
        let grid = sample_grid(64, 48, EDGE_FRAME_SAMPLES);
        let colors = &sidecar.colors;
        assert_eq!(
            colors.last_frame_lab,
            LabSamples::from_lab(&lab_at(&handoff, &grid))
        );
        assert_eq!(colors.first_frame_lab.0.len(), grid.len());
        assert!(colors.segment_lab.0.len() >= grid.len() / 2);
    }

    #[tokio::test]
    async fn a_blended_continuation_keeps_its_overlap_and_hands_off_an_earlier_frame() {
        let (_dir, store) = store_with_previous_handoff().await;
        let mut blended = task(pb::JoinKind::Continue, 3, "previous.handoff.png");
        blended.handoff_back_frames = 2;
        let (sidecar, frames, handoff) = render(blended, store).await;
        assert_eq!(frames.len(), 11, "two overlap frames, then the timeline");
        assert_eq!((sidecar.frames, sidecar.lead_frames_in_file), (11, 2));
        // The handoff is the third frame from the end; the last frame differs from it.
        let grid = sample_grid(64, 48, EDGE_FRAME_SAMPLES);
        assert_ne!(
            sidecar.colors.last_frame_lab,
            LabSamples::from_lab(&lab_at(&handoff, &grid))
        );
    }

    #[tokio::test]
    async fn a_crossfade_keeps_its_handle_frames_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalBlobStore::new(dir.path()).unwrap());
        let (sidecar, frames, _) = render(task(pb::JoinKind::Crossfade, 3, ""), store).await;
        assert_eq!(frames.len(), 12);
        assert_eq!((sidecar.frames, sidecar.lead_frames_in_file), (12, 3));
    }

    #[tokio::test]
    async fn a_missing_conditioning_frame_is_a_storage_failure() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalBlobStore::new(dir.path()).unwrap());
        let (sender, _receiver) = tokio::sync::mpsc::unbounded_channel();
        let progress = Progress::new(sender, Arc::new(AtomicBool::new(false)));
        let model: Arc<dyn ModelRuntime> = Arc::new(TinyModel::from_seed(0).unwrap());
        let failure = run_segment(
            task(pb::JoinKind::Continue, 1, "nope.png"),
            model,
            store,
            progress,
        )
        .await
        .err()
        .unwrap();
        assert_eq!(failure.reason, pb::FailureReason::StorageError);
    }

    /// A 1-bit grayscale PNG of `width`x`height`, all black: a few KB even at 8K.
    fn blank_png(width: u32, height: u32) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut encoder = png::Encoder::new(&mut bytes, width, height);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::One);
        let mut writer = encoder.write_header().unwrap();
        let row_bytes = width.div_ceil(8) as usize;
        writer
            .write_image_data(&vec![0; row_bytes * height as usize])
            .unwrap();
        writer.finish().unwrap();
        bytes
    }

    /// A reference the spec accepts at submit becomes a conditioning frame this decoder must
    /// read; the two crates cannot share the bound, so this holds them to one rule.
    #[test]
    fn the_spec_check_and_the_decoder_agree_on_the_largest_reference() {
        use reelfarm_common::spec::{MAX_REFERENCE_PIXELS, check_reference_png};
        assert_eq!(MAX_REFERENCE_PIXELS, reelfarm_media::video::MAX_PNG_PIXELS);

        let largest = blank_png(7680, 4320);
        assert_eq!(check_reference_png(&largest), Ok(()));
        let frame = decode_png(&largest).unwrap();
        assert_eq!((frame.width, frame.height), (7680, 4320));

        for (width, height) in [(7681, 4320), (4320, 7681), (8000, 8000)] {
            let too_large = blank_png(width, height);
            let refused = check_reference_png(&too_large).unwrap_err();
            assert!(
                refused.starts_with(&format!("{width}x{height} is ")),
                "{refused}"
            );
            assert!(decode_png(&too_large).is_err(), "{width}x{height} decoded");
        }
    }
}
