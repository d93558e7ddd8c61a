//! The long-running processes of the distributed farm: `reelfarm scheduler` and
//! `reelfarm worker`. Settings are layered and checked here, once, before anything starts,
//! so a misconfiguration is one clear line and a non-zero exit, never a hang.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use reelfarm_common::blob::{BlobStore, LocalBlobStore};
#[cfg(feature = "worker")]
use reelfarm_common::leader;
use reelfarm_common::s3::S3BlobStore;
#[cfg(feature = "worker")]
use reelfarm_common::tls::ClientTls;
use reelfarm_common::tls::ServerTls;
use reelfarm_core::farm::{CheckpointPolicy, StallPolicy};
use reelfarm_scheduler::SchedulerConfig;
use reelfarm_scheduler::state::{EtcdSettings, EtcdState, MemoryState, StateStore};
use tracing::warn;

use reelfarm_common::blob::MeteredBlobStore;
use reelfarm_common::telemetry::{self, Telemetry};

#[cfg(feature = "worker")]
use crate::config::WorkerArgs;
use crate::config::{
    SchedulerArgs, StoreArgs, StoreChoice, TelemetryArgs, read_config_file, seconds, store_choice,
};

/// The object store the settings name, with its traffic metered.
pub async fn open_store(args: StoreArgs) -> Result<Arc<dyn BlobStore>> {
    Ok(match store_choice(args)? {
        StoreChoice::S3(settings) => {
            Arc::new(MeteredBlobStore::new(S3BlobStore::connect(settings).await?))
        }
        StoreChoice::Local(dir) => Arc::new(MeteredBlobStore::new(LocalBlobStore::new(dir)?)),
    })
}

/// Installs logs, metrics and traces, and serves /metrics unless it is `off`.
async fn start_telemetry(
    args: TelemetryArgs,
    service_name: &str,
    default_metrics: &str,
) -> Result<Arc<Telemetry>> {
    let (metrics, settings) = args.resolve(service_name, default_metrics)?;
    let telemetry = Telemetry::install(&settings).map_err(anyhow::Error::msg)?;
    if let Some(address) = metrics {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| {
                format!(
                    "--metrics-listen {address}: cannot bind (another process on this port? give \
                 each process on one machine its own port, or `off`)"
                )
            })?;
        eprintln!(
            "{service_name}: metrics on http://{}/metrics",
            listener.local_addr()?
        );
        tokio::spawn(telemetry::serve_metrics(listener, telemetry.clone()));
    }
    Ok(telemetry)
}

#[cfg(feature = "worker")]
/// A Wan runtime renders on the worker's first CUDA device: refuse what would put it
/// elsewhere without saying so (several GPUs placed on as one, or a GPU node on the CPU).
fn check_wan_devices(
    catalog: &reelfarm_models::Catalog,
    inventory: &reelfarm_worker::inventory::Inventory,
    wan: &reelfarm_worker::runtimes::WanOptions,
) -> Result<()> {
    let served = catalog
        .entries()
        .filter(|entry| entry.backend == reelfarm_models::Backend::Wan && entry.weights.is_some())
        .map(|entry| entry.id.clone())
        .collect::<Vec<_>>();
    let gpus = match inventory {
        reelfarm_worker::inventory::Inventory::Nvml(_) => inventory.devices().len(),
        reelfarm_worker::inventory::Inventory::Fixed(_) => 0,
    };
    if served.is_empty() || gpus == 0 {
        return Ok(());
    }
    if gpus > 1 {
        anyhow::bail!(
            "{}: Wan renders on one GPU per worker, and this worker sees {gpus}; run one worker \
             per GPU (the chart's gpusPerPod: 1, or CUDA_VISIBLE_DEVICES=N reelfarm worker ...)",
            served.join(", ")
        );
    }
    if !wan.device.is_cuda() {
        anyhow::bail!(
            "{}: this worker sees an NVIDIA GPU but cannot render on it (built without \
             --features cuda, or CUDA failed to start); Wan would run on the CPU",
            served.join(", ")
        );
    }
    Ok(())
}

