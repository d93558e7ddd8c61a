//! The client verbs of `reelfarm` (submit, watch, status, cancel, workers, download): gRPC
//! calls to a running scheduler that find the leader, and find it again when it changes.

mod admin;
mod download;
mod listing;
mod submit;
mod table;
mod versions;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use reelfarm_common::leader::{
    Authed, Bearer, connect_leader, is_transient, parse_endpoints, sequence_client,
};
use reelfarm_common::pb;
use reelfarm_common::pb::sequence_service_client::SequenceServiceClient;
use reelfarm_common::tls::ClientTls;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::input::InputError;
use crate::progress::ProgressView;
use listing::{format_seconds, sequence_state_name};
pub use submit::upload_reference;

/// Said with every error that means no scheduler answered.
const REACH_HINT: &str = "is `reelfarm scheduler` running? set --scheduler or REELFARM_SCHEDULER";
/// How long `watch` keeps looking for a leader after losing one: an election takes seconds,
/// a scheduler restarted by Kubernetes tens of seconds.
const LEADER_WAIT: Duration = Duration::from_secs(60);

/// Where the scheduler is: shared by every client verb.
#[derive(Args, Clone, Debug)]
pub struct SchedulerArgs {
    /// The scheduler's gRPC URL, or every scheduler's as a comma-separated list (the leader
    /// is found among them; a bare host:port gets http://).
    #[arg(
        long,
        value_name = "URL[,URL...]",
        env = "REELFARM_SCHEDULER",
        default_value = "http://127.0.0.1:7070"
    )]
    pub scheduler: String,
    /// Seconds to keep looking for a leading scheduler before giving up.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub connect_timeout: u64,
    /// A file holding your bearer token, for a farm that authenticates (default: the
    /// REELFARM_TOKEN environment variable; an admin makes tokens with `reelfarm token`).
    #[arg(long, value_name = "FILE", env = "REELFARM_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM CA to trust for an https:// scheduler (default: the system's roots).
    #[arg(long, value_name = "FILE", env = "REELFARM_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Submit a sequence spec to a running scheduler and print its id.
    #[command(long_about = "\
Submit a sequence spec to a running scheduler (`reelfarm scheduler`) and print the new
sequence's id alone on stdout, so scripts can capture it. The spec is validated here first:
bad input exits 2 naming the field, without contacting the scheduler. With --watch, follow the
render like `reelfarm watch` and exit 0 only if it succeeds.

