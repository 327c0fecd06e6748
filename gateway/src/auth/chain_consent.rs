//! Consent recorded on chain from the approval page (issue 5, item 6; PRODUCT.md "Consent"):
//! a patient who allows an app can, in the same step, grant it access on the
//! `ConsentRegistry`.
//!
//! The page offers it (a checkbox, ticked) when the signed-in user is a patient whose record
//! is bound to a wallet and the gateway relays grants ([`Consent::relayer`]). Its script
//! (`assets/consent.js`, the only one its Content-Security-Policy allows) asks [`typed_data`]
//! for the grant to sign. The gateway builds that grant itself, from the pending request: the
//! bound wallet, the app's grantee ([`anchor::consent::grantee_of_client`]), the resource
//! types of the approved scopes ([`resource_types`]), purpose `TREAT`, the chosen expiry, the
//! wallet's nonce on chain and a deadline ten minutes ahead; it keeps it with the request
//! (`auth_request.consent_offer`). The wallet signs it (`eth_signTypedData_v4`) and the page
//! posts the signature with the approval. [`record`] relays the grant the gateway kept, never
//! fields sent back by the page; the authorization code is issued only once the grant is on
//! chain. A refused or failed relay shows the page again and approves nothing.
//!
//! On chain go the wallet's address, a hash naming the app, resource type names, the purpose
//! and the expiry: no health data.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use alloy::primitives::{Address, Bytes, U256};
use anchor::chain::ChainError;
use anchor::consent::{ConsentError, GrantRequest, Relayed};
use serde::{Deserialize, Serialize};

use super::authorize::Failure;
use super::authorize::{PageForm, SOMETHING_WRONG, pending, posted_session, session_user};
use super::grants::now_millis;
use super::pages::Choice;
use super::scopes::{Context, Permission, ScopeSet};
use super::{Auth, users::Kind};
use crate::consent::Consent;
use crate::store::consent as index;
use crate::store::grants::{self as store, Request};
use crate::store::users::User;

/// Where the approval page's script gets the grant to sign.
pub(super) const CONSENT_TYPED_DATA_PATH: &str = "/auth/approve/consent";
/// The approval page's script.
pub(super) const CONSENT_SCRIPT_PATH: &str = "/auth/consent.js";
/// The purpose of use of a grant made while allowing an app: the patient's treatment.
const PURPOSE: &str = "TREAT";
/// How long the wallet's signature may be relayed, in seconds.
const DEADLINE_SECS: u64 = 600;

/// How long a grant from the approval page holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    ThreeMonths,
    OneYear,
    UntilRevoked,
}

impl Expiry {
    /// The choices, the default first.
    const ALL: [Expiry; 3] = [Expiry::OneYear, Expiry::ThreeMonths, Expiry::UntilRevoked];

    fn parse(value: Option<&str>) -> Option<Expiry> {
        Expiry::ALL.into_iter().find(|e| Some(e.value()) == value)
    }

    fn value(self) -> &'static str {
        match self {
            Expiry::ThreeMonths => "90d",
            Expiry::OneYear => "1y",
            Expiry::UntilRevoked => "revoked",
        }
    }

    fn words(self) -> &'static str {
        match self {
            Expiry::ThreeMonths => "For three months",
            Expiry::OneYear => "For one year",
            Expiry::UntilRevoked => "Until I revoke it",
        }
    }

    /// The grant's `expiresAt` (unix seconds; 0: until revoked).
    fn expires_at(self, now_secs: u64) -> u64 {
        match self {
            Expiry::ThreeMonths => now_secs + 90 * 86_400,
            Expiry::OneYear => now_secs + 365 * 86_400,
            Expiry::UntilRevoked => 0,
        }
    }
}

/// The expiry choices of the page.
pub(super) fn expiry_choices() -> Vec<Choice> {
    Expiry::ALL
        .into_iter()
        .map(|e| Choice {
            value: e.value().to_owned(),
            words: e.words().to_owned(),
        })
        .collect()
}

/// The resource types a grant for `scopes` opens: the types of the scopes that let the app
/// read or search; empty (every type) when one of them is a wildcard; `None` when none does
/// (there is nothing to consent to).
pub(super) fn resource_types(scopes: &ScopeSet) -> Option<Vec<String>> {
    let reading: Vec<_> = scopes
        .resources
        .iter()
        .filter(|s| s.context != Context::System)
        .filter(|s| s.allows(Permission::Read) || s.allows(Permission::Search))
        .collect();
    if reading.is_empty() {
        return None;
    }
    if reading.iter().any(|s| s.resource_type.is_none()) {
        return Some(Vec::new());
    }
    let mut types: Vec<String> = reading
        .iter()
        .filter_map(|s| s.resource_type.clone())
        .collect();
    types.sort();
    types.dedup();
    Some(types)
}

