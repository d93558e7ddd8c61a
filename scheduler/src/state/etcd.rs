//! The distributed farm's state in etcd: records under a prefix (`/reelfarm/v1/` by
//! default), leadership through etcd's election API on a lease, and one lease per connected
//! worker whose expiry (a delete event) tells the leader that worker is gone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaderKey, PutOptions,
    ResignOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{LeaderToken, Leadership, Loaded, StateStore, Write};
use crate::Error;
use reelfarm_core::records::{self, INTENT, LEADER, WORKERS};

/// etcd refuses transactions with more operations than its `--max-txn-ops` (128 by default).
const MAX_TXN_OPS: usize = 120;

#[derive(Debug, Clone)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    /// Every key lives under it; `/reelfarm/v1/` unless several farms share one etcd.
    pub prefix: String,
    /// A leader that stops renewing loses leadership after this long.
    pub leader_ttl: Duration,
    /// A worker whose stream closed keeps its work this long, waiting for it to reconnect.
    pub worker_ttl: Duration,
    pub connect_timeout: Duration,
    /// The leader compacts etcd's history to the revision it had this long ago (`None`:
    /// never): keeps the store small while watchers can still resume across a short cut.
    pub compact_every: Option<Duration>,
    /// TLS to etcd (its CA, and a client certificate for `--client-cert-auth`); the
    /// endpoints are then `https://`.
    pub tls: Option<etcd_client::TlsOptions>,
}

impl EtcdSettings {
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdSettings {
            endpoints,
            prefix: "/reelfarm/v1/".into(),
            leader_ttl: Duration::from_secs(5),
            worker_ttl: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            compact_every: Some(Duration::from_secs(300)),
            tls: None,
        }
    }
}

/// TLS to etcd from PEM files: the CA that signed its server certificate (else the
/// system's roots) and a client certificate for `--client-cert-auth`. `None`: plaintext.
/// (etcd-client's `TlsOptions` are tonic's client settings, built the way a worker's are.)
pub fn etcd_tls(
    ca: Option<&std::path::Path>,
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
) -> Result<Option<etcd_client::TlsOptions>, Error> {
    let tls = reelfarm_common::tls::ClientTls::load_as(
        [ca, cert, key],
        ["--etcd-ca-file", "--etcd-cert-file", "--etcd-key-file"],
    )?;
    Ok(tls.configured().then(|| tls.config()))
}

pub struct EtcdState {
    client: Client,
    settings: EtcdSettings,
    /// Test harness fault point (`REELFARM_FAULT_ABORT_MID_COMMIT=N`): the process aborts
    /// after N transactions of a split commit (0: before its intent is recorded; 1: right
    /// after), as if killed mid-commit.
    abort_mid_commit: Option<usize>,
    /// Keep-alive tasks of connected workers' leases.
    keepers: Mutex<HashMap<String, JoinHandle<()>>>,
}

/// The elected key (its creation revision fences every write) and its lease.
pub struct EtcdLeader {
    key: LeaderKey,
    lease: i64,
    keeper: JoinHandle<()>,
}

