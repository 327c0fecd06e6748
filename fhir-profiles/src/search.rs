//! Search parameters (from `r4/search-parameters.json`) and the index values a resource
//! yields for them.
//!
//! The gateway writes these values into its index tables in the same transaction as the
//! resource, and answers searches from those tables. Everything that is FHIR-specific about
//! *what* a parameter matches lives here; *how* it is queried lives in the gateway.
//!
//! [`index_entries`] evaluates every parameter of the resource's type (including those
//! defined on `Resource` and `DomainResource`) and converts each resulting node by the
//! parameter type and the node's FHIR type, following
//! [FHIR R4 search](http://hl7.org/fhir/R4/search.html):
//!
//! | parameter | node types | index value |
//! |---|---|---|
//! | string | `string`, `markdown` and other string primitives; `HumanName` (family, given, prefix, suffix, text); `Address` (line, city, district, state, postalCode, country, text) | one [`IndexValue::String`] per part |
//! | token | `code` and other string primitives, `boolean`; `Coding`; `CodeableConcept` (each coding, and its text alone); `Identifier` (system, value, `type.text`; `:of-type` entries, below); `ContactPoint` (value, no system) | [`IndexValue::Token`] |
//! | reference | `Reference` (literal reference; its `identifier` under `"{code}:identifier"`); `canonical`, `uri` (`url\|version` split) | [`IndexValue::Reference`] |
//! | date | `date`, `dateTime`, `instant`; `Period`; `Timing` (outer limits of events and `repeat.boundsPeriod`) | [`IndexValue::Date`] |
//! | number | `integer`, `decimal` and their kin | [`IndexValue::Number`] |
//! | quantity | `Quantity` and its specializations (`Age`, `Duration`, `Count`, `Distance`); `Money`; `Range` | [`IndexValue::Quantity`] |
//! | uri | `uri`, `url`, `canonical`, `oid`, `uuid` and other string primitives | [`IndexValue::Uri`] |
//! | composite | the components, relative to each node of the base expression; a node where a component yields nothing yields nothing | entries `"{code}#{i}"` sharing a group |
//! | special, or no expression | - | nothing |
//!
//! Decisions where the specification leaves room:
//!
//! - **Range** (quantity parameters, e.g. `onset-age`, `context-quantity`): one entry whose
//!   `low` is the lower bound implied by `Range.low` and whose `high` is the upper bound
//!   implied by `Range.high`; a missing bound is open (`f64::MIN`, `f64::MAX`). `value` is
//!   `Range.low.value` (or `Range.high.value` when there is no low), and system, code and
//!   unit come from the same bound.
//! - **Quantity comparators**: `<` and `<=` open the range downwards (`low = f64::MIN`),
//!   `>` and `>=` upwards (`high = f64::MAX`).
//! - **Money**: `code` is the currency, `system` is `urn:iso:std:iso:4217` (the code system
//!   of currencies), `unit` is absent.
//! - **SampledData** (in `value-quantity`) yields nothing: its data is not one quantity.
//! - **Contained references** (`#id`) yield no reference entry: a contained resource cannot
//!   be the target of a search. (`resolve() is Type` does look into `contained`.)
//! - **Absolute references** are indexed by `url` only; the gateway, which knows its own
//!   base URL, may turn its own absolute URLs into relative ones before indexing.
//! - **Bundle `composition` and `message`** (`Bundle.entry[0].resource`) yield nothing: the
//!   expression selects a resource, not a reference, and these parameters exist for
//!   chained searches into the Bundle's first entry, which the index does not model.
//! - **Period** without start and end, and a Period or date that does not parse, yield
//!   nothing. A Period's end covers its whole precision (`end: 2020-01` ends on 1 February).
//! - **Identifier `:of-type`**: a token parameter's `Identifier` also yields, for each
//!   `type.coding` with system and code, an entry under `"{code}:of-type"` whose `system`
//!   is `"{type system}|{type code}"` and whose `code` is the identifier's value.
//! - **DocumentReference `relationship`**: the R4 definition swaps its two component
//!   expressions (the reference component `relatesto` reads `code`, the token `relation`
//!   reads `target`); the registry puts them right (a known R4 erratum).
//! - **Number precision** follows the written digits, exponents included: `100` is
//!   `[99.5, 100.5)`, `1.50` is `[1.495, 1.505)`, `1e2` is `[50, 150)` (one significant
//!   digit; the R4 page's example says `[95, 105)`, which contradicts its own rule).
//!
//! Identical entries of one resource are emitted once.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use json_syntax::Object;
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use crate::Json;
use crate::definitions::Definitions;
use crate::fhirpath::{Expression, LiteralReference, Node, ParseError, values};

static SEARCH_PARAMETERS_JSON: &str = include_str!("../r4/search-parameters.json");

/// The type of a search parameter (R4 `SearchParamType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

/// One index value of a resource for one search parameter.
///
/// `group` is 0 for plain parameters. For a composite parameter, each instance of the
/// composite's base element gets a distinct group number (1, 2, ...), and each component
/// is emitted as its own entry whose `param` is `"{composite code}#{component index}"`,
/// so that a composite search matches components of the same instance.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    /// The search parameter code (`name`, `subject`, `code-value-quantity#1`).
    pub param: String,
    pub group: u32,
    pub value: IndexValue,
}

/// A value to match, already normalized for searching.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    /// `normalized`: lower case, accents and punctuation-insensitive form used for the
    /// default (starts-with) and `:contains` matches; `exact`: the string as written.
    String {
        normalized: String,
        exact: String,
    },
    /// A code with its system; `text` is the normalized display or text (for `:text`).
    Token {
        system: Option<String>,
        code: Option<String>,
        text: Option<String>,
    },
    /// A reference. For a literal relative reference `Patient/123`: `target_type` and
    /// `target_id` (and `version` when versioned). For an absolute or canonical reference:
    /// `url` (canonical version in `version`). `identifier` references are indexed as
    /// `Token` entries under the parameter code `"{code}:identifier"`.
    Reference {
        target_type: Option<String>,
        target_id: Option<String>,
        version: Option<String>,
        url: Option<String>,
    },
    /// The instant range covered, in milliseconds since the Unix epoch, `[start, end)`.
    /// A date without time covers the whole day (or month, or year) in UTC.
    Date {
        start: i64,
        end: i64,
    },
    /// A number and the range its written precision implies (`1.5` covers `[1.45, 1.55)`).
    Number {
        value: f64,
        low: f64,
        high: f64,
    },
    /// A quantity: value and implied range as for numbers, plus its system, code and unit.
    Quantity {
        value: f64,
        low: f64,
        high: f64,
        system: Option<String>,
        code: Option<String>,
        unit: Option<String>,
    },
    Uri {
        value: String,
    },
}

/// A search parameter of R4, with its expression compiled.
#[derive(Debug)]
pub struct SearchParameter {
    /// The code used in queries (`name`, `subject`, `_id`).
    pub code: String,
    /// The canonical URL of the SearchParameter resource.
    pub url: String,
    pub kind: SearchParamType,
    /// The resource type it is defined on (`Patient`, or `Resource`/`DomainResource`).
    pub base: String,
    /// For reference parameters: the resource types it may point to.
    pub targets: Vec<String>,
    /// The modifiers the definition lists (empty when it lists none).
    pub modifiers: Vec<String>,
    /// The comparators the definition lists (empty when it lists none).
    pub comparators: Vec<String>,
    /// `None` for parameters without an expression (`_text`, `_content`, `_query`).
    pub expression: Option<Expression>,
    /// For composite parameters: the components, in order.
    pub components: Vec<Component>,
}

/// One component of a composite search parameter.
#[derive(Debug)]
pub struct Component {
    /// The code of the component's own search parameter (`code`, `value-quantity`).
    pub code: String,
    pub kind: SearchParamType,
    /// Evaluated relative to each node of the composite's expression.
    pub expression: Expression,
}

/// The R4 search parameters, by resource type and code.
#[derive(Debug)]
pub struct Registry {
    parameters: Vec<SearchParameter>,
    /// Concrete resource type -> its parameters (own and inherited), sorted by code.
    by_type: HashMap<String, TypeParameters>,
}

#[derive(Debug, Default)]
struct TypeParameters {
    all: Vec<usize>,
    by_code: HashMap<String, usize>,
}

