//! The embedded farm's state: a revisioned map in this process. It behaves like the etcd
//! backend (conditional writes, leadership, worker expiry) so both pass one conformance suite.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};

use super::{LeaderToken, Leadership, Loaded, StateStore, Write};
use crate::Error;
use reelfarm_core::records::WORKERS;

#[derive(Default)]
struct Inner {
    values: BTreeMap<String, (Vec<u8>, i64)>,
    revision: i64,
    term: u64,
    leader: Option<(u64, String, watch::Sender<bool>)>,
    expired: Option<mpsc::UnboundedSender<String>>,
    online: HashMap<String, bool>,
}

#[derive(Default)]
pub struct MemoryState {
    inner: Mutex<Inner>,
}

impl MemoryState {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn check_leader(inner: &Inner, leadership: &Leadership) -> Result<(), Error> {
        let LeaderToken::Memory(term) = leadership.token else {
            return Err(Error::Internal(
                "etcd leadership used with memory state".into(),
            ));
        };
        match &inner.leader {
            Some((current, _, _)) if *current == term => Ok(()),
            _ => Err(Error::FailedPrecondition("leadership lost".into())),
        }
    }
}

#[async_trait]
impl StateStore for MemoryState {
    fn describe(&self) -> String {
        "memory".into()
    }

    async fn campaign(&self, url: &str) -> Result<Leadership, Error> {
        loop {
            let waiting = {
                let mut inner = self.lock();
                match &inner.leader {
                    Some((_, _, sender)) => sender.subscribe(),
                    None => {
                        inner.term += 1;
                        let term = inner.term;
                        let (sender, lost) = watch::channel(false);
                        inner.leader = Some((term, url.to_string(), sender));
                        return Ok(Leadership {
                            token: LeaderToken::Memory(term),
                            lost,
                        });
                    }
                }
            };
            let mut waiting = waiting;
            let _ = waiting.wait_for(|lost| *lost).await;
        }
    }

    async fn resign(&self, leadership: &Leadership) {
        let mut inner = self.lock();
        if Self::check_leader(&inner, leadership).is_ok()
            && let Some((_, _, sender)) = inner.leader.take()
        {
            let _ = sender.send(true);
        }
    }

    async fn leader_url(&self) -> Result<Option<String>, Error> {
        Ok(self.lock().leader.as_ref().map(|(_, url, _)| url.clone()))
    }

    async fn load(&self, leadership: &Leadership) -> Result<Loaded, Error> {
        let mut inner = self.lock();
        Self::check_leader(&inner, leadership)?;
        let (sender, expired) = mpsc::unbounded_channel();
        inner.expired = Some(sender);
        let mut records = BTreeMap::new();
        let mut revisions = BTreeMap::new();
        let mut workers = BTreeMap::new();
        for (key, (value, revision)) in &inner.values {
            if let Some(worker) = key.strip_prefix(WORKERS) {
                workers.insert(worker.to_string(), value.clone());
            } else {
                records.insert(key.clone(), value.clone());
                revisions.insert(key.clone(), *revision);
            }
        }
        Ok(Loaded {
            records,
            revisions,
            workers,
            expired,
        })
    }

    async fn commit(&self, leadership: &Leadership, writes: Vec<Write>) -> Result<Vec<i64>, Error> {
        let mut inner = self.lock();
        Self::check_leader(&inner, leadership)?;
        for write in &writes {
            let current = inner
                .values
                .get(&write.key)
                .map_or(0, |(_, revision)| *revision);
            if current != write.expected_revision {
                return Err(Error::FailedPrecondition(format!(
                    "{} is at revision {current}, expected {}",
                    write.key, write.expected_revision
                )));
            }
        }
        inner.revision += 1;
        let revision = inner.revision;
        let revisions = vec![revision; writes.len()];
        for write in writes {
            match write.value {
                Some(value) => {
                    inner.values.insert(write.key, (value, revision));
                }
                None => {
                    inner.values.remove(&write.key);
                }
            }
        }
        Ok(revisions)
    }

    async fn worker_online(
        &self,
        leadership: &Leadership,
        worker: &str,
        record: Vec<u8>,
        keep_alive: bool,
    ) -> Result<(), Error> {
        let mut inner = self.lock();
        Self::check_leader(&inner, leadership)?;
        inner.revision += 1;
        let revision = inner.revision;
        inner
            .values
            .insert(format!("{WORKERS}{worker}"), (record, revision));
        inner.online.insert(worker.to_string(), keep_alive);
        Ok(())
    }

    async fn worker_offline(&self, worker: &str) {
        let mut inner = self.lock();
        inner.values.remove(&format!("{WORKERS}{worker}"));
        inner.online.remove(worker);
        if let Some(expired) = &inner.expired {
            let _ = expired.send(worker.to_string());
        }
    }

    fn worker_ttl(&self) -> Duration {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn the_memory_state_passes_the_conformance_suite() {
        let state = super::MemoryState::new();
        super::super::conformance::run(&state)
            .await
            .unwrap_or_else(|failure| panic!("memory state: {failure}"));
    }
}
