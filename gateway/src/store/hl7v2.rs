//! The HL7 v2 messages the gateway accepted (migration 0016's `hl7v2_message`), keyed by
//! sender and control id: the idempotency record of the intake, written in the transaction
//! that stores the message's resources. Times are milliseconds since the Unix epoch.

use sqlx::{AnyConnection, Row as _};

/// What was recorded of an accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub ack_code: String,
    /// JSON array of the Bundle entries' responses (status, location, etag, lastModified).
    pub responses: String,
    pub received_at: i64,
}

/// A message to record.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub sender: &'a str,
    pub control_id: &'a str,
    pub message_type: &'a str,
    pub ack_code: &'a str,
    pub responses: &'a str,
    pub received_at: i64,
}

/// [`find`] behind [`super::lock`] on each of `keys`, in that order: on PostgreSQL one
/// statement (the lookup's snapshot is taken before the locks are granted, so a copy of the
/// message that a concurrent transaction recorded meanwhile is not seen; that copy's record
/// then makes this one's [`record`] fail with a unique violation, and the transaction runs
/// again and finds it). The intake passes the message's own key first, then the locks its
/// transaction Bundle needs, so that they cost no round trip of their own.
#[tracing::instrument(skip_all)]
pub async fn lock_and_find(
    conn: &mut AnyConnection,
    keys: &[String],
    sender: &str,
    control_id: &str,
) -> Result<Option<Recorded>, sqlx::Error> {
    if super::Backend::of(conn) != super::Backend::Postgres {
        return find(conn, sender, control_id).await;
    }
    let mut sql = super::search::Sql::default();
    let locks = super::lock_list(&mut sql, keys);
    let sender = sql.text(sender);
    let control_id = sql.text(control_id);
    sql.text = format!(
        "SELECT m.ack_code, m.responses, m.received_at FROM (SELECT {locks}) AS l \
         LEFT JOIN hl7v2_message m ON m.sender = {sender} AND m.control_id = {control_id}"
    );
    let row = sql.query().fetch_one(conn).await?;
    let Some(ack_code) = row.try_get::<Option<String>, _>("ack_code")? else {
        return Ok(None);
    };
    Ok(Some(Recorded {
        ack_code,
        responses: row.try_get("responses")?,
        received_at: row.try_get("received_at")?,
    }))
}

#[tracing::instrument(skip_all)]
pub async fn find(
    conn: &mut AnyConnection,
    sender: &str,
    control_id: &str,
) -> Result<Option<Recorded>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT ack_code, responses, received_at FROM hl7v2_message \
         WHERE sender = $1 AND control_id = $2",
    )
    .bind(sender)
    .bind(control_id)
    .fetch_optional(conn)
    .await?;
    row.map(|row| {
        Ok(Recorded {
            ack_code: row.try_get("ack_code")?,
            responses: row.try_get("responses")?,
            received_at: row.try_get("received_at")?,
        })
    })
    .transpose()
}

/// Records an accepted message. A concurrent transaction that recorded the same message
/// first makes this fail with a unique violation, which `Store::write` treats as a conflict
/// and runs again (and the second run finds the record).
#[tracing::instrument(skip_all)]
pub async fn record(conn: &mut AnyConnection, record: Record<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO hl7v2_message \
         (sender, control_id, message_type, ack_code, responses, received_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(record.sender)
    .bind(record.control_id)
    .bind(record.message_type)
    .bind(record.ack_code)
    .bind(record.responses)
    .bind(record.received_at)
    .execute(conn)
    .await?;
    Ok(())
}
