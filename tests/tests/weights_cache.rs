//! The weights cache against a real S3-compatible server (s3s-fs on loopback): a fake
//! diffusers checkpoint (nested directories, a multipart shard) is mirrored once, verified,
//! reused without a download, and only what changed (in S3 or on disk) is fetched again;
//! hostile keys, empty prefixes and missing settings are refused naming what to fix.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use reelfarm_common::Error;
use reelfarm_common::blob::BlobStore;
use reelfarm_common::s3::{MULTIPART_PART_BYTES, S3BlobStore, S3Settings};
use reelfarm_tests::s3_server::S3Server;
use reelfarm_worker::weights_cache::{Resolved, resolve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFIX: &str = "wan2.1/t2v-1.3b";

fn patterned(len: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i % 251) as u8 ^ seed)
            .collect::<Vec<u8>>(),
    )
}

/// Relative path and bytes of every file of the fake checkpoint.
fn checkpoint() -> Vec<(&'static str, Bytes)> {
    vec![
        (
            "model_index.json",
            Bytes::from_static(b"{\"_class_name\": \"WanPipeline\"}"),
        ),
        (
            "scheduler/scheduler_config.json",
            Bytes::from_static(b"{\"shift\": 3.0}"),
        ),
        (
            "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
            // Over a part: uploaded in parts, so its ETag is a multipart one.
            patterned(MULTIPART_PART_BYTES + 123_457, 1),
        ),
        (
            "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
            patterned(300_000, 2),
        ),
        (
            "transformer/diffusion_pytorch_model.safetensors.index.json",
            Bytes::from_static(b"{\"weight_map\": {}}"),
        ),
        ("vae/config.json", Bytes::from_static(b"{\"z_dim\": 16}")),
        ("tokenizer/tokenizer.json", patterned(70_000, 3)),
    ]
}

async fn upload(server: &S3Server, files: &[(&str, Bytes)]) -> S3BlobStore {
    let store = S3BlobStore::connect(server.settings())
        .await
        .unwrap_or_else(|error| panic!("connects: {error}"));
    for (relative, bytes) in files {
        store
            .put(&format!("{PREFIX}/{relative}"), bytes.clone())
            .await
            .unwrap_or_else(|error| panic!("uploading {relative}: {error}"));
    }
    store
}

fn url(server: &S3Server) -> String {
    format!("s3://{}/{PREFIX}/", server.bucket())
}

async fn resolved(server: &S3Server, cache: &Path) -> Resolved {
    resolve(&url(server), cache, Some(&server.settings()))
        .await
        .unwrap_or_else(|error| panic!("resolves: {error}"))
}

