//! The scheduler's state and every transition of it, as a pure state machine: gRPC handlers
//! call these methods under one lock and carry out the returned `Action`s; nothing here does
//! I/O or reads the clock (`now` is passed in), so each rule is unit-tested directly.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use reelfarm_common::pb;
use reelfarm_common::sequence::Sequence;

use crate::Error;
use crate::placement::Policy;
use crate::planner::Plan;

pub type SequenceId = String;
pub type WorkerId = String;

/// Attempts per task before the sequence fails.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Starts the error of a task that fits no registered device.
pub const UNPLACEABLE_PREFIX: &str = "needs";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Waiting for the segment it continues from.
    Blocked,
    Ready,
    Running,
    Done,
    Failed,
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceState {
    Queued,
    Rendering,
    Stitching,
    Succeeded,
    Failed,
    Cancelled,
}

impl SequenceState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SequenceState::Succeeded | SequenceState::Failed | SequenceState::Cancelled
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TaskRef {
    Segment(usize),
    Stitch,
}

#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub state: TaskState,
    /// Attempts started so far; the current assignment carries this number.
    pub attempt: u32,
    /// Set exactly while an assignment for this task is outstanding (running, or told to
    /// stop and not yet reported back).
    pub assignment_id: Option<String>,
    pub worker: Option<WorkerId>,
    /// The device slot of the outstanding assignment on `worker`.
    pub device_slot: Option<usize>,
    pub progress_done: u64,
    pub progress_total: u64,
    pub error: Option<String>,
    pub output_key: Option<String>,
    /// The planner's formula for the task (before learned corrections).
    pub memory_estimate_bytes: u64,
    pub peak_memory_bytes: u64,
    /// What the current or last attempt reserved on its device.
    pub reserved_bytes: u64,
    /// The device of the current or last attempt on `worker`.
    pub device_index: Option<u32>,
    /// The out-of-memory ladder: failures so far, the smallest GPU allowed after one, and
    /// the model's lower-memory mode on the last rung.
    pub oom_count: u32,
    pub min_gpu_bytes: u64,
    pub low_memory: bool,
    /// When the task last became ready (0: unknown); not stored, only for queue-wait metrics.
    pub ready_since_unix_s: f64,
    /// What the accepted attempt wrote, with the checksums its worker computed: consumers
    /// verify what they read against these.
    pub objects: Vec<StoredObject>,
    /// Attempts that ended through no fault of the task (its input was corrupt and is being
    /// rendered again): they do not count against the retry budget.
    pub excused_attempts: u32,
    /// Times the accepted result was found corrupt and rendered again (its own budget).
    pub repairs: u32,
    /// A segment's cache key (`cache`): its accepted result is recorded under it.
    pub cache_key: Option<String>,
    /// Reused from the cache: the attempt prefix (of an earlier sequence) whose objects are
    /// this segment's result. No attempt of its own ran.
    pub reused_from: Option<String>,
    /// The step its accepted attempt resumed from (an earlier attempt's checkpoint; 0: none).
    pub resumed_from_step: u32,
    /// The seed seam QA chose for it (`None`: the plan's).
    pub qa_seed: Option<u64>,
    /// A hosted segment's remote job, from its creation until its clip is accepted or the
    /// job failed: a new attempt polls it instead of creating (and paying for) another.
    pub remote_job_id: Option<String>,
    /// What its accepted hosted clips cost so far (each acceptance adds its clip's price).
    pub cost_usd: f64,
}

/// An object a task wrote, as its worker computed it before the upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub key: String,
    /// CRC32C as 8 lowercase hex digits.
    pub crc32c: String,
    pub size: u64,
}

impl From<pb::StoredObject> for StoredObject {
    fn from(object: pb::StoredObject) -> Self {
        StoredObject {
            key: object.key,
            crc32c: object.crc32c,
            size: object.size,
        }
    }
}

