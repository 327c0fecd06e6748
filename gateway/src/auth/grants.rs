//! The token endpoint's user grants (SMART App Launch 2.2): `authorization_code` (single
//! use, PKCE S256, `redirect_uri` bound) and `refresh_token` (rotated at every use; a used
//! one presented again revokes its whole family; scopes can only narrow). Both answer with
//! an access token (signed [`AccessClaims`]), the launch context, an `id_token` for `openid`
//! and a refresh token for `offline_access` / `online_access`.
//!
//! Codes and refresh tokens are random (256 bits), stored as SHA-256 hashes, and never
//! logged. Everything issued from one code shares a family id, revoked together.

use actix_web::HttpResponse;
use base64::Engine as _;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use super::Auth;
use super::claims::{AccessClaims, UserKind};
use super::oauth::{Form, OAuthError};
use super::scopes::{OtherScope, ResourceScope, ScopeSet};
use crate::model::Instant;
use crate::store::clients::Client;
use crate::store::grants::{self as store, Grant, Refresh};
use crate::store::users;

/// 256 random bits, base64url: codes, refresh tokens, session ids, CSRF tokens, launch values.
pub(crate) fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    // the system's generator does not fail on the systems the gateway runs on
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What is stored of a secret: its SHA-256, hex.
pub(crate) fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

pub(crate) fn now_millis() -> i64 {
    Instant::now().millis()
}

#[allow(clippy::needless_pass_by_value)] // for `map_err(database)`
fn database(error: sqlx::Error) -> OAuthError {
    tracing::error!(%error, "the token endpoint could not reach the database");
    OAuthError::new("server_error", "the database is unavailable")
}

fn invalid_grant(description: &str) -> OAuthError {
    OAuthError::new("invalid_grant", description)
}

/// `grant_type=authorization_code`.
pub(super) async fn authorization_code(
    auth: &Auth,
    form: &Form,
    client: &Client,
) -> Result<HttpResponse, OAuthError> {
    let code = form
        .get("code")?
        .ok_or_else(|| OAuthError::new("invalid_request", "code is missing"))?;
    let redirect_uri = form
        .get("redirect_uri")?
        .ok_or_else(|| OAuthError::new("invalid_request", "redirect_uri is missing"))?;
    let verifier = form.get("code_verifier")?.ok_or_else(|| {
        OAuthError::new(
            "invalid_request",
            "code_verifier is missing (PKCE is required)",
        )
    })?;
    let code_hash = hash_secret(code);
    let now = now_millis();
    let mut tx = auth.store.begin().await.map_err(database)?;
    let record = store::find_code(&mut tx, &code_hash)
        .await
        .map_err(database)?
        .filter(|c| c.grant.client_id == client.client_id)
        .ok_or_else(|| invalid_grant("the code is not valid for this client"))?;
    if record.used_at.is_some() {
        // a code used twice: someone else may hold it; what it gave is revoked
        store::revoke_family(&mut tx, &record.grant.family_id, now)
            .await
            .map_err(database)?;
        tx.commit().await.map_err(database)?;
        tracing::warn!(client_id = %client.client_id, "an authorization code was used again; its tokens are revoked");
        return Err(invalid_grant(
            "the code was already used; the tokens issued for it are revoked",
        ));
    }
    if record.expires_at <= now {
        return Err(invalid_grant("the code has expired"));
    }
    if record.redirect_uri != redirect_uri {
        return Err(invalid_grant(
            "redirect_uri differs from the one of the authorization request",
        ));
    }
    if !pkce_matches(verifier, &record.code_challenge) {
        return Err(invalid_grant(
            "code_verifier does not match the code_challenge (PKCE S256)",
        ));
    }
    if !store::use_code(&mut tx, &code_hash, now)
        .await
        .map_err(database)?
    {
        return Err(invalid_grant("the code was already used"));
    }
    let response = issue(
        auth,
        &mut tx,
        &record.grant,
        Some(&record.session_hash),
        record.nonce.as_deref(),
        true,
    )
    .await?;
    tx.commit().await.map_err(database)?;
    tracing::info!(client_id = %client.client_id, "exchanged an authorization code");
    Ok(response)
}

