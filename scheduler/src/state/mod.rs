//! Where the farm's records live and who may write them. One trait with two backends: etcd
//! for the distributed farm (several schedulers, one leader) and memory for the embedded
//! one. Every write is conditional on leadership and on the revision each key had when it was
//! last read, so a deposed leader can never overwrite its successor.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};

use crate::Error;

pub mod conformance;
pub mod etcd;
pub mod memory;

pub use etcd::{EtcdSettings, EtcdState, etcd_tls};
pub use memory::MemoryState;

pub use reelfarm_core::records::Write;

/// Proof of leadership, passed to every write. `lost` turns true when it ends.
#[derive(Clone)]
pub struct Leadership {
    pub(crate) token: LeaderToken,
    pub lost: watch::Receiver<bool>,
}

#[derive(Clone)]
pub(crate) enum LeaderToken {
    Memory(u64),
    Etcd(Arc<etcd::EtcdLeader>),
}

impl Leadership {
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves when leadership ends.
    pub async fn wait_lost(&self) {
        let mut lost = self.lost.clone();
        let _ = lost.wait_for(|lost| *lost).await;
    }
}

/// Everything a new leader needs to carry on.
pub struct Loaded {
    /// Records under `sequences/`, by key relative to the store's prefix.
    pub records: BTreeMap<String, Vec<u8>>,
    pub revisions: BTreeMap<String, i64>,
    /// Registered workers with a live lease: id → record.
    pub workers: BTreeMap<String, Vec<u8>>,
    /// Ids of workers whose lease runs out from now on.
    pub expired: mpsc::UnboundedReceiver<String>,
}

#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// Where the state lives, for logs (`etcd http://127.0.0.1:2379`, `memory`).
    fn describe(&self) -> String;

    /// Waits until this scheduler leads, advertising `url` to clients and the other schedulers.
    async fn campaign(&self, url: &str) -> Result<Leadership, Error>;

    /// Gives leadership up at once (a clean shutdown), so another scheduler need not wait
    /// for the lease to run out.
    async fn resign(&self, leadership: &Leadership);

    /// The current leader's URL, if any scheduler leads.
    async fn leader_url(&self) -> Result<Option<String>, Error>;

    async fn load(&self, leadership: &Leadership) -> Result<Loaded, Error>;

    /// Applies every write atomically, only while `leadership` holds and every key is at its
    /// expected revision; returns the revision each write now has (large batches may be split
    /// into several transactions, each still fenced by leadership).
    /// `Error::FailedPrecondition` when a condition failed (leadership lost or a conflict).
    async fn commit(&self, leadership: &Leadership, writes: Vec<Write>) -> Result<Vec<i64>, Error>;

    /// Records a worker under a fresh lease of `ttl`. With `keep_alive` the lease is renewed
    /// until `worker_offline`; without, the worker has one `ttl` to reconnect (a takeover).
    async fn worker_online(
        &self,
        leadership: &Leadership,
        worker: &str,
        record: Vec<u8>,
        keep_alive: bool,
    ) -> Result<(), Error>;

    /// Stops renewing the worker's lease: it expires after the TTL unless the worker comes
    /// back (in memory: at once).
    async fn worker_offline(&self, worker: &str);

    /// How long a silent worker keeps its work.
    fn worker_ttl(&self) -> Duration;
}
