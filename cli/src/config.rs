//! Layered settings for the long-running processes (`reelfarm scheduler`, `reelfarm worker`):
//! built-in defaults, then a TOML file (`--config`), then `REELFARM_*` environment variables,
//! then flags; clap merges the last two, this module puts the file under them and checks the
//! result once at start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// Keeps the first layer's value of every field that has one.
macro_rules! layer {
    ($upper:expr, $lower:expr; $($field:ident),* $(,)?) => {{
        let (upper, lower) = ($upper, $lower);
        Self { $($field: upper.$field.or(lower.$field),)* }
    }};
}

/// Object store settings shared by the scheduler and workers.
#[derive(clap::Args, Deserialize, Default, Debug, Clone)]
#[serde(default, deny_unknown_fields)]
pub struct StoreArgs {
    /// S3 bucket for segments and videos (required unless --store-dir).
    #[arg(long, env = "REELFARM_BUCKET")]
    pub bucket: Option<String>,
    /// S3 endpoint for S3-compatible servers (MinIO, Ceph, ...); unset: AWS.
    #[arg(long, env = "REELFARM_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region; default: the AWS chain's, else us-east-1.
    #[arg(long, env = "REELFARM_S3_REGION")]
    pub s3_region: Option<String>,
    /// Path-style addressing (http://host/bucket/key), needed by most non-AWS servers;
    /// default: on when --s3-endpoint is set.
    #[arg(long, env = "REELFARM_S3_PATH_STYLE", num_args = 0..=1, default_missing_value = "true")]
    pub s3_path_style: Option<bool>,
    /// Key prefix inside the bucket, so several farms can share one.
    #[arg(long, env = "REELFARM_S3_PREFIX")]
    pub s3_prefix: Option<String>,
    /// Access key id; default: the standard AWS chain (AWS_ACCESS_KEY_ID, profiles, web identity).
    #[arg(long, env = "REELFARM_S3_ACCESS_KEY_ID", hide_env_values = true)]
    pub s3_access_key_id: Option<String>,
    /// File holding the access key id (a mounted secret).
    #[arg(long, env = "REELFARM_S3_ACCESS_KEY_ID_FILE")]
    pub s3_access_key_id_file: Option<PathBuf>,
    /// Secret access key; prefer --s3-secret-access-key-file or the AWS chain.
    #[arg(long, env = "REELFARM_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,
    /// File holding the secret access key (a mounted secret).
    #[arg(long, env = "REELFARM_S3_SECRET_ACCESS_KEY_FILE")]
    pub s3_secret_access_key_file: Option<PathBuf>,
    /// PEM CA to trust for an https:// --s3-endpoint signed by a private CA, besides the
    /// system's roots.
    #[arg(long, env = "REELFARM_S3_CA_FILE")]
    pub s3_ca_file: Option<PathBuf>,
    /// A local directory instead of S3: only for a farm on one machine.
    #[arg(long, env = "REELFARM_STORE_DIR")]
    pub store_dir: Option<PathBuf>,
}

impl StoreArgs {
    /// This layer over `lower`.
    pub fn or(self, lower: Self) -> Self {
        layer!(self, lower; bucket, s3_endpoint, s3_region, s3_path_style, s3_prefix,
            s3_access_key_id, s3_access_key_id_file, s3_secret_access_key,
            s3_secret_access_key_file, s3_ca_file, store_dir)
    }
}

