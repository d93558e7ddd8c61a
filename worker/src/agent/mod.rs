//! The worker's connection to the scheduler: find the leader, register the devices, take
//! commands from the stream, run each assignment, and report progress, results and failures
//! with the assignment's fencing token, following the leader through failovers. What to do
//! when is decided by `machine::Agent` (pure, unit-tested); this module does the I/O.

pub mod machine;

use reelfarm_common::trace_context;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reelfarm_common::blob::BlobStore;
use reelfarm_common::pb::worker_service_client::WorkerServiceClient;
use reelfarm_common::tls::ClientTls;
use reelfarm_common::{leader, pb};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tracing::{info, warn};

use self::machine::{Agent, Effect, Event};
use crate::Error;
use crate::hosted::{HostedModel, NotRecorded, RecordJob, run_hosted_segment};
use crate::inventory::Inventory;
use crate::memory_meter::PeakMeter;
use crate::segment::run_segment;
use crate::stitch_task::run_stitch;
use crate::task::{Progress, TaskFailure};
use reelfarm_models::ModelRuntime;

pub struct WorkerConfig {
    /// One scheduler URL (a Kubernetes Service) or every scheduler's; the worker follows
    /// the leader among them.
    pub scheduler_urls: Vec<String>,
    pub name: String,
    pub store: Arc<dyn BlobStore>,
    pub models: Vec<Arc<dyn ModelRuntime>>,
    /// Hosted models this worker calls (`--hosted`; its devices are then concurrency slots).
    pub hosted: Vec<Arc<HostedModel>>,
    pub inventory: Arc<Inventory>,
    /// How long to keep trying to reach a leading scheduler at start.
    pub connect_timeout: Duration,
    /// After SIGTERM, how long running tasks get to finish before they are handed back.
    pub drain_timeout: Duration,
    /// The token this worker presents (a farm that authenticates wants a worker token).
    pub bearer: leader::Bearer,
    /// What `https://` schedulers are trusted by, and the client certificate that makes
    /// this worker the worker id it names.
    pub tls: ClientTls,
}

/// How long one reconnect attempt looks for a leader before logging and trying again.
const RECONNECT_PATIENCE: Duration = Duration::from_secs(30);
/// How long a finished task keeps trying to hand in its result across scheduler failovers.
const DELIVERY_PATIENCE: Duration = Duration::from_secs(300);

/// How often fresh device readings go to the scheduler.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// How often the agent checks its deadlines (draining, handing back).
const TICK_INTERVAL: Duration = Duration::from_millis(200);
/// How long telling the leader that this worker drains may take.
const DRAIN_CALL_PATIENCE: Duration = Duration::from_secs(3);

/// What runs here, by assignment id.
type Running = Arc<Mutex<HashMap<String, RunningTask>>>;

struct RunningTask {
    cancel: Arc<AtomicBool>,
    /// Set with a cancel that discards the work (its sequence ended): a hosted segment then
    /// deletes its remote job.
    discard: Arc<AtomicBool>,
    device_index: u32,
    meter: Arc<PeakMeter>,
    /// What the scheduler reserved for it on its device (0 for stitches: not sent).
    reserved_bytes: u64,
}

/// The inventory's devices with what this worker's own tasks hold on each, for devices
/// (CPU, simulated) whose memory no driver reports.
fn read_devices(inventory: &Inventory, running: &Running) -> Vec<pb::Device> {
    let mut devices = inventory.devices();
    let tasks = lock(running);
    for device in devices.iter_mut().filter(|d| d.kind != "cuda") {
        device.memory_used_bytes = tasks
            .values()
            .filter(|task| task.device_index == device.index)
            .map(|task| task.meter.current_bytes())
            .sum();
        device.memory_free_bytes = device
            .memory_total_bytes
            .saturating_sub(device.memory_used_bytes);
    }
    devices
}

