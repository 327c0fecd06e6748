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

pub mod api;
pub mod follower;
pub mod projection;

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
    /// Held by the one request that reads the cursor afresh: the others wait for its read
    /// instead of making their own.
    cursor_read: tokio::sync::Mutex<()>,
    /// The relayer of patients' signed grants, when the gateway has a key for it.
    relayer: Option<anchor::consent::ConsentRelayer>,
    /// What the follower reports.
    pub status: follower::SharedFollowerStatus,
}

impl Consent {
    pub fn new(
        config: ConsentConfig,
        store: Store,
        relayer: Option<anchor::consent::ConsentRelayer>,
    ) -> Consent {
        Consent {
            config,
            store,
            cursor: Mutex::new(None),
            cursor_read: tokio::sync::Mutex::new(()),
            relayer,
            status: Default::default(),
        }
    }

    /// The relayer, when the gateway relays grants.
    pub fn relayer(&self) -> Option<&anchor::consent::ConsentRelayer> {
        self.relayer.as_ref()
    }

    /// What `/health/ready` shows: the index's block, the head, its age, the follower's
    /// last error; `fail` when consent-gated reads are being refused.
    pub async fn health(&self) -> serde_json::Value {
        let status = self
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if !self.config.enforce {
            return serde_json::json!({"status": "pass", "enforced": false});
        }
        let cursor = self.cursor().await.ok().flatten();
        let now = crate::model::Instant::now().millis();
        let age_secs = cursor
            .as_ref()
            .filter(|c| c.synced_at > 0)
            .map(|c| (now - c.synced_at).max(0) / 1000);
        let fresh = age_secs.is_some_and(|age| age <= self.config.max_lag_secs as i64);
        serde_json::json!({
            "status": if fresh { "pass" } else { "fail" },
            "enforced": true,
            "registry": cursor.as_ref().map(|c| c.registry.clone()),
            "block": cursor.as_ref().map(|c| c.block_number),
            "head": cursor.as_ref().map(|c| c.head),
            "ageSecs": age_secs,
            "maxLagSecs": self.config.max_lag_secs,
            "reorgs": status.reorgs,
            "lastError": status.last_error,
        })
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
        Ok(Gate::Grants(Arc::new(Grants {
            grantees,
            purpose: access.purpose_of_use.clone(),
            own_patient,
            confirmed_through: cursor.confirmed_through(self.config.confirmations),
            now_secs: now_ms / 1000,
            block: cursor.block_number,
            block_hash: cursor.block_hash,
            chain_id: cursor.chain_id,
            registry: cursor.registry,
        })))
    }

    /// The index's cursor, read at most every [`CURSOR_CACHE`], by one request at a time.
    async fn cursor(&self) -> Result<Option<Cursor>> {
        if let Some(cursor) = self.cached_cursor() {
            return Ok(cursor);
        }
        let _reading = self.cursor_read.lock().await;
        // the request that held the lock before may have read it
        if let Some(cursor) = self.cached_cursor() {
            return Ok(cursor);
        }
        let cursor = index::cursor(&mut *self.store.reader().await?).await?;
        *self.cursor.lock().expect("cursor cache") = Some((Instant::now(), cursor.clone()));
        Ok(cursor)
    }

    /// The cached cursor, if read less than [`CURSOR_CACHE`] ago.
    fn cached_cursor(&self) -> Option<Option<Cursor>> {
        match &*self.cursor.lock().expect("cursor cache") {
            Some((read_at, cursor)) if read_at.elapsed() < CURSOR_CACHE => Some(cursor.clone()),
            _ => None,
        }
    }

    /// Forgets the cached cursor (after the follower moved it), so that the next request
    /// reads it afresh.
    pub fn invalidate(&self) {
        *self.cursor.lock().expect("cursor cache") = None;
    }
}

/// The grantee id of an app or backend system (as the index writes it).
pub fn grantee_of_client(client_id: &str) -> String {
    follower::hex32(anchor::consent::grantee_of_client(client_id))
}

