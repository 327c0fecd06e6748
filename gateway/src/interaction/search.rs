//! `search` at type, system and Patient-compartment level (http.html#search, search.html).
//!
//! The query string is parsed into filters over the R4 search parameters (unknown
//! parameters follow `Prefer: handling`), the matches are read one keyset page at a time,
//! and the answer is a `searchset` Bundle with `self` and `next` links, the matches, any
//! `_include`d / `_revinclude`d resources, and (lenient handling) an OperationOutcome
//! naming what was ignored. `_summary` and `_elements` subset the resources served
//! ([`crate::subset`]): `_summary` every resource, `_elements` the matches.

use std::collections::HashSet;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fhir_profiles::compartment::patient_compartment_params;
use fhir_profiles::search::{Registry, SearchParamType, SearchParameter};
use serde_json::{Value, json};
use sqlx::AnyConnection;

use super::{Context, Outcome};
use crate::access::Access;
use crate::auth::scopes::Permission;
use crate::bundle::BundleWriter;
use crate::error::{Error, Result};
use crate::model::{ResourceId, ResourceType};
use crate::store::search::{
    self as sql, Alternative, Cursor, Filter, Modifier, Query, SortField, SortKey, TextQuery,
    TypeCondition,
};
use crate::subset::{self, ResultParams, SearchMode, Subset};

/// How unknown or unsupported search parameters are treated (`Prefer: handling=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Handling {
    Strict,
    #[default]
    Lenient,
}

/// `_total`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Total {
    None,
    Estimate,
    Accurate,
}

/// Whether the search returns its matches or only their number (`_summary=count`, `_count=0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    False,
    Count,
}

#[derive(Debug, Clone)]
struct Include {
    source_type: String,
    param: String,
    target_type: Option<String>,
    iterate: bool,
}

/// A parsed search request.
#[derive(Debug)]
pub struct SearchRequest {
    types: Vec<String>,
    filters: Vec<Filter>,
    sort: Vec<SortKey>,
    count: usize,
    cursor: Option<Cursor>,
    includes: Vec<Include>,
    revincludes: Vec<Include>,
    total: Total,
    summary: Summary,
    /// `_summary=true|text|data` or `_elements`.
    subset: Option<Subset>,
    /// What was ignored (lenient handling), for the OperationOutcome entry.
    ignored: Vec<String>,
    /// The parameters that were applied, for the `self` and `next` links.
    applied: Vec<(String, String)>,
}

/// Where a search runs.
#[derive(Debug, Clone)]
pub enum Scope<'a> {
    /// `[base]?_type=...`
    System,
    /// `[base]/[type]?...`
    Type(&'a ResourceType),
    /// `[base]/Patient/[id]/[type]?...`
    PatientCompartment(&'a ResourceId, &'a ResourceType),
    /// `[base]/Patient/[id]/$everything?...`: the patient and every resource in their
    /// compartment (`_type` narrows the types, `_since` the last update).
    Everything(&'a ResourceId),
}

fn registry() -> &'static Registry {
    Registry::r4()
}