#[cfg(feature = "worker")]
/// `$XDG_CACHE_HOME/reelfarm/weights`, else `~/.cache/reelfarm/weights`, else a directory under
/// the system's temporary directory.
fn default_weights_cache() -> std::path::PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| std::path::PathBuf::from(home).join(".cache"))
        })
        .unwrap_or_else(std::env::temp_dir);
    base.join("reelfarm").join("weights")
}

/// Resolves on SIGINT or SIGTERM (what Kubernetes sends before killing a pod).
pub async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Who the scheduler lets in: tokens when an admin token file is given; nobody checked, with
/// a warning unless --no-auth says it is meant, otherwise.
fn scheduler_auth(args: &SchedulerArgs) -> Result<reelfarm_scheduler::AuthConfig> {
    let read = |file: &Option<PathBuf>, flag: &str| -> Result<Option<String>> {
        file.as_ref()
            .map(|path| {
                let token = std::fs::read_to_string(path)
                    .with_context(|| format!("--{flag}: cannot read {}", path.display()))?;
                if token.trim().len() < 16 {
                    anyhow::bail!(
                        "--{flag}: {} holds {} characters; a token needs at least 16 (`openssl rand -hex 32`)",
                        path.display(),
                        token.trim().len()
                    );
                }
                Ok(token.trim().to_string())
            })
            .transpose()
    };
    let admin = read(&args.admin_token_file, "admin-token-file")?;
    let workers = read(&args.worker_token_file, "worker-token-file")?;
    match (admin, args.no_auth.unwrap_or(false)) {
        (Some(_), true) => {
            anyhow::bail!("--no-auth and --admin-token-file contradict each other; drop one")
        }
        (Some(admin), false) => Ok(reelfarm_scheduler::AuthConfig::tokens(
            Some(&admin),
            workers.as_deref(),
        )),
        (None, no_auth) => {
            if workers.is_some() {
                anyhow::bail!(
                    "--worker-token-file needs --admin-token-file (tokens are on only with an admin token)"
                );
            }
            if !no_auth {
                warn!(
                    "no --admin-token-file: this scheduler authenticates nobody; anyone who reaches it can submit, cancel, download and drain (give --admin-token-file, or --no-auth if that is meant)"
                );
            }
            Ok(reelfarm_scheduler::AuthConfig::open())
        }
    }
}

