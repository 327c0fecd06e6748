//! The patients' consent API under `[base]/consent/` (JSON; errors as OperationOutcome): a
//! patient, signed in through an app with their own access token, asks for the EIP-712 typed
//! data of a grant or revocation, signs it with the wallet bound to their record, and has the
//! gateway relay it on chain (paying the gas); they list their grants as the index holds them,
//! and the break-the-glass accesses to their record.
//!
//! | endpoint | what it does |
//! |---|---|
//! | `POST consent/grant-request` | the typed data of a grant (the nonce read from the chain, a 10-minute deadline) |
//! | `POST consent/grants` | relays a signed grant (`grantBySig`): 201 with the grant id and transaction |
//! | `GET consent/grants` | the patient's grants, with their state |
//! | `POST consent/revoke-request` | the typed data of a revocation |
//! | `POST consent/revocations` | relays a signed revocation (`revokeBySig`) |
//! | `GET consent/break-glass` | the break-the-glass accesses to the patient's record |
//!
//! Only a patient may call them, for their own record: the request's patient must be the
//! wallet bound to the caller's Patient. The relayer refuses what the registry would refuse
//! (a replayed nonce, another signer, a passed deadline) before sending anything.

use actix_web::{HttpResponse, web};
use alloy::primitives::{Address, B256, Bytes, U256};
use anchor::chain::ChainError;
use anchor::consent::{ConsentError, GrantRequest, Relayed, RevokeRequest};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Consent;
use super::follower::hex32;
use crate::access::{Access, Actor};
use crate::anchoring::hex_address;
use crate::auth::claims::UserKind;
use crate::error::{Error, Result};
use crate::model::ResourceType;
use crate::store::Store;
use crate::store::consent::{self as index, GrantState};

/// How long a typed-data request may be signed and sent back, in seconds.
const DEADLINE_SECS: i64 = 600;

/// Mounts the API under `base_path` (before the FHIR routes).
pub fn configure(cfg: &mut web::ServiceConfig, base_path: &str) {
    cfg.route(
        &format!("{base_path}/consent/grant-request"),
        web::post().to(grant_request),
    )
    .route(
        &format!("{base_path}/consent/grants"),
        web::post().to(relay_grant),
    )
    .route(
        &format!("{base_path}/consent/grants"),
        web::get().to(list_grants),
    )
    .route(
        &format!("{base_path}/consent/revoke-request"),
        web::post().to(revoke_request),
    )
    .route(
        &format!("{base_path}/consent/revocations"),
        web::post().to(relay_revoke),
    )
    .route(
        &format!("{base_path}/consent/break-glass"),
        web::get().to(break_glass),
    );
}

/// Who a grant names.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Grantee {
    /// An app or backend system registered here, by client id.
    client: Option<String>,
    /// A user of this gateway, by user id.
    user: Option<String>,
    /// A person's wallet.
    account: Option<String>,
}

impl Grantee {
    fn id(&self) -> Result<B256> {
        match (&self.client, &self.user, &self.account) {
            (Some(client), None, None) => Ok(anchor::consent::grantee_of_client(client)),
            (None, Some(user), None) => Ok(anchor::consent::grantee_of_user(user)),
            (None, None, Some(account)) => Ok(anchor::consent::grantee_of_account(parse_address(
                account,
                "grantee.account",
            )?)),
            _ => Err(Error::Invalid(
                "grantee names exactly one of client, user and account".to_owned(),
            )),
        }
    }
}

/// What a patient wants to grant.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrantAsk {
    grantee: Grantee,
    /// FHIR resource types; empty or absent: every type.
    #[serde(default)]
    resource_types: Vec<String>,
    /// A v3 ActReason code; `TREAT` when absent.
    purpose: Option<String>,
    /// Unix seconds; 0 or absent: until revoked.
    #[serde(default)]
    expires_at: u64,
}

