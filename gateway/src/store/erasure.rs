//! Erasure (crypto-shredding) in the database (migration 0006): the content of a resource's
//! versions and the salts and content hashes of their log leaves are removed; each version
//! row keeps its place in history (`erased_at`), each leaf keeps its `leaf_hash`, so batch
//! roots and every other proof are unchanged. See [`crate::erasure`] for the whole operation.

use sqlx::AnyConnection;

use super::{Backend, index};
use crate::model::Instant;

/// Makes SQLite overwrite with zeros what this connection deletes from now on (`PRAGMA
/// secure_delete`), so that erased content does not linger in the file's free space. The
/// setting stays with the connection. PostgreSQL keeps dead row versions until `VACUUM`
/// whatever is done here (see README, "Erasure").
pub async fn overwrite_deleted_content(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    if Backend::of(conn) == Backend::Sqlite {
        sqlx::query("PRAGMA secure_delete = ON")
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// Erases every version of resource `rkey` that still has content (deletion tombstones have
/// none and are left as they are), and removes the salt and content hash of the log leaf of
/// every erased version of it. Returns how many versions lost their content; 0 when the
/// resource was already erased. Removes the resource's search index rows too.
#[tracing::instrument(name = "db.erase_versions", skip_all)]
pub async fn erase_versions(
    conn: &mut AnyConnection,
    rkey: i64,
    now: Instant,
) -> Result<u64, sqlx::Error> {
    let erased = sqlx::query(
        "UPDATE resource_version SET body = NULL, erased_at = $2 \
         WHERE rkey = $1 AND body IS NOT NULL",
    )
    .bind(rkey)
    .bind(now.millis())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    sqlx::query(
        "UPDATE log_leaf SET salt = NULL, content_hash = NULL \
         WHERE (salt IS NOT NULL OR content_hash IS NOT NULL) AND vkey IN \
         (SELECT vkey FROM resource_version WHERE rkey = $1 AND erased_at IS NOT NULL)",
    )
    .bind(rkey)
    .execute(&mut *conn)
    .await?;
    // a deleted resource has no index rows already; removing them again costs little and
    // makes sure search can never find an erased resource
    index::delete(conn, rkey).await?;
    // and the compartment those rows put it in goes with them (migration 0034)
    sqlx::query("UPDATE resource SET compartment = '' WHERE rkey = $1")
        .bind(rkey)
        .execute(&mut *conn)
        .await?;
    Ok(erased)
}

/// Whether any version of the resource still has content to erase.
pub async fn has_content(conn: &mut AnyConnection, rkey: i64) -> Result<bool, sqlx::Error> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM resource_version WHERE rkey = $1 AND body IS NOT NULL LIMIT 1",
    )
    .bind(rkey)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(found.is_some())
}

/// Records an erasure for the operator: the resource, when, how many versions, and why.
pub async fn record_erasure(
    conn: &mut AnyConnection,
    rkey: i64,
    at: Instant,
    versions: u64,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO erasure (rkey, erased_at, versions, reason) VALUES ($1, $2, $3, $4)")
        .bind(rkey)
        .bind(at.millis())
        .bind(i64::try_from(versions).unwrap_or(i64::MAX))
        .bind(reason)
        .execute(conn)
        .await?;
    Ok(())
}
