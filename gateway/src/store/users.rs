//! The users who sign in at the authorization server's pages (migration 0008): practitioners
//! and staff with a password (only its argon2 hash is stored), patients with an Ethereum
//! wallet.

use sqlx::{AnyConnection, Row as _};

/// A user.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct User {
    pub user_id: String,
    /// `patient`, `practitioner` or `staff`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The argon2 PHC string; never shown.
    #[serde(skip)]
    pub password_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wallet_address: Option<String>,
    /// `Patient/123`, `Practitioner/7`, ...
    pub fhir_user: String,
    #[serde(skip)]
    pub failed_sign_ins: i64,
    /// No password sign-in before this (milliseconds since the Unix epoch).
    #[serde(skip)]
    pub locked_until: Option<i64>,
    /// Milliseconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_at: Option<i64>,
    pub created_at: i64,
    /// May read patient data without consent in an emergency (break-the-glass).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
    /// May read every AuditEvent (the auditor role; staff users only).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub auditor: bool,
}

const COLUMNS: &str = "user_id, kind, username, password_hash, wallet_address, fhir_user, \
                       failed_sign_ins, locked_until, disabled_at, created_at, break_glass, auditor";

fn from_row(row: &sqlx::any::AnyRow) -> Result<User, sqlx::Error> {
    Ok(User {
        user_id: row.try_get("user_id")?,
        kind: row.try_get("kind")?,
        username: row.try_get("username")?,
        password_hash: row.try_get("password_hash")?,
        wallet_address: row.try_get("wallet_address")?,
        fhir_user: row.try_get("fhir_user")?,
        failed_sign_ins: row.try_get("failed_sign_ins")?,
        locked_until: row.try_get("locked_until")?,
        disabled_at: row.try_get("disabled_at")?,
        created_at: row.try_get("created_at")?,
        break_glass: row.try_get::<i64, _>("break_glass")? != 0,
        auditor: row.try_get::<i64, _>("auditor")? != 0,
    })
}

pub async fn insert(conn: &mut AnyConnection, user: &User) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO auth_user (user_id, kind, username, password_hash, wallet_address, \
         fhir_user, failed_sign_ins, created_at) VALUES ($1, $2, $3, $4, $5, $6, 0, $7)",
    )
    .bind(&user.user_id)
    .bind(&user.kind)
    .bind(&user.username)
    .bind(&user.password_hash)
    .bind(&user.wallet_address)
    .bind(&user.fhir_user)
    .bind(user.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

async fn find_by(
    conn: &mut AnyConnection,
    column: &'static str,
    value: &str,
) -> Result<Option<User>, sqlx::Error> {
    // audited: COLUMNS and `column` are constants
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM auth_user WHERE {column} = $1"
    )))
    .bind(value)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(from_row).transpose()
}

pub async fn find(conn: &mut AnyConnection, user_id: &str) -> Result<Option<User>, sqlx::Error> {
    find_by(conn, "user_id", user_id).await
}

pub async fn find_by_username(
    conn: &mut AnyConnection,
    username: &str,
) -> Result<Option<User>, sqlx::Error> {
    find_by(conn, "username", username).await
}

/// The patient user holding `wallet_address` (`0x` and 40 lowercase hex digits): the lookup
/// Sign-In with Ethereum makes once the signature is verified.
pub async fn find_by_wallet(
    conn: &mut AnyConnection,
    wallet_address: &str,
) -> Result<Option<User>, sqlx::Error> {
    find_by(conn, "wallet_address", wallet_address).await
}

pub async fn list(conn: &mut AnyConnection) -> Result<Vec<User>, sqlx::Error> {
    // audited: COLUMNS is a constant
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM auth_user ORDER BY created_at, user_id"
    )))
    .fetch_all(conn)
    .await?;
    rows.iter().map(from_row).collect()
}

/// Disables a user (by id or username); whether there was one to disable.
pub async fn disable(conn: &mut AnyConnection, user: &str, now: i64) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE auth_user SET disabled_at = $1 \
         WHERE (user_id = $2 OR username = $2) AND disabled_at IS NULL",
    )
    .bind(now)
    .bind(user)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(changed > 0)
}

/// Gives or takes the break-the-glass permission of a practitioner or staff user (by id or
/// username); whether there was such a user.
pub async fn set_break_glass(
    conn: &mut AnyConnection,
    user: &str,
    allowed: bool,
) -> Result<bool, sqlx::Error> {
    let sql = "UPDATE auth_user SET break_glass = $1 \
               WHERE (user_id = $2 OR username = $2) AND kind <> 'patient'";
    set_flag(conn, sql, user, allowed).await
}

/// Gives or takes the auditor role of a staff user (by id or username); whether there was
/// such a user.
pub async fn set_auditor(
    conn: &mut AnyConnection,
    user: &str,
    allowed: bool,
) -> Result<bool, sqlx::Error> {
    let sql = "UPDATE auth_user SET auditor = $1 \
               WHERE (user_id = $2 OR username = $2) AND kind = 'staff'";
    set_flag(conn, sql, user, allowed).await
}

/// Runs `sql`, an `UPDATE` of one user's flag (`$1` the flag, `$2` the user's id or
/// username); whether it found the user.
async fn set_flag(
    conn: &mut AnyConnection,
    sql: &'static str,
    user: &str,
    allowed: bool,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(sql)
        .bind(i64::from(allowed))
        .bind(user)
        .execute(conn)
        .await?
        .rows_affected();
    Ok(changed > 0)
}

/// Removes a user (a patient user whose wallet is unbound: the wallet is free again).
pub async fn remove(conn: &mut AnyConnection, user_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM auth_user WHERE user_id = $1")
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Counts a failed password sign-in; from the `limit`th in a row on, locks password sign-in
/// until `lock_until`.
pub async fn record_failed_sign_in(
    conn: &mut AnyConnection,
    user_id: &str,
    limit: i64,
    lock_until: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE auth_user SET failed_sign_ins = failed_sign_ins + 1, \
         locked_until = CASE WHEN failed_sign_ins + 1 >= $1 THEN $2 ELSE locked_until END \
         WHERE user_id = $3",
    )
    .bind(limit)
    .bind(lock_until)
    .bind(user_id)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn record_sign_in(conn: &mut AnyConnection, user_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE auth_user SET failed_sign_ins = 0, locked_until = NULL WHERE user_id = $1")
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(())
}
