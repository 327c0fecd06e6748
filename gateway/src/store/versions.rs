//! Resource versions: reading the current one, a given one, history, and writing a new one.

use fhir_profiles::search::IndexEntry;
use fhir_profiles::text::Word;
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use std::collections::HashMap;

use super::search::{Bind, Sql};
use super::{Backend, bulk, index, log};
use crate::model::{Instant, VersionId};

/// The current state of a logical resource, as locked for an update.
#[derive(Debug, Clone)]
pub struct Current {
    pub rkey: i64,
    pub version_id: VersionId,
    pub last_updated: Instant,
    pub deleted: bool,
    /// The index tables that may hold rows of the resource (`resource.index_tables`, bit n
    /// for the n-th of `index::TABLES_WITH_WORDS`); `None`: any of them may.
    pub index_tables: Option<u8>,
}

impl Current {
    /// From a row with the columns `rkey`, `version_id`, `last_updated`, `deleted` and
    /// `index_tables` of `resource`.
    pub(crate) fn from_row(row: &sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Current {
            rkey: row.try_get("rkey")?,
            version_id: VersionId::from_db(row.try_get("version_id")?),
            last_updated: Instant::from_millis(row.try_get("last_updated")?),
            deleted: row.try_get::<i16, _>("deleted")? != 0,
            index_tables: row
                .try_get::<Option<i16>, _>("index_tables")?
                .and_then(|mask| u8::try_from(mask).ok()),
        })
    }
}

/// One stored version.
#[derive(Debug, Clone)]
pub struct StoredVersion {
    /// The position of this version in the order versions were written.
    pub vkey: i64,
    pub resource_type: String,
    pub id: String,
    pub version_id: VersionId,
    pub last_updated: Instant,
    /// `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: String,
    /// The version as served; `None` for a deletion and once erased.
    pub body: Option<String>,
    /// When the version's content was erased (`fhir-gateway erase`); `None` until then.
    pub erased_at: Option<Instant>,
}

impl StoredVersion {
    /// Whether the version is a deletion tombstone.
    pub fn is_deleted(&self) -> bool {
        self.body.is_none() && self.erased_at.is_none()
    }

    pub(crate) fn from_row(row: &sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        Ok(StoredVersion {
            vkey: row.try_get("vkey")?,
            resource_type: row.try_get("resource_type")?,
            id: row.try_get("id")?,
            version_id: VersionId::from_db(row.try_get("version_id")?),
            last_updated: Instant::from_millis(row.try_get("last_updated")?),
            method: row.try_get("method")?,
            body: row.try_get("body")?,
            erased_at: row
                .try_get::<Option<i64>, _>("erased_at")?
                .map(Instant::from_millis),
        })
    }
}

pub(crate) const VERSION_COLUMNS: &str =
    "v.vkey, r.resource_type, r.id, v.version_id, v.last_updated, v.method, v.body, v.erased_at";

