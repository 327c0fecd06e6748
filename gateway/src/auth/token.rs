//! `POST [base]/auth/token`: SMART Backend Services (`client_credentials` with a
//! `private_key_jwt` client assertion, SMART App Launch 2.2 "Client Authentication:
//! Asymmetric"). Every refusal is an OAuth 2.0 error (RFC 6749 §5.2); every failure to
//! authenticate the client is `invalid_client`, as SMART requires. Neither assertions nor
//! tokens are logged.

use actix_web::http::header::HeaderMap;
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::json;

use super::claims::AccessClaims;
use super::oauth::{Form, OAuthError};
use super::{Auth, grants, scopes};
use crate::model::Instant;
use crate::store::clients;

/// The algorithms a client assertion may be signed with (SMART: RS384 and ES384).
pub(super) const ASSERTION_ALGORITHMS: [&str; 2] = ["RS384", "ES384"];

const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The longest an assertion may live: its `exp` at most this far ahead (SMART: 5 minutes).
const MAX_ASSERTION_LIFETIME_SECS: i64 = 300;

/// Clock skew tolerated on an assertion's `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;

/// The claims of a client assertion that matter once jsonwebtoken has checked `iss`, `sub`,
/// `aud`, `exp` and `nbf`.
#[derive(Debug, Deserialize)]
struct AssertionClaims {
    exp: i64,
    jti: Option<String>,
}

pub(super) async fn token(
    auth: web::Data<Auth>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    match dispatch(&auth, &req, &body).await {
        Ok(response) => response,
        Err(error) => {
            tracing::info!(error = error.code, "token request refused");
            error.response()
        }
    }
}

/// The grant types the token endpoint supports.
pub(super) const GRANT_TYPES: [&str; 3] =
    ["authorization_code", "refresh_token", "client_credentials"];

async fn dispatch(auth: &Auth, req: &HttpRequest, body: &[u8]) -> Result<HttpResponse, OAuthError> {
    let form = Form::parse(body)?;
    match form.get("grant_type")? {
        None => Err(OAuthError::new("invalid_request", "grant_type is missing")),
        Some("client_credentials") => issue(auth, &form).await,
        Some("authorization_code") => {
            let client = authenticate_client(auth, req.headers(), &form).await?;
            grants::authorization_code(auth, &form, &client.client).await
        }
        Some("refresh_token") => {
            let client = authenticate_client(auth, req.headers(), &form).await?;
            grants::refresh_token(auth, &form, &client.client).await
        }
        Some(other) => Err(OAuthError::new(
            "unsupported_grant_type",
            format!(
                "grant_type {other:?} is not supported; use one of {}",
                GRANT_TYPES.join(", ")
            ),
        )),
    }
}

/// A client that authenticated at an endpoint of the authorization server.
#[derive(Debug)]
pub(crate) struct AuthenticatedClient {
    pub(crate) client: clients::Client,
}

/// Authenticates the client of a token, revocation or introspection request: a
/// `private_key_jwt` assertion, or, for a public client, its `client_id` alone.
///
/// Stands in for helper "clients"' `auth/client_auth.rs::authenticate` (same signature),
/// which adds client secrets and JWKS URLs; replace this with it when merging.
pub(crate) async fn authenticate_client(
    auth: &Auth,
    headers: &HeaderMap,
    form: &Form,
) -> Result<AuthenticatedClient, OAuthError> {
    if headers.contains_key("authorization") && form.get("client_assertion")?.is_none() {
        return Err(OAuthError::client(
            "client secrets are not supported; use private_key_jwt or a public client",
        ));
    }
    if form.get("client_assertion_type")?.is_some() || form.get("client_assertion")?.is_some() {
        if form.get("client_assertion_type")? != Some(CLIENT_ASSERTION_TYPE) {
            return Err(OAuthError::client(format!(
                "client_assertion_type must be {CLIENT_ASSERTION_TYPE}"
            )));
        }
        let assertion = form
            .get("client_assertion")?
            .ok_or_else(|| OAuthError::client("client_assertion is missing"))?;
        let client_id = authenticate(auth, assertion, form.get("client_id")?).await?;
        let client = find_client(auth, &client_id).await?;
        return Ok(AuthenticatedClient { client });
    }
    let client_id = form
        .get("client_id")?
        .ok_or_else(|| OAuthError::client("no client authentication and no client_id"))?;
    let client = find_client(auth, client_id).await?;
    if client.kind != "public" {
        return Err(OAuthError::client(
            "this client is confidential: authenticate it (private_key_jwt)",
        ));
    }
    Ok(AuthenticatedClient { client })
}