impl SearchRequest {
    /// Parses `query` (an `application/x-www-form-urlencoded` string) for `scope`.
    pub fn parse(
        ctx: &Context,
        scope: &Scope<'_>,
        query: &str,
        handling: Handling,
    ) -> Result<SearchRequest> {
        let config = &ctx.config.search;
        let mut request = SearchRequest {
            types: Vec::new(),
            filters: Vec::new(),
            sort: Vec::new(),
            count: config.default_count,
            cursor: None,
            includes: Vec::new(),
            revincludes: Vec::new(),
            total: Total::Accurate,
            summary: Summary::False,
            subset: None,
            ignored: Vec::new(),
            applied: Vec::new(),
        };
        let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        if let Scope::Everything(_) = scope {
            // `_since`: what changed since then (the Patient included when it changed)
            for (name, value) in &mut pairs {
                if name == "_since" {
                    *name = "_lastUpdated".to_owned();
                    *value = format!("ge{value}");
                }
            }
        }
        match scope {
            Scope::Type(t) => request.types.push(t.to_string()),
            Scope::PatientCompartment(patient, t) => {
                request.types.push(t.to_string());
                let params = patient_compartment_params(t.as_str());
                if params.is_empty() && t.as_str() != "Patient" {
                    return Err(Error::Invalid(format!(
                        "{t} is not in the Patient compartment"
                    )));
                }
                request.filters.push(Filter::PatientCompartment {
                    patient_id: patient.to_string(),
                    params: params.to_vec(),
                });
            }
            Scope::Everything(patient) => {
                let mut types: Vec<String> = std::iter::once("Patient")
                    .chain(fhir_profiles::compartment::patient_compartment_types())
                    .map(str::to_owned)
                    .collect();
                types.sort();
                types.dedup();
                if let Some((_, value)) = pairs.iter().find(|(name, _)| name == "_type") {
                    let mut asked = Vec::new();
                    for t in value.split(',') {
                        let t = ResourceType::parse(t.trim())?.to_string();
                        if !types.contains(&t) {
                            return Err(Error::Invalid(format!(
                                "_type={t}: $everything returns the Patient and the types of the Patient compartment; {t} is not one of them"
                            )));
                        }
                        asked.push(t);
                    }
                    types = asked;
                } else {
                    // the record, not its audit trail: AuditEvents only when asked for
                    types.retain(|t| t != crate::audit::AUDIT_EVENT);
                }
                let alternatives = types
                    .iter()
                    .map(|t| Alternative {
                        types: TypeCondition::Is(t.clone()),
                        filters: vec![Filter::PatientCompartment {
                            patient_id: patient.to_string(),
                            params: patient_compartment_params(t).to_vec(),
                        }],
                    })
                    .collect();
                request.filters.push(Filter::AnyOf(alternatives));
                request.types = types;
            }
            Scope::System => {
                for (name, value) in &pairs {
                    if name == "_type" {
                        for t in value.split(',') {
                            request
                                .types
                                .push(ResourceType::parse(t.trim())?.to_string());
                        }
                    }
                }
            }
        }
        let base_type = match request.types.as_slice() {
            [one] => one.clone(),
            _ => "Resource".to_owned(),
        };
        let types = request.types.clone();
        let types: Vec<&str> = types.iter().map(String::as_str).collect();
        let mut result_params = ResultParams::default();
        for (name, value) in pairs {
            if result_params.take(&name, &value, &types, handling)? {
                continue;
            }
            let result = request.apply(ctx, &base_type, &name, &value);
            match (result, handling) {
                (Ok(()), _) => {}
                (Err(Error::NotSupported(message)), Handling::Lenient) => {
                    request.ignored.push(message)
                }
                (Err(error), _) => return Err(error),
            }
        }
        if result_params.summary() == Some(subset::Summary::Count) {
            request.summary = Summary::Count;
        }
        request.subset = result_params.subset()?;
        request.applied.extend(result_params.applied());
        request.ignored.append(&mut result_params.ignored);
        Ok(request)
    }

    fn apply(&mut self, ctx: &Context, base_type: &str, name: &str, value: &str) -> Result<()> {
        let config = &ctx.config.search;
        match name {
            "_type" => {
                self.applied.push((name.to_owned(), value.to_owned()));
            }
            "_count" => {
                let n: usize = value.parse().map_err(|_| {
                    Error::Invalid(format!("_count={value}: expected a non-negative integer"))
                })?;
                self.count = n.min(config.max_count);
                if n == 0 {
                    self.summary = Summary::Count;
                }
            }
            "_page" => {
                let cursor = URL_SAFE_NO_PAD
                    .decode(value)
                    .ok()
                    .and_then(|bytes| serde_json::from_slice::<Cursor>(&bytes).ok())
                    .ok_or_else(|| {
                        Error::Invalid("_page is not a paging cursor of this server".to_owned())
                    })?;
                self.cursor = Some(cursor);
            }
            "_total" => {
                self.total = match value {
                    "none" => Total::None,
                    "estimate" => Total::Estimate,
                    "accurate" => Total::Accurate,
                    _ => {
                        return Err(Error::Invalid(format!(
                            "_total={value}: expected none, estimate or accurate"
                        )));
                    }
                };
                self.applied.push((name.to_owned(), value.to_owned()));
            }
            "_contained" | "_containedType" | "_list" | "_query" | "_filter" => {
                return Err(Error::NotSupported(format!("{name} is not supported")));
            }
            "_sort" => {
                for key in value.split(',').filter(|k| !k.is_empty()) {
                    let (descending, code) = match key.strip_prefix('-') {
                        Some(code) => (true, code),
                        None => (false, key),
                    };
                    let field = match code {
                        "_id" => SortField::Id,
                        "_lastUpdated" => SortField::LastUpdated,
                        _ => SortField::Param(lookup(base_type, code)?),
                    };
                    self.sort.push(SortKey { field, descending });
                }
                self.applied.push((name.to_owned(), value.to_owned()));
            }
            "_include" | "_include:iterate" | "_revinclude" | "_revinclude:iterate" => {
                let iterate = name.ends_with(":iterate");
                let include = parse_include(value, iterate)?;
                if name.starts_with("_include") {
                    self.includes.push(include);
                } else {
                    self.revincludes.push(include);
                }
                self.applied.push((name.to_owned(), value.to_owned()));
            }
            "_format" | "_pretty" => {}
            _ => {
                let filter = parse_filter(base_type, name, value)?;
                self.filters.push(filter);
                self.applied.push((name.to_owned(), value.to_owned()));
            }
        }
        Ok(())
    }
}

