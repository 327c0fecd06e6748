//! The gateway's SMART on FHIR authorization server (issue 4), so far its Backend Services
//! part: clients registered by the operator ([`clients`]) authenticate at the token endpoint
//! with a JWT signed by their private key and get a short-lived access token signed by the
//! gateway's own key ([`keys`]). Discovery (`.well-known/smart-configuration`) and the public
//! key (`.well-known/jwks.json`) are served under the FHIR base URL.
//!
//! Clients of every SMART kind are registered by the operator (CLI, admin API) or by
//! themselves (dynamic registration, [`register`]); [`client_auth`] authenticates them for
//! every grant. Browser apps reach the API and these endpoints cross-origin ([`cors`]).
//!
//! The FHIR API requires a token (`[auth] required`): [`Auth::verify`] checks it and
//! [`crate::access`] turns its claims into the request's actor and what it may do.

mod admin;
pub mod claims;
pub(crate) mod client_auth;
pub mod clients;
pub mod cors;
pub mod id_token_key;
mod jwks_url;
pub mod keys;
mod oauth;
mod register;
pub mod scopes;
pub mod siwe;
mod token;

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::config::{AuthConfig, RegistrationMode};
use crate::store::Store;
use claims::AccessClaims;
use keys::SigningKey;

/// The path of the token endpoint, under the FHIR base URL.
pub const TOKEN_PATH: &str = "/auth/token";
/// The path of the gateway's public key set, under the FHIR base URL.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// The SMART discovery document, under the FHIR base URL (SMART App Launch 2.2).
pub const DISCOVERY_PATH: &str = "/.well-known/smart-configuration";
/// Dynamic client registration (RFC 7591), under the FHIR base URL.
pub const REGISTER_PATH: &str = "/auth/register";
/// The client admin API, under the FHIR base URL.
pub const CLIENTS_PATH: &str = "/auth/clients";

/// An endpoint of the authorization server, as the discovery document and the
/// CapabilityStatement's oauth-uris extension both name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Its name in http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris.
    pub oauth_uris: &'static str,
    /// Its member in `.well-known/smart-configuration`.
    pub discovery: &'static str,
    pub url: String,
}

/// The authorization server's endpoints: the one source of both the discovery document and
/// the CapabilityStatement's `rest.security`.
pub fn endpoints(fhir_base_url: &str, config: &AuthConfig) -> Vec<Endpoint> {
    let mut endpoints = vec![Endpoint {
        oauth_uris: "token",
        discovery: "token_endpoint",
        url: format!("{fhir_base_url}{TOKEN_PATH}"),
    }];
    if config.registration == RegistrationMode::Open {
        endpoints.push(Endpoint {
            oauth_uris: "register",
            discovery: "registration_endpoint",
            url: format!("{fhir_base_url}{REGISTER_PATH}"),
        });
    }
    endpoints
}

/// What the authorization server's handlers share.
#[derive(Debug)]
pub struct Auth {
    store: Store,
    key: SigningKey,
    /// Verify tokens, by `kid`: the current key's first, then the earlier keys kept during a
    /// rotation (`auth.previous_signing_key_files`).
    verifying_keys: Vec<(String, jsonwebtoken::DecodingKey)>,
    /// The public keys of `verifying_keys`, as published.
    jwks: jsonwebtoken::jwk::JwkSet,
    /// Whether the FHIR API requires a token (`auth.required`).
    pub required: bool,
    /// `iss` of issued tokens.
    issuer: String,
    /// The FHIR base URL: `aud` of issued tokens.
    fhir_base_url: String,
    /// The token endpoint's absolute URL: what client assertions must name as `aud`.
    token_url: String,
    access_token_lifetime_secs: u64,
    /// See [`endpoints`].
    endpoints: Vec<Endpoint>,
    /// Keys of clients registered with a JWKS URL.
    jwks_cache: jwks_url::JwksCache,
    /// `[auth] registration`.
    registration: RegistrationMode,
    /// `[auth] registration_scopes`, parsed.
    registration_scopes: scopes::ScopeSet,
}

