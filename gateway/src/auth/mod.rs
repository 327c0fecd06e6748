//! The gateway's SMART on FHIR authorization server (issue 4), so far its Backend Services
//! part: clients registered by the operator ([`clients`]) authenticate at the token endpoint
//! with a JWT signed by their private key and get a short-lived access token signed by the
//! gateway's own key ([`keys`]). Discovery (`.well-known/smart-configuration`) and the public
//! key (`.well-known/jwks.json`) are served under the FHIR base URL.
//!
//! The FHIR API requires a token (`[auth] required`): [`Auth::verify`] checks it and
//! [`crate::access`] turns its claims into the request's actor and what it may do.

pub mod claims;
pub mod clients;
pub mod keys;
mod oauth;
pub mod scopes;
mod token;

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::config::AuthConfig;
use crate::store::Store;
use claims::AccessClaims;
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
    /// Verify tokens, by `kid`: the current key's first, then the earlier keys kept during a
    /// rotation (`auth.previous_signing_key_files`).
    verifying_keys: Vec<(String, jsonwebtoken::DecodingKey)>,
    /// The public keys of `verifying_keys`, as published.
    jwks: jsonwebtoken::jwk::JwkSet,
    /// Whether the FHIR API requires a token (`auth.required`).
    pub required: bool,
    /// Tokens verified before, by the SHA-256 of their text: an ES256 verification costs
    /// hundreds of µs, a client sends the same token with many requests (see `verify`).
    verified: std::sync::Mutex<std::collections::HashMap<[u8; 32], AccessClaims>>,
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
            verified: std::sync::Mutex::default(),
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

/// How many verified tokens are remembered (about 2 kB each); beyond it the expired ones are
/// dropped, and if that is not enough, all.
const VERIFIED_TOKENS: usize = 10_000;

impl Auth {
    /// Verifies an access token: fully the first time ([`Auth::verify_uncached`]); a token
    /// verified before (the very same text, so the same signature) only for its time, `exp`
    /// and `nbf`. The keys that verify are fixed for the life of the process.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, InvalidToken> {
        let digest: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .map_err(|_| InvalidToken("the access token could not be hashed".to_owned()))?;
        let now = crate::model::Instant::now().millis() / 1000;
        let leeway = TOKEN_LEEWAY_SECS as i64;
        let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(claims) = verified.get(&digest) {
            if now > claims.exp + leeway {
                return Err(InvalidToken("the access token has expired".to_owned()));
            }
            if now < claims.nbf - leeway {
                return Err(InvalidToken("the access token is not valid yet".to_owned()));
            }
            return Ok(claims.clone());
        }
        drop(verified);
        let claims = self.verify_uncached(token)?;
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= VERIFIED_TOKENS {
            verified.retain(|_, c| now < c.exp + leeway);
            if verified.len() >= VERIFIED_TOKENS {
                verified.clear();
            }
        }
        verified.insert(digest, claims.clone());
        Ok(claims)
    }

    /// Verifies an access token fully: the algorithm (ES256 only: never `none`, never an HMAC),
    /// the `kid` and signature, `iss`, `aud` (the FHIR base URL), `exp` and `nbf`.
    pub fn verify_uncached(&self, token: &str) -> Result<AccessClaims, InvalidToken> {
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

/// `GET [base]/.well-known/jwks.json`: the public keys that verify the gateway's tokens (the
/// current key and any earlier ones kept during a rotation).
async fn jwks(auth: web::Data<Auth>) -> HttpResponse {
    HttpResponse::Ok().json(&auth.jwks)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "http://127.0.0.1:8080/fhir";

    #[tokio::test]
    async fn a_remembered_token_is_refused_once_it_expires() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut config = crate::config::Config::default();
        config.database.data_dir = dir.path().to_path_buf();
        let store = Store::connect(&config.database).await.expect("the store");
        let auth = Auth::new(&config.auth, dir.path(), BASE, store).expect("the auth server");
        let token = operator_token(&config.auth, dir.path(), BASE, "system/*.rs", None, 3600)
            .expect("a token");
        assert_eq!(auth.verify(&token).expect("valid").scope, "system/*.rs");
        assert_eq!(auth.verified.lock().expect("the cache").len(), 1);
        assert!(
            auth.verify("not-a-token").is_err(),
            "what fails is not remembered"
        );
        assert_eq!(auth.verified.lock().expect("the cache").len(), 1);
        // the remembered claims expire like the token
        for claims in auth.verified.lock().expect("the cache").values_mut() {
            claims.exp -= 7200;
        }
        assert_eq!(
            auth.verify(&token),
            Err(InvalidToken("the access token has expired".to_owned()))
        );
    }
}
