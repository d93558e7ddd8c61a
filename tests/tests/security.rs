//! Nobody gets in who shouldn't: hostile requests on real binaries (a scheduler pair on real
//! etcd and an S3-compatible server) are refused, naming the field, and change nothing.

use std::time::Duration;

use anyhow::{Result, bail};
use reelfarm_common::pb;
use reelfarm_common::pb::worker_service_client::WorkerServiceClient;
use reelfarm_tests::cluster::Timings;
use reelfarm_tests::farm::Farm;
use reelfarm_tests::leading::{find_leader, poll_until_succeeded, submit};
use reelfarm_tests::three_shot_spec;

/// A megabyte of one letter: far past every bound, well within one message.
fn huge() -> String {
    "x".repeat(1 << 20)
}

/// The call must be InvalidArgument with a message that starts with `field`.
fn expect_refused<T: std::fmt::Debug>(
    what: &str,
    field: &str,
    result: Result<T, tonic::Status>,
) -> Result<()> {
    match result {
        Err(status)
            if status.code() == tonic::Code::InvalidArgument
                && status.message().starts_with(field) =>
        {
            eprintln!("{what}: {}", status.message());
            Ok(())
        }
        other => bail!("{what}: expected InvalidArgument naming {field:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_oversized_field_is_refused_by_name_and_the_leader_is_unchanged() {
    let farm = Farm::start(Timings::default()).expect("etcd and S3 start");
    farm.check(async |farm| {
        let cluster = &mut farm.cluster;
        cluster.start_scheduler()?;
        cluster.start_scheduler()?;
        cluster.start_worker("node-0", "1x4GiB")?;
        let (channel, leader) = find_leader(cluster).await?;
        let mut client = reelfarm_common::leader::sequence_client(channel.clone());
        let mut worker = WorkerServiceClient::new(channel);

        let mut spec = three_shot_spec(2);
        let submit_with = |spec: pb::SequenceSpec, key: String| pb::SubmitSequenceRequest {
            spec: Some(spec),
            idempotency_key: key,
        };
        expect_refused(
            "idempotency key",
            "idempotency_key:",
            client
                .submit_sequence(submit_with(spec.clone(), huge()))
                .await,
        )?;
        spec.shots[1].prompt = huge();
        expect_refused(
            "prompt",
            "shots[1].prompt:",
            client
                .submit_sequence(submit_with(spec.clone(), String::new()))
                .await,
        )?;
        let mut spec = three_shot_spec(2);
        spec.shots[0].reference_name = Some(huge());
        expect_refused(
            "reference name",
            "shots[0].reference_name:",
            client
                .submit_sequence(submit_with(spec, String::new()))
                .await,
        )?;
        let mut spec = three_shot_spec(2);
        spec.grade_reference.insert("night".into(), huge());
        expect_refused(
            "grade reference",
            "grade_reference.night:",
            client
                .submit_sequence(submit_with(spec, String::new()))
                .await,
        )?;
        expect_refused(
            "sequence id",
            "sequence_id:",
            client
                .get_sequence(pb::GetSequenceRequest {
                    sequence_id: huge(),
                })
                .await,
        )?;
        expect_refused(
            "page token",
            "page_token:",
            client
                .list_sequences(pb::ListSequencesRequest {
                    page_size: 10,
                    page_token: huge(),
                })
                .await,
        )?;
        expect_refused(
            "drained worker",
            "worker:",
            client
                .drain_worker(pb::DrainWorkerRequest { worker: huge() })
                .await,
        )?;

        let device = pb::Device {
            index: 0,
            kind: "simulated".into(),
            name: "rogue".into(),
            memory_total_bytes: 4 << 30,
            memory_free_bytes: 4 << 30,
            ..Default::default()
        };
        let register = pb::RegisterWorkerRequest {
            name: "rogue".into(),
            devices: vec![device.clone()],
            models: vec!["reelfarm-tiny".into()],
            worker_id: String::new(),
            running: Vec::new(),
        };
        expect_refused(
            "worker name",
            "name:",
            worker
                .register(pb::RegisterWorkerRequest {
                    name: huge(),
                    ..register.clone()
                })
                .await,
        )?;
        expect_refused(
            "model list",
            "models:",
            worker
                .register(pb::RegisterWorkerRequest {
                    models: vec!["m".into(); 10_000],
                    ..register.clone()
                })
                .await,
        )?;
        expect_refused(
            "device list",
            "devices:",
            worker
                .register(pb::RegisterWorkerRequest {
                    devices: vec![device.clone(); 1000],
                    ..register.clone()
                })
                .await,
        )?;
        let reference = pb::AssignmentRef {
            assignment_id: "seq-x/s000-00".into(),
            attempt: 1,
        };
        expect_refused(
            "output key",
            "output_key:",
            worker
                .complete_task(pb::CompleteTaskRequest {
                    assignment: Some(reference.clone()),
                    output_key: huge(),
                    ..Default::default()
                })
                .await,
        )?;
        expect_refused(
            "phase",
            "phases[0]:",
            worker
                .complete_task(pb::CompleteTaskRequest {
                    assignment: Some(reference.clone()),
                    phases: vec![pb::TimedPhase {
                        kind: "model".into(),
                        start_unix_s: f64::NAN,
                        end_unix_s: 1.0,
                        task_id: String::new(),
                    }],
                    ..Default::default()
                })
                .await,
        )?;
        expect_refused(
            "failure message",
            "message:",
            worker
                .fail_task(pb::FailTaskRequest {
                    assignment: Some(reference),
                    message: huge(),
                    ..Default::default()
                })
                .await,
        )?;

        // The same scheduler leads, and the farm still renders.
        let (_, now_leading) = find_leader(cluster).await?;
        if now_leading != leader {
            bail!("the leader changed from {leader} to {now_leading} under hostile requests");
        }
        let mut client = reelfarm_common::leader::sequence_client(find_leader(cluster).await?.0);
        let id = submit(&mut client, three_shot_spec(2), "after")
            .await?
            .sequence_id;
        poll_until_succeeded(cluster, &id, Duration::from_secs(300)).await?;
        Ok(())
    })
    .await;
}

/// A 1920x1080 PNG of noise: it does not compress, so it weighs about 6 MiB.
fn noise_png(seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data = (0..1920 * 1080 * 3)
        .map(|_| {
            // xorshift64: cheap, incompressible enough for deflate.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    reelfarm_media::video::encode_png(&reelfarm_media::frame::RgbFrame::new(1920, 1080, data))
        .expect("encode noise")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_with_40_mib_of_reference_images_is_accepted_and_renders() {
    let farm = Farm::start(Timings::default()).expect("etcd and S3 start");
    farm.check(async |farm| {
        let dir = farm.dir.path().join("spec");
        std::fs::create_dir_all(&dir)?;
        let mut yaml = String::from("title: heavy references\nfps: 8\nseed: 5\nsteps: 1\nshots:\n");
        let mut total = 0;
        for index in 0..7 {
            let png = noise_png(index);
            total += png.len();
            std::fs::write(dir.join(format!("ref{index}.png")), png)?;
            yaml.push_str(&format!(
                "  - prompt: \"plate {index}\"\n    duration: 1\n    reference: ref{index}.png\n"
            ));
        }
        if total < 40 << 20 {
            bail!("the references weigh {total} bytes, less than the 40 MiB this test is about");
        }
        let spec = dir.join("heavy.yaml");
        std::fs::write(&spec, yaml)?;
        let cluster = &mut farm.cluster;
        cluster.start_scheduler()?;
        cluster.start_worker("node-0", "1x8GiB")?;
        let (code, stdout, stderr) = cluster.client(&["submit", spec.to_str().unwrap()])?;
        if code != 0 {
            bail!("submitting {total} bytes of references exited {code}: {stdout}{stderr}");
        }
        let id = stdout.trim().to_string();
        eprintln!(
            "{id}: {:.1} MiB of references in 7 uploads",
            total as f64 / f64::from(1 << 20)
        );
        poll_until_succeeded(cluster, &id, Duration::from_secs(300)).await?;
        // The uploads served their submission and are gone; the references stay with it.
        let uploads = farm.s3.bucket_dir().join("uploads");
        let left = std::fs::read_dir(&uploads).map_or(0, |entries| entries.count());
        if left != 0 {
            bail!("{left} uploads left in {}", uploads.display());
        }
        Ok(())
    })
    .await;
}

/// `reelfarm validate` on a spec written into a fresh folder: (exit code, stderr, seconds).
fn validate(files: &[(&str, &[u8])], spec: &str) -> Result<(i32, String, f64)> {
    let dir = tempfile::tempdir()?;
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes)?;
    }
    std::fs::write(dir.path().join("spec.yaml"), spec)?;
    let started = std::time::Instant::now();
    let output = std::process::Command::new(reelfarm_tests::cluster::reelfarm_binary())
        .arg("validate")
        .arg(dir.path().join("spec.yaml"))
        .output()?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        started.elapsed().as_secs_f64(),
    ))
}

#[test]
fn an_alias_bomb_is_refused_in_under_a_second() {
    // Nine levels of ten aliases: a billion copies of "lol" if expanded.
    let mut laughs = String::from("a0: &a0 [\"lol\", \"lol\", \"lol\", \"lol\", \"lol\"]\n");
    for level in 1..10 {
        let previous = format!("*a{}", level - 1);
        laughs.push_str(&format!(
            "a{level}: &a{level} [{}]\n",
            vec![previous.as_str(); 10].join(", ")
        ));
    }
    laughs.push_str("shots:\n  - prompt: *a9\n    duration: 1\n");
    // One 1 MiB scalar aliased 3000 times: few events, 3 GiB of text if expanded.
    let mut wide = format!("big: &big \"{}\"\nshots:\n", "x".repeat(1 << 20));
    for _ in 0..3000 {
        wide.push_str("  - {prompt: *big, duration: 1}\n");
    }
    for (name, spec) in [("nested laughs", laughs), ("one wide scalar", wide)] {
        let (code, stderr, seconds) = validate(&[], &spec).unwrap();
        eprintln!("{name}: refused in {seconds:.3} s: {}", stderr.trim());
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("spec: expands"), "{stderr}");
        assert!(seconds < 1.0, "{name} took {seconds:.2} s");
    }
}

#[test]
fn reference_paths_stay_inside_the_spec_s_folder() {
    let png = noise_png(1);
    for (reference, expected) in [
        ("/etc/hostname", "absolute"),
        ("../outside.png", "leaves the spec's folder"),
    ] {
        let spec = format!("shots:\n  - prompt: p\n    duration: 1\n    reference: {reference}\n");
        let (code, stderr, _) = validate(&[("inside.png", &png)], &spec).unwrap();
        eprintln!("{reference}: {}", stderr.trim());
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains("shots[0].reference") && stderr.contains(expected),
            "{reference}: {stderr}"
        );
    }
    let spec = "shots:\n  - prompt: p\n    duration: 1\n    reference: inside.png\n";
    let (code, stderr, _) = validate(&[("inside.png", &png)], spec).unwrap();
    assert_eq!(code, 0, "{stderr}");
}
