//! A distributed farm on loopback for integration tests: a real etcd (Debian `etcd-server`)
//! and the `reelfarm` binary's schedulers and workers as separate OS processes, each with a
//! log file in a temp dir that is kept (and named) when a test fails. Readiness is polled
//! with deadlines, never slept on.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A free loopback port for a server a test starts, chosen below the kernel's ephemeral
/// range: a port from that range (what binding port 0 gives) can be taken at any moment by
/// the local end of an outgoing connection, and was, once, between a test's pick and etcd's
/// bind ("address already in use"). Ports handed out in this process are never handed out
/// again (the tests of one binary run in parallel; binaries run one after another).
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::hash::{BuildHasher, RandomState};
    use std::sync::Mutex;
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (15000u16, ephemeral_low);
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    if high > low + 1000 {
        let random = RandomState::new();
        for attempt in 0u32..200 {
            let port = low + (random.hash_one(attempt) % u64::from(high - low)) as u16;
            if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                handed_out.insert(port);
                return port;
            }
        }
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port");
    handed_out.insert(port);
    port
}

/// Polls `ready` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} not ready within {timeout:?}")
}

/// The `reelfarm` binary beside this test executable (cargo builds it for the workspace's
/// tests; `cargo build -p reelfarm` when running this crate alone).
pub fn reelfarm_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let debug_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let binary = debug_dir.join("reelfarm");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build -p reelfarm` (cargo test --workspace builds it)",
        binary.display()
    );
    binary
}

/// A child process that is killed when dropped.
pub struct Process {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Process {
    pub fn spawn(name: &str, mut command: Command, log_dir: &Path) -> Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        Ok(Process {
            name: name.to_string(),
            log,
            child: Some(child),
        })
    }

    /// `kill -9`: no goodbye, no cleanup, exactly like a crashed pod.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait, like Kubernetes stopping a pod.
    pub fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "{} did not stop within {timeout:?} after SIGTERM",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal by name (`STOP` freezes the process as a hung node would, `CONT` thaws it).
    pub fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.child.as_ref().context("not running")?.id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        if !status.success() {
            bail!("kill -{signal} {pid} failed");
        }
        Ok(())
    }

    /// A line of `/proc/<pid>/status` in bytes (`VmRSS`, `VmHWM`), while it runs.
    pub fn memory_bytes(&self, field: &str) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status
            .lines()
            .find(|line| line.starts_with(&format!("{field}:")))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// etcd on free loopback ports with its data in `dir`.
pub struct Etcd {
    pub url: String,
    pub process: Process,
    dir: PathBuf,
    ports: (u16, u16),
    tls: Option<EtcdTls>,
}

/// etcd serving clients over TLS and asking each for a certificate from `ca`.
#[derive(Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server: crate::pki::Issued,
}

/// A bare HTTP/1.0 GET for readiness probes: the whole response, or `None` if nothing answers.
pub fn http_get(address: &str, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

impl Etcd {
    pub fn start(dir: &Path) -> Result<Self> {
        Self::start_with(dir, None)
    }

    /// etcd that speaks TLS to clients and wants their certificates (`--client-cert-auth`).
    pub fn start_tls(dir: &Path, tls: EtcdTls) -> Result<Self> {
        Self::start_with(dir, Some(tls))
    }

    fn start_with(dir: &Path, tls: Option<EtcdTls>) -> Result<Self> {
        let ports = (free_port(), free_port(), free_port());
        let process = Self::spawn(dir, ports, tls.as_ref())?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        Ok(Etcd {
            url: format!("{scheme}://127.0.0.1:{}", ports.0),
            process,
            dir: dir.to_path_buf(),
            ports: (ports.0, ports.1),
            tls,
        })
    }

    /// `kill -9` and start again on the same ports and data, waiting until it is healthy.
    pub fn restart(&mut self) -> Result<()> {
        self.process.kill9();
        let ports = (self.ports.0, self.ports.1, free_port());
        self.process = Self::spawn(&self.dir, ports, self.tls.as_ref())?;
        Ok(())
    }

    fn spawn(
        dir: &Path,
        (client, peer, metrics): (u16, u16, u16),
        tls: Option<&EtcdTls>,
    ) -> Result<Process> {
        let binary = which("etcd").context(
            "etcd is not installed: `apt-get install -y etcd-server` (.ci/run does this)",
        )?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut command = Command::new(binary);
        if let Some(tls) = tls {
            command
                .arg(format!("--cert-file={}", tls.server.cert.display()))
                .arg(format!("--key-file={}", tls.server.key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca.display()))
                .arg("--client-cert-auth");
        }
        command
            .arg("--name=test")
            .arg(format!("--data-dir={}", dir.join("etcd-data").display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=test={peer_url}"))
            // Plain HTTP /health even when clients need TLS: readiness without a certificate.
            .arg(format!("--listen-metrics-urls=http://127.0.0.1:{metrics}"))
            .arg("--log-level=warn");
        let mut process = Process::spawn("etcd", command, dir)?;
        let address = format!("127.0.0.1:{metrics}");
        wait_until("etcd", Duration::from_secs(20), || {
            process.exited().is_none()
                && http_get(&address, "/health").is_some_and(|body| body.contains("true"))
        })
        .with_context(|| format!("etcd log:\n{}", process.log_text()))?;
        Ok(process)
    }
}

pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| candidate.is_file())
    })
}

/// Where the farm keeps objects: an S3-compatible server's endpoint and credentials.
#[derive(Clone, Debug)]
pub struct ObjectStore {
    pub endpoint: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// The CA of an `https://` endpoint's certificate.
    pub ca_file: Option<PathBuf>,
}

