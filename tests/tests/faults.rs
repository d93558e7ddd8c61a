//! Faults change nothing: the distributed farm on real etcd, a real S3-compatible server and
//! the `reelfarm` binary's processes, with records poisoned behind its back and leaders
//! killed in the middle of a commit.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use etcd_client::{Client, GetOptions};
use reelfarm_common::pb;
use reelfarm_tests::cluster::Timings;
use reelfarm_tests::farm::{Farm, STATE_PREFIX};
use reelfarm_tests::leading::{
    find_leader, is_final, leader_client, poll_until, poll_until_succeeded, state_of, submit,
    wait_leads,
};
use reelfarm_tests::{shot, three_shot_spec, two_minute_spec};

/// How many keys etcd holds under `prefix` (relative to the farm's prefix).
async fn count_keys(client: &mut Client, prefix: &str) -> Result<i64> {
    let response = client
        .get(
            format!("{STATE_PREFIX}{prefix}"),
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await?;
    Ok(response.count())
}

/// 500 one-second cuts: more records than one etcd transaction may hold (128 operations).
fn five_hundred_shots() -> pb::SequenceSpec {
    pb::SequenceSpec {
        title: Some("five hundred shots".into()),
        fps: Some(8),
        seed: Some(5),
        steps: Some(2),
        shots: (0..500)
            .map(|index| shot(&format!("shot {index}"), 1.0, "cut"))
            .collect(),
        ..Default::default()
    }
}

async fn list(farm: &Farm) -> Result<Vec<pb::SequenceStatus>> {
    let mut client = leader_client(&farm.cluster).await?;
    Ok(client
        .list_sequences(pb::ListSequencesRequest::default())
        .await?
        .into_inner()
        .sequences)
}

/// Submits to the scheduler at `url`, which is set to abort mid-commit; waits for it to die.
async fn submit_to_dying_leader(farm: &mut Farm, index: usize, key: &str) -> Result<()> {
    let url = farm.cluster.schedulers[index].0.clone();
    let channel = tonic::transport::Endpoint::from_shared(url.clone())?
        .connect()
        .await?;
    let mut client = reelfarm_common::leader::sequence_client(
        channel,
        reelfarm_common::leader::Bearer::default(),
    );
    if let Ok(answer) = submit(&mut client, five_hundred_shots(), key).await {
        bail!("the submit to a scheduler aborting mid-commit was answered: {answer:?}");
    }
    reelfarm_tests::cluster::wait_until(
        "the aborting scheduler to exit",
        Duration::from_secs(20),
        || farm.cluster.schedulers[index].1.exited().is_some(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_mid_commit_leaves_nothing_or_everything_of_a_500_shot_sequence() {
    let farm = Farm::start(Timings::default()).expect("etcd and S3 start");
    farm.check(async |farm| {
        let mut etcd = farm.etcd_client().await?;
        // 1. The leader dies before the commit point: nothing of the sequence exists.
        let first = farm
            .cluster
            .start_scheduler_with(&[("REELFARM_FAULT_ABORT_MID_COMMIT", "0")])?;
        wait_leads(&first, Duration::from_secs(20)).await?;
        let second = farm.cluster.start_scheduler()?;
        submit_to_dying_leader(farm, 0, "big-nothing").await?;
        let takeover = wait_leads(&second, Duration::from_secs(20)).await?;
        eprintln!("takeover after an abort before the commit point: {takeover:.2?}");
        if !list(farm).await?.is_empty() {
            bail!("a commit aborted before its intent left a sequence behind");
        }
        if count_keys(&mut etcd, "sequences/").await? != 0 || count_keys(&mut etcd, "intent").await? != 0 {
            bail!("a commit aborted before its intent left records behind");
        }

        // 2. The leader dies after the commit point with the commit half applied: the next
        // leader finishes it, and a retried submit finds the sequence.
        let third = farm
            .cluster
            .start_scheduler_with(&[("REELFARM_FAULT_ABORT_MID_COMMIT", "2")])?;
        farm.cluster.schedulers[1].1.kill9();
        wait_leads(&third, Duration::from_secs(20)).await?;
        submit_to_dying_leader(farm, 2, "big-everything").await?;
        let half = count_keys(&mut etcd, "sequences/").await?;
        let intent = count_keys(&mut etcd, "intent").await?;
        eprintln!("left by the leader killed mid-commit: {half} records and {intent} intent");
        if intent != 1 || half == 0 {
            bail!("the fault point did not stop the commit half-way: {half} records, {intent} intents");
        }
        let fourth = farm.cluster.start_scheduler()?;
        let takeover = wait_leads(&fourth, Duration::from_secs(20)).await?;
        eprintln!("takeover after an abort mid-commit: {takeover:.2?}");
        let sequences = list(farm).await?;
        let [sequence] = sequences.as_slice() else {
            bail!("expected the one sequence, rolled forward: {} listed", sequences.len());
        };
        if sequence.shot_count != 500 || sequence.segments.len() < 500 {
            bail!(
                "the rolled-forward sequence is not whole: {} shots, {} segments",
                sequence.shot_count,
                sequence.segments.len()
            );
        }
        // spec + status + one record per segment + the stitch.
        let records = count_keys(&mut etcd, &format!("sequences/{}/", sequence.sequence_id)).await?;
        let expected = sequence.segments.len() as i64 + 3;
        if records != expected || count_keys(&mut etcd, "intent").await? != 0 {
            bail!("after the roll-forward: {records} records (expected {expected}) and the intent left");
        }
        let again = submit(&mut leader_client(&farm.cluster).await?, five_hundred_shots(), "big-everything").await?;
        if again.created || again.sequence_id != sequence.sequence_id {
            bail!("the retried submit made a second sequence: {again:?}");
        }

        // 3. A 500-shot sequence submitted to a healthy leader is accepted whole.
        let (_, leader) = find_leader(&farm.cluster).await?;
        let accepted = submit(&mut leader_client(&farm.cluster).await?, five_hundred_shots(), "big-healthy").await?;
        let status = accepted.status.context("a status with the answer")?;
        let records = count_keys(&mut etcd, &format!("sequences/{}/", accepted.sequence_id)).await?;
        if !accepted.created || status.shot_count != 500 || records != status.segments.len() as i64 + 3 {
            bail!("the 500-shot submit to {leader}: created {}, {} shots, {records} records", accepted.created, status.shot_count);
        }
        eprintln!("500 shots accepted whole: {} segments, {records} records", status.segments.len());
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_fails_only_its_sequence_and_a_new_leader_takes_over() {
    let timings = Timings {
        leader_ttl_s: 3.0,
        worker_ttl_s: 6.0,
    };
    let farm = Farm::start(timings).expect("etcd and S3 start");
    farm.check(async |farm| {
        let first = farm.cluster.start_scheduler()?;
        wait_leads(&first, Duration::from_secs(20)).await?;
        let second = farm.cluster.start_scheduler()?;
        let mut client = leader_client(&farm.cluster).await?;
        let poisoned = submit(&mut client, three_shot_spec(2), "poisoned")
            .await?
            .sequence_id;
        let healthy = submit(&mut client, three_shot_spec(2), "healthy")
            .await?
            .sequence_id;
        // Behind the farm's back: a task record that does not read back.
        let mut etcd = farm.etcd_client().await?;
        etcd.put(
            format!("{STATE_PREFIX}sequences/{poisoned}/tasks/stitch"),
            "{\"state\": nul",
            None,
        )
        .await?;
        farm.cluster.schedulers[0].1.kill9();
        let takeover = wait_leads(&second, Duration::from_secs(30)).await?;
        eprintln!("a new leader over a poison record after {takeover:.2?} (limit 2 x 3 s)");
        if takeover > Duration::from_secs(6) {
            bail!("the new leader took {takeover:?} to lead over a poison record (limit 6 s)");
        }
        farm.cluster.start_worker("node-0", "1x4GiB")?;
        let status =
            poll_until(&farm.cluster, &healthy, Duration::from_secs(300), is_final).await?;
        if state_of(&status) != pb::SequenceState::Succeeded {
            bail!(
                "the healthy sequence ended {:?}: {}",
                state_of(&status),
                status.error
            );
        }
        let status =
            poll_until(&farm.cluster, &poisoned, Duration::from_secs(10), is_final).await?;
        if state_of(&status) != pb::SequenceState::Failed
            || !status
                .error
                .contains(&format!("sequences/{poisoned}/tasks/stitch"))
        {
            bail!(
                "the poisoned sequence: {:?}: {}",
                state_of(&status),
                status.error
            );
        }
        eprintln!("poisoned sequence: {}", status.error);
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_leases_are_still_watched_after_etcd_restarts() {
    use reelfarm_scheduler::state::{EtcdSettings, EtcdState, StateStore};
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = reelfarm_tests::cluster::Etcd::start(dir.path()).expect("etcd starts");
    let mut settings = EtcdSettings::new(vec![etcd.url.clone()]);
    settings.leader_ttl = Duration::from_secs(10);
    settings.worker_ttl = Duration::from_secs(2);
    let state = EtcdState::connect(settings).await.expect("connects");
    let leadership = state.campaign("http://scheduler").await.expect("leads");
    for worker in ["w1", "w2"] {
        state
            .worker_online(&leadership, worker, b"{}".to_vec(), true)
            .await
            .expect("worker recorded");
    }
    let mut loaded = state.load(&leadership).await.expect("loads");
    etcd.restart().expect("etcd restarts");
    // The worker's lease keeps being renewed across the restart; once it stops, the
    // expiry must still reach the leader through a resumed watch.
    state.worker_offline("w1").await;
    let started = std::time::Instant::now();
    let expired = tokio::time::timeout(Duration::from_secs(20), loaded.expired.recv())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no expiry within 20 s of the restart\n{}",
                etcd.process.log_text()
            )
        });
    assert_eq!(expired.as_deref(), Some("w1"));
    assert!(
        !leadership.is_lost(),
        "a short etcd restart must not cost the lead"
    );
    eprintln!(
        "expiry seen {:.2?} after the worker went silent, across an etcd restart",
        started.elapsed()
    );
    // The other worker's lease lived on: nothing else was reported.
    assert!(loaded.expired.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_worker_s_segment_is_taken_back_at_its_deadline_and_the_sequence_completes() {
    let farm = Farm::start(Timings::default()).expect("etcd and S3 start");
    farm.check(async |farm| {
        let cluster = &mut farm.cluster;
        cluster.start_scheduler_with(&[("REELFARM_STALL_TIMEOUT", "4")])?;
        // Connected and heartbeating, but its renders stop after one step.
        cluster.start_worker_with("hung", "1x4GiB", &[("REELFARM_FAULT_HANG_AFTER_STEPS", "1")])?;
        let mut client = leader_client(cluster).await?;
        let id = submit(&mut client, three_shot_spec(4), "").await?.sequence_id;
        poll_until(cluster, &id, Duration::from_secs(120), |status| {
            status
                .segments
                .iter()
                .any(|segment| segment.state == pb::TaskState::Running as i32 && segment.step >= 1)
        })
        .await?;
        let started = std::time::Instant::now();
        cluster.start_worker("healthy", "1x4GiB")?;
        let status = poll_until_succeeded(cluster, &id, Duration::from_secs(300)).await?;
        let retried: Vec<String> = status
            .segments
            .iter()
            .filter(|segment| segment.attempt > 1)
            .map(|segment| format!("{}#{}", segment.segment_id, segment.attempt))
            .collect();
        let log = cluster.schedulers[0].1.log_text();
        let taken_back = log.matches("taken back and placed again").count();
        eprintln!(
            "hung worker: {taken_back} attempt(s) taken back ({}), sequence done {:.1?} after the healthy worker started",
            retried.join(" "),
            started.elapsed()
        );
        if retried.is_empty() || taken_back == 0 {
            bail!("no segment was taken back from the hung worker");
        }
        let workers = client
            .list_workers(pb::ListWorkersRequest {})
            .await?
            .into_inner()
            .workers;
        let hung = workers
            .iter()
            .find(|worker| worker.name == "hung")
            .context("the hung worker is listed")?;
        if hung.state != "stalled" {
            bail!("the hung worker is listed as {:?}, not stalled", hung.state);
        }
        if status.segments.iter().any(|segment| segment.worker == hung.worker_id) {
            bail!("a segment is recorded as done by the hung worker");
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_corrupted_behind_the_store_s_back_is_rendered_again_and_the_sequence_succeeds() {
    let farm = Farm::start(Timings::default()).expect("etcd and S3 start");
    farm.check(async |farm| {
        let cluster = &mut farm.cluster;
        cluster.start_scheduler()?;
        cluster.start_worker("node-0", "1x4GiB")?;
        let mut client = leader_client(cluster).await?;
        let id = submit(&mut client, three_shot_spec(4), "")
            .await?
            .sequence_id;
        // As soon as the first segment is accepted (long before the stitch reads it), its
        // video rots on the server's disk.
        poll_until(cluster, &id, Duration::from_secs(120), |status| {
            status.segments[0].state == pb::TaskState::Done as i32
        })
        .await?;
        let segments = farm
            .s3
            .bucket_dir()
            .join(format!("sequences/{id}/segments"));
        let first = segments.join("s000-00.a1.mp4");
        let mut bytes =
            std::fs::read(&first).with_context(|| format!("reading {}", first.display()))?;
        for byte in bytes.iter_mut().skip(64).step_by(97) {
            *byte ^= 0x5a;
        }
        std::fs::write(&first, &bytes)?;
        let status = poll_until_succeeded(&farm.cluster, &id, Duration::from_secs(300)).await?;
        let repaired = &status.segments[0];
        eprintln!(
            "corrupted s000-00.a1.mp4 repaired: segment attempt {}, stitch attempt {}",
            repaired.attempt,
            status.stitch.as_ref().map_or(0, |stitch| stitch.attempt)
        );
        if repaired.attempt != 2 {
            bail!(
                "the corrupt segment was not rendered again: attempt {}",
                repaired.attempt
            );
        }
        // The superseded attempt's objects are deleted; the accepted ones remain.
        reelfarm_tests::cluster::wait_until(
            "superseded objects deleted",
            Duration::from_secs(10),
            || !first.exists() && !segments.join("s000-00.a1.handoff.png").exists(),
        )?;
        if !segments.join("s000-00.a2.mp4").exists() {
            bail!("the accepted attempt's video is missing");
        }
        let output = farm.dir.path().join("repaired.mp4");
        let (code, stdout, stderr) =
            farm.cluster
                .client(&["download", &id, "-o", output.to_str().unwrap()])?;
        if code != 0 {
            bail!("reelfarm download exited {code}: {stdout}{stderr}");
        }
        let video = reelfarm_tests::probe::probe(&output);
        if video.frames != status.total_frames {
            bail!(
                "the repaired sequence's video: {video:?}, {} frames planned",
                status.total_frames
            );
        }
        Ok(())
    })
    .await;
}

/// Files the object store holds under `sequences/<id>/` (s3s-fs keeps objects as files).
fn objects_of(farm: &Farm, id: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut folders = vec![farm.s3.bucket_dir().join(format!("sequences/{id}"))];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                folders.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

async fn nothing_left_of(farm: &Farm, id: &str) -> Result<()> {
    let mut etcd = farm.etcd_client().await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let records = count_keys(&mut etcd, &format!("sequences/{id}/")).await?;
        let objects = objects_of(farm, id);
        if records == 0 && objects.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("left of {id}: {records} records and objects {objects:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_delete_no_record_or_object_of_the_sequence_remains() {
    let farm = Farm::start(Timings::default()).expect("etcd and S3 start");
    farm.check(async |farm| {
        let cluster = &mut farm.cluster;
        cluster.start_scheduler()?;
        cluster.start_worker("node-0", "1x4GiB")?;
        let mut client = leader_client(cluster).await?;
        let kept = submit(&mut client, three_shot_spec(2), "kept")
            .await?
            .sequence_id;
        let id = submit(&mut client, three_shot_spec(2), "deleted")
            .await?
            .sequence_id;
        let (code, _, stderr) = cluster.client(&["delete", &id])?;
        if code == 0 || !stderr.contains("cancel it first") {
            bail!("deleting a running sequence must say to cancel it first: {code} {stderr}");
        }
        for sequence in [&kept, &id] {
            poll_until_succeeded(cluster, sequence, Duration::from_secs(300)).await?;
        }
        let before = objects_of(farm, &id).len();
        let (code, stdout, stderr) = farm.cluster.client(&["delete", &id])?;
        if code != 0 {
            bail!("reelfarm delete exited {code}: {stdout}{stderr}");
        }
        eprintln!("{} ({before} objects before)", stdout.trim());
        nothing_left_of(farm, &id).await?;
        // The other sequence is untouched, and the deleted one is gone for clients.
        if objects_of(farm, &kept).is_empty() {
            bail!("deleting one sequence removed another's objects");
        }
        let mut client = leader_client(&farm.cluster).await?;
        let gone = client
            .get_sequence(pb::GetSequenceRequest {
                sequence_id: id.clone(),
            })
            .await;
        if !matches!(&gone, Err(status) if status.code() == tonic::Code::NotFound) {
            bail!("a deleted sequence must be NotFound: {gone:?}");
        }
        // Its idempotency key is free again.
        let again = submit(&mut client, three_shot_spec(2), "deleted").await?;
        if !again.created || again.sequence_id == id {
            bail!("the deleted sequence's key still returned it: {again:?}");
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_period_deletes_finished_sequences_on_its_own() {
    let farm = Farm::start(Timings::default()).expect("etcd and S3 start");
    farm.check(async |farm| {
        let cluster = &mut farm.cluster;
        // 0.00005 days: 4.3 s.
        cluster.start_scheduler_with(&[("REELFARM_RETENTION_DAYS", "0.00005")])?;
        cluster.start_worker("node-0", "1x4GiB")?;
        let mut client = leader_client(cluster).await?;
        let id = submit(&mut client, three_shot_spec(2), "")
            .await?
            .sequence_id;
        poll_until_succeeded(cluster, &id, Duration::from_secs(300)).await?;
        let finished = std::time::Instant::now();
        nothing_left_of(farm, &id).await?;
        eprintln!(
            "retention 4.3 s: deleted {:.1?} after the sequence finished",
            finished.elapsed()
        );
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_downloads_of_a_large_video_keep_scheduler_memory_bounded() {
    use reelfarm_common::blob::BlobStore;
    const VIDEO_BYTES: usize = 32 << 20;
    let farm = Farm::start(Timings::default()).expect("etcd and S3 start");
    farm.check(async |farm| {
        let cluster = &mut farm.cluster;
        cluster.start_scheduler()?;
        cluster.start_worker("node-0", "1x4GiB")?;
        let mut client = leader_client(cluster).await?;
        let id = submit(&mut client, three_shot_spec(2), "").await?.sequence_id;
        let status = poll_until_succeeded(cluster, &id, Duration::from_secs(300)).await?;
        // Make the video large (the downloads below read raw bytes, unchecked).
        let store = reelfarm_common::s3::S3BlobStore::connect(farm.s3.settings()).await?;
        let large: Vec<u8> = (0..VIDEO_BYTES).map(|i| (i % 251) as u8).collect();
        store.put(&status.video_key, large.into()).await?;
        let scheduler = &farm.cluster.schedulers[0].1;
        let before = scheduler.memory_bytes("VmHWM").context("the scheduler's peak memory")?;
        let downloads: Vec<_> = (0..8)
            .map(|_| {
                let mut client = client.clone();
                let id = id.clone();
                tokio::spawn(async move {
                    let mut stream = client
                        .read_output(pb::ReadOutputRequest {
                            sequence_id: id,
                            kind: pb::OutputKind::Video as i32,
                            offset: 0,
                        })
                        .await?
                        .into_inner();
                    let mut received = 0usize;
                    while let Some(chunk) = stream.message().await? {
                        received += chunk.data.len();
                    }
                    anyhow::Ok(received)
                })
            })
            .collect();
        for download in downloads {
            let received = download.await??;
            if received != VIDEO_BYTES {
                bail!("a download received {received} of {VIDEO_BYTES} bytes");
            }
        }
        let after = scheduler.memory_bytes("VmHWM").context("the scheduler's peak memory")?;
        let grown = after.saturating_sub(before);
        let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
        eprintln!(
            "8 concurrent downloads of a {} MiB video: scheduler peak memory {:.0} -> {:.0} MiB (+{:.1} MiB; holding each video whole would take +{} MiB)",
            VIDEO_BYTES >> 20,
            mib(before),
            mib(after),
            mib(grown),
            8 * (VIDEO_BYTES >> 20)
        );
        if grown > 96 << 20 {
            bail!("the scheduler's peak memory grew {:.0} MiB for 8 downloads", mib(grown));
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_compacts_etcd_history_and_worker_expiry_still_arrives() {
    use reelfarm_scheduler::state::{EtcdSettings, EtcdState, StateStore, Write};
    let dir = tempfile::tempdir().unwrap();
    let etcd = reelfarm_tests::cluster::Etcd::start(dir.path()).expect("etcd starts");
    let mut settings = EtcdSettings::new(vec![etcd.url.clone()]);
    settings.worker_ttl = Duration::from_secs(2);
    settings.compact_every = Some(Duration::from_secs(1));
    let state = EtcdState::connect(settings).await.expect("connects");
    let leadership = state.campaign("http://scheduler").await.expect("leads");
    let mut loaded = state.load(&leadership).await.expect("loads");
    let mut revision = 0;
    for round in 0..20 {
        revision = state
            .commit(
                &leadership,
                vec![Write {
                    key: "sequences/a/status".into(),
                    value: Some(format!("{round}").into_bytes()),
                    expected_revision: revision,
                }],
            )
            .await
            .expect("commit")[0];
    }
    let mut client = Client::connect([etcd.url.as_str()], None).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let compacted = loop {
        let old = client
            .get("anything", Some(GetOptions::new().with_revision(2)))
            .await;
        if let Err(error) = &old
            && error.to_string().contains("compacted")
        {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(compacted, "the leader never compacted etcd's history");
    state
        .worker_online(&leadership, "w1", b"{}".to_vec(), true)
        .await
        .unwrap();
    state.worker_offline("w1").await;
    let expired = tokio::time::timeout(Duration::from_secs(15), loaded.expired.recv()).await;
    assert_eq!(expired.ok().flatten().as_deref(), Some("w1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigstopped_worker_loses_its_stream_and_its_segment_is_placed_again() {
    let farm = Farm::start(Timings::default()).expect("etcd and S3 start");
    farm.check(async |farm| {
        let cluster = &mut farm.cluster;
        // Deadlines off: the transport alone must notice the frozen process.
        cluster.start_scheduler_with(&[("REELFARM_STALL_TIMEOUT", "0")])?;
        cluster.start_worker("frozen", "1x4GiB")?;
        let mut client = leader_client(cluster).await?;
        let id = submit(&mut client, three_shot_spec(16), "").await?.sequence_id;
        poll_until(cluster, &id, Duration::from_secs(120), |status| {
            status.segments.iter().any(|segment| segment.state == pb::TaskState::Running as i32)
        })
        .await?;
        cluster.workers[0].signal("STOP")?;
        let stopped = std::time::Instant::now();
        cluster.start_worker("healthy", "1x4GiB")?;
        let status = poll_until(cluster, &id, Duration::from_secs(300), is_final).await;
        cluster.workers[0].signal("CONT")?;
        let status = status?;
        if state_of(&status) != pb::SequenceState::Succeeded {
            bail!("sequence ended {:?}: {}", state_of(&status), status.error);
        }
        let retried = status.segments.iter().filter(|segment| segment.attempt > 1).count();
        eprintln!(
            "SIGSTOPped worker: {retried} segment(s) placed again; sequence done {:.1?} after the stop",
            stopped.elapsed()
        );
        if retried == 0 {
            bail!("no segment was taken from the frozen worker");
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_fault_proxy_injects_faults_the_store_rides_through() {
    use reelfarm_common::blob::BlobStore;
    let server = reelfarm_tests::s3_server::S3Server::start().expect("s3s-fs starts");
    let proxy = reelfarm_tests::fault_proxy::FaultProxy::start(server.endpoint(), 7)
        .await
        .unwrap();
    let store = reelfarm_common::s3::S3BlobStore::connect(reelfarm_common::s3::S3Settings {
        endpoint: Some(proxy.endpoint.clone()),
        ..server.settings()
    })
    .await
    .expect("connects through the proxy");
    reelfarm_common::blob::conformance::run(&store).await;
    proxy.set(150, 50, 20);
    for index in 0..20 {
        let key = format!("chaos/{index}");
        store
            .put(&key, bytes::Bytes::from(vec![index as u8; 10_000]))
            .await
            .expect("puts ride through 20 % faults on retries");
        assert_eq!(store.get(&key).await.expect("get").len(), 10_000);
    }
    let counts = &proxy.counts;
    eprintln!("{}", counts.summary());
    use std::sync::atomic::Ordering::Relaxed;
    assert!(counts.errors_503.load(Relaxed) > 0 && counts.resets.load(Relaxed) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_off_half_way_resumes_where_it_stopped_and_checks_the_whole_file() {
    let farm = Farm::start(Timings::default()).expect("etcd and S3 start");
    farm.check(async |farm| {
        let cluster = &mut farm.cluster;
        let scheduler = cluster.start_scheduler()?;
        for index in 0..2 {
            cluster.start_worker(&format!("node-{index}"), "1x4GiB")?;
        }
        let mut client = leader_client(cluster).await?;
        let spec = pb::SequenceSpec {
            steps: Some(2),
            ..two_minute_spec()
        };
        let id = submit(&mut client, spec, "").await?.sequence_id;
        let status = poll_until_succeeded(cluster, &id, Duration::from_secs(300)).await?;
        // Every connection through the proxy breaks after 1.5 MiB.
        let proxy = reelfarm_tests::fault_proxy::CutProxy::start(&scheduler, 3 << 19).await?;
        let output = farm.dir.path().join("resumed.mp4");
        let download = std::process::Command::new(reelfarm_tests::cluster::reelfarm_binary())
            .args(["download", &id, "-o"])
            .arg(&output)
            .env("REELFARM_SCHEDULER", &proxy.endpoint)
            .env("RUST_LOG", "reelfarm=debug")
            .output()?;
        let stderr = String::from_utf8_lossy(&download.stderr);
        if !download.status.success() {
            bail!(
                "reelfarm download through a cut exited {}: {stderr}",
                download.status
            );
        }
        let size = std::fs::metadata(&output)?.len();
        let log = farm.cluster.schedulers[0].1.log_text();
        let resumed = log
            .lines()
            .find(|line| line.contains("output read resumes at byte"))
            .context(format!(
                "the download ({size} bytes) never resumed at an offset:\n{stderr}"
            ))?;
        eprintln!(
            "{size}-byte video downloaded through a cut connection; scheduler: {}",
            resumed.trim()
        );
        let video = reelfarm_tests::probe::probe(&output);
        if video.frames != status.total_frames {
            bail!("the resumed download: {video:?}");
        }
        Ok(())
    })
    .await;
}
