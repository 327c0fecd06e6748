//! `POST [base]/auth/register`: OAuth 2.0 Dynamic Client Registration (RFC 7591) of apps, when
//! `[auth] registration = "open"`. An app registers itself as a public client
//! (`token_endpoint_auth_method` `none`), a confidential-symmetric one (`client_secret_basic`,
//! the default, or `client_secret_post`: the server makes the secret and returns it once) or a
//! confidential-asymmetric one (`private_key_jwt` with `jwks` or `jwks_uri`). It is allowed
//! at most `[auth] registration_scopes`; backend-services clients (`client_credentials`,
//! `system/` scopes) are registered by the operator only. Errors are RFC 7591 §3.2.2's.

use actix_web::{HttpResponse, web};
use serde_json::{Value, json};

use super::Auth;
use super::clients::{
    AuthMethod, ClientKind, NewClient, RegisteredBy, RegistrationError, register_as,
};
use super::oauth::OAuthError;
use crate::config::RegistrationMode;
use crate::store::clients as store;

/// The most clients dynamic registration makes (a cap against abuse).
const MAX_DYNAMIC_CLIENTS: i64 = 10_000;

/// The grant types an openly registered app may use.
const APP_GRANT_TYPES: [&str; 2] = ["authorization_code", "refresh_token"];

pub(super) async fn register(auth: web::Data<Auth>, body: web::Bytes) -> HttpResponse {
    if auth.registration == RegistrationMode::Off {
        return HttpResponse::NotFound()
            .insert_header(("Cache-Control", "no-store"))
            .json(json!({
                "error": "invalid_request",
                "error_description": "dynamic client registration is off on this server; \
                                      ask its operator to register your app",
            }));
    }
    match registration(&auth, &body).await {
        Ok(response) => response,
        Err(error) => {
            tracing::info!(error = error.code, "client registration refused");
            if error.code == "temporarily_unavailable" {
                return HttpResponse::ServiceUnavailable()
                    .insert_header(("Cache-Control", "no-store"))
                    .json(json!({"error": error.code, "error_description": error.description}));
            }
            error.response()
        }
    }
}

fn metadata(description: impl Into<String>) -> OAuthError {
    OAuthError::new("invalid_client_metadata", description)
}

/// A list of strings, or None when absent.
fn strings(request: &Value, name: &str) -> Result<Option<Vec<String>>, OAuthError> {
    match request.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| metadata(format!("{name} must be an array of strings")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(metadata(format!("{name} must be an array of strings"))),
    }
}

fn string<'a>(request: &'a Value, name: &str) -> Result<Option<&'a str>, OAuthError> {
    match request.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(metadata(format!("{name} must be a string"))),
    }
}

