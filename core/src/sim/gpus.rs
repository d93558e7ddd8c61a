//! The simulated GPUs' physics: what the farm does not decide but lives with. Each GPU
//! shares its speed between the segments computing on it by water-filling (an equal share,
//! never more than a segment can use, the rest to the others), loads a model it does not
//! hold (the last two it ran stay warm), and runs out of memory when the true peaks of its
//! segments exceed it: the segment that arrived last fails at 90 % of its work (its decode).
//! Stitches run on the worker's CPU beside the GPU's work. Time advances lazily per GPU.

use std::collections::VecDeque;

use reelfarm_common::pb;

/// The work fraction at which an out-of-memory segment fails (its decode).
const OOM_AT_FRACTION: f64 = 0.9;
/// Models a GPU keeps loaded.
const WARM_MODELS: usize = 2;
/// Time and work below this count as none: events never land closer than this, so the clock
/// always moves on.
const EPSILON_SECONDS: f64 = 1e-6;

#[derive(Debug)]
pub(super) struct Job {
    pub(super) reference: pb::AssignmentRef,
    pub(super) stitch: bool,
    pub(super) true_peak: u64,
    /// The speed above which it runs no faster.
    pub(super) cap: f64,
    pub(super) load_left: f64,
    pub(super) work_left: f64,
    /// Work left at which it fails for lack of memory.
    pub(super) oom_at: Option<f64>,
    rate: f64,
}

impl Job {
    pub(super) fn segment(
        reference: pb::AssignmentRef,
        work: f64,
        cap: f64,
        true_peak: u64,
    ) -> Self {
        Job {
            reference,
            stitch: false,
            true_peak,
            cap,
            load_left: 0.0,
            work_left: work,
            oom_at: None,
            rate: 0.0,
        }
    }

    pub(super) fn stitch(reference: pb::AssignmentRef, seconds: f64) -> Self {
        Job {
            reference,
            stitch: true,
            true_peak: 0,
            cap: 1.0,
            load_left: 0.0,
            work_left: seconds,
            oom_at: None,
            rate: 1.0,
        }
    }

    fn target(&self) -> f64 {
        self.oom_at.unwrap_or(0.0)
    }
}

#[derive(Debug)]
pub(super) struct Gpu {
    pub(super) memory_bytes: u64,
    pub(super) speed: f64,
    pub(super) jobs: Vec<Job>,
    warm: VecDeque<String>,
    /// Up to when `jobs` have been advanced.
    last: f64,
    pub(super) busy_seconds: f64,
    /// Bumped on every change, so stale entries in the event heap are ignored.
    pub(super) version: u64,
}

impl Gpu {
    pub(super) fn new(memory_bytes: u64, speed: f64) -> Self {
        Gpu {
            memory_bytes,
            speed,
            jobs: Vec::new(),
            warm: VecDeque::new(),
            last: 0.0,
            busy_seconds: 0.0,
            version: 0,
        }
    }

    /// Moves every job forward to `now` at its current rate.
    pub(super) fn advance(&mut self, now: f64) {
        let dt = (now - self.last).max(0.0);
        if dt > 0.0 {
            let used: f64 = self
                .jobs
                .iter()
                .filter(|job| !job.stitch)
                .map(|job| job.rate)
                .sum();
            self.busy_seconds += dt * (used / self.speed).min(1.0);
            for job in &mut self.jobs {
                if job.load_left > 0.0 {
                    job.load_left -= dt;
                    // Below this a load is done: smaller steps vanish in the clock's rounding.
                    if job.load_left < EPSILON_SECONDS {
                        job.load_left = 0.0;
                    }
                } else {
                    job.work_left -= job.rate * dt;
                }
            }
        }
        self.last = now;
    }

    /// Starts a segment: a model load first unless it is warm; out of memory later if the
    /// true peaks here exceed the GPU.
    pub(super) fn start(&mut self, mut job: Job, model: &str, load_seconds: f64) {
        if !job.stitch {
            if !self.warm.iter().any(|warm| warm == model) {
                job.load_left = load_seconds;
            }
            self.warm.retain(|warm| warm != model);
            self.warm.push_front(model.to_string());
            let running_segments = self.jobs.iter().filter(|j| !j.stitch).count();
            self.warm.truncate(WARM_MODELS.max(running_segments + 1));
            let peaks: u64 = self.jobs.iter().map(|j| j.true_peak).sum::<u64>() + job.true_peak;
            if peaks > self.memory_bytes {
                job.oom_at = Some(job.work_left * (1.0 - OOM_AT_FRACTION));
            }
        }
        self.jobs.push(job);
        self.rates();
    }