#[derive(Debug, thiserror::Error)]
enum RegistryError {
    #[error("search-parameters.json does not parse")]
    Json(#[from] serde_json::Error),
    #[error("expression of search parameter {base}.{code} does not parse")]
    Expression {
        base: String,
        code: String,
        #[source]
        source: ParseError,
    },
}

#[derive(serde::Deserialize)]
struct RawParameter {
    code: String,
    base: String,
    #[serde(rename = "type")]
    kind: SearchParamType,
    url: String,
    expression: Option<String>,
    #[serde(default)]
    target: Vec<String>,
    #[serde(default)]
    modifier: Vec<String>,
    #[serde(default)]
    comparator: Vec<String>,
    #[serde(default)]
    component: Vec<RawComponent>,
}

#[derive(serde::Deserialize)]
struct RawComponent {
    code: String,
    #[serde(rename = "type")]
    kind: SearchParamType,
    expression: String,
}

impl Registry {
    /// The R4 registry, parsed and compiled once per process.
    pub fn r4() -> &'static Registry {
        static REGISTRY: OnceLock<Registry> = OnceLock::new();
        REGISTRY.get_or_init(|| {
            Registry::parse(SEARCH_PARAMETERS_JSON, Definitions::r4()).expect(
                "the embedded r4 search parameters compile (generated by scripts/extract.py)",
            )
        })
    }

    fn parse(json: &str, definitions: &Definitions) -> Result<Registry, RegistryError> {
        let raw: Vec<RawParameter> = serde_json::from_str(json)?;
        let mut parameters = Vec::with_capacity(raw.len());
        for mut parameter in raw {
            let compile = |text: &str| {
                Expression::parse(text).map_err(|source| RegistryError::Expression {
                    base: parameter.base.clone(),
                    code: parameter.code.clone(),
                    source,
                })
            };
            if parameter.base == "DocumentReference"
                && parameter.code == "relationship"
                && let [relatesto, relation] = parameter.component.as_mut_slice()
                && relatesto.expression == "code"
                && relation.expression == "target"
            {
                std::mem::swap(&mut relatesto.expression, &mut relation.expression);
            }
            let expression = parameter.expression.as_deref().map(compile).transpose()?;
            let components = parameter
                .component
                .iter()
                .map(|c| {
                    Ok(Component {
                        code: c.code.clone(),
                        kind: c.kind,
                        expression: compile(&c.expression)?,
                    })
                })
                .collect::<Result<Vec<_>, RegistryError>>()?;
            parameters.push(SearchParameter {
                code: parameter.code,
                url: parameter.url,
                kind: parameter.kind,
                base: parameter.base,
                targets: parameter.target,
                modifiers: parameter.modifier,
                comparators: parameter.comparator,
                expression,
                components,
            });
        }

        let mut by_type: HashMap<String, TypeParameters> = HashMap::new();
        for resource_type in definitions.resource_types() {
            // the type and its ancestors (DomainResource, Resource)
            let mut lineage = Vec::new();
            let mut next = Some(resource_type.to_owned());
            while let Some(name) = next {
                next = definitions
                    .type_definition(&name)
                    .and_then(|t| t.base.clone());
                lineage.push(name);
            }
            let mut entry = TypeParameters::default();
            for (index, parameter) in parameters.iter().enumerate() {
                if lineage.contains(&parameter.base) && !entry.by_code.contains_key(&parameter.code)
                {
                    entry.by_code.insert(parameter.code.clone(), index);
                    entry.all.push(index);
                }
            }
            entry
                .all
                .sort_by(|a, b| parameters[*a].code.cmp(&parameters[*b].code));
            by_type.insert(resource_type.to_owned(), entry);
        }
        Ok(Registry {
            parameters,
            by_type,
        })
    }

    /// The parameter `code` of `resource_type`, including those every resource has
    /// (`_id`, `_lastUpdated`, ...). `None` for an unknown type or code.
    pub fn get(&self, resource_type: &str, code: &str) -> Option<&SearchParameter> {
        let index = *self.by_type.get(resource_type)?.by_code.get(code)?;
        self.parameters.get(index)
    }

    /// A parameter every resource has (defined on `Resource` or `DomainResource`: `_tag`,
    /// `_profile`, `_security`, `_source`, `_text`, ...), for searches across types.
    pub fn common(&self, code: &str) -> Option<&SearchParameter> {
        self.parameters
            .iter()
            .find(|p| p.code == code && matches!(p.base.as_str(), "Resource" | "DomainResource"))
    }

    /// Every parameter of `resource_type`, inherited ones included, sorted by code.
    /// Empty for an unknown type.
    pub fn for_type(&self, resource_type: &str) -> impl Iterator<Item = &SearchParameter> + '_ {
        self.by_type
            .get(resource_type)
            .into_iter()
            .flat_map(|entry| entry.all.iter())
            .filter_map(|index| self.parameters.get(*index))
    }
}

/// Every index value of `resource` (of type `resource_type`) for every search parameter of
/// its type, deduplicated. See the module documentation for the conversions. Contained
/// resources are not indexed themselves.
///
/// Never fails: values of the wrong shape are skipped, and a `resource` that is not an
/// object with `"resourceType": resource_type` yields nothing.
pub fn index_entries(resource_type: &str, resource: &Json) -> Vec<IndexEntry> {
    index_entries_where(resource_type, resource, |_| true)
}

/// [`index_entries`] for the parameters `wanted` accepts only: a store that answers some
/// parameters from elsewhere (its own columns) or not at all skips their evaluation.
pub fn index_entries_where(
    resource_type: &str,
    resource: &Json,
    wanted: impl Fn(&SearchParameter) -> bool,
) -> Vec<IndexEntry> {
    let root = Node::resource(resource);
    if root.type_name() != Some(resource_type) {
        return Vec::new();
    }
    let mut entries = Vec::new();
    let mut nodes = Vec::new();
    for parameter in Registry::r4().for_type(resource_type).filter(|p| wanted(p)) {
        parameter_entries(parameter, root, &mut nodes, &mut entries);
    }
    entries
}

/// Appends the (deduplicated) entries of one parameter; `nodes` is scratch space.
pub(crate) fn parameter_entries<'a>(
    parameter: &'a SearchParameter,
    root: Node<'a>,
    nodes: &mut Vec<Node<'a>>,
    entries: &mut Vec<IndexEntry>,
) {
    let Some(expression) = &parameter.expression else {
        return;
    };
    let start = entries.len();
    nodes.clear();
    expression.evaluate_into(root, root, nodes);
    match parameter.kind {
        SearchParamType::Special => {}
        SearchParamType::Composite => {
            let mut component_nodes = Vec::new();
            let component_params: Vec<String> = (0..parameter.components.len())
                .map(|i| format!("{}#{i}", parameter.code))
                .collect();
            for (group, node) in (1u32..).zip(nodes.iter()) {
                let group_start = entries.len();
                for (component, param) in parameter.components.iter().zip(&component_params) {
                    component_nodes.clear();
                    component
                        .expression
                        .evaluate_into(root, *node, &mut component_nodes);
                    let component_start = entries.len();
                    let mut sink = Sink {
                        param,
                        group,
                        entries,
                    };
                    for component_node in &component_nodes {
                        convert(component.kind, component_node, &mut sink);
                    }
                    if entries.len() == component_start {
                        // a composite matches only with every component: drop the group
                        entries.truncate(group_start);
                        break;
                    }
                }
            }
        }
        kind => {
            let mut sink = Sink {
                param: &parameter.code,
                group: 0,
                entries,
            };
            for node in nodes.iter() {
                convert(kind, node, &mut sink);
            }
        }
    }
    dedup_from(entries, start);
}

/// Where converted values go: entries of one parameter (or composite component) and group.
struct Sink<'s> {
    param: &'s str,
    group: u32,
    entries: &'s mut Vec<IndexEntry>,
}

impl Sink<'_> {
    fn push(&mut self, value: IndexValue) {
        self.entries.push(IndexEntry {
            param: self.param.to_owned(),
            group: self.group,
            value,
        });
    }

    fn push_string(&mut self, text: &str) {
        if !text.is_empty() {
            self.push(IndexValue::String {
                normalized: normalize_string(text),
                exact: text.to_owned(),
            });
        }
    }

    fn push_token(&mut self, system: Option<&str>, code: Option<&str>, text: Option<&str>) {
        let text = text.map(normalize_string).filter(|t| !t.is_empty());
        if system.is_some() || code.is_some() || text.is_some() {
            self.push(IndexValue::Token {
                system: system.map(str::to_owned),
                code: code.map(str::to_owned),
                text,
            });
        }
    }
}

