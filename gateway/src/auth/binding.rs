//! Binding Patient records to patients' wallets (PRODUCT.md "Consent"): staff issue a
//! one-time link code for a Patient ([`issue_code`]: the admin API, `fhir-gateway patient
//! link-code`); the patient redeems it at `[base]/auth/link` by signing in with the wallet
//! ([`redeem`], after Sign-In with Ethereum verified the signature). A binding is the
//! `patient_wallet` row that consent enforcement joins and the patient user (`auth_user`,
//! same wallet, `fhirUser` `Patient/{id}`) who signs in with it: the two are made
//! ([`bind`]) and removed ([`unbind`]) together, in one transaction, with a history row
//! naming who did it. One wallet, one record; a bound record is unbound before it is bound
//! again.
//!
//! Codes are 16 characters of Crockford's base32 (80 random bits), shown in four groups of
//! four; only their SHA-256 is stored and they are looked up by it, so the database compares
//! hashes an attacker cannot steer, never the code. Wrong codes tried in a browser session
//! are counted and redemption stops after [`MAX_LINK_FAILURES`].
//!
//! Log lines never name the patient or the wallet.

use std::fmt;

use sqlx::AnyConnection;

use super::grants::{hash_secret, now_millis};
use crate::model::{Instant, ResourceId};
use crate::store::Store;
use crate::store::binding::{self as store, Binding, Change};
use crate::store::users::{self, User};

/// The path of the page where patients redeem a code, under the FHIR base URL.
pub const LINK_PATH: &str = "/auth/link";
/// Wrong codes a browser session may try.
pub const MAX_LINK_FAILURES: i64 = 5;
/// The history's actor for the command line.
pub const CLI: &str = "cli";
/// The history's actor for a redeemed code.
pub const LINK_CODE: &str = "link-code";

/// Crockford's base32: no I, L, O or U to misread.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const CODE_CHARS: usize = 16;

/// A new code, as people see it: `7K2M-QX4T-...`.
fn new_code() -> String {
    let mut bytes = [0u8; CODE_CHARS];
    // the system's generator does not fail on the systems the gateway runs on
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    // 256 is a multiple of 32: every character is uniform
    let chars: Vec<char> = bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b % 32)]))
        .collect();
    chars
        .chunks(4)
        .map(|group| group.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// A code as typed (any case, with or without hyphens and spaces, O for 0, I or L for 1)
/// in its canonical form; none when it cannot be one.
pub fn normalize_code(text: &str) -> Option<String> {
    let code: String = text
        .chars()
        .filter(|c| !matches!(c, '-' | ' ' | '\t'))
        .map(|c| match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            other => other,
        })
        .collect();
    (code.len() == CODE_CHARS && code.bytes().all(|b| ALPHABET.contains(&b))).then_some(code)
}

/// What is stored of a code.
fn code_hash(canonical: &str) -> String {
    hash_secret(canonical)
}

/// A code issued for a Patient (shown once).
#[derive(Debug, Clone, serde::Serialize)]
pub struct IssuedCode {
    pub patient: String,
    pub code: String,
    /// A FHIR instant.
    pub expires_at: String,
    /// The page that redeems it, with the code filled in.
    pub url: String,
}

/// Why a code was not issued, a binding not made or not removed. The text is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    NoSuchPatient,
    UnknownCode,
    UsedCode,
    ExpiredCode,
    TooManyWrongCodes,
    WalletBound,
    PatientBound,
    AlreadyBound,
    NotBound,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refused::NoSuchPatient => "there is no such Patient (or it was deleted)",
            Refused::UnknownCode => {
                "This link code is not right. Check it, or ask your care provider for a new one."
            }
            Refused::UsedCode => {
                "This link code was already used. Ask your care provider for a new one."
            }
            Refused::ExpiredCode => {
                "This link code has expired. Ask your care provider for a new one."
            }
            Refused::TooManyWrongCodes => {
                "Too many wrong link codes were tried in this browser. Close it, then open the link from your care provider again."
            }
            Refused::WalletBound => {
                "This wallet is already linked to a health record. One wallet can be linked to one record only: use another wallet, or ask your care provider."
            }
            Refused::PatientBound => {
                "This health record is already linked to another wallet. Your care provider must unlink it first."
            }
            Refused::AlreadyBound => "This wallet is already linked to this health record.",
            Refused::NotBound => "the Patient is not bound to a wallet",
        })
    }
}

/// Whether `Patient/id` exists and is not deleted.
async fn patient_exists(conn: &mut AnyConnection, id: &str) -> Result<bool, sqlx::Error> {
    if ResourceId::parse(id).is_err() {
        return Ok(false);
    }
    let found = crate::store::read_current(conn, "Patient", id).await?;
    Ok(found.is_some_and(|v| v.body.is_some()))
}

