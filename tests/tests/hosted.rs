//! Hosted models behind the same queue: sequences rendered through the OpenAI videos API
//! (its contract-faithful fake, `fake_videos`) by a `reelfarm worker --hosted` process, on
//! real etcd, a real S3-compatible server and the scheduler processes: a leader failover
//! and a worker killed mid-job create no remote job twice, the request budget and
//! `Retry-After` are honoured, continuations carry their handoff frame, the video is exact
//! and its report shows what it cost; and a sequence mixing a local and a hosted shot
//! renders into one video.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use reelfarm_common::pb;
use reelfarm_media::video::decode_png;
use reelfarm_tests::cluster::Timings;
use reelfarm_tests::fake_videos::FakeVideos;
use reelfarm_tests::farm::Farm;
use reelfarm_tests::leading::{
    find_leader, leader_client, poll_until, poll_until_succeeded, submit,
};
use reelfarm_tests::{probe, shot};

const DEADLINE: Duration = Duration::from_secs(300);
/// The hosted model's request budget in the test: one request per 500 ms, about half what
/// two jobs polling at the start of their backoff would send unpaced.
const REQUESTS_PER_MINUTE: u32 = 120;
const PRICE_PER_SECOND: f64 = 0.10;
const KEY_VARIABLE: &str = "FAKE_VIDEOS_API_KEY";

/// A catalog with one hosted model on the fake (OpenAI's clip lengths and landscape sizes).
fn write_catalog(dir: &Path, fake: &FakeVideos) -> Result<PathBuf> {
    let path = dir.join("hosted-models.toml");
    std::fs::write(
        &path,
        format!(
            r#"[[model]]
id = "sora-fake"
backend = "openai-videos"
remote_model = "sora-2"
base_url = "{}/v1"
api_key_env = "{KEY_VARIABLE}"
clip_seconds = [4, 8, 12]
sizes = ["1280x720", "720x1280"]
price_per_second_usd = {PRICE_PER_SECOND}
max_concurrent_jobs = 2
requests_per_minute = {REQUESTS_PER_MINUTE}
"#,
            fake.url
        ),
    )?;
    Ok(path)
}

/// 60 s in five shots at 8 fps, every join kind: the 14 s first shot takes a 12 s clip and a
/// continuing 4 s one; a continuing shot; a cut; a crossfade whose lead pushes it past one
/// clip; a cut. Seven remote jobs, 68 s billed.
fn sixty_second_hosted_spec(model: &str) -> pb::SequenceSpec {
    let mut shots = vec![
        shot("harbour at dawn, wide", 14.0, "cut"),
        shot("the same harbour as boats leave", 10.0, "continue"),
        shot("open sea, static camera", 12.0, "cut"),
        shot("dunes at dusk, slow pan", 12.0, "crossfade"),
        shot("city skyline at night", 12.0, "cut"),
    ];
    shots[3].crossfade_seconds = Some(1.0);
    pb::SequenceSpec {
        title: Some("hosted sixty".into()),
        model: Some(model.into()),
        fps: Some(8),
        seed: Some(11),
        shots,
        ..Default::default()
    }
}

/// The hosted segments' billed seconds in the spec above.
const BILLED_SECONDS: f64 = 68.0;
const HOSTED_JOBS: usize = 7;

