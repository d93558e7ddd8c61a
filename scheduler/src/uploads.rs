//! Reference images sent ahead of a submission: each streams to the object store on its own
//! (`UploadReference`), so the references of a sequence are bounded per image and per
//! sequence, not by the size of one gRPC message. A submission names them by upload id; the
//! scheduler reads them back into the spec and deletes the uploads once it accepted it.
//! Uploads no submission claims are swept once they are older than the farm's upload TTL.

use std::sync::Arc;

use reelfarm_common::blob::BlobStore;
use reelfarm_common::{keys, limits, pb, spec};

use crate::Error;

/// Receives one image, checks it is a PNG the workers will decode, and stores it.
pub(crate) async fn receive(
    store: &Arc<dyn BlobStore>,
    mut chunks: tonic::Streaming<pb::ReferenceChunk>,
) -> Result<pb::UploadReferenceResponse, Error> {
    let mut png = Vec::new();
    while let Some(chunk) = chunks
        .message()
        .await
        .map_err(|status| Error::InvalidArgument(format!("upload: {}", status.message())))?
    {
        if (png.len() + chunk.data.len()) as u64 > spec::MAX_REFERENCE_BYTES {
            return Err(Error::InvalidArgument(format!(
                "data: a reference image may be at most {} MiB; scale it down (the farm renders at most 1080p)",
                spec::MAX_REFERENCE_BYTES >> 20
            )));
        }
        png.extend_from_slice(&chunk.data);
    }
    spec::check_reference_png(&png).map_err(|reason| {
        Error::InvalidArgument(format!("data: not a usable PNG image: {reason}"))
    })?;
    let upload_id = uuid::Uuid::new_v4().simple().to_string();
    let size = png.len() as u64;
    store
        .put(&keys::reference_upload(&upload_id), png.into())
        .await?;
    Ok(pb::UploadReferenceResponse { upload_id, size })
}

fn is_upload_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
}

/// Puts each uploaded image the spec names into its shot, as if it had come inline; returns
/// the upload keys, to delete once the sequence is accepted.
pub(crate) async fn resolve(
    store: &Arc<dyn BlobStore>,
    spec: &mut pb::SequenceSpec,
) -> Result<Vec<String>, Error> {
    let mut keys_used = Vec::new();
    let mut total = 0u64;
    for (index, shot) in spec.shots.iter_mut().enumerate() {
        if let Some(png) = &shot.reference_png {
            total += png.len() as u64;
        }
        let Some(id) = shot.reference_upload.take() else {
            continue;
        };
        let field = format!("shots[{index}].reference_upload");
        if shot.reference_png.is_some() {
            return Err(Error::InvalidArgument(format!(
                "{field}: give reference_png or reference_upload, not both"
            )));
        }
        if !is_upload_id(&id) {
            return Err(Error::InvalidArgument(format!(
                "{field}: {id:?} is not an upload id (32 hex digits from UploadReference)"
            )));
        }
        let key = keys::reference_upload(&id);
        let png = store.get(&key).await.map_err(|error| match error {
            reelfarm_common::Error::NotFound(_) => Error::InvalidArgument(format!(
                "{field}: no upload {id}; upload the image again (an upload serves one submission, and unclaimed ones are swept after --upload-ttl)"
            )),
            other => Error::from(other),
        })?;
        total += png.len() as u64;
        if total > limits::MAX_SEQUENCE_REFERENCE_BYTES {
            return Err(Error::InvalidArgument(format!(
                "{field}: the sequence's reference images pass {} MiB in all; use smaller images",
                limits::MAX_SEQUENCE_REFERENCE_BYTES >> 20
            )));
        }
        shot.reference_png = Some(png.to_vec());
        keys_used.push(key);
    }
    Ok(keys_used)
}

/// Deletes the uploads last written before `cutoff` (Unix seconds); how many it deleted.
pub(crate) async fn sweep(store: &Arc<dyn BlobStore>, cutoff: f64) -> Result<usize, Error> {
    let mut deleted = 0;
    for upload in store.list_folder(keys::UPLOADS).await? {
        if upload
            .modified_unix_s
            .is_some_and(|modified| modified < cutoff)
        {
            store.delete(&upload.key).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use reelfarm_common::blob::LocalBlobStore;

    use super::*;

    #[tokio::test]
    async fn uploads_resolve_into_their_shots_and_bad_ids_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn BlobStore> = Arc::new(LocalBlobStore::new(dir.path()).unwrap());
        let id = "0123456789abcdef0123456789abcdef";
        store
            .put(&keys::reference_upload(id), vec![1, 2, 3].into())
            .await
            .unwrap();
        let shot = |upload: &str| pb::ShotSpec {
            reference_upload: Some(upload.into()),
            ..Default::default()
        };
        let mut spec = pb::SequenceSpec {
            shots: vec![pb::ShotSpec::default(), shot(id)],
            ..Default::default()
        };
        let used = resolve(&store, &mut spec).await.unwrap();
        assert_eq!(used, [keys::reference_upload(id)]);
        assert_eq!(
            spec.shots[1].reference_png.as_deref(),
            Some(&[1u8, 2, 3][..])
        );
        for (upload, expected) in [
            ("../../etc/passwd", "is not an upload id"),
            ("ffffffffffffffffffffffffffffffff", "no upload ffff"),
        ] {
            let mut spec = pb::SequenceSpec {
                shots: vec![shot(upload)],
                ..Default::default()
            };
            let error = resolve(&store, &mut spec).await.unwrap_err().to_string();
            assert!(
                error.starts_with("shots[0].reference_upload:") && error.contains(expected),
                "{error}"
            );
        }
    }

    #[tokio::test]
    async fn unclaimed_uploads_are_swept_once_old_and_kept_before() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn BlobStore> = Arc::new(LocalBlobStore::new(dir.path()).unwrap());
        let key = keys::reference_upload("00000000000000000000000000000001");
        store.put(&key, vec![1].into()).await.unwrap();
        store
            .put("sequences/s/final.mp4", vec![2].into())
            .await
            .unwrap();
        let now = reelfarm_common::unix_now_s();
        assert_eq!(sweep(&store, now - 60.0).await.unwrap(), 0);
        assert!(store.exists(&key).await.unwrap());
        assert_eq!(sweep(&store, now + 60.0).await.unwrap(), 1);
        assert!(!store.exists(&key).await.unwrap());
        // Only uploads: nothing else in the store is touched.
        assert!(store.exists("sequences/s/final.mp4").await.unwrap());
    }
}
