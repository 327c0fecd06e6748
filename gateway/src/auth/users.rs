//! The users who sign in at the authorization server's pages (the `fhir-gateway user`
//! command, and the sign-in page). Practitioners and staff sign in with a password, kept as
//! an argon2id hash only; patients sign in with an Ethereum wallet (Sign-In with Ethereum,
//! EIP-4361), found by [`find_by_wallet`] once their signature is verified.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use secrecy::{ExposeSecret as _, SecretString};

use super::binding;
use crate::model::{Instant, ResourceId};
use crate::store::Store;
use crate::store::users::{self, User};

/// Failed password sign-ins in a row after which a user's password sign-in is locked.
pub const MAX_FAILED_SIGN_INS: i64 = 5;
/// How long such a lock lasts.
pub const LOCK_MILLIS: i64 = 5 * 60 * 1000;
/// The shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// The kinds of users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Patient,
    Practitioner,
    Staff,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Patient => "patient",
            Kind::Practitioner => "practitioner",
            Kind::Staff => "staff",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        [Kind::Patient, Kind::Practitioner, Kind::Staff]
            .into_iter()
            .find(|k| k.as_str() == text)
    }

    /// The resource types a user of this kind may be (`fhirUser`).
    fn fhir_user_types(self) -> &'static [&'static str] {
        match self {
            Kind::Patient => &["Patient"],
            Kind::Practitioner => &["Practitioner", "PractitionerRole"],
            Kind::Staff => &[
                "Practitioner",
                "PractitionerRole",
                "Person",
                "RelatedPerson",
            ],
        }
    }
}

/// How a new user signs in.
#[derive(Debug)]
pub enum Credential {
    /// Practitioners and staff.
    Password {
        username: String,
        password: SecretString,
    },
    /// Patients: their Ethereum address.
    Wallet(String),
}

/// Checks and stores a user; returns it with its new id.
pub async fn add(
    store: &Store,
    kind: Kind,
    credential: Credential,
    fhir_user: &str,
) -> anyhow::Result<User> {
    let (resource_type, id) = fhir_user
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("--fhir-user must be a reference such as Patient/123"))?;
    anyhow::ensure!(
        kind.fhir_user_types().contains(&resource_type),
        "a {} user's fhirUser must be one of {}",
        kind.as_str(),
        kind.fhir_user_types().join(", ")
    );
    ResourceId::parse(id).map_err(|e| anyhow::anyhow!("--fhir-user: {e}"))?;
    let (username, password_hash) = match (kind, credential) {
        (Kind::Patient, Credential::Wallet(address)) => {
            return add_patient(store, id, &parse_wallet_address(&address)?).await;
        }
        (Kind::Patient, Credential::Password { .. }) => {
            anyhow::bail!("patients sign in with an Ethereum wallet: give --wallet")
        }
        (_, Credential::Wallet(_)) => {
            anyhow::bail!("practitioners and staff sign in with a password, not a wallet")
        }
        (_, Credential::Password { username, password }) => {
            let username = username.trim().to_owned();
            anyhow::ensure!(
                !username.is_empty()
                    && username.len() <= 100
                    && !username.contains(char::is_whitespace),
                "the username must be 1 to 100 characters without spaces"
            );
            anyhow::ensure!(
                password.expose_secret().chars().count() >= MIN_PASSWORD_CHARS,
                "the password must have at least {MIN_PASSWORD_CHARS} characters"
            );
            (Some(username), Some(hash_password(&password)?))
        }
    };
    let user = User {
        user_id: uuid::Uuid::new_v4().to_string(),
        kind: kind.as_str().to_owned(),
        username,
        password_hash,
        wallet_address: None,
        fhir_user: fhir_user.to_owned(),
        failed_sign_ins: 0,
        locked_until: None,
        disabled_at: None,
        created_at: Instant::now().millis(),
        break_glass: false,
        auditor: false,
    };
    let mut tx = store.begin().await?;
    users::insert(&mut tx, &user).await.map_err(|e| match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            anyhow::anyhow!("a user with that username or wallet already exists")
        }
        other => other.into(),
    })?;
    tx.commit().await?;
    Ok(user)
}

/// A patient user: the Patient's binding to the wallet, made as a redeemed link code makes
/// it ([`binding::bind`], history actor `cli`).
async fn add_patient(
    store: &Store,
    patient_id: &str,
    wallet_address: &str,
) -> anyhow::Result<User> {
    // through `Store::write`: a gateway serving the same SQLite file may commit between this
    // transaction's first read and its first write (SQLITE_BUSY), and then it is run again
    let user = store
        .write(async |conn| {
            let now = Instant::now().millis();
            match binding::bind(conn, patient_id, wallet_address, binding::CLI, now).await? {
                Ok(user) => Ok(user),
                // an error rolls back what the attempt wrote (a disabled user it replaced)
                Err(refused) => Err(crate::error::Error::Conflict(format!(
                    "Patient/{patient_id} was not bound to the wallet: {refused}"
                ))),
            }
        })
        .await?;
    Ok(user)
}

