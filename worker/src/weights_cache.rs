//! Model weights named in the catalog by location made local for the runtimes: a local
//! directory as is, or an `s3://bucket/prefix` checkpoint (~20 GB for Wan 2.1) mirrored once
//! into the worker's cache, verified, and reused for as long as S3 lists the same objects.
//!
//! The mirror of `s3://bucket/prefix` is `<cache_dir>/<bucket>/<prefix>/`, one file per
//! object, keys checked to stay inside it. Every file is downloaded to a temporary file in
//! its own directory, checked (size against the listing, CRC32C against the object's stored
//! one when it has one) and renamed into place; `.reelfarm-manifest.json` records what each
//! file is and is marked complete last. A later resolve lists the prefix again and fetches
//! only what changed, went missing or was modified on disk (re-checksummed first).
//!
//! Concurrency: resolves of one bucket, in one process or many on one node, are serialized
//! by an exclusive `flock` on `<cache_dir>/<bucket>/.reelfarm-lock`, so one fetches while the
//! others wait and then find it done. Readers of a mirror never see a partial file (renames
//! are atomic), but a refetch of a changed object replaces files under them; the cache must
//! be on a local file system (flock on NFS is not to be relied on).

mod disk;
mod location;
mod manifest;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reelfarm_common::Error;
use reelfarm_common::s3::{ObjectInfo, S3BlobStore, S3Settings};
use tokio::task::JoinSet;

use disk::{crc32c_of, io_error, lock, sweep_partials};
use location::{Location, RESERVED};
use manifest::{Decision, FileEntry, LocalFile, Manifest};

/// `catalog` with the `s3://` weights of every entry replaced by the local mirror (fetched or
/// refreshed now), so the runtimes load from disk; entries with local or no weights are as
/// they were.
pub async fn localize(
    catalog: &reelfarm_models::Catalog,
    cache_dir: &Path,
    s3: Option<&S3Settings>,
) -> Result<reelfarm_models::Catalog, Error> {
    let mut entries = Vec::new();
    for entry in catalog.entries() {
        let mut entry = entry.clone();
        if let Some(location) = entry.weights.as_deref().filter(|w| w.starts_with("s3://")) {
            let started = Instant::now();
            let resolved = resolve(location, cache_dir, s3).await.map_err(|error| {
                Error::InvalidArgument(format!("model {}: weights {location}: {error}", entry.id))
            })?;
            tracing::info!(
                model = %entry.id,
                %location,
                path = %resolved.path.display(),
                files = resolved.files,
                fetched_files = resolved.fetched_files,
                fetched_bytes = resolved.fetched_bytes,
                seconds = started.elapsed().as_secs_f64(),
                "weights mirrored"
            );
            entry.weights = Some(resolved.path.display().to_string());
        }
        entries.push(entry);
    }
    Ok(reelfarm_models::Catalog::from_entries(entries))
}

/// Objects downloaded at once.
const FETCH_CONCURRENCY: usize = 4;
/// How often a running fetch logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Where the weights are and what resolving them took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The local path (as given) or the mirror's directory.
    pub path: PathBuf,
    /// Files and bytes of the mirror; 0 for a local path.
    pub files: usize,
    pub bytes: u64,
    /// Downloaded this time.
    pub fetched_files: usize,
    pub fetched_bytes: u64,
    /// Cached files whose checksum was recomputed (touched, or not yet in the manifest).
    pub checked_files: usize,
}

/// Makes the weights at `location` local: a path must exist and is returned as is; an
/// `s3://bucket/prefix[/]` is mirrored into `cache_dir` (see the module docs) with the
/// worker's S3 `s3` settings (endpoint, region, addressing, credentials; the bucket and
/// prefix are the location's).
pub async fn resolve(
    location: &str,
    cache_dir: &Path,
    s3: Option<&S3Settings>,
) -> Result<Resolved, Error> {
    let (bucket, prefix) = match Location::parse(location)? {
        Location::Local(path) => {
            return match tokio::fs::metadata(&path).await {
                Ok(_) => Ok(Resolved {
                    path,
                    files: 0,
                    bytes: 0,
                    fetched_files: 0,
                    fetched_bytes: 0,
                    checked_files: 0,
                }),
                Err(error) => Err(Error::NotFound(format!(
                    "weights {}: {error}; copy them to this worker or give an s3:// location",
                    path.display()
                ))),
            };
        }
        Location::S3 { bucket, prefix } => (bucket, prefix),
    };
    let url = Location::url(&bucket, &prefix);
    let Some(settings) = s3 else {
        return Err(Error::FailedPrecondition(format!(
            "weights {url} are in S3 but this worker has no S3 store configured: give it \
             --bucket (and for a server other than AWS --s3-endpoint, with --s3-region, \
             --s3-path-style and --s3-access-key-id/--s3-secret-access-key as needed; or the \
             REELFARM_BUCKET, REELFARM_S3_* variables), or copy the weights to the worker and \
             give their path"
        )));
    };
    let bucket_dir = cache_dir.join(&bucket);
    let root = if prefix.is_empty() {
        bucket_dir.clone()
    } else {
        location::join(&bucket_dir, &prefix)
    };
    tokio::fs::create_dir_all(&root)
        .await
        .map_err(|error| io_error("creating", &root, error))?;
    let _lock = lock(&bucket_dir).await?;
    let mirror = Mirror { url, prefix, root };
    let old = Manifest::load(&mirror.root, &mirror.url).await;
    let listed = match list(&mirror, &bucket, settings).await {
        Ok(listed) => listed,
        Err(Error::Unavailable(why)) if old.complete && mirror.intact(&old).await => {
            tracing::warn!(
                url = mirror.url,
                %why,
                "S3 unreachable; using the complete cached mirror"
            );
            return Ok(mirror.resolved(&old, 0, 0, 0));
        }
        Err(error) => return Err(error),
    };
    mirror.sync(listed, old).await
}

