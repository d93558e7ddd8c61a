//! A distributed farm on real parts for one test: etcd, an S3-compatible server, and an
//! empty cluster of `reelfarm` processes, all in one temp dir that is kept when it fails.

use anyhow::Result;

use crate::cluster::{Cluster, Etcd, ObjectStore, Timings};
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
        let dir = tempfile::Builder::new()
            .prefix("reelfarm-dist-")
            .tempdir()?;
        let etcd = Etcd::start(dir.path())?;
        let s3 = S3Server::start()?;
        let store = ObjectStore {
            endpoint: s3.endpoint().to_string(),
            bucket: s3.bucket().to_string(),
            access_key_id: s3.access_key().to_string(),
            secret_access_key: s3.secret_key().to_string(),
        };
        let cluster = Cluster::new(dir.path(), &etcd.url, store, timings);
        Ok(Farm {
            cluster,
            etcd,
            s3,
            dir,
        })
    }

    /// A client of the farm's etcd, to read its records as the scheduler wrote them.
    pub async fn etcd_client(&self) -> Result<etcd_client::Client> {
        Ok(etcd_client::Client::connect([self.etcd.url.as_str()], None).await?)
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
