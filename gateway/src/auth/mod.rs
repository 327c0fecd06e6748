//! The gateway's SMART on FHIR authorization server (issue 4): SMART App Launch 2.2 and
//! Backend Services. Access tokens are signed by the gateway's own key ([`keys`]); discovery
//! (`.well-known/smart-configuration`, `.well-known/openid-configuration`) and the public keys
//! (`.well-known/jwks.json`) are served under the FHIR base URL.
//!
//! Clients of every SMART kind are registered by the operator (CLI, admin API) or by
//! themselves (dynamic registration, [`register`]); [`client_auth`] authenticates them for
//! every grant. Browser apps reach the API and these endpoints cross-origin ([`cors`]).
//!
//! The FHIR API requires a token (`[auth] required`): [`Auth::verify`] checks it and
//! [`crate::access`] turns its claims into the request's actor and what it may do.
//!
//! Apps launched by users get tokens through the authorization code flow ([`authorize`]:
//! the authorization endpoint and the sign-in, patient and approval pages; [`grants`]: the
//! `authorization_code` and `refresh_token` grants); tokens can be revoked ([`revoke`],
//! RFC 7009) and introspected ([`introspect`], RFC 7662).
//!
//! Patients' wallets are bound to their Patient records through one-time link codes
//! ([`binding`]: issued with the admin API, `patients.rs`, or the CLI; redeemed on the page
//! `link.rs` by signing in with the wallet). A patient with a bound wallet who allows an app
//! can record that consent on chain in the same step (`chain_consent.rs`).

mod admin;
pub mod authorize;
pub mod binding;
mod chain_consent;
pub mod claims;
pub(crate) mod client_auth;
pub mod clients;
pub mod cors;
mod grants;
pub mod id_token_key;
mod introspect;
mod jwks_url;
pub mod keys;
mod link;
mod oauth;
mod pages;
mod patients;
mod register;
mod revoke;
pub mod scopes;
pub mod siwe;
mod token;
pub mod token_cache;
pub mod users;

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
/// Token revocation (RFC 7009), under the FHIR base URL.
pub const REVOKE_PATH: &str = "/auth/revoke";
/// Token introspection (RFC 7662), under the FHIR base URL.
pub const INTROSPECT_PATH: &str = "/auth/introspect";
/// The OpenID Connect discovery document, under the FHIR base URL (the issuer).
pub const OPENID_CONFIGURATION_PATH: &str = "/.well-known/openid-configuration";
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
    let endpoint = |oauth_uris, discovery, path: &str| Endpoint {
        oauth_uris,
        discovery,
        url: format!("{fhir_base_url}{path}"),
    };
    let mut endpoints = vec![
        endpoint(
            "authorize",
            "authorization_endpoint",
            authorize::AUTHORIZE_PATH,
        ),
        endpoint("token", "token_endpoint", TOKEN_PATH),
        endpoint("revoke", "revocation_endpoint", REVOKE_PATH),
        endpoint("introspect", "introspection_endpoint", INTROSPECT_PATH),
    ];
    if config.registration == RegistrationMode::Open {
        endpoints.push(endpoint("register", "registration_endpoint", REGISTER_PATH));
    }
    endpoints
}

