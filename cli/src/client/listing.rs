//! The client's listings: `reelfarm status` (all sequences, or one sequence's segments) and
//! `reelfarm workers`, as plain aligned columns.

use anyhow::Result;
use reelfarm_common::{pb, unix_now_s};

use super::{Client, table};

/// Every sequence the caller may see, page by page, and the farm's recent throughput.
pub(super) async fn all_sequences(
    client: &mut Client,
) -> Result<(Vec<pb::SequenceStatus>, Option<pb::Throughput>)> {
    let mut sequences = Vec::new();
    let mut throughput;
    let mut page_token = String::new();
    loop {
        let token = page_token.clone();
        let page = client
            .call("listing sequences", |mut grpc| {
                let request = pb::ListSequencesRequest {
                    page_size: 500,
                    page_token: token.clone(),
                };
                async move { grpc.list_sequences(request).await }
            })
            .await?;
        sequences.extend(page.sequences);
        throughput = page.throughput;
        if page.next_page_token.is_empty() {
            return Ok((sequences, throughput));
        }
        page_token = page.next_page_token;
    }
}

pub(super) async fn print_sequences(client: &mut Client) -> Result<()> {
    let (mut sequences, throughput) = all_sequences(client).await?;
    if sequences.is_empty() {
        println!(
            "no sequences at {}; `reelfarm submit SPEC` starts one",
            client.url
        );
        return Ok(());
    }
    sequences.sort_by(|a, b| a.submitted_unix_s.total_cmp(&b.submitted_unix_s));
    let now = unix_now_s();
    let rows = sequences
        .iter()
        .map(|status| {
            vec![
                status.sequence_id.clone(),
                status.title.clone(),
                sequence_state_name(status.state).to_string(),
                format!("{}/{}", segments_done(status), status.segments.len()),
                format!("{:.1} s", status.duration_seconds),
                age(status.submitted_unix_s, now),
                elapsed(status, now),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &[
                "ID", "TITLE", "STATE", "SEGMENTS", "DURATION", "AGE", "ELAPSED"
            ],
            rows
        )
    );
    if let Some(throughput) = &throughput {
        println!("{}", throughput_line(throughput));
    }
    Ok(())
}

/// The dashboard's headline figure: video-seconds rendered per GPU-hour over the last hour.
fn throughput_line(throughput: &pb::Throughput) -> String {
    let window = (throughput.window_seconds / 60.0).round();
    if throughput.device_seconds <= 0.0 {
        return format!("throughput: no segment finished in the last {window} min");
    }
    format!(
        "throughput: {:.0} video-seconds per GPU-hour over the last {window} min ({} segments, {:.1} s of video in {:.1} device-seconds)",
        throughput.video_seconds / throughput.device_seconds * 3600.0,
        throughput.segments,
        throughput.video_seconds,
        throughput.device_seconds,
    )
}

pub(super) async fn print_sequence(client: &mut Client, id: &str) -> Result<()> {
    let status = client
        .call(&format!("reading {id}"), |mut grpc| {
            let request = pb::GetSequenceRequest {
                sequence_id: id.to_string(),
            };
            async move { grpc.get_sequence(request).await }
        })
        .await?;
    let now = unix_now_s();
    println!(
        "{} {:?}: {}, {}/{} segments done, {} frames ({:.1} s at {} fps, {}x{}), submitted {} ago, elapsed {}",
        status.sequence_id,
        status.title,
        sequence_state_name(status.state),
        segments_done(&status),
        status.segments.len(),
        status.total_frames,
        status.duration_seconds,
        status.fps,
        status.width,
        status.height,
        age(status.submitted_unix_s, now),
        elapsed(&status, now),
    );
    if let Some(line) = crate::progress::reuse_line(&status) {
        println!(
            "{}",
            line.replacen("reusing", "reused", 1)
                .replacen("rendering", "rendered", 1)
        );
    }
    if let Some(stitch) = &status.stitch {
        let mut line = format!(
            "stitch: {}, {}/{} frames",
            task_state_name(stitch.state),
            stitch.done,
            stitch.total
        );
        if !stitch.worker.is_empty() {
            line.push_str(&format!(
                " on {} (attempt {})",
                stitch.worker, stitch.attempt
            ));
        }
        if !stitch.error.is_empty() {
            line.push_str(&format!(": {}", stitch.error));
        }
        println!("{line}");
    }
    if !status.error.is_empty() {
        println!("error: {}", status.error);
    }
    if let Some(line) = crate::progress::cost_line(&status) {
        println!("{line}");
    }
    println!();
    // Hosted segments show their model, billed clip and cost.
    let hosted = status
        .segments
        .iter()
        .any(|segment| segment.clip_seconds > 0);
    let rows = status
        .segments
        .iter()
        .map(|segment| {
            let mut row = vec![
                segment.segment_id.clone(),
                (segment.shot_index + 1).to_string(),
                if segment.reused {
                    "reused".to_string()
                } else {
                    task_state_name(segment.state).to_string()
                },
                format!("{}/{}", segment.step, segment.steps),
                if segment.worker.is_empty() {
                    "-".to_string()
                } else {
                    format!("{}/{}", segment.worker, segment.device_index)
                },
                if segment.resumed_from_step > 0 {
                    // Its accepted attempt picked up a lost attempt's checkpoint.
                    format!(
                        "{} from step {}",
                        segment.attempt, segment.resumed_from_step
                    )
                } else {
                    segment.attempt.to_string()
                },
                memory_cell(segment),
                or_dash(&segment.error),
            ];
            if hosted {
                row.insert(row.len() - 1, hosted_cell(segment));
            }
            row
        })
        .collect();
    let mut headers = vec![
        "SEGMENT",
        "SHOT",
        "STATE",
        "STEP",
        "WORKER/GPU",
        "ATTEMPT",
        "MIB EST/PEAK",
        "ERROR",
    ];
    if hosted {
        headers.insert(headers.len() - 1, "HOSTED CLIP / COST");
    }
    print!("{}", table::render(&headers, rows));
    Ok(())
}

pub(super) async fn print_workers(client: &mut Client) -> Result<()> {
    let listed = client
        .call("listing workers", |mut grpc| async move {
            grpc.list_workers(pb::ListWorkersRequest {}).await
        })
        .await?;
    if listed.workers.is_empty() {
        println!(
            "no workers registered at {}; start one with `reelfarm worker`",
            client.url
        );
        return Ok(());
    }
    // One row per GPU: what placement sees (class, memory reserved of total) and what the
    // last heartbeat read (memory used, utilization, temperature, power).
    let mut rows = Vec::new();
    for worker in &listed.workers {
        for device in &worker.devices {
            let readings = if device.utilization_percent > 0 || device.temperature_celsius > 0 {
                format!(
                    "{}% {}C {:.0}W",
                    device.utilization_percent,
                    device.temperature_celsius,
                    f64::from(device.power_milliwatts) / 1000.0
                )
            } else {
                String::new()
            };
            let running: Vec<&str> = device
                .running
                .iter()
                .map(|id| id.split_once('/').map_or(id.as_str(), |(_, task)| task))
                .collect();
            let class_label = format!("{} {}", device.kind, device.class)
                .trim()
                .to_string();
            rows.push(vec![
                format!("{}/{}", or_dash(&worker.name), device.index),
                worker.state.clone(),
                or_dash(if device.kind == device.class {
                    &device.class
                } else {
                    &class_label
                }),
                format!(
                    "{:.1}/{:.1}/{:.1}",
                    gib(device.memory_total_bytes),
                    gib(device.reserved_bytes),
                    gib(device.memory_used_bytes)
                ),
                or_dash(&readings),
                or_dash(&device.resident_models.join(", ")),
                or_dash(&running.join(", ")),
            ]);
        }
    }
    print!(
        "{}",
        table::render(
            &[
                "GPU",
                "STATE",
                "CLASS",
                "GIB TOTAL/RESERVED/USED",
                "UTIL TEMP POWER",
                "RESIDENT",
                "RUNNING"
            ],
            rows
        )
    );
    Ok(())
}

/// A hosted segment's model, billed clip length and what it cost so far (`-` for local).
fn hosted_cell(segment: &pb::SegmentStatus) -> String {
    if segment.clip_seconds == 0 {
        return "-".to_string();
    }
    format!(
        "{} {} s ${:.2}",
        segment.model, segment.clip_seconds, segment.cost_usd
    )
}

/// Reserved (or estimated) and measured peak memory, with the out-of-memory ladder's state.
fn memory_cell(segment: &pb::SegmentStatus) -> String {
    let mib = |bytes: u64| bytes as f64 / f64::from(1u32 << 20);
    let peak = if segment.peak_memory_bytes > 0 {
        format!("{:.0}", mib(segment.peak_memory_bytes))
    } else {
        "-".to_string()
    };
    let mut cell = format!("{:.0}/{peak}", mib(segment.memory_estimate_bytes));
    if segment.oom_count > 0 {
        cell.push_str(&format!(" oom×{}", segment.oom_count));
    }
    if segment.low_memory {
        cell.push_str(" low-mem");
    }
    cell
}

fn segments_done(status: &pb::SequenceStatus) -> usize {
    status
        .segments
        .iter()
        .filter(|segment| segment.state == pb::TaskState::Done as i32)
        .count()
}

pub(super) fn sequence_state_name(state: i32) -> &'static str {
    match pb::SequenceState::try_from(state).unwrap_or(pb::SequenceState::Unspecified) {
        pb::SequenceState::Queued => "queued",
        pb::SequenceState::Rendering => "rendering",
        pb::SequenceState::Stitching => "stitching",
        pb::SequenceState::Succeeded => "succeeded",
        pb::SequenceState::Failed => "failed",
        pb::SequenceState::Cancelled => "cancelled",
        pb::SequenceState::Unspecified => "?",
    }
}