    /// Water-fills the GPU's speed over the segments computing (loaded) on it.
    fn rates(&mut self) {
        let computing: Vec<usize> = (0..self.jobs.len())
            .filter(|&j| !self.jobs[j].stitch && self.jobs[j].load_left <= 0.0)
            .collect();
        let caps: Vec<f64> = computing.iter().map(|&j| self.jobs[j].cap).collect();
        let rates = water_fill(self.speed, &caps);
        for job in self.jobs.iter_mut().filter(|job| !job.stitch) {
            job.rate = 0.0;
        }
        for (&j, rate) in computing.iter().zip(rates) {
            self.jobs[j].rate = rate;
        }
        self.version += 1;
    }

    /// When the next job finishes loading, finishes, or runs out of memory.
    pub(super) fn next_event(&self) -> Option<f64> {
        self.jobs
            .iter()
            .map(|job| {
                if job.load_left > 0.0 {
                    job.load_left
                } else if job.work_left - job.target() <= EPSILON_SECONDS {
                    0.0
                } else {
                    ((job.work_left - job.target()) / job.rate.max(1e-12)).max(EPSILON_SECONDS)
                }
            })
            .reduce(f64::min)
            .map(|dt| self.last + dt)
    }

    /// Takes out the jobs that ended by now (finished, or out of memory) and rebalances.
    pub(super) fn take_ended(&mut self) -> Vec<Job> {
        let mut ended = Vec::new();
        let mut index = 0;
        while index < self.jobs.len() {
            let job = &self.jobs[index];
            if job.load_left <= 0.0 && job.work_left - job.target() <= EPSILON_SECONDS {
                ended.push(self.jobs.swap_remove(index));
            } else {
                index += 1;
            }
        }
        // A finished load also changes who computes.
        self.rates();
        ended
    }

    /// Drops a job the farm cancelled.
    pub(super) fn remove(&mut self, assignment_id: &str) -> Option<Job> {
        let index = self
            .jobs
            .iter()
            .position(|job| job.reference.assignment_id == assignment_id)?;
        let job = self.jobs.swap_remove(index);
        self.rates();
        Some(job)
    }
}

/// Shares `speed` equally among jobs, none above its cap; what a capped job leaves goes to
/// the others.
pub(super) fn water_fill(speed: f64, caps: &[f64]) -> Vec<f64> {
    let mut rates = vec![0.0; caps.len()];
    let mut open: Vec<usize> = (0..caps.len()).collect();
    let mut left = speed;
    while !open.is_empty() && left > 1e-12 {
        let share = left / open.len() as f64;
        let (capped, free): (Vec<usize>, Vec<usize>) =
            open.iter().partition(|&&i| caps[i] - rates[i] <= share);
        if capped.is_empty() {
            for &i in &free {
                rates[i] += share;
            }
            break;
        }
        for &i in &capped {
            left -= caps[i] - rates[i];
            rates[i] = caps[i];
        }
        open = free;
    }
    rates
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(id: &str) -> pb::AssignmentRef {
        pb::AssignmentRef {
            assignment_id: id.into(),
            attempt: 1,
        }
    }

    #[test]
    fn water_filling_caps_small_segments_and_shares_the_rest() {
        assert_eq!(water_fill(3.5, &[1.0]), vec![1.0]);
        let rates = water_fill(3.5, &[1.0, 4.0]);
        assert!(
            (rates[0] - 1.0).abs() < 1e-9 && (rates[1] - 2.5).abs() < 1e-9,
            "{rates:?}"
        );
        let rates = water_fill(2.0, &[4.0, 4.0]);
        assert!((rates[0] - 1.0).abs() < 1e-9, "{rates:?}");
    }

    #[test]
    fn a_cold_model_loads_first_and_a_warm_one_does_not() {
        let mut gpu = Gpu::new(80, 2.0);
        gpu.start(Job::segment(reference("a"), 10.0, 4.0, 10), "m", 5.0);
        assert_eq!(gpu.next_event(), Some(5.0));
        gpu.advance(5.0);
        assert!(gpu.take_ended().is_empty());
        assert_eq!(gpu.next_event(), Some(10.0));
        gpu.advance(10.0);
        assert_eq!(gpu.take_ended().len(), 1);
        gpu.start(Job::segment(reference("b"), 4.0, 4.0, 10), "m", 5.0);
        assert_eq!(gpu.next_event(), Some(12.0));
        assert!(
            (gpu.busy_seconds - 5.0).abs() < 1e-9,
            "{}",
            gpu.busy_seconds
        );
    }

    #[test]
    fn the_segment_that_overfills_memory_fails_near_its_end() {
        let mut gpu = Gpu::new(100, 1.0);
        gpu.start(Job::segment(reference("a"), 10.0, 1.0, 60), "m", 0.0);
        gpu.start(Job::segment(reference("b"), 10.0, 1.0, 60), "m", 0.0);
        assert!(gpu.jobs[0].oom_at.is_none());
        assert!(gpu.jobs[1].oom_at.is_some());
        // Both share the speed: b fails when it has done 90 % at half speed.
        assert_eq!(gpu.next_event(), Some(18.0));
    }
}