/// Issues a link code for a Patient that exists; the patient's earlier unused codes stop
/// working. `issued_by`: the admin client's id, or [`CLI`].
pub async fn issue_code(
    store: &Store,
    patient_id: &str,
    issued_by: &str,
    lifetime_secs: u64,
    fhir_base_url: &str,
) -> anyhow::Result<Result<IssuedCode, Refused>> {
    let mut tx = store.begin().await?;
    if !patient_exists(&mut tx, patient_id).await? {
        return Ok(Err(Refused::NoSuchPatient));
    }
    let code = new_code();
    let now = now_millis();
    let expires_at = now.saturating_add(
        i64::try_from(lifetime_secs)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000),
    );
    let canonical = normalize_code(&code).ok_or_else(|| anyhow::anyhow!("a malformed code"))?;
    store::insert_code(
        &mut tx,
        &code_hash(&canonical),
        patient_id,
        issued_by,
        now,
        expires_at,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(issued_by, "a link code was issued");
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("code", &code)
        .finish();
    Ok(Ok(IssuedCode {
        patient: patient_id.to_owned(),
        url: format!("{fhir_base_url}{LINK_PATH}?{query}"),
        code,
        expires_at: Instant::from_millis(expires_at).to_fhir(),
    }))
}

/// Whether a typed code can be redeemed now (read only; [`redeem`] checks again).
pub async fn check_code(store: &Store, code: &str) -> anyhow::Result<Result<(), Refused>> {
    let Some(canonical) = normalize_code(code) else {
        return Ok(Err(Refused::UnknownCode));
    };
    let found = store::find_code(&mut *store.reader().await?, &code_hash(&canonical)).await?;
    Ok(code_state(found.as_ref(), now_millis()))
}

fn code_state(code: Option<&store::LinkCode>, now: i64) -> Result<(), Refused> {
    match code {
        None => Err(Refused::UnknownCode),
        Some(code) if code.used_at.is_some() => Err(Refused::UsedCode),
        Some(code) if code.expires_at <= now => Err(Refused::ExpiredCode),
        Some(_) => Ok(()),
    }
}

/// Counts a wrong code tried in a browser session; whether it may try again.
pub async fn count_wrong_code(store: &Store, session_hash: &str) -> anyhow::Result<bool> {
    let mut tx = store.begin().await?;
    let failures = store::count_link_failure(&mut tx, session_hash).await?;
    tx.commit().await?;
    Ok(failures < MAX_LINK_FAILURES)
}

/// Whether a browser session may still try codes.
pub async fn may_try_codes(store: &Store, session_hash: &str) -> anyhow::Result<bool> {
    let failures = store::link_failures(&mut *store.reader().await?, session_hash).await?;
    Ok(failures < MAX_LINK_FAILURES)
}

/// Redeems a code for the wallet `wallet_address` (`0x` and 40 lowercase hex digits) whose
/// signature was verified: in one transaction the code is used up and the binding made
/// ([`bind`], actor [`LINK_CODE`]). Returns the new patient user; on a refusal nothing is
/// written.
pub async fn redeem(
    store: &Store,
    code: &str,
    wallet_address: &str,
) -> anyhow::Result<Result<User, Refused>> {
    let Some(canonical) = normalize_code(code) else {
        return Ok(Err(Refused::UnknownCode));
    };
    let hash = code_hash(&canonical);
    let now = now_millis();
    let mut tx = store.begin().await?;
    let found = store::find_code(&mut tx, &hash).await?;
    if let Err(refused) = code_state(found.as_ref(), now) {
        return Ok(Err(refused));
    }
    let Some(found) = found else {
        return Ok(Err(Refused::UnknownCode));
    };
    if !store::use_code(&mut tx, &hash, now).await? {
        return Ok(Err(Refused::UsedCode));
    }
    match bind(&mut tx, &found.patient_id, wallet_address, LINK_CODE, now).await? {
        Ok(user) => {
            tx.commit().await?;
            Ok(Ok(user))
        }
        // dropping the transaction rolls it back: the code stays unused
        Err(refused) => Ok(Err(refused)),
    }
}

