//! The whole path through real gRPC on loopback: submit, watch, stitch, and a video that an
//! independent reader (ffprobe) agrees with.

use std::time::Duration;

use reelfarm_common::pb;
use reelfarm_tests::probe::{probe, top_level_boxes};
use reelfarm_tests::{TestFarm, three_shot_spec};

const DEADLINE: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_shot_sequence_renders_to_an_exact_mp4() {
    let mut farm = TestFarm::start(2).await.unwrap();
    let request = pb::SubmitSequenceRequest {
        spec: Some(three_shot_spec(2)),
        idempotency_key: "e2e".into(),
        no_cache: false,
        max_cost_usd: None,
    };
    let submitted = farm
        .client
        .submit_sequence(request)
        .await
        .unwrap()
        .into_inner();
    assert!(submitted.created);
    let status = submitted.status.unwrap();
    assert_eq!(
        (status.width, status.height, status.fps, status.total_frames),
        (848, 480, 8, 44)
    );
    assert_eq!(status.segments.len(), 3);
    assert_eq!(
        status.segments[1].continues_from,
        status.segments[0].segment_id
    );

    let seen = farm
        .watch_to_end(&submitted.sequence_id, DEADLINE)
        .await
        .unwrap();
    let last = seen.last().unwrap();
    assert_eq!(
        last.state,
        pb::SequenceState::Succeeded as i32,
        "{}",
        last.error
    );
    assert!(
        seen.iter().any(|s| s
            .segments
            .iter()
            .any(|segment| segment.state == pb::TaskState::Running as i32 && segment.step > 0)),
        "the watch stream must carry denoising-step progress"
    );

    let video = farm.farm.store.path_of(&last.video_key).unwrap();
    let boxes = top_level_boxes(&video);
    let position = |name: &str| boxes.iter().position(|b| b == name);
    assert!(
        position("moov") < position("mdat") && position("moov").is_some(),
        "the delivered video starts with its index (faststart): {boxes:?}"
    );
    let probed = probe(&video);
    assert_eq!(probed.codec, "h264");
    assert_eq!((probed.width, probed.height), (848, 480));
    assert_eq!(probed.frame_rate, "8/1");
    assert_eq!(probed.frames, 44, "5.5 s at 8 fps");
    assert!(
        (probed.duration_seconds - 5.5).abs() <= 1.0 / 8.0,
        "{probed:?}"
    );

    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(farm.farm.store.path_of(&last.report_key).unwrap()).unwrap(),
    )
    .unwrap();
    let kinds: Vec<&str> = report["joins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|join| join["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["continue", "crossfade"]);
    assert_eq!(report["frames"], 44);
    farm.farm.stop().await.unwrap();
}

