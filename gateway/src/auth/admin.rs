//! The client admin API under `[base]/auth/clients`: list (`GET`), register (`POST`), read
//! (`GET /{id}`) and remove (`DELETE /{id}`) clients, as the `fhir-gateway client` command
//! does. It takes a bearer token (verified with [`Auth::verify`]) issued to a client
//! registered as an admin (`client add --admin`; a backend client, which gets its token with
//! client_credentials). Without a valid token: 401 with `WWW-Authenticate: Bearer`
//! (RFC 6750 §3); with one of another client: 403 `insufficient_scope`. Errors are JSON
//! `{"error", "error_description"}`, as the other OAuth endpoints'.

use actix_web::http::StatusCode;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::clients::{self, AuthMethod, ClientKind, NewClient, RegistrationError};
use super::{Auth, CLIENTS_PATH};

/// An admin API error.
pub(super) fn error(status: StatusCode, code: &str, description: &str) -> HttpResponse {
    let mut response = HttpResponse::build(status);
    response.insert_header(("Cache-Control", "no-store"));
    match status {
        StatusCode::UNAUTHORIZED => {
            let challenge = if code == "invalid_token" {
                format!(
                    "Bearer realm=\"fhir-gateway\", error=\"invalid_token\", \
                     error_description=\"{}\"",
                    description.replace('"', "'")
                )
            } else {
                "Bearer realm=\"fhir-gateway\"".to_owned()
            };
            response.insert_header(("WWW-Authenticate", challenge));
        }
        StatusCode::FORBIDDEN => {
            response.insert_header((
                "WWW-Authenticate",
                "Bearer realm=\"fhir-gateway\", error=\"insufficient_scope\"",
            ));
        }
        _ => {}
    }
    response.json(json!({"error": code, "error_description": description}))
}

/// Lets the request through if its bearer token is an admin client's (returns the client's
/// id); the refusal if not.
pub(super) async fn admin_only(auth: &Auth, request: &HttpRequest) -> Result<String, HttpResponse> {
    let token = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| {
            error(
                StatusCode::UNAUTHORIZED,
                "invalid_request",
                "the admin API needs a bearer token of an admin client",
            )
        })?;
    let claims = auth
        .verify(token)
        .map_err(|e| error(StatusCode::UNAUTHORIZED, "invalid_token", &e.0))?;
    let client = clients::find(&auth.store, &claims.client_id)
        .await
        .map_err(|_| {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the database is unavailable",
            )
        })?;
    match client {
        Some(client) if client.admin && claims.sub == client.client_id => Ok(client.client_id),
        Some(_) => Err(error(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "the token's client is not an admin client (fhir-gateway client add --admin)",
        )),
        None => Err(error(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "the token's client is no longer registered",
        )),
    }
}

pub(super) fn unavailable() -> HttpResponse {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the database is unavailable",
    )
}

/// `GET [base]/auth/clients`.
pub(super) async fn list(auth: web::Data<Auth>, request: HttpRequest) -> HttpResponse {
    if let Err(refusal) = admin_only(&auth, &request).await {
        return refusal;
    }
    match clients::list(&auth.store).await {
        Ok(list) => HttpResponse::Ok()
            .insert_header(("Cache-Control", "no-store"))
            .json(list),
        Err(_) => unavailable(),
    }
}

/// `GET [base]/auth/clients/{id}`.
pub(super) async fn read(
    auth: web::Data<Auth>,
    request: HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    if let Err(refusal) = admin_only(&auth, &request).await {
        return refusal;
    }
    match clients::find(&auth.store, &id).await {
        Ok(Some(client)) => HttpResponse::Ok()
            .insert_header(("Cache-Control", "no-store"))
            .json(client),
        Ok(None) => not_found(&id),
        Err(_) => unavailable(),
    }
}

fn not_found(id: &str) -> HttpResponse {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("no client {id:?} is registered"),
    )
}

/// `DELETE [base]/auth/clients/{id}`: the client gets no more tokens (those issued live until
/// they expire).
pub(super) async fn remove(
    auth: web::Data<Auth>,
    request: HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    if let Err(refusal) = admin_only(&auth, &request).await {
        return refusal;
    }
    match clients::remove(&auth.store, &id).await {
        Ok(true) => {
            tracing::info!(client_id = %id, "client removed through the admin API");
            HttpResponse::NoContent().finish()
        }
        Ok(false) => not_found(&id),
        Err(_) => unavailable(),
    }
}

/// The body of `POST [base]/auth/clients` (the CLI's `client add` options, RFC 7591 names
/// where there are some).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddClient {
    #[serde(alias = "client_name")]
    name: String,
    kind: ClientKind,
    /// Space-separated.
    scope: String,
    #[serde(default)]
    redirect_uris: Vec<String>,
    launch_uri: Option<String>,
    jwks: Option<serde_json::Value>,
    jwks_uri: Option<String>,
    token_endpoint_auth_method: Option<AuthMethod>,
    #[serde(default)]
    admin: bool,
}

/// `POST [base]/auth/clients`: registers a client; 201 with it (and its secret, once).
pub(super) async fn add(
    auth: web::Data<Auth>,
    request: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    if let Err(refusal) = admin_only(&auth, &request).await {
        return refusal;
    }
    let add: AddClient = match serde_json::from_slice(&body) {
        Ok(add) => add,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_client_metadata",
                &format!("the body is not a client to register: {e}"),
            );
        }
    };
    let new = NewClient {
        name: add.name,
        kind: add.kind,
        scopes: add.scope,
        redirect_uris: add.redirect_uris,
        launch_uri: add.launch_uri,
        jwks: add.jwks.map(|jwks| jwks.to_string()),
        jwks_url: add.jwks_uri,
        auth_method: add.token_endpoint_auth_method,
        admin: add.admin,
    };
    match clients::register(&auth.store, new).await {
        Ok(registered) => {
            let id = &registered.client.client_id;
            tracing::info!(client_id = %id, "client registered through the admin API");
            HttpResponse::Created()
                .insert_header(("Cache-Control", "no-store"))
                .insert_header((
                    "Location",
                    format!("{}{CLIENTS_PATH}/{id}", auth.fhir_base_url),
                ))
                .json(registered)
        }
        Err(RegistrationError::InvalidRedirectUri(m)) => {
            error(StatusCode::BAD_REQUEST, "invalid_redirect_uri", &m)
        }
        Err(RegistrationError::InvalidMetadata(m)) => {
            error(StatusCode::BAD_REQUEST, "invalid_client_metadata", &m)
        }
        Err(RegistrationError::Store(_) | RegistrationError::Other(_)) => unavailable(),
    }
}