impl SearchRequest {
    /// Confines the search to what `access` may search (403 when it may search none of the
    /// types): the allowed set becomes one more filter of the query, so totals and paging
    /// stay right, and chained and `_has` parameters only look at searchable resources.
    fn confine(&mut self, access: &Access) -> Result<()> {
        if access.is_operator() {
            return Ok(());
        }
        let filters = std::mem::take(&mut self.filters);
        self.filters = filters
            .into_iter()
            .map(|f| access.confine(f))
            .collect::<Result<_>>()?;
        if let Some(allowed) = access.allowed_types(Permission::Search, &self.types)? {
            self.filters.push(allowed);
        }
        Ok(())
    }
}

/// The types an `_include` may bring in: its target type, else the types its parameter
/// points to (so that the access condition is built for those types only, not for every
/// type there is).
fn include_targets(include: &Include) -> Vec<String> {
    match &include.target_type {
        Some(t) => vec![t.clone()],
        None => lookup(&include.source_type, &include.param)
            .map(|p| p.targets.clone())
            .unwrap_or_default(),
    }
}

fn parse_include(value: &str, iterate: bool) -> Result<Include> {
    let parts: Vec<&str> = value.split(':').collect();
    let (source_type, param, target_type) = match parts.as_slice() {
        [source, param] => (*source, *param, None),
        [source, param, target] => (
            *source,
            *param,
            Some(ResourceType::parse(target)?.to_string()),
        ),
        _ => {
            return Err(Error::Invalid(format!(
                "_include={value}: expected [type]:[parameter] or [type]:[parameter]:[target type]"
            )));
        }
    };
    let source_type = ResourceType::parse(source_type)?.to_string();
    let definition = lookup(&source_type, param)?;
    if definition.kind != SearchParamType::Reference {
        return Err(Error::Invalid(format!(
            "_include={value}: {param} is not a reference parameter"
        )));
    }
    Ok(Include {
        source_type,
        param: param.to_owned(),
        target_type,
        iterate,
    })
}

/// The definition of `code` on `resource_type`; across types (`Resource`), the parameters
/// every resource has (`_tag`, `_profile`, `_security`, `_source`, ...).
fn lookup(resource_type: &str, code: &str) -> Result<&'static SearchParameter> {
    let found = if resource_type == "Resource" {
        registry().common(code)
    } else {
        registry().get(resource_type, code)
    };
    let found = found.ok_or_else(|| {
        Error::NotSupported(format!(
            "unknown search parameter {code:?} for {resource_type}"
        ))
    })?;
    if !crate::store::is_supported(resource_type, code) {
        return Err(Error::NotSupported(format!(
            "search parameter {code:?} is not supported for {resource_type}: its values are not \
             indexed (see the CapabilityStatement for the parameters that are)"
        )));
    }
    Ok(found)
}