/// Lists the prefix and checks every key before any becomes a path.
async fn list(
    mirror: &Mirror,
    bucket: &str,
    settings: &S3Settings,
) -> Result<(S3BlobStore, Vec<(ObjectInfo, String)>), Error> {
    let store = S3BlobStore::connect_to_bucket(settings, bucket).await?;
    let list_prefix = if mirror.prefix.is_empty() {
        String::new()
    } else {
        format!("{}/", mirror.prefix)
    };
    let mut files = Vec::new();
    for object in store.list(&list_prefix).await? {
        if let Some(relative) =
            location::relative_path(&mirror.url, &mirror.prefix, &object.key, object.size)?
        {
            let relative = relative.to_string();
            files.push((object, relative));
        }
    }
    if files.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "nothing at {url} (S3 at {endpoint}): no objects under that prefix; check the weights \
             location in the model catalog and that the checkpoint was uploaded there",
            url = mirror.url,
            endpoint = store.endpoint()
        )));
    }
    location::check_no_file_is_a_directory(&mirror.url, files.iter().map(|(_, r)| r.as_str()))?;
    Ok((store, files))
}

struct Mirror {
    url: String,
    prefix: String,
    root: PathBuf,
}

impl Mirror {
    async fn sync(
        &self,
        (store, files): (S3BlobStore, Vec<(ObjectInfo, String)>),
        old: Manifest,
    ) -> Result<Resolved, Error> {
        let mut next = Manifest {
            source: self.url.clone(),
            complete: false,
            files: Default::default(),
        };
        let mut fetch = Vec::new();
        let mut checked = 0;
        for (object, relative) in files.iter() {
            let path = location::join(&self.root, relative);
            let local = tokio::fs::symlink_metadata(&path)
                .await
                .ok()
                .and_then(|metadata| LocalFile::of(&metadata));
            let known = old.files.get(&object.key);
            let expected = match manifest::decide(object, known, local) {
                Decision::Keep => {
                    next.files
                        .insert(object.key.clone(), known.cloned().expect("kept"));
                    continue;
                }
                Decision::Fetch => None,
                Decision::Check(Some(crc)) => Some(crc),
                // Stored CRC of the listed version only: a newer one will not vouch for it.
                Decision::Check(None) => Some(store.head(&object.key).await?)
                    .filter(|head| {
                        head.size == object.size
                            && (head.etag.is_empty()
                                || object.etag.is_empty()
                                || head.etag == object.etag)
                    })
                    .and_then(|head| head.crc32c),
            };
            if let (Some(expected), Some(local)) = (expected, local) {
                checked += 1;
                if crc32c_of(&path).await? == expected {
                    next.files.insert(
                        object.key.clone(),
                        entry(object, expected, local.modified_ns),
                    );
                    continue;
                }
                tracing::info!(
                    url = self.url,
                    file = relative,
                    "cached file differs; fetching it again"
                );
            }
            fetch.push((object.clone(), path));
        }
        let removed: Vec<&FileEntry> = old
            .files
            .values()
            .filter(|entry| !files.iter().any(|(object, _)| object.key == entry.key))
            .collect();
        if fetch.is_empty() && removed.is_empty() && old.complete && next.files == old.files {
            tracing::info!(
                url = self.url,
                path = %self.root.display(),
                files = files.len(),
                "weights already cached"
            );
            return Ok(self.resolved(&old, 0, 0, checked));
        }

        sweep_partials(self.root.clone()).await;
        for entry in removed {
            if let Some(relative) =
                location::relative_path(&self.url, &self.prefix, &entry.key, entry.size)?
            {
                let path = location::join(&self.root, relative);
                tracing::info!(
                    url = self.url,
                    file = relative,
                    "no longer listed; removing it"
                );
                match tokio::fs::remove_file(&path).await {
                    Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io_error("removing", &path, error));
                    }
                    _ => {}
                }
            }
        }
        next.save(&self.root).await?;
        let (fetched_files, fetched_bytes) = if fetch.is_empty() {
            (0, 0)
        } else {
            self.fetch(&store, fetch, &mut next).await?
        };
        next.complete = true;
        next.save(&self.root).await?;
        Ok(self.resolved(&next, fetched_files, fetched_bytes, checked))
    }

    /// Downloads `fetch`, a few at a time, recording each file in the manifest as it lands.
    async fn fetch(
        &self,
        store: &S3BlobStore,
        fetch: Vec<(ObjectInfo, PathBuf)>,
        manifest: &mut Manifest,
    ) -> Result<(usize, u64), Error> {
        let (files, bytes) = (fetch.len(), fetch.iter().map(|(o, _)| o.size).sum::<u64>());
        tracing::info!(
            url = self.url,
            path = %self.root.display(),
            files,
            bytes,
            "fetching weights: {files} files, {}",
            human(bytes)
        );
        let started = Instant::now();
        let progress = Arc::new(AtomicU64::new(0));
        let mut pending = fetch.into_iter();
        let mut running = JoinSet::new();
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
        let mut done = 0;
        loop {
            while running.len() < FETCH_CONCURRENCY
                && let Some((object, path)) = pending.next()
            {
                running.spawn(fetch_one(store.clone(), object, path, progress.clone()));
            }
            tokio::select! {
                joined = running.join_next() => {
                    let Some(joined) = joined else { break };
                    let entry = joined.map_err(|error| {
                        Error::Internal(format!("weights download task: {error}"))
                    })??;
                    done += 1;
                    tracing::info!(
                        url = self.url,
                        key = entry.key,
                        done,
                        files,
                        "fetched {} ({done} of {files} files)",
                        human(entry.size)
                    );
                    manifest.files.insert(entry.key.clone(), entry);
                    manifest.save(&self.root).await?;
                }
                _ = ticker.tick() => {
                    let so_far = progress.load(Ordering::Relaxed);
                    let rate = so_far as f64 / started.elapsed().as_secs_f64().max(1e-3);
                    tracing::info!(
                        url = self.url,
                        bytes = so_far,
                        total = bytes,
                        done,
                        files,
                        "fetching weights: {} of {} ({}/s)",
                        human(so_far),
                        human(bytes),
                        human(rate as u64)
                    );
                }
            }
        }
        tracing::info!(
            url = self.url,
            files,
            bytes,
            seconds = started.elapsed().as_secs_f64(),
            "fetched weights: {files} files, {}",
            human(bytes)
        );
        Ok((files, bytes))
    }

    /// Every file of a manifest is there, untouched since it was recorded.
    async fn intact(&self, manifest: &Manifest) -> bool {
        for entry in manifest.files.values() {
            let Ok(Some(relative)) =
                location::relative_path(&self.url, &self.prefix, &entry.key, entry.size)
            else {
                return false;
            };
            let local = tokio::fs::symlink_metadata(location::join(&self.root, relative))
                .await
                .ok()
                .and_then(|metadata| LocalFile::of(&metadata));
            if local
                != Some(LocalFile {
                    size: entry.size,
                    modified_ns: entry.modified_ns,
                })
            {
                return false;
            }
        }
        !manifest.files.is_empty()
    }

    fn resolved(
        &self,
        manifest: &Manifest,
        fetched_files: usize,
        fetched_bytes: u64,
        checked_files: usize,
    ) -> Resolved {
        Resolved {
            path: self.root.clone(),
            files: manifest.files.len(),
            bytes: manifest.files.values().map(|entry| entry.size).sum(),
            fetched_files,
            fetched_bytes,
            checked_files,
        }
    }
}

