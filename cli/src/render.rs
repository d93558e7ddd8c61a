//! `reelfarm render` and `reelfarm bench render`: validate the spec, start the embedded
//! farm, submit over gRPC, follow the status stream, and copy the video out.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use reelfarm_common::blob::BlobStore;
use reelfarm_common::{pb, spec};
use reelfarm_core::farm::UNPLACEABLE_PREFIX;

use crate::embedded::EmbeddedFarm;
pub use crate::input::{InputError, check_output, load_catalog, load_spec};
use crate::outputs::{deliveries, retarget_timeline, write_atomically};
use crate::progress::ProgressView;
use crate::report::{Breakdown, breakdown};

pub struct RenderOptions {
    pub spec: PathBuf,
    /// `None` for benchmarks: the video stays in the work directory.
    pub output: Option<PathBuf>,
    pub workers: usize,
    pub steps: Option<u32>,
    pub weights: Option<PathBuf>,
    /// A catalog file adding models to the built-in ones (`--models`).
    pub models: Option<PathBuf>,
    /// The embedded farm's object store; `None`: the segment cache folder
    /// (`default_cache_dir`), or a temporary folder with `no_cache`.
    pub work_dir: Option<PathBuf>,
    /// Render every segment; nothing is read from or left in the segment cache.
    pub no_cache: bool,
    /// Takes of every shot that does not ask for its own (`--variants`).
    pub variants: Option<u32>,
    /// The work folder's size bound after a render (`--cache-max-gib`), in bytes.
    pub cache_max_bytes: u64,
    pub quiet: bool,
}

/// Where `reelfarm render` keeps segments for reuse: `$XDG_CACHE_HOME/reelfarm`, else
/// `~/.cache/reelfarm`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|path| path.is_absolute());
    let home = || std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache"));
    xdg.or_else(home).map(|base| base.join("reelfarm"))
}

pub struct RenderOutcome {
    pub status: pb::SequenceStatus,
    pub startup_s: f64,
    pub breakdown: Breakdown,
    pub output: Option<PathBuf>,
    pub report: Option<PathBuf>,
}

/// `out.mp4` → `out.report.json`.
pub fn report_path(output: &Path) -> PathBuf {
    crate::outputs::sibling(output, "report.json")
}

