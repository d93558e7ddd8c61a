//! The object store behind segments, continuity frames and final videos: one small trait,
//! a local-directory backend for the embedded farm (S3 in `s3.rs`), a metered wrapper, and
//! one conformance suite every backend must pass.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use crate::Error;

#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Writes the whole object; readers never see a partial one.
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), Error>;
    /// `Error::NotFound` when the key does not exist.
    async fn get(&self, key: &str) -> Result<Bytes, Error>;
    async fn exists(&self, key: &str) -> Result<bool, Error>;
    /// Removes the object; a key that does not exist is not an error.
    async fn delete(&self, key: &str) -> Result<(), Error>;
    /// Up to `max_bytes` from `offset` (fewer at the end, none past it) and the object's
    /// whole size: for streaming a large object with bounded memory.
    async fn read_range(
        &self,
        key: &str,
        offset: u64,
        max_bytes: u64,
    ) -> Result<(Bytes, u64), Error>;
    /// The objects under folder `dir` (`uploads`), with keys as `put` takes them
    /// (`uploads/a.png`) and when each was last written: for sweeping what nobody claimed.
    async fn list_folder(&self, dir: &str) -> Result<Vec<Listed>, Error>;
    /// Where the objects live, for logs and errors (`local:/path`, `s3://bucket`).
    fn describe(&self) -> String;
}

/// An object `BlobStore::list_folder` found.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub key: String,
    /// Unix seconds of its last write; `None` when the store does not say.
    pub modified_unix_s: Option<f64>,
}

/// Keys are relative, `/`-separated, and never climb out of the store.
pub fn check_key(key: &str) -> Result<(), Error> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.contains('\\')
        || key
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..");
    if bad {
        return Err(Error::InvalidArgument(format!(
            "object key {key:?} must be a relative path without empty, '.' or '..' parts"
        )));
    }
    Ok(())
}

/// Objects as files under a root directory.
#[derive(Debug, Clone)]
pub struct LocalBlobStore {
    root: PathBuf,
}

impl LocalBlobStore {
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, Error> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|error| {
            Error::Unavailable(format!(
                "cannot create object store directory {}: {error}",
                root.display()
            ))
        })?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file behind a key, for callers in the same process that want to copy it out.
    pub fn path_of(&self, key: &str) -> Result<PathBuf, Error> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

/// A read (or a check that the object is there) refreshes its modification time, so a size
/// bound on a local store (the embedded segment cache) can drop what was least recently used.
fn refresh_time(path: &Path) {
    let _ = std::fs::File::options()
        .append(true)
        .open(path)
        .and_then(|file| file.set_modified(std::time::SystemTime::now()));
}

/// Writes beside the target under a name no other write uses, syncs, renames, and syncs
/// the folder: a reader sees the old object or the new one, a crash loses neither, and a
/// failed write leaves nothing behind.
fn write_durably(root: &Path, path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write as _;
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let io_error =
        |error: std::io::Error| Error::Unavailable(format!("writing {}: {error}", path.display()));
    let parent = path.parent().unwrap_or(root);
    std::fs::create_dir_all(parent).map_err(io_error)?;
    let temporary = parent.join(format!(
        ".{}.{}-{}.partial",
        path.file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("object"),
        std::process::id(),
        WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        std::fs::File::open(parent)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written.map_err(io_error)
}

#[async_trait]
impl BlobStore for LocalBlobStore {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), Error> {
        let path = self.path_of(key)?;
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || write_durably(&root, &path, &bytes))
            .await
            .map_err(|error| Error::Internal(format!("writing {key}: {error}")))?
    }

    async fn get(&self, key: &str) -> Result<Bytes, Error> {
        let path = self.path_of(key)?;
        match tokio::fs::read(&path).await {
            Ok(bytes) => {
                refresh_time(&path);
                Ok(Bytes::from(bytes))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Err(Error::NotFound(
                format!("object {key} in {}", self.describe()),
            )),
            Err(error) => Err(Error::Unavailable(format!(
                "reading {}: {error}",
                path.display()
            ))),
        }
    }

    async fn read_range(
        &self,
        key: &str,
        offset: u64,
        max_bytes: u64,
    ) -> Result<(Bytes, u64), Error> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let path = self.path_of(key)?;
        let io_error = |error: std::io::Error| {
            Error::Unavailable(format!("reading {}: {error}", path.display()))
        };
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotFound(format!(
                    "object {key} in {}",
                    self.describe()
                )));
            }
            Err(error) => return Err(io_error(error)),
        };
        let size = file.metadata().await.map_err(io_error)?.len();
        let length = max_bytes.min(size.saturating_sub(offset));
        let mut bytes = vec![0; length as usize];
        if length > 0 {
            file.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(io_error)?;
            file.read_exact(&mut bytes).await.map_err(io_error)?;
        }
        Ok((Bytes::from(bytes), size))
    }

    async fn delete(&self, key: &str) -> Result<(), Error> {
        let path = self.path_of(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(Error::Unavailable(format!(
                "deleting {}: {error}",
                path.display()
            ))),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, Error> {
        let path = self.path_of(key)?;
        let exists = tokio::fs::try_exists(&path)
            .await
            .map_err(|error| Error::Unavailable(format!("checking {}: {error}", path.display())))?;
        if exists {
            // A segment cache hit checks its objects exist: that is a use too.
            refresh_time(&path);
        }
        Ok(exists)
    }

    async fn list_folder(&self, dir: &str) -> Result<Vec<Listed>, Error> {
        let folder = self.path_of(dir)?;
        let dir = dir.to_string();
        let listed = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<Listed>> {
            let entries = match std::fs::read_dir(&folder) {
                Ok(entries) => entries,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(error) => return Err(error),
            };
            let mut listed = Vec::new();
            for entry in entries {
                let entry = entry?;
                let metadata = entry.metadata()?;
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                // Writes in progress are hidden `.partial` files.
                if !metadata.is_file() || name.starts_with('.') {
                    continue;
                }
                let modified_unix_s = metadata
                    .modified()
                    .ok()
                    .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|elapsed| elapsed.as_secs_f64());
                listed.push(Listed {
                    key: format!("{dir}/{name}"),
                    modified_unix_s,
                });
            }
            Ok(listed)
        })
        .await
        .map_err(|error| Error::Internal(format!("listing: {error}")))?;
        listed.map_err(|error| Error::Unavailable(format!("listing {}: {error}", self.describe())))
    }

    fn describe(&self) -> String {
        format!("local:{}", self.root.display())
    }
}

