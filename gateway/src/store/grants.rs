//! What the authorization code flow keeps between requests (migration 0008): browser
//! sessions, pending authorization requests, authorization codes, EHR launch values, refresh
//! token families, the access tokens issued to each family and revoked access tokens.
//! Session ids, codes, launch values and refresh tokens are stored as SHA-256 hashes only.
//! Times are milliseconds since the Unix epoch, except the `exp`-like columns of access tokens
//! (seconds, as in the JWT).

use sqlx::{AnyConnection, Row as _};

/// A browser session of the pages.
#[derive(Debug, Clone)]
pub struct Session {
    pub session_hash: String,
    pub user_id: Option<String>,
    pub csrf_token: String,
    pub expires_at: i64,
    pub ended_at: Option<i64>,
}

pub async fn insert_session(
    conn: &mut AnyConnection,
    session: &Session,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO auth_session (session_hash, user_id, csrf_token, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&session.session_hash)
    .bind(&session.user_id)
    .bind(&session.csrf_token)
    .bind(now)
    .bind(session.expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The session, when it exists, has not ended and has not expired.
pub async fn live_session(
    conn: &mut AnyConnection,
    session_hash: &str,
    now: i64,
) -> Result<Option<Session>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT session_hash, user_id, csrf_token, expires_at, ended_at FROM auth_session \
         WHERE session_hash = $1 AND ended_at IS NULL AND expires_at > $2",
    )
    .bind(session_hash)
    .bind(now)
    .fetch_optional(conn)
    .await?;
    row.map(|row| {
        Ok(Session {
            session_hash: row.try_get("session_hash")?,
            user_id: row.try_get("user_id")?,
            csrf_token: row.try_get("csrf_token")?,
            expires_at: row.try_get("expires_at")?,
            ended_at: row.try_get("ended_at")?,
        })
    })
    .transpose()
}

pub async fn end_session(
    conn: &mut AnyConnection,
    session_hash: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE auth_session SET ended_at = $1 WHERE session_hash = $2")
        .bind(now)
        .bind(session_hash)
        .execute(conn)
        .await?;
    Ok(())
}

/// An authorization request waiting for the user.
#[derive(Debug, Clone)]
pub struct Request {
    pub request_id: String,
    pub session_hash: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub scope: String,
    pub state: String,
    pub code_challenge: String,
    pub nonce: Option<String>,
    pub patient: Option<String>,
    pub encounter: Option<String>,
    pub ehr_launch: bool,
    pub expires_at: i64,
    /// The on-chain grant offered for the patient's wallet to sign (JSON), once asked for.
    pub consent_offer: Option<String>,
}

pub async fn insert_request(conn: &mut AnyConnection, r: &Request) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO auth_request (request_id, session_hash, client_id, redirect_uri, scope, \
         state, code_challenge, nonce, patient, encounter, ehr_launch, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(&r.request_id)
    .bind(&r.session_hash)
    .bind(&r.client_id)
    .bind(&r.redirect_uri)
    .bind(&r.scope)
    .bind(&r.state)
    .bind(&r.code_challenge)
    .bind(&r.nonce)
    .bind(&r.patient)
    .bind(&r.encounter)
    .bind(i64::from(r.ehr_launch))
    .bind(r.expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The unexpired request `request_id`.
pub async fn find_request(
    conn: &mut AnyConnection,
    request_id: &str,
    now: i64,
) -> Result<Option<Request>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT request_id, session_hash, client_id, redirect_uri, scope, state, code_challenge, \
         nonce, patient, encounter, ehr_launch, expires_at, consent_offer FROM auth_request \
         WHERE request_id = $1 AND expires_at > $2",
    )
    .bind(request_id)
    .bind(now)
    .fetch_optional(conn)
    .await?;
    row.map(|row| {
        Ok(Request {
            request_id: row.try_get("request_id")?,
            session_hash: row.try_get("session_hash")?,
            client_id: row.try_get("client_id")?,
            redirect_uri: row.try_get("redirect_uri")?,
            scope: row.try_get("scope")?,
            state: row.try_get("state")?,
            code_challenge: row.try_get("code_challenge")?,
            nonce: row.try_get("nonce")?,
            patient: row.try_get("patient")?,
            encounter: row.try_get("encounter")?,
            ehr_launch: row.try_get::<i64, _>("ehr_launch")? != 0,
            expires_at: row.try_get("expires_at")?,
            consent_offer: row.try_get("consent_offer")?,
        })
    })
    .transpose()
}

