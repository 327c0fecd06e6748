//! The consent index (migration 0012): the ConsentRegistry's grants as the follower read them
//! from the chain, the Patient ↔ wallet binding, and the SQL condition that lets
//! patient-compartment rows through only where a grant covers them. The condition reads
//! `consent_access` (migration 0024), the grants joined with the bindings and flattened by
//! type, which every change of either rebuilds in its own transaction.

use sqlx::{AnyConnection, Row as _};

use super::search::Sql;

/// Where the index stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub chain_id: i64,
    /// The registry followed (`0x` + 40 lowercase hex digits).
    pub registry: String,
    /// The registry's deployment block: where a full re-read starts.
    pub start_block: i64,
    /// Read through this block.
    pub block_number: i64,
    pub block_hash: String,
    /// The chain head when last synced.
    pub head: i64,
    /// When the index last caught up with the head (ms since the epoch).
    pub synced_at: i64,
}

impl Cursor {
    /// The last block whose grants count: `confirmations` deep under the head, and read.
    pub fn confirmed_through(&self, confirmations: u64) -> i64 {
        (self.head - confirmations as i64 + 1).min(self.block_number)
    }
}

/// The condition that lets patient-compartment data through: a grant to one of `grantees`
/// for `purpose`, effective at the index's block, or the requester's own record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    /// Grantee ids (`0x` + 64 lowercase hex digits) the request acts as.
    pub grantees: Vec<String>,
    /// The request's purpose of use.
    pub purpose: String,
    /// A patient user's own Patient id: always readable.
    pub own_patient: Option<String>,
    /// Grants made in blocks up to this one count (confirmations reached).
    pub confirmed_through: i64,
    /// Now, in seconds since the epoch: grants expiring at or before it do not count.
    pub now_secs: i64,
    /// The block the index had read through: the chain state the decision rests on.
    pub block: i64,
    /// That block's hash, the chain's id and the registry's address: where an auditor finds
    /// that state (and whether a reorganization has replaced the block since).
    pub block_hash: String,
    pub chain_id: i64,
    pub registry: String,
}

/// The index's cursor; `None` before the follower first caught up.
#[tracing::instrument(name = "db.consent_cursor", skip_all)]
pub async fn cursor(conn: &mut AnyConnection) -> Result<Option<Cursor>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT chain_id, registry, start_block, block_number, block_hash, head, synced_at \
         FROM consent_cursor WHERE id = 1",
    )
    .fetch_optional(conn)
    .await?;
    row.map(|row| {
        Ok(Cursor {
            chain_id: row.try_get("chain_id")?,
            registry: row.try_get("registry")?,
            start_block: row.try_get("start_block")?,
            block_number: row.try_get("block_number")?,
            block_hash: row.try_get("block_hash")?,
            head: row.try_get("head")?,
            synced_at: row.try_get("synced_at")?,
        })
    })
    .transpose()
}

/// The condition that `patient` (an SQL expression: a Patient id) has a grant in `grants`
/// covering the type `rt` (a placeholder): one probe of `consent_access`'s primary key (the
/// grants already joined with the bindings and flattened by type), so its cost does not
/// grow with the number of grants. In a statement of one row (`Sql::one_row`) a scalar
/// probe, which PostgreSQL never turns into a hash of every grant that matches the rest, as
/// it may for `EXISTS`.
fn consented(sql: &mut Sql, patient: &str, rt: &str, grants: &Grants) -> String {
    let granted = granted(sql, grants);
    let probe = format!(
        "SELECT 1 FROM consent_access a WHERE a.patient_id = {patient} \
         AND a.resource_type IN ({rt}, '*') AND {granted}"
    );
    if sql.one_row {
        format!("({probe} LIMIT 1) IS NOT NULL")
    } else {
        format!("EXISTS ({probe})")
    }
}

/// What every probe of one statement for `grants` asks of a `consent_access` row `a`
/// besides its patient and type: one of the grantees, the purpose, confirmed, not expired.
/// Bound once per statement (the first probe's placeholders serve the others).
fn granted(sql: &mut Sql, grants: &Grants) -> String {
    if let Some(((grantees, purpose, confirmed, now), text)) = &sql.consent_granted
        && *grantees == grants.grantees
        && *purpose == grants.purpose
        && *confirmed == grants.confirmed_through
        && *now == grants.now_secs
    {
        return text.clone();
    }
    let grantees: Vec<String> = grants.grantees.iter().map(|g| sql.text(g)).collect();
    let purpose = sql.text(&grants.purpose);
    let confirmed = sql.bind(super::search::Bind::Int(grants.confirmed_through));
    let now = sql.bind(super::search::Bind::Int(grants.now_secs));
    let grantees = if grantees.is_empty() {
        "NULL".to_owned()
    } else {
        grantees.join(", ")
    };
    let text = format!(
        "a.grantee IN ({grantees}) AND a.purpose = {purpose} \
         AND a.granted_block <= {confirmed} AND (a.expires_at = 0 OR a.expires_at > {now})"
    );
    let key = (
        grants.grantees.clone(),
        grants.purpose.clone(),
        grants.confirmed_through,
        grants.now_secs,
    );
    sql.consent_granted = Some((key, text.clone()));
    text
}

