//! Placement properties: no GPU over-reserved, every segment placed or explained, stable
//! plans, never worse than one-per-GPU first fit; and the rules on hand-made pools.

use proptest::prelude::*;

use super::*;

const GIB: u64 = 1 << 30;

fn gpu(gib: u64, speed: f64) -> GpuState {
    GpuState {
        total_bytes: gib * GIB,
        reserved_bytes: 0,
        speed,
        busy_speed: 0.0,
        running: 0,
        resident_models: Vec::new(),
        serves: None,
    }
}

fn segment(sequence: u32, gib: u64, enqueued: u64) -> ReadySegment {
    ReadySegment {
        sequence,
        owner: sequence,
        priority: 0,
        reserve_bytes: gib * GIB,
        cold_extra_bytes: 0,
        min_gpu_bytes: 0,
        model: 0,
        work_seconds: 100.0,
        max_speed: 1.0,
        chain_seconds_behind: 0.0,
        load_seconds: 30.0,
        enqueued,
    }
}

fn apply(gpus: &mut [GpuState], segments: &[ReadySegment], placement: &Placement) {
    for a in &placement.assignments {
        let gpu = &mut gpus[a.gpu];
        gpu.reserved_bytes += a.reserved_bytes;
        gpu.running += 1;
        gpu.busy_speed += segments[a.segment].max_speed.min(gpu.speed);
    }
}

#[test]
fn a_segment_larger_than_every_gpu_says_so_in_gib() {
    let placement = place(
        Policy::Full,
        &[segment(0, 92, 0)],
        &[gpu(80, 2.2), gpu(24, 1.0)],
    );
    assert!(placement.assignments.is_empty());
    assert_eq!(
        placement.unplaced[0].reason.to_string(),
        "needs 92.0 GiB, largest GPU has 80.0 GiB"
    );
}

#[test]
fn fifo_puts_one_segment_per_gpu_and_pack_shares_them() {
    let segments: Vec<ReadySegment> = (0..4).map(|i| segment(i, 8, u64::from(i))).collect();
    let gpus = [gpu(80, 3.5), gpu(24, 1.0)];
    let fifo = place(Policy::Fifo, &segments, &gpus);
    assert_eq!(fifo.assignments.len(), 2);
    assert!(
        fifo.unplaced[0]
            .reason
            .to_string()
            .starts_with("waiting: all 2 GPUs"),
        "{fifo:?}"
    );
    let pack = place(Policy::Pack, &segments, &gpus);
    assert_eq!(pack.assignments.len(), 4);
}

#[test]
fn large_only_work_gets_the_large_gpu_before_small_work_fills_it() {
    // Small work arrived first; a 70 GiB final only fits the 80 GiB card.
    let segments = vec![segment(0, 20, 0), segment(1, 20, 1), segment(2, 70, 2)];
    let gpus = [gpu(80, 2.2), gpu(24, 1.0), gpu(24, 1.0)];
    let full = place(Policy::Full, &segments, &gpus);
    let big = full
        .assignments
        .iter()
        .find(|a| a.segment == 2)
        .expect("the final is placed");
    assert_eq!(big.gpu, 0);
    assert_eq!(full.assignments.len(), 3, "{full:?}");
    // Pack, in arrival order, lets the small work take the big card's memory first.
    let pack = place(Policy::Pack, &segments, &gpus);
    assert!(pack.assignments.iter().all(|a| a.segment != 2), "{pack:?}");
}

#[test]
fn the_resident_model_and_the_longer_chain_win() {
    let mut warm = gpu(24, 1.0);
    warm.resident_models = vec![7];
    let gpus = [gpu(24, 1.0), warm];
    let mut s = segment(0, 16, 0);
    s.model = 7;
    let full = place(Policy::Full, &[s], &gpus);
    assert_eq!(full.assignments[0].gpu, 1, "no model load on the warm GPU");

    let mut short = segment(0, 16, 0);
    short.chain_seconds_behind = 10.0;
    let mut long = segment(0, 16, 1);
    long.chain_seconds_behind = 500.0;
    let full = place(Policy::Full, &[short, long], &[gpu(24, 1.0)]);
    assert_eq!(full.assignments[0].segment, 1, "critical path first");
}

#[test]
fn a_long_sequence_cannot_starve_a_short_draft() {
    let mut segments: Vec<ReadySegment> = (0..20).map(|i| segment(0, 8, i)).collect();
    segments.push(segment(1, 8, 100));
    let full = place(Policy::Full, &segments, &[gpu(24, 1.0), gpu(24, 1.0)]);
    assert!(full.assignments.iter().any(|a| a.segment == 20), "{full:?}");
    let fifo = place(Policy::Fifo, &segments, &[gpu(24, 1.0), gpu(24, 1.0)]);
    assert!(fifo.assignments.iter().all(|a| a.segment != 20));
}

#[test]
fn cold_estimates_take_headroom_only_where_the_gpu_has_it() {
    let mut s = segment(0, 70, 0);
    s.cold_extra_bytes = 20 * GIB;
    let full = place(Policy::Full, &[s], &[gpu(80, 2.2)]);
    assert_eq!(full.assignments[0].reserved_bytes, 80 * GIB);
}

