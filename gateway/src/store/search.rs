//! Search as SQL over the index tables (search.html).
//!
//! A search is a conjunction of [`Filter`]s; each becomes a condition on the resource row
//! `r` (`r.rkey IN (SELECT rkey FROM idx_... WHERE ...)`), so every filter, sort and page
//! is decided inside one query: totals and page sizes stay right, and nothing is filtered
//! after the fact. Paging is keyset paging on the sort keys and `rkey`; no OFFSET scans.

use fhir_profiles::search::{
    SearchParamType, SearchParameter, date_range, normalize_string, number_range, of_type_system,
};
use fhir_profiles::terminology::Terminology;
use sqlx::{Any, AnyConnection, AssertSqlSafe, Row};

use crate::error::{Error, Result};

/// A value bound to a query parameter.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Bind {
    Int(i64),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
    Null,
}

/// SQL text under construction, with its bound values (`$1`, `$2`, ... in both dialects).
#[derive(Debug, Default)]
pub struct Sql {
    pub text: String,
    pub binds: Vec<Bind>,
    /// When set, the consent conditions on the searched row `r` are not written into the
    /// conditions but collected here, to be applied to the page's candidates ([`page`]).
    deferred_consent: Option<Vec<DeferredConsent>>,
    /// Patients whose consent the statement decides once rather than once per row
    /// ([`pinned_patients`], [`super::consent::condition`]).
    pub(super) decided_patients: Vec<String>,
    /// The grant conditions the statement's consent probes share, and the grants they were
    /// bound for ([`super::consent`]).
    pub(super) consent_granted: Option<(ConsentGrantsKey, String)>,
    /// The statement checks one row (a read: `store::read_current_checked`). Its consent
    /// check is made for one row: a recorded Patient's grant is a scalar probe (never a hash
    /// of every grant, which PostgreSQL may choose for `EXISTS`), and a row whose compartment
    /// is not recorded makes the check NULL (undecided) instead of probing its references,
    /// so the statement's plan does not carry a subplan that nearly every read leaves unused
    /// (its start-up alone cost ~9 µs a read). The caller checks such a row again, with the
    /// probe ([`super::consent::condition`]).
    pub one_row: bool,
}

/// Grantees, purpose, confirmed block and now: what a statement's consent probes bind once.
pub(super) type ConsentGrantsKey = (Vec<String>, String, i64, i64);

/// A consent condition on rows of `rtype` that [`page`] applies outside the filters.
#[derive(Debug)]
struct DeferredConsent {
    rtype: String,
    params: Vec<String>,
    grants: std::sync::Arc<super::consent::Grants>,
}

impl Sql {
    /// Adds a bound value and returns its placeholder.
    pub fn bind(&mut self, value: Bind) -> String {
        self.binds.push(value);
        format!("${}", self.binds.len())
    }

    /// Binds a row's values and returns them as a `($1, $2, …)` tuple of a `VALUES` list.
    pub(crate) fn row(&mut self, values: impl IntoIterator<Item = Bind>) -> String {
        let placeholders: Vec<String> = values.into_iter().map(|v| self.bind(v)).collect();
        format!("({})", placeholders.join(", "))
    }

    pub(crate) fn text(&mut self, value: &str) -> String {
        self.bind(Bind::Text(value.to_owned()))
    }

    pub fn query(&self) -> sqlx::query::Query<'_, Any, sqlx::any::AnyArguments> {
        // audited: the text is built only from constant SQL and `$n` placeholders; every
        // value from a request is bound
        let mut query = sqlx::query(AssertSqlSafe(self.text.as_str()));
        for bind in &self.binds {
            query = match bind {
                Bind::Int(v) => query.bind(*v),
                Bind::Float(v) => query.bind(*v),
                Bind::Text(v) => query.bind(v.as_str()),
                Bind::Bytes(v) => query.bind(v.as_slice()),
                Bind::Null => query.bind(Option::<String>::None),
            };
        }
        query
    }
}

/// A search prefix (search.html#prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

impl Prefix {
    /// Splits a prefix off a date, number or quantity value (`ge2020` -> (Ge, "2020")).
    pub fn split(value: &str) -> (Prefix, &str) {
        let prefixes = [
            ("eq", Prefix::Eq),
            ("ne", Prefix::Ne),
            ("gt", Prefix::Gt),
            ("lt", Prefix::Lt),
            ("ge", Prefix::Ge),
            ("le", Prefix::Le),
            ("sa", Prefix::Sa),
            ("eb", Prefix::Eb),
            ("ap", Prefix::Ap),
        ];
        for (text, prefix) in prefixes {
            if let Some(rest) = value.strip_prefix(text)
                && rest.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '.')
            {
                return (prefix, rest);
            }
        }
        (Prefix::Eq, value)
    }
}

/// A search modifier (search.html#modifiers) that the gateway supports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modifier {
    Exact,
    Contains,
    Missing,
    Not,
    Text,
    Identifier,
    Above,
    Below,
    /// `:in` a value set (token parameters; the value is the value set's canonical URL).
    In,
    /// `:not-in` a value set: no coding of the element is in it.
    NotIn,
    /// `:of-type` (identifiers: `type system|type code|value`).
    OfType,
    /// A type modifier on a reference (`subject:Patient`).
    Type(String),
}

/// A `_text` or `_content` search: words combined with AND and OR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextQuery {
    /// Resources with a word that starts with `word` (equals it when `whole`); `word` is in
    /// the indexed form (`fhir_profiles::text::term_words`).
    Word {
        word: String,
        whole: bool,
    },
    All(Vec<TextQuery>),
    Any(Vec<TextQuery>),
}

/// One condition of a search.
#[derive(Debug, Clone)]
pub enum Filter {
    /// A search parameter with an optional modifier and OR-ed values.
    Param {
        param: &'static SearchParameter,
        modifier: Option<Modifier>,
        values: Vec<String>,
    },
    /// `_id=a,b`
    Id(Vec<String>),
    /// `_lastUpdated=ge2020-01-01` (OR-ed values)
    LastUpdated(Vec<String>),
    /// A chained parameter: `subject:Patient.name=peter` — resources whose `param` points to a
    /// resource of `target_types` that matches `inner`.
    Chain {
        param: &'static SearchParameter,
        target_types: Vec<String>,
        inner: Box<Filter>,
    },
    /// `_has:Observation:patient:code=1234-5` — resources pointed to by `param` of a
    /// `source_type` resource matching `inner`.
    Has {
        source_type: String,
        param: &'static SearchParameter,
        inner: Box<Filter>,
    },
    /// `_text` (the narrative only) or `_content` (the whole resource).
    Text {
        narrative_only: bool,
        query: TextQuery,
    },
    /// Resources in the compartment of `Patient/{0}`, linked by the given parameters.
    PatientCompartment {
        patient_id: String,
        params: Vec<String>,
    },
    /// Resources in the compartment of any of `patient_ids` (`None`: of any Patient), linked by
    /// the given parameters (Bulk Data `$export` at Patient and Group level).
    PatientsCompartment {
        patient_ids: Option<Vec<String>>,
        params: Vec<String>,
    },
    /// Resources of a Patient-compartment type (linked to patients by `params`) whose every
    /// patient has consented to the requester reading them ([`super::consent::condition`]).
    Consent {
        grants: std::sync::Arc<super::consent::Grants>,
        params: Vec<String>,
    },
    /// Resources for which one of the alternatives holds (none: no resource). What an access
    /// token may see ([`crate::access`]): one alternative per granting scope and type.
    AnyOf(Vec<Alternative>),
}

