//! The content-addressed segment cache, pure: the key of each planned segment (a hash of
//! everything that decides its pixels) and the entry an accepted segment leaves behind, so a
//! later submission reuses what did not change instead of rendering it again.
//!
//! A segment's pixels are decided by the model and its weights, its prompt, negative and
//! seed, its size, frame counts, steps and guidance, and the picture it starts from. That
//! picture is the shot's reference image (hashed), or for a continuation its predecessor's
//! handoff frame, which is itself decided by the predecessor's key: so a continuation's key
//! chains its predecessor's, and editing one shot changes the keys of that shot and of the
//! continuity chain after it, and of nothing else. A continuation is reused only when its
//! predecessor is (`usable`), so a chain is never stitched from two different renders.
//!
//! An entry is a plain object (`cache/segments/<key>.json`) naming the accepted attempt's
//! objects and their checksums; consumers verify what they read against those, as for any
//! segment, and an entry whose objects are gone is a miss.

use reelfarm_common::keys;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Error;
use crate::farm::StoredObject;
use crate::planner::{Join, Plan};
use crate::records::ObjectDoc;

/// Bumped when what a key covers changes, so old entries stop matching.
const KEY_VERSION: &str = "reelfarm segment cache v1";

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The cache key of every planned segment, in plan order: each segment's model and what
/// names its weights (`ModelEntry::weights_identity`) are in its key; `reference_digests[shot]` is the SHA-256 of
/// that shot's reference PNG, if it has one. `tenant` is the owner: one tenant never
/// reuses another's segments, or a hit would tell it what another tenant had rendered.
pub fn segment_keys(
    plan: &Plan,
    tenant: Option<&str>,
    reference_digests: &[Option<String>],
) -> Vec<String> {
    let mut keys: Vec<String> = Vec::with_capacity(plan.segments.len());
    for segment in &plan.segments {
        let condition = match segment.continues_from {
            Some(previous) => format!(
                "handoff of {} at {} frames from its end",
                keys[previous], plan.segments[previous].handoff_back_frames
            ),
            None if segment.uses_reference => format!(
                "reference {}",
                reference_digests
                    .get(segment.shot_index as usize)
                    .cloned()
                    .flatten()
                    .unwrap_or_default()
            ),
            None => "none".to_string(),
        };
        // One field per line, each length-prefixed: no two different inputs hash alike.
        let fields: [(&str, String); 17] = [
            ("version", KEY_VERSION.to_string()),
            (
                "tenant",
                tenant.map(|t| format!("owner {t}")).unwrap_or_default(),
            ),
            ("model", segment.model.clone()),
            ("weights", segment.weights_identity.clone()),
            ("prompt", segment.prompt.clone()),
            ("negative", segment.negative.clone()),
            ("seed", segment.seed.to_string()),
            ("width", plan.width.to_string()),
            ("height", plan.height.to_string()),
            ("fps", plan.fps.to_string()),
            ("render_frames", segment.render_frames.to_string()),
            ("lead_frames", segment.lead_frames.to_string()),
            ("timeline_frames", segment.timeline_frames.to_string()),
            (
                "handoff_back_frames",
                segment.handoff_back_frames.to_string(),
            ),
            ("steps", segment.steps.to_string()),
            ("guidance", format!("{:08x}", segment.guidance.to_bits())),
            (
                "join",
                format!(
                    "{} from {condition}",
                    match segment.join {
                        Join::Cut => "cut",
                        Join::Continue => "continue",
                        Join::Crossfade => "crossfade",
                    }
                ),
            ),
        ];
        let mut text = String::new();
        for (name, value) in fields {
            text.push_str(&format!("{name} {} {value}\n", value.len()));
        }
        keys.push(sha256_hex(text.as_bytes()));
    }
    keys
}

/// What an accepted segment leaves in the store for later submissions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub key: String,
    /// The accepted attempt's prefix (`sequences/<id>/segments/s000-00.a1`).
    pub prefix: String,
    /// Its video, sidecar and handoff frame, with the checksums its worker recorded.
    pub objects: Vec<ObjectDoc>,
    pub model: String,
    pub created_unix_s: f64,
}

