//! Seam QA: after a stitch, every continuity join is scored (colour jump after matching and
//! structure jump, each against the segments' own frame-to-frame p95; `stitch::seams`). A
//! join that fails is rendered again: its continuation, and the chain conditioned on it, with
//! a new seed, up to `seam_qa_tries` new seeds per join. Then the best try is kept; when that
//! is not the last one rendered, its seed is rendered once more (renders are deterministic,
//! so it comes back as it scored) rather than every try's chain being kept in the store.
//! The joins further down a chain that renders again start from a new picture: they are
//! judged afresh once it has, their earlier tries forgotten.
//! Part of the pure `farm`: the scores come in with the stitch's completion.

use std::collections::BTreeSet;

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
    fn new(score: &pb::SeamScore, seed: u64, passed: bool) -> SeamTry {
        SeamTry {
            segment_id: score.segment_id.clone(),
            seed,
            badness: score.badness,
            passed,
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

    /// Judges a finished stitch's `scores`. Returns the cache entries of the segments that
    /// render again (their pixels no longer follow their keys: the entries go, so nobody
    /// reuses the objects about to be superseded), or `None` when the sequence is done.
    /// Records every try of a join that failed at least once.
    ///
    /// Joins are taken in plan order (a continuation comes after what it continues): once a
    /// join renders again, the joins down its chain are not judged this round, since their
    /// starting picture is about to change; they are judged afresh, tries forgotten, after it.
    pub(super) fn judge_seams(
        &mut self,
        scores: &[pb::SeamScore],
        now: f64,
    ) -> Option<Vec<String>> {
        if !self.sequence.seam_qa_enabled() {
            return None;
        }
        let budget = self.sequence.seam_qa_tries as usize;
        let mut judged: Vec<(usize, &pb::SeamScore)> = scores
            .iter()
            .filter(|score| finite(score))
            .filter_map(|score| {
                let index =
                    self.plan.segments.iter().position(|planned| {
                        planned.id == score.segment_id && planned.on_timeline
                    })?;
                Some((index, score))
            })
            .collect();
        judged.sort_by_key(|(index, _)| *index);
        let mut again = Vec::new();
        let mut rendered_again = BTreeSet::new();
        for (index, score) in judged {
            if rendered_again.contains(&index) {
                continue;
            }
            // The farm's own verdict from the badness, whatever the worker said.
            let passed = score.badness <= 1.0;
            let seed = self.seed_of(index);
            let earlier = self
                .seam_tries
                .iter()
                .filter(|tried| tried.segment_id == score.segment_id);
            if earlier.clone().any(|tried| tried.seed == seed) {
                // The kept try, rendered back: judged already.
                continue;
            }
            if earlier.count() == 0 && passed {
                continue;
            }
            self.seam_tries.push(SeamTry::new(score, seed, passed));
            // A hosted model takes no seed: another render is another paid clip that a
            // "best try" could not bring back. Its join is judged and reported, not redone.
            if passed || self.plan.segments[index].clip_seconds > 0 {
                continue;
            }
            let tries: Vec<&SeamTry> = self
                .seam_tries
                .iter()
                .filter(|tried| tried.segment_id == score.segment_id)
                .collect();
            let new_seeds = tries.len() - 1;
            let next = if new_seeds < budget {
                Some(qa_seed(
                    self.plan.segments[index].seed,
                    new_seeds as u64 + 1,
                ))
            } else {
                tries
                    .iter()
                    .min_by(|a, b| a.badness.total_cmp(&b.badness))
                    .map(|best| best.seed)
                    .filter(|best| *best != seed)
            };
            if let Some(next) = next {
                again.push((index, next));
                rendered_again.extend(self.chain(index));
            }
        }
        if again.is_empty() {
            return None;
        }
        let roots: BTreeSet<usize> = again.iter().map(|(index, _)| *index).collect();
        for &(index, seed) in &again {
            self.segments[index].qa_seed = Some(seed);
        }
        let mut stale_entries = Vec::new();
        for &member in &rendered_again {
            if !roots.contains(&member) {
                // Its picture to start from changes: earlier tries and choices no longer hold.
                let id = self.plan.segments[member].id.clone();
                self.seam_tries.retain(|tried| tried.segment_id != id);
                self.segments[member].qa_seed = None;
            }
            let task = &mut self.segments[member];
            task.state = if roots.contains(&member) {
                TaskState::Ready
            } else {
                TaskState::Blocked
            };
            task.ready_since_unix_s = now;
            task.excused_attempts += 1;
            stale_entries.extend(
                task.cache_key
                    .take()
                    .map(|key| crate::cache::entry_key(&key)),
            );
            task.reused_from = None;
            task.error = Some("seam QA: rendering again with a new seed".into());
        }
        self.stitch.state = TaskState::Blocked;
        self.stitch.excused_attempts += 1;
        self.state = SequenceState::Rendering;
        Some(stale_entries)
    }

    /// Segment `index` and every segment conditioned on it, directly or down a chain.
    fn chain(&self, index: usize) -> Vec<usize> {
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
        chain
    }
}
