//! Nobody gets in who shouldn't: hostile requests on real binaries (a scheduler pair on real
//! etcd and an S3-compatible server) are refused, naming the field, and change nothing.

use std::time::Duration;

use anyhow::{Result, bail};
use reelfarm_common::blob::BlobStore;
use reelfarm_common::leader::Bearer;
use reelfarm_common::pb;
use reelfarm_common::pb::worker_service_client::WorkerServiceClient;
use reelfarm_tests::cluster::Timings;
use reelfarm_tests::farm::Farm;
use reelfarm_tests::leading::{code_of, find_leader, leader_client, poll_until_succeeded, submit};
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
        let mut client =
            reelfarm_common::leader::sequence_client(channel.clone(), Bearer::default());
        let mut worker = WorkerServiceClient::new(channel);

        let mut spec = three_shot_spec(2);
        let submit_with = |spec: pb::SequenceSpec, key: String| pb::SubmitSequenceRequest {
            spec: Some(spec),
            idempotency_key: key,
            no_cache: false,
            max_cost_usd: None,
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

        let device = reelfarm_tests::simulated_gpu("rogue");
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
        let mut client = leader_client(cluster).await?;
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
            [previous.as_str(); 10].join(", ")
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

/// A client of the leader presenting `token` ("" for none).
async fn client_as(
    cluster: &reelfarm_tests::cluster::Cluster,
    token: &str,
) -> Result<
    reelfarm_common::pb::sequence_service_client::SequenceServiceClient<
        reelfarm_common::leader::Authed,
    >,
> {
    let bearer = if token.is_empty() {
        Bearer::default()
    } else {
        Bearer::new(token)?
    };
    Ok(reelfarm_common::leader::sequence_client(
        find_leader(cluster).await?.0,
        bearer,
    ))
}

/// `reelfarm token create` as the admin; the token it printed.
fn create_token(
    cluster: &reelfarm_tests::cluster::Cluster,
    name: &str,
    tenant: &str,
    role: &str,
) -> Result<String> {
    let (code, stdout, stderr) = cluster.client(&[
        "token", "create", "--name", name, "--tenant", tenant, "--role", role,
    ])?;
    if code != 0 {
        bail!("token create {name} exited {code}: {stderr}");
    }
    Ok(stdout.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_calls_are_refused_and_tenants_see_only_their_own_sequences() {
    let farm = Farm::start(Timings::default()).expect("etcd and S3 start");
    farm.check(async |farm| {
        let cluster = &mut farm.cluster;
        cluster.enable_auth()?;
        cluster.start_scheduler()?;
        cluster.start_worker("node-0", "1x4GiB")?;
        let alice = create_token(cluster, "alice", "studio-a", "submitter")?;
        let bob = create_token(cluster, "bob", "studio-b", "submitter")?;

        // Nobody gets in without a token, through the API or the CLI.
        let mut anonymous = client_as(cluster, "").await?;
        let refused = anonymous
            .list_sequences(pb::ListSequencesRequest::default())
            .await;
        if code_of(&refused) != Some(tonic::Code::Unauthenticated) {
            bail!("an anonymous ListSequences must be Unauthenticated: {refused:?}");
        }
        let (code, _, stderr) = cluster.client_as("", &["status"])?;
        if code == 0 || !stderr.contains("wants a token") {
            bail!("an anonymous `reelfarm status` must say it needs a token: {code} {stderr}");
        }
        let (code, _, stderr) = cluster.client_as("rf1.0000.guess", &["status"])?;
        if code == 0 || !stderr.contains("unknown or revoked token") {
            bail!("a forged token must be refused: {code} {stderr}");
        }

        let mut as_alice = client_as(cluster, &alice).await?;
        let mut as_bob = client_as(cluster, &bob).await?;
        // A spec cannot claim another tenant.
        let claimed = as_alice
            .submit_sequence(pb::SubmitSequenceRequest {
                spec: Some(pb::SequenceSpec {
                    owner: Some("studio-b".into()),
                    ..three_shot_spec(2)
                }),
                idempotency_key: String::new(),
                no_cache: false,
                max_cost_usd: None,
            })
            .await;
        if code_of(&claimed) != Some(tonic::Code::PermissionDenied) {
            bail!("claiming another tenant must be PermissionDenied: {claimed:?}");
        }
        let id = submit(&mut as_alice, three_shot_spec(2), "shared-key")
            .await?
            .sequence_id;
        // The same idempotency key from another tenant is another sequence.
        let bobs = submit(&mut as_bob, three_shot_spec(2), "shared-key").await?;
        if !bobs.created || bobs.sequence_id == id {
            bail!("tenant B's key returned tenant A's sequence: {bobs:?}");
        }
        poll_until_succeeded(cluster, &id, Duration::from_secs(300)).await?;

        // Tenant B can't see, watch, download, revise, cancel, delete or list A's sequence.
        let not_found = |what: &str, code: Option<tonic::Code>| -> Result<()> {
            if code != Some(tonic::Code::NotFound) {
                bail!("{what} of another tenant's sequence must be NotFound, got {code:?}");
            }
            Ok(())
        };
        let get = pb::GetSequenceRequest {
            sequence_id: id.clone(),
        };
        not_found(
            "GetSequence",
            code_of(&as_bob.get_sequence(get.clone()).await),
        )?;
        let watched = as_bob
            .watch_sequence(pb::WatchSequenceRequest {
                sequence_id: id.clone(),
            })
            .await;
        not_found("WatchSequence", code_of(&watched))?;
        let read = pb::ReadOutputRequest {
            sequence_id: id.clone(),
            ..Default::default()
        };
        not_found(
            "ReadOutput",
            code_of(&as_bob.read_output(read.clone()).await),
        )?;
        let revise = pb::ReviseSequenceRequest {
            sequence_id: id.clone(),
            shot: "0".into(),
            prompt: Some("stolen".into()),
            ..Default::default()
        };
        not_found(
            "ReviseSequence",
            code_of(&as_bob.revise_sequence(revise).await),
        )?;
        let cancel = pb::CancelSequenceRequest {
            sequence_id: id.clone(),
        };
        not_found(
            "CancelSequence",
            code_of(&as_bob.cancel_sequence(cancel).await),
        )?;
        let delete = pb::DeleteSequenceRequest {
            sequence_id: id.clone(),
        };
        not_found(
            "DeleteSequence",
            code_of(&as_bob.delete_sequence(delete).await),
        )?;
        let listed = |response: pb::ListSequencesResponse| -> Vec<String> {
            response
                .sequences
                .into_iter()
                .map(|status| status.sequence_id)
                .collect()
        };
        let bob_sees = listed(
            as_bob
                .list_sequences(pb::ListSequencesRequest::default())
                .await?
                .into_inner(),
        );
        if bob_sees != [bobs.sequence_id.clone()] {
            bail!(
                "tenant B lists {bob_sees:?}, expected only its own {}",
                bobs.sequence_id
            );
        }
        // Alice still sees and downloads hers; the admin sees both tenants'.
        as_alice.get_sequence(get).await?;
        let mut chunks = as_alice.read_output(read).await?.into_inner();
        if chunks
            .message()
            .await?
            .is_none_or(|chunk| chunk.data.is_empty())
        {
            bail!("the owner could not download its video");
        }
        let admin_sees = listed(
            leader_client(cluster)
                .await?
                .list_sequences(pb::ListSequencesRequest::default())
                .await?
                .into_inner(),
        );
        if !admin_sees.contains(&id) || !admin_sees.contains(&bobs.sequence_id) {
            bail!("the admin lists {admin_sees:?}, expected both tenants'");
        }
        // Submitters neither manage tokens nor drain workers; clients can't call the worker API.
        let tokens = as_alice.list_tokens(pb::ListTokensRequest {}).await;
        if code_of(&tokens) != Some(tonic::Code::PermissionDenied) {
            bail!("a submitter listing tokens must be PermissionDenied: {tokens:?}");
        }
        let drained = as_alice
            .drain_worker(pb::DrainWorkerRequest {
                worker: "node-0".into(),
            })
            .await;
        if code_of(&drained) != Some(tonic::Code::PermissionDenied) {
            bail!("a submitter draining must be PermissionDenied: {drained:?}");
        }
        let mut alice_as_worker = reelfarm_common::leader::worker_client(
            find_leader(cluster).await?.0,
            Bearer::new(&alice)?,
        );
        let registered = alice_as_worker
            .register(pb::RegisterWorkerRequest {
                name: "fake".into(),
                devices: vec![pb::Device {
                    memory_total_bytes: 1 << 30,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .await;
        if code_of(&registered) != Some(tonic::Code::PermissionDenied) {
            bail!("a client registering as a worker must be PermissionDenied: {registered:?}");
        }
        // A revoked token stops working at once.
        let (code, _, stderr) = cluster.client(&["token", "revoke", "alice"])?;
        if code != 0 {
            bail!("token revoke exited {code}: {stderr}");
        }
        let after = client_as(cluster, &alice)
            .await?
            .list_sequences(pb::ListSequencesRequest::default())
            .await;
        if code_of(&after) != Some(tonic::Code::Unauthenticated) {
            bail!("a revoked token must be Unauthenticated: {after:?}");
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reports_only_on_its_own_work_and_its_id_cannot_be_taken_over() {
    let farm = Farm::start(Timings::default()).expect("etcd and S3 start");
    farm.check(async |farm| {
        let cluster = &mut farm.cluster;
        cluster.enable_auth()?;
        cluster.start_scheduler()?;
        let w1 = create_token(cluster, "w1", "farm", "worker")?;
        let w2 = create_token(cluster, "w2", "farm", "worker")?;
        let channel = find_leader(cluster).await?.0;
        let mut victim = reelfarm_common::leader::worker_client(channel.clone(), Bearer::new(&w1)?);
        let mut intruder = reelfarm_common::leader::worker_client(channel, Bearer::new(&w2)?);
        let register = pb::RegisterWorkerRequest {
            name: "victim".into(),
            devices: vec![reelfarm_tests::simulated_gpu("victim gpu")],
            models: vec!["reelfarm-tiny".into()],
            worker_id: "victim-1".into(),
            running: Vec::new(),
        };
        victim.register(register.clone()).await?;
        let mut commands = victim
            .receive_commands(pb::ReceiveCommandsRequest {
                worker_id: "victim-1".into(),
            })
            .await?
            .into_inner();
        let spec = pb::SequenceSpec {
            shots: three_shot_spec(2).shots[..1].to_vec(),
            ..three_shot_spec(2)
        };
        let id = submit(&mut leader_client(cluster).await?, spec, "")
            .await?
            .sequence_id;
        let command = tokio::time::timeout(Duration::from_secs(20), commands.message())
            .await??
            .and_then(|command| command.command);
        let Some(pb::worker_command::Command::Assign(assignment)) = command else {
            bail!("the victim got no assignment: {command:?}");
        };
        let reference = assignment.assignment.clone().unwrap();
        let output_key = match &assignment.task {
            Some(pb::assignment::Task::Segment(task)) => format!("{}.mp4", task.output_prefix),
            other => bail!("expected a segment, got {other:?}"),
        };

        // w2 can neither report on, complete nor fail w1's segment.
        let denied = |what: &str, code: Option<tonic::Code>| -> Result<()> {
            if code != Some(tonic::Code::PermissionDenied) {
                bail!("{what} by another worker identity must be PermissionDenied, got {code:?}");
            }
            Ok(())
        };
        let progress = intruder
            .report_progress(pb::ReportProgressRequest {
                assignment: Some(reference.clone()),
                done: 1,
                total: 2,
            })
            .await;
        denied("ReportProgress", code_of(&progress))?;
        let completed = intruder
            .complete_task(pb::CompleteTaskRequest {
                assignment: Some(reference.clone()),
                output_key: output_key.clone(),
                ..Default::default()
            })
            .await;
        denied("CompleteTask", code_of(&completed))?;
        let failed = intruder
            .fail_task(pb::FailTaskRequest {
                assignment: Some(reference.clone()),
                reason: pb::FailureReason::ModelError as i32,
                message: "sabotage".into(),
                corrupt_keys: Vec::new(),
                remote_job_unusable: false,
            })
            .await;
        denied("FailTask", code_of(&failed))?;
        // Nor take over its id, its command stream or its heartbeat.
        denied("Register", code_of(&intruder.register(register).await))?;
        let stream = intruder
            .receive_commands(pb::ReceiveCommandsRequest {
                worker_id: "victim-1".into(),
            })
            .await;
        denied("ReceiveCommands", code_of(&stream))?;
        let heartbeat = intruder
            .heartbeat(pb::HeartbeatRequest {
                worker_id: "victim-1".into(),
                devices: Vec::new(),
            })
            .await;
        denied("Heartbeat", code_of(&heartbeat))?;

        // The victim keeps its work: its own report is accepted and the segment is still
        // running on it.
        let answer = victim
            .report_progress(pb::ReportProgressRequest {
                assignment: Some(reference.clone()),
                done: 1,
                total: 2,
            })
            .await?
            .into_inner();
        if answer.stop {
            bail!("the victim was told to stop its segment");
        }
        let status = leader_client(cluster)
            .await?
            .get_sequence(pb::GetSequenceRequest {
                sequence_id: id.clone(),
            })
            .await?
            .into_inner();
        let segment = &status.segments[0];
        if segment.worker != "victim-1" || segment.step != 1 {
            bail!("the segment left its worker: {segment:?}");
        }
        Ok(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_past_its_rate_or_its_streams_waits_and_the_others_do_not() {
    let farm = Farm::start(Timings::default()).expect("etcd and S3 start");
    farm.check(async |farm| {
        let cluster = &mut farm.cluster;
        cluster.enable_auth()?;
        cluster.start_scheduler_with(&[
            ("REELFARM_RATE_LIMIT", "5"),
            ("REELFARM_MAX_STREAMS", "2"),
            ("REELFARM_UPLOAD_TTL", "2"),
        ])?;
        let alice = create_token(cluster, "alice", "studio-a", "submitter")?;
        let bob = create_token(cluster, "bob", "studio-b", "submitter")?;
        let mut as_alice = client_as(cluster, &alice).await?;
        let mut as_bob = client_as(cluster, &bob).await?;

        // An upload no submission claims is swept after the upload TTL (2 s here).
        let png: std::sync::Arc<[u8]> = noise_png(7).into();
        let upload = reelfarm_cli::client::upload_reference(as_alice.clone(), png)
            .await?
            .into_inner()
            .upload_id;
        let uploads = reelfarm_common::s3::S3BlobStore::connect(farm.s3.settings()).await?;
        let key = reelfarm_common::keys::reference_upload(&upload);
        if !uploads.exists(&key).await? {
            bail!("the upload {key} is not in the store");
        }
        let swept = std::time::Instant::now() + Duration::from_secs(20);
        while uploads.exists(&key).await? {
            if std::time::Instant::now() > swept {
                bail!("an unclaimed upload outlived its 2 s TTL by 20 s");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Then wait a second so the upload's calls do not count against the rate below.
        tokio::time::sleep(Duration::from_secs(1)).await;

        // Bursts of 20 (4× the rate), then 5 a second: 40 calls at once cannot all pass.
        let mut refused = None;
        let mut admitted = 0;
        for _ in 0..40 {
            match as_alice
                .list_sequences(pb::ListSequencesRequest::default())
                .await
            {
                Ok(_) => admitted += 1,
                Err(status) => refused = Some(status),
            }
        }
        let Some(refused) = refused else {
            bail!("40 calls at once all passed a limit of 5 a second");
        };
        eprintln!(
            "alice: {admitted} of 40 admitted; then {}",
            refused.message()
        );
        if refused.code() != tonic::Code::ResourceExhausted
            || !refused.message().contains("retry in")
            || admitted > 25
        {
            bail!("past the rate: {admitted} admitted, then {refused:?}");
        }
        // Bob has his own share.
        as_bob
            .list_sequences(pb::ListSequencesRequest::default())
            .await?;
        // A second later Alice may call again.
        tokio::time::sleep(Duration::from_secs(1)).await;
        as_alice
            .list_sequences(pb::ListSequencesRequest::default())
            .await?;

        // Two open watches each; a third is refused until one closes.
        let id = submit(&mut as_alice, three_shot_spec(2), "")
            .await?
            .sequence_id;
        let watch = pb::WatchSequenceRequest {
            sequence_id: id.clone(),
        };
        let first = as_alice.watch_sequence(watch.clone()).await?.into_inner();
        let _second = as_alice.watch_sequence(watch.clone()).await?.into_inner();
        let third = as_alice.watch_sequence(watch.clone()).await;
        match &third {
            Err(status)
                if status.code() == tonic::Code::ResourceExhausted
                    && status.message().contains("2 open streams") =>
            {
                eprintln!("third watch: {}", status.message());
            }
            other => bail!("a third watch must be refused: {other:?}"),
        }
        drop(first);
        // The scheduler notices the closed stream when it next sends; poll briefly.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match as_alice.watch_sequence(watch.clone()).await {
                Ok(_) => break,
                Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                    if std::time::Instant::now() > deadline {
                        bail!("a closed watch never freed its slot: {status:?}");
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(status) => bail!("watch: {status:?}"),
            }
        }
        Ok(())
    })
    .await;
}
