//! The embedded farm: a scheduler and N CPU workers in this process, talking real gRPC over
//! loopback, with a local object store in a work directory. `reelfarm render` runs on it and
//! so do the end-to-end tests.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use reelfarm_common::blob::{BlobStore, LocalBlobStore};
use reelfarm_common::leader::Bearer;
use reelfarm_models::{Catalog, ModelRuntime};
use reelfarm_scheduler::{AuthConfig, SchedulerConfig};
use reelfarm_worker::WorkerConfig;
use reelfarm_worker::inventory::{Inventory, cpu_device};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct EmbeddedFarm {
    pub url: String,
    /// The in-process farm authenticates like a distributed one, with tokens it made for
    /// itself: this one (an admin's) is the client's, as text (for a `reelfarm` client
    /// process) and ready to send.
    pub token: String,
    pub bearer: Bearer,
    pub store: Arc<LocalBlobStore>,
    shutdown_workers: watch::Sender<bool>,
    shutdown_scheduler: watch::Sender<bool>,
    scheduler: JoinHandle<Result<(), reelfarm_scheduler::Error>>,
    workers: Vec<JoinHandle<Result<(), reelfarm_worker::Error>>>,
}

/// A random token in the farm's format, for this process only.
fn ephemeral_token() -> String {
    let (id, secret) = reelfarm_scheduler::draw_token();
    reelfarm_core::auth::token_text(&id, &secret)
}

async fn signalled(mut receiver: watch::Receiver<bool>) {
    let _ = receiver.wait_for(|stop| *stop).await;
}

impl EmbeddedFarm {
    /// Starts the scheduler on a free loopback port and `workers` workers against it; the
    /// scheduler plans with `catalog`, every worker serves `models`.
    pub async fn start(
        work_dir: &Path,
        workers: usize,
        catalog: Arc<Catalog>,
        models: Vec<Arc<dyn ModelRuntime>>,
    ) -> Result<Self> {
        Self::start_with_hosted(work_dir, workers, catalog, models, Vec::new()).await
    }

    /// `start`, plus one hosted worker calling `hosted` (its concurrency slots are the
    /// largest max_concurrent_jobs among them) when any is given.
    pub async fn start_with_hosted(
        work_dir: &Path,
        workers: usize,
        catalog: Arc<Catalog>,
        models: Vec<Arc<dyn ModelRuntime>>,
        hosted: Vec<Arc<reelfarm_worker::hosted::HostedModel>>,
    ) -> Result<Self> {
        let store = Arc::new(LocalBlobStore::new(store_root(work_dir))?);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a loopback port for the scheduler")?;
        let url = format!("http://{}", listener.local_addr()?);
        // Ephemeral tokens, never written anywhere: the same checks as a real farm, and
        // nothing for a new user to set up.
        let admin_token = ephemeral_token();
        let worker_token = ephemeral_token();
        let (shutdown_scheduler, scheduler_signal) = watch::channel(false);
        let blob_store: Arc<dyn BlobStore> = store.clone();
        let scheduler = tokio::spawn(reelfarm_scheduler::run(
            SchedulerConfig {
                catalog,
                auth: AuthConfig::tokens(Some(&admin_token), Some(&worker_token)),
                // Its workers live and die with the process (and its farm state with
                // them): nothing could ever resume from a checkpoint.
                checkpoints: reelfarm_core::farm::CheckpointPolicy {
                    every_steps: 0,
                    drafts: false,
                },
                ..SchedulerConfig::new(blob_store.clone())
            },
            listener,
            signalled(scheduler_signal),
        ));

        // The scheduler serves at once but leads a moment later: wait, so the first
        // request is not refused as "no leader".
        reelfarm_common::leader::connect_leader(
            std::slice::from_ref(&url),
            &Default::default(),
            Duration::from_secs(10),
        )
        .await
        .context("the embedded scheduler did not start leading")?;

        let worker_bearer = Bearer::new(&worker_token)?;
        let (shutdown_workers, worker_signal) = watch::channel(false);
        let share = 1.0 / workers.max(1) as f64;
        let workers = (0..workers.max(1))
            .map(|index| {
                let config = WorkerConfig {
                    scheduler_urls: vec![url.clone()],
                    name: format!("cpu{index}"),
                    store: blob_store.clone(),
                    models: models.clone(),
                    hosted: Vec::new(),
                    inventory: Arc::new(Inventory::Fixed(vec![cpu_device(share)])),
                    connect_timeout: Duration::from_secs(10),
                    // Shutting down an embedded farm stops its work at once.
                    drain_timeout: Duration::ZERO,
                    bearer: worker_bearer.clone(),
                    tls: Default::default(),
                };
                tokio::spawn(reelfarm_worker::run(
                    config,
                    signalled(worker_signal.clone()),
                ))
            })
            .collect::<Vec<_>>();
        let mut workers = workers;
        if !hosted.is_empty() {
            let slots = hosted
                .iter()
                .map(|model| model.api.spec().max_concurrent_jobs)
                .max()
                .unwrap_or(1);
            let config = WorkerConfig {
                scheduler_urls: vec![url.clone()],
                name: "hosted".into(),
                store: blob_store.clone(),
                models: Vec::new(),
                hosted,
                // Its stitching device shares the machine with the local workers.
                inventory: Arc::new(Inventory::Fixed(reelfarm_worker::hosted::devices(
                    slots, share,
                ))),
                connect_timeout: Duration::from_secs(10),
                drain_timeout: Duration::ZERO,
                bearer: worker_bearer.clone(),
                tls: Default::default(),
            };
            workers.push(tokio::spawn(reelfarm_worker::run(
                config,
                signalled(worker_signal.clone()),
            )));
        }
        Ok(EmbeddedFarm {
            url,
            bearer: Bearer::new(&admin_token)?,
            token: admin_token,
            store,
            shutdown_workers,
            shutdown_scheduler,
            scheduler,
            workers,
        })
    }

    /// `start` with the built-in catalog and its runtimes (reelfarm-tiny's shipped weights).
    pub async fn start_builtin(work_dir: &Path, workers: usize) -> Result<Self> {
        let catalog = Catalog::builtin();
        let models = reelfarm_worker::runtimes::load_runtimes(&catalog, None)?;
        Self::start(work_dir, workers, Arc::new(catalog), models).await
    }

    /// Stops the farm and hands back its object store, for copying results out.
    pub async fn stop_and_keep_store(self) -> Result<Arc<LocalBlobStore>> {
        let store = self.store.clone();
        self.stop().await?;
        Ok(store)
    }

    /// Stops workers, then the scheduler, and reports the first error any of them hit.
    pub async fn stop(self) -> Result<()> {
        let _ = self.shutdown_workers.send(true);
        for worker in self.workers {
            worker.await.context("worker task panicked")??;
        }
        let _ = self.shutdown_scheduler.send(true);
        self.scheduler.await.context("scheduler task panicked")??;
        Ok(())
    }
}

/// Where the embedded farm in `work_dir` keeps its objects (segments, cache entries).
pub fn store_root(work_dir: &std::path::Path) -> std::path::PathBuf {
    work_dir.join("objects")
}