/// RFC 7636 §4.6: BASE64URL(SHA256(ASCII(code_verifier))) == code_challenge, the verifier
/// 43 to 128 unreserved characters.
fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    well_formed
        && base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(verifier.as_bytes()))
            == challenge
}

/// `grant_type=refresh_token`.
pub(super) async fn refresh_token(
    auth: &Auth,
    form: &Form,
    client: &Client,
) -> Result<HttpResponse, OAuthError> {
    let token = form
        .get("refresh_token")?
        .ok_or_else(|| OAuthError::new("invalid_request", "refresh_token is missing"))?;
    let requested = form.get("scope")?;
    let token_hash = hash_secret(token);
    let now = now_millis();
    let mut tx = auth.store.begin().await.map_err(database)?;
    let refresh = store::find_refresh(&mut tx, &token_hash)
        .await
        .map_err(database)?
        .filter(|r| r.grant.client_id == client.client_id)
        .ok_or_else(|| invalid_grant("the refresh token is not valid for this client"))?;
    if refresh.revoked_at.is_some() {
        return Err(invalid_grant("the refresh token was revoked"));
    }
    if refresh.used_at.is_some() {
        // rotation: a used token again means two holders; revoke the family
        store::revoke_family(&mut tx, &refresh.grant.family_id, now)
            .await
            .map_err(database)?;
        tx.commit().await.map_err(database)?;
        tracing::warn!(client_id = %client.client_id, "a used refresh token was presented again; its family is revoked");
        return Err(invalid_grant(
            "the refresh token was already used; every token of its grant is revoked",
        ));
    }
    if refresh.expires_at <= now {
        return Err(invalid_grant("the refresh token has expired"));
    }
    if let Some(session) = &refresh.session_hash
        && !store::session_is_live(&mut tx, session, now)
            .await
            .map_err(database)?
    {
        return Err(invalid_grant(
            "the user's session has ended (online_access)",
        ));
    }
    let mut grant = refresh.grant.clone();
    if let Some(requested) = requested.filter(|s| !s.trim().is_empty()) {
        grant.scope = narrowed(&grant.scope, requested)?.to_string();
    }
    if !store::use_refresh(&mut tx, &token_hash, now)
        .await
        .map_err(database)?
    {
        return Err(invalid_grant("the refresh token was already used"));
    }
    let response = issue(
        auth,
        &mut tx,
        &grant,
        refresh.session_hash.as_deref(),
        None,
        false,
    )
    .await?;
    tx.commit().await.map_err(database)?;
    Ok(response)
}

/// The `requested` scopes, each of which must be within `granted` (narrowing only).
fn narrowed(granted: &str, requested: &str) -> Result<ScopeSet, OAuthError> {
    let granted = ScopeSet::parse_lenient(granted);
    let within = granted.narrow(requested);
    for scope in requested.split_whitespace() {
        let covered = match ResourceScope::parse(scope) {
            Ok(_) => within.resources.iter().any(|s| s.to_string() == scope),
            Err(_) => within.others.iter().any(|s| s.as_str() == scope),
        };
        if !covered {
            return Err(OAuthError::new(
                "invalid_scope",
                format!("{scope:?} was not granted; a refresh can only narrow the scopes"),
            ));
        }
    }
    Ok(within)
}

/// The claims of an `id_token` (OpenID Connect Core §2).
#[derive(Debug, Serialize)]
struct IdClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
    iat: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
    #[serde(rename = "fhirUser", skip_serializing_if = "Option::is_none")]
    fhir_user: Option<&'a str>,
}

