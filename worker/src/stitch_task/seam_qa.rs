//! Seam QA's side of the stitch: the continuity joins' scores go back to the scheduler with
//! the result (which decides what renders again), and the report lists every try of every
//! join QA rendered again, the earlier ones (from the task) and the one in this video.

use reelfarm_common::pb;
use reelfarm_stitch::seams::{JoinMetrics, seam_badness};
use serde_json::{Value, json};

/// The scores of the continuity joins that have a verdict.
pub(super) fn scores(joins: &[JoinMetrics]) -> Vec<pb::SeamScore> {
    joins
        .iter()
        .filter_map(|join| {
            let badness = seam_badness(join)?;
            Some(pb::SeamScore {
                segment_id: join.segment_id.clone(),
                badness,
                passed: badness <= 1.0,
                delta_e00_after: join.delta_e00_after,
                within_p95: join.within_p95?,
                structure_jump: join.structure_jump?,
                structure_within_p95: join.structure_within_p95?,
            })
        })
        .collect()
}

fn try_json(score: &pb::SeamScore, seed: u64, kept: bool) -> Value {
    json!({
        "segment_id": score.segment_id,
        "seed": seed,
        "badness": score.badness,
        "passed": score.passed,
        "delta_e00_after": score.delta_e00_after,
        "within_p95": score.within_p95,
        "structure_jump": score.structure_jump,
        "structure_within_p95": score.structure_within_p95,
        "kept": kept,
    })
}

/// `report` (the stitch's JSON) with a `seam_qa` section: `enabled`, and `tries`, every
/// render of a join that failed at least once, in the order judged, `kept` marking the one
/// in this video.
pub(super) fn with_tries(
    report: Vec<u8>,
    task: &pb::StitchTask,
    scores: &[pb::SeamScore],
) -> Result<Vec<u8>, serde_json::Error> {
    let mut doc: Value = serde_json::from_slice(&report)?;
    let seed_on_timeline = |segment_id: &str| {
        task.parts
            .iter()
            .find(|part| part.segment_id == segment_id)
            .map(|part| part.seed)
    };
    let mut tries = Vec::new();
    for tried in &task.seam_tries {
        let Some(score) = &tried.score else { continue };
        let kept = seed_on_timeline(&score.segment_id) == Some(tried.seed);
        tries.push(try_json(score, tried.seed, kept));
    }
    for score in scores {
        let Some(seed) = seed_on_timeline(&score.segment_id) else {
            continue;
        };
        let earlier = task
            .seam_tries
            .iter()
            .filter_map(|tried| Some((tried.score.as_ref()?, tried.seed)))
            .filter(|(tried, _)| tried.segment_id == score.segment_id)
            .collect::<Vec<_>>();
        let judged = earlier.iter().any(|(_, tried_seed)| *tried_seed == seed);
        if !judged && (!earlier.is_empty() || !score.passed) {
            tries.push(try_json(score, seed, true));
        }
    }
    doc["seam_qa"] = json!({ "enabled": task.seam_qa, "tries": tries });
    serde_json::to_vec_pretty(&doc)
}
