//! Segment cache lookups at submit: the keys of a new sequence's segments (`core::cache`),
//! and the entries already in the object store for them, checked before they are trusted.

use futures::StreamExt;
use reelfarm_common::blob::BlobStore;
use reelfarm_common::sequence::Sequence;
use reelfarm_core::cache::{self, CacheEntry};
use reelfarm_core::farm::Cached;
use reelfarm_core::planner::Plan;
use tracing::warn;

/// Lookups in flight at once.
const CONCURRENT_LOOKUPS: usize = 16;

/// Every segment's key, and with `reuse` the entries that may stand for them.
pub async fn look_up(
    store: &dyn BlobStore,
    sequence: &Sequence,
    plan: &Plan,
    reuse: bool,
) -> Cached {
    let digests: Vec<Option<String>> = sequence
        .shots
        .iter()
        .map(|shot| {
            shot.reference
                .as_ref()
                .map(|reference| cache::sha256_hex(&reference.png))
        })
        .collect();
    let keys = cache::segment_keys(plan, sequence.owner.as_deref(), &digests);
    if !reuse {
        return Cached {
            keys,
            hits: Vec::new(),
        };
    }
    // Owned keys: a stream of borrowed ones trips the Send check of the async handler.
    let hits: Vec<Option<CacheEntry>> = futures::stream::iter(keys.clone())
        .map(move |key| async move { find(store, &key).await })
        .buffered(CONCURRENT_LOOKUPS)
        .collect()
        .await;
    Cached {
        hits: cache::usable(plan, hits),
        keys,
    }
}

/// The entry for `key` if it reads back whole and every object it names is still there. An
/// unreadable entry, or one whose objects are gone (their sequence deleted), is removed.
async fn find(store: &dyn BlobStore, key: &str) -> Option<CacheEntry> {
    let entry_key = cache::entry_key(key);
    let bytes = match store.get(&entry_key).await {
        Ok(bytes) => bytes,
        Err(reelfarm_common::Error::NotFound(_)) => return None,
        Err(error) => {
            warn!(key = %entry_key, %error, "segment cache entry unreadable; rendering instead");
            return None;
        }
    };
    let stale = match CacheEntry::parse(key, &bytes) {
        Ok(entry) => {
            let mut present = true;
            for object in &entry.objects {
                present &= matches!(store.exists(&object.key).await, Ok(true));
            }
            if present {
                return Some(entry);
            }
            "its objects are gone"
        }
        Err(error) => {
            warn!(key = %entry_key, %error, "malformed segment cache entry");
            "malformed"
        }
    };
    if let Err(error) = store.delete(&entry_key).await {
        warn!(key = %entry_key, %error, stale, "could not remove a stale cache entry");
    }
    None
}