pub async fn render(options: RenderOptions) -> Result<RenderOutcome> {
    let catalog = Arc::new(load_catalog(options.models.as_deref())?);
    let mut sequence = load_spec(&options.spec, options.steps, Some(&catalog))?;
    if let Some(variants) = options.variants {
        if !(1..=reelfarm_common::sequence::MAX_VARIANTS).contains(&variants) {
            return Err(InputError(vec![format!(
                "--variants: must be within 1..={}, got {variants}",
                reelfarm_common::sequence::MAX_VARIANTS
            )])
            .into());
        }
        for shot in sequence.shots.iter_mut().filter(|shot| shot.variants == 1) {
            shot.variants = variants;
        }
    }
    if let Some(output) = &options.output {
        check_output(output)?;
    }
    if options.workers == 0 || options.workers > 64 {
        return Err(InputError(vec![format!(
            "--workers: must be between 1 and 64, got {}",
            options.workers
        )])
        .into());
    }
    let started = Instant::now();
    let runtimes = reelfarm_worker::runtimes::load_runtimes(&catalog, options.weights.as_deref())
        .map_err(|error| InputError(vec![error.to_string()]))?;
    // Every model a shot names must run here: a local one needs its weights, a hosted one
    // its API key (the embedded farm then calls it from an in-process hosted worker).
    let used = reelfarm_core::planner::shot_models(&sequence, &catalog)
        .map_err(|unknown| InputError(vec![format!("model: {unknown}")]))?;
    let mut hosted_ids: Vec<String> = Vec::new();
    for model in &used {
        if model.hosted.is_some() {
            if !hosted_ids.contains(&model.id) {
                hosted_ids.push(model.id.clone());
            }
        } else if !runtimes.iter().any(|runtime| runtime.id() == model.id) {
            return Err(InputError(vec![format!(
                "model {}: no weights configured on this machine; re-declare it in a catalog file \
                 given with --models, e.g. `[[model]]` `id = \"{}\"` `weights = \"/path/to/checkpoint\"` \
                 (README \"Running Wan 2.1\")",
                model.id, model.id
            )])
            .into());
        }
    }
    let hosted = if hosted_ids.is_empty() {
        Vec::new()
    } else {
        let only_used = reelfarm_models::Catalog::from_entries(
            used.iter()
                .filter(|model| hosted_ids.contains(&model.id))
                .map(|model| (*model).clone()),
        );
        reelfarm_worker::hosted::load_hosted(&only_used)
            .map_err(|error| InputError(vec![error.to_string()]))?
    };
    let temporary = tempfile::Builder::new()
        .prefix("reelfarm-")
        .tempdir()
        .context("creating a work directory")?;
    // The segment cache is the object store a later render starts with: by default it
    // outlives the render, in the user's cache folder.
    let cache_dir = match (&options.work_dir, options.no_cache) {
        (Some(_), _) | (None, true) => None,
        (None, false) => default_cache_dir(),
    };
    let work_dir = options
        .work_dir
        .clone()
        .or_else(|| cache_dir.clone())
        .unwrap_or_else(|| temporary.path().to_path_buf());
    let catalog = with_weights_digest(catalog, options.weights.as_deref())?;
    let farm =
        EmbeddedFarm::start_with_hosted(&work_dir, options.workers, catalog, runtimes, hosted)
            .await
            .with_context(|| format!("starting the embedded farm in {}", work_dir.display()))?;
    let startup_s = started.elapsed().as_secs_f64();

    let result = submit_and_follow(&farm, &sequence, options.no_cache, options.quiet).await;
    let stop = farm.stop_and_keep_store().await;
    let (status, store) = (result?, stop?);

    let window = (status.submitted_unix_s, status.finished_unix_s);
    let breakdown = breakdown(&status.phases, window);
    let (mut output, mut report) = (None, None);
    if let Some(path) = &options.output {
        for delivery in deliveries(&status.sequence_id, path) {
            let stored = store.path_of(&delivery.key)?;
            let bytes = std::fs::read(&stored).with_context(|| {
                format!("reading the {} at {}", delivery.what, stored.display())
            })?;
            let bytes = match delivery.kind {
                pb::OutputKind::Timeline => retarget_timeline(&bytes, path)?,
                _ => bytes,
            };
            write_atomically(&delivery.path, &bytes)?;
        }
        output = Some(path.clone());
        report = Some(report_path(path));
        if cache_dir.is_some() {
            // Delivered: only the segments stay in the cache folder.
            for delivery in deliveries(&status.sequence_id, path) {
                let _ = store.delete(&delivery.key).await;
            }
        }
    }
    if !options.no_cache {
        let root = crate::embedded::store_root(&work_dir);
        match crate::cache_prune::prune(&root, options.cache_max_bytes, &status.sequence_id) {
            Ok(pruned) if pruned.sequences > 0 && !options.quiet => eprintln!(
                "segment cache: removed the {} least recently used sequence(s), {} MiB, to stay within --cache-max-gib ({} MiB kept in {})",
                pruned.sequences,
                pruned.freed_bytes >> 20,
                pruned.kept_bytes >> 20,
                work_dir.display()
            ),
            Ok(_) => {}
            Err(error) => eprintln!(
                "segment cache: could not prune {}: {error}",
                work_dir.display()
            ),
        }
    }
    Ok(RenderOutcome {
        status,
        startup_s,
        breakdown,
        output,
        report,
    })
}