/// Timings short enough for tests, long enough for two busy cores.
#[derive(Clone, Debug)]
pub struct Timings {
    pub leader_ttl_s: f64,
    pub worker_ttl_s: f64,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            leader_ttl_s: 2.0,
            worker_ttl_s: 3.0,
        }
    }
}

/// Schedulers and workers of one farm, sharing etcd and the object store.
pub struct Cluster {
    pub dir: PathBuf,
    pub etcd_url: String,
    pub store: ObjectStore,
    pub timings: Timings,
    pub schedulers: Vec<(String, Process)>,
    pub workers: Vec<Process>,
    /// Every process's /metrics address, with its role (`scheduler`, `worker`).
    pub metrics: Vec<(&'static str, String)>,
    /// Flags every scheduler and worker started from now on gets (`--otlp-endpoint URL`).
    pub extra_args: Vec<String>,
    /// Each worker's gRPC health address, in start order.
    pub worker_health: Vec<String>,
    /// With `enable_auth`: the first admin's token and the one the workers share.
    pub tokens: Option<(String, String)>,
    /// With `enable_tls`: the CA that signs the scheduler's certificate and the workers'.
    pub tls: Option<crate::pki::TestCa>,
    /// TLS to etcd: the CA file, and the schedulers' client certificate.
    pub etcd_tls: Option<(PathBuf, crate::pki::Issued)>,
}

impl Cluster {
    pub fn new(dir: &Path, etcd_url: &str, store: ObjectStore, timings: Timings) -> Self {
        Cluster {
            dir: dir.to_path_buf(),
            etcd_url: etcd_url.to_string(),
            store,
            timings,
            schedulers: Vec::new(),
            workers: Vec::new(),
            metrics: Vec::new(),
            extra_args: Vec::new(),
            worker_health: Vec::new(),
            tokens: None,
            tls: None,
            etcd_tls: None,
        }
    }

    /// Schedulers started from now on serve TLS with a certificate from a fresh CA and take
    /// that CA's client certificates as worker identities; each worker gets a certificate
    /// naming it (its worker id is then its name), clients trust the CA.
    pub fn enable_tls(&mut self) -> Result<()> {
        self.tls = Some(crate::pki::TestCa::new(&self.dir, "farm-ca")?);
        Ok(())
    }

    /// What a test client trusts and presents: the farm's CA when it serves TLS.
    pub fn client_tls(&self) -> reelfarm_common::tls::ClientTls {
        match &self.tls {
            Some(ca) => reelfarm_common::tls::ClientTls::trusting(&ca.cert_pem),
            None => Default::default(),
        }
    }

