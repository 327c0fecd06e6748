//! The anchored log's tables (migration 0004): one leaf per resource version, written in the
//! version's transaction, then sequenced and sealed into batches by one leader at a time.
//!
//! - [`insert_leaves`]: the write path; leaves start unsequenced (`log_index` NULL).
//! - [`sequence`]: gives committed unsequenced leaves the next contiguous log indexes, in
//!   `vkey` order. Only committed rows are visible to it, so a transaction that commits later
//!   gets later indexes than every leaf already sequenced: the log follows commit order, and a
//!   leaf is never numbered before a transaction that started earlier has committed.
//! - [`seal`]: cuts sequenced leaves into batches (by size or age) and stores each batch with
//!   its RFC 9162 root, state `sealed`, before anything is submitted to a chain.
//! - [`leaf_of`], [`batch_leaves`]: what `$proof` reads.
//!
//! Erasure ([`super::erasure`]) removes a leaf's salt and content hash but never its
//! `leaf_hash`: batches are rebuilt from leaf hashes alone, so their roots and the proofs of
//! every other leaf do not change.
//!
//! Both [`sequence`] and [`seal`] must run under [`try_lead`] in one transaction.

use anchor::{Batch, ContentHash, Leaf, LeafHash, NodeHash, Salt};
use sqlx::{AnyConnection, Row};

use super::Backend;
use super::search::{Bind, Sql};
use crate::model::{Instant, VersionId};

/// Leaves per multi-row INSERT (4 bind parameters each).
const LEAVES_PER_STATEMENT: usize = 1000;

