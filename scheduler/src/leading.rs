//! The leader's side of the scheduler: win the election, restore the farm from the state
//! store, make every transition durable before acting on it, and step down cleanly when
//! leadership ends, so clients and workers reconnect to whoever leads next.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use reelfarm_common::blob::BlobStore;
use reelfarm_common::tls::ServerTls;
use reelfarm_common::{pb, unix_now_s};
use reelfarm_models::Catalog;
use tokio::sync::{broadcast, mpsc, watch};
use tonic::Status;
use tracing::{info, warn};

use crate::Error;
use crate::authn::{AuthConfig, WorkerIdentities};
use crate::farm_telemetry;
use crate::state::{Leadership, MemoryState, StateStore};
use crate::throttle::{self, Throttle};
use reelfarm_core::farm::{Action, CheckpointPolicy, Farm, SequenceId, StallPolicy, WorkerId};
use reelfarm_core::records::{self, Durable, Settled, WorkerDoc};

pub struct SchedulerConfig {
    /// Where reference images go and where workers find segments.
    pub store: Arc<dyn BlobStore>,
    /// Where the farm's state lives; memory (a single scheduler) by default.
    pub state: Arc<dyn StateStore>,
    /// The URL clients and workers reach this scheduler at (`http://<listen address>` when
    /// unset); followers hand it out as the leader's address.
    pub advertise_url: Option<String>,
    pub max_attempts: u32,
    /// The models specs may name: the built-in catalog plus a `--models` file.
    pub catalog: Arc<Catalog>,
    /// How long a running task may go without progress before it is taken back.
    pub stall: StallPolicy,
    /// How often workers save a segment's sampling state (a lost attempt resumes from it).
    pub checkpoints: CheckpointPolicy,
    /// Finished sequences are deleted this long after they ended (`None`: kept).
    pub retention: Option<Duration>,
    /// Whether callers must present tokens, and the tokens configuration provides.
    pub auth: AuthConfig,
    /// TLS for both APIs (`None`: plaintext), and whether client certificates name workers.
    pub tls: Option<ServerTls>,
    /// What each principal may ask: calls a second, open streams.
    pub limits: throttle::Limits,
    /// How long an uploaded reference waits for the submission that names it.
    pub upload_ttl: Duration,
}

impl SchedulerConfig {
    pub fn new(store: Arc<dyn BlobStore>) -> Self {
        SchedulerConfig {
            store,
            state: Arc::new(MemoryState::new()),
            advertise_url: None,
            max_attempts: reelfarm_core::farm::DEFAULT_MAX_ATTEMPTS,
            catalog: Arc::new(Catalog::builtin()),
            stall: StallPolicy::default(),
            checkpoints: CheckpointPolicy::default(),
            retention: None,
            auth: AuthConfig::open(),
            tls: None,
            limits: throttle::Limits::default(),
            upload_ttl: Duration::from_secs(3600),
        }
    }
}

pub(crate) type CommandSender = mpsc::UnboundedSender<Result<pb::WorkerCommand, Status>>;

pub(crate) struct Lead {
    pub farm: Farm,
    pub leadership: Leadership,
    durable: Durable,
}

