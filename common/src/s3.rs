//! The S3 backend of `BlobStore`, for farms whose workers do not share a disk: any
//! S3-compatible server (AWS, MinIO, s3s) behind the same trait as the local directory, with
//! a CRC32C of every object kept in its metadata so a corrupt read is caught, not rendered.
//! `objects.rs` reads whole trees (model checkpoints): paged listings, streamed downloads.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

use crate::Error;
use crate::blob::{BlobStore, check_key};

mod objects;
pub use objects::{Downloaded, ObjectInfo};

/// Bodies at or above this size go up as a multipart upload of parts this large.
pub const MULTIPART_PART_BYTES: usize = 8 * 1024 * 1024;
/// User metadata (`x-amz-meta-reelfarm-crc32c`) holding the body's CRC32C as 8 hex digits.
pub const CRC32C_METADATA: &str = "reelfarm-crc32c";
/// Attempts per request (the first plus retries) on 5xx, throttling and timeouts.
const MAX_ATTEMPTS: u32 = 4;
/// How long a request may wait for the first response byte; it covers sending a whole part,
/// so it is generous: 8 MiB in 60 s is about 1 Mbit/s.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_REGION: &str = "us-east-1";

/// Where the objects live and how to reach them.
#[derive(Clone)]
pub struct S3Settings {
    /// `None` means AWS itself; set it for MinIO, s3s and other S3-compatible servers.
    pub endpoint: Option<String>,
    pub bucket: String,
    /// `None`: the AWS chain (`AWS_REGION`, profile), then `us-east-1`.
    pub region: Option<String>,
    /// `http://host/bucket/key` instead of `http://bucket.host/key`; most self-hosted servers
    /// need it.
    pub path_style: bool,
    /// Used only when both keys are set; otherwise the AWS credential chain (environment,
    /// profiles, web identity, instance metadata).
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Prepended to every key, `/`-joined; `""` for none.
    pub prefix: String,
    /// TCP connect timeout, and the bound on the bucket check in `connect`.
    pub timeout: Duration,
    /// A PEM CA to trust for an `https://` endpoint, besides the system's roots (a private
    /// MinIO or Ceph); AWS itself needs none.
    pub ca_pem: Option<String>,
}

impl S3Settings {
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            endpoint: None,
            bucket: bucket.into(),
            region: None,
            path_style: false,
            access_key_id: None,
            secret_access_key: None,
            prefix: String::new(),
            timeout: Duration::from_secs(5),
            ca_pem: None,
        }
    }
}

// By hand so that the secret never reaches a log line.
impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("ca_pem", &self.ca_pem.is_some())
            .finish()
    }
}

/// The SDK's own HTTPS client (rustls with aws-lc, as by default) trusting `ca` besides the
/// system's roots.
fn https_trusting(ca: &str) -> Result<aws_sdk_s3::config::SharedHttpClient, Error> {
    use aws_smithy_http_client::tls;
    let trust = tls::TrustStore::default().with_pem_certificate(ca.as_bytes());
    let context = tls::TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|error| Error::InvalidArgument(format!("--s3-ca-file: {error}")))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(context)
        .build_https())
}

/// Objects in one bucket, optionally under a key prefix.
#[derive(Debug, Clone)]
pub struct S3BlobStore {
    client: Client,
    bucket: String,
    prefix: String,
    /// The endpoint URL, or `AWS (region)`, for messages.
    endpoint: String,
    /// Where the bucket name came from, for "create it or fix ..." messages.
    bucket_origin: &'static str,
}

impl S3BlobStore {
    /// Builds the client and checks once that the bucket is there and the keys open it, so a
    /// misconfigured farm fails at start with a message saying what to fix.
    pub async fn connect(settings: S3Settings) -> Result<Self, Error> {
        Self::connect_as(settings, "--bucket").await
    }

    /// The same endpoint, region, addressing, credentials and timeouts as `settings` (a
    /// worker's store), but another bucket and no key prefix: for objects named by an
    /// `s3://bucket/...` location rather than by the farm's store.
    pub async fn connect_to_bucket(settings: &S3Settings, bucket: &str) -> Result<Self, Error> {
        let settings = S3Settings {
            bucket: bucket.to_string(),
            prefix: String::new(),
            ..settings.clone()
        };
        Self::connect_as(settings, "the s3:// location").await
    }