impl TaskRecord {
    fn new(state: TaskState, memory_estimate_bytes: u64) -> Self {
        TaskRecord {
            state,
            attempt: 0,
            assignment_id: None,
            worker: None,
            device_slot: None,
            progress_done: 0,
            progress_total: 0,
            error: None,
            output_key: None,
            memory_estimate_bytes,
            peak_memory_bytes: 0,
            reserved_bytes: 0,
            device_index: None,
            oom_count: 0,
            min_gpu_bytes: 0,
            low_memory: false,
            ready_since_unix_s: 0.0,
            objects: Vec::new(),
            excused_attempts: 0,
            repairs: 0,
            cache_key: None,
            reused_from: None,
            resumed_from_step: 0,
            qa_seed: None,
            remote_job_id: None,
            cost_usd: 0.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SequenceRecord {
    pub id: SequenceId,
    pub submit_order: u64,
    pub sequence: Sequence,
    pub plan: Plan,
    pub segments: Vec<TaskRecord>,
    pub stitch: TaskRecord,
    pub state: SequenceState,
    pub submitted_unix_s: f64,
    pub finished_unix_s: Option<f64>,
    pub error: Option<String>,
    pub phases: Vec<pb::TimedPhase>,
    /// W3C trace context of the sequence's span ("" when tracing is off).
    pub traceparent: String,
    /// The key it was submitted with, if any (a retried submit returns this sequence).
    pub idempotency_key: Option<String>,
    /// Set when it is a new version of an earlier sequence (`reelfarm rerender`, `promote`).
    pub revision: Option<Revision>,
    /// Seam QA's tries of joins that failed, in the order they were judged.
    pub seam_tries: Vec<SeamTry>,
}

/// Where a version stands among the versions of one piece: the sequence it revises, the
/// first version's id (the lineage), its number (the first is 1) and what changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Revision {
    pub of: SequenceId,
    pub lineage: SequenceId,
    pub version: u32,
    pub change: String,
}

impl SequenceRecord {
    pub fn task(&self, task: TaskRef) -> &TaskRecord {
        match task {
            TaskRef::Segment(index) => &self.segments[index],
            TaskRef::Stitch => &self.stitch,
        }
    }

    fn task_mut(&mut self, task: TaskRef) -> &mut TaskRecord {
        match task {
            TaskRef::Segment(index) => &mut self.segments[index],
            TaskRef::Stitch => &mut self.stitch,
        }
    }

    /// Where attempt `attempt` of segment `index` writes its objects.
    pub fn attempt_prefix(&self, index: usize, attempt: u32) -> String {
        reelfarm_common::keys::attempt_prefix(&self.segment_prefix(index), attempt)
    }

    /// The prefix of segment `index`'s objects, before any attempt's suffix.
    pub fn segment_prefix(&self, index: usize) -> String {
        reelfarm_common::keys::segment_prefix(&self.id, &self.plan.segments[index].id)
    }

    /// Where segment `index`'s accepted result lives: the attempt it last ran, or the
    /// earlier sequence's attempt it was reused from.
    pub fn accepted_prefix(&self, index: usize) -> String {
        match &self.segments[index].reused_from {
            Some(prefix) => prefix.clone(),
            None => self.attempt_prefix(index, self.segments[index].attempt),
        }
    }

    /// Segments reused from the cache rather than rendered.
    pub fn reused_segments(&self) -> usize {
        self.segments
            .iter()
            .filter(|task| task.reused_from.is_some())
            .count()
    }

    /// The key a task's current attempt writes its result to (the scheduler's, not the
    /// worker's choice).
    pub fn output_key(&self, task: TaskRef) -> String {
        match task {
            TaskRef::Segment(index) => reelfarm_common::keys::segment_video(
                &self.attempt_prefix(index, self.segments[index].attempt),
            ),
            TaskRef::Stitch => reelfarm_common::keys::final_video(&self.id),
        }
    }

    pub fn task_name(&self, task: TaskRef) -> String {
        match task {
            TaskRef::Segment(index) => format!("segment {}", self.plan.segments[index].id),
            TaskRef::Stitch => "stitch".to_string(),
        }
    }
}

/// A sequence restored only as far as its id: one of its records did not read back.
#[derive(Debug, Clone)]
pub struct Quarantined {
    pub id: SequenceId,
    /// What could not be read, and that the records were left for inspection.
    pub error: String,
    /// From the status record when that much of it reads (0 otherwise).
    pub submitted_unix_s: f64,
}

#[derive(Debug, Clone)]
pub struct DeviceRecord {
    /// As registered, with the readings of the latest heartbeat.
    pub device: pb::Device,
    pub reserved_bytes: u64,
    /// Assignment ids running here; several share a device while their reservations fit.
    pub running: Vec<String>,
    /// Models that ran here last, most recent first: likely still loaded.
    pub resident_models: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct WorkerRecord {
    pub id: WorkerId,
    pub name: String,
    pub models: Vec<String>,
    pub devices: Vec<DeviceRecord>,
    /// Its command stream is open. A disconnected worker keeps its devices and running
    /// tasks until it reconnects or its lease runs out (`worker_lost`), but gets no new work.
    pub connected: bool,
    /// Drained (`reelfarm drain`, or the worker shutting down): no new work; what it runs
    /// finishes. Kept in the leader's memory only.
    pub draining: bool,
    /// One of its attempts was taken back for want of progress: no new work until it
    /// shows life (a progress report or a result) or registers again. In memory only.
    pub stalled: bool,
}

impl WorkerRecord {
    /// Placement may give it new work.
    pub fn takes_work(&self) -> bool {
        self.connected && !self.draining && !self.stalled
    }
}

#[derive(Debug, Clone)]
pub struct AssignmentRecord {
    pub sequence_id: SequenceId,
    pub task: TaskRef,
    pub worker: WorkerId,
    pub device_slot: usize,
    pub attempt: u32,
    pub reserved_bytes: u64,
    /// When it last advanced (placement, a step, a restore); 0 until the next stall check
    /// starts its clock. Not durable.
    pub last_progress_unix_s: f64,
    /// Taken back for want of progress: no longer current, but keeps its device until the
    /// worker reports back or is gone.
    pub stalled: bool,
}

/// Effects for the executor: messages to put on worker command streams, and objects to
/// delete from the store.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Objects of superseded attempts: nothing reads them any more.
    DeleteObjects { keys: Vec<String> },
    /// An object to write (a segment cache entry); losing it loses only a later reuse.
    WriteObject { key: String, bytes: Vec<u8> },
    Assign {
        worker: WorkerId,
        assignment: Box<pb::Assignment>,
    },
    Cancel {
        worker: WorkerId,
        assignment: pb::AssignmentRef,
        /// The work is not wanted any more (its sequence ended): a hosted segment deletes
        /// its remote job. False when the attempt is only fenced off or taken back.
        discard: bool,
    },
}

/// Phases as reported, less any with a time that is not a finite number: records hold only
/// what reads back (JSON has no NaN), so one bad report can never poison a restore.
pub(crate) fn finite_phases(phases: Vec<pb::TimedPhase>) -> Vec<pb::TimedPhase> {
    phases
        .into_iter()
        .filter(|phase| phase.start_unix_s.is_finite() && phase.end_unix_s.is_finite())
        .collect()
}

/// What happened in transitions, for metrics: drained by `take_events`, so the farm stays
/// free of I/O and clocks.
#[derive(Debug, Clone, PartialEq)]
pub enum FarmEvent {
    /// A task was placed; it had been ready since then (0: unknown, e.g. after a restore).
    Placed {
        sequence: SequenceId,
        /// The assignment id (`seq/s000-00/1`).
        task: String,
        stitch: bool,
        ready_since_unix_s: f64,
    },
    Completed {
        stitch: bool,
        model: String,
        video_seconds: f64,
        device_seconds: f64,
        /// Who the sequence is for (`None`: its own owner), and what the result cost.
        owner: Option<String>,
        cost_usd: f64,
    },
    Failed {
        stitch: bool,
        class: FailureClass,
    },
    SequenceEnded {
        sequence: SequenceId,
        state: SequenceState,
        seconds: f64,
    },
}

#[derive(Debug)]
pub struct Farm {
    pub(crate) sequences: BTreeMap<SequenceId, SequenceRecord>,
    /// Sequences whose records a new leader could not read: reported failed, never run.
    pub(crate) quarantined: BTreeMap<SequenceId, Quarantined>,
    pub(crate) idempotency_keys: HashMap<String, SequenceId>,
    pub(crate) workers: BTreeMap<WorkerId, WorkerRecord>,
    pub(crate) assignments: HashMap<String, AssignmentRecord>,
    pub(crate) next_submit_order: u64,
    pub(crate) max_attempts: u32,
    changed: Changes,
    pub(crate) stall: deadlines::StallPolicy,
    pub(crate) checkpoints: checkpoints::CheckpointPolicy,
    pub(crate) placement: PlacementState,
    /// `Full` in the farm; the simulator compares the others.
    policy: Policy,
    events: Vec<FarmEvent>,
    /// Bearer tokens by id (secrets hashed), and those changed since the last commit.
    pub(crate) tokens: BTreeMap<String, crate::auth::TokenRecord>,
    tokens_changed: BTreeSet<String>,
}

/// Sequences changed by transitions: for watchers (drained by `take_changed`), and for
/// placement, whose ready queue re-reads them at the next dispatch.
#[derive(Debug, Default)]
struct Changes {
    watch: BTreeSet<SequenceId>,
    requeue: BTreeSet<SequenceId>,
}

impl Changes {
    fn insert(&mut self, id: SequenceId) {
        self.requeue.insert(id.clone());
        self.watch.insert(id);
    }
}

impl Default for Farm {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ATTEMPTS)
    }
}