#[derive(clap::Args, Deserialize, Default, Debug, Clone)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerArgs {
    /// Address to serve gRPC on [default: 0.0.0.0:7070].
    #[arg(long, env = "REELFARM_LISTEN")]
    pub listen: Option<String>,
    /// URL other processes reach this scheduler at, handed out by followers
    /// [default: http://<listen address>, with 127.0.0.1 for 0.0.0.0].
    #[arg(long, env = "REELFARM_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// etcd endpoints, comma-separated; unset: state in memory (one scheduler, lost on exit).
    #[arg(long, env = "REELFARM_ETCD", value_delimiter = ',')]
    pub etcd: Option<Vec<String>>,
    /// Key prefix in etcd [default: /reelfarm/v1/].
    #[arg(long, env = "REELFARM_ETCD_PREFIX")]
    pub etcd_prefix: Option<String>,
    /// Seconds a dead leader keeps leadership before another scheduler takes over [default: 5].
    #[arg(long, env = "REELFARM_LEADER_TTL")]
    pub leader_ttl: Option<f64>,
    /// Seconds a silent worker keeps its segments before they are placed again [default: 10].
    #[arg(long, env = "REELFARM_WORKER_TTL")]
    pub worker_ttl: Option<f64>,
    /// Attempts per segment before its sequence fails [default: 3].
    #[arg(long, env = "REELFARM_MAX_ATTEMPTS")]
    pub max_attempts: Option<u32>,
    /// Shortest time a running segment may go without reporting progress before it is
    /// taken back from its (hung) worker and placed again; the deadline grows with the
    /// plan's estimate (10× a model load plus one step). 0 turns deadlines off [default: 600].
    #[arg(long, env = "REELFARM_STALL_TIMEOUT")]
    pub stall_timeout: Option<f64>,
    /// Workers save a final-pass segment's sampling state every this many denoising steps;
    /// an attempt lost with its worker (a crash, a preempted spot GPU) resumes on another
    /// worker from the last save instead of from step 0. 0 turns checkpoints off
    /// [default: 10].
    #[arg(long, env = "REELFARM_CHECKPOINT_EVERY")]
    pub checkpoint_every: Option<u32>,
    /// Checkpoint draft passes too (they are cheap to redo, so off by default)
    /// [default: false].
    #[arg(long, env = "REELFARM_CHECKPOINT_DRAFTS")]
    pub checkpoint_drafts: Option<bool>,
    /// Seconds of etcd history the leader keeps: every this often it compacts to the revision
    /// of the round before; 0 turns it off [default: 300].
    #[arg(long, env = "REELFARM_ETCD_COMPACT_EVERY")]
    pub etcd_compact_every: Option<f64>,
    /// Delete finished sequences (records and objects) this many days after they ended,
    /// fractions allowed; unset: keep them until `reelfarm delete`.
    #[arg(long, env = "REELFARM_RETENTION_DAYS")]
    pub retention_days: Option<f64>,
    /// Model catalog file (TOML, `[[model]]` entries) adding models to the built-in ones;
    /// give schedulers and workers the same file. See README "Models".
    #[arg(long, env = "REELFARM_MODELS")]
    pub models: Option<PathBuf>,
    /// A file holding the first admin's bearer token (make one with `openssl rand -hex 32`,
    /// or a Kubernetes Secret). With it, every call must carry a token: this one, one the
    /// workers share (--worker-token-file), or one an admin made with `reelfarm token`.
    /// Without it the scheduler authenticates nobody (say --no-auth to silence the warning).
    #[arg(long, env = "REELFARM_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// A file holding a token every worker may present (role worker, identity "workers");
    /// give each worker its own (`reelfarm token create --role worker`) for per-worker
    /// identities.
    #[arg(long, env = "REELFARM_WORKER_TOKEN_FILE")]
    pub worker_token_file: Option<PathBuf>,
    /// Authenticate nobody, on purpose (a laptop, a closed network) [default: false].
    #[arg(long, env = "REELFARM_NO_AUTH")]
    pub no_auth: Option<bool>,
    /// PEM certificate (chain) to serve gRPC with TLS; needs --tls-key-file. Its names must
    /// cover the URLs clients and workers dial, --advertise-url included (which then
    /// defaults to https://). Unset: plaintext.
    #[arg(long, env = "REELFARM_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "REELFARM_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA whose client certificates identify workers (mutual TLS): a worker presenting
    /// one is the worker id its Common Name says, needs no token, and can act for no other
    /// id. Clients keep using tokens.
    #[arg(long, env = "REELFARM_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// PEM CA that signed etcd's server certificate; the --etcd URLs are then https://.
    #[arg(long, env = "REELFARM_ETCD_CA_FILE")]
    pub etcd_ca_file: Option<PathBuf>,
    /// PEM client certificate for an etcd started with --client-cert-auth; needs
    /// --etcd-key-file.
    #[arg(long, env = "REELFARM_ETCD_CERT_FILE")]
    pub etcd_cert_file: Option<PathBuf>,
    /// PEM private key of --etcd-cert-file.
    #[arg(long, env = "REELFARM_ETCD_KEY_FILE")]
    pub etcd_key_file: Option<PathBuf>,
    /// Client calls a second each token (or, without tokens, each address) may make, with
    /// bursts of 4×; past it calls get RESOURCE_EXHAUSTED saying when to retry. Workers are
    /// not limited. 0 turns it off [default: 50].
    #[arg(long, env = "REELFARM_RATE_LIMIT")]
    pub rate_limit: Option<f64>,
    /// Streams (watches, uploads, downloads) each token or address may hold open
    /// [default: 64].
    #[arg(long, env = "REELFARM_MAX_STREAMS")]
    pub max_streams: Option<usize>,
    /// Seconds an uploaded reference image waits for the submission that names it before
    /// it is deleted [default: 3600].
    #[arg(long, env = "REELFARM_UPLOAD_TTL")]
    pub upload_ttl: Option<f64>,
}

