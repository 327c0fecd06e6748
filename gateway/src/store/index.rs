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

/// Inserts the index rows of a resource, batched per table.
pub(super) async fn insert(
    conn: &mut AnyConnection,
    rkey: i64,
    resource_type: &str,
    entries: &[IndexEntry],
) -> Result<(), sqlx::Error> {
    let mut by_table: [Vec<&IndexEntry>; 7] = Default::default();
    for entry in entries {
        let table = match entry.value {
            IndexValue::String { .. } => 0,
            IndexValue::Token { .. } => 1,
            IndexValue::Reference { .. } => 2,
            IndexValue::Date { .. } => 3,
            IndexValue::Number { .. } => 4,
            IndexValue::Quantity { .. } => 5,
            IndexValue::Uri { .. } => 6,
        };
        by_table[table].push(entry);
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
            for entry in chunk {
                let mut values = vec![
                    sql.bind(Bind::Int(rkey)),
                    sql.bind(Bind::Text(resource_type.to_owned())),
                    sql.bind(Bind::Text(entry.param.clone())),
                    sql.bind(Bind::Int(i64::from(entry.group))),
                ];
                let text = |v: &Option<String>| v.clone().map_or(Bind::Null, Bind::Text);
                let binds: Vec<Bind> = match &entry.value {
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
                    } => {
                        vec![text(target_type), text(target_id), text(version), text(url)]
                    }
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
                };
                values.extend(binds.into_iter().map(|b| sql.bind(b)));
                rows_sql.push(format!("({})", values.join(", ")));
            }
            sql.text = format!(
                "INSERT INTO {table} (rkey, rtype, param, grp, {columns}) VALUES {}",
                rows_sql.join(", ")
            );
            sql.query().execute(&mut *conn).await?;
        }
    }
    Ok(())
}

/// Inserts the words of a resource (`_text`, `_content`) into `idx_word`.
pub(super) async fn insert_words(
    conn: &mut AnyConnection,
    rkey: i64,
    resource_type: &str,
    words: &[Word],
) -> Result<(), sqlx::Error> {
    for chunk in words.chunks(ROWS_PER_STATEMENT) {
        let mut sql = Sql::default();
        // the same rkey and type for every row
        let key = sql.bind(Bind::Int(rkey));
        let rtype = sql.bind(Bind::Text(resource_type.to_owned()));
        let rows: Vec<String> = chunk
            .iter()
            .map(|word| {
                let text = sql.bind(Bind::Text(word.word.clone()));
                let narrative = if word.narrative { 1 } else { 0 };
                format!("({key}, {rtype}, {text}, {narrative})")
            })
            .collect();
        sql.text = format!(
            "INSERT INTO idx_word (rkey, rtype, word, narrative) VALUES {}",
            rows.join(", ")
        );
        sql.query().execute(&mut *conn).await?;
    }
    Ok(())
}