impl Farm {
    pub fn new(max_attempts: u32) -> Self {
        Farm {
            sequences: BTreeMap::new(),
            quarantined: BTreeMap::new(),
            idempotency_keys: HashMap::new(),
            workers: BTreeMap::new(),
            assignments: HashMap::new(),
            next_submit_order: 0,
            max_attempts: max_attempts.max(1),
            changed: Changes::default(),
            stall: deadlines::StallPolicy::default(),
            checkpoints: checkpoints::CheckpointPolicy::default(),
            placement: PlacementState::default(),
            policy: Policy::Full,
            events: Vec::new(),
            tokens: BTreeMap::new(),
            tokens_changed: BTreeSet::new(),
        }
    }

    /// The same farm deciding with another placement policy (the simulator's comparison).
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// What happened since the last call, for metrics.
    pub fn take_events(&mut self) -> Vec<FarmEvent> {
        std::mem::take(&mut self.events)
    }

    /// Sequences whose status changed since the last call, for watchers.
    pub fn take_changed(&mut self) -> BTreeSet<SequenceId> {
        std::mem::take(&mut self.changed.watch)
    }

    pub fn sequence(&self, id: &str) -> Result<&SequenceRecord, Error> {
        self.sequences
            .get(id)
            .ok_or_else(|| Error::NotFound(format!("sequence {id} not found")))
    }