pub async fn run_scheduler(
    flags: SchedulerArgs,
    store_flags: StoreArgs,
    telemetry_flags: TelemetryArgs,
    config: Option<PathBuf>,
) -> Result<()> {
    let file = read_config_file(config.as_deref())?;
    let telemetry = start_telemetry(
        telemetry_flags.or(file.telemetry),
        "reelfarm-scheduler",
        "0.0.0.0:9464",
    )
    .await?;
    let args = flags.or(file.scheduler);
    let listen = args.listen.as_deref().unwrap_or("0.0.0.0:7070");
    let listen: SocketAddr = listen
        .parse()
        .with_context(|| format!("--listen {listen:?}: expected an address like 0.0.0.0:7070"))?;
    let leader_ttl = seconds(args.leader_ttl, 5.0, "leader-ttl")?;
    let worker_ttl = seconds(args.worker_ttl, 10.0, "worker-ttl")?;
    let max_attempts = args.max_attempts.unwrap_or(3);
    if max_attempts == 0 {
        anyhow::bail!("--max-attempts: must be at least 1");
    }
    let stall_floor_seconds = match args.stall_timeout {
        Some(0.0) => 0.0,
        other => seconds(other, 600.0, "stall-timeout")?.as_secs_f64(),
    };
    let retention = match args.retention_days {
        None => None,
        Some(days) if days.is_finite() && days > 0.0 && days < 36_500.0 => {
            Some(std::time::Duration::from_secs_f64(days * 86_400.0))
        }
        Some(days) => anyhow::bail!("--retention-days: {days} is not a number of days above 0"),
    };
    let auth = scheduler_auth(&args)?;
    let rate = match args.rate_limit {
        None => 50.0,
        Some(rate) if rate.is_finite() && rate >= 0.0 => rate,
        Some(rate) => {
            anyhow::bail!("--rate-limit: {rate} is not a number of calls a second (0 turns it off)")
        }
    };
    let limits = reelfarm_scheduler::throttle::Limits {
        calls_per_second: rate,
        burst: (rate * 4.0).max(1.0),
        streams: match args.max_streams {
            Some(0) => anyhow::bail!("--max-streams: must be at least 1"),
            other => other.unwrap_or(64),
        },
    };
    let tls = ServerTls::load(
        args.tls_cert_file.as_deref(),
        args.tls_key_file.as_deref(),
        args.tls_client_ca_file.as_deref(),
    )?;
    let catalog = crate::input::load_catalog(args.models.as_deref())?;
    let store = open_store(store_flags.or(file.store)).await?;
    let state: Arc<dyn StateStore> = match args.etcd {
        Some(endpoints) if !endpoints.is_empty() => {
            let mut settings = EtcdSettings::new(endpoints);
            if let Some(prefix) = args.etcd_prefix {
                settings.prefix = prefix;
            }
            settings.leader_ttl = leader_ttl;
            settings.worker_ttl = worker_ttl;
            settings.compact_every = match args.etcd_compact_every {
                Some(0.0) => None,
                other => Some(seconds(other, 300.0, "etcd-compact-every")?),
            };
            settings.tls = reelfarm_scheduler::state::etcd_tls(
                args.etcd_ca_file.as_deref(),
                args.etcd_cert_file.as_deref(),
                args.etcd_key_file.as_deref(),
            )?;
            Arc::new(EtcdState::connect(settings).await?)
        }
        _ => {
            warn!(
                "no --etcd: state lives in this process only (one scheduler, lost when it exits)"
            );
            Arc::new(MemoryState::new())
        }
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("--listen {listen}: cannot bind"))?;
    let bound = listener.local_addr()?;
    let advertise_url = args.advertise_url.unwrap_or_else(|| {
        let host = if bound.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            bound.ip().to_string()
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{host}:{}", bound.port())
    });
    eprintln!(
        "reelfarm scheduler: serving on {bound} as {advertise_url} (state: {}, store: {})",
        state.describe(),
        store.describe()
    );
    let config = SchedulerConfig {
        store,
        state,
        advertise_url: Some(advertise_url),
        max_attempts,
        catalog: Arc::new(catalog),
        stall: StallPolicy {
            floor_seconds: stall_floor_seconds,
            ..StallPolicy::default()
        },
        checkpoints: CheckpointPolicy {
            every_steps: args
                .checkpoint_every
                .unwrap_or(CheckpointPolicy::default().every_steps),
            drafts: args.checkpoint_drafts.unwrap_or(false),
        },
        retention,
        auth,
        tls,
        limits,
        upload_ttl: seconds(args.upload_ttl, 3600.0, "upload-ttl")?,
    };
    let result = reelfarm_scheduler::run(config, listener, termination()).await;
    telemetry.shutdown();
    result?;
    Ok(())
}

#[cfg(feature = "worker")]
fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
}