fn assert_mirrors(resolved: &Resolved, files: &[(&str, Bytes)]) {
    for (relative, bytes) in files {
        let cached = std::fs::read(resolved.path.join(relative))
            .unwrap_or_else(|error| panic!("{relative} cached: {error}"));
        assert!(cached == bytes.as_ref(), "{relative}: cached bytes differ");
    }
    assert_eq!(resolved.files, files.len());
    let total: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();
    assert_eq!(resolved.bytes, total);
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

#[tokio::test]
async fn a_checkpoint_is_mirrored_once_and_only_what_changes_is_fetched_again() {
    let server = S3Server::start().expect("s3s-fs starts");
    let mut files = checkpoint();
    let store = upload(&server, &files).await;
    // A sibling whose key shares the prefix's text but not its directory stays out.
    store
        .put(&format!("{PREFIX}-other/x.json"), Bytes::from_static(b"{}"))
        .await
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let total: u64 = files.iter().map(|(_, b)| b.len() as u64).sum();

    let first = resolved(&server, cache.path()).await;
    assert_eq!(
        first.path,
        cache.path().join(server.bucket()).join("wan2.1/t2v-1.3b")
    );
    assert_eq!(
        (first.fetched_files, first.fetched_bytes),
        (files.len(), total)
    );
    assert_mirrors(&first, &files);
    assert!(
        !cache
            .path()
            .join(server.bucket())
            .join("wan2.1/t2v-1.3b-other")
            .exists()
    );
    let shard = first.path.join(files[2].0);
    let times: Vec<SystemTime> = files
        .iter()
        .map(|(r, _)| modified(&first.path.join(r)))
        .collect();

    // Unchanged listing: nothing downloaded, nothing even read back.
    let second = resolved(&server, cache.path()).await;
    assert_eq!(
        (
            second.fetched_files,
            second.fetched_bytes,
            second.checked_files
        ),
        (0, 0, 0)
    );
    assert_mirrors(&second, &files);
    let again: Vec<SystemTime> = files
        .iter()
        .map(|(r, _)| modified(&first.path.join(r)))
        .collect();
    assert_eq!(times, again, "no cached file was rewritten");

    // Bit rot in the big shard (same size) and a lost tokenizer: those two, and only those.
    let mut rotten = std::fs::read(&shard).unwrap();
    rotten[4_000_000] ^= 0xff;
    std::fs::write(&shard, &rotten).unwrap();
    std::fs::remove_file(first.path.join("tokenizer/tokenizer.json")).unwrap();
    let repaired = resolved(&server, cache.path()).await;
    assert_eq!(repaired.fetched_files, 2, "{repaired:?}");
    assert_eq!(
        repaired.fetched_bytes,
        files[2].1.len() as u64 + files[6].1.len() as u64
    );
    assert_eq!(
        repaired.checked_files, 1,
        "the rotten shard is checksummed first"
    );
    assert_mirrors(&repaired, &files);
    assert_eq!(modified(&first.path.join(files[0].0)), times[0]);

    // Touched but intact: checksummed, kept, and trusted again afterwards.
    let vae = first.path.join("vae/config.json");
    std::fs::File::options()
        .write(true)
        .open(&vae)
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    let touched = resolved(&server, cache.path()).await;
    assert_eq!((touched.fetched_files, touched.checked_files), (0, 1));
    let trusted = resolved(&server, cache.path()).await;
    assert_eq!((trusted.fetched_files, trusted.checked_files), (0, 0));

    // The checkpoint changes in S3: a shard is replaced, a file removed, one added.
    files[3].1 = patterned(300_000, 9);
    store
        .put(&format!("{PREFIX}/{}", files[3].0), files[3].1.clone())
        .await
        .unwrap();
    let removed = files.remove(4);
    server
        .client()
        .delete_object()
        .bucket(server.bucket())
        .key(format!("{PREFIX}/{}", removed.0))
        .send()
        .await
        .unwrap();
    // Written by another tool: no CRC32C metadata, so only its size is checked.
    files.push((
        "text_encoder/config.json",
        Bytes::from_static(b"{\"d\": 4096}"),
    ));
    server
        .client()
        .put_object()
        .bucket(server.bucket())
        .key(format!("{PREFIX}/text_encoder/config.json"))
        .body(ByteStream::from(files[6].1.clone()))
        .send()
        .await
        .unwrap();
    let changed = resolved(&server, cache.path()).await;
    assert_eq!(changed.fetched_files, 2, "{changed:?}");
    assert_mirrors(&changed, &files);
    assert!(
        !first.path.join(removed.0).exists(),
        "a removed object's file goes too"
    );
    let leftovers: Vec<String> = walk(cache.path())
        .into_iter()
        .filter(|name| name.ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn an_unreachable_server_falls_back_to_a_complete_mirror_only() {
    let server = S3Server::start().expect("s3s-fs starts");
    let files = checkpoint();
    upload(&server, &files[..2]).await;
    let cache = tempfile::tempdir().unwrap();
    let (location, settings) = (url(&server), server.settings());
    resolved(&server, cache.path()).await;
    drop(server);

    let offline = resolve(&location, cache.path(), Some(&settings))
        .await
        .unwrap_or_else(|error| panic!("a complete mirror serves offline: {error}"));
    assert_eq!((offline.files, offline.fetched_files), (2, 0));

    // Not once a file is gone: the mirror could be stale or partial.
    std::fs::remove_file(offline.path.join(files[0].0)).unwrap();
    let error = resolve(&location, cache.path(), Some(&settings))
        .await
        .expect_err("must fail");
    assert!(matches!(error, Error::Unavailable(_)), "{error}");
    assert!(error.to_string().contains("cannot reach S3"), "{error}");
}

#[tokio::test]
async fn concurrent_resolves_fetch_once() {
    let server = S3Server::start().expect("s3s-fs starts");
    let files = checkpoint();
    upload(&server, &files).await;
    let cache = tempfile::tempdir().unwrap();
    let settings = server.settings();
    let location = url(&server);
    let (a, b) = tokio::join!(
        resolve(&location, cache.path(), Some(&settings)),
        resolve(&location, cache.path(), Some(&settings)),
    );
    let (a, b) = (a.expect("first resolves"), b.expect("second resolves"));
    assert_eq!(
        a.fetched_files + b.fetched_files,
        files.len(),
        "{a:?} {b:?}"
    );
    assert_mirrors(&a, &files);
    assert_mirrors(&b, &files);
}

#[tokio::test]
async fn a_hostile_key_on_a_real_server_is_refused_before_anything_is_fetched() {
    let server = S3Server::start().expect("s3s-fs starts");
    upload(&server, &checkpoint()[..1]).await;
    // s3s-fs keeps objects as files, so it cannot hold a `..` key (see the next test), but a
    // backslash is an ordinary character on Linux.
    server
        .client()
        .put_object()
        .bucket(server.bucket())
        .key(format!("{PREFIX}/vae\\..\\..\\escape.json"))
        .body(ByteStream::from_static(b"{}"))
        .send()
        .await
        .expect("s3s-fs takes a backslash key");
    let cache = tempfile::tempdir().unwrap();
    let error = resolve(&url(&server), cache.path(), Some(&server.settings()))
        .await
        .expect_err("a hostile key must be refused");
    let message = error.to_string();
    assert!(matches!(error, Error::InvalidArgument(_)), "{message}");
    assert!(message.contains("backslash"), "{message}");
    assert!(message.contains("cannot be mirrored safely"), "{message}");
    assert!(
        walk(cache.path())
            .iter()
            .all(|name| !name.ends_with(".json")),
        "nothing is fetched before every key is checked"
    );
}

/// A server that answers `HeadBucket` and `ListObjectsV2` with `keys` (as a compromised or
/// buggy S3 could) and counts every other request, which would be a download.
async fn hostile_listing(keys: Vec<String>) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let others = Arc::new(AtomicUsize::new(0));
    let counter = others.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let (keys, counter) = (keys.clone(), counter.clone());
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&request)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                let body = if line.starts_with("HEAD ") {
                    String::new()
                } else if line.starts_with("GET ") && line.contains("list-type=2") {
                    let contents: String = keys
                        .iter()
                        .map(|key| {
                            format!(
                                "<Contents><Key>{key}</Key><Size>2</Size><ETag>\"e\"</ETag>\
                                 <LastModified>2025-01-01T00:00:00.000Z</LastModified></Contents>"
                            )
                        })
                        .collect();
                    format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult \
                         xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>models</Name>\
                         <KeyCount>{}</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false\
                         </IsTruncated>{contents}</ListBucketResult>",
                        keys.len()
                    )
                } else {
                    counter.fetch_add(1, Ordering::SeqCst);
                    "{}".to_string()
                };
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (endpoint, others)
}