impl CacheEntry {
    pub fn new(key: &str, prefix: &str, objects: &[StoredObject], model: &str, now: f64) -> Self {
        CacheEntry {
            key: key.to_string(),
            prefix: prefix.to_string(),
            objects: objects.iter().map(ObjectDoc::from).collect(),
            model: model.to_string(),
            created_unix_s: now,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a cache entry serialises")
    }

    /// An entry read back for `key`: it must name that key, an attempt prefix of a segment,
    /// and exactly that attempt's three objects, each with a checksum.
    pub fn parse(key: &str, bytes: &[u8]) -> Result<CacheEntry, Error> {
        let bad = |why: String| Error::Internal(format!("cache entry {key}: {why}"));
        let entry: CacheEntry =
            serde_json::from_slice(bytes).map_err(|error| bad(error.to_string()))?;
        if entry.key != key {
            return Err(bad(format!("names key {}", entry.key)));
        }
        let plausible_prefix = entry.prefix.starts_with("sequences/")
            && entry.prefix.contains("/segments/s")
            && !entry
                .prefix
                .split('/')
                .any(|part| part == ".." || part.is_empty());
        if !plausible_prefix {
            return Err(bad(format!("{:?} is not a segment attempt", entry.prefix)));
        }
        let mut expected = keys::attempt_objects(&entry.prefix).to_vec();
        let mut named: Vec<String> = entry.objects.iter().map(|o| o.key.clone()).collect();
        expected.sort();
        named.sort();
        if named != expected {
            return Err(bad(format!(
                "objects {named:?} are not the attempt's {expected:?}"
            )));
        }
        if entry.objects.iter().any(|object| object.crc32c.len() != 8) {
            return Err(bad("an object has no checksum".to_string()));
        }
        Ok(entry)
    }

    pub fn stored_objects(&self) -> Vec<StoredObject> {
        self.objects
            .iter()
            .cloned()
            .map(StoredObject::from)
            .collect()
    }
}

/// The hits a submission may use: a continuation only when its predecessor is reused too,
/// so one chain never mixes two renders (plan order puts predecessors first).
pub fn usable(plan: &Plan, mut hits: Vec<Option<CacheEntry>>) -> Vec<Option<CacheEntry>> {
    hits.resize(plan.segments.len(), None);
    for (index, segment) in plan.segments.iter().enumerate() {
        if let Some(previous) = segment.continues_from
            && hits[previous].is_none()
        {
            hits[index] = None;
        }
    }
    hits
}

/// The store key of the entry for segment key `key`.
pub fn entry_key(key: &str) -> String {
    keys::segment_cache_entry(key)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::planner;
    use reelfarm_common::sequence::Sequence;
    use reelfarm_models::catalog::reelfarm_tiny;

    fn sequence(yaml: &str) -> Sequence {
        let doc = reelfarm_common::spec::parse_spec_text(yaml).expect("a spec");
        reelfarm_common::spec::validate(doc, None, &|_| Err("no references".into()))
            .expect("a valid spec")
    }

    const SPEC: &str = r#"
fps: 8
seed: 5
shots:
  - {prompt: "harbour at dusk", duration: 2}
  - {prompt: "the camera pushes in", duration: 2, transition: continue}
  - {prompt: "desert at noon", duration: 2}
  - {prompt: "the dunes again", duration: 2, transition: continue}
"#;

    fn keys_of(yaml: &str) -> Vec<String> {
        let plan = planner::plan(&sequence(yaml), &reelfarm_tiny());
        segment_keys(&plan, None, &[])
    }

    #[test]
    fn the_same_spec_gives_the_same_keys_and_every_segment_its_own() {
        let keys = keys_of(SPEC);
        assert_eq!(keys, keys_of(SPEC));
        let mut unique = keys.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), keys.len());
        assert!(keys.iter().all(|key| key.len() == 64));
    }

    #[test]
    fn editing_one_shot_changes_its_key_and_its_continuity_chain_only() {
        let before = keys_of(SPEC);
        let after = keys_of(&SPEC.replace("harbour at dusk", "harbour at dawn"));
        let changed: Vec<bool> = before.iter().zip(&after).map(|(a, b)| a != b).collect();
        assert_eq!(changed, [true, true, false, false]);
        let after = keys_of(&SPEC.replace("desert at noon", "desert at night"));
        let changed: Vec<bool> = before.iter().zip(&after).map(|(a, b)| a != b).collect();
        assert_eq!(changed, [false, false, true, true]);
        // The continuation's own prompt changes only itself.
        let after = keys_of(&SPEC.replace("the dunes again", "the dunes at dusk"));
        let changed: Vec<bool> = before.iter().zip(&after).map(|(a, b)| a != b).collect();
        assert_eq!(changed, [false, false, false, true]);
    }

    #[test]
    fn every_input_that_decides_pixels_is_in_the_key() {
        let plan = planner::plan(&sequence(SPEC), &reelfarm_tiny());
        let base = segment_keys(&plan, None, &[]);
        let differs = |plan: &Plan| segment_keys(plan, None, &[])[0] != base[0];
        let tenant_a = segment_keys(&plan, Some("a"), &[]);
        assert_ne!(tenant_a[0], base[0]);
        assert_ne!(tenant_a[0], segment_keys(&plan, Some("b"), &[])[0]);
        let edits: [fn(&mut Plan); 11] = [
            |p| p.segments[0].model = "other".into(),
            |p| p.segments[0].weights_identity = "other weights".into(),
            |p| p.segments[0].negative = "blur".into(),
            |p| p.segments[0].seed += 1,
            |p| p.width += 16,
            |p| p.height += 16,
            |p| p.fps += 1,
            |p| p.segments[0].render_frames += 4,
            |p| p.segments[0].steps += 1,
            |p| p.segments[0].guidance += 0.5,
            |p| p.segments[0].lead_frames += 1,
        ];
        for edit in edits {
            let mut edited = plan.clone();
            edit(&mut edited);
            assert!(differs(&edited));
        }
        // A reference counts only for a segment that starts from it, by its bytes' digest.
        let mut with_reference = plan.clone();
        with_reference.segments[0].uses_reference = true;
        let a = segment_keys(&with_reference, None, &[Some(sha256_hex(b"a"))]);
        let b = segment_keys(&with_reference, None, &[Some(sha256_hex(b"b"))]);
        assert_ne!(a[0], b[0]);
        assert_ne!(a[1], b[1], "the continuation chains its predecessor");
        assert_eq!(a[2], b[2]);
    }

    /// An entry for `key` naming the three objects of attempt `prefix`, checksum 0badc0de.
    pub(crate) fn entry(key: &str, prefix: &str) -> CacheEntry {
        let objects: Vec<StoredObject> = keys::attempt_objects(prefix)
            .into_iter()
            .map(|key| StoredObject {
                key,
                crc32c: "0badc0de".into(),
                size: 10,
            })
            .collect();
        CacheEntry::new(key, prefix, &objects, "reelfarm-tiny", 1.0)
    }

    #[test]
    fn entries_round_trip_and_a_foreign_or_malformed_one_is_refused() {
        let good = entry("k", "sequences/seq-1/segments/s000-00.a1");
        assert_eq!(CacheEntry::parse("k", &good.to_bytes()).unwrap(), good);
        assert!(CacheEntry::parse("other", &good.to_bytes()).is_err());
        assert!(CacheEntry::parse("k", b"{").is_err());
        let escaping = entry("k", "sequences/../etc/segments/s000-00.a1");
        assert!(CacheEntry::parse("k", &escaping.to_bytes()).is_err());
        let mut foreign = good.clone();
        foreign.objects[0].key = "sequences/seq-2/final.mp4".into();
        assert!(CacheEntry::parse("k", &foreign.to_bytes()).is_err());
    }

    #[test]
    fn a_continuation_is_reused_only_with_its_predecessor() {
        let plan = planner::plan(&sequence(SPEC), &reelfarm_tiny());
        let hit = |index: usize| Some(entry(&index.to_string(), "sequences/a/segments/s000-00.a1"));
        let kept = usable(&plan, vec![None, hit(1), hit(2), hit(3)]);
        let reused: Vec<bool> = kept.iter().map(Option::is_some).collect();
        assert_eq!(reused, [false, false, true, true]);
    }
}