/// The grantee id of a user of the gateway (as the index writes it).
pub fn grantee_of_user(user_id: &str) -> String {
    follower::hex32(anchor::consent::grantee_of_user(user_id))
}

/// Marks a request served under break-the-glass (set by the access extractor, read by the
/// middleware that records it: [`record_break_glass`]).
#[derive(Debug, Clone)]
pub struct BreakGlass {
    pub user_id: String,
    pub client_id: String,
    pub jti: String,
}

/// Records one request served under break-the-glass, before its response goes out: who,
/// through which app, the method, path and status, and the patient when the path names one
/// (`Patient/{id}...`, or a resource in a patient's compartment). The path stays in the
/// database, never in a log line.
pub async fn record_break_glass(
    store: &Store,
    marker: &BreakGlass,
    method: &str,
    path: &str,
    status: u16,
) -> anyhow::Result<()> {
    let mut tx = store.begin().await?;
    let patient = patient_of_path(&mut tx, path).await?;
    sqlx::query(
        "INSERT INTO break_glass_access (access_id, at, user_id, client_id, jti, method, route, patient_id, status) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(crate::model::Instant::now().millis())
    .bind(&marker.user_id)
    .bind(&marker.client_id)
    .bind(&marker.jti)
    .bind(method)
    .bind(path)
    .bind(patient)
    .bind(i64::from(status))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::warn!(method, status, "break-the-glass access served and recorded");
    Ok(())
}

/// The patient a FHIR path is about: `.../Patient/{id}[/...]`, or the first patient in the
/// compartment of `.../{type}/{id}`.
async fn patient_of_path(
    conn: &mut sqlx::AnyConnection,
    path: &str,
) -> anyhow::Result<Option<String>> {
    let segments: Vec<&str> = path
        .split('?')
        .next()
        .unwrap_or_default()
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    for (i, pair) in segments.windows(2).enumerate() {
        let (resource_type, id) = (pair[0], pair[1]);
        if resource_type == "Patient" && !id.starts_with('$') && !id.starts_with('_') {
            return Ok(Some(id.to_owned()));
        }
        let params = fhir_profiles::compartment::patient_compartment_params(resource_type);
        // `{type}/{id}` or `{type}/{id}/_history...` of a compartment type
        let instance = matches!(segments.get(i + 2), None | Some(&"_history"));
        if !params.is_empty() && instance {
            let placeholders: Vec<String> =
                (0..params.len()).map(|n| format!("${}", n + 3)).collect();
            // audited: only placeholders are formatted in
            let sql = format!(
                "SELECT x.target_id FROM idx_reference x JOIN resource r ON r.rkey = x.rkey \
                 WHERE r.resource_type = $1 AND r.id = $2 AND x.target_type = 'Patient' AND x.param IN ({}) \
                 ORDER BY x.target_id LIMIT 1",
                placeholders.join(", ")
            );
            let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql))
                .bind(resource_type)
                .bind(id);
            for param in params {
                query = query.bind(param.as_str());
            }
            return Ok(query.fetch_optional(&mut *conn).await?);
        }
    }
    Ok(None)
}

/// The consent registry as this gateway reaches it: what the follower reads, and the relayer
/// that sends patients' signed grants (when there is a key for it).
#[derive(Debug)]
pub struct ConsentChain {
    pub reader: anchor::consent::ConsentReader,
    pub relayer: Option<anchor::consent::ConsentRelayer>,
    /// The registry's deployment block: where the follower starts.
    pub start_block: u64,
}