/// What the approval page says about the grant it offers.
pub(super) struct Offered {
    /// The kinds of data, in words.
    pub(super) kinds: String,
}

/// The grant the approval page offers `user` for the app's `scopes`, if it offers one: to a
/// patient with a bound wallet, when the gateway relays grants and the scopes read data.
pub(super) async fn offered(
    auth: &Auth,
    consent: &Consent,
    user: &User,
    scopes: &ScopeSet,
) -> Result<Option<Offered>, Failure> {
    if consent.relayer().is_none() {
        return Ok(None);
    }
    let Some(types) = resource_types(scopes) else {
        return Ok(None);
    };
    if bound_wallet(auth, user).await?.is_none() {
        return Ok(None);
    }
    let kinds = if types.is_empty() {
        "all kinds of data in your record".to_owned()
    } else {
        types.join(", ")
    };
    Ok(Some(Offered { kinds }))
}

/// The wallet bound to a patient user's record.
async fn bound_wallet(auth: &Auth, user: &User) -> Result<Option<Address>, Failure> {
    if user.kind != Kind::Patient.as_str() {
        return Ok(None);
    }
    let Some(patient) = user.fhir_user.strip_prefix("Patient/") else {
        return Ok(None);
    };
    let wallet = index::wallet_of_patient(&mut *auth.store.reader().await?, patient).await?;
    Ok(wallet.and_then(|w| w.parse::<Address>().ok()))
}

/// The grant offered for a pending request, as kept with it: what the patient chose and the
/// typed data's fields (numbers as decimal text).
#[derive(Debug, Serialize, Deserialize)]
struct Offer {
    /// The scopes the patient approved, as granted (`ScopeSet` text).
    scope: String,
    /// The expiry choice.
    expiry: String,
    patient: String,
    grantee: String,
    resource_types: Vec<String>,
    purpose: String,
    expires_at: u64,
    nonce: String,
    deadline: String,
}

impl Offer {
    fn new(scope: String, expiry: Expiry, request: &GrantRequest) -> Offer {
        Offer {
            scope,
            expiry: expiry.value().to_owned(),
            patient: format!("{:#x}", request.patient),
            grantee: request.grantee.to_string(),
            resource_types: request.resource_types.clone(),
            purpose: request.purpose.clone(),
            expires_at: request.expires_at,
            nonce: request.nonce.to_string(),
            deadline: request.deadline.to_string(),
        }
    }

    fn grant_request(&self) -> Option<GrantRequest> {
        Some(GrantRequest {
            patient: self.patient.parse().ok()?,
            grantee: self.grantee.parse().ok()?,
            resource_types: self.resource_types.clone(),
            purpose: self.purpose.clone(),
            expires_at: self.expires_at,
            nonce: self.nonce.parse().ok()?,
            deadline: self.deadline.parse().ok()?,
        })
    }
}

fn now_secs() -> u64 {
    u64::try_from(now_millis() / 1000).unwrap_or_default()
}

/// `POST [base]/auth/approve/consent` (form: `csrf_token`, `request`, the ticked `scope`s,
/// `consent_expiry`): the EIP-712 typed data of the grant for the signed-in patient's wallet
/// to sign, as JSON `{"typedData": ...}` (what `eth_signTypedData_v4` takes); the gateway
/// keeps the grant with the request. A refusal is `{"error": ...}` in words for the page's
/// status line (400, 403 without the session's CSRF token or for anyone but a patient with a
/// bound wallet, 503 when the chain cannot be reached).
pub(super) async fn typed_data(
    auth: web::Data<Auth>,
    consent: web::Data<Consent>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let form = PageForm::parse(&body);
    match offer(&auth, &consent, &req, &form).await {
        Ok(typed) => HttpResponse::Ok()
            .insert_header(("Cache-Control", "no-store"))
            .json(serde_json::json!({ "typedData": typed })),
        Err(failure) => {
            let (status, text) = match failure {
                Failure::Page(status, text) => (status, text),
                Failure::Redirect { description, .. } => (StatusCode::BAD_REQUEST, description),
                Failure::Internal => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    SOMETHING_WRONG.to_owned(),
                ),
            };
            HttpResponse::build(status)
                .insert_header(("Cache-Control", "no-store"))
                .json(serde_json::json!({ "error": text }))
        }
    }
}