/// Parses one `name=value` search criterion (with modifiers, chains and `_has`).
pub fn parse_filter(resource_type: &str, name: &str, value: &str) -> Result<Filter> {
    if value.is_empty() {
        return Err(Error::Invalid(format!("{name} has an empty value")));
    }
    if let Some(rest) = name.strip_prefix("_has:") {
        // _has:[type]:[reference param]:[param]=value
        let mut parts = rest.splitn(3, ':');
        let (Some(source_type), Some(ref_param), Some(inner_name)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::Invalid(format!(
                "{name}: expected _has:[type]:[reference parameter]:[parameter]"
            )));
        };
        let source_type = ResourceType::parse(source_type)?.to_string();
        let param = lookup(&source_type, ref_param)?;
        if param.kind != SearchParamType::Reference {
            return Err(Error::Invalid(format!(
                "{name}: {ref_param} is not a reference parameter"
            )));
        }
        let inner = parse_filter(&source_type, inner_name, value)?;
        return Ok(Filter::Has {
            source_type,
            param,
            inner: Box::new(inner),
        });
    }
    if let Some((head, chained)) = name.split_once('.') {
        let (code, type_modifier) = match head.split_once(':') {
            Some((code, t)) => (code, Some(ResourceType::parse(t)?.to_string())),
            None => (head, None),
        };
        let param = lookup(resource_type, code)?;
        if param.kind != SearchParamType::Reference {
            return Err(Error::Invalid(format!(
                "{name}: {code} is not a reference parameter, so it cannot be chained"
            )));
        }
        let target_types: Vec<String> = match type_modifier {
            Some(t) => vec![t],
            None => param.targets.clone(),
        };
        let chained_code = chained.split(['.', ':']).next().unwrap_or(chained);
        let usable: Vec<String> = target_types
            .into_iter()
            .filter(|t| {
                chained_code.starts_with("_has")
                    || registry().get(t, chained_code).is_some()
                    || chained_code == "_id"
            })
            .collect();
        if usable.is_empty() {
            return Err(Error::NotSupported(format!(
                "{name}: no target of {code} has a search parameter {chained_code:?}"
            )));
        }
        let mut inners = Vec::new();
        for t in &usable {
            inners.push(parse_filter(t, chained, value)?);
        }
        // the inner filter is the same for every target type except for the parameter
        // definition, which the condition builder looks up per type; use the first
        let inner = inners
            .into_iter()
            .next()
            .ok_or_else(|| Error::Invalid(format!("{name}: nothing to chain")))?;
        return Ok(Filter::Chain {
            param,
            target_types: usable,
            inner: Box::new(inner),
        });
    }
    let (code, modifier) = match name.split_once(':') {
        Some((code, modifier)) => (code, Some(modifier)),
        None => (name, None),
    };
    let values: Vec<String> = split_or(value);
    match code {
        // answered from the resource's own columns, which have no index rows to apply a
        // modifier to (`store::is_indexed`)
        "_id" | "_lastUpdated" => {
            if let Some(modifier) = modifier {
                return Err(Error::NotSupported(format!(
                    "modifier :{modifier} is not supported on {code}"
                )));
            }
            return Ok(if code == "_id" {
                Filter::Id(values)
            } else {
                Filter::LastUpdated(values)
            });
        }
        "_text" | "_content" => {
            if resource_type != "Resource" {
                lookup(resource_type, code)?;
            }
            if let Some(modifier) = modifier {
                return Err(Error::NotSupported(format!(
                    "modifier :{modifier} is not supported on {code}"
                )));
            }
            let queries = values
                .iter()
                .map(|v| parse_text_query(name, v))
                .collect::<Result<Vec<_>>>()?;
            return Ok(Filter::Text {
                narrative_only: code == "_text",
                query: match <[TextQuery; 1]>::try_from(queries) {
                    Ok([one]) => one,
                    Err(many) => TextQuery::Any(many),
                },
            });
        }
        _ => {}
    }
    let param = lookup(resource_type, code)?;
    let modifier = match modifier {
        None => None,
        Some("exact") => Some(Modifier::Exact),
        Some("contains") => Some(Modifier::Contains),
        Some("missing") => Some(Modifier::Missing),
        Some("not") => Some(Modifier::Not),
        Some("text") => Some(Modifier::Text),
        Some("identifier") => Some(Modifier::Identifier),
        Some("above") => Some(Modifier::Above),
        Some("below") => Some(Modifier::Below),
        Some("in") if param.kind == SearchParamType::Token => Some(Modifier::In),
        Some("not-in") if param.kind == SearchParamType::Token => Some(Modifier::NotIn),
        Some("of-type") if param.kind == SearchParamType::Token => Some(Modifier::OfType),
        Some(t)
            if param.kind == SearchParamType::Reference
                && t.starts_with(|c: char| c.is_ascii_uppercase()) =>
        {
            Some(Modifier::Type(ResourceType::parse(t)?.to_string()))
        }
        Some(other) => {
            return Err(Error::NotSupported(format!(
                "modifier :{other} is not supported on {code}"
            )));
        }
    };
    // values that need the package's terminology are checked here, so that an unknown
    // value set or code system is a 400 naming it whatever the handling
    for value in &values {
        match (&modifier, param.kind) {
            (Some(Modifier::In | Modifier::NotIn), _) => {
                sql::value_set(value)?;
            }
            (Some(Modifier::Above | Modifier::Below), SearchParamType::Token) => {
                sql::subsumption_concept(value)?;
            }
            (Some(Modifier::OfType), _) => {
                sql::of_type_value(value)?;
            }
            _ => {}
        }
    }
    Ok(Filter::Param {
        param,
        modifier,
        values,
    })
}

/// The most words one `_text`/`_content` value may hold.
const MAX_TEXT_WORDS: usize = 32;

