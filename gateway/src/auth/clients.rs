//! Registering SMART clients (the `fhir-gateway client` command, the admin API, dynamic
//! registration and tests through the library), and their secrets.
//!
//! Four kinds (SMART App Launch 2.2 "Client Authentication", Backend Services):
//! - `backend`: a system acting on its own (`client_credentials`, `system/` scopes), signing
//!   assertions with its private key (`private_key_jwt`);
//! - `confidential-asymmetric`: an app that signs assertions with its private key;
//! - `confidential-symmetric`: an app holding a client secret the server made (32 random bytes,
//!   shown once, kept as an argon2 hash), sent with HTTP Basic or in the form;
//! - `public`: an app that cannot keep a secret (a browser or native app): no client
//!   authentication, PKCE instead.
//!
//! A client's JWKS (or JWKS URL) is checked when it is registered: public keys only, each with
//! a `kid` and usable with RS384 or ES384.

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use ring::rand::SecureRandom as _;

use super::scopes::{self, ScopeSet};
use crate::model::Instant;
use crate::store::Store;
use crate::store::clients::{self, Client};

/// What kind of client (see the module documentation).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum ClientKind {
    Backend,
    ConfidentialAsymmetric,
    ConfidentialSymmetric,
    Public,
}

impl ClientKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientKind::Backend => "backend",
            ClientKind::ConfidentialAsymmetric => "confidential-asymmetric",
            ClientKind::ConfidentialSymmetric => "confidential-symmetric",
            ClientKind::Public => "public",
        }
    }

    pub fn parse(text: &str) -> Option<ClientKind> {
        [
            ClientKind::Backend,
            ClientKind::ConfidentialAsymmetric,
            ClientKind::ConfidentialSymmetric,
            ClientKind::Public,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
    }

    /// Whether it is an app (a user launches it; authorization code flow).
    pub fn is_app(self) -> bool {
        self != ClientKind::Backend
    }
}

/// How a client authenticates at the token endpoint (RFC 7591 `token_endpoint_auth_method`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum AuthMethod {
    PrivateKeyJwt,
    ClientSecretBasic,
    ClientSecretPost,
    None,
}

impl AuthMethod {
    pub const ALL: [AuthMethod; 4] = [
        AuthMethod::PrivateKeyJwt,
        AuthMethod::ClientSecretBasic,
        AuthMethod::ClientSecretPost,
        AuthMethod::None,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::PrivateKeyJwt => "private_key_jwt",
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
            AuthMethod::None => "none",
        }
    }

    pub fn parse(text: &str) -> Option<AuthMethod> {
        AuthMethod::ALL.into_iter().find(|m| m.as_str() == text)
    }

    /// The methods a kind of client may register.
    fn allowed_for(self, kind: ClientKind) -> bool {
        matches!(
            (kind, self),
            (
                ClientKind::Backend | ClientKind::ConfidentialAsymmetric,
                AuthMethod::PrivateKeyJwt
            ) | (
                ClientKind::ConfidentialSymmetric,
                AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost
            ) | (ClientKind::Public, AuthMethod::None)
        )
    }

    /// The method of a kind when none is named.
    pub fn default_for(kind: ClientKind) -> AuthMethod {
        match kind {
            ClientKind::Backend | ClientKind::ConfidentialAsymmetric => AuthMethod::PrivateKeyJwt,
            ClientKind::ConfidentialSymmetric => AuthMethod::ClientSecretBasic,
            ClientKind::Public => AuthMethod::None,
        }
    }
}