fn task_state_name(state: i32) -> &'static str {
    match pb::TaskState::try_from(state).unwrap_or(pb::TaskState::Unspecified) {
        pb::TaskState::Blocked => "blocked",
        pb::TaskState::Ready => "ready",
        pb::TaskState::Running => "running",
        pb::TaskState::Done => "done",
        pb::TaskState::Failed => "failed",
        pb::TaskState::Cancelled => "cancelled",
        pb::TaskState::Unspecified => "?",
    }
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        text.to_string()
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}

/// `42s`, `3m05s`, `2h07m`: short enough for a table column.
pub(super) fn format_seconds(seconds: f64) -> String {
    let whole = seconds.max(0.0).round() as u64;
    match whole {
        0..60 => format!("{whole}s"),
        60..3600 => format!("{}m{:02}s", whole / 60, whole % 60),
        _ => format!("{}h{:02}m", whole / 3600, whole % 3600 / 60),
    }
}

fn age(submitted_unix_s: f64, now: f64) -> String {
    if submitted_unix_s <= 0.0 {
        return "-".to_string();
    }
    format_seconds(now - submitted_unix_s)
}

/// Render time so far, or in all once finished.
fn elapsed(status: &pb::SequenceStatus, now: f64) -> String {
    if status.submitted_unix_s <= 0.0 {
        return "-".to_string();
    }
    let end = if status.finished_unix_s > 0.0 {
        status.finished_unix_s
    } else {
        now
    };
    format_seconds(end - status.submitted_unix_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(format_seconds(0.4), "0s");
        assert_eq!(format_seconds(59.4), "59s");
        assert_eq!(format_seconds(185.0), "3m05s");
        assert_eq!(format_seconds(7620.0), "2h07m");
        assert_eq!(format_seconds(-3.0), "0s");
    }

    #[test]
    fn a_finished_sequence_shows_its_render_time_not_the_time_since() {
        let status = pb::SequenceStatus {
            submitted_unix_s: 1000.0,
            finished_unix_s: 1042.0,
            ..Default::default()
        };
        assert_eq!(elapsed(&status, 5000.0), "42s");
        assert_eq!(age(1000.0, 5000.0), "1h06m");
        assert_eq!(elapsed(&pb::SequenceStatus::default(), 5000.0), "-");
    }
}