    /// Schedulers started from now on authenticate: they get an admin token and a shared
    /// worker token in files, workers present the latter, `client` and the test clients the
    /// former. Returns the admin token.
    pub fn enable_auth(&mut self) -> Result<String> {
        let salt = format!(
            "{:x}{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
        );
        let admin = format!("test-admin-{salt}");
        let workers = format!("test-workers-{salt}");
        std::fs::write(self.dir.join("admin.token"), &admin)?;
        std::fs::write(self.dir.join("workers.token"), &workers)?;
        self.tokens = Some((admin.clone(), workers));
        Ok(admin)
    }

    /// The admin token, when the farm authenticates.
    pub fn admin_token(&self) -> Option<&str> {
        self.tokens.as_ref().map(|(admin, _)| admin.as_str())
    }

    /// `reelfarm <verb>` with the object store's settings and credentials, serving its
    /// metrics on a free port.
    fn command(&mut self, verb: &'static str) -> Command {
        let metrics = format!("127.0.0.1:{}", free_port());
        self.metrics.push((verb, metrics.clone()));
        let mut command = Command::new(reelfarm_binary());
        command
            .arg(verb)
            .arg("--metrics-listen")
            .arg(metrics)
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .env("AWS_ACCESS_KEY_ID", &self.store.access_key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.store.secret_access_key)
            .env("AWS_REGION", "us-east-1")
            .env_remove("REELFARM_SCHEDULER")
            .env_remove("REELFARM_CONFIG")
            .env_remove("REELFARM_TOKEN")
            .arg("--s3-endpoint")
            .arg(&self.store.endpoint)
            .arg("--bucket")
            .arg(&self.store.bucket)
            .env_remove("REELFARM_S3_CA_FILE");
        if let Some(ca) = &self.store.ca_file {
            command.env("REELFARM_S3_CA_FILE", ca);
        }
        command
    }