/// Parses a `_text`/`_content` value (search.html#text) into words combined with AND and
/// OR: words separated by spaces must all occur (`AND` may be written), `OR` between words
/// or groups takes either, parentheses group, and a word matches every indexed word it
/// starts. A "quoted phrase" matches its words as whole words, in any order and place.
/// `and`/`or` in lower case are operators too (the spec's example writes
/// `(bone OR liver) and metastases`).
fn parse_text_query(name: &str, value: &str) -> Result<TextQuery> {
    let tokens = text_tokens(value);
    let mut parser = TextParser {
        name,
        tokens: &tokens,
        position: 0,
        words: 0,
    };
    let query = parser.any()?;
    if let Some(token) = parser.tokens.get(parser.position) {
        return Err(parser.error(&format!("unexpected {token}")));
    }
    if parser.words == 0 {
        return Err(Error::Invalid(format!(
            "{name}={value}: no word to search for"
        )));
    }
    Ok(query)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TextToken {
    Open,
    Close,
    And,
    Or,
    Term(String),
    Phrase(String),
}

impl std::fmt::Display for TextToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TextToken::Open => f.write_str("("),
            TextToken::Close => f.write_str(")"),
            TextToken::And => f.write_str("AND"),
            TextToken::Or => f.write_str("OR"),
            TextToken::Term(text) => f.write_str(text),
            TextToken::Phrase(text) => write!(f, "\"{text}\""),
        }
    }
}

fn text_tokens(value: &str) -> Vec<TextToken> {
    let mut tokens = Vec::new();
    let mut chars = value.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '(' => tokens.push(TextToken::Open),
            ')' => tokens.push(TextToken::Close),
            '"' => {
                let end = value[start + 1..]
                    .find('"')
                    .map_or(value.len(), |i| start + 1 + i);
                tokens.push(TextToken::Phrase(value[start + 1..end].to_owned()));
                while chars.next_if(|(i, _)| *i <= end).is_some() {}
            }
            _ => {
                let mut end = value.len();
                while let Some((i, c)) = chars.peek() {
                    if c.is_whitespace() || matches!(c, '(' | ')' | '"') {
                        end = *i;
                        break;
                    }
                    chars.next();
                }
                let term = &value[start..end];
                tokens.push(match term {
                    "AND" | "and" => TextToken::And,
                    "OR" | "or" => TextToken::Or,
                    _ => TextToken::Term(term.to_owned()),
                });
            }
        }
    }
    tokens
}

struct TextParser<'t> {
    name: &'t str,
    tokens: &'t [TextToken],
    position: usize,
    words: usize,
}

impl TextParser<'_> {
    fn error(&self, what: &str) -> Error {
        Error::Invalid(format!(
            "{}: {what}; expected words, \"quoted words\", OR and parentheses",
            self.name
        ))
    }

    fn peek(&self) -> Option<&TextToken> {
        self.tokens.get(self.position)
    }

    /// `all (OR all)*`
    fn any(&mut self) -> Result<TextQuery> {
        let mut alternatives = vec![self.all()?];
        while self.peek() == Some(&TextToken::Or) {
            self.position += 1;
            alternatives.push(self.all()?);
        }
        Ok(flatten(alternatives, TextQuery::Any))
    }

    /// `primary ((AND)? primary)*`
    fn all(&mut self) -> Result<TextQuery> {
        let mut parts = vec![self.primary()?];
        loop {
            match self.peek() {
                Some(TextToken::And) => {
                    self.position += 1;
                    parts.push(self.primary()?);
                }
                Some(TextToken::Open | TextToken::Term(_) | TextToken::Phrase(_)) => {
                    parts.push(self.primary()?)
                }
                _ => break,
            }
        }
        Ok(flatten(parts, TextQuery::All))
    }

    fn primary(&mut self) -> Result<TextQuery> {
        let token = self
            .peek()
            .cloned()
            .ok_or_else(|| self.error("the value ends too early"))?;
        self.position += 1;
        let (text, whole) = match token {
            TextToken::Open => {
                let inner = self.any()?;
                if self.peek() != Some(&TextToken::Close) {
                    return Err(self.error("a parenthesis is not closed"));
                }
                self.position += 1;
                return Ok(inner);
            }
            TextToken::Term(text) => (text, false),
            TextToken::Phrase(text) => (text, true),
            other => return Err(self.error(&format!("unexpected {other}"))),
        };
        let words = fhir_profiles::text::term_words(&text);
        self.words += words.len();
        if self.words > MAX_TEXT_WORDS {
            return Err(self.error(&format!("more than {MAX_TEXT_WORDS} words")));
        }
        // a term without letters or digits (`-`) has no words: it adds no condition
        let words = words
            .into_iter()
            .map(|word| TextQuery::Word { word, whole })
            .collect();
        Ok(flatten(words, TextQuery::All))
    }
}

