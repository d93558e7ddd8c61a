//! Talking to whichever scheduler of a test cluster leads now: the client helpers the
//! distributed and fault tests share.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use reelfarm_common::leader::{Authed, Bearer, sequence_client};
use reelfarm_common::pb;
use reelfarm_common::pb::sequence_service_client::SequenceServiceClient;
use tonic::transport::Channel;

use crate::cluster::Cluster;

/// A channel to whichever scheduler leads now, and its URL.
pub async fn find_leader(cluster: &Cluster) -> Result<(Channel, String)> {
    let endpoints = reelfarm_common::leader::parse_endpoints(&cluster.scheduler_list())?;
    Ok(reelfarm_common::leader::connect_leader(
        &endpoints,
        &cluster.client_tls(),
        Duration::from_secs(20),
    )
    .await?)
}

/// A client of the leader, presenting the admin token when the farm authenticates.
pub async fn leader_client(cluster: &Cluster) -> Result<SequenceServiceClient<Authed>> {
    let bearer = match cluster.admin_token() {
        Some(token) => Bearer::new(token)?,
        None => Bearer::default(),
    };
    Ok(sequence_client(find_leader(cluster).await?.0, bearer))
}

pub async fn submit(
    client: &mut SequenceServiceClient<Authed>,
    spec: pb::SequenceSpec,
    key: &str,
) -> Result<pb::SubmitSequenceResponse> {
    Ok(client
        .submit_sequence(pb::SubmitSequenceRequest {
            spec: Some(spec),
            idempotency_key: key.into(),
            no_cache: false,
            max_cost_usd: None,
        })
        .await?
        .into_inner())
}

/// The status code of a refused call (`None`: it succeeded).
pub fn code_of<T>(result: &Result<T, tonic::Status>) -> Option<tonic::Code> {
    result.as_ref().err().map(tonic::Status::code)
}

pub fn state_of(status: &pb::SequenceStatus) -> pb::SequenceState {
    pb::SequenceState::try_from(status.state).unwrap_or(pb::SequenceState::Unspecified)
}

pub fn is_final(status: &pb::SequenceStatus) -> bool {
    matches!(
        state_of(status),
        pb::SequenceState::Succeeded | pb::SequenceState::Failed | pb::SequenceState::Cancelled
    )
}

/// Polls the leader (whichever it is now) until `done` holds for the sequence's status.
pub async fn poll_until(
    cluster: &Cluster,
    id: &str,
    timeout: Duration,
    mut done: impl FnMut(&pb::SequenceStatus) -> bool,
) -> Result<pb::SequenceStatus> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(mut client) = leader_client(cluster).await
            && let Ok(status) = client
                .get_sequence(pb::GetSequenceRequest {
                    sequence_id: id.into(),
                })
                .await
        {
            let status = status.into_inner();
            if done(&status) {
                return Ok(status);
            }
            last = Some(status);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("condition not reached within {timeout:?}; last status: {last:#?}")
}

/// Waits until the scheduler at `url` says it leads; how long that took.
pub async fn wait_leads(url: &str, timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if let Ok(mut client) = SequenceServiceClient::connect(url.to_string()).await
            && client
                .get_leader(pb::GetLeaderRequest {})
                .await
                .is_ok_and(|answer| answer.get_ref().leader)
        {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{url} did not lead within {timeout:?}")
}

/// Polls until the sequence ends; an error unless it succeeded.
pub async fn poll_until_succeeded(
    cluster: &Cluster,
    id: &str,
    timeout: Duration,
) -> Result<pb::SequenceStatus> {
    let status = poll_until(cluster, id, timeout, is_final).await?;
    if state_of(&status) != pb::SequenceState::Succeeded {
        bail!(
            "sequence {id} ended {:?}: {}",
            state_of(&status),
            status.error
        );
    }
    Ok(status)
}
