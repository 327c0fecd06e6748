//! Writing the search index rows of a resource version (`idx_*` tables).

use fhir_profiles::search::{IndexEntry, IndexValue};
use fhir_profiles::text::Word;
use sqlx::{AnyConnection, AssertSqlSafe};

use super::search::{Bind, Sql};

/// Rows per INSERT statement: well under PostgreSQL's 65,535 bind parameters.
const ROWS_PER_STATEMENT: usize = 500;

const TABLES: [&str; 7] = [
    "idx_string",
    "idx_token",
    "idx_reference",
    "idx_date",
    "idx_number",
    "idx_quantity",
    "idx_uri",
];

/// Removes every index row of a resource.
pub(super) async fn delete(conn: &mut AnyConnection, rkey: i64) -> Result<(), sqlx::Error> {
    for table in TABLES.into_iter().chain(["idx_word"]) {
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

/// Inserts the index rows of one or many resources, batched per table.
pub(super) async fn insert(
    conn: &mut AnyConnection,
    resources: &[Rows<'_>],
) -> Result<(), sqlx::Error> {
    let mut by_table: [Vec<(i64, &str, &IndexEntry)>; 7] = Default::default();
    for rows in resources {
        for entry in rows.entries {
            let table = match entry.value {
                IndexValue::String { .. } => 0,
                IndexValue::Token { .. } => 1,
                IndexValue::Reference { .. } => 2,
                IndexValue::Date { .. } => 3,
                IndexValue::Number { .. } => 4,
                IndexValue::Quantity { .. } => 5,
                IndexValue::Uri { .. } => 6,
            };
            by_table[table].push((rows.rkey, rows.resource_type, entry));
        }
    }
    for (table, rows) in TABLES.iter().zip(by_table) {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let columns = match *table {
                "idx_string" => "norm, exact",
                "idx_token" => "system, code, text",
                "idx_reference" => "target_type, target_id, version, url",
                "idx_date" => "lo, hi",
                "idx_number" => "value, lo, hi",
                "idx_quantity" => "value, lo, hi, system, code, unit",
                _ => "value",
            };
            // QueryBuilder<Any> writes `?` placeholders, which PostgreSQL refuses: number them
            let mut sql = Sql::default();
            let mut rows_sql = Vec::with_capacity(chunk.len());
            for (rkey, resource_type, entry) in chunk {
                let mut values = vec![
                    sql.bind(Bind::Int(*rkey)),
                    sql.bind(Bind::Text((*resource_type).to_owned())),
                    sql.bind(Bind::Text(entry.param.clone())),
                    sql.bind(Bind::Int(i64::from(entry.group))),
                ];
                values.extend(binds(entry).into_iter().map(|b| sql.bind(b)));
                rows_sql.push(format!("({})", values.join(", ")));
            }
            sql.text = format!(
                "INSERT INTO {table} (rkey, rtype, param, grp, {columns}) VALUES {}",
                rows_sql.join(", ")
            );
            sql.query().execute(&mut *conn).await?;
        }
    }
    insert_words(conn, resources).await
}

/// Inserts the `_content`/`_text` word rows of one or many resources.
async fn insert_words(conn: &mut AnyConnection, resources: &[Rows<'_>]) -> Result<(), sqlx::Error> {
    let rows: Vec<(i64, &str, &Word)> = resources
        .iter()
        .flat_map(|r| r.words.iter().map(move |w| (r.rkey, r.resource_type, w)))
        .collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut sql = Sql::default();
        let values: Vec<String> = chunk
            .iter()
            .map(|(rkey, resource_type, word)| {
                let key = sql.bind(Bind::Int(*rkey));
                let rtype = sql.bind(Bind::Text((*resource_type).to_owned()));
                let text = sql.bind(Bind::Text(word.word.clone()));
                let narrative = i32::from(word.narrative);
                format!("({key}, {rtype}, {text}, {narrative})")
            })
            .collect();
        sql.text = format!(
            "INSERT INTO idx_word (rkey, rtype, word, narrative) VALUES {}",
            values.join(", ")
        );
        sql.query().execute(&mut *conn).await?;
    }
    Ok(())
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