/// A client to register.
#[derive(Debug, Clone)]
pub struct NewClient {
    pub name: String,
    pub kind: ClientKind,
    /// The scopes it may be granted, space-separated: `system/` scopes for a backend client;
    /// `patient/`, `user/`, `openid`, `fhirUser`, `launch`, `launch/patient`,
    /// `launch/encounter`, `offline_access`, `online_access` for apps (the launch scopes are
    /// its launch permissions).
    pub scopes: String,
    /// Apps: where the authorization endpoint may send the user back (at least one).
    pub redirect_uris: Vec<String>,
    /// Apps: where an EHR launch starts the app.
    pub launch_uri: Option<String>,
    /// `backend` and `confidential-asymmetric`: the client's public JWKS, as JSON text ...
    pub jwks: Option<String>,
    /// ... or the https URL where it publishes it.
    pub jwks_url: Option<String>,
    /// Unset: the kind's usual method (`client_secret_basic` for symmetric clients).
    pub auth_method: Option<AuthMethod>,
    /// A backend client whose tokens may use the client admin API.
    pub admin: bool,
}

impl NewClient {
    /// A Backend Services client with an inline JWKS.
    pub fn backend(name: &str, jwks: String, scopes: &str) -> NewClient {
        NewClient {
            name: name.to_owned(),
            kind: ClientKind::Backend,
            scopes: scopes.to_owned(),
            redirect_uris: Vec::new(),
            launch_uri: None,
            jwks: Some(jwks),
            jwks_url: None,
            auth_method: None,
            admin: false,
        }
    }

    /// An app of `kind` with one redirect URI (no keys: add `jwks` for an asymmetric one).
    pub fn app(name: &str, kind: ClientKind, redirect_uri: &str, scopes: &str) -> NewClient {
        NewClient {
            name: name.to_owned(),
            kind,
            scopes: scopes.to_owned(),
            redirect_uris: vec![redirect_uri.to_owned()],
            launch_uri: None,
            jwks: None,
            jwks_url: None,
            auth_method: None,
            admin: false,
        }
    }
}

/// A registered client, with its secret when the server made one (shown this once).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Registered {
    #[serde(flatten)]
    pub client: Client,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
}

/// Why a client could not be registered (RFC 7591 §3.2.2 errors).
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("{0}")]
    InvalidRedirectUri(String),
    #[error("{0}")]
    InvalidMetadata(String),
    #[error(transparent)]
    Store(#[from] sqlx::Error),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

fn metadata(message: impl Into<String>) -> RegistrationError {
    RegistrationError::InvalidMetadata(message.into())
}

/// Who registered a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisteredBy {
    /// The operator: CLI or admin API.
    Operator,
    /// Dynamic registration (RFC 7591).
    Dynamic,
}

/// Checks and stores a client; returns it with its new `client_id` (and secret, if any).
pub async fn register(store: &Store, new: NewClient) -> Result<Registered, RegistrationError> {
    register_as(store, new, RegisteredBy::Operator).await
}

pub(crate) async fn register_as(
    store: &Store,
    new: NewClient,
    by: RegisteredBy,
) -> Result<Registered, RegistrationError> {
    if by == RegisteredBy::Dynamic
        && let Some(url) = &new.jwks_url
    {
        // anyone may register openly: the gateway must not become their way to reach hosts
        // of its own network
        check_public_url(url).map_err(|e| metadata(format!("JWKS URL {url:?}: {e}")))?;
    }
    let (mut client, secret) = check(new)?;
    client.registered_by = match by {
        RegisteredBy::Operator => "operator",
        RegisteredBy::Dynamic => "dynamic",
    }
    .to_owned();
    let mut tx = store.begin().await?;
    clients::insert(&mut tx, &client).await?;
    tx.commit().await?;
    Ok(Registered {
        client,
        client_secret: secret,
    })
}

