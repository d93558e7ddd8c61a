//! The OpenAI videos API as a hosted segment calls it: create (multipart, with the
//! reference image), retrieve, download the content and delete, each paced by the model's
//! requests-per-minute budget and retried on 429 and 5xx (honouring `Retry-After` and
//! `retry-after-ms`) and on dropped connections. The key goes only into the auth header.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderValue;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use reelfarm_models::{HostedAuth, HostedSpec};
use serde::Deserialize;

/// Attempts of one request before its error is the task's.
const MAX_TRIES: u32 = 8;
/// The longest wait between tries, whatever a server asks.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The largest clip download accepted.
const MAX_CONTENT_BYTES: usize = 2 << 30;
/// The largest JSON answer accepted.
const MAX_JSON_BYTES: usize = 1 << 20;
/// How long one request may take, answer read whole: a JSON call, and a clip download.
const JSON_TIMEOUT: Duration = Duration::from_secs(120);
const CONTENT_TIMEOUT: Duration = Duration::from_secs(900);

/// What a request may be retried on. A create answered 5xx, or cut off after it was sent,
/// may have made a job: retrying it could pay twice, so it is retried only when the service
/// said it made nothing (429) or the connection never opened.
#[derive(Clone, Copy, PartialEq)]
enum Retry {
    Idempotent,
    OnlyIfNotSent,
}

/// A video job as the API describes it (the fields reelfarm reads).
#[derive(Debug, Clone, Deserialize)]
pub struct Video {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub progress: Option<f64>,
    #[serde(default)]
    pub error: Option<VideoError>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct VideoError {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

/// Why a call failed, after its retries.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// The API refused the request (4xx other than 429): retrying cannot help.
    Refused { status: u16, message: String },
    /// Still failing after every retry (429, 5xx, connection errors).
    Unavailable(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Refused { status, message } => write!(f, "refused ({status}): {message}"),
            ApiError::Unavailable(message) => write!(f, "unavailable: {message}"),
        }
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One hosted model's API: its client, its key and its pace.
pub struct Api {
    spec: HostedSpec,
    key: String,
    client: HttpsClient,
    pace: super::pace::Pace,
}

impl Api {
    pub fn new(spec: HostedSpec, key: String) -> Result<Api, String> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|error| format!("reading the system's TLS roots: {error}"))?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let pace = super::pace::Pace::per_minute(spec.requests_per_minute);
        Ok(Api {
            spec,
            key,
            client,
            pace,
        })
    }

    pub fn spec(&self) -> &HostedSpec {
        &self.spec
    }