/// The behaviour every backend must show; run by each backend's tests.
pub mod conformance {
    use super::*;

    pub async fn run(store: &dyn BlobStore) {
        let key = "conformance/a/object.bin";
        assert!(
            !store.exists(key).await.unwrap(),
            "fresh key must not exist"
        );
        assert!(
            matches!(store.get(key).await, Err(Error::NotFound(_))),
            "missing key must be NotFound"
        );

        store.put(key, Bytes::from_static(b"first")).await.unwrap();
        assert!(store.exists(key).await.unwrap());
        assert_eq!(store.get(key).await.unwrap(), Bytes::from_static(b"first"));

        store
            .put(key, Bytes::from_static(b"second, longer"))
            .await
            .unwrap();
        assert_eq!(
            store.get(key).await.unwrap(),
            Bytes::from_static(b"second, longer"),
            "put must replace"
        );

        let large: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        store
            .put("conformance/large.bin", Bytes::from(large.clone()))
            .await
            .unwrap();
        assert_eq!(
            store.get("conformance/large.bin").await.unwrap().as_ref(),
            large.as_slice()
        );

        store.put("conformance/empty", Bytes::new()).await.unwrap();
        assert_eq!(store.get("conformance/empty").await.unwrap().len(), 0);

        store.delete(key).await.unwrap();
        assert!(
            !store.exists(key).await.unwrap(),
            "deleted key must not exist"
        );
        assert!(matches!(store.get(key).await, Err(Error::NotFound(_))));
        store
            .delete(key)
            .await
            .expect("deleting a missing key is not an error");

        // A folder lists what was put in it, with a plausible time; a missing one is empty.
        for name in ["one.bin", "two.bin"] {
            store
                .put(
                    &format!("conformance/listing/{name}"),
                    Bytes::from_static(b"x"),
                )
                .await
                .unwrap();
        }
        let mut listed = store.list_folder("conformance/listing").await.unwrap();
        listed.sort_by(|a, b| a.key.cmp(&b.key));
        let keys: Vec<&str> = listed.iter().map(|item| item.key.as_str()).collect();
        assert_eq!(
            keys,
            ["conformance/listing/one.bin", "conformance/listing/two.bin"]
        );
        let now = crate::unix_now_s();
        for item in &listed {
            let modified = item.modified_unix_s.expect("a write time");
            assert!(
                (modified - now).abs() < 3600.0,
                "{item:?} written at {modified}, now {now}"
            );
        }
        assert!(
            store
                .list_folder("conformance/nothing-here")
                .await
                .unwrap()
                .is_empty()
        );
        for item in listed {
            store.delete(&item.key).await.unwrap();
        }
        assert!(
            store
                .list_folder("conformance/listing")
                .await
                .unwrap()
                .is_empty()
        );

        for bad in ["", "/abs", "a/../b", "a//b", "./a"] {
            assert!(
                matches!(
                    store.put(bad, Bytes::new()).await,
                    Err(Error::InvalidArgument(_))
                ),
                "key {bad:?} must be refused"
            );
        }
    }
}

