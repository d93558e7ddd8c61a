//! The pool as placement sees it, kept between dispatches: one `GpuState` per device of a
//! connected, undrained worker, refreshed from its device record whenever a task starts or
//! ends there, rebuilt whole only when workers come, go or drain. Running counts for fair
//! share are kept the same way. A dispatch on 10,000 GPUs then costs what it places, not a
//! walk over every device and every assignment. Part of the `farm` state machine; pure.

use std::collections::HashMap;

use reelfarm_models::catalog::hosted::HOSTED_DEVICE_KIND;

use crate::placement::{GpuState, RunningCounts};

use super::{DeviceRecord, Farm, WorkerId, WorkerRecord};

/// The model index every worker serves: stitching.
pub(super) const STITCH_MODEL: u32 = u32::MAX;

/// Small integer ids for models and named owners, the way placement counts them.
#[derive(Debug, Default)]
pub(crate) struct Ids {
    models: Vec<String>,
    owners: HashMap<String, u32>,
}

/// Named owners are numbered from here; a sequence without one is its own owner and takes
/// its submit order, below this.
const NAMED_OWNER_BASE: u32 = 1 << 31;

impl Ids {
    pub(super) fn model(&mut self, model: &str) -> u32 {
        match self.models.iter().position(|m| m == model) {
            Some(index) => index as u32,
            None => {
                self.models.push(model.to_string());
                (self.models.len() - 1) as u32
            }
        }
    }

    /// Fair-share identity: the named owner, or the sequence itself.
    pub(super) fn owner(&mut self, owner: Option<&str>, submit_order: u64) -> u32 {
        match owner {
            None => submit_order as u32 & (NAMED_OWNER_BASE - 1),
            Some(name) => {
                let next = NAMED_OWNER_BASE + self.owners.len() as u32;
                *self.owners.entry(name.to_string()).or_insert(next)
            }
        }
    }
}

/// Placement's view of the connected devices, with where each one is.
#[derive(Debug, Default)]
pub(super) struct Pool {
    pub(super) gpus: Vec<GpuState>,
    pub(super) slots: Vec<(WorkerId, usize)>,
    index: HashMap<(WorkerId, usize), usize>,
    /// Device memory totals, largest first: reservations never change them.
    pub(super) totals: Vec<u64>,
}

/// What runs, counted for fair share, and what each assignment counted as.
#[derive(Debug, Default)]
pub(super) struct Running {
    pub(super) counts: RunningCounts,
    of: HashMap<String, (u32, u32)>,
}

impl Running {
    pub(super) fn started(&mut self, assignment_id: &str, sequence: u32, owner: u32) {
        *self.counts.by_sequence.entry(sequence).or_default() += 1;
        *self.counts.by_owner.entry(owner).or_default() += 1;
        self.of.insert(assignment_id.to_string(), (sequence, owner));
    }

    pub(super) fn ended(&mut self, assignment_id: &str) {
        let Some((sequence, owner)) = self.of.remove(assignment_id) else {
            return;
        };
        for (map, id) in [
            (&mut self.counts.by_sequence, sequence),
            (&mut self.counts.by_owner, owner),
        ] {
            if let Some(count) = map.get_mut(&id) {
                *count -= 1;
                if *count == 0 {
                    map.remove(&id);
                }
            }
        }
    }
}

