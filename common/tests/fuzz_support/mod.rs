//! What the fuzz targets share: a counting allocator, the case count, and the summary line.
//! media/tests/fuzz_readers.rs includes this same file by path (the two crates share no
//! test-support crate).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};

pub const MIB: usize = 1 << 20;

/// 1x1, 8-bit indexed, a 4-byte PLTE, one scanline: the 86 bytes that made png 0.18.1 panic
/// (`create_rgba_palette`, "range end index 3 out of range", upstream image-rs/image-png#694)
/// in the worker's `decode_png`, which `check_reference_png` accepted at submission.
#[allow(dead_code)]
pub const FOUR_BYTE_PALETTE_PNG: &[u8; 86] = b"\x89PNG\r\n\x1a\n\
    \0\0\0\x0dIHDR\0\0\0\x01\0\0\0\x01\x08\x03\0\0\0\x28\xcb\x34\xbb\
    \0\0\0\x04PLTE\x0a\x14\x1e\x28\x21\xc5\xd2\x97\
    \0\0\0\x0dIDAT\x78\x01\x01\x02\0\xfd\xff\0\0\0\x02\0\x01\x7e\x05\x0d\xd2\
    \0\0\0\0IEND\xae\x42\x60\x82";
/// Cases per target unless `REELFARM_FUZZ_CASES` says otherwise: what CI runs.
const CI_CASES: u32 = 1000;

pub enum Verdict {
    Accepted,
    /// Refused with an error; the string groups refusals in the summary.
    Refused(String),
    /// A property beyond "no panic" does not hold.
    Broken(String),
}

// Heap in use per thread: each target measures its own, so a binary's tests still run in
// parallel. Const-initialised cells never allocate, so the allocator may use them.
thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn count(bytes: isize) {
    // `try_with`: the allocator also runs while a thread is torn down.
    let _ = LIVE.try_with(|live| {
        live.set(live.get() + bytes);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(live.get())));
    });
}

struct Counting;

// The workspace denies unsafe code; a global allocator needs it. This one only counts
// (`realloc` is the trait's own, built on these).
#[allow(unsafe_code)]
// SAFETY: each method passes the caller's arguments on to the same method of `System`.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        unsafe { System.dealloc(pointer, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// `work`'s result, and the most heap it held at once (on this thread).
pub fn heap_peak<T>(work: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.get();
    PEAK.set(base);
    let result = work();
    (result, (PEAK.get() - base) as usize)
}

/// Runs `target` on `strategy`'s inputs and prints the summary line. A case fails if it panics,
/// is `Broken`, or holds more heap than `bound` allows; proptest shrinks it, and this panics
/// with the smallest failing input (pin it as a test of its own).
pub fn fuzz<S: Strategy>(
    name: &str,
    strategy: S,
    bound: impl Fn(&S::Value) -> usize,
    target: impl Fn(S::Value) -> Verdict,
) {
    let cases = std::env::var("REELFARM_FUZZ_CASES").map_or(CI_CASES, |text| {
        text.parse().expect("REELFARM_FUZZ_CASES: a count")
    });
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let (accepted, peak) = (Cell::new(0), Cell::new(0));
    let refused = RefCell::new(BTreeMap::<String, usize>::new());
    let result = TestRunner::new(config).run(&strategy, |input| {
        let limit = bound(&input);
        let (verdict, held) = heap_peak(|| target(input));
        peak.set(held.max(peak.get()));
        match verdict {
            Verdict::Broken(why) => return Err(TestCaseError::fail(why)),
            Verdict::Accepted => accepted.set(accepted.get() + 1),
            Verdict::Refused(kind) => *refused.borrow_mut().entry(kind).or_default() += 1,
        }
        if held > limit {
            return Err(TestCaseError::fail(format!(
                "held {held} bytes; bound {limit}"
            )));
        }
        Ok(())
    });
    if let Err(error) = result {
        panic!("{name}: {error}");
    }
    let mut kinds: Vec<_> = refused.into_inner().into_iter().collect();
    kinds.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    let top: String = kinds
        .iter()
        .take(3)
        .map(|(k, n)| format!("{k}: {n}, "))
        .collect();
    println!(
        "{name}: {cases} cases in {:.1} s, no panic, peak heap {:.1} MiB; {} accepted, {} refused ({top}...)",
        started.elapsed().as_secs_f64(),
        peak.get() as f64 / MIB as f64,
        accepted.get(),
        cases - accepted.get(),
    );
}

/// The CRC-32 of PNG chunks (reflected, polynomial 0xEDB88320).
pub fn crc32(data: &[u8]) -> u32 {
    let step = |crc: u32| (crc >> 1) ^ (0xEDB8_8320 & 0u32.wrapping_sub(crc & 1));
    !data.iter().fold(!0, |crc, &byte| {
        (0..8).fold(crc ^ u32::from(byte), |c, _| step(c))
    })
}
