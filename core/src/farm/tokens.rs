//! Tokens as part of the farm's state: admins create and revoke them through transitions, so
//! they reach the state store (as hashes) like every other record and a new leader knows
//! them. A request's token is looked up by its id and proven by its secret's digest.

use std::collections::BTreeSet;

use super::Farm;
use crate::Error;
use crate::auth::{Principal, TokenRecord, check_label, same_digest, sha256_hex, split_token};

/// Tokens one farm keeps; each is one record.
pub const MAX_TOKENS: usize = 10_000;

impl Farm {
    /// Adds a token (its secret already hashed by the caller, who drew it).
    pub fn create_token(&mut self, record: TokenRecord) -> Result<(), Error> {
        check_label("name", &record.name)?;
        check_label("tenant", &record.tenant)?;
        if self.tokens.values().any(|token| token.name == record.name) {
            return Err(Error::InvalidArgument(format!(
                "name: a token named {:?} exists; revoke it first (`reelfarm token revoke {}`) or choose another name",
                record.name, record.name
            )));
        }
        if self.tokens.len() >= MAX_TOKENS || self.tokens.contains_key(&record.id) {
            return Err(Error::InvalidArgument(format!(
                "the farm holds {} tokens, the most it keeps; revoke unused ones",
                self.tokens.len()
            )));
        }
        self.tokens_changed.insert(record.id.clone());
        self.tokens.insert(record.id.clone(), record);
        Ok(())
    }

    /// Revokes the token with this id or name; it stops working at once.
    pub fn revoke_token(&mut self, id_or_name: &str) -> Result<TokenRecord, Error> {
        let id = self
            .tokens
            .values()
            .find(|token| token.id == id_or_name || token.name == id_or_name)
            .map(|token| token.id.clone())
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "no token {id_or_name:?}; `reelfarm token list` shows ids and names"
                ))
            })?;
        self.tokens_changed.insert(id.clone());
        Ok(self.tokens.remove(&id).expect("found above"))
    }

    pub fn tokens(&self) -> impl Iterator<Item = &TokenRecord> {
        self.tokens.values()
    }

    /// The principal a token's text proves, or why it proves none.
    pub fn authenticate(&self, text: &str) -> Result<Principal, Error> {
        let (id, secret) = split_token(text).ok_or_else(|| {
            Error::Unauthenticated(
                "the bearer token is not a reelfarm token (rf1.<id>.<secret>); check REELFARM_TOKEN or --token-file".into(),
            )
        })?;
        match self.tokens.get(id) {
            Some(record) if same_digest(&sha256_hex(secret), &record.secret_sha256) => {
                Ok(record.principal())
            }
            _ => Err(Error::Unauthenticated(
                "unknown or revoked token; ask an admin for a new one (`reelfarm token create`)"
                    .into(),
            )),
        }
    }

    /// Tokens created or revoked since the last call, for the state store.
    pub fn take_changed_tokens(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.tokens_changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Role, token_text};

    fn record(id: &str, name: &str, secret: &str) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            name: name.into(),
            tenant: "studio-a".into(),
            role: Role::Submitter,
            secret_sha256: sha256_hex(secret),
            created_unix_s: 1.0,
        }
    }

    #[test]
    fn a_token_proves_its_principal_until_it_is_revoked() {
        let mut farm = Farm::default();
        farm.create_token(record("0a1b", "ci", "s3cret")).unwrap();
        let principal = farm.authenticate(&token_text("0a1b", "s3cret")).unwrap();
        assert_eq!(
            (principal.tenant.as_str(), principal.role),
            ("studio-a", Role::Submitter)
        );
        for wrong in [
            token_text("0a1b", "guess"),
            token_text("ffff", "s3cret"),
            "s3cret".into(),
        ] {
            assert!(
                matches!(farm.authenticate(&wrong), Err(Error::Unauthenticated(_))),
                "{wrong}"
            );
        }
        assert!(
            farm.create_token(record("0a1c", "ci", "x")).is_err(),
            "names are unique"
        );
        assert_eq!(farm.take_changed_tokens().len(), 1);
        farm.revoke_token("ci").unwrap();
        assert!(farm.authenticate(&token_text("0a1b", "s3cret")).is_err());
        assert_eq!(
            farm.take_changed_tokens().into_iter().collect::<Vec<_>>(),
            ["0a1b"]
        );
        assert!(matches!(farm.revoke_token("ci"), Err(Error::NotFound(_))));
    }
}