/// Writes the leaves of versions just inserted (`vkey`, leaf), unsequenced.
#[tracing::instrument(name = "db.insert_leaves", skip_all)]
pub async fn insert_leaves(
    conn: &mut AnyConnection,
    leaves: &[(i64, &Leaf)],
) -> Result<(), sqlx::Error> {
    let postgres = Backend::of(conn) == Backend::Postgres;
    // PostgreSQL: one statement of constant text (bulk); SQLite: multi-row VALUES
    let per_statement = if postgres {
        leaves.len().max(1)
    } else {
        LEAVES_PER_STATEMENT
    };
    for chunk in leaves.chunks(per_statement) {
        let rows = chunk.iter().map(|(vkey, leaf)| {
            [
                Bind::Int(*vkey),
                Bind::Bytes(leaf.salt.as_bytes().to_vec()),
                Bind::Bytes(leaf.content_hash.as_bytes().to_vec()),
                Bind::Bytes(leaf.hash().as_bytes().to_vec()),
            ]
        });
        let mut sql = Sql::default();
        sql.text = super::bulk::insert_rows(
            &mut sql,
            postgres,
            "log_leaf",
            &[
                ("vkey", super::bulk::Kind::BigInt),
                ("salt", super::bulk::Kind::Bytes),
                ("content_hash", super::bulk::Kind::Bytes),
                ("leaf_hash", super::bulk::Kind::Bytes),
            ],
            rows,
        );
        sql.query().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Takes the log's leadership for the current transaction: on PostgreSQL a transaction-level
/// advisory lock, so that of several gateway replicas one sequences and seals at a time
/// (`false`: another one is doing it now). SQLite has one process and one writer: always
/// `true`.
pub async fn try_lead(conn: &mut AnyConnection) -> Result<bool, sqlx::Error> {
    match Backend::of(conn) {
        Backend::Postgres => {
            let locked: bool = sqlx::query_scalar(
                "SELECT pg_try_advisory_xact_lock(hashtextextended('fhir-gateway:anchored-log', 0))",
            )
            .fetch_one(conn)
            .await?;
            Ok(locked)
        }
        Backend::Sqlite => Ok(true),
    }
}

/// Gives up to `limit` committed unsequenced leaves the next log indexes (contiguous, from
/// the log's current size), in `vkey` order. Returns how many were sequenced.
#[tracing::instrument(name = "db.log_sequence", skip_all)]
pub async fn sequence(conn: &mut AnyConnection, limit: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE log_leaf SET log_index = s.next_index FROM ( \
             SELECT u.vkey, (SELECT COALESCE(MAX(log_index) + 1, 0) FROM log_leaf) \
                 + ROW_NUMBER() OVER (ORDER BY u.vkey) - 1 AS next_index \
             FROM (SELECT vkey FROM log_leaf WHERE log_index IS NULL ORDER BY vkey LIMIT $1) AS u \
         ) AS s WHERE log_leaf.vkey = s.vkey",
    )
    .bind(limit)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// When a batch is sealed.
#[derive(Debug, Clone, Copy)]
pub struct SealRule {
    /// A batch holds at most this many leaves, and is sealed as soon as it is full.
    pub max_size: i64,
    /// A batch that is not full is sealed once its first version (the oldest in the log's
    /// commit order) is this old.
    pub max_age_millis: i64,
}

/// A sealed batch, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedBatch {
    pub number: i64,
    pub first_index: i64,
    pub size: i64,
    pub root: NodeHash,
}

/// Seals the sequenced leaves that no batch holds yet into batches, as many as `rule` calls
/// for at `now`: full batches first, then one younger batch if its first version is old
/// enough. Returns the batches sealed, in order.
#[tracing::instrument(name = "db.log_seal", skip_all)]
pub async fn seal(
    conn: &mut AnyConnection,
    rule: SealRule,
    now: Instant,
) -> Result<Vec<SealedBatch>, sqlx::Error> {
    let mut sealed = Vec::new();
    loop {
        let (number, first_index): (i64, i64) = {
            let row = sqlx::query(
                "SELECT COALESCE(MAX(number) + 1, 0) AS number, \
                 COALESCE(MAX(first_index + size), 0) AS first_index FROM log_batch",
            )
            .fetch_one(&mut *conn)
            .await?;
            (row.try_get("number")?, row.try_get("first_index")?)
        };
        // sequenced leaves have no gaps: the count waiting is up to the last index, and the
        // first of them is the oldest in commit order; both are one index probe, not a scan of
        // every leaf waiting (up to a batch's size, every run)
        let row = sqlx::query(
            "SELECT (SELECT MAX(log_index) FROM log_leaf) AS last, \
             (SELECT v.last_updated FROM log_leaf l JOIN resource_version v ON v.vkey = l.vkey \
              WHERE l.log_index = $1) AS oldest",
        )
        .bind(first_index)
        .fetch_one(&mut *conn)
        .await?;
        let last: Option<i64> = row.try_get("last")?;
        let waiting = last.map_or(0, |last| (last + 1 - first_index).max(0));
        let oldest: Option<i64> = row.try_get("oldest")?;
        let old_enough = oldest.is_some_and(|oldest| now.millis() - oldest >= rule.max_age_millis);
        if waiting == 0 || (waiting < rule.max_size && !old_enough) {
            return Ok(sealed);
        }
        let size = waiting.min(rule.max_size);
        let leaves = batch_leaves(conn, first_index, size).await?;
        if leaves.len() as i64 != size {
            return Err(sqlx::Error::Protocol(format!(
                "the log has a gap: {} leaves from index {first_index}, {size} expected",
                leaves.len()
            )));
        }
        let root = Batch::new(&leaves)
            .map_err(|e| sqlx::Error::Protocol(e.to_string()))?
            .root();
        sqlx::query(
            "INSERT INTO log_batch (number, first_index, size, root, state, sealed_at) \
             VALUES ($1, $2, $3, $4, 'sealed', $5)",
        )
        .bind(number)
        .bind(first_index)
        .bind(size)
        .bind(root.as_bytes().as_slice())
        .bind(now.millis())
        .execute(&mut *conn)
        .await?;
        sealed.push(SealedBatch {
            number,
            first_index,
            size,
            root,
        });
    }
}

/// The leaf hashes with log indexes `first_index .. first_index + size`, in index order.
pub async fn batch_leaves(
    conn: &mut AnyConnection,
    first_index: i64,
    size: i64,
) -> Result<Vec<LeafHash>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT leaf_hash FROM log_leaf WHERE log_index >= $1 AND log_index < $2 ORDER BY log_index",
    )
    .bind(first_index)
    .bind(first_index + size)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| Ok(LeafHash::from_bytes(hash_at(row, "leaf_hash")?)))
        .collect()
}

