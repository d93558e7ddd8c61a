//! Who is calling and what they may do: bearer tokens that name a tenant and a role, kept as
//! hashes in the farm's records, and the rules each handler asks before it acts. Pure like
//! the rest of the core: the scheduler draws the random secrets and reads the metadata.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Error;

/// What a principal may do. Workers call the worker API only; the others the client API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Submits sequences and sees its own tenant's.
    Submitter,
    /// Sees every tenant's sequences and workers, drains and undrains workers.
    Operator,
    /// An operator who also creates and revokes tokens.
    Admin,
    /// A worker process: registers, takes work and reports on it.
    Worker,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Submitter, Role::Operator, Role::Admin, Role::Worker];

    pub fn name(self) -> &'static str {
        match self {
            Role::Submitter => "submitter",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Worker => "worker",
        }
    }

    pub fn parse(name: &str) -> Result<Role, Error> {
        Role::ALL
            .into_iter()
            .find(|role| role.name() == name)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "role: {name:?} is not a role; use submitter, operator, admin or worker"
                ))
            })
    }
}

/// The caller of one request, as its credentials say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: String,
    pub role: Role,
    /// The token's name (or, for a worker with a certificate, the name it certifies).
    pub name: String,
}

/// What a call needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Any valid credentials (the handler decides the rest).
    Any,
    /// Any client role (not a worker).
    Client,
    Operator,
    Admin,
    Worker,
}

impl Need {
    fn describe(self) -> &'static str {
        match self {
            Need::Any => "credentials",
            Need::Client => "a client token (submitter, operator or admin)",
            Need::Operator => "an operator or admin token",
            Need::Admin => "an admin token",
            Need::Worker => "a worker's credentials",
        }
    }
}

/// Names of certified workers carry this prefix, which no token name can (labels are plain).
const CERTIFIED: &str = "certificate:";

impl Principal {
    /// The worker a verified client certificate names (its Common Name is the worker id).
    pub fn certified_worker(tenant: &str, worker_id: &str) -> Result<Self, Error> {
        check_plain("client certificate Common Name", worker_id, 128)?;
        Ok(Principal {
            tenant: tenant.to_string(),
            role: Role::Worker,
            name: format!("{CERTIFIED}{worker_id}"),
        })
    }

    /// The one worker id a certified worker may act as; `None` for token holders.
    pub fn certified_worker_id(&self) -> Option<&str> {
        self.name.strip_prefix(CERTIFIED)
    }

    /// Refuses a worker acting for another worker's id: a certified worker is only the id
    /// its certificate names.
    pub fn may_act_as(&self, worker_id: &str) -> Result<(), Error> {
        match self.certified_worker_id() {
            Some(certified) if certified != worker_id => Err(Error::PermissionDenied(format!(
                "worker_id: {worker_id:?} is not {certified:?}, the worker this client certificate names"
            ))),
            _ => Ok(()),
        }
    }

    /// Refuses a caller whose role does not allow the call.
    pub fn may(&self, need: Need, call: &str) -> Result<(), Error> {
        let allowed = match need {
            Need::Any => true,
            Need::Client => self.role != Role::Worker,
            Need::Operator => matches!(self.role, Role::Operator | Role::Admin),
            Need::Admin => self.role == Role::Admin,
            Need::Worker => self.role == Role::Worker,
        };
        if allowed {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "{call} needs {}; {} is a {} of tenant {:?}",
                need.describe(),
                self.name,
                self.role.name(),
                self.tenant
            )))
        }
    }

    /// Whether the caller sees a sequence owned by `owner`: its own tenant's; operators and
    /// admins see every tenant's.
    pub fn sees(&self, owner: Option<&str>) -> bool {
        matches!(self.role, Role::Operator | Role::Admin) || owner == Some(self.tenant.as_str())
    }

    /// The owner of a submission: the caller's tenant. A spec may name it; naming another
    /// is refused, except for operators and admins, who may submit for any tenant.
    pub fn owner_for(&self, claimed: Option<&str>) -> Result<String, Error> {
        match claimed {
            None => Ok(self.tenant.clone()),
            Some(owner) if owner == self.tenant => Ok(self.tenant.clone()),
            Some(owner) if matches!(self.role, Role::Operator | Role::Admin) => {
                Ok(owner.to_string())
            }
            Some(owner) => Err(Error::PermissionDenied(format!(
                "owner: {owner:?} is not your tenant ({:?}); leave owner out, sequences are owned by the submitter's tenant",
                self.tenant
            ))),
        }
    }
}

/// A token as the state store keeps it: never the secret, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub tenant: String,
    pub role: Role,
    pub secret_sha256: String,
    pub created_unix_s: f64,
}

impl TokenRecord {
    pub fn principal(&self) -> Principal {
        Principal {
            tenant: self.tenant.clone(),
            role: self.role,
            name: self.name.clone(),
        }
    }
}