/// A grant as signed: the fields of the typed data's message.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignedGrant {
    request: GrantFields,
    signature: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrantFields {
    patient: String,
    grantee: String,
    resource_types: Vec<String>,
    purpose: String,
    expires_at: Number,
    nonce: Number,
    deadline: Number,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevokeAsk {
    grant_id: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignedRevoke {
    request: RevokeFields,
    signature: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevokeFields {
    patient: String,
    grant_id: Number,
    nonce: Number,
    deadline: Number,
}

/// A number given as JSON number or decimal string (as typed data writes them).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Number {
    Int(u64),
    Text(String),
}

impl Number {
    fn u256(&self, name: &str) -> Result<U256> {
        match self {
            Number::Int(n) => Ok(U256::from(*n)),
            Number::Text(text) => text
                .parse::<U256>()
                .map_err(|_| Error::Invalid(format!("{name} is not a number"))),
        }
    }

    fn u64(&self, name: &str) -> Result<u64> {
        u64::try_from(self.u256(name)?)
            .map_err(|_| Error::Invalid(format!("{name} is out of range")))
    }
}

fn parse_address(text: &str, name: &str) -> Result<Address> {
    text.parse::<Address>()
        .map_err(|_| Error::Invalid(format!("{name} is not a 0x-prefixed 20-byte address")))
}

/// The caller's Patient and the wallet bound to it; 403 for anyone but a linked patient.
async fn caller_wallet(store: &Store, access: &Access) -> Result<(String, Address)> {
    let patient = match &access.actor {
        Actor::User {
            kind: UserKind::Patient,
            fhir_user: Some(fhir_user),
            ..
        } => fhir_user.strip_prefix("Patient/").map(str::to_owned),
        _ => None,
    }
    .ok_or_else(|| {
        Error::Forbidden(
            "the consent API is for patients, with an access token of their own (signed in with their wallet)"
                .to_owned(),
        )
    })?;
    let wallet = index::wallet_of_patient(&mut *store.reader().await?, &patient)
        .await?
        .ok_or_else(|| {
            Error::Forbidden(
                "your record is not linked to a wallet yet: ask your clinic for a link code"
                    .to_owned(),
            )
        })?;
    Ok((patient, parse_address(&wallet, "the bound wallet")?))
}

fn relayer(consent: &Consent) -> Result<&anchor::consent::ConsentRelayer> {
    consent.relayer().ok_or_else(|| {
        Error::NotSupported(
            "this gateway does not relay consent transactions (no consent.relayer_key): send grantBySig or grant to the ConsentRegistry yourself"
                .to_owned(),
        )
    })
}

/// The error a client sees for a refused relay.
fn chain_error(error: ChainError) -> Error {
    match error {
        ChainError::Consent(ConsentError::InvalidNonce { expected, .. }) => {
            Error::Conflict(format!(
                "the signed nonce is not the current one ({expected}): a replay, or another request was relayed first; ask for a new request and sign again"
            ))
        }
        ChainError::Consent(refused) => {
            Error::Invalid(format!("the ConsentRegistry refuses it: {refused}"))
        }
        other => {
            tracing::warn!(error = %other, "relaying a consent transaction failed");
            Error::Unavailable("the chain could not be reached to relay the transaction; nothing was sent or it may still be mined: list your grants before trying again".to_owned())
        }
    }
}

fn now_secs() -> i64 {
    crate::model::Instant::now().millis() / 1000
}

fn purpose_ok(purpose: &str) -> Result<()> {
    if (2..=32).contains(&purpose.len())
        && purpose
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "purpose {purpose:?} is not a v3 ActReason code such as TREAT, HPAYMT or HRESCH"
        )))
    }
}

async fn grant_request(
    consent: web::Data<Consent>,
    state: web::Data<crate::rest::AppState>,
    access: Access,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let ask: GrantAsk = parse(&body)?;
    let (_, wallet) = caller_wallet(&state.store, &access).await?;
    let relayer = relayer(&consent)?;
    for t in &ask.resource_types {
        ResourceType::parse(t)?;
    }
    let purpose = ask.purpose.clone().unwrap_or_else(|| "TREAT".to_owned());
    purpose_ok(&purpose)?;
    if ask.expires_at != 0 && ask.expires_at as i64 <= now_secs() {
        return Err(Error::Invalid("expiresAt is in the past".to_owned()));
    }
    let nonce = relayer.reader().nonce(wallet).await.map_err(chain_error)?;
    let request = GrantRequest {
        patient: wallet,
        grantee: ask.grantee.id()?,
        resource_types: ask.resource_types.clone(),
        purpose,
        expires_at: ask.expires_at,
        nonce,
        deadline: U256::from((now_secs() + DEADLINE_SECS) as u64),
    };
    let typed = anchor::consent::typed_data_grant(relayer.chain_id(), relayer.registry(), &request);
    Ok(HttpResponse::Ok().json(json!({
        "typedData": typed,
        "request": typed["message"],
    })))
}

async fn relay_grant(
    consent: web::Data<Consent>,
    state: web::Data<crate::rest::AppState>,
    access: Access,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let signed: SignedGrant = parse(&body)?;
    let (patient_id, wallet) = caller_wallet(&state.store, &access).await?;
    let relayer = relayer(&consent)?;
    let fields = &signed.request;
    let patient = parse_address(&fields.patient, "request.patient")?;
    if patient != wallet {
        return Err(Error::Forbidden(
            "request.patient is not the wallet linked to your record".to_owned(),
        ));
    }
    let request = GrantRequest {
        patient,
        grantee: fields
            .grantee
            .parse::<B256>()
            .map_err(|_| Error::Invalid("request.grantee is not 32 bytes in hex".to_owned()))?,
        resource_types: fields.resource_types.clone(),
        purpose: fields.purpose.clone(),
        expires_at: fields.expires_at.u64("request.expiresAt")?,
        nonce: fields.nonce.u256("request.nonce")?,
        deadline: fields.deadline.u256("request.deadline")?,
    };
    let relayed = relayer
        .relay_grant(&request, signature(&signed.signature)?)
        .await
        .map_err(chain_error)?;
    let mut response = HttpResponse::Created().json(relayed_json(&relayed));
    record_touched(&mut response, &patient_id, &relayed);
    Ok(response)
}