fn download(farm: &Farm, id: &str, name: &str) -> Result<(probe::VideoProbe, serde_json::Value)> {
    let output = farm.dir.path().join(format!("{name}.mp4"));
    let (code, stdout, stderr) =
        farm.cluster
            .client(&["download", id, "-o", output.to_str().context("utf-8 path")?])?;
    if code != 0 {
        bail!("reelfarm download exited {code}: {stdout}{stderr}");
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(
        farm.dir.path().join(format!("{name}.report.json")),
    )?)?;
    Ok((probe::probe(&output), report))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sixty_second_sequence_renders_through_the_hosted_api_across_failovers_paying_once() {
    let fake = FakeVideos::start(4.0).await.expect("the fake API starts");
    let farm = Farm::start(Timings::default()).expect("etcd and S3 start");
    farm.check(async |farm| {
        let catalog = write_catalog(farm.dir.path(), &fake)?;
        let catalog_env = [("REELFARM_MODELS", catalog.to_str().context("utf-8")?)];
        farm.cluster.start_scheduler_with(&catalog_env)?;
        farm.cluster.start_scheduler_with(&catalog_env)?;
        let key = [(KEY_VARIABLE, fake.api_key.as_str())];
        farm.cluster
            .start_hosted_worker("hosted-0", &catalog, &key)?;
        let cluster = &mut farm.cluster;

        // A budget below the estimate is refused with both figures.
        let mut client = leader_client(cluster).await?;
        let refused = client
            .submit_sequence(pb::SubmitSequenceRequest {
                spec: Some(sixty_second_hosted_spec("sora-fake")),
                idempotency_key: "over-budget".into(),
                no_cache: false,
                max_cost_usd: Some(5.0),
            })
            .await
            .err()
            .context("a sequence above its budget must be refused")?;
        if !refused
            .message()
            .contains("estimated at $6.80, above the budget of $5.00")
        {
            bail!("budget refusal: {}", refused.message());
        }
        let submitted =
            submit(&mut client, sixty_second_hosted_spec("sora-fake"), "hosted").await?;
        let id = submitted.sequence_id;
        let estimated = submitted.status.context("status")?.estimated_cost_usd;
        if (estimated - BILLED_SECONDS * PRICE_PER_SECOND).abs() > 1e-9 {
            bail!(
                "estimated cost {estimated}, expected {}",
                BILLED_SECONDS * PRICE_PER_SECOND
            );
        }

        // 1. A leader failover while jobs run: the worker keeps polling, records go on.
        reelfarm_tests::cluster::wait_until("two remote jobs", DEADLINE, || fake.created() >= 2)?;
        let (_, leader) = find_leader(cluster).await?;
        let index = cluster
            .schedulers
            .iter()
            .position(|(url, _)| *url == leader)
            .context("the leader is one of ours")?;
        cluster.schedulers[index].1.kill9();
        eprintln!(
            "killed the leader {leader} with {} remote jobs created",
            fake.created()
        );
        // The 429s land on whatever the worker asks next; it must wait as told.
        fake.answer_too_many(2, 1);

        // 2. The hosted worker dies while a recorded job runs remotely: the next attempt, on
        // a new worker, polls that job instead of creating another.
        // Killed when both slots hold a recorded job still rendering: no create is between
        // the API's answer and its record, so every job the farm paid for is known.
        let running = poll_until(cluster, &id, DEADLINE, |status| {
            status
                .segments
                .iter()
                .filter(|segment| {
                    !segment.remote_job_id.is_empty()
                        && segment.state == pb::TaskState::Running as i32
                        && segment.step < 100
                })
                .count()
                == 2
        })
        .await?;
        let recorded: Vec<String> = running
            .segments
            .iter()
            .filter(|segment| !segment.remote_job_id.is_empty())
            .map(|segment| format!("{} {}", segment.segment_id, segment.remote_job_id))
            .collect();
        eprintln!("killing the hosted worker with recorded jobs {recorded:?}");
        cluster.workers[0].kill9();
        let killed_at = std::time::Instant::now();
        cluster.start_hosted_worker("hosted-1", &catalog, &key)?;

        let done = poll_until_succeeded(cluster, &id, DEADLINE).await?;
        let created = fake.created();
        eprintln!("sequence done: {created} remote jobs created for {HOSTED_JOBS} segments");
        if created != HOSTED_JOBS {
            bail!("{created} remote jobs for {HOSTED_JOBS} hosted segments: one was paid twice");
        }
        let second_log = cluster.workers[1].log_text();
        if !second_log.contains("polling the remote job an earlier attempt created") {
            bail!("the new worker never resumed a recorded job:\n{second_log}");
        }

        // Paid once per job, as estimated, shown per segment and per sequence.
        let paid: f64 = done.segments.iter().map(|segment| segment.cost_usd).sum();
        if (done.cost_usd - estimated).abs() > 1e-9 || (paid - estimated).abs() > 1e-9 {
            bail!(
                "paid {} (segments {paid}), estimated {estimated}",
                done.cost_usd
            );
        }

        // The request budget: never two requests closer than the pace allows, and a 429's
        // request is sent again only after its Retry-After.
        let arrivals = fake.arrivals();
        // Each hosted worker lets one request go per 500 ms (the two workers, one killed
        // and its successor, each keep their own pace: checked apart). Arrival times also
        // carry this busy machine's scheduling jitter, which does not add up: nine requests
        // in a row span at least eight intervals, less 300 ms; two, at least 80% of one.
        let spacing = Duration::from_secs(60) / REQUESTS_PER_MINUTE;
        let timeline = || {
            let t0 = arrivals[0].at;
            arrivals
                .iter()
                .map(|a| format!("{:>7.3} {} {} {:?}", (a.at - t0).as_secs_f64(), a.method, a.path, a.fault))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let (first, second): (Vec<_>, Vec<_>) =
            arrivals.iter().partition(|arrival| arrival.at < killed_at);
        if second.len() < 9 {
            bail!("hosted-1 made fewer than nine requests:\n{}", timeline());
        }
        for (worker, part) in [("hosted-0", &first), ("hosted-1", &second)] {
            let span = |n: usize| part.windows(n).map(|w| w[n - 1].at - w[0].at).min();
            let (two, nine) = (span(2), span(9));
            eprintln!("{worker}: {} requests; nine in a row span at least {nine:?}, two {two:?} (one per {spacing:?} allowed)", part.len());
            let bursty = nine.is_some_and(|nine| nine + Duration::from_millis(300) < spacing * 8)
                || two.is_some_and(|two| two < spacing * 4 / 5);
            if bursty {
                bail!(
                    "{worker}: nine requests in {nine:?}, two {two:?} apart: the {REQUESTS_PER_MINUTE}/min budget was not kept\n{}",
                    timeline()
                );
            }
        }
        // The budget as the service counts it: no minute holds more.
        let most_in_a_minute = arrivals
            .iter()
            .enumerate()
            .map(|(first, start)| {
                arrivals[first..]
                    .iter()
                    .take_while(|a| a.at - start.at < Duration::from_secs(60))
                    .count()
            })
            .max()
            .unwrap_or(0);
        if most_in_a_minute > REQUESTS_PER_MINUTE as usize {
            bail!("{most_in_a_minute} requests in one minute");
        }
        // The injected 429s were answered and the sequence went on (their Retry-After
        // timing: `the_api_client_keeps_its_pace_and_waits_as_a_429_tells_it`).
        if arrivals.iter().filter(|a| a.fault == Some(429)).count() != 2 {
            bail!("the two injected 429s were not all answered");
        }

        // Continuations carry their handoff frame, at the clip's size; cuts start clean.
        let calls = fake.create_calls();
        for call in &calls {
            let continues = call.prompt.contains("as boats leave")
                || call.prompt.contains("harbour at dawn") && call.seconds == "4"
                || call.prompt.contains("dunes") && call.seconds == "4";
            match (&call.reference, continues) {
                (Some(png), true) => {
                    let picture = decode_png(png)?;
                    if (picture.width, picture.height) != (1280, 720) || call.size != "1280x720" {
                        bail!(
                            "{}: reference {}x{} for size {}",
                            call.id,
                            picture.width,
                            picture.height,
                            call.size
                        );
                    }
                }
                (None, false) => {}
                (reference, _) => bail!(
                    "{} ({:?}, {} s): reference {} but continues {continues}",
                    call.id,
                    call.prompt,
                    call.seconds,
                    reference.is_some()
                ),
            }
        }

        // The video is exact, and its report shows what each shot cost.
        let (video, report) = download(farm, &id, "hosted")?;
        if (video.width, video.height, video.frames) != (848, 480, 480) || video.frame_rate != "8/1"
        {
            bail!("hosted video: {video:?}");
        }
        let total = report["cost_usd"].as_f64().context("report cost_usd")?;
        let shots = report["shot_costs"]
            .as_array()
            .context("report shot_costs")?;
        if (total - estimated).abs() > 1e-9 || shots.len() != 5 {
            bail!("report cost {total}, shots {shots:?}");
        }
        if (shots[0]["cost_usd"].as_f64().unwrap_or(0.0) - 1.6).abs() > 1e-9 {
            bail!("the first shot (12 s + 4 s) cost {:?}", shots[0]);
        }
        // Each join says what its shot cost: the continuation inside shot 0 (12 s + 4 s),
        // the cut to shot 2 (one 12 s clip).
        let joins = report["joins"].as_array().context("report joins")?;
        let join_cost = |shot: u64| {
            joins
                .iter()
                .find(|join| join["shot_index"].as_u64() == Some(shot))
                .and_then(|join| join["shot_cost_usd"].as_f64())
        };
        let near = |cost: Option<f64>, want: f64| cost.is_some_and(|cost| (cost - want).abs() < 1e-9);
        if !near(join_cost(0), 1.6) || !near(join_cost(2), 1.2) {
            bail!("join costs: {joins:?}");
        }
        let (code, stdout, _) = farm.cluster.client(&["status", &id])?;
        if code != 0
            || !stdout.contains("cost: $6.80 paid of $6.80 estimated")
            || !stdout.contains("sora-fake 12 s $1.20")
        {
            bail!("status does not show the cost:\n{stdout}");
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_mixing_a_local_and_a_hosted_shot_renders_into_one_video() {
    let fake = FakeVideos::start(1.0).await.expect("the fake API starts");
    let farm = Farm::start(Timings::default()).expect("etcd and S3 start");
    farm.check(async |farm| {
        let catalog = write_catalog(farm.dir.path(), &fake)?;
        let catalog_env = [("REELFARM_MODELS", catalog.to_str().context("utf-8")?)];
        farm.cluster.start_scheduler_with(&catalog_env)?;
        farm.cluster.start_worker("gpu-0", "1x24GiB:L4")?;
        let key = [(KEY_VARIABLE, fake.api_key.as_str())];
        farm.cluster
            .start_hosted_worker("hosted-0", &catalog, &key)?;
        let cluster = &mut farm.cluster;
        // A local establishing shot, then a hosted shot continuing it: the API gets the
        // local model's handoff frame as its first frame.
        let mut hosted = shot("the lighthouse keeper climbs the stairs", 6.0, "continue");
        hosted.model = Some("sora-fake".into());
        let spec = pb::SequenceSpec {
            title: Some("mixed".into()),
            model: Some("reelfarm-tiny".into()),
            fps: Some(8),
            seed: Some(5),
            steps: None,
            shots: vec![shot("a lighthouse on a cliff at dusk", 5.0, "cut"), hosted],
            ..Default::default()
        };
        let mut client = leader_client(cluster).await?;
        let id = submit(&mut client, spec, "mixed").await?.sequence_id;
        let done = poll_until_succeeded(cluster, &id, DEADLINE).await?;
        // Worker ids are the names with a per-run suffix.
        let workers: Vec<(&str, &str)> = done
            .segments
            .iter()
            .map(|segment| (segment.model.as_str(), segment.worker.as_str()))
            .collect();
        let expected = [("reelfarm-tiny", "gpu-0-"), ("sora-fake", "hosted-0-")];
        let ran_as_expected = workers.len() == 2
            && workers
                .iter()
                .zip(expected)
                .all(|((model, worker), (want_model, prefix))| {
                    *model == want_model && worker.starts_with(prefix)
                });
        if !ran_as_expected {
            bail!("segments ran as {workers:?}");
        }
        let calls = fake.create_calls();
        let [call] = calls.as_slice() else {
            bail!("{} create calls for one hosted segment", calls.len());
        };
        if call.reference.is_none() || call.seconds != "8" {
            bail!(
                "the hosted continuation: {} s, reference {}",
                call.seconds,
                call.reference.is_some()
            );
        }
        let (video, report) = download(farm, &id, "mixed")?;
        if (video.width, video.height, video.frames) != (848, 480, 88) {
            bail!("mixed video: {video:?}");
        }
        if (report["cost_usd"].as_f64().unwrap_or(0.0) - 0.8).abs() > 1e-9 {
            bail!("mixed report cost: {}", report["cost_usd"]);
        }

        // The spend by owner, as the dashboard reads it from the scheduler.
        let scheduler_metrics = farm
            .cluster
            .metrics
            .iter()
            .find(|(role, _)| *role == "scheduler")
            .map(|(_, address)| address.clone())
            .context("the scheduler serves metrics")?;
        let text = reelfarm_tests::cluster::http_get(&scheduler_metrics, "/metrics")
            .context("scraping the scheduler")?;
        let spent: f64 = text
            .lines()
            .filter(|line| {
                line.starts_with("reelfarm_cost_usd_total{") && line.contains("owner=\"unowned\"")
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if (spent - 0.8).abs() > 1e-9 {
            bail!("reelfarm_cost_usd_total for the owner: {spent}\n{text}");
        }

        // Cancelling a sequence deletes its running remote job: nothing more is paid for.
        fake.set_job_seconds(120.0);
        let mut slow = shot("a storm rolls in over the bay", 4.0, "cut");
        slow.model = Some("sora-fake".into());
        let spec = pb::SequenceSpec {
            title: Some("cancelled".into()),
            fps: Some(8),
            shots: vec![slow],
            ..Default::default()
        };
        let mut client = leader_client(&farm.cluster).await?;
        let id = submit(&mut client, spec, "cancelled").await?.sequence_id;
        let running = poll_until(&farm.cluster, &id, DEADLINE, |status| {
            !status.segments[0].remote_job_id.is_empty()
        })
        .await?;
        let job = running.segments[0].remote_job_id.clone();
        let (code, stdout, stderr) = farm.cluster.client(&["cancel", &id])?;
        if code != 0 {
            bail!("reelfarm cancel exited {code}: {stdout}{stderr}");
        }
        let deleted = format!("/v1/videos/{job}");
        reelfarm_tests::cluster::wait_until("the remote job's deletion", DEADLINE, || {
            fake.arrivals()
                .iter()
                .any(|arrival| arrival.method == "DELETE" && arrival.path == deleted)
        })?;
        Ok(())
    })
    .await;
}

/// The client on its own against the fake: requests keep the model's pace, a 429 is sent
/// again only after its `Retry-After`, 5xx answers are retried, and a refusal (4xx) is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_client_keeps_its_pace_and_waits_as_a_429_tells_it() {
    use reelfarm_models::{HostedAuth, HostedSpec, KeySource};
    use reelfarm_worker::hosted::{Api, ApiError};
    let fake = FakeVideos::start(0.5).await.expect("the fake API starts");
    let spec = HostedSpec {
        base_url: format!("{}/v1", fake.url),
        key: KeySource::Env(KEY_VARIABLE.into()),
        auth: HostedAuth::Bearer,
        remote_model: "sora-2".into(),
        clip_seconds: vec![4, 8, 12],
        sizes: vec![(1280, 720)],
        price_per_second_usd: 0.1,
        max_concurrent_jobs: 1,
        requests_per_minute: 600,
    };
    let api = Api::new(spec, fake.api_key.clone()).expect("a client");
    let video = api
        .create("a pier", 4, (1280, 720), None, "key-1")
        .await
        .expect("created");
    fake.answer_too_many(1, 1);
    let asked = std::time::Instant::now();
    let polled = api
        .retrieve(&video.id)
        .await
        .expect("retrieved after the 429");
    let waited = asked.elapsed();
    assert_eq!(polled.id, video.id);
    assert!(
        waited >= Duration::from_millis(950),
        "retried {waited:?} after Retry-After: 1"
    );
    fake.answer_server_errors(2);
    api.retrieve(&video.id)
        .await
        .expect("retrieved after two 500s");
    let refused = api
        .create("a pier", 5, (1280, 720), None, "key-2")
        .await
        .err();
    assert!(
        matches!(&refused, Some(ApiError::Refused { status: 400, .. })),
        "{refused:?}"
    );
    // A create answered 5xx may have made a job: it is not sent again (never pay twice).
    fake.answer_server_errors(1);
    let ambiguous = api
        .create("a pier", 4, (1280, 720), None, "key-3")
        .await
        .err();
    assert!(
        matches!(&ambiguous, Some(ApiError::Unavailable(m)) if m.contains("not retried")),
        "{ambiguous:?}"
    );
    let arrivals = fake.arrivals();
    let faults: Vec<Option<u16>> = arrivals.iter().map(|a| a.fault).collect();
    assert_eq!(
        faults,
        [
            None,
            Some(429),
            None,
            Some(500),
            Some(500),
            None,
            None,
            Some(500)
        ]
    );
    // 600 a minute: 100 ms apart at the least.
    for pair in arrivals.windows(2) {
        assert!(
            pair[1].at - pair[0].at >= Duration::from_millis(90),
            "{arrivals:?}"
        );
    }
    assert_eq!(fake.created(), 1, "the refused create made no job");
}

/// `reelfarm render` on one machine with a hosted shot: the embedded farm calls the API from
/// an in-process hosted worker, and the summary says what it cost. A missing key is named
/// before anything starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_render_calls_a_hosted_model_and_prints_the_cost() {
    let fake = FakeVideos::start(0.5).await.expect("the fake API starts");
    let dir = tempfile::tempdir().unwrap();
    let catalog = write_catalog(dir.path(), &fake).unwrap();
    let spec = dir.path().join("mixed.yaml");
    std::fs::write(
        &spec,
        "title: mixed\nfps: 8\nshots:\n  - prompt: a lighthouse at dusk\n    duration: 3\n  \
         - prompt: the keeper climbs the stairs\n    duration: 3\n    transition: continue\n    \
         model: sora-fake\n",
    )
    .unwrap();
    let output = dir.path().join("mixed.mp4");
    let render = |key: Option<&str>| {
        let mut command = std::process::Command::new(reelfarm_tests::cluster::reelfarm_binary());
        command
            .arg("render")
            .arg(&spec)
            .arg("--models")
            .arg(&catalog)
            .arg("-o")
            .arg(&output)
            .arg("--quiet")
            .env_remove(KEY_VARIABLE)
            .env("XDG_CACHE_HOME", dir.path().join("cache"));
        if let Some(key) = key {
            command.env(KEY_VARIABLE, key);
        }
        command.output().unwrap()
    };
    let missing = tokio::task::block_in_place(|| render(None));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("model sora-fake: the API key variable FAKE_VIDEOS_API_KEY is not set"),
        "{stderr}"
    );
    assert_eq!(fake.created(), 0);
    // The fake serves on this runtime's other thread meanwhile.
    let rendered = tokio::task::block_in_place(|| render(Some(&fake.api_key)));
    let stdout = String::from_utf8_lossy(&rendered.stdout);
    assert!(
        rendered.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    // 3 s + the 0.5 s blend's 4 frames and the handoff frame: a 4 s clip at $0.10/s.
    assert!(
        stdout.contains("$0.40 paid for hosted clips ($0.40 estimated)"),
        "{stdout}"
    );
    let video = probe::probe(&output);
    assert_eq!((video.width, video.height, video.frames), (848, 480, 48));
    assert_eq!(fake.created(), 1);
}