/// Builds, keeps and returns the typed data of [`typed_data`].
async fn offer(
    auth: &Auth,
    consent: &Consent,
    req: &HttpRequest,
    form: &PageForm,
) -> Result<serde_json::Value, Failure> {
    let refuse = |status: StatusCode, text: &str| Failure::Page(status, text.to_owned());
    let session = posted_session(auth, req, form).await?;
    let (request, client) = pending(auth, &session, form.get("request")).await?;
    let relayer = consent.relayer().ok_or_else(|| {
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "This gateway does not record consent on the blockchain. Untick the box to allow the app without it.",
        )
    })?;
    let user = session_user(auth, &session).await?;
    let wallet = match &user {
        Some(user) => bound_wallet(auth, user).await?,
        None => None,
    }
    .ok_or_else(|| {
        refuse(
            StatusCode::FORBIDDEN,
            "Only a signed-in patient whose record is linked to a wallet can record consent.",
        )
    })?;
    let granted = ScopeSet::parse_lenient(&request.scope).keep(&form.all("scope"));
    let types = resource_types(&granted).ok_or_else(|| {
        refuse(
            StatusCode::BAD_REQUEST,
            "Tick at least one kind of data the app may read: that is what the consent records.",
        )
    })?;
    let expiry = Expiry::parse(form.get("consent_expiry")).ok_or_else(|| {
        refuse(
            StatusCode::BAD_REQUEST,
            "Choose how long the consent holds.",
        )
    })?;
    let nonce = relayer.reader().nonce(wallet).await.map_err(|error| {
        tracing::warn!(%error, "the consent registry could not be read for a grant to sign");
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "The blockchain cannot be reached just now. Try again later, or untick the box to allow the app without recording consent.",
        )
    })?;
    let now = now_secs();
    let grant = GrantRequest {
        patient: wallet,
        grantee: anchor::consent::grantee_of_client(&client.client_id),
        resource_types: types,
        purpose: PURPOSE.to_owned(),
        expires_at: expiry.expires_at(now),
        nonce,
        deadline: U256::from(now + DEADLINE_SECS),
    };
    let offer = Offer::new(granted.to_string(), expiry, &grant);
    let text = serde_json::to_string(&offer).map_err(|_| Failure::Internal)?;
    let mut tx = auth.store.begin().await?;
    store::set_request_consent_offer(&mut tx, &request.request_id, &text).await?;
    tx.commit().await?;
    Ok(anchor::consent::typed_data_grant(
        relayer.chain_id(),
        relayer.registry(),
        &grant,
    ))
}

/// What the page says when the box is ticked but nothing was signed.
const NOT_SIGNED: &str = "Your wallet has not signed the consent. Choose Allow again and sign it when your wallet asks (this needs JavaScript and an Ethereum wallet in your browser), or untick \"Also record this consent on the blockchain\" to allow the app without it. Nothing was allowed.";

/// Relays the grant offered for `request`, signed by the patient's wallet
/// (`consent_signature`), for the scopes `granted` the patient approved; `Ok(Err(text))` is a
/// refusal to show on the approval page (nothing is approved).
pub(super) async fn record(
    auth: &Auth,
    consent: &Consent,
    request: &Request,
    user: &User,
    granted: &ScopeSet,
    form: &PageForm,
) -> Result<Result<Relayed, String>, Failure> {
    let Some(relayer) = consent.relayer() else {
        return Ok(Err("This gateway does not record consent on the blockchain. Untick \"Also record this consent on the blockchain\" to allow the app without it.".to_owned()));
    };
    let signature = form.get("consent_signature").unwrap_or_default().trim();
    let offer = request
        .consent_offer
        .as_deref()
        .and_then(|text| serde_json::from_str::<Offer>(text).ok());
    let (Some(offer), false) = (offer, signature.is_empty()) else {
        return Ok(Err(NOT_SIGNED.to_owned()));
    };
    if offer.scope != granted.to_string()
        || Some(offer.expiry.as_str()) != form.get("consent_expiry")
    {
        return Ok(Err("What you chose changed after your wallet signed the consent. Choose Allow again and sign the new consent. Nothing was allowed.".to_owned()));
    }
    let Some(grant) = offer.grant_request() else {
        tracing::error!("a kept consent offer could not be read");
        return Err(Failure::Internal);
    };
    let wallet = bound_wallet(auth, user).await?;
    if wallet != Some(grant.patient)
        || grant.grantee != anchor::consent::grantee_of_client(&request.client_id)
    {
        return Ok(Err("The wallet linked to your record changed after the consent was signed. Choose Allow again and sign the new consent. Nothing was allowed.".to_owned()));
    }
    let Some(signature) = parse_signature(signature) else {
        return Ok(Err(
            "Your wallet's signature was not accepted: it is not a hexadecimal signature. Nothing was allowed."
                .to_owned(),
        ));
    };
    match relayer.relay_grant(&grant, signature).await {
        Ok(relayed) => Ok(Ok(relayed)),
        Err(error) => Ok(Err(refusal(error, grant.patient))),
    }
}