/// One alternative of [`Filter::AnyOf`]: resources of `types` for which every filter holds.
#[derive(Debug, Clone)]
pub struct Alternative {
    pub types: TypeCondition,
    pub filters: Vec<Filter>,
}

/// Which resource types an [`Alternative`] is about.
#[derive(Debug, Clone)]
pub enum TypeCondition {
    /// The type the filter is evaluated for (its filters use that type's parameters).
    Any,
    /// This type (its filters use this type's parameters).
    Is(String),
    /// Any type but these (its filters can only use parameters every resource has).
    NotIn(Vec<String>),
}

/// The sort key of a search (`_sort`).
#[derive(Debug, Clone)]
pub enum SortField {
    Id,
    LastUpdated,
    Param(&'static SearchParameter),
}

#[derive(Debug, Clone)]
pub struct SortKey {
    pub field: SortField,
    pub descending: bool,
}

/// Builds the condition of one filter on the resource row `{alias}` of type `rtype`.
pub fn condition(
    sql: &mut Sql,
    alias: &str,
    rtype: &str,
    filter: &Filter,
    base_url: &str,
) -> Result<String> {
    Ok(match filter {
        Filter::Id(ids) => {
            let list: Vec<String> = ids.iter().map(|id| sql.text(id)).collect();
            format!("{alias}.id IN ({})", list.join(", "))
        }
        Filter::LastUpdated(values) => {
            let mut alternatives = Vec::new();
            for value in values {
                let (prefix, date) = Prefix::split(value);
                let (lo, hi) = date_range(date).ok_or_else(|| {
                    bad_value("_lastUpdated", value, "a date, dateTime or instant")
                })?;
                // a version's lastUpdated is an instant: the range [t, t + 1 ms)
                let target = (
                    format!("{alias}.last_updated"),
                    format!("({alias}.last_updated + 1)"),
                );
                alternatives.push(range_predicate(sql, &target, prefix, lo, hi));
            }
            format!("({})", alternatives.join(" OR "))
        }
        Filter::Param {
            param,
            modifier,
            values,
        } => param_condition(
            sql,
            alias,
            rtype,
            param,
            modifier.as_ref(),
            values,
            base_url,
        )?,
        Filter::Chain {
            param,
            target_types,
            inner,
        } => {
            let mut alternatives = Vec::new();
            for target in target_types {
                let inner_condition = condition(sql, "c", target, inner, base_url)?;
                let (rt, p, tt) = (sql.text(rtype), sql.text(&param.code), sql.text(target));
                alternatives.push(format!(
                    "{alias}.rkey IN (SELECT x.rkey FROM idx_reference x JOIN resource c ON c.resource_type = x.target_type \
                     AND c.id = x.target_id WHERE x.rtype = {rt} AND x.param = {p} AND x.target_type = {tt} \
                     AND c.deleted = 0 AND {inner_condition})"
                ));
            }
            if alternatives.is_empty() {
                "1 = 0".to_owned()
            } else {
                format!("({})", alternatives.join(" OR "))
            }
        }
        Filter::Has {
            source_type,
            param,
            inner,
        } => {
            let inner_condition = condition(sql, "h", source_type, inner, base_url)?;
            let (st, p, rt) = (
                sql.text(source_type),
                sql.text(&param.code),
                sql.text(rtype),
            );
            format!(
                "EXISTS (SELECT 1 FROM idx_reference x JOIN resource h ON h.rkey = x.rkey WHERE x.rtype = {st} \
                 AND x.param = {p} AND x.target_type = {rt} AND x.target_id = {alias}.id AND h.deleted = 0 AND {inner_condition})"
            )
        }
        Filter::Text {
            narrative_only,
            query,
        } => text_condition(sql, alias, rtype, *narrative_only, query),
        Filter::AnyOf(alternatives) => {
            let mut parts = Vec::new();
            for alternative in alternatives {
                let mut conditions = Vec::new();
                let rtype = match &alternative.types {
                    TypeCondition::Any => rtype,
                    TypeCondition::Is(t) => {
                        conditions.push(format!("{alias}.resource_type = {}", sql.text(t)));
                        t.as_str()
                    }
                    TypeCondition::NotIn(types) => {
                        if !types.is_empty() {
                            let list: Vec<String> = types.iter().map(|t| sql.text(t)).collect();
                            conditions.push(format!(
                                "{alias}.resource_type NOT IN ({})",
                                list.join(", ")
                            ));
                        }
                        "Resource"
                    }
                };
                for filter in &alternative.filters {
                    conditions.push(condition(sql, alias, rtype, filter, base_url)?);
                }
                parts.push(if conditions.is_empty() {
                    "1 = 1".to_owned()
                } else {
                    format!("({})", conditions.join(" AND "))
                });
            }
            if parts.is_empty() {
                "1 = 0".to_owned()
            } else {
                format!("({})", parts.join(" OR "))
            }
        }
        Filter::Consent { grants, params } => match &mut sql.deferred_consent {
            // every consent condition on a row of one type is the same (it depends on the
            // type alone, `Access::consent_filter`), and it is a conjunct of every alternative
            // that admits rows of that type: so it can be applied to the type's rows apart
            Some(deferred) if alias == "r" => {
                if !deferred.iter().any(|d| d.rtype == rtype) {
                    deferred.push(DeferredConsent {
                        rtype: rtype.to_owned(),
                        params: params.clone(),
                        grants: grants.clone(),
                    });
                }
                "1 = 1".to_owned()
            }
            _ => super::consent::condition(sql, alias, rtype, params, grants),
        },
        Filter::PatientCompartment { patient_id, params } => {
            let id = sql.text(patient_id);
            let mut alternatives = Vec::new();
            if rtype == "Patient" {
                alternatives.push(format!("{alias}.id = {id}"));
            }
            if !params.is_empty() {
                let rt = sql.text(rtype);
                let list: Vec<String> = params.iter().map(|p| sql.text(p)).collect();
                alternatives.push(format!(
                    "{alias}.rkey IN (SELECT x.rkey FROM idx_reference x WHERE x.rtype = {rt} AND x.param IN ({}) \
                     AND x.target_type = 'Patient' AND x.target_id = {id})",
                    list.join(", ")
                ));
            }
            if alternatives.is_empty() {
                "1 = 0".to_owned()
            } else {
                format!("({})", alternatives.join(" OR "))
            }
        }
        Filter::PatientsCompartment {
            patient_ids,
            params,
        } => {
            let ids: Option<Vec<String>> = patient_ids
                .as_ref()
                .map(|ids| ids.iter().map(|id| sql.text(id)).collect());
            if ids.as_ref().is_some_and(Vec::is_empty) {
                return Ok("1 = 0".to_owned());
            }
            let mut alternatives = Vec::new();
            if rtype == "Patient" {
                alternatives.push(match &ids {
                    Some(ids) => format!("{alias}.id IN ({})", ids.join(", ")),
                    None => "1 = 1".to_owned(),
                });
            }
            if !params.is_empty() {
                let rt = sql.text(rtype);
                let list: Vec<String> = params.iter().map(|p| sql.text(p)).collect();
                let targets = match &ids {
                    Some(ids) => format!(" AND x.target_id IN ({})", ids.join(", ")),
                    None => String::new(),
                };
                alternatives.push(format!(
                    "{alias}.rkey IN (SELECT x.rkey FROM idx_reference x WHERE x.rtype = {rt} AND x.param IN ({}) \
                     AND x.target_type = 'Patient'{targets})",
                    list.join(", ")
                ));
            }
            if alternatives.is_empty() {
                "1 = 0".to_owned()
            } else {
                format!("({})", alternatives.join(" OR "))
            }
        }
    })
}

/// The condition of a text search on the resource row `{alias}`: each word is a range
/// (or, for whole words, an equality) on `idx_word_value`. A search over every type has no
/// type to lead the index with, so it checks each resource's words instead.
fn text_condition(
    sql: &mut Sql,
    alias: &str,
    rtype: &str,
    narrative_only: bool,
    query: &TextQuery,
) -> String {
    let (parts, joiner, empty) = match query {
        TextQuery::Word { word, whole } => {
            let matching = if *whole {
                format!("w.word = {}", sql.text(word))
            } else {
                let (lo, hi) = (sql.text(word), sql.text(&prefix_upper_bound(word)));
                format!("w.word >= {lo} AND w.word < {hi}")
            };
            let narrative = if narrative_only {
                " AND w.narrative = 1"
            } else {
                ""
            };
            return if rtype == "Resource" {
                format!(
                    "EXISTS (SELECT 1 FROM idx_word w WHERE w.rkey = {alias}.rkey AND {matching}{narrative})"
                )
            } else {
                let rt = sql.text(rtype);
                format!(
                    "{alias}.rkey IN (SELECT w.rkey FROM idx_word w WHERE w.rtype = {rt} AND {matching}{narrative})"
                )
            };
        }
        TextQuery::All(parts) => (parts, " AND ", "1 = 1"),
        TextQuery::Any(parts) => (parts, " OR ", "1 = 0"),
    };
    if parts.is_empty() {
        return empty.to_owned();
    }
    let conditions: Vec<String> = parts
        .iter()
        .map(|part| text_condition(sql, alias, rtype, narrative_only, part))
        .collect();
    format!("({})", conditions.join(joiner))
}

fn bad_value(param: &str, value: &str, expected: &str) -> Error {
    Error::Invalid(format!("{param}={value}: expected {expected}"))
}

fn table_of(kind: SearchParamType) -> Option<&'static str> {
    Some(match kind {
        SearchParamType::String => "idx_string",
        SearchParamType::Token => "idx_token",
        SearchParamType::Reference => "idx_reference",
        SearchParamType::Date => "idx_date",
        SearchParamType::Number => "idx_number",
        SearchParamType::Quantity => "idx_quantity",
        SearchParamType::Uri => "idx_uri",
        SearchParamType::Composite | SearchParamType::Special => return None,
    })
}

