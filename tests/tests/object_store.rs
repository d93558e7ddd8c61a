//! The S3 object store against a real S3-compatible server (s3s-fs on loopback): the same
//! conformance suite as the local backend, multipart uploads, checksums caught on read,
//! listings of more than a page, streamed downloads to a file, and the start-up errors an
//! operator sees for a wrong bucket, wrong keys or a dead endpoint.
//! Each test has its own server (free port, temp dir), so they run in parallel.

use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use reelfarm_common::Error;
use reelfarm_common::blob::{BlobStore, conformance};
use reelfarm_common::s3::{CRC32C_METADATA, MULTIPART_PART_BYTES, S3BlobStore, S3Settings};
use reelfarm_tests::s3_server::S3Server;

async fn connected(settings: S3Settings) -> S3BlobStore {
    S3BlobStore::connect(settings)
        .await
        .unwrap_or_else(|error| panic!("connects: {error}"))
}

fn patterned(len: usize, seed: u8) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i % 251) as u8 ^ seed)
            .collect::<Vec<u8>>(),
    )
}

#[tokio::test]
async fn the_s3_backend_passes_the_conformance_suite() {
    let server = S3Server::start().expect("s3s-fs starts");
    let store = connected(server.settings()).await;
    conformance::run(&store).await;
    assert_eq!(
        store.describe(),
        format!("s3://reelfarm-test ({})", server.endpoint())
    );
}

#[tokio::test]
async fn a_key_prefix_keeps_objects_under_it() {
    let server = S3Server::start().expect("s3s-fs starts");
    let store = connected(S3Settings {
        prefix: "/farm-a/".into(),
        ..server.settings()
    })
    .await;
    conformance::run(&store).await;
    assert_eq!(
        store.describe(),
        format!("s3://reelfarm-test/farm-a ({})", server.endpoint())
    );
    let listed = server
        .client()
        .list_objects_v2()
        .bucket(server.bucket())
        .send()
        .await
        .expect("lists");
    let keys: Vec<&str> = listed.contents().iter().filter_map(|o| o.key()).collect();
    assert!(!keys.is_empty());
    assert!(
        keys.iter()
            .all(|key| key.starts_with("farm-a/conformance/")),
        "{keys:?}"
    );
}

#[tokio::test]
async fn large_objects_go_up_in_parts_and_come_back_whole() {
    let server = S3Server::start().expect("s3s-fs starts");
    let store = connected(server.settings()).await;
    let client = server.client();
    for (key, len) in [
        ("big/exactly-one-part.bin", MULTIPART_PART_BYTES),
        // Three parts, the last one short.
        ("big/three-parts.bin", 2 * MULTIPART_PART_BYTES + 12_345),
    ] {
        let body = patterned(len, 7);
        store.put(key, body.clone()).await.expect("multipart put");
        let back = store.get(key).await.expect("get");
        assert_eq!(back.len(), len);
        assert!(back == body, "{key}: bytes differ after the round trip");

        let head = client
            .head_object()
            .bucket(server.bucket())
            .key(key)
            .send()
            .await
            .expect("head");
        let crc = head.metadata().and_then(|m| m.get(CRC32C_METADATA));
        assert_eq!(
            crc.map(String::as_str),
            Some(format!("{:08x}", crc32c::crc32c(&body)).as_str()),
            "{key}: the multipart path must store the crc32c too"
        );
    }
    // s3s-fs has no ListMultipartUploads; it keeps an open upload as `.upload-<id>.json`.
    let open_uploads: Vec<String> = std::fs::read_dir(server.dir().join("data"))
        .expect("data dir")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(".upload"))
        .collect();
    assert!(
        open_uploads.is_empty(),
        "uploads left open: {open_uploads:?}"
    );
}

