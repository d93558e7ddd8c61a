//! The record of a mirror: what each cached file was fetched as (key, size, ETag, CRC32C)
//! and when it was last written or verified, and whether every listed file is in. Deciding
//! per file whether the cache still holds what S3 lists is here, free of I/O but for
//! loading and saving the record.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use reelfarm_common::Error;
use reelfarm_common::s3::ObjectInfo;
use serde::{Deserialize, Serialize};

/// The manifest's file name in the mirror's directory.
pub const MANIFEST: &str = ".reelfarm-manifest.json";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// `s3://bucket/prefix`; a manifest of another source is ignored.
    pub source: String,
    /// Every listed object is in; written last, after the files.
    pub complete: bool,
    /// By object key.
    pub files: BTreeMap<String, FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub key: String,
    pub size: u64,
    pub etag: String,
    /// As listed (ms since the epoch): with the ETag, what tells an overwritten object of the
    /// same size, and all there is on servers that list no ETag.
    #[serde(default)]
    pub last_modified_ms: Option<i64>,
    /// Of the cached bytes (checked against the object's stored CRC32C when it had one).
    pub crc32c: String,
    /// The cached file's modification time, ns since the epoch, when it was written or last
    /// verified: a file touched since is checksummed again before it is trusted. (A same-size
    /// rewrite that keeps the time, or lands within a coarse file system's granularity, is
    /// not noticed: trusting untouched files is what keeps a resolve from reading 20 GB.)
    pub modified_ns: u64,
}

/// What the cache does with one listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The manifest says the cached file is this object (same size, ETag and modification
    /// time in S3) and the file is untouched since.
    Keep,
    /// A file of the right size is there but is not known to be this object: checksum it
    /// against `Some(crc)` from the manifest, or (`None`) the object's stored CRC32C.
    Check(Option<String>),
    /// Missing, of another size, or not checkable.
    Fetch,
}

/// The cached file, as `stat` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalFile {
    pub size: u64,
    pub modified_ns: u64,
}

impl LocalFile {
    pub fn of(metadata: &std::fs::Metadata) -> Option<Self> {
        metadata.is_file().then(|| LocalFile {
            size: metadata.len(),
            modified_ns: modified_ns(metadata),
        })
    }
}

pub fn modified_ns(metadata: &std::fs::Metadata) -> u64 {
    metadata
        .modified()
        .ok()
        .and_then(|time| time.duration_since(SystemTime::UNIX_EPOCH).ok())
        .and_then(|since| u64::try_from(since.as_nanos()).ok())
        .unwrap_or(0)
}

pub fn decide(
    listed: &ObjectInfo,
    known: Option<&FileEntry>,
    local: Option<LocalFile>,
) -> Decision {
    let Some(local) = local.filter(|local| local.size == listed.size) else {
        return Decision::Fetch;
    };
    let same_object = |known: &&FileEntry| {
        known.size == listed.size
            && known.etag == listed.etag
            && known.last_modified_ms == listed.last_modified_ms
    };
    match known.filter(same_object) {
        Some(known) if known.modified_ns == local.modified_ns && local.modified_ns != 0 => {
            Decision::Keep
        }
        Some(known) => Decision::Check(Some(known.crc32c.clone())),
        None => Decision::Check(None),
    }
}

impl Manifest {
    /// The mirror's manifest, or an empty one when there is none, it is unreadable, or it
    /// records another source (then every file is checked or fetched again).
    pub async fn load(directory: &Path, source: &str) -> Self {
        let path = directory.join(MANIFEST);
        let empty = Manifest {
            source: source.to_string(),
            ..Manifest::default()
        };
        let text = match tokio::fs::read(&path).await {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return empty,
            Err(error) => {
                tracing::warn!(
                    path = %path.display(),
                    %error,
                    "unreadable weights manifest; checking every file"
                );
                return empty;
            }
        };
        match serde_json::from_slice::<Manifest>(&text) {
            Ok(manifest) if manifest.source == source => manifest,
            Ok(manifest) => {
                tracing::warn!(
                    path = %path.display(),
                    recorded = manifest.source,
                    source,
                    "weights manifest of another source; checking every file"
                );
                empty
            }
            Err(error) => {
                tracing::warn!(
                    path = %path.display(),
                    %error,
                    "corrupt weights manifest; checking every file"
                );
                empty
            }
        }
    }

