//! Reading whole trees out of a bucket (model checkpoints: tens of files, shards of 5 GB):
//! listing a prefix page by page, and streaming one object to a file with its CRC32C
//! computed on the way, so nothing is held in memory and a corrupt transfer is caught.

use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use tokio::io::{AsyncSeekExt, AsyncWriteExt, BufWriter};

use super::{CRC32C_METADATA, FIRST_BYTE_TIMEOUT, MAX_ATTEMPTS, MULTIPART_PART_BYTES, S3BlobStore};
use super::{error_chain, status_of};
use crate::Error;

/// Objects per `ListObjectsV2` page (the S3 maximum).
const LIST_PAGE: i32 = 1000;
/// Bytes buffered between the network and the file.
const WRITE_BUFFER: usize = 1024 * 1024;
/// A body that sends nothing for this long is cut and resumed; the SDK's timeouts end once
/// the response headers are in.
const STALL_TIMEOUT: Duration = FIRST_BYTE_TIMEOUT;

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Relative to the store's prefix, like the keys of `put` and `get`; as the server sent
    /// it, unchecked: a listing can hold any key, so check it before making a path of it.
    pub key: String,
    pub size: u64,
    /// Without S3's quotes; `""` when the server sent none (s3s-fs lists none).
    pub etag: String,
    /// Milliseconds since the Unix epoch. Listings give milliseconds, `head` whole seconds
    /// (HTTP dates), so compare values from the same kind of request only.
    pub last_modified_ms: Option<i64>,
    /// The CRC32C reelfarm stores in `CRC32C_METADATA` (lowercase hex). A listing carries no
    /// user metadata, so `list` leaves it `None`; `head` fills it when the object has one.
    pub crc32c: Option<String>,
}

/// What `download` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub bytes: u64,
    /// The CRC32C of the bytes written (8 lowercase hex digits).
    pub crc32c: String,
    /// The object had a stored CRC32C and it matched; `false`: none to check against.
    pub verified: bool,
}

/// Why copying a body stopped.
enum BodyError {
    /// The network: worth resuming.
    Read(String),
    /// The local file: not.
    Write(std::io::Error),
}