impl ConsentChain {
    /// Connects to the configured registry, or the one the index recorded, or deploys one
    /// (with the relayer key) when there is neither. `None` without a chain, or when consent
    /// is not enforced (nothing follows the registry then, and nothing is relayed).
    pub async fn connect(
        config: &crate::config::Config,
        embedded_url: Option<&str>,
        store: &Store,
    ) -> anyhow::Result<Option<ConsentChain>> {
        use anchor::chain::{Address, ChainConfig as ClientConfig, ChainError, SignerKey, U256};
        use anyhow::Context as _;
        use secrecy::ExposeSecret as _;

        if !config.consent.enforce {
            return Ok(None);
        }
        let chain = &config.chain;
        let (rpc_url, key) = match (chain.mode, embedded_url) {
            (crate::config::ChainMode::Off, _) => return Ok(None),
            (crate::config::ChainMode::Embedded, Some(url)) => {
                let key = crate::anchoring::embedded_key(
                    &config.database.data_dir,
                    "consent-relayer.key",
                )?;
                // 1,000 ether: far more grants than a development chain will see
                let wei = U256::from(1_000u64) * U256::from(10u64).pow(U256::from(18u64));
                anchor::chain::set_dev_balance(url, key.address(), wei)
                    .await
                    .context("funding the consent relayer on the embedded chain")?;
                (url.to_owned(), Some(key))
            }
            (crate::config::ChainMode::Embedded, None) => {
                anyhow::bail!("the embedded chain is not running")
            }
            (crate::config::ChainMode::Rpc, _) => {
                let url = chain
                    .rpc_url
                    .as_ref()
                    .context("chain.rpc_url is not set")?
                    .expose_secret()
                    .to_owned();
                let key = match (
                    &config.consent.relayer_key,
                    &config.consent.relayer_key_file,
                ) {
                    (Some(key), None) => Some(
                        SignerKey::from_hex(key.expose_secret())
                            .context("in consent.relayer_key")?,
                    ),
                    (None, Some(path)) => {
                        let text = std::fs::read_to_string(path).with_context(|| {
                            format!("reading consent.relayer_key_file {}", path.display())
                        })?;
                        Some(SignerKey::from_hex(&text).with_context(|| {
                            format!("in consent.relayer_key_file {}", path.display())
                        })?)
                    }
                    (None, None) => None,
                    _ => anyhow::bail!(
                        "give one of consent.relayer_key and consent.relayer_key_file, not both"
                    ),
                };
                (url, key)
            }
        };
        let client_config = ClientConfig {
            confirmations: config.consent.confirmations,
            poll_interval: Duration::from_millis(chain.poll_interval_ms),
            bump_after: Duration::from_secs(chain.bump_after_secs),
            bump_percent: chain.bump_percent,
            max_fee_per_gas: chain
                .max_fee_per_gas_gwei
                .map(|gwei| u128::from(gwei) * 1_000_000_000),
        };
        let recorded = index::cursor(&mut *store.reader().await?).await?;
        let known = match &config.consent.registry {
            Some(address) => Some((
                address.parse::<Address>().context("consent.registry")?,
                config.consent.start_block.unwrap_or(0),
            )),
            None => recorded
                .as_ref()
                .and_then(|c| Some((c.registry.parse::<Address>().ok()?, c.start_block as u64))),
        };
        if let Some((registry, start_block)) = known {
            let reader = match anchor::consent::ConsentReader::connect(&rpc_url, registry).await {
                Ok(reader) => Some(reader),
                // the embedded chain lost its state: deploy again below
                Err(ChainError::NoRegistry(_))
                    if config.consent.registry.is_none()
                        && chain.mode == crate::config::ChainMode::Embedded =>
                {
                    tracing::warn!(
                        "the recorded ConsentRegistry is gone from the embedded chain; deploying a new one"
                    );
                    None
                }
                Err(error) => return Err(error).context("connecting to the ConsentRegistry"),
            };
            if let Some(reader) = reader {
                let relayer = match key {
                    Some(key) => Some(
                        anchor::consent::ConsentRelayer::connect(
                            &rpc_url,
                            key,
                            registry,
                            client_config,
                        )
                        .await?,
                    ),
                    None => None,
                };
                return Ok(Some(ConsentChain {
                    reader,
                    relayer,
                    start_block,
                }));
            }
        }
        let key = key.context(
            "no consent.registry is set and there is no relayer key to deploy one with (consent.relayer_key)",
        )?;
        let (relayer, deployed) =
            anchor::consent::ConsentRelayer::deploy(&rpc_url, key, client_config).await?;
        Ok(Some(ConsentChain {
            reader: relayer.reader(),
            relayer: Some(relayer),
            start_block: deployed.block_number,
        }))
    }
}