impl Drop for EtcdLeader {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

fn etcd_error(endpoints: &[String], what: &str, error: etcd_client::Error) -> Error {
    Error::Unavailable(format!("etcd at {}: {what}: {error}", endpoints.join(",")))
}

fn seconds(duration: Duration) -> i64 {
    (duration.as_secs_f64().ceil() as i64).max(1)
}

/// Renews `lease` every third of `ttl`; sets `lost` once a renewal fails for longer than the
/// TTL (another scheduler may lead by then) or etcd says the lease is gone.
async fn keep_lease_alive(
    mut client: Client,
    lease: i64,
    ttl: Duration,
    lost: Option<watch::Sender<bool>>,
) {
    let interval = ttl / 3;
    let mut last_renewed = tokio::time::Instant::now();
    let mut channel = None;
    let mark_lost = |why: &str| {
        if let Some(lost) = &lost {
            warn!(lease, why, "leadership lost");
            let _ = lost.send(true);
        }
    };
    loop {
        let renewal = tokio::time::timeout(interval.max(Duration::from_millis(500)), async {
            if channel.is_none() {
                channel = Some(client.lease_keep_alive(lease).await?);
            }
            let (keeper, responses) = channel.as_mut().expect("opened above");
            keeper.keep_alive().await?;
            responses.message().await
        })
        .await;
        match renewal {
            Ok(Ok(Some(response))) if response.ttl() > 0 => {
                last_renewed = tokio::time::Instant::now();
            }
            Ok(Ok(Some(_))) => return mark_lost("the lease expired"),
            _ => {
                channel = None;
                if last_renewed.elapsed() >= ttl {
                    return mark_lost("could not renew the lease within its TTL");
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// Reports every worker whose record goes away (its lease ran out) while this scheduler
/// leads. The watch resumes from the next revision whenever its stream ends (an etcd restart,
/// a network cut); if etcd compacted that history meanwhile, it reads the workers afresh and
/// reports those that vanished.
async fn watch_worker_leases(
    mut client: Client,
    prefix: String,
    mut next_revision: i64,
    mut known: BTreeSet<String>,
    expired: mpsc::UnboundedSender<String>,
    mut lost: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(next_revision);
        let opened = tokio::select! {
            opened = client.watch(prefix.clone(), Some(options)) => opened,
            _ = crate::leading::stopped(&mut lost) => return,
        };
        let mut stream = match opened {
            Ok(stream) => stream,
            Err(error) => {
                warn!(%error, next_revision, "cannot watch worker leases; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = crate::leading::stopped(&mut lost) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                _ = crate::leading::stopped(&mut lost) => return,
            };
            let response = match message {
                Ok(Some(response)) => response,
                ended => {
                    warn!(
                        next_revision,
                        ?ended,
                        "the watch on worker leases ended; resuming"
                    );
                    break;
                }
            };
            backoff = Duration::from_millis(100);
            if response.canceled() {
                if response.compact_revision() > 0 {
                    match resync_workers(&mut client, &prefix, &mut known, &expired).await {
                        Ok(revision) => next_revision = revision + 1,
                        Err(error) => warn!(%error, "cannot re-read worker leases; retrying"),
                    }
                }
                break;
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                next_revision = next_revision.max(kv.mod_revision() + 1);
                let Some(worker) = kv.key_str().ok().and_then(|key| key.strip_prefix(&prefix))
                else {
                    continue;
                };
                if event.event_type() == EventType::Delete {
                    known.remove(worker);
                    if expired.send(worker.to_string()).is_err() {
                        return;
                    }
                } else {
                    known.insert(worker.to_string());
                }
            }
        }
    }
}

/// While this scheduler leads: every `every`, compacts etcd's history up to the revision
/// read at the previous round, so at least `every` of history always remains.
async fn compact_history(mut client: Client, every: Duration, mut lost: watch::Receiver<bool>) {
    let mut previous: Option<i64> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = crate::leading::stopped(&mut lost) => return,
        }
        let revision = match client.status().await {
            Ok(status) => status.header().map_or(0, |header| header.revision()),
            Err(error) => {
                warn!(%error, "cannot read etcd's revision for compaction");
                continue;
            }
        };
        if let Some(target) = previous.filter(|&target| target > 0) {
            match client.compact(target, None).await {
                Ok(_) => info!(revision = target, "etcd history compacted"),
                // Compacted already (by etcd's own auto-compaction): nothing to do.
                Err(error) if error.to_string().contains("compacted") => {}
                Err(error) => warn!(%error, revision = target, "etcd compaction failed"),
            }
        }
        previous = Some(revision);
    }
}

/// After a compaction cut the watch's history: the workers registered now; each one known
/// before and gone now is reported. Returns the revision read at.
async fn resync_workers(
    client: &mut Client,
    prefix: &str,
    known: &mut BTreeSet<String>,
    expired: &mpsc::UnboundedSender<String>,
) -> Result<i64, etcd_client::Error> {
    let response = client
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await?;
    let now: BTreeSet<String> = response
        .kvs()
        .iter()
        .filter_map(|kv| kv.key_str().ok()?.strip_prefix(prefix).map(str::to_string))
        .collect();
    for gone in known.difference(&now) {
        warn!(worker = %gone, "worker lease gone while the watch was cut off");
        let _ = expired.send(gone.clone());
    }
    *known = now;
    Ok(response.header().map_or(0, |header| header.revision()))
}

impl EtcdState {
    /// Connects and checks that etcd answers, with a clear error naming the endpoints.
    pub async fn connect(settings: EtcdSettings) -> Result<Self, Error> {
        if settings.endpoints.is_empty() {
            return Err(Error::InvalidArgument(
                "etcd: at least one endpoint is needed".into(),
            ));
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(settings.connect_timeout)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        if let Some(tls) = &settings.tls {
            if let Some(plain) = settings
                .endpoints
                .iter()
                .find(|url| !url.starts_with("https://"))
            {
                return Err(Error::InvalidArgument(format!(
                    "etcd: {plain} is plaintext but --etcd-ca-file/--etcd-cert-file are given; write https://"
                )));
            }
            options = options.with_tls(tls.clone());
        }
        let endpoints = settings.endpoints.clone();
        let unreachable = |detail: String| {
            Error::Unavailable(format!(
                "cannot reach etcd at {} within {:?}: {detail}; check --etcd and that etcd runs",
                endpoints.join(","),
                settings.connect_timeout
            ))
        };
        let mut client = tokio::time::timeout(
            settings.connect_timeout,
            Client::connect(&settings.endpoints, Some(options)),
        )
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|error| unreachable(error.to_string()))?;
        tokio::time::timeout(settings.connect_timeout, client.status())
            .await
            .map_err(|_| unreachable("timed out".into()))?
            .map_err(|error| unreachable(error.to_string()))?;
        let abort_mid_commit = std::env::var("REELFARM_FAULT_ABORT_MID_COMMIT")
            .ok()
            .and_then(|value| value.parse().ok());
        if let Some(after) = abort_mid_commit {
            warn!(
                after,
                "fault injection: this process aborts in the middle of a split commit"
            );
        }
        Ok(EtcdState {
            client,
            settings,
            abort_mid_commit,
            keepers: Mutex::new(HashMap::new()),
        })
    }

    fn key(&self, relative: &str) -> String {
        format!("{}{relative}", self.settings.prefix)
    }

    fn error(&self, what: &str, error: etcd_client::Error) -> Error {
        etcd_error(&self.settings.endpoints, what, error)
    }

    fn leader_of(leadership: &Leadership) -> Result<&EtcdLeader, Error> {
        match &leadership.token {
            LeaderToken::Etcd(leader) => Ok(leader),
            LeaderToken::Memory(_) => Err(Error::Internal(
                "memory leadership used with etcd state".into(),
            )),
        }
    }

    fn fence(leader: &EtcdLeader) -> Compare {
        Compare::create_revision(
            leader.key.key().to_vec(),
            CompareOp::Equal,
            leader.key.rev(),
        )
    }

    fn operation(&self, write: &Write) -> TxnOp {
        let key = self.key(&write.key);
        match &write.value {
            Some(value) => TxnOp::put(key, value.clone(), None),
            None => TxnOp::delete(key, None),
        }
    }

    fn fault_point(&self, transactions_done: usize) {
        if self.abort_mid_commit == Some(transactions_done) {
            warn!(transactions_done, "fault injection: aborting mid-commit");
            std::process::abort();
        }
    }

    /// One transaction under `compares`; its revision. A leader cut off from etcd must not
    /// hold every request: past the leader TTL another scheduler may lead anyway.
    async fn transact(&self, compares: Vec<Compare>, operations: Vec<TxnOp>) -> Result<i64, Error> {
        let mut client = self.client.clone();
        let response = tokio::time::timeout(
            self.settings.leader_ttl,
            client.txn(Txn::new().when(compares).and_then(operations)),
        )
        .await
        .map_err(|_| {
            Error::Unavailable(format!(
                "etcd at {} did not answer a transition within {:?}",
                self.settings.endpoints.join(","),
                self.settings.leader_ttl
            ))
        })?
        .map_err(|error| self.error("committing a transition", error))?;
        if !response.succeeded() {
            return Err(Error::FailedPrecondition(
                "etcd refused the transition: leadership lost or a record changed under us".into(),
            ));
        }
        Ok(response.header().map_or(0, |header| header.revision()))
    }

    /// Applies a recorded intent in transactions of at most `MAX_TXN_OPS` operations, the
    /// last one also deleting the intent; the revision each write got.
    async fn apply_intent(&self, leader: &EtcdLeader, writes: &[Write]) -> Result<Vec<i64>, Error> {
        let mut revisions = Vec::with_capacity(writes.len());
        let chunks: Vec<&[Write]> = writes.chunks(MAX_TXN_OPS - 1).collect();
        for (index, chunk) in chunks.iter().enumerate() {
            self.fault_point(index + 1);
            let mut operations: Vec<TxnOp> =
                chunk.iter().map(|write| self.operation(write)).collect();
            if index + 1 == chunks.len() {
                operations.push(TxnOp::delete(self.key(INTENT), None));
            }
            let revision = self.transact(vec![Self::fence(leader)], operations).await?;
            revisions.extend(std::iter::repeat_n(revision, chunk.len()));
        }
        Ok(revisions)
    }

    /// Finishes a split commit a previous leader recorded but did not finish applying.
    async fn roll_forward(&self, leader: &EtcdLeader) -> Result<(), Error> {
        let mut client = self.client.clone();
        let response = client
            .get(self.key(INTENT), None)
            .await
            .map_err(|error| self.error("reading a pending transition", error))?;
        let Some(kv) = response.kvs().first() else {
            return Ok(());
        };
        match records::decode_intent(kv.value()) {
            Ok(writes) => {
                warn!(
                    writes = writes.len(),
                    "finishing a transition the previous leader left half-applied"
                );
                self.apply_intent(leader, &writes).await?;
            }
            Err(error) => {
                // Applying part of it is impossible; the records it meant to change stay as
                // they were, and restore quarantines any sequence left inconsistent.
                warn!(%error, "a pending transition is unreadable; dropping it");
                self.transact(
                    vec![Self::fence(leader)],
                    vec![TxnOp::delete(self.key(INTENT), None)],
                )
                .await?;
            }
        }
        Ok(())
    }

    fn keepers(&self) -> std::sync::MutexGuard<'_, HashMap<String, JoinHandle<()>>> {
        self.keepers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl StateStore for EtcdState {
    fn describe(&self) -> String {
        format!(
            "etcd {} (prefix {})",
            self.settings.endpoints.join(","),
            self.settings.prefix
        )
    }

    async fn campaign(&self, url: &str) -> Result<Leadership, Error> {
        let mut client = self.client.clone();
        let ttl = self.settings.leader_ttl;
        let lease = client
            .lease_grant(seconds(ttl), None)
            .await
            .map_err(|error| self.error("granting the leader lease", error))?
            .id();
        let (lost_sender, lost) = watch::channel(false);
        let keeper = tokio::spawn(keep_lease_alive(
            client.clone(),
            lease,
            ttl,
            Some(lost_sender),
        ));
        let campaign = client.campaign(self.key(LEADER), url, lease).await;
        let key = match campaign {
            Ok(response) => response.leader().cloned(),
            Err(error) => {
                keeper.abort();
                return Err(self.error("campaigning for leadership", error));
            }
        };
        let Some(key) = key else {
            keeper.abort();
            return Err(Error::Unavailable(
                "etcd campaign returned no leader key".into(),
            ));
        };
        info!(url, lease, "elected leader");
        Ok(Leadership {
            token: LeaderToken::Etcd(Arc::new(EtcdLeader { key, lease, keeper })),
            lost,
        })
    }

    async fn resign(&self, leadership: &Leadership) {
        let Ok(leader) = Self::leader_of(leadership) else {
            return;
        };
        let mut client = self.client.clone();
        let _ = client
            .resign(Some(ResignOptions::new().with_leader(leader.key.clone())))
            .await;
        let _ = client.lease_revoke(leader.lease).await;
    }

    async fn leader_url(&self) -> Result<Option<String>, Error> {
        let mut client = self.client.clone();
        match client.leader(self.key(LEADER)).await {
            Ok(response) => Ok(response
                .kv()
                .and_then(|kv| kv.value_str().ok())
                .map(str::to_string)),
            // etcd answers "election: no leader" as an error.
            Err(etcd_client::Error::GRpcStatus(status))
                if status.message().contains("no leader") =>
            {
                Ok(None)
            }
            Err(error) => Err(self.error("reading the leader", error)),
        }
    }

    async fn load(&self, leadership: &Leadership) -> Result<Loaded, Error> {
        let leader = Self::leader_of(leadership)?;
        self.roll_forward(leader).await?;
        let mut client = self.client.clone();
        let response = client
            .get(
                self.settings.prefix.clone(),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(|error| self.error("loading state", error))?;
        let revision = response.header().map_or(0, |header| header.revision());
        let mut records = BTreeMap::new();
        let mut revisions = BTreeMap::new();
        let mut workers = BTreeMap::new();
        for kv in response.kvs() {
            let Some(relative) = kv
                .key_str()
                .ok()
                .and_then(|key| key.strip_prefix(&self.settings.prefix))
            else {
                continue;
            };
            if let Some(worker) = relative.strip_prefix(WORKERS) {
                workers.insert(worker.to_string(), kv.value().to_vec());
            } else if !relative.starts_with(LEADER) && relative != INTENT {
                records.insert(relative.to_string(), kv.value().to_vec());
                revisions.insert(relative.to_string(), kv.mod_revision());
            }
        }
        if let Some(every) = self.settings.compact_every {
            tokio::spawn(compact_history(
                self.client.clone(),
                every,
                leadership.lost.clone(),
            ));
        }
        let (sender, expired) = mpsc::unbounded_channel();
        tokio::spawn(watch_worker_leases(
            client,
            self.key(WORKERS),
            revision + 1,
            workers.keys().cloned().collect(),
            sender,
            leadership.lost.clone(),
        ));
        Ok(Loaded {
            records,
            revisions,
            workers,
            expired,
        })
    }

    async fn commit(&self, leadership: &Leadership, writes: Vec<Write>) -> Result<Vec<i64>, Error> {
        let leader = Self::leader_of(leadership)?;
        if writes.len() < MAX_TXN_OPS {
            let mut compares = vec![Self::fence(leader)];
            let mut operations = Vec::new();
            for write in &writes {
                let key = self.key(&write.key);
                compares.push(Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    write.expected_revision,
                ));
                operations.push(self.operation(write));
            }
            let revision = self.transact(compares, operations).await?;
            return Ok(vec![revision; writes.len()]);
        }
        // Too big for one transaction: record the whole transition first (the commit point),
        // then apply it in pieces. A leader that dies in between leaves the intent, and the
        // next leader finishes it before it reads anything (`roll_forward`). The pieces are
        // fenced by leadership; per-key revisions are checked for batches that fit one
        // transaction.
        self.fault_point(0);
        self.transact(
            vec![
                Self::fence(leader),
                Compare::version(self.key(INTENT), CompareOp::Equal, 0),
            ],
            vec![TxnOp::put(
                self.key(INTENT),
                records::encode_intent(&writes),
                None,
            )],
        )
        .await?;
        self.apply_intent(leader, &writes).await
    }

    async fn worker_online(
        &self,
        leadership: &Leadership,
        worker: &str,
        record: Vec<u8>,
        keep_alive: bool,
    ) -> Result<(), Error> {
        let leader = Self::leader_of(leadership)?;
        let mut client = self.client.clone();
        let ttl = self.settings.worker_ttl;
        let lease = client
            .lease_grant(seconds(ttl), None)
            .await
            .map_err(|error| self.error("granting a worker lease", error))?
            .id();
        let response = client
            .txn(
                Txn::new()
                    .when(vec![Self::fence(leader)])
                    .and_then(vec![TxnOp::put(
                        self.key(&format!("{WORKERS}{worker}")),
                        record,
                        Some(PutOptions::new().with_lease(lease)),
                    )]),
            )
            .await
            .map_err(|error| self.error("recording a worker", error))?;
        if !response.succeeded() {
            return Err(Error::FailedPrecondition("leadership lost".into()));
        }
        let keeper = keep_alive.then(|| tokio::spawn(keep_lease_alive(client, lease, ttl, None)));
        let previous = match keeper {
            Some(keeper) => self.keepers().insert(worker.to_string(), keeper),
            None => self.keepers().remove(worker),
        };
        if let Some(previous) = previous {
            previous.abort();
        }
        Ok(())
    }

    async fn worker_offline(&self, worker: &str) {
        if let Some(keeper) = self.keepers().remove(worker) {
            keeper.abort();
        }
    }

    fn worker_ttl(&self) -> Duration {
        self.settings.worker_ttl
    }
}