/// The `consent_access` rows of unrevoked grants whose wallet is bound to a Patient: each
/// opens its types (or `'*'`) to its grantee for its purpose. Completed with a condition on
/// `g` (the grant) or `b` (the binding) whose value is `$1`.
const ACCESS_ROWS: &str = "INSERT INTO consent_access \
     (patient_id, grantee, purpose, resource_type, grant_id, granted_block, expires_at) \
     SELECT b.patient_id, g.grantee, g.purpose, COALESCE(t.resource_type, '*'), g.grant_id, g.granted_block, g.expires_at \
     FROM consent_grant g JOIN patient_wallet b ON b.wallet_address = g.patient_wallet \
     LEFT JOIN consent_grant_type t ON t.grant_id = g.grant_id AND g.all_types = 0 \
     WHERE g.revoked_block IS NULL AND (g.all_types = 1 OR t.resource_type IS NOT NULL)";

/// Makes `consent_access` follow `grant_id` as `consent_grant` now holds it (recorded, or
/// its revocation lifted), in the transaction that changed it.
async fn refresh_access_of_grant(
    conn: &mut AnyConnection,
    grant_id: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM consent_access WHERE grant_id = $1")
        .bind(grant_id)
        .execute(&mut *conn)
        .await?;
    // audited: ACCESS_ROWS is a constant
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "{ACCESS_ROWS} AND g.grant_id = $1"
    )))
    .bind(grant_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Makes `consent_access` follow a binding of `patient_id` made or removed in this
/// transaction (the grants of its wallet open, or close, its record).
pub async fn refresh_access_of_patient(
    conn: &mut AnyConnection,
    patient_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM consent_access WHERE patient_id = $1")
        .bind(patient_id)
        .execute(&mut *conn)
        .await?;
    // audited: ACCESS_ROWS is a constant
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "{ACCESS_ROWS} AND b.patient_id = $1"
    )))
    .bind(patient_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The condition on the row `{alias}` of `resource_type` (in the Patient compartment through
/// `params`): every patient whose compartment holds it has a grant in `grants` (or is the
/// requester). A resource in no patient's compartment (an Observation of a Group) passes.
/// `{alias}` must be a `resource` row, or a row with its `rkey`, `id` and `compartment`.
///
/// Which patients those are, the row's `compartment` says when it names none or one (nearly
/// every resource): a comparison and one probe of `consent_access`. Otherwise (several
/// patients, a Patient reference without an id) the row's Patient references in
/// `idx_reference` are probed, each checked; under `Sql::one_row` the condition is NULL
/// for such a row instead, and the caller checks it again without `one_row`.
///
/// The patients `sql` decides (`Sql::decided_patients`: those a search is restricted to,
/// [`super::search::pinned_patients`]) are decided once instead of once per row. Each is an
/// uncorrelated probe, which PostgreSQL evaluates once per statement (an InitPlan); a row's
/// reference to a decided patient then costs a comparison. The result is the same: whether
/// a patient consented depends on the patient alone, never on the row.
pub fn condition(
    sql: &mut Sql,
    alias: &str,
    resource_type: &str,
    params: &[String],
    grants: &Grants,
) -> String {
    if params.is_empty() && resource_type != "Patient" {
        return "1 = 1".to_owned();
    }
    let mut parts = Vec::new();
    let rt = sql.text(resource_type);
    // (placeholder of the patient's id, its probe)
    let decided: Vec<(String, String)> = sql
        .decided_patients
        .clone()
        .iter()
        .filter(|p| grants.own_patient.as_deref() != Some(p.as_str()))
        .map(|p| {
            let id = sql.text(p);
            let once = consented(sql, &id, &rt, grants);
            (id, once)
        })
        .collect();
    if !params.is_empty() {
        let list: Vec<String> = params.iter().map(|p| sql.text(p)).collect();
        let own = grants.own_patient.as_deref().map(|p| sql.text(p));
        let probe = if sql.one_row {
            "NULL".to_owned()
        } else {
            let own = own
                .as_deref()
                .map(|own| format!(" AND x.target_id <> {own}"))
                .unwrap_or_default();
            let decided: String = decided
                .iter()
                .map(|(id, once)| format!(" AND NOT (x.target_id = {id} AND {once})"))
                .collect();
            let consented = consented(sql, "x.target_id", &rt, grants);
            format!(
                "NOT EXISTS (SELECT 1 FROM idx_reference x WHERE x.rkey = {alias}.rkey AND x.rtype = {rt} \
                 AND x.param IN ({}) AND x.target_type = 'Patient'{own}{decided} AND NOT {consented})",
                list.join(", ")
            )
        };
        // the row's recorded compartment (migration 0034) decides without the probe: no
        // Patient, or the one whose consent it needs; the probe when it is not recorded
        let column = format!("{alias}.compartment");
        let mut cases =
            format!("CASE WHEN {column} IS NULL THEN {probe} WHEN {column} = '' THEN 1 = 1");
        if let Some(own) = &own {
            cases.push_str(&format!(" WHEN {column} = {own} THEN 1 = 1"));
        }
        for (id, once) in &decided {
            cases.push_str(&format!(" WHEN {column} = {id} THEN {once}"));
        }
        let consented = consented(sql, &column, &rt, grants);
        parts.push(format!("{cases} ELSE {consented} END"));
    }
    if resource_type == "Patient" {
        let own = grants
            .own_patient
            .as_deref()
            .map(|p| format!("{alias}.id = {} OR ", sql.text(p)))
            .unwrap_or_default();
        let decided: String = decided
            .iter()
            .map(|(id, once)| format!("({alias}.id = {id} AND {once}) OR "))
            .collect();
        let consented = consented(sql, &format!("{alias}.id"), &rt, grants);
        parts.push(format!("({own}{decided}{consented})"));
    }
    if parts.is_empty() {
        "1 = 1".to_owned()
    } else {
        format!("({})", parts.join(" AND "))
    }
}

/// One grant as a `ConsentGranted` event recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    pub grant_id: i64,
    /// `0x` + 40 lowercase hex digits.
    pub patient_wallet: String,
    /// `0x` + 64 lowercase hex digits.
    pub grantee: String,
    pub purpose: String,
    /// Empty: every resource type.
    pub resource_types: Vec<String>,
    /// Seconds since the epoch; 0: until revoked.
    pub expires_at: i64,
    pub block: i64,
    pub tx: String,
}

/// What one block range of the registry's events changes in the index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub grants: Vec<GrantRecord>,
    /// `(grant_id, block, tx)` of each revocation.
    pub revocations: Vec<(i64, i64, String)>,
    /// `(number, hash)` of the blocks that held the events.
    pub blocks: Vec<(i64, String)>,
}