/// Binds a Patient that exists to a wallet (`0x` and 40 lowercase hex digits), in the
/// caller's transaction: the patient user, the `patient_wallet` row and a history row. A
/// refusal writes nothing (the caller rolls back).
pub async fn bind(
    conn: &mut AnyConnection,
    patient_id: &str,
    wallet_address: &str,
    actor: &str,
    now: i64,
) -> Result<Result<User, Refused>, sqlx::Error> {
    if let Some(bound) = store::of_patient(conn, patient_id).await? {
        return Ok(Err(if bound.wallet_address == wallet_address {
            Refused::AlreadyBound
        } else {
            Refused::PatientBound
        }));
    }
    if store::of_wallet(conn, wallet_address).await?.is_some() {
        return Ok(Err(Refused::WalletBound));
    }
    if let Some(holder) = users::find_by_wallet(conn, wallet_address).await? {
        // a patient user without a binding: a disabled one gives its wallet up
        if holder.disabled_at.is_none() {
            return Ok(Err(Refused::WalletBound));
        }
        users::remove(conn, &holder.user_id).await?;
    }
    if !patient_exists(conn, patient_id).await? {
        return Ok(Err(Refused::NoSuchPatient));
    }
    let user = User {
        user_id: uuid::Uuid::new_v4().to_string(),
        kind: super::users::Kind::Patient.as_str().to_owned(),
        username: None,
        password_hash: None,
        wallet_address: Some(wallet_address.to_owned()),
        fhir_user: format!("Patient/{patient_id}"),
        failed_sign_ins: 0,
        locked_until: None,
        disabled_at: None,
        created_at: now,
        break_glass: false,
        auditor: false,
    };
    // a concurrent binding of the same wallet or record got there first: the same refusals
    if let Some(refused) = unique(users::insert(conn, &user).await, Refused::WalletBound)? {
        return Ok(Err(refused));
    }
    let binding = Binding {
        patient_id: patient_id.to_owned(),
        wallet_address: wallet_address.to_owned(),
        user_id: user.user_id.clone(),
        bound_at: now,
    };
    if let Some(refused) = unique(store::insert(conn, &binding).await, Refused::PatientBound)? {
        return Ok(Err(refused));
    }
    let recorded = store::record(conn, patient_id, wallet_address, "bind", actor, now).await;
    if let Some(refused) = unique(recorded, Refused::PatientBound)? {
        return Ok(Err(refused));
    }
    tracing::info!(actor, "a patient's wallet was bound");
    Ok(Ok(user))
}

/// `refused` when `result` broke a uniqueness constraint; its other errors.
fn unique(
    result: Result<(), sqlx::Error>,
    refused: Refused,
) -> Result<Option<Refused>, sqlx::Error> {
    match result {
        Ok(()) => Ok(None),
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Ok(Some(refused)),
        Err(other) => Err(other),
    }
}

/// Unbinds a Patient: in one transaction the binding goes, its patient user is removed (its
/// wallet is free again; its sessions end, its refresh tokens and access tokens are revoked)
/// and a history row is written. Returns the binding that was removed.
pub async fn unbind(
    store: &Store,
    patient_id: &str,
    actor: &str,
) -> anyhow::Result<Result<Binding, Refused>> {
    let mut tx = store.begin().await?;
    let Some(binding) = store::of_patient(&mut tx, patient_id).await? else {
        return Ok(Err(Refused::NotBound));
    };
    unbind_in(&mut tx, &binding, actor, now_millis()).await?;
    tx.commit().await?;
    Ok(Ok(binding))
}

/// [`unbind`], in the caller's transaction.
pub async fn unbind_in(
    conn: &mut AnyConnection,
    binding: &Binding,
    actor: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    store::remove(conn, &binding.patient_id).await?;
    store::end_user_grants(conn, &binding.user_id, now).await?;
    users::remove(conn, &binding.user_id).await?;
    store::record(
        conn,
        &binding.patient_id,
        &binding.wallet_address,
        "unbind",
        actor,
        now,
    )
    .await?;
    tracing::info!(actor, "a patient's wallet was unbound");
    Ok(())
}

/// A Patient's binding now, and every bind and unbind.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub patient: String,
    pub binding: Option<Binding>,
    pub history: Vec<Change>,
}

/// The binding and history of a Patient that exists or has history.
pub async fn status(store: &Store, patient_id: &str) -> anyhow::Result<Result<Status, Refused>> {
    let mut conn = store.reader().await?;
    let binding = store::of_patient(&mut conn, patient_id).await?;
    let history = store::history(&mut conn, patient_id).await?;
    if binding.is_none() && history.is_empty() && !patient_exists(&mut conn, patient_id).await? {
        return Ok(Err(Refused::NoSuchPatient));
    }
    Ok(Ok(Status {
        patient: patient_id.to_owned(),
        binding,
        history,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_four_groups_of_four_and_read_back_however_typed() {
        let code = new_code();
        assert_eq!(code.len(), 19, "{code}");
        assert_eq!(code.split('-').count(), 4, "{code}");
        let canonical = normalize_code(&code).expect("a code");
        assert_eq!(canonical, code.replace('-', ""));
        let typed = format!(" {} ", code.to_lowercase().replace('-', " "));
        assert_eq!(normalize_code(&typed).as_deref(), Some(canonical.as_str()));
        assert_eq!(
            normalize_code("oooo-iiii-llll-0000").as_deref(),
            Some("0000111111110000")
        );
        assert_ne!(new_code(), code, "random");
        assert_eq!(normalize_code("ABCD-EFGH-JKMN-PQR"), None, "too short");
        assert_eq!(
            normalize_code("ABCD-EFGH-JKMN-PQRU"),
            None,
            "U is not in it"
        );
    }
}