/// The client to store (with a new id) and its new secret, or why not.
fn check(new: NewClient) -> Result<(Client, Option<String>), RegistrationError> {
    let kind = new.kind;
    let name = new.name.trim();
    if name.is_empty() {
        return Err(metadata("the client's name must not be empty"));
    }
    let allowed = ScopeSet::parse(&new.scopes).map_err(metadata)?;
    if allowed.is_empty() {
        return Err(metadata("the client needs at least one scope"));
    }
    if kind.is_app() {
        if allowed.has_context(scopes::Context::System) {
            return Err(metadata(
                "system/ scopes are for backend clients only; an app gets patient/ and user/ scopes",
            ));
        }
    } else if !allowed.others.is_empty()
        || !allowed
            .resources
            .iter()
            .all(|s| s.context == scopes::Context::System)
    {
        return Err(metadata(
            "a backend-services client is allowed system/ scopes only",
        ));
    }
    let method = new.auth_method.unwrap_or(AuthMethod::default_for(kind));
    if !method.allowed_for(kind) {
        return Err(metadata(format!(
            "a {} client cannot authenticate with {}",
            kind.as_str(),
            method.as_str()
        )));
    }
    let mut redirect_uris = Vec::new();
    for uri in &new.redirect_uris {
        check_app_url(uri).map_err(|e| {
            RegistrationError::InvalidRedirectUri(format!("redirect URI {uri:?}: {e}"))
        })?;
        if !redirect_uris.contains(uri) {
            redirect_uris.push(uri.clone());
        }
    }
    if kind.is_app() && redirect_uris.is_empty() {
        return Err(RegistrationError::InvalidRedirectUri(
            "an app needs at least one redirect URI".to_owned(),
        ));
    }
    if !kind.is_app() && !redirect_uris.is_empty() {
        return Err(RegistrationError::InvalidRedirectUri(
            "a backend client has no redirect URIs (it gets tokens without a user)".to_owned(),
        ));
    }
    if let Some(uri) = &new.launch_uri {
        if !kind.is_app() {
            return Err(metadata("only apps have a launch URI"));
        }
        check_app_url(uri).map_err(|e| metadata(format!("launch URI {uri:?}: {e}")))?;
    }
    if new.admin && kind != ClientKind::Backend {
        return Err(metadata(
            "only backend clients may be admins (their tokens come from client_credentials)",
        ));
    }
    let (jwks, jwks_url) = match (method, new.jwks, new.jwks_url) {
        (AuthMethod::PrivateKeyJwt, Some(jwks), None) => {
            let jwks = check_jwks(&jwks).map_err(|e| metadata(e.to_string()))?;
            (
                Some(serde_json::to_string(&jwks).map_err(anyhow::Error::from)?),
                None,
            )
        }
        (AuthMethod::PrivateKeyJwt, None, Some(url)) => {
            check_jwks_url(&url).map_err(|e| metadata(format!("JWKS URL {url:?}: {e}")))?;
            (None, Some(url))
        }
        (AuthMethod::PrivateKeyJwt, _, _) => {
            return Err(metadata(
                "a private_key_jwt client needs either a JWKS or a JWKS URL (one of them)",
            ));
        }
        (_, None, None) => (None, None),
        (_, _, _) => {
            return Err(metadata(format!(
                "a client authenticating with {} has no JWKS",
                method.as_str()
            )));
        }
    };
    let (secret, secret_hash) = match method {
        AuthMethod::ClientSecretBasic | AuthMethod::ClientSecretPost => {
            let secret = new_secret()?;
            let hash = hash_secret(&secret)?;
            (Some(secret), Some(hash))
        }
        AuthMethod::PrivateKeyJwt | AuthMethod::None => (None, None),
    };
    let client = Client {
        client_id: uuid::Uuid::new_v4().to_string(),
        name: name.to_owned(),
        kind: kind.as_str().to_owned(),
        token_endpoint_auth_method: method.as_str().to_owned(),
        jwks,
        jwks_url,
        secret_hash,
        redirect_uris,
        launch_uri: new.launch_uri,
        scopes: new.scopes.split_whitespace().collect::<Vec<_>>().join(" "),
        admin: new.admin,
        registered_by: "operator".to_owned(),
        created_at: Instant::now().millis(),
    };
    Ok((client, secret))
}

/// Checks `[auth] registration_scopes`: scopes this server grants, and none for systems.
pub fn check_registration_scopes(text: &str) -> Result<(), String> {
    let scopes = ScopeSet::parse(text)?;
    if scopes.has_context(scopes::Context::System) {
        return Err("system/ scopes are never granted through open registration".to_owned());
    }
    Ok(())
}