impl SchedulerArgs {
    /// This layer over `lower`.
    pub fn or(self, lower: Self) -> Self {
        layer!(self, lower; listen, advertise_url, etcd, etcd_prefix, leader_ttl, worker_ttl,
            max_attempts, stall_timeout, checkpoint_every, checkpoint_drafts, etcd_compact_every, retention_days, models,
            admin_token_file, worker_token_file, no_auth, tls_cert_file, tls_key_file,
            tls_client_ca_file, etcd_ca_file, etcd_cert_file, etcd_key_file, rate_limit,
            max_streams, upload_ttl)
    }
}

#[derive(clap::Args, Deserialize, Default, Debug, Clone)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerArgs {
    /// Scheduler URL, or every scheduler's, comma-separated; the worker follows the leader
    /// [default: http://127.0.0.1:7070].
    #[arg(long, env = "REELFARM_SCHEDULER")]
    pub scheduler: Option<String>,
    /// Worker name shown in `reelfarm workers` [default: the host name].
    #[arg(long, env = "REELFARM_WORKER_NAME")]
    pub name: Option<String>,
    /// Pretend to have these GPUs, `COUNTxSIZE[:CLASS]` joined by commas, e.g.
    /// `2x80GiB:H100,1x24GiB:L4` (the model still runs on the CPU; a task whose measured
    /// peak exceeds its device fails as out of memory). Default: the GPUs NVML finds, or
    /// this machine's CPU as one device when there is no NVIDIA driver.
    #[arg(long, env = "REELFARM_SIMULATE_GPUS")]
    pub simulate_gpus: Option<String>,
    /// Call the catalog's hosted models (backend openai-videos) instead of running local
    /// ones: the worker's devices become concurrency slots, as many as the largest
    /// max_concurrent_jobs, and each model's API key is read from its api_key_env or
    /// api_key_file. Run one such worker per API account. See README "Hosted models".
    #[arg(long, env = "REELFARM_HOSTED", num_args = 0..=1, default_missing_value = "true")]
    pub hosted: Option<bool>,
    /// reelfarm-tiny weights (safetensors); default: the built-in trained weights.
    #[arg(long, env = "REELFARM_TINY_WEIGHTS")]
    pub weights: Option<PathBuf>,
    /// Model catalog file (TOML, `[[model]]` entries): the worker serves every model in it
    /// that it can run, with the weights each entry names. See README "Models".
    #[arg(long, env = "REELFARM_MODELS")]
    pub models: Option<PathBuf>,
    /// Run Wan's text encoder (umT5-XXL, 11 GB in bf16) on the CPU from host memory, so Wan
    /// fits 24 GB cards; the catalog's Wan memory estimates assume it. `false` on 40 GB+
    /// cards encodes prompts faster (then add 11.4e9 to the entry's memory.fixed_bytes)
    /// [default: true].
    #[arg(long, env = "REELFARM_TEXT_ENCODER_ON_CPU")]
    pub text_encoder_on_cpu: Option<bool>,
    /// Where `s3://` model weights are mirrored (local disk: ~29 GB for Wan 2.1 1.3B), fetched
    /// once, verified, and refreshed only where S3 changed [default: ~/.cache/reelfarm/weights].
    #[arg(long, env = "REELFARM_WEIGHTS_CACHE")]
    pub weights_cache: Option<PathBuf>,
    /// Seconds to wait for a leading scheduler at start [default: 30].
    #[arg(long, env = "REELFARM_CONNECT_TIMEOUT")]
    pub connect_timeout: Option<f64>,
    /// After SIGTERM, seconds running segments get to finish (no new work meanwhile) before
    /// they are handed back to the queue; keep it under the pod's termination grace period
    /// [default: 25].
    #[arg(long, env = "REELFARM_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<f64>,
    /// Address of the worker's gRPC health service (grpc.health.v1, for Kubernetes probes),
    /// or `off` [default: 0.0.0.0:7071].
    #[arg(long, env = "REELFARM_HEALTH_LISTEN")]
    pub health_listen: Option<String>,
    /// A file holding this worker's bearer token (role worker), for a scheduler that
    /// authenticates [default: the REELFARM_TOKEN environment variable].
    #[arg(long, env = "REELFARM_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM CA to trust for https:// schedulers [default: the system's roots].
    #[arg(long, env = "REELFARM_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate naming this worker (Common Name = worker id), for a scheduler
    /// with --tls-client-ca-file: the worker is then that id and needs no token.
    #[arg(long, env = "REELFARM_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "REELFARM_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
}

