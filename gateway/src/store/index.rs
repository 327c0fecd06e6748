//! Writing the search index rows of a resource version (`idx_*` tables).

use fhir_profiles::search::{IndexEntry, IndexValue};
use fhir_profiles::text::Word;
use sqlx::{AnyConnection, AssertSqlSafe};

use super::search::{Bind, Sql};
use super::{Backend, bulk};

/// The parameters every resource's `resource` row answers from its own columns (`id`,
/// `last_updated`): searchable, with no index rows.
const ANSWERED_BY_THE_RESOURCE_ROW: [&str; 2] = ["_id", "_lastUpdated"];

/// Whether the search parameter `code` of `resource_type` has index rows. Not those that the
/// `resource` row answers, and not an AuditEvent's `entity-type` and `entity-role`: the
/// gateway's records give every entity the type and role its kind already says (a Patient is
/// a person and the patient, a search's query the query, anything else a domain resource),
/// so they would add four rows to every record and find nothing that `entity`, `patient` and
/// `subtype` do not.
pub fn is_indexed(resource_type: &str, code: &str) -> bool {
    match code {
        _ if ANSWERED_BY_THE_RESOURCE_ROW.contains(&code) => false,
        "entity-type" | "entity-role" => resource_type != crate::audit::AUDIT_EVENT,
        _ => true,
    }
}

/// Whether searches by `code` on `resource_type` are answered: by its index rows or by the
/// `resource` row. Search refuses the others (`interaction::search`), and the
/// CapabilityStatement does not offer them.
pub fn is_supported(resource_type: &str, code: &str) -> bool {
    is_indexed(resource_type, code) || ANSWERED_BY_THE_RESOURCE_ROW.contains(&code)
}

/// The value of `resource.compartment` (migration 0034) for a version of `resource_type`
/// whose index rows are `entries` (none for a deletion): what the consent check would find
/// among those rows, its references to Patients through the type's compartment
/// parameters. `Some("")`: none; `Some(id)`: exactly that Patient; `None` (the check probes
/// the rows): several Patients, or a Patient reference without an id. Recorded once per
/// version: a change to the compartment's parameters (`fhir_profiles::compartment`, the R4
/// CompartmentDefinition) or to how references are indexed needs a migration that records
/// it anew for the stored rows, as 0034's backfill did (its list is held to the definition
/// by a test below).
pub(super) fn compartment_of(resource_type: &str, entries: &[IndexEntry]) -> Option<String> {
    let params = fhir_profiles::compartment::patient_compartment_params(resource_type);
    let mut patient: Option<&str> = None;
    for entry in entries {
        let IndexValue::Reference {
            target_type: Some(target_type),
            target_id,
            ..
        } = &entry.value
        else {
            continue;
        };
        if target_type != "Patient" || !params.contains(&entry.param) {
            continue;
        }
        match (target_id.as_deref(), patient) {
            (None, _) => return None,
            (Some(id), Some(seen)) if id != seen => return None,
            (Some(id), _) => patient = Some(id),
        }
    }
    Some(patient.unwrap_or_default().to_owned())
}

/// Rows per INSERT statement: well under PostgreSQL's 65,535 bind parameters.
const ROWS_PER_STATEMENT: usize = 500;

/// Bind parameters at most in one PostgreSQL statement that inserts into several tables.
pub(super) const BINDS_PER_COMBINED_STATEMENT: usize = 30_000;

const TABLES: [&str; 7] = [
    "idx_string",
    "idx_token",
    "idx_reference",
    "idx_date",
    "idx_number",
    "idx_quantity",
    "idx_uri",
];

/// Every table holding index rows of a resource.
pub(super) const TABLES_WITH_WORDS: [&str; 8] = [
    TABLES[0], TABLES[1], TABLES[2], TABLES[3], TABLES[4], TABLES[5], TABLES[6], "idx_word",
];