/// `--weights` replaces reelfarm-tiny's built-in weights: the cache must know them apart.
pub(crate) fn with_weights_digest(
    catalog: Arc<reelfarm_models::Catalog>,
    weights: Option<&Path>,
) -> Result<Arc<reelfarm_models::Catalog>> {
    let Some(path) = weights else {
        return Ok(catalog);
    };
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let digest = format!("sha256:{}", reelfarm_core::cache::sha256_hex(&bytes));
    let entries = catalog.entries().cloned().map(|mut entry| {
        if entry.id == reelfarm_models::catalog::REELFARM_TINY {
            entry.weights_digest = Some(digest.clone());
        }
        entry
    });
    Ok(Arc::new(reelfarm_models::Catalog::from_entries(entries)))
}

pub(crate) async fn submit_and_follow(
    farm: &EmbeddedFarm,
    sequence: &reelfarm_common::sequence::Sequence,
    no_cache: bool,
    quiet: bool,
) -> Result<pb::SequenceStatus> {
    let channel = tonic::transport::Endpoint::from_shared(farm.url.clone())?
        .connect()
        .await
        .context("connecting to the embedded scheduler")?;
    let mut client = reelfarm_common::leader::sequence_client(channel, farm.bearer.clone());
    let mut spec_pb = spec::sequence_to_pb(sequence);
    for shot in &mut spec_pb.shots {
        if let Some(png) = shot.reference_png.take() {
            let uploaded = crate::client::upload_reference(client.clone(), png.into())
                .await
                .map_err(|status| anyhow!("uploading a reference image: {}", status.message()))?;
            shot.reference_upload = Some(uploaded.into_inner().upload_id);
        }
    }
    let request = pb::SubmitSequenceRequest {
        spec: Some(spec_pb),
        idempotency_key: uuid::Uuid::new_v4().to_string(),
        no_cache,
        max_cost_usd: None,
    };
    let submitted = client
        .submit_sequence(request)
        .await
        .map_err(|status| anyhow!("submit: {}", status.message()))?
        .into_inner();
    let id = submitted.sequence_id;
    let mut view = ProgressView::new(&submitted.status.unwrap_or_default(), quiet);
    let mut stream = client
        .watch_sequence(pb::WatchSequenceRequest {
            sequence_id: id.clone(),
        })
        .await?
        .into_inner();
    let mut last = None;
    loop {
        tokio::select! {
            message = stream.message() => match message.map_err(|status| anyhow!("watching {id}: {}", status.message()))? {
                Some(status) => {
                    view.update(&status);
                    // The embedded pool never grows: a segment that fits no worker would wait forever.
                    if let Some(stuck) = status.segments.iter().find(|s| s.state == pb::TaskState::Ready as i32 && s.error.starts_with(UNPLACEABLE_PREFIX)) {
                        view.finish();
                        let _ = client.cancel_sequence(pb::CancelSequenceRequest { sequence_id: id.clone() }).await;
                        bail!("segment {} {}: lower the resolution or use fewer --workers (each gets an equal share of memory)", stuck.segment_id, stuck.error);
                    }
                    last = Some(status);
                }
                None => break,
            },
            _ = tokio::signal::ctrl_c() => {
                view.finish();
                let _ = client.cancel_sequence(pb::CancelSequenceRequest { sequence_id: id.clone() }).await;
                bail!("interrupted: sequence {id} cancelled");
            }
        }
    }
    view.finish();
    let status = last
        .ok_or_else(|| anyhow!("the scheduler ended the status stream of {id} without a status"))?;
    match pb::SequenceState::try_from(status.state) {
        Ok(pb::SequenceState::Succeeded) => Ok(status),
        Ok(pb::SequenceState::Failed) => bail!("sequence {id} failed: {}", status.error),
        Ok(pb::SequenceState::Cancelled) => bail!("sequence {id} was cancelled"),
        _ => bail!("the status stream of {id} ended before the sequence finished"),
    }
}