pub async fn list(store: &Store) -> anyhow::Result<Vec<Client>> {
    Ok(clients::list(&mut *store.reader().await?).await?)
}

pub async fn find(store: &Store, client_id: &str) -> anyhow::Result<Option<Client>> {
    Ok(clients::find(&mut *store.reader().await?, client_id).await?)
}

/// Removes a client; whether there was one.
pub async fn remove(store: &Store, client_id: &str) -> anyhow::Result<bool> {
    let mut tx = store.begin().await?;
    let removed = clients::remove(&mut tx, client_id).await?;
    tx.commit().await?;
    Ok(removed)
}

/// Whether `host` is a loopback host (where plain http is allowed, for development).
fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// A redirect or launch URI: absolute, https (http only on a loopback host), no fragment
/// (RFC 6749 §3.1.2), no user name or password.
pub(crate) fn check_app_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| format!("not an absolute URL ({e})"))?;
    check_https(&url)?;
    if url.fragment().is_some() {
        return Err("must not have a fragment (#...)".to_owned());
    }
    Ok(url)
}

fn check_https(url: &url::Url) -> Result<(), String> {
    match url.scheme() {
        "https" if url.host().is_some() => {}
        "http" if is_loopback(url) => {}
        "http" => return Err("must be https (http only on localhost, for development)".to_owned()),
        _ => return Err("must be an https URL".to_owned()),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not hold a user name or password".to_owned());
    }
    Ok(())
}

/// A JWKS URL: https (http only on a loopback host).
pub(crate) fn check_jwks_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| format!("not an absolute URL ({e})"))?;
    check_https(&url)?;
    Ok(url)
}

