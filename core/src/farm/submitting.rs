//! How sequences arrive: a planned sequence becomes task records, its segment cache hits
//! done at once (`Cached`), once per idempotency key. Part of the `farm` state machine; pure
//! like the rest of it.

use reelfarm_common::sequence::Sequence;

use super::{Farm, SequenceId, SequenceRecord, SequenceState, TaskRecord, TaskState};
use crate::planner::Plan;

/// What the segment cache knows of a submission: every segment's key (empty: caching off)
/// and the entries that may be reused (`cache::usable`), both in plan order.
#[derive(Debug, Clone, Default)]
pub struct Cached {
    pub keys: Vec<String>,
    pub hits: Vec<Option<crate::cache::CacheEntry>>,
}

impl Farm {
    /// Adds a planned sequence. With a known idempotency key, returns the earlier sequence
    /// and `false` instead.
    pub fn submit(
        &mut self,
        id: SequenceId,
        idempotency_key: Option<String>,
        sequence: Sequence,
        plan: Plan,
        now: f64,
    ) -> (SequenceId, bool) {
        self.submit_cached(id, idempotency_key, sequence, plan, Cached::default(), now)
    }

    /// `submit` with the segment cache: each segment's key, and the entries found for them
    /// (`cache::usable` already applied). A hit is done at once, its result the entry's
    /// objects; when every segment is a hit the stitch is ready straight away.
    pub fn submit_cached(
        &mut self,
        id: SequenceId,
        idempotency_key: Option<String>,
        sequence: Sequence,
        plan: Plan,
        cached: Cached,
        now: f64,
    ) -> (SequenceId, bool) {
        if let Some(existing) = idempotency_key
            .as_ref()
            .and_then(|key| self.idempotency_keys.get(key))
        {
            return (existing.clone(), false);
        }
        let Cached { keys, mut hits } = cached;
        hits.resize(plan.segments.len(), None);
        let mut segments: Vec<TaskRecord> = plan
            .segments
            .iter()
            .enumerate()
            .map(|(index, segment)| {
                let mut task = TaskRecord::new(TaskState::Blocked, segment.memory_estimate_bytes);
                task.ready_since_unix_s = now;
                task.cache_key = keys.get(index).cloned();
                if let Some(entry) = hits[index].take() {
                    task.state = TaskState::Done;
                    task.output_key = Some(reelfarm_common::keys::segment_video(&entry.prefix));
                    task.objects = entry.stored_objects();
                    task.reused_from = Some(entry.prefix);
                }
                task
            })
            .collect();
        for (index, segment) in plan.segments.iter().enumerate() {
            let waits = segment
                .continues_from
                .is_some_and(|previous| segments[previous].state != TaskState::Done);
            if segments[index].state == TaskState::Blocked && !waits {
                segments[index].state = TaskState::Ready;
            }
        }
        let all_reused =
            !segments.is_empty() && segments.iter().all(|task| task.state == TaskState::Done);
        let stitch_bytes = plan.stitch_memory_bytes();
        let mut stitch = TaskRecord::new(TaskState::Blocked, stitch_bytes);
        if all_reused {
            stitch.state = TaskState::Ready;
            stitch.ready_since_unix_s = now;
        }
        let record = SequenceRecord {
            id: id.clone(),
            submit_order: self.next_submit_order,
            sequence,
            plan,
            segments,
            stitch,
            state: if all_reused {
                SequenceState::Stitching
            } else {
                SequenceState::Queued
            },
            submitted_unix_s: now,
            finished_unix_s: None,
            error: None,
            phases: Vec::new(),
            traceparent: String::new(),
            idempotency_key: idempotency_key.clone(),
            revision: None,
            seam_tries: Vec::new(),
        };
        self.next_submit_order += 1;
        if let Some(key) = idempotency_key {
            self.idempotency_keys.insert(key, id.clone());
        }
        self.sequences.insert(id.clone(), record);
        self.changed.insert(id.clone());
        (id, true)
    }
}
