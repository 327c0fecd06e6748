//! `POST [base]/auth/token`: the SMART App Launch grants (`authorization_code` and
//! `refresh_token`, in [`super::grants`]) and SMART Backend Services (`client_credentials`, for
//! backend clients, which authenticate with a `private_key_jwt` client assertion, SMART App
//! Launch 2.2 "Client Authentication: Asymmetric"). Client authentication is
//! [`super::client_auth`]'s, for every grant.
//! Every refusal is an OAuth 2.0 error (RFC 6749 §5.2); every failure to authenticate the
//! client is `invalid_client`, as SMART requires. Neither assertions nor tokens are logged.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::claims::AccessClaims;
use super::client_auth;
use super::clients::ClientKind;
use super::oauth::{Form, OAuthError};
use super::{Auth, grants, scopes};
use crate::model::Instant;

pub(super) async fn token(
    auth: web::Data<Auth>,
    request: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    match dispatch(&auth, &request, &body).await {
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

async fn dispatch(
    auth: &Auth,
    request: &HttpRequest,
    body: &[u8],
) -> Result<HttpResponse, OAuthError> {
    let form = Form::parse(body)?;
    match form.get("grant_type")? {
        None => Err(OAuthError::new("invalid_request", "grant_type is missing")),
        Some("client_credentials") => issue(auth, request, &form).await,
        Some("authorization_code") => {
            let client = client_auth::authenticate(auth, request.headers(), &form).await?;
            grants::authorization_code(auth, &form, &client.client).await
        }
        Some("refresh_token") => {
            let client = client_auth::authenticate_refresh(auth, request.headers(), &form).await?;
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

/// `grant_type=client_credentials` (SMART Backend Services).
async fn issue(
    auth: &Auth,
    request: &HttpRequest,
    form: &Form,
) -> Result<HttpResponse, OAuthError> {
    let requested = form
        .get("scope")?
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| OAuthError::new("invalid_request", "scope is missing"))?;
    let authenticated = client_auth::authenticate(auth, request.headers(), form).await?;
    if authenticated.kind != ClientKind::Backend {
        return Err(OAuthError::new(
            "unauthorized_client",
            "client_credentials is for backend-services clients; apps use the authorization \
             code flow",
        ));
    }
    let authenticated_with = authenticated.method;
    let client = authenticated.client;
    let client_id = client.client_id.clone();
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
        break_glass: false,
        auditor: false,
    };
    let access_token = auth
        .key
        .sign(&claims)
        .map_err(|_| OAuthError::new("server_error", "the token could not be signed"))?;
    tracing::info!(
        client_id = %client_id,
        method = authenticated_with.as_str(),
        "issued an access token"
    );
    let mut response = HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("Pragma", "no-cache"))
        .json(json!({
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": scope,
        }));
    // whom the token was issued to, for its audit record
    response
        .extensions_mut()
        .insert(crate::audit::Who::of_token(&claims));
    Ok(response)
}
