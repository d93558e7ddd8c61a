//! The cache's file-system side: the bucket's lock, checksums of cached files, and the
//! sweep of temporary files an interrupted fetch left.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reelfarm_common::Error;

use super::location::RESERVED;

const LOCK_FILE: &str = ".reelfarm-lock";
const LOCK_POLL: Duration = Duration::from_millis(200);
/// How often a resolve waiting for the lock says so.
const LOCK_NOTE_EVERY: Duration = Duration::from_secs(30);

/// The CRC32C of a cached file, read in large blocks off the async threads.
pub async fn crc32c_of(path: &Path) -> Result<String, Error> {
    let owned = path.to_path_buf();
    let crc = tokio::task::spawn_blocking(move || -> std::io::Result<u32> {
        use std::io::Read;
        let mut file = std::fs::File::open(&owned)?;
        let mut buffer = vec![0; 8 << 20];
        let mut crc = 0;
        loop {
            match file.read(&mut buffer)? {
                0 => return Ok(crc),
                n => crc = crc32c::crc32c_append(crc, &buffer[..n]),
            }
        }
    })
    .await
    .map_err(|error| Error::Internal(format!("checksum task: {error}")))?
    .map_err(|error| io_error("reading", path, error))?;
    Ok(format!("{crc:08x}"))
}

/// Waits for the bucket's lock, saying so now and then; held until the file is dropped.
pub async fn lock(bucket_dir: &Path) -> Result<std::fs::File, Error> {
    let path = bucket_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|error| io_error("opening", &path, error))?;
    let mut next_note = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                if Instant::now() >= next_note {
                    tracing::info!(
                        lock = %path.display(),
                        "another fetch into this bucket's cache is running; waiting for it"
                    );
                    next_note = Instant::now() + LOCK_NOTE_EVERY;
                }
                tokio::time::sleep(LOCK_POLL).await;
            }
            Err(std::fs::TryLockError::Error(error)) => {
                return Err(Error::Unavailable(format!(
                    "locking {}: {error}; the weights cache must be on a local file system",
                    path.display()
                )));
            }
        }
    }
}

/// Removes temporary files left by an interrupted fetch (the caller holds the lock).
pub async fn sweep_partials(root: PathBuf) {
    let _ = tokio::task::spawn_blocking(move || {
        let mut directories = vec![root];
        while let Some(directory) = directories.pop() {
            let Ok(entries) = std::fs::read_dir(&directory) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                match entry.file_type() {
                    Ok(kind) if kind.is_dir() => directories.push(entry.path()),
                    Ok(kind)
                        if kind.is_file()
                            && name.starts_with(RESERVED)
                            && name.ends_with(".partial") =>
                    {
                        let _ = std::fs::remove_file(entry.path());
                    }
                    _ => {}
                }
            }
        }
    })
    .await;
}

pub fn io_error(action: &str, path: &Path, error: std::io::Error) -> Error {
    Error::Unavailable(format!("{action} {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_lock_is_exclusive_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path()).await.unwrap();
        let waiting = tokio::spawn({
            let dir = dir.path().to_path_buf();
            async move { lock(&dir).await.map(|_| ()) }
        });
        tokio::time::sleep(LOCK_POLL * 3).await;
        assert!(!waiting.is_finished(), "a second resolve waits");
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("takes the lock once it is free")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn the_sweep_removes_only_the_caches_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("transformer");
        std::fs::create_dir_all(&nested).unwrap();
        for name in [".reelfarm-12-0.partial", "model.partial", "config.json"] {
            std::fs::write(nested.join(name), b"x").unwrap();
        }
        std::fs::write(dir.path().join(".reelfarm-manifest.json"), b"{}").unwrap();
        sweep_partials(dir.path().to_path_buf()).await;
        assert!(!nested.join(".reelfarm-12-0.partial").exists());
        assert!(nested.join("model.partial").exists());
        assert!(nested.join("config.json").exists());
        assert!(dir.path().join(".reelfarm-manifest.json").exists());
        let path = nested.join("config.json");
        assert_eq!(
            crc32c_of(&path).await.unwrap(),
            format!("{:08x}", crc32c::crc32c(b"x"))
        );
    }
}