/// Moves the request to another session (the one a sign-in starts).
pub async fn move_request(
    conn: &mut AnyConnection,
    request_id: &str,
    session_hash: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE auth_request SET session_hash = $1 WHERE request_id = $2")
        .bind(session_hash)
        .bind(request_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn set_request_patient(
    conn: &mut AnyConnection,
    request_id: &str,
    patient: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE auth_request SET patient = $1 WHERE request_id = $2")
        .bind(patient)
        .bind(request_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records the on-chain grant offered for the request's patient to sign (replacing an earlier
/// offer).
pub async fn set_request_consent_offer(
    conn: &mut AnyConnection,
    request_id: &str,
    offer: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE auth_request SET consent_offer = $1 WHERE request_id = $2")
        .bind(offer)
        .bind(request_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Removes a request and those that expired.
pub async fn remove_request(
    conn: &mut AnyConnection,
    request_id: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM auth_request WHERE request_id = $1 OR expires_at < $2")
        .bind(request_id)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// What an authorization code or a refresh token stands for.
#[derive(Debug, Clone)]
pub struct Grant {
    pub family_id: String,
    pub client_id: String,
    pub user_id: String,
    pub scope: String,
    pub patient: Option<String>,
    pub encounter: Option<String>,
    pub need_patient_banner: bool,
}

/// An authorization code.
#[derive(Debug, Clone)]
pub struct Code {
    pub grant: Grant,
    pub redirect_uri: String,
    pub session_hash: String,
    pub code_challenge: String,
    pub nonce: Option<String>,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

pub async fn insert_code(
    conn: &mut AnyConnection,
    code_hash: &str,
    code: &Code,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO auth_code (code_hash, family_id, client_id, redirect_uri, user_id, \
         session_hash, scope, code_challenge, nonce, patient, encounter, need_patient_banner, \
         expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(code_hash)
    .bind(&code.grant.family_id)
    .bind(&code.grant.client_id)
    .bind(&code.redirect_uri)
    .bind(&code.grant.user_id)
    .bind(&code.session_hash)
    .bind(&code.grant.scope)
    .bind(&code.code_challenge)
    .bind(&code.nonce)
    .bind(&code.grant.patient)
    .bind(&code.grant.encounter)
    .bind(i64::from(code.grant.need_patient_banner))
    .bind(code.expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn find_code(
    conn: &mut AnyConnection,
    code_hash: &str,
) -> Result<Option<Code>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT family_id, client_id, redirect_uri, user_id, session_hash, scope, \
         code_challenge, nonce, patient, encounter, need_patient_banner, expires_at, used_at \
         FROM auth_code WHERE code_hash = $1",
    )
    .bind(code_hash)
    .fetch_optional(conn)
    .await?;
    row.map(|row| {
        Ok(Code {
            grant: grant_of(&row)?,
            redirect_uri: row.try_get("redirect_uri")?,
            session_hash: row.try_get("session_hash")?,
            code_challenge: row.try_get("code_challenge")?,
            nonce: row.try_get("nonce")?,
            expires_at: row.try_get("expires_at")?,
            used_at: row.try_get("used_at")?,
        })
    })
    .transpose()
}

/// The grant columns that codes and refresh tokens share.
fn grant_of(row: &sqlx::any::AnyRow) -> Result<Grant, sqlx::Error> {
    Ok(Grant {
        family_id: row.try_get("family_id")?,
        client_id: row.try_get("client_id")?,
        user_id: row.try_get("user_id")?,
        scope: row.try_get("scope")?,
        patient: row.try_get("patient")?,
        encounter: row.try_get("encounter")?,
        need_patient_banner: row.try_get::<i64, _>("need_patient_banner")? != 0,
    })
}

/// Marks a code used; false when it already was (a concurrent exchange won).
pub async fn use_code(
    conn: &mut AnyConnection,
    code_hash: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let changed =
        sqlx::query("UPDATE auth_code SET used_at = $1 WHERE code_hash = $2 AND used_at IS NULL")
            .bind(now)
            .bind(code_hash)
            .execute(conn)
            .await?
            .rows_affected();
    Ok(changed == 1)
}

/// An EHR launch value's context.
#[derive(Debug, Clone)]
pub struct Launch {
    pub client_id: Option<String>,
    pub patient: String,
    pub encounter: Option<String>,
    pub expires_at: i64,
}

pub async fn insert_launch(
    conn: &mut AnyConnection,
    launch_hash: &str,
    launch: &Launch,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO auth_launch (launch_hash, client_id, patient, encounter, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(launch_hash)
    .bind(&launch.client_id)
    .bind(&launch.patient)
    .bind(&launch.encounter)
    .bind(launch.expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Takes a launch value: its context if it exists, is unused and unexpired (it is then used).
pub async fn take_launch(
    conn: &mut AnyConnection,
    launch_hash: &str,
    now: i64,
) -> Result<Option<Launch>, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE auth_launch SET used_at = $1 \
         WHERE launch_hash = $2 AND used_at IS NULL AND expires_at > $1",
    )
    .bind(now)
    .bind(launch_hash)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if changed != 1 {
        return Ok(None);
    }
    let row = sqlx::query(
        "SELECT client_id, patient, encounter, expires_at FROM auth_launch WHERE launch_hash = $1",
    )
    .bind(launch_hash)
    .fetch_one(conn)
    .await?;
    Ok(Some(Launch {
        client_id: row.try_get("client_id")?,
        patient: row.try_get("patient")?,
        encounter: row.try_get("encounter")?,
        expires_at: row.try_get("expires_at")?,
    }))
}

/// A refresh token.
#[derive(Debug, Clone)]
pub struct Refresh {
    pub grant: Grant,
    /// `online_access`: the session it lives with.
    pub session_hash: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

pub async fn insert_refresh(
    conn: &mut AnyConnection,
    token_hash: &str,
    refresh: &Refresh,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO auth_refresh (token_hash, family_id, client_id, user_id, session_hash, \
         scope, patient, encounter, need_patient_banner, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(token_hash)
    .bind(&refresh.grant.family_id)
    .bind(&refresh.grant.client_id)
    .bind(&refresh.grant.user_id)
    .bind(&refresh.session_hash)
    .bind(&refresh.grant.scope)
    .bind(&refresh.grant.patient)
    .bind(&refresh.grant.encounter)
    .bind(i64::from(refresh.grant.need_patient_banner))
    .bind(refresh.created_at)
    .bind(refresh.expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn find_refresh(
    conn: &mut AnyConnection,
    token_hash: &str,
) -> Result<Option<Refresh>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT family_id, client_id, user_id, session_hash, scope, patient, encounter, \
         need_patient_banner, created_at, expires_at, used_at, revoked_at \
         FROM auth_refresh WHERE token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(conn)
    .await?;
    row.map(|row| {
        Ok(Refresh {
            grant: grant_of(&row)?,
            session_hash: row.try_get("session_hash")?,
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
            used_at: row.try_get("used_at")?,
            revoked_at: row.try_get("revoked_at")?,
        })
    })
    .transpose()
}

/// Marks a refresh token used (rotated); false when it already was.
pub async fn use_refresh(
    conn: &mut AnyConnection,
    token_hash: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE auth_refresh SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL",
    )
    .bind(now)
    .bind(token_hash)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// Records an access token issued to a family.
pub async fn insert_access(
    conn: &mut AnyConnection,
    jti: &str,
    family_id: &str,
    exp: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO auth_access (jti, family_id, expires_at) VALUES ($1, $2, $3)")
        .bind(jti)
        .bind(family_id)
        .bind(exp)
        .execute(conn)
        .await?;
    Ok(())
}

/// Revokes a family: its refresh tokens, and its access tokens that have not expired.
pub async fn revoke_family(
    conn: &mut AnyConnection,
    family_id: &str,
    now_millis: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE auth_refresh SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL",
    )
    .bind(now_millis)
    .bind(family_id)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO auth_revoked_jti (jti, expires_at) \
         SELECT jti, expires_at FROM auth_access WHERE family_id = $1 AND expires_at > $2 \
         ON CONFLICT (jti) DO NOTHING",
    )
    .bind(family_id)
    .bind(now_millis / 1000)
    .execute(conn)
    .await?;
    Ok(())
}

/// Revokes one access token (until its `exp`, seconds since the Unix epoch).
pub async fn revoke_jti(conn: &mut AnyConnection, jti: &str, exp: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO auth_revoked_jti (jti, expires_at) VALUES ($1, $2) \
         ON CONFLICT (jti) DO NOTHING",
    )
    .bind(jti)
    .bind(exp)
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether the access token `jti` was revoked.
pub async fn is_revoked(conn: &mut AnyConnection, jti: &str) -> Result<bool, sqlx::Error> {
    let row = sqlx::query("SELECT jti FROM auth_revoked_jti WHERE jti = $1")
        .bind(jti)
        .fetch_optional(conn)
        .await?;
    Ok(row.is_some())
}

/// Whether the session `session_hash` is live (for `online_access` refresh tokens).
pub async fn session_is_live(
    conn: &mut AnyConnection,
    session_hash: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    Ok(live_session(conn, session_hash, now).await?.is_some())
}

/// Removes what can no longer be used: expired sessions, requests, launch values, refresh
/// tokens and records of access tokens, and codes a day after they expired (until then a
/// second use of a code is still recognised and revokes its family).
pub async fn remove_expired(conn: &mut AnyConnection, now_millis: i64) -> Result<(), sqlx::Error> {
    let now_secs = now_millis / 1000;
    for (sql, before) in [
        ("DELETE FROM auth_session WHERE expires_at < $1", now_millis),
        ("DELETE FROM auth_request WHERE expires_at < $1", now_millis),
        ("DELETE FROM auth_launch WHERE expires_at < $1", now_millis),
        ("DELETE FROM auth_refresh WHERE expires_at < $1", now_millis),
        (
            "DELETE FROM auth_code WHERE expires_at < $1",
            now_millis - 24 * 3600 * 1000,
        ),
        ("DELETE FROM auth_access WHERE expires_at < $1", now_secs),
        (
            "DELETE FROM auth_revoked_jti WHERE expires_at < $1",
            now_secs,
        ),
    ] {
        sqlx::query(sql).bind(before).execute(&mut *conn).await?;
    }
    Ok(())
}