/// The current state of a resource, locked until the transaction ends (PostgreSQL) so that
/// concurrent updates of one resource are serialized. SQLite has a single writer.
#[tracing::instrument(name = "db.current_for_update", skip_all)]
pub async fn current_for_update(
    conn: &mut AnyConnection,
    resource_type: &str,
    id: &str,
) -> Result<Option<Current>, sqlx::Error> {
    let lock = match Backend::of(conn) {
        Backend::Postgres => " FOR UPDATE",
        Backend::Sqlite => "",
    };
    let sql = format!(
        "SELECT rkey, version_id, last_updated, deleted, index_tables FROM resource \
         WHERE resource_type = $1 AND id = $2{lock}"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(resource_type)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(Current::from_row).transpose()
}

/// The current state of a resource and the body of its current version (`None` for a
/// deletion), in one read, locked like [`current_for_update`]: what a patch starts from.
#[tracing::instrument(name = "db.current_with_body_for_update", skip_all)]
pub async fn current_with_body_for_update(
    conn: &mut AnyConnection,
    resource_type: &str,
    id: &str,
) -> Result<Option<(Current, Option<String>)>, sqlx::Error> {
    let lock = match Backend::of(conn) {
        Backend::Postgres => " FOR UPDATE OF r",
        Backend::Sqlite => "",
    };
    let sql = format!(
        "SELECT r.rkey, r.version_id, r.last_updated, r.deleted, r.index_tables, v.body \
         FROM resource r \
         JOIN resource_version v ON v.rkey = r.rkey AND v.version_id = r.version_id \
         WHERE r.resource_type = $1 AND r.id = $2{lock}"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(resource_type)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    row.map(|row| Ok((Current::from_row(&row)?, row.try_get("body")?)))
        .transpose()
}

/// The current version of a resource (which may be a deletion).
#[tracing::instrument(name = "db.read", skip_all)]
pub async fn read_current(
    conn: &mut AnyConnection,
    resource_type: &str,
    id: &str,
) -> Result<Option<StoredVersion>, sqlx::Error> {
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM resource r JOIN resource_version v \
         ON v.rkey = r.rkey AND v.version_id = r.version_id WHERE r.resource_type = $1 AND r.id = $2"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(resource_type)
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(StoredVersion::from_row).transpose()
}

/// The current version of a resource and whether it meets `condition` (a condition on the
/// resource row `r`, built into `sql` with its bound values): one query for a read that must
/// also pass a check. `None` for the check when `condition` is NULL: undecided (a consent
/// check built for one row, `Sql::one_row`, of a row whose compartment is not recorded).
pub async fn read_current_checked(
    conn: &mut AnyConnection,
    mut sql: super::search::Sql,
    condition: &str,
    resource_type: &str,
    id: &str,
) -> Result<Option<(StoredVersion, Option<bool>)>, sqlx::Error> {
    let (t, i) = (sql.text(resource_type), sql.text(id));
    sql.text = format!(
        "SELECT {VERSION_COLUMNS}, CAST(({condition}) AS INTEGER) AS passes \
         FROM resource r JOIN resource_version v ON v.rkey = r.rkey AND v.version_id = r.version_id \
         WHERE r.resource_type = {t} AND r.id = {i}"
    );
    let row = sql.query().fetch_optional(conn).await?;
    row.as_ref()
        .map(|row| {
            let passes: Option<i64> = sqlx::Row::try_get(row, "passes")?;
            Ok((StoredVersion::from_row(row)?, passes.map(|p| p == 1)))
        })
        .transpose()
}

/// One version of a resource.
#[tracing::instrument(name = "db.vread", skip_all)]
pub async fn read_version(
    conn: &mut AnyConnection,
    resource_type: &str,
    id: &str,
    version: VersionId,
) -> Result<Option<StoredVersion>, sqlx::Error> {
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM resource r JOIN resource_version v ON v.rkey = r.rkey \
         WHERE r.resource_type = $1 AND r.id = $2 AND v.version_id = $3"
    );
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(resource_type)
        .bind(id)
        .bind(version.get())
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(StoredVersion::from_row).transpose()
}

/// Versions that have no log leaf, oldest first: those stored before the anchored log
/// existed (migration 0004). Every later version gets its leaf in its own transaction. An
/// erased version has no content left to hash and never gets one.
pub async fn versions_without_leaf(
    conn: &mut AnyConnection,
    after_vkey: i64,
    limit: i64,
) -> Result<Vec<StoredVersion>, sqlx::Error> {
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM resource_version v JOIN resource r ON r.rkey = v.rkey \
         WHERE v.vkey > $1 AND v.erased_at IS NULL \
         AND NOT EXISTS (SELECT 1 FROM log_leaf l WHERE l.vkey = v.vkey) \
         ORDER BY v.vkey LIMIT $2"
    );
    let rows = sqlx::query(AssertSqlSafe(sql))
        .bind(after_vkey)
        .bind(limit)
        .fetch_all(conn)
        .await?;
    rows.iter().map(StoredVersion::from_row).collect()
}

/// A new version to store.
#[derive(Debug)]
pub struct VersionWrite<'a> {
    pub resource_type: &'a str,
    pub id: &'a str,
    pub version_id: VersionId,
    pub last_updated: Instant,
    pub method: &'a str,
    /// The version as served; `None` writes a deletion tombstone.
    pub body: Option<&'a str>,
    /// The search index of this version (ignored for a deletion).
    pub index: &'a [IndexEntry],
    /// The words of this version for `_text` and `_content` (ignored for a deletion).
    pub words: &'a [Word],
    /// The version's entry in the anchored log, written with it.
    pub leaf: &'a anchor::Leaf,
}