/// A URL an openly registered client may make the gateway fetch: https, on a host that is
/// neither `localhost` nor a loopback, private, link-local or otherwise internal address.
/// (A DNS name resolving to such an address is not caught here.)
fn check_public_url(text: &str) -> Result<(), String> {
    let url = url::Url::parse(text).map_err(|e| format!("not an absolute URL ({e})"))?;
    if url.scheme() != "https" {
        return Err("must be https".to_owned());
    }
    let internal = match url.host() {
        Some(url::Host::Domain(domain)) => {
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            domain == "localhost" || domain.ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => {
            ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip.is_documentation()
                || ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64 // 100.64/10
        }
        Some(url::Host::Ipv6(ip)) => {
            let first = ip.segments()[0];
            ip.is_loopback()
                || ip.is_unspecified()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
                || ip.to_ipv4_mapped().is_some()
        }
        None => true,
    };
    if internal {
        return Err("must be on a public host".to_owned());
    }
    Ok(())
}

/// A new client secret: 32 random bytes, base64url.
fn new_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness for a client secret"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The argon2id hash of a secret (a PHC string with its own random salt).
fn hash_secret(secret: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| anyhow::anyhow!("no randomness for a salt"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Ok(argon2::Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing the client secret: {e}"))?
        .to_string())
}

/// Whether `secret` is the one `hash` was made from (argon2 compares in constant time).
pub(crate) fn verify_secret(hash: &str, secret: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|hash| {
        argon2::Argon2::default()
            .verify_password(secret.as_bytes(), &hash)
            .is_ok()
    })
}

/// Members that only a private JWK has (RFC 7518 §6.2.2 and §6.3.2).
const PRIVATE_MEMBERS: [&str; 6] = ["d", "p", "q", "dp", "dq", "qi"];

/// A JWKS of public RSA or P-384 keys, each with a `kid`.
pub(crate) fn check_jwks(text: &str) -> anyhow::Result<JwkSet> {
    let raw: serde_json::Value =
        serde_json::from_str(text).map_err(|e| anyhow::anyhow!("the JWKS is not JSON: {e}"))?;
    let keys = raw["keys"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("the JWKS has no \"keys\" array"))?;
    anyhow::ensure!(!keys.is_empty(), "the JWKS has no keys");
    for key in keys {
        if let Some(member) = PRIVATE_MEMBERS.iter().find(|m| key.get(**m).is_some()) {
            anyhow::bail!(
                "the JWKS holds a private key (member {member:?}): register the public keys only"
            );
        }
    }
    let jwks: JwkSet = serde_json::from_value(raw)
        .map_err(|e| anyhow::anyhow!("the JWKS is not a valid JWK Set: {e}"))?;
    for jwk in &jwks.keys {
        check_key(jwk)?;
    }
    Ok(jwks)
}

fn check_key(jwk: &Jwk) -> anyhow::Result<()> {
    let kid = jwk
        .common
        .key_id
        .as_deref()
        .filter(|kid| !kid.is_empty())
        .ok_or_else(|| anyhow::anyhow!("every key in the JWKS needs a \"kid\""))?;
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => {}
        AlgorithmParameters::EllipticCurve(ec)
            if ec.curve == jsonwebtoken::jwk::EllipticCurve::P384 => {}
        _ => anyhow::bail!("key {kid:?} is neither RSA nor P-384 (assertions use RS384 or ES384)"),
    }
    jsonwebtoken::DecodingKey::from_jwk(jwk)
        .map_err(|e| anyhow::anyhow!("key {kid:?} is not usable: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_verify_against_their_hash_only() {
        let secret = new_secret().expect("a secret");
        assert_eq!(secret.len(), 43, "32 bytes in base64url");
        let hash = hash_secret(&secret).expect("a hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_secret(&hash, &secret));
        assert!(!verify_secret(&hash, "not-the-secret"));
        assert!(!verify_secret("not a hash", &secret));
        assert_ne!(
            hash,
            hash_secret(&secret).expect("a hash"),
            "a salt each time"
        );
    }

    #[test]
    fn redirect_uris_are_https_except_on_loopback() {
        for ok in [
            "https://app.example.org/callback",
            "https://app.example.org/cb?x=1",
            "http://localhost:3000/cb",
            "http://127.0.0.1/cb",
            "http://[::1]:8080/cb",
        ] {
            assert!(check_app_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://app.example.org/cb",
            "https://app.example.org/cb#frag",
            "/cb",
            "javascript:alert(1)",
            "https://user:pw@app.example.org/cb",
            "ftp://app.example.org/cb",
        ] {
            assert!(check_app_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn openly_registered_jwks_urls_are_on_public_hosts() {
        assert!(check_public_url("https://keys.example.org/jwks.json").is_ok());
        assert!(check_public_url("https://93.184.216.34/jwks.json").is_ok());
        for internal in [
            "http://keys.example.org/jwks.json",
            "https://localhost/jwks.json",
            "https://127.0.0.1/jwks.json",
            "https://10.1.2.3/jwks.json",
            "https://192.168.0.1/jwks.json",
            "https://169.254.169.254/latest",
            "https://100.64.0.1/jwks.json",
            "https://[::1]/jwks.json",
            "https://[fd00::1]/jwks.json",
            "https://[::ffff:127.0.0.1]/jwks.json",
        ] {
            assert!(check_public_url(internal).is_err(), "{internal}");
        }
    }

    #[test]
    fn each_kind_has_its_methods() {
        use AuthMethod::*;
        use ClientKind::*;
        assert!(PrivateKeyJwt.allowed_for(Backend));
        assert!(PrivateKeyJwt.allowed_for(ConfidentialAsymmetric));
        assert!(ClientSecretBasic.allowed_for(ConfidentialSymmetric));
        assert!(ClientSecretPost.allowed_for(ConfidentialSymmetric));
        assert!(None.allowed_for(Public));
        assert!(!None.allowed_for(ConfidentialSymmetric));
        assert!(!ClientSecretBasic.allowed_for(Backend));
        assert!(!PrivateKeyJwt.allowed_for(Public));
    }
}
