//! Sign-In with Ethereum (EIP-4361) for patients: the gateway writes the message a wallet
//! signs (its own domain and URI, a fresh nonce, a short expiry), and verifies what comes back
//! server-side: the exact message it wrote, the domain, URI, chain and version, the times,
//! the EIP-191 signature by the message's address, and the nonce, which is bound to the
//! browser that asked for it and consumed by the first sign-in that verifies.
//!
//! Parsing and signature recovery are the `siwe` crate's; the policy is here.

use std::fmt;
use std::str::FromStr as _;

use super::grants::hash_secret;
use sqlx::AnyConnection;
use time::OffsetDateTime;

use crate::store::Store;

/// How long a nonce (and the message that carries it) may be signed and sent back.
pub const MESSAGE_LIFETIME_SECS: i64 = 300;

/// Clock skew tolerated on the message's issue time.
const SKEW_SECS: i64 = 30;

/// What the gateway's messages say and what it accepts back.
#[derive(Debug, Clone)]
pub struct SiwePolicy {
    /// `host[:port]` of the gateway as the browser sees it (EIP-4361 `domain`).
    pub domain: String,
    /// The URI the patient signs in to (EIP-4361 `uri`): the FHIR base URL.
    pub uri: String,
    /// EIP-155 chain id written into messages and required back.
    pub chain_id: u64,
    /// The human-readable statement above the fields.
    pub statement: String,
}

impl SiwePolicy {
    /// The policy for a gateway at `base_url`.
    pub fn for_base_url(base_url: &str, chain_id: u64) -> anyhow::Result<SiwePolicy> {
        let authority = base_url
            .split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or_default())
            .filter(|a| !a.is_empty())
            .ok_or_else(|| anyhow::anyhow!("{base_url} has no host"))?;
        Ok(SiwePolicy {
            domain: authority.to_owned(),
            uri: base_url.to_owned(),
            chain_id,
            statement: "Sign in to see and share your health record.".to_owned(),
        })
    }
}

/// Why a sign-in was refused. The text is safe to show the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn refused(text: impl Into<String>) -> Refused {
    Refused(text.into())
}

/// A `0x`-prefixed 20-byte address, as text (any case).
fn parse_address(text: &str) -> Result<[u8; 20], Refused> {
    let hex_part = text
        .strip_prefix("0x")
        .ok_or_else(|| refused("an Ethereum address starts with 0x"))?;
    let bytes = hex::decode(hex_part).map_err(|_| refused("the address is not hexadecimal"))?;
    bytes
        .try_into()
        .map_err(|_| refused("an Ethereum address has 20 bytes"))
}

/// Writes the message for `address` to sign, with a fresh nonce bound to `binding` (a secret
/// only the asking browser holds, such as its session id).
pub async fn new_message(
    store: &Store,
    policy: &SiwePolicy,
    address: &str,
    binding: &str,
) -> anyhow::Result<Result<String, Refused>> {
    let address = match parse_address(address) {
        Ok(address) => address,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let nonce = siwe::generate_nonce();
    let now = OffsetDateTime::now_utc();
    let expires = now + time::Duration::seconds(MESSAGE_LIFETIME_SECS);
    let message = siwe::Message {
        domain: policy.domain.parse()?,
        address,
        statement: Some(policy.statement.clone()),
        uri: policy.uri.parse()?,
        version: siwe::Version::V1,
        chain_id: policy.chain_id,
        nonce: nonce.clone(),
        issued_at: now.into(),
        expiration_time: Some(expires.into()),
        not_before: None,
        request_id: None,
        resources: Vec::new(),
    };
    let mut tx = store.begin().await?;
    sqlx::query("DELETE FROM auth_siwe_nonce WHERE expires_at < $1")
        .bind(now.unix_timestamp())
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO auth_siwe_nonce (nonce, binding, expires_at) VALUES ($1, $2, $3)")
        .bind(&nonce)
        .bind(hash_secret(binding))
        .bind(expires.unix_timestamp())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Ok(message.to_string()))
}

/// Verifies a signed message sent back by the browser holding `binding`; the signer's address
/// (lowercase `0x` hex) when every check passes, and the nonce is then spent.
pub async fn verify(
    store: &Store,
    policy: &SiwePolicy,
    text: &str,
    signature: &str,
    binding: &str,
) -> anyhow::Result<Result<String, Refused>> {
    let message = match check_message(policy, text, signature, OffsetDateTime::now_utc()) {
        Ok(message) => message,
        Err(refusal) => return Ok(Err(refusal)),
    };
    // the nonce last, so that a forged submission cannot spend a patient's nonce
    let mut tx = store.begin().await?;
    let spent = spend_nonce(&mut tx, &message.nonce, binding).await?;
    tx.commit().await?;
    if !spent {
        return Ok(Err(refused(
            "this sign-in message was already used, has expired, or was not made for this browser; start again",
        )));
    }
    Ok(Ok(format!("0x{}", hex::encode(message.address))))
}

async fn spend_nonce(
    conn: &mut AnyConnection,
    nonce: &str,
    binding: &str,
) -> Result<bool, sqlx::Error> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let spent = sqlx::query(
        "DELETE FROM auth_siwe_nonce WHERE nonce = $1 AND binding = $2 AND expires_at >= $3",
    )
    .bind(nonce)
    .bind(hash_secret(binding))
    .bind(now)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(spent == 1)
}

