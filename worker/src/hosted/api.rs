//! The OpenAI videos API as a hosted segment calls it: create (multipart, with the
//! reference image), retrieve, download the content and delete, each paced by the model's
//! requests-per-minute budget and retried on 429 and 5xx (honouring `Retry-After` and
//! `retry-after-ms`) and on dropped connections. The key goes only into the auth header.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
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
        let bytes = self
            .call(
                Method::POST,
                "/videos",
                Some((content_type, body.into())),
                MAX_JSON_BYTES,
            )
            .await?;
        json(&bytes)
    }

    /// `GET /videos/{id}`.
    pub async fn retrieve(&self, id: &str) -> Result<Video, ApiError> {
        let bytes = self
            .call(Method::GET, &format!("/videos/{id}"), None, MAX_JSON_BYTES)
            .await?;
        json(&bytes)
    }

    /// `GET /videos/{id}/content`: the MP4.
    pub async fn content(&self, id: &str) -> Result<Bytes, ApiError> {
        self.call(
            Method::GET,
            &format!("/videos/{id}/content"),
            None,
            MAX_CONTENT_BYTES,
        )
        .await
    }

    /// `DELETE /videos/{id}`: a cancelled job stops (and its assets go).
    pub async fn delete(&self, id: &str) -> Result<(), ApiError> {
        self.call(
            Method::DELETE,
            &format!("/videos/{id}"),
            None,
            MAX_JSON_BYTES,
        )
        .await
        .map(|_| ())
    }

    /// One request with the pace, the retries and the error envelope.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(String, Bytes)>,
        limit: usize,
    ) -> Result<Bytes, ApiError> {
        let url = format!("{}{path}", self.spec.base_url);
        let mut last = String::new();
        for attempt in 0..MAX_TRIES {
            self.pace.wait().await;
            let mut request = Request::builder().method(method.clone()).uri(&url);
            request = match self.spec.auth {
                HostedAuth::Bearer => {
                    request.header("authorization", format!("Bearer {}", self.key))
                }
                HostedAuth::ApiKey => request.header("api-key", &self.key),
            };
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
            let wait = match self.client.request(request).await {
                Ok(response) => {
                    let status = response.status();
                    let hinted = retry_after(response.headers());
                    let collected = read_limited(response.into_body(), limit).await;
                    match (status, collected) {
                        (status, Ok(bytes)) if status.is_success() => return Ok(bytes),
                        (status, Ok(bytes))
                            if status == StatusCode::TOO_MANY_REQUESTS
                                || status.is_server_error() =>
                        {
                            last = format!("{method} {path}: {status}: {}", envelope(&bytes));
                            hinted.unwrap_or_else(|| backoff(attempt))
                        }
                        (status, Ok(bytes)) => {
                            return Err(ApiError::Refused {
                                status: status.as_u16(),
                                message: format!("{method} {path}: {}", envelope(&bytes)),
                            });
                        }
                        (_, Err(error)) => {
                            last = format!("{method} {path}: reading the answer: {error}");
                            backoff(attempt)
                        }
                    }
                }
                Err(error) => {
                    last = format!("{method} {path}: {error}");
                    backoff(attempt)
                }
            };
            tracing::warn!(model = %self.spec.remote_model, attempt, wait_s = wait.as_secs_f64(), %last, "hosted API call retried");
            tokio::time::sleep(wait.min(MAX_BACKOFF)).await;
        }
        Err(ApiError::Unavailable(last))
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

/// `retry-after-ms` (OpenAI's) or `Retry-After` in seconds.
fn retry_after(headers: &hyper::HeaderMap) -> Option<Duration> {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<f64>().ok())
            .filter(|value| value.is_finite() && *value >= 0.0)
    };
    number("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| number("retry-after").map(Duration::from_secs_f64))
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
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(20), MAX_BACKOFF);
    }

    #[test]
    fn error_envelopes_give_their_message() {
        let body = br#"{"error":{"message":"Invalid size","type":"invalid_request_error","param":"size","code":null}}"#;
        assert_eq!(envelope(body), "Invalid size");
        assert_eq!(envelope(b"upstream timeout"), "upstream timeout");
    }
}