/// `grant_type=client_credentials` (SMART Backend Services).
async fn issue(auth: &Auth, form: &Form) -> Result<HttpResponse, OAuthError> {
    match form.get("client_assertion_type")? {
        Some(CLIENT_ASSERTION_TYPE) => {}
        None => {
            return Err(OAuthError::client(format!(
                "no client authentication: client_assertion_type must be {CLIENT_ASSERTION_TYPE}"
            )));
        }
        Some(other) => {
            return Err(OAuthError::client(format!(
                "client_assertion_type {other:?} is not supported; use {CLIENT_ASSERTION_TYPE}"
            )));
        }
    }
    let assertion = form
        .get("client_assertion")?
        .ok_or_else(|| OAuthError::client("client_assertion is missing"))?;
    let requested = form
        .get("scope")?
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| OAuthError::new("invalid_request", "scope is missing"))?;
    let client_id = authenticate(auth, assertion, form.get("client_id")?).await?;
    let client = find_client(auth, &client_id).await?;
    let allowed = scopes::ScopeSet::parse(&client.scopes)
        .map_err(|e| OAuthError::new("invalid_scope", format!("the client's scopes: {e}")))?;
    let mut granted = allowed.narrow(requested);
    // no user, no launch: system/ scopes only
    granted.others.clear();
    granted
        .resources
        .retain(|s| s.context == scopes::Context::System);
    if granted.is_empty() {
        return Err(OAuthError::new(
            "invalid_scope",
            "none of the requested scopes is allowed for this client",
        ));
    }
    let scope = granted.to_string();
    let now = Instant::now().millis() / 1000;
    let lifetime = i64::try_from(auth.access_token_lifetime_secs).unwrap_or(300);
    let claims = AccessClaims {
        iss: auth.issuer.clone(),
        aud: auth.fhir_base_url.clone(),
        sub: client_id.clone(),
        client_id: client_id.clone(),
        scope: scope.clone(),
        iat: now,
        nbf: now,
        exp: now + lifetime,
        jti: uuid::Uuid::new_v4().to_string(),
        user_kind: None,
        fhir_user: None,
        patient: None,
        encounter: None,
        purpose_of_use: None,
    };
    let access_token = auth
        .key
        .sign(&claims)
        .map_err(|_| OAuthError::new("server_error", "the token could not be signed"))?;
    tracing::info!(client_id = %client_id, "issued an access token");
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("Pragma", "no-cache"))
        .json(json!({
            "access_token": access_token,
            "token_type": "bearer",
            "expires_in": lifetime,
            "scope": scope,
        })))
}