/// Copies beside the target, then renames: the output path never holds a partial video.
pub fn print_summary(outcome: &RenderOutcome) {
    let status = &outcome.status;
    let video_seconds = status.duration_seconds.max(1e-9);
    let breakdown = &outcome.breakdown;
    let rows = [
        (
            "sequence",
            format!("{} ({})", status.title, status.sequence_id),
        ),
        ("shots", status.shot_count.to_string()),
        (
            "segments",
            match status.segments.iter().filter(|s| s.reused).count() {
                0 => status.segments.len().to_string(),
                reused => format!(
                    "{} ({reused} reused from the segment cache, {} rendered)",
                    status.segments.len(),
                    status.segments.len() - reused
                ),
            },
        ),
        (
            "frames",
            format!(
                "{} ({:.2} s at {} fps, {}x{})",
                status.total_frames,
                status.duration_seconds,
                status.fps,
                status.width,
                status.height
            ),
        ),
        (
            "wall time",
            format!(
                "{:.1} s (+{:.1} s start-up)",
                breakdown.wall_s, outcome.startup_s
            ),
        ),
        (
            "model time",
            format!(
                "{:.1} s ({:.2} model s per video s)",
                breakdown.model_s,
                breakdown.model_s / video_seconds
            ),
        ),
        ("codec time", format!("{:.1} s", breakdown.codec_s)),
        (
            "farm overhead",
            format!(
                "{:.1} s ({:.1}% of wall)",
                breakdown.overhead_s,
                breakdown.overhead_fraction * 100.0
            ),
        ),
    ];
    println!();
    for (name, value) in rows {
        println!("  {name:<14} {value}");
    }
    if outcome.status.estimated_cost_usd > 0.0 {
        println!(
            "  {:<14} ${:.2} paid for hosted clips (${:.2} estimated)",
            "cost", outcome.status.cost_usd, outcome.status.estimated_cost_usd
        );
    }
    if let Some(output) = &outcome.output {
        println!("  {:<14} {}", "output", output.display());
    }
    if let Some(output) = &outcome.output {
        for delivery in deliveries(&outcome.status.sequence_id, output) {
            if delivery.kind != pb::OutputKind::Video {
                println!("  {:<14} {}", delivery.what, delivery.path.display());
            }
            if delivery.kind == pb::OutputKind::Report
                && let Some(line) = std::fs::read(&delivery.path)
                    .ok()
                    .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                    .and_then(|report| seam_qa_line(&report))
            {
                println!("  {:<14} {line}", "seam QA");
            }
        }
    }
}

/// What seam QA did, from the report: off, every join passed, or each join it rendered
/// again with its tries and the one kept.
pub fn seam_qa_line(report: &serde_json::Value) -> Option<String> {
    let qa = report.get("seam_qa")?;
    if qa["enabled"] != true {
        return Some("off (on by default for the final pass; `seam_qa: true` in the spec)".into());
    }
    let tries = qa["tries"].as_array()?;
    if tries.is_empty() {
        return Some("every continuity join passed on its first render".into());
    }
    let mut joins: Vec<(&str, usize, Option<&serde_json::Value>)> = Vec::new();
    for tried in tries {
        let segment = tried["segment_id"].as_str().unwrap_or("?");
        match joins.iter_mut().find(|(id, _, _)| *id == segment) {
            Some(entry) => entry.1 += 1,
            None => joins.push((segment, 1, None)),
        }
        if tried["kept"] == true
            && let Some(entry) = joins.iter_mut().find(|(id, _, _)| *id == segment)
        {
            entry.2 = Some(tried);
        }
    }
    let parts: Vec<String> = joins
        .iter()
        .map(|(segment, count, kept)| {
            let kept = kept.map_or("none kept".to_string(), |kept| {
                format!(
                    "kept seed {} ({}, badness {:.2})",
                    kept["seed"],
                    if kept["passed"] == true {
                        "passes"
                    } else {
                        "best, still fails"
                    },
                    kept["badness"].as_f64().unwrap_or(f64::NAN)
                )
            });
            format!("join at {segment}: {count} tries, {kept}")
        })
        .collect();
    Some(format!("{} (report: seam_qa.tries)", parts.join("; ")))
}