The scheduler is --scheduler or REELFARM_SCHEDULER (default http://127.0.0.1:7070).

Example:
  id=$(reelfarm submit examples/sequences/coastline-60s.yaml)
  reelfarm submit examples/sequences/quick-3-shots.yaml --watch --scheduler http://farm:7070")]
    Submit(SubmitArgs),
    /// Make a new version of a sequence with one shot changed; the rest is reused.
    #[command(long_about = "\
Make a new version of a sequence with one shot changed: a new prompt (--prompt), a chosen
seed (--seed) or another take (--new-seed). The new version is a sequence of its own, with its
own video; every segment the change does not touch is reused from the segment cache, so only
the shot and the continuity chain after it render. The new id is printed on stdout; every
version stays listed (`reelfarm versions ID`) and downloadable.

SHOT is a shot's name, or its 0-based index as reports and contact sheets number shots.

Examples:
  reelfarm rerender seq-0123456789ab --shot 3 --prompt \"red dunes under a storm\" --watch
  reelfarm rerender seq-0123456789ab --shot opener --new-seed
  reelfarm rerender seq-0123456789ab --shot 0 --seed 42")]
    Rerender(versions::RerenderArgs),
    /// Put another take of a shot on the timeline: a new version, stitched without rendering
    /// that shot again.
    #[command(long_about = "\
A shot with `variants: N` in its spec (or every shot, with `submit --variants N`) renders N
takes, each from its own seed; the one on the timeline is take 0 unless the spec says
`take: K`, and the contact sheet shows the others in rows under it, labelled with their take
and seed. `pick` makes a new version with take K on the timeline: every take is already in
the segment cache, so the shot is not rendered again; only continuity after the shot (a next
shot that continues it) renders again, from the picked take's last frame.

Examples:
  reelfarm pick seq-0123456789ab --shot opener --take 2 --watch
  reelfarm pick seq-0123456789ab --shot 0 --take 1")]
    Pick(versions::PickArgs),
    /// Render the final pass of a draft: same seeds and composition, the final steps.
    #[command(long_about = "\
Render the final pass of a draft as a new version: the same shots, seeds and continuity, at
the model's final steps (reelfarm-tiny: 24, Wan 2.1: 50) instead of the draft's. With --watch,
follow it and then print every join of both passes side by side: the colour jump after
matching (ΔE00) against the segments' own frame-to-frame p95, and which joins improved.

Examples:
  reelfarm promote seq-0123456789ab --watch
  reelfarm versions seq-0123456789ab")]
    Promote(versions::PromoteArgs),
    /// List every version of a piece: what changed, what was reused, and their state.
    #[command(long_about = "\
List every version of a piece (the first submission, then each `rerender` and `promote`), in
order: version number, sequence id, state, segments reused from the cache, render time and
what changed. Each finished version's video downloads with `reelfarm download ID`.

Example:
  reelfarm versions seq-0123456789ab")]
    Versions(versions::VersionsArgs),
    /// Follow a sequence's progress until it finishes; exit 0 only if it succeeded.
    #[command(long_about = "\
Follow a sequence's progress (one bar per shot plus the total) until it finishes. When the
scheduler steps down or dies, find the new leader and keep following, for up to 60 s without
one. Exits 0 when the sequence succeeded, 1 with the reason when it failed or was cancelled.
Ctrl-C stops watching; the sequence keeps rendering.

The scheduler is --scheduler or REELFARM_SCHEDULER (default http://127.0.0.1:7070).

Example:
  reelfarm watch seq-0123456789ab")]
    Watch(WatchArgs),
    /// List the sequences, or show one sequence's segments.
    #[command(long_about = "\
Without ID, one line per sequence: id, title, state, segments done/total, video length, age
and render time. With ID, the sequence, its stitch and one line per segment: shot, state,
denoising step, worker, attempt and the last error.

The scheduler is --scheduler or REELFARM_SCHEDULER (default http://127.0.0.1:7070).

Examples:
  reelfarm status
  reelfarm status seq-0123456789ab")]
    Status(StatusArgs),
    /// Cancel a sequence and print its resulting state.
    #[command(long_about = "\
Cancel a sequence: running segments stop and nothing more is placed. Cancelling a sequence
that already finished changes nothing; the state it ended in is printed.

The scheduler is --scheduler or REELFARM_SCHEDULER (default http://127.0.0.1:7070).

Example:
  reelfarm cancel seq-0123456789ab")]
    Cancel(CancelArgs),
    /// Delete a finished sequence: its records and every object it left in the store.
    #[command(long_about = "\
Delete a finished (succeeded, failed or cancelled) sequence: the scheduler removes its records
from the state store and every object it left in the object store (reference images, every
attempt of every segment, the video, report, timeline and contact sheet). Download what you
want to keep first. A sequence still running must be cancelled first. Deleting cannot be
undone; `--retention-days` on the scheduler does the same for old sequences on its own.

The scheduler is --scheduler or REELFARM_SCHEDULER (default http://127.0.0.1:7070).

Example:
  reelfarm delete seq-0123456789ab")]
    Delete(CancelArgs),
    /// List the GPUs of every worker: class, memory, readings, resident models, what runs.
    #[command(long_about = "\
List every GPU of the workers registered with the scheduler, one row each: whether its worker
is connected (or reconnecting while its lease runs out), its class, its memory in GiB (total,
reserved by placement, used as the worker's last heartbeat read it), utilization, temperature
and power (NVML GPUs), the models that ran on it last and are likely still loaded, and the
segments running on it (several share a GPU while their reservations fit).

The scheduler is --scheduler or REELFARM_SCHEDULER (default http://127.0.0.1:7070).

Example:
  reelfarm workers")]
    Workers(WorkersArgs),
    /// Stop placing work on a worker; with --wait, until what it runs has finished.
    #[command(long_about = "\
Drain a worker before maintenance: the scheduler places nothing more on it, and what it runs
finishes there. WORKER is a name as `reelfarm workers` shows it (every worker of that name)
or a worker id. With --wait SECONDS, wait until nothing runs on it any more: exit 0 when it is
idle, 1 if segments still run when the time is up (a Kubernetes preStop hook uses this).
A worker that receives SIGTERM drains itself the same way.

The scheduler is --scheduler or REELFARM_SCHEDULER (default http://127.0.0.1:7070).

Examples:
  reelfarm drain gpu-node-7
  reelfarm drain gpu-node-7 --wait 600")]
    Drain(DrainArgs),
    /// Download a finished sequence's video, or its report with --report.
    #[command(long_about = "\
Download a finished sequence's video (or its JSON report with --report) through the scheduler,
so no object-store credentials are needed. The file is written beside the output as
OUTPUT.partial and renamed when complete, so OUTPUT never holds a partial video.

The scheduler is --scheduler or REELFARM_SCHEDULER (default http://127.0.0.1:7070).

Examples:
  reelfarm download seq-0123456789ab -o coastline.mp4
  reelfarm download seq-0123456789ab --report -o coastline.report.json")]
    Download(DownloadArgs),
    /// Let a drained worker take new work again.
    #[command(long_about = "\
Undo `reelfarm drain`: the scheduler places work on the worker again. WORKER is a name (every
worker of that name) or a worker id. Needs an operator or admin token on a farm that
authenticates.

Example:
  reelfarm undrain gpu-node-7")]
    Undrain(UndrainArgs),
    /// Create, list and revoke bearer tokens (admins).
    #[command(
        subcommand,
        long_about = "\
Bearer tokens for a farm that authenticates (the scheduler started with --admin-token-file).
Each token names a tenant and a role:
  submitter  submits sequences and sees its own tenant's
  operator   sees every tenant's sequences and the workers; drains and undrains workers
  admin      an operator who also manages tokens
  worker     a worker process (its own identity: give each worker its own token)
The secret is printed once, at creation; the farm stores only its SHA-256. Present a token
with REELFARM_TOKEN=<token> or --token-file FILE. The first admin token is the one in the
scheduler's --admin-token-file.

Examples:
  reelfarm token create --name ci-studio-a --tenant studio-a --role submitter
  reelfarm token list
  reelfarm token revoke ci-studio-a"
    )]
    Token(admin::TokenCommand),
}

#[derive(Args)]
pub struct UndrainArgs {
    /// A worker name (every worker of that name) or a worker id.
    worker: String,
    #[command(flatten)]
    scheduler: SchedulerArgs,
}

#[derive(Args)]
pub struct SubmitArgs {
    /// The sequence spec (YAML or JSON); see README "Sequence spec".
    spec: PathBuf,
    /// Follow the render until it finishes, like `reelfarm watch`.
    #[arg(long)]
    watch: bool,
    /// Resubmitting with the same key returns the original sequence instead of a new one
    /// (default: a fresh key, so every submit is new).
    #[arg(long, value_name = "KEY")]
    idempotency_key: Option<String>,
    /// Denoising steps per segment (default: the spec's, else the model's draft or final count).
    #[arg(long)]
    steps: Option<u32>,
    /// No progress bars with --watch.
    #[arg(short, long)]
    quiet: bool,
    /// Render N takes of every shot that does not set its own `variants` (1-8); pick one
    /// later with `reelfarm pick`.
    #[arg(long, value_name = "N")]
    variants: Option<u32>,
    /// Render every segment. By default a segment whose inputs (model and weights, prompt,
    /// negative, seed, size, frames, steps, guidance, the picture it starts from) match one
    /// this tenant rendered before is reused from the segment cache, not rendered again.
    #[arg(long)]
    no_cache: bool,
    /// Refuse the submission when its hosted clips (openai-videos models) are estimated to
    /// cost more than this many US dollars; the estimate is printed on submit.
    #[arg(long, value_name = "USD")]
    max_cost: Option<f64>,
    #[command(flatten)]
    scheduler: SchedulerArgs,
}

#[derive(Args)]
pub struct WatchArgs {
    /// The sequence id, as `reelfarm submit` printed it.
    id: String,
    /// No progress bars, only the outcome.
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    scheduler: SchedulerArgs,
}

#[derive(Args)]
pub struct StatusArgs {
    /// A sequence id: show its segments instead of the list of sequences.
    id: Option<String>,
    #[command(flatten)]
    scheduler: SchedulerArgs,
}

#[derive(Args)]
pub struct CancelArgs {
    /// The sequence id.
    id: String,
    #[command(flatten)]
    scheduler: SchedulerArgs,
}

#[derive(Args)]
pub struct WorkersArgs {
    #[command(flatten)]
    scheduler: SchedulerArgs,
}

#[derive(Args)]
pub struct DrainArgs {
    /// A worker name (every worker of that name) or a worker id.
    worker: String,
    /// Wait up to this many seconds for the running segments to finish.
    #[arg(long, value_name = "SECONDS")]
    wait: Option<f64>,
    #[command(flatten)]
    scheduler: SchedulerArgs,
}

#[derive(Args)]
pub struct DownloadArgs {
    /// The sequence id.
    id: String,
    /// Where to write the video (default: ID.mp4); its report, timeline and contact sheet go
    /// beside it (ID.report.json, ID.otio, ID.contact.png). With --report: the report's path.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Only the JSON report (frames, seam metrics per join, timings).
    #[arg(long)]
    report: bool,
    #[command(flatten)]
    scheduler: SchedulerArgs,
}

pub async fn run(command: ClientCommand) -> Result<()> {
    match command {
        ClientCommand::Submit(args) => submit::submit(args).await,
        ClientCommand::Rerender(args) => versions::rerender(args).await,
        ClientCommand::Promote(args) => versions::promote(args).await,
        ClientCommand::Pick(args) => versions::pick(args).await,
        ClientCommand::Versions(args) => versions::versions(args).await,
        ClientCommand::Watch(args) => {
            let mut client = Client::connect(&args.scheduler).await?;
            watch(&mut client, &args.id, args.quiet, None).await?;
            Ok(())
        }
        ClientCommand::Status(args) => {
            let mut client = Client::connect(&args.scheduler).await?;
            match args.id {
                Some(id) => listing::print_sequence(&mut client, &id).await,
                None => listing::print_sequences(&mut client).await,
            }
        }
        ClientCommand::Cancel(args) => {
            let mut client = Client::connect(&args.scheduler).await?;
            let id = args.id;
            let status = client
                .call(&format!("cancelling {id}"), |mut grpc| {
                    let request = pb::CancelSequenceRequest {
                        sequence_id: id.clone(),
                    };
                    async move { grpc.cancel_sequence(request).await }
                })
                .await?;
            println!("{id} {}", sequence_state_name(status.state));
            Ok(())
        }
        ClientCommand::Delete(args) => {
            let mut client = Client::connect(&args.scheduler).await?;
            let id = args.id;
            let deleted = client
                .call(&format!("deleting {id}"), |mut grpc| {
                    let request = pb::DeleteSequenceRequest {
                        sequence_id: id.clone(),
                    };
                    async move { grpc.delete_sequence(request).await }
                })
                .await?;
            println!(
                "{id} deleted: its records, and {} object key(s) removed from the store",
                deleted.objects
            );
            Ok(())
        }
        ClientCommand::Workers(args) => {
            let mut client = Client::connect(&args.scheduler).await?;
            listing::print_workers(&mut client).await
        }
        ClientCommand::Download(args) => download::download(args).await,
        ClientCommand::Drain(args) => drain(args).await,
        ClientCommand::Undrain(args) => admin::undrain(args).await,
        ClientCommand::Token(command) => admin::token(command).await,
    }
}

fn running_on(status: &pb::WorkerStatus) -> usize {
    status
        .devices
        .iter()
        .map(|device| device.running.len())
        .sum()
}

async fn drain(args: DrainArgs) -> Result<()> {
    let mut client = Client::connect(&args.scheduler).await?;
    let worker = args.worker.clone();
    let drained = client
        .call(&format!("draining {worker}"), |mut grpc| {
            let request = pb::DrainWorkerRequest {
                worker: worker.clone(),
            };
            async move { grpc.drain_worker(request).await }
        })
        .await?;
    let ids: Vec<String> = drained
        .workers
        .iter()
        .map(|w| w.worker_id.clone())
        .collect();
    for status in &drained.workers {
        println!(
            "{} ({}): draining, {} segment(s) running",
            status.worker_id,
            status.name,
            running_on(status)
        );
    }
    let Some(wait) = args.wait else {
        return Ok(());
    };
    let deadline = std::time::Instant::now() + Duration::from_secs_f64(wait.max(0.0));
    loop {
        let listed = client
            .call("listing workers", |mut grpc| async move {
                grpc.list_workers(pb::ListWorkersRequest {}).await
            })
            .await?;
        let running: usize = listed
            .workers
            .iter()
            .filter(|w| ids.contains(&w.worker_id))
            .map(running_on)
            .sum();
        if running == 0 {
            println!("{worker}: idle");
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!("{worker}: {running} segment(s) still running after {wait} s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A connection to the leading scheduler that knows how to find it again.
pub struct Client {
    endpoints: Vec<String>,
    connect_timeout: Duration,
    /// The leader's URL, named in errors.
    url: String,
    grpc: SequenceServiceClient<Authed>,
    bearer: Bearer,
    tls: ClientTls,
}

async fn find_leader(
    endpoints: &[String],
    tls: &ClientTls,
    wait: Duration,
) -> Result<(Channel, String)> {
    connect_leader(endpoints, tls, wait)
        .await
        .map_err(|error| match error {
            reelfarm_common::Error::Unavailable(reason) => anyhow!("{reason}; {REACH_HINT}"),
            other => anyhow!("finding the leading scheduler: {other}; {REACH_HINT}"),
        })
}

impl Client {
    pub async fn connect(args: &SchedulerArgs) -> Result<Self> {
        let endpoints = parse_endpoints(&args.scheduler).map_err(|error| {
            // The common message starts "scheduler: "; name the flag the user typed.
            let text = error.to_string();
            let text = text.strip_prefix("scheduler: ").unwrap_or(&text);
            InputError(vec![format!("--scheduler: {text}")])
        })?;
        let bearer = Bearer::from_file_or_env(args.token_file.as_deref())
            .map_err(|error| InputError(vec![error.to_string()]))?;
        let tls = ClientTls::load(args.tls_ca_file.as_deref(), None, None)
            .map_err(|error| InputError(vec![error.to_string()]))?;
        tls.check_urls(&endpoints)
            .map_err(|error| InputError(vec![format!("--{error}")]))?;
        let connect_timeout = Duration::from_secs(args.connect_timeout);
        let (channel, url) = find_leader(&endpoints, &tls, connect_timeout).await?;
        Ok(Client {
            endpoints,
            connect_timeout,
            url,
            grpc: sequence_client(channel, bearer.clone()),
            bearer,
            tls,
        })
    }

    async fn reconnect(&mut self, wait: Duration) -> Result<()> {
        let (channel, url) = find_leader(&self.endpoints, &self.tls, wait).await?;
        self.grpc = sequence_client(channel, self.bearer.clone());
        self.url = url;
        Ok(())
    }

    /// One call; when the scheduler is unreachable or no longer leads, finds the leader
    /// again and retries once.
    async fn call<T, F, Fut>(&mut self, what: &str, attempt: F) -> Result<T>
    where
        F: FnMut(SequenceServiceClient<Authed>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_status(attempt)
            .await?
            .map_err(|status| self.explain(what, &status))
    }

    /// Like `call`, but hands back the final status for the caller to judge; the outer
    /// error means no leader could be found for the retry.
    async fn call_status<T, F, Fut>(&mut self, mut attempt: F) -> Result<Result<T, Status>>
    where
        F: FnMut(SequenceServiceClient<Authed>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        match attempt(self.grpc.clone()).await {
            Ok(response) => return Ok(Ok(response.into_inner())),
            Err(status) if is_transient(&status) => {
                tracing::debug!(scheduler = %self.url, error = %status.message(), "retrying at the leader");
            }
            Err(status) => return Ok(Err(status)),
        }
        self.reconnect(self.connect_timeout).await?;
        Ok(attempt(self.grpc.clone())
            .await
            .map(tonic::Response::into_inner))
    }

    /// Turns a failed call into a sentence naming the scheduler and what to do.
    fn explain(&self, what: &str, status: &Status) -> anyhow::Error {
        let url = &self.url;
        let message = status.message();
        match status.code() {
            Code::NotFound if message.starts_with("worker") => {
                anyhow!("{what}: {message} at {url}; `reelfarm workers` lists the workers")
            }
            Code::NotFound => {
                anyhow!("{what}: {message} at {url}; `reelfarm status` lists the sequences")
            }
            code if is_transient(status) => {
                anyhow!(
                    "{what}: the scheduler at {url} is unavailable ({code:?}): {message}; {REACH_HINT}"
                )
            }
            Code::InvalidArgument | Code::FailedPrecondition => anyhow!("{what}: {message}"),
            Code::Unauthenticated => {
                anyhow!("{what}: the scheduler at {url} wants a token: {message}")
            }
            Code::PermissionDenied => anyhow!("{what}: not allowed: {message}"),
            code => anyhow!("{what}: the scheduler at {url} answered {code:?}: {message}"),
        }
    }
}

fn is_terminal_state(state: i32) -> bool {
    matches!(
        pb::SequenceState::try_from(state),
        Ok(pb::SequenceState::Succeeded | pb::SequenceState::Failed | pb::SequenceState::Cancelled)
    )
}

/// Follows a sequence to its end across scheduler failovers; `Err` unless it succeeded.
pub async fn watch(
    client: &mut Client,
    id: &str,
    quiet: bool,
    first: Option<pb::SequenceStatus>,
) -> Result<pb::SequenceStatus> {
    let started = Instant::now();
    let mut view = first
        .as_ref()
        .map(|status| ProgressView::new(status, quiet));
    if let (Some(view), Some(status)) = (&mut view, &first) {
        view.update(status);
    }
    // Around the whole loop, so Ctrl-C also works while looking for a new leader.
    let followed = tokio::select! {
        followed = follow(client, id, quiet, &mut view, first) => followed,
        _ = tokio::signal::ctrl_c() => Err(anyhow!(
            "interrupted: stopped watching {id}; it keeps rendering (`reelfarm cancel {id}` stops it)"
        )),
    };
    if let Some(view) = &view {
        view.finish();
    }
    let status = followed?;
    let elapsed = format_seconds(started.elapsed().as_secs_f64());
    match pb::SequenceState::try_from(status.state) {
        Ok(pb::SequenceState::Succeeded) => {
            eprintln!(
                "sequence {id} succeeded: {} frames ({:.1} s at {} fps, {}x{}), watched {elapsed}; \
                 `reelfarm download {id} -o out.mp4` fetches it",
                status.total_frames,
                status.duration_seconds,
                status.fps,
                status.width,
                status.height
            );
            Ok(status)
        }
        Ok(pb::SequenceState::Failed) => bail!("sequence {id} failed: {}", status.error),
        _ => bail!("sequence {id} was cancelled"),
    }
}

/// The watch loop: a stream per leader, until a terminal status arrives.
async fn follow(
    client: &mut Client,
    id: &str,
    quiet: bool,
    view: &mut Option<ProgressView>,
    mut last: Option<pb::SequenceStatus>,
) -> Result<pb::SequenceStatus> {
    let note = |view: &Option<ProgressView>, line: String| match view {
        Some(view) => view.note(&line),
        None => eprintln!("{line}"),
    };
    // Set while no scheduler streams to us; cleared by every status that arrives.
    let mut lost_since: Option<Instant> = None;
    loop {
        if let Some(status) = &last
            && is_terminal_state(status.state)
        {
            return Ok(status.clone());
        }
        let request = pb::WatchSequenceRequest {
            sequence_id: id.to_string(),
        };
        let opened = client.grpc.clone().watch_sequence(request).await;
        let why_lost = match opened {
            Err(status) if is_transient(&status) => status.message().to_string(),
            Err(status) => return Err(client.explain(&format!("watching {id}"), &status)),
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(status)) => {
                            lost_since = None;
                            view.get_or_insert_with(|| ProgressView::new(&status, quiet))
                                .update(&status);
                            let terminal = is_terminal_state(status.state);
                            last = Some(status);
                            if terminal {
                                break String::new();
                            }
                        }
                        Ok(None) => break "the stream ended early".to_string(),
                        Err(status) if is_transient(&status) => {
                            break status.message().to_string();
                        }
                        Err(status) => {
                            return Err(client.explain(&format!("watching {id}"), &status));
                        }
                    }
                }
            }
        };
        if last.as_ref().is_some_and(|s| is_terminal_state(s.state)) {
            continue;
        }
        let since = *lost_since.get_or_insert_with(Instant::now);
        // Whole seconds, so the error reads "within 59s".
        let left = Duration::from_secs(LEADER_WAIT.saturating_sub(since.elapsed()).as_secs());
        if left.is_zero() {
            bail!(
                "lost the scheduler while watching {id} and found no leader for {}s: {why_lost}; \
                 {REACH_HINT}; the sequence may still be rendering: `reelfarm watch {id}`",
                LEADER_WAIT.as_secs()
            );
        }
        note(
            view,
            format!(
                "lost the scheduler at {} ({why_lost}); looking for the leader",
                client.url
            ),
        );
        // A stream that ended cleanly on a scheduler that still answers would spin: pace it.
        tokio::time::sleep(Duration::from_millis(250)).await;
        client.reconnect(left).await.with_context(|| {
            format!("lost the scheduler while watching {id}; the sequence may still be rendering: `reelfarm watch {id}`")
        })?;
        note(view, format!("watching {id} at {}", client.url));
    }
}