impl Auth {
    /// Loads (or makes) the signing key.
    pub fn new(
        config: &AuthConfig,
        data_dir: &std::path::Path,
        fhir_base_url: &str,
        store: Store,
    ) -> anyhow::Result<Auth> {
        let key = SigningKey::load_or_generate(config.signing_key_file.as_deref(), data_dir)?;
        let mut verifying_keys = vec![(key.kid().to_owned(), key.decoding_key()?)];
        let mut jwks = key.jwks();
        for path in &config.previous_signing_key_files {
            let previous = SigningKey::load(path)?;
            if verifying_keys.iter().any(|(kid, _)| kid == previous.kid()) {
                continue;
            }
            verifying_keys.push((previous.kid().to_owned(), previous.decoding_key()?));
            jwks.keys.push(previous.public_jwk().clone());
        }
        Ok(Auth {
            store,
            key,
            verifying_keys,
            jwks,
            required: config.required,
            issuer: config
                .issuer
                .clone()
                .unwrap_or_else(|| fhir_base_url.to_owned()),
            fhir_base_url: fhir_base_url.to_owned(),
            token_url: format!("{fhir_base_url}{TOKEN_PATH}"),
            access_token_lifetime_secs: config.access_token_lifetime_secs,
            endpoints: endpoints(fhir_base_url, config),
            jwks_cache: jwks_url::JwksCache::new(
                std::time::Duration::from_secs(config.jwks_cache_secs),
                std::time::Duration::from_secs(config.jwks_refetch_secs),
            )?,
            registration: config.registration,
            registration_scopes: scopes::ScopeSet::parse(&config.registration_scopes)
                .map_err(|e| anyhow::anyhow!("auth.registration_scopes: {e}"))?,
        })
    }
}

impl Auth {
    /// The FHIR base URL: the `aud` of the tokens, the `realm` of a 401.
    pub fn fhir_base_url(&self) -> &str {
        &self.fhir_base_url
    }
}

/// Mints an access token for the operator's scripts (`fhir-gateway token issue`) with the
/// configured signing key: `sub` and `client_id` are `operator`, no user; `patient` is the
/// launch patient of `patient/` scopes. The scopes must be ones this server grants.
pub fn operator_token(
    config: &AuthConfig,
    data_dir: &std::path::Path,
    fhir_base_url: &str,
    scope: &str,
    patient: Option<String>,
    lifetime_secs: i64,
) -> anyhow::Result<String> {
    let scopes = scopes::ScopeSet::parse(scope).map_err(|e| anyhow::anyhow!(e))?;
    anyhow::ensure!(
        !scopes.has_context(scopes::Context::Patient) || patient.is_some(),
        "patient/ scopes need --patient (the launch patient they are confined to)"
    );
    anyhow::ensure!(lifetime_secs > 0, "the lifetime must be positive");
    let key = SigningKey::load_or_generate(config.signing_key_file.as_deref(), data_dir)?;
    let now = crate::model::Instant::now().millis() / 1000;
    let claims = AccessClaims {
        iss: config
            .issuer
            .clone()
            .unwrap_or_else(|| fhir_base_url.to_owned()),
        aud: fhir_base_url.to_owned(),
        sub: "operator".to_owned(),
        client_id: "operator".to_owned(),
        scope: scopes.to_string(),
        iat: now,
        nbf: now,
        exp: now + lifetime_secs,
        jti: uuid::Uuid::new_v4().to_string(),
        user_kind: None,
        fhir_user: None,
        patient,
        encounter: None,
        purpose_of_use: None,
    };
    key.sign(&claims)
}

/// Why an access token was refused (the `error_description` of a 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidToken(pub String);

