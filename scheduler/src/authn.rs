//! Who is calling: each request's bearer token turned into a principal before its handler
//! acts, and the checks that bind a caller to what it touches (its tenant's sequences, its
//! own worker ids). The rules themselves are pure, in `reelfarm_core::auth`.

use std::collections::HashMap;

use reelfarm_core::auth::{Principal, Role, same_digest, sha256_hex};
use tonic::Request;

use crate::Error;

/// The tenant of the tokens that come from configuration rather than the state store.
pub const FARM_TENANT: &str = "farm";

/// How a scheduler authenticates its callers.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Off: every caller may do anything, as before tokens existed (a laptop, a closed
    /// network); the scheduler says so loudly when it starts.
    pub required: bool,
    /// Tokens accepted from configuration (files or Secrets) rather than the state store:
    /// the first admin's, and one the workers may share. By SHA-256 of the whole text.
    bootstrap: Vec<(String, Principal)>,
}

impl AuthConfig {
    /// Callers are not checked.
    pub fn open() -> Self {
        AuthConfig::default()
    }

    /// Callers must present a token: one created by an admin (`reelfarm token create`), or
    /// one of these: `admin` (the first admin's, to create the others) and `workers` (a
    /// token every worker may share; give each worker its own for a per-worker identity).
    pub fn tokens(admin: Option<&str>, workers: Option<&str>) -> Self {
        let mut bootstrap = Vec::new();
        if let Some(admin) = admin {
            bootstrap.push((
                sha256_hex(admin.trim()),
                Principal {
                    tenant: FARM_TENANT.into(),
                    role: Role::Admin,
                    name: "bootstrap-admin".into(),
                },
            ));
        }
        if let Some(workers) = workers {
            bootstrap.push((
                sha256_hex(workers.trim()),
                Principal {
                    tenant: FARM_TENANT.into(),
                    role: Role::Worker,
                    name: "workers".into(),
                },
            ));
        }
        AuthConfig {
            required: true,
            bootstrap,
        }
    }

    /// The principal of a configured token, if `token` is one.
    pub(crate) fn bootstrap_principal(&self, token: &str) -> Option<Principal> {
        let digest = sha256_hex(token);
        self.bootstrap
            .iter()
            .find(|(expected, _)| same_digest(expected, &digest))
            .map(|(_, principal)| principal.clone())
    }
}

/// A fresh token's id and secret: 64 random bits of id and 244 of secret (v4 uuids, from the
/// operating system's generator).
pub fn draw_token() -> (String, String) {
    let id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    (id, secret)
}

/// The token of `authorization: Bearer <token>`, if the request carries one.
pub(crate) fn bearer<T>(request: &Request<T>) -> Result<&str, Error> {
    let value = request.metadata().get("authorization").ok_or_else(|| {
        Error::Unauthenticated(
            "no credentials: send `authorization: Bearer <token>` (the CLI reads REELFARM_TOKEN or --token-file)".into(),
        )
    })?;
    value
        .to_str()
        .ok()
        .and_then(|text| text.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| Error::Unauthenticated("authorization: expected `Bearer <token>`".into()))
}

/// The worker a verified client certificate names: its subject's Common Name. `None` when
/// the connection presented no certificate (clients, token-holding workers, plaintext).
/// Only a scheduler given a client CA asks for certificates, and rustls has verified the
/// chain against that CA before any request arrives.
pub(crate) fn certified_worker<T>(request: &Request<T>) -> Result<Option<Principal>, Error> {
    let Some(chain) = request.peer_certs() else {
        return Ok(None);
    };
    let Some(leaf) = chain.first() else {
        return Ok(None);
    };
    let common_name = reelfarm_common::tls::common_name(leaf.as_ref()).ok_or_else(|| {
        Error::PermissionDenied(
            "client certificate: its subject has no Common Name; issue worker certificates with CN=<worker id>".into(),
        )
    })?;
    Ok(Some(Principal::certified_worker(
        FARM_TENANT,
        &common_name,
    )?))
}

/// Which identity registered each worker id: a live worker's id cannot be taken over by
/// another identity, and reports about its work come only from it.
#[derive(Debug, Default)]
pub(crate) struct WorkerIdentities(HashMap<String, String>);

impl WorkerIdentities {
    /// Binds `worker` to `identity`, or refuses when another identity holds it.
    pub fn bind(&mut self, worker: &str, identity: &str) -> Result<(), Error> {
        match self.0.get(worker) {
            Some(holder) if holder != identity => Err(Error::PermissionDenied(format!(
                "worker_id: {worker} belongs to another identity; register without worker_id for a new one"
            ))),
            _ => {
                self.0.insert(worker.to_string(), identity.to_string());
                Ok(())
            }
        }
    }

    /// Refuses `identity` acting for `worker` when another identity holds it.
    pub fn check(&self, worker: &str, identity: &str) -> Result<(), Error> {
        match self.0.get(worker) {
            Some(holder) if holder != identity => Err(Error::PermissionDenied(format!(
                "worker {worker} belongs to another identity; a worker reports only on its own work"
            ))),
            _ => Ok(()),
        }
    }

    pub fn forget(&mut self, worker: &str) {
        self.0.remove(worker);
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_tokens_prove_their_principals_and_nothing_else() {
        let config = AuthConfig::tokens(Some("rf1.admin.s3cret\n"), Some("rf1.workers.x"));
        assert_eq!(
            config.bootstrap_principal("rf1.admin.s3cret").unwrap().role,
            Role::Admin
        );
        assert_eq!(
            config.bootstrap_principal("rf1.workers.x").unwrap().role,
            Role::Worker
        );
        assert!(config.bootstrap_principal("rf1.admin.guess").is_none());
        assert!(AuthConfig::open().bootstrap_principal("").is_none());
    }

    #[test]
    fn a_worker_id_stays_with_the_identity_that_registered_it() {
        let mut identities = WorkerIdentities::default();
        identities.bind("w1", "alice").unwrap();
        identities.bind("w1", "alice").unwrap();
        assert!(matches!(
            identities.bind("w1", "mallory"),
            Err(Error::PermissionDenied(_))
        ));
        assert!(identities.check("w1", "mallory").is_err());
        assert!(identities.check("w2", "mallory").is_ok());
        identities.forget("w1");
        identities.bind("w1", "mallory").unwrap();
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let mut request = Request::new(());
        assert!(matches!(bearer(&request), Err(Error::Unauthenticated(_))));
        request
            .metadata_mut()
            .insert("authorization", "Bearer rf1.a.b".parse().unwrap());
        assert_eq!(bearer(&request).unwrap(), "rf1.a.b");
        request
            .metadata_mut()
            .insert("authorization", "Basic xyz".parse().unwrap());
        assert!(bearer(&request).is_err());
    }
}