/// Starts every token: tells a reelfarm token from other secrets in a file or a log scan.
pub const TOKEN_PREFIX: &str = "rf1";

/// `rf1.<id>.<secret>`: the id finds the record, the secret proves the holder.
pub fn token_text(id: &str, secret: &str) -> String {
    format!("{TOKEN_PREFIX}.{id}.{secret}")
}

/// The id and secret of a token's text, if it has the shape of one.
pub fn split_token(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix(TOKEN_PREFIX)?.strip_prefix('.')?;
    let (id, secret) = rest.split_once('.')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

/// Lowercase hex SHA-256 of `text`.
pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Compares in time independent of where the inputs differ (both are digests here).
pub fn same_digest(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |difference, (x, y)| difference | (x ^ y))
            == 0
}

/// Tenant and token names travel in keys, logs and metrics labels: keep them plain.
pub fn check_label(field: &str, value: &str) -> Result<(), Error> {
    check_plain(field, value, 64)
}

/// `value` is 1 to `max` letters, digits, '-', '_' or '.': safe in keys, logs and labels.
pub fn check_plain(field: &str, value: &str, max: usize) -> Result<(), Error> {
    let plain = !value.is_empty()
        && value.len() <= max
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if plain {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{field}: {value:?} must be 1-{max} letters, digits, '-', '_' or '.'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn principal(role: Role) -> Principal {
        Principal {
            tenant: "studio-a".into(),
            role,
            name: "someone".into(),
        }
    }

    #[test]
    fn a_certified_worker_acts_only_as_the_id_its_certificate_names() {
        let worker = Principal::certified_worker("farm", "gpu-node-3").unwrap();
        assert_eq!(worker.role, Role::Worker);
        assert_eq!(worker.certified_worker_id(), Some("gpu-node-3"));
        assert!(worker.may_act_as("gpu-node-3").is_ok());
        let error = worker.may_act_as("gpu-node-4").unwrap_err().to_string();
        assert!(
            error.contains("gpu-node-4") && error.contains("gpu-node-3"),
            "{error}"
        );
        assert!(worker.may(Need::Client, "SubmitSequence").is_err());
        // Token holders are bound by registration instead; their names cannot look certified.
        assert_eq!(principal(Role::Worker).certified_worker_id(), None);
        assert!(principal(Role::Worker).may_act_as("anything").is_ok());
        assert!(check_plain("name", "certificate:x", 64).is_err());
        assert!(Principal::certified_worker("farm", "../etc").is_err());
    }

    #[test]
    fn roles_allow_their_calls_and_nothing_else() {
        let table = [
            (Role::Submitter, [true, false, false, false]),
            (Role::Operator, [true, true, false, false]),
            (Role::Admin, [true, true, true, false]),
            (Role::Worker, [false, false, false, true]),
        ];
        for (role, allowed) in table {
            for (need, allowed) in [Need::Client, Need::Operator, Need::Admin, Need::Worker]
                .into_iter()
                .zip(allowed)
            {
                assert_eq!(
                    principal(role).may(need, "Call").is_ok(),
                    allowed,
                    "{role:?} {need:?}"
                );
            }
        }
        let refused = principal(Role::Worker)
            .may(Need::Client, "SubmitSequence")
            .unwrap_err()
            .to_string();
        assert!(
            refused.starts_with("SubmitSequence needs a client token"),
            "{refused}"
        );
    }

    #[test]
    fn submitters_see_and_own_only_their_tenant() {
        let submitter = principal(Role::Submitter);
        assert!(submitter.sees(Some("studio-a")));
        assert!(!submitter.sees(Some("studio-b")));
        assert!(!submitter.sees(None));
        assert!(principal(Role::Operator).sees(Some("studio-b")));
        assert_eq!(submitter.owner_for(None).unwrap(), "studio-a");
        assert!(matches!(
            submitter.owner_for(Some("studio-b")),
            Err(Error::PermissionDenied(_))
        ));
        assert_eq!(
            principal(Role::Admin).owner_for(Some("studio-b")).unwrap(),
            "studio-b"
        );
    }

    proptest! {
        /// A token's text splits back into its id and secret; other text does not split.
        #[test]
        fn token_text_round_trips(id in "[0-9a-f]{12}", secret in "[0-9a-f]{64}") {
            let text = token_text(&id, &secret);
            prop_assert_eq!(split_token(&text), Some((id.as_str(), secret.as_str())));
            let prefixed = format!("Bearer {text}");
            prop_assert_eq!(split_token(&prefixed), None);
            prop_assert_eq!(split_token(&text[..text.len() - secret.len()]), None);
        }

        #[test]
        fn digests_compare_equal_only_to_themselves(a in "\\PC{0,40}", b in "\\PC{0,40}") {
            let (x, y) = (sha256_hex(&a), sha256_hex(&b));
            prop_assert_eq!(same_digest(&x, &y), a == b);
            prop_assert_eq!(x.len(), 64);
        }
    }
}
