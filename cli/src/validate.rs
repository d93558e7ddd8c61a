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
    let Ok(plan) = planner::plan_with(sequence, catalog) else {
        return;
    };
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
    let mixed = plan
        .segments
        .iter()
        .any(|segment| segment.model != model.id);
    if mixed {
        println!("  shots with their own model: the MODEL column names each segment's");
    }
    println!(
        "  {:<10} {:>7} {:>8} {:>7} {:>6}  {:<16} {:<9} model",
        "segment", "start", "frames", "render", "steps", "join", "memory"
    );
    for segment in &plan.segments {
        let join = match (segment.join, segment.continues_from) {
            (Join::Continue, Some(previous)) => format!("continue {}", plan.segments[previous].id),
            (Join::Crossfade, _) => format!("crossfade {}f", segment.lead_frames),
            _ => "cut".to_string(),
        };
        let model_cell = if segment.clip_seconds > 0 {
            format!(
                "{} ({} s clip, ${:.2})",
                segment.model, segment.clip_seconds, segment.cost_usd
            )
        } else {
            segment.model.clone()
        };
        println!(
            "  {:<10} {:>6.2}s {:>8} {:>7} {:>6}  {:<16} {:<9} {model_cell}",
            segment.id,
            segment.timeline_start_frame as f64 / f64::from(plan.fps),
            segment.timeline_frames,
            segment.render_frames,
            segment.steps,
            join,
            format!(
                "{:.1} GiB",
                segment.memory_estimate_bytes as f64 / f64::from(1u32 << 30)
            ),
        );
    }
    let cost = plan.estimated_cost_usd();
    if cost > 0.0 {
        let hosted: Vec<&planner::PlannedSegment> = plan
            .segments
            .iter()
            .filter(|s| s.clip_seconds > 0)
            .collect();
        let seconds: u32 = hosted.iter().map(|s| s.clip_seconds).sum();
        println!(
            "estimated cost: ${cost:.2} for {} hosted clips ({seconds} s at the catalog's prices; \
             a hosted segment's steps are its progress in percent)",
            hosted.len()
        );
    }
}