/// The position of `idx_word` in [`TABLES_WITH_WORDS`].
const WORDS: usize = TABLES.len();

/// Removes every index row of a resource.
pub(super) async fn delete(conn: &mut AnyConnection, rkey: i64) -> Result<(), sqlx::Error> {
    for table in TABLES_WITH_WORDS {
        // audited: `table` comes from the constant TABLES
        sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE rkey = $1"
        )))
        .bind(rkey)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The index rows of one resource version.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rows<'a> {
    pub rkey: i64,
    pub resource_type: &'a str,
    pub entries: &'a [IndexEntry],
    /// The words for `_content` and `_text` (`idx_word`).
    pub words: &'a [Word],
}

/// Inserts the index rows of one or many resources, batched per table: on PostgreSQL one
/// statement, an `INSERT … SELECT * FROM unnest(…)` per table as data-modifying CTEs
/// ([`bulk`]); on SQLite a multi-row INSERT per table and [`ROWS_PER_STATEMENT`] rows.
pub(super) async fn insert(
    conn: &mut AnyConnection,
    resources: &[Rows<'_>],
) -> Result<(), sqlx::Error> {
    // the rows of each table of TABLES_WITH_WORDS
    let mut by_table: [Vec<Vec<Bind>>; 8] = Default::default();
    for rows in resources {
        for entry in rows.entries {
            let mut values = vec![
                Bind::Int(rows.rkey),
                Bind::Text(rows.resource_type.to_owned()),
                Bind::Text(entry.param.clone()),
                Bind::Int(i64::from(entry.group)),
            ];
            values.extend(binds(entry));
            by_table[table_number(&entry.value)].push(values);
        }
        for word in rows.words {
            by_table[WORDS].push(vec![
                Bind::Int(rows.rkey),
                Bind::Text(rows.resource_type.to_owned()),
                Bind::Text(word.word.clone()),
                Bind::Int(i64::from(word.narrative)),
            ]);
        }
    }
    let postgres = Backend::of(conn) == Backend::Postgres;
    let mut combined = Sql::default();
    let mut ctes = Vec::new();
    for (table, rows) in TABLES_WITH_WORDS.into_iter().zip(by_table) {
        if postgres {
            if !rows.is_empty() {
                let insert = bulk::insert_rows(
                    &mut combined,
                    true,
                    table,
                    bulk_columns(table),
                    rows.into_iter(),
                );
                ctes.push(format!("i{} AS ({insert})", ctes.len()));
            }
            continue;
        }
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let mut sql = Sql::default();
            let chunk = rows.by_ref().take(ROWS_PER_STATEMENT);
            sql.text = bulk::insert_rows(&mut sql, false, table, bulk_columns(table), chunk);
            sql.query().execute(&mut *conn).await?;
        }
    }
    if !ctes.is_empty() {
        combined.text = format!("WITH {} SELECT 1", ctes.join(", "));
        combined.query().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Every column of an index table with its type (its rows' values in [`insert`]; after
/// `rkey, rtype`, the columns of [`columns_of`]).
fn bulk_columns(table: &str) -> &'static [(&'static str, bulk::Kind)] {
    use bulk::Kind::{BigInt, Double, Integer, Text};
    match table {
        "idx_string" => &[
            ("rkey", BigInt),
            ("rtype", Text),
            ("param", Text),
            ("grp", Integer),
            ("norm", Text),
            ("exact", Text),
        ],
        "idx_token" => &[
            ("rkey", BigInt),
            ("rtype", Text),
            ("param", Text),
            ("grp", Integer),
            ("system", Text),
            ("code", Text),
            ("text", Text),
        ],
        "idx_reference" => &[
            ("rkey", BigInt),
            ("rtype", Text),
            ("param", Text),
            ("grp", Integer),
            ("target_type", Text),
            ("target_id", Text),
            ("version", Text),
            ("url", Text),
        ],
        "idx_date" => &[
            ("rkey", BigInt),
            ("rtype", Text),
            ("param", Text),
            ("grp", Integer),
            ("lo", BigInt),
            ("hi", BigInt),
        ],
        "idx_number" => &[
            ("rkey", BigInt),
            ("rtype", Text),
            ("param", Text),
            ("grp", Integer),
            ("value", Double),
            ("lo", Double),
            ("hi", Double),
        ],
        "idx_quantity" => &[
            ("rkey", BigInt),
            ("rtype", Text),
            ("param", Text),
            ("grp", Integer),
            ("value", Double),
            ("lo", Double),
            ("hi", Double),
            ("system", Text),
            ("code", Text),
            ("unit", Text),
        ],
        "idx_uri" => &[
            ("rkey", BigInt),
            ("rtype", Text),
            ("param", Text),
            ("grp", Integer),
            ("value", Text),
        ],
        _ => &[
            ("rkey", BigInt),
            ("rtype", Text),
            ("word", Text),
            ("narrative", Integer),
        ],
    }
}

/// The columns of an index table after `rkey, rtype` (the values [`binds`] gives follow
/// `param, grp`).
fn columns_of(table: &str) -> impl Iterator<Item = &'static str> {
    bulk_columns(table)[2..].iter().map(|(name, _)| *name)
}