/// `{column} = [rtype] AND `, which lets an index row lookup use the index that leads with
/// the resource type; nothing for a search across types (`rtype` is `Resource`), where the
/// parameter is a common one (`_tag`, `_profile`, ...) and the row's own type is whatever
/// it is.
fn type_is(sql: &mut Sql, column: &str, rtype: &str) -> String {
    if rtype == "Resource" {
        String::new()
    } else {
        format!("{column} = {} AND ", sql.text(rtype))
    }
}

#[allow(clippy::too_many_arguments)]
fn param_condition(
    sql: &mut Sql,
    alias: &str,
    rtype: &str,
    param: &SearchParameter,
    modifier: Option<&Modifier>,
    values: &[String],
    base_url: &str,
) -> Result<String> {
    let code = param.code.as_str();
    if param.kind == SearchParamType::Composite {
        return composite_condition(sql, alias, rtype, param, values, base_url);
    }
    let (table, index_param) = match (param.kind, modifier) {
        (SearchParamType::Reference, Some(Modifier::Identifier)) => {
            ("idx_token", format!("{code}:identifier"))
        }
        (SearchParamType::Token, Some(Modifier::OfType)) => {
            ("idx_token", format!("{code}:of-type"))
        }
        (kind, _) => (
            table_of(kind).ok_or_else(|| {
                Error::NotSupported(format!(
                    "search parameter {code} ({kind:?}) is not supported"
                ))
            })?,
            code.to_owned(),
        ),
    };
    let of_type = type_is(sql, "t.rtype", rtype);
    let p = sql.text(&index_param);
    if let Some(Modifier::Missing) = modifier {
        let missing = match values {
            [v] if v == "true" => true,
            [v] if v == "false" => false,
            _ => {
                return Err(bad_value(
                    &format!("{code}:missing"),
                    &values.join(","),
                    "true or false",
                ));
            }
        };
        let exists = format!(
            "EXISTS (SELECT 1 FROM {table} t WHERE {of_type}t.rkey = {alias}.rkey AND t.param = {p})"
        );
        return Ok(if missing {
            format!("NOT {exists}")
        } else {
            exists
        });
    }
    let mut alternatives = Vec::new();
    for value in values {
        let predicate = match (param.kind, modifier) {
            (_, Some(Modifier::Identifier)) => token_predicate(sql, value, None)?,
            (SearchParamType::String, m) => string_predicate(sql, value, m, code)?,
            (SearchParamType::Token, m) => token_predicate(sql, value, m)?,
            (SearchParamType::Reference, m) => reference_predicate(sql, value, m, param, base_url)?,
            (SearchParamType::Date, None) => {
                let (prefix, date) = Prefix::split(value);
                let (lo, hi) = date_range(date)
                    .ok_or_else(|| bad_value(code, value, "a date, dateTime or instant"))?;
                range_predicate(sql, &("t.lo".to_owned(), "t.hi".to_owned()), prefix, lo, hi)
            }
            (SearchParamType::Number, None) => number_predicate(sql, value, code)?,
            (SearchParamType::Quantity, None) => quantity_predicate(sql, value, code)?,
            (SearchParamType::Uri, m) => uri_predicate(sql, value, m, code)?,
            (kind, Some(m)) => {
                return Err(Error::NotSupported(format!(
                    "modifier {m:?} is not supported on {code} ({kind:?} parameter)"
                )));
            }
            (kind, None) => {
                return Err(Error::NotSupported(format!(
                    "search parameter {code} ({kind:?}) is not supported"
                )));
            }
        };
        alternatives.push(predicate);
    }
    let matching = format!(
        "{alias}.rkey IN (SELECT t.rkey FROM {table} t WHERE {of_type}t.param = {p} AND ({}))",
        alternatives.join(" OR ")
    );
    Ok(match modifier {
        Some(Modifier::Not | Modifier::NotIn) => format!("NOT ({matching})"),
        _ => matching,
    })
}

/// Composite values: `component1$component2`, each matched against components of the same
/// instance (the same `grp`).
fn composite_condition(
    sql: &mut Sql,
    alias: &str,
    rtype: &str,
    param: &SearchParameter,
    values: &[String],
    base_url: &str,
) -> Result<String> {
    let code = param.code.as_str();
    let mut alternatives = Vec::new();
    for value in values {
        let parts: Vec<&str> = value.split('$').collect();
        if parts.len() != param.components.len() {
            return Err(bad_value(
                code,
                value,
                &format!("{} components separated by '$'", param.components.len()),
            ));
        }
        let mut from = Vec::new();
        let mut conditions = Vec::new();
        for (i, (component, part)) in param.components.iter().zip(&parts).enumerate() {
            let table = table_of(component.kind).ok_or_else(|| {
                Error::NotSupported(format!("composite {code} has an unsupported component"))
            })?;
            let predicate = match component.kind {
                SearchParamType::String => string_predicate(sql, part, None, code)?,
                SearchParamType::Token => token_predicate(sql, part, None)?,
                SearchParamType::Reference => {
                    reference_predicate(sql, part, None, param, base_url)?
                }
                SearchParamType::Date => {
                    let (prefix, date) = Prefix::split(part);
                    let (lo, hi) = date_range(date)
                        .ok_or_else(|| bad_value(code, value, "a date in the date component"))?;
                    range_predicate(sql, &("t.lo".to_owned(), "t.hi".to_owned()), prefix, lo, hi)
                }
                SearchParamType::Number => number_predicate(sql, part, code)?,
                SearchParamType::Quantity => quantity_predicate(sql, part, code)?,
                SearchParamType::Uri => uri_predicate(sql, part, None, code)?,
                _ => {
                    return Err(Error::NotSupported(format!(
                        "composite {code} has an unsupported component"
                    )));
                }
            };
            let c = format!("c{i}");
            let p = sql.text(&format!("{code}#{i}"));
            from.push(format!("{table} {c}"));
            let of_type = type_is(sql, &format!("{c}.rtype"), rtype);
            conditions.push(format!(
                "{of_type}{c}.param = {p} AND ({})",
                predicate.replace("t.", &format!("{c}."))
            ));
            if i > 0 {
                conditions.push(format!("{c}.rkey = c0.rkey AND {c}.grp = c0.grp"));
            }
        }
        alternatives.push(format!(
            "{alias}.rkey IN (SELECT c0.rkey FROM {} WHERE {})",
            from.join(", "),
            conditions.join(" AND ")
        ));
    }
    Ok(format!("({})", alternatives.join(" OR ")))
}

