//! The key that signs the tokens the gateway issues, and the JWKS that publishes it.
//!
//! ES256 (ECDSA on P-256 with SHA-256), one of the two algorithms issue 4 names for the
//! gateway's tokens (RS256, ES256) and the one every JOSE library verifies: a P-256 key is
//! generated in microseconds (an RSA key takes seconds) and its signatures are 64 bytes
//! instead of 256. (Clients' assertions are verified with RS384 and ES384, as SMART Backend
//! Services requires: another allow-list, in `token.rs`.) The key's `kid` is its RFC 7638 thumbprint,
//! so a key keeps its `kid` across restarts and a new key gets a new one.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// The algorithm of every token the gateway signs.
pub const ALGORITHM: Algorithm = Algorithm::ES256;

/// The gateway's token-signing key (private), with its public JWK.
pub struct SigningKey {
    key: EncodingKey,
    public: Jwk,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the private key
        f.debug_struct("SigningKey")
            .field("kid", &self.kid())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// The configured key (`auth.signing_key_file`), or the one in the data directory,
    /// generated there on first start.
    pub fn load_or_generate(configured: Option<&Path>, data_dir: &Path) -> anyhow::Result<Self> {
        let path = match configured {
            Some(path) => path.to_path_buf(),
            None => generated_key_file(data_dir)?,
        };
        let pem = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_pem(&pem).with_context(|| format!("in {}", path.display()))
    }

    /// The key in a PEM file (an earlier key kept for verification during a rotation).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_pem(&pem).with_context(|| format!("in {}", path.display()))
    }

    /// The public JWK (with `kid` and `use`).
    pub fn public_jwk(&self) -> &Jwk {
        &self.public
    }

    /// A P-256 private key in PKCS#8 PEM.
    pub fn from_pem(pem: &[u8]) -> anyhow::Result<Self> {
        let key =
            EncodingKey::from_ec_pem(pem).context("not a PKCS#8 PEM elliptic-curve private key")?;
        let public = published_jwk(&key, ALGORITHM)
            .context("not a P-256 key (the gateway signs with ES256)")?;
        Ok(SigningKey { key, public })
    }

    pub fn kid(&self) -> &str {
        self.public.common.key_id.as_deref().unwrap_or_default()
    }

    /// The public key set to serve at the `jwks_uri`.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.public.clone()],
        }
    }

    /// The key that verifies this key's signatures.
    pub fn decoding_key(&self) -> anyhow::Result<jsonwebtoken::DecodingKey> {
        jsonwebtoken::DecodingKey::from_jwk(&self.public).context("the public key is not usable")
    }

    /// Signs `claims` as a JWT (ES256, with this key's `kid`).
    pub fn sign(&self, claims: &impl Serialize) -> anyhow::Result<String> {
        sign_with(&self.key, &self.public, ALGORITHM, claims)
    }
}

/// The public JWK of a private key the gateway signs with `alg`: its `kid` is the RFC 7638
/// thumbprint, its `use` is signing.
pub(super) fn published_jwk(key: &EncodingKey, alg: Algorithm) -> anyhow::Result<Jwk> {
    let mut public = Jwk::from_encoding_key(key, alg)?;
    let kid = public
        .thumbprint(ThumbprintHash::SHA256)
        .context("computing the key's thumbprint")?;
    public.common.key_id = Some(kid);
    public.common.public_key_use = Some(PublicKeyUse::Signature);
    Ok(public)
}

/// Signs `claims` as a JWT with `key` (`alg`, and the `kid` of its `public` JWK).
pub(super) fn sign_with(
    key: &EncodingKey,
    public: &Jwk,
    alg: Algorithm,
    claims: &impl Serialize,
) -> anyhow::Result<String> {
    let mut header = Header::new(alg);
    header.kid = public.common.key_id.clone();
    jsonwebtoken::encode(&header, claims, key).context("signing a token")
}

/// `data_dir/auth-signing.pem`, made (P-256, mode 0600) if it does not exist.
fn generated_key_file(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = data_dir.join("auth-signing.pem");
    if path.exists() {
        return Ok(path);
    }
    let kid = generate_key_file(&path)?;
    tracing::info!(path = %path.display(), kid = %kid, "made the token-signing key");
    Ok(path)
}

/// Makes a new P-256 signing key in a new file at `path` (PKCS#8 PEM, mode 0600; an existing
/// file is not overwritten). Returns the key's `kid`.
pub fn generate_key_file(path: &Path) -> anyhow::Result<String> {
    let random = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &random,
    )
    .map_err(|_| anyhow::anyhow!("generating a P-256 key failed"))?;
    let text = pem("PRIVATE KEY", pkcs8.as_ref());
    let kid = SigningKey::from_pem(text.as_bytes())?.kid().to_owned();
    crate::secret_file::create(path, text.as_bytes())?;
    Ok(kid)
}

/// DER as PEM (RFC 7468: base64 in lines of 64 characters).
fn pem(label: &str, der: &[u8]) -> String {
    let base64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for line in base64.as_bytes().chunks(64) {
        text.push_str(std::str::from_utf8(line).unwrap_or_default());
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_kept_private_and_reused() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let first = SigningKey::load_or_generate(None, dir.path()).expect("generated");
        let again = SigningKey::load_or_generate(None, dir.path()).expect("reloaded");
        assert_eq!(first.kid(), again.kid(), "the same key after a restart");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("auth-signing.pem"))
                .expect("the key file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let other = tempfile::tempdir().expect("temporary directory");
        let second = SigningKey::load_or_generate(None, other.path()).expect("generated");
        assert_ne!(first.kid(), second.kid(), "a new key has a new kid");
    }

    #[test]
    fn a_signed_token_verifies_with_the_published_key() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let key = SigningKey::load_or_generate(None, dir.path()).expect("generated");
        let token = key
            .sign(&serde_json::json!({"sub": "me", "exp": 4_000_000_000u64}))
            .expect("signed");
        let jwks = key.jwks();
        let header = jsonwebtoken::decode_header(&token).expect("header");
        assert_eq!(header.alg, Algorithm::ES256);
        let jwk = jwks
            .find(header.kid.as_deref().expect("kid"))
            .expect("published");
        let decoding = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("a public key");
        let mut validation = jsonwebtoken::Validation::new(Algorithm::ES256);
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation)
            .expect("valid");
        assert_eq!(claims.claims["sub"], "me");
    }

    #[test]
    fn a_key_that_is_not_p256_is_refused() {
        let random = ring::rand::SystemRandom::new();
        let p384 = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            &random,
        )
        .expect("a P-384 key");
        assert!(SigningKey::from_pem(pem("PRIVATE KEY", p384.as_ref()).as_bytes()).is_err());
        assert!(SigningKey::from_pem(b"not a key").is_err());
    }
}
