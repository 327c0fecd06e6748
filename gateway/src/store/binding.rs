//! Patient <-> wallet bindings (migration 0012's `patient_wallet`), the link codes that make
//! them and the history of every bind and unbind (migration 0013). Only the SHA-256 of a
//! link code is stored. Times are milliseconds since the Unix epoch.

use sqlx::{AnyConnection, Row as _};

/// The wallet a Patient is bound to now, and its patient user.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Binding {
    pub patient_id: String,
    pub wallet_address: String,
    pub user_id: String,
    #[serde(serialize_with = "instant")]
    pub bound_at: i64,
}

/// A bind or an unbind, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub seq: i64,
    pub wallet_address: String,
    /// `bind` or `unbind`.
    pub action: String,
    /// An admin client's id, `cli`, `link-code` (or `migration`, for patient users added
    /// before bindings existed).
    pub actor: String,
    #[serde(serialize_with = "instant")]
    pub at: i64,
}

/// Milliseconds since the epoch, shown as a FHIR instant.
fn instant<S: serde::Serializer>(millis: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&crate::model::Instant::from_millis(*millis).to_fhir())
}

/// A link code, by its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkCode {
    pub patient_id: String,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

fn binding_of(row: &sqlx::any::AnyRow) -> Result<Binding, sqlx::Error> {
    Ok(Binding {
        patient_id: row.try_get("patient_id")?,
        wallet_address: row.try_get("wallet_address")?,
        user_id: row.try_get("user_id")?,
        bound_at: row.try_get("bound_at")?,
    })
}

async fn binding_where(
    conn: &mut AnyConnection,
    column: &'static str,
    value: &str,
) -> Result<Option<Binding>, sqlx::Error> {
    // audited: `column` is a constant
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT patient_id, wallet_address, user_id, bound_at FROM patient_wallet \
         WHERE {column} = $1"
    )))
    .bind(value)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(binding_of).transpose()
}

pub async fn of_patient(
    conn: &mut AnyConnection,
    patient_id: &str,
) -> Result<Option<Binding>, sqlx::Error> {
    binding_where(conn, "patient_id", patient_id).await
}

/// `wallet_address`: `0x` and 40 lowercase hex digits.
pub async fn of_wallet(
    conn: &mut AnyConnection,
    wallet_address: &str,
) -> Result<Option<Binding>, sqlx::Error> {
    binding_where(conn, "wallet_address", wallet_address).await
}

pub async fn of_user(
    conn: &mut AnyConnection,
    user_id: &str,
) -> Result<Option<Binding>, sqlx::Error> {
    binding_where(conn, "user_id", user_id).await
}

pub async fn insert(conn: &mut AnyConnection, binding: &Binding) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO patient_wallet (patient_id, wallet_address, user_id, bound_at) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(&binding.patient_id)
    .bind(&binding.wallet_address)
    .bind(&binding.user_id)
    .bind(binding.bound_at)
    .execute(&mut *conn)
    .await?;
    super::consent::refresh_access_of_patient(conn, &binding.patient_id).await
}

pub async fn remove(conn: &mut AnyConnection, patient_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM patient_wallet WHERE patient_id = $1")
        .bind(patient_id)
        .execute(&mut *conn)
        .await?;
    super::consent::refresh_access_of_patient(conn, patient_id).await
}

/// Records a bind or an unbind as the patient's next change.
pub async fn record(
    conn: &mut AnyConnection,
    patient_id: &str,
    wallet_address: &str,
    action: &str,
    actor: &str,
    at: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO patient_wallet_history (patient_id, seq, wallet_address, action, actor, at) \
         SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5 \
         FROM patient_wallet_history WHERE patient_id = $1",
    )
    .bind(patient_id)
    .bind(wallet_address)
    .bind(action)
    .bind(actor)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// A patient's changes, oldest first.
pub async fn history(
    conn: &mut AnyConnection,
    patient_id: &str,
) -> Result<Vec<Change>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT seq, wallet_address, action, actor, at FROM patient_wallet_history \
         WHERE patient_id = $1 ORDER BY seq",
    )
    .bind(patient_id)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Change {
                seq: row.try_get("seq")?,
                wallet_address: row.try_get("wallet_address")?,
                action: row.try_get("action")?,
                actor: row.try_get("actor")?,
                at: row.try_get("at")?,
            })
        })
        .collect()
}

/// Stores a new link code for a patient and removes the patient's unused ones.
pub async fn insert_code(
    conn: &mut AnyConnection,
    code_hash: &str,
    patient_id: &str,
    issued_by: &str,
    now: i64,
    expires_at: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM patient_link_code WHERE patient_id = $1 AND used_at IS NULL")
        .bind(patient_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO patient_link_code (code_hash, patient_id, issued_by, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(code_hash)
    .bind(patient_id)
    .bind(issued_by)
    .bind(now)
    .bind(expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn find_code(
    conn: &mut AnyConnection,
    code_hash: &str,
) -> Result<Option<LinkCode>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT patient_id, expires_at, used_at FROM patient_link_code WHERE code_hash = $1",
    )
    .bind(code_hash)
    .fetch_optional(conn)
    .await?;
    row.map(|row| {
        Ok(LinkCode {
            patient_id: row.try_get("patient_id")?,
            expires_at: row.try_get("expires_at")?,
            used_at: row.try_get("used_at")?,
        })
    })
    .transpose()
}

/// Uses a code up; false when it was used already or has expired.
pub async fn use_code(
    conn: &mut AnyConnection,
    code_hash: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE patient_link_code SET used_at = $1 \
         WHERE code_hash = $2 AND used_at IS NULL AND expires_at > $1",
    )
    .bind(now)
    .bind(code_hash)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// Counts a wrong link code tried in a browser session; returns how many there were.
pub async fn count_link_failure(
    conn: &mut AnyConnection,
    session_hash: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query(
        "UPDATE auth_session SET link_failures = link_failures + 1 WHERE session_hash = $1",
    )
    .bind(session_hash)
    .execute(&mut *conn)
    .await?;
    link_failures(conn, session_hash).await
}

/// The wrong link codes tried in a browser session.
pub async fn link_failures(
    conn: &mut AnyConnection,
    session_hash: &str,
) -> Result<i64, sqlx::Error> {
    let row = sqlx::query("SELECT link_failures FROM auth_session WHERE session_hash = $1")
        .bind(session_hash)
        .fetch_optional(conn)
        .await?;
    row.map_or(Ok(0), |row| row.try_get("link_failures"))
}

/// Everything a user holds ends: their sessions, their refresh tokens, and the access tokens
/// issued from their codes and refresh tokens (revoked until they expire).
pub async fn end_user_grants(
    conn: &mut AnyConnection,
    user_id: &str,
    now_millis: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE auth_session SET ended_at = $1 WHERE user_id = $2 AND ended_at IS NULL")
        .bind(now_millis)
        .bind(user_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE auth_refresh SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
    )
    .bind(now_millis)
    .bind(user_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO auth_revoked_jti (jti, expires_at) \
         SELECT jti, expires_at FROM auth_access WHERE expires_at > $1 AND family_id IN \
         (SELECT family_id FROM auth_refresh WHERE user_id = $2 \
          UNION SELECT family_id FROM auth_code WHERE user_id = $2) \
         ON CONFLICT (jti) DO NOTHING",
    )
    .bind(now_millis / 1000)
    .bind(user_id)
    .execute(conn)
    .await?;
    Ok(())
}
