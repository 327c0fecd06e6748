//! Client authentication at the token endpoint (and every other endpoint a client
//! authenticates at), one function for every grant: [`authenticate`].
//!
//! Methods (RFC 6749 §2.3, RFC 7523, SMART App Launch 2.2 "Client Authentication"):
//! - `private_key_jwt`: a JWT signed with the client's private key (RS384 or ES384), checked
//!   against its registered JWKS or the JWKS at its registered URL; `jti` used once;
//! - `client_secret_basic`: `Authorization: Basic` with the form-urlencoded client_id and
//!   secret (RFC 6749 §2.3.1);
//! - `client_secret_post`: `client_id` and `client_secret` in the form;
//! - `none`: a public client names itself with `client_id` only.
//!
//! A request uses exactly one method, and it must be the client's registered one. Every
//! failure is `invalid_client` (401; with `WWW-Authenticate: Basic` when Basic was tried).
//! Neither secrets nor assertions are logged.

use actix_web::http::header::{AUTHORIZATION, HeaderMap};
use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::Auth;
use super::clients::{AuthMethod, ClientKind, verify_secret};
use super::oauth::{Form, OAuthError};
use crate::model::Instant;
use crate::store::clients::{self, Client};

/// The algorithms a client assertion may be signed with (SMART: RS384 and ES384).
pub(super) const ASSERTION_ALGORITHMS: [&str; 2] = ["RS384", "ES384"];

const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The longest an assertion may live: its `exp` at most this far ahead (SMART: 5 minutes).
const MAX_ASSERTION_LIFETIME_SECS: i64 = 300;

/// Clock skew tolerated on an assertion's `exp` and `nbf`.
const LEEWAY_SECS: u64 = 30;

/// A client that proved who it is (or, for a public client, named itself).
#[derive(Debug, Clone)]
pub(crate) struct AuthenticatedClient {
    pub(crate) client: Client,
    pub(crate) kind: ClientKind,
    pub(crate) method: AuthMethod,
}

/// Authenticates the client of a token request (or of revocation, introspection): see the
/// module documentation.
pub(crate) async fn authenticate(
    auth: &Auth,
    headers: &HeaderMap,
    form: &Form,
) -> Result<AuthenticatedClient, OAuthError> {
    let basic = basic_credentials(headers)?;
    let assertion_type = form.get("client_assertion_type")?;
    let assertion = form.get("client_assertion")?;
    let secret = form.get("client_secret")?;
    let form_client_id = form.get("client_id")?;
    let uses_assertion = assertion_type.is_some() || assertion.is_some();
    let used = [basic.is_some(), uses_assertion, secret.is_some()]
        .iter()
        .filter(|used| **used)
        .count();
    if used > 1 {
        let error = OAuthError::client(
            "more than one client authentication method in one request (RFC 6749 §2.3)",
        );
        return Err(if basic.is_some() {
            error.with_basic_challenge()
        } else {
            error
        });
    }
    let (client, method) = if let Some((client_id, secret)) = basic {
        let challenge = OAuthError::with_basic_challenge;
        if form_client_id.is_some_and(|id| id != client_id) {
            return Err(challenge(OAuthError::client(
                "client_id does not match the client named in the Authorization header",
            )));
        }
        let client = find_client(auth, &client_id).await.map_err(challenge)?;
        expect_method(&client, AuthMethod::ClientSecretBasic).map_err(challenge)?;
        check_secret(&client, secret).await.map_err(challenge)?;
        (client, AuthMethod::ClientSecretBasic)
    } else if let Some(secret) = secret {
        let client_id = form_client_id.ok_or_else(|| {
            OAuthError::client("client_secret without client_id (client_secret_post)")
        })?;
        let client = find_client(auth, client_id).await?;
        expect_method(&client, AuthMethod::ClientSecretPost)?;
        check_secret(&client, secret.to_owned()).await?;
        (client, AuthMethod::ClientSecretPost)
    } else if uses_assertion {
        match assertion_type {
            Some(CLIENT_ASSERTION_TYPE) => {}
            None => {
                return Err(OAuthError::client(format!(
                    "client_assertion_type must be {CLIENT_ASSERTION_TYPE}"
                )));
            }
            Some(other) => {
                return Err(OAuthError::client(format!(
                    "client_assertion_type {other:?} is not supported; use {CLIENT_ASSERTION_TYPE}"
                )));
            }
        }
        let assertion =
            assertion.ok_or_else(|| OAuthError::client("client_assertion is missing"))?;
        let client = check_assertion(auth, assertion, form_client_id).await?;
        (client, AuthMethod::PrivateKeyJwt)
    } else {
        let client_id = form_client_id.ok_or_else(|| {
            OAuthError::client(
                "no client authentication: a client_assertion (private_key_jwt), a client \
                 secret (client_secret_basic or client_secret_post), or a public client's \
                 client_id",
            )
        })?;
        let client = find_client(auth, client_id).await?;
        expect_method(&client, AuthMethod::None)?;
        (client, AuthMethod::None)
    };
    let kind = client
        .kind()
        .ok_or_else(|| OAuthError::new("server_error", "the client's kind is unknown"))?;
    Ok(AuthenticatedClient {
        client,
        kind,
        method,
    })
}

