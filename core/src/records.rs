//! The farm as durable records and back: what the leader writes to the state store after
//! every transition and what a new leader reads to carry on. Pure: bytes in, bytes out.
//!
//! Key layout (under the state store's prefix, `/reelfarm/v1` in etcd):
//!
//! | key | value |
//! |---|---|
//! | `sequences/<id>/spec` | the submitted spec (protobuf `SequenceSpec`); reference images are left out, they live in the object store |
//! | `sequences/<id>/status` | JSON [`SequenceDoc`]: state, order, idempotency key, error, phases |
//! | `sequences/<id>/tasks/<task>` | JSON [`TaskDoc`] per segment (`s000-00`…) and `stitch`: state, attempt, the outstanding assignment (id, worker, device) |
//! | `workers/<worker id>` | JSON [`WorkerDoc`]: name, devices, models; attached to the worker's lease |
//! | `leader/…` | the election (etcd's election API); the value is the leader's URL |
//!
//! An assignment lives inside its task's record, so assigning, completing or losing one is
//! a write of one key. Progress (step counts) is not durable: it is refreshed by the next
//! report after a takeover.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use reelfarm_common::sequence::{Reference, Sequence};
use reelfarm_common::{pb, spec};
use reelfarm_models::Catalog;
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::farm::{
    AssignmentRecord, DeviceRecord, Farm, Quarantined, SequenceId, SequenceRecord, SequenceState,
    StoredObject, TaskRecord, TaskRef, TaskState, WorkerRecord,
};
use crate::planner;

mod durable;

pub use durable::{Durable, Settled, Write, decode_intent, encode_intent};

