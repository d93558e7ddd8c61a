//! The MP4 and PNG readers take bytes from outside (segments in the object store, reference
//! images people upload): arbitrary and mutated input must give `Err` or a frame, never a
//! panic, and the heap a read takes must stay within a bound set by the format's limits.
//!
//! Property tests, run by the test command with proptest's default 256 cases per property;
//! `PROPTEST_CASES=200000 cargo test -p reelfarm-media --test readers_fuzz` is a longer run by
//! hand. Heap is what the Rust allocator hands out (counted here); OpenH264 allocates its own
//! decoder state in C, outside this count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Cursor;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use reelfarm_media::frame::RgbFrame;
use reelfarm_media::video::{
    EncodeSettings, Mp4Reader, Mp4Writer, Quality, decode_png, encode_png,
};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

#[allow(unsafe_code)]
// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc_zeroed(layout) };
        if !pointer.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One measurement at a time: the heap is shared by the test threads.
static MEASURING: Mutex<()> = Mutex::new(());

/// Heap bytes `work` needed above what was allocated when it started.
fn heap_growth(work: impl FnOnce()) -> usize {
    let _one_at_a_time = MEASURING.lock().unwrap_or_else(|p| p.into_inner());
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    work();
    PEAK.load(Ordering::Relaxed).saturating_sub(base)
}

/// The largest picture either reader accepts is 8K; its RGBA buffer plus the RGB copy.
const PICTURE_BOUND: usize = 7680 * 4320 * 7;
const SLACK: usize = 4 << 20;

fn sample_mp4() -> Vec<u8> {
    let settings = EncodeSettings {
        width: 64,
        height: 48,
        fps: 8,
        quality: Quality::Intermediate,
    };
    let mut writer = Mp4Writer::new(Cursor::new(Vec::new()), settings).unwrap();
    for index in 0..6u8 {
        let frame = RgbFrame::filled(64, 48, [index * 40, 90, 200 - index * 30]);
        writer.push(&frame).unwrap();
    }
    writer.finish_faststart().unwrap().into_inner()
}

fn sample_png() -> Vec<u8> {
    let data = (0..40 * 30 * 3).map(|i| (i * 7 % 251) as u8).collect();
    encode_png(&RgbFrame::new(40, 30, data)).unwrap()
}

/// Reads a file the way the stitch does: open, then every frame until the end or an error.
fn read_mp4(bytes: Vec<u8>) {
    if let Ok(mut reader) = Mp4Reader::open(bytes) {
        for _ in 0..reader.frame_count().min(16) {
            match reader.next_frame() {
                Ok(Some(frame)) => assert_eq!(
                    frame.data.len(),
                    frame.width as usize * frame.height as usize * 3
                ),
                Ok(None) | Err(_) => break,
            }
        }
    }
}

fn read_png(bytes: &[u8]) {
    if let Ok(frame) = decode_png(bytes) {
        assert_eq!(
            frame.data.len(),
            frame.width as usize * frame.height as usize * 3
        );
    }
}

/// Up to eight edits to a valid file: overwrite a byte, write an extreme 32-bit value (box
/// sizes, counts, dimensions), or cut the file short.
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = base.len();
    let edit = prop_oneof![
        (0..len, any::<u8>()).prop_map(|(at, byte)| (0, at, u32::from(byte))),
        (
            0..len,
            prop_oneof![
                Just(0u32),
                Just(1),
                Just(7),
                Just(u32::MAX),
                Just(0x7FFF_FFFF),
                any::<u32>()
            ]
        )
            .prop_map(|(at, value)| (1, at, value)),
        (0..len).prop_map(|at| (2, at, 0)),
    ];
    prop::collection::vec(edit, 1..8).prop_map(move |edits| {
        let mut bytes = base.clone();
        for (kind, at, value) in edits {
            let at = at.min(bytes.len().saturating_sub(1));
            match kind {
                0 if !bytes.is_empty() => bytes[at] = value as u8,
                1 if at + 4 <= bytes.len() => {
                    bytes[at..at + 4].copy_from_slice(&value.to_be_bytes())
                }
                2 => bytes.truncate(at),
                _ => {}
            }
        }
        bytes
    })
}

/// A PNG whose header claims any size, with a correct CRC so the decoder believes it.
fn png_with_header(width: u32, height: u32, color: u8, depth: u8, tail: &[u8]) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[depth, color, 0, 0, 0]);
    bytes.extend_from_slice(&13u32.to_be_bytes());
    bytes.extend_from_slice(&ihdr);
    bytes.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    bytes.extend_from_slice(tail);
    bytes
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

proptest! {

    #[test]
    fn arbitrary_bytes_never_panic_the_mp4_reader(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let len = bytes.len();
        let growth = heap_growth(|| read_mp4(bytes));
        prop_assert!(growth <= 4 * len + SLACK, "{growth} bytes of heap for {len} input bytes");
    }

    #[test]
    fn mutated_mp4_files_never_panic_the_reader(bytes in mutated(sample_mp4())) {
        let len = bytes.len();
        let growth = heap_growth(|| read_mp4(bytes));
        prop_assert!(growth <= 4 * len + SLACK, "{growth} bytes of heap for {len} input bytes");
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_png_reader(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let growth = heap_growth(|| read_png(&bytes));
        prop_assert!(growth <= SLACK, "{growth} bytes of heap");
    }

    #[test]
    fn mutated_png_files_never_panic_the_reader(bytes in mutated(sample_png())) {
        let growth = heap_growth(|| read_png(&bytes));
        prop_assert!(growth <= PICTURE_BOUND + SLACK, "{growth} bytes of heap");
    }

    #[test]
    fn png_headers_claiming_any_size_stay_within_the_8k_bound(
        width in prop_oneof![1u32..64, Just(7680), Just(7681), Just(u32::MAX >> 1), any::<u32>()],
        height in prop_oneof![1u32..64, Just(4320), Just(100_000), any::<u32>()],
        (color, depth) in prop_oneof![Just((2u8, 8u8)), Just((6, 16)), Just((0, 1)), Just((3, 8)), (any::<u8>(), any::<u8>())],
        tail in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let bytes = png_with_header(width, height, color, depth, &tail);
        let growth = heap_growth(|| read_png(&bytes));
        prop_assert!(growth <= PICTURE_BOUND + SLACK, "{width}x{height}: {growth} bytes of heap");
    }
}

#[test]
fn the_unmutated_samples_read_back() {
    let mut reader = Mp4Reader::open(sample_mp4()).unwrap();
    let mut frames = 0;
    while reader.next_frame().unwrap().is_some() {
        frames += 1;
    }
    assert_eq!(frames, 6);
    assert_eq!(decode_png(&sample_png()).unwrap().width, 40);
}