/// The smallest string greater than every string starting with `prefix` (in byte order).
fn prefix_upper_bound(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
}

fn like_pattern(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

fn string_predicate(
    sql: &mut Sql,
    value: &str,
    modifier: Option<&Modifier>,
    code: &str,
) -> Result<String> {
    Ok(match modifier {
        None => {
            let norm = normalize_string(value);
            let (lo, hi) = (sql.text(&norm), sql.text(&prefix_upper_bound(&norm)));
            format!("(t.norm >= {lo} AND t.norm < {hi})")
        }
        Some(Modifier::Exact) => format!("t.exact = {}", sql.text(value)),
        Some(Modifier::Contains) => {
            let pattern = sql.text(&format!("%{}%", like_pattern(&normalize_string(value))));
            format!("t.norm LIKE {pattern} ESCAPE '\\'")
        }
        Some(other) => {
            return Err(Error::NotSupported(format!(
                "modifier {other:?} is not supported on string parameter {code}"
            )));
        }
    })
}

fn token_predicate(sql: &mut Sql, value: &str, modifier: Option<&Modifier>) -> Result<String> {
    match modifier {
        None | Some(Modifier::Not) => {}
        Some(Modifier::Text) => {
            let norm = normalize_string(value);
            let (lo, hi) = (sql.text(&norm), sql.text(&prefix_upper_bound(&norm)));
            return Ok(format!("(t.text >= {lo} AND t.text < {hi})"));
        }
        Some(Modifier::In | Modifier::NotIn) => {
            let expansion = value_set(value)?;
            let systems: Vec<(&str, &[String])> = expansion
                .systems
                .iter()
                .map(|(system, codes)| (system.as_str(), codes.as_slice()))
                .collect();
            return Ok(codes_predicate(sql, &systems));
        }
        Some(Modifier::Above | Modifier::Below) => {
            let (system, code) = subsumption_concept(value)?;
            let terminology = Terminology::r4();
            let codes = match modifier {
                Some(Modifier::Above) => terminology.ancestors(system, code),
                _ => terminology.descendants(system, code),
            }
            .ok_or_else(|| unknown_code_system(system))?;
            return Ok(codes_predicate(sql, &[(system, &codes)]));
        }
        Some(Modifier::OfType) => {
            let (type_system, type_code, identifier) = of_type_value(value)?;
            return Ok(format!(
                "(t.code = {} AND t.system = {})",
                sql.text(identifier),
                sql.text(&of_type_system(type_system, type_code))
            ));
        }
        Some(m) => {
            return Err(Error::NotSupported(format!(
                "modifier {m:?} is not supported on token parameters"
            )));
        }
    }
    Ok(match value.split_once('|') {
        None => format!("t.code = {}", sql.text(value)),
        Some(("", code)) => format!("(t.system IS NULL AND t.code = {})", sql.text(code)),
        Some((system, "")) => format!("t.system = {}", sql.text(system)),
        Some((system, code)) => format!(
            "(t.system = {} AND t.code = {})",
            sql.text(system),
            sql.text(code)
        ),
    })
}

/// Codes of some systems: `((t.system = s OR t.system IS NULL) AND t.code IN (c1, ...)) OR ...`.
/// A token without a system is a `code` element, whose system is the one its binding
/// implies: it matches by its code.
fn codes_predicate(sql: &mut Sql, systems: &[(&str, &[String])]) -> String {
    let alternatives: Vec<String> = systems
        .iter()
        .filter(|(_, codes)| !codes.is_empty())
        .map(|(system, codes)| {
            let system = sql.text(system);
            let codes: Vec<String> = codes.iter().map(|c| sql.text(c)).collect();
            format!(
                "((t.system = {system} OR t.system IS NULL) AND t.code IN ({}))",
                codes.join(", ")
            )
        })
        .collect();
    if alternatives.is_empty() {
        "1 = 0".to_owned()
    } else {
        format!("({})", alternatives.join(" OR "))
    }
}

/// The expansion of the value set a `:in`/`:not-in` value names.
pub fn value_set(url: &str) -> Result<&'static fhir_profiles::terminology::ValueSetExpansion> {
    Terminology::r4().value_set(url).ok_or_else(|| {
        Error::Invalid(format!(
            "unknown value set {url}: :in and :not-in take the canonical URL of a value set \
             that the gateway can expand (those of the FHIR R4 package over its own code systems)"
        ))
    })
}

/// The `system|code` of a token `:above`/`:below` value, whose system must be known.
pub fn subsumption_concept(value: &str) -> Result<(&str, &str)> {
    match value.split_once('|') {
        Some((system, code)) if !system.is_empty() && !code.is_empty() => {
            if Terminology::r4().knows_system(system) {
                Ok((system, code))
            } else {
                Err(unknown_code_system(system))
            }
        }
        _ => Err(Error::Invalid(format!(
            "{value}: :above and :below on a token take system|code"
        ))),
    }
}

fn unknown_code_system(system: &str) -> Error {
    Error::Invalid(format!(
        "unknown code system {system}: :above and :below need a code system whose hierarchy \
         the gateway knows (the complete code systems of the FHIR R4 package)"
    ))
}

/// The parts of an `:of-type` value: `type system|type code|identifier value`.
pub fn of_type_value(value: &str) -> Result<(&str, &str, &str)> {
    let mut parts = value.splitn(3, '|');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(system), Some(code), Some(identifier))
            if !system.is_empty() && !code.is_empty() && !identifier.is_empty() =>
        {
            Ok((system, code, identifier))
        }
        _ => Err(Error::Invalid(format!(
            "{value}: :of-type takes [type system]|[type code]|[identifier value], all three given"
        ))),
    }
}

