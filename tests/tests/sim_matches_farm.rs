//! The simulator and the live farm decide alike. A real scheduler (gRPC on loopback, state in
//! memory) gets the trace's workers as scripted workers and its sequences over the public
//! API; the workers report every segment's end in the order the simulator saw them end, with
//! the same measured peaks and the same out-of-memory failures. Every assignment the scheduler
//! sends (sequence, task, attempt, worker, device, reservation, low-memory mode) must be one
//! the simulator logged at the same point, so placement, the estimator's corrections and the
//! out-of-memory ladder are the same code in both.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use reelfarm_common::blob::{BlobStore, LocalBlobStore};
use reelfarm_common::pb;
use reelfarm_common::pb::sequence_service_client::SequenceServiceClient;
use reelfarm_common::pb::worker_service_client::WorkerServiceClient;
use reelfarm_core::placement::Policy;
use reelfarm_core::sim::{self, Logged};
use reelfarm_models::Catalog;
use reelfarm_models::catalog::{reelfarm_tiny, simulated_models};
use reelfarm_scheduler::SchedulerConfig;
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

/// What a live assignment is, in the simulator's terms.
type Key = (usize, String, u32);

fn task_name(assignment: &pb::Assignment) -> String {
    match &assignment.task {
        Some(pb::assignment::Task::Segment(task)) => task.segment_id.clone(),
        _ => "stitch".to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_and_the_live_farm_decide_alike() -> anyhow::Result<()> {
    // Eight GPUs (four L4, three A100, one H100) and five sequences (133 segments): enough
    // to queue, pack, and run 1080p finals out of memory on whole L4 cards four times.
    let trace = sim::scale_trace(8, 100, 10);
    let (_, log) = sim::simulate(&trace, Policy::Full, &mut || 0.0, true);
    let ooms = log
        .iter()
        .filter(|entry| matches!(entry, Logged::OutOfMemory { .. }))
        .count();
    assert!(ooms > 0, "the trace must exercise the out-of-memory ladder");

    let dir = tempfile::tempdir()?;
    let store: Arc<dyn BlobStore> = Arc::new(LocalBlobStore::new(dir.path().to_path_buf())?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopping) = watch::channel(false);
    let catalog = Catalog::from_entries(std::iter::once(reelfarm_tiny()).chain(simulated_models()));
    let scheduler = tokio::spawn(reelfarm_scheduler::run(
        SchedulerConfig {
            catalog: Arc::new(catalog),
            ..SchedulerConfig::new(store)
        },
        listener,
        async move {
            let mut stopping = stopping;
            let _ = stopping.wait_for(|stop| *stop).await;
        },
    ));
    let channel = reelfarm_common::leader::connect_leader(
        std::slice::from_ref(&url),
        &Default::default(),
        Duration::from_secs(10),
    )
    .await?
    .0;
    let mut client = SequenceServiceClient::new(channel.clone());
    let mut workers = WorkerServiceClient::new(channel.clone());

    // The trace's workers, registered in the simulator's order; one task per command stream.
    let (commands, mut received) = mpsc::unbounded_channel::<(String, pb::Assignment)>();
    let mut streams = Vec::new();
    let models = trace.catalog.ids();
    for worker in sim::workers(&trace) {
        workers
            .register(pb::RegisterWorkerRequest {
                name: worker.id.clone(),
                devices: worker.devices.clone(),
                models: models.clone(),
                worker_id: worker.id.clone(),
                running: Vec::new(),
            })
            .await?;
        let mut stream = workers
            .receive_commands(pb::ReceiveCommandsRequest {
                worker_id: worker.id.clone(),
            })
            .await?
            .into_inner();
        let commands = commands.clone();
        streams.push(tokio::spawn(async move {
            while let Ok(Some(command)) = stream.message().await {
                if let Some(pb::worker_command::Command::Assign(assignment)) = command.command {
                    let _ = commands.send((worker.id.clone(), assignment));
                }
            }
        }));
    }

    let specs = sim::specs(&trace);
    let mut live_ids: BTreeMap<String, usize> = BTreeMap::new();
    // Each assignment's fencing token and the output key it must report.
    let mut references: BTreeMap<Key, (pb::AssignmentRef, String)> = BTreeMap::new();
    let mut entries = log.iter().peekable();
    let mut compared = 0usize;
    while let Some(entry) = entries.next() {
        if std::env::var_os("SIM_TRACE").is_some() {
            eprintln!("replaying {entry:?}");
        }
        match entry {
            Logged::Submitted { sequence } => {
                let submitted = client
                    .submit_sequence(pb::SubmitSequenceRequest {
                        spec: Some(specs[*sequence].clone()),
                        idempotency_key: String::new(),
                        no_cache: false,
                        max_cost_usd: None,
                    })
                    .await?
                    .into_inner();
                live_ids.insert(submitted.sequence_id, *sequence);
            }
            Logged::Completed {
                sequence,
                task,
                attempt,
                peak_bytes,
            } => {
                let (reference, output_key) =
                    references[&(*sequence, task.clone(), *attempt)].clone();
                workers
                    .complete_task(pb::CompleteTaskRequest {
                        assignment: Some(reference),
                        output_key,
                        phases: Vec::new(),
                        peak_memory_bytes: *peak_bytes,
                        objects: Vec::new(),
                        resumed_from_step: 0,
                        seams: Vec::new(),
                        cost_usd: 0.0,
                    })
                    .await?;
            }
            Logged::OutOfMemory {
                sequence,
                task,
                attempt,
            } => {
                let (reference, _) = references[&(*sequence, task.clone(), *attempt)].clone();
                workers
                    .fail_task(pb::FailTaskRequest {
                        assignment: Some(reference),
                        reason: pb::FailureReason::OutOfMemory as i32,
                        message: "measured peak exceeds the GPU".into(),
                        corrupt_keys: Vec::new(),
                        remote_job_unusable: false,
                    })
                    .await?;
            }
            Logged::Assigned { .. } => unreachable!("assignments follow the event that made them"),
        }
        // The assignments this event made, in the simulator and in the live farm.
        let mut expected = Vec::new();
        while let Some(Logged::Assigned { .. }) = entries.peek() {
            expected.push(entries.next().expect("peeked").clone());
        }
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let (worker, assignment) =
                tokio::time::timeout(Duration::from_secs(10), received.recv())
                    .await
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "after {entry:?}: {} of {} assignments arrived: {got:?}",
                            got.len(),
                            expected.len()
                        )
                    })?
                    .ok_or_else(|| anyhow::anyhow!("the command streams closed"))?;
            let reference = assignment.assignment.clone().expect("fencing token");
            let sequence = live_ids[&assignment.sequence_id];
            let task = task_name(&assignment);
            let (reserved_bytes, low_memory, output_key) = match &assignment.task {
                Some(pb::assignment::Task::Segment(task)) => (
                    task.memory_estimate_bytes,
                    task.low_memory,
                    reelfarm_common::keys::segment_video(&task.output_prefix),
                ),
                Some(pb::assignment::Task::Stitch(task)) => (0, false, task.video_key.clone()),
                None => (0, false, String::new()),
            };
            references.insert(
                (sequence, task.clone(), reference.attempt),
                (reference.clone(), output_key),
            );
            got.push(Logged::Assigned {
                sequence,
                task,
                attempt: reference.attempt,
                worker,
                device: assignment.device_index,
                reserved_bytes,
                low_memory,
            });
        }
        let key = |entry: &Logged| format!("{entry:?}");
        expected.sort_by_key(key);
        got.sort_by_key(key);
        assert_eq!(got, expected, "after {entry:?}");
        compared += got.len();
    }
    // Nothing more was sent, and every sequence finished in the live farm too.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(received.try_recv().is_err(), "the live farm sent more");
    let listed = client
        .list_sequences(pb::ListSequencesRequest::default())
        .await?
        .into_inner();
    assert_eq!(listed.sequences.len(), trace.sequences.len());
    assert!(
        listed
            .sequences
            .iter()
            .all(|s| s.state == pb::SequenceState::Succeeded as i32),
        "{:?}",
        listed.sequences.iter().map(|s| s.state).collect::<Vec<_>>()
    );
    eprintln!(
        "{} assignments and {ooms} out-of-memory retries compared over {} sequences",
        compared,
        trace.sequences.len()
    );
    // The workers go first (their streams would hold the scheduler's graceful shutdown).
    for stream in streams {
        stream.abort();
    }
    drop((client, workers));
    drop::<Channel>(channel);
    let _ = stop.send(true);
    scheduler.await??;
    Ok(())
}