fn parse_signature(text: &str) -> Option<Bytes> {
    let digits = text.strip_prefix("0x").unwrap_or(text);
    hex::decode(digits).ok().map(Bytes::from)
}

/// The page's words for a relay that did not happen.
fn refusal(error: ChainError, wallet: Address) -> String {
    let again = "Nothing was allowed. Choose Allow to try again, or untick \"Also record this consent on the blockchain\" to allow the app without it.";
    match error {
        ChainError::Consent(ConsentError::InvalidSignature { .. }) => format!(
            "Your wallet's signature was not accepted: it is not the signature of the wallet linked to your record ({}). {again}",
            wallet.to_checksum(None)
        ),
        ChainError::Consent(ConsentError::DeadlinePassed { .. }) => format!(
            "Your wallet's signature is more than {} minutes old. {again}",
            DEADLINE_SECS / 60
        ),
        ChainError::Consent(ConsentError::InvalidNonce { .. }) => format!(
            "Another consent of yours was recorded after your wallet signed this one. {again}"
        ),
        ChainError::Consent(refused) => {
            tracing::info!(%refused, "the consent registry refused a grant from the approval page");
            format!("The consent registry refused the consent: {refused}. {again}")
        }
        other => {
            tracing::warn!(error = %other, "relaying a grant from the approval page failed");
            format!(
                "The consent could not be recorded: the blockchain cannot be reached just now (if it was sent, it may still appear among your grants). {again}"
            )
        }
    }
}

/// `GET [base]/auth/consent.js`: the approval page's script (EIP-1193: it asks
/// [`typed_data`] for the grant, has the browser's wallet sign it and posts the signature
/// with the approval).
pub(super) async fn script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(include_str!("../../assets/consent.js"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::B256;

    fn types(scopes: &str) -> Option<Vec<String>> {
        resource_types(&ScopeSet::parse_lenient(scopes))
    }

    #[test]
    fn the_types_come_from_the_scopes_that_read() {
        assert_eq!(
            types("openid patient/Observation.rs patient/Condition.r"),
            Some(vec!["Condition".to_owned(), "Observation".to_owned()])
        );
        assert_eq!(types("patient/Observation.rs patient/*.rs"), Some(vec![]));
        assert_eq!(types("user/*.read"), Some(vec![]));
        assert_eq!(types("patient/Observation.c openid fhirUser"), None);
        assert_eq!(types("system/Observation.rs"), None);
    }

    #[test]
    fn an_offer_keeps_the_grant_it_was_made_of() {
        let grant = GrantRequest {
            patient: Address::repeat_byte(0x11),
            grantee: B256::repeat_byte(0x22),
            resource_types: vec!["Observation".to_owned()],
            purpose: PURPOSE.to_owned(),
            expires_at: Expiry::OneYear.expires_at(1_000),
            nonce: U256::from(3u8),
            deadline: U256::from(1_600u64),
        };
        let offer = Offer::new("patient/Observation.rs".to_owned(), Expiry::OneYear, &grant);
        let text = serde_json::to_string(&offer).expect("JSON");
        let back: Offer = serde_json::from_str(&text).expect("read back");
        assert_eq!(back.grant_request(), Some(grant));
        assert_eq!(Expiry::parse(Some("1y")), Some(Expiry::OneYear));
        assert_eq!(Expiry::parse(Some("forever")), None);
        assert_eq!(Expiry::UntilRevoked.expires_at(5), 0);
    }
}