fn reference_predicate(
    sql: &mut Sql,
    value: &str,
    modifier: Option<&Modifier>,
    param: &SearchParameter,
    base_url: &str,
) -> Result<String> {
    let local = local_reference(value, base_url);
    let type_modifier = match modifier {
        Some(Modifier::Type(t)) => Some(t.as_str()),
        None => None,
        Some(other) => {
            return Err(Error::NotSupported(format!(
                "modifier {other:?} is not supported on reference parameter {}",
                param.code
            )));
        }
    };
    if local.contains("://") || local.starts_with("urn:") {
        return Ok(match local.split_once('|') {
            Some((url, version)) => format!(
                "(t.url = {} AND t.version = {})",
                sql.text(url),
                sql.text(version)
            ),
            None => format!("t.url = {}", sql.text(local)),
        });
    }
    let segments: Vec<&str> = local.split('/').collect();
    Ok(match segments.as_slice() {
        [id] => match type_modifier {
            Some(t) => format!(
                "(t.target_type = {} AND t.target_id = {})",
                sql.text(t),
                sql.text(id)
            ),
            None => format!("t.target_id = {}", sql.text(id)),
        },
        [t, id] => format!(
            "(t.target_type = {} AND t.target_id = {})",
            sql.text(t),
            sql.text(id)
        ),
        [t, id, "_history", version] => format!(
            "(t.target_type = {} AND t.target_id = {} AND t.version = {})",
            sql.text(t),
            sql.text(id),
            sql.text(version)
        ),
        _ => {
            return Err(bad_value(
                &param.code,
                value,
                "[type]/[id], [id] or an absolute URL",
            ));
        }
    })
}

/// Range semantics of search.html#prefix for a target range `[lo, hi)` and a search range
/// `[search_lo, search_hi)`.
fn range_predicate(
    sql: &mut Sql,
    target: &(String, String),
    prefix: Prefix,
    search_lo: i64,
    search_hi: i64,
) -> String {
    let (t_lo, t_hi) = target;
    let (lo, hi) = (
        sql.bind(Bind::Int(search_lo)),
        sql.bind(Bind::Int(search_hi)),
    );
    match prefix {
        Prefix::Eq => format!("({t_lo} >= {lo} AND {t_hi} <= {hi})"),
        Prefix::Ne => format!("NOT ({t_lo} >= {lo} AND {t_hi} <= {hi})"),
        Prefix::Gt => format!("{t_hi} > {hi}"),
        Prefix::Lt => format!("{t_lo} < {lo}"),
        Prefix::Ge => format!("{t_hi} > {lo}"),
        Prefix::Le => format!("{t_lo} < {hi}"),
        Prefix::Sa => format!("{t_lo} >= {hi}"),
        Prefix::Eb => format!("{t_hi} <= {lo}"),
        Prefix::Ap => {
            // approximately: overlaps the search range widened by 10% of its distance from now
            let now = crate::model::Instant::now().millis();
            let gap = ((now - search_lo).abs() / 10).max(86_400_000);
            let (alo, ahi) = (
                sql.bind(Bind::Int(search_lo.saturating_sub(gap))),
                sql.bind(Bind::Int(search_hi.saturating_add(gap))),
            );
            format!("({t_hi} > {alo} AND {t_lo} < {ahi})")
        }
    }
}

fn number_predicate(sql: &mut Sql, value: &str, code: &str) -> Result<String> {
    let (prefix, number) = Prefix::split(value);
    let (v, lo, hi) = number_range(number).ok_or_else(|| bad_value(code, value, "a number"))?;
    Ok(number_value_predicate(sql, prefix, v, lo, hi))
}

fn number_value_predicate(sql: &mut Sql, prefix: Prefix, v: f64, lo: f64, hi: f64) -> String {
    let mut b = |x: f64| sql.bind(Bind::Float(x));
    match prefix {
        Prefix::Eq => format!("(t.value >= {} AND t.value < {})", b(lo), b(hi)),
        Prefix::Ne => format!("NOT (t.value >= {} AND t.value < {})", b(lo), b(hi)),
        Prefix::Gt | Prefix::Sa => format!("t.value > {}", b(v)),
        Prefix::Lt | Prefix::Eb => format!("t.value < {}", b(v)),
        Prefix::Ge => format!("t.value >= {}", b(v)),
        Prefix::Le => format!("t.value <= {}", b(v)),
        Prefix::Ap => {
            let (a, z) = ((v * 0.9).min(v * 1.1), (v * 0.9).max(v * 1.1));
            format!("(t.value >= {} AND t.value <= {})", b(a), b(z))
        }
    }
}

fn quantity_predicate(sql: &mut Sql, value: &str, code: &str) -> Result<String> {
    let mut parts = value.splitn(3, '|');
    let number_part = parts.next().unwrap_or_default();
    let system = parts.next().filter(|s| !s.is_empty());
    let unit = parts.next().filter(|s| !s.is_empty());
    let (prefix, number) = Prefix::split(number_part);
    let (v, lo, hi) =
        number_range(number).ok_or_else(|| bad_value(code, value, "[prefix]number|system|code"))?;
    let mut predicate = number_value_predicate(sql, prefix, v, lo, hi);
    match (system, unit) {
        (Some(system), Some(unit)) => {
            predicate += &format!(
                " AND t.system = {} AND t.code = {}",
                sql.text(system),
                sql.text(unit)
            );
        }
        (None, Some(unit)) => {
            let u = sql.text(unit);
            predicate += &format!(" AND (t.code = {u} OR t.unit = {u})");
        }
        (Some(system), None) => predicate += &format!(" AND t.system = {}", sql.text(system)),
        (None, None) => {}
    }
    Ok(format!("({predicate})"))
}

fn uri_predicate(
    sql: &mut Sql,
    value: &str,
    modifier: Option<&Modifier>,
    code: &str,
) -> Result<String> {
    Ok(match modifier {
        None => format!("t.value = {}", sql.text(value)),
        Some(Modifier::Below) => {
            let (lo, hi) = (sql.text(value), sql.text(&prefix_upper_bound(value)));
            format!("(t.value >= {lo} AND t.value < {hi})")
        }
        Some(Modifier::Above) => {
            let candidates: Vec<String> = uri_ancestors(value)
                .iter()
                .map(|candidate| sql.text(candidate))
                .collect();
            format!("t.value IN ({})", candidates.join(", "))
        }
        Some(other) => {
            return Err(Error::NotSupported(format!(
                "modifier {other:?} is not supported on uri parameter {code}"
            )));
        }
    })
}

/// The URLs a uri `:above` value matches (search.html#uri): the value and each of its
/// parents in the path, with and without a trailing `/`
/// (`http://a.org/fhir/ValueSet/1` -> `http://a.org/fhir/ValueSet/1`,
/// `http://a.org/fhir/ValueSet[/]`, `http://a.org/fhir[/]`, `http://a.org[/]`). A value
/// without a `scheme://authority` (a URN) has no parents.
fn uri_ancestors(value: &str) -> Vec<String> {
    let mut candidates = vec![value.to_owned()];
    let Some(authority_start) = value.find("://").map(|i| i + 3) else {
        return candidates;
    };
    let path_start = value[authority_start..]
        .find('/')
        .map_or(value.len(), |i| authority_start + i);
    let mut end = value.len();
    while end > path_start {
        end = value[..end]
            .rfind('/')
            .filter(|i| *i >= path_start)
            .unwrap_or(path_start);
        let parent = &value[..end];
        for candidate in [parent.to_owned(), format!("{parent}/")] {
            if !candidates.contains(&candidate) {
                candidates.push(candidate);
            }
        }
    }
    candidates
}

