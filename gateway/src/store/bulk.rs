//! Many rows in one PostgreSQL `INSERT` whose text does not depend on how many: each column's
//! values bound as one array (`INSERT INTO t (a, b) SELECT * FROM unnest($1::bigint[],
//! $2::text[])`).
//!
//! A multi-row `VALUES` list with a bind per value is a new statement text for every row
//! count, parsed and planned each time: for the thousands of rows of an import batch that was
//! about a third of PostgreSQL's time (BENCHMARKS.md, "Bulk Data import"). An array per
//! column is one bind, and the statement is prepared once per connection. sqlx's `Any` driver
//! has no array type, so each array goes as its text form (`{1,2}`, `{"a","b",NULL}`), which
//! PostgreSQL reads with the element type's input function.

use std::fmt::Write as _;

use super::search::{Bind, Sql};

/// The PostgreSQL type of a column's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    BigInt,
    Integer,
    Double,
    Text,
    Bytes,
}

impl Kind {
    fn array_type(self) -> &'static str {
        match self {
            Kind::BigInt => "bigint[]",
            Kind::Integer => "integer[]",
            Kind::Double => "double precision[]",
            Kind::Text => "text[]",
            Kind::Bytes => "bytea[]",
        }
    }
}

/// Rows, column by column, as array literals under construction.
#[derive(Debug)]
pub(crate) struct Columns {
    names: &'static [(&'static str, Kind)],
    arrays: Vec<String>,
    rows: usize,
}

impl Columns {
    pub(crate) fn new(names: &'static [(&'static str, Kind)]) -> Columns {
        Columns {
            names,
            arrays: names.iter().map(|_| String::from("{")).collect(),
            rows: 0,
        }
    }

    /// Adds a row: one value per column, in the columns' order.
    ///
    /// # Panics
    /// If the row has another number of values than the table has columns (a bug).
    pub(crate) fn push(&mut self, row: impl IntoIterator<Item = Bind>) {
        let mut count = 0;
        for (i, value) in row.into_iter().enumerate() {
            let array = &mut self.arrays[i];
            if self.rows > 0 {
                array.push(',');
            }
            push_element(array, &value);
            count += 1;
        }
        assert_eq!(count, self.names.len(), "a row has {count} values");
        self.rows += 1;
    }

    /// `unnest($1::type[], …)` over the columns, its arrays bound in `sql`: a table source
    /// whose columns are the rows' values.
    pub(crate) fn unnest(self, sql: &mut Sql) -> String {
        let arrays: Vec<String> = self
            .arrays
            .into_iter()
            .zip(self.names)
            .map(|(mut array, (_, kind))| {
                array.push('}');
                format!("{}::{}", sql.bind(Bind::Text(array)), kind.array_type())
            })
            .collect();
        format!("unnest({})", arrays.join(", "))
    }
}

/// `INSERT INTO table (columns) …` of `rows`: on PostgreSQL from one array per column
/// ([`Columns`]), on SQLite as a multi-row `VALUES` list, its values bound in `sql`.
pub(crate) fn insert_rows<R: IntoIterator<Item = Bind>>(
    sql: &mut Sql,
    postgres: bool,
    table: &str,
    names: &'static [(&'static str, Kind)],
    rows: impl Iterator<Item = R>,
) -> String {
    let columns: Vec<&str> = names.iter().map(|(name, _)| *name).collect();
    format!(
        "INSERT INTO {table} ({}) {}",
        columns.join(", "),
        rows_source(sql, postgres, names, rows)
    )
}

/// `rows` as a query (for an `INSERT` or a CTE), their values bound in `sql`: on PostgreSQL
/// `SELECT * FROM unnest(…)` of one array per column ([`Columns`]), on SQLite a multi-row
/// `VALUES` list.
pub(crate) fn rows_source<R: IntoIterator<Item = Bind>>(
    sql: &mut Sql,
    postgres: bool,
    names: &'static [(&'static str, Kind)],
    rows: impl Iterator<Item = R>,
) -> String {
    if postgres {
        let mut columns = Columns::new(names);
        rows.for_each(|row| columns.push(row));
        return format!("SELECT * FROM {}", columns.unnest(sql));
    }
    let rows: Vec<String> = rows.map(|row| sql.row(row)).collect();
    format!("VALUES {}", rows.join(", "))
}