impl Auth {
    /// Verifies an access token fully: the algorithm (ES256 only: never `none`, never an HMAC),
    /// the `kid` and signature, `iss`, `aud` (the FHIR base URL), `exp` and `nbf`.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, InvalidToken> {
        use jsonwebtoken::errors::ErrorKind;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| InvalidToken("the access token is not a JWT".to_owned()))?;
        if header.alg != keys::ALGORITHM {
            return Err(InvalidToken(format!(
                "the access token's algorithm {:?} is not the one this server signs with (ES256)",
                header.alg
            )));
        }
        let Some(verifying_key) = header.kid.as_deref().and_then(|kid| {
            self.verifying_keys
                .iter()
                .find(|(k, _)| k == kid)
                .map(|(_, key)| key)
        }) else {
            return Err(InvalidToken(
                "the access token was not signed by a key of this server".to_owned(),
            ));
        };
        let mut validation = jsonwebtoken::Validation::new(keys::ALGORITHM);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.fhir_base_url]);
        validation.validate_nbf = true;
        validation.leeway = TOKEN_LEEWAY_SECS;
        jsonwebtoken::decode::<AccessClaims>(token, verifying_key, &validation)
            .map(|data| data.claims)
            .map_err(|e| {
                InvalidToken(
                    match e.kind() {
                        ErrorKind::ExpiredSignature => "the access token has expired",
                        ErrorKind::ImmatureSignature => "the access token is not valid yet",
                        ErrorKind::InvalidSignature => "the access token's signature is not valid",
                        ErrorKind::InvalidIssuer => "the access token is from another issuer",
                        ErrorKind::InvalidAudience => {
                            "the access token is for another server (aud)"
                        }
                        ErrorKind::MissingRequiredClaim(_) => {
                            "the access token lacks a required claim"
                        }
                        _ => "the access token is not valid",
                    }
                    .to_owned(),
                )
            })
    }
}

/// Clock skew tolerated on an access token's `exp` and `nbf`.
const TOKEN_LEEWAY_SECS: u64 = 30;

/// Mounts the authorization server's endpoints under `base_path` (the FHIR base URL's path).
/// Must come before the FHIR API's routes, whose `/{type}/{id}` would take these paths.
pub fn configure(cfg: &mut web::ServiceConfig, base_path: &str) {
    cfg.route(
        &format!("{base_path}{DISCOVERY_PATH}"),
        web::get().to(discovery),
    )
    .route(&format!("{base_path}{JWKS_PATH}"), web::get().to(jwks))
    .route(
        &format!("{base_path}{TOKEN_PATH}"),
        web::post().to(token::token),
    )
    .route(
        &format!("{base_path}{REGISTER_PATH}"),
        web::post().to(register::register),
    )
    .route(
        &format!("{base_path}{CLIENTS_PATH}"),
        web::get().to(admin::list),
    )
    .route(
        &format!("{base_path}{CLIENTS_PATH}"),
        web::post().to(admin::add),
    )
    .route(
        &format!("{base_path}{CLIENTS_PATH}/{{id}}"),
        web::get().to(admin::read),
    )
    .route(
        &format!("{base_path}{CLIENTS_PATH}/{{id}}"),
        web::delete().to(admin::remove),
    );
}

/// `GET [base]/.well-known/smart-configuration`: what works now, and nothing more.
async fn discovery(auth: web::Data<Auth>) -> HttpResponse {
    let base = &auth.fhir_base_url;
    let mut doc = json!({
        "issuer": auth.issuer,
        "jwks_uri": format!("{base}{JWKS_PATH}"),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported":
            clients::AuthMethod::ALL.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        "token_endpoint_auth_signing_alg_values_supported": client_auth::ASSERTION_ALGORITHMS,
        "scopes_supported": ["system/*.cruds", "system/*.rs", "system/*.read", "system/*.write"],
        // no authorization endpoint yet, hence no PKCE method (see README)
        "code_challenge_methods_supported": [],
        "capabilities": [
            "client-public",
            "client-confidential-symmetric",
            "client-confidential-asymmetric",
            "permission-v1",
            "permission-v2",
        ],
    });
    for endpoint in &auth.endpoints {
        doc[endpoint.discovery] = json!(endpoint.url);
    }
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc.to_string())
}

/// `GET [base]/.well-known/jwks.json`: the public keys that verify the gateway's tokens (the
/// current key and any earlier ones kept during a rotation).
async fn jwks(auth: web::Data<Auth>) -> HttpResponse {
    HttpResponse::Ok().json(&auth.jwks)
}