/// Stores a version and its log leaf and makes it current, replacing the resource's search
/// index.
/// `current` is what [`current_for_update`] returned in the same transaction.
#[tracing::instrument(name = "db.write_version", skip_all)]
pub async fn write_version(
    conn: &mut AnyConnection,
    current: Option<&Current>,
    write: &VersionWrite<'_>,
) -> Result<(), sqlx::Error> {
    if Backend::of(conn) == Backend::Postgres {
        return write_version_postgres(conn, current, write).await;
    }
    let deleted = i16::from(write.body.is_none());
    let compartment = index::compartment_of(write.resource_type, write.entries());
    let rkey: i64 = match current {
        None => {
            sqlx::query_scalar(
                "INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, compartment) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING rkey",
            )
            .bind(write.resource_type)
            .bind(write.id)
            .bind(write.version_id.get())
            .bind(write.last_updated.millis())
            .bind(deleted)
            .bind(compartment)
            .fetch_one(&mut *conn)
            .await?
        }
        Some(current) => {
            sqlx::query(
                "UPDATE resource SET version_id = $1, last_updated = $2, deleted = $3, \
                 compartment = $4 WHERE rkey = $5",
            )
                .bind(write.version_id.get())
                .bind(write.last_updated.millis())
                .bind(deleted)
                .bind(compartment)
                .bind(current.rkey)
                .execute(&mut *conn)
                .await?;
            index::delete(conn, current.rkey).await?;
            current.rkey
        }
    };
    let vkey: i64 = sqlx::query_scalar(
        "INSERT INTO resource_version (rkey, resource_type, version_id, last_updated, method, body) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING vkey",
    )
    .bind(rkey)
    .bind(write.resource_type)
    .bind(write.version_id.get())
    .bind(write.last_updated.millis())
    .bind(write.method)
    .bind(write.body)
    .fetch_one(&mut *conn)
    .await?;
    log::insert_leaves(conn, &[(vkey, write.leaf)]).await?;
    insert_index(conn, rkey, write).await
}

/// [`write_version`] on PostgreSQL in one statement rather than one per table: the resource
/// row, the version, its log leaf and the index rows as data-modifying CTEs. A small
/// write's cost is mostly round trips and per-statement overhead otherwise (BENCHMARKS.md,
/// "HL7 v2 over MLLP"). An update writes only the index rows that changed
/// ([`index::replace_ctes`]). A resource with very many index rows gets them in statements
/// of their own (all its old rows deleted, the new ones inserted), within the bind limit.
async fn write_version_postgres(
    conn: &mut AnyConnection,
    current: Option<&Current>,
    write: &VersionWrite<'_>,
) -> Result<(), sqlx::Error> {
    let mut sql = Sql::default();
    let rtype = sql.text(write.resource_type);
    let version = sql.bind(Bind::Int(write.version_id.get()));
    let at = sql.bind(Bind::Int(write.last_updated.millis()));
    let deleted = sql.bind(Bind::Int(i64::from(write.body.is_none())));
    // a deletion has no index rows: its resource's are all removed
    let (entries, words): (&[IndexEntry], &[Word]) = match write.body {
        Some(_) => (write.index, write.words),
        None => (&[], &[]),
    };
    let compartment = sql
        .bind(index::compartment_of(write.resource_type, entries).map_or(Bind::Null, Bind::Text));
    let rows = index::Rows {
        rkey: current.map_or(0, |c| c.rkey),
        resource_type: write.resource_type,
        entries,
        words,
    };
    // after this statement the resource's index rows are exactly `rows`
    let tables = sql.bind(Bind::Int(i64::from(index::tables_of(&rows))));
    let mut ctes = Vec::new();
    let rkey = match current {
        None => {
            let id = sql.text(write.id);
            ctes.push(format!(
                "r AS (INSERT INTO resource (resource_type, id, version_id, last_updated, deleted, index_tables, compartment) \
                 VALUES ({rtype}, {id}, {version}, {at}, {deleted}, {tables}, {compartment}) RETURNING rkey)"
            ));
            "(SELECT rkey FROM r)".to_owned()
        }
        Some(current) => {
            let rkey = sql.bind(Bind::Int(current.rkey));
            ctes.push(format!(
                "r AS (UPDATE resource SET version_id = {version}, last_updated = {at}, deleted = {deleted}, \
                 index_tables = {tables}, compartment = {compartment} WHERE rkey = {rkey} RETURNING rkey)"
            ));
            rkey
        }
    };
    let method = sql.text(write.method);
    let body = sql.bind(write.body.map_or(Bind::Null, |b| Bind::Text(b.to_owned())));
    ctes.push(format!(
        "v AS (INSERT INTO resource_version (rkey, resource_type, version_id, last_updated, method, body) \
         SELECT rkey, {rtype}, {version}, {at}, {method}, {body} FROM r RETURNING vkey, rkey)"
    ));
    let leaf = write.leaf;
    let salt = sql.bind(Bind::Bytes(leaf.salt.as_bytes().to_vec()));
    let content = sql.bind(Bind::Bytes(leaf.content_hash.as_bytes().to_vec()));
    let hash = sql.bind(Bind::Bytes(leaf.hash().as_bytes().to_vec()));
    ctes.push(format!(
        "l AS (INSERT INTO log_leaf (vkey, salt, content_hash, leaf_hash) \
         SELECT vkey, {salt}, {content}, {hash} FROM v)"
    ));
    let combined = index::replace_binds(&rows) <= index::BINDS_PER_COMBINED_STATEMENT;
    if combined {
        let stored = current.map_or(index::Stored::Nothing, index::Stored::of);
        index::replace_ctes(&mut sql, &mut ctes, &rkey, stored, &rows);
    }
    sql.text = format!("WITH {} SELECT rkey FROM v", ctes.join(", "));
    let rkey: i64 = sql.query().fetch_one(&mut *conn).await?.try_get(0)?;
    if !combined {
        if current.is_some() {
            index::delete(conn, rkey).await?;
        }
        index::insert(conn, &[index::Rows { rkey, ..rows }]).await?;
    }
    Ok(())
}