/// Authenticates the client of a `refresh_token` request: as [`authenticate`], except that a
/// request naming no client at all (no credentials, no `client_id`) is the refresh token's own
/// client when that is a public client. RFC 6749 §6 requires confidential clients to
/// authenticate on refresh and asks nothing of public ones (their `client_id` proves nothing;
/// the refresh token is the credential), and SMART's refresh request has no `client_id`: the
/// SMART JS client (npm `fhirclient`) sends none by default. A confidential client's token
/// presented so is `invalid_client` still.
pub(crate) async fn authenticate_refresh(
    auth: &Auth,
    headers: &HeaderMap,
    form: &Form,
) -> Result<AuthenticatedClient, OAuthError> {
    let mut names_a_client = headers.contains_key(AUTHORIZATION);
    for name in [
        "client_id",
        "client_secret",
        "client_assertion",
        "client_assertion_type",
    ] {
        names_a_client |= form.get(name)?.is_some();
    }
    let token = form.get("refresh_token")?;
    let (false, Some(token)) = (names_a_client, token) else {
        return authenticate(auth, headers, form).await;
    };
    let found = match auth.store.reader().await {
        Ok(mut conn) => {
            crate::store::grants::find_refresh(&mut conn, &super::grants::hash_secret(token)).await
        }
        Err(e) => Err(e),
    }
    .map_err(|_| OAuthError::new("server_error", "the database is unavailable"))?;
    let public = match found {
        Some(refresh) => {
            let client = find_client(auth, &refresh.grant.client_id).await?;
            (client.token_endpoint_auth_method == AuthMethod::None.as_str()).then_some(client)
        }
        None => None,
    };
    let Some(client) = public else {
        // a confidential client's token, or none the gateway knows: the usual refusal
        return authenticate(auth, headers, form).await;
    };
    let kind = client
        .kind()
        .ok_or_else(|| OAuthError::new("server_error", "the client's kind is unknown"))?;
    Ok(AuthenticatedClient {
        client,
        kind,
        method: AuthMethod::None,
    })
}