/// Bind parameters at most that [`replace_ctes`] adds for `rows`.
pub(super) fn replace_binds(rows: &Rows<'_>) -> usize {
    rows.entries.len() * 8 + rows.words.len() * 2 + 2 * TABLES_WITH_WORDS.len()
}

/// The index rows a resource has before [`replace_ctes`] replaces them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stored {
    /// None: the resource is new.
    Nothing,
    /// Perhaps some, in the tables of this mask only (bit n: the n-th of
    /// [`TABLES_WITH_WORDS`]).
    In(u8),
}

impl Stored {
    /// What a resource in the state `current` may have (`resource.index_tables`; any table
    /// when that is not known).
    pub(crate) fn of(current: &super::Current) -> Stored {
        Stored::In(current.index_tables.unwrap_or(u8::MAX))
    }

    fn may_have(self, table: usize) -> bool {
        match self {
            Stored::Nothing => false,
            Stored::In(mask) => mask & (1 << table) != 0,
        }
    }
}

/// The mask of the tables (bit n: the n-th of [`TABLES_WITH_WORDS`]) that `rows` put rows
/// in: what `resource.index_tables` says once they are a resource's rows.
pub(super) fn tables_of(rows: &Rows<'_>) -> u8 {
    let entries = rows
        .entries
        .iter()
        .fold(0u8, |mask, entry| mask | 1 << table_number(&entry.value));
    if rows.words.is_empty() {
        entries
    } else {
        entries | 1 << WORDS
    }
}

