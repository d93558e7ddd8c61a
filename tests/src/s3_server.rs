//! A real S3-compatible server (s3s-fs) as a child process on loopback, so the S3 backend is
//! tested against the wire protocol, request signatures and error codes, not a mock.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use reelfarm_common::s3::S3Settings;

use crate::cluster::{free_port, http_get, which};

/// What CI and developers run once to get the server binary.
pub const INSTALL_S3S_FS: &str = "cargo install s3s-fs@0.14.1 --features binary --locked";
const BINARY: &str = "s3s-fs";
const BUCKET: &str = "reelfarm-test";
const ACCESS_KEY: &str = "reelfarm-test-key";
const SECRET_KEY: &str = "reelfarm-test-secret";
const READY_WITHIN: Duration = Duration::from_secs(20);

/// One s3s-fs process with its own data dir, port and bucket, killed on drop. It checks
/// signatures against one key pair, so wrong credentials get a real 403. The temp dir (data
/// and `s3s-fs.log`) is kept when a test panics or `REELFARM_KEEP_TEST_DIRS` is set.
pub struct S3Server {
    child: Child,
    endpoint: String,
    dir: tempfile::TempDir,
}

impl S3Server {
    /// Where s3s-fs keeps object `key` on disk: to check an object exists (or is gone)
    /// without a client.
    pub fn object_path(&self, key: &str) -> std::path::PathBuf {
        self.dir.path().join("data").join(BUCKET).join(key)
    }

    /// Synchronous, so plain `#[test]`s can use it; no tokio runtime needed.
    pub fn start() -> Result<Self> {
        let binary = find_binary()?;
        let dir = tempfile::Builder::new().prefix("reelfarm-s3-").tempdir()?;
        let data = dir.path().join("data");
        let log_path = dir.path().join("s3s-fs.log");
        // s3s-fs keeps a bucket as a directory under its root, so this is `CreateBucket`.
        std::fs::create_dir_all(data.join(BUCKET))?;
        let mut dir = Some(dir);
        // The port is free when picked but may be taken before the server binds it; then the
        // server exits early and another port is tried.
        for _attempt in 0..3 {
            let port = free_port();
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)?;
            let child = Command::new(&binary)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(&data)
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
                )
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            let mut server = S3Server {
                child,
                endpoint: format!("http://127.0.0.1:{port}"),
                dir: dir.take().context("temp dir")?,
            };
            match server.wait_until_ready(port) {
                Ok(()) => return Ok(server),
                Err(error) => {
                    eprintln!("s3s-fs on port {port}: {error:#}; trying another port");
                    server.stop();
                    dir = Some(server.take_dir()?);
                }
            }
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        bail!(
            "s3s-fs did not start in 3 attempts; its log ({}):\n{log}",
            log_path.display()
        )
    }

    /// Any HTTP answer to an unsigned request (s3s says 403) means it is serving.
    fn wait_until_ready(&mut self, port: u16) -> Result<()> {
        let deadline = Instant::now() + READY_WITHIN;
        let address = format!("127.0.0.1:{port}");
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("exited with {status} before it was ready");
            }
            if http_get(&address, "/").is_some_and(|response| response.starts_with("HTTP/1.")) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("not ready within {READY_WITHIN:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        // Errors mean the child is already gone, which is what we want.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Swaps the temp dir out of a server that failed to start, to reuse it for the next try.
    fn take_dir(&mut self) -> Result<tempfile::TempDir> {
        let placeholder = tempfile::Builder::new()
            .prefix("reelfarm-s3-unused-")
            .tempdir()?;
        Ok(std::mem::replace(&mut self.dir, placeholder))
    }

    /// Another empty bucket on the same server (s3s-fs keeps buckets as directories).
    pub fn create_bucket(&self, name: &str) -> Result<()> {
        std::fs::create_dir_all(self.dir.path().join("data").join(name))
            .with_context(|| format!("creating bucket {name}"))
    }

    /// Where s3s-fs keeps the bucket's objects as plain files (to corrupt one on purpose).
    pub fn bucket_dir(&self) -> PathBuf {
        self.dir.path().join("data").join(BUCKET)
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn bucket(&self) -> &str {
        BUCKET
    }

    pub fn access_key(&self) -> &str {
        ACCESS_KEY
    }

    pub fn secret_key(&self) -> &str {
        SECRET_KEY
    }

    /// Settings that reach this server's bucket with the right keys.
    pub fn settings(&self) -> S3Settings {
        S3Settings {
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            path_style: true,
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.into()),
            ..S3Settings::new(BUCKET)
        }
    }

    /// A plain SDK client with the right keys, for tests that go around the store (for
    /// example to overwrite an object behind its back). No retries, so failures show at once.
    pub fn client(&self) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
            .force_path_style(true)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(2))
                    .operation_timeout(Duration::from_secs(60))
                    .build(),
            )
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("s3s-fs.log")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() || std::env::var_os("REELFARM_KEEP_TEST_DIRS").is_some() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "keeping s3s-fs dir {} (log: {})",
                self.dir.path().display(),
                self.log_path().display()
            );
        }
    }
}

/// `REELFARM_S3S_FS`, then `PATH`, then cargo's bin dir (where `cargo install` puts it).
fn find_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("REELFARM_S3S_FS") {
        return Ok(PathBuf::from(path));
    }
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .map(|home| home.join("bin"));
    which(BINARY)
        .or_else(|| {
            cargo_bin
                .map(|dir| dir.join(BINARY))
                .filter(|path| path.is_file())
        })
        .with_context(|| {
            format!(
                "{BINARY} is not installed (looked on PATH, in ~/.cargo/bin and at \
                 $REELFARM_S3S_FS): install it with `{INSTALL_S3S_FS}`"
            )
        })
}
