//! Progress on a long render: one bar per shot (denoising steps of its segments) plus the
//! total, drawn from the status stream. Without a terminal it prints one line per event.

use std::collections::HashMap;
use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use reelfarm_common::pb;

const TOTAL_UNITS: u64 = 1000;
/// Share of the total bar given to the final stitch (rendering takes the rest): on the 60 s
/// draft the stitch (decode + encode of every frame) is about a third of the wall time.
const STITCH_SHARE: f64 = 0.35;

pub struct ProgressView {
    multi: MultiProgress,
    shots: Vec<ProgressBar>,
    total: ProgressBar,
    plain: bool,
    /// Whether bars are drawn (a terminal and not quiet): notes then go above them.
    bars: bool,
    last_state: HashMap<String, i32>,
}

/// A segment's share of its shot bar: its denoising steps plus one unit for encoding and
/// upload, so a bar reaches 100% only when the segment is in the store.
fn units_of(steps: u32) -> u64 {
    u64::from(steps.max(1)) + 1
}

fn state_name(state: i32) -> &'static str {
    match pb::TaskState::try_from(state).unwrap_or(pb::TaskState::Unspecified) {
        pb::TaskState::Blocked => "waiting",
        pb::TaskState::Ready => "queued",
        pb::TaskState::Running => "rendering",
        pb::TaskState::Done => "done",
        pb::TaskState::Failed => "failed",
        pb::TaskState::Cancelled => "cancelled",
        pb::TaskState::Unspecified => "?",
    }
}

/// "reusing 9 of 12 segments from the segment cache", when any is reused.
pub fn reuse_line(status: &pb::SequenceStatus) -> Option<String> {
    let reused = status.segments.iter().filter(|s| s.reused).count();
    (reused > 0).then(|| {
        format!(
            "reusing {reused} of {} segments from the segment cache; rendering {}",
            status.segments.len(),
            status.segments.len() - reused
        )
    })
}

/// What a sequence's hosted clips cost: paid so far against the plan's estimate (`None`
/// when it has no hosted shot).
pub fn cost_line(status: &pb::SequenceStatus) -> Option<String> {
    (status.estimated_cost_usd > 0.0).then(|| {
        format!(
            "cost: ${:.2} paid of ${:.2} estimated (hosted clips)",
            status.cost_usd, status.estimated_cost_usd
        )
    })
}

