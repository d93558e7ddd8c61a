//! `reelfarm submit`: a spec from disk to the scheduler, its reference images streamed ahead
//! of it, always under an idempotency key so a retry after a failover cannot submit twice;
//! what it will cost when it has hosted shots.

use anyhow::Result;
use reelfarm_common::leader::Authed;
use reelfarm_common::pb::sequence_service_client::SequenceServiceClient;
use reelfarm_common::{pb, spec};
use tonic::{Code, Status};

use super::{Client, SubmitArgs, sequence_state_name, watch};
use crate::input::{InputError, load_spec};

/// Streams one reference image to the scheduler in 1 MiB pieces; a submission then names it
/// by the upload id it gets back (references are not capped by one message's size).
pub async fn upload_reference(
    mut grpc: SequenceServiceClient<Authed>,
    png: std::sync::Arc<[u8]>,
) -> Result<tonic::Response<pb::UploadReferenceResponse>, Status> {
    let pieces: Vec<pb::ReferenceChunk> = png
        .chunks(1 << 20)
        .map(|piece| pb::ReferenceChunk {
            data: piece.to_vec(),
        })
        .collect();
    grpc.upload_reference(tokio_stream::iter(pieces)).await
}

pub(super) async fn submit(args: SubmitArgs) -> Result<()> {
    // The scheduler knows the farm's catalog: the model is checked there.
    let sequence = load_spec(&args.spec, args.steps, None)?;
    let mut spec_pb = spec::sequence_to_pb(&sequence);
    if let Some(variants) = args.variants {
        for shot in spec_pb
            .shots
            .iter_mut()
            .filter(|shot| shot.variants.is_none())
        {
            shot.variants = Some(variants);
        }
    }
    let mut client = Client::connect(&args.scheduler).await?;
    for (index, shot) in spec_pb.shots.iter_mut().enumerate() {
        let Some(png) = shot.reference_png.take() else {
            continue;
        };
        let png: std::sync::Arc<[u8]> = png.into();
        let uploaded = match client
            .call_status(|grpc| upload_reference(grpc, png.clone()))
            .await?
        {
            Ok(uploaded) => uploaded,
            Err(status) if status.code() == Code::InvalidArgument => {
                return Err(InputError(vec![format!(
                    "{}: shots[{index}].reference: {}",
                    args.spec.display(),
                    status.message()
                )])
                .into());
            }
            Err(status) => return Err(client.explain("uploading a reference image", &status)),
        };
        shot.reference_upload = Some(uploaded.upload_id);
    }
    // Always keyed, so the retry after a failover cannot submit twice.
    let key = args
        .idempotency_key
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    // A pipeline that traces its own work (TRACEPARENT, as CI tools set it) gets the
    // sequence's trace under its span.
    let traceparent = std::env::var("TRACEPARENT").unwrap_or_default();
    let attempt = |mut grpc: SequenceServiceClient<Authed>| {
        let mut request = tonic::Request::new(pb::SubmitSequenceRequest {
            spec: Some(spec_pb.clone()),
            idempotency_key: key.clone(),
            no_cache: args.no_cache,
            max_cost_usd: args.max_cost,
        });
        reelfarm_common::trace_context::to_metadata(&mut request, &traceparent);
        async move { grpc.submit_sequence(request).await }
    };
    let submitted = match client.call_status(attempt).await? {
        Ok(submitted) => submitted,
        // The scheduler's own validation (e.g. a model it lacks) reads like ours: exit 2.
        Err(status) if status.code() == Code::InvalidArgument => {
            return Err(InputError(
                status
                    .message()
                    .lines()
                    .map(|line| format!("{}: {line}", args.spec.display()))
                    .collect(),
            )
            .into());
        }
        Err(status) => return Err(client.explain("submitting", &status)),
    };
    let id = submitted.sequence_id;
    println!("{id}");
    let status = submitted.status.unwrap_or_default();
    // With --watch the progress view says it.
    if !args.quiet
        && !args.watch
        && let Some(line) = crate::progress::reuse_line(&status)
    {
        eprintln!("{line}");
    }
    if !args.quiet
        && let Some(line) = crate::progress::cost_line(&status)
    {
        eprintln!("{line}");
    }
    if !submitted.created && !args.quiet {
        eprintln!(
            "idempotency key {key:?} was used before: this is sequence {id}, {}",
            sequence_state_name(status.state)
        );
    }
    if args.watch {
        watch(&mut client, &id, args.quiet, Some(status)).await?;
    }
    Ok(())
}