impl S3BlobStore {
    /// The endpoint URL, or `AWS (region)`, for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Every object whose key starts with `prefix` (store prefix applied, used as given: end
    /// it with `/` to list a "directory"), in key order, all pages. Listings have no user
    /// metadata, so `crc32c` is `None`; see `head`.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, Error> {
        let full = if self.prefix.is_empty() {
            prefix.to_string()
        } else {
            format!("{}/{prefix}", self.prefix)
        };
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full)
            .into_paginator()
            .page_size(LIST_PAGE)
            .send();
        let mut objects = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|error| self.sdk_error("listing", Some(&full), error))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let key = self.relative_key(key)?;
                let size = object.size().unwrap_or(0);
                objects.push(ObjectInfo {
                    key: key.to_string(),
                    size: u64::try_from(size).map_err(|_| {
                        Error::Unavailable(format!(
                            "listing s3://{}/{full} at {}: object {key:?} has size {size}",
                            self.bucket, self.endpoint
                        ))
                    })?,
                    etag: unquote(object.e_tag()),
                    last_modified_ms: object.last_modified().and_then(|t| t.to_millis().ok()),
                    crc32c: None,
                });
            }
        }
        Ok(objects)
    }

    /// Size, ETag and stored CRC32C of one object; `Error::NotFound` when it is not there.
    pub async fn head(&self, key: &str) -> Result<ObjectInfo, Error> {
        let full = self.object_key(key)?;
        let output = match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
        {
            Ok(output) => output,
            Err(error) if status_of(&error) == Some(404) => {
                return Err(Error::NotFound(format!(
                    "object s3://{}/{full} at {}",
                    self.bucket, self.endpoint
                )));
            }
            Err(error) => return Err(self.sdk_error("checking", Some(&full), error)),
        };
        Ok(ObjectInfo {
            key: key.to_string(),
            size: output
                .content_length()
                .and_then(|size| u64::try_from(size).ok())
                .unwrap_or(0),
            etag: unquote(output.e_tag()),
            last_modified_ms: output.last_modified().and_then(|t| t.to_millis().ok()),
            crc32c: output
                .metadata()
                .and_then(|metadata| metadata.get(CRC32C_METADATA))
                .map(|crc| crc.to_ascii_lowercase()),
        })
    }

    /// Streams `object` (as listed) into `path`, created or truncated, and syncs it to disk.
    /// Checks on the way that it is still the listed object (same ETag), and at the end its
    /// size and, when stored, its CRC32C; a cut or stalled body is resumed where it stopped
    /// (`Range`), up to the store's attempts without progress. `progress` gets the bytes
    /// written so far. On error the file is left as it is: the caller removes it.
    pub async fn download(
        &self,
        object: &ObjectInfo,
        path: &Path,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<Downloaded, Error> {
        let key = self.object_key(&object.key)?;
        let place = format!("s3://{}/{key}", self.bucket);
        let write_error = |error: std::io::Error| {
            let hint = if error.kind() == std::io::ErrorKind::StorageFull {
                "; free space there or point the cache elsewhere"
            } else {
                ""
            };
            Error::Unavailable(format!(
                "writing {} (from {place}): {error}{hint}",
                path.display()
            ))
        };
        let file = tokio::fs::File::create(path).await.map_err(write_error)?;
        let mut file = BufWriter::with_capacity(WRITE_BUFFER, file);
        let (mut written, mut crc) = (0u64, 0u32);
        let mut stored: Option<String> = None;
        let mut failures = 0;
        loop {
            let mut request = self.client.get_object().bucket(&self.bucket).key(&key);
            if written > 0 {
                request = request.range(format!("bytes={written}-"));
            }
            let output = match request.send().await {
                Ok(output) => output,
                Err(error) if error.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                    return Err(Error::NotFound(format!(
                        "object {place} at {} (it was listed; deleted since?)",
                        self.endpoint
                    )));
                }
                Err(error) => return Err(self.sdk_error("reading", Some(&key), error)),
            };
            let etag = unquote(output.e_tag());
            if !object.etag.is_empty() && !etag.is_empty() && etag != object.etag {
                return Err(Error::Unavailable(format!(
                    "{place} at {} changed while it was fetched (listed with ETag {}, now {etag}); \
                     fetch again once it is no longer being written",
                    self.endpoint, object.etag
                )));
            }
            if written > 0 && output.content_range().is_none() {
                // The server ignored the range and sent the whole object: start over.
                tracing::debug!(key, "range ignored; fetching from the start");
                file.flush().await.map_err(write_error)?;
                file.get_mut().set_len(0).await.map_err(write_error)?;
                file.get_mut()
                    .seek(std::io::SeekFrom::Start(0))
                    .await
                    .map_err(write_error)?;
                (written, crc) = (0, 0);
            }
            if stored.is_none() {
                stored = output
                    .metadata()
                    .and_then(|metadata| metadata.get(CRC32C_METADATA))
                    .map(|crc| crc.to_ascii_lowercase());
            }
            let before = written;
            match copy_body(output.body, &mut file, &mut written, &mut crc, progress).await {
                Ok(()) => break,
                Err(BodyError::Write(error)) => return Err(write_error(error)),
                // Every listed byte is in (the connection broke as the body ended): a range
                // from the end would be refused; the checks below decide.
                Err(BodyError::Read(_)) if written == object.size && written > 0 => break,
                Err(BodyError::Read(reason)) => {
                    // Progress of a part or more earns the transfer its attempts back.
                    if written - before >= MULTIPART_PART_BYTES as u64 {
                        failures = 0;
                    }
                    failures += 1;
                    if failures >= MAX_ATTEMPTS {
                        return Err(Error::Unavailable(format!(
                            "reading {place} at {}: {reason} ({written} of {} bytes in, \
                             {failures} attempts in a row without progress)",
                            self.endpoint, object.size
                        )));
                    }
                    tracing::warn!(key, written, reason, "transfer cut; resuming");
                }
            }
        }
        file.flush().await.map_err(write_error)?;
        file.get_mut().sync_all().await.map_err(write_error)?;

        let actual = format!("{crc:08x}");
        if written != object.size {
            return Err(Error::Unavailable(format!(
                "reading {place} at {}: got {written} bytes, the listing said {}; the object \
                 changed while it was fetched or the server cut it short",
                self.endpoint, object.size
            )));
        }
        match stored {
            Some(expected) if expected != actual => Err(Error::Unavailable(format!(
                "checksum mismatch reading {place} at {}: metadata says crc32c {expected}, the \
                 {written} bytes read have {actual}; the object is corrupt or was overwritten by \
                 another tool",
                self.endpoint
            ))),
            stored => Ok(Downloaded {
                bytes: written,
                crc32c: actual,
                verified: stored.is_some(),
            }),
        }
    }

    /// A key of a listing, relative to the store's prefix.
    fn relative_key<'a>(&self, key: &'a str) -> Result<&'a str, Error> {
        if self.prefix.is_empty() {
            return Ok(key);
        }
        key.strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| {
                Error::Unavailable(format!(
                    "listing s3://{}/{} at {} returned {key:?}, which is outside that prefix",
                    self.bucket, self.prefix, self.endpoint
                ))
            })
    }
}

async fn copy_body(
    mut body: ByteStream,
    file: &mut BufWriter<tokio::fs::File>,
    written: &mut u64,
    crc: &mut u32,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<(), BodyError> {
    loop {
        let chunk = match tokio::time::timeout(STALL_TIMEOUT, body.next()).await {
            Err(_) => {
                return Err(BodyError::Read(format!(
                    "no data for {}s",
                    STALL_TIMEOUT.as_secs()
                )));
            }
            Ok(None) => return Ok(()),
            Ok(Some(Err(error))) => return Err(BodyError::Read(error_chain(&error))),
            Ok(Some(Ok(chunk))) => chunk,
        };
        file.write_all(&chunk).await.map_err(BodyError::Write)?;
        *crc = crc32c::crc32c_append(*crc, &chunk);
        *written += chunk.len() as u64;
        progress(*written);
    }
}

/// S3 sends ETags in quotes; compare them without.
fn unquote(etag: Option<&str>) -> String {
    etag.unwrap_or_default().trim_matches('"').to_string()
}
