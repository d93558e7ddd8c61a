//! Where weights live, parsed, and which object keys may become paths in the cache: every
//! key a listing returns is hostile input until it passes `relative_path`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use reelfarm_common::Error;

/// Names starting with this belong to the cache (lock, manifest, partial downloads); object
/// keys may not use them.
pub const RESERVED: &str = ".reelfarm-";
/// The longest file name Linux file systems take (bytes).
const NAME_MAX: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    /// `prefix` has no leading or trailing `/`; `""`: the whole bucket.
    S3 {
        bucket: String,
        prefix: String,
    },
}

impl Location {
    pub fn parse(location: &str) -> Result<Self, Error> {
        let Some(rest) = location.strip_prefix("s3://") else {
            if let Some((scheme, _)) = location.split_once("://")
                && !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '+')
            {
                return Err(Error::InvalidArgument(format!(
                    "weights location {location:?}: {scheme}:// is not supported; give a local \
                     path or s3://bucket/prefix"
                )));
            }
            return Ok(Location::Local(PathBuf::from(location)));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        check_bucket(bucket).map_err(|why| {
            Error::InvalidArgument(format!(
                "weights location {location:?}: bucket {bucket:?} {why}"
            ))
        })?;
        let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
        if !prefix.is_empty() {
            check_segments(prefix).map_err(|why| {
                Error::InvalidArgument(format!(
                    "weights location {location:?}: prefix {prefix:?} {why}"
                ))
            })?;
        }
        Ok(Location::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// `s3://bucket/prefix` as written in messages and the manifest.
    pub fn url(bucket: &str, prefix: &str) -> String {
        if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        }
    }
}

/// S3's bucket naming rules, which also keep the name a safe single path segment.
fn check_bucket(bucket: &str) -> Result<(), &'static str> {
    let allowed = bucket
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
    let ends = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !(3..=63).contains(&bucket.len())
        || !allowed
        || !ends(bucket.chars().next())
        || !ends(bucket.chars().last())
        || bucket.contains("..")
    {
        return Err(
            "is not a valid bucket name (3-63 lowercase letters, digits, '.' and '-', starting \
             and ending with a letter or digit)",
        );
    }
    Ok(())
}

/// `/`-separated, each part a plain file name: not empty, `.` or `..`, no backslash or
/// control character, not reserved, not too long.
fn check_segments(path: &str) -> Result<(), String> {
    for part in path.split('/') {
        let why = if part.is_empty() {
            "has an empty part ('//', or a leading '/')"
        } else if part == "." || part == ".." {
            "has a '.' or '..' part"
        } else if part.contains('\\') {
            "has a backslash"
        } else if part.chars().any(char::is_control) {
            "has a control character"
        } else if part.starts_with(RESERVED) {
            "has a part starting with .reelfarm-, which the weights cache keeps for itself"
        } else if part.len() > NAME_MAX {
            "has a part longer than 255 bytes"
        } else {
            continue;
        };
        return Err(why.to_string());
    }
    Ok(())
}

/// The path under the mirror of `key`, listed under `prefix`; `Ok(None)` for a directory
/// marker (an empty object whose key ends in `/`, as consoles create for "folders").
/// Anything that could land outside the mirror, or collide with the cache's own files, is
/// refused naming the key.
pub fn relative_path<'a>(
    url: &str,
    prefix: &str,
    key: &'a str,
    size: u64,
) -> Result<Option<&'a str>, Error> {
    let relative = if prefix.is_empty() {
        Some(key)
    } else {
        key.strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('/'))
    };
    let Some(relative) = relative else {
        return Err(Error::InvalidArgument(format!(
            "listing {url} returned key {key:?}, which is not under that prefix; refusing it"
        )));
    };
    if size == 0 && (relative.is_empty() || relative.ends_with('/')) {
        return Ok(None);
    }
    check_segments(relative).map_err(|why| {
        Error::InvalidArgument(format!(
            "object key {key:?} under {url} {why}: it cannot be mirrored safely; fix or remove \
             that object"
        ))
    })?;
    Ok(Some(relative))
}

/// No key may be both a file and a directory of other keys (`a` and `a/b`).
pub fn check_no_file_is_a_directory<'a>(
    url: &str,
    relatives: impl IntoIterator<Item = &'a str> + Clone,
) -> Result<(), Error> {
    let mut directories = BTreeSet::new();
    for relative in relatives.clone() {
        let mut parent = Path::new(relative).parent();
        while let Some(directory) = parent.filter(|p| !p.as_os_str().is_empty()) {
            directories.insert(directory.to_path_buf());
            parent = directory.parent();
        }
    }
    for relative in relatives {
        if directories.contains(Path::new(relative)) {
            return Err(Error::InvalidArgument(format!(
                "{url}: {relative:?} is both an object and the directory of others; a mirror \
                 cannot hold both"
            )));
        }
    }
    Ok(())
}