/// PostgreSQL: data-modifying CTEs (appended to `ctes`, their values bound in `sql`) that
/// make the index rows of one resource exactly `rows`. `rkey` is the SQL of the resource's
/// key (a placeholder, or `(SELECT rkey FROM r)` for a row inserted by an earlier CTE).
/// A table that `stored` says holds no row of the resource is not looked at, unless there
/// are new rows to insert into it; in a table that may hold rows, only the difference is written:
/// a stored row that is not among the new ones is deleted, a new row that is not stored is
/// inserted, and a row in both is left alone. An update that changes a name thus touches
/// one or two rows rather than every row of the resource, which leaves no dead tuples behind
/// for searches (and the planner's look at index ends) to step over. All CTEs of a statement
/// see the rows as they were before it, so the insert's `NOT EXISTS` compares with the
/// stored set, not with what the delete leaves. Rows are compared as a set: searches only
/// ever ask whether a row exists (`EXISTS`, `MIN`/`MAX`), so a repeated row changes nothing.
pub(super) fn replace_ctes(
    sql: &mut Sql,
    ctes: &mut Vec<String>,
    rkey: &str,
    stored: Stored,
    rows: &Rows<'_>,
) {
    let mut by_table: [Vec<Vec<Bind>>; 8] = Default::default();
    for entry in rows.entries {
        let table = table_number(&entry.value);
        let mut values = vec![
            Bind::Text(entry.param.clone()),
            Bind::Int(i64::from(entry.group)),
        ];
        values.extend(binds(entry));
        by_table[table].push(values);
    }
    for word in rows.words {
        by_table[WORDS].push(vec![
            Bind::Text(word.word.clone()),
            Bind::Int(i64::from(word.narrative)),
        ]);
    }
    let rtype =
        (!rows.entries.is_empty() || !rows.words.is_empty()).then(|| sql.text(rows.resource_type));
    for (number, (table, values)) in TABLES_WITH_WORDS.iter().zip(by_table).enumerate() {
        let existing = stored.may_have(number);
        if values.is_empty() {
            if existing {
                ctes.push(format!(
                    "xd{number} AS (DELETE FROM {table} WHERE rkey = {rkey})"
                ));
            }
            continue;
        }
        let rtype = rtype.as_deref().unwrap_or_default();
        let columns: Vec<&str> = columns_of(table).collect();
        let list = columns.join(", ");
        let rows: Vec<String> = values
            .into_iter()
            .map(|row| {
                let row: Vec<String> = row.into_iter().map(|b| sql.bind(b)).collect();
                format!("({})", row.join(", "))
            })
            .collect();
        ctes.push(format!(
            "xn{number} ({list}) AS (VALUES {})",
            rows.join(", ")
        ));
        if existing {
            let stored: Vec<String> = columns.iter().map(|c| format!("o.{c}")).collect();
            let new: Vec<String> = columns.iter().map(|c| format!("n.{c}")).collect();
            let same = format!(
                "({}) IS NOT DISTINCT FROM ({})",
                stored.join(", "),
                new.join(", ")
            );
            ctes.push(format!(
                "xd{number} AS (DELETE FROM {table} o WHERE o.rkey = {rkey} \
                 AND NOT EXISTS (SELECT 1 FROM xn{number} n WHERE {same}))"
            ));
            ctes.push(format!(
                "xi{number} AS (INSERT INTO {table} (rkey, rtype, {list}) \
                 SELECT {rkey}, {rtype}, n.* FROM xn{number} n WHERE NOT EXISTS \
                 (SELECT 1 FROM {table} o WHERE o.rkey = {rkey} AND {same}))"
            ));
        } else {
            ctes.push(format!(
                "xi{number} AS (INSERT INTO {table} (rkey, rtype, {list}) \
                 SELECT {rkey}, {rtype}, n.* FROM xn{number} n)"
            ));
        }
    }
}

/// The position in [`TABLES`] of the table an entry goes to.
fn table_number(value: &IndexValue) -> usize {
    match value {
        IndexValue::String { .. } => 0,
        IndexValue::Token { .. } => 1,
        IndexValue::Reference { .. } => 2,
        IndexValue::Date { .. } => 3,
        IndexValue::Number { .. } => 4,
        IndexValue::Quantity { .. } => 5,
        IndexValue::Uri { .. } => 6,
    }
}