/// A batch as stored, with where it was anchored once it was.
#[derive(Debug, Clone)]
pub struct StoredBatch {
    pub number: i64,
    pub first_index: i64,
    pub size: i64,
    pub root: NodeHash,
    /// `sealed`, `submitted` or `confirmed`.
    pub state: String,
    pub chain_id: Option<i64>,
    pub contract: Option<String>,
    /// The anchoring account: the log's key in the registry.
    pub anchorer: Option<String>,
    pub tx_hash: Option<String>,
    pub block_number: Option<i64>,
    pub block_hash: Option<String>,
}

/// The log entry of one resource version.
#[derive(Debug, Clone)]
pub struct StoredLeaf {
    pub version_id: VersionId,
    pub last_updated: Instant,
    /// Whether the version is a deletion.
    pub deleted: bool,
    /// When the version's content was erased, if it was.
    pub erased_at: Option<Instant>,
    /// `None` until sequenced.
    pub log_index: Option<i64>,
    /// `None` once erased.
    pub salt: Option<Salt>,
    /// `None` once erased.
    pub content_hash: Option<ContentHash>,
    pub leaf_hash: LeafHash,
    /// The batch holding the leaf, once sealed.
    pub batch: Option<StoredBatch>,
}

/// The log entry of a version of a resource (the current one when `version` is `None`);
/// `None` when there is no such version or it has no log entry.
#[tracing::instrument(name = "db.leaf_of", skip_all)]
pub async fn leaf_of(
    conn: &mut AnyConnection,
    resource_type: &str,
    id: &str,
    version: Option<VersionId>,
) -> Result<Option<StoredLeaf>, sqlx::Error> {
    let which = match version {
        Some(_) => "v.version_id = $3",
        None => "v.version_id = r.version_id",
    };
    let sql = format!(
        "SELECT v.version_id, v.last_updated, v.erased_at, \
         CAST(CASE WHEN v.body IS NULL AND v.erased_at IS NULL THEN 1 ELSE 0 END AS SMALLINT) AS deleted, \
         l.log_index, l.salt, l.content_hash, l.leaf_hash, b.number, b.first_index, b.size, \
         b.root, b.state, b.chain_id, b.contract, b.anchorer, b.tx_hash, b.block_number, b.block_hash \
         FROM resource r JOIN resource_version v ON v.rkey = r.rkey \
         JOIN log_leaf l ON l.vkey = v.vkey \
         LEFT JOIN log_batch b ON l.log_index >= b.first_index AND l.log_index < b.first_index + b.size \
         WHERE r.resource_type = $1 AND r.id = $2 AND {which}"
    );
    // audited: `which` is one of two constants
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(resource_type)
        .bind(id);
    if let Some(version) = version {
        query = query.bind(version.get());
    }
    let Some(row) = query.fetch_optional(conn).await? else {
        return Ok(None);
    };
    let batch = match row.try_get::<Option<i64>, _>("number")? {
        None => None,
        Some(_) => Some(stored_batch(&row)?),
    };
    let salt: Option<Vec<u8>> = row.try_get("salt")?;
    let content_hash: Option<Vec<u8>> = row.try_get("content_hash")?;
    Ok(Some(StoredLeaf {
        version_id: VersionId::from_db(row.try_get("version_id")?),
        last_updated: Instant::from_millis(row.try_get("last_updated")?),
        deleted: row.try_get::<i16, _>("deleted")? != 0,
        erased_at: row
            .try_get::<Option<i64>, _>("erased_at")?
            .map(Instant::from_millis),
        log_index: row.try_get("log_index")?,
        salt: salt
            .as_deref()
            .map(hash32)
            .transpose()?
            .map(Salt::from_bytes),
        content_hash: content_hash
            .as_deref()
            .map(hash32)
            .transpose()?
            .map(ContentHash::from_bytes),
        leaf_hash: LeafHash::from_bytes(hash_at(&row, "leaf_hash")?),
        batch,
    }))
}

