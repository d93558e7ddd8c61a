//! One suite every state backend must pass (memory in unit tests, etcd in the integration
//! tests): conditional writes, commits of any size, leadership fencing and worker expiry.

use std::time::Duration;

use super::{StateStore, Write};
use crate::Error;

fn put(key: &str, value: &str, expected_revision: i64) -> Write {
    Write {
        key: key.into(),
        value: Some(value.as_bytes().to_vec()),
        expected_revision,
    }
}

/// Runs the suite; `state` must be empty and nobody else may campaign on it.
pub async fn run(state: &dyn StateStore) -> Result<(), String> {
    let leadership = state
        .campaign("http://scheduler-a")
        .await
        .map_err(|error| format!("campaign: {error}"))?;
    let leader = state
        .leader_url()
        .await
        .map_err(|error| error.to_string())?;
    if leader.as_deref() != Some("http://scheduler-a") {
        return Err(format!("leader_url after campaign: {leader:?}"));
    }

    let first = state
        .commit(&leadership, vec![put("sequences/a/status", "one", 0)])
        .await
        .map_err(|error| format!("first write: {error}"))?[0];
    match state
        .commit(&leadership, vec![put("sequences/a/status", "stale", 0)])
        .await
    {
        Err(Error::FailedPrecondition(_)) => {}
        other => {
            return Err(format!(
                "a write at a stale revision must be refused: {other:?}"
            ));
        }
    }
    let second = state
        .commit(
            &leadership,
            vec![
                put("sequences/a/status", "two", first),
                put("sequences/a/tasks/stitch", "t", 0),
            ],
        )
        .await
        .map_err(|error| format!("write at the current revision: {error}"))?[0];
    if second <= first {
        return Err(format!("revisions must grow: {first} then {second}"));
    }
    // A refused transaction writes nothing, not even its valid parts.
    let refused = state
        .commit(
            &leadership,
            vec![
                put("sequences/a/tasks/s000-00", "partial", 0),
                put("sequences/a/status", "three", first),
            ],
        )
        .await;
    if refused.is_ok() {
        return Err("a transaction with one stale write must be refused".into());
    }

    // A transition of any size is applied whole (etcd splits what one transaction can't hold).
    let big: Vec<Write> = (0..1000)
        .map(|index| put(&format!("sequences/big/tasks/s{index:04}"), "ready", 0))
        .collect();
    let revisions = state
        .commit(&leadership, big)
        .await
        .map_err(|error| format!("a 1000-write commit: {error}"))?;
    if revisions.len() != 1000 || revisions.iter().any(|&revision| revision <= second) {
        return Err(format!(
            "a big commit's revisions: {:?}…",
            &revisions[..revisions.len().min(3)]
        ));
    }

    state
        .worker_online(&leadership, "w1", b"{}".to_vec(), true)
        .await
        .map_err(|error| format!("worker_online: {error}"))?;
    let mut loaded = state
        .load(&leadership)
        .await
        .map_err(|error| format!("load: {error}"))?;
    let status = loaded.records.get("sequences/a/status").map(Vec::as_slice);
    if status != Some(b"two".as_slice()) {
        return Err(format!("load returned status {status:?}"));
    }
    if loaded.records.contains_key("sequences/a/tasks/s000-00") {
        return Err("the refused transaction left a record behind".into());
    }
    if loaded.revisions.get("sequences/a/status") != Some(&second) {
        return Err(format!("load returned revisions {:?}", loaded.revisions));
    }
    let big = loaded
        .records
        .keys()
        .filter(|key| key.starts_with("sequences/big/"))
        .count();
    if big != 1000 || loaded.records.len() != 1002 {
        return Err(format!(
            "load after a 1000-write commit: {big} of its records, {} in all (1002 expected)",
            loaded.records.len()
        ));
    }
    if !loaded.workers.contains_key("w1") {
        return Err(format!("load lost the worker: {:?}", loaded.workers.keys()));
    }

    state.worker_offline("w1").await;
    let deadline = state.worker_ttl() * 3 + Duration::from_secs(3);
    match tokio::time::timeout(deadline, loaded.expired.recv()).await {
        Ok(Some(worker)) if worker == "w1" => {}
        other => return Err(format!("worker expiry within {deadline:?}: {other:?}")),
    }

    state.resign(&leadership).await;
    match state
        .commit(&leadership, vec![put("sequences/a/status", "late", second)])
        .await
    {
        Err(Error::FailedPrecondition(_)) => {}
        other => {
            return Err(format!(
                "a deposed leader's write must be refused: {other:?}"
            ));
        }
    }
    let successor = tokio::time::timeout(
        Duration::from_secs(10),
        state.campaign("http://scheduler-b"),
    )
    .await
    .map_err(|_| "a second campaign after resign did not win".to_string())?
    .map_err(|error| error.to_string())?;
    state
        .commit(&successor, vec![put("sequences/a/status", "b", second)])
        .await
        .map_err(|error| format!("the successor's write: {error}"))?;
    state.resign(&successor).await;
    Ok(())
}