/// How many block hashes are kept to find where a reorg forked off.
const KEPT_BLOCK_HASHES: i64 = 256;

/// Starts (or restarts) the index for `registry`: everything recorded of another registry or
/// chain goes, and reading starts after `start_block - 1` (whose hash is `start_hash`).
/// `synced_at` 0: not caught up yet.
pub async fn reset(
    conn: &mut AnyConnection,
    chain_id: i64,
    registry: &str,
    start_block: i64,
    start_hash: &str,
) -> Result<(), sqlx::Error> {
    for table in [
        "consent_access",
        "consent_grant_type",
        "consent_grant",
        "consent_block",
        "consent_cursor",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query(
        "INSERT INTO consent_cursor (id, chain_id, registry, start_block, block_number, block_hash, head, synced_at) \
         VALUES (1, $1, $2, $3, $4, $5, $4, 0)",
    )
    .bind(chain_id)
    .bind(registry)
    .bind(start_block)
    .bind(start_block - 1)
    .bind(start_hash)
    .execute(&mut *conn)
    .await?;
    remember_block(conn, start_block - 1, start_hash).await
}

async fn remember_block(
    conn: &mut AnyConnection,
    number: i64,
    hash: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM consent_block WHERE block_number = $1")
        .bind(number)
        .execute(&mut *conn)
        .await?;
    sqlx::query("INSERT INTO consent_block (block_number, block_hash) VALUES ($1, $2)")
        .bind(number)
        .bind(hash)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Records `changes` (read from the blocks after the cursor through `block`) and moves the
/// cursor to `block`; `caught_up_at` (ms since the epoch) when `block` was the head, so the
/// index is current as of then.
#[tracing::instrument(name = "db.consent_apply", skip_all)]
pub async fn apply(
    conn: &mut AnyConnection,
    changes: &Changes,
    block: (i64, &str),
    head: i64,
    caught_up_at: Option<i64>,
) -> Result<(), sqlx::Error> {
    for grant in &changes.grants {
        sqlx::query(
            "INSERT INTO consent_grant (grant_id, patient_wallet, grantee, purpose, all_types, expires_at, granted_block, granted_tx) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(grant.grant_id)
        .bind(&grant.patient_wallet)
        .bind(&grant.grantee)
        .bind(&grant.purpose)
        .bind(i64::from(grant.resource_types.is_empty()))
        .bind(grant.expires_at)
        .bind(grant.block)
        .bind(&grant.tx)
        .execute(&mut *conn)
        .await?;
        for resource_type in &grant.resource_types {
            sqlx::query(
                "INSERT INTO consent_grant_type (grant_id, resource_type) VALUES ($1, $2) \
                 ON CONFLICT (grant_id, resource_type) DO NOTHING",
            )
            .bind(grant.grant_id)
            .bind(resource_type)
            .execute(&mut *conn)
            .await?;
        }
        refresh_access_of_grant(conn, grant.grant_id).await?;
    }
    for (grant_id, revoked_block, tx) in &changes.revocations {
        sqlx::query(
            "UPDATE consent_grant SET revoked_block = $2, revoked_tx = $3 \
             WHERE grant_id = $1 AND revoked_block IS NULL",
        )
        .bind(grant_id)
        .bind(revoked_block)
        .bind(tx)
        .execute(&mut *conn)
        .await?;
        sqlx::query("DELETE FROM consent_access WHERE grant_id = $1")
            .bind(grant_id)
            .execute(&mut *conn)
            .await?;
    }
    for (number, hash) in &changes.blocks {
        remember_block(conn, *number, hash).await?;
    }
    remember_block(conn, block.0, block.1).await?;
    sqlx::query("DELETE FROM consent_block WHERE block_number < $1")
        .bind(block.0 - KEPT_BLOCK_HASHES)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE consent_cursor SET block_number = $1, block_hash = $2, head = $3, \
         synced_at = CASE WHEN $4 > 0 THEN $4 ELSE synced_at END WHERE id = 1",
    )
    .bind(block.0)
    .bind(block.1)
    .bind(head)
    .bind(caught_up_at.unwrap_or(0))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The block hashes the index remembers, newest first.
pub async fn known_blocks(conn: &mut AnyConnection) -> Result<Vec<(i64, String)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT block_number, block_hash FROM consent_block ORDER BY block_number DESC",
    )
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("block_number")?, row.try_get("block_hash")?)))
        .collect()
}

