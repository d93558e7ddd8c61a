//! The distributed farm on real parts: etcd, an S3-compatible server, and the `reelfarm`
//! binary's schedulers and workers as separate processes on loopback. Each test builds its
//! own farm (free ports, temp dirs) and prints every process log when it fails.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use reelfarm_common::pb;
use reelfarm_common::pb::worker_service_client::WorkerServiceClient;
use reelfarm_tests::cluster::{Etcd, Timings};
use reelfarm_tests::farm::Farm;
use reelfarm_tests::leading::{
    find_leader, is_final, leader_client, poll_until, poll_until_succeeded, state_of, submit,
    wait_leads,
};
use reelfarm_tests::s3_server::S3Server;
use reelfarm_tests::{probe, shot};

const DEADLINE: Duration = Duration::from_secs(420);

/// Five shots, 60 s in all, at 8 fps and 2 steps so a debug build on two cores renders it in
/// minutes: cut, continue (a chained window), crossfade, cut.
fn sixty_second_spec() -> pb::SequenceSpec {
    pb::SequenceSpec {
        title: Some("sixty seconds".into()),
        fps: Some(8),
        seed: Some(11),
        steps: Some(2),
        shots: vec![
            shot("a harbour at dawn", 12.0, "cut"),
            shot("the boats leave", 12.0, "continue"),
            shot("open sea, low sun", 12.0, "crossfade"),
            shot("a lighthouse on a rock", 12.0, "cut"),
            shot("the lighthouse at night", 12.0, "crossfade"),
        ],
        ..Default::default()
    }
}