#[tokio::test]
async fn an_object_overwritten_behind_the_stores_back_fails_its_checksum_on_read() {
    let server = S3Server::start().expect("s3s-fs starts");
    let store = connected(server.settings()).await;
    let key = "segments/shot-1/window-0.mp4";
    store.put(key, patterned(4096, 1)).await.expect("put");

    // Another writer replaces the bytes but copies the old metadata.
    let client = server.client();
    let head = client
        .head_object()
        .bucket(server.bucket())
        .key(key)
        .send()
        .await
        .expect("head");
    let old_crc = head
        .metadata()
        .and_then(|m| m.get(CRC32C_METADATA))
        .cloned()
        .expect("crc metadata");
    client
        .put_object()
        .bucket(server.bucket())
        .key(key)
        .set_metadata(head.metadata().cloned())
        .body(ByteStream::from(patterned(4096, 2)))
        .send()
        .await
        .expect("overwrite");

    match store.get(key).await {
        Err(Error::Corrupt(message)) => {
            assert!(message.contains("checksum mismatch"), "{message}");
            assert!(message.contains(key), "names the key: {message}");
            assert!(
                message.contains(&old_crc),
                "names the expected crc: {message}"
            );
            let actual = format!("{:08x}", crc32c::crc32c(&patterned(4096, 2)));
            assert!(message.contains(&actual), "names the actual crc: {message}");
        }
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn bit_rot_in_the_servers_files_is_detected_on_read() {
    let server = S3Server::start().expect("s3s-fs starts");
    let store = connected(server.settings()).await;
    store
        .put(
            "seg/a.mp4",
            Bytes::from_static(b"the original segment bytes"),
        )
        .await
        .expect("put");
    // Flip the stored bytes behind the server's back (bit rot, a bad disk).
    let file = server.bucket_dir().join("seg/a.mp4");
    std::fs::write(&file, b"the originaL segment bytes")
        .expect("s3s-fs keeps the object as a file under the bucket");
    match store.get("seg/a.mp4").await {
        Err(error @ Error::Corrupt(_)) => {
            let message = error.to_string();
            assert!(message.contains("checksum mismatch"), "{message}");
            assert!(message.contains("seg/a.mp4"), "{message}");
        }
        other => panic!("corrupted object must be Corrupt: {other:?}"),
    }
}

#[tokio::test]
async fn a_missing_bucket_is_named_at_connect() {
    let server = S3Server::start().expect("s3s-fs starts");
    let error = S3BlobStore::connect(S3Settings {
        bucket: "no-such-bucket".into(),
        ..server.settings()
    })
    .await
    .expect_err("must fail");
    let message = error.to_string();
    assert!(matches!(error, Error::FailedPrecondition(_)), "{message}");
    assert!(
        message.contains(&format!(
            "bucket \"no-such-bucket\" does not exist at {}; create it or fix --bucket",
            server.endpoint()
        )),
        "{message}"
    );
}

#[tokio::test]
async fn wrong_credentials_are_named_at_connect_without_retrying() {
    let server = S3Server::start().expect("s3s-fs starts");
    for settings in [
        S3Settings {
            secret_access_key: Some("not-the-secret".into()),
            ..server.settings()
        },
        S3Settings {
            access_key_id: Some("not-the-key".into()),
            ..server.settings()
        },
    ] {
        let started = Instant::now();
        let error = S3BlobStore::connect(settings).await.expect_err("must fail");
        let message = error.to_string();
        assert!(matches!(error, Error::FailedPrecondition(_)), "{message}");
        assert!(message.contains("access denied"), "{message}");
        assert!(message.contains(server.endpoint()), "{message}");
        assert!(
            message.contains("AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"),
            "{message}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a 403 must not be retried: {:?}",
            started.elapsed()
        );
    }
}

fn dead_settings(endpoint: String) -> S3Settings {
    S3Settings {
        endpoint: Some(endpoint),
        region: Some("us-east-1".into()),
        path_style: true,
        access_key_id: Some("key".into()),
        secret_access_key: Some("secret".into()),
        timeout: Duration::from_secs(2),
        ..S3Settings::new("reelfarm-test")
    }
}

/// Connects to an endpoint that will not serve: the error must be `Unavailable` naming it.
/// Returns the message and how long connecting took.
async fn connect_to_dead(endpoint: &str) -> (String, Duration) {
    let started = Instant::now();
    let error = S3BlobStore::connect(dead_settings(endpoint.to_string()))
        .await
        .expect_err("must fail");
    let took = started.elapsed();
    let message = error.to_string();
    assert!(matches!(error, Error::Unavailable(_)), "{message}");
    assert!(
        message.contains(&format!("cannot reach S3 at {endpoint}")),
        "{message}"
    );
    (message, took)
}

#[tokio::test]
async fn a_closed_port_is_named_at_connect_quickly() {
    let endpoint = format!("http://127.0.0.1:{}", reelfarm_tests::cluster::free_port());
    let (message, took) = connect_to_dead(&endpoint).await;
    assert!(
        message.contains("reelfarm-test"),
        "names the bucket: {message}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[tokio::test]
async fn a_server_that_never_answers_is_named_at_connect_within_the_timeout() {
    // Connections land in the listen backlog, but nobody ever reads or answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let (_, took) = connect_to_dead(&endpoint).await;
    assert!(took < Duration::from_secs(10), "took {took:?}");
    drop(listener);
}

#[tokio::test]
async fn a_listing_pages_through_every_object_under_the_prefix() {
    let server = S3Server::start().expect("s3s-fs starts");
    let store = std::sync::Arc::new(
        connected(S3Settings {
            prefix: "farm-a".into(),
            ..server.settings()
        })
        .await,
    );
    // More than one page of 1000.
    let mut puts = tokio::task::JoinSet::new();
    for chunk in (0..1005).collect::<Vec<u32>>().chunks(100) {
        let (store, chunk) = (store.clone(), chunk.to_vec());
        puts.spawn(async move {
            for i in chunk {
                store
                    .put(&format!("many/{i:04}"), Bytes::from(i.to_string()))
                    .await
                    .expect("put");
            }
        });
    }
    puts.join_all().await;
    store
        .put("many-not/x", Bytes::from_static(b"x"))
        .await
        .unwrap();

    let listed = store.list("many/").await.expect("lists");
    assert_eq!(listed.len(), 1005);
    assert!(
        listed.windows(2).all(|w| w[0].key < w[1].key),
        "in key order"
    );
    assert_eq!(listed[7].key, "many/0007", "relative to the store's prefix");
    assert_eq!(listed[7].size, 1);
    assert_eq!(listed[7].crc32c, None, "a listing has no user metadata");
    assert!(listed[7].last_modified_ms.is_some());

    let head = store.head("many/0007").await.expect("head");
    assert_eq!(head.size, 1);
    assert_eq!(
        head.crc32c,
        Some(format!("{:08x}", crc32c::crc32c(b"7"))),
        "head reads the stored crc32c"
    );
    assert!(matches!(
        store.head("many/none").await,
        Err(Error::NotFound(_))
    ));
    assert!(store.list("nothing/").await.expect("lists").is_empty());
}

#[tokio::test]
async fn a_download_streams_to_a_file_and_catches_a_corrupt_object() {
    let server = S3Server::start().expect("s3s-fs starts");
    let store = connected(server.settings()).await;
    let body = patterned(2 * MULTIPART_PART_BYTES + 777, 5);
    store
        .put("ckpt/shard.bin", body.clone())
        .await
        .expect("put");
    let object = store
        .list("ckpt/")
        .await
        .expect("lists")
        .pop()
        .expect("listed");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shard.bin");
    let mut seen = Vec::new();
    let downloaded = store
        .download(&object, &path, &mut |written| seen.push(written))
        .await
        .expect("downloads");
    assert_eq!(downloaded.bytes, body.len() as u64);
    assert_eq!(downloaded.crc32c, format!("{:08x}", crc32c::crc32c(&body)));
    assert!(downloaded.verified, "checked against the stored crc32c");
    assert!(seen.len() > 1, "progress is reported on the way");
    assert_eq!(seen.last(), Some(&(body.len() as u64)));
    assert!(std::fs::read(&path).unwrap() == body.as_ref());

    // Bit rot on the server: same size, other bytes.
    let file = server.bucket_dir().join("ckpt/shard.bin");
    let mut rotten = std::fs::read(&file).unwrap();
    rotten[MULTIPART_PART_BYTES + 3] ^= 1;
    std::fs::write(&file, rotten).unwrap();
    let error = store
        .download(&object, &path, &mut |_| {})
        .await
        .expect_err("corrupt");
    let message = error.to_string();
    assert!(message.contains("checksum mismatch"), "{message}");
    assert!(
        message.contains("s3://reelfarm-test/ckpt/shard.bin"),
        "{message}"
    );

    // Listed as larger than it is: the short read is named.
    let longer = reelfarm_common::s3::ObjectInfo {
        size: object.size + 1,
        ..object
    };
    let error = store
        .download(&longer, &path, &mut |_| {})
        .await
        .expect_err("short");
    assert!(error.to_string().contains("the listing said"), "{error}");
}