/// `column` among `values`: on PostgreSQL `column = ANY($n::type[])`, one array bound, so the
/// statement's text (and the plan PostgreSQL caches for it) does not depend on how many values
/// there are; on SQLite `column IN ($1, $2, …)`.
pub(crate) fn among(
    sql: &mut Sql,
    postgres: bool,
    column: &str,
    kind: Kind,
    values: impl IntoIterator<Item = Bind>,
) -> String {
    if postgres {
        let mut array = String::from("{");
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                array.push(',');
            }
            push_element(&mut array, &value);
        }
        array.push('}');
        return format!(
            "{column} = ANY({}::{})",
            sql.bind(Bind::Text(array)),
            kind.array_type()
        );
    }
    let list: Vec<String> = values.into_iter().map(|v| sql.bind(v)).collect();
    format!("{column} IN ({})", list.join(", "))
}

/// Appends a value as an element of an array literal: `NULL`, a number, or a quoted string
/// with `"` and `\` escaped (PostgreSQL's array input syntax).
fn push_element(array: &mut String, value: &Bind) {
    match value {
        Bind::Null => array.push_str("NULL"),
        Bind::Int(v) => {
            let _ = write!(array, "{v}");
        }
        Bind::Float(v) if v.is_nan() => array.push_str("NaN"),
        Bind::Float(v) if v.is_infinite() => {
            array.push_str(if *v > 0.0 { "Infinity" } else { "-Infinity" });
        }
        Bind::Float(v) => {
            let _ = write!(array, "{v:e}");
        }
        Bind::Text(v) => {
            array.push('"');
            let mut rest = v.as_str();
            while let Some(at) = rest.find(['"', '\\']) {
                array.push_str(&rest[..at]);
                array.push('\\');
                array.push_str(&rest[at..=at]);
                rest = &rest[at + 1..];
            }
            array.push_str(rest);
            array.push('"');
        }
        Bind::Bytes(v) => {
            // bytea's hex input, its backslash escaped for the array syntax
            array.push_str("\"\\\\x");
            for byte in v {
                let _ = write!(array, "{byte:02x}");
            }
            array.push('"');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_are_quoted_and_escaped_as_postgresql_reads_them() {
        let rows = [
            [
                Bind::Int(-3),
                Bind::Text("say \"hi\" \\ {x}, NULL".into()),
                Bind::Float(0.1),
                Bind::Bytes(vec![0, 255]),
            ],
            [Bind::Int(4), Bind::Null, Bind::Float(-1e300), Bind::Null],
        ];
        let mut sql = Sql::default();
        let text = insert_rows(
            &mut sql,
            true,
            "t",
            &[
                ("a", Kind::BigInt),
                ("b", Kind::Text),
                ("c", Kind::Double),
                ("d", Kind::Bytes),
            ],
            rows.into_iter(),
        );
        assert_eq!(
            text,
            "INSERT INTO t (a, b, c, d) SELECT * FROM unnest($1::bigint[], $2::text[], \
             $3::double precision[], $4::bytea[])"
        );
        let arrays: Vec<&str> = sql
            .binds
            .iter()
            .map(|b| match b {
                Bind::Text(t) => t.as_str(),
                _ => panic!("arrays are bound as text"),
            })
            .collect();
        assert_eq!(
            arrays,
            [
                "{-3,4}",
                r#"{"say \"hi\" \\ {x}, NULL",NULL}"#,
                "{1e-1,-1e300}",
                r#"{"\\x00ff",NULL}"#
            ]
        );
    }
}
