//! Where a render's wall time went, from the phases workers reported: model, codec, and the
//! farm's own overhead (time when no model or codec work ran anywhere: planning, RPC,
//! dispatch gaps, storage).

use reelfarm_common::pb;
use serde::Serialize;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Breakdown {
    pub wall_s: f64,
    /// Summed over workers: with several workers in parallel this may exceed wall time.
    pub model_s: f64,
    pub codec_s: f64,
    /// Wall time during which no model or codec work ran on any worker.
    pub overhead_s: f64,
    pub overhead_fraction: f64,
}

fn is_compute(kind: &str) -> bool {
    matches!(kind, "model" | "encode" | "decode" | "codec")
}

/// `window` is (submit, finish) in Unix seconds.
pub fn breakdown(phases: &[pb::TimedPhase], window: (f64, f64)) -> Breakdown {
    let wall_s = (window.1 - window.0).max(0.0);
    let duration = |kind: &dyn Fn(&str) -> bool| {
        phases
            .iter()
            .filter(|p| kind(&p.kind))
            .map(|p| (p.end_unix_s - p.start_unix_s).max(0.0))
            // An empty float sum is -0.0, which a summary would print as "-0.0 s".
            .sum::<f64>()
            + 0.0
    };
    let model_s = duration(&|kind| kind == "model");
    let codec_s = duration(&|kind| is_compute(kind) && kind != "model");
    let mut intervals: Vec<(f64, f64)> = phases
        .iter()
        .filter(|phase| is_compute(&phase.kind))
        .map(|phase| {
            (
                phase.start_unix_s.max(window.0),
                phase.end_unix_s.min(window.1),
            )
        })
        .filter(|(start, end)| end > start)
        .collect();
    intervals.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut busy = 0.0;
    let mut current: Option<(f64, f64)> = None;
    for (start, end) in intervals {
        current = match current {
            Some((open_start, open_end)) if start <= open_end => {
                Some((open_start, open_end.max(end)))
            }
            Some((open_start, open_end)) => {
                busy += open_end - open_start;
                Some((start, end))
            }
            None => Some((start, end)),
        };
    }
    if let Some((start, end)) = current {
        busy += end - start;
    }
    let overhead_s = (wall_s - busy).max(0.0);
    let overhead_fraction = if wall_s > 0.0 {
        overhead_s / wall_s
    } else {
        0.0
    };
    Breakdown {
        wall_s,
        model_s,
        codec_s,
        overhead_s,
        overhead_fraction,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(kind: &str, start: f64, end: f64) -> pb::TimedPhase {
        pb::TimedPhase {
            kind: kind.into(),
            start_unix_s: start,
            end_unix_s: end,
            task_id: String::new(),
        }
    }

    #[test]
    fn overhead_is_the_time_nothing_computed() {
        let phases = [
            phase("model", 1.0, 4.0),
            phase("encode", 4.0, 5.0),
            phase("storage", 5.0, 6.0),
            phase("codec", 7.0, 9.0),
        ];
        let result = breakdown(&phases, (0.0, 10.0));
        assert_eq!(result.model_s, 3.0);
        assert_eq!(result.codec_s, 3.0);
        assert_eq!(result.overhead_s, 4.0);
        assert!((result.overhead_fraction - 0.4).abs() < 1e-12);
    }

    #[test]
    fn parallel_work_is_counted_once_in_the_busy_time() {
        let phases = [
            phase("model", 0.0, 6.0),
            phase("model", 2.0, 8.0),
            phase("encode", 7.0, 9.0),
        ];
        let result = breakdown(&phases, (0.0, 10.0));
        assert_eq!(result.model_s, 12.0);
        assert_eq!(result.overhead_s, 1.0);
    }

    #[test]
    fn a_render_with_nothing_to_do_reports_zero_not_minus_zero() {
        let result = breakdown(&[phase("codec", 1.0, 2.0)], (0.0, 3.0));
        assert_eq!(format!("{:.1}", result.model_s), "0.0");
    }
}