/// Any store, with the bytes, latency and errors of every operation recorded as
/// `reelfarm_storage_*` metrics.
pub struct MeteredBlobStore<S> {
    inner: S,
}

impl<S: BlobStore> MeteredBlobStore<S> {
    /// Wraps `inner`; every error series starts at zero so alerts and rates have data.
    pub fn new(inner: S) -> Self {
        let metrics = crate::metrics::storage();
        for operation in ["put", "get", "exists", "delete", "list"] {
            for class in [
                "not_found",
                "unavailable",
                "internal",
                "invalid_argument",
                "corrupt",
            ] {
                metrics.errors.add(
                    0,
                    &[
                        crate::metrics::label("operation", operation),
                        crate::metrics::label("class", class),
                    ],
                );
            }
        }
        MeteredBlobStore { inner }
    }
}

fn error_class(error: &Error) -> &'static str {
    match error {
        Error::InvalidArgument(_) => "invalid_argument",
        Error::NotFound(_) => "not_found",
        Error::FailedPrecondition(_) => "failed_precondition",
        Error::Unavailable(_) => "unavailable",
        Error::Internal(_) => "internal",
        Error::Corrupt(_) => "corrupt",
    }
}

fn observe<T>(operation: &'static str, started: std::time::Instant, result: &Result<T, Error>) {
    let metrics = crate::metrics::storage();
    let op = [crate::metrics::label("operation", operation)];
    metrics.seconds.record(started.elapsed().as_secs_f64(), &op);
    if let Err(error) = result {
        metrics.errors.add(
            1,
            &[
                crate::metrics::label("operation", operation),
                crate::metrics::label("class", error_class(error)),
            ],
        );
    }
}

#[async_trait]
impl<S: BlobStore> BlobStore for MeteredBlobStore<S> {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), Error> {
        let started = std::time::Instant::now();
        let length = bytes.len() as u64;
        let result = self.inner.put(key, bytes).await;
        observe("put", started, &result);
        if result.is_ok() {
            let op = [crate::metrics::label("operation", "put")];
            crate::metrics::storage().bytes.add(length, &op);
        }
        result
    }

    async fn get(&self, key: &str) -> Result<Bytes, Error> {
        let started = std::time::Instant::now();
        let result = self.inner.get(key).await;
        observe("get", started, &result);
        if let Ok(bytes) = &result {
            let op = [crate::metrics::label("operation", "get")];
            crate::metrics::storage().bytes.add(bytes.len() as u64, &op);
        }
        result
    }

    async fn exists(&self, key: &str) -> Result<bool, Error> {
        let started = std::time::Instant::now();
        let result = self.inner.exists(key).await;
        observe("exists", started, &result);
        result
    }

    async fn read_range(
        &self,
        key: &str,
        offset: u64,
        max_bytes: u64,
    ) -> Result<(Bytes, u64), Error> {
        let started = std::time::Instant::now();
        let result = self.inner.read_range(key, offset, max_bytes).await;
        observe("get", started, &result);
        if let Ok((bytes, _)) = &result {
            let op = [crate::metrics::label("operation", "get")];
            crate::metrics::storage().bytes.add(bytes.len() as u64, &op);
        }
        result
    }

    async fn delete(&self, key: &str) -> Result<(), Error> {
        let started = std::time::Instant::now();
        let result = self.inner.delete(key).await;
        observe("delete", started, &result);
        result
    }

    async fn list_folder(&self, dir: &str) -> Result<Vec<Listed>, Error> {
        let started = std::time::Instant::now();
        let result = self.inner.list_folder(dir).await;
        observe("list", started, &result);
        result
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leftovers(root: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut folders = vec![root.to_path_buf()];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    folders.push(path);
                } else if path.to_string_lossy().ends_with(".partial") {
                    found.push(path);
                }
            }
        }
        found
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_to_one_key_never_collide_and_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(LocalBlobStore::new(dir.path()).unwrap());
        let writers: Vec<_> = (0..16u8)
            .map(|writer| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .put("shared/key.bin", Bytes::from(vec![writer; 100_000]))
                        .await
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap().unwrap();
        }
        let stored = store.get("shared/key.bin").await.unwrap();
        assert_eq!(stored.len(), 100_000);
        assert!(
            stored.iter().all(|&byte| byte == stored[0]),
            "one writer's object, whole"
        );
        assert!(leftovers(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn a_failed_write_leaves_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::new(dir.path()).unwrap();
        // A folder where the object should go: the rename fails.
        std::fs::create_dir_all(dir.path().join("taken/key/inside")).unwrap();
        let error = store
            .put("taken/key", Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert!(matches!(error, Error::Unavailable(_)), "{error}");
        assert!(leftovers(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn local_store_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::new(dir.path()).unwrap();
        conformance::run(&store).await;
    }
}