impl ProgressView {
    pub fn new(status: &pb::SequenceStatus, quiet: bool) -> Self {
        let plain = !std::io::stderr().is_terminal();
        let target = if quiet || plain {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let multi = MultiProgress::with_draw_target(target);
        let shot_style =
            ProgressStyle::with_template("{prefix:>9} [{bar:30.cyan/blue}] {percent:>3}% {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        let shots = (0..status.shot_count)
            .map(|shot| {
                let steps: u64 = status
                    .segments
                    .iter()
                    .filter(|s| s.shot_index == shot)
                    .map(|s| units_of(s.steps))
                    .sum();
                let bar = multi.add(ProgressBar::new(steps.max(1)));
                bar.set_style(shot_style.clone());
                bar.set_prefix(format!("shot {}", shot + 1));
                bar
            })
            .collect();
        let total = multi.add(ProgressBar::new(TOTAL_UNITS));
        total.set_style(
            ProgressStyle::with_template(
                "{prefix:>9} [{bar:30.green/white}] {percent:>3}% {elapsed_precise} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        total.set_prefix("total");
        if plain && !quiet {
            eprintln!(
                "rendering {} ({} shots, {} segments, {:.1} s at {} fps, {}x{})",
                status.sequence_id,
                status.shot_count,
                status.segments.len(),
                status.duration_seconds,
                status.fps,
                status.width,
                status.height
            );
        }
        if !quiet && let Some(line) = reuse_line(status) {
            if plain {
                eprintln!("{line}");
            } else {
                let _ = multi.println(line);
            }
        }
        ProgressView {
            multi,
            shots,
            total,
            plain: plain && !quiet,
            bars: !quiet && !plain,
            last_state: HashMap::new(),
        }
    }

    pub fn update(&mut self, status: &pb::SequenceStatus) {
        let mut rendered_frames = 0.0;
        for (shot, bar) in self.shots.iter().enumerate() {
            let segments: Vec<&pb::SegmentStatus> = status
                .segments
                .iter()
                .filter(|s| s.shot_index as usize == shot)
                .collect();
            let mut position = 0;
            for segment in &segments {
                let steps = units_of(segment.steps);
                let done = if segment.state == pb::TaskState::Done as i32 {
                    steps
                } else {
                    u64::from(segment.step).min(steps)
                };
                position += done;
                if !segment.alternate {
                    rendered_frames += segment.timeline_frames as f64 * done as f64 / steps as f64;
                }
            }
            bar.set_position(position);
            let done = segments
                .iter()
                .filter(|s| s.state == pb::TaskState::Done as i32)
                .count();
            let running: Vec<&str> = segments
                .iter()
                .filter(|s| s.state == pb::TaskState::Running as i32)
                .map(|s| s.worker.as_str())
                .collect();
            let reused = segments.iter().filter(|s| s.reused).count();
            let reused = if reused > 0 {
                format!(" ({reused} reused)")
            } else {
                String::new()
            };
            bar.set_message(if running.is_empty() {
                format!("{done}/{} segments{reused}", segments.len())
            } else {
                format!(
                    "{done}/{} segments, rendering on {}",
                    segments.len(),
                    running.join(", ")
                )
            });
        }
        let stitch = status.stitch.clone().unwrap_or_default();
        let stitch_fraction = if stitch.state == pb::TaskState::Done as i32 {
            1.0
        } else if stitch.total > 0 {
            stitch.done as f64 / stitch.total as f64
        } else {
            0.0
        };
        let render_fraction = rendered_frames / (status.total_frames.max(1) as f64);
        let overall = render_fraction * (1.0 - STITCH_SHARE) + stitch_fraction * STITCH_SHARE;
        self.total
            .set_position((overall * TOTAL_UNITS as f64).round() as u64);
        if stitch.state == pb::TaskState::Running as i32 {
            self.total
                .set_message(format!("stitching {}/{} frames", stitch.done, stitch.total));
        }
        if self.plain {
            self.print_changes(status, &stitch);
        }
    }

    fn print_changes(&mut self, status: &pb::SequenceStatus, stitch: &pb::TaskStatus) {
        let done = status
            .segments
            .iter()
            .filter(|s| s.state == pb::TaskState::Done as i32)
            .count();
        for segment in &status.segments {
            if self
                .last_state
                .insert(segment.segment_id.clone(), segment.state)
                != Some(segment.state)
                && matches!(
                    pb::TaskState::try_from(segment.state),
                    Ok(pb::TaskState::Running | pb::TaskState::Done | pb::TaskState::Failed)
                )
            {
                let worker = if segment.worker.is_empty() {
                    String::new()
                } else {
                    format!(" on {}", segment.worker)
                };
                let error = if segment.error.is_empty() {
                    String::new()
                } else {
                    format!(": {}", segment.error)
                };
                let state = if segment.reused {
                    "reused from the cache"
                } else {
                    state_name(segment.state)
                };
                eprintln!(
                    "  segment {} {state}{worker} ({done}/{} done){error}",
                    segment.segment_id,
                    status.segments.len()
                );
            }
        }
        if self.last_state.insert("stitch".into(), stitch.state) != Some(stitch.state)
            && stitch.state != pb::TaskState::Blocked as i32
        {
            eprintln!("  stitch {}", state_name(stitch.state));
        }
    }

    /// A line on stderr that does not tear the bars (printed above them while they draw).
    pub fn note(&self, line: &str) {
        if self.bars {
            let _ = self.multi.println(line);
        } else {
            eprintln!("{line}");
        }
    }

    pub fn finish(&self) {
        for bar in &self.shots {
            bar.finish();
        }
        self.total.finish();
    }
}