#[cfg(feature = "worker")]
pub async fn run_worker(
    flags: WorkerArgs,
    store_flags: StoreArgs,
    telemetry_flags: TelemetryArgs,
    config: Option<PathBuf>,
) -> Result<()> {
    let file = read_config_file(config.as_deref())?;
    let telemetry = start_telemetry(
        telemetry_flags.or(file.telemetry),
        "reelfarm-worker",
        "0.0.0.0:9465",
    )
    .await?;
    let args = flags.or(file.worker);
    let endpoints =
        leader::parse_endpoints(args.scheduler.as_deref().unwrap_or("http://127.0.0.1:7070"))?;
    let tls = ClientTls::load(
        args.tls_ca_file.as_deref(),
        args.tls_cert_file.as_deref(),
        args.tls_key_file.as_deref(),
    )?;
    tls.check_urls(&endpoints)?;
    let name = args
        .name
        .or_else(host_name)
        .unwrap_or_else(|| "worker".to_string());
    let connect_timeout = seconds(args.connect_timeout, 30.0, "connect-timeout")?;
    let drain_timeout = seconds(args.drain_timeout, 25.0, "drain-timeout")?;
    let catalog = crate::input::load_catalog(args.models.as_deref())?;
    let hosted_mode = args.hosted.unwrap_or(false);
    let hosted = if hosted_mode {
        let hosted = reelfarm_worker::hosted::load_hosted(&catalog)?;
        if hosted.is_empty() {
            anyhow::bail!(
                "--hosted: the catalog has no openai-videos model; add one with --models \
                 (README \"Hosted models\")"
            );
        }
        hosted
    } else {
        Vec::new()
    };
    let (inventory, inventory_line) = if hosted_mode {
        let slots = hosted
            .iter()
            .map(|model| model.api.spec().max_concurrent_jobs)
            .max()
            .unwrap_or(1);
        let ids: Vec<&str> = hosted.iter().map(|model| model.id.as_str()).collect();
        (
            reelfarm_worker::inventory::Inventory::Fixed(reelfarm_worker::hosted::devices(
                slots, 0.5,
            )),
            format!(
                "hosted: {slots} concurrency slot(s) for {}, and half this machine's memory for stitching",
                ids.join(", ")
            ),
        )
    } else {
        reelfarm_worker::inventory::Inventory::discover(args.simulate_gpus.as_deref())
            .map_err(anyhow::Error::msg)?
    };
    let devices = inventory.devices();
    let wan = reelfarm_worker::runtimes::WanOptions {
        text_encoder_on_cpu: args.text_encoder_on_cpu.unwrap_or(true),
        ..reelfarm_worker::runtimes::WanOptions::best_available()
    };
    if !hosted_mode {
        check_wan_devices(&catalog, &inventory, &wan)?;
    }
    // s3:// checkpoints come from the same S3 as the store (another bucket may be named).
    let store_args = store_flags.or(file.store);
    let s3 = match crate::config::store_choice(store_args.clone())? {
        crate::config::StoreChoice::S3(settings) => Some(settings),
        crate::config::StoreChoice::Local(_) => None,
    };
    let weights_cache = args
        .weights_cache
        .clone()
        .unwrap_or_else(default_weights_cache);
    let catalog = if hosted_mode {
        catalog
    } else {
        reelfarm_worker::weights_cache::localize(&catalog, &weights_cache, s3.as_ref())
            .await
            .map_err(|error| anyhow::anyhow!("{error}"))?
    };
    // A hosted worker runs no local model: its slots are for API calls only.
    let models = if hosted_mode {
        Vec::new()
    } else {
        reelfarm_worker::runtimes::load_runtimes_with(&catalog, args.weights.as_deref(), &wan)?
    };
    let store = open_store(store_args).await?;
    eprintln!(
        "reelfarm worker {name}: {} device(s), store {}, schedulers {}",
        devices.len(),
        store.describe(),
        endpoints.join(",")
    );
    eprintln!("reelfarm worker {name}: {inventory_line}");
    let config = reelfarm_worker::WorkerConfig {
        scheduler_urls: endpoints,
        name,
        store,
        models,
        hosted,
        inventory: Arc::new(inventory),
        connect_timeout,
        drain_timeout,
        bearer: reelfarm_common::leader::Bearer::from_file_or_env(args.token_file.as_deref())?,
        tls,
    };
    let health_listen = args.health_listen.as_deref().unwrap_or("0.0.0.0:7071");
    if !health_listen.eq_ignore_ascii_case("off") {
        let address: SocketAddr = health_listen.parse().with_context(|| {
            format!(
                "--health-listen {health_listen:?}: expected an address like 0.0.0.0:7071, or off"
            )
        })?;
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| {
                format!(
                    "--health-listen {address}: cannot bind (give each worker on one machine its \
                 own port, or `off`)"
                )
            })?;
        tokio::spawn(reelfarm_worker::health::serve(
            listener,
            config.store.clone(),
        ));
    }
    let result = reelfarm_worker::run(config, termination()).await;
    telemetry.shutdown();
    result?;
    Ok(())
}