/// The SQL expression of a sort key for the resource row `r`, and whether it is numeric.
fn sort_expression(sql: &mut Sql, rtype: &str, key: &SortKey) -> Result<String> {
    Ok(match &key.field {
        SortField::Id => "r.id".to_owned(),
        SortField::LastUpdated => "r.last_updated".to_owned(),
        SortField::Param(param) => {
            let (table, column) = match param.kind {
                SearchParamType::String => ("idx_string", "norm"),
                SearchParamType::Token => ("idx_token", "code"),
                SearchParamType::Reference => ("idx_reference", "target_id"),
                SearchParamType::Date => ("idx_date", "lo"),
                SearchParamType::Number => ("idx_number", "value"),
                SearchParamType::Quantity => ("idx_quantity", "value"),
                SearchParamType::Uri => ("idx_uri", "value"),
                other => {
                    return Err(Error::NotSupported(format!(
                        "_sort on {} ({other:?}) is not supported",
                        param.code
                    )));
                }
            };
            let aggregate = if key.descending { "MAX" } else { "MIN" };
            let of_type = type_is(sql, "s.rtype", rtype);
            let p = sql.text(&param.code);
            format!(
                "(SELECT {aggregate}(s.{column}) FROM {table} s WHERE {of_type}s.rkey = r.rkey AND s.param = {p})"
            )
        }
    })
}

/// A position in a result set: the sort key values and the rkey of the last row served.
pub type Cursor = Vec<Bind>;

/// One page of matches.
#[derive(Debug)]
pub struct Page {
    pub rows: Vec<MatchRow>,
    /// Where the next page starts, if there is one.
    pub next: Option<Cursor>,
}

#[derive(Debug)]
pub struct MatchRow {
    pub rkey: i64,
    pub resource_type: String,
    pub id: String,
    /// The version served (for the audit record of the search).
    pub version_id: i64,
    pub body: String,
}

/// What to search: resource types (one, several or all), filters and order.
#[derive(Debug)]
pub struct Query<'a> {
    /// Empty means every type (system search).
    pub types: &'a [String],
    pub filters: &'a [Filter],
    pub sort: &'a [SortKey],
    pub base_url: &'a str,
}

/// A reference search value relative to this server: `[base]/Patient/1` → `Patient/1`;
/// any other value as it is.
fn local_reference<'a>(value: &'a str, base_url: &str) -> &'a str {
    value
        .strip_prefix(base_url)
        .map(|rest| rest.trim_start_matches('/'))
        .unwrap_or(value)
}

/// At most this many patients a search restricts itself to are decided once per statement.
const MAX_PINNED_PATIENTS: usize = 4;

