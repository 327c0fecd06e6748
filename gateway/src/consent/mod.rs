//! On-chain patient consent (issue 5; PRODUCT.md promises 5 and 6): what a request may read of
//! patient data beyond what its token's scopes allow.
//!
//! The `ConsentRegistry` contract holds the grants; the [`follower`] reads its events into
//! the index tables (`consent_grant`, migration 0012) and records how far it has read
//! (`consent_cursor`). A request gets a [`Gate`] from [`Consent::gate`] with its
//! [`Access`](crate::access::Access):
//!
//! - [`Gate::Open`]: nothing to check: the operator, enforcement off, or break-the-glass;
//! - [`Gate::Grants`]: patient-compartment data is served only where a grant covers it: the
//!   condition ([`Grants`]) becomes part of every query through the access filter, so a
//!   revocation the follower has written applies to the very next query, and searches keep
//!   exact totals and pages;
//! - [`Gate::Stale`]: the index has not caught up with the chain within `consent.max_lag_secs`
//!   (or never has): patient-compartment reads are refused with 503, never served from an old
//!   view (fail closed).
//!
//! Who a grant names (its grantee, no patient data): the app or backend system by
//! `keccak256("client:" ‖ client_id)`, a user of the gateway by `keccak256("user:" ‖ user_id)`.
//! A request is covered by a grant to any of them. A patient always reads their own
//! compartment.

// pub mod follower;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::access::{Access, Actor};
use crate::auth::claims::UserKind;
use crate::config::{ConsentConfig, ConsentDenied};
use crate::error::{Error, Result};
use crate::store::Store;

pub use crate::store::consent::Grants;
use crate::store::consent::{self as index, Cursor};

/// The purpose of use of an emergency access (v3 ActReason `ETREAT`): break-the-glass.
pub const BREAK_THE_GLASS_PURPOSE: &str = "ETREAT";

/// How long a read of the index's cursor is reused by later requests.
const CURSOR_CACHE: Duration = Duration::from_millis(200);

/// What the consent state allows a request (see the module documentation).
#[derive(Debug, Clone)]
pub enum Gate {
    Open,
    Grants(Arc<Grants>),
    Stale(String),
}

/// The consent enforcement of one gateway: its settings and the index it reads.
#[derive(Debug)]
pub struct Consent {
    config: ConsentConfig,
    store: Store,
    cursor: Mutex<Option<(Instant, Option<Cursor>)>>,
}

impl Consent {
    pub fn new(config: ConsentConfig, store: Store) -> Consent {
        Consent {
            config,
            store,
            cursor: Mutex::new(None),
        }
    }

    pub fn config(&self) -> &ConsentConfig {
        &self.config
    }

    /// The error for a read of one resource that no grant covers.
    pub fn denied_error(
        denied: ConsentDenied,
        resource_type: &str,
        id: &str,
        purpose: &str,
    ) -> Error {
        match denied {
            ConsentDenied::NotFound => Error::NotFound {
                resource_type: resource_type.to_owned(),
                id: id.to_owned(),
            },
            ConsentDenied::Forbidden => Error::NoConsent(format!(
                "{resource_type}/{id} is patient data that no consent on chain lets this app or user read for the purpose of use {purpose}: the patient has not granted it, or the grant was revoked, expired or is not yet confirmed"
            )),
        }
    }

    /// The gate of a request with `access`.
    pub async fn gate(&self, access: &Access) -> Result<Gate> {
        if !self.config.enforce {
            return Ok(Gate::Open);
        }
        let (grantees, own_patient) = match &access.actor {
            Actor::Operator => return Ok(Gate::Open),
            Actor::User {
                kind,
                id,
                fhir_user,
            } => {
                let own = match kind {
                    UserKind::Patient => fhir_user
                        .as_deref()
                        .and_then(|u| u.strip_prefix("Patient/"))
                        .map(str::to_owned),
                    _ => None,
                };
                let mut grantees = vec![grantee_of_user(id)];
                grantees.extend(access.client_id.as_deref().map(grantee_of_client));
                (grantees, own)
            }
            Actor::Client => (
                access
                    .client_id
                    .as_deref()
                    .map(grantee_of_client)
                    .into_iter()
                    .collect(),
                None,
            ),
        };
        if access.break_glass {
            return Ok(Gate::Open);
        }
        let Some(cursor) = self.cursor().await? else {
            return Ok(Gate::Stale(
                "the gateway has not read the consent registry on chain yet, so it cannot tell what the patient consented to; patient data is served once it has (retry shortly)"
                    .to_owned(),
            ));
        };
        let now_ms = crate::model::Instant::now().millis();
        let age_ms = now_ms - cursor.synced_at;
        let bound_ms = (self.config.max_lag_secs * 1000) as i64;
        if age_ms > bound_ms {
            return Ok(Gate::Stale(format!(
                "the gateway's view of the consent registry on chain is {} s old (the bound is {} s): patient data is not served from a stale view of consent; retry when the chain is reachable again",
                age_ms / 1000,
                self.config.max_lag_secs
            )));
        }
        let confirmations = self.config.confirmations as i64;
        Ok(Gate::Grants(Arc::new(Grants {
            grantees,
            purpose: access.purpose_of_use.clone(),
            own_patient,
            confirmed_through: (cursor.head - confirmations + 1).min(cursor.block_number),
            now_secs: now_ms / 1000,
            block: cursor.block_number,
        })))
    }

    /// The index's cursor, read at most every [`CURSOR_CACHE`].
    async fn cursor(&self) -> Result<Option<Cursor>> {
        if let Some((read_at, cursor)) = &*self.cursor.lock().expect("cursor cache") {
            if read_at.elapsed() < CURSOR_CACHE {
                return Ok(cursor.clone());
            }
        }
        let cursor = index::cursor(&mut *self.store.reader().await?).await?;
        *self.cursor.lock().expect("cursor cache") = Some((Instant::now(), cursor.clone()));
        Ok(cursor)
    }

    /// Forgets the cached cursor (after the follower moved it), so that the next request
    /// reads it afresh.
    pub fn invalidate(&self) {
        *self.cursor.lock().expect("cursor cache") = None;
    }
}

/// The grantee id of an app or backend system: `keccak256("client:" ‖ client_id)`.
pub fn grantee_of_client(client_id: &str) -> String {
    hex_id(&format!("client:{client_id}"))
}

/// The grantee id of a user of the gateway: `keccak256("user:" ‖ user_id)`.
pub fn grantee_of_user(user_id: &str) -> String {
    hex_id(&format!("user:{user_id}"))
}

fn hex_id(text: &str) -> String {
    format!("0x{}", hex::encode(alloy::primitives::keccak256(text.as_bytes())))
}