pub(crate) struct Shared {
    /// `Some` while this scheduler leads. Held across the durable write of each transition,
    /// so transitions reach the state store in the order they happened.
    pub lead: tokio::sync::Mutex<Option<Lead>>,
    pub state: Arc<dyn StateStore>,
    pub store: Arc<dyn BlobStore>,
    pub url: String,
    pub max_attempts: u32,
    pub catalog: Arc<Catalog>,
    pub stall: StallPolicy,
    pub checkpoints: CheckpointPolicy,
    pub retention: Option<Duration>,
    /// Registered but not yet streaming: a worker gets work only once it can receive it.
    pub pending_workers: Mutex<HashMap<WorkerId, pb::RegisterWorkerRequest>>,
    pub worker_streams: Mutex<HashMap<WorkerId, CommandSender>>,
    pub changes: broadcast::Sender<SequenceId>,
    /// The `sequence` span of every sequence this leader accepted, until it ends.
    pub sequence_spans: Mutex<farm_telemetry::SequenceSpans>,
    /// Bumped whenever this scheduler steps down or shuts down: open streams end, so their
    /// clients and workers reconnect to the leader.
    pub epoch: watch::Sender<u64>,
    /// One permit per open WatchSequence stream (`limits::MAX_WATCHERS`).
    pub watchers: Arc<tokio::sync::Semaphore>,
    pub auth: AuthConfig,
    /// The identity behind each worker id this leader knows.
    pub worker_identities: Mutex<WorkerIdentities>,
    /// Per-principal call rates and open streams.
    pub throttle: Arc<Throttle>,
    /// Unclaimed uploads older than this are swept.
    pub upload_ttl: Duration,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic under the lock already failed that request; the data itself stays usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub fn new(config: SchedulerConfig, url: String) -> Arc<Self> {
        let (changes, _) = broadcast::channel(1024);
        let (epoch, _) = watch::channel(0);
        Arc::new(Shared {
            lead: tokio::sync::Mutex::new(None),
            state: config.state,
            store: config.store,
            url,
            max_attempts: config.max_attempts,
            catalog: config.catalog,
            stall: config.stall,
            checkpoints: config.checkpoints,
            retention: config.retention,
            upload_ttl: config.upload_ttl,
            pending_workers: Mutex::new(HashMap::new()),
            worker_streams: Mutex::new(HashMap::new()),
            changes,
            sequence_spans: Mutex::new(HashMap::new()),
            epoch,
            watchers: Arc::new(tokio::sync::Semaphore::new(
                reelfarm_common::limits::MAX_WATCHERS,
            )),
            auth: config.auth,
            worker_identities: Mutex::new(WorkerIdentities::default()),
            throttle: Throttle::new(config.limits),
        })
    }

    pub async fn not_leader(&self) -> Error {
        match self.state.leader_url().await {
            Ok(Some(url)) if url != self.url => Error::NotLeader(Some(url)),
            _ => Error::NotLeader(None),
        }
    }

    /// Reads the farm; `NotLeader` on a follower.
    pub async fn read<T>(
        &self,
        reader: impl FnOnce(&Farm) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let guard = self.lead.lock().await;
        match guard.as_ref() {
            Some(lead) => reader(&lead.farm),
            None => {
                drop(guard);
                Err(self.not_leader().await)
            }
        }
    }

    pub async fn leadership(&self) -> Result<Leadership, Error> {
        let leadership = self
            .lead
            .lock()
            .await
            .as_ref()
            .map(|lead| lead.leadership.clone());
        match leadership {
            Some(leadership) => Ok(leadership),
            None => Err(self.not_leader().await),
        }
    }

    /// Runs one transition and dispatch, writes what changed to the state store, and only
    /// then sends worker commands and wakes watchers. A refused write means another
    /// scheduler leads: this one steps down and the caller gets `Unavailable`.
    pub async fn apply<T>(
        &self,
        transition: impl FnOnce(&mut Farm) -> Result<(T, Vec<Action>), Error>,
    ) -> Result<T, Error> {
        let mut guard = self.lead.lock().await;
        let Some(lead) = guard.as_mut() else {
            drop(guard);
            return Err(self.not_leader().await);
        };
        let (value, mut actions) = transition(&mut lead.farm)?;
        let placing = std::time::Instant::now();
        actions.extend(lead.farm.dispatch());
        reelfarm_common::metrics::scheduler()
            .decision_seconds
            .record(placing.elapsed().as_secs_f64(), &[]);
        let Settled {
            events,
            changed,
            writes,
        } = lead.durable.settle(&mut lead.farm);
        if !writes.is_empty() {
            match self.state.commit(&lead.leadership, writes.clone()).await {
                Ok(revisions) => lead.durable.committed(writes, &revisions),
                Err(error) => {
                    warn!(%error, "a transition could not be made durable; stepping down");
                    let leadership = guard.take().map(|lead| lead.leadership);
                    drop(guard);
                    self.end_streams();
                    if let Some(leadership) = leadership {
                        self.state.resign(&leadership).await;
                    }
                    return Err(Error::Unavailable(format!(
                        "this scheduler stopped leading ({error}); retry against the new leader"
                    )));
                }
            }
        }
        // Only durable transitions count: a leader that failed to commit steps down and its
        // successor redoes (and records) the transition.
        farm_telemetry::record_events(
            events,
            &lead.farm,
            &mut lock(&self.sequence_spans),
            unix_now_s(),
        );
        drop(guard);
        for id in changed {
            let _no_watchers = self.changes.send(id);
        }
        self.send(actions);
        Ok(value)
    }