/// Signs an access token for `grant` (recorded in its family), and the `id_token` and
/// refresh token the scopes ask for; the token response.
async fn issue(
    auth: &Auth,
    tx: &mut sqlx::AnyConnection,
    grant: &Grant,
    session_hash: Option<&str>,
    nonce: Option<&str>,
    with_id_token: bool,
) -> Result<HttpResponse, OAuthError> {
    let user = users::find(tx, &grant.user_id)
        .await
        .map_err(database)?
        .filter(|u| u.disabled_at.is_none())
        .ok_or_else(|| invalid_grant("the user is disabled"))?;
    let user_kind = UserKind::of_stored(&user.kind);
    let scopes = ScopeSet::parse_lenient(&grant.scope);
    let now_millis = now_millis();
    let now = now_millis / 1000;
    let lifetime = i64::try_from(auth.access_token_lifetime_secs).unwrap_or(300);
    let claims = AccessClaims {
        iss: auth.issuer.clone(),
        aud: auth.fhir_base_url.clone(),
        sub: user.user_id.clone(),
        client_id: grant.client_id.clone(),
        scope: grant.scope.clone(),
        iat: now,
        nbf: now,
        exp: now + lifetime,
        jti: uuid::Uuid::new_v4().to_string(),
        user_kind: Some(user_kind),
        fhir_user: Some(user.fhir_user.clone()),
        patient: grant.patient.clone(),
        encounter: grant.encounter.clone(),
        purpose_of_use: None,
        break_glass: user.break_glass && user_kind != UserKind::Patient,
        auditor: user.auditor && user_kind == UserKind::Staff,
    };
    let sign_error = |_| OAuthError::new("server_error", "the token could not be signed");
    let access_token = auth.key.sign(&claims).map_err(sign_error)?;
    store::insert_access(tx, &claims.jti, &grant.family_id, claims.exp)
        .await
        .map_err(database)?;
    let mut body = Map::new();
    body.insert("access_token".into(), Value::from(access_token));
    body.insert("token_type".into(), Value::from("Bearer"));
    body.insert("expires_in".into(), Value::from(lifetime));
    body.insert("scope".into(), Value::from(grant.scope.clone()));
    if let Some(patient) = &grant.patient {
        body.insert("patient".into(), Value::from(patient.clone()));
    }
    if let Some(encounter) = &grant.encounter {
        body.insert("encounter".into(), Value::from(encounter.clone()));
    }
    if grant.patient.is_some() {
        body.insert(
            "need_patient_banner".into(),
            Value::from(grant.need_patient_banner),
        );
    }
    if with_id_token && scopes.has(OtherScope::OpenId) {
        let id_claims = IdClaims {
            iss: &auth.issuer,
            sub: &user.user_id,
            aud: &grant.client_id,
            exp: now + lifetime,
            iat: now,
            nonce,
            fhir_user: scopes
                .has(OtherScope::FhirUser)
                .then_some(user.fhir_user.as_str()),
        };
        let id_token = auth.id_token_key.sign(&id_claims).map_err(sign_error)?;
        body.insert("id_token".into(), Value::from(id_token));
    }
    let online = scopes.has(OtherScope::OnlineAccess);
    if scopes.has(OtherScope::OfflineAccess) || online {
        let token = random_secret();
        let session_hash = if scopes.has(OtherScope::OfflineAccess) {
            None
        } else {
            session_hash.map(str::to_owned)
        };
        let refresh = Refresh {
            grant: grant.clone(),
            session_hash,
            created_at: now_millis,
            expires_at: now_millis + auth.refresh_lifetime_millis(),
            used_at: None,
            revoked_at: None,
        };
        store::insert_refresh(tx, &hash_secret(&token), &refresh)
            .await
            .map_err(database)?;
        body.insert("refresh_token".into(), Value::from(token));
    }
    let mut response = HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("Pragma", "no-cache"))
        .json(Value::Object(body));
    // whom the token was issued to, for its audit record
    response
        .extensions_mut()
        .insert(crate::audit::Who::of_token(&claims));
    Ok(response)
}