    /// `POST /videos`: multipart with `model`, `prompt`, `seconds`, `size` and, when given,
    /// the `input_reference` PNG.
    pub async fn create(
        &self,
        prompt: &str,
        seconds: u32,
        (width, height): (u32, u32),
        reference_png: Option<&[u8]>,
        idempotency_key: &str,
    ) -> Result<Video, ApiError> {
        let boundary = format!("reelfarm-{:016x}", rand_boundary());
        let mut body = Vec::new();
        let mut text = |name: &str, value: &str| {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                )
                .as_bytes(),
            );
        };
        text("model", &self.spec.remote_model);
        text("prompt", prompt);
        text("seconds", &seconds.to_string());
        text("size", &format!("{width}x{height}"));
        if let Some(png) = reference_png {
            body.extend_from_slice(
                format!(
                    "--{boundary}\r\nContent-Disposition: form-data; name=\"input_reference\"; \
                     filename=\"reference.png\"\r\nContent-Type: image/png\r\n\r\n"
                )
                .as_bytes(),
            );
            body.extend_from_slice(png);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let content_type = format!("multipart/form-data; boundary={boundary}");
        let request = Call {
            method: Method::POST,
            path: "/videos".into(),
            body: Some((content_type, body.into())),
            idempotency_key: Some(idempotency_key.to_string()),
            limit: MAX_JSON_BYTES,
            timeout: JSON_TIMEOUT,
            retry: Retry::OnlyIfNotSent,
        };
        json(&self.call(request).await?)
    }

    /// `GET /videos/{id}`.
    pub async fn retrieve(&self, id: &str) -> Result<Video, ApiError> {
        json(&self.call(Call::get(format!("/videos/{id}"))).await?)
    }

    /// `GET /videos/{id}/content`: the MP4.
    pub async fn content(&self, id: &str) -> Result<Bytes, ApiError> {
        self.call(Call {
            limit: MAX_CONTENT_BYTES,
            timeout: CONTENT_TIMEOUT,
            ..Call::get(format!("/videos/{id}/content"))
        })
        .await
    }

    /// `DELETE /videos/{id}`: a cancelled job stops (and its assets go).
    pub async fn delete(&self, id: &str) -> Result<(), ApiError> {
        self.call(Call {
            method: Method::DELETE,
            ..Call::get(format!("/videos/{id}"))
        })
        .await
        .map(|_| ())
    }

    /// One request with the pace, the retries and the error envelope; the key never
    /// appears in what it returns.
    async fn call(&self, call: Call) -> Result<Bytes, ApiError> {
        let Call {
            method,
            path,
            body,
            idempotency_key,
            limit,
            timeout,
            retry,
        } = call;
        let url = format!("{}{path}", self.spec.base_url);
        let (header, value) = match self.spec.auth {
            HostedAuth::Bearer => ("authorization", format!("Bearer {}", self.key)),
            HostedAuth::ApiKey => ("api-key", self.key.clone()),
        };
        let mut auth = HeaderValue::from_str(&value).map_err(|_| ApiError::Refused {
            status: 0,
            message: "the API key is not a valid header value".into(),
        })?;
        auth.set_sensitive(true);
        let mut last = String::new();
        for attempt in 0..MAX_TRIES {
            self.pace.wait().await;
            let mut request = Request::builder()
                .method(method.clone())
                .uri(&url)
                .header(header, auth.clone());
            if let Some(key) = &idempotency_key {
                request = request.header("idempotency-key", key);
            }
            let payload = match &body {
                Some((content_type, bytes)) => {
                    request = request.header("content-type", content_type);
                    bytes.clone()
                }
                None => Bytes::new(),
            };
            let request = request
                .body(Full::new(payload))
                .map_err(|error| ApiError::Refused {
                    status: 0,
                    message: format!("{method} {path}: {error}"),
                })?;
            let exchange = async {
                let response = self.client.request(request).await?;
                let status = response.status();
                let hinted = retry_after(response.headers());
                let collected = read_limited(response.into_body(), limit).await;
                Ok::<_, hyper_util::client::legacy::Error>((status, hinted, collected))
            };
            // What went wrong, whether the service may have acted on it, and the wait.
            let (problem, maybe_acted, wait) = match tokio::time::timeout(timeout, exchange).await {
                Ok(Ok((status, _, Ok(bytes)))) if status.is_success() => return Ok(bytes),
                Ok(Ok((status, hinted, Ok(bytes))))
                    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() =>
                {
                    (
                        format!(
                            "{method} {path}: {status}: {}",
                            self.scrub(&envelope(&bytes))
                        ),
                        status != StatusCode::TOO_MANY_REQUESTS,
                        hinted.unwrap_or_else(|| backoff(attempt)),
                    )
                }
                Ok(Ok((status, _, Ok(bytes)))) => {
                    return Err(ApiError::Refused {
                        status: status.as_u16(),
                        message: format!("{method} {path}: {}", self.scrub(&envelope(&bytes))),
                    });
                }
                Ok(Ok((_, _, Err(error)))) => (
                    format!("{method} {path}: reading the answer: {error}"),
                    true,
                    backoff(attempt),
                ),
                Ok(Err(error)) => (
                    format!("{method} {path}: {error}"),
                    !error.is_connect(),
                    backoff(attempt),
                ),
                Err(_) => (
                    format!("{method} {path}: no answer within {} s", timeout.as_secs()),
                    true,
                    backoff(attempt),
                ),
            };
            last = problem;
            if maybe_acted && retry == Retry::OnlyIfNotSent {
                return Err(ApiError::Unavailable(format!(
                    "{last} (not retried: the service may have acted on it)"
                )));
            }
            tracing::warn!(model = %self.spec.remote_model, attempt, wait_s = wait.as_secs_f64(), %last, "hosted API call retried");
            tokio::time::sleep(wait.min(MAX_BACKOFF)).await;
        }
        Err(ApiError::Unavailable(last))
    }

    /// A service's message with the key, and anything shaped like one, taken out: some
    /// services echo part of a rejected key.
    fn scrub(&self, message: &str) -> String {
        let message = if self.key.len() >= 8 {
            message.replace(&self.key, "[key]")
        } else {
            message.to_string()
        };
        message
            .split(' ')
            .map(|word| {
                let bare = word.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-');
                if bare.starts_with("sk-") || word.contains("****") {
                    "[key]"
                } else {
                    word
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// One request as `call` makes it.
struct Call {
    method: Method,
    path: String,
    body: Option<(String, Bytes)>,
    idempotency_key: Option<String>,
    limit: usize,
    timeout: Duration,
    retry: Retry,
}

impl Call {
    fn get(path: String) -> Call {
        Call {
            method: Method::GET,
            path,
            body: None,
            idempotency_key: None,
            limit: MAX_JSON_BYTES,
            timeout: JSON_TIMEOUT,
            retry: Retry::Idempotent,
        }
    }
}

fn json(bytes: &[u8]) -> Result<Video, ApiError> {
    serde_json::from_slice(bytes).map_err(|error| ApiError::Refused {
        status: 200,
        message: format!("not a video object: {error}"),
    })
}

/// The `error.message` of an error envelope, or the start of the body.
fn envelope(bytes: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Envelope {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        message: String,
    }
    match serde_json::from_slice::<Envelope>(bytes) {
        Ok(envelope) => envelope.error.message,
        Err(_) => String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
    }
}

/// `retry-after-ms` (OpenAI's) or `Retry-After` in seconds, at most `MAX_BACKOFF`.
fn retry_after(headers: &hyper::HeaderMap) -> Option<Duration> {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<f64>().ok())
            .filter(|value| value.is_finite() && *value >= 0.0)
    };
    let seconds = number("retry-after-ms")
        .map(|ms| ms / 1000.0)
        .or_else(|| number("retry-after"))?;
    Some(Duration::from_secs_f64(
        seconds.min(MAX_BACKOFF.as_secs_f64()),
    ))
}

/// 0.5 s, 1 s, 2 s, ... up to `MAX_BACKOFF`.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempt.min(7))).min(MAX_BACKOFF)
}

async fn read_limited(body: hyper::body::Incoming, limit: usize) -> Result<Bytes, String> {
    let limited = http_body_util::Limited::new(body, limit);
    limited
        .collect()
        .await
        .map(|collected| collected.to_bytes())
        .map_err(|error| error.to_string())
}

fn rand_boundary() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_hints_prefer_milliseconds_then_seconds() {
        let mut headers = hyper::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert("retry-after-ms", "1500".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(1500)));
        // A hostile hint is capped, never a panic.
        headers.insert("retry-after-ms", "1e300".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(MAX_BACKOFF));
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(20), MAX_BACKOFF);
    }

    #[test]
    fn a_key_a_service_echoes_never_leaves_the_client() {
        let spec = HostedSpec {
            base_url: "https://api.example.com/v1".into(),
            key: reelfarm_models::KeySource::Env("K".into()),
            auth: HostedAuth::Bearer,
            remote_model: "sora-2".into(),
            clip_seconds: vec![4],
            sizes: vec![(1280, 720)],
            price_per_second_usd: 0.1,
            max_concurrent_jobs: 1,
            requests_per_minute: 60,
        };
        let api = Api::new(spec, "sk-proj-abcdef123456".into()).unwrap();
        let scrubbed = api
            .scrub("Incorrect API key provided: sk-proj-****3456. Or sk-proj-abcdef123456 itself.");
        assert!(!scrubbed.contains("3456"), "{scrubbed}");
        assert!(
            scrubbed.starts_with("Incorrect API key provided: [key]"),
            "{scrubbed}"
        );
    }

    #[test]
    fn error_envelopes_give_their_message() {
        let body = br#"{"error":{"message":"Invalid size","type":"invalid_request_error","param":"size","code":null}}"#;
        assert_eq!(envelope(body), "Invalid size");
        assert_eq!(envelope(b"upstream timeout"), "upstream timeout");
    }
}