    async fn connect_as(settings: S3Settings, bucket_origin: &'static str) -> Result<Self, Error> {
        let region = RegionProviderChain::first_try(settings.region.clone().map(Region::new))
            .or_default_provider()
            .or_else(Region::new(DEFAULT_REGION));
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(settings.timeout)
            .read_timeout(FIRST_BYTE_TIMEOUT.max(settings.timeout))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .timeout_config(timeouts)
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS));
        match (&settings.access_key_id, &settings.secret_access_key) {
            (Some(id), Some(secret)) => {
                loader = loader.credentials_provider(Credentials::new(
                    id,
                    secret,
                    None,
                    None,
                    "reelfarm-s3-settings",
                ));
            }
            (None, None) => {}
            _ => tracing::warn!(
                "only one of the S3 access key id and secret is set; using the AWS credential chain"
            ),
        }
        if let Some(ca) = &settings.ca_pem {
            loader = loader.http_client(https_trusting(ca)?);
        }
        let shared = loader.load().await;
        let mut config =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(settings.path_style);
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint);
        }
        let endpoint = match (&settings.endpoint, shared.region()) {
            (Some(endpoint), _) => endpoint.clone(),
            (None, Some(region)) => format!("AWS ({region})"),
            (None, None) => "AWS".to_string(),
        };
        let store = Self {
            client: Client::from_conf(config.build()),
            bucket: settings.bucket,
            prefix: settings.prefix.trim_matches('/').to_string(),
            endpoint,
            bucket_origin,
        };

        // One attempt, bounded as a whole: at start a clear error now beats retrying a typo.
        let check = store
            .client
            .head_bucket()
            .bucket(&store.bucket)
            .customize()
            .config_override(
                aws_sdk_s3::config::Builder::default()
                    .retry_config(RetryConfig::disabled())
                    .timeout_config(
                        TimeoutConfig::builder()
                            .connect_timeout(settings.timeout)
                            .operation_timeout(settings.timeout)
                            .build(),
                    ),
            )
            .send()
            .await;
        match check {
            Ok(_) => Ok(store),
            Err(error) if status_of(&error) == Some(404) => {
                Err(Error::FailedPrecondition(format!(
                    "bucket {:?} does not exist at {}; create it or fix {}",
                    store.bucket, store.endpoint, store.bucket_origin
                )))
            }
            Err(error) => Err(store.sdk_error("checking", None, error)),
        }
    }

    fn object_key(&self, key: &str) -> Result<String, Error> {
        check_key(key)?;
        Ok(if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        })
    }

    /// Turns an SDK failure into the case a caller can act on, naming where it happened.
    fn sdk_error<E>(
        &self,
        action: &str,
        key: Option<&str>,
        error: SdkError<E, HttpResponse>,
    ) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let place = match key {
            Some(key) => format!("s3://{}/{key}", self.bucket),
            None => format!("bucket {:?}", self.bucket),
        };
        let unreachable = match &error {
            SdkError::TimeoutError(_) => true,
            SdkError::DispatchFailure(failure) => failure.is_io() || failure.is_timeout(),
            _ => false,
        };
        if unreachable {
            return Error::Unavailable(format!(
                "cannot reach S3 at {} ({action} {place}): {}; check that the server is running \
                 and the endpoint is right",
                self.endpoint,
                error_chain(&error)
            ));
        }
        let code = error
            .code()
            .map(|code| format!(" ({code})"))
            .unwrap_or_default();
        match status_of(&error) {
            Some(403) => Error::FailedPrecondition(format!(
                "access denied {action} {place} at {}{code}; check AWS_ACCESS_KEY_ID/\
                 AWS_SECRET_ACCESS_KEY (or the configured keys) and the bucket policy",
                self.endpoint
            )),
            Some(404) if error.code() == Some("NoSuchBucket") => {
                Error::FailedPrecondition(format!(
                    "bucket {:?} does not exist at {}; create it or fix {}",
                    self.bucket, self.endpoint, self.bucket_origin
                ))
            }
            status => Error::Unavailable(format!(
                "{action} {place} at {}: {}",
                self.endpoint,
                service_error_text(&error, status)
            )),
        }
    }

    async fn put_multipart(&self, key: &str, bytes: Bytes, crc: &str) -> Result<(), Error> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .metadata(CRC32C_METADATA, crc)
            .send()
            .await
            .map_err(|error| self.sdk_error("starting upload of", Some(key), error))?;
        let upload_id = created.upload_id().ok_or_else(|| {
            Error::Unavailable(format!(
                "starting upload of s3://{}/{key} at {}: the server returned no upload id",
                self.bucket, self.endpoint
            ))
        })?;
        let uploaded = self.upload_parts(key, upload_id, &bytes).await;
        if uploaded.is_err() {
            // Parts of an unfinished upload are billed until aborted.
            let abort = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .send()
                .await;
            if let Err(error) = abort {
                tracing::warn!(
                    key,
                    upload_id,
                    error = %error_chain(&error),
                    "could not abort failed multipart upload"
                );
            }
        }
        uploaded
    }

    async fn upload_parts(&self, key: &str, upload_id: &str, bytes: &Bytes) -> Result<(), Error> {
        let mut parts = Vec::new();
        for (index, start) in (0..bytes.len()).step_by(MULTIPART_PART_BYTES).enumerate() {
            let end = (start + MULTIPART_PART_BYTES).min(bytes.len());
            let part_number = i32::try_from(index + 1)
                .map_err(|_| Error::InvalidArgument(format!("object {key} has too many parts")))?;
            let part = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(part_number)
                .body(ByteStream::from(bytes.slice(start..end)))
                .send()
                .await
                .map_err(|error| self.sdk_error("uploading a part of", Some(key), error))?;
            parts.push(
                CompletedPart::builder()
                    .set_e_tag(part.e_tag().map(str::to_string))
                    .part_number(part_number)
                    .build(),
            );
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|error| self.sdk_error("completing upload of", Some(key), error))?;
        Ok(())
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), Error> {
        let key = self.object_key(key)?;
        let crc = format!("{:08x}", crc32c::crc32c(&bytes));
        if bytes.len() >= MULTIPART_PART_BYTES {
            return self.put_multipart(&key, bytes, &crc).await;
        }
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .metadata(CRC32C_METADATA, crc)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|error| self.sdk_error("writing", Some(&key), error))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes, Error> {
        let key = self.object_key(key)?;
        let output = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(output) => output,
            Err(error) if error.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                return Err(Error::NotFound(format!(
                    "object s3://{}/{key} at {}",
                    self.bucket, self.endpoint
                )));
            }
            Err(error) => return Err(self.sdk_error("reading", Some(&key), error)),
        };
        let expected = output
            .metadata()
            .and_then(|metadata| metadata.get(CRC32C_METADATA))
            .cloned();
        let bytes = output
            .body
            .collect()
            .await
            .map_err(|error| {
                let chain = error_chain(&error);
                let message = format!(
                    "reading s3://{}/{key} at {}: {chain}",
                    self.bucket, self.endpoint
                );
                // The SDK checks the body against the checksum S3 stored at upload
                // (aws-smithy-checksums' ChecksumMismatch): the bytes are bad, retrying the
                // read cannot help.
                if chain.contains("checksum mismatch") {
                    Error::Corrupt(message)
                } else {
                    Error::Unavailable(message)
                }
            })?
            .into_bytes();
        let actual = format!("{:08x}", crc32c::crc32c(&bytes));
        match expected {
            Some(expected) if !expected.eq_ignore_ascii_case(&actual) => {
                Err(Error::Corrupt(format!(
                    "checksum mismatch reading s3://{}/{key} at {}: metadata says crc32c {expected}, \
                     the {} bytes read have {actual}; the object is corrupt or was overwritten \
                     by another tool",
                    self.bucket,
                    self.endpoint,
                    bytes.len()
                )))
            }
            Some(_) => Ok(bytes),
            None => {
                // Written by another tool: nothing to check against.
                tracing::debug!(key, "object has no crc32c metadata; not verified");
                Ok(bytes)
            }
        }
    }

    async fn read_range(
        &self,
        key: &str,
        offset: u64,
        max_bytes: u64,
    ) -> Result<(Bytes, u64), Error> {
        let object_key = self.object_key(key)?;
        let missing = || {
            Error::NotFound(format!(
                "object s3://{}/{object_key} at {}",
                self.bucket, self.endpoint
            ))
        };
        // The size first: a range past the end (or of an empty object) is an error in S3.
        let size = match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .send()
            .await
        {
            Ok(head) => head.content_length().unwrap_or(0).max(0) as u64,
            Err(error) if status_of(&error) == Some(404) => return Err(missing()),
            Err(error) => return Err(self.sdk_error("checking", Some(&object_key), error)),
        };
        let length = max_bytes.min(size.saturating_sub(offset));
        if length == 0 {
            return Ok((Bytes::new(), size));
        }
        let output = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .range(format!("bytes={offset}-{}", offset + length - 1))
            .send()
            .await
            .map_err(|error| match error.as_service_error() {
                Some(service) if service.is_no_such_key() => missing(),
                _ => self.sdk_error("reading", Some(&object_key), error),
            })?;
        let bytes = output
            .body
            .collect()
            .await
            .map_err(|error| {
                Error::Unavailable(format!(
                    "reading s3://{}/{object_key} at {}: {}",
                    self.bucket,
                    self.endpoint,
                    error_chain(&error)
                ))
            })?
            .into_bytes();
        if bytes.len() as u64 != length {
            return Err(Error::Unavailable(format!(
                "reading s3://{}/{object_key} at {}: asked for {length} bytes at {offset}, got {}",
                self.bucket,
                self.endpoint,
                bytes.len()
            )));
        }
        Ok((bytes, size))
    }

    async fn list_folder(&self, dir: &str) -> Result<Vec<crate::blob::Listed>, Error> {
        check_key(dir)?;
        Ok(self
            .list(&format!("{dir}/"))
            .await?
            .into_iter()
            .map(|object| crate::blob::Listed {
                key: object.key,
                modified_unix_s: object.last_modified_ms.map(|ms| ms as f64 / 1000.0),
            })
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<(), Error> {
        let key = self.object_key(key)?;
        // S3 answers 204 whether or not the object existed.
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|error| self.sdk_error("deleting", Some(&key), error))?;
        Ok(())
    }

    async fn exists(&self, key: &str) -> Result<bool, Error> {
        let key = self.object_key(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            // HEAD has no body, so a missing bucket looks the same; `connect` rules that out.
            Err(error) if status_of(&error) == Some(404) => Ok(false),
            Err(error) => Err(self.sdk_error("checking", Some(&key), error)),
        }
    }

    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{} ({})", self.bucket, self.endpoint)
        } else {
            format!("s3://{}/{} ({})", self.bucket, self.prefix, self.endpoint)
        }
    }
}