/// What the authorization server's handlers share.
#[derive(Debug)]
pub struct Auth {
    store: Store,
    key: SigningKey,
    /// Signs ID tokens (RS256, as SMART's `sso-openid-connect` requires).
    id_token_key: id_token_key::IdTokenKey,
    /// Verify tokens, by `kid`: the current key's first, then the earlier keys kept during a
    /// rotation (`auth.previous_signing_key_files`).
    verifying_keys: Vec<(String, jsonwebtoken::DecodingKey)>,
    /// The public keys of `verifying_keys`, as published.
    jwks: jsonwebtoken::jwk::JwkSet,
    /// Whether the FHIR API requires a token (`auth.required`).
    pub required: bool,
    /// Tokens verified before (see [`token_cache`]).
    verified: token_cache::Verified,
    /// Revoked access tokens (see [`token_cache`]).
    revoked: token_cache::Revoked,
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
    /// The FHIR base URL's path (the session cookie's path starts with it).
    base_path: String,
    code_lifetime_secs: u64,
    refresh_token_lifetime_secs: u64,
    session_lifetime_secs: u64,
    /// `auth.link_code_lifetime_secs`.
    link_code_lifetime_secs: u64,
    /// What Sign-In with Ethereum messages say (`auth.siwe_chain_id`, the base URL's domain).
    siwe: siwe::SiwePolicy,
    /// When expired sessions, codes and tokens were last removed (ms since the epoch).
    last_housekeeping: std::sync::atomic::AtomicI64,
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
        let id_token_key = id_token_key::IdTokenKey::load_or_generate(
            config.id_token_key_file.as_deref(),
            data_dir,
        )?;
        for path in &config.previous_signing_key_files {
            let previous = SigningKey::load(path)?;
            if verifying_keys.iter().any(|(kid, _)| kid == previous.kid()) {
                continue;
            }
            verifying_keys.push((previous.kid().to_owned(), previous.decoding_key()?));
            jwks.keys.push(previous.public_jwk().clone());
        }
        // the ID-token key verifies nothing here (access tokens are ES256), but clients verify
        // ID tokens with it
        jwks.keys.push(id_token_key.public_jwk().clone());
        Ok(Auth {
            store,
            key,
            id_token_key,
            verifying_keys,
            jwks,
            required: config.required,
            verified: token_cache::Verified::default(),
            revoked: token_cache::Revoked::default(),
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
            base_path: url_path(fhir_base_url),
            code_lifetime_secs: config.code_lifetime_secs,
            refresh_token_lifetime_secs: config.refresh_token_lifetime_secs,
            session_lifetime_secs: config.session_lifetime_secs,
            link_code_lifetime_secs: config.link_code_lifetime_secs,
            siwe: siwe::SiwePolicy::for_base_url(fhir_base_url, config.siwe_chain_id)?,
            last_housekeeping: std::sync::atomic::AtomicI64::new(0),
        })
    }

    /// An absolute URL of the authorization server (`path` under the FHIR base URL).
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.fhir_base_url)
    }

    /// Whether expired rows are due to be removed (at most once a minute per process); if
    /// so, the caller removes them.
    fn housekeeping_due(&self, now_millis: i64) -> bool {
        use std::sync::atomic::Ordering;
        let last = self.last_housekeeping.load(Ordering::Relaxed);
        now_millis - last >= 60_000
            && self
                .last_housekeeping
                .compare_exchange(last, now_millis, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    fn code_lifetime_millis(&self) -> i64 {
        secs_to_millis(self.code_lifetime_secs)
    }

    fn refresh_lifetime_millis(&self) -> i64 {
        secs_to_millis(self.refresh_token_lifetime_secs)
    }

    fn session_lifetime_millis(&self) -> i64 {
        secs_to_millis(self.session_lifetime_secs)
    }
}

fn secs_to_millis(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX / 1000) * 1000
}

/// The path of a URL (`/fhir` of `http://host:8080/fhir`), without a trailing slash.
fn url_path(url: &str) -> String {
    let without_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    match without_scheme.find('/') {
        Some(i) => without_scheme[i..].trim_end_matches('/').to_owned(),
        None => String::new(),
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
        break_glass: false,
        auditor: false,
    };
    key.sign(&claims)
}

/// Why an access token was refused (the `error_description` of a 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidToken(pub String);

impl Auth {
    /// Verifies an access token fully: the algorithm (ES256 only: never `none`, never an HMAC),
    /// the `kid` and signature, `iss`, `aud` (the FHIR base URL), `exp` and `nbf`. A token
    /// verified before is recognised by its hash and only its times are checked again (see
    /// [`token_cache`]).
    pub fn verify(&self, token: &str) -> Result<AccessClaims, InvalidToken> {
        let now = crate::model::Instant::now().millis() / 1000;
        let leeway = TOKEN_LEEWAY_SECS as i64;
        let key = token_cache::digest(token);
        if let Some(claims) = self.verified.get(&key, now, leeway) {
            return Ok((*claims).clone());
        }
        let claims = self.verify_uncached(token)?;
        self.verified
            .insert(key, std::sync::Arc::new(claims.clone()), now);
        Ok(claims)
    }

    /// Whether the access token `jti` was revoked (RFC 7009), by a list at most
    /// [`token_cache::REVOCATION_REFRESH`] old.
    pub async fn is_revoked(&self, jti: &str) -> Result<bool, sqlx::Error> {
        self.revoked.contains(&self.store, jti).await
    }