#[tokio::test]
async fn keys_that_would_leave_the_mirror_are_refused_before_anything_is_fetched() {
    for (hostile, why) in [
        ("wan/vae/../../../escape.json", "'..'"),
        ("wan/../wan2/x.json", "'..'"),
        ("wan//etc/escape.json", "empty part"),
        ("wan/./x.json", "'.'"),
        ("wan/.reelfarm-manifest.json", ".reelfarm-"),
        ("elsewhere/x.json", "not under that prefix"),
    ] {
        let keys = vec!["wan/model_index.json".to_string(), hostile.to_string()];
        let (endpoint, downloads) = hostile_listing(keys).await;
        let settings = S3Settings {
            endpoint: Some(endpoint),
            region: Some("us-east-1".into()),
            path_style: true,
            access_key_id: Some("key".into()),
            secret_access_key: Some("secret".into()),
            ..S3Settings::new("unused")
        };
        let cache = tempfile::tempdir().unwrap();
        let mirror = cache.path().join("mirror");
        let error = resolve("s3://models/wan", &mirror, Some(&settings))
            .await
            .expect_err(hostile);
        let message = error.to_string();
        assert!(
            matches!(error, Error::InvalidArgument(_)),
            "{hostile}: {message}"
        );
        assert!(message.contains(why), "{hostile}: {message}");
        assert!(
            message.contains(&format!("{hostile:?}")),
            "names the key: {message}"
        );
        assert_eq!(
            downloads.load(Ordering::SeqCst),
            0,
            "{hostile}: nothing is fetched"
        );
        assert_eq!(
            walk(cache.path()),
            [".reelfarm-lock"],
            "{hostile}: nothing is written"
        );
    }
}