/// The FHIR type of a node, or the primitive its JSON suggests when the type is unknown.
fn type_of(node: &Node<'_>) -> &'static str {
    node.type_name().unwrap_or(match node.value() {
        Json::String(_) => "string",
        Json::Boolean(_) => "boolean",
        Json::Number(_) => "decimal",
        _ => "",
    })
}

fn convert(kind: SearchParamType, node: &Node<'_>, sink: &mut Sink<'_>) {
    let value = node.value();
    let object = value.as_object();
    let ty = type_of(node);
    match kind {
        SearchParamType::String => match (ty, object) {
            ("HumanName", Some(name)) => {
                for part in ["family", "given", "prefix", "suffix", "text"] {
                    for text in strings(name, part) {
                        sink.push_string(text);
                    }
                }
            }
            ("Address", Some(address)) => {
                for part in [
                    "line",
                    "city",
                    "district",
                    "state",
                    "postalCode",
                    "country",
                    "text",
                ] {
                    for text in strings(address, part) {
                        sink.push_string(text);
                    }
                }
            }
            _ => {
                if let Some(text) = value.as_str() {
                    sink.push_string(text);
                }
            }
        },
        SearchParamType::Token => match (ty, object) {
            ("Coding", Some(coding)) => push_coding(coding, sink),
            ("CodeableConcept", Some(concept)) => {
                for coding in field(concept, "coding")
                    .into_iter()
                    .flat_map(items)
                    .filter_map(Json::as_object)
                {
                    push_coding(coding, sink);
                }
                if let Some(text) = string(concept, "text") {
                    sink.push_token(None, None, Some(text));
                }
            }
            ("Identifier", Some(identifier)) => {
                push_identifier(identifier, sink);
                if sink.group == 0 {
                    push_identifier_of_type(identifier, sink);
                }
            }
            ("ContactPoint", Some(contact)) => {
                sink.push_token(None, string(contact, "value"), None)
            }
            _ => match value {
                Json::String(code) => sink.push_token(None, Some(code), None),
                Json::Boolean(flag) => {
                    sink.push_token(None, Some(if *flag { "true" } else { "false" }), None)
                }
                Json::Number(number) => sink.push_token(None, Some(number.as_str()), None),
                _ => {}
            },
        },
        SearchParamType::Reference => match (ty, object) {
            ("Reference", Some(reference)) => {
                if let Some(text) = string(reference, "reference") {
                    push_literal_reference(text, sink);
                }
                if let Some(identifier) = field(reference, "identifier").and_then(Json::as_object) {
                    let param = format!("{}:identifier", sink.param);
                    push_identifier(
                        identifier,
                        &mut Sink {
                            param: &param,
                            group: sink.group,
                            entries: sink.entries,
                        },
                    );
                }
            }
            _ => {
                if let Some(text) = value.as_str() {
                    let (url, version) = split_canonical(text);
                    sink.push(IndexValue::Reference {
                        target_type: None,
                        target_id: None,
                        version: version.map(str::to_owned),
                        url: Some(url.to_owned()),
                    });
                }
            }
        },
        SearchParamType::Date => {
            let range = match (ty, object) {
                ("Period", Some(period)) => period_range(period),
                ("Timing", Some(timing)) => timing_range(timing),
                _ => value.as_str().and_then(date_range),
            };
            if let Some((start, end)) = range {
                sink.push(IndexValue::Date { start, end });
            }
        }
        SearchParamType::Number => {
            if let Json::Number(number) = value
                && let Some((value, low, high)) = number_range(number.as_str())
            {
                sink.push(IndexValue::Number { value, low, high });
            }
        }
        SearchParamType::Quantity => {
            let Some(object) = object else { return };
            let quantity = match ty {
                "Money" => money(object),
                "Range" => range_quantity(object),
                _ if node.is_a("Quantity") => quantity(object),
                _ => None,
            };
            if let Some(quantity) = quantity {
                sink.push(quantity);
            }
        }
        SearchParamType::Uri => {
            if let Some(text) = value.as_str()
                && !text.is_empty()
            {
                sink.push(IndexValue::Uri {
                    value: text.to_owned(),
                });
            }
        }
        SearchParamType::Composite | SearchParamType::Special => {}
    }
}

fn field<'a>(object: &'a Object, key: &str) -> Option<&'a Json> {
    values(object, key).next()
}

fn string<'a>(object: &'a Object, key: &str) -> Option<&'a str> {
    field(object, key).and_then(Json::as_str)
}

/// The items of a JSON value seen as a FHIR collection (a single value or an array).
fn items(value: &Json) -> &[Json] {
    match value {
        Json::Array(items) => items,
        single => std::slice::from_ref(single),
    }
}

/// The string values of a (possibly repeating) primitive element.
fn strings<'a>(object: &'a Object, key: &str) -> impl Iterator<Item = &'a str> {
    field(object, key)
        .into_iter()
        .flat_map(items)
        .filter_map(Json::as_str)
}

fn push_coding(coding: &Object, sink: &mut Sink<'_>) {
    sink.push_token(
        string(coding, "system"),
        string(coding, "code"),
        string(coding, "display"),
    );
}

fn push_identifier(identifier: &Object, sink: &mut Sink<'_>) {
    let type_text = field(identifier, "type")
        .and_then(Json::as_object)
        .and_then(|t| string(t, "text"));
    sink.push_token(
        string(identifier, "system"),
        string(identifier, "value"),
        type_text,
    );
}

/// The entries for `:of-type` (search.html#modifiers): one per coding of
/// `Identifier.type` that has a system and a code, when the identifier has a value, under
/// `"{code}:of-type"` with `system` = `"{type system}|{type code}"` and `code` = the value.
fn push_identifier_of_type(identifier: &Object, sink: &mut Sink<'_>) {
    let Some(value) = string(identifier, "value") else {
        return;
    };
    let codings = field(identifier, "type")
        .and_then(Json::as_object)
        .and_then(|t| field(t, "coding"))
        .into_iter()
        .flat_map(items)
        .filter_map(Json::as_object);
    let param = format!("{}:of-type", sink.param);
    for coding in codings {
        if let (Some(system), Some(code)) = (string(coding, "system"), string(coding, "code")) {
            sink.entries.push(IndexEntry {
                param: param.clone(),
                group: 0,
                value: IndexValue::Token {
                    system: Some(of_type_system(system, code)),
                    code: Some(value.to_owned()),
                    text: None,
                },
            });
        }
    }
}

/// How the type of an identifier is kept in an `:of-type` entry's `system`.
pub fn of_type_system(type_system: &str, type_code: &str) -> String {
    format!("{type_system}|{type_code}")
}

fn push_literal_reference(text: &str, sink: &mut Sink<'_>) {
    let value = match LiteralReference::parse(text) {
        LiteralReference::Contained(_) => return,
        LiteralReference::Relative {
            resource_type,
            id,
            version,
        } => IndexValue::Reference {
            target_type: Some(resource_type.to_owned()),
            target_id: Some(id.to_owned()),
            version: version.map(str::to_owned),
            url: None,
        },
        LiteralReference::Absolute { .. } | LiteralReference::Other(_) => {
            if text.is_empty() {
                return;
            }
            IndexValue::Reference {
                target_type: None,
                target_id: None,
                version: None,
                url: Some(text.to_owned()),
            }
        }
    };
    sink.push(value);
}

/// `http://x/ValueSet/y|4.0.1` -> (`http://x/ValueSet/y`, `4.0.1`).
fn split_canonical(text: &str) -> (&str, Option<&str>) {
    match text.split_once('|') {
        Some((url, version)) if !version.is_empty() => (url, Some(version)),
        Some((url, _)) => (url, None),
        None => (text, None),
    }
}

fn period_range(period: &Object) -> Option<(i64, i64)> {
    let start = string(period, "start");
    let end = string(period, "end");
    if start.is_none() && end.is_none() {
        return None;
    }
    let start = match start {
        Some(text) => date_range(text)?.0,
        None => i64::MIN,
    };
    let end = match end {
        Some(text) => date_range(text)?.1,
        None => i64::MAX,
    };
    Some((start, end))
}

/// The outer limits of a Timing: its events and `repeat.boundsPeriod`.
fn timing_range(timing: &Object) -> Option<(i64, i64)> {
    let events = strings(timing, "event").filter_map(date_range);
    let bounds = field(timing, "repeat")
        .and_then(Json::as_object)
        .and_then(|repeat| field(repeat, "boundsPeriod"))
        .and_then(Json::as_object)
        .and_then(period_range);
    events
        .chain(bounds)
        .reduce(|(start, end), (s, e)| (start.min(s), end.max(e)))
}

fn quantity_parts(object: &Object) -> Option<(f64, f64, f64)> {
    let Json::Number(number) = field(object, "value")? else {
        return None;
    };
    number_range(number.as_str())
}

fn quantity(object: &Object) -> Option<IndexValue> {
    let (value, mut low, mut high) = quantity_parts(object)?;
    match string(object, "comparator") {
        Some("<" | "<=") => low = f64::MIN,
        Some(">" | ">=") => high = f64::MAX,
        _ => {}
    }
    Some(IndexValue::Quantity {
        value,
        low,
        high,
        system: string(object, "system").map(str::to_owned),
        code: string(object, "code").map(str::to_owned),
        unit: string(object, "unit").map(str::to_owned),
    })
}

