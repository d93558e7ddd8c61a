//! `reelfarm validate`: the plan a spec turns into, so people see the windows and
//! continuity chains before spending GPU time.

use reelfarm_common::sequence::Sequence;
use reelfarm_core::planner::{self, Join};
use reelfarm_models::Catalog;

/// Prints the plan of a sequence already validated against `catalog`.
pub fn print_plan(sequence: &Sequence, catalog: &Catalog) {
    let Ok(model) = catalog.require(&sequence.model) else {
        return;
    };
    let plan = planner::plan(sequence, model);
    println!(
        "ok: {} — {} shots, {:.2} s, {} frames at {} fps, {}x{}, {} pass, model {}",
        sequence.display_title(),
        sequence.shots.len(),
        sequence.total_duration_seconds(),
        plan.total_frames,
        plan.fps,
        plan.width,
        plan.height,
        sequence.pass.name(),
        model.id
    );
    println!(
        "  {:<10} {:>7} {:>8} {:>7} {:>6}  {:<10} memory",
        "segment", "start", "frames", "render", "steps", "join"
    );
    for segment in &plan.segments {
        let join = match (segment.join, segment.continues_from) {
            (Join::Continue, Some(previous)) => format!("continue {}", plan.segments[previous].id),
            (Join::Crossfade, _) => format!("crossfade {}f", segment.lead_frames),
            _ => "cut".to_string(),
        };
        println!(
            "  {:<10} {:>6.2}s {:>8} {:>7} {:>6}  {:<10} {:.1} GiB",
            segment.id,
            segment.timeline_start_frame as f64 / f64::from(plan.fps),
            segment.timeline_frames,
            segment.render_frames,
            segment.steps,
            join,
            segment.memory_estimate_bytes as f64 / f64::from(1u32 << 30)
        );
    }
}
