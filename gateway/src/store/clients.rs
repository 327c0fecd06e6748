//! The SMART client registry and the record of client assertions already used (migration
//! 0007). Only public keys are stored: a client's JWKS, or the URL of it.

use sqlx::{AnyConnection, Row as _};

use crate::model::Instant;

/// A registered client.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Client {
    pub client_id: String,
    pub name: String,
    /// `backend` (SMART Backend Services) or `public` (an app without a secret, SMART App
    /// Launch with PKCE).
    pub kind: String,
    /// The client's public JWKS, as JSON text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    /// Where the client publishes its JWKS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// The scopes it may be granted, space-separated.
    pub scopes: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Where authorization codes may be sent (SMART App Launch), space-separated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_uris: Option<String>,
    /// Where an EHR launch opens the app.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launch_uri: Option<String>,
}

impl Client {
    /// Whether `uri` is exactly one of the client's redirect URIs.
    pub fn has_redirect_uri(&self, uri: &str) -> bool {
        self.redirect_uris
            .as_deref()
            .is_some_and(|uris| uris.split_whitespace().any(|u| u == uri))
    }
}

pub async fn insert(conn: &mut AnyConnection, client: &Client) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO auth_client (client_id, name, kind, jwks, jwks_url, scopes, created_at, \
         redirect_uris, launch_uri) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&client.client_id)
    .bind(&client.name)
    .bind(&client.kind)
    .bind(&client.jwks)
    .bind(&client.jwks_url)
    .bind(&client.scopes)
    .bind(client.created_at)
    .bind(&client.redirect_uris)
    .bind(&client.launch_uri)
    .execute(conn)
    .await?;
    Ok(())
}

const COLUMNS: &str =
    "client_id, name, kind, jwks, jwks_url, scopes, created_at, redirect_uris, launch_uri";

fn from_row(row: &sqlx::any::AnyRow) -> Result<Client, sqlx::Error> {
    Ok(Client {
        client_id: row.try_get("client_id")?,
        name: row.try_get("name")?,
        kind: row.try_get("kind")?,
        jwks: row.try_get("jwks")?,
        jwks_url: row.try_get("jwks_url")?,
        scopes: row.try_get("scopes")?,
        created_at: row.try_get("created_at")?,
        redirect_uris: row.try_get("redirect_uris")?,
        launch_uri: row.try_get("launch_uri")?,
    })
}

pub async fn find(
    conn: &mut AnyConnection,
    client_id: &str,
) -> Result<Option<Client>, sqlx::Error> {
    // audited: COLUMNS is a constant
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM auth_client WHERE client_id = $1"
    )))
    .bind(client_id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(from_row).transpose()
}

pub async fn list(conn: &mut AnyConnection) -> Result<Vec<Client>, sqlx::Error> {
    // audited: COLUMNS is a constant
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM auth_client ORDER BY created_at, client_id"
    )))
    .fetch_all(conn)
    .await?;
    rows.iter().map(from_row).collect()
}

/// Removes a client; whether there was one.
pub async fn remove(conn: &mut AnyConnection, client_id: &str) -> Result<bool, sqlx::Error> {
    sqlx::query("DELETE FROM auth_assertion_jti WHERE client_id = $1")
        .bind(client_id)
        .execute(&mut *conn)
        .await?;
    let removed = sqlx::query("DELETE FROM auth_client WHERE client_id = $1")
        .bind(client_id)
        .execute(conn)
        .await?
        .rows_affected();
    Ok(removed > 0)
}

/// Records that `client_id` used the assertion `jti` (valid until `expires_at`, seconds since
/// the Unix epoch). False when it was used before and has not expired yet: a replay. Records
/// of expired assertions are dropped on the way.
pub async fn use_assertion(
    conn: &mut AnyConnection,
    client_id: &str,
    jti: &str,
    expires_at: i64,
) -> Result<bool, sqlx::Error> {
    let now = Instant::now().millis() / 1000;
    sqlx::query("DELETE FROM auth_assertion_jti WHERE expires_at < $1")
        .bind(now)
        .execute(&mut *conn)
        .await?;
    let inserted = sqlx::query(
        "INSERT INTO auth_assertion_jti (client_id, jti, expires_at) VALUES ($1, $2, $3) \
         ON CONFLICT (client_id, jti) DO NOTHING",
    )
    .bind(client_id)
    .bind(jti)
    .bind(expires_at)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}
