//! Chaos changes nothing: a two-minute sequence through worker kills, a leader kill, an
//! etcd restart, a stopped worker and S3 faults comes out frame-identical to the fault-free
//! run, with every task accepted exactly once.

use std::time::Duration;

use anyhow::{Result, bail};
use etcd_client::GetOptions;
use reelfarm_common::pb;
use reelfarm_tests::cluster::Timings;
use reelfarm_tests::farm::{Farm, STATE_PREFIX};
use reelfarm_tests::leading::{
    find_leader, is_final, leader_client, poll_until_succeeded, state_of, submit,
};
use reelfarm_tests::two_minute_spec;

/// One hash per decoded frame (ffmpeg's `framemd5`): two videos with equal lists show the
/// same pictures frame for frame, whatever their containers hold.
fn frame_hashes(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let output = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "framemd5", "-"])
        .output()
        .map_err(|error| anyhow::anyhow!("ffmpeg is needed to compare frames: {error}"))?;
    if !output.status.success() {
        anyhow::bail!(
            "ffmpeg could not decode {}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit(',').next().map(|hash| hash.trim().to_string()))
        .collect())
}

/// Per task record of the sequence, how many times it became `done`: replayed from etcd's
/// history (every revision of every record since the start).
async fn acceptances(farm: &Farm, id: &str) -> Result<std::collections::BTreeMap<String, u32>> {
    let mut client = farm.etcd_client().await?;
    let prefix = format!("{STATE_PREFIX}sequences/{id}/tasks/");
    // The newest write among the records: the replay ends there.
    let last = client
        .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
        .await?
        .kvs()
        .iter()
        .map(|kv| kv.mod_revision())
        .max()
        .unwrap_or(0);
    let mut stream = client
        .watch(
            prefix.clone(),
            Some(
                etcd_client::WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(1),
            ),
        )
        .await?;
    let mut last_state: std::collections::BTreeMap<String, String> = Default::default();
    let mut done: std::collections::BTreeMap<String, u32> = Default::default();
    let mut seen = 0;
    while seen < last {
        let Some(response) =
            tokio::time::timeout(Duration::from_secs(10), stream.message()).await??
        else {
            break;
        };
        if response.canceled() {
            bail!(
                "the history replay was cancelled (compacted at {})",
                response.compact_revision()
            );
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            seen = seen.max(kv.mod_revision());
            let key = kv.key_str()?.trim_start_matches(&prefix).to_string();
            let state = serde_json::from_slice::<serde_json::Value>(kv.value())
                .ok()
                .and_then(|doc| doc.get("state")?.as_str().map(str::to_string))
                .unwrap_or_default();
            if state == "done" && last_state.get(&key).map(String::as_str) != Some("done") {
                *done.entry(key.clone()).or_default() += 1;
            }
            last_state.insert(key, state);
        }
    }
    Ok(done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kills_stops_restarts_and_s3_faults_change_nothing_in_a_two_minute_sequence() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |elapsed| elapsed.as_nanos() as u64);
    eprintln!("chaos seed {seed}");
    let timings = Timings {
        leader_ttl_s: 2.0,
        worker_ttl_s: 3.0,
    };
    let mut farm = Farm::start(timings).expect("etcd and S3 start");
    let proxy = reelfarm_tests::fault_proxy::FaultProxy::start(&farm.cluster.store.endpoint, seed)
        .await
        .expect("the fault proxy starts");
    farm.cluster.store.endpoint = proxy.endpoint.clone();
    farm.check(async |farm| {
        let cluster = &mut farm.cluster;
        cluster.start_scheduler()?;
        cluster.start_scheduler()?;
        let names = ["node-0", "node-1", "node-2", "node-frozen"];
        for name in names {
            cluster.start_worker(name, "1x4GiB")?;
        }
        // The reference: the same spec with no fault.
        let mut client = leader_client(cluster).await?;
        let reference = submit(&mut client, two_minute_spec(), "reference").await?.sequence_id;
        let status = poll_until_succeeded(cluster, &reference, Duration::from_secs(600)).await?;
        let fault_free =
            Duration::from_secs_f64(status.finished_unix_s - status.submitted_unix_s);

        // Now everything at once.
        let mut dice = seed | 1;
        let mut roll = |range: std::ops::Range<f64>| {
            dice ^= dice << 13;
            dice ^= dice >> 7;
            dice ^= dice << 17;
            range.start + (dice % 10_000) as f64 / 10_000.0 * (range.end - range.start)
        };
        #[derive(Debug)]
        enum Fault {
            Stop,
            Resume,
            KillWorker(usize),
            Restart(usize),
            KillLeader,
            RestartEtcd,
        }
        let mut plan: Vec<(f64, Fault)> = Vec::new();
        // Faults land within the time the fault-free run took.
        let window = fault_free.as_secs_f64() * 0.8;
        let stop_at = roll(0.05..0.3) * window;
        plan.push((stop_at, Fault::Stop));
        plan.push((stop_at + 20.0, Fault::Resume));
        for worker in 0..3 {
            let at = roll(0.1..0.9) * window;
            plan.push((at, Fault::KillWorker(worker)));
            plan.push((at + 1.0, Fault::Restart(worker)));
        }
        plan.push((roll(0.2..0.6) * window, Fault::KillLeader));
        plan.push((roll(0.3..0.9) * window, Fault::RestartEtcd));
        plan.sort_by(|a, b| a.0.total_cmp(&b.0));
        eprintln!("chaos plan: {plan:?}");
        let requests_before = proxy
            .counts
            .requests
            .load(std::sync::atomic::Ordering::Relaxed);
        proxy.set(70, 30, 20);
        let started = std::time::Instant::now();
        let id = submit(&mut leader_client(&farm.cluster).await?, two_minute_spec(), "chaos")
            .await?
            .sequence_id;
        let mut worker_process: Vec<usize> = (0..names.len()).collect();
        let mut pending = plan.into_iter().peekable();
        let mut injected = Vec::new();
        let status = loop {
            while let Some((at, _)) = pending.peek() {
                if started.elapsed().as_secs_f64() < *at {
                    break;
                }
                let (at, fault) = pending.next().expect("peeked");
                let cluster = &mut farm.cluster;
                match &fault {
                    Fault::Stop => cluster.workers[worker_process[3]].signal("STOP")?,
                    Fault::Resume => cluster.workers[worker_process[3]].signal("CONT")?,
                    Fault::KillWorker(worker) => cluster.workers[worker_process[*worker]].kill9(),
                    Fault::Restart(worker) => {
                        cluster.start_worker(names[*worker], "1x4GiB")?;
                        worker_process[*worker] = cluster.workers.len() - 1;
                    }
                    Fault::KillLeader => {
                        let (_, leader) = find_leader(cluster).await?;
                        if let Some((_, process)) =
                            cluster.schedulers.iter_mut().find(|(url, _)| *url == leader)
                        {
                            process.kill9();
                        }
                    }
                    Fault::RestartEtcd => farm.etcd.restart()?,
                }
                injected.push(format!("{fault:?} at {at:.1} s"));
            }
            let current = async {
                leader_client(&farm.cluster)
                    .await?
                    .get_sequence(pb::GetSequenceRequest { sequence_id: id.clone() })
                    .await
                    .map_err(anyhow::Error::from)
            };
            if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(5), current).await {
                let status = status.into_inner();
                if is_final(&status) && pending.peek().is_none() {
                    break status;
                }
            }
            if started.elapsed() > Duration::from_secs(900) {
                bail!("the chaos run did not finish within 15 minutes");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        proxy.set(0, 0, 0);
        // From submit to the sequence's end, as the scheduler recorded it.
        let chaos = Duration::from_secs_f64(status.finished_unix_s - status.submitted_unix_s);
        if state_of(&status) != pb::SequenceState::Succeeded {
            bail!("the chaos run ended {:?}: {}", state_of(&status), status.error);
        }
        // Every task accepted exactly once, counted from etcd's history of its records.
        let accepted = acceptances(farm, &id).await?;
        let expected = status.segments.len() + 1;
        if accepted.len() != expected || accepted.values().any(|&count| count != 1) {
            bail!("acceptances per task (expected each of {expected} once): {accepted:?}");
        }
        // Frame for frame the fault-free video.
        let mut videos = Vec::new();
        for (sequence, name) in [(&reference, "reference.mp4"), (&id, "chaos.mp4")] {
            let path = farm.dir.path().join(name);
            let (code, stdout, stderr) =
                farm.cluster.client(&["download", sequence, "-o", path.to_str().unwrap()])?;
            if code != 0 {
                bail!("reelfarm download {sequence} exited {code}: {stdout}{stderr}");
            }
            videos.push(frame_hashes(&path)?);
        }
        if videos[0] != videos[1] {
            let differing = videos[0].iter().zip(&videos[1]).filter(|(a, b)| a != b).count();
            bail!(
                "the chaos video differs from the fault-free one: {} vs {} frames, {differing} differ",
                videos[0].len(),
                videos[1].len()
            );
        }
        let replaced: u32 = status
            .segments
            .iter()
            .map(|segment| segment.attempt.saturating_sub(1))
            .sum::<u32>()
            + status.stitch.as_ref().map_or(0, |stitch| stitch.attempt.saturating_sub(1));
        let during = proxy
            .counts
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
            - requests_before;
        eprintln!(
            "chaos: {} | {during} S3 requests during the chaos; in all {} | {replaced} re-placements | {} frames identical to the fault-free run | {:.1} s vs {:.1} s fault-free ({:+.1} s lost)",
            injected.join(", "),
            proxy.counts.summary(),
            videos[0].len(),
            chaos.as_secs_f64(),
            fault_free.as_secs_f64(),
            chaos.as_secs_f64() - fault_free.as_secs_f64()
        );
        Ok(())
    })
    .await;
}
