//! The SMART client registry and the record of client assertions already used (migrations
//! 0007 and 0009). Only public keys are stored (a client's JWKS, or the URL of it) and, for
//! clients with a secret, the secret's argon2 hash.

use sqlx::{AnyConnection, Row as _};

use crate::model::Instant;

/// A registered client.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Client {
    pub client_id: String,
    pub name: String,
    /// `backend`, `confidential-asymmetric`, `confidential-symmetric` or `public`
    /// (see [`crate::auth::clients::ClientKind`]).
    pub kind: String,
    /// How it authenticates at the token endpoint: `private_key_jwt`, `client_secret_basic`,
    /// `client_secret_post` or `none`.
    pub token_endpoint_auth_method: String,
    /// The client's public JWKS, as JSON text (shown as JSON).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_json_text"
    )]
    pub jwks: Option<String>,
    /// Where the client publishes its JWKS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// The argon2 hash (PHC string) of the client's secret; never shown.
    #[serde(skip)]
    pub secret_hash: Option<String>,
    /// Where the authorization endpoint may send the user back (exact match).
    pub redirect_uris: Vec<String>,
    /// Where an EHR launch starts the app.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub launch_uri: Option<String>,
    /// The scopes it may be granted, space-separated.
    pub scopes: String,
    /// Whether its tokens may use the client admin API.
    pub admin: bool,
    /// `operator` (CLI or admin API) or `dynamic` (RFC 7591 registration).
    pub registered_by: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

impl Client {
    /// Its kind (None only for a row this code does not know).
    pub fn kind(&self) -> Option<crate::auth::clients::ClientKind> {
        crate::auth::clients::ClientKind::parse(&self.kind)
    }

    /// Whether `uri` is one of its redirect URIs, exactly (no prefix or pattern matching).
    pub fn has_redirect_uri(&self, uri: &str) -> bool {
        self.redirect_uris
            .iter()
            .any(|registered| registered == uri)
    }
}

/// JSON text as the JSON it holds (as the text itself if it does not parse).
fn serialize_json_text<S: serde::Serializer>(
    text: &Option<String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::Serialize as _;
    match text
        .as_deref()
        .map(serde_json::from_str::<serde_json::Value>)
    {
        Some(Ok(value)) => value.serialize(serializer),
        _ => text.serialize(serializer),
    }
}

pub async fn insert(conn: &mut AnyConnection, client: &Client) -> Result<(), sqlx::Error> {
    // audited: COLUMNS is a constant
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO auth_client ({COLUMNS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    )))
    .bind(&client.client_id)
    .bind(&client.name)
    .bind(&client.kind)
    .bind(&client.jwks)
    .bind(&client.jwks_url)
    .bind(&client.scopes)
    .bind(client.created_at)
    .bind(&client.token_endpoint_auth_method)
    .bind(&client.secret_hash)
    .bind(client.redirect_uris.join(" "))
    .bind(&client.launch_uri)
    .bind(i64::from(client.admin))
    .bind(&client.registered_by)
    .execute(conn)
    .await?;
    Ok(())
}

const COLUMNS: &str = "client_id, name, kind, jwks, jwks_url, scopes, created_at, auth_method, \
                       secret_hash, redirect_uris, launch_uri, admin, registered_by";

fn from_row(row: &sqlx::any::AnyRow) -> Result<Client, sqlx::Error> {
    let redirect_uris: String = row.try_get("redirect_uris")?;
    let admin: i64 = row.try_get("admin")?;
    Ok(Client {
        client_id: row.try_get("client_id")?,
        name: row.try_get("name")?,
        kind: row.try_get("kind")?,
        token_endpoint_auth_method: row.try_get("auth_method")?,
        jwks: row.try_get("jwks")?,
        jwks_url: row.try_get("jwks_url")?,
        secret_hash: row.try_get("secret_hash")?,
        redirect_uris: redirect_uris
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        launch_uri: row.try_get("launch_uri")?,
        scopes: row.try_get("scopes")?,
        admin: admin != 0,
        registered_by: row.try_get("registered_by")?,
        created_at: row.try_get("created_at")?,
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

/// How many clients dynamic registration made.
pub async fn count_dynamic(conn: &mut AnyConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM auth_client WHERE registered_by = 'dynamic'")
        .fetch_one(conn)
        .await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_match_exactly() {
        let client = Client {
            client_id: "c".to_owned(),
            name: "app".to_owned(),
            kind: "public".to_owned(),
            token_endpoint_auth_method: "none".to_owned(),
            jwks: None,
            jwks_url: None,
            secret_hash: None,
            redirect_uris: vec!["https://app.example.org/cb".to_owned()],
            launch_uri: None,
            scopes: "patient/*.rs".to_owned(),
            admin: false,
            registered_by: "operator".to_owned(),
            created_at: 0,
        };
        assert_eq!(
            client.kind(),
            Some(crate::auth::clients::ClientKind::Public)
        );
        assert!(client.has_redirect_uri("https://app.example.org/cb"));
        for other in [
            "https://app.example.org/cb/",
            "https://app.example.org/cb?x=1",
            "https://app.example.org/c",
            "https://APP.example.org/cb",
            "http://app.example.org/cb",
        ] {
            assert!(!client.has_redirect_uri(other), "{other}");
        }
    }
}