/// The state of the log, for `/health/ready`: leaves not yet in a batch, and sealed batches
/// not yet submitted to a chain (the chain client's backlog) with the oldest one's sealing
/// time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    pub unsealed_leaves: i64,
    pub sealed_batches: i64,
    pub oldest_sealed_at: Option<Instant>,
    /// Batches anchored but not yet deep enough to count as confirmed.
    pub submitted_batches: i64,
}

#[tracing::instrument(name = "db.log_backlog", skip_all)]
pub async fn backlog(conn: &mut AnyConnection) -> Result<Backlog, sqlx::Error> {
    // two counts, each answered by an index (the partial one, then the unique log_index)
    let row = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM log_leaf WHERE log_index IS NULL) AS unsequenced, \
         (SELECT COUNT(*) FROM log_leaf WHERE log_index >= \
             (SELECT COALESCE(MAX(first_index + size), 0) FROM log_batch)) AS unbatched, \
         (SELECT COUNT(*) FROM log_batch WHERE state = 'sealed') AS sealed_batches, \
         (SELECT MIN(sealed_at) FROM log_batch WHERE state = 'sealed') AS oldest_sealed_at, \
         (SELECT COUNT(*) FROM log_batch WHERE state = 'submitted') AS submitted_batches",
    )
    .fetch_one(conn)
    .await?;
    Ok(Backlog {
        unsealed_leaves: row.try_get::<i64, _>("unsequenced")?
            + row.try_get::<i64, _>("unbatched")?,
        sealed_batches: row.try_get("sealed_batches")?,
        oldest_sealed_at: row
            .try_get::<Option<i64>, _>("oldest_sealed_at")?
            .map(Instant::from_millis),
        submitted_batches: row.try_get("submitted_batches")?,
    })
}

/// A 32-byte hash stored in `column`.
fn hash_at(row: &sqlx::any::AnyRow, column: &str) -> Result<[u8; 32], sqlx::Error> {
    hash32(&row.try_get::<Vec<u8>, _>(column)?)
}

fn hash32(bytes: &[u8]) -> Result<[u8; 32], sqlx::Error> {
    <[u8; 32]>::try_from(bytes).map_err(|_| {
        sqlx::Error::Protocol(format!("a stored hash has {} bytes, not 32", bytes.len()))
    })
}

/// Where a batch was anchored, as the chain says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorRecord {
    pub chain_id: i64,
    pub contract: String,
    pub anchorer: String,
    pub tx_hash: String,
    pub block_number: i64,
    pub block_hash: String,
}

/// The batches not yet confirmed on chain (`sealed` or `submitted`), in number order, at most
/// `limit`.
pub async fn unconfirmed_batches(
    conn: &mut AnyConnection,
    limit: i64,
) -> Result<Vec<StoredBatch>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT number, first_index, size, root, state, chain_id, contract, anchorer, tx_hash, \
         block_number, block_hash FROM log_batch WHERE state IN ('sealed', 'submitted') \
         ORDER BY number LIMIT $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter().map(stored_batch).collect()
}