impl WorkerArgs {
    /// This layer over `lower`.
    pub fn or(self, lower: Self) -> Self {
        layer!(self, lower; scheduler, name, simulate_gpus, hosted, weights, models, text_encoder_on_cpu,
            weights_cache, connect_timeout, drain_timeout, health_listen, token_file, tls_ca_file,
            tls_cert_file, tls_key_file)
    }
}

/// Metrics, traces and log format of the long-running processes.
#[derive(clap::Args, Deserialize, Default, Debug, Clone)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryArgs {
    /// Address of the Prometheus /metrics endpoint, or `off`
    /// [default: 0.0.0.0:9464 for schedulers, 0.0.0.0:9465 for workers].
    #[arg(long, env = "REELFARM_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// OTLP/gRPC collector for metrics and traces, e.g. http://otel-collector:4317
    /// [default: no export].
    #[arg(long, env = "REELFARM_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Log lines as `text` or `json` (one object per line, with the trace id) [default: text].
    #[arg(long, env = "REELFARM_LOG_FORMAT")]
    pub log_format: Option<String>,
}

impl TelemetryArgs {
    /// This layer over `lower`.
    pub fn or(self, lower: Self) -> Self {
        layer!(self, lower; metrics_listen, otlp_endpoint, log_format)
    }

    /// Checked settings: (the metrics address or `None` for off, telemetry settings).
    pub fn resolve(
        self,
        service_name: &str,
        default_metrics: &str,
    ) -> Result<(
        Option<std::net::SocketAddr>,
        reelfarm_common::telemetry::TelemetrySettings,
    )> {
        let listen = self.metrics_listen.as_deref().unwrap_or(default_metrics);
        let metrics = if listen.eq_ignore_ascii_case("off") {
            None
        } else {
            Some(listen.parse().with_context(|| {
                format!(
                    "--metrics-listen {listen:?}: expected an address like 0.0.0.0:9464, or off"
                )
            })?)
        };
        let log_json = match self.log_format.as_deref().map(str::to_lowercase).as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => bail!("--log-format {other:?}: must be text or json"),
        };
        let otlp_endpoint = self.otlp_endpoint.filter(|e| !e.trim().is_empty());
        if let Some(endpoint) = &otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            bail!("--otlp-endpoint {endpoint:?}: must be an http:// or https:// URL");
        }
        Ok((
            metrics,
            reelfarm_common::telemetry::TelemetrySettings {
                service_name: service_name.to_string(),
                log_json,
                otlp_endpoint,
            },
        ))
    }
}

/// The `--config` file: sections `[store]`, `[scheduler]`, `[worker]`, `[telemetry]`, keys as the flags
/// with `_` for `-` (`bucket = "renders"`, `etcd = ["http://etcd:2379"]`).
#[derive(Deserialize, Default, Debug)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigFile {
    pub store: StoreArgs,
    pub scheduler: SchedulerArgs,
    pub worker: WorkerArgs,
    pub telemetry: TelemetryArgs,
}