async fn submit_error(farm: &mut TestFarm, spec: Option<pb::SequenceSpec>) -> tonic::Status {
    let request = pb::SubmitSequenceRequest {
        spec,
        idempotency_key: String::new(),
        no_cache: false,
        max_cost_usd: None,
    };
    farm.client
        .submit_sequence(request)
        .await
        .expect_err("the spec must be refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_are_invalid_argument_naming_the_field() {
    let mut farm = TestFarm::start(1).await.unwrap();
    let mut spec = three_shot_spec(2);
    spec.fps = Some(7);
    spec.shots[2].duration_seconds = 601.0;
    let error = submit_error(&mut farm, Some(spec)).await;
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        error.message(),
        "fps: must be a whole number between 8 and 60, got 7; shots[2].duration: must be between 1 and 600 seconds, got 601"
    );

    let error = submit_error(&mut farm, None).await;
    assert_eq!(
        (error.code(), error.message()),
        (tonic::Code::InvalidArgument, "spec: required")
    );

    let mut spec = three_shot_spec(2);
    spec.resolution = Some("4k".into());
    spec.aspect = Some("5:4".into());
    let error = submit_error(&mut farm, Some(spec)).await;
    assert!(
        error
            .message()
            .contains("resolution: must be one of 480p, 720p, 1080p, got 4k"),
        "{}",
        error.message()
    );
    assert!(
        error.message().contains("aspect: must be one of"),
        "{}",
        error.message()
    );
    let listed = farm
        .client
        .list_sequences(pb::ListSequencesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed.sequences.is_empty(),
        "rejected specs leave nothing behind"
    );
    farm.farm.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_returns_the_same_sequence_and_cancel_stops_it() {
    let mut farm = TestFarm::start(1).await.unwrap();
    let mut spec = three_shot_spec(200);
    spec.shots.truncate(1);
    spec.shots[0].duration_seconds = 20.0;
    let request = pb::SubmitSequenceRequest {
        spec: Some(spec),
        idempotency_key: "same-key".into(),
        no_cache: false,
        max_cost_usd: None,
    };
    let first = farm
        .client
        .submit_sequence(request.clone())
        .await
        .unwrap()
        .into_inner();
    let second = farm
        .client
        .submit_sequence(request)
        .await
        .unwrap()
        .into_inner();
    assert!(first.created && !second.created);
    assert_eq!(first.sequence_id, second.sequence_id);
    let listed = farm
        .client
        .list_sequences(pb::ListSequencesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.sequences.len(), 1);

    // Wait for the first denoising step, then cancel.
    let submitted_at = std::time::Instant::now();
    let mut stream = farm
        .client
        .watch_sequence(pb::WatchSequenceRequest {
            sequence_id: first.sequence_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(DEADLINE, async {
        while let Some(status) = stream.message().await.unwrap() {
            if status.segments.iter().any(|segment| segment.step >= 1) {
                return;
            }
        }
        panic!("stream ended before any progress");
    })
    .await
    .unwrap();
    let first_step = submitted_at.elapsed();
    let cancelled = farm
        .client
        .cancel_sequence(pb::CancelSequenceRequest {
            sequence_id: first.sequence_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.state, pb::SequenceState::Cancelled as i32);
    assert_eq!(cancelled.segments[0].state, pb::TaskState::Cancelled as i32);

    // The farm has one device: a new sequence can only start once the cancelled segment has
    // stopped and handed its memory back. Letting it run on would take 199 more steps.
    let cancelled_at = std::time::Instant::now();
    let mut quick = three_shot_spec(1);
    quick.shots.truncate(1);
    quick.shots[0].duration_seconds = 1.0;
    let last = farm.render(quick, DEADLINE).await.unwrap();
    assert_eq!(
        last.state,
        pb::SequenceState::Succeeded as i32,
        "{}",
        last.error
    );
    let after_cancel = cancelled_at.elapsed();
    assert!(
        after_cancel < first_step * 10 + Duration::from_secs(10),
        "cancel took {after_cancel:?}; one step took about {first_step:?}"
    );
    let status = farm.status(&first.sequence_id).await.unwrap();
    assert_eq!(
        status.state,
        pb::SequenceState::Cancelled as i32,
        "a cancelled sequence stays cancelled"
    );
    farm.farm.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_image_sets_the_first_frame_of_its_shot() {
    let mut farm = TestFarm::start(1).await.unwrap();
    let reference = reelfarm_media::frame::RgbFrame::filled(320, 180, [200, 40, 40]);
    let mut spec = three_shot_spec(2);
    spec.shots.truncate(1);
    spec.shots[0].reference_png = Some(reelfarm_media::video::encode_png(&reference).unwrap());
    spec.shots[0].reference_name = Some("red.png".into());
    let last = farm.render(spec, DEADLINE).await.unwrap();
    assert_eq!(
        last.state,
        pb::SequenceState::Succeeded as i32,
        "{}",
        last.error
    );

    let bytes = std::fs::read(farm.farm.store.path_of(&last.video_key).unwrap()).unwrap();
    let mut reader = reelfarm_media::video::Mp4Reader::open(bytes).unwrap();
    let first = reader.next_frame().unwrap().unwrap();
    let pixels = (first.width * first.height) as f64;
    let mean: Vec<f64> = (0..3)
        .map(|c| {
            first
                .data
                .iter()
                .skip(c)
                .step_by(3)
                .map(|&v| f64::from(v))
                .sum::<f64>()
                / pixels
        })
        .collect();
    for (channel, expected) in [200.0, 40.0, 40.0].into_iter().enumerate() {
        assert!(
            (mean[channel] - expected).abs() < 12.0,
            "first frame mean {mean:?}, reference [200, 40, 40]"
        );
    }
    farm.farm.stop().await.unwrap();
}
