//! Registering SMART clients (the `fhir-gateway client` command, and tests through the
//! library). A client's JWKS is checked when it is registered: public keys only, each with a
//! `kid` and usable with RS384 or ES384.

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};

use super::scopes;
use crate::model::Instant;
use crate::store::Store;
use crate::store::clients::{self, Client};

/// A client to register.
#[derive(Debug, Clone)]
pub struct NewClient {
    pub name: String,
    /// The client's public JWKS, as JSON text.
    pub jwks: String,
    /// The `system/` scopes it may be granted, space-separated.
    pub scopes: String,
}

/// Checks and stores a Backend Services client; returns it with its new `client_id`.
pub async fn register(store: &Store, new: NewClient) -> anyhow::Result<Client> {
    anyhow::ensure!(
        !new.name.trim().is_empty(),
        "the client's name must not be empty"
    );
    let allowed = scopes::ScopeSet::parse(&new.scopes).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(!allowed.is_empty(), "the client needs at least one scope");
    anyhow::ensure!(
        allowed.others.is_empty()
            && allowed
                .resources
                .iter()
                .all(|s| s.context == scopes::Context::System),
        "a backend-services client is allowed system/ scopes only"
    );
    let jwks = check_jwks(&new.jwks)?;
    let client = Client {
        client_id: uuid::Uuid::new_v4().to_string(),
        name: new.name.trim().to_owned(),
        kind: "backend".to_owned(),
        jwks: Some(serde_json::to_string(&jwks)?),
        jwks_url: None,
        scopes: new.scopes.split_whitespace().collect::<Vec<_>>().join(" "),
        created_at: Instant::now().millis(),
        redirect_uris: None,
        launch_uri: None,
    };
    let mut tx = store.begin().await?;
    clients::insert(&mut tx, &client).await?;
    tx.commit().await?;
    Ok(client)
}

pub async fn list(store: &Store) -> anyhow::Result<Vec<Client>> {
    Ok(clients::list(&mut *store.reader().await?).await?)
}

/// Removes a client; whether there was one.
pub async fn remove(store: &Store, client_id: &str) -> anyhow::Result<bool> {
    let mut tx = store.begin().await?;
    let removed = clients::remove(&mut tx, client_id).await?;
    tx.commit().await?;
    Ok(removed)
}

/// Members that only a private JWK has (RFC 7518 §6.2.2 and §6.3.2).
const PRIVATE_MEMBERS: [&str; 6] = ["d", "p", "q", "dp", "dq", "qi"];

/// A JWKS of public RSA or P-384 keys, each with a `kid`.
fn check_jwks(text: &str) -> anyhow::Result<JwkSet> {
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

/// A public app to register (SMART App Launch: no secret, PKCE; authenticated by its
/// `client_id` alone).
#[derive(Debug, Clone)]
pub struct NewPublicApp {
    pub name: String,
    /// The scopes it may be granted, space-separated (`patient/`, `user/`, `openid`, ...).
    pub scopes: String,
    /// Where authorization codes may be sent: absolute http(s) URLs without a fragment.
    pub redirect_uris: Vec<String>,
    /// Where an EHR launch opens the app.
    pub launch_uri: Option<String>,
}

/// Checks and stores a public app; returns it with its new `client_id`.
pub async fn register_public_app(store: &Store, new: NewPublicApp) -> anyhow::Result<Client> {
    anyhow::ensure!(
        !new.name.trim().is_empty(),
        "the client's name must not be empty"
    );
    let allowed = scopes::ScopeSet::parse(&new.scopes).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(!allowed.is_empty(), "the client needs at least one scope");
    anyhow::ensure!(
        !allowed.has_context(scopes::Context::System),
        "an app launched by a user is not allowed system/ scopes"
    );
    anyhow::ensure!(
        !new.redirect_uris.is_empty(),
        "the app needs at least one redirect URI"
    );
    for uri in new.redirect_uris.iter().chain(&new.launch_uri) {
        anyhow::ensure!(
            (uri.starts_with("https://") || uri.starts_with("http://"))
                && !uri.contains('#')
                && !uri.contains(char::is_whitespace),
            "{uri:?} is not an absolute http(s) URL without a fragment"
        );
    }
    let client = Client {
        client_id: uuid::Uuid::new_v4().to_string(),
        name: new.name.trim().to_owned(),
        kind: "public".to_owned(),
        jwks: None,
        jwks_url: None,
        scopes: new.scopes.split_whitespace().collect::<Vec<_>>().join(" "),
        created_at: Instant::now().millis(),
        redirect_uris: Some(new.redirect_uris.join(" ")),
        launch_uri: new.launch_uri,
    };
    let mut tx = store.begin().await?;
    clients::insert(&mut tx, &client).await?;
    tx.commit().await?;
    Ok(client)
}