    /// Written beside, synced, then renamed over the old one: a crash leaves one or the other.
    pub async fn save(&self, directory: &Path) -> Result<(), Error> {
        let path = directory.join(MANIFEST);
        let temporary = directory.join(format!("{MANIFEST}.{}.partial", std::process::id()));
        let text = serde_json::to_vec_pretty(self)
            .map_err(|error| Error::Internal(format!("encoding the weights manifest: {error}")))?;
        let io = |error: std::io::Error| {
            Error::Unavailable(format!("writing {}: {error}", path.display()))
        };
        let write = async {
            let mut file = tokio::fs::File::create(&temporary).await?;
            tokio::io::AsyncWriteExt::write_all(&mut file, &text).await?;
            file.sync_all().await?;
            tokio::fs::rename(&temporary, &path).await
        };
        if let Err(error) = write.await {
            let _ = tokio::fs::remove_file(&temporary).await;
            return Err(io(error));
        }
        sync_directory(directory.to_path_buf()).await.map_err(io)
    }
}

/// Makes renames in `directory` survive a crash.
pub async fn sync_directory(directory: PathBuf) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || std::fs::File::open(&directory)?.sync_all())
        .await
        .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(size: u64, etag: &str) -> ObjectInfo {
        ObjectInfo {
            key: "wan/vae/d.safetensors".into(),
            size,
            etag: etag.into(),
            last_modified_ms: Some(1_000),
            crc32c: None,
        }
    }

    fn entry(size: u64, etag: &str, modified_ns: u64) -> FileEntry {
        FileEntry {
            key: "wan/vae/d.safetensors".into(),
            size,
            etag: etag.into(),
            last_modified_ms: Some(1_000),
            crc32c: "0badf00d".into(),
            modified_ns,
        }
    }

    fn local(size: u64, modified_ns: u64) -> Option<LocalFile> {
        Some(LocalFile { size, modified_ns })
    }

    #[test]
    fn an_untouched_file_of_the_listed_object_is_kept_without_reading_it() {
        let known = entry(10, "e1", 7);
        assert_eq!(
            decide(&object(10, "e1"), Some(&known), local(10, 7)),
            Decision::Keep
        );
    }

    #[test]
    fn a_touched_file_is_checksummed_against_the_manifest() {
        let known = entry(10, "e1", 7);
        assert_eq!(
            decide(&object(10, "e1"), Some(&known), local(10, 8)),
            Decision::Check(Some("0badf00d".into()))
        );
        // A file system without modification times never vouches for a file.
        let known = entry(10, "e1", 0);
        assert_eq!(
            decide(&object(10, "e1"), Some(&known), local(10, 0)),
            Decision::Check(Some("0badf00d".into()))
        );
    }

    #[test]
    fn a_changed_object_or_an_unknown_file_is_checked_against_the_objects_crc() {
        let known = entry(10, "e1", 7);
        assert_eq!(
            decide(&object(10, "e2"), Some(&known), local(10, 7)),
            Decision::Check(None)
        );
        assert_eq!(
            decide(&object(10, "e1"), None, local(10, 7)),
            Decision::Check(None)
        );
    }

    #[test]
    fn a_missing_file_or_one_of_another_size_is_fetched() {
        let known = entry(10, "e1", 7);
        assert_eq!(
            decide(&object(10, "e1"), Some(&known), None),
            Decision::Fetch
        );
        assert_eq!(
            decide(&object(10, "e1"), Some(&known), local(9, 7)),
            Decision::Fetch
        );
        assert_eq!(
            decide(&object(11, "e1"), Some(&known), local(10, 7)),
            Decision::Fetch
        );
    }

    #[tokio::test]
    async fn the_manifest_round_trips_and_another_sources_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut manifest = Manifest {
            source: "s3://models/wan".into(),
            complete: true,
            files: BTreeMap::new(),
        };
        manifest.files.insert("wan/a".into(), entry(10, "e1", 7));
        manifest.save(dir.path()).await.unwrap();
        assert_eq!(
            Manifest::load(dir.path(), "s3://models/wan").await,
            manifest
        );

        let other = Manifest::load(dir.path(), "s3://models/other").await;
        assert!(other.files.is_empty() && !other.complete);
        assert_eq!(other.source, "s3://models/other");

        std::fs::write(dir.path().join(MANIFEST), b"{ torn").unwrap();
        assert!(
            Manifest::load(dir.path(), "s3://models/wan")
                .await
                .files
                .is_empty()
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, [MANIFEST], "no temporary file is left");
    }
}