/// One part as itself, several as `combine(parts)`: nested combinations of the same kind
/// are merged, and parts without words (`All([])`, no condition) left out; nothing left is
/// `All([])`.
fn flatten(parts: Vec<TextQuery>, combine: fn(Vec<TextQuery>) -> TextQuery) -> TextQuery {
    let mut flat = Vec::with_capacity(parts.len());
    for part in parts {
        match (combine(Vec::new()), part) {
            (_, TextQuery::All(inner)) if inner.is_empty() => {}
            (TextQuery::All(_), TextQuery::All(inner))
            | (TextQuery::Any(_), TextQuery::Any(inner)) => flat.extend(inner),
            (_, part) => flat.push(part),
        }
    }
    match flat.len() {
        0 => TextQuery::All(Vec::new()),
        1 => flat.pop().unwrap_or(TextQuery::All(Vec::new())),
        _ => combine(flat),
    }
}

/// Splits OR-ed values at commas that are not escaped (`\,`).
fn split_or(value: &str) -> Vec<String> {
    let mut values = Vec::new();
    let mut current = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    if !matches!(next, ',' | '$' | '|' | '\\') {
                        current.push('\\');
                    }
                    current.push(next);
                }
            }
            ',' => values.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    values.push(current);
    values
}

/// The ids of the resources of `resource_type` matching `criteria` (for conditional
/// create, update, delete and patch), at most `limit`. Criteria must be understood fully.
pub async fn matching_ids(
    conn: &mut AnyConnection,
    ctx: &Context,
    access: &Access,
    resource_type: &ResourceType,
    criteria: &str,
    limit: usize,
) -> Result<Vec<ResourceId>> {
    let request = criteria_request(ctx, access, resource_type, criteria)?;
    sql::ids(conn, &request.query(ctx), limit)
        .await?
        .iter()
        .map(|id| ResourceId::parse(id))
        .collect()
}

/// [`matching_ids`] with each match's current state, locked for the update that follows
/// (a conditional update: one statement rather than a search and a lock).
pub async fn matching_for_update(
    conn: &mut AnyConnection,
    ctx: &Context,
    access: &Access,
    resource_type: &ResourceType,
    criteria: &str,
    limit: usize,
) -> Result<Vec<(ResourceId, crate::store::Current)>> {
    let request = criteria_request(ctx, access, resource_type, criteria)?;
    sql::ids_for_update(conn, &request.query(ctx), limit)
        .await?
        .into_iter()
        .map(|(id, current)| Ok((ResourceId::parse(&id)?, current)))
        .collect()
}

/// The search a conditional interaction's criteria make, within what the token may search.
fn criteria_request(
    ctx: &Context,
    access: &Access,
    resource_type: &ResourceType,
    criteria: &str,
) -> Result<SearchRequest> {
    let criteria = criteria.trim_start_matches('?');
    let mut request =
        SearchRequest::parse(ctx, &Scope::Type(resource_type), criteria, Handling::Strict)?;
    if request.filters.is_empty() {
        return Err(Error::PreconditionFailed(format!(
            "the conditional criteria {criteria:?} select nothing; give search parameters"
        )));
    }
    // a conditional operation sees only what the token may search
    request.confine(access)?;
    Ok(request)
}

impl SearchRequest {
    /// The conditions of this request's filters, unsorted.
    fn query<'a>(&'a self, ctx: &'a Context) -> Query<'a> {
        Query {
            types: &self.types,
            filters: &self.filters,
            sort: &[],
            base_url: &ctx.base_url,
        }
    }
}