    /// Puts commands on worker streams. A closed stream needs nothing here: its watcher
    /// marks the worker disconnected, and the task waits for it to come back or expire.
    fn send(&self, actions: Vec<Action>) {
        let streams = lock(&self.worker_streams);
        for action in actions {
            let (worker, command) = match action {
                Action::DeleteObjects { keys } => {
                    self.delete_objects(keys);
                    continue;
                }
                Action::WriteObject { key, bytes } => {
                    self.write_object(key, bytes);
                    continue;
                }
                Action::Assign { worker, assignment } => {
                    let id = assignment
                        .assignment
                        .as_ref()
                        .map(|reference| reference.assignment_id.clone())
                        .unwrap_or_default();
                    info!(worker = %worker, assignment = %id, "assigned");
                    (worker, pb::worker_command::Command::Assign(*assignment))
                }
                Action::Cancel {
                    worker,
                    assignment,
                    discard,
                } => {
                    info!(worker = %worker, assignment = %assignment.assignment_id, "cancel sent");
                    (
                        worker,
                        pb::worker_command::Command::Cancel(pb::CancelAssignment {
                            assignment: Some(assignment),
                            discard_remote_job: discard,
                        }),
                    )
                }
            };
            let sent = streams.get(&worker).is_some_and(|stream| {
                stream
                    .send(Ok(pb::WorkerCommand {
                        command: Some(command),
                    }))
                    .is_ok()
            });
            if !sent {
                warn!(worker = %worker, "worker unreachable; its command waits for it to reconnect or expire");
            }
        }
    }

    /// Deletes objects nothing reads any more (superseded attempts), in the background: a
    /// failed delete leaves garbage, never a wrong result.
    fn delete_objects(&self, keys: Vec<String>) {
        let store = self.store.clone();
        tokio::spawn(async move {
            for key in keys {
                if let Err(error) = store.delete(&key).await {
                    warn!(%key, %error, "could not delete a superseded object");
                }
            }
        });
    }

