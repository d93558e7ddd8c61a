//! A distributed farm on real parts for one test: etcd, an S3-compatible server, and an
//! empty cluster of `reelfarm` processes, all in one temp dir that is kept when it fails.

use anyhow::Result;

use crate::cluster::{Cluster, Etcd, EtcdTls, ObjectStore, Timings};
use crate::pki::TestCa;
use crate::s3_server::S3Server;

/// Where the scheduler keeps its records in etcd (its default prefix).
pub const STATE_PREFIX: &str = "/reelfarm/v1/";

/// etcd, S3 and an empty cluster in one temp dir, kept (and printed) when a test fails.
pub struct Farm {
    pub cluster: Cluster,
    pub etcd: Etcd,
    pub s3: S3Server,
    pub dir: tempfile::TempDir,
}

impl Farm {
    pub fn start(timings: Timings) -> Result<Self> {
        Self::start_with(timings, false)
    }

    /// The same farm with TLS everywhere a certificate can go: etcd serves TLS and wants the
    /// schedulers' client certificates, schedulers serve TLS and know workers by theirs, and
    /// S3 is reached over https with a private CA. Call it inside a tokio runtime.
    pub fn start_tls(timings: Timings) -> Result<Self> {
        Self::start_with(timings, true)
    }

    fn start_with(timings: Timings, tls: bool) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("reelfarm-dist-")
            .tempdir()?;
        let etcd_ca = if tls {
            Some(TestCa::new(dir.path(), "etcd-ca")?)
        } else {
            None
        };
        let etcd = match &etcd_ca {
            Some(ca) => Etcd::start_tls(
                dir.path(),
                EtcdTls {
                    ca: ca.cert.clone(),
                    server: ca.loopback_server("etcd-server", true)?,
                },
            )?,
            None => Etcd::start(dir.path())?,
        };
        let s3 = S3Server::start()?;
        let store = ObjectStore {
            endpoint: s3.endpoint().to_string(),
            bucket: s3.bucket().to_string(),
            access_key_id: s3.access_key().to_string(),
            secret_access_key: s3.secret_key().to_string(),
            ca_file: None,
        };
        let mut cluster = Cluster::new(dir.path(), &etcd.url, store, timings);
        if let Some(ca) = &etcd_ca {
            cluster.etcd_tls = Some((ca.cert.clone(), ca.client("etcd-client", "scheduler")?));
            cluster.enable_tls()?;
            // S3 over https too, through a TLS front whose certificate the same CA signed.
            let upstream = s3.endpoint().trim_start_matches("http://").to_string();
            let front = ca.loopback_server("s3-front", false)?;
            cluster.store.endpoint = crate::tls_proxy::start(&front, upstream)?;
            cluster.store.ca_file = Some(ca.cert.clone());
        }
        Ok(Farm {
            cluster,
            etcd,
            s3,
            dir,
        })
    }

    /// A client of the farm's etcd, to read its records as the scheduler wrote them.
    pub async fn etcd_client(&self) -> Result<etcd_client::Client> {
        let options = self.cluster.etcd_tls.as_ref().map(|(ca, client)| {
            etcd_client::ConnectOptions::new().with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(
                        std::fs::read_to_string(ca).unwrap_or_default(),
                    ))
                    .identity(etcd_client::Identity::from_pem(
                        &client.cert_pem,
                        &client.key_pem,
                    )),
            )
        });
        Ok(etcd_client::Client::connect([self.etcd.url.as_str()], options).await?)
    }

    /// Runs the test body; on failure keeps the temp dir and prints the logs.
    pub async fn check(mut self, body: impl AsyncFnOnce(&mut Self) -> Result<()>) {
        let outcome = body(&mut self).await;
        if let Err(error) = outcome {
            let kept = self.dir.keep();
            panic!(
                "{error:#}\n(logs kept in {})\n{}",
                kept.display(),
                self.cluster.logs()
            );
        }
    }
}
