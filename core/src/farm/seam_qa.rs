//! Seam QA: after a stitch, every continuity join is scored (colour jump after matching and
//! structure jump, each against the segments' own frame-to-frame p95; `stitch::seams`). A
//! join that fails is rendered again: its continuation, and the chain conditioned on it, with
//! a new seed, up to `seam_qa_tries` new seeds per join. Then the best try is kept; when that
//! is not the last one rendered, its seed is rendered once more (renders are deterministic,
//! so it comes back as it scored) rather than every try's chain being kept in the store.
//! Part of the pure `farm`: the scores come in with the stitch's completion.

use reelfarm_common::pb;
use serde::{Deserialize, Serialize};

use super::{SequenceRecord, SequenceState, TaskState};

/// One render of a join seam QA judged: the continuation's seed and the join's scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeamTry {
    pub segment_id: String,
    pub seed: u64,
    pub badness: f64,
    pub passed: bool,
    pub delta_e00_after: f64,
    pub within_p95: f64,
    pub structure_jump: f64,
    pub structure_within_p95: f64,
}

impl SeamTry {
    fn new(score: &pb::SeamScore, seed: u64) -> SeamTry {
        SeamTry {
            segment_id: score.segment_id.clone(),
            seed,
            badness: score.badness,
            passed: score.passed,
            delta_e00_after: score.delta_e00_after,
            within_p95: score.within_p95,
            structure_jump: score.structure_jump,
            structure_within_p95: score.structure_within_p95,
        }
    }

    pub fn to_pb(&self) -> pb::SeamTry {
        pb::SeamTry {
            score: Some(pb::SeamScore {
                segment_id: self.segment_id.clone(),
                badness: self.badness,
                passed: self.passed,
                delta_e00_after: self.delta_e00_after,
                within_p95: self.within_p95,
                structure_jump: self.structure_jump,
                structure_within_p95: self.structure_within_p95,
            }),
            seed: self.seed,
        }
    }
}

/// The seed of seam QA's `try_number`-th new try of a segment planned with `seed`: far from
/// the seeds the planner hands out (the sequence seed plus small offsets).
pub fn qa_seed(seed: u64, try_number: u64) -> u64 {
    seed.wrapping_add(try_number.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn finite(score: &pb::SeamScore) -> bool {
    [
        score.badness,
        score.delta_e00_after,
        score.within_p95,
        score.structure_jump,
        score.structure_within_p95,
    ]
    .iter()
    .all(|value| value.is_finite())
}

impl SequenceRecord {
    /// The seed segment `index` renders with: seam QA's choice, else the plan's.
    pub fn seed_of(&self, index: usize) -> u64 {
        self.segments[index]
            .qa_seed
            .unwrap_or(self.plan.segments[index].seed)
    }

    /// Judges a finished stitch's `scores`; true when joins go back to rendering (the
    /// sequence is not done yet). Records every try of a join that failed at least once.
    pub(super) fn judge_seams(&mut self, scores: &[pb::SeamScore], now: f64) -> bool {
        if !self.sequence.seam_qa_enabled() {
            return false;
        }
        let budget = self.sequence.seam_qa_tries as usize;
        let mut again = Vec::new();
        for score in scores.iter().filter(|score| finite(score)) {
            let Some(index) = self
                .plan
                .segments
                .iter()
                .position(|planned| planned.id == score.segment_id && planned.on_timeline)
            else {
                continue;
            };
            let seed = self.seed_of(index);
            let earlier = self
                .seam_tries
                .iter()
                .filter(|tried| tried.segment_id == score.segment_id);
            if earlier.clone().any(|tried| tried.seed == seed) {
                // The kept try, rendered back: judged already.
                continue;
            }
            if earlier.count() == 0 && score.passed {
                continue;
            }
            self.seam_tries.push(SeamTry::new(score, seed));
            if score.passed {
                continue;
            }
            let tries: Vec<&SeamTry> = self
                .seam_tries
                .iter()
                .filter(|tried| tried.segment_id == score.segment_id)
                .collect();
            let new_seeds = tries.len() - 1;
            if new_seeds < budget {
                let planned = self.plan.segments[index].seed;
                again.push((index, qa_seed(planned, new_seeds as u64 + 1)));
            } else if let Some(best) = tries
                .iter()
                .min_by(|a, b| a.badness.total_cmp(&b.badness))
                .filter(|best| best.seed != seed)
            {
                again.push((index, best.seed));
            }
        }
        for &(index, seed) in &again {
            self.render_again(index, seed, now);
        }
        !again.is_empty()
    }

    /// Segment `index` renders again with `seed`, and every segment conditioned on it, directly
    /// or down a chain, renders after it; the stitch waits. None of it uses up attempts.
    fn render_again(&mut self, index: usize, seed: u64, now: f64) {
        let mut chain = vec![index];
        let mut next = 0;
        while next < chain.len() {
            let from = chain[next];
            chain.extend(
                self.plan
                    .segments
                    .iter()
                    .enumerate()
                    .filter(|(_, planned)| planned.continues_from == Some(from))
                    .map(|(successor, _)| successor),
            );
            next += 1;
        }
        self.segments[index].qa_seed = Some(seed);
        for &member in &chain {
            let task = &mut self.segments[member];
            task.state = if member == index {
                TaskState::Ready
            } else {
                TaskState::Blocked
            };
            task.ready_since_unix_s = now;
            task.excused_attempts += 1;
            // Its pixels no longer follow from the plan: no cache entry under the plan's key.
            task.cache_key = None;
            task.reused_from = None;
            task.error = Some("seam QA: rendering again with a new seed".into());
        }
        self.stitch.state = TaskState::Blocked;
        self.stitch.excused_attempts += 1;
        self.state = SequenceState::Rendering;
    }
}