/// The Patients (ids) a search restricts its matches to by its own parameters: `patient=`,
/// `subject=Patient/…` and the like (one or a few values), or a compartment search's
/// Patient. A guess, not a condition: each is only a patient whose consent the statement
/// decides once ([`Sql::decided_patients`]), which is right whatever the rows reference.
pub fn pinned_patients(filters: &[Filter], base_url: &str) -> Vec<String> {
    let mut pinned: Vec<String> = Vec::new();
    for filter in filters {
        match filter {
            Filter::PatientCompartment { patient_id, .. } => pinned.push(patient_id.clone()),
            Filter::Param {
                param,
                modifier,
                values,
            } if param.kind == SearchParamType::Reference
                && values.len() <= MAX_PINNED_PATIENTS
                && match modifier {
                    None => param.targets.iter().any(|t| t == "Patient"),
                    Some(Modifier::Type(t)) => t == "Patient",
                    Some(_) => false,
                } =>
            {
                for value in values {
                    let local = local_reference(value, base_url);
                    match local.split('/').collect::<Vec<_>>().as_slice() {
                        [id] if !id.is_empty() && !local.contains(':') => {
                            pinned.push((*id).to_owned())
                        }
                        ["Patient", id] if !id.is_empty() => pinned.push((*id).to_owned()),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    pinned.sort();
    pinned.dedup();
    pinned.truncate(MAX_PINNED_PATIENTS);
    pinned
}

fn where_clause(sql: &mut Sql, query: &Query<'_>) -> Result<String> {
    sql.decided_patients = pinned_patients(query.filters, query.base_url);
    let mut conditions = vec!["r.deleted = 0".to_owned()];
    match query.types {
        [] => {}
        [one] => conditions.push(format!("r.resource_type = {}", sql.text(one))),
        many => {
            let list: Vec<String> = many.iter().map(|t| sql.text(t)).collect();
            conditions.push(format!("r.resource_type IN ({})", list.join(", ")));
        }
    }
    for filter in query.filters {
        // a filter on a parameter is evaluated per type for multi-type searches; the
        // parameters allowed there are the common (Resource-level) ones
        let rtype = match query.types {
            [one] => one.as_str(),
            _ => "Resource",
        };
        conditions.push(condition(sql, "r", rtype, filter, query.base_url)?);
    }
    Ok(conditions.join(" AND "))
}

/// Counts every match (for `Bundle.total`).
#[tracing::instrument(name = "db.search_count", skip_all)]
pub async fn count(conn: &mut AnyConnection, query: &Query<'_>) -> Result<i64> {
    let mut sql = Sql::default();
    let conditions = where_clause(&mut sql, query)?;
    sql.text = format!("SELECT COUNT(*) AS n FROM resource r WHERE {conditions}");
    Ok(sql.query().fetch_one(conn).await?.try_get("n")?)
}

/// The ids of the first `limit` matches, in key order: what a conditional interaction needs
/// to tell none, one and many apart. The same conditions as [`page`], without its join to
/// the current version, its body and the sort keys.
#[tracing::instrument(name = "db.search_ids", skip_all)]
pub async fn ids(conn: &mut AnyConnection, query: &Query<'_>, limit: usize) -> Result<Vec<String>> {
    let mut sql = Sql::default();
    let conditions = where_clause(&mut sql, query)?;
    sql.text =
        format!("SELECT r.id FROM resource r WHERE {conditions} ORDER BY r.rkey LIMIT {limit}");
    let rows = sql.query().fetch_all(conn).await?;
    rows.iter().map(|row| Ok(row.try_get("id")?)).collect()
}

/// [`ids`] with the state of each match, locked until the transaction ends (PostgreSQL;
/// SQLite has a single writer) as [`super::current_for_update`] locks it: a conditional
/// update finds and locks what it updates in one statement.
#[tracing::instrument(name = "db.search_ids_for_update", skip_all)]
pub async fn ids_for_update(
    conn: &mut AnyConnection,
    query: &Query<'_>,
    limit: usize,
) -> Result<Vec<(String, super::Current)>> {
    let mut sql = Sql::default();
    let conditions = where_clause(&mut sql, query)?;
    let lock = match super::Backend::of(conn) {
        super::Backend::Postgres => " FOR UPDATE OF r",
        super::Backend::Sqlite => "",
    };
    sql.text = format!(
        "SELECT r.id, r.rkey, r.version_id, r.last_updated, r.deleted, r.index_tables \
         FROM resource r \
         WHERE {conditions} ORDER BY r.rkey LIMIT {limit}{lock}"
    );
    let rows = sql.query().fetch_all(conn).await?;
    rows.iter()
        .map(|row| Ok((row.try_get("id")?, super::Current::from_row(row)?)))
        .collect()
}

/// One page of matches in the requested order, starting after `after`.
#[tracing::instrument(name = "db.search", skip_all)]
pub async fn page(
    conn: &mut AnyConnection,
    query: &Query<'_>,
    after: Option<&Cursor>,
    limit: usize,
) -> Result<Page> {
    let mut sql = Sql::default();
    if super::Backend::of(conn) == super::Backend::Postgres {
        sql.deferred_consent = Some(Vec::new());
    }
    let conditions = where_clause(&mut sql, query)?;
    let deferred = sql.deferred_consent.take().unwrap_or_default();
    let rtype = match query.types {
        [one] => one.as_str(),
        _ => "Resource",
    };
    let mut key_columns = Vec::new();
    for (i, key) in query.sort.iter().enumerate() {
        key_columns.push((
            format!("k{i}"),
            sort_expression(&mut sql, rtype, key)?,
            key.descending,
        ));
    }
    let select_keys: String = key_columns
        .iter()
        .map(|(name, expr, _)| format!(", {expr} AS {name}"))
        .collect();
    let mut outer_conditions = Vec::new();
    if let Some(cursor) = after {
        outer_conditions.push(keyset_condition(&mut sql, &key_columns, cursor)?);
    }
    let order = |alias: &str| -> String {
        key_columns
            .iter()
            .map(|(name, _, descending)| {
                format!(
                    "({alias}.{name} IS NULL), {alias}.{name}{}",
                    if *descending { " DESC" } else { "" }
                )
            })
            .chain(std::iter::once(format!("{alias}.rkey")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // deferred consent checks the matches' recorded compartments (consent::condition)
    let compartment = if deferred.is_empty() {
        ""
    } else {
        ", r.compartment"
    };
    let matches = format!(
        "SELECT s.* FROM (SELECT r.rkey, r.resource_type, r.id, r.version_id{compartment}{select_keys} \
         FROM resource r WHERE {conditions}) s{} ORDER BY {}",
        if outer_conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", outer_conditions.join(" AND "))
        },
        order("s"),
    );
    // The page is chosen (filters, order, LIMIT) in a subquery of `resource` alone and only
    // its rows are joined with their bodies: PostgreSQL plans the two apart, which halves a
    // search's planning time, and a LIMIT inside the subquery keeps unselective searches
    // stopping at the page's end.
    let page = if deferred.is_empty() {
        format!("{matches} LIMIT {}", limit + 1)
    } else {
        // Consent is checked on the matches in their order until the page is full: the
        // matches are fenced (`OFFSET 0`) and the check is a subplan PostgreSQL cannot pull
        // into their joins, so their plan is the plan of the same search without consent
        // (cached as generic plans like it), the page's LIMIT still bounds how many are
        // produced (an outer level with no join or sort passes its row goal down), and the
        // check costs one probe per candidate. Inside the joins, a consent condition made
        // the cached generic plans start from the consent tables and cost several times more.
        format!(
            "{} LIMIT {}",
            consent_applied(&mut sql, &matches, &deferred, Some(rtype)),
            limit + 1
        )
    };
    sql.text = format!(
        "SELECT m.*, v.body FROM ({page}) m \
         JOIN resource_version v ON v.rkey = m.rkey AND v.version_id = m.version_id ORDER BY {}",
        order("m"),
    );
    let rows = sql.query().fetch_all(conn).await?;
    let mut matches = Vec::with_capacity(rows.len().min(limit));
    let mut next = None;
    for (n, row) in rows.iter().enumerate() {
        if n == limit {
            let last = &rows[n - 1];
            let mut cursor = Vec::new();
            for (name, _, _) in &key_columns {
                cursor.push(column_bind(last, name)?);
            }
            cursor.push(Bind::Int(last.try_get("rkey")?));
            next = Some(cursor);
            break;
        }
        matches.push(MatchRow {
            rkey: row.try_get("rkey")?,
            resource_type: row.try_get("resource_type")?,
            id: row.try_get("id")?,
            version_id: row.try_get("version_id")?,
            body: row.try_get("body")?,
        });
    }
    Ok(Page {
        rows: matches,
        next,
    })
}

/// The rows of `rows` (a query whose columns include `rkey`, `resource_type` and `id`) that
/// pass the `deferred` consent conditions, in their order: `rows` fenced, each condition a
/// subplan on its type's rows that PostgreSQL cannot pull into `rows`' joins (see [`page`]).
/// `only_type`: the one type `rows` hold, when it is known (no test of the type then).
fn consent_applied(
    sql: &mut Sql,
    rows: &str,
    deferred: &[DeferredConsent],
    only_type: Option<&str>,
) -> String {
    let checks: Vec<String> = deferred
        .iter()
        .map(|d| {
            let check = super::consent::condition(sql, "f", &d.rtype, &d.params, &d.grants);
            if only_type == Some(d.rtype.as_str()) {
                check
            } else {
                format!("(f.resource_type <> {} OR {check})", sql.text(&d.rtype))
            }
        })
        .collect();
    format!(
        "SELECT f.* FROM ({rows} OFFSET 0) f WHERE ({}) IS TRUE",
        checks.join(" AND ")
    )
}

fn column_bind(row: &sqlx::any::AnyRow, name: &str) -> Result<Bind> {
    use sqlx::ValueRef;
    let raw = row.try_get_raw(name)?;
    if raw.is_null() {
        return Ok(Bind::Null);
    }
    if let Ok(v) = row.try_get::<i64, _>(name) {
        return Ok(Bind::Int(v));
    }
    if let Ok(v) = row.try_get::<f64, _>(name) {
        return Ok(Bind::Float(v));
    }
    Ok(Bind::Text(row.try_get::<String, _>(name)?))
}

/// Rows strictly after the cursor in the order `(k0 IS NULL), k0, (k1 IS NULL), k1, ..., rkey`.
fn keyset_condition(
    sql: &mut Sql,
    keys: &[(String, String, bool)],
    cursor: &Cursor,
) -> Result<String> {
    if cursor.len() != keys.len() + 1 {
        return Err(Error::Invalid(
            "the paging cursor does not belong to this search".to_owned(),
        ));
    }
    let Bind::Int(last_rkey) = cursor[keys.len()] else {
        return Err(Error::Invalid("the paging cursor is malformed".to_owned()));
    };
    let mut alternatives = Vec::new();
    let mut equal_so_far: Vec<String> = Vec::new();
    for ((name, _, descending), value) in keys.iter().zip(cursor) {
        let (after, equal) = match value {
            Bind::Null => ("1 = 0".to_owned(), format!("s.{name} IS NULL")),
            value => {
                let p = sql.bind(value.clone());
                let op = if *descending { "<" } else { ">" };
                (
                    format!("(s.{name} {op} {p} OR s.{name} IS NULL)"),
                    format!("s.{name} = {p}"),
                )
            }
        };
        alternatives.push(conj(&equal_so_far, &after));
        equal_so_far.push(equal);
    }
    let r = sql.bind(Bind::Int(last_rkey));
    alternatives.push(conj(&equal_so_far, &format!("s.rkey > {r}")));
    Ok(format!("({})", alternatives.join(" OR ")))
}

fn conj(prefix: &[String], last: &str) -> String {
    if prefix.is_empty() {
        last.to_owned()
    } else {
        format!("({} AND {last})", prefix.join(" AND "))
    }
}

/// Resources that the given resources point to through `param` (for `_include`).
#[tracing::instrument(name = "db.search_include", skip_all)]
pub async fn included(
    conn: &mut AnyConnection,
    source_rkeys: &[i64],
    param: &str,
    target_type: Option<&str>,
    allowed: Option<&Filter>,
    base_url: &str,
) -> Result<Vec<MatchRow>> {
    if source_rkeys.is_empty() {
        return Ok(Vec::new());
    }
    let postgres = super::Backend::of(conn) == super::Backend::Postgres;
    let mut sql = Sql::default();
    let keys = super::bulk::among(
        &mut sql,
        postgres,
        "x.rkey",
        super::bulk::Kind::BigInt,
        source_rkeys.iter().map(|k| Bind::Int(*k)),
    );
    let p = sql.text(param);
    let type_condition = target_type
        .map(|t| format!(" AND x.target_type = {}", sql.text(t)))
        .unwrap_or_default();
    if postgres {
        sql.deferred_consent = Some(Vec::new());
    }
    let allowed = allowed_condition(&mut sql, allowed, target_type, base_url)?;
    let rows = format!(
        "SELECT r.rkey, r.resource_type, r.id, r.version_id, r.compartment, v.body FROM resource r JOIN resource_version v \
         ON v.rkey = r.rkey AND v.version_id = r.version_id WHERE r.deleted = 0 AND EXISTS (SELECT 1 FROM idx_reference x \
         WHERE {keys} AND x.param = {p}{type_condition} AND x.target_type = r.resource_type AND x.target_id = r.id){allowed}"
    );
    sql.text = with_deferred_consent(&mut sql, rows, target_type);
    rows_to_matches(&sql.query().fetch_all(conn).await?)
}

/// `rows` with the consent conditions `sql` deferred applied to them (an include's rows are
/// few: one probe each), or `rows` as they are.
fn with_deferred_consent(sql: &mut Sql, rows: String, rtype: Option<&str>) -> String {
    let deferred = sql.deferred_consent.take().unwrap_or_default();
    if deferred.is_empty() {
        return rows;
    }
    consent_applied(sql, &rows, &deferred, rtype)
}

/// Resources of `source_type` that point to the given resources through `param` (for `_revinclude`).
#[tracing::instrument(name = "db.search_revinclude", skip_all)]
pub async fn rev_included(
    conn: &mut AnyConnection,
    targets: &[(String, String)],
    source_type: &str,
    param: &str,
    allowed: Option<&Filter>,
    base_url: &str,
) -> Result<Vec<MatchRow>> {
    if targets.is_empty() {
        return Ok(Vec::new());
    }
    let postgres = super::Backend::of(conn) == super::Backend::Postgres;
    let mut sql = Sql::default();
    let st = sql.text(source_type);
    let p = sql.text(param);
    let mut by_type: std::collections::BTreeMap<&str, Vec<&str>> =
        std::collections::BTreeMap::new();
    for (t, id) in targets {
        by_type.entry(t.as_str()).or_default().push(id.as_str());
    }
    let mut alternatives = Vec::new();
    for (t, ids) in by_type {
        let t = sql.text(t);
        let ids = super::bulk::among(
            &mut sql,
            postgres,
            "x.target_id",
            super::bulk::Kind::Text,
            ids.into_iter().map(|id| Bind::Text(id.to_owned())),
        );
        alternatives.push(format!("(x.target_type = {t} AND {ids})"));
    }
    if postgres {
        sql.deferred_consent = Some(Vec::new());
    }
    let allowed = allowed_condition(&mut sql, allowed, Some(source_type), base_url)?;
    let rows = format!(
        "SELECT r.rkey, r.resource_type, r.id, r.version_id, r.compartment, v.body FROM resource r JOIN resource_version v \
         ON v.rkey = r.rkey AND v.version_id = r.version_id WHERE r.deleted = 0 AND r.resource_type = {st} AND r.rkey IN \
         (SELECT x.rkey FROM idx_reference x WHERE x.rtype = {st} AND x.param = {p} AND ({})){allowed}",
        alternatives.join(" OR ")
    );
    sql.text = with_deferred_consent(&mut sql, rows, Some(source_type));
    rows_to_matches(&sql.query().fetch_all(conn).await?)
}

/// ` AND {condition}` of what an access token may see on the row `r` (of `rtype` if known),
/// or nothing.
fn allowed_condition(
    sql: &mut Sql,
    allowed: Option<&Filter>,
    rtype: Option<&str>,
    base_url: &str,
) -> Result<String> {
    Ok(match allowed {
        Some(filter) => format!(
            " AND {}",
            condition(sql, "r", rtype.unwrap_or("Resource"), filter, base_url)?
        ),
        None => String::new(),
    })
}

/// Whether the current row of `resource_type/id` (deleted or not) satisfies `filter`.
#[tracing::instrument(name = "db.access_check", skip_all)]
pub async fn row_matches(
    conn: &mut AnyConnection,
    resource_type: &str,
    id: &str,
    filter: &Filter,
    base_url: &str,
) -> Result<bool> {
    let mut sql = Sql::default();
    let (t, i) = (sql.text(resource_type), sql.text(id));
    let condition = condition(&mut sql, "r", resource_type, filter, base_url)?;
    sql.text = format!(
        "SELECT COUNT(*) AS n FROM resource r WHERE r.resource_type = {t} AND r.id = {i} AND {condition}"
    );
    let n: i64 = sql.query().fetch_one(conn).await?.try_get("n")?;
    Ok(n > 0)
}

fn rows_to_matches(rows: &[sqlx::any::AnyRow]) -> Result<Vec<MatchRow>> {
    rows.iter()
        .map(|row| {
            Ok(MatchRow {
                rkey: row.try_get("rkey")?,
                resource_type: row.try_get("resource_type")?,
                id: row.try_get("id")?,
                version_id: row.try_get("version_id")?,
                body: row.try_get("body")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_above_candidates_are_the_path_parents() {
        assert_eq!(
            uri_ancestors("http://a.org/fhir/ValueSet/1/_history/5"),
            [
                "http://a.org/fhir/ValueSet/1/_history/5",
                "http://a.org/fhir/ValueSet/1/_history",
                "http://a.org/fhir/ValueSet/1/_history/",
                "http://a.org/fhir/ValueSet/1",
                "http://a.org/fhir/ValueSet/1/",
                "http://a.org/fhir/ValueSet",
                "http://a.org/fhir/ValueSet/",
                "http://a.org/fhir",
                "http://a.org/fhir/",
                "http://a.org",
                "http://a.org/",
            ]
        );
        assert_eq!(
            uri_ancestors("http://a.org/fhir/"),
            [
                "http://a.org/fhir/",
                "http://a.org/fhir",
                "http://a.org",
                "http://a.org/"
            ]
        );
        assert_eq!(uri_ancestors("http://a.org"), ["http://a.org"]);
        assert_eq!(uri_ancestors("urn:oid:1.2.3"), ["urn:oid:1.2.3"]);
    }

    #[test]
    fn text_conditions_use_the_word_index() {
        let query = TextQuery::All(vec![
            TextQuery::Any(vec![
                TextQuery::Word {
                    word: "bone".into(),
                    whole: false,
                },
                TextQuery::Word {
                    word: "liver".into(),
                    whole: true,
                },
            ]),
            TextQuery::Word {
                word: "meta".into(),
                whole: false,
            },
        ]);
        let mut sql = Sql::default();
        let condition = text_condition(&mut sql, "r", "Condition", true, &query);
        assert_eq!(
            condition,
            "((r.rkey IN (SELECT w.rkey FROM idx_word w WHERE w.rtype = $3 AND w.word >= $1 AND w.word < $2 AND w.narrative = 1) \
             OR r.rkey IN (SELECT w.rkey FROM idx_word w WHERE w.rtype = $5 AND w.word = $4 AND w.narrative = 1)) \
             AND r.rkey IN (SELECT w.rkey FROM idx_word w WHERE w.rtype = $8 AND w.word >= $6 AND w.word < $7 AND w.narrative = 1))"
        );
        assert_eq!(sql.binds[0], Bind::Text("bone".into()));
        assert_eq!(sql.binds[1], Bind::Text("bone\u{10FFFF}".into()));
        let mut sql = Sql::default();
        let every_type = text_condition(
            &mut sql,
            "r",
            "Resource",
            false,
            &TextQuery::Word {
                word: "x".into(),
                whole: true,
            },
        );
        assert_eq!(
            every_type,
            "EXISTS (SELECT 1 FROM idx_word w WHERE w.rkey = r.rkey AND w.word = $1)"
        );
    }
}