#[tokio::test]
async fn an_empty_prefix_missing_settings_and_missing_paths_say_what_to_fix() {
    let server = S3Server::start().expect("s3s-fs starts");
    let cache = tempfile::tempdir().unwrap();
    let location = format!("s3://{}/nothing/here", server.bucket());
    let error = resolve(&location, cache.path(), Some(&server.settings()))
        .await
        .expect_err("nothing there");
    let message = error.to_string();
    assert!(
        message.contains(&format!("nothing at {location}")),
        "{message}"
    );
    assert!(message.contains(server.endpoint()), "{message}");

    let error = resolve(&location, cache.path(), None)
        .await
        .expect_err("no S3");
    let message = error.to_string();
    assert!(matches!(error, Error::FailedPrecondition(_)), "{message}");
    assert!(
        message.contains("--s3-endpoint") && message.contains("--bucket"),
        "{message}"
    );

    let error = resolve(
        "s3://no-such-bucket/x",
        cache.path(),
        Some(&server.settings()),
    )
    .await
    .expect_err("no bucket");
    let message = error.to_string();
    assert!(
        message.contains("\"no-such-bucket\" does not exist") && message.contains("s3:// location"),
        "{message}"
    );

    let local = cache.path().join("weights/wan");
    let error = resolve(local.to_str().unwrap(), cache.path(), None)
        .await
        .expect_err("missing");
    assert!(matches!(error, Error::NotFound(_)), "{error}");
    assert!(
        error.to_string().contains(local.to_str().unwrap()),
        "{error}"
    );
    std::fs::create_dir_all(&local).unwrap();
    let found = resolve(local.to_str().unwrap(), cache.path(), None)
        .await
        .unwrap();
    assert_eq!((found.path, found.fetched_files), (local, 0));
}

/// A loopback proxy to `upstream` that cuts the first connection to send more than `after`
/// bytes back, once: a transfer that breaks mid-object. Returns its endpoint, how many times
/// it cut, and how many requests asked for a range.
async fn cutting_proxy(
    upstream: String,
    after: usize,
) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (cuts, ranges) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (armed, ranged) = (cuts.clone(), ranges.clone());
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let upstream = upstream.trim_start_matches("http://").to_string();
            let (armed, ranged) = (armed.clone(), ranged.clone());
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let up = tokio::spawn(async move {
                    let mut buffer = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = client_read.read(&mut buffer).await {
                        let text = String::from_utf8_lossy(&buffer[..n]).to_ascii_lowercase();
                        if text.contains("\r\nrange: bytes=") {
                            ranged.fetch_add(1, Ordering::SeqCst);
                        }
                        if server_write.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                });
                let mut sent = 0;
                let mut buffer = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = server_read.read(&mut buffer).await {
                    if sent + n > after && armed.load(Ordering::SeqCst) == 0 {
                        armed.fetch_add(1, Ordering::SeqCst);
                        let _ = client_write.write_all(&buffer[..after - sent]).await;
                        break;
                    }
                    if client_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                    sent += n;
                }
                up.abort();
            });
        }
    });
    (endpoint, cuts, ranges)
}

#[tokio::test]
async fn a_transfer_cut_mid_object_resumes_where_it_stopped() {
    let server = S3Server::start().expect("s3s-fs starts");
    let files = checkpoint();
    upload(&server, &files).await;
    let (endpoint, cuts, ranges) = cutting_proxy(server.endpoint().to_string(), 3 << 20).await;
    let settings = S3Settings {
        endpoint: Some(endpoint),
        ..server.settings()
    };
    let cache = tempfile::tempdir().unwrap();
    let resolved = resolve(&url(&server), cache.path(), Some(&settings))
        .await
        .unwrap_or_else(|error| panic!("resolves through a cut: {error}"));
    assert_eq!(cuts.load(Ordering::SeqCst), 1, "the proxy cut a transfer");
    assert_eq!(
        ranges.load(Ordering::SeqCst),
        1,
        "and it was resumed with a range"
    );
    assert_eq!(resolved.fetched_files, files.len());
    assert_mirrors(&resolved, &files);
}

/// Every file name under `root`, recursively.
fn walk(root: &Path) -> Vec<String> {
    let mut names = Vec::new();
    let mut directories = vec![root.to_path_buf()];
    while let Some(directory) = directories.pop() {
        for entry in std::fs::read_dir(directory).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                directories.push(entry.path());
            } else {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    names
}