    /// Every scheduler URL, comma-separated, as workers and clients are given them.
    pub fn scheduler_list(&self) -> String {
        self.schedulers
            .iter()
            .map(|(url, _)| url.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts a scheduler process and waits until it serves gRPC.
    pub fn start_scheduler(&mut self) -> Result<String> {
        self.start_scheduler_with(&[])
    }

    /// A scheduler with extra environment (the fault points, `REELFARM_FAULT_…`).
    pub fn start_scheduler_with(&mut self, env: &[(&str, &str)]) -> Result<String> {
        let port = free_port();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{port}");
        let mut command = self.command("scheduler");
        if let Some(ca) = &self.tls {
            let server = ca.loopback_server(&format!("scheduler-{port}"), false)?;
            command
                .env("REELFARM_TLS_CERT_FILE", &server.cert)
                .env("REELFARM_TLS_KEY_FILE", &server.key)
                .env("REELFARM_TLS_CLIENT_CA_FILE", &ca.cert);
        }
        if let Some((ca, client)) = &self.etcd_tls {
            command
                .env("REELFARM_ETCD_CA_FILE", ca)
                .env("REELFARM_ETCD_CERT_FILE", &client.cert)
                .env("REELFARM_ETCD_KEY_FILE", &client.key);
        }
        command
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--etcd")
            .arg(&self.etcd_url)
            .arg("--leader-ttl")
            .arg(self.timings.leader_ttl_s.to_string())
            .arg("--worker-ttl")
            .arg(self.timings.worker_ttl_s.to_string());
        if self.tokens.is_some() {
            command
                .env("REELFARM_ADMIN_TOKEN_FILE", self.dir.join("admin.token"))
                .env("REELFARM_WORKER_TOKEN_FILE", self.dir.join("workers.token"));
        }
        command.envs(env.iter().copied());
        let name = format!("scheduler-{}", self.schedulers.len());
        let mut process = Process::spawn(&name, command, &self.dir)?;
        let address = format!("127.0.0.1:{port}");
        wait_until(&name, Duration::from_secs(30), || {
            process.exited().is_none() && TcpStream::connect(&address).is_ok()
        })
        .with_context(|| format!("{name} log:\n{}", process.log_text()))?;
        self.schedulers.push((url.clone(), process));
        Ok(url)
    }

    /// Starts a worker process against every scheduler started so far.
    pub fn start_worker(&mut self, name: &str, simulate_gpus: &str) -> Result<()> {
        self.start_worker_with(name, simulate_gpus, &[])
    }

    /// A worker with extra environment (the fault points, `REELFARM_FAULT_…`).
    pub fn start_worker_with(
        &mut self,
        name: &str,
        simulate_gpus: &str,
        env: &[(&str, &str)],
    ) -> Result<()> {
        let mut command = self.worker_command(name, env)?;
        command.arg("--simulate-gpus").arg(simulate_gpus);
        self.spawn_worker(name, command)
    }

    /// A hosted worker (`--hosted`): it calls the openai-videos models of the catalog file
    /// `models`, with `env` giving their API keys; its devices are concurrency slots.
    pub fn start_hosted_worker(
        &mut self,
        name: &str,
        models: &Path,
        env: &[(&str, &str)],
    ) -> Result<()> {
        let mut command = self.worker_command(name, env)?;
        command.arg("--hosted").arg("--models").arg(models);
        self.spawn_worker(name, command)
    }

    /// `reelfarm worker` named `name` against every scheduler started so far, with its
    /// credentials (a certificate naming it, or the shared worker token) and `env`.
    fn worker_command(&mut self, name: &str, env: &[(&str, &str)]) -> Result<Command> {
        let mut command = self.command("worker");
        if let Some(ca) = &self.tls {
            // Its certificate is its identity: no token.
            let identity = ca.client(&format!("worker-{name}"), name)?;
            command
                .env("REELFARM_TLS_CA_FILE", &ca.cert)
                .env("REELFARM_TLS_CERT_FILE", &identity.cert)
                .env("REELFARM_TLS_KEY_FILE", &identity.key);
        } else if let Some((_, workers)) = &self.tokens {
            command.env("REELFARM_TOKEN", workers);
        }
        command.envs(env.iter().copied());
        // Several workers share two cores: one compute thread each keeps leases and
        // keepalives timely.
        command.env("RAYON_NUM_THREADS", "1");
        let health = format!("127.0.0.1:{}", free_port());
        self.worker_health.push(health.clone());
        command
            .arg("--health-listen")
            .arg(health)
            .arg("--scheduler")
            .arg(self.scheduler_list())
            .arg("--name")
            .arg(name);
        Ok(command)
    }

    fn spawn_worker(&mut self, name: &str, command: Command) -> Result<()> {
        let process = Process::spawn(name, command, &self.dir)?;
        self.workers.push(process);
        Ok(())
    }

    /// Runs a client verb of the binary against the schedulers; (exit code, stdout, stderr).
    /// As the admin when the farm authenticates.
    pub fn client(&self, args: &[&str]) -> Result<(i32, String, String)> {
        self.client_as(self.admin_token().unwrap_or(""), args)
    }

    /// A client verb presenting `token` ("" for none).
    pub fn client_as(&self, token: &str, args: &[&str]) -> Result<(i32, String, String)> {
        let mut command = Command::new(reelfarm_binary());
        command
            .args(args)
            .env("REELFARM_SCHEDULER", self.scheduler_list())
            .env("REELFARM_TOKEN", token)
            .env_remove("REELFARM_TOKEN_FILE")
            .env_remove("REELFARM_TLS_CA_FILE");
        if let Some(ca) = &self.tls {
            command.env("REELFARM_TLS_CA_FILE", &ca.cert);
        }
        let output = command.stdin(Stdio::null()).output()?;
        Ok((
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }

    /// Every process log, for a failing test's message.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for process in self
            .schedulers
            .iter()
            .map(|(_, process)| process)
            .chain(&self.workers)
        {
            text.push_str(&format!(
                "--- {} ({}) ---\n{}\n",
                process.name,
                process.log.display(),
                tail(&process.log_text(), 40)
            ));
        }
        text
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