fn arbitrary_pool() -> impl Strategy<Value = (Vec<ReadySegment>, Vec<GpuState>)> {
    let gpus = prop::collection::vec(
        (prop::sample::select(vec![24u64, 48, 80]), 0u64..60, 0u32..3).prop_map(
            |(total, used, running)| {
                let mut g = gpu(total, total as f64 / 24.0);
                g.reserved_bytes = (used.min(total) * GIB) * u64::from(running.min(1));
                g.running = running;
                g.busy_speed = f64::from(running) * 0.5;
                g
            },
        ),
        1..8,
    );
    let segments = prop::collection::vec(
        (
            0u32..4,
            1u64..90,
            0u64..20,
            0i32..2,
            0u32..3,
            0.0f64..500.0,
            0u64..2,
        )
            .prop_map(|(sequence, gib, cold, priority, model, chain, min_class)| {
                ReadySegment {
                    sequence,
                    owner: sequence % 2,
                    priority,
                    reserve_bytes: gib * GIB,
                    cold_extra_bytes: cold * GIB,
                    min_gpu_bytes: min_class * 48 * GIB,
                    model,
                    work_seconds: 100.0,
                    max_speed: 1.5,
                    chain_seconds_behind: chain,
                    load_seconds: 20.0,
                    enqueued: 0,
                }
            }),
        0..24,
    )
    .prop_map(|mut segments| {
        for (i, s) in segments.iter_mut().enumerate() {
            s.enqueued = i as u64;
        }
        segments
    });
    (segments, gpus)
}

proptest! {
    #[test]
    fn no_gpu_is_over_reserved_and_every_segment_is_placed_or_explained(
        (segments, gpus) in arbitrary_pool(),
        policy in prop::sample::select(Policy::ALL.to_vec()),
    ) {
        let placement = place(policy, &segments, &gpus);
        let mut seen: Vec<usize> = placement.assignments.iter().map(|a| a.segment)
            .chain(placement.unplaced.iter().map(|u| u.segment)).collect();
        seen.sort();
        prop_assert_eq!(seen, (0..segments.len()).collect::<Vec<_>>());
        prop_assert!(placement.unplaced.iter().all(|u| !u.reason.to_string().is_empty()));
        let mut after = gpus.clone();
        apply(&mut after, &segments, &placement);
        for (before, after) in gpus.iter().zip(&after) {
            prop_assert!(after.reserved_bytes <= after.total_bytes.max(before.reserved_bytes));
        }
        for a in &placement.assignments {
            let s = &segments[a.segment];
            prop_assert!(a.reserved_bytes >= s.reserve_bytes);
            prop_assert!(gpus[a.gpu].total_bytes >= s.min_gpu_bytes);
        }
    }

    #[test]
    fn with_nothing_changed_the_plan_is_stable(
        (segments, gpus) in arbitrary_pool(),
        policy in prop::sample::select(Policy::ALL.to_vec()),
    ) {
        let first = place(policy, &segments, &gpus);
        prop_assert_eq!(&first, &place(policy, &segments, &gpus));
        // Applied, the same segments minus the placed ones place nothing more.
        let mut after = gpus.clone();
        apply(&mut after, &segments, &first);
        let left: Vec<ReadySegment> = first.unplaced.iter().map(|u| segments[u.segment].clone()).collect();
        prop_assert!(place(policy, &left, &after).assignments.is_empty());
    }

    #[test]
    fn never_worse_than_one_segment_per_idle_gpu_first_fit(
        (segments, gpus) in arbitrary_pool(),
    ) {
        let naive = place(Policy::Fifo, &segments, &gpus).assignments.len();
        prop_assert!(place(Policy::Pack, &segments, &gpus).assignments.len() >= naive);
        prop_assert!(place(Policy::Full, &segments, &gpus).assignments.len() >= naive);
    }

    #[test]
    fn a_queue_kept_across_changes_places_like_one_built_from_scratch(
        (segments, gpus) in arbitrary_pool(),
        (extra, _) in arbitrary_pool(),
        removed in prop::collection::vec(0usize..24, 0..8),
        policy in prop::sample::select(Policy::ALL.to_vec()),
    ) {
        // Queue everything, change the queue (replace, remove, add), then place.
        let mut queue = ReadyQueue::default();
        for (i, s) in extra.iter().enumerate() {
            queue.push(i, s.clone());
        }
        for (i, s) in segments.iter().enumerate() {
            queue.push(i, s.clone());
        }
        let mut kept: Vec<Option<ReadySegment>> = segments.iter().cloned().map(Some).collect();
        for &r in &removed {
            if r < kept.len() {
                prop_assert_eq!(queue.remove(r), kept[r].take());
            }
        }
        for i in segments.len()..extra.len() {
            queue.remove(i);
        }
        let mut live = gpus.clone();
        let assignments = queue.place(policy, &mut live, &RunningCounts::default());

        // The same segments, queued once in a fresh queue.
        let mut fresh = ReadyQueue::default();
        for (i, s) in kept.iter().enumerate() {
            if let Some(s) = s {
                fresh.push(i, s.clone());
            }
        }
        let mut fresh_gpus = gpus.clone();
        prop_assert_eq!(&assignments, &fresh.place(policy, &mut fresh_gpus, &RunningCounts::default()));
        prop_assert_eq!(&live, &fresh_gpus);
        prop_assert_eq!(queue.len(), fresh.len());
        prop_assert_eq!(queue.reasons(&live, policy), fresh.reasons(&fresh_gpus, policy));
    }
}