    /// Writes a segment cache entry in the background: a failed write loses a later reuse,
    /// never a result.
    fn write_object(&self, key: String, bytes: Vec<u8>) {
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(error) = store.put(&key, bytes.into()).await {
                warn!(%key, %error, "could not write a segment cache entry");
            }
        });
    }

    /// Ends every open stream so workers and watchers reconnect (to the next leader).
    pub fn end_streams(&self) {
        lock(&self.worker_streams).clear();
        lock(&self.pending_workers).clear();
        lock(&self.worker_identities).clear();
        self.epoch.send_modify(|epoch| *epoch += 1);
    }

    /// A worker's lease ran out (or, in memory, its stream closed): unless it came back
    /// meanwhile, its running tasks go back to the queue.
    async fn expire_worker(&self, worker: String) {
        let result = self
            .apply(|farm| {
                if farm.worker(&worker).is_some_and(|record| record.connected) {
                    return Ok(((), Vec::new()));
                }
                let running = farm.running_assignments(&worker);
                if running > 0 {
                    warn!(worker = %worker, running, "worker lost; its running tasks go back to the queue");
                } else {
                    info!(worker = %worker, "worker gone");
                }
                Ok(((), farm.worker_lost(&worker, unix_now_s())))
            })
            .await;
        if result.is_ok() {
            lock(&self.worker_identities).forget(&worker);
        }
        if let Err(error) = result {
            warn!(worker = %worker, %error, "could not expire a worker");
        }
    }

    /// Restores the farm a previous leader left and starts acting on it.
    async fn take_lead(self: &Arc<Self>, leadership: Leadership) -> Result<(), Error> {
        let loaded = self.state.load(&leadership).await?;
        let records::Restored {
            mut farm,
            unreadable_workers,
            unreadable_tokens,
        } = records::restore(
            self.max_attempts,
            &self.catalog,
            &loaded.records,
            &loaded.workers,
        );
        for problem in unreadable_workers {
            warn!(%problem, "a worker record is unreadable; that worker registers again when it reconnects");
        }
        for problem in unreadable_tokens {
            warn!(%problem, "a token record is unreadable; that token no longer works");
        }
        for quarantined in farm.quarantined() {
            warn!(sequence = %quarantined.id, error = %quarantined.error, "sequence quarantined");
        }
        // Workers of the previous leader get one lease TTL to reconnect here.
        farm.set_stall_policy(self.stall);
        farm.set_checkpoint_policy(self.checkpoints);
        for (worker, record) in &loaded.workers {
            self.state
                .worker_online(&leadership, worker, record.clone(), false)
                .await?;
            // A worker keeps its identity across leaders: nobody else can take its id while
            // it reconnects.
            if let Ok(WorkerDoc {
                identity: Some(identity),
                ..
            }) = serde_json::from_slice::<WorkerDoc>(record)
            {
                let _ = lock(&self.worker_identities).bind(worker, &identity);
            }
        }
        let orphans = farm.orphaned_workers();
        let (sequences, workers) = (farm.sequence_count(), farm.worker_count());
        let durable = Durable::from_loaded(&loaded.records, &loaded.revisions);
        *self.lead.lock().await = Some(Lead {
            farm,
            leadership,
            durable,
        });
        info!(url = %self.url, sequences, workers, state = %self.state.describe(), "leading");
        farm_telemetry::started_leading(&self.catalog.ids());
        let mut expired = loaded.expired;
        let shared = self.clone();
        tokio::spawn(async move {
            while let Some(worker) = expired.recv().await {
                shared.expire_worker(worker).await;
            }
        });
        for worker in orphans {
            self.expire_worker(worker).await;
        }
        self.apply(|_| Ok(((), Vec::new()))).await
    }

    /// Gives up the lead; `shutting_down` marks the expected case, logged quietly.
    async fn step_down(&self, shutting_down: bool) {
        farm_telemetry::stopped_leading();
        if self.lead.lock().await.take().is_some() {
            if shutting_down {
                info!(url = %self.url, "stopped leading: shutting down");
            } else {
                warn!(url = %self.url, "no longer leading");
            }
        }
        self.end_streams();
    }
}

/// Resolves once the flag turns true (the guard `wait_for` returns must not live across
/// an await).
pub(crate) async fn stopped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|stop| *stop).await;
}

/// Campaigns, leads until leadership ends, and campaigns again, until `shutdown` turns true.
pub(crate) async fn lead_until_shutdown(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    farm_telemetry::stopped_leading();
    let gauges = tokio::spawn(record_gauges_while_running(shared.clone()));
    let stalls = tokio::spawn(take_back_stalled_while_running(shared.clone()));
    let retention = shared
        .retention
        .map(|retention| tokio::spawn(delete_expired_while_running(shared.clone(), retention)));
    let uploads = tokio::spawn(sweep_uploads_while_running(shared.clone()));
    lead_campaigns(shared, &mut shutdown).await;
    gauges.abort();
    stalls.abort();
    uploads.abort();
    if let Some(retention) = retention {
        retention.abort();
    }
}