/// Runs a search and builds the `searchset` Bundle.
pub async fn search(
    conn: &mut AnyConnection,
    ctx: &Context,
    access: &Access,
    scope: &Scope<'_>,
    mut request: SearchRequest,
) -> Result<Outcome> {
    request.confine(access)?;
    let query = Query {
        types: &request.types,
        filters: &request.filters,
        sort: &request.sort,
        base_url: &ctx.base_url,
    };
    let self_url = link(
        ctx,
        scope,
        &request.applied,
        request.count,
        request.cursor.as_ref(),
    );
    let mut bundle = BundleWriter::new("searchset");

    if request.summary == Summary::Count {
        let total = sql::count(conn, &query).await?;
        bundle.total(total);
        bundle.link("self", &self_url);
        return Ok(Outcome::bundle(bundle.finish()));
    }

    let page = sql::page(conn, &query, request.cursor.as_ref(), request.count).await?;
    let total = match request.total {
        Total::None => None,
        _ if request.cursor.is_none() && page.next.is_none() => Some(page.rows.len() as i64),
        _ => Some(sql::count(conn, &query).await?),
    };
    if let Some(total) = total {
        bundle.total(total);
    }
    bundle.link("self", &self_url);
    if let Some(next) = &page.next {
        bundle.link(
            "next",
            &link(ctx, scope, &request.applied, request.count, Some(next)),
        );
    }

    let mut seen: HashSet<(String, String)> = page
        .rows
        .iter()
        .map(|r| (r.resource_type.clone(), r.id.clone()))
        .collect();
    let subset = request.subset.as_ref();
    for row in &page.rows {
        let body = subset::serve(&row.body, subset, &row.resource_type, SearchMode::Match)?;
        bundle.entry(
            &ctx.resource_url(&row.resource_type, &row.id),
            &body,
            Some("match"),
        );
    }
    let included = includes(conn, ctx, access, &request, &page.rows, &mut seen).await?;
    for row in &included {
        let body = subset::serve(&row.body, subset, &row.resource_type, SearchMode::Include)?;
        bundle.entry(
            &ctx.resource_url(&row.resource_type, &row.id),
            &body,
            Some("include"),
        );
    }
    if !request.ignored.is_empty() {
        let issues: Vec<Value> = request
            .ignored
            .iter()
            .map(|message| json!({"severity": "warning", "code": "not-supported", "diagnostics": format!("ignored: {message}")}))
            .collect();
        let outcome = json!({"resourceType": "OperationOutcome", "issue": issues});
        bundle.entry_json(None, &outcome, Some("outcome"));
    }
    let touched = page
        .rows
        .iter()
        .chain(&included)
        .map(|row| crate::audit::Touched::row(&row.resource_type, &row.id, row.version_id));
    Ok(Outcome::bundle(bundle.finish()).touching(touched))
}

/// The most rounds of `:iterate` includes followed.
const MAX_INCLUDE_ROUNDS: usize = 4;

async fn includes(
    conn: &mut AnyConnection,
    ctx: &Context,
    access: &Access,
    request: &SearchRequest,
    matches: &[sql::MatchRow],
    seen: &mut HashSet<(String, String)>,
) -> Result<Vec<sql::MatchRow>> {
    let mut all = Vec::new();
    let mut frontier: Vec<(i64, String, String)> = matches
        .iter()
        .map(|r| (r.rkey, r.resource_type.clone(), r.id.clone()))
        .collect();
    for round in 0..MAX_INCLUDE_ROUNDS {
        let mut found = Vec::new();
        for include in request.includes.iter().filter(|i| round == 0 || i.iterate) {
            let sources: Vec<i64> = frontier
                .iter()
                .filter(|(_, t, _)| *t == include.source_type)
                .map(|(k, _, _)| *k)
                .collect();
            found.extend(
                sql::included(
                    conn,
                    &sources,
                    &include.param,
                    include.target_type.as_deref(),
                    access.readable_of(&include_targets(include))?.as_ref(),
                    &ctx.base_url,
                )
                .await?,
            );
        }
        for include in request
            .revincludes
            .iter()
            .filter(|i| round == 0 || i.iterate)
        {
            let targets: Vec<(String, String)> = frontier
                .iter()
                .map(|(_, t, id)| (t.clone(), id.clone()))
                .collect();
            found.extend(
                sql::rev_included(
                    conn,
                    &targets,
                    &include.source_type,
                    &include.param,
                    access.readable(Some(&include.source_type))?.as_ref(),
                    &ctx.base_url,
                )
                .await?,
            );
        }
        frontier.clear();
        for row in found {
            if seen.insert((row.resource_type.clone(), row.id.clone())) {
                frontier.push((row.rkey, row.resource_type.clone(), row.id.clone()));
                all.push(row);
            }
        }
        if frontier.is_empty()
            || !request
                .includes
                .iter()
                .chain(&request.revincludes)
                .any(|i| i.iterate)
        {
            break;
        }
    }
    Ok(all)
}