impl VersionWrite<'_> {
    /// The index entries the version's rows are made of: none for a deletion.
    fn entries(&self) -> &[IndexEntry] {
        if self.body.is_some() { self.index } else { &[] }
    }
}

/// The index rows of a version that has a body (a deletion has none).
#[tracing::instrument(name = "db.insert_index", skip_all)]
async fn insert_index(
    conn: &mut AnyConnection,
    rkey: i64,
    write: &VersionWrite<'_>,
) -> Result<(), sqlx::Error> {
    if write.body.is_none() {
        return Ok(());
    }
    let rows = index::Rows {
        rkey,
        resource_type: write.resource_type,
        entries: write.index,
        words: write.words,
    };
    index::insert(conn, &[rows]).await
}

/// Rows per multi-row INSERT of resources and versions (at most 6 bind parameters each).
const WRITES_PER_STATEMENT: usize = 1000;

/// Stores the first versions of many new resources, and their log leaves, at once: a few multi-row INSERTs
/// instead of several statements per resource (transaction Bundles, bulk intake). Every
/// write must be of a resource that does not exist yet and must carry a body.
#[tracing::instrument(name = "db.write_new_versions", skip_all)]
pub async fn write_new_versions(
    conn: &mut AnyConnection,
    writes: &[VersionWrite<'_>],
) -> Result<(), sqlx::Error> {
    // on PostgreSQL a version is one statement of its own (write_version_postgres): fewer
    // round trips than the four multi-row statements below for a few resources
    if writes.len() < 4 && Backend::of(conn) == Backend::Postgres {
        for write in writes {
            write_version_postgres(conn, None, write).await?;
        }
        return Ok(());
    }
    let postgres = Backend::of(conn) == Backend::Postgres;
    // PostgreSQL: every row in one statement of constant text (bulk); SQLite: multi-row VALUES
    let per_statement = if postgres {
        writes.len().max(1)
    } else {
        WRITES_PER_STATEMENT
    };
    let mut rkeys: HashMap<(&str, &str), i64> = HashMap::with_capacity(writes.len());
    for chunk in writes.chunks(per_statement) {
        let rows = chunk.iter().map(|write| {
            [
                Bind::Text(write.resource_type.to_owned()),
                Bind::Text(write.id.to_owned()),
                Bind::Int(write.version_id.get()),
                Bind::Int(write.last_updated.millis()),
                Bind::Int(0),
                index::compartment_of(write.resource_type, write.index)
                    .map_or(Bind::Null, Bind::Text),
            ]
        });
        let mut sql = Sql::default();
        sql.text = bulk::insert_rows(
            &mut sql,
            postgres,
            "resource",
            &[
                ("resource_type", bulk::Kind::Text),
                ("id", bulk::Kind::Text),
                ("version_id", bulk::Kind::BigInt),
                ("last_updated", bulk::Kind::BigInt),
                ("deleted", bulk::Kind::Integer),
                ("compartment", bulk::Kind::Text),
            ],
            rows,
        );
        sql.text.push_str(" RETURNING rkey, resource_type, id");
        let position: HashMap<(&str, &str), usize> = chunk
            .iter()
            .enumerate()
            .map(|(i, w)| ((w.resource_type, w.id), i))
            .collect();
        // RETURNING gives no order guarantee: match the rows by their key
        for row in sql.query().fetch_all(&mut *conn).await? {
            let (rkey, resource_type, id): (i64, String, String) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
            let write = position
                .get(&(resource_type.as_str(), id.as_str()))
                .map(|&i| &chunk[i])
                .ok_or_else(|| sqlx::Error::Protocol("INSERT returned an unknown row".into()))?;
            rkeys.insert((write.resource_type, write.id), rkey);
        }
    }
    let rkey_of = |write: &VersionWrite<'_>| rkeys[&(write.resource_type, write.id)];
    let by_rkey: HashMap<i64, &VersionWrite<'_>> = writes.iter().map(|w| (rkey_of(w), w)).collect();
    let mut leaves = Vec::with_capacity(writes.len());
    for chunk in writes.chunks(per_statement) {
        let rows = chunk.iter().map(|write| {
            [
                Bind::Int(rkey_of(write)),
                Bind::Text(write.resource_type.to_owned()),
                Bind::Int(write.version_id.get()),
                Bind::Int(write.last_updated.millis()),
                Bind::Text(write.method.to_owned()),
                write.body.map_or(Bind::Null, |b| Bind::Text(b.to_owned())),
            ]
        });
        let mut sql = Sql::default();
        sql.text = bulk::insert_rows(
            &mut sql,
            postgres,
            "resource_version",
            &[
                ("rkey", bulk::Kind::BigInt),
                ("resource_type", bulk::Kind::Text),
                ("version_id", bulk::Kind::BigInt),
                ("last_updated", bulk::Kind::BigInt),
                ("method", bulk::Kind::Text),
                ("body", bulk::Kind::Text),
            ],
            rows,
        );
        sql.text.push_str(" RETURNING vkey, rkey");
        // one first version per resource: the rkey says which write each vkey belongs to
        for row in sql.query().fetch_all(&mut *conn).await? {
            let (vkey, rkey): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
            let write = by_rkey
                .get(&rkey)
                .ok_or_else(|| sqlx::Error::Protocol("INSERT returned an unknown row".into()))?;
            leaves.push((vkey, write.leaf));
        }
    }
    // in vkey order, the order the log sequences them in
    leaves.sort_unstable_by_key(|(vkey, _)| *vkey);
    log::insert_leaves(conn, &leaves).await?;
    let index_rows: Vec<index::Rows<'_>> = writes
        .iter()
        .map(|write| index::Rows {
            rkey: rkey_of(write),
            resource_type: write.resource_type,
            entries: write.index,
            words: write.words,
        })
        .collect();
    index::insert(conn, &index_rows).await
}

/// Which versions a history interaction covers.
#[derive(Debug, Clone)]
pub enum HistoryScope<'a> {
    System,
    Type(&'a str),
    Instance(&'a str, &'a str),
}

/// Versions, newest first, written before `before_vkey` (a paging cursor), filtered by
/// `_since` (written at or after) and `_at` (current at that instant).
#[tracing::instrument(name = "db.history", skip_all)]
pub async fn history(
    conn: &mut AnyConnection,
    scope: &HistoryScope<'_>,
    since: Option<Instant>,
    at: Option<Instant>,
    before_vkey: Option<i64>,
    limit: usize,
) -> Result<Vec<StoredVersion>, sqlx::Error> {
    let mut sql = format!(
        "SELECT {VERSION_COLUMNS} FROM resource_version v JOIN resource r ON r.rkey = v.rkey WHERE 1 = 1"
    );
    let mut n = 0;
    let mut param = || {
        n += 1;
        format!("${n}")
    };
    match scope {
        HistoryScope::System => {}
        HistoryScope::Type(_) => sql += &format!(" AND v.resource_type = {}", param()),
        HistoryScope::Instance(..) => {
            sql += &format!(" AND r.resource_type = {} AND r.id = {}", param(), param())
        }
    }
    if since.is_some() {
        sql += &format!(" AND v.last_updated >= {}", param());
    }
    if at.is_some() {
        let p = param();
        sql += &format!(
            " AND v.last_updated <= {p} AND NOT EXISTS (SELECT 1 FROM resource_version n \
             WHERE n.rkey = v.rkey AND n.version_id > v.version_id AND n.last_updated <= {p})"
        );
    }
    if before_vkey.is_some() {
        sql += &format!(" AND v.vkey < {}", param());
    }
    sql += &format!(" ORDER BY v.vkey DESC LIMIT {limit}");

    let mut query = sqlx::query(AssertSqlSafe(sql));
    match scope {
        HistoryScope::System => {}
        HistoryScope::Type(resource_type) => query = query.bind(*resource_type),
        HistoryScope::Instance(resource_type, id) => query = query.bind(*resource_type).bind(*id),
    }
    for value in [since, at].into_iter().flatten() {
        query = query.bind(value.millis());
    }
    if let Some(vkey) = before_vkey {
        query = query.bind(vkey);
    }
    let rows = query.fetch_all(conn).await?;
    rows.iter().map(StoredVersion::from_row).collect()
}