pub const SEQUENCES: &str = "sequences/";
/// Tokens by id: `tokens/<id>` holds a JSON [`crate::auth::TokenRecord`] (a hash, never the secret).
pub const TOKENS: &str = "tokens/";
pub const WORKERS: &str = "workers/";
pub const LEADER: &str = "leader";
/// A transition too big for one state-store transaction, written whole before any of it is
/// applied (see `encode_intent`).
pub const INTENT: &str = "intent";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PhaseDoc {
    pub kind: String,
    pub start_unix_s: f64,
    pub end_unix_s: f64,
    pub task_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SequenceDoc {
    pub submit_order: u64,
    pub state: String,
    pub submitted_unix_s: f64,
    pub finished_unix_s: Option<f64>,
    pub error: Option<String>,
    pub idempotency_key: Option<String>,
    pub phases: Vec<PhaseDoc>,
    /// The sequence's trace, so a new leader's spans join it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub traceparent: String,
    /// A version of an earlier sequence: that sequence, the lineage, the number, the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<RevisionDoc>,
    /// Seam QA's tries of joins that failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seam_tries: Vec<crate::farm::SeamTry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RevisionDoc {
    pub of: String,
    pub lineage: String,
    pub version: u32,
    pub change: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskDoc {
    pub state: String,
    pub attempt: u32,
    pub assignment_id: Option<String>,
    pub worker: Option<String>,
    pub device_slot: Option<usize>,
    pub error: Option<String>,
    pub output_key: Option<String>,
    pub memory_estimate_bytes: u64,
    pub peak_memory_bytes: u64,
    #[serde(default)]
    pub reserved_bytes: u64,
    #[serde(default)]
    pub device_index: Option<u32>,
    #[serde(default)]
    pub oom_count: u32,
    #[serde(default)]
    pub min_gpu_bytes: u64,
    #[serde(default)]
    pub low_memory: bool,
    /// What the accepted attempt wrote, with checksums.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<ObjectDoc>,
    #[serde(default)]
    pub excused_attempts: u32,
    #[serde(default)]
    pub repairs: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
    /// Reused from the cache: the earlier attempt whose objects are the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused_from: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resumed_from_step: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qa_seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_job_id: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero_cost")]
    pub cost_usd: f64,
}

fn is_zero_cost(value: &f64) -> bool {
    *value == 0.0
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObjectDoc {
    pub key: String,
    pub crc32c: String,
    pub size: u64,
}

impl From<&StoredObject> for ObjectDoc {
    fn from(object: &StoredObject) -> Self {
        ObjectDoc {
            key: object.key.clone(),
            crc32c: object.crc32c.clone(),
            size: object.size,
        }
    }
}

impl From<ObjectDoc> for StoredObject {
    fn from(object: ObjectDoc) -> Self {
        StoredObject {
            key: object.key,
            crc32c: object.crc32c,
            size: object.size,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceDoc {
    pub index: u32,
    pub kind: String,
    pub name: String,
    pub memory_total_bytes: u64,
    #[serde(default)]
    pub uuid: String,
    #[serde(default)]
    pub class: String,
    #[serde(default)]
    pub speed: f64,
}

impl From<&pb::Device> for DeviceDoc {
    fn from(device: &pb::Device) -> Self {
        DeviceDoc {
            index: device.index,
            kind: device.kind.clone(),
            name: device.name.clone(),
            memory_total_bytes: device.memory_total_bytes,
            uuid: device.uuid.clone(),
            class: device.class.clone(),
            speed: device.speed,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerDoc {
    pub name: String,
    pub models: Vec<String>,
    pub devices: Vec<DeviceDoc>,
    /// Who registered it (a token's name): only that identity may act for this worker id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

pub fn task_state_name(state: TaskState) -> &'static str {
    match state {
        TaskState::Blocked => "blocked",
        TaskState::Ready => "ready",
        TaskState::Running => "running",
        TaskState::Done => "done",
        TaskState::Failed => "failed",
        TaskState::Cancelled => "cancelled",
    }
}

fn task_state_from(name: &str) -> Result<TaskState, Error> {
    Ok(match name {
        "blocked" => TaskState::Blocked,
        "ready" => TaskState::Ready,
        "running" => TaskState::Running,
        "done" => TaskState::Done,
        "failed" => TaskState::Failed,
        "cancelled" => TaskState::Cancelled,
        other => return Err(Error::Internal(format!("unknown task state {other:?}"))),
    })
}

pub fn sequence_state_name(state: SequenceState) -> &'static str {
    match state {
        SequenceState::Queued => "queued",
        SequenceState::Rendering => "rendering",
        SequenceState::Stitching => "stitching",
        SequenceState::Succeeded => "succeeded",
        SequenceState::Failed => "failed",
        SequenceState::Cancelled => "cancelled",
    }
}

fn sequence_state_from(name: &str) -> Result<SequenceState, Error> {
    Ok(match name {
        "queued" => SequenceState::Queued,
        "rendering" => SequenceState::Rendering,
        "stitching" => SequenceState::Stitching,
        "succeeded" => SequenceState::Succeeded,
        "failed" => SequenceState::Failed,
        "cancelled" => SequenceState::Cancelled,
        other => return Err(Error::Internal(format!("unknown sequence state {other:?}"))),
    })
}

fn task_key(id: &str, name: &str) -> String {
    format!("{SEQUENCES}{id}/tasks/{name}")
}

pub fn worker_key(worker: &str) -> String {
    format!("{WORKERS}{worker}")
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialise")
}

fn task_doc(task: &TaskRecord) -> TaskDoc {
    TaskDoc {
        state: task_state_name(task.state).to_string(),
        attempt: task.attempt,
        assignment_id: task.assignment_id.clone(),
        worker: task.worker.clone(),
        device_slot: task.device_slot,
        error: task.error.clone(),
        output_key: task.output_key.clone(),
        memory_estimate_bytes: task.memory_estimate_bytes,
        peak_memory_bytes: task.peak_memory_bytes,
        reserved_bytes: task.reserved_bytes,
        device_index: task.device_index,
        oom_count: task.oom_count,
        min_gpu_bytes: task.min_gpu_bytes,
        low_memory: task.low_memory,
        objects: task.objects.iter().map(ObjectDoc::from).collect(),
        excused_attempts: task.excused_attempts,
        repairs: task.repairs,
        cache_key: task.cache_key.clone(),
        reused_from: task.reused_from.clone(),
        resumed_from_step: task.resumed_from_step,
        qa_seed: task.qa_seed,
        remote_job_id: task.remote_job_id.clone(),
        cost_usd: task.cost_usd,
    }
}

/// The spec as stored: reference images stay in the object store, only their names travel.
fn stored_spec(sequence: &Sequence) -> Vec<u8> {
    let mut spec = spec::sequence_to_pb(sequence);
    for shot in &mut spec.shots {
        shot.reference_png = None;
    }
    spec.encode_to_vec()
}

fn sequence_from_stored(bytes: &[u8], catalog: &Catalog) -> Result<Sequence, Error> {
    let spec = pb::SequenceSpec::decode(bytes)
        .map_err(|error| Error::Internal(format!("stored spec does not decode: {error}")))?;
    let names: Vec<Option<String>> = spec
        .shots
        .iter()
        .map(|shot| shot.reference_name.clone())
        .collect();
    let mut sequence = spec::sequence_from_pb(spec, &catalog.ids())
        .map_err(|error| Error::Internal(format!("stored spec no longer validates: {error}")))?;
    for (shot, name) in sequence.shots.iter_mut().zip(names) {
        if let Some(name) = name {
            shot.reference = Some(Reference {
                name,
                png: Vec::new(),
            });
        }
    }
    Ok(sequence)
}

/// Every record of one sequence, as the farm holds it now.
pub fn sequence_records(farm: &Farm, id: &str) -> BTreeMap<String, Vec<u8>> {
    let mut records = BTreeMap::new();
    let Some(record) = farm.sequences.get(id) else {
        return records;
    };
    let idempotency_key = record.idempotency_key.clone();
    let doc = SequenceDoc {
        submit_order: record.submit_order,
        state: sequence_state_name(record.state).to_string(),
        submitted_unix_s: record.submitted_unix_s,
        finished_unix_s: record.finished_unix_s,
        error: record.error.clone(),
        idempotency_key,
        traceparent: record.traceparent.clone(),
        revision: record.revision.as_ref().map(|revision| RevisionDoc {
            of: revision.of.clone(),
            lineage: revision.lineage.clone(),
            version: revision.version,
            change: revision.change.clone(),
        }),
        seam_tries: record.seam_tries.clone(),
        phases: record
            .phases
            .iter()
            .map(|phase| PhaseDoc {
                kind: phase.kind.clone(),
                start_unix_s: phase.start_unix_s,
                end_unix_s: phase.end_unix_s,
                task_id: phase.task_id.clone(),
            })
            .collect(),
    };
    records.insert(
        format!("{SEQUENCES}{id}/spec"),
        stored_spec(&record.sequence),
    );
    records.insert(format!("{SEQUENCES}{id}/status"), json(&doc));
    for (planned, task) in record.plan.segments.iter().zip(&record.segments) {
        records.insert(task_key(id, &planned.id), json(&task_doc(task)));
    }
    records.insert(task_key(id, "stitch"), json(&task_doc(&record.stitch)));
    records
}

pub fn worker_doc(worker: &WorkerRecord) -> WorkerDoc {
    WorkerDoc {
        name: worker.name.clone(),
        models: worker.models.clone(),
        devices: worker
            .devices
            .iter()
            .map(|device| DeviceDoc::from(&device.device))
            .collect(),
        identity: None,
    }
}

pub fn worker_doc_bytes(worker: &WorkerRecord) -> Vec<u8> {
    json(&worker_doc(worker))
}

fn decode<T: for<'a> Deserialize<'a>>(key: &str, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes)
        .map_err(|error| Error::Internal(format!("record {key} does not decode: {error}")))
}

/// What a new leader rebuilt from the records, and what it could not read.
#[derive(Debug)]
pub struct Restored {
    pub farm: Farm,
    /// Worker records that did not decode: those workers are left out (they register
    /// again when they reconnect).
    pub unreadable_workers: Vec<String>,
    /// Token records that did not decode: those tokens stop working (an admin makes new ones).
    pub unreadable_tokens: Vec<String>,
}

/// Rebuilds the farm a leader left behind: sequences with their plans (re-planned from the
/// stored spec, which is deterministic), outstanding assignments, and the workers whose
/// leases still live, disconnected until they reconnect.
///
/// One unreadable record never stops a restore: its sequence is quarantined (reported
/// failed, with the reason; its records are left untouched for inspection) and every other
/// sequence carries on.
pub fn restore(
    max_attempts: u32,
    catalog: &Catalog,
    records: &BTreeMap<String, Vec<u8>>,
    workers: &BTreeMap<String, Vec<u8>>,
) -> Restored {
    let mut farm = Farm::new(max_attempts);
    let mut unreadable_workers = Vec::new();
    for (id, bytes) in workers {
        match decode::<WorkerDoc>(&worker_key(id), bytes) {
            Ok(doc) => {
                farm.workers.insert(id.clone(), worker_from_doc(id, doc));
            }
            Err(error) => unreadable_workers.push(error.to_string()),
        }
    }
    let mut unreadable_tokens = Vec::new();
    for (key, bytes) in records.range(TOKENS.to_string()..) {
        if !key.starts_with(TOKENS) {
            break;
        }
        match decode::<crate::auth::TokenRecord>(key, bytes) {
            Ok(token) => {
                farm.tokens.insert(token.id.clone(), token);
            }
            Err(error) => unreadable_tokens.push(error.to_string()),
        }
    }
    let ids: BTreeSet<&str> = records
        .keys()
        .filter_map(|key| key.strip_prefix(SEQUENCES)?.split('/').next())
        .collect();
    for id in ids {
        match restore_sequence(catalog, records, id) {
            Ok(record) => {
                if let Some(key) = &record.idempotency_key {
                    farm.idempotency_keys.insert(key.clone(), id.to_string());
                }
                farm.next_submit_order = farm.next_submit_order.max(record.submit_order + 1);
                farm.sequences.insert(id.to_string(), record);
                restore_assignments(&mut farm, &id.to_string());
            }
            Err(error) => {
                let error = match error {
                    Error::Internal(message) => message,
                    other => other.to_string(),
                };
                let submitted_unix_s = records
                    .get(&format!("{SEQUENCES}{id}/status"))
                    .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(bytes).ok())
                    .and_then(|doc| doc.get("submitted_unix_s")?.as_f64())
                    .unwrap_or(0.0);
                farm.quarantined.insert(
                    id.to_string(),
                    Quarantined {
                        id: id.to_string(),
                        error: format!(
                            "quarantined: its records could not be restored ({error}); they are \
                             left as they were for inspection"
                        ),
                        submitted_unix_s,
                    },
                );
            }
        }
    }
    Restored {
        farm,
        unreadable_workers,
        unreadable_tokens,
    }
}

fn worker_from_doc(id: &str, doc: WorkerDoc) -> WorkerRecord {
    WorkerRecord {
        id: id.to_string(),
        name: doc.name,
        models: doc.models,
        devices: doc
            .devices
            .into_iter()
            .map(|device| DeviceRecord {
                device: pb::Device {
                    index: device.index,
                    kind: device.kind,
                    name: device.name,
                    memory_total_bytes: device.memory_total_bytes,
                    uuid: device.uuid,
                    class: device.class,
                    speed: device.speed,
                    ..Default::default()
                },
                reserved_bytes: 0,
                running: Vec::new(),
                resident_models: Vec::new(),
            })
            .collect(),
        connected: false,
        draining: false,
        stalled: false,
    }
}

fn required<'a>(records: &'a BTreeMap<String, Vec<u8>>, key: &str) -> Result<&'a [u8], Error> {
    records
        .get(key)
        .map(Vec::as_slice)
        .ok_or_else(|| Error::Internal(format!("{key} is missing")))
}

/// One sequence from its records; any record missing or unreadable is an error naming it.
fn restore_sequence(
    catalog: &Catalog,
    records: &BTreeMap<String, Vec<u8>>,
    id: &str,
) -> Result<SequenceRecord, Error> {
    let status_key = format!("{SEQUENCES}{id}/status");
    let doc: SequenceDoc = decode(&status_key, required(records, &status_key)?)?;
    let spec_key = format!("{SEQUENCES}{id}/spec");
    let sequence = sequence_from_stored(required(records, &spec_key)?, catalog)
        .map_err(|error| Error::Internal(format!("{spec_key}: {error}")))?;
    let plan = planner::plan_with(&sequence, catalog)
        .map_err(|unknown| Error::Internal(format!("{spec_key}: {unknown}")))?;
    let task = |name: &str| -> Result<TaskRecord, Error> {
        let key = task_key(id, name);
        let doc: TaskDoc = decode(&key, required(records, &key)?)?;
        Ok(TaskRecord {
            state: task_state_from(&doc.state)
                .map_err(|error| Error::Internal(format!("{key}: {error}")))?,
            attempt: doc.attempt,
            assignment_id: doc.assignment_id,
            worker: doc.worker,
            device_slot: doc.device_slot,
            progress_done: 0,
            progress_total: 0,
            error: doc.error,
            output_key: doc.output_key,
            memory_estimate_bytes: doc.memory_estimate_bytes,
            peak_memory_bytes: doc.peak_memory_bytes,
            reserved_bytes: doc.reserved_bytes,
            device_index: doc.device_index,
            oom_count: doc.oom_count,
            min_gpu_bytes: doc.min_gpu_bytes,
            low_memory: doc.low_memory,
            ready_since_unix_s: 0.0,
            objects: doc.objects.into_iter().map(StoredObject::from).collect(),
            excused_attempts: doc.excused_attempts,
            repairs: doc.repairs,
            cache_key: doc.cache_key,
            reused_from: doc.reused_from,
            resumed_from_step: doc.resumed_from_step,
            qa_seed: doc.qa_seed,
            remote_job_id: doc.remote_job_id,
            cost_usd: doc.cost_usd,
        })
    };
    let segments = plan
        .segments
        .iter()
        .map(|planned| task(&planned.id))
        .collect::<Result<Vec<_>, _>>()?;
    let stitch = task("stitch")?;
    Ok(SequenceRecord {
        id: id.to_string(),
        submit_order: doc.submit_order,
        sequence,
        plan,
        segments,
        stitch,
        state: sequence_state_from(&doc.state)
            .map_err(|error| Error::Internal(format!("{status_key}: {error}")))?,
        submitted_unix_s: doc.submitted_unix_s,
        finished_unix_s: doc.finished_unix_s,
        error: doc.error,
        phases: doc
            .phases
            .into_iter()
            .map(|phase| pb::TimedPhase {
                kind: phase.kind,
                start_unix_s: phase.start_unix_s,
                end_unix_s: phase.end_unix_s,
                task_id: phase.task_id,
            })
            .collect(),
        traceparent: doc.traceparent,
        idempotency_key: doc.idempotency_key,
        revision: doc.revision.map(|revision| crate::farm::Revision {
            of: revision.of,
            lineage: revision.lineage,
            version: revision.version,
            change: revision.change,
        }),
        seam_tries: doc.seam_tries,
    })
}

/// Outstanding assignments come back from their tasks; one whose worker's lease is gone
/// is lost at once (attempt + 1 on its next placement).
fn restore_assignments(farm: &mut Farm, id: &SequenceId) {
    let record = &farm.sequences[id];
    let outstanding: Vec<(TaskRef, String, String, usize, u32, u64)> = record
        .segments
        .iter()
        .enumerate()
        .map(|(index, task)| (TaskRef::Segment(index), task))
        .chain(std::iter::once((TaskRef::Stitch, &record.stitch)))
        .filter_map(|(reference, task)| {
            Some((
                reference,
                task.assignment_id.clone()?,
                task.worker.clone()?,
                task.device_slot?,
                task.attempt,
                task.reserved_bytes,
            ))
        })
        .collect();
    for (task, assignment_id, worker, slot, attempt, reserved_bytes) in outstanding {
        farm.assignments.insert(
            assignment_id.clone(),
            AssignmentRecord {
                sequence_id: id.clone(),
                task,
                worker: worker.clone(),
                device_slot: slot,
                attempt,
                reserved_bytes,
                last_progress_unix_s: 0.0,
                stalled: false,
            },
        );
        // A worker registered nowhere any more is found by `Farm::orphaned_workers`.
        if let Some(device) = farm
            .workers
            .get_mut(&worker)
            .and_then(|record| record.devices.get_mut(slot))
        {
            device.reserved_bytes += reserved_bytes;
            device.running.push(assignment_id);
        }
    }
}

#[cfg(test)]
#[path = "records_tests.rs"]
mod tests;
