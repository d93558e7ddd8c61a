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
