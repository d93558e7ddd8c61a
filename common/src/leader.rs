//! Finding the leading scheduler: clients and workers are given one URL (a Kubernetes
//! Service) or the list of every scheduler, ask `GetLeader`, and follow the answer.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::Error;
use crate::pb;
use crate::pb::sequence_service_client::SequenceServiceClient;
use crate::pb::worker_service_client::WorkerServiceClient;
use crate::tls::ClientTls;

/// The bearer token a client or worker presents on every call (none: a farm that does not
/// authenticate). Never logged: `Debug` says only whether there is one.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Bearer(..)"
        } else {
            "Bearer(none)"
        })
    }
}

impl Bearer {
    pub fn new(token: &str) -> Result<Self, Error> {
        let value = format!("Bearer {}", token.trim()).parse().map_err(|_| {
            Error::InvalidArgument("token: not printable ASCII; copy it again".into())
        })?;
        Ok(Bearer(Some(value)))
    }

    /// `--token-file` when given, else `REELFARM_TOKEN`, else none.
    pub fn from_file_or_env(file: Option<&std::path::Path>) -> Result<Self, Error> {
        if let Some(file) = file {
            let text = std::fs::read_to_string(file).map_err(|error| {
                Error::InvalidArgument(format!(
                    "--token-file: cannot read {}: {error}",
                    file.display()
                ))
            })?;
            return Bearer::new(&text);
        }
        match std::env::var("REELFARM_TOKEN") {
            Ok(token) if !token.trim().is_empty() => Bearer::new(&token),
            _ => Ok(Bearer::default()),
        }
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel whose calls carry a bearer token.
pub type Authed = InterceptedService<Channel, Bearer>;

/// A client of the scheduler's sequence API: the farm's explicit message limits, the token.
pub fn sequence_client(channel: Channel, bearer: Bearer) -> SequenceServiceClient<Authed> {
    SequenceServiceClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(crate::limits::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::limits::MAX_REQUEST_BYTES)
}

/// A client of the scheduler's worker API: the farm's explicit message limits, the token.
pub fn worker_client(channel: Channel, bearer: Bearer) -> WorkerServiceClient<Authed> {
    WorkerServiceClient::with_interceptor(channel, bearer)
        .max_decoding_message_size(crate::limits::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::limits::MAX_REQUEST_BYTES)
}

/// Splits `--scheduler a,b,c` into URLs; a bare `host:port` gets `http://`.
pub fn parse_endpoints(list: &str) -> Result<Vec<String>, Error> {
    let endpoints: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            if part.contains("://") {
                part.to_string()
            } else {
                format!("http://{part}")
            }
        })
        .collect();
    if endpoints.is_empty() {
        return Err(Error::InvalidArgument(
            "scheduler: give a URL such as http://127.0.0.1:7070, or a comma-separated list".into(),
        ));
    }
    for endpoint in &endpoints {
        Endpoint::from_shared(endpoint.clone()).map_err(|error| {
            Error::InvalidArgument(format!("scheduler: {endpoint:?} is not a URL: {error}"))
        })?;
    }
    Ok(endpoints)
}

async fn open(url: &str, tls: &ClientTls) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(url.to_string()).map_err(|error| error.to_string())?;
    tls.apply(endpoint)
        .map_err(|error| error.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .tcp_keepalive(Some(Duration::from_secs(10)))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|error| format!("{url}: {}", with_causes(&error)))
}

/// "transport error: connection refused", not just "transport error".
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

async fn ask(channel: Channel) -> Result<pb::GetLeaderResponse, String> {
    // GetLeader needs no token: it only says where the leader is.
    let mut client = sequence_client(channel, Bearer::default());
    tokio::time::timeout(
        Duration::from_secs(5),
        client.get_leader(pb::GetLeaderRequest {}),
    )
    .await
    .map_err(|_| "GetLeader timed out".to_string())?
    .map(tonic::Response::into_inner)
    .map_err(|status| status.message().to_string())
}

/// One round over the endpoints: a channel to the leader and its URL, or why not.
async fn find_once(endpoints: &[String], tls: &ClientTls) -> Result<(Channel, String), String> {
    let mut reasons = Vec::new();
    for url in endpoints {
        let channel = match open(url, tls).await {
            Ok(channel) => channel,
            Err(reason) => {
                reasons.push(reason);
                continue;
            }
        };
        match ask(channel.clone()).await {
            Ok(answer) if answer.leader => return Ok((channel, url.clone())),
            Ok(answer) if !answer.leader_url.is_empty() => {
                let leader = answer.leader_url;
                // A redirect never leaves TLS: over https the leader must also prove, with a
                // certificate the same roots trust, that it is one of the farm's schedulers.
                if url.starts_with("https://") && !leader.starts_with("https://") {
                    reasons.push(format!(
                        "{url} pointed at {leader}, which is not https: refused"
                    ));
                    continue;
                }
                match open(&leader, tls).await {
                    Ok(channel) => match ask(channel.clone()).await {
                        Ok(confirmed) if confirmed.leader => return Ok((channel, leader)),
                        Ok(_) => reasons.push(format!("{leader} no longer leads")),
                        Err(reason) => reasons.push(format!("{leader}: {reason}")),
                    },
                    Err(reason) => reasons.push(reason),
                }
            }
            Ok(_) => reasons.push(format!("{url}: no scheduler leads yet")),
            Err(reason) => reasons.push(format!("{url}: {reason}")),
        }
    }
    Err(reasons.join("; "))
}

/// Finds the leader, retrying (elections take a few seconds) until `timeout`.
pub async fn connect_leader(
    endpoints: &[String],
    tls: &ClientTls,
    timeout: Duration,
) -> Result<(Channel, String), Error> {
    tls.check_urls(endpoints)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delay = Duration::from_millis(100);
    loop {
        match find_once(endpoints, tls).await {
            Ok(found) => return Ok(found),
            Err(reason) if tokio::time::Instant::now() + delay > deadline => {
                return Err(Error::Unavailable(format!(
                    "no leading scheduler at {} within {timeout:?}: {reason}",
                    endpoints.join(",")
                )));
            }
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Whether a failed call should be retried against the (possibly new) leader.
pub fn is_transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
    )
}