/// The client id and secret of an `Authorization: Basic` header, each form-urlencoded
/// (RFC 6749 §2.3.1); None without a Basic header.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || {
        OAuthError::client("the Authorization header is not valid HTTP Basic credentials")
            .with_basic_challenge()
    };
    let value = value.to_str().map_err(|_| malformed())?;
    let Some((scheme, credentials)) = value.trim().split_once(' ') else {
        return Err(malformed());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        // another scheme (a bearer token at the introspection endpoint) is not a client's
        // credentials: the caller deals with it
        return Ok(None);
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(credentials.trim())
        .map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    let unescape = |text: &str| -> String {
        form_urlencoded::parse(format!("v={text}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let id = unescape(id);
    if id.is_empty() {
        return Err(malformed());
    }
    Ok(Some((id, unescape(secret))))
}

fn expect_method(client: &Client, method: AuthMethod) -> Result<(), OAuthError> {
    if client.token_endpoint_auth_method == method.as_str() {
        Ok(())
    } else {
        Err(OAuthError::client(format!(
            "the client is registered to authenticate with {}, not {}",
            client.token_endpoint_auth_method,
            method.as_str()
        )))
    }
}

/// Checks a client secret against its argon2 hash (off the async workers: it takes a while
/// by design).
async fn check_secret(client: &Client, secret: String) -> Result<(), OAuthError> {
    let hash = client
        .secret_hash
        .clone()
        .ok_or_else(|| OAuthError::client("the client has no secret"))?;
    let matches = tokio::task::spawn_blocking(move || verify_secret(&hash, &secret))
        .await
        .map_err(|_| OAuthError::new("server_error", "the secret could not be checked"))?;
    if matches {
        Ok(())
    } else {
        Err(OAuthError::client("the client secret is not valid"))
    }
}

/// The claims of a client assertion that matter once jsonwebtoken has checked `iss`, `sub`,
/// `aud`, `exp` and `nbf`.
#[derive(Debug, Deserialize)]
struct AssertionClaims {
    exp: i64,
    jti: Option<String>,
}

/// Checks a client assertion (RFC 7523 §3 as SMART profiles it) and records its `jti`;
/// returns the client.
async fn check_assertion(
    auth: &Auth,
    assertion: &str,
    claimed_client_id: Option<&str>,
) -> Result<Client, OAuthError> {
    let alg = header_algorithm(assertion)?;
    let header = jsonwebtoken::decode_header(assertion).map_err(|e| {
        OAuthError::client(format!("the client assertion's header is not valid: {e}"))
    })?;
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
    expect_method(&client, AuthMethod::PrivateKeyJwt)?;
    if let Some(jku) = &header.jku
        && client.jwks_url.as_deref() != Some(jku.as_str())
    {
        return Err(OAuthError::client(
            "the client assertion's jku is not the client's registered JWKS URL",
        ));
    }
    let key = client_key(auth, &client, &kid, alg).await?;
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
    Ok(client)
}

/// The client's public key `kid` for `alg`: from its registered JWKS, or from the JWKS at its
/// URL.
async fn client_key(
    auth: &Auth,
    client: &Client,
    kid: &str,
    alg: Algorithm,
) -> Result<DecodingKey, OAuthError> {
    let jwk = if let Some(url) = &client.jwks_url {
        auth.jwks_cache.key(url, kid, alg).await?
    } else {
        let jwks: JwkSet = client
            .jwks
            .as_deref()
            .and_then(|jwks| serde_json::from_str(jwks).ok())
            .ok_or_else(|| OAuthError::client("the client has no usable JWKS"))?;
        select_key(&jwks, kid, alg)?
    };
    DecodingKey::from_jwk(&jwk)
        .map_err(|_| OAuthError::client(format!("the client's key {kid:?} is not usable")))
}

/// The one key of `jwks` with `kid` whose type fits `alg` (SMART App Launch 2.2, "Signature
/// Verification", step 3: none, or more than one, and verification fails).
pub(super) fn select_key(jwks: &JwkSet, kid: &str, alg: Algorithm) -> Result<Jwk, OAuthError> {
    let fits = |jwk: &&Jwk| match (&jwk.algorithm, alg) {
        (AlgorithmParameters::RSA(_), Algorithm::RS384) => true,
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES384) => {
            ec.curve == EllipticCurve::P384
        }
        _ => false,
    };
    let mut candidates = jwks
        .keys
        .iter()
        .filter(|jwk| jwk.common.key_id.as_deref() == Some(kid))
        .filter(fits);
    match (candidates.next(), candidates.next()) {
        (Some(jwk), None) => Ok(jwk.clone()),
        (None, _) => Err(OAuthError::client(format!(
            "the client has no key with kid {kid:?} for the assertion's algorithm {alg:?}"
        ))),
        (Some(_), Some(_)) => Err(OAuthError::client(format!(
            "the client has more than one key with kid {kid:?} for {alg:?}"
        ))),
    }
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

pub(crate) async fn find_client(auth: &Auth, client_id: &str) -> Result<Client, OAuthError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            actix_web::http::header::HeaderValue::from_str(value).expect("a header value"),
        );
        headers
    }

    #[test]
    fn the_key_is_the_one_with_the_kid_and_a_fitting_type() {
        use jsonwebtoken::EncodingKey;
        let es = EncodingKey::from_ec_pem(include_bytes!(
            "../../tests/fixtures/auth/test-client-es384.pem"
        ))
        .expect("the P-384 fixture");
        let rs = EncodingKey::from_rsa_pem(include_bytes!(
            "../../tests/fixtures/auth/test-client-rs384.pem"
        ))
        .expect("the RSA fixture");
        let jwk = |key: &EncodingKey, alg: Algorithm, kid: &str| {
            let mut jwk = Jwk::from_encoding_key(key, alg).expect("a public JWK");
            jwk.common.key_id = Some(kid.to_owned());
            jwk
        };
        let set = JwkSet {
            keys: vec![
                jwk(&es, Algorithm::ES384, "a"),
                jwk(&rs, Algorithm::RS384, "a"),
                jwk(&es, Algorithm::ES384, "b"),
                jwk(&rs, Algorithm::RS384, "b"),
                jwk(&es, Algorithm::ES384, "b"),
            ],
        };
        let found = select_key(&set, "a", Algorithm::ES384).expect("the EC key");
        assert!(matches!(
            found.algorithm,
            AlgorithmParameters::EllipticCurve(_)
        ));
        let found = select_key(&set, "a", Algorithm::RS384).expect("the RSA key");
        assert!(matches!(found.algorithm, AlgorithmParameters::RSA(_)));
        assert!(select_key(&set, "b", Algorithm::RS384).is_ok());
        let two = select_key(&set, "b", Algorithm::ES384).expect_err("two keys");
        assert!(
            two.description.contains("more than one key"),
            "{}",
            two.description
        );
        let none = select_key(&set, "c", Algorithm::ES384).expect_err("no key");
        assert_eq!(none.code, "invalid_client");
    }

    #[test]
    fn basic_credentials_are_form_urlencoded() {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode("my%3Aclient:s%2Bcr%3At%20x");
        assert_eq!(
            basic_credentials(&basic(&format!("Basic {encoded}"))).expect("valid"),
            Some(("my:client".to_owned(), "s+cr:t x".to_owned()))
        );
        assert_eq!(
            basic_credentials(&basic(&format!("basic {encoded}"))).expect("valid"),
            Some(("my:client".to_owned(), "s+cr:t x".to_owned())),
            "the scheme is case-insensitive"
        );
        assert_eq!(basic_credentials(&HeaderMap::new()).expect("none"), None);
        assert_eq!(
            basic_credentials(&basic("Bearer abc")).expect("not Basic"),
            None
        );
        for bad in ["Basic", "Basic !!!", "Basic Zm9v", "Basic Og=="] {
            let error = basic_credentials(&basic(bad)).expect_err(bad);
            assert_eq!(error.code, "invalid_client");
            assert!(error.basic_challenge, "{bad}");
        }
    }
}
