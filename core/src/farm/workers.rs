//! The farm's worker registry transitions: a worker (re)connecting with what it still
//! runs, its stream closing, its lease running out. Part of the `farm` state machine, kept
//! in its own file; pure like the rest of it.

use crate::Error;
use std::collections::BTreeSet;

use reelfarm_common::pb;

use super::{Action, DeviceRecord, FailureClass, Farm, WorkerId, WorkerRecord};

impl Farm {
    /// A worker (re)connects. A worker already known (a reconnect, or one restored after a
    /// scheduler takeover) keeps the assignments it still runs; those it no longer reports
    /// are lost, and any it runs that is no longer current is told to stop.
    pub fn register_worker(
        &mut self,
        id: WorkerId,
        name: String,
        devices: Vec<pb::Device>,
        models: Vec<String>,
        still_running: &[pb::AssignmentRef],
        now: f64,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let known_devices = self.workers.get(&id).map(|worker| {
            worker
                .devices
                .iter()
                .map(|device| {
                    (
                        device.reserved_bytes,
                        device.running.clone(),
                        device.resident_models.clone(),
                    )
                })
                .collect::<Vec<_>>()
        });
        let devices = devices
            .into_iter()
            .enumerate()
            .map(|(slot, mut device)| {
                // Unknown speed is 0 (placement assumes 1.0); NaN would not read back.
                if !(device.speed.is_finite() && device.speed > 0.0) {
                    device.speed = 0.0;
                }
                let (reserved_bytes, running, resident_models) = known_devices
                    .as_ref()
                    .and_then(|known| known.get(slot).cloned())
                    .unwrap_or_default();
                DeviceRecord {
                    device,
                    reserved_bytes,
                    running,
                    resident_models,
                }
            })
            .collect();
        // A drained worker that reconnects stays drained.
        let draining = self.workers.get(&id).is_some_and(|record| record.draining);
        self.workers.insert(
            id.clone(),
            WorkerRecord {
                id: id.clone(),
                name,
                models,
                devices,
                connected: true,
                draining,
                stalled: false,
            },
        );
        self.pool_changed();
        let lost: Vec<String> = self
            .assignments
            .iter()
            .filter(|(assignment_id, assignment)| {
                assignment.worker == id
                    && !still_running.iter().any(|reference| {
                        &reference.assignment_id == *assignment_id
                            && reference.attempt == assignment.attempt
                    })
            })
            .map(|(assignment_id, _)| assignment_id.clone())
            .collect();
        for assignment_id in lost {
            if let Some(assignment) = self.release(&assignment_id) {
                actions.extend(self.end_attempt(
                    &assignment,
                    FailureClass::WorkerLost,
                    &format!("worker {id} reconnected without it"),
                    now,
                ));
            }
        }
        for reference in still_running {
            if self.current(reference).is_err() {
                actions.push(Action::Cancel {
                    worker: id.clone(),
                    assignment: reference.clone(),
                    discard: false,
                });
            }
        }
        actions
    }

    /// Stops placing work on the workers named `worker` (a name or an id); their ids.
    pub fn drain_worker(&mut self, worker: &str) -> Result<Vec<WorkerId>, Error> {
        self.set_draining(worker, true)
    }

    /// Workers drained by name or id take new work again.
    pub fn undrain_worker(&mut self, worker: &str) -> Result<Vec<WorkerId>, Error> {
        self.set_draining(worker, false)
    }

    fn set_draining(&mut self, worker: &str, draining: bool) -> Result<Vec<WorkerId>, Error> {
        let ids: Vec<WorkerId> = self
            .workers
            .values()
            .filter(|record| record.id == worker || record.name == worker)
            .map(|record| record.id.clone())
            .collect();
        if ids.is_empty() {
            let known: Vec<&str> = self.workers.values().map(|r| r.name.as_str()).collect();
            return Err(Error::NotFound(format!(
                "worker: no worker named {worker:?} (workers: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        for id in &ids {
            if let Some(record) = self.workers.get_mut(id) {
                record.draining = draining;
            }
        }
        self.pool_changed();
        Ok(ids)
    }

    /// The worker's command stream closed: no new work until it reconnects; what it runs
    /// stays its own until `worker_lost`.
    pub fn worker_disconnected(&mut self, worker: &str) {
        if let Some(record) = self.workers.get_mut(worker) {
            record.connected = false;
        }
        self.pool_changed();
    }

    /// Fresh readings from a worker's heartbeat (memory used, utilization, temperature,
    /// power); what it registered (memory total, class) stays as registered.
    pub fn heartbeat(&mut self, worker: &str, devices: &[pb::Device]) -> bool {
        let Some(record) = self.workers.get_mut(worker) else {
            return false;
        };
        for reading in devices {
            if let Some(device) = record
                .devices
                .iter_mut()
                .find(|d| d.device.index == reading.index)
            {
                device.device.memory_used_bytes = reading.memory_used_bytes;
                device.device.memory_free_bytes = reading.memory_free_bytes;
                device.device.utilization_percent = reading.utilization_percent;
                device.device.temperature_celsius = reading.temperature_celsius;
                device.device.power_milliwatts = reading.power_milliwatts;
            }
        }
        true
    }

    /// The worker is gone (its lease ran out, or in the embedded farm its stream closed): its
    /// running tasks go back to ready (attempt + 1 on the next assignment) within their
    /// retry budget.
    pub fn worker_lost(&mut self, worker: &str, now: f64) -> Vec<Action> {
        self.workers.remove(worker);
        self.pool_changed();
        let lost: Vec<String> = self
            .assignments
            .iter()
            .filter(|(_, a)| a.worker == worker)
            .map(|(id, _)| id.clone())
            .collect();
        let mut actions = Vec::new();
        for assignment_id in lost {
            if let Some(assignment) = self.remove_assignment(&assignment_id) {
                self.clear_task_assignment(&assignment_id, &assignment);
                actions.extend(self.end_attempt(
                    &assignment,
                    FailureClass::WorkerLost,
                    &format!("worker {worker} is gone"),
                    now,
                ));
            }
        }
        actions
    }

    /// Workers that hold assignments but are registered nowhere (their lease ran out while
    /// no scheduler led): a new leader calls `worker_lost` for each.
    pub fn orphaned_workers(&self) -> BTreeSet<WorkerId> {
        self.assignments
            .values()
            .filter(|assignment| !self.workers.contains_key(&assignment.worker))
            .map(|assignment| assignment.worker.clone())
            .collect()
    }

    pub fn running_assignments(&self, worker: &str) -> usize {
        self.assignments
            .values()
            .filter(|assignment| assignment.worker == worker)
            .count()
    }
}