async fn registration(auth: &Auth, body: &[u8]) -> Result<HttpResponse, OAuthError> {
    let request: Value = serde_json::from_slice(body)
        .map_err(|_| metadata("the registration request must be a JSON object"))?;
    if !request.is_object() {
        return Err(metadata("the registration request must be a JSON object"));
    }
    let method_text = string(&request, "token_endpoint_auth_method")?
        .unwrap_or(AuthMethod::ClientSecretBasic.as_str());
    let method = AuthMethod::parse(method_text).ok_or_else(|| {
        metadata(format!(
            "token_endpoint_auth_method {method_text:?} is not supported; use none, \
             client_secret_basic, client_secret_post or private_key_jwt"
        ))
    })?;
    let kind = match method {
        AuthMethod::None => ClientKind::Public,
        AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost => {
            ClientKind::ConfidentialSymmetric
        }
        AuthMethod::PrivateKeyJwt => ClientKind::ConfidentialAsymmetric,
    };
    let grant_types =
        strings(&request, "grant_types")?.unwrap_or_else(|| vec!["authorization_code".to_owned()]);
    if grant_types.iter().any(|g| g == "client_credentials") {
        return Err(metadata(
            "backend-services clients (client_credentials) are registered by the server's \
             operator, not through open registration",
        ));
    }
    if let Some(other) = grant_types
        .iter()
        .find(|g| !APP_GRANT_TYPES.contains(&g.as_str()))
    {
        return Err(metadata(format!(
            "grant type {other:?} is not supported; use authorization_code and refresh_token"
        )));
    }
    let response_types =
        strings(&request, "response_types")?.unwrap_or_else(|| vec!["code".to_owned()]);
    if response_types.iter().any(|r| r != "code") {
        return Err(metadata("response_types may only be [\"code\"]"));
    }
    let redirect_uris = strings(&request, "redirect_uris")?.unwrap_or_default();
    let requested_scope = string(&request, "scope")?;
    let scopes = match requested_scope {
        Some(requested) => {
            if requested
                .split_whitespace()
                .any(|s| s.starts_with("system/"))
            {
                return Err(metadata(
                    "system/ scopes are for backend-services clients, which the operator \
                     registers",
                ));
            }
            auth.registration_scopes.narrow(requested)
        }
        None => auth.registration_scopes.clone(),
    };
    if scopes.is_empty() {
        return Err(metadata(format!(
            "none of the requested scopes may be registered here; open registration allows \
             at most: {}",
            auth.registration_scopes
        )));
    }
    let jwks = match request.get("jwks") {
        None | Some(Value::Null) => None,
        Some(jwks @ Value::Object(_)) => Some(jwks.to_string()),
        Some(_) => return Err(metadata("jwks must be a JSON Web Key Set object")),
    };
    let name = string(&request, "client_name")?
        .filter(|n| !n.trim().is_empty())
        .unwrap_or("unnamed app");
    let new = NewClient {
        name: name.to_owned(),
        kind,
        scopes: scopes.to_string(),
        redirect_uris,
        launch_uri: string(&request, "launch_uri")?.map(str::to_owned),
        jwks,
        jwks_url: string(&request, "jwks_uri")?.map(str::to_owned),
        auth_method: Some(method),
        admin: false,
    };
    let count = match auth.store.reader().await {
        Ok(mut conn) => store::count_dynamic(&mut conn).await,
        Err(e) => Err(e),
    }
    .map_err(|_| OAuthError::new("server_error", "the database is unavailable"))?;
    if count >= MAX_DYNAMIC_CLIENTS {
        return Err(OAuthError::new(
            "temporarily_unavailable",
            "this server takes no more dynamically registered clients",
        ));
    }
    let registered = register_as(&auth.store, new, RegisteredBy::Dynamic)
        .await
        .map_err(|e| match e {
            RegistrationError::InvalidRedirectUri(m) => OAuthError::new("invalid_redirect_uri", m),
            RegistrationError::InvalidMetadata(m) => metadata(m),
            RegistrationError::Store(_) | RegistrationError::Other(_) => {
                OAuthError::new("server_error", "the client could not be stored")
            }
        })?;
    let client = &registered.client;
    tracing::info!(client_id = %client.client_id, kind = %client.kind, "client registered dynamically");
    let mut response = json!({
        "client_id": client.client_id,
        "client_id_issued_at": client.created_at / 1000,
        "client_name": client.name,
        "redirect_uris": client.redirect_uris,
        "token_endpoint_auth_method": client.token_endpoint_auth_method,
        "grant_types": grant_types,
        "response_types": response_types,
        "scope": client.scopes,
    });
    if let Some(secret) = &registered.client_secret {
        response["client_secret"] = json!(secret);
        response["client_secret_expires_at"] = json!(0);
    }
    if let Some(jwks) = client
        .jwks
        .as_deref()
        .and_then(|j| serde_json::from_str::<Value>(j).ok())
    {
        response["jwks"] = jwks;
    }
    if let Some(url) = &client.jwks_url {
        response["jwks_uri"] = json!(url);
    }
    if let Some(url) = &client.launch_uri {
        response["launch_uri"] = json!(url);
    }
    Ok(HttpResponse::Created()
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("Pragma", "no-cache"))
        .json(response))
}