fn link(
    ctx: &Context,
    scope: &Scope<'_>,
    applied: &[(String, String)],
    count: usize,
    cursor: Option<&Cursor>,
) -> String {
    let path = match scope {
        Scope::System => String::new(),
        Scope::Type(t) => format!("/{t}"),
        Scope::PatientCompartment(id, t) => format!("/Patient/{id}/{t}"),
        Scope::Everything(id) => format!("/Patient/{id}/$everything"),
    };
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in applied {
        query.append_pair(name, value);
    }
    query.append_pair("_count", &count.to_string());
    if let Some(cursor) = cursor {
        let encoded = URL_SAFE_NO_PAD.encode(serde_json::to_vec(cursor).unwrap_or_default());
        query.append_pair("_page", &encoded);
    }
    format!("{}{path}?{}", ctx.base_url, query.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn or_values_split_at_unescaped_commas() {
        assert_eq!(split_or("a,b"), vec!["a", "b"]);
        assert_eq!(split_or(r"a\,b,c"), vec!["a,b", "c"]);
        assert_eq!(split_or(r"x\$y"), vec!["x$y"]);
    }

    #[test]
    fn text_queries_parse_into_words_and_or() {
        let word = |w: &str| TextQuery::Word {
            word: w.to_owned(),
            whole: false,
        };
        let whole = |w: &str| TextQuery::Word {
            word: w.to_owned(),
            whole: true,
        };
        let cases = [
            ("Bone", word("bone")),
            (
                "bone metastases",
                TextQuery::All(vec![word("bone"), word("metastases")]),
            ),
            (
                "bone AND metastases",
                TextQuery::All(vec![word("bone"), word("metastases")]),
            ),
            (
                "bone OR liver",
                TextQuery::Any(vec![word("bone"), word("liver")]),
            ),
            (
                "(bone OR liver) and metastases",
                TextQuery::All(vec![
                    TextQuery::Any(vec![word("bone"), word("liver")]),
                    word("metastases"),
                ]),
            ),
            (
                "a b OR c",
                TextQuery::Any(vec![TextQuery::All(vec![word("a"), word("b")]), word("c")]),
            ),
            (
                "\"Heart attack\" müller",
                TextQuery::All(vec![whole("heart"), whole("attack"), word("muller")]),
            ),
            (
                "heart-attack",
                TextQuery::All(vec![word("heart"), word("attack")]),
            ),
            ("((x))", word("x")),
            ("- bone", word("bone")),
            ("(-) OR bone", word("bone")),
            (
                "\"unterminated quote",
                TextQuery::All(vec![whole("unterminated"), whole("quote")]),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                parse_text_query("_content", text).expect(text),
                expected,
                "{text}"
            );
        }
        for (text, expected) in [
            ("(bone", "not closed"),
            ("bone)", "unexpected )"),
            ("OR bone", "unexpected OR"),
            ("bone AND", "ends too early"),
            ("()", "unexpected )"),
            ("- ,", "no word"),
            ("  ", "ends too early"),
        ] {
            let error = parse_text_query("_content", text)
                .expect_err(text)
                .to_string();
            assert!(
                error.contains(expected),
                "{text:?}: expected {expected:?} in {error:?}"
            );
        }
    }

    #[test]
    fn criteria_parse_into_filters() {
        let ok = [
            ("Patient", "name", "smith"),
            ("Patient", "name:exact", "Smith"),
            ("Observation", "subject:Patient", "123"),
            ("Observation", "subject.name", "smith"),
            ("Observation", "subject:Patient.birthdate", "ge1980"),
            ("Patient", "_has:Observation:patient:code", "1234-5"),
            (
                "Observation",
                "code-value-quantity",
                "http://loinc.org|8480-6$gt100",
            ),
            ("Patient", "identifier:missing", "true"),
            ("Patient", "_content", "bone OR liver"),
            ("Patient", "_text", "x"),
            ("Resource", "_content", "x"),
            (
                "Observation",
                "status:in",
                "http://hl7.org/fhir/ValueSet/observation-status",
            ),
            (
                "Observation",
                "status:below",
                "http://hl7.org/fhir/observation-status|amended",
            ),
            (
                "Patient",
                "identifier:of-type",
                "http://terminology.hl7.org/CodeSystem/v2-0203|MR|1",
            ),
        ];
        for (t, name, value) in ok {
            assert!(
                parse_filter(t, name, value).is_ok(),
                "{t}?{name}={value} should parse"
            );
        }
        let bad = [
            ("Patient", "nope", "x", "unknown"),
            ("Patient", "name:fuzzy", "x", "not supported"),
            ("Patient", "name.family", "x", "not a reference"),
            ("Patient", "name", "", "empty"),
            ("Patient", "_content:exact", "x", "not supported"),
            ("Bundle", "_text", "x", "unknown"),
            (
                "Patient",
                "name:in",
                "http://hl7.org/fhir/ValueSet/x",
                "not supported",
            ),
            (
                "Patient",
                "gender:in",
                "http://x/vs",
                "unknown value set http://x/vs",
            ),
            ("Patient", "gender:below", "male", "system|code"),
            (
                "Patient",
                "gender:above",
                "http://x|male",
                "unknown code system http://x",
            ),
            ("Patient", "identifier:of-type", "a|b", "all three"),
        ];
        for (t, name, value, expected) in bad {
            let error = parse_filter(t, name, value)
                .expect_err("should be refused")
                .to_string();
            assert!(
                error.contains(expected),
                "{t}?{name}={value}: expected {expected:?} in {error:?}"
            );
        }
    }
}