/// Bytes reserved for this worker's running tasks, by device index.
fn reserved_by_device(running: &Running) -> HashMap<u32, (u64, usize)> {
    let mut reserved: HashMap<u32, (u64, usize)> = HashMap::new();
    for task in lock(running).values() {
        let entry = reserved.entry(task.device_index).or_default();
        entry.0 += task.reserved_bytes;
        entry.1 += 1;
    }
    reserved
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The connection to the current leader, shared by the command loop and the reporters of
/// running tasks; whoever sees it break asks for a new one.
struct Link {
    endpoints: Vec<String>,
    current: tokio::sync::Mutex<Option<(u64, WorkerServiceClient<leader::Authed>)>>,
    /// The leader's channel, for the sequence API (draining itself).
    channel: Mutex<Option<Channel>>,
    generation: AtomicU64,
    bearer: leader::Bearer,
    tls: ClientTls,
}

impl Link {
    /// The leader's client, finding the leader again if the last one broke.
    async fn client(
        &self,
        timeout: Duration,
    ) -> Result<(u64, WorkerServiceClient<leader::Authed>), Error> {
        let mut current = self.current.lock().await;
        if let Some((generation, client)) = current.as_ref() {
            return Ok((*generation, client.clone()));
        }
        let (channel, url) = leader::connect_leader(&self.endpoints, &self.tls, timeout)
            .await
            .map_err(|error| Error::Unavailable(error.to_string()))?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        info!(scheduler = %url, "connected to the leading scheduler");
        *lock(&self.channel) = Some(channel.clone());
        let client = leader::worker_client(channel, self.bearer.clone());
        *current = Some((generation, client.clone()));
        Ok((generation, client))
    }

    async fn broken(&self, generation: u64) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            *current = None;
        }
    }
}

/// Registers and opens the command stream on the current leader.
async fn open_session(
    link: &Link,
    registration: pb::RegisterWorkerRequest,
) -> Result<(u64, tonic::Streaming<pb::WorkerCommand>), Error> {
    let (generation, mut client) = link.client(RECONNECT_PATIENCE).await?;
    let worker_id = registration.worker_id.clone();
    let opened = async {
        client.register(registration).await?;
        client
            .receive_commands(pb::ReceiveCommandsRequest { worker_id })
            .await
    }
    .await;
    match opened {
        Ok(stream) => Ok((generation, stream.into_inner())),
        Err(status) => {
            link.broken(generation).await;
            Err(Error::Unavailable(format!(
                "registering: {}",
                status.message()
            )))
        }
    }
}

/// Serves assignments until `shutdown` resolves and the agent has wound down. A lost
/// scheduler is not the end: the worker finds the leader again and registers with what it
/// still runs. The decisions are `machine::Agent`'s; `Driver` turns I/O into its events and
/// carries its effects out.
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    // A certified worker is the id its certificate names; otherwise a fresh one per run.
    let worker_id = config.tls.identity_name().unwrap_or_else(|| {
        format!(
            "{}-{}",
            config.name,
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        )
    });
    let link = Arc::new(Link {
        endpoints: config.scheduler_urls.clone(),
        current: tokio::sync::Mutex::new(None),
        channel: Mutex::new(None),
        generation: AtomicU64::new(0),
        bearer: config.bearer.clone(),
        tls: config.tls.clone(),
    });
    // At start a missing scheduler is an error; later it is a reconnect.
    link.client(config.connect_timeout).await?;
    let (ended, ended_tasks) = mpsc::unbounded_channel::<String>();
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick = tokio::time::interval(TICK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut driver = Driver {
        agent: Agent::new(config.drain_timeout),
        model_ids: config
            .models
            .iter()
            .map(|m| m.id().to_string())
            .chain(config.hosted.iter().map(|m| m.id.clone()))
            .collect(),
        models: Arc::new(config.models.clone()),
        config,
        worker_id,
        link,
        running: Arc::default(),
        handing_back: Arc::new(AtomicBool::new(false)),
        ended,
        ended_tasks,
        session: None,
        retry_at: None,
        shutdown_seen: false,
        registered_before: false,
    };
    tokio::pin!(shutdown);
    let mut effects: VecDeque<Effect> = driver.agent.start().into();
    loop {
        while let Some(effect) = effects.pop_front() {
            if let Some(event) = driver.carry_out(effect, &mut shutdown).await {
                effects.extend(driver.agent.handle(event, Instant::now()));
            }
        }
        if driver.agent.is_stopped() {
            return Ok(());
        }
        let event = driver
            .next_event(&mut shutdown, &mut heartbeat, &mut tick)
            .await;
        effects.extend(driver.agent.handle(event, Instant::now()));
    }
}