/// One object into a temporary file beside its place, checked, then renamed into place.
async fn fetch_one(
    store: S3BlobStore,
    object: ObjectInfo,
    path: PathBuf,
    progress: Arc<AtomicU64>,
) -> Result<FileEntry, Error> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let directory = path.parent().expect("under the mirror").to_path_buf();
    tokio::fs::create_dir_all(&directory)
        .await
        .map_err(|error| io_error("creating", &directory, error))?;
    let temporary = directory.join(format!(
        "{RESERVED}{}-{}.partial",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let mut counted = 0u64;
    // A resumed transfer can restart from 0; wrapping arithmetic adds the negative delta.
    let mut report = |written: u64| {
        progress.fetch_add(written.wrapping_sub(counted), Ordering::Relaxed);
        counted = written;
    };
    let result = async {
        let downloaded = store.download(&object, &temporary, &mut report).await?;
        tokio::fs::rename(&temporary, &path)
            .await
            .map_err(|error| io_error("renaming into", &path, error))?;
        manifest::sync_directory(directory.clone())
            .await
            .map_err(|error| io_error("syncing", &directory, error))?;
        let metadata = tokio::fs::metadata(&path)
            .await
            .map_err(|error| io_error("reading", &path, error))?;
        Ok(entry(
            &object,
            downloaded.crc32c,
            manifest::modified_ns(&metadata),
        ))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&temporary).await;
    }
    result
}

fn entry(object: &ObjectInfo, crc32c: String, modified_ns: u64) -> FileEntry {
    FileEntry {
        key: object.key.clone(),
        size: object.size,
        etag: object.etag.clone(),
        last_modified_ms: object.last_modified_ms,
        crc32c,
        modified_ns,
    }
}

fn human(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    match bytes as f64 {
        b if b >= GIB => format!("{:.2} GiB", b / GIB),
        b => format!("{:.1} MiB", b / MIB),
    }
}