fn money(object: &Object) -> Option<IndexValue> {
    let (value, low, high) = quantity_parts(object)?;
    let currency = string(object, "currency");
    Some(IndexValue::Quantity {
        value,
        low,
        high,
        system: currency.map(|_| "urn:iso:std:iso:4217".to_owned()),
        code: currency.map(str::to_owned),
        unit: None,
    })
}

fn range_quantity(range: &Object) -> Option<IndexValue> {
    let bound = |key: &str| {
        let object = field(range, key)?.as_object()?;
        Some((object, quantity_parts(object)?))
    };
    let low = bound("low");
    let high = bound("high");
    let (described_by, (value, _, _)) = low.or(high)?;
    Some(IndexValue::Quantity {
        value,
        low: low.map_or(f64::MIN, |(_, (_, low, _))| low),
        high: high.map_or(f64::MAX, |(_, (_, _, high))| high),
        system: string(described_by, "system").map(str::to_owned),
        code: string(described_by, "code").map(str::to_owned),
        unit: string(described_by, "unit").map(str::to_owned),
    })
}

/// The form of a string used for the default (starts-with) and `:contains` string matches:
/// lower case, accents removed (NFD, then combining marks dropped), every run of
/// whitespace or punctuation turned into one space, no leading or trailing space.
/// `"  Müller-Lüdenscheidt "` becomes `"muller ludenscheidt"`.
pub fn normalize_string(text: &str) -> String {
    let mut normalized = String::with_capacity(text.len());
    let mut separator = false;
    if text.is_ascii() {
        for byte in text.bytes() {
            if byte.is_ascii_alphanumeric() {
                if separator && !normalized.is_empty() {
                    normalized.push(' ');
                }
                separator = false;
                normalized.push(char::from(byte.to_ascii_lowercase()));
            } else {
                separator = true;
            }
        }
        return normalized;
    }
    for c in text.nfd() {
        if c.is_alphanumeric() {
            if separator && !normalized.is_empty() {
                normalized.push(' ');
            }
            separator = false;
            normalized.extend(
                c.to_lowercase()
                    .filter(|l| l.is_ascii() || !is_combining_mark(*l)),
            );
        } else if !is_combining_mark(c) {
            separator = true;
        }
    }
    normalized
}

/// The instants a FHIR `date`, `dateTime` or `instant` (or a search value of that form)
/// covers: `[start, end)` in milliseconds since the Unix epoch.
///
/// The precision written decides the width: `2020` is the whole year, `2020-02` the
/// month, `2020-02-29` the day, `2020-02-29T10:15` the minute, `T10:15:30` the second,
/// `T10:15:30.5` a tenth of a second, and three or more fraction digits one millisecond.
/// A time zone offset is applied; a time without one, and every date without time, is
/// taken as UTC. `None` when the text is not of that form or names a day that does not
/// exist (`2023-02-29`).
pub fn date_range(text: &str) -> Option<(i64, i64)> {
    const DAY: i64 = 86_400_000;
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let slice = bytes.get(range)?;
        slice.iter().try_fold(0i64, |n, b| {
            b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0'))
        })
    };
    let year = digits(0..4)?;
    if bytes.len() == 4 {
        return Some((
            days_from_civil(year, 1, 1) * DAY,
            days_from_civil(year + 1, 1, 1) * DAY,
        ));
    }
    if bytes.get(4) != Some(&b'-') {
        return None;
    }
    let month = digits(5..7)?;
    if !(1..=12).contains(&month) {
        return None;
    }
    if bytes.len() == 7 {
        let (next_year, next_month) = if month == 12 {
            (year + 1, 1)
        } else {
            (year, month + 1)
        };
        return Some((
            days_from_civil(year, month, 1) * DAY,
            days_from_civil(next_year, next_month, 1) * DAY,
        ));
    }
    if bytes.get(7) != Some(&b'-') {
        return None;
    }
    let day = digits(8..10)?;
    if day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let midnight = days_from_civil(year, month, day) * DAY;
    if bytes.len() == 10 {
        return Some((midnight, midnight + DAY));
    }
    if bytes.get(10) != Some(&b'T') || bytes.get(13) != Some(&b':') {
        return None;
    }
    let (hour, minute) = (digits(11..13)?, digits(14..16)?);
    if hour > 23 || minute > 59 {
        return None;
    }
    let mut start = midnight + (hour * 60 + minute) * 60_000;
    let mut width = 60_000;
    let mut rest = bytes.get(16..)?;
    if let [b':', s1, s2, tail @ ..] = rest {
        let second = digits(17..19)?;
        if !(s1.is_ascii_digit() && s2.is_ascii_digit()) || second > 60 {
            return None;
        }
        start += second * 1000;
        width = 1000;
        rest = tail;
        if let [b'.', tail @ ..] = rest {
            let count = tail.iter().take_while(|b| b.is_ascii_digit()).count();
            if count == 0 {
                return None;
            }
            let mut millis = 0;
            for (position, digit) in tail[..count].iter().take(3).enumerate() {
                millis += i64::from(digit - b'0') * [100, 10, 1][position];
            }
            start += millis;
            width = [100, 10, 1][count.min(3) - 1];
            rest = &tail[count..];
        }
    }
    let offset_minutes = match rest {
        [] | [b'Z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let parse = |a: &u8, b: &u8| -> Option<i64> {
                (a.is_ascii_digit() && b.is_ascii_digit())
                    .then(|| i64::from(a - b'0') * 10 + i64::from(b - b'0'))
            };
            let (hours, minutes) = (parse(h1, h2)?, parse(m1, m2)?);
            if hours > 14 || minutes > 59 {
                return None;
            }
            let magnitude = hours * 60 + minutes;
            if *sign == b'+' { magnitude } else { -magnitude }
        }
        _ => return None,
    };
    start -= offset_minutes * 60_000;
    Some((start, start + width))
}

fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// A number as written and the range its precision implies: `(value, low, high)`, the
/// range being `[low, high)`. `100` gives `(100, 99.5, 100.5)`, `1.50` gives
/// `(1.5, 1.495, 1.505)`, `1.5e2` gives `(150, 145, 155)`. `None` unless `text` is a
/// decimal number (optional sign, digits, optional fraction, optional exponent).
pub fn number_range(text: &str) -> Option<(f64, f64, f64)> {
    let bytes = text.as_bytes();
    let mut index = 0;
    let negative = match bytes.first() {
        Some(b'-') => {
            index += 1;
            true
        }
        Some(b'+') => {
            index += 1;
            false
        }
        _ => false,
    };
    let mut mantissa: i128 = 0;
    let mut overflow = false;
    let mut accumulate = |digit: u8, mantissa: &mut i128| match mantissa
        .checked_mul(10)
        .and_then(|m| m.checked_add(i128::from(digit - b'0')))
    {
        Some(m) => *mantissa = m,
        None => overflow = true,
    };
    let integer_start = index;
    while let Some(digit) = bytes.get(index).filter(|b| b.is_ascii_digit()) {
        accumulate(*digit, &mut mantissa);
        index += 1;
    }
    if index == integer_start {
        return None;
    }
    let mut fraction_digits: i32 = 0;
    if bytes.get(index) == Some(&b'.') {
        index += 1;
        let fraction_start = index;
        while let Some(digit) = bytes.get(index).filter(|b| b.is_ascii_digit()) {
            accumulate(*digit, &mut mantissa);
            index += 1;
            fraction_digits += 1;
        }
        if index == fraction_start {
            return None;
        }
    }
    let mut exponent: i32 = 0;
    if let Some(b'e' | b'E') = bytes.get(index) {
        let exponent_text = text.get(index + 1..)?;
        let unsigned = exponent_text
            .strip_prefix(['+', '-'])
            .unwrap_or(exponent_text);
        if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        exponent = exponent_text.parse().ok()?;
        index = bytes.len();
    }
    if index != bytes.len() {
        return None;
    }
    let value: f64 = text.parse().ok()?;
    if !value.is_finite() {
        return None;
    }
    // half a unit of the last written digit: 5 * 10^(exponent - fraction_digits - 1)
    let scale = exponent.checked_sub(fraction_digits)?.checked_sub(1)?;
    let signed = if negative { -mantissa } else { mantissa };
    let bound = |delta: i128| -> Option<f64> {
        let shifted = signed.checked_mul(10)?.checked_add(delta)?;
        format!("{shifted}e{scale}")
            .parse::<f64>()
            .ok()
            .filter(|b| b.is_finite())
    };
    match (overflow, bound(-5), bound(5)) {
        (false, Some(low), Some(high)) => Some((value, low, high)),
        _ => {
            let half = 5.0 * 10f64.powi(scale);
            Some((value, value - half, value + half))
        }
    }
}

