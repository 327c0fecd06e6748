//! Two memories that keep token checks off the hot path of every FHIR request:
//!
//! - [`Verified`]: the claims of access tokens already verified, by the SHA-256 of the token,
//!   until the token expires. An ES256 signature check costs about 0.5 ms of CPU with the pure
//!   Rust backend, ten times a whole read by id; a lookup costs a hash (about 0.3 µs). A token
//!   is only ever cached after a full verification, and every check that depends on time
//!   (`exp`, `nbf`) is made again on each use.
//! - [`Revoked`]: the ids (`jti`) of revoked access tokens that have not expired yet, read from
//!   the database at most once per [`REVOCATION_REFRESH`], so that a revocation (RFC 7009, at any
//!   replica) takes effect everywhere within that time without a query per request.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant as StdInstant};

use sha2::{Digest as _, Sha256};

use super::claims::AccessClaims;
use crate::store::Store;

/// The most tokens remembered; past it, expired ones are dropped, and if none has, all.
const CAPACITY: usize = 100_000;

/// How stale the revocation list may be.
pub const REVOCATION_REFRESH: Duration = Duration::from_secs(1);

/// Verified tokens, by the SHA-256 of their text.
#[derive(Debug, Default)]
pub struct Verified {
    tokens: RwLock<HashMap<[u8; 32], Arc<AccessClaims>>>,
}

/// The key of a token in [`Verified`].
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Verified {
    /// The claims of a token verified before, if it is still within `exp` and `nbf` (with
    /// `leeway` seconds) at `now` (seconds since the epoch).
    pub fn get(&self, key: &[u8; 32], now: i64, leeway: i64) -> Option<Arc<AccessClaims>> {
        let tokens = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        tokens
            .get(key)
            .filter(|c| now <= c.exp + leeway && c.nbf - leeway <= now)
            .cloned()
    }

    /// Remembers a token that was just verified in full.
    pub fn insert(&self, key: [u8; 32], claims: Arc<AccessClaims>, now: i64) {
        let mut tokens = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        if tokens.len() >= CAPACITY {
            tokens.retain(|_, c| c.exp >= now);
            if tokens.len() >= CAPACITY {
                tokens.clear();
            }
        }
        tokens.insert(key, claims);
    }
}

/// The revoked access tokens that have not expired, as of the last refresh.
#[derive(Debug)]
pub struct Revoked {
    state: tokio::sync::Mutex<(Option<StdInstant>, Arc<HashSet<String>>)>,
}

impl Default for Revoked {
    fn default() -> Self {
        Revoked {
            state: tokio::sync::Mutex::new((None, Arc::new(HashSet::new()))),
        }
    }
}

impl Revoked {
    /// Whether `jti` was revoked, by a list at most [`REVOCATION_REFRESH`] old.
    pub async fn contains(&self, store: &Store, jti: &str) -> Result<bool, sqlx::Error> {
        let mut state = self.state.lock().await;
        let fresh = state.0.is_some_and(|at| at.elapsed() < REVOCATION_REFRESH);
        if !fresh {
            let now = crate::model::Instant::now().millis() / 1000;
            let mut conn = store.reader().await?;
            let rows: Vec<(String,)> =
                sqlx::query_as("SELECT jti FROM auth_revoked_jti WHERE expires_at >= $1")
                    .bind(now)
                    .fetch_all(&mut *conn)
                    .await?;
            *state = (
                Some(StdInstant::now()),
                Arc::new(rows.into_iter().map(|(jti,)| jti).collect()),
            );
        }
        Ok(state.1.contains(jti))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64, nbf: i64) -> Arc<AccessClaims> {
        Arc::new(AccessClaims {
            iss: "i".to_owned(),
            aud: "a".to_owned(),
            sub: "s".to_owned(),
            client_id: "c".to_owned(),
            scope: "system/*.rs".to_owned(),
            iat: nbf,
            nbf,
            exp,
            jti: "j".to_owned(),
            user_kind: None,
            fhir_user: None,
            patient: None,
            encounter: None,
            purpose_of_use: None,
            break_glass: false,
            auditor: false,
        })
    }

    #[test]
    fn a_remembered_token_is_served_only_within_its_times() {
        let verified = Verified::default();
        let key = digest("a.b.c");
        verified.insert(key, claims(1_000, 900), 950);
        assert!(verified.get(&key, 950, 30).is_some());
        assert!(verified.get(&key, 1_030, 30).is_some(), "within the leeway");
        assert!(verified.get(&key, 1_031, 30).is_none(), "expired");
        assert!(verified.get(&key, 869, 30).is_none(), "not valid yet");
        assert!(
            verified.get(&digest("a.b.d"), 950, 30).is_none(),
            "another token"
        );
    }
}