pub fn read_config_file(path: Option<&Path>) -> Result<ConfigFile> {
    let Some(path) = path else {
        return Ok(ConfigFile::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

/// A secret from its value or from a file (trailing newline dropped).
fn secret(value: Option<String>, file: Option<PathBuf>, name: &str) -> Result<Option<String>> {
    match (value, file) {
        (Some(_), Some(_)) => bail!("--{name} and --{name}-file: give one of them"),
        (Some(value), None) => Ok(Some(value)),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("--{name}-file: reading {}", path.display()))?;
            Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()))
        }
        (None, None) => Ok(None),
    }
}

/// What the processes store objects in, checked.
pub enum StoreChoice {
    S3(reelfarm_common::s3::S3Settings),
    Local(PathBuf),
}

pub fn store_choice(args: StoreArgs) -> Result<StoreChoice> {
    let access_key = secret(
        args.s3_access_key_id,
        args.s3_access_key_id_file,
        "s3-access-key-id",
    )?;
    let secret_key = secret(
        args.s3_secret_access_key,
        args.s3_secret_access_key_file,
        "s3-secret-access-key",
    )?;
    if access_key.is_some() != secret_key.is_some() {
        bail!(
            "S3 credentials: give both the access key id and the secret access key, or neither (to use the AWS chain)"
        );
    }
    match (args.bucket, args.store_dir) {
        (Some(_), Some(_)) => {
            bail!("--bucket and --store-dir: choose S3 or a local directory, not both")
        }
        (None, Some(dir)) => Ok(StoreChoice::Local(dir)),
        (None, None) => {
            bail!("no object store: give --bucket (S3) or --store-dir (one machine only)")
        }
        (Some(bucket), None) => {
            if bucket.trim().is_empty() {
                bail!("--bucket: must not be empty");
            }
            let mut settings = reelfarm_common::s3::S3Settings::new(bucket);
            settings.path_style = args.s3_path_style.unwrap_or(args.s3_endpoint.is_some());
            settings.endpoint = args.s3_endpoint;
            settings.region = args.s3_region;
            settings.prefix = args.s3_prefix.unwrap_or_default();
            settings.access_key_id = access_key;
            settings.secret_access_key = secret_key;
            settings.ca_pem = args
                .s3_ca_file
                .as_deref()
                .map(|path| reelfarm_common::tls::read_pem(path, "--s3-ca-file", "CERTIFICATE"))
                .transpose()?;
            Ok(StoreChoice::S3(settings))
        }
    }
}

pub fn seconds(value: Option<f64>, default: f64, flag: &str) -> Result<Duration> {
    let value = value.unwrap_or(default);
    if !(value.is_finite() && value > 0.0 && value < 86_400.0) {
        bail!("--{flag}: {value} is not a number of seconds between 0 and 86400");
    }
    Ok(Duration::from_secs_f64(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file: ConfigFile = toml::from_str(
            "[scheduler]\nlisten = \"0.0.0.0:9000\"\nmax_attempts = 5\n[store]\nbucket = \"file-bucket\"\n",
        )
        .unwrap();
        let flags = SchedulerArgs {
            listen: Some("127.0.0.1:1".into()),
            ..Default::default()
        };
        let merged = flags.or(file.scheduler);
        assert_eq!(merged.listen.as_deref(), Some("127.0.0.1:1"));
        assert_eq!(merged.max_attempts, Some(5));
        assert_eq!(merged.worker_ttl, None);
        let store = StoreArgs::default().or(file.store);
        assert_eq!(store.bucket.as_deref(), Some("file-bucket"));
    }

    #[test]
    fn unknown_file_keys_are_named() {
        let error = toml::from_str::<ConfigFile>("[scheduler]\nlisen = \"x\"\n").unwrap_err();
        assert!(error.to_string().contains("lisen"), "{error}");
    }

    #[test]
    fn secrets_come_from_files_and_half_credentials_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cr3t\n").unwrap();
        let args = StoreArgs {
            bucket: Some("b".into()),
            s3_access_key_id: Some("id".into()),
            s3_secret_access_key_file: Some(path),
            ..Default::default()
        };
        let StoreChoice::S3(settings) = store_choice(args).unwrap() else {
            panic!("expected S3");
        };
        assert_eq!(settings.secret_access_key.as_deref(), Some("s3cr3t"));
        let half = StoreArgs {
            bucket: Some("b".into()),
            s3_access_key_id: Some("id".into()),
            ..Default::default()
        };
        let error = store_choice(half).err().unwrap().to_string();
        assert!(error.contains("both"), "{error}");
    }
}
