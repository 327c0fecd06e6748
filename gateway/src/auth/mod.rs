//! The gateway's SMART on FHIR authorization server (issue 4), so far its Backend Services
//! part: clients registered by the operator ([`clients`]) authenticate at the token endpoint
//! with a JWT signed by their private key and get a short-lived access token signed by the
//! gateway's own key ([`keys`]). Discovery (`.well-known/smart-configuration`) and the public
//! key (`.well-known/jwks.json`) are served under the FHIR base URL.
//!
//! The FHIR API does not require tokens yet: enforcement is a later increment.

pub mod clients;
pub mod keys;
pub mod scopes;
mod token;

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::config::AuthConfig;
use crate::store::Store;
use keys::SigningKey;

/// The path of the token endpoint, under the FHIR base URL.
pub const TOKEN_PATH: &str = "/auth/token";
/// The path of the gateway's public key set, under the FHIR base URL.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// The SMART discovery document, under the FHIR base URL (SMART App Launch 2.2).
pub const DISCOVERY_PATH: &str = "/.well-known/smart-configuration";

/// What the authorization server's handlers share.
#[derive(Debug)]
pub struct Auth {
    store: Store,
    key: SigningKey,
    /// `iss` of issued tokens.
    issuer: String,
    /// The FHIR base URL: `aud` of issued tokens.
    fhir_base_url: String,
    /// The token endpoint's absolute URL: what client assertions must name as `aud`.
    token_url: String,
    access_token_lifetime_secs: u64,
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
        Ok(Auth {
            store,
            key,
            issuer: config
                .issuer
                .clone()
                .unwrap_or_else(|| fhir_base_url.to_owned()),
            fhir_base_url: fhir_base_url.to_owned(),
            token_url: format!("{fhir_base_url}{TOKEN_PATH}"),
            access_token_lifetime_secs: config.access_token_lifetime_secs,
        })
    }
}

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
    );
}

/// `GET [base]/.well-known/smart-configuration`: what works now, and nothing more.
async fn discovery(auth: web::Data<Auth>) -> HttpResponse {
    let base = &auth.fhir_base_url;
    HttpResponse::Ok().content_type("application/json").body(
        json!({
            "issuer": auth.issuer,
            "jwks_uri": format!("{base}{JWKS_PATH}"),
            "token_endpoint": auth.token_url,
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": token::ASSERTION_ALGORITHMS,
            "scopes_supported": ["system/*.cruds", "system/*.rs", "system/*.read", "system/*.write"],
            // no authorization endpoint yet, hence no PKCE method (see README)
            "code_challenge_methods_supported": [],
            "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
        })
        .to_string(),
    )
}

/// `GET [base]/.well-known/jwks.json`: the public key that verifies the gateway's tokens.
async fn jwks(auth: web::Data<Auth>) -> HttpResponse {
    HttpResponse::Ok().json(auth.key.jwks())
}