    pub fn sequences(&self) -> impl Iterator<Item = &SequenceRecord> {
        self.sequences.values()
    }

    /// Sequences a restore could not read (see `records::restore`).
    pub fn quarantined(&self) -> impl Iterator<Item = &Quarantined> {
        self.quarantined.values()
    }

    pub fn quarantined_sequence(&self, id: &str) -> Option<&Quarantined> {
        self.quarantined.get(id)
    }

    pub fn workers(&self) -> impl Iterator<Item = &WorkerRecord> {
        self.workers.values()
    }

    pub fn worker(&self, id: &str) -> Option<&WorkerRecord> {
        self.workers.get(id)
    }

    pub fn sequence_count(&self) -> usize {
        self.sequences.len()
    }

    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// Marks a just-submitted sequence as a version of an earlier one.
    pub fn set_revision(&mut self, id: &str, revision: Revision) {
        if let Some(record) = self.sequences.get_mut(id) {
            record.revision = Some(revision);
            self.changed.insert(id.to_string());
        }
    }

    /// The next version number in `lineage`: one more than the highest there.
    pub fn next_version(&self, lineage: &str) -> u32 {
        self.sequences
            .values()
            .filter_map(|record| match &record.revision {
                Some(revision) if revision.lineage == lineage => Some(revision.version),
                None if record.id == lineage => Some(1),
                _ => None,
            })
            .max()
            .unwrap_or(1)
            + 1
    }

    /// Records the W3C trace context of a sequence's span, so workers' spans join it.
    pub fn set_traceparent(&mut self, id: &str, traceparent: String) {
        if let Some(record) = self.sequences.get_mut(id) {
            record.traceparent = traceparent;
        }
    }

    pub fn sequence_for_key(&self, idempotency_key: &str) -> Option<&SequenceId> {
        self.idempotency_keys.get(idempotency_key)
    }

    /// Records progress; `Ok(true)` tells the worker to stop (the sequence was cancelled).
    pub fn report_progress(
        &mut self,
        reference: &pb::AssignmentRef,
        done: u64,
        total: u64,
        now: f64,
    ) -> Result<bool, Error> {
        let assignment = self.current(reference)?.clone();
        if let Some(current) = self.assignments.get_mut(&reference.assignment_id) {
            current.last_progress_unix_s = now;
        }
        self.worker_responsive(&assignment.worker);
        let record = self
            .sequences
            .get_mut(&assignment.sequence_id)
            .ok_or_else(|| Error::Internal("assignment of a missing sequence".into()))?;
        let task = record.task_mut(assignment.task);
        if task.state != TaskState::Running {
            return Ok(true);
        }
        task.progress_done = done;
        task.progress_total = total;
        // Watchers see it; placement has nothing to redo (nothing became ready).
        self.changed.watch.insert(assignment.sequence_id);
        Ok(false)
    }