/// A `log_batch` row (its columns by name, as [`leaf_of`] and [`unconfirmed_batches`] select
/// them).
fn stored_batch(row: &sqlx::any::AnyRow) -> Result<StoredBatch, sqlx::Error> {
    Ok(StoredBatch {
        number: row.try_get("number")?,
        first_index: row.try_get("first_index")?,
        size: row.try_get("size")?,
        root: NodeHash::from_bytes(hash_at(row, "root")?),
        state: row.try_get("state")?,
        chain_id: row.try_get("chain_id")?,
        contract: row.try_get("contract")?,
        anchorer: row.try_get("anchorer")?,
        tx_hash: row.try_get("tx_hash")?,
        block_number: row.try_get("block_number")?,
        block_hash: row.try_get("block_hash")?,
    })
}

/// Records where batch `number` was anchored; `confirmed` once its block is deep enough.
pub async fn record_anchor(
    conn: &mut AnyConnection,
    number: i64,
    anchor: &AnchorRecord,
    confirmed: bool,
    now: Instant,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE log_batch SET state = $2, chain_id = $3, contract = $4, anchorer = $5, \
         tx_hash = $6, block_number = $7, block_hash = $8, \
         submitted_at = COALESCE(submitted_at, $9), \
         confirmed_at = $10 WHERE number = $1",
    )
    .bind(number)
    .bind(if confirmed { "confirmed" } else { "submitted" })
    .bind(anchor.chain_id)
    .bind(&anchor.contract)
    .bind(&anchor.anchorer)
    .bind(&anchor.tx_hash)
    .bind(anchor.block_number)
    .bind(&anchor.block_hash)
    .bind(now.millis())
    .bind(confirmed.then_some(now.millis()))
    .execute(conn)
    .await?;
    Ok(())
}

/// Returns batches `number` and later to `sealed`, forgetting where they were anchored: the
/// chain no longer holds them (a reorg deeper than the confirmations, or a development chain
/// that lost its state), so they go out again. Returns how many were returned.
pub async fn unanchor_from(conn: &mut AnyConnection, number: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE log_batch SET state = 'sealed', chain_id = NULL, contract = NULL, \
         anchorer = NULL, tx_hash = NULL, block_number = NULL, block_hash = NULL, \
         submitted_at = NULL, confirmed_at = NULL WHERE number >= $1 AND state <> 'sealed'",
    )
    .bind(number)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// The chain, registry and account this database's log is anchored with (migration 0005).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChain {
    pub chain_id: i64,
    /// 0x-prefixed lowercase hex.
    pub registry: String,
    /// 0x-prefixed lowercase hex.
    pub anchorer: String,
}

pub async fn log_chain(conn: &mut AnyConnection) -> Result<Option<LogChain>, sqlx::Error> {
    let row = sqlx::query("SELECT chain_id, registry, anchorer FROM log_chain WHERE id = 1")
        .fetch_optional(conn)
        .await?;
    row.map(|row| {
        Ok(LogChain {
            chain_id: row.try_get("chain_id")?,
            registry: row.try_get("registry")?,
            anchorer: row.try_get("anchorer")?,
        })
    })
    .transpose()
}

/// Records where the log is anchored (the first time only: a recorded chain is never
/// replaced).
pub async fn record_log_chain(
    conn: &mut AnyConnection,
    chain: &LogChain,
    now: Instant,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO log_chain (id, chain_id, registry, anchorer, recorded_at) \
         VALUES (1, $1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
    )
    .bind(chain.chain_id)
    .bind(&chain.registry)
    .bind(&chain.anchorer)
    .bind(now.millis())
    .execute(conn)
    .await?;
    Ok(())
}

/// Takes the anchoring worker's leadership for the life of `conn` (PostgreSQL: a
/// session-level advisory lock, released when the connection closes; `false`: another
/// replica holds it). SQLite: always `true`.
pub async fn try_lead_anchoring(conn: &mut AnyConnection) -> Result<bool, sqlx::Error> {
    match Backend::of(conn) {
        Backend::Postgres => {
            sqlx::query_scalar(
                "SELECT pg_try_advisory_lock(hashtextextended('fhir-gateway:anchoring', 0))",
            )
            .fetch_one(conn)
            .await
        }
        Backend::Sqlite => Ok(true),
    }
}