pub async fn list(store: &Store) -> anyhow::Result<Vec<User>> {
    Ok(users::list(&mut *store.reader().await?).await?)
}

/// Gives (`allowed`) or takes the break-the-glass permission of a practitioner or staff user,
/// by id or username; whether there was one. Tokens issued after carry it.
pub async fn set_break_glass(store: &Store, user: &str, allowed: bool) -> anyhow::Result<bool> {
    let mut tx = store.begin().await?;
    let changed = users::set_break_glass(&mut tx, user, allowed).await?;
    tx.commit().await?;
    Ok(changed)
}

/// Gives (`allowed`) or takes the auditor role of a staff user, by id or username; whether
/// there was one. Tokens issued after carry it.
pub async fn set_auditor(store: &Store, user: &str, allowed: bool) -> anyhow::Result<bool> {
    let mut tx = store.begin().await?;
    let changed = users::set_auditor(&mut tx, user, allowed).await?;
    tx.commit().await?;
    Ok(changed)
}

/// Disables a user, by id or username; whether there was one (not yet disabled). A bound
/// patient user is unbound instead ([`binding::unbind_in`], history actor `cli`): the user
/// goes and the wallet is free again.
pub async fn disable(store: &Store, user: &str) -> anyhow::Result<bool> {
    let mut tx = store.begin().await?;
    let now = Instant::now().millis();
    let bound = match users::find(&mut tx, user).await? {
        Some(found) if found.kind == Kind::Patient.as_str() => {
            crate::store::binding::of_user(&mut tx, &found.user_id).await?
        }
        _ => None,
    };
    if let Some(bound) = bound {
        binding::unbind_in(&mut tx, &bound, binding::CLI, now).await?;
        tx.commit().await?;
        return Ok(true);
    }
    let disabled = users::disable(&mut tx, user, now).await?;
    tx.commit().await?;
    Ok(disabled)
}

/// The patient user of a wallet (for Sign-In with Ethereum, once the signature is verified);
/// disabled users are not found.
pub async fn find_by_wallet(store: &Store, address: &str) -> anyhow::Result<Option<User>> {
    let address = parse_wallet_address(address)?;
    let user = users::find_by_wallet(&mut *store.reader().await?, &address).await?;
    Ok(user.filter(|u| u.disabled_at.is_none()))
}

/// `0x` and 40 hex digits, lowercased.
pub fn parse_wallet_address(text: &str) -> anyhow::Result<String> {
    let text = text.trim();
    let hex = text
        .strip_prefix("0x")
        .filter(|h| h.len() == 40 && h.chars().all(|c| c.is_ascii_hexdigit()))
        .ok_or_else(|| {
            anyhow::anyhow!("{text:?} is not an Ethereum address (0x and 40 hex digits)")
        })?;
    Ok(format!("0x{}", hex.to_ascii_lowercase()))
}

fn hash_password(password: &SecretString) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| anyhow::anyhow!("no randomness for a salt"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    argon2::Argon2::default()
        .hash_password(password.expose_secret().as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))
}

/// Whether `password` is the one `hash` was made from.
fn password_matches(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// A hash to check passwords against when there is no such user, so that an unknown
/// username takes as long as a wrong password (no user enumeration by timing).
fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        hash_password(&SecretString::from("not the password of anyone".to_owned()))
            .unwrap_or_default()
    })
}

/// Why a password sign-in failed. The page shows the same message for each (no user
/// enumeration); the log keeps the reason, never the username or password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignInRefused {
    UnknownOrWrong,
    Locked,
    Disabled,
}

/// Checks a username and password; the user, or why not. Counts failures and locks the
/// user's password sign-in after [`MAX_FAILED_SIGN_INS`] in a row.
pub async fn sign_in_with_password(
    store: &Store,
    username: &str,
    password: &str,
) -> anyhow::Result<Result<User, SignInRefused>> {
    let user = users::find_by_username(&mut *store.reader().await?, username.trim()).await?;
    let Some(user) = user.filter(|u| u.kind != Kind::Patient.as_str()) else {
        let _ = password_matches(dummy_hash(), password);
        return Ok(Err(SignInRefused::UnknownOrWrong));
    };
    let now = Instant::now().millis();
    if user.locked_until.is_some_and(|until| until > now) {
        let _ = password_matches(dummy_hash(), password);
        return Ok(Err(SignInRefused::Locked));
    }
    let matches = password_matches(user.password_hash.as_deref().unwrap_or_default(), password);
    let mut tx = store.begin().await?;
    if !matches {
        users::record_failed_sign_in(
            &mut tx,
            &user.user_id,
            MAX_FAILED_SIGN_INS,
            now + LOCK_MILLIS,
        )
        .await?;
        tx.commit().await?;
        return Ok(Err(SignInRefused::UnknownOrWrong));
    }
    if user.disabled_at.is_some() {
        return Ok(Err(SignInRefused::Disabled));
    }
    users::record_sign_in(&mut tx, &user.user_id).await?;
    tx.commit().await?;
    Ok(Ok(user))
}