/// The values of an index row after its common columns.
fn binds(entry: &IndexEntry) -> Vec<Bind> {
    let text = |v: &Option<String>| v.clone().map_or(Bind::Null, Bind::Text);
    match &entry.value {
        IndexValue::String { normalized, exact } => {
            vec![Bind::Text(normalized.clone()), Bind::Text(exact.clone())]
        }
        IndexValue::Token {
            system,
            code,
            text: display,
        } => vec![text(system), text(code), text(display)],
        IndexValue::Reference {
            target_type,
            target_id,
            version,
            url,
        } => vec![text(target_type), text(target_id), text(version), text(url)],
        IndexValue::Date { start, end } => vec![Bind::Int(*start), Bind::Int(*end)],
        IndexValue::Number { value, low, high } => {
            vec![Bind::Float(*value), Bind::Float(*low), Bind::Float(*high)]
        }
        IndexValue::Quantity {
            value,
            low,
            high,
            system,
            code,
            unit,
        } => vec![
            Bind::Float(*value),
            Bind::Float(*low),
            Bind::Float(*high),
            text(system),
            text(code),
            text(unit),
        ],
        IndexValue::Uri { value } => vec![Bind::Text(value.clone())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(resource_type: &str, resource: &str) -> Vec<IndexEntry> {
        let json = crate::resource::parse_json(resource.as_bytes(), 100).expect("JSON");
        fhir_profiles::search::index_entries(resource_type, &json)
    }

    fn reference(param: &str, target_type: &str, target_id: Option<&str>) -> IndexEntry {
        IndexEntry {
            param: param.to_owned(),
            group: 0,
            value: IndexValue::Reference {
                target_type: Some(target_type.to_owned()),
                target_id: target_id.map(str::to_owned),
                version: None,
                url: None,
            },
        }
    }

    /// The `(type, parameter)` pairs of migration 0034's backfill.
    fn backfill_pairs(migration: &str) -> std::collections::BTreeSet<(String, String)> {
        let values = &migration[migration.find("(VALUES").expect("the list")..];
        let values = &values[..values.find("UPDATE").expect("the list's end")];
        values
            .split("('")
            .skip(1)
            .map(|pair| {
                let pair = &pair[..pair.find("')").expect("a pair")];
                let (t, p) = pair.split_once("', '").expect("two values");
                (t.to_owned(), p.to_owned())
            })
            .collect()
    }

    #[test]
    fn the_backfill_of_recorded_compartments_uses_the_compartment_definition() {
        let expected: std::collections::BTreeSet<(String, String)> =
            fhir_profiles::compartment::patient_compartment_types()
                .flat_map(|t| {
                    fhir_profiles::compartment::patient_compartment_params(t)
                        .iter()
                        .map(move |p| (t.to_owned(), p.clone()))
                })
                .collect();
        assert_eq!(expected.len(), 100);
        for migration in [
            include_str!("../../migrations/postgres/0034_compartment.sql"),
            include_str!("../../migrations/sqlite/0034_compartment.sql"),
        ] {
            assert_eq!(backfill_pairs(migration), expected);
        }
    }

    #[test]
    fn the_compartment_is_the_one_patient_the_compartment_parameters_reference() {
        let of = |t: &str, r: &str| compartment_of(t, &entries(t, r));
        let observation = r#"{"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient/a"}, "performer": [{"reference": "Patient/a"}],
            "focus": [{"reference": "Patient/z"}]}"#;
        assert_eq!(of("Observation", observation), Some("a".to_owned()));
        let two = r#"{"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient/a"}, "performer": [{"reference": "Patient/b"}]}"#;
        assert_eq!(
            of("Observation", two),
            None,
            "two patients: the rows decide"
        );
        let none = r#"{"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Group/g"}, "focus": [{"reference": "Patient/z"}]}"#;
        assert_eq!(of("Observation", none), Some(String::new()));
        let linked = r#"{"resourceType": "Patient", "id": "p",
            "link": [{"other": {"reference": "Patient/q"}, "type": "seealso"}]}"#;
        assert_eq!(of("Patient", linked), Some("q".to_owned()));
        assert_eq!(
            of(
                "Organization",
                r#"{"resourceType": "Organization", "name": "x"}"#
            ),
            Some(String::new())
        );
        assert_eq!(
            compartment_of("Observation", &[]),
            Some(String::new()),
            "a deletion"
        );
        let without_id = [
            reference("subject", "Patient", Some("a")),
            reference("performer", "Patient", None),
        ];
        assert_eq!(compartment_of("Observation", &without_id), None);
    }
}
