//! Checkpoints on real parts: a final segment whose worker dies partway through resumes, on
//! another worker, from the checkpoint its attempt saved in the object store, and renders the
//! same video as a render that never stopped.

use std::time::Duration;

use anyhow::bail;
use reelfarm_common::{keys, pb};
use reelfarm_tests::cluster::{Timings, wait_until};
use reelfarm_tests::farm::Farm;
use reelfarm_tests::leading::{leader_client, poll_until, poll_until_succeeded, submit};
use reelfarm_tests::shot;

/// Checkpoints: a worker killed mid-segment loses only the steps since its last checkpoint.
/// The next attempt, on another worker, starts at the checkpointed step; the video is byte
/// for byte the one an uninterrupted render makes; accepting the segment deletes the
/// checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_whose_worker_dies_resumes_from_its_checkpoint_and_renders_the_same_video() {
    let farm = Farm::start(Timings::default()).expect("etcd and S3 start");
    farm.check(async |farm| {
        let cluster = &mut farm.cluster;
        cluster.start_scheduler_with(&[("REELFARM_CHECKPOINT_EVERY", "4")])?;
        // It saves after steps 4 and 8 of 12, and hangs after step 6: its last save is step 4.
        cluster.start_worker_with(
            "doomed",
            "1x4GiB",
            &[("REELFARM_FAULT_HANG_AFTER_STEPS", "6")],
        )?;
        let mut client = leader_client(cluster).await?;
        let spec = pb::SequenceSpec {
            title: Some("one final shot".into()),
            fps: Some(8),
            seed: Some(5),
            steps: Some(12),
            pass: Some("final".into()),
            shots: vec![shot("a lighthouse on a cliff at dusk", 1.5, "cut")],
            ..Default::default()
        };
        let id = submit(&mut client, spec.clone(), "").await?.sequence_id;
        poll_until(cluster, &id, Duration::from_secs(120), |status| {
            status.segments[0].state == pb::TaskState::Running as i32
                && status.segments[0].step >= 6
        })
        .await?;
        let segment_id = "s000-00";
        let checkpoint = farm.s3.object_path(&keys::segment_checkpoint(&keys::segment_prefix(
            &id, segment_id,
        )));
        if !checkpoint.exists() {
            bail!("no checkpoint at {} after step 6", checkpoint.display());
        }
        cluster.workers[0].kill9();
        cluster.start_worker("healthy", "1x4GiB")?;
        let status = poll_until_succeeded(cluster, &id, Duration::from_secs(300)).await?;
        let segment = &status.segments[0];
        eprintln!(
            "killed after step 6: attempt {} resumed from step {}",
            segment.attempt, segment.resumed_from_step
        );
        if segment.attempt != 2 || segment.resumed_from_step != 4 {
            bail!(
                "the second attempt should start at step 4: attempt {}, resumed from {}",
                segment.attempt,
                segment.resumed_from_step
            );
        }
        let (code, stdout, stderr) = cluster.client(&["status", &id])?;
        if code != 0 || !stdout.contains("2 from step 4") {
            bail!("reelfarm status should show the attempt resumed from step 4 ({code}): {stdout}{stderr}");
        }
        let healthy_log = cluster.workers[1].log_text();
        if !healthy_log.contains("resuming from its step") {
            bail!("the healthy worker did not say it resumed: {healthy_log}");
        }
        wait_until("the accepted segment's checkpoint is deleted", Duration::from_secs(10), || {
            !checkpoint.exists()
        })?;

        // The same spec from scratch, never interrupted, on the healthy worker.
        let fresh = client
            .submit_sequence(pb::SubmitSequenceRequest {
                spec: Some(spec),
                idempotency_key: String::new(),
                no_cache: true,
                max_cost_usd: None,
            })
            .await?
            .into_inner()
            .sequence_id;
        let fresh_status = poll_until_succeeded(cluster, &fresh, Duration::from_secs(300)).await?;
        if fresh_status.segments[0].resumed_from_step != 0 || fresh_status.segments[0].reused {
            bail!("the fresh render resumed or reused: {:?}", fresh_status.segments[0]);
        }
        let video = |sequence: &str| std::fs::read(farm.s3.object_path(&keys::final_video(sequence)));
        let (resumed, uninterrupted) = (video(&id)?, video(&fresh)?);
        if resumed != uninterrupted {
            bail!(
                "the resumed render's video ({} bytes) differs from the uninterrupted one ({} bytes)",
                resumed.len(),
                uninterrupted.len()
            );
        }
        Ok(())
    })
    .await;
}