/// Reads the farm into state gauges every two seconds while this scheduler leads.
async fn record_gauges_while_running(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        if let Some(lead) = shared.lead.lock().await.as_ref() {
            farm_telemetry::record_gauges(&lead.farm);
        }
    }
}

/// Once a second while this scheduler leads: running tasks past their progress deadline are
/// taken back from their workers and placed again.
async fn take_back_stalled_while_running(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let overdue = match shared.lead.lock().await.as_mut() {
            Some(lead) => lead.farm.check_stalls(unix_now_s()),
            None => false,
        };
        if !overdue {
            continue;
        }
        let taken = shared
            .apply(|farm| {
                let actions = farm.take_back_stalled(unix_now_s());
                for action in &actions {
                    if let Action::Cancel {
                        worker, assignment, ..
                    } = action
                    {
                        warn!(worker = %worker, assignment = %assignment.assignment_id, "no progress within the deadline; taken back and placed again");
                    }
                }
                Ok(((), actions))
            })
            .await;
        if let Err(error) = taken {
            warn!(%error, "could not take back stalled tasks");
        }
    }
}

/// While this scheduler leads: deletes finished sequences once `retention` has passed since
/// they ended (checked every minute, or more often for a short retention).
async fn delete_expired_while_running(shared: Arc<Shared>, retention: Duration) {
    let mut tick = tokio::time::interval(
        (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(60)),
    );
    loop {
        tick.tick().await;
        let cutoff = unix_now_s() - retention.as_secs_f64();
        let expired = match shared.lead.lock().await.as_ref() {
            Some(lead) => lead.farm.finished_before(cutoff),
            None => continue,
        };
        for id in expired {
            match shared
                .apply(|farm| Ok(((), farm.delete_sequence(&id)?)))
                .await
            {
                Ok(()) => info!(sequence = %id, "retention: finished sequence deleted"),
                Err(error) => warn!(sequence = %id, %error, "retention: could not delete"),
            }
        }
    }
}

/// While this scheduler leads: deletes reference uploads no submission claimed within the
/// upload TTL (checked every ten minutes, or more often for a short TTL).
async fn sweep_uploads_while_running(shared: Arc<Shared>) {
    let ttl = shared.upload_ttl;
    let mut tick =
        tokio::time::interval((ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(600)));
    loop {
        tick.tick().await;
        if shared.lead.lock().await.is_none() {
            continue;
        }
        match crate::uploads::sweep(&shared.store, unix_now_s() - ttl.as_secs_f64()).await {
            Ok(0) => {}
            Ok(deleted) => info!(deleted, "swept reference uploads no submission claimed"),
            Err(error) => warn!(%error, "could not sweep unclaimed reference uploads"),
        }
    }
}

async fn lead_campaigns(shared: Arc<Shared>, shutdown: &mut watch::Receiver<bool>) {
    loop {
        let campaign = tokio::select! {
            result = shared.state.campaign(&shared.url) => result,
            _ = stopped(shutdown) => return,
        };
        let leadership = match campaign {
            Ok(leadership) => leadership,
            Err(error) => {
                warn!(%error, "campaign failed; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stopped(shutdown) => return,
                }
            }
        };
        if let Err(error) = shared.take_lead(leadership.clone()).await {
            warn!(%error, "could not take the lead; resigning");
            shared.step_down(false).await;
            shared.state.resign(&leadership).await;
            continue;
        }
        tokio::select! {
            _ = leadership.wait_lost() => shared.step_down(false).await,
            _ = stopped(shutdown) => {
                shared.step_down(true).await;
                shared.state.resign(&leadership).await;
                return;
            }
        }
    }
}