/// The agent with the worker's I/O around it.
struct Driver {
    agent: Agent,
    config: WorkerConfig,
    worker_id: String,
    link: Arc<Link>,
    running: Running,
    models: Arc<Vec<Arc<dyn ModelRuntime>>>,
    model_ids: Vec<String>,
    /// Set once the agent hands work back: cancelled tasks report themselves lost.
    handing_back: Arc<AtomicBool>,
    ended: mpsc::UnboundedSender<String>,
    ended_tasks: mpsc::UnboundedReceiver<String>,
    session: Option<(u64, tonic::Streaming<pb::WorkerCommand>)>,
    /// When to try opening a session again, after one failed.
    retry_at: Option<tokio::time::Instant>,
    shutdown_seen: bool,
    registered_before: bool,
}

impl Driver {
    /// Carries one effect out; opening a session answers with an event.
    async fn carry_out(
        &mut self,
        effect: Effect,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Option<Event> {
        match effect {
            Effect::OpenSession { running } => {
                let registration = pb::RegisterWorkerRequest {
                    name: self.config.name.clone(),
                    devices: self.devices(),
                    models: self.model_ids.clone(),
                    worker_id: self.worker_id.clone(),
                    running,
                };
                let opened = tokio::select! {
                    _ = shutdown.as_mut(), if !self.shutdown_seen => {
                        self.shutdown_seen = true;
                        return Some(Event::ShutdownRequested);
                    }
                    opened = open_session(&self.link, registration) => opened,
                };
                Some(match opened {
                    Ok(session) => {
                        self.session = Some(session);
                        if self.registered_before {
                            info!(worker = %self.worker_id, running = self.agent.running(), "registered again");
                        } else {
                            info!(worker = %self.worker_id, "worker ready");
                            self.registered_before = true;
                        }
                        Event::Connected
                    }
                    Err(error) => {
                        warn!(%error, "no scheduler to work for yet; retrying");
                        Event::ConnectFailed
                    }
                })
            }
            Effect::RetryAfter(delay) => {
                self.retry_at = Some(tokio::time::Instant::now() + delay);
                None
            }
            Effect::Start(assignment) => {
                // The agent starts only assignments with a fencing token.
                let task = register_task(&self.running, &assignment)?;
                let context = Context {
                    link: self.link.clone(),
                    store: self.config.store.clone(),
                    models: self.models.clone(),
                    hosted: self.config.hosted.clone(),
                    running: self.running.clone(),
                    devices: self.config.inventory.devices(),
                    handing_back: self.handing_back.clone(),
                    ended: self.ended.clone(),
                };
                tokio::spawn(execute(*assignment, task, context));
                None
            }
            Effect::CancelTask { assignment_id } => {
                if let Some(task) = lock(&self.running).get(&assignment_id) {
                    info!(assignment = %assignment_id, "cancelling");
                    task.cancel.store(true, Ordering::Relaxed);
                }
                None
            }
            Effect::SendHeartbeat => {
                let request = pb::HeartbeatRequest {
                    worker_id: self.worker_id.clone(),
                    devices: self.devices(),
                };
                // Best effort: a missed heartbeat only leaves older readings shown.
                if let Ok((_, mut client)) = self.link.client(Duration::from_secs(1)).await {
                    let _ = client.heartbeat(request).await;
                }
                None
            }
            Effect::DrainSelf => {
                info!(
                    worker = %self.worker_id,
                    running = self.agent.running(),
                    patience_s = self.config.drain_timeout.as_secs_f64(),
                    "shutting down: draining, running tasks finish first"
                );
                drain_self(&self.link, &self.worker_id).await;
                None
            }
            Effect::HandBack => {
                // What still runs goes back to the queue now rather than when this worker's
                // lease runs out.
                warn!(worker = %self.worker_id, running = self.agent.running(), "handing back unfinished tasks");
                self.handing_back.store(true, Ordering::Relaxed);
                for task in lock(&self.running).values() {
                    task.cancel.store(true, Ordering::Relaxed);
                }
                None
            }
            Effect::Stop => None,
        }
    }

    /// The devices with fresh readings, recorded as metrics on the way.
    fn devices(&self) -> Vec<pb::Device> {
        let devices = read_devices(&self.config.inventory, &self.running);
        crate::worker_metrics::record_devices(
            &self.config.name,
            &devices,
            &reserved_by_device(&self.running),
        );
        devices
    }

    /// Waits for the next thing that happens to the worker.
    async fn next_event(
        &mut self,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
        heartbeat: &mut tokio::time::Interval,
        tick: &mut tokio::time::Interval,
    ) -> Event {
        loop {
            let retry_at = self.retry_at;
            tokio::select! {
                _ = shutdown.as_mut(), if !self.shutdown_seen => {
                    self.shutdown_seen = true;
                    return Event::ShutdownRequested;
                }
                message = next_command(&mut self.session), if self.session.is_some() => {
                    match message {
                        Ok(Some(pb::WorkerCommand {
                            command: Some(pb::worker_command::Command::Assign(assignment)),
                        })) => return Event::Assign(Box::new(assignment)),
                        Ok(Some(pb::WorkerCommand {
                            command: Some(pb::worker_command::Command::Cancel(cancel)),
                        })) => {
                            if let Some(reference) = cancel.assignment {
                                if cancel.discard_remote_job
                                    && let Some(task) =
                                        lock(&self.running).get(&reference.assignment_id)
                                {
                                    task.discard.store(true, Ordering::Relaxed);
                                }
                                return Event::Cancel(reference);
                            }
                        }
                        Ok(Some(_)) => warn!("ignoring an empty command"),
                        Ok(None) | Err(_) => {
                            warn!(worker = %self.worker_id, "lost the scheduler's command stream; finding the leader again");
                            if let Some((generation, _)) = self.session.take() {
                                self.link.broken(generation).await;
                            }
                            return Event::StreamLost;
                        }
                    }
                }
                Some(assignment_id) = self.ended_tasks.recv() => {
                    return Event::TaskEnded { assignment_id };
                }
                _ = heartbeat.tick() => return Event::HeartbeatDue,
                _ = tick.tick() => return Event::Tick,
                _ = async move {
                    if let Some(at) = retry_at {
                        tokio::time::sleep_until(at).await;
                    }
                }, if retry_at.is_some() => {
                    self.retry_at = None;
                    return Event::RetryDue;
                }
            }
        }
    }
}

/// The next message on the open session's command stream.
async fn next_command(
    session: &mut Option<(u64, tonic::Streaming<pb::WorkerCommand>)>,
) -> Result<Option<pb::WorkerCommand>, tonic::Status> {
    match session.as_mut() {
        Some((_, stream)) => stream.message().await,
        None => std::future::pending().await,
    }
}

/// Asks the leader to place nothing more here (best effort: the stream closing after the
/// drain does the same).
async fn drain_self(link: &Link, worker_id: &str) {
    let Some(channel) = lock(&link.channel).clone() else {
        return;
    };
    let request = pb::DrainWorkerRequest {
        worker: worker_id.to_string(),
    };
    let mut client = leader::sequence_client(channel, link.bearer.clone());
    // Bounded: a hung call must not hold up the drain's own deadline.
    match tokio::time::timeout(DRAIN_CALL_PATIENCE, client.drain_worker(request)).await {
        Ok(Ok(_)) => {}
        Ok(Err(status)) => warn!(%status, "could not tell the scheduler this worker drains"),
        Err(_) => warn!("the scheduler did not answer the drain in time"),
    }
}

struct Context {
    /// Tells the agent a task is over (its id), once its result or failure is handed in.
    ended: mpsc::UnboundedSender<String>,
    link: Arc<Link>,
    store: Arc<dyn BlobStore>,
    models: Arc<Vec<Arc<dyn ModelRuntime>>>,
    hosted: Vec<Arc<HostedModel>>,
    running: Running,
    devices: Vec<pb::Device>,
    /// Set while the worker shuts down: a cancelled task is handed back, not failed.
    handing_back: Arc<AtomicBool>,
}

/// Puts a task on the books before it starts, so a cancel that follows at once finds it.
fn register_task(running: &Running, assignment: &pb::Assignment) -> Option<Registered> {
    let reference = assignment.assignment.clone()?;
    let cancel = Arc::new(AtomicBool::new(false));
    let discard = Arc::new(AtomicBool::new(false));
    let meter = Arc::new(PeakMeter::start());
    lock(running).insert(
        reference.assignment_id.clone(),
        RunningTask {
            cancel: cancel.clone(),
            discard: discard.clone(),
            device_index: assignment.device_index,
            meter: meter.clone(),
            reserved_bytes: match &assignment.task {
                Some(pb::assignment::Task::Segment(task)) => task.memory_estimate_bytes,
                _ => 0,
            },
        },
    );
    Some(Registered {
        reference,
        cancel,
        discard,
        meter,
    })
}

/// A task on the books: its fencing token, its cancel and discard flags, its memory meter.
struct Registered {
    reference: pb::AssignmentRef,
    cancel: Arc<AtomicBool>,
    discard: Arc<AtomicBool>,
    meter: Arc<PeakMeter>,
}

async fn execute(assignment: pb::Assignment, registered: Registered, context: Context) {
    let Registered {
        reference,
        cancel,
        discard,
        meter,
    } = registered;
    let segment_labels = match &assignment.task {
        Some(pb::assignment::Task::Segment(task)) => Some((
            crate::worker_metrics::model_labels(task),
            task.memory_estimate_bytes,
        )),
        _ => None,
    };
    let device = context
        .devices
        .iter()
        .find(|device| device.index == assignment.device_index)
        .cloned();
    let span = crate::worker_metrics::start_task_span(&assignment, &reference);
    let (sender, receiver) = mpsc::unbounded_channel();
    let reporter = tokio::spawn(forward_progress(
        receiver,
        context.link.clone(),
        reference.clone(),
        cancel.clone(),
    ));
    let progress = Progress::new(sender, cancel);

    let result = match assignment.task {
        Some(pb::assignment::Task::Segment(task)) => {
            let hosted = context.hosted.iter().find(|model| model.id == task.model);
            match context.models.iter().find(|model| model.id() == task.model) {
                _ if hosted.is_some() => run_hosted_segment(
                    task,
                    hosted.cloned().expect("matched"),
                    context.store.clone(),
                    progress,
                    record_job_via(context.link.clone(), reference.clone()),
                    discard,
                )
                .await
                .map(|done| {
                    (
                        done.segment.video_key,
                        done.segment.phases,
                        done.segment.objects,
                        0,
                        Vec::new(),
                        done.cost_usd,
                    )
                }),
                Some(model) => run_segment(task, model.clone(), context.store.clone(), progress)
                    .await
                    .map(|done| {
                        (
                            done.video_key,
                            done.phases,
                            done.objects,
                            done.resumed_from_step,
                            Vec::new(),
                            0.0,
                        )
                    }),
                None => Err(TaskFailure::invalid(format!(
                    "this worker has no model {:?}",
                    task.model
                ))),
            }
        }
        Some(pb::assignment::Task::Stitch(task)) => {
            run_stitch(task, context.store.clone(), progress)
                .await
                .map(|done| {
                    (
                        done.video_key,
                        done.phases,
                        done.objects,
                        0,
                        done.seams,
                        0.0,
                    )
                })
        }
        None => Err(TaskFailure::invalid("assignment without a task")),
    };
    let _ = reporter.await;
    // A hosted slot holds an API call, not a model: the process's heap peak (the other
    // slots' clips in it) is no measure of it, and must not teach placement a size.
    let hosted_slot = device
        .as_ref()
        .is_some_and(|device| device.kind == reelfarm_models::catalog::hosted::HOSTED_DEVICE_KIND);
    let peak_memory_bytes = if hosted_slot { 0 } else { meter.peak_bytes() };
    let result = result
        .and_then(|done| within_device_memory(device.as_ref(), peak_memory_bytes).map(|()| done));
    let traceparent = span.traceparent.clone();
    match result {
        Ok((output_key, phases, objects, resumed_from_step, seams, cost_usd)) => {
            crate::worker_metrics::task_done(segment_labels, &phases, peak_memory_bytes);
            span.finish(&phases, None);
            let request = pb::CompleteTaskRequest {
                assignment: Some(reference.clone()),
                output_key,
                phases: phases.0,
                peak_memory_bytes,
                objects,
                resumed_from_step,
                seams,
                cost_usd,
            };
            deliver(&context.link, &reference, "result", |mut client| {
                let mut request = tonic::Request::new(request.clone());
                trace_context::to_metadata(&mut request, &traceparent);
                async move { client.complete_task(request).await.map(|_| ()) }
            })
            .await;
        }
        Err(mut failure) => {
            if context.handing_back.load(Ordering::Relaxed) {
                failure = TaskFailure::new(
                    pb::FailureReason::WorkerLost,
                    "handed back: the worker shut down before it finished",
                );
            }
            span.finish(&crate::task::Phases::default(), Some(&failure.message));
            warn!(
                assignment = %reference.assignment_id,
                reason = ?failure.reason,
                message = %failure.message,
                trace_id = trace_context::trace_id(&traceparent),
                "task failed"
            );
            let request = pb::FailTaskRequest {
                assignment: Some(reference.clone()),
                reason: failure.reason as i32,
                message: reelfarm_common::limits::truncate(
                    &failure.message,
                    reelfarm_common::limits::MAX_MESSAGE_TEXT_BYTES,
                ),
                corrupt_keys: failure.corrupt_keys,
                remote_job_unusable: failure.remote_job_unusable,
            };
            deliver(&context.link, &reference, "failure", |mut client| {
                let mut request = tonic::Request::new(request.clone());
                trace_context::to_metadata(&mut request, &traceparent);
                async move { client.fail_task(request).await.map(|_| ()) }
            })
            .await;
        }
    }
    lock(&context.running).remove(&reference.assignment_id);
    let _agent_gone = context.ended.send(reference.assignment_id);
}

/// A device without a driver to fail allocations (the CPU's budget, a simulated GPU) runs
/// out of memory when the task's measured peak exceeds it: the task fails as out of memory,
/// as it would have on that GPU, so the scheduler's retry ladder and estimates see it.
fn within_device_memory(device: Option<&pb::Device>, peak_bytes: u64) -> Result<(), TaskFailure> {
    match device {
        Some(device) if device.kind != "cuda" && peak_bytes > device.memory_total_bytes => {
            Err(TaskFailure::new(
                pb::FailureReason::OutOfMemory,
                format!(
                    "measured peak {:.2} GiB exceeds {} ({:.2} GiB)",
                    peak_bytes as f64 / f64::from(1u32 << 30),
                    device.name,
                    device.memory_total_bytes as f64 / f64::from(1u32 << 30)
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// Hands a result to the leader, following it through failovers: the segment is already in
/// the object store, so giving up early would throw finished work away. A refusal (the
/// assignment is no longer current) is final: another attempt owns the segment now.
async fn deliver<F, Fut>(link: &Link, reference: &pb::AssignmentRef, what: &str, call: F)
where
    F: Fn(WorkerServiceClient<leader::Authed>) -> Fut,
    Fut: Future<Output = Result<(), tonic::Status>>,
{
    match call_leader(link, call).await {
        Ok(()) => {}
        Err(NotRecorded::Refused(message)) => {
            warn!(assignment = %reference.assignment_id, %message, "{what} not accepted")
        }
        Err(NotRecorded::Unanswered(last_error)) => {
            warn!(assignment = %reference.assignment_id, %last_error, "gave up handing in the {what}")
        }
    }
}

/// One call to whichever scheduler leads, following it through failovers for up to
/// `DELIVERY_PATIENCE`: `Refused` when the leader answers no, `Unanswered` when none
/// answers in time.
async fn call_leader<F, Fut>(link: &Link, call: F) -> Result<(), NotRecorded>
where
    F: Fn(WorkerServiceClient<leader::Authed>) -> Fut,
    Fut: Future<Output = Result<(), tonic::Status>>,
{
    let deadline = tokio::time::Instant::now() + DELIVERY_PATIENCE;
    loop {
        let last_error = match link.client(RECONNECT_PATIENCE).await {
            Ok((generation, client)) => match call(client).await {
                Ok(()) => return Ok(()),
                Err(status) if leader::is_transient(&status) => {
                    link.broken(generation).await;
                    status.message().to_string()
                }
                Err(status) => return Err(NotRecorded::Refused(status.message().to_string())),
            },
            Err(error) => error.to_string(),
        };
        if tokio::time::Instant::now() > deadline {
            return Err(NotRecorded::Unanswered(last_error));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Records a hosted segment's remote job with the leader (`call_leader`): a created job
/// must be recorded before it is polled.
fn record_job_via(link: Arc<Link>, reference: pb::AssignmentRef) -> RecordJob {
    Box::new(move |remote_job_id: String| {
        let link = link.clone();
        let request = pb::RecordRemoteJobRequest {
            assignment: Some(reference.clone()),
            remote_job_id,
        };
        Box::pin(async move {
            call_leader(&link, |mut client| {
                let request = request.clone();
                async move { client.record_remote_job(request).await.map(|_| ()) }
            })
            .await
        })
    })
}

/// Sends the newest progress, dropping stale updates; a `stop` answer cancels the task.
async fn forward_progress(
    mut receiver: mpsc::UnboundedReceiver<(u64, u64)>,
    link: Arc<Link>,
    reference: pb::AssignmentRef,
    cancel: Arc<AtomicBool>,
) {
    while let Some(mut latest) = receiver.recv().await {
        while let Ok(newer) = receiver.try_recv() {
            latest = newer;
        }
        // Progress is best effort: during a failover it is skipped, not queued.
        let Ok((generation, mut client)) = link.client(Duration::from_secs(1)).await else {
            continue;
        };
        let request = pb::ReportProgressRequest {
            assignment: Some(reference.clone()),
            done: latest.0,
            total: latest.1,
        };
        match client.report_progress(request).await {
            Ok(response) if response.get_ref().stop => cancel.store(true, Ordering::Relaxed),
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                cancel.store(true, Ordering::Relaxed)
            }
            Err(status) if leader::is_transient(&status) => link.broken(generation).await,
            _ => {}
        }
    }
}