    fn assign(
        &mut self,
        id: &str,
        task: TaskRef,
        worker_id: WorkerId,
        slot: usize,
        reserved_bytes: u64,
    ) -> Action {
        let record = self
            .sequences
            .get_mut(id)
            .expect("dispatch iterates live sequences");
        let task_name = match task {
            TaskRef::Segment(index) => record.plan.segments[index].id.clone(),
            TaskRef::Stitch => "stitch".to_string(),
        };
        let record_task = record.task_mut(task);
        record_task.attempt += 1;
        let attempt = record_task.attempt;
        let assignment_id = format!("{id}/{task_name}/{attempt}");
        record_task.state = TaskState::Running;
        record_task.assignment_id = Some(assignment_id.clone());
        record_task.worker = Some(worker_id.clone());
        record_task.device_slot = Some(slot);
        record_task.progress_done = 0;
        record_task.reserved_bytes = reserved_bytes;
        let ready_since_unix_s = record_task.ready_since_unix_s;
        self.events.push(FarmEvent::Placed {
            sequence: id.to_string(),
            task: assignment_id.clone(),
            stitch: task == TaskRef::Stitch,
            ready_since_unix_s,
        });
        if record.state == SequenceState::Queued {
            record.state = SequenceState::Rendering;
        }
        let worker = self
            .workers
            .get_mut(&worker_id)
            .expect("placement chose a registered worker");
        let device = &mut worker.devices[slot];
        device.reserved_bytes += reserved_bytes;
        device.running.push(assignment_id.clone());
        let device_index = device.device.index;
        if let TaskRef::Segment(index) = task {
            let model = &self.sequences[id].plan.segments[index].model;
            device.resident_models.retain(|m| m != model);
            device.resident_models.insert(0, model.clone());
            device.resident_models.truncate(RESIDENT_MODELS);
        }
        if let Some(record) = self.sequences.get_mut(id) {
            record.task_mut(task).device_index = Some(device_index);
        }
        self.assignments.insert(
            assignment_id.clone(),
            AssignmentRecord {
                sequence_id: id.to_string(),
                task,
                worker: worker_id.clone(),
                device_slot: slot,
                attempt,
                reserved_bytes,
                last_progress_unix_s: 0.0,
                stalled: false,
            },
        );
        self.refresh_device(&worker_id, slot);
        if self.placement.running.is_some() {
            let record = &self.sequences[id];
            let owner = self
                .placement
                .ids
                .owner(record.sequence.owner.as_deref(), record.submit_order);
            let sequence = record.submit_order as u32;
            if let Some(running) = self.placement.running.as_mut() {
                running.started(&assignment_id, sequence, owner);
            }
        }
        self.changed.insert(id.to_string());
        let record = &self.sequences[id];
        let reference = pb::AssignmentRef {
            assignment_id,
            attempt,
        };
        let checkpoint_every = match task {
            TaskRef::Segment(index) => self
                .checkpoints
                .every_for(record.sequence.pass, record.plan.segments[index].steps),
            TaskRef::Stitch => 0,
        };
        let assignment = crate::snapshot::assignment_message(
            record,
            task,
            reference,
            device_index,
            checkpoint_every,
        );
        Action::Assign {
            worker: worker_id,
            assignment: Box::new(assignment),
        }
    }
}

/// Models a device is assumed to keep loaded.
const RESIDENT_MODELS: usize = 2;

mod assignments;
mod completing;
pub use completing::Completion;
mod submitting;
pub use submitting::Cached;
mod checkpoints;
pub use checkpoints::CheckpointPolicy;
mod seam_qa;
pub use seam_qa::{SeamTry, qa_seed};
mod deadlines;
mod ending;
mod failures;
mod hosted;
mod pool;
mod repair;
mod tokens;
pub use deadlines::StallPolicy;
pub use failures::FailureClass;
pub use tokens::MAX_TOKENS;

mod placing;
pub(crate) use placing::PlacementState;

mod workers;

#[cfg(test)]
mod tests;