/// Checks the client assertion (RFC 7523 §3 as SMART profiles it) and records its `jti`;
/// returns the client's id.
async fn authenticate(
    auth: &Auth,
    assertion: &str,
    claimed_client_id: Option<&str>,
) -> Result<String, OAuthError> {
    let alg = header_algorithm(assertion)?;
    let header = jsonwebtoken::decode_header(assertion).map_err(|e| {
        OAuthError::client(format!("the client assertion's header is not valid: {e}"))
    })?;
    if header.jku.is_some() {
        // only a client registered with a JWKS URL could name one, and none is yet
        return Err(OAuthError::client(
            "the client assertion's jku is not the client's registered JWKS URL",
        ));
    }
    let kid = header
        .kid
        .ok_or_else(|| OAuthError::client("the client assertion's header has no kid"))?;
    // the client is named by the (not yet verified) iss; its key then verifies everything
    let unverified: serde_json::Value = jsonwebtoken::dangerous::insecure_decode_claims(assertion)
        .map_err(|e| OAuthError::client(format!("the client assertion is not a JWT: {e}")))?;
    let client_id = unverified["iss"]
        .as_str()
        .ok_or_else(|| OAuthError::client("the client assertion has no iss"))?
        .to_owned();
    if let Some(claimed) = claimed_client_id
        && claimed != client_id
    {
        return Err(OAuthError::client(
            "client_id does not match the client assertion's iss",
        ));
    }
    let client = find_client(auth, &client_id).await?;
    let jwks: JwkSet = client
        .jwks
        .as_deref()
        .and_then(|jwks| serde_json::from_str(jwks).ok())
        .ok_or_else(|| OAuthError::client("the client has no usable JWKS"))?;
    let jwk = jwks
        .find(&kid)
        .ok_or_else(|| OAuthError::client(format!("the client has no key with kid {kid:?}")))?;
    let key = DecodingKey::from_jwk(jwk)
        .map_err(|_| OAuthError::client(format!("the client's key {kid:?} is not usable")))?;
    let mut validation = Validation::new(alg);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    validation.set_issuer(&[&client_id]);
    validation.sub = Some(client_id.clone());
    validation.set_audience(&[&auth.token_url]);
    validation.validate_nbf = true;
    validation.leeway = LEEWAY_SECS;
    let claims = jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &validation)
        .map_err(|e| OAuthError::client(assertion_error(&e, &auth.token_url)))?
        .claims;
    let now = Instant::now().millis() / 1000;
    if claims.exp > now + MAX_ASSERTION_LIFETIME_SECS {
        return Err(OAuthError::client(format!(
            "the client assertion's exp is more than {MAX_ASSERTION_LIFETIME_SECS} seconds ahead"
        )));
    }
    let jti = claims
        .jti
        .filter(|jti| !jti.is_empty())
        .ok_or_else(|| OAuthError::client("the client assertion has no jti"))?;
    // kept as long as the assertion could still be accepted (its exp plus the leeway)
    let keep_until = claims.exp + LEEWAY_SECS as i64;
    let fresh = use_assertion(auth, &client_id, &jti, keep_until)
        .await
        .map_err(|_| OAuthError::new("server_error", "the database is unavailable"))?;
    if !fresh {
        return Err(OAuthError::client(
            "the client assertion's jti was used before (a replay)",
        ));
    }
    Ok(client_id)
}

async fn use_assertion(
    auth: &Auth,
    client_id: &str,
    jti: &str,
    keep_until: i64,
) -> Result<bool, sqlx::Error> {
    let mut tx = auth.store.begin().await?;
    let fresh = clients::use_assertion(&mut tx, client_id, jti, keep_until).await?;
    tx.commit().await?;
    Ok(fresh)
}

pub(super) async fn find_client(
    auth: &Auth,
    client_id: &str,
) -> Result<clients::Client, OAuthError> {
    let found = match auth.store.reader().await {
        Ok(mut conn) => clients::find(&mut conn, client_id).await,
        Err(e) => Err(e),
    };
    found
        .map_err(|_| OAuthError::new("server_error", "the database is unavailable"))?
        .ok_or_else(|| OAuthError::client(format!("no client {client_id:?} is registered")))
}

/// The assertion's `alg`, if on the allow-list (RS384, ES384: never `none`, never an HMAC).
fn header_algorithm(assertion: &str) -> Result<Algorithm, OAuthError> {
    let header = assertion
        .split('.')
        .next()
        .and_then(|part| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .ok_or_else(|| OAuthError::client("the client assertion is not a JWT"))?;
    match header["alg"].as_str() {
        Some("RS384") => Ok(Algorithm::RS384),
        Some("ES384") => Ok(Algorithm::ES384),
        Some(other) => Err(OAuthError::client(format!(
            "the client assertion's algorithm {other:?} is not allowed; use RS384 or ES384"
        ))),
        None => Err(OAuthError::client(
            "the client assertion's header has no alg",
        )),
    }
}

/// A precise description of why jsonwebtoken refused an assertion.
fn assertion_error(error: &jsonwebtoken::errors::Error, token_url: &str) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::InvalidSignature => "the client assertion's signature is not valid".to_owned(),
        ErrorKind::ExpiredSignature => "the client assertion has expired".to_owned(),
        ErrorKind::ImmatureSignature => "the client assertion is not valid yet (nbf)".to_owned(),
        ErrorKind::InvalidAudience => {
            format!("the client assertion's aud must be the token endpoint, {token_url}")
        }
        ErrorKind::InvalidIssuer => "the client assertion's iss is not the client".to_owned(),
        ErrorKind::InvalidSubject => "the client assertion's sub must equal its iss".to_owned(),
        ErrorKind::MissingRequiredClaim(claim) => {
            format!("the client assertion has no {claim}")
        }
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat => {
            "the client assertion's algorithm does not match the client's key".to_owned()
        }
        _ => format!("the client assertion is not valid: {error}"),
    }
}