/// Undoes everything recorded from blocks after `block` (a reorg replaced them): their
/// grants go, their revocations are lifted, and the cursor returns to `block`.
pub async fn roll_back(conn: &mut AnyConnection, block: (i64, &str)) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM consent_access WHERE granted_block > $1")
        .bind(block.0)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "DELETE FROM consent_grant_type WHERE grant_id IN \
         (SELECT grant_id FROM consent_grant WHERE granted_block > $1)",
    )
    .bind(block.0)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM consent_grant WHERE granted_block > $1")
        .bind(block.0)
        .execute(&mut *conn)
        .await?;
    let reopened: Vec<i64> =
        sqlx::query_scalar("SELECT grant_id FROM consent_grant WHERE revoked_block > $1")
            .bind(block.0)
            .fetch_all(&mut *conn)
            .await?;
    sqlx::query(
        "UPDATE consent_grant SET revoked_block = NULL, revoked_tx = NULL WHERE revoked_block > $1",
    )
    .bind(block.0)
    .execute(&mut *conn)
    .await?;
    for grant_id in reopened {
        refresh_access_of_grant(conn, grant_id).await?;
    }
    sqlx::query("DELETE FROM consent_block WHERE block_number > $1")
        .bind(block.0)
        .execute(&mut *conn)
        .await?;
    sqlx::query("UPDATE consent_cursor SET block_number = $1, block_hash = $2 WHERE id = 1")
        .bind(block.0)
        .bind(block.1)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Marks the index current as of `now_ms` with the head at `head` (nothing new to read).
pub async fn touch(conn: &mut AnyConnection, head: i64, now_ms: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE consent_cursor SET head = $1, synced_at = $2 WHERE id = 1")
        .bind(head)
        .bind(now_ms)
        .execute(conn)
        .await?;
    Ok(())
}

/// The wallet bound to `patient_id`.
pub async fn wallet_of_patient(
    conn: &mut AnyConnection,
    patient_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT wallet_address FROM patient_wallet WHERE patient_id = $1")
        .bind(patient_id)
        .fetch_optional(conn)
        .await
}