    /// [`Auth::verify`] without remembering: every check, every time (for benchmarks).
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
    )
    .route(
        &format!("{base_path}{OPENID_CONFIGURATION_PATH}"),
        web::get().to(openid_configuration),
    )
    .route(
        &format!("{base_path}{}", authorize::AUTHORIZE_PATH),
        web::get().to(authorize::authorize_get),
    )
    .route(
        &format!("{base_path}{}", authorize::AUTHORIZE_PATH),
        web::post().to(authorize::authorize_post),
    )
    .route(
        &format!("{base_path}{}", authorize::APPROVE_PATH),
        web::get().to(authorize::approve_get),
    )
    .route(
        &format!("{base_path}{}", authorize::APPROVE_PATH),
        web::post().to(authorize::approve_post),
    )
    .route(
        &format!("{base_path}{}", chain_consent::CONSENT_TYPED_DATA_PATH),
        web::post().to(chain_consent::typed_data),
    )
    .route(
        &format!("{base_path}{}", chain_consent::CONSENT_SCRIPT_PATH),
        web::get().to(chain_consent::script),
    )
    .route(
        &format!("{base_path}{}", authorize::SIGN_IN_PATH),
        web::post().to(authorize::sign_in),
    )
    .route(
        &format!("{base_path}{}", authorize::SIWE_MESSAGE_PATH),
        web::post().to(authorize::siwe_message),
    )
    .route(
        &format!("{base_path}{}", authorize::SIWE_SIGN_IN_PATH),
        web::post().to(authorize::siwe_sign_in),
    )
    .route(
        &format!("{base_path}{}", authorize::SIWE_SCRIPT_PATH),
        web::get().to(authorize::siwe_script),
    )
    .route(
        &format!("{base_path}{}", authorize::SIGN_OUT_PATH),
        web::post().to(authorize::sign_out),
    )
    .route(
        &format!("{base_path}{}", authorize::EHR_LAUNCH_PATH),
        web::get().to(authorize::ehr_launch_get),
    )
    .route(
        &format!("{base_path}{}", authorize::EHR_LAUNCH_PATH),
        web::post().to(authorize::ehr_launch_post),
    )
    .route(
        &format!("{base_path}{}", binding::LINK_PATH),
        web::get().to(link::link_get),
    )
    .route(
        &format!("{base_path}{}", binding::LINK_PATH),
        web::post().to(link::link_post),
    )
    .route(
        &format!("{base_path}{}", patients::LINK_CODES_PATH),
        web::post().to(patients::issue_code),
    )
    .route(
        &format!("{base_path}{}", patients::BINDING_PATH),
        web::get().to(patients::show),
    )
    .route(
        &format!("{base_path}{}", patients::BINDING_PATH),
        web::delete().to(patients::unbind),
    )
    .route(
        &format!("{base_path}{REVOKE_PATH}"),
        web::post().to(revoke::revoke),
    )
    .route(
        &format!("{base_path}{INTROSPECT_PATH}"),
        web::post().to(introspect::introspect),
    );
}

/// The scopes this server grants to apps, as advertised (`scopes_supported`).
const SCOPES_SUPPORTED: [&str; 16] = [
    "openid",
    "fhirUser",
    "launch",
    "launch/patient",
    "launch/encounter",
    "offline_access",
    "online_access",
    "patient/*.cruds",
    "patient/*.rs",
    "patient/*.read",
    "user/*.cruds",
    "user/*.rs",
    "user/*.read",
    "system/*.cruds",
    "system/*.rs",
    "system/*.read",
];

/// `GET [base]/.well-known/smart-configuration`: what works now, and nothing more.
async fn discovery(auth: web::Data<Auth>) -> HttpResponse {
    let base = &auth.fhir_base_url;
    let mut doc = json!({
        "issuer": auth.issuer,
        "jwks_uri": format!("{base}{JWKS_PATH}"),
        "grant_types_supported": token::GRANT_TYPES,
        "response_types_supported": ["code"],
        "token_endpoint_auth_methods_supported":
            clients::AuthMethod::ALL.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        "token_endpoint_auth_signing_alg_values_supported": client_auth::ASSERTION_ALGORITHMS,
        "scopes_supported": SCOPES_SUPPORTED,
        "code_challenge_methods_supported": ["S256"],
        "capabilities": [
            "launch-ehr",
            "launch-standalone",
            "authorize-post",
            "client-public",
            "client-confidential-symmetric",
            "client-confidential-asymmetric",
            "context-ehr-patient",
            "context-ehr-encounter",
            "context-standalone-patient",
            "context-banner",
            "permission-offline",
            "permission-online",
            "permission-patient",
            "permission-user",
            "permission-v1",
            "permission-v2",
            "sso-openid-connect",
        ],
    });
    for endpoint in &auth.endpoints {
        doc[endpoint.discovery] = json!(endpoint.url);
    }
    HttpResponse::Ok()
        .content_type("application/json")
        .body(doc.to_string())
}

/// `GET [base]/.well-known/openid-configuration` (OpenID Connect Discovery 1.0): what an
/// OpenID client needs to verify the `id_token`s issued with `openid`.
async fn openid_configuration(auth: web::Data<Auth>) -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(
        json!({
            "issuer": auth.issuer,
            "authorization_endpoint": auth.url(authorize::AUTHORIZE_PATH),
            "token_endpoint": auth.token_url,
            "jwks_uri": auth.url(JWKS_PATH),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "fhirUser"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported":
                clients::AuthMethod::ALL.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        })
        .to_string(),
    )
}

/// `GET [base]/.well-known/jwks.json`: the public keys that verify the gateway's tokens (the
/// current key and any earlier ones kept during a rotation).
async fn jwks(auth: web::Data<Auth>) -> HttpResponse {
    HttpResponse::Ok().json(&auth.jwks)
}