async fn revoke_request(
    consent: web::Data<Consent>,
    state: web::Data<crate::rest::AppState>,
    access: Access,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let ask: RevokeAsk = parse(&body)?;
    let (_, wallet) = caller_wallet(&state.store, &access).await?;
    let relayer = relayer(&consent)?;
    let nonce = relayer.reader().nonce(wallet).await.map_err(chain_error)?;
    let request = RevokeRequest {
        patient: wallet,
        grant_id: ask.grant_id,
        nonce,
        deadline: U256::from((now_secs() + DEADLINE_SECS) as u64),
    };
    let typed =
        anchor::consent::typed_data_revoke(relayer.chain_id(), relayer.registry(), &request);
    Ok(HttpResponse::Ok().json(json!({
        "typedData": typed,
        "request": typed["message"],
    })))
}

async fn relay_revoke(
    consent: web::Data<Consent>,
    state: web::Data<crate::rest::AppState>,
    access: Access,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let signed: SignedRevoke = parse(&body)?;
    let (patient_id, wallet) = caller_wallet(&state.store, &access).await?;
    let relayer = relayer(&consent)?;
    let fields = &signed.request;
    let patient = parse_address(&fields.patient, "request.patient")?;
    if patient != wallet {
        return Err(Error::Forbidden(
            "request.patient is not the wallet linked to your record".to_owned(),
        ));
    }
    let request = RevokeRequest {
        patient,
        grant_id: fields.grant_id.u64("request.grantId")?,
        nonce: fields.nonce.u256("request.nonce")?,
        deadline: fields.deadline.u256("request.deadline")?,
    };
    let relayed = relayer
        .relay_revoke(&request, signature(&signed.signature)?)
        .await
        .map_err(chain_error)?;
    let mut response = HttpResponse::Ok().json(relayed_json(&relayed));
    record_touched(&mut response, &patient_id, &relayed);
    Ok(response)
}

/// The grant (as its `Consent` projection) and the patient a relayed grant or revocation is
/// about, for its audit record.
fn record_touched(response: &mut HttpResponse, patient_id: &str, relayed: &Relayed) {
    response
        .extensions_mut()
        .insert(crate::audit::TouchedList(vec![
            crate::audit::Touched {
                resource_type: "Consent".to_owned(),
                id: relayed.grant_id.to_string(),
                version: None,
                written: false,
            },
            crate::audit::Touched {
                resource_type: "Patient".to_owned(),
                id: patient_id.to_owned(),
                version: None,
                written: false,
            },
        ]));
}

/// The JSON body, or 400 saying what is wrong with it.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| Error::Invalid(format!("the request body: {e}")))
}

fn signature(text: &str) -> Result<Bytes> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    hex::decode(digits)
        .map(Bytes::from)
        .map_err(|_| Error::Invalid("signature is not hexadecimal".to_owned()))
}

fn relayed_json(relayed: &anchor::consent::Relayed) -> Value {
    json!({
        "grantId": relayed.grant_id,
        "txHash": hex32(relayed.tx_hash),
        "blockNumber": relayed.block_number,
        "blockHash": hex32(relayed.block_hash),
    })
}

async fn list_grants(
    consent: web::Data<Consent>,
    state: web::Data<crate::rest::AppState>,
    access: Access,
) -> Result<HttpResponse> {
    let (_, wallet) = caller_wallet(&state.store, &access).await?;
    let mut conn = state.store.reader().await?;
    let cursor = index::cursor(&mut conn).await?;
    let grants = index::grants_of_wallet(&mut conn, &hex_address(wallet)).await?;
    let confirmed = cursor
        .as_ref()
        .map(|c| c.confirmed_through(consent.config().confirmations));
    let now = now_secs();
    let list: Vec<Value> = grants
        .iter()
        .map(|g| {
            let r = &g.record;
            let status = match g.state(confirmed, now) {
                GrantState::Active => "active",
                GrantState::Pending => "pending",
                GrantState::Revoked => "revoked",
                GrantState::Expired => "expired",
            };
            json!({
                "grantId": r.grant_id,
                "status": status,
                "grantee": r.grantee,
                "resourceTypes": r.resource_types,
                "purpose": r.purpose,
                "expiresAt": r.expires_at,
                "grantedBlock": r.block,
                "grantedTx": r.tx,
                "revokedBlock": g.revoked.as_ref().map(|(b, _)| b),
                "revokedTx": g.revoked.as_ref().map(|(_, t)| t),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "patient": hex_address(wallet),
        "registry": cursor.as_ref().map(|c| c.registry.clone()),
        "indexBlock": cursor.as_ref().map(|c| c.block_number),
        "grants": list,
    })))
}

async fn break_glass(
    state: web::Data<crate::rest::AppState>,
    access: Access,
) -> Result<HttpResponse> {
    let (patient, _) = caller_wallet(&state.store, &access).await?;
    let accesses =
        index::break_glass_of_patient(&mut *state.store.reader().await?, &patient).await?;
    Ok(HttpResponse::Ok().json(json!({ "accesses": accesses })))
}