/// A grant as the index holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedGrant {
    pub record: GrantRecord,
    /// The revoking block and transaction, once revoked.
    pub revoked: Option<(i64, String)>,
}

/// The Patient bound to `wallet`.
pub async fn patient_of_wallet(
    conn: &mut AnyConnection,
    wallet: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT patient_id FROM patient_wallet WHERE wallet_address = $1")
        .bind(wallet)
        .fetch_optional(conn)
        .await
}

const GRANT_COLUMNS: &str = "grant_id, patient_wallet, grantee, purpose, expires_at, granted_block, \
                             granted_tx, revoked_block, revoked_tx";

/// One grant of the index.
pub async fn grant(
    conn: &mut AnyConnection,
    grant_id: i64,
) -> Result<Option<IndexedGrant>, sqlx::Error> {
    // audited: GRANT_COLUMNS is a constant
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {GRANT_COLUMNS} FROM consent_grant WHERE grant_id = $1"
    )))
    .bind(grant_id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(indexed(conn, rows).await?.pop())
}

/// Where a grant stands for the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantState {
    Active,
    /// Its block is not yet confirmed.
    Pending,
    Revoked,
    Expired,
}

impl IndexedGrant {
    /// Its state at `now_secs`, with grants confirmed through `confirmed_through` (none
    /// confirmed before the index has a cursor).
    pub fn state(&self, confirmed_through: Option<i64>, now_secs: i64) -> GrantState {
        let r = &self.record;
        if self.revoked.is_some() {
            GrantState::Revoked
        } else if r.expires_at != 0 && r.expires_at <= now_secs {
            GrantState::Expired
        } else if confirmed_through.is_none_or(|c| r.block > c) {
            GrantState::Pending
        } else {
            GrantState::Active
        }
    }
}

/// The grants `wallet` made, newest first.
pub async fn grants_of_wallet(
    conn: &mut AnyConnection,
    wallet: &str,
) -> Result<Vec<IndexedGrant>, sqlx::Error> {
    // audited: GRANT_COLUMNS is a constant
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {GRANT_COLUMNS} FROM consent_grant WHERE patient_wallet = $1 ORDER BY grant_id DESC"
    )))
    .bind(wallet)
    .fetch_all(&mut *conn)
    .await?;
    indexed(conn, rows).await
}

/// Grant rows with their resource types.
async fn indexed(
    conn: &mut AnyConnection,
    rows: Vec<sqlx::any::AnyRow>,
) -> Result<Vec<IndexedGrant>, sqlx::Error> {
    let mut grants = Vec::new();
    for row in rows {
        let grant_id: i64 = row.try_get("grant_id")?;
        let resource_types: Vec<String> = sqlx::query_scalar(
            "SELECT resource_type FROM consent_grant_type WHERE grant_id = $1 ORDER BY resource_type",
        )
        .bind(grant_id)
        .fetch_all(&mut *conn)
        .await?;
        let revoked_block: Option<i64> = row.try_get("revoked_block")?;
        let revoked_tx: Option<String> = row.try_get("revoked_tx")?;
        grants.push(IndexedGrant {
            record: GrantRecord {
                grant_id,
                patient_wallet: row.try_get("patient_wallet")?,
                grantee: row.try_get("grantee")?,
                purpose: row.try_get("purpose")?,
                resource_types,
                expires_at: row.try_get("expires_at")?,
                block: row.try_get("granted_block")?,
                tx: row.try_get("granted_tx")?,
            },
            revoked: revoked_block.zip(revoked_tx),
        });
    }
    Ok(grants)
}

/// One request served under break-the-glass.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakGlassAccess {
    /// ms since the epoch.
    pub at: i64,
    pub user_id: String,
    pub client_id: String,
    pub method: String,
    pub path: String,
    pub status: i64,
}

/// The break-the-glass accesses to `patient_id`'s record, newest first.
pub async fn break_glass_of_patient(
    conn: &mut AnyConnection,
    patient_id: &str,
) -> Result<Vec<BreakGlassAccess>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT at, user_id, client_id, method, route, status FROM break_glass_access \
         WHERE patient_id = $1 ORDER BY at DESC",
    )
    .bind(patient_id)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(BreakGlassAccess {
                at: row.try_get("at")?,
                user_id: row.try_get("user_id")?,
                client_id: row.try_get("client_id")?,
                method: row.try_get("method")?,
                path: row.try_get("route")?,
                status: row.try_get("status")?,
            })
        })
        .collect()
}
