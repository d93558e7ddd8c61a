//! Versions of a piece: `reelfarm rerender` (one shot changed), `reelfarm promote` (the final
//! pass of a draft) and `reelfarm versions` (every version of a lineage). Each new version is
//! a sequence of its own, with its own video, and reuses from the segment cache every segment
//! its change does not touch.

use anyhow::{Result, bail};
use clap::Args;
use reelfarm_common::pb;
use tonic::Code;

use super::listing::{format_seconds, sequence_state_name};
use super::{Client, SchedulerArgs, table, watch};
use crate::input::InputError;

/// Following the new version's render.
#[derive(Args)]
pub struct FollowArgs {
    /// Follow the render until it finishes, like `reelfarm watch`.
    #[arg(long)]
    watch: bool,
    /// No progress bars with --watch.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args)]
pub struct RerenderArgs {
    /// The sequence to revise (any version of it).
    id: String,
    /// The shot to change: its name, or its 0-based index as reports and contact sheets
    /// number shots ("shot 3").
    #[arg(long)]
    shot: String,
    /// The shot's new prompt.
    #[arg(long)]
    prompt: Option<String>,
    /// The shot's new seed.
    #[arg(long, conflicts_with = "new_seed")]
    seed: Option<u64>,
    /// A fresh random seed for the shot: another take of the same prompt.
    #[arg(long)]
    new_seed: bool,
    /// Render every segment anew instead of reusing the unchanged ones.
    #[arg(long)]
    no_cache: bool,
    #[command(flatten)]
    follow: FollowArgs,
    #[command(flatten)]
    scheduler: SchedulerArgs,
}

#[derive(Args)]
pub struct PromoteArgs {
    /// The draft to render as the final pass.
    id: String,
    /// With --watch, the joins of both passes are printed side by side at the end.
    #[command(flatten)]
    follow: FollowArgs,
    #[command(flatten)]
    scheduler: SchedulerArgs,
}

#[derive(Args)]
pub struct PickArgs {
    /// The sequence whose shot rendered several takes (`variants: N`).
    id: String,
    /// The shot: its name, or its 0-based index.
    #[arg(long)]
    shot: String,
    /// The take to put on the timeline (0-based, as the contact sheet and report number them).
    #[arg(long)]
    take: u32,
    #[command(flatten)]
    follow: FollowArgs,
    #[command(flatten)]
    scheduler: SchedulerArgs,
}

#[derive(Args)]
pub struct VersionsArgs {
    /// Any version of the piece.
    id: String,
    #[command(flatten)]
    scheduler: SchedulerArgs,
}

fn revise_request(
    id: &str,
    shot: &str,
    prompt: Option<String>,
    seed: Option<u64>,
    new_seed: bool,
    pass: &str,
    no_cache: bool,
) -> pb::ReviseSequenceRequest {
    pb::ReviseSequenceRequest {
        sequence_id: id.to_string(),
        shot: shot.to_string(),
        prompt,
        seed,
        new_seed,
        pass: pass.to_string(),
        no_cache,
        // Keyed, so the retry after a failover cannot make two versions.
        idempotency_key: uuid::Uuid::new_v4().to_string(),
        take: None,
    }
}

/// Sends one revision; prints the new id on stdout and what changed on stderr.
async fn revise(
    client: &mut Client,
    request: pb::ReviseSequenceRequest,
    quiet: bool,
    watching: bool,
) -> Result<(String, pb::SequenceStatus)> {
    let attempt = |mut grpc: super::SequenceServiceClient<super::Authed>| {
        let request = request.clone();
        async move { grpc.revise_sequence(request).await }
    };
    let revised = match client.call_status(attempt).await? {
        Ok(revised) => revised,
        Err(status) if status.code() == Code::InvalidArgument => {
            return Err(InputError(vec![status.message().to_string()]).into());
        }
        Err(status) => return Err(client.explain("revising", &status)),
    };
    let id = revised.sequence_id;
    let status = revised.status.unwrap_or_default();
    println!("{id}");
    if !quiet {
        eprintln!(
            "version {} of {} ({}), revising {}",
            status.version, status.lineage, status.change, status.revises
        );
        // With --watch the progress view says it.
        if !watching && let Some(line) = crate::progress::reuse_line(&status) {
            eprintln!("{line}");
        }
    }
    Ok((id, status))
}

pub(super) async fn rerender(args: RerenderArgs) -> Result<()> {
    if args.prompt.is_none() && args.seed.is_none() && !args.new_seed {
        return Err(InputError(vec![
            "say what changes: --prompt TEXT, --seed N or --new-seed".to_string(),
        ])
        .into());
    }
    let mut client = Client::connect(&args.scheduler).await?;
    let request = revise_request(
        &args.id,
        &args.shot,
        args.prompt,
        args.seed,
        args.new_seed,
        "",
        args.no_cache,
    );
    let (id, status) = revise(&mut client, request, args.follow.quiet, args.follow.watch).await?;
    if args.follow.watch {
        watch(&mut client, &id, args.follow.quiet, Some(status)).await?;
    }
    Ok(())
}

pub(super) async fn pick(args: PickArgs) -> Result<()> {
    let mut client = Client::connect(&args.scheduler).await?;
    let mut request = revise_request(&args.id, &args.shot, None, None, false, "", false);
    request.take = Some(args.take);
    let (id, status) = revise(&mut client, request, args.follow.quiet, args.follow.watch).await?;
    if args.follow.watch {
        watch(&mut client, &id, args.follow.quiet, Some(status)).await?;
    }
    Ok(())
}

pub(super) async fn promote(args: PromoteArgs) -> Result<()> {
    let mut client = Client::connect(&args.scheduler).await?;
    let request = revise_request(&args.id, "", None, None, false, "final", false);
    let (id, status) = revise(&mut client, request, args.follow.quiet, args.follow.watch).await?;
    if !args.follow.watch {
        return Ok(());
    }
    watch(&mut client, &id, args.follow.quiet, Some(status)).await?;
    let draft = read_report(&mut client, &args.id).await?;
    let final_pass = read_report(&mut client, &id).await?;
    print!("{}", compare_joins(&draft, &final_pass));
    Ok(())
}

pub(super) async fn versions(args: VersionsArgs) -> Result<()> {
    let mut client = Client::connect(&args.scheduler).await?;
    let id = args.id.clone();
    let this = client
        .call(&format!("reading {id}"), |mut grpc| {
            let request = pb::GetSequenceRequest {
                sequence_id: id.clone(),
            };
            async move { grpc.get_sequence(request).await }
        })
        .await?;
    let mut versions: Vec<pb::SequenceStatus> = super::listing::all_sequences(&mut client)
        .await?
        .0
        .into_iter()
        .filter(|status| status.lineage == this.lineage)
        .collect();
    versions.sort_by_key(|status| status.version);
    let rows = versions
        .iter()
        .map(|status| {
            let reused = status.segments.iter().filter(|s| s.reused).count();
            vec![
                status.version.to_string(),
                status.sequence_id.clone(),
                sequence_state_name(status.state).to_string(),
                format!("{reused}/{}", status.segments.len()),
                if status.finished_unix_s > 0.0 {
                    format_seconds(status.finished_unix_s - status.submitted_unix_s)
                } else {
                    "-".to_string()
                },
                if status.change.is_empty() {
                    "first version".to_string()
                } else {
                    status.change.clone()
                },
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &["VERSION", "ID", "STATE", "REUSED", "RENDER", "CHANGE"],
            rows
        )
    );
    println!("each finished version downloads with `reelfarm download ID -o FILE.mp4`");
    Ok(())
}

/// A finished sequence's report, through the scheduler.
async fn read_report(client: &mut Client, id: &str) -> Result<serde_json::Value> {
    let id = id.to_string();
    let bytes = client
        .call(&format!("reading the report of {id}"), |mut grpc| {
            let request = pb::ReadOutputRequest {
                sequence_id: id.clone(),
                kind: pb::OutputKind::Report as i32,
                offset: 0,
            };
            async move {
                let mut stream = grpc.read_output(request).await?.into_inner();
                let mut bytes = Vec::new();
                while let Some(chunk) = stream.message().await? {
                    bytes.extend_from_slice(&chunk.data);
                }
                Ok(tonic::Response::new(bytes))
            }
        })
        .await?;
    match serde_json::from_slice(&bytes) {
        Ok(report) => Ok(report),
        Err(error) => bail!("the report of {id} does not read: {error}"),
    }
}

/// The joins of a draft and its final pass side by side: the colour jump after matching
/// (`delta_e00_after`) against the segments' own frame-to-frame p95 (`within_p95`). Only
/// continuity joins are judged: across a cut or a dissolve the picture is meant to change.
pub fn compare_joins(draft: &serde_json::Value, final_pass: &serde_json::Value) -> String {
    let joins =
        |report: &serde_json::Value| report["joins"].as_array().cloned().unwrap_or_default();
    let (before, after) = (joins(draft), joins(final_pass));
    let cell = |join: &serde_json::Value| {
        let jump = join["delta_e00_after"].as_f64().unwrap_or(f64::NAN);
        match join["within_p95"].as_f64() {
            Some(p95) => format!("{jump:.2} (p95 {p95:.2})"),
            None => format!("{jump:.2}"),
        }
    };
    let (mut judged, mut improved) = (0, 0);
    let rows: Vec<Vec<String>> = before
        .iter()
        .zip(&after)
        .map(|(d, f)| {
            let kind = d["kind"].as_str().unwrap_or("?");
            let verdict = if kind != "continue" {
                "-"
            } else {
                judged += 1;
                let jump = |join: &serde_json::Value| join["delta_e00_after"].as_f64();
                match (jump(d), jump(f)) {
                    (Some(draft), Some(last)) if last < draft => {
                        improved += 1;
                        "improved"
                    }
                    (Some(draft), Some(last)) if last > draft => "worse",
                    _ => "same",
                }
            };
            vec![
                format!(
                    "{} at frame {}",
                    d["segment_id"].as_str().unwrap_or("?"),
                    d["at_frame"]
                ),
                kind.to_string(),
                cell(d),
                cell(f),
                verdict.to_string(),
            ]
        })
        .collect();
    let mut text = String::from(
        "\njoins: colour jump after matching (ΔE00), against the segments' own p95 where measured\n",
    );
    text.push_str(&table::render(
        &["JOIN", "KIND", "DRAFT", "FINAL", ""],
        rows,
    ));
    text.push_str(&format!(
        "{improved} of {judged} continuity joins improved in the final pass\n"
    ));
    text
}