/// `root` joined with a checked `/`-separated relative path.
pub fn join(root: &Path, relative: &str) -> PathBuf {
    relative
        .split('/')
        .fold(root.to_path_buf(), |path, part| path.join(part))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(bucket: &str, prefix: &str) -> Location {
        Location::S3 {
            bucket: bucket.into(),
            prefix: prefix.into(),
        }
    }

    #[test]
    fn locations_parse() {
        for (text, expected) in [
            ("s3://models/wan2.1/t2v-14b", s3("models", "wan2.1/t2v-14b")),
            (
                "s3://models/wan2.1/t2v-14b/",
                s3("models", "wan2.1/t2v-14b"),
            ),
            ("s3://models", s3("models", "")),
            ("s3://models/", s3("models", "")),
            ("s3://my.bucket-1/a", s3("my.bucket-1", "a")),
            ("/models/wan", Location::Local("/models/wan".into())),
            ("relative/dir", Location::Local("relative/dir".into())),
        ] {
            assert_eq!(Location::parse(text).unwrap(), expected, "{text}");
        }
    }

    #[test]
    fn bad_locations_are_refused_naming_the_part() {
        for (text, names) in [
            ("s3://", "bucket \"\""),
            ("s3://ab/x", "bucket \"ab\""),
            ("s3://Models/x", "bucket \"Models\""),
            ("s3://../x", "bucket \"..\""),
            ("s3://a..b/x", "bucket \"a..b\""),
            ("s3://models/a//b", "empty part"),
            ("s3://models//a", "empty part"),
            ("s3://models/a//", "empty part"),
            ("s3://models/a/../b", "'..'"),
            ("s3://models/./a", "'.'"),
            ("s3://models/a\\b", "backslash"),
            ("s3://models/a\nb", "control character"),
            ("s3://models/.reelfarm-lock", ".reelfarm-"),
            ("gs://models/a", "gs:// is not supported"),
            ("https://example.com/w", "https:// is not supported"),
        ] {
            let error = Location::parse(text).expect_err(text).to_string();
            assert!(error.contains(names), "{text}: {error}");
            assert!(error.contains("weights location"), "{text}: {error}");
        }
        let long = format!("s3://models/{}", "x".repeat(256));
        assert!(Location::parse(&long).is_err());
    }

    #[test]
    fn keys_become_paths_only_under_the_prefix_and_only_when_plain() {
        let url = "s3://models/wan";
        assert_eq!(
            relative_path(url, "wan", "wan/transformer/a.safetensors", 5).unwrap(),
            Some("transformer/a.safetensors")
        );
        assert_eq!(relative_path(url, "", "wan/a", 5).unwrap(), Some("wan/a"));
        // Folder markers are skipped, not mirrored.
        assert_eq!(relative_path(url, "wan", "wan/", 0).unwrap(), None);
        assert_eq!(relative_path(url, "wan", "wan/vae/", 0).unwrap(), None);
        for (key, why) in [
            ("wan/../escape", "'..'"),
            ("wan/a/../../escape", "'..'"),
            ("wan//etc/passwd", "empty part"),
            ("wan/a//b", "empty part"),
            ("wan/vae/", "empty part"), // Not a marker: it has bytes.
            ("wan/a\\..\\..\\b", "backslash"),
            ("wan/./a", "'.'"),
            ("wan/.reelfarm-manifest.json", ".reelfarm-"),
            ("wanx/a", "not under that prefix"),
            ("other/a", "not under that prefix"),
        ] {
            let error = relative_path(url, "wan", key, 5)
                .expect_err(key)
                .to_string();
            assert!(error.contains(why), "{key}: {error}");
            assert!(
                error.contains(&format!("{key:?}")),
                "names the key: {error}"
            );
        }
    }

    #[test]
    fn a_key_that_is_also_a_directory_is_refused() {
        let url = "s3://models/wan";
        assert!(check_no_file_is_a_directory(url, ["a/b", "a/c", "d"]).is_ok());
        let error = check_no_file_is_a_directory(url, ["a", "a/b/c"]).unwrap_err();
        assert!(error.to_string().contains("\"a\" is both"), "{error}");
        assert!(check_no_file_is_a_directory(url, ["a/b", "a/b/c"]).is_err());
    }

    #[test]
    fn join_splits_on_slashes() {
        assert_eq!(
            join(Path::new("/cache/models"), "vae/config.json"),
            Path::new("/cache/models/vae/config.json")
        );
    }
}
