//! The embedded segment cache stays within a size (`--cache-max-gib`): after a render, whole
//! sequences go from the work folder, least recently used first (the local store refreshes
//! an object's time when it is read, so a sequence whose segments a later render reused
//! counts as used then), until the folder fits. Cache entries naming what went are removed
//! too; any a later render still finds is a miss, never a wrong reuse.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What one pruning removed and what it kept.
#[derive(Debug, Default, PartialEq)]
pub struct Pruned {
    pub sequences: usize,
    pub freed_bytes: u64,
    pub kept_bytes: u64,
}

/// Every file under `dir`: its total size and its newest modification time.
fn usage(dir: &Path) -> (u64, SystemTime) {
    let (mut bytes, mut newest) = (0, SystemTime::UNIX_EPOCH);
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if metadata.is_dir() {
                pending.push(entry.path());
            } else {
                bytes += metadata.len();
                if let Ok(modified) = metadata.modified() {
                    newest = newest.max(modified);
                }
            }
        }
    }
    (bytes, newest)
}

/// Removes sequences under `root/sequences`, least recently used first, until everything
/// under `root` takes at most `max_bytes`; `keep` (the render just delivered) stays.
pub fn prune(root: &Path, max_bytes: u64, keep: &str) -> std::io::Result<Pruned> {
    let (mut total, _) = usage(root);
    let mut pruned = Pruned::default();
    if total <= max_bytes {
        pruned.kept_bytes = total;
        return Ok(pruned);
    }
    let sequences_dir = root.join("sequences");
    let mut sequences: Vec<(SystemTime, u64, PathBuf)> = match std::fs::read_dir(&sequences_dir) {
        Ok(entries) => entries
            .flatten()
            .filter(|entry| entry.file_name() != keep)
            .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
            .map(|entry| {
                let (bytes, newest) = usage(&entry.path());
                (newest, bytes, entry.path())
            })
            .collect(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => return Err(error),
    };
    sequences.sort();
    for (_, bytes, path) in sequences {
        if total <= max_bytes {
            break;
        }
        std::fs::remove_dir_all(&path)?;
        total = total.saturating_sub(bytes);
        pruned.sequences += 1;
        pruned.freed_bytes += bytes;
    }
    if pruned.sequences > 0 {
        remove_dangling_entries(root);
    }
    pruned.kept_bytes = total;
    Ok(pruned)
}

/// Cache entries whose objects are no longer in the folder.
fn remove_dangling_entries(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root.join(reelfarm_common::keys::SEGMENT_CACHE)) else {
        return;
    };
    for entry in entries.flatten() {
        // Only entries: a write in progress elsewhere has a temporary name.
        if entry
            .path()
            .extension()
            .is_none_or(|extension| extension != "json")
        {
            continue;
        }
        let dangling = std::fs::read(entry.path())
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .and_then(|doc| {
                let objects = doc["objects"].as_array()?.clone();
                Some(objects.iter().any(|object| {
                    object["key"]
                        .as_str()
                        .is_none_or(|key| !root.join(key).exists())
                }))
            })
            .unwrap_or(true);
        if dangling {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn write(root: &Path, key: &str, bytes: usize, age_s: u64) {
        let path = root.join(key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, vec![0u8; bytes]).unwrap();
        let file = std::fs::File::options().append(true).open(&path).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(age_s))
            .unwrap();
    }

    fn entry(root: &Path, name: &str, object: &str) {
        let doc = serde_json::json!({"objects": [{"key": object}]});
        let path = root.join("cache/segments").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, doc.to_string()).unwrap();
    }

    #[test]
    fn the_least_recently_used_sequences_go_first_and_their_entries_with_them() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        write(root, "sequences/old/segments/a.mp4", 4000, 300);
        write(root, "sequences/used/segments/b.mp4", 4000, 200);
        // Rendered long ago, but a later render read it just now.
        write(root, "sequences/reused/segments/c.mp4", 4000, 10);
        write(root, "sequences/new/segments/d.mp4", 4000, 500);
        entry(root, "a.json", "sequences/old/segments/a.mp4");
        entry(root, "c.json", "sequences/reused/segments/c.mp4");
        let pruned = prune(root, 9000, "new").unwrap();
        assert_eq!(pruned.sequences, 2, "{pruned:?}");
        assert!(!root.join("sequences/old").exists());
        assert!(!root.join("sequences/used").exists());
        assert!(root.join("sequences/reused").exists());
        assert!(
            root.join("sequences/new").exists(),
            "the render just delivered stays"
        );
        assert!(!root.join("cache/segments/a.json").exists());
        assert!(root.join("cache/segments/c.json").exists());
        assert!(pruned.kept_bytes <= 9000);
    }

    #[test]
    fn a_folder_within_its_bound_is_left_alone() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "sequences/a/segments/a.mp4", 100, 1000);
        let pruned = prune(root.path(), 1 << 20, "b").unwrap();
        assert_eq!(pruned.sequences, 0);
        assert!(root.path().join("sequences/a").exists());
        assert_eq!(
            prune(&root.path().join("missing"), 0, "b")
                .unwrap()
                .sequences,
            0
        );
    }
}