fn status_of<E>(error: &SdkError<E, HttpResponse>) -> Option<u16> {
    error
        .raw_response()
        .map(|response| response.status().as_u16())
}

/// The server's code and message when it sent them, else the whole cause chain.
fn service_error_text<E>(error: &SdkError<E, HttpResponse>, status: Option<u16>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = status.map(|s| format!("HTTP {s} ")).unwrap_or_default();
    match (error.code(), error.message()) {
        (Some(code), Some(message)) => format!("{status}{code}: {message}"),
        (Some(code), None) => format!("{status}{code}"),
        _ => format!("{status}{}", error_chain(error)),
    }
}

/// Every message in the cause chain, `: `-joined, without the SDK's debug dump.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(error) = next {
        let text = error.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        next = error.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offline_store(prefix: &str) -> S3BlobStore {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(DEFAULT_REGION))
            .build();
        S3BlobStore {
            client: Client::from_conf(config),
            bucket: "frames".into(),
            prefix: prefix.into(),
            endpoint: "http://127.0.0.1:9000".into(),
            bucket_origin: "--bucket",
        }
    }

    #[test]
    fn keys_go_under_the_prefix_and_bad_keys_are_refused() {
        let store = offline_store("farm-a");
        assert_eq!(store.object_key("seg/1.mp4").unwrap(), "farm-a/seg/1.mp4");
        assert_eq!(
            offline_store("").object_key("seg/1.mp4").unwrap(),
            "seg/1.mp4"
        );
        assert!(matches!(
            store.object_key("../x"),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(
            store.describe(),
            "s3://frames/farm-a (http://127.0.0.1:9000)"
        );
    }

    #[test]
    fn settings_never_print_the_secret() {
        let settings = S3Settings {
            secret_access_key: Some("hunter2".into()),
            ..S3Settings::new("frames")
        };
        let printed = format!("{settings:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");
    }
}