/// Removes entries from `entries[start..]` equal to an earlier one of that range.
fn dedup_from(entries: &mut Vec<IndexEntry>, start: usize) {
    let count = entries.len() - start;
    if count < 2 {
        return;
    }
    if count <= 16 {
        let mut index = start + 1;
        while index < entries.len() {
            if entries[start..index].contains(&entries[index]) {
                entries.remove(index);
            } else {
                index += 1;
            }
        }
        return;
    }
    let tail = entries.split_off(start);
    let keep: Vec<bool> = {
        let mut seen = HashSet::with_capacity(count);
        tail.iter()
            .map(|entry| seen.insert(EntryKey(entry)))
            .collect()
    };
    entries.extend(
        tail.into_iter()
            .zip(keep)
            .filter_map(|(entry, keep)| keep.then_some(entry)),
    );
}

/// An entry as a hash set key; numbers compare by value (entries never hold NaN).
struct EntryKey<'e>(&'e IndexEntry);

impl PartialEq for EntryKey<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Eq for EntryKey<'_> {}

impl Hash for EntryKey<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // `+ 0.0` maps -0.0 to 0.0, which compare equal
        let float = |x: f64, state: &mut H| (x + 0.0).to_bits().hash(state);
        self.0.param.hash(state);
        self.0.group.hash(state);
        match &self.0.value {
            IndexValue::String { normalized, exact } => (0u8, normalized, exact).hash(state),
            IndexValue::Token { system, code, text } => (1u8, system, code, text).hash(state),
            IndexValue::Reference {
                target_type,
                target_id,
                version,
                url,
            } => {
                (2u8, target_type, target_id, version, url).hash(state);
            }
            IndexValue::Date { start, end } => (3u8, start, end).hash(state),
            IndexValue::Number { value, low, high } => {
                4u8.hash(state);
                for x in [value, low, high] {
                    float(*x, state);
                }
            }
            IndexValue::Quantity {
                value,
                low,
                high,
                system,
                code,
                unit,
            } => {
                (5u8, system, code, unit).hash(state);
                for x in [value, low, high] {
                    float(*x, state);
                }
            }
            IndexValue::Uri { value } => (6u8, value).hash(state),
        }
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn json(text: &str) -> Json {
        <Json as json_syntax::Parse>::parse_str(text)
            .expect("test json parses")
            .0
    }

    fn entries_of(resource: &str) -> Vec<IndexEntry> {
        let resource = json(resource);
        let resource_type = resource
            .as_object()
            .and_then(|o| o.get("resourceType").next())
            .and_then(Json::as_str)
            .expect("test resource has a resourceType")
            .to_owned();
        index_entries(&resource_type, &resource)
    }

    fn millis(at: time::OffsetDateTime) -> i64 {
        i64::try_from(at.unix_timestamp_nanos() / 1_000_000).expect("fits")
    }

    fn token(system: Option<&str>, code: Option<&str>, text: Option<&str>) -> IndexValue {
        IndexValue::Token {
            system: system.map(Into::into),
            code: code.map(Into::into),
            text: text.map(Into::into),
        }
    }

    fn code(code: &str) -> IndexValue {
        token(None, Some(code), None)
    }

    fn reference(target_type: &str, target_id: &str) -> IndexValue {
        IndexValue::Reference {
            target_type: Some(target_type.into()),
            target_id: Some(target_id.into()),
            version: None,
            url: None,
        }
    }

    fn url(url: &str, version: Option<&str>) -> IndexValue {
        IndexValue::Reference {
            target_type: None,
            target_id: None,
            version: version.map(Into::into),
            url: Some(url.into()),
        }
    }

    fn string(normalized: &str, exact: &str) -> IndexValue {
        IndexValue::String {
            normalized: normalized.into(),
            exact: exact.into(),
        }
    }

    fn date(text: &str) -> IndexValue {
        let (start, end) = date_range(text).expect("test date parses");
        IndexValue::Date { start, end }
    }

    fn quantity(
        text: &str,
        system: Option<&str>,
        code: Option<&str>,
        unit: Option<&str>,
    ) -> IndexValue {
        let (value, low, high) = number_range(text).expect("test number parses");
        IndexValue::Quantity {
            value,
            low,
            high,
            system: system.map(Into::into),
            code: code.map(Into::into),
            unit: unit.map(Into::into),
        }
    }

    const UCUM: Option<&str> = Some("http://unitsofmeasure.org");
    const LOINC: Option<&str> = Some("http://loinc.org");

    /// What a resource must (or must not) yield.
    enum Expect {
        Has(&'static str, u32, IndexValue),
        Nothing(&'static str),
    }
    use Expect::{Has, Nothing};

    fn check(what: &str, resource: &str, expectations: Vec<Expect>) {
        let entries = entries_of(resource);
        for expectation in expectations {
            match expectation {
                Has(param, group, value) => assert!(
                    entries
                        .iter()
                        .any(|e| e.param == param && e.group == group && e.value == value),
                    "{what}: expected {param} (group {group}) to have {value:?}; it has {:?}",
                    entries
                        .iter()
                        .filter(|e| e.param == param)
                        .collect::<Vec<_>>()
                ),
                Nothing(param) => assert!(
                    !entries.iter().any(|e| e.param == param),
                    "{what}: expected no {param} entries, got {:?}",
                    entries
                        .iter()
                        .filter(|e| e.param == param)
                        .collect::<Vec<_>>()
                ),
            }
        }
        for (index, entry) in entries.iter().enumerate() {
            assert!(
                !entries[..index].contains(entry),
                "{what}: expected no duplicate entries, {entry:?} repeats"
            );
        }
    }

    const PATIENT: &str = r#"{
        "resourceType": "Patient", "id": "pat1",
        "meta": {"lastUpdated": "2024-01-02T03:04:05.678Z", "tag": [{"system": "http://t.org", "code": "x"}],
                 "profile": ["http://p.org/StructureDefinition/p|1.0"]},
        "identifier": [{"system": "urn:oid:1.2.3", "value": "12345", "type": {"text": "MRN"}}],
        "active": true,
        "name": [{"use": "official", "family": "Müller", "given": ["José", "Anna", "Anna"], "prefix": ["Dr."]}],
        "telecom": [{"system": "phone", "value": "+1 555 0100"}, {"system": "email", "value": "a@b.org"}],
        "gender": "female", "birthDate": "1980-02-29",
        "address": [{"line": ["1 Main St"], "city": "Springfield", "postalCode": "12345", "country": "US"}],
        "generalPractitioner": [{"reference": "Practitioner/dr1"}],
        "managingOrganization": {"reference": "Organization/o1/_history/2"},
        "link": [{"other": {"reference": "Patient/p2"}, "type": "seealso"}]
    }"#;

    #[test]
    fn patient_entries() {
        check(
            "Patient",
            PATIENT,
            vec![
                Has("_id", 0, code("pat1")),
                Has("_lastUpdated", 0, date("2024-01-02T03:04:05.678Z")),
                Has("_tag", 0, token(Some("http://t.org"), Some("x"), None)),
                Has(
                    "_profile",
                    0,
                    IndexValue::Uri {
                        value: "http://p.org/StructureDefinition/p|1.0".into(),
                    },
                ),
                Has(
                    "identifier",
                    0,
                    token(Some("urn:oid:1.2.3"), Some("12345"), Some("mrn")),
                ),
                Has("active", 0, code("true")),
                Has("family", 0, string("muller", "Müller")),
                Has("given", 0, string("jose", "José")),
                Has("given", 0, string("anna", "Anna")),
                Has("name", 0, string("dr", "Dr.")),
                Has("name", 0, string("muller", "Müller")),
                Has("phone", 0, code("+1 555 0100")),
                Has("email", 0, code("a@b.org")),
                Has("telecom", 0, code("a@b.org")),
                Has("gender", 0, code("female")),
                Has("birthdate", 0, date("1980-02-29")),
                Has("address", 0, string("1 main st", "1 Main St")),
                Has("address-city", 0, string("springfield", "Springfield")),
                Has("address-postalcode", 0, string("12345", "12345")),
                Has("address-country", 0, string("us", "US")),
                Has("general-practitioner", 0, reference("Practitioner", "dr1")),
                Has(
                    "organization",
                    0,
                    IndexValue::Reference {
                        target_type: Some("Organization".into()),
                        target_id: Some("o1".into()),
                        version: Some("2".into()),
                        url: None,
                    },
                ),
                Has("link", 0, reference("Patient", "p2")),
                Has("deceased", 0, code("false")),
                Nothing("death-date"),
                Nothing("_text"),
                Nothing("identifier:of-type"),
            ],
        );
    }

    #[test]
    fn identifier_types_yield_of_type_entries() {
        let v2 = "http://terminology.hl7.org/CodeSystem/v2-0203";
        check(
            "typed identifiers",
            r#"{"resourceType": "Patient",
                "identifier": [
                    {"system": "urn:mrn", "value": "446053",
                     "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"},
                                         {"system": "http://local", "code": "hospital-no"},
                                         {"code": "no-system"}]}},
                    {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SS"}]}}
                ],
                "generalPractitioner": [{"identifier": {"value": "x", "type": {"coding": [{"system": "http://s", "code": "c"}]}}}]}"#,
            vec![
                Has(
                    "identifier",
                    0,
                    token(Some("urn:mrn"), Some("446053"), None),
                ),
                Has(
                    "identifier:of-type",
                    0,
                    token(Some(&of_type_system(v2, "MR")), Some("446053"), None),
                ),
                Has(
                    "identifier:of-type",
                    0,
                    token(
                        Some(&of_type_system("http://local", "hospital-no")),
                        Some("446053"),
                        None,
                    ),
                ),
                Nothing("general-practitioner:identifier:of-type"),
            ],
        );
        let entries = entries_of(
            r#"{"resourceType": "Patient", "identifier": [{"value": "1", "type": {"coding": [{"code": "no-system"}]}},
                {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SS"}]}}]}"#,
        );
        assert!(
            !entries.iter().any(|e| e.param == "identifier:of-type"),
            "a type needs system and code, and the identifier a value: {entries:?}"
        );
    }

    const OBSERVATION: &str = r#"{
        "resourceType": "Observation", "id": "o1", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel"}], "text": "BP"},
        "subject": {"reference": "Patient/p1"},
        "effectivePeriod": {"start": "2024-03-01T10:00:00Z", "end": "2024-03-01T10:30:00Z"},
        "valueQuantity": {"value": 1.50, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"},
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
             "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
             "valueQuantity": {"value": 80, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
        ]
    }"#;

    #[test]
    fn observation_entries() {
        let mm_hg = |value: &str| quantity(value, UCUM, Some("mm[Hg]"), Some("mmHg"));
        check(
            "Observation",
            OBSERVATION,
            vec![
                Has(
                    "code",
                    0,
                    token(LOINC, Some("85354-9"), Some("blood pressure panel")),
                ),
                Has("code", 0, token(None, None, Some("bp"))),
                Has(
                    "category",
                    0,
                    token(
                        Some("http://terminology.hl7.org/CodeSystem/observation-category"),
                        Some("vital-signs"),
                        None,
                    ),
                ),
                Has("subject", 0, reference("Patient", "p1")),
                Has("patient", 0, reference("Patient", "p1")),
                Has(
                    "date",
                    0,
                    IndexValue::Date {
                        start: millis(datetime!(2024-03-01 10:00 UTC)),
                        end: millis(datetime!(2024-03-01 10:30:01 UTC)),
                    },
                ),
                Has(
                    "value-quantity",
                    0,
                    quantity("1.50", UCUM, Some("mg"), Some("mg")),
                ),
                Has(
                    "code-value-quantity#0",
                    1,
                    token(LOINC, Some("85354-9"), Some("blood pressure panel")),
                ),
                Has(
                    "code-value-quantity#1",
                    1,
                    quantity("1.50", UCUM, Some("mg"), Some("mg")),
                ),
                Has("component-code", 0, token(LOINC, Some("8480-6"), None)),
                Has("component-value-quantity", 0, mm_hg("120")),
                Has(
                    "component-code-value-quantity#0",
                    1,
                    token(LOINC, Some("8480-6"), None),
                ),
                Has("component-code-value-quantity#1", 1, mm_hg("120")),
                Has(
                    "component-code-value-quantity#0",
                    2,
                    token(LOINC, Some("8462-4"), None),
                ),
                Has("component-code-value-quantity#1", 2, mm_hg("80")),
                // `Observation | Observation.component`: the observation itself is group 1
                Has(
                    "combo-code-value-quantity#0",
                    1,
                    token(LOINC, Some("85354-9"), Some("blood pressure panel")),
                ),
                Has("combo-code-value-quantity#1", 3, mm_hg("80")),
                Has("combo-code", 0, token(LOINC, Some("8462-4"), None)),
                Nothing("value-concept"),
                Nothing("value-date"),
                Nothing("code-value-concept#0"),
                Nothing("focus"),
            ],
        );
        // components of one instance never mix with another's
        let entries = entries_of(OBSERVATION);
        let group_of = |param: &str, value: &IndexValue| {
            entries
                .iter()
                .find(|e| e.param == param && &e.value == value)
                .map(|e| e.group)
        };
        assert_ne!(
            group_of(
                "component-code-value-quantity#0",
                &token(LOINC, Some("8480-6"), None)
            ),
            group_of("component-code-value-quantity#1", &mm_hg("80")),
            "expected systolic code and diastolic value in different groups"
        );
    }

    #[test]
    fn observation_value_and_subject_variants() {
        check(
            "Observation with a Group subject, a concept value and a Timing",
            r#"{"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "subject": {"reference": "Group/g1"},
                "effectiveTiming": {"event": ["2024-05-02", "2024-05-01T08:00:00Z"],
                                    "repeat": {"boundsPeriod": {"start": "2024-04-30", "end": "2024-05-03"}}},
                "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "260385009", "display": "Negative"}]}}"#,
            vec![
                Has("subject", 0, reference("Group", "g1")),
                Nothing("patient"),
                Has(
                    "date",
                    0,
                    IndexValue::Date {
                        start: millis(datetime!(2024-04-30 0:00 UTC)),
                        end: millis(datetime!(2024-05-04 0:00 UTC)),
                    },
                ),
                Has(
                    "value-concept",
                    0,
                    token(
                        Some("http://snomed.info/sct"),
                        Some("260385009"),
                        Some("negative"),
                    ),
                ),
                Has(
                    "code-value-concept#1",
                    1,
                    token(
                        Some("http://snomed.info/sct"),
                        Some("260385009"),
                        Some("negative"),
                    ),
                ),
                Has("code-value-concept#0", 1, token(None, None, Some("x"))),
                Nothing("value-quantity"),
            ],
        );
        check(
            "Observation with an absolute subject and a dateTime value",
            r##"{"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "contained": [{"resourceType": "Patient", "id": "c1"}],
                "subject": {"reference": "http://other.org/fhir/Patient/p9"},
                "performer": [{"reference": "#c1"}],
                "valueDateTime": "2024-05-01"}"##,
            vec![
                Has("subject", 0, url("http://other.org/fhir/Patient/p9", None)),
                Has("patient", 0, url("http://other.org/fhir/Patient/p9", None)),
                Nothing("performer"),
                Has("value-date", 0, date("2024-05-01")),
                Has("code-value-date#1", 1, date("2024-05-01")),
            ],
        );
    }

    #[test]
    fn encounter_entries() {
        check(
            "Encounter",
            r#"{"resourceType": "Encounter", "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"},
                "subject": {"reference": "Patient/p1"},
                "participant": [{"individual": {"reference": "Practitioner/d1"}}, {"individual": {"reference": "RelatedPerson/r1"}}],
                "period": {"start": "2024-03-01"},
                "length": {"value": 30, "unit": "min", "system": "http://unitsofmeasure.org", "code": "min"},
                "serviceProvider": {"identifier": {"system": "http://npi.org", "value": "999"}, "display": "A clinic"}}"#,
            vec![
                Has(
                    "class",
                    0,
                    token(
                        Some("http://terminology.hl7.org/CodeSystem/v3-ActCode"),
                        Some("AMB"),
                        Some("ambulatory"),
                    ),
                ),
                Has("status", 0, code("finished")),
                Has("patient", 0, reference("Patient", "p1")),
                Has("practitioner", 0, reference("Practitioner", "d1")),
                Has("participant", 0, reference("RelatedPerson", "r1")),
                Has(
                    "date",
                    0,
                    IndexValue::Date {
                        start: millis(datetime!(2024-03-01 0:00 UTC)),
                        end: i64::MAX,
                    },
                ),
                Has("length", 0, quantity("30", UCUM, Some("min"), Some("min"))),
                Has(
                    "service-provider:identifier",
                    0,
                    token(Some("http://npi.org"), Some("999"), None),
                ),
                Nothing("service-provider"),
            ],
        );
    }

    #[test]
    fn condition_onset_choices() {
        let cases: [(&str, &str, Vec<Expect>); 4] = [
            (
                "onsetDateTime",
                r#"{"resourceType": "Condition", "subject": {"reference": "Patient/p1"}, "onsetDateTime": "2020-05"}"#,
                vec![
                    Has("onset-date", 0, date("2020-05")),
                    Nothing("onset-age"),
                    Nothing("onset-info"),
                ],
            ),
            (
                "onsetAge",
                r#"{"resourceType": "Condition", "subject": {"reference": "Patient/p1"},
                    "onsetAge": {"value": 40, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"}}"#,
                vec![
                    Has("onset-age", 0, quantity("40", UCUM, Some("a"), Some("a"))),
                    Nothing("onset-date"),
                ],
            ),
            (
                "onsetRange",
                r#"{"resourceType": "Condition", "subject": {"reference": "Patient/p1"},
                    "onsetRange": {"low": {"value": 40, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"},
                                   "high": {"value": 50.0, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"}}}"#,
                vec![
                    Has(
                        "onset-age",
                        0,
                        IndexValue::Quantity {
                            value: 40.0,
                            low: 39.5,
                            high: 50.05,
                            system: UCUM.map(Into::into),
                            code: Some("a".into()),
                            unit: Some("a".into()),
                        },
                    ),
                    Nothing("onset-date"),
                ],
            ),
            (
                "onsetString and onsetPeriod are exclusive; a string",
                r#"{"resourceType": "Condition", "subject": {"reference": "Patient/p1"}, "onsetString": "Since childhood",
                    "abatementPeriod": {"end": "2021"}}"#,
                vec![
                    Has(
                        "onset-info",
                        0,
                        string("since childhood", "Since childhood"),
                    ),
                    Has(
                        "abatement-date",
                        0,
                        IndexValue::Date {
                            start: i64::MIN,
                            end: millis(datetime!(2022-01-01 0:00 UTC)),
                        },
                    ),
                    Nothing("onset-age"),
                    Has("patient", 0, reference("Patient", "p1")),
                ],
            ),
        ];
        for (what, resource, expectations) in cases {
            check(what, resource, expectations);
        }
    }

    #[test]
    fn medication_request_medication_choice() {
        check(
            "medicationReference",
            r#"{"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                "medicationReference": {"reference": "Medication/m1"}, "subject": {"reference": "Patient/p1"},
                "authoredOn": "2024-02-29T23:59:59+00:00"}"#,
            vec![
                Has("medication", 0, reference("Medication", "m1")),
                Nothing("code"),
                Has("intent", 0, code("order")),
                Has("patient", 0, reference("Patient", "p1")),
                Has("authoredon", 0, date("2024-02-29T23:59:59Z")),
            ],
        );
        check(
            "medicationCodeableConcept",
            r#"{"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "582620"}]},
                "subject": {"reference": "Patient/p1"}}"#,
            vec![
                Has(
                    "code",
                    0,
                    token(
                        Some("http://www.nlm.nih.gov/research/umls/rxnorm"),
                        Some("582620"),
                        None,
                    ),
                ),
                Nothing("medication"),
            ],
        );
    }

    #[test]
    fn immunization_entries() {
        check(
            "Immunization",
            r#"{"resourceType": "Immunization", "status": "completed",
                "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}], "text": "Influenza, seasonal"},
                "patient": {"reference": "Patient/p1"}, "occurrenceDateTime": "2021-01-10T09:30:00+01:00",
                "lotNumber": "AAJN11K", "performer": [{"actor": {"reference": "Practitioner/d1"}}],
                "reasonCode": [{"text": "Flu season"}]}"#,
            vec![
                Has(
                    "vaccine-code",
                    0,
                    token(Some("http://hl7.org/fhir/sid/cvx"), Some("140"), None),
                ),
                Has(
                    "vaccine-code",
                    0,
                    token(None, None, Some("influenza seasonal")),
                ),
                Has("patient", 0, reference("Patient", "p1")),
                Has(
                    "date",
                    0,
                    IndexValue::Date {
                        start: millis(datetime!(2021-01-10 8:30 UTC)),
                        end: millis(datetime!(2021-01-10 8:30:01 UTC)),
                    },
                ),
                Has("lot-number", 0, string("aajn11k", "AAJN11K")),
                Has("performer", 0, reference("Practitioner", "d1")),
                Has("reason-code", 0, token(None, None, Some("flu season"))),
                Has("status", 0, code("completed")),
            ],
        );
    }

    #[test]
    fn money_canonical_and_uri() {
        check(
            "ChargeItem money",
            r#"{"resourceType": "ChargeItem", "status": "billable", "code": {"text": "x"}, "subject": {"reference": "Patient/p1"},
                "priceOverride": {"value": 40.00, "currency": "EUR"}, "factorOverride": 0.8}"#,
            vec![
                Has(
                    "price-override",
                    0,
                    quantity("40.00", Some("urn:iso:std:iso:4217"), Some("EUR"), None),
                ),
                Has(
                    "factor-override",
                    0,
                    IndexValue::Number {
                        value: 0.8,
                        low: 0.75,
                        high: 0.85,
                    },
                ),
            ],
        );
        check(
            "QuestionnaireResponse canonical",
            r#"{"resourceType": "QuestionnaireResponse", "status": "completed",
                "questionnaire": "http://q.org/Questionnaire/q1|2.0"}"#,
            vec![Has(
                "questionnaire",
                0,
                url("http://q.org/Questionnaire/q1", Some("2.0")),
            )],
        );
        check(
            "ValueSet uri",
            r#"{"resourceType": "ValueSet", "status": "active", "url": "http://vs.org/vs1",
                "useContext": [{"code": {"system": "http://terminology.hl7.org/CodeSystem/usage-context-type", "code": "age"},
                                "valueQuantity": {"value": 18, "comparator": ">=", "unit": "a"}}]}"#,
            vec![
                Has(
                    "url",
                    0,
                    IndexValue::Uri {
                        value: "http://vs.org/vs1".into(),
                    },
                ),
                Has(
                    "context-quantity",
                    0,
                    IndexValue::Quantity {
                        value: 18.0,
                        low: 17.5,
                        high: f64::MAX,
                        system: None,
                        code: None,
                        unit: Some("a".into()),
                    },
                ),
                Has(
                    "context-type-quantity#0",
                    1,
                    token(
                        Some("http://terminology.hl7.org/CodeSystem/usage-context-type"),
                        Some("age"),
                        None,
                    ),
                ),
            ],
        );
    }

    #[test]
    fn registry_lookups() {
        let registry = Registry::r4();
        let cases = [
            (
                "Patient",
                "name",
                Some(SearchParamType::String),
                "own parameter",
            ),
            (
                "Observation",
                "_id",
                Some(SearchParamType::Token),
                "Resource parameter",
            ),
            (
                "Observation",
                "_lastUpdated",
                Some(SearchParamType::Date),
                "Resource parameter",
            ),
            (
                "Observation",
                "_text",
                Some(SearchParamType::String),
                "DomainResource parameter",
            ),
            ("Bundle", "_text", None, "Bundle is no DomainResource"),
            (
                "Bundle",
                "_id",
                Some(SearchParamType::Token),
                "Resource parameter on Bundle",
            ),
            (
                "Observation",
                "code-value-quantity",
                Some(SearchParamType::Composite),
                "composite",
            ),
            ("Observation", "nope", None, "unknown code"),
            ("Nope", "_id", None, "unknown type"),
        ];
        for (resource_type, code, kind, what) in cases {
            assert_eq!(
                registry.get(resource_type, code).map(|p| p.kind),
                kind,
                "{what}: {resource_type}.{code}"
            );
        }
        let composite = registry
            .get("Observation", "code-value-quantity")
            .expect("registered");
        let components: Vec<_> = composite
            .components
            .iter()
            .map(|c| (c.code.as_str(), c.kind, c.expression.text()))
            .collect();
        assert_eq!(
            components,
            [
                ("code", SearchParamType::Token, "code"),
                (
                    "value-quantity",
                    SearchParamType::Quantity,
                    "value.as(Quantity)"
                )
            ],
            "components of code-value-quantity"
        );
        let relationship = registry
            .get("DocumentReference", "relationship")
            .expect("registered");
        let components: Vec<_> = relationship
            .components
            .iter()
            .map(|c| (c.code.as_str(), c.expression.text()))
            .collect();
        assert_eq!(
            components,
            [("relatesto", "target"), ("relation", "code")],
            "the R4 erratum is corrected"
        );
        let subject = registry.get("Observation", "subject").expect("registered");
        assert!(
            subject.targets.iter().any(|t| t == "Patient")
                && subject.targets.iter().any(|t| t == "Group")
        );

        let codes: Vec<&str> = registry
            .for_type("Observation")
            .map(|p| p.code.as_str())
            .collect();
        assert!(
            codes.windows(2).all(|w| w[0] < w[1]),
            "for_type is sorted by code and without duplicates"
        );
        for expected in [
            "_id",
            "_lastUpdated",
            "_profile",
            "_text",
            "code",
            "subject",
            "component-code-value-quantity",
        ] {
            assert!(
                codes.contains(&expected),
                "expected Observation to have {expected}"
            );
        }
        assert_eq!(
            registry.for_type("Nope").count(),
            0,
            "an unknown type has no parameters"
        );
        for resource_type in Definitions::r4().resource_types() {
            assert!(
                registry.get(resource_type, "_id").is_some(),
                "expected {resource_type} to have _id"
            );
        }
    }

    #[test]
    fn date_ranges_honor_precision_and_offsets() {
        let range =
            |from: time::OffsetDateTime, to: time::OffsetDateTime| Some((millis(from), millis(to)));
        let cases = [
            (
                "2024",
                range(
                    datetime!(2024-01-01 0:00 UTC),
                    datetime!(2025-01-01 0:00 UTC),
                ),
                "year",
            ),
            (
                "2024-02",
                range(
                    datetime!(2024-02-01 0:00 UTC),
                    datetime!(2024-03-01 0:00 UTC),
                ),
                "leap February",
            ),
            (
                "2023-02",
                range(
                    datetime!(2023-02-01 0:00 UTC),
                    datetime!(2023-03-01 0:00 UTC),
                ),
                "February",
            ),
            (
                "2024-12",
                range(
                    datetime!(2024-12-01 0:00 UTC),
                    datetime!(2025-01-01 0:00 UTC),
                ),
                "December",
            ),
            (
                "2024-02-29",
                range(
                    datetime!(2024-02-29 0:00 UTC),
                    datetime!(2024-03-01 0:00 UTC),
                ),
                "leap day",
            ),
            (
                "2000-02-29",
                range(
                    datetime!(2000-02-29 0:00 UTC),
                    datetime!(2000-03-01 0:00 UTC),
                ),
                "leap day in 2000",
            ),
            (
                "1969-12-31",
                range(
                    datetime!(1969-12-31 0:00 UTC),
                    datetime!(1970-01-01 0:00 UTC),
                ),
                "before the epoch",
            ),
            (
                "2024-03-01T10:15",
                range(
                    datetime!(2024-03-01 10:15 UTC),
                    datetime!(2024-03-01 10:16 UTC),
                ),
                "minutes",
            ),
            (
                "2024-03-01T10:15:30Z",
                range(
                    datetime!(2024-03-01 10:15:30 UTC),
                    datetime!(2024-03-01 10:15:31 UTC),
                ),
                "seconds",
            ),
            (
                "2024-03-01T10:15:30",
                range(
                    datetime!(2024-03-01 10:15:30 UTC),
                    datetime!(2024-03-01 10:15:31 UTC),
                ),
                "no zone is UTC",
            ),
            (
                "2024-03-01T10:15:30.5Z",
                range(
                    datetime!(2024-03-01 10:15:30.5 UTC),
                    datetime!(2024-03-01 10:15:30.6 UTC),
                ),
                "tenths",
            ),
            (
                "2024-03-01T10:15:30.123Z",
                range(
                    datetime!(2024-03-01 10:15:30.123 UTC),
                    datetime!(2024-03-01 10:15:30.124 UTC),
                ),
                "millis",
            ),
            (
                "2024-03-01T10:15:30.123456Z",
                range(
                    datetime!(2024-03-01 10:15:30.123 UTC),
                    datetime!(2024-03-01 10:15:30.124 UTC),
                ),
                "micros are cut to millis",
            ),
            (
                "2024-03-01T01:15:30+02:00",
                range(
                    datetime!(2024-02-29 23:15:30 UTC),
                    datetime!(2024-02-29 23:15:31 UTC),
                ),
                "positive offset crossing a leap day",
            ),
            (
                "2024-03-01T10:15:30-05:30",
                range(
                    datetime!(2024-03-01 15:45:30 UTC),
                    datetime!(2024-03-01 15:45:31 UTC),
                ),
                "negative offset",
            ),
            (
                "2024-03-01T10:15+01:00",
                range(
                    datetime!(2024-03-01 9:15 UTC),
                    datetime!(2024-03-01 9:16 UTC),
                ),
                "minutes with zone",
            ),
        ];
        for (text, expected, what) in cases {
            assert_eq!(date_range(text), expected, "{what}: range of {text:?}");
        }
        let invalid = [
            "",
            "abcd",
            "24",
            "2023-02-29",
            "1900-02-29",
            "2024-13",
            "2024-00",
            "2024-1-01",
            "20240101",
            "2024-03-32",
            "2024-03-01T",
            "2024-03-01T10",
            "2024-03-01T25:00",
            "2024-03-01T10:60",
            "2024-03-01T10:15:30.Z",
            "2024-03-01T10:15:30+15:00",
            "2024-03-01T10:15:30+01",
            "2024-03-01 10:15",
            "2024-03-01T10:15:30ZZ",
        ];
        for text in invalid {
            assert_eq!(date_range(text), None, "expected {text:?} to be rejected");
        }
    }

    #[test]
    fn number_ranges_follow_written_precision() {
        let cases = [
            ("100", (100.0, 99.5, 100.5)),
            ("100.00", (100.0, 99.995, 100.005)),
            ("1.50", (1.5, 1.495, 1.505)),
            ("1.5", (1.5, 1.45, 1.55)),
            ("0.05", (0.05, 0.045, 0.055)),
            ("0", (0.0, -0.5, 0.5)),
            ("-1.5", (-1.5, -1.55, -1.45)),
            ("1.5e2", (150.0, 145.0, 155.0)),
            ("2.10e3", (2100.0, 2095.0, 2105.0)),
            ("1e2", (100.0, 50.0, 150.0)),
            ("1E-3", (0.001, 0.0005, 0.0015)),
            ("+7", (7.0, 6.5, 7.5)),
        ];
        for (text, expected) in cases {
            assert_eq!(number_range(text), Some(expected), "range of {text:?}");
        }
        for text in [
            "", "abc", "1.", ".5", "1e", "1e+", "--1", "1,5", "NaN", "inf", "0x10", "1 ", "1e400",
        ] {
            assert_eq!(number_range(text), None, "expected {text:?} to be rejected");
        }
        let (value, low, high) = number_range("123456789012345678901234567890123456789012.5")
            .expect("long numbers parse");
        assert!(
            low <= value && value <= high,
            "long numbers still get a range around their value"
        );
    }

    #[test]
    fn string_normalization() {
        let cases = [
            ("Müller", "muller"),
            ("  José   María ", "jose maria"),
            ("O'Brien-Smith", "o brien smith"),
            ("ÅNGSTRÖM", "angstrom"),
            ("Zoë\tvan\nDijk", "zoe van dijk"),
            ("İstanbul", "istanbul"),
            ("Straße", "straße"),
            ("Dr.", "dr"),
            ("", ""),
            ("...", ""),
        ];
        for (text, expected) in cases {
            assert_eq!(
                normalize_string(text),
                expected,
                "normalized form of {text:?}"
            );
        }
    }

    #[test]
    fn malformed_shapes_are_skipped_without_panic() {
        check(
            "Patient of odd shapes",
            r#"{"resourceType": "Patient", "id": "bad id with spaces",
                "name": [null, [{"family": "Nested"}], "just text", {"family": ["Array"], "given": [null, "Eve", 3]}],
                "birthDate": 5, "gender": {"code": "female"}, "telecom": {"system": "phone"},
                "managingOrganization": {"reference": ""}, "generalPractitioner": [{"reference": 7}],
                "deceasedDateTime": "yesterday", "link": "Patient/x"}"#,
            vec![
                Has("given", 0, string("eve", "Eve")),
                // cardinality is the validator's business: a wrongly repeated family still counts
                Has("family", 0, string("array", "Array")),
                Nothing("birthdate"),
                Nothing("gender"),
                Nothing("organization"),
                Nothing("general-practitioner"),
                Nothing("death-date"),
                Has("deceased", 0, code("true")),
            ],
        );
        let not_an_object = json(r#"["Patient"]"#);
        assert!(
            index_entries("Patient", &not_an_object).is_empty(),
            "expected nothing from a JSON array"
        );
        let other_type = json(r#"{"resourceType": "Observation", "id": "o1"}"#);
        assert!(
            index_entries("Patient", &other_type).is_empty(),
            "expected nothing when the resourceType differs"
        );
    }

    #[test]
    fn deduplication_keeps_first_of_each() {
        let mut entries: Vec<IndexEntry> = (0..40)
            .map(|i| IndexEntry {
                param: "p".into(),
                group: 0,
                value: IndexValue::Number {
                    value: f64::from(i % 7),
                    low: 0.0,
                    high: 1.0,
                },
            })
            .collect();
        dedup_from(&mut entries, 0);
        let values: Vec<f64> = entries
            .iter()
            .map(|e| match e.value {
                IndexValue::Number { value, .. } => value,
                _ => f64::NAN,
            })
            .collect();
        assert_eq!(
            values,
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "the hashed path keeps the first of each in order"
        );
    }
}
