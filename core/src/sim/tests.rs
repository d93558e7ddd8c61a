//! The simulator runs the farm core itself: deterministic traces, every policy finishing,
//! the same decisions from the same trace, and the counts it reports.

use super::*;
use crate::placement::Policy;

fn ticking() -> impl FnMut() -> f64 {
    let mut now = 0.0;
    move || {
        now += 1e-6;
        now
    }
}

#[test]
fn the_reference_trace_is_deterministic_and_has_continuity_chains() {
    let (a, b) = (reference_trace(7), reference_trace(7));
    assert_eq!(a.sequences.len(), 200);
    assert_eq!(a.gpus.len(), 64);
    let plans_a = plans(&a);
    assert_eq!(plans_a, plans(&b));
    let segments: usize = plans_a.iter().map(|p| p.segments.len()).sum();
    let chained = plans_a
        .iter()
        .flat_map(|p| &p.segments)
        .filter(|s| s.continues_from.is_some())
        .count();
    assert!(
        chained > segments / 3,
        "{chained} of {segments} continue another"
    );
    assert_ne!(plans(&reference_trace(8)), plans_a);
    // Nodes of eight GPUs of one class.
    let workers = workers(&a);
    assert_eq!(workers.len(), 8);
    assert!(workers.iter().all(|w| w.devices.len() == 8));
}

#[test]
fn every_policy_finishes_the_trace_above_its_lower_bound() {
    let trace = reference_trace(1);
    for policy in Policy::ALL {
        let (result, _) = simulate(&trace, policy, &mut ticking(), false);
        assert_eq!(result.given_up, 0, "{result:?}");
        assert!(
            result.makespan_s >= result.lower_bound_s * 0.999,
            "{result:?}"
        );
        assert!(result.busy > 0.0 && result.busy <= 1.0, "{result:?}");
        assert_eq!(result.sequences, 200);
        // Every segment placed at least once, every stitch too; one dispatch per transition.
        assert!(
            result.placements >= (result.segments + result.sequences) as u64,
            "{result:?}"
        );
        assert!(result.decisions > result.placements / 4, "{result:?}");
        assert!(result.state_writes_per_segment > 1.0, "{result:?}");
        assert!(result.state_commits_per_segment > 1.0, "{result:?}");
    }
}

#[test]
fn the_same_trace_gives_the_same_decisions() {
    let trace = scale_trace(24, 300, 3);
    let (first, log) = simulate(&trace, Policy::Full, &mut ticking(), true);
    let (second, again) = simulate(&trace, Policy::Full, &mut ticking(), true);
    assert_eq!(log, again);
    assert_eq!(first.makespan_s, second.makespan_s);
    let assigned = log
        .iter()
        .filter(|entry| matches!(entry, Logged::Assigned { .. }))
        .count();
    assert_eq!(assigned as u64, first.placements);
}

#[test]
fn a_scale_trace_plans_at_least_its_segments_on_its_gpus() {
    let trace = scale_trace(100, 2000, 5);
    assert_eq!(trace.gpus.len(), 100);
    let segments: usize = plans(&trace).iter().map(|p| p.segments.len()).sum();
    assert!((2000..2000 + 200).contains(&segments), "{segments}");
    let owners: std::collections::BTreeSet<_> = trace
        .sequences
        .iter()
        .map(|s| s.sequence.owner.clone())
        .collect();
    assert!(owners.len() >= 12);
    assert!(
        trace
            .sequences
            .windows(2)
            .all(|w| w[0].arrival_s <= w[1].arrival_s)
    );
}

#[test]
fn fifo_runs_one_segment_per_gpu_and_full_packs() {
    // A small pool that fills: fifo never puts two segments on one GPU.
    let trace = scale_trace(8, 400, 9);
    let (_, fifo_log) = simulate(&trace, Policy::Fifo, &mut ticking(), true);
    let (_, full_log) = simulate(&trace, Policy::Full, &mut ticking(), true);
    let most_at_once = |log: &[Logged]| {
        let mut running: BTreeMap<(String, u32), i64> = BTreeMap::new();
        let mut where_: BTreeMap<(usize, String, u32), (String, u32)> = BTreeMap::new();
        let mut most = 0;
        for entry in log {
            match entry {
                Logged::Assigned {
                    sequence,
                    task,
                    attempt,
                    worker,
                    device,
                    ..
                } if task != "stitch" => {
                    let slot = (worker.clone(), *device);
                    *running.entry(slot.clone()).or_default() += 1;
                    most = most.max(running[&slot]);
                    where_.insert((*sequence, task.clone(), *attempt), slot);
                }
                Logged::Completed {
                    sequence,
                    task,
                    attempt,
                    ..
                }
                | Logged::OutOfMemory {
                    sequence,
                    task,
                    attempt,
                } => {
                    if let Some(slot) = where_.get(&(*sequence, task.clone(), *attempt)) {
                        *running.get_mut(slot).expect("started") -= 1;
                    }
                }
                _ => {}
            }
        }
        most
    };
    assert_eq!(most_at_once(&fifo_log), 1);
    assert!(most_at_once(&full_log) > 1);
}