/// Every check but the nonce's: the message is one this gateway writes, for this domain, URI
/// and chain, within its times, and signed (EIP-191) by its address.
fn check_message(
    policy: &SiwePolicy,
    text: &str,
    signature: &str,
    now: OffsetDateTime,
) -> Result<siwe::Message, Refused> {
    let message = siwe::Message::from_str(text)
        .map_err(|e| refused(format!("not a Sign-In with Ethereum message: {e}")))?;
    if message.to_string() != text {
        return Err(refused(
            "the message is not the one this gateway wrote (it was changed)",
        ));
    }
    if message.domain.as_str() != policy.domain {
        return Err(refused(format!(
            "the message is for {}, not {}",
            message.domain, policy.domain
        )));
    }
    if message.uri.as_str() != policy.uri {
        return Err(refused(format!(
            "the message signs in to {}, not {}",
            message.uri, policy.uri
        )));
    }
    if message.chain_id != policy.chain_id {
        return Err(refused(format!(
            "the message is for chain {}, not {}",
            message.chain_id, policy.chain_id
        )));
    }
    let issued_at = *message.issued_at.as_ref();
    if issued_at > now + time::Duration::seconds(SKEW_SECS) {
        return Err(refused("the message was issued in the future"));
    }
    let expires = message
        .expiration_time
        .as_ref()
        .map(|t| *t.as_ref())
        .ok_or_else(|| refused("the message has no expiration time"))?;
    if expires - issued_at > time::Duration::seconds(MESSAGE_LIFETIME_SECS) {
        return Err(refused("the message lives too long"));
    }
    if !message.valid_at(&now) {
        return Err(refused("the message has expired or is not valid yet"));
    }
    let signature = signature.strip_prefix("0x").unwrap_or(signature);
    let signature: [u8; 65] = hex::decode(signature)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| refused("the signature is not 65 bytes of hexadecimal"))?;
    message
        .verify_eip191(&signature)
        .map_err(|_| refused("the signature is not the address's signature of this message"))?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use alloy::signers::SignerSync as _;
    use alloy::signers::local::PrivateKeySigner;

    use super::*;

    fn policy() -> SiwePolicy {
        SiwePolicy::for_base_url("http://localhost:8080/fhir", 31337).expect("a base URL")
    }

    /// A message as the gateway writes it, at `now`, signed by `signer`.
    fn signed(
        signer: &PrivateKeySigner,
        policy: &SiwePolicy,
        now: OffsetDateTime,
    ) -> (String, String) {
        let message = siwe::Message {
            domain: policy.domain.parse().expect("an authority"),
            address: signer.address().0.0,
            statement: Some(policy.statement.clone()),
            uri: policy.uri.parse().expect("a URI"),
            version: siwe::Version::V1,
            chain_id: policy.chain_id,
            nonce: siwe::generate_nonce(),
            issued_at: now.into(),
            expiration_time: Some((now + time::Duration::seconds(MESSAGE_LIFETIME_SECS)).into()),
            not_before: None,
            request_id: None,
            resources: Vec::new(),
        }
        .to_string();
        let signature = signer
            .sign_message_sync(message.as_bytes())
            .expect("signed");
        (message, hex::encode(signature.as_bytes()))
    }

    #[test]
    fn the_policy_names_the_gateway() {
        let policy = policy();
        assert_eq!(policy.domain, "localhost:8080");
        assert_eq!(policy.uri, "http://localhost:8080/fhir");
    }

    #[test]
    fn a_wallet_signature_of_the_gateways_message_verifies() {
        let signer = PrivateKeySigner::random();
        let now = OffsetDateTime::now_utc();
        let (message, signature) = signed(&signer, &policy(), now);
        let checked = check_message(&policy(), &message, &signature, now).expect("verifies");
        assert_eq!(checked.address, signer.address().0.0);
        // with or without 0x
        assert!(check_message(&policy(), &message, &format!("0x{signature}"), now).is_ok());
    }

    #[test]
    fn another_signer_domain_uri_chain_or_time_is_refused() {
        let signer = PrivateKeySigner::random();
        let now = OffsetDateTime::now_utc();
        let (message, signature) = signed(&signer, &policy(), now);

        // signed by another key
        let (_, other) = signed(&PrivateKeySigner::random(), &policy(), now);
        let refusal = check_message(&policy(), &message, &other, now).expect_err("refused");
        assert!(
            refusal.0.contains("not the address's signature"),
            "{refusal}"
        );

        // the text changed after signing
        let changed = message.replace("see and share", "share");
        let refusal = check_message(&policy(), &changed, &signature, now).expect_err("refused");
        assert!(refusal.0.contains("signature"), "{refusal}");

        // another domain, URI or chain
        let mut other_domain = policy();
        other_domain.domain = "evil.example".to_owned();
        let refusal = check_message(&other_domain, &message, &signature, now).expect_err("refused");
        assert!(refusal.0.contains("not evil.example"), "{refusal}");
        let mut other_uri = policy();
        other_uri.uri = "http://localhost:8080/other".to_owned();
        assert!(check_message(&other_uri, &message, &signature, now).is_err());
        let mut other_chain = policy();
        other_chain.chain_id = 1;
        let refusal = check_message(&other_chain, &message, &signature, now).expect_err("refused");
        assert!(refusal.0.contains("chain 31337"), "{refusal}");

        // expired, or issued in the future
        let later = now + time::Duration::seconds(MESSAGE_LIFETIME_SECS + 1);
        let refusal = check_message(&policy(), &message, &signature, later).expect_err("refused");
        assert!(refusal.0.contains("expired"), "{refusal}");
        let earlier = now - time::Duration::seconds(SKEW_SECS + 5);
        let refusal = check_message(&policy(), &message, &signature, earlier).expect_err("refused");
        assert!(refusal.0.contains("future"), "{refusal}");

        // not a message at all, or a malformed signature
        assert!(check_message(&policy(), "hello", &signature, now).is_err());
        assert!(check_message(&policy(), &message, "0x1234", now).is_err());
    }
}