/// One device as placement sees it. A hosted worker's slots take its hosted models and
/// nothing else, and its other device (the CPU it offers) takes stitches only: a stitch
/// never holds a slot, and a hosted segment never runs beyond the slots.
fn gpu_state(ids: &mut Ids, worker: &WorkerRecord, device: &DeviceRecord) -> GpuState {
    let hosted_worker = worker
        .devices
        .iter()
        .any(|other| other.device.kind == HOSTED_DEVICE_KIND);
    let mut serves: Vec<u32> = if hosted_worker && device.device.kind != HOSTED_DEVICE_KIND {
        Vec::new()
    } else {
        worker.models.iter().map(|model| ids.model(model)).collect()
    };
    if device.device.kind != HOSTED_DEVICE_KIND {
        serves.push(STITCH_MODEL);
    }
    let speed = if device.device.speed > 0.0 {
        device.device.speed
    } else {
        1.0
    };
    GpuState {
        total_bytes: device.device.memory_total_bytes,
        reserved_bytes: device.reserved_bytes,
        speed,
        // Running tasks share the device's speed with a newcomer.
        busy_speed: if device.running.is_empty() {
            0.0
        } else {
            speed
        },
        running: device.running.len() as u32,
        resident_models: device
            .resident_models
            .iter()
            .map(|model| ids.model(model))
            .collect(),
        serves: Some(serves),
    }
}

impl Farm {
    /// Placement's view of the pool, built when the workers changed.
    pub(super) fn pool(&mut self) -> &mut Pool {
        let placement = &mut self.placement;
        if placement.pool.is_none() {
            let mut pool = Pool::default();
            for worker in self.workers.values().filter(|worker| worker.takes_work()) {
                for (slot, device) in worker.devices.iter().enumerate() {
                    pool.index
                        .insert((worker.id.clone(), slot), pool.gpus.len());
                    pool.gpus
                        .push(gpu_state(&mut placement.ids, worker, device));
                    pool.slots.push((worker.id.clone(), slot));
                }
            }
            pool.totals = pool.gpus.iter().map(|gpu| gpu.total_bytes).collect();
            pool.totals.sort_unstable_by(|a, b| b.cmp(a));
            placement.pool = Some(pool);
        }
        #[cfg(debug_assertions)]
        self.check_pool();
        self.placement.pool.as_mut().expect("built above")
    }

    /// Brings one device's `GpuState` up to date with its record (a task started or ended).
    pub(super) fn refresh_device(&mut self, worker_id: &str, slot: usize) {
        let placement = &mut self.placement;
        let Some(pool) = placement.pool.as_mut() else {
            return;
        };
        let Some(&gpu) = pool.index.get(&(worker_id.to_string(), slot)) else {
            return;
        };
        if let Some(worker) = self.workers.get(worker_id)
            && let Some(device) = worker.devices.get(slot)
        {
            pool.gpus[gpu] = gpu_state(&mut placement.ids, worker, device);
        }
    }

    /// What runs now, counted per sequence and owner; built from the assignments when unknown.
    pub(super) fn running(&mut self) -> &mut Running {
        if self.placement.running.is_none() {
            self.placement.running = Some(self.count_running());
        }
        #[cfg(debug_assertions)]
        {
            let fresh = self.count_running().counts;
            let kept = &self.placement.running.as_ref().expect("built above").counts;
            debug_assert_eq!(kept, &fresh, "the kept running counts drifted");
        }
        self.placement.running.as_mut().expect("built above")
    }

    fn count_running(&mut self) -> Running {
        let mut running = Running::default();
        for (assignment_id, assignment) in &self.assignments {
            if let Some(record) = self.sequences.get(&assignment.sequence_id) {
                let owner = self
                    .placement
                    .ids
                    .owner(record.sequence.owner.as_deref(), record.submit_order);
                running.started(assignment_id, record.submit_order as u32, owner);
            }
        }
        running
    }

    /// The kept pool equals one built from scratch (debug builds: every test checks it).
    #[cfg(debug_assertions)]
    fn check_pool(&mut self) {
        let mut ids = std::mem::take(&mut self.placement.ids);
        let fresh: Vec<GpuState> = self
            .workers
            .values()
            .filter(|worker| worker.takes_work())
            .flat_map(|worker| worker.devices.iter().map(move |device| (worker, device)))
            .map(|(worker, device)| gpu_state(&mut ids, worker, device))
            .collect();
        self.placement.ids = ids;
        let kept = &self
            .placement
            .pool
            .as_ref()
            .expect("checked after a build")
            .gpus;
        debug_assert_eq!(
            kept, &fresh,
            "the kept pool drifted from the device records"
        );
    }
}
