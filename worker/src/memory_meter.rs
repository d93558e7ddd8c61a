//! Measured peak memory of a task on the CPU: a counting global allocator keeps the live
//! heap, and each running task's meter keeps the highest value seen while it ran. The
//! binary installs it (`#[global_allocator]`); without it every meter reads 0, which the
//! scheduler takes as "not measured".
//!
//! A task's peak is the heap high-water mark above the heap at its start. Tasks running at
//! the same time in one process see each other's allocations, so with several running the
//! figure is an upper bound: estimates learned from it err on the safe side.
//!
//! The only `unsafe` in the project: a `GlobalAlloc` must be an `unsafe impl`. Every call
//! goes unchanged to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Meters that can run at once; a task that finds none free reads 0 (not measured).
const SLOTS: usize = 16;

static LIVE: AtomicU64 = AtomicU64::new(0);
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
static PEAKS: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
/// Bit i set: slot i is taken.
static TAKEN: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting live bytes.
pub struct CountingAllocator;

// SAFETY: every call is forwarded unchanged to `System`; the counters are side bookkeeping.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            grew(layout.size() as u64);
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            grew(layout.size() as u64);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: `pointer` came from this allocator (so from `System`) with `layout`.
        unsafe { System.dealloc(pointer, layout) };
        LIVE.fetch_sub(layout.size() as u64, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            if new_size >= layout.size() {
                grew((new_size - layout.size()) as u64);
            } else {
                LIVE.fetch_sub((layout.size() - new_size) as u64, Ordering::Relaxed);
            }
        }
        moved
    }
}

fn grew(bytes: u64) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    if ACTIVE.load(Ordering::Relaxed) > 0 {
        let taken = TAKEN.load(Ordering::Relaxed);
        for (slot, peak) in PEAKS.iter().enumerate() {
            if taken & (1 << slot) != 0 {
                peak.fetch_max(live, Ordering::Relaxed);
            }
        }
    }
}

/// Bytes the process holds on its heap now (0 without the counting allocator).
pub fn live_bytes() -> u64 {
    LIVE.load(Ordering::Relaxed)
}

/// Measures one task from `start` until it is dropped or read.
pub struct PeakMeter {
    slot: Option<usize>,
    baseline: u64,
}

impl PeakMeter {
    pub fn start() -> PeakMeter {
        let baseline = live_bytes();
        let mut taken = TAKEN.load(Ordering::Acquire);
        loop {
            let Some(slot) = (0..SLOTS).find(|slot| taken & (1 << slot) == 0) else {
                return PeakMeter {
                    slot: None,
                    baseline,
                };
            };
            PEAKS[slot].store(baseline, Ordering::Relaxed);
            match TAKEN.compare_exchange(
                taken,
                taken | (1 << slot),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    ACTIVE.fetch_add(1, Ordering::Relaxed);
                    return PeakMeter {
                        slot: Some(slot),
                        baseline,
                    };
                }
                Err(now) => taken = now,
            }
        }
    }

    /// The highest heap above the start so far (0 when not measured).
    pub fn peak_bytes(&self) -> u64 {
        self.slot.map_or(0, |slot| {
            PEAKS[slot]
                .load(Ordering::Relaxed)
                .saturating_sub(self.baseline)
        })
    }

    /// The heap above the start now.
    pub fn current_bytes(&self) -> u64 {
        if self.slot.is_some() {
            live_bytes().saturating_sub(self.baseline)
        } else {
            0
        }
    }
}

impl Drop for PeakMeter {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            ACTIVE.fetch_sub(1, Ordering::Relaxed);
            TAKEN.fetch_and(!(1 << slot), Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static COUNTING: CountingAllocator = CountingAllocator;

    #[test]
    fn a_meter_sees_the_peak_of_what_was_allocated_while_it_ran() {
        let meter = PeakMeter::start();
        let block = vec![1u8; 64 << 20];
        std::hint::black_box(&block);
        drop(block);
        let peak = meter.peak_bytes();
        assert!(peak >= 64 << 20, "peak {peak}");
        // Freed again: the heap now is far below the peak.
        assert!(
            meter.current_bytes() < peak,
            "{} vs {peak}",
            meter.current_bytes()
        );
    }
}