fn segment_states(status: &pb::SequenceStatus) -> String {
    status
        .segments
        .iter()
        .map(|segment| {
            format!(
                "{}:{:?}@{}#{}",
                segment.segment_id,
                pb::TaskState::try_from(segment.state).unwrap_or(pb::TaskState::Unspecified),
                segment.worker,
                segment.attempt
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sixty_second_sequence_renders_across_processes_into_s3() {
    let farm = Farm::start(Timings::default()).expect("etcd and S3 start");
    farm.check(async |farm| {
        let cluster = &mut farm.cluster;
        cluster.start_scheduler()?;
        for index in 0..3 {
            cluster.start_worker(&format!("gpu-node-{index}"), "1x4GiB")?;
        }
        let mut client = leader_client(cluster).await?;
        let started = Instant::now();
        let id = submit(&mut client, sixty_second_spec(), "")
            .await?
            .sequence_id;
        let status = poll_until_succeeded(cluster, &id, DEADLINE).await?;
        eprintln!(
            "60 s sequence rendered by 3 worker processes in {:.1?}",
            started.elapsed()
        );
        let workers: std::collections::BTreeSet<&str> = status
            .segments
            .iter()
            .map(|segment| segment.worker.as_str())
            .collect();
        if workers.len() < 2 {
            bail!("independent shots should spread over workers: {workers:?}");
        }
        let output = farm.dir.path().join("downloaded.mp4");
        let (code, stdout, stderr) =
            cluster.client(&["download", &id, "-o", output.to_str().unwrap()])?;
        if code != 0 {
            bail!("reelfarm download exited {code}: {stdout}{stderr}");
        }
        let video = probe::probe(&output);
        if (video.width, video.height) != (848, 480) || video.frames != 480 {
            bail!("downloaded video: {video:?}");
        }
        if (video.duration_seconds - 60.0).abs() > 1e-3 || video.frame_rate != "8/1" {
            bail!("downloaded video timing: {video:?}");
        }
        // The report, the timeline (pointing at the downloaded file) and the contact sheet
        // arrive beside the video.
        for sibling in [
            "downloaded.report.json",
            "downloaded.otio",
            "downloaded.contact.png",
        ] {
            let path = farm.dir.path().join(sibling);
            if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) == 0 {
                bail!("download left no {sibling} beside the video: {stdout}");
            }
        }
        let otio = std::fs::read_to_string(farm.dir.path().join("downloaded.otio"))?;
        if !otio.contains("\"downloaded.mp4\"") {
            bail!("the downloaded timeline does not point at downloaded.mp4");
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_segment_is_placed_again_after_its_lease_expires() {
    let timings = Timings::default();
    let worker_ttl = timings.worker_ttl_s;
    let farm = Farm::start(timings).expect("etcd and S3 start");
    farm.check(async |farm| {
        let cluster = &mut farm.cluster;
        cluster.start_scheduler()?;
        cluster.start_worker("doomed", "1x4GiB")?;
        let mut client = leader_client(cluster).await?;
        let spec = pb::SequenceSpec {
            steps: Some(6),
            ..sixty_second_spec()
        };
        let id = submit(&mut client, spec, "").await?.sequence_id;
        // Wait until the doomed worker is inside a denoising loop.
        let running = poll_until(cluster, &id, Duration::from_secs(120), |status| {
            status
                .segments
                .iter()
                .any(|segment| segment.state == pb::TaskState::Running as i32 && segment.step >= 1)
        })
        .await?;
        let victim = running
            .segments
            .iter()
            .find(|segment| segment.state == pb::TaskState::Running as i32 && segment.step >= 1)
            .map(|segment| segment.segment_id.clone())
            .context("a running segment")?;
        cluster.workers[0].kill9();
        let killed = Instant::now();
        // Back in the queue once the dead worker's lease runs out, not before.
        let requeued = poll_until(cluster, &id, Duration::from_secs(60), |status| {
            status.segments.iter().any(|segment| {
                segment.segment_id == victim
                    && segment.state == pb::TaskState::Ready as i32
                    && segment.error.contains("worker lost")
            })
        })
        .await?;
        let delay = killed.elapsed();
        eprintln!(
            "segment {victim} back in the queue {:.2} s after kill -9 (worker TTL {worker_ttl} s): {}",
            delay.as_secs_f64(),
            segment_states(&requeued)
        );
        if delay < Duration::from_secs_f64(worker_ttl * 0.5) {
            bail!("requeued after {delay:?}, before the {worker_ttl} s lease could expire");
        }
        cluster.start_worker("survivor", "1x4GiB")?;
        poll_until(cluster, &id, Duration::from_secs(60), |status| {
            status.segments.iter().any(|segment| {
                segment.segment_id == victim
                    && segment.attempt == 2
                    && segment.worker.starts_with("survivor")
            })
        })
        .await?;
        let status = poll_until_succeeded(cluster, &id, DEADLINE).await?;
        let segment = status
            .segments
            .iter()
            .find(|segment| segment.segment_id == victim)
            .context("victim segment")?;
        if segment.attempt != 2 || !segment.worker.starts_with("survivor") {
            bail!("the victim segment should be done once, by attempt 2: {segment:?}");
        }
        let scheduler_log = cluster.schedulers[0].1.log_text();
        let accepted = scheduler_log
            .lines()
            .filter(|line| line.contains("task done") && line.contains(&format!("/{victim}/")))
            .count();
        if accepted != 1 {
            bail!("segment {victim} accepted {accepted} times");
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_off_worker_s_late_result_is_refused_and_changes_nothing() {
    let farm = Farm::start(Timings::default()).expect("etcd and S3 start");
    farm.check(async |farm| {
        let cluster = &mut farm.cluster;
        cluster.start_scheduler()?;
        // A worker of our own, driven by hand: it takes an assignment, then goes silent.
        // The scheduler serves before it leads: find the leader like a real worker does.
        let mut rogue = WorkerServiceClient::new(find_leader(cluster).await?.0);
        let device = reelfarm_tests::simulated_gpu("rogue");
        let worker_id = rogue
            .register(pb::RegisterWorkerRequest {
                name: "rogue".into(),
                devices: vec![device],
                models: vec!["reelfarm-tiny".into()],
                worker_id: "rogue-1".into(),
                running: Vec::new(),
            })
            .await?
            .into_inner()
            .worker_id;
        let mut commands = rogue
            .receive_commands(pb::ReceiveCommandsRequest {
                worker_id: worker_id.clone(),
            })
            .await?
            .into_inner();
        let mut client = leader_client(cluster).await?;
        let spec = pb::SequenceSpec {
            shots: sixty_second_spec().shots[..1].to_vec(),
            ..sixty_second_spec()
        };
        let id = submit(&mut client, spec, "").await?.sequence_id;
        let assignment = tokio::time::timeout(Duration::from_secs(20), commands.message())
            .await
            .context("no assignment for the rogue worker")??
            .and_then(|command| match command.command {
                Some(pb::worker_command::Command::Assign(assignment)) => assignment.assignment,
                _ => None,
            })
            .context("the first command should be an assignment")?;
        drop(commands);
        // Partitioned: the stream is gone; after the lease a real worker takes the segment.
        cluster.start_worker("honest", "1x4GiB")?;
        let status = poll_until(cluster, &id, DEADLINE, is_final).await?;
        if state_of(&status) != pb::SequenceState::Succeeded || status.segments[0].attempt != 2 {
            bail!("expected success by attempt 2: {}", segment_states(&status));
        }
        let before = status.clone();
        let late = rogue
            .complete_task(pb::CompleteTaskRequest {
                assignment: Some(assignment.clone()),
                output_key: "sequences/forged.mp4".into(),
                phases: Vec::new(),
                peak_memory_bytes: 0,
                objects: Vec::new(),
                resumed_from_step: 0,
                seams: Vec::new(),
                cost_usd: 0.0,
            })
            .await;
        match late {
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {}
            other => bail!("a late result must be FailedPrecondition: {other:?}"),
        }
        let unknown = rogue
            .fail_task(pb::FailTaskRequest {
                assignment: Some(pb::AssignmentRef {
                    assignment_id: format!("{id}/s999-00/1"),
                    attempt: 1,
                }),
                reason: pb::FailureReason::ModelError as i32,
                message: "made up".into(),
                corrupt_keys: Vec::new(),
                remote_job_unusable: false,
            })
            .await;
        match unknown {
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {}
            other => bail!("an unknown segment must be FailedPrecondition: {other:?}"),
        }
        let after = leader_client(cluster)
            .await?
            .get_sequence(pb::GetSequenceRequest {
                sequence_id: id.clone(),
            })
            .await?
            .into_inner();
        if after.segments != before.segments || after.video_key != before.video_key {
            bail!("the late result changed the sequence:\n{before:#?}\n{after:#?}");
        }
        let log = cluster.schedulers[0].1.log_text();
        if !log.contains("completion refused") {
            bail!("the refusal should be logged");
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_leader_dies_the_other_scheduler_leads_and_the_sequence_completes() {
    let timings = Timings {
        leader_ttl_s: 2.0,
        worker_ttl_s: 8.0,
    };
    let farm = Farm::start(timings).expect("etcd and S3 start");
    farm.check(async |farm| {
        let cluster = &mut farm.cluster;
        let first = cluster.start_scheduler()?;
        let second = cluster.start_scheduler()?;
        // Ask after the election, not while it may still be under way.
        let (_, leader_url) = find_leader(cluster).await?;
        let (leader_index, follower_url) = if leader_url == first {
            (0, second.clone())
        } else {
            (1, first.clone())
        };
        for index in 0..2 {
            cluster.start_worker(&format!("node-{index}"), "1x4GiB")?;
        }
        let mut client = leader_client(cluster).await?;
        let spec = pb::SequenceSpec {
            steps: Some(4),
            ..sixty_second_spec()
        };
        let id = submit(&mut client, spec, "failover").await?.sequence_id;
        // A person watching from the CLI rides through the failover.
        let mut watcher = std::process::Command::new(reelfarm_tests::cluster::reelfarm_binary())
            .args(["watch", "-q", &id])
            .env("REELFARM_SCHEDULER", cluster.scheduler_list())
            .stdout(std::fs::File::create(farm.dir.path().join("watch.out"))?)
            .stderr(std::fs::File::create(farm.dir.path().join("watch.err"))?)
            .spawn()?;
        let before_kill = poll_until(cluster, &id, Duration::from_secs(120), |status| {
            status
                .segments
                .iter()
                .any(|segment| segment.state == pb::TaskState::Done as i32)
        })
        .await?;
        cluster.schedulers[leader_index].1.kill9();
        let takeover = wait_leads(&follower_url, Duration::from_secs(15))
            .await
            .context("the follower never took over")?;
        eprintln!(
            "leader failover after kill -9: {:.2} s",
            takeover.as_secs_f64()
        );
        if takeover > Duration::from_secs(5) {
            bail!("the follower took {takeover:?} to lead (limit 5 s)");
        }
        let status = poll_until_succeeded(cluster, &id, DEADLINE).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let watched = loop {
            if let Some(code) = watcher.try_wait()? {
                break code;
            }
            if Instant::now() > deadline {
                let _ = watcher.kill();
                bail!("reelfarm watch did not end after the sequence finished");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let watch_errors = std::fs::read_to_string(farm.dir.path().join("watch.err"))?;
        if !watched.success() {
            bail!("reelfarm watch across the failover exited {watched}: {watch_errors}");
        }
        eprintln!(
            "reelfarm watch across the failover: {}",
            watch_errors.trim()
        );
        // Workers kept their work through the failover: a segment running or done when the
        // leader died keeps its attempt. One still waiting then may have been assigned by the
        // dying leader in its last moment (committed, never delivered); the new leader
        // places that one again, once.
        for (segment, earlier) in status.segments.iter().zip(&before_kill.segments) {
            let was_placed = [pb::TaskState::Running as i32, pb::TaskState::Done as i32]
                .contains(&earlier.state);
            let allowed = if was_placed { earlier.attempt } else { 2 };
            if segment.attempt > allowed.max(1) {
                bail!(
                    "segment placed again after the failover: before {}, after {}",
                    segment_states(&before_kill),
                    segment_states(&status)
                );
            }
        }
        let again = submit(
            &mut leader_client(cluster).await?,
            sixty_second_spec(),
            "failover",
        )
        .await?;
        if again.sequence_id != id || again.created {
            bail!("the idempotency key was lost in the failover: {again:?}");
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmitting_returns_the_same_sequence_and_cancel_frees_the_workers() {
    let farm = Farm::start(Timings::default()).expect("etcd and S3 start");
    farm.check(async |farm| {
        let cluster = &mut farm.cluster;
        cluster.start_scheduler()?;
        cluster.start_worker("w0", "1x4GiB")?;
        cluster.start_worker("w1", "1x4GiB")?;
        let mut client = leader_client(cluster).await?;
        let spec = pb::SequenceSpec {
            steps: Some(24),
            ..sixty_second_spec()
        };
        let first = submit(&mut client, spec.clone(), "take-1").await?;
        let second = submit(&mut client, spec, "take-1").await?;
        if first.sequence_id != second.sequence_id || !first.created || second.created {
            bail!("same key, different sequences: {first:?} / {second:?}");
        }
        let id = first.sequence_id;
        poll_until(cluster, &id, Duration::from_secs(120), |status| {
            status
                .segments
                .iter()
                .filter(|segment| {
                    segment.state == pb::TaskState::Running as i32 && segment.step >= 1
                })
                .count()
                // Segments share a GPU while their reservations fit: two or more.
                >= 2
        })
        .await?;
        let (code, stdout, stderr) = cluster.client(&["cancel", &id])?;
        if code != 0 {
            bail!("reelfarm cancel exited {code}: {stdout}{stderr}");
        }
        let cancelled = Instant::now();
        let freed = loop {
            let workers = client
                .list_workers(pb::ListWorkersRequest {})
                .await?
                .into_inner()
                .workers;
            let busy = workers
                .iter()
                .flat_map(|worker| &worker.devices)
                .any(|device| device.reserved_bytes > 0 || !device.running.is_empty());
            if !busy && workers.len() == 2 {
                break cancelled.elapsed();
            }
            if cancelled.elapsed() > Duration::from_secs(30) {
                bail!("workers still busy 30 s after cancel: {workers:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        eprintln!("cancel freed both workers in {:.2} s", freed.as_secs_f64());
        let status = poll_until(cluster, &id, Duration::from_secs(10), is_final).await?;
        if state_of(&status) != pb::SequenceState::Cancelled {
            bail!("expected cancelled: {status:?}");
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_store_conformance_suite_passes_on_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(dir.path()).expect("etcd starts");
    let mut settings = reelfarm_scheduler::state::EtcdSettings::new(vec![etcd.url.clone()]);
    settings.leader_ttl = Duration::from_secs(2);
    settings.worker_ttl = Duration::from_secs(2);
    let state = reelfarm_scheduler::state::EtcdState::connect(settings)
        .await
        .expect("connects");
    reelfarm_scheduler::state::conformance::run(&state)
        .await
        .unwrap_or_else(|failure| panic!("etcd state: {failure}"));
}

#[test]
fn a_scheduler_without_etcd_or_s3_exits_naming_the_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start().expect("S3 starts");
    let dead = format!("http://127.0.0.1:{}", reelfarm_tests::cluster::free_port());
    let run = |args: &[&str]| {
        let started = Instant::now();
        let output = std::process::Command::new(reelfarm_tests::cluster::reelfarm_binary())
            .arg("scheduler")
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "off"])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", s3.access_key())
            .env("AWS_SECRET_ACCESS_KEY", s3.secret_key())
            .env("AWS_REGION", "us-east-1")
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
            started.elapsed(),
        )
    };
    let (code, stderr, took) = run(&[
        "--etcd",
        &dead,
        "--s3-endpoint",
        s3.endpoint(),
        "--bucket",
        s3.bucket(),
    ]);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&dead) && stderr.contains("etcd"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");

    let etcd = Etcd::start(dir.path()).expect("etcd starts");
    let (code, stderr, took) = run(&[
        "--etcd",
        &etcd.url,
        "--s3-endpoint",
        &dead,
        "--bucket",
        "renders",
    ]);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains(&dead), "{stderr}");
    assert!(took < Duration::from_secs(30), "took {took:?}");

    let (code, stderr, _) = run(&[
        "--etcd",
        &etcd.url,
        "--s3-endpoint",
        s3.endpoint(),
        "--bucket",
        "no-such-bucket",
    ]);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("no-such-bucket"), "{stderr}");
}

async fn health_of(url: &str) -> Result<i32> {
    health_of_service(url, "reelfarm.v1.SequenceService").await
}

async fn health_of_service(url: &str, service: &str) -> Result<i32> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let response = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await?;
    Ok(response.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_is_serving_while_etcd_answers_and_not_after() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let farm = Farm::start(Timings::default()).expect("etcd and S3 start");
    farm.check(async |farm| {
        let leader = farm.cluster.start_scheduler()?;
        let follower = farm.cluster.start_scheduler()?;
        farm.cluster.start_worker("probed", "1x24GiB:L4")?;
        let worker = format!("http://{}", farm.cluster.worker_health[0]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while health_of_service(&worker, "").await.ok() != Some(ServingStatus::Serving as i32) {
            if Instant::now() > deadline {
                bail!("the worker's health service never reported SERVING");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Followers are ready too: they redirect to the leader.
        for url in [&leader, &follower] {
            let deadline = Instant::now() + Duration::from_secs(20);
            while health_of(url).await.ok() != Some(ServingStatus::Serving as i32) {
                if Instant::now() > deadline {
                    bail!("{url} never reported SERVING");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        farm.etcd.process.kill9();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if health_of(&follower).await.ok() == Some(ServingStatus::NotServing as i32) {
                break;
            }
            if Instant::now() > deadline {
                bail!("still SERVING 30 s after etcd died");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(())
    })
    .await;
}

/// Six hard cuts: work for several workers at once.
fn six_cuts(title: &str) -> pb::SequenceSpec {
    pb::SequenceSpec {
        title: Some(title.into()),
        fps: Some(8),
        steps: Some(3),
        shots: (0..6)
            .map(|index| shot(&format!("shot {index} of {title}"), 3.0, "cut"))
            .collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_worker_takes_no_new_work_and_sigterm_finishes_running_segments() {
    let farm = Farm::start(Timings::default()).expect("etcd and S3 start");
    farm.check(async |farm| {
        farm.cluster.start_scheduler()?;
        farm.cluster.start_worker("keep", "1x80GiB:H100")?;
        farm.cluster.start_worker("spare", "1x80GiB:H100")?;
        let mut client = leader_client(&farm.cluster).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while client
            .list_workers(pb::ListWorkersRequest {})
            .await?
            .into_inner()
            .workers
            .len()
            < 2
        {
            if Instant::now() > deadline {
                bail!("two workers did not register");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let first = submit(&mut client, six_cuts("first"), "drain-1")
            .await?
            .sequence_id;
        let (code, stdout, stderr) = farm.cluster.client(&["drain", "spare", "--wait", "120"])?;
        if code != 0 || !stdout.contains("spare: idle") {
            bail!("drain exited {code}: {stdout}{stderr}");
        }
        poll_until(&farm.cluster, &first, DEADLINE, is_final).await?;

        // Everything placed after the drain goes to the other worker.
        let second = submit(&mut client, six_cuts("second"), "drain-2")
            .await?
            .sequence_id;
        let status = poll_until_succeeded(&farm.cluster, &second, DEADLINE).await?;
        if let Some(segment) = status
            .segments
            .iter()
            .find(|s| !s.worker.starts_with("keep"))
        {
            bail!(
                "a segment ran on {} after `spare` was drained",
                segment.worker
            );
        }

        // SIGTERM while segments run: the worker drains, they finish, it exits.
        let third = submit(&mut client, six_cuts("third"), "drain-3")
            .await?
            .sequence_id;
        let running = poll_until(&farm.cluster, &third, DEADLINE, |status| {
            status
                .segments
                .iter()
                .any(|s| s.state == pb::TaskState::Running as i32)
        })
        .await?;
        let was_running: Vec<String> = running
            .segments
            .iter()
            .filter(|s| s.state == pb::TaskState::Running as i32)
            .map(|s| s.segment_id.clone())
            .collect();
        let started = Instant::now();
        let exit = farm.cluster.workers[0].terminate(Duration::from_secs(60))?;
        let log = farm.cluster.workers[0].log_text();
        if !exit.success() || !log.contains("shutting down: draining") {
            bail!(
                "worker exited {exit:?} after {:?}:\n{log}",
                started.elapsed()
            );
        }
        let after = leader_client(&farm.cluster)
            .await?
            .get_sequence(pb::GetSequenceRequest {
                sequence_id: third.clone(),
            })
            .await?
            .into_inner();
        for id in &was_running {
            let segment = after.segments.iter().find(|s| &s.segment_id == id).unwrap();
            if segment.state != pb::TaskState::Done as i32 {
                bail!(
                    "{id} was running at SIGTERM and is {:?} after the drain",
                    segment.state
                );
            }
        }
        eprintln!(
            "SIGTERM drained {} running segment(s) in {:.1} s",
            was_running.len(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    })
    .await;
}
