//! The key that signs OpenID Connect ID tokens: RSA with SHA-256 (RS256), because SMART's
//! `sso-openid-connect` capability requires servers to support signing ID tokens with it (and
//! RS256 is OpenID Connect's default). Access tokens keep their ES256 key ([`super::keys`]);
//! both public keys are in the JWKS. The `kid` is the key's RFC 7638 thumbprint.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use rsa::pkcs8::{EncodePrivateKey as _, LineEnding};
use serde::Serialize;

/// The algorithm of every ID token.
pub const ALGORITHM: Algorithm = Algorithm::RS256;

/// The size of a generated key (NIST SP 800-57: 2048 bits through 2030).
const GENERATED_BITS: usize = 2048;

/// The gateway's ID-token signing key (private), with its public JWK.
pub struct IdTokenKey {
    key: EncodingKey,
    public: Jwk,
}

impl std::fmt::Debug for IdTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the private key
        f.debug_struct("IdTokenKey")
            .field("kid", &self.kid())
            .finish_non_exhaustive()
    }
}

impl IdTokenKey {
    /// The configured key (`auth.id_token_key_file`), or the one in the data directory,
    /// generated there on first start.
    pub fn load_or_generate(configured: Option<&Path>, data_dir: &Path) -> anyhow::Result<Self> {
        let path = match configured {
            Some(path) => path.to_path_buf(),
            None => generated_key_file(data_dir)?,
        };
        let pem = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_pem(&pem).with_context(|| format!("in {}", path.display()))
    }

    /// An RSA private key (PKCS#8 or PKCS#1 PEM) of at least 2048 bits.
    pub fn from_pem(pem: &[u8]) -> anyhow::Result<Self> {
        let key = EncodingKey::from_rsa_pem(pem).context("not a PEM RSA private key")?;
        let public = super::keys::published_jwk(&key, ALGORITHM)
            .context("not an RSA key (ID tokens are signed with RS256)")?;
        if let jsonwebtoken::jwk::AlgorithmParameters::RSA(rsa) = &public.algorithm {
            let modulus =
                base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &rsa.n)
                    .context("the key's modulus")?;
            let bits =
                modulus.len() * 8 - modulus.first().map_or(8, |b| b.leading_zeros() as usize);
            anyhow::ensure!(
                bits >= 2048,
                "an RSA key of {bits} bits is too short (2048 at least)"
            );
        }
        Ok(IdTokenKey { key, public })
    }

    pub fn kid(&self) -> &str {
        self.public.common.key_id.as_deref().unwrap_or_default()
    }

    /// The public key, for the JWKS.
    pub fn public_jwk(&self) -> &Jwk {
        &self.public
    }

    /// Signs `claims` as a JWT (RS256, with this key's `kid`).
    pub fn sign(&self, claims: &impl Serialize) -> anyhow::Result<String> {
        super::keys::sign_with(&self.key, &self.public, ALGORITHM, claims)
            .context("signing an ID token")
    }
}

/// `data_dir/auth-id-token.pem`, made (RSA 2048, mode 0600) if it does not exist.
fn generated_key_file(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = data_dir.join("auth-id-token.pem");
    if path.exists() {
        return Ok(path);
    }
    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, GENERATED_BITS)
        .context("generating an RSA key")?;
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .context("encoding the RSA key")?;
    crate::secret_file::create(&path, pem.as_bytes())?;
    tracing::info!(path = %path.display(), "made the ID-token signing key");
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_signs_tokens_its_public_key_verifies_and_is_reused() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let key = IdTokenKey::load_or_generate(None, dir.path()).expect("generated");
        let again = IdTokenKey::load_or_generate(None, dir.path()).expect("reloaded");
        assert_eq!(key.kid(), again.kid(), "the same key after a restart");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join("auth-id-token.pem"))
                .expect("the key file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let token = key
            .sign(&serde_json::json!({"sub": "me", "exp": 4_000_000_000u64}))
            .expect("signed");
        let header = jsonwebtoken::decode_header(&token).expect("header");
        assert_eq!(header.alg, Algorithm::RS256);
        assert_eq!(header.kid.as_deref(), Some(key.kid()));
        let decoding = jsonwebtoken::DecodingKey::from_jwk(key.public_jwk()).expect("public");
        let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation)
            .expect("valid");
        assert_eq!(claims.claims["sub"], "me");
    }

    #[test]
    fn a_short_or_non_rsa_key_is_refused() {
        let short = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).expect("a key");
        let pem = short.to_pkcs8_pem(LineEnding::LF).expect("PEM");
        let error = IdTokenKey::from_pem(pem.as_bytes()).expect_err("refused");
        assert!(error.to_string().contains("too short"), "{error}");
        let p384 = include_bytes!("../../tests/fixtures/auth/test-client-es384.pem");
        assert!(IdTokenKey::from_pem(p384).is_err());
    }
}
